"""Leaderboard-submission packer and checker for Parameter Golf entries.

- ``python -m records pack ...``: finished runs -> ``records/<track>/YYYY-MM-DD_<Name>/``
  (README.md, submission.json, train_seed<N>.log, train_gpt.py, requirements.txt) and
  ``./submission.json``; refuses, writing nothing, when the entry is not submittable.
- ``python -m records check PATH [--json]``: consistency of a record folder or a
  submission.json, ours or anyone else's.

This package shares ``records/`` with the generated record folders
(``records/track_10min_16mb/``, ``records/track_non_record_16mb/``); those hold no Python.
"""

from .check import CheckResult, check_path
from .pack import PackOptions, PackResult, Refusal, UsageError, pack

__all__ = ["CheckResult", "PackOptions", "PackResult", "Refusal", "UsageError", "check_path", "pack"]
