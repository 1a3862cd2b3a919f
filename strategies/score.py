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
def _score_column_nb(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, day: np.ndarray,
    mom_window: int, vol_window: int, vwap_window: int, w_mom: float, w_vwap: float, gain: float,
    out: np.ndarray,
) -> None:
    out[:] = np.nan
    rows, first = _session_rows_nb(c, day)
    warm = max(mom_window, vol_window, vwap_window)
    for k in range(rows.shape[0]):
        t = rows[k]
        if k - first[k] + 1 <= warm:  # bars of this session so far, this one included
            continue
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
            out[t] = 0.0
            continue
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
        out[t] = math.tanh(gain * (w_mom * z_mom + w_vwap * z_vwap))


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
            vs = 0.0
            for i in range(k - window, k):
                vs += v[rows[i], j]
            t = rows[k]
            spike[t, j] = vs > 0 and v[t, j] > mult * vs / window
    return spike
