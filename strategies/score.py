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
def _score_column_nb(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, day: np.ndarray,
    mom_window: int, vol_window: int, vwap_window: int, w_mom: float, w_vwap: float, gain: float,
    out: np.ndarray,
) -> None:
    t_total = c.shape[0]
    rows = np.empty(t_total, dtype=np.int64)  # today's real bars, in order
    n = 0
    cur_day = -1
    warm = max(mom_window, vol_window, vwap_window)
    for t in range(t_total):
        out[t] = np.nan
        if math.isnan(c[t]):
            continue
        if day[t] != cur_day:
            cur_day = day[t]
            n = 0
        rows[n] = t
        n += 1
        if n <= warm:
            continue
        # volatility of one-bar log returns over the last vol_window returns
        s1 = 0.0
        s2 = 0.0
        for k in range(n - vol_window, n):
            r = math.log(c[rows[k]] / c[rows[k - 1]])
            s1 += r
            s2 += r * r
        var = (s2 - s1 * s1 / vol_window) / (vol_window - 1)
        sigma = math.sqrt(var) if var > 0 else 0.0
        if sigma <= 0:
            out[t] = 0.0
            continue
        z_mom = math.log(c[t] / c[rows[n - 1 - mom_window]]) / (sigma * math.sqrt(mom_window))
        pv = 0.0
        vv = 0.0
        for k in range(n - vwap_window, n):
            j = rows[k]
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
    rows = np.empty(t_total, dtype=np.int64)
    for j in range(n_sym):
        n = 0
        cur_day = -1
        for t in range(t_total):
            if math.isnan(c[t, j]):
                continue
            if day[t] != cur_day:
                cur_day = day[t]
                n = 0
            rows[n] = t
            n += 1
            if n > window:
                vs = 0.0
                for k in range(n - 1 - window, n - 1):
                    vs += v[rows[k], j]
                spike[t, j] = vs > 0 and v[t, j] > mult * vs / window
    return spike
