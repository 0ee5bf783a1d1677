"""The rule set, registered in one place (registry.py): importing the rule modules registers their checks in report
order. ``run_rules`` runs the checks of one scope; a check that fails is named in the report's ``incomplete`` list
(its class was not checked, so the verdict cannot be clean)."""

from __future__ import annotations

from . import (bytes_accounting, calib_val, limits, limits_logs, ngram_target, rescore, slot,  # noqa: F401
               stats, ttt_pre, val_train)
from .base import Context, DataContext, LogContext, Rule  # noqa: F401
from .registry import REGISTRY, checks, rule_ids  # noqa: F401

# report order: the registration order of the modules above is alphabetical; rules run in COMPLIANCE.md order
ORDER = ("TTT-PRE", "RESCORE", "NGRAM-TARGET", "SLOT", "VAL-TRAIN", "CALIB-VAL", "BYTES", "LIMITS", "STATS")
REGISTRY.sort(key=lambda r: ORDER.index(r.id) if r.id in ORDER else len(ORDER))


def run_rules(ctx, scope: str, incomplete: list[str], deadline=None) -> list:
    """Findings of every registered check of `scope` over `ctx`, deduplicated by (rule, file, line)."""
    findings = []
    seen = set()
    for rule in checks(scope):
        if deadline is not None and deadline.expired():
            incomplete.append(f"rule {rule.id} ({rule.title}) was not run: {deadline.describe()}")
            continue
        try:
            out = rule.check(ctx)
        except Exception as exc:  # noqa: BLE001 - one rule failing must not hide the others' findings
            incomplete.append(f"rule {rule.id} ({rule.title}) failed on this input ({type(exc).__name__}: "
                              f"{str(exc)[:160]}); its class was not checked")
            continue
        for f in out:
            key = (f.rule, f.file, f.line)
            if key in seen:
                continue
            seen.add(key)
            findings.append(f)
    return findings
