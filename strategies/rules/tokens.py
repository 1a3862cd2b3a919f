"""Token buckets of SPEC §2: Tier A / Tier B / Reserve per minute, with the relaxed reserve fallback."""

from __future__ import annotations

import numpy as np
from numba import njit

BUCKET_A = 0
BUCKET_B = 1
BUCKET_RESERVE = 2

TAKE_FAILED = 0
TAKE_OK = 1
TAKE_FALLBACK = 2  # Tier A borrowed the Reserve token (logged as reserve_fallback)


@njit(cache=True)
def refill_nb(tokens: np.ndarray, cap_a: int, cap_b: int, cap_reserve: int) -> None:
    """Refill every bucket to capacity (called at the start of each minute)."""
    tokens[BUCKET_A] = cap_a
    tokens[BUCKET_B] = cap_b
    tokens[BUCKET_RESERVE] = cap_reserve


@njit(cache=True)
def take_token_nb(
    tokens: np.ndarray, tier: int, second_of_minute: float, fallback: bool, fallback_window_s: float
) -> int:
    """Take one token for an evaluation of a ticker of `tier` (0 A, 1 B, 2 Bench -> Reserve).

    Returns TAKE_OK, TAKE_FALLBACK (Tier A used the Reserve inside the fallback window) or
    TAKE_FAILED when the bucket is empty.
    """
    bucket = tier if tier < 2 else BUCKET_RESERVE
    if tokens[bucket] > 0:
        tokens[bucket] -= 1
        return TAKE_OK
    if tier == BUCKET_A and fallback and second_of_minute < fallback_window_s and tokens[BUCKET_RESERVE] > 0:
        tokens[BUCKET_RESERVE] -= 1
        return TAKE_FALLBACK
    return TAKE_FAILED
