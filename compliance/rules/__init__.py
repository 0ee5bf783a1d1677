"""The rule set. Each rule is a small unit in its own module: an id, the ruling it rests on (rulings.py), and a
detector over the shared analysis (analysis.py, flags.py). ``RULES`` lists them in report order."""

from __future__ import annotations

from .base import Context, Rule  # noqa: F401
from .bytes_accounting import BytesAccounting
from .calib_val import CalibVal
from .limits import NetworkAtEval
from .ngram_target import NgramTarget
from .rescore import Rescore
from .slot import Slot
from .ttt_pre import TttPre
from .val_train import ValTrain

RULES: list[Rule] = [TttPre(), Rescore(), NgramTarget(), Slot(), ValTrain(), CalibVal(), BytesAccounting(),
                     NetworkAtEval()]


def run_rules(ctx: Context) -> list:
    findings = []
    seen = set()
    for rule in RULES:
        try:
            out = rule.check(ctx)
        except RecursionError:
            ctx.warnings.append(f"rule {rule.id} gave up on deeply nested code")
            continue
        except Exception as exc:  # noqa: BLE001 - one rule failing must not hide the others' findings
            ctx.warnings.append(f"rule {rule.id} failed on this input ({type(exc).__name__}: {exc}); "
                                "its class was not checked")
            continue
        for f in out:
            key = (f.rule, f.file, f.line)
            if key in seen:
                continue
            seen.add(key)
            findings.append(f)
    return findings
