"""STATS: the record-significance test over the per-seed losses in the logs (or submission.json). A new record must
beat the standing one by >= 0.005 nats at p < 0.01; the test is a one-sided one-sample t-test (scipy) of the
per-seed val_loss against reference - 0.005 nats. A weak claim is reported as a finding with status ``warning``:
published entries were accepted at weaker p, so it never changes the verdict."""

from __future__ import annotations

import math

from ..logparse import RunLog
from ..report import WARNING, Finding
from .base import LogContext, Rule
from .registry import register

SIGNIFICANCE_NATS = 0.005
SIGNIFICANCE_P = 0.01


def per_seed_losses(logs: list[RunLog], submission: dict | None) -> tuple[list[float], list[float]]:
    """Returns (val_loss, val_bpb) per seed from the logs' finals (one per seed), else from submission.json's
    seed_results, else its mean val_loss / val_bpb."""
    losses, bpbs = [], []
    seen = set()
    for lg in logs:
        if lg.final is None or not math.isfinite(lg.final.val_loss):
            continue
        key = lg.seed if lg.seed is not None else lg.name
        if key in seen:
            continue
        seen.add(key)
        losses.append(lg.final.val_loss)
        bpbs.append(lg.final.val_bpb)
    if not losses and isinstance(submission, dict) and isinstance(submission.get("seed_results"), dict):
        for res in submission["seed_results"].values():
            if isinstance(res, dict) and isinstance(res.get("val_loss"), (int, float)):
                losses.append(float(res["val_loss"]))
                bpbs.append(float(res.get("val_bpb", float("nan"))))
    if not losses and isinstance(submission, dict) and isinstance(submission.get("val_loss"), (int, float)):
        losses.append(float(submission["val_loss"]))
        if isinstance(submission.get("val_bpb"), (int, float)):
            bpbs.append(float(submission["val_bpb"]))
    return losses, bpbs


def significance(losses: list[float], bpbs: list[float], reference_loss: float | None,
                 reference_bpb: float | None) -> tuple[dict, list[str]]:
    """One-sided one-sample t-test (scipy): is the mean per-seed loss below reference_loss - 0.005 nats at
    p < 0.01? A reference bpb is converted to nats with the entry's own loss/bpb ratio."""
    warnings = []
    info: dict = {"seeds": len(losses), "threshold_nats": SIGNIFICANCE_NATS, "alpha": SIGNIFICANCE_P}
    if reference_loss is None and reference_bpb is not None:
        ratio = [l / b for l, b in zip(losses, bpbs) if b and math.isfinite(b) and b > 0]
        if not ratio:
            warnings.append("STATS: cannot convert the reference bpb to nats (no val_loss/val_bpb pair found)")
            return info, warnings
        r = sum(ratio) / len(ratio)
        reference_loss = reference_bpb * r
        info["reference_bpb"] = reference_bpb
        info["nats_per_bpb"] = r
    if reference_loss is None:
        return info, warnings
    info["reference_loss"] = reference_loss
    target = reference_loss - SIGNIFICANCE_NATS
    info["target_loss"] = target
    if not losses:
        warnings.append("STATS: no per-seed val_loss found in the logs or submission.json")
        return info, warnings
    mean = sum(losses) / len(losses)
    info["mean_loss"] = mean
    info["improvement_nats"] = reference_loss - mean
    if len(losses) < 2:
        info["p_value"] = None
        warnings.append(f"STATS: one seed only (val_loss {mean:.6f}); the significance test needs >= 2 seeds")
        return info, warnings
    from scipy import stats
    sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1))
    if sd == 0.0:
        p = 0.0 if mean < target else 1.0
        t = float("-inf") if mean < target else float("inf")
    else:
        res = stats.ttest_1samp(losses, target, alternative="less")
        p, t = float(res.pvalue), float(res.statistic)
    info.update({"t_statistic": t, "p_value": p, "std_loss": sd, "significant": p < SIGNIFICANCE_P})
    if not p < SIGNIFICANCE_P:
        warnings.append(f"STATS: not a significant record: mean val_loss {mean:.6f} vs reference {reference_loss:.6f} "
                        f"- 0.005 = {target:.6f}; one-sided one-sample t = {t:.3f}, p = {p:.4g} (needs p < 0.01, "
                        f"{len(losses)} seeds)")
    return info, warnings


@register
class Stats(Rule):
    id = "STATS"
    title = "record significance (a warning)"
    scope = "logs"
    fixtures = ("folders/stats_significant", "folders/stats_weak")

    def check(self, ctx: LogContext) -> list[Finding]:
        if ctx.reference_loss is None and ctx.reference_bpb is None:
            return []
        losses, bpbs = per_seed_losses(ctx.logs, ctx.submission)
        info, notes = significance(losses, bpbs, ctx.reference_loss, ctx.reference_bpb)
        ctx.limits["stats"] = info
        out = []
        for n in notes:
            text = n[len("STATS: "):] if n.startswith("STATS: ") else n
            out.append(Finding("STATS", WARNING, ctx.submission_name or (ctx.logs[0].name if ctx.logs else "-"), 0,
                               _evidence(info), text[:1].upper() + text[1:] + "."))
        return out


def _evidence(info: dict) -> str:
    keys = ("seeds", "mean_loss", "reference_loss", "target_loss", "t_statistic", "p_value")
    return " ".join(f"{k}={info[k]:.6g}" if isinstance(info.get(k), float) else f"{k}={info.get(k)}"
                    for k in keys if k in info)
