"""Basket routing of SPEC §6: members' fresh scores -> consecutive ticks -> the inverse ETF."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def basket_condition_nb(
    scores: np.ndarray, fresh: np.ndarray, members: np.ndarray, min_signals: int, neg_share: float,
    threshold: float,
) -> tuple[bool, bool, bool, float]:
    """(is_tick, fires_short, turns_long, mean score) for one bar. A bar is a tick of the basket when
    at least min_signals members have a fresh score; then it fires short when the negative share is
    >= neg_share and the mean <= -threshold, and turns long (the ETF's exit) when the mean >=
    +threshold. The mean is NaN when the bar is not a tick.
    """
    n = 0
    neg = 0
    total = 0.0
    for j in range(members.shape[0]):
        if members[j] and fresh[j]:
            n += 1
            total += scores[j]
            if scores[j] < 0:
                neg += 1
    if n < min_signals or n == 0:
        return False, False, False, np.nan
    mean = total / n
    return True, (neg / n >= neg_share and mean <= -threshold), mean >= threshold, mean


@njit(cache=True)
def advance_ticks_nb(ticks: int, condition: bool) -> int:
    """Consecutive-tick counter: +1 while the condition holds, back to 0 when it breaks."""
    return ticks + 1 if condition else 0
