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
