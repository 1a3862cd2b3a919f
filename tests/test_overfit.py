"""The overfitting guards against the papers' worked examples and cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from research.overfit import (
    deflated_sharpe_from_returns,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    pbo_cscv,
    probabilistic_sharpe_ratio,
)
from tierlab.errors import ConfigError


def test_dsr_matches_the_papers_numerical_example() -> None:
    # Bailey & López de Prado (2014), section "A numerical example": N = 100 trials, variance of
    # the annualized Sharpe across trials 1/2, best annualized SR 2.5 over 5 years of daily returns
    # (T = 1250), skewness -3, kurtosis 10. The paper finds SR0 ~ 0.1132 (daily) and DSR ~ 0.9004.
    sr = 2.5 / math.sqrt(250)
    var = 0.5 / 250
    assert expected_max_sharpe(100, var) == pytest.approx(0.1132, abs=1e-4)
    assert deflated_sharpe_ratio(sr, 1250, 100, var, skew=-3.0, kurtosis=10.0) == pytest.approx(0.9004, abs=5e-4)


def test_more_trials_deflate_more() -> None:
    sr, var = 0.1, 0.002
    dsrs = [deflated_sharpe_ratio(sr, 500, n, var) for n in (1, 10, 100, 1000)]
    assert dsrs == sorted(dsrs, reverse=True)
    # One trial: no selection, the DSR is the PSR against zero.
    assert dsrs[0] == pytest.approx(probabilistic_sharpe_ratio(sr, 0.0, 500))


@pytest.mark.parametrize(("n", "exact"), [(10, 1.5388), (100, 2.5076), (1000, 3.2414)])
def test_expected_max_sharpe_tracks_the_max_of_normals(n: int, exact: float) -> None:
    # Exact expectations of the maximum of n standard normals (order-statistics tables); the
    # paper's extreme-value approximation is within a few percent.
    assert expected_max_sharpe(n, 1.0) == pytest.approx(exact, rel=0.03)


def test_negative_skew_and_fat_tails_lower_the_psr() -> None:
    base = probabilistic_sharpe_ratio(0.1, 0.0, 250)
    assert probabilistic_sharpe_ratio(0.1, 0.0, 250, skew=-2.0, kurtosis=9.0) < base


def test_dsr_from_returns_rejects_lucky_noise_and_keeps_real_skill() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 0.01, size=(250, 200))
    srs = noise.mean(0) / noise.std(0, ddof=1)
    best = int(np.argmax(srs))
    lucky = deflated_sharpe_from_returns(noise[:, best], srs)
    assert lucky.n_trials == 200 and lucky.n_obs == 250
    assert lucky.dsr < 0.5  # the best of 200 noise series does not beat the expected maximum
    skilled = noise.copy()
    skilled[:, 0] += 0.004  # a true Sharpe of 0.4 per period
    srs2 = skilled.mean(0) / skilled.std(0, ddof=1)
    assert deflated_sharpe_from_returns(skilled[:, 0], srs2).dsr > 0.99


def test_pbo_of_pure_noise_is_about_one_half() -> None:
    # One data set's PBO varies a lot (splits reuse the same rows), so average over many: for
    # skill-less trials the in-sample winner's out-of-sample rank is uniform and PBO -> 1/2.
    rng = np.random.default_rng(11)
    pbos = [pbo_cscv(rng.normal(size=(200, 20)), n_splits=8).pbo for _ in range(150)]
    assert np.mean(pbos) == pytest.approx(0.5, abs=0.08)


def test_pbo_of_one_dominant_strategy_is_near_zero() -> None:
    rng = np.random.default_rng(5)
    m = rng.normal(size=(600, 30))
    m[:, 7] += 0.5  # real skill in every block
    res = pbo_cscv(m, n_splits=12)
    assert res.pbo < 0.02
    assert (res.is_best == 7).mean() > 0.98
    assert res.n_combinations == math.comb(12, 6)


def test_pbo_is_one_when_the_in_sample_winner_always_reverses() -> None:
    # Two blocks. Trial 0 wins the first half and is the worst in the second, trial 1 the reverse;
    # the others are flat in between. Both splits pick a trial that is worst out of sample.
    t = 100
    m = np.zeros((t, 5))
    rng = np.random.default_rng(0)
    m[:, 2:] = rng.normal(0.0, 0.01, size=(t, 3))
    m[: t // 2, 0] = 0.05 + rng.normal(0, 0.01, t // 2)
    m[t // 2 :, 0] = -0.05 + rng.normal(0, 0.01, t // 2)
    m[:, 1] = m[::-1, 0]
    res = pbo_cscv(m, n_splits=2)
    assert res.n_combinations == 2
    assert res.pbo == 1.0
    assert np.allclose(res.logits, math.log((1 / 6) / (5 / 6)))  # rank 1 of N = 5
    assert res.prob_oos_loss == 1.0


def test_pbo_rejects_bad_inputs_by_name() -> None:
    with pytest.raises(ConfigError, match="n_splits"):
        pbo_cscv(np.zeros((20, 3)), n_splits=5)
    with pytest.raises(ConfigError, match="trials"):
        pbo_cscv(np.zeros((20, 1)), n_splits=4)
    with pytest.raises(ConfigError, match="n_trials"):
        expected_max_sharpe(0)


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("t", [3, 5, 8])
def test_psr_at_small_t_uses_sqrt_t_minus_one(t: int) -> None:
    # PSR = Z[(SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)]: at small T the "- 1"
    # moves the answer by far more than the tolerance (checked below against the sqrt(T) variant).
    sr, bench, skew, kurt = 0.5, 0.1, -0.4, 4.5
    denom = math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    want = _norm_cdf((sr - bench) * math.sqrt(t - 1) / denom)
    wrong = _norm_cdf((sr - bench) * math.sqrt(t) / denom)
    got = probabilistic_sharpe_ratio(sr, bench, t, skew, kurt)
    assert abs(want - wrong) > 0.01
    assert got == pytest.approx(want, abs=1e-12)


def test_psr_from_five_returns_by_hand() -> None:
    r = np.array([0.02, -0.01, 0.015, 0.005, -0.004])
    res = deflated_sharpe_from_returns(r, np.array([0.0, 0.2]), n_trials=1)
    sr = r.mean() / r.std(ddof=1)
    z = (r - r.mean()) / r.std(ddof=0)
    skew, kurt = float(np.mean(z**3)), float(np.mean(z**4))
    assert res.n_obs == 5 and res.sharpe == pytest.approx(sr, rel=1e-12)
    assert res.skew == pytest.approx(skew, abs=1e-12) and res.kurtosis == pytest.approx(kurt, abs=1e-12)
    bench = expected_max_sharpe(2, np.var([0.0, 0.2], ddof=1))  # N = max(2 sharpes, n_trials 1)
    want = _norm_cdf((sr - bench) * math.sqrt(4) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert res.dsr == pytest.approx(want, abs=1e-12)


def test_the_dsr_honours_the_trial_count() -> None:
    rng = np.random.default_rng(8)
    r = rng.normal(0.002, 0.01, 60)
    srs = np.array([0.05, 0.1, 0.15, r.mean() / r.std(ddof=1)])
    var = float(np.var(srs, ddof=1))
    few = deflated_sharpe_from_returns(r, srs)
    many = deflated_sharpe_from_returns(r, srs, n_trials=200)
    assert few.n_trials == 4 and many.n_trials == 200
    assert few.benchmark == pytest.approx(expected_max_sharpe(4, var), abs=1e-12)
    assert many.benchmark == pytest.approx(expected_max_sharpe(200, var), abs=1e-12)
    assert many.dsr == pytest.approx(deflated_sharpe_ratio(few.sharpe, 60, 200, var, few.skew, few.kurtosis), abs=1e-12)
    assert many.dsr < few.dsr - 0.05
    # fewer than the sharpes given never lowers N
    assert deflated_sharpe_from_returns(r, srs, n_trials=2).n_trials == 4


def test_pbo_uses_equal_blocks_and_drops_the_first_rows_when_t_is_not_a_multiple() -> None:
    rng = np.random.default_rng(4)
    m = rng.normal(size=(53, 6))  # 53 = 8 x 6 + 5
    m[:5] = 50.0 * rng.normal(size=(5, 6))  # huge first rows: they change the answer if used
    res = pbo_cscv(m, n_splits=8)
    ref = pbo_cscv(m[5:], n_splits=8)
    assert res.n_dropped == 5 and res.block_size == 6 and ref.n_dropped == 0
    np.testing.assert_array_equal(res.logits, ref.logits)
    np.testing.assert_array_equal(res.is_perf, ref.is_perf)
    # and the blocks are the contiguous 6-row slices of the rest: block 0 alone in sample, by hand
    two = pbo_cscv(m, n_splits=2)
    half = m[1:].reshape(2, 26, 6)
    sr = half.mean(1) / half.std(1, ddof=1)
    assert two.is_best[0] == int(np.argmax(sr[0])) and two.is_perf[0] == pytest.approx(sr[0].max(), rel=1e-9)
