"""The A/B statistics, checked by simulation (users as the unit) and against textbook formulas.

Simulated users get a geometric number of impressions and a Beta-distributed personal CTR, so one user's
impressions are correlated (intraclass correlation ~1/3 here) and only a user-level variance is honest.

Binomial bands: a check over S simulated experiments of an event with true rate q accepts counts between the
0.1% and 99.9% binomial quantiles of (S, q) (about +-3.1 sigma). A correct method therefore fails about 1 seed
in 500; every draw below is seeded, so each run is the same fixed check, and a method off by the size of the
band (e.g. a 5% test rejecting 7.5% of A/A experiments at S = 1,000) fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from feedback.stats import (
    Estimate,
    Moments,
    always_valid_interval,
    compare,
    mean_estimate,
    mixture_rho,
    power_two_sided,
    ratio_estimate,
    srm_test,
)

ALPHA = 0.05
CONCENTRATION = 2.0  # Beta(mu k, (1 - mu) k): Var(p) = mu (1 - mu) / (k + 1), intraclass correlation 1/(k + 1)
MEAN_IMPRESSIONS = 8.0  # geometric on {1, 2, ...}


def _band(sims: int, rate: float) -> tuple[int, int]:
    """Counts a correct method lands in with probability ~0.998 (0.1% in each tail)."""
    return int(sps.binom.ppf(0.001, sims, rate)), int(sps.binom.isf(0.001, sims, rate))


def _users(
    rng: np.random.Generator, shape: tuple[int, ...], ctr: float
) -> tuple[np.ndarray[tuple[int, ...], np.dtype[np.int64]], np.ndarray[tuple[int, ...], np.dtype[np.int64]]]:
    """Per-user (impressions, clicks): impressions geometric >= 1, clicks binomial at a per-user Beta CTR."""
    impressions = rng.geometric(1.0 / MEAN_IMPRESSIONS, size=shape)
    p = rng.beta(ctr * CONCENTRATION, (1.0 - ctr) * CONCENTRATION, size=shape)
    return impressions, rng.binomial(impressions, p)


def _per_user_ratio_variance(ctr: float) -> float:
    """Delta-method variance of one user for CTR per impression under :func:`_users`, exactly.

    With d = c - mu m: E[d^2] = E[m] (mu - E[p^2]) + E[m^2] Var(p), and Var(R) = E[d^2] / (n E[m]^2).
    """
    q = 1.0 / MEAN_IMPRESSIONS
    em, em2 = 1.0 / q, (2.0 - q) / q**2
    var_p = ctr * (1.0 - ctr) / (CONCENTRATION + 1.0)
    return (em * (ctr - var_p - ctr * ctr) + em2 * var_p) / em**2


# --- formulas against hand computations -------------------------------------------------------------------------


def test_ratio_variance_matches_the_textbook_delta_formula() -> None:
    rng = np.random.default_rng(0)
    x, y = _users(rng, (50,), 0.1)
    est = ratio_estimate(Moments.of(x, y))
    n, mx, my = len(x), x.mean(), y.mean()
    cov = np.cov(x, y, ddof=1)
    textbook = (cov[1, 1] / mx**2 - 2 * my * cov[0, 1] / mx**3 + my**2 * cov[0, 0] / mx**4) / n
    assert float(est.value) == pytest.approx(y.sum() / x.sum())
    assert float(est.variance) == pytest.approx(textbook, rel=1e-9)
    assert float(est.n) == n


def test_mean_estimate_is_the_sample_mean_with_s2_over_n() -> None:
    v = np.array([0.0, 0.5, 0.25, 1.0, 0.1])
    est = mean_estimate(v)
    assert float(est.value) == pytest.approx(v.mean())
    assert float(est.variance) == pytest.approx(v.var(ddof=1) / len(v))
    masked = mean_estimate(v, where=v > 0.2)
    assert float(masked.value) == pytest.approx(v[v > 0.2].mean())
    assert float(masked.variance) == pytest.approx(v[v > 0.2].var(ddof=1) / 3)


def test_moments_add_and_accumulate_like_concatenation() -> None:
    rng = np.random.default_rng(1)
    x, y = _users(rng, (3, 40), 0.1)
    parts = Moments.of(x, y)  # one row per "day"
    running = parts.cumsum(axis=-1)
    whole = Moments.of(x.reshape(-1), y.reshape(-1))
    first_two = Moments.of(x[:2].reshape(-1), y[:2].reshape(-1))
    for field in ("n", "sx", "sy", "sxx", "syy", "sxy"):
        assert getattr(running, field)[-1] == pytest.approx(getattr(whole, field))
        assert getattr(running, field)[1] == pytest.approx(getattr(first_two, field))
    summed = Moments.of(x[0], y[0]) + Moments.of(x[1], y[1])
    assert float(summed.sxy) == pytest.approx(float(first_two.sxy))


def test_empty_and_single_user_groups_give_nan_without_warnings() -> None:
    # pytest turns warnings into errors, so a division warning would fail here.
    empty = ratio_estimate(Moments.of(np.zeros(0), np.zeros(0)))
    assert math.isnan(float(empty.value))
    assert math.isnan(float(empty.variance))
    one = ratio_estimate(Moments.of(np.array([4.0]), np.array([1.0])))
    assert float(one.value) == pytest.approx(0.25)
    assert math.isnan(float(one.variance))
    d = compare(empty, one)
    assert math.isnan(float(d.p_value))
    with pytest.raises(ValueError, match="shape"):
        Moments.of(np.zeros(3), np.zeros(4))


def test_compare_difference_lift_and_p_value() -> None:
    rng = np.random.default_rng(2)
    a = ratio_estimate(Moments.of(*_users(rng, (3000,), 0.10)))
    b = ratio_estimate(Moments.of(*_users(rng, (3000,), 0.12)))
    d = compare(a, b, alpha=0.05)
    diff = float(b.value - a.value)
    se = math.sqrt(float(a.variance + b.variance))
    assert float(d.estimate) == pytest.approx(diff)
    assert float(d.ci_low) == pytest.approx(diff - 1.959964 * se, rel=1e-5)
    assert float(d.p_value) == pytest.approx(2 * sps.norm.sf(abs(diff) / se))
    a_v, b_v = float(a.value), float(b.value)
    lift_se = math.sqrt(float(b.variance) / a_v**2 + b_v**2 * float(a.variance) / a_v**4)
    assert float(d.lift) == pytest.approx(b_v / a_v - 1)
    assert float(d.lift_ci_high) == pytest.approx(b_v / a_v - 1 + 1.959964 * lift_se, rel=1e-5)
    assert float(compare(b, a).p_value) == pytest.approx(float(d.p_value))
    assert float(d.n) == 6000


def test_power_formula_limits() -> None:
    assert float(power_two_sided(0.0, 1.0, 0.05)) == pytest.approx(0.05)
    assert float(power_two_sided(2.8016, 1.0, 0.05)) == pytest.approx(0.80, abs=1e-3)
    assert float(power_two_sided(-2.8016, 1.0, 0.05)) == pytest.approx(0.80, abs=1e-3)


def test_srm_chi_square_by_hand() -> None:
    res = srm_test([5200, 4800])
    assert float(res.chi2) == pytest.approx(16.0)
    assert res.df == 1
    assert float(res.p_value) == pytest.approx(sps.chi2.sf(16.0, 1))
    assert bool(res.flagged)
    three = srm_test([2000, 1000, 1000], expected_shares=[2, 1, 1])
    assert float(three.chi2) == pytest.approx(0.0)
    assert not bool(three.flagged)
    zero = srm_test([1000, 0])
    assert bool(zero.flagged)
    with pytest.raises(ValueError, match="expected_shares"):
        srm_test([10, 10], expected_shares=[1, 0])
    with pytest.raises(ValueError, match="two groups"):
        srm_test([10])


def test_confidence_sequence_formula_and_its_p_value_agree() -> None:
    # rho for alpha = 0.05 tuned at 10,000: sqrt((-2 ln a + ln(-2 ln a + 1)) / N).
    la = -2 * math.log(0.05)
    assert mixture_rho(10_000, 0.05) == pytest.approx(math.sqrt((la + math.log(la + 1)) / 10_000))
    n = np.array([200.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 1_000_000.0])
    var = 0.05 / n  # per-unit variance 0.05
    est = np.linspace(-0.02, 0.02, 41)[:, None]
    cs = always_valid_interval(est, var, n, alpha=0.05, planned_n=10_000)
    excludes = (cs.low > 0) | (cs.high < 0)
    assert np.array_equal(excludes, cs.p_value < 0.05)
    fixed = 1.959964 * np.sqrt(var)
    ratio = cs.halfwidth / fixed  # the half-width does not depend on the estimate: shape (6,)
    assert np.all(ratio > 1.0)  # always wider than the fixed-horizon interval...
    assert ratio[3] == pytest.approx(ratio.min(), rel=0.05)  # ...and relatively tightest near the planned n
    assert 1.3 < ratio[3] < 1.8
    assert np.all(np.diff(cs.halfwidth) < 0)  # still shrinks as data arrive


# --- simulation checks ------------------------------------------------------------------------------------------


def test_aa_false_positive_rate_is_alpha_with_user_level_variance() -> None:
    """1,000 A/A experiments, 2,000 users per group: the delta-method test rejects ~5%; the impression-level
    binomial test (impressions taken as independent) rejects far more, which is why users are the unit."""
    rng = np.random.default_rng(11)
    sims, users = 1_000, 2_000
    xa, ya = _users(rng, (sims, users), 0.08)
    xb, yb = _users(rng, (sims, users), 0.08)
    a, b = ratio_estimate(Moments.of(xa, ya)), ratio_estimate(Moments.of(xb, yb))
    lo, hi = _band(sims, ALPHA)
    rejected = int((compare(a, b, ALPHA).p_value < ALPHA).sum())
    assert lo <= rejected <= hi, (rejected, lo, hi)

    per_user = compare(mean_estimate(ya / xa), mean_estimate(yb / xb), ALPHA)
    rejected_per_user = int((per_user.p_value < ALPHA).sum())
    assert lo <= rejected_per_user <= hi, (rejected_per_user, lo, hi)

    naive_var = a.value * (1 - a.value) / xa.sum(axis=-1) + b.value * (1 - b.value) / xb.sum(axis=-1)
    naive_p = 2 * sps.norm.sf(np.abs(b.value - a.value) / np.sqrt(naive_var))
    assert int((naive_p < ALPHA).sum()) > 3 * hi


def test_known_lift_is_found_with_the_predicted_power() -> None:
    """A 25% relative lift on CTR 8%: the empirical power over 1,000 experiments matches the power formula fed
    with the exact per-user delta-method variance of the simulated population."""
    rng = np.random.default_rng(12)
    sims, users, ctr_a, lift = 1_000, 2_000, 0.08, 0.25
    ctr_b = ctr_a * (1 + lift)
    se = math.sqrt((_per_user_ratio_variance(ctr_a) + _per_user_ratio_variance(ctr_b)) / users)
    predicted = float(power_two_sided(ctr_b - ctr_a, se, ALPHA))
    assert 0.6 < predicted < 0.95  # a power where the band is informative
    a = ratio_estimate(Moments.of(*_users(rng, (sims, users), ctr_a)))
    b = ratio_estimate(Moments.of(*_users(rng, (sims, users), ctr_b)))
    d = compare(a, b, ALPHA)
    lo, hi = _band(sims, predicted)
    detected = int(((d.p_value < ALPHA) & (d.estimate > 0)).sum())
    assert lo <= detected <= hi, (detected, predicted * sims, lo, hi)
    # The relative-lift interval covers the true lift at about the nominal rate too.
    covered = int(((d.lift_ci_low <= lift) & (lift <= d.lift_ci_high)).sum())
    c_lo, c_hi = _band(sims, 1 - ALPHA)
    assert c_lo <= covered <= c_hi, (covered, c_lo, c_hi)


def test_srm_flags_a_skewed_split_and_rarely_a_fair_one() -> None:
    rng = np.random.default_rng(13)
    # A fair 50/50 design of 10,000 users: false alarms at about the 0.001 threshold over 20,000 reports.
    sims, n = 20_000, 10_000
    a = rng.binomial(n, 0.5, size=sims)
    fair = srm_test(np.stack([a, n - a], axis=-1))
    lo, hi = _band(sims, 0.001)
    assert lo <= int(fair.flagged.sum()) <= hi, (int(fair.flagged.sum()), lo, hi)
    # The same design but a realised 52/48 assignment with 40,000 users: the check nearly always fires, as the
    # non-central chi-square (non-centrality N (0.02^2 / 0.5) * 2 = 64) predicts.
    n_big, skewed_sims = 40_000, 2_000
    a = rng.binomial(n_big, 0.52, size=skewed_sims)
    skewed = srm_test(np.stack([a, n_big - a], axis=-1))
    predicted = float(sps.ncx2.sf(sps.chi2.isf(0.001, 1), 1, n_big * 2 * 0.02**2 / 0.5))
    assert predicted > 0.99
    s_lo, _ = _band(skewed_sims, predicted)
    assert int(skewed.flagged.sum()) >= s_lo
    # A realised 52/48 at 10,000 is already a mismatch (chi2 = 16, p ~ 6e-5); 50.5/49.5 is not.
    assert bool(srm_test([5200, 4800]).flagged)
    assert not bool(srm_test([5050, 4950]).flagged)


def test_always_valid_interval_survives_daily_peeking_where_the_fixed_one_does_not() -> None:
    """500 A/A experiments looked at every day for 14 days (300 new users per group per day). Stopping at the
    first look whose fixed-horizon 95% interval excludes zero "wins" far more than 5% of the time; the
    always-valid interval, tuned for the planned 8,400 users, stays at or below alpha."""
    rng = np.random.default_rng(14)
    sims, days, per_day = 500, 14, 300
    x, y = _users(rng, (sims, 2, days, per_day), 0.08)
    cumulative = Moments.of(x, y).cumsum(axis=-1)  # (sims, group, day): everyone who arrived up to that day
    est = ratio_estimate(cumulative)
    a, b = (Estimate(est.value[:, g], est.variance[:, g], est.n[:, g]) for g in (0, 1))
    d = compare(a, b, ALPHA)  # (sims, day)
    cs = always_valid_interval(d.estimate, d.se**2, d.n, alpha=ALPHA, planned_n=2 * days * per_day)

    fixed_ever = ((d.ci_low > 0) | (d.ci_high < 0)).any(axis=-1)
    fixed_last = (d.ci_low[:, -1] > 0) | (d.ci_high[:, -1] < 0)
    cs_ever = ((cs.low > 0) | (cs.high < 0)).any(axis=-1)
    lo, hi = _band(sims, ALPHA)
    assert lo <= int(fixed_last.sum()) <= hi  # one planned look: fine
    assert int(fixed_ever.sum()) > hi  # peeking every day: inflated (Armitage: ~20% for 14 looks)
    assert int(cs_ever.sum()) <= hi  # always valid: at most alpha, whatever the looks
    assert int(cs_ever.sum()) < int(fixed_ever.sum()) / 3


def test_delta_method_variance_matches_brute_force_simulation() -> None:
    """4,000 experiments of 1,000 users where heavy users click less (impressions and CTR correlated, so the
    covariance term matters): the spread of the ratio across experiments is what the delta method says from
    one experiment. The sampling error of a variance from 4,000 draws is ~2.3%, so 10% is a loose band."""
    rng = np.random.default_rng(15)
    sims, users = 4_000, 1_000
    impressions = rng.geometric(1.0 / MEAN_IMPRESSIONS, size=(sims, users))
    mu = np.clip(0.16 / (1.0 + impressions / MEAN_IMPRESSIONS), 0.005, 0.9)
    clicks = rng.binomial(impressions, rng.beta(mu * CONCENTRATION, (1 - mu) * CONCENTRATION))
    est = ratio_estimate(Moments.of(impressions, clicks))
    brute = float(est.value.var(ddof=1))
    assert float(est.variance.mean()) == pytest.approx(brute, rel=0.10)
    naive = float((est.value * (1 - est.value) / impressions.sum(axis=-1)).mean())
    assert naive < 0.5 * brute  # impressions as independent trials: far too optimistic
    # And the exact per-user variance of the uncorrelated population agrees with simulation as well.
    x, y = _users(rng, (sims, users), 0.08)
    plain = ratio_estimate(Moments.of(x, y))
    assert float(plain.value.var(ddof=1)) == pytest.approx(_per_user_ratio_variance(0.08) / users, rel=0.10)
