"""Overfitting guards for parameter searches: the deflated Sharpe ratio and the PBO by CSCV.

- Deflated Sharpe ratio (Bailey & López de Prado 2014, "The Deflated Sharpe Ratio: Correcting for
  Selection Bias, Backtest Overfitting and Non-Normality"): the probabilistic Sharpe ratio of the
  selected strategy against the Sharpe ratio one expects from the best of N skill-less trials.
- Probability of backtest overfitting (Bailey, Borwein, López de Prado & Zhu 2015, "The
  Probability of Backtest Overfitting"): combinatorially symmetric cross-validation over a
  (T observations x N trials) matrix of returns; PBO is the share of splits in which the
  in-sample winner ranks at or below the out-of-sample median.

All Sharpe ratios here are per observation (not annualized): divide an annualized Sharpe by
sqrt(periods per year) before passing it in. Kurtosis is the raw (non-excess) kurtosis, 3 for a
normal distribution, as in the papers.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import NamedTuple

import numpy as np
from scipy import stats

from tierlab.errors import ConfigError

EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(n_trials: int, var_sharpe: float = 1.0, mean_sharpe: float = 0.0) -> float:
    """Expected maximum Sharpe ratio of `n_trials` independent skill-less trials (DSR paper, eq. 4).

    Uses the extreme-value approximation E[max] ~ mean + sqrt(V) * ((1 - g) Z^-1(1 - 1/N) + g Z^-1(1 - 1/(N e))),
    with g the Euler-Mascheroni constant; it is the benchmark the best trial must beat.
    """
    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    if var_sharpe < 0:
        raise ConfigError(f"var_sharpe must be >= 0, got {var_sharpe}")
    if n_trials == 1:
        return float(mean_sharpe)
    z1 = stats.norm.ppf(1.0 - 1.0 / n_trials)
    z2 = stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(mean_sharpe + math.sqrt(var_sharpe) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2))


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0
) -> float:
    """Probability that the true Sharpe ratio exceeds `benchmark`, given `n_obs` returns and their moments.

    PSR = Z[(SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2)] (Bailey & López de Prado 2012).
    """
    if n_obs < 2:
        raise ConfigError(f"n_obs must be >= 2 to estimate a Sharpe ratio, got {n_obs}")
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not denom > 0:
        raise ConfigError(
            f"the Sharpe ratio's variance is not positive (skew={skew}, kurtosis={kurtosis}, sharpe={sharpe})"
        )
    return float(stats.norm.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denom)))


def deflated_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    n_trials: int,
    var_trials_sharpe: float,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """DSR: the PSR of the selected trial against the expected maximum Sharpe of `n_trials` trials.

    `var_trials_sharpe` is the variance of the (per-observation) Sharpe ratios across all trials.
    """
    sr0 = expected_max_sharpe(n_trials, var_trials_sharpe)
    return probabilistic_sharpe_ratio(sharpe, sr0, n_obs, skew, kurtosis)


class DeflatedSharpe(NamedTuple):
    """The DSR of one selected return series and the inputs it was computed from."""

    dsr: float
    sharpe: float
    benchmark: float
    n_obs: int
    n_trials: int
    skew: float
    kurtosis: float


def deflated_sharpe_from_returns(
    returns: np.ndarray, trial_sharpes: np.ndarray, n_trials: int | None = None
) -> DeflatedSharpe:
    """DSR of the selected trial's `returns`, deflated by the spread of all `trial_sharpes` (per observation).

    `trial_sharpes` holds the Sharpe ratio of the trials (the selected one included), each measured
    on the same observations as `returns`. `n_trials` (default: their count) is the number of
    trials tried, when more were tried than have a full return series (e.g. pruned ones).
    """
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    srs = np.asarray(trial_sharpes, dtype=np.float64)
    srs = srs[np.isfinite(srs)]
    if r.size < 3:
        raise ConfigError(f"need at least 3 finite returns for a deflated Sharpe ratio, got {r.size}")
    sr = sharpe_ratio(r)
    sd = r.std(ddof=1)
    skew = float(stats.skew(r)) if sd > 0 else 0.0
    kurt = float(stats.kurtosis(r, fisher=False)) if sd > 0 else 3.0
    n = max(int(srs.size), int(n_trials or 0), 1)
    var = float(srs.var(ddof=1)) if srs.size > 1 else 0.0
    sr0 = expected_max_sharpe(n, var)
    dsr = probabilistic_sharpe_ratio(sr, sr0, int(r.size), skew, kurt)
    return DeflatedSharpe(dsr, sr, sr0, int(r.size), n, skew, kurt)


def sharpe_ratio(returns: np.ndarray, axis: int = 0) -> np.ndarray | float:
    """Per-observation Sharpe ratio mean / std (ddof=1); 0 where the series is flat (no risk, no edge)."""
    r = np.asarray(returns, dtype=np.float64)
    mu = r.mean(axis=axis)
    sd = r.std(axis=axis, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sd > 0, mu / np.where(sd > 0, sd, 1.0), 0.0)
    return float(out) if np.ndim(out) == 0 else out


class PBOResult(NamedTuple):
    """Outcome of CSCV: PBO, the logit of each split's out-of-sample relative rank, and the pairs behind it."""

    pbo: float
    logits: np.ndarray  # (C,) logit of the IS-best trial's OOS relative rank, per split
    is_best: np.ndarray  # (C,) column of the in-sample best trial, per split
    is_perf: np.ndarray  # (C,) its in-sample performance
    oos_perf: np.ndarray  # (C,) its out-of-sample performance
    n_splits: int
    n_combinations: int
    block_size: int = 0  # observations per block (all blocks equal)
    n_dropped: int = 0  # first observations left out so that T is a multiple of n_splits

    @property
    def prob_oos_loss(self) -> float:
        """Share of splits where the in-sample winner has a negative out-of-sample performance."""
        return float(np.mean(self.oos_perf < 0))

    @property
    def degradation_slope(self) -> float:
        """Slope of OOS on IS performance of the selected trials (negative: selection hurts out of sample)."""
        if np.ptp(self.is_perf) == 0:
            return 0.0
        return float(np.polyfit(self.is_perf, self.oos_perf, 1)[0])


