"""Seed statistics and the record test of COMPLIANCE.md (STATS: >= 0.005 nats at p < 0.01).

The t-tests are scipy's; this module states which one is used and in which direction.

The test, stated once so README and code agree:
- reference given as one number (``--reference-loss``, or ``--reference-bpb`` converted to
  nats with the entry's own mean loss/bpb ratio): one-sample t-test of the per-seed val_loss
  against ``reference_loss - 0.005``, one-sided (H1: mean < reference - 0.005);
  equivalent to ``scipy.stats.ttest_1samp(losses, ref - 0.005, alternative="less")``.
- reference given as a record folder with per-seed losses: Welch's unequal-variance t-test
  of the per-seed losses against the reference's per-seed losses shifted by -0.005,
  one-sided (H1: mean(ours) < mean(ref) - 0.005); equivalent to
  ``scipy.stats.ttest_ind(losses, ref_losses - 0.005, equal_var=False, alternative="less")``.
"""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats as scipy_stats

RECORD_MARGIN_NATS = 0.005
RECORD_ALPHA = 0.01


def mean(xs: Sequence[float]) -> float:
    xs = [float(x) for x in xs]
    if not xs:
        raise ValueError("mean of no values")
    return math.fsum(xs) / len(xs)


def sample_std(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values."""
    xs = [float(x) for x in xs]
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def sample_var(xs: Sequence[float]) -> float | None:
    s = sample_std(xs)
    return None if s is None else s * s


# --------------------------------------------------------------------------------------
# Tests (scipy.stats; a variance of zero gives an infinite t, which scipy reports as nan)


def _degenerate(diff: float, df: float) -> dict:
    """No spread at all: the sign of the difference decides (p 0 if below, else 1)."""
    t = -math.inf if diff < 0 else (math.inf if diff > 0 else math.nan)
    return {"t": t, "df": df, "p": 0.0 if diff < 0 else 1.0}


def ttest_1samp_less(xs: Sequence[float], popmean: float) -> dict:
    """One-sample t-test, H1: mean(xs) < popmean. Returns {t, df, p}."""
    xs = [float(x) for x in xs]
    if len(xs) < 2:
        return {"t": None, "df": None, "p": None}
    if sample_std(xs) == 0.0:
        return _degenerate(mean(xs) - popmean, float(len(xs) - 1))
    res = scipy_stats.ttest_1samp(xs, popmean, alternative="less")
    return {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue)}


def welch_less(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Welch's t-test, H1: mean(xs) < mean(ys). Returns {t, df, p}."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) < 2 or len(ys) < 2:
        return {"t": None, "df": None, "p": None}
    if sample_var(xs) == 0.0 and sample_var(ys) == 0.0:
        return _degenerate(mean(xs) - mean(ys), float(len(xs) + len(ys) - 2))
    res = scipy_stats.ttest_ind(xs, ys, equal_var=False, alternative="less")
    return {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue)}


def bpb_to_nats(ref_bpb: float, mean_loss: float, mean_bpb: float) -> float:
    """Convert a reference bpb to nats with the entry's own mean loss/bpb ratio."""
    return float(ref_bpb) * float(mean_loss) / float(mean_bpb)


def summarize(bpbs: Sequence[float], losses: Sequence[float]) -> dict:
    return {
        "n": len(bpbs),
        "val_bpb_mean": mean(bpbs),
        "val_bpb_std": sample_std(bpbs),
        "val_loss_mean": mean(losses),
        "val_loss_std": sample_std(losses),
    }


def record_test(
    losses: Sequence[float],
    *,
    ref_loss: float | None = None,
    ref_losses: Sequence[float] | None = None,
    ref_source: str = "",
    margin: float = RECORD_MARGIN_NATS,
    alpha: float = RECORD_ALPHA,
) -> dict:
    """The STATS rule against a reference: improvement in nats and a one-sided test."""
    losses = [float(x) for x in losses]
    m = mean(losses)
    if ref_losses is not None and len(ref_losses) >= 2:
        ref_losses = [float(x) for x in ref_losses]
        ref_mean = mean(ref_losses)
        res = welch_less(losses, [r - margin for r in ref_losses])
        test = (
            f"Welch's unequal-variance t-test, one-sided: per-seed val_loss (n={len(losses)}) vs the "
            f"reference's per-seed val_loss minus {margin} (n={len(ref_losses)}); "
            f"H1: mean < reference mean - {margin}"
        )
        kind = "welch"
    else:
        if ref_losses is not None and len(ref_losses) == 1:
            ref_loss = float(ref_losses[0])
        if ref_loss is None:
            raise ValueError("no reference loss")
        ref_mean = float(ref_loss)
        res = ttest_1samp_less(losses, ref_mean - margin)
        test = (
            f"one-sample t-test, one-sided: per-seed val_loss (n={len(losses)}) against "
            f"reference_loss - {margin} = {ref_mean - margin:.8f}; H1: mean < reference - {margin}"
        )
        kind = "one-sample"
    improvement = ref_mean - m
    p = res["p"]
    return {
        "reference_source": ref_source,
        "reference_val_loss": ref_mean,
        "improvement_nats": improvement,
        "margin_nats": margin,
        "alpha": alpha,
        "test": test,
        "test_kind": kind,
        "t": res["t"],
        "df": res["df"],
        "p_value": p,
        "meets_record_bar": bool(p is not None and p < alpha and improvement >= margin),
    }
