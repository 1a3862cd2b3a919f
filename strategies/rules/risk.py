"""Risk sizing and limits of SPEC §5 as pure functions, plus the risk summary the old bot served."""

from __future__ import annotations

import math

from numba import njit

REFUSE_NONE = 0
REFUSE_DAILY_LOSS = 1
REFUSE_MAX_POSITIONS = 2
REFUSE_CONCURRENT_RISK = 3
REFUSE_EXPOSURE = 4
REFUSE_TOO_SMALL = 5
REFUSE_NAMES = ("", "daily_loss_limit", "max_positions", "concurrent_risk", "exposure_cap", "size_below_one_share")


@njit(cache=True)
def daily_loss_hit_nb(equity: float, day_start_equity: float, daily_loss_limit: float) -> bool:
    """True once equity has lost daily_loss_limit of the session's starting equity (the caller latches it)."""
    return equity <= day_start_equity * (1.0 - daily_loss_limit)


@njit(cache=True)
def kelly_fraction_nb(n_closed: int, n_wins: int, sum_win: float, sum_loss: float) -> float:
    """Kelly fraction f = W - (1 - W) / R from closed trades (NaN until there are wins and losses)."""
    n_loss = n_closed - n_wins
    if n_wins == 0 or n_loss == 0 or sum_loss <= 0.0:
        return math.nan
    w = n_wins / n_closed
    r = (sum_win / n_wins) / (sum_loss / n_loss)
    return w - (1.0 - w) / r


@njit(cache=True)
def position_cap_notional_nb(
    equity: float, exposure_now: float, n_open: int, max_positions: int, exposure_cap: float, min_slots: int
) -> float:
    """Most notional one new position may take: exposure_cap * equity / max(min_slots, slots left),
    and never more than the exposure still free. A $10,000 account with 3 slots: $2,666.67.
    """
    slots = max(min_slots, max_positions - n_open)
    return max(0.0, min(exposure_cap * equity / slots, exposure_cap * equity - exposure_now))


@njit(cache=True)
def size_entry_nb(
    equity: float,
    price: float,
    loss_limit_hit: bool,
    n_open: int,
    exposure_now: float,
    risk_now: float,
    risk_per_trade: float,
    stop_loss_pct: float,
    max_concurrent_risk: float,
    max_positions: int,
    exposure_cap: float,
    min_slots: int,
) -> tuple[float, int]:
    """Shares for a new long entry and a refusal code (REFUSE_NONE when qty >= 1).

    `loss_limit_hit` is the session's latched daily-loss flag (see daily_loss_hit_nb).
    shares = floor(risk_per_trade * equity / (price * stop_loss_pct)), then bounded by the
    position notional cap, the free exposure and the free concurrent risk; all round down.
    """
    if loss_limit_hit:
        return 0.0, REFUSE_DAILY_LOSS
    if n_open >= max_positions:
        return 0.0, REFUSE_MAX_POSITIONS
    stop_dist = price * stop_loss_pct
    free_risk = max_concurrent_risk * equity - risk_now
    if free_risk < stop_dist:
        return 0.0, REFUSE_CONCURRENT_RISK
    qty = math.floor(risk_per_trade * equity / stop_dist)
    cap = position_cap_notional_nb(equity, exposure_now, n_open, max_positions, exposure_cap, min_slots)
    if cap < price:
        return 0.0, REFUSE_EXPOSURE
    qty = min(qty, math.floor(cap / price), math.floor(free_risk / stop_dist))
    if qty < 1:
        return 0.0, REFUSE_TOO_SMALL
    return float(qty), REFUSE_NONE
