"""The LIMITS checks over logs and submission.json live in the rule registry (rules/limits_logs.py); this name is
kept for callers that check a list of parsed runs directly."""

from .rules.limits_logs import check_logs  # noqa: F401
