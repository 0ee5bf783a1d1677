"""STATS: the record-significance test over the per-seed losses in the logs (or submission.json). A new record must
beat the standing one by >= 0.005 nats at p < 0.01; the test is a one-sided one-sample t-test (scipy) of the
per-seed val_loss against reference - 0.005 nats. A weak claim is reported as a finding with status ``warning``:
published entries were accepted at weaker p, so it never changes the verdict."""

from __future__ import annotations

import math

from kitlib.stats import RECORD_ALPHA, RECORD_MARGIN_NATS, bpb_to_nats, record_test, sample_std

from ..logparse import RunLog
from ..report import WARNING, Finding
from .base import LogContext, Rule
from .registry import register



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
    """The kit's record test (kitlib.stats.record_test: one-sided one-sample t-test of the per-seed losses against
    reference_loss - 0.005 nats, p < 0.01). A reference bpb is converted to nats with the entry's own loss/bpb
    ratio (kitlib.stats.bpb_to_nats). Returns (info for the report, warnings)."""
    warnings = []
    info: dict = {"seeds": len(losses), "threshold_nats": RECORD_MARGIN_NATS, "alpha": RECORD_ALPHA}
    if reference_loss is None and reference_bpb is not None:
        pairs = [(l, b) for l, b in zip(losses, bpbs) if b and math.isfinite(b) and b > 0]
        if not pairs:
            warnings.append("STATS: cannot convert the reference bpb to nats (no val_loss/val_bpb pair found)")
            return info, warnings
        mean_loss = sum(l for l, _ in pairs) / len(pairs)
        mean_bpb = sum(b for _, b in pairs) / len(pairs)
        reference_loss = bpb_to_nats(reference_bpb, mean_loss, mean_bpb)
        info["reference_bpb"] = reference_bpb
        info["nats_per_bpb"] = mean_loss / mean_bpb
    if reference_loss is None:
        return info, warnings
    info["reference_loss"] = reference_loss
    target = reference_loss - RECORD_MARGIN_NATS
    info["target_loss"] = target
    if not losses:
        warnings.append("STATS: no per-seed val_loss found in the logs or submission.json")
        return info, warnings
    res = record_test(losses, ref_loss=reference_loss)
    info.update({"mean_loss": res["mean_loss"], "improvement_nats": res["improvement_nats"], "test": res["test"],
                 "t_statistic": res["t"], "p_value": res["p_value"], "std_loss": sample_std(losses),
                 "significant": res["meets_record_bar"]})
    if res["p_value"] is None:
        warnings.append(f"STATS: one seed only (val_loss {res['mean_loss']:.6f}); the significance test needs >= 2 "
                        "seeds")
    elif not res["meets_record_bar"]:
        warnings.append(f"STATS: not a significant record: mean val_loss {res['mean_loss']:.6f} vs reference "
                        f"{reference_loss:.6f} - 0.005 = {target:.6f}; one-sided one-sample t = {res['t']:.3f}, "
                        f"p = {res['p_value']:.4g} (needs p < 0.01 and >= 0.005 nats, {len(losses)} seeds)")
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
