"""Compliance auditor for Parameter Golf entries: static rules over the code (never executed), log and
submission checks, and dynamic probes of the kit's scoring functions. ``python -m compliance --help``."""

__version__ = "1.0"
