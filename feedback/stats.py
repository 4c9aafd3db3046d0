"""A/B statistics with the user as the unit of analysis.

Users are randomized, impressions are not: one user's impressions share that user's taste, so treating them as
independent understates the variance (by the design effect, often 3-10x for CTR). Every metric here is therefore
built from per-user aggregates:

- a ratio metric ``sum(y) / sum(x)`` over users (CTR per impression: y = clicks, x = impressions) with its variance
  by the delta method, ``Var(R) ~ sum_u (y_u - R x_u)^2 / ((n - 1) n xbar^2)`` (Deng, Knoblich, Lu 2018,
  "Applying the Delta Method in Metric Analytics");
- a plain mean over users (CTR per user) is the same formula with ``x_u = 1``, which reduces to ``s^2 / n``;
- differences treatment - control with a normal (z) interval and two-sided p-value, and the relative lift with
  its delta-method interval;
- a sample-ratio-mismatch chi-square test of user counts against the designed shares;
- an always-valid confidence sequence for the difference (safe under daily peeking).

Every function broadcasts over leading axes and reduces over the last one, so a thousand simulated experiments
cost one call (see tests/feedback/test_stats.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SRM_THRESHOLD = 0.001
"""Flag a sample-ratio mismatch below this p-value: a real SRM gives tiny p-values, so a strict threshold keeps
false alarms at 1 in 1,000 reports without missing the splits that matter."""


def _as_float(a: npt.ArrayLike) -> FloatArray:
    return np.asarray(a, dtype=np.float64)


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of per-user pairs ``(x_u, y_u)``: enough for the ratio, the mean and their variances.

    Fields broadcast together; each holds one value per experiment (or per group, per day...). Moments add, so
    cumulative statistics over days are a ``cumsum`` of per-day increments.
    """

    n: FloatArray
    sx: FloatArray
    sy: FloatArray
    sxx: FloatArray
    syy: FloatArray
    sxy: FloatArray

    @classmethod
    def of(cls, x: npt.ArrayLike, y: npt.ArrayLike, *, where: npt.ArrayLike | None = None) -> Moments:
        """Moments of users along the last axis; ``where`` (same shape, bool) keeps only some users."""
        xa, ya = _as_float(x), _as_float(y)
        if xa.shape != ya.shape:
            raise ValueError(f"x and y differ in shape: {xa.shape} vs {ya.shape}")
        if xa.ndim == 0:
            raise ValueError("x and y need at least one axis (users)")
        if where is None:
            keep = np.ones(xa.shape, dtype=np.float64)
        else:
            keep = np.broadcast_to(np.asarray(where, dtype=bool), xa.shape).astype(np.float64)
        xk, yk = xa * keep, ya * keep
        return cls(
            n=keep.sum(axis=-1),
            sx=xk.sum(axis=-1),
            sy=yk.sum(axis=-1),
            sxx=(xk * xa).sum(axis=-1),
            syy=(yk * ya).sum(axis=-1),
            sxy=(xk * ya).sum(axis=-1),
        )

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.sx + other.sx,
            self.sy + other.sy,
            self.sxx + other.sxx,
            self.syy + other.syy,
            self.sxy + other.sxy,
        )

    def cumsum(self, axis: int = -1) -> Moments:
        """Running totals along ``axis`` (for example days), for cumulative estimates at each look."""
        return Moments(*(np.cumsum(f, axis=axis) for f in (self.n, self.sx, self.sy, self.sxx, self.syy, self.sxy)))


@dataclass(frozen=True)
class Estimate:
    """A point estimate, the variance of that estimate (not of one user), and the number of users behind it."""

    value: FloatArray
    variance: FloatArray
    n: FloatArray

    @property
    def se(self) -> FloatArray:
        out: FloatArray = np.sqrt(self.variance)
        return out

    def interval(self, alpha: float = 0.05) -> tuple[FloatArray, FloatArray]:
        """Two-sided normal interval at level ``1 - alpha``."""
        half = _z(alpha) * self.se
        return self.value - half, self.value + half


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(sps.norm.ppf(1.0 - alpha / 2.0))


