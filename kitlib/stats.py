"""Seed statistics and the record-significance test of the challenge (COMPLIANCE.md, STATS).

The record test, stated once for the whole kit (records pack, ablations report, the compliance auditor):
a new entry beats a reference by at least ``RECORD_MARGIN_NATS`` (0.005) nats of val_loss at p < ``RECORD_ALPHA``
(0.01), one-sided, on per-seed val_loss:

- reference given as one number ``ref_loss`` (a standing record's mean): the one-sample t-test of the per-seed
  losses against ``ref_loss - margin``, H1: mean < ref_loss - margin
  (``scipy.stats.ttest_1samp(losses, ref_loss - margin, alternative="less")``);
- reference given per seed ``ref_losses`` (>= 2 of them: a record folder's logs, or an ablation's control runs):
  Welch's unequal-variance t-test of the losses against the reference's losses minus the margin,
  H1: mean < mean(ref) - margin
  (``scipy.stats.ttest_ind(losses, ref_losses - margin, equal_var=False, alternative="less")``).

The t statistic is negative when the entry is better. With no spread at all (every loss equal on both sides) t is
infinite and the sign alone decides: p = 0 below the bar, else 1 (scipy alone would give nan). With fewer than two
seeds there is no test: t, df and p_value are None and the bar is not met. ``meets_record_bar`` is
``p_value < alpha and improvement_nats >= margin``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

RECORD_MARGIN_NATS = 0.005
RECORD_ALPHA = 0.01


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


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


def mean_std(xs: Sequence[float]) -> tuple[int, float | None, float | None]:
    """(n, mean, sample std); mean None for no values, std None for fewer than two."""
    n = len(xs)
    return n, (mean(xs) if n else None), sample_std(xs)


def welch(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> dict | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b) (``scipy.stats.ttest_ind(equal_var=False)``):
    {t, df (Welch-Satterthwaite), p}; None when undefined (fewer than 2 values on a side, or no spread on either)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2 or (a.var(ddof=1) == 0 and b.var(ddof=1) == 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sps.ttest_ind(a, b, equal_var=False, alternative=alternative)
    return {"t": _finite(r.statistic), "df": _finite(r.df), "p": _finite(r.pvalue)}


def paired(a: Mapping, b: Mapping) -> dict | None:
    """Paired t-test (``scipy.stats.ttest_rel``) of a - b, pairing by key (the seed): {t, df, p, n}.

    Only when both sides have exactly the same keys, at least 2 of them, and the differences are not all equal."""
    if not a or set(a) != set(b) or len(a) < 2:
        return None
    keys = sorted(a, key=str)
    x = np.array([a[k] for k in keys], dtype=np.float64)
    y = np.array([b[k] for k in keys], dtype=np.float64)
    d = x - y
    if np.all(d == d[0]):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sps.ttest_rel(x, y)
    return {"t": _finite(r.statistic), "df": int(len(keys) - 1), "p": _finite(r.pvalue), "n": len(keys)}


def bpb_to_nats(ref_bpb: float, mean_loss: float, mean_bpb: float) -> float:
    """A reference val_bpb in nats of this entry's tokens: ``ref_bpb * mean_loss / mean_bpb`` (the entry's own
    loss/bpb ratio, so that entries with different tokenizers compare by bits per byte)."""
    return float(ref_bpb) * float(mean_loss) / float(mean_bpb)


def _one_sided_less(xs: list[float], ys: list[float] | None, popmean: float) -> dict:
    """{t, df, p} for H1: mean(xs) < popmean (ys None) or mean(xs) < mean(ys) (Welch)."""
    if ys is None:
        spread, diff, df = sample_std(xs) != 0.0, mean(xs) - popmean, float(len(xs) - 1)
    else:
        spread = sample_std(xs) != 0.0 or sample_std(ys) != 0.0
        diff, df = mean(xs) - mean(ys), float(len(xs) + len(ys) - 2)
    if not spread:
        return {"t": -math.inf if diff < 0 else (math.inf if diff > 0 else None), "df": df,
                "p": 0.0 if diff < 0 else 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = (sps.ttest_1samp(xs, popmean, alternative="less") if ys is None
             else sps.ttest_ind(xs, ys, equal_var=False, alternative="less"))
    return {"t": float(r.statistic), "df": float(r.df), "p": float(r.pvalue)}


def record_test(losses: Sequence[float], *, ref_loss: float | None = None,
                ref_losses: Sequence[float] | None = None, margin: float = RECORD_MARGIN_NATS,
                alpha: float = RECORD_ALPHA) -> dict:
    """The record test (module doc) of per-seed ``losses`` (nats) against ``ref_losses`` (per seed; Welch when there
    are >= 2, a single value counts as ``ref_loss``) or ``ref_loss`` (one number; one-sample test).

    Returns {test: "welch" | "one-sample", description, n, n_reference, mean_loss, reference_loss, improvement_nats,
    margin_nats, alpha, t, df, p_value, meets_record_bar}. Raises ValueError without losses or a reference."""
    xs = [float(x) for x in losses]
    if not xs:
        raise ValueError("record test: no per-seed losses")
    refs = None if ref_losses is None else [float(x) for x in ref_losses]
    if refs is not None and len(refs) == 1:
        ref_loss, refs = refs[0], None
    if refs is not None and len(refs) >= 2:
        kind, ref_mean = "welch", mean(refs)
        desc = (f"Welch's unequal-variance t-test, one-sided: per-seed val_loss (n={len(xs)}) against the "
                f"reference's per-seed val_loss minus {margin} (n={len(refs)}); H1: mean < reference mean - {margin}")
    elif ref_loss is not None and math.isfinite(float(ref_loss)):
        kind, ref_mean, refs = "one-sample", float(ref_loss), None
        desc = (f"one-sample t-test, one-sided: per-seed val_loss (n={len(xs)}) against reference_loss - {margin} = "
                f"{ref_mean - margin:.8f}; H1: mean < reference - {margin}")
    else:
        raise ValueError("record test: no reference loss")
    if len(xs) < 2:
        res = {"t": None, "df": None, "p": None}
    else:
        res = _one_sided_less(xs, None if refs is None else [r - margin for r in refs], ref_mean - margin)
    improvement = ref_mean - mean(xs)
    p = res["p"]
    return {"test": kind, "description": desc, "n": len(xs), "n_reference": len(refs) if refs else 1,
            "mean_loss": mean(xs), "reference_loss": ref_mean, "improvement_nats": improvement,
            "margin_nats": margin, "alpha": alpha, "t": res["t"], "df": res["df"], "p_value": p,
            "meets_record_bar": bool(p is not None and p < alpha and improvement >= margin)}
