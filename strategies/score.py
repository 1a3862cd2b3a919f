"""The default score model: intraday momentum and VWAP deviation, squashed with tanh into [-1, 1].

Causal by construction: the score at bar t reads only the same symbol's bars of the same New York
session up to and including t (windows restart each session, so an overnight gap never leaks
into a score, and a live runner holding today's bars computes the very same numbers). Missing
minutes are skipped, never filled; a bar without enough history has no score (NaN).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _session_rows_nb(c: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One column's real bars in order (`rows`) and, for each, where its session starts in `rows`.

    The k-th real bar is bar number k - first[k] of its session, so session-bound lookbacks are
    plain index arithmetic on `rows`; missing minutes are skipped, never filled.
    """
    t_total = c.shape[0]
    rows = np.empty(t_total, dtype=np.int64)
    first = np.empty(t_total, dtype=np.int64)
    m = 0
    cur_day = -1
    start = 0
    for t in range(t_total):
        if math.isnan(c[t]):
            continue
        if day[t] != cur_day:
            cur_day = day[t]
            start = m
        rows[m] = t
        first[m] = start
        m += 1
    return rows[:m], first[:m]


@njit(cache=True)
def _score_at_nb(
    h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, rows: np.ndarray, k: int,
    mom_window: int, vol_window: int, vwap_window: int, w_mom: float, w_vwap: float, gain: float,
) -> float:
    """The score of one column's k-th real bar `rows[k]`, its session warm (the one formula both drivers use)."""
    t = rows[k]
    # volatility of one-bar log returns over the last vol_window returns
    s1 = 0.0
    s2 = 0.0
    for i in range(k - vol_window + 1, k + 1):
        r = math.log(c[rows[i]] / c[rows[i - 1]])
        s1 += r
        s2 += r * r
    var = (s2 - s1 * s1 / vol_window) / (vol_window - 1)
    sigma = math.sqrt(var) if var > 0 else 0.0
    if sigma <= 0:
        return 0.0
    z_mom = math.log(c[t] / c[rows[k - mom_window]]) / (sigma * math.sqrt(mom_window))
    pv = 0.0
    vv = 0.0
    for i in range(k - vwap_window + 1, k + 1):
        j = rows[i]
        pv += (h[j] + low[j] + c[j]) / 3.0 * v[j]
        vv += v[j]
    z_vwap = 0.0
    if vv > 0:
        z_vwap = math.log(c[t] / (pv / vv)) / (sigma * math.sqrt(vwap_window / 2.0))
    return math.tanh(gain * (w_mom * z_mom + w_vwap * z_vwap))


@njit(cache=True)
def _spike_at_nb(v: np.ndarray, rows: np.ndarray, k: int, window: int, mult: float) -> bool:
    """Whether one column's k-th real bar's volume is > mult x the mean of its `window` previous real bars."""
    vs = 0.0
    for i in range(k - window, k):
        vs += v[rows[i]]
    return vs > 0 and v[rows[k]] > mult * vs / window


@njit(cache=True)
def _score_column_nb(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, day: np.ndarray,
    mom_window: int, vol_window: int, vwap_window: int, w_mom: float, w_vwap: float, gain: float,
    out: np.ndarray,
) -> None:
    out[:] = np.nan
    rows, first = _session_rows_nb(c, day)
    warm = max(mom_window, vol_window, vwap_window)
    for k in range(rows.shape[0]):
        if k - first[k] + 1 <= warm:  # bars of this session so far, this one included
            continue
        out[rows[k]] = _score_at_nb(h, low, c, v, rows, k, mom_window, vol_window, vwap_window, w_mom, w_vwap, gain)


@njit(cache=True, parallel=True)
def score_nb(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, day: np.ndarray,
    mom_window: int, vol_window: int, vwap_window: int, w_mom: float, w_vwap: float, gain: float,
) -> np.ndarray:
    """Scores (T, N) in [-1, 1]; NaN where a symbol has no fresh score (no bar, or warm-up)."""
    t_total, n_sym = c.shape
    out = np.empty((t_total, n_sym))
    for j in prange(n_sym):
        _score_column_nb(o[:, j], h[:, j], low[:, j], c[:, j], v[:, j], day, mom_window, vol_window,
                         vwap_window, w_mom, w_vwap, gain, out[:, j])
    return out


@njit(cache=True)
def volume_spikes_nb(c: np.ndarray, v: np.ndarray, day: np.ndarray, window: int, mult: float) -> np.ndarray:
    """Events (T, N): a bar's volume > mult x the mean of the previous `window` bars of its session."""
    t_total, n_sym = c.shape
    spike = np.zeros((t_total, n_sym), dtype=np.bool_)
    for j in range(n_sym):
        rows, first = _session_rows_nb(c[:, j], day)
        for k in range(rows.shape[0]):
            if k - first[k] < window:
                continue
            spike[rows[k], j] = _spike_at_nb(v[:, j], rows, k, window, mult)
    return spike


@njit(cache=True)
def score_row_nb(
    h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, t: int,
    mom_window: int, vol_window: int, vwap_window: int, w_mom: float, w_vwap: float, gain: float,
    spike_window: int, spike_mult: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Row t of `score_nb` and of `volume_spikes_nb` for arrays (T, N) holding ONE session's bars.

    The live runner's per-bar path: the same per-bar formulas on the same real bars, so each value
    equals the vectorized one bit for bit, at the cost of one bar instead of a window.
    """
    n_sym = c.shape[1]
    score = np.full(n_sym, np.nan)
    spike = np.zeros(n_sym, dtype=np.bool_)
    warm = max(mom_window, vol_window, vwap_window)
    rows = np.empty(t + 1, dtype=np.int64)
    for j in range(n_sym):
        if math.isnan(c[t, j]):
            continue
        m = 0
        for i in range(t + 1):
            if not math.isnan(c[i, j]):
                rows[m] = i
                m += 1
        k = m - 1  # this bar's place among the session's real bars
        if k + 1 > warm:
            score[j] = _score_at_nb(h[:, j], low[:, j], c[:, j], v[:, j], rows[:m], k, mom_window, vol_window,
                                    vwap_window, w_mom, w_vwap, gain)
        if k >= spike_window:
            spike[j] = _spike_at_nb(v[:, j], rows[:m], k, spike_window, spike_mult)
    return score, spike