def ratio_estimate(m: Moments) -> Estimate:
    """``R = sum(y) / sum(x)`` with its delta-method variance over users.

    The linearized residual ``d_u = y_u - R x_u`` has mean zero, so
    ``Var(R) = s_d^2 / (n xbar^2) = sum_u d_u^2 * n / ((n - 1) * sum(x)^2)``, with
    ``sum_u d_u^2 = syy - 2 R sxy + R^2 sxx``. NaN where ``sum(x) = 0`` (no value) or ``n < 2`` (no variance).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = m.sy / m.sx
        ss = np.maximum(m.syy - 2.0 * r * m.sxy + r * r * m.sxx, 0.0)
        var = np.where(m.n >= 2, ss * m.n / ((m.n - 1.0) * m.sx * m.sx), np.nan)
    return Estimate(value=_as_float(r), variance=_as_float(var), n=_as_float(m.n))


def mean_estimate(values: npt.ArrayLike, *, where: npt.ArrayLike | None = None) -> Estimate:
    """Mean over users along the last axis with variance ``s^2 / n`` (the ratio estimate with ``x_u = 1``)."""
    v = _as_float(values)
    return ratio_estimate(Moments.of(np.ones_like(v), v, where=where))


@dataclass(frozen=True)
class Difference:
    """Treatment minus control: absolute difference with a z interval and p-value, and the relative lift.

    The lift ``T / C - 1`` has delta-method variance ``Var(T) / C^2 + T^2 Var(C) / C^4`` (independent groups).
    Its test is the same hypothesis as the absolute one, so only the absolute p-value is reported.
    """

    estimate: FloatArray
    se: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray
    p_value: FloatArray
    lift: FloatArray
    lift_ci_low: FloatArray
    lift_ci_high: FloatArray
    n: FloatArray
    """Users in both groups together (the clock of the confidence sequence)."""


def compare(control: Estimate, treatment: Estimate, alpha: float = 0.05) -> Difference:
    """Difference ``treatment - control`` of two independent estimates, two-sided at level ``1 - alpha``."""
    z = _z(alpha)
    d = treatment.value - control.value
    var = treatment.variance + control.variance
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(var)
        p = 2.0 * sps.norm.sf(np.abs(d) / se)
        c, t = control.value, treatment.value
        lift = t / c - 1.0
        lift_se = np.sqrt(treatment.variance / (c * c) + t * t * control.variance / (c**4))
    return Difference(
        estimate=_as_float(d),
        se=_as_float(se),
        ci_low=_as_float(d - z * se),
        ci_high=_as_float(d + z * se),
        p_value=_as_float(p),
        lift=_as_float(lift),
        lift_ci_low=_as_float(lift - z * lift_se),
        lift_ci_high=_as_float(lift + z * lift_se),
        n=_as_float(control.n + treatment.n),
    )


def power_two_sided(effect: npt.ArrayLike, se: npt.ArrayLike, alpha: float = 0.05) -> FloatArray:
    """Power of the two-sided z test when the true difference is ``effect`` and the estimate's s.e. is ``se``.

    ``Phi(effect/se - z) + Phi(-effect/se - z)`` with ``z = Phi^-1(1 - alpha/2)``; ``se`` is the delta-method
    standard error of the difference at the planned number of users.
    """
    z = _z(alpha)
    ratio = _as_float(effect) / _as_float(se)
    out: FloatArray = sps.norm.cdf(ratio - z) + sps.norm.cdf(-ratio - z)
    return out


@dataclass(frozen=True)
class SRMResult:
    """Chi-square goodness of fit of user counts per group against the designed shares."""

    chi2: FloatArray
    df: int
    p_value: FloatArray
    flagged: BoolArray
    threshold: float


def srm_test(
    counts: npt.ArrayLike,
    expected_shares: Sequence[float] | npt.ArrayLike | None = None,
    threshold: float = SRM_THRESHOLD,
) -> SRMResult:
    """Sample-ratio-mismatch check over the last axis of ``counts`` (users per group).

    ``expected_shares`` (default equal) are normalized to sum to one. A group with zero users under a positive
    share gives a large chi-square, as it should. No users at all gives NaN and no flag.
    """
    c = _as_float(counts)
    if c.ndim == 0 or c.shape[-1] < 2:
        raise ValueError("SRM needs counts for at least two groups (last axis)")
    if np.any(c < 0):
        raise ValueError("counts must be non-negative")
    k = c.shape[-1]
    shares = np.full(k, 1.0 / k) if expected_shares is None else _as_float(expected_shares)
    if shares.shape != (k,) or np.any(~np.isfinite(shares)) or np.any(shares <= 0):
        raise ValueError(f"expected_shares must be {k} positive numbers, got {shares!r}")
    shares = shares / shares.sum()
    expected = c.sum(axis=-1, keepdims=True) * shares
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = ((c - expected) ** 2 / expected).sum(axis=-1)
    p = _as_float(sps.chi2.sf(chi2, k - 1))
    flagged: BoolArray = np.asarray(p < threshold)
    return SRMResult(chi2=_as_float(chi2), df=k - 1, p_value=p, flagged=flagged, threshold=threshold)


def mixture_rho(planned_n: float, alpha: float = 0.05) -> float:
    """Mixing scale of the normal-mixture confidence sequence, tuned to be tightest at ``planned_n`` units.

    ``rho = sqrt((-2 ln alpha + ln(-2 ln alpha + 1)) / planned_n)`` (Waudby-Smith et al., eq. for the optimal
    rho; GrowthBook's "sequential tuning parameter" is ``planned_n``). Choose ``planned_n`` before looking at data.
    """
    _z(alpha)
    if not planned_n > 0:
        raise ValueError(f"planned_n must be positive, got {planned_n}")
    la = -2.0 * math.log(alpha)
    return math.sqrt((la + math.log(la + 1.0)) / planned_n)


@dataclass(frozen=True)
class ConfidenceSequence:
    """Always-valid interval and p-value: with probability ``1 - alpha`` the interval covers the truth at every
    look at once, so it may be checked every day and the experiment stopped whenever it excludes zero."""

    low: FloatArray
    high: FloatArray
    halfwidth: FloatArray
    p_value: FloatArray
    rho: float


def always_valid_interval(
    estimate: npt.ArrayLike,
    variance: npt.ArrayLike,
    n: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    planned_n: float,
) -> ConfidenceSequence:
    """Asymptotic normal-mixture confidence sequence for a mean difference.

    Waudby-Smith, Arnold, Wu, Ramdas (2024), "Time-uniform central limit theory and asymptotic confidence
    sequences", Annals of Statistics (arXiv:2103.06476), built on Robbins' normal mixture (Howard et al. 2021,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences"). With ``n`` units so far, an estimate
    whose variance is ``V`` and per-unit variance ``s^2 = n V``::

        halfwidth = s * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * ln( sqrt(n rho^2 + 1) / alpha ) )

    and the matching always-valid p-value is ``min(1, 1 / E)`` with the mixture e-value
    ``E = exp(rho^2 n z^2 / (2 (n rho^2 + 1))) / sqrt(n rho^2 + 1)``, ``z = estimate / sqrt(V)``;
    ``p < alpha`` exactly when the interval excludes zero. ``rho`` comes from :func:`mixture_rho` (``planned_n``).
    For a two-group difference ``n`` is both groups' users and ``V = Var_T + Var_C`` (the convention of
    GrowthBook's gbstats). The guarantee is asymptotic (large ``n``): looks on a few dozen users are outside what
    the theorem covers.
    """
    rho = mixture_rho(planned_n, alpha)
    est, var, nn = _as_float(estimate), _as_float(variance), _as_float(n)
    a = nn * rho * rho + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(var * nn)
        half = s * np.sqrt(2.0 * a / (nn * nn * rho * rho) * np.log(np.sqrt(a) / alpha))
        z2 = est * est / var
        log_e = rho * rho * nn * z2 / (2.0 * a) - 0.5 * np.log(a)
        p = np.where(np.isnan(log_e), np.nan, np.minimum(1.0, np.exp(-np.maximum(log_e, 0.0))))
    return ConfidenceSequence(
        low=_as_float(est - half), high=_as_float(est + half), halfwidth=_as_float(half), p_value=_as_float(p), rho=rho
    )


__all__ = [
    "SRM_THRESHOLD",
    "BoolArray",
    "ConfidenceSequence",
    "Difference",
    "Estimate",
    "FloatArray",
    "Moments",
    "SRMResult",
    "always_valid_interval",
    "compare",
    "mean_estimate",
    "mixture_rho",
    "power_two_sided",
    "ratio_estimate",
    "srm_test",
]
