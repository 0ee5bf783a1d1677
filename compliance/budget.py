"""The audit's time budget: long analyses check it and stop with OutOfTime, which the audit reports as
`incomplete` (what was not analysed) instead of running for minutes or saying clean."""

from __future__ import annotations

import time

DEFAULT_SECONDS = 300.0


class OutOfTime(Exception):
    """The time budget ran out."""


class Deadline:
    def __init__(self, seconds: float | None = DEFAULT_SECONDS):
        self.seconds = seconds
        self.start = time.monotonic()

    def expired(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds

    def describe(self) -> str:
        return f"the {self.seconds:g} s time budget ran out (--time-budget)"


_current: Deadline | None = None


def start(seconds: float | None) -> Deadline:
    """Make a deadline the current one (checked by `check`)."""
    global _current
    _current = Deadline(seconds)
    return _current


def check() -> None:
    """Raise OutOfTime when the current deadline has passed (cheap: call it once per function or round)."""
    if _current is not None and _current.expired():
        raise OutOfTime(_current.describe())
