"""Statistics for seed tables: mean/std, Welch's t-test, paired t-test, the record test.

All tests return None where they are undefined (fewer than 2 values on a side, zero variance),
never NaN, so JSON output stays valid.
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


def mean_std(xs: Sequence[float]) -> tuple[int, float | None, float | None]:
    """n, mean, sample standard deviation (ddof=1; None when n < 2)."""
    a = np.asarray(xs, dtype=np.float64)
    n = int(a.size)
    if n == 0:
        return 0, None, None
    m = float(a.mean())
    s = float(a.std(ddof=1)) if n >= 2 else None
    return n, m, s


def welch_df(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch–Satterthwaite degrees of freedom:
    (s1²/n1 + s2²/n2)² / ((s1²/n1)²/(n1-1) + (s2²/n2)²/(n2-1))."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n1, n2 = a.size, b.size
    if n1 < 2 or n2 < 2:
        return None
    v1 = a.var(ddof=1) / n1
    v2 = b.var(ddof=1) / n2
    den = v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1)
    if den == 0:
        return None
    return _finite((v1 + v2) ** 2 / den)


def welch(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> dict | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b) (scipy.stats.ttest_ind, equal_var=False)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return None
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sps.ttest_ind(a, b, equal_var=False, alternative=alternative)
    return {"t": _finite(r.statistic), "df": welch_df(a, b), "p": _finite(r.pvalue)}


def paired(a: Mapping, b: Mapping) -> dict | None:
    """Paired t-test (scipy.stats.ttest_rel) of a - b, pairing by key (the seed).

    Only when both sides have exactly the same keys, at least 2 of them, and the
    differences are not all equal."""
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


def record_test(control_losses: Sequence[float], new_losses: Sequence[float],
                margin: float = RECORD_MARGIN_NATS, alpha: float = RECORD_ALPHA) -> dict | None:
    """The challenge's record test on per-seed val_loss (nats), one-sided Welch:

    H0: mean(control) - mean(new) <= margin;  H1: the new runs beat the control by more than
    `margin` nats.  p = ttest_ind(control, new + margin, equal_var=False, alternative='greater').
    `passed` is p < alpha."""
    c = np.asarray(control_losses, dtype=np.float64)
    x = np.asarray(new_losses, dtype=np.float64)
    if c.size < 2 or x.size < 2:
        return None
    improvement = float(c.mean() - x.mean())
    r = welch(c, x + margin, alternative="greater")
    if r is None:
        return None
    p = r["p"]
    return {"improvement_nats": improvement, "margin": margin, "alpha": alpha,
            "t": r["t"], "df": r["df"], "p": p, "passed": bool(p is not None and p < alpha)}
