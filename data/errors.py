"""The one exception type for user-facing errors (printed as one ``error: ...`` line, exit 1)."""


class UserError(Exception):
    """A problem with the user's input, flags or environment; the message is one line."""