def pbo_cscv(returns: np.ndarray, n_splits: int = 16) -> PBOResult:
    """Probability of backtest overfitting of picking the best of N trials by Sharpe, via CSCV.

    `returns` is (T, N): one column of per-period returns per trial, rows aligned in time. The rows
    are cut into `n_splits` (even) contiguous blocks of equal size, as in the paper: when T is not a
    multiple of `n_splits`, the first T mod n_splits rows (the oldest) are left out, and the result
    says how many (`n_dropped`). Every choice of half the blocks is a training
    set and the other half its test set. For each, the trial with the best in-sample Sharpe ratio is
    ranked out of sample (rank 1 = worst of N); w = rank / (N + 1) and the logit ln(w / (1 - w)) <= 0
    counts as overfit. PBO is the share of such splits.
    """
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2:
        raise ConfigError(f"returns must be 2-D (observations x trials), got shape {m.shape}")
    t, n = m.shape
    if n < 2:
        raise ConfigError(f"PBO needs at least 2 trials, got {n}")
    if n_splits < 2 or n_splits % 2:
        raise ConfigError(f"n_splits must be an even number >= 2, got {n_splits}")
    if t < n_splits:
        raise ConfigError(f"n_splits={n_splits} exceeds the number of observations ({t})")
    dropped = t % n_splits
    m = np.where(np.isfinite(m[dropped:]), m[dropped:], 0.0)
    size = (t - dropped) // n_splits
    # Per-block sufficient statistics, so any union of blocks gives its Sharpe ratio without a copy.
    bounds = np.arange(n_splits + 1) * size
    cnt = np.diff(bounds).astype(np.float64)
    s1 = np.add.reduceat(m, bounds[:-1], axis=0)
    s2 = np.add.reduceat(m * m, bounds[:-1], axis=0)
    combos = np.array(list(combinations(range(n_splits), n_splits // 2)))
    sel = np.zeros((len(combos), n_splits))
    sel[np.arange(len(combos))[:, None], combos] = 1.0
    is_sr = _sharpe_from_sums(sel @ s1, sel @ s2, sel @ cnt)
    oos = 1.0 - sel
    oos_sr = _sharpe_from_sums(oos @ s1, oos @ s2, oos @ cnt)
    best = np.argmax(is_sr, axis=1)
    rows = np.arange(len(combos))
    ranks = stats.rankdata(oos_sr, axis=1, method="average")[rows, best]
    w = ranks / (n + 1.0)
    logits = np.log(w / (1.0 - w))
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        is_best=best,
        is_perf=is_sr[rows, best],
        oos_perf=oos_sr[rows, best],
        n_splits=n_splits,
        n_combinations=len(combos),
        block_size=size,
        n_dropped=dropped,
    )


def _sharpe_from_sums(s1: np.ndarray, s2: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    c = cnt[:, None]
    mean = s1 / c
    var = np.maximum(s2 - c * mean**2, 0.0) / np.maximum(c - 1.0, 1.0)
    sd = np.sqrt(var)
    # Flat series (sd ~ 0, e.g. a trial that never traded) score 0, not +-inf.
    tiny = 1e-12 * np.maximum(np.abs(mean), 1e-300)
    return np.where(sd > tiny, mean / np.where(sd > tiny, sd, 1.0), 0.0)


def default_n_splits(n_obs: int, max_splits: int = 16) -> int:
    """The largest even number of CSCV blocks <= max_splits that leaves at least 2 observations per block."""
    s = min(max_splits, n_obs // 2)
    s -= s % 2
    if s < 2:
        raise ConfigError(f"PBO needs at least 4 observations, got {n_obs}")
    return s
