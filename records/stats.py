"""Seed statistics and the record test of COMPLIANCE.md (STATS: >= 0.005 nats at p < 0.01).

Pure Python (no scipy needed at run time); tests check every number against scipy.

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
# Student t distribution via the regularised incomplete beta function.


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    if abs(d) < tiny:
        d = tiny
    d = 1.0 / d
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(lbeta)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df may be fractional)."""
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 0.0 if t < 0 else 1.0
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2.0, 0.5, x)  # P(T > |t|)
    return tail if t < 0 else 1.0 - tail


# --------------------------------------------------------------------------------------
# Tests


def ttest_1samp_less(xs: Sequence[float], popmean: float) -> dict:
    """One-sample t-test, H1: mean(xs) < popmean. Returns {t, df, p}."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n < 2:
        return {"t": None, "df": None, "p": None}
    m, s = mean(xs), sample_std(xs)
    diff = m - popmean
    if s == 0.0:
        t = -math.inf if diff < 0 else (math.inf if diff > 0 else math.nan)
        p = 0.0 if diff < 0 else 1.0
        return {"t": t, "df": float(n - 1), "p": p}
    t = diff / (s / math.sqrt(n))
    return {"t": t, "df": float(n - 1), "p": t_cdf(t, n - 1)}


def welch_less(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Welch's t-test, H1: mean(xs) < mean(ys). Returns {t, df, p}."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) < 2 or len(ys) < 2:
        return {"t": None, "df": None, "p": None}
    vx, vy = sample_var(xs) / len(xs), sample_var(ys) / len(ys)
    diff = mean(xs) - mean(ys)
    se2 = vx + vy
    if se2 == 0.0:
        t = -math.inf if diff < 0 else (math.inf if diff > 0 else math.nan)
        return {"t": t, "df": float(len(xs) + len(ys) - 2), "p": 0.0 if diff < 0 else 1.0}
    t = diff / math.sqrt(se2)
    df = se2 * se2 / (vx * vx / (len(xs) - 1) + vy * vy / (len(ys) - 1))
    return {"t": t, "df": df, "p": t_cdf(t, df)}


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
