"""The one fill model, shared by the rules kernel, the vectorized backtest and the paper-broker sim.

Timing rule (written once, here): a decision at the close of bar t is a market order that fills at
the open of the next bar that exists for its symbol, moved against the trader by `slippage`
(a fraction of price). Resting orders (stop, limit, take-profit) fill inside a later bar at their
price, or at the open when the bar gaps through them. When a bar touches both a position's stop
and its take-profit, the stop is assumed first (the conservative choice).

Every function is a pure numba kernel over scalars (`_nb`), callable from Python as well.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BUY = 1
SELL = -1

# exit codes of bracket_exit_long_nb
EXIT_NONE = 0
EXIT_STOP = 1
EXIT_TAKE_PROFIT = 2


@njit(cache=True)
def market_fill_price_nb(open_price: float, side: int, slippage: float) -> float:
    """Price of a market order filled at a bar's open: open * (1 + side * slippage)."""
    return open_price * (1.0 + side * slippage)


@njit(cache=True)
def order_fee_nb(qty: float, fee_per_share: float, fee_per_order: float) -> float:
    """Fees of one fill: per share plus per order (zero quantity costs nothing)."""
    if qty == 0.0:
        return 0.0
    return abs(qty) * fee_per_share + fee_per_order


@njit(cache=True)
def limit_fill_price_nb(side: int, limit: float, open_: float, high: float, low: float) -> float:
    """Fill price of a resting limit order inside a bar, or NaN when the bar does not reach it."""
    if side == BUY:
        if open_ <= limit:
            return open_
        if low <= limit:
            return limit
    else:
        if open_ >= limit:
            return open_
        if high >= limit:
            return limit
    return np.nan


@njit(cache=True)
def stop_fill_price_nb(side: int, stop: float, open_: float, high: float, low: float) -> float:
    """Fill price of a resting stop (market-on-trigger) order inside a bar, or NaN if untouched.

    A buy stop triggers at high >= stop, a sell stop at low <= stop; a gap through the stop
    fills at the open.
    """
    if side == BUY:
        if open_ >= stop:
            return open_
        if high >= stop:
            return stop
    else:
        if open_ <= stop:
            return open_
        if low <= stop:
            return stop
    return np.nan


@njit(cache=True)
def stop_limit_fill_price_nb(
    side: int, stop: float, limit: float, open_: float, high: float, low: float
) -> float:
    """Fill price of a stop-limit order inside a bar (triggered like a stop, filled like a limit)."""
    trigger = stop_fill_price_nb(side, stop, open_, high, low)
    if np.isnan(trigger):
        return np.nan
    if side == BUY:
        return trigger if trigger <= limit else (limit if low <= limit else np.nan)
    return trigger if trigger >= limit else (limit if high >= limit else np.nan)


@njit(cache=True)
def bracket_exit_long_nb(
    open_: float, high: float, low: float, stop: float, take_profit: float
) -> tuple[int, float]:
    """Check a long position's stop and take-profit against one bar: (exit code, fill price).

    Gaps fill at the open; a bar touching both levels exits at the stop. NaN levels are off.
    """
    has_stop = not np.isnan(stop)
    has_tp = not np.isnan(take_profit)
    if has_stop and open_ <= stop:
        return EXIT_STOP, open_
    if has_tp and open_ >= take_profit:
        return EXIT_TAKE_PROFIT, open_
    if has_stop and low <= stop:
        return EXIT_STOP, stop
    if has_tp and high >= take_profit:
        return EXIT_TAKE_PROFIT, take_profit
    return EXIT_NONE, np.nan
