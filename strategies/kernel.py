"""The step kernel: one bar in, decisions and orders out, over a plain array state.

`step_nb` is the only place where the gates, risk, caps, baskets and fills are sequenced. It is
driven over history by `run_nb` (parameter sets side by side with prange) and, bar by bar, by the
live runner and by `walk_py` (a plain Python loop over the same compiled step, used by tests).

Timing, per bar t (SPEC §0, §5b): a new New York session resets the daily counters; first every
pending market order of every symbol with a bar fills at bar t's open (plus slippage), then the
resting stops / take-profits are checked inside bar t (so cash an in-bar stop frees never pays a
fill at that open, whatever the column order); the book is marked at t's close; then the rules
decide at t's close and leave market orders pending for the next bar that exists for their symbol.
A position's max hold counts from its fill (bar t's open); every order in an ETF starts its lock
(market orders at their decision close, stops / take-profits at the close of the bar they filled in).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from strategies import codes as C
from strategies.fills import (
    BUY,
    EXIT_NONE,
    EXIT_STOP,
    SELL,
    bracket_exit_long_nb,
    market_fill_price_nb,
    order_fee_nb,
)
from strategies.rules.baskets import advance_ticks_nb, basket_condition_nb
from strategies.rules.gates import cap_gate_nb, stock_gate_nb
from strategies.rules.risk import REFUSE_NONE, daily_loss_hit_nb, kelly_fraction_nb, size_entry_nb
from strategies.rules.tokens import TAKE_FAILED, TAKE_FALLBACK, refill_nb, take_token_nb

NEVER = -(2**62)  # epoch of "never happened"

# ---- scalar parameters: one row of the (K, P) matrix per parameter set --------------------------
P_NAMES = (
    "cutoff", "cutoff_delta", "strong_margin", "cooldown_s", "direction_lock_s", "cadence_a_s", "cadence_b_s",
    "tokens_a", "tokens_b", "tokens_reserve", "reserve_fallback", "reserve_fallback_window_s",
    "cap_a", "cap_b", "cap_bench", "cap_etf", "global_daily_cap", "idempotency_window_s",
    "risk_per_trade", "stop_loss_pct", "take_profit_pct", "max_concurrent_risk", "daily_loss_limit",
    "max_positions", "exposure_cap", "min_slots", "kelly_cap", "kelly_min_trades", "etf_lock_s",
    "flatten_before_close_min", "max_hold_minutes", "slippage", "fee_per_share", "fee_per_order",
    # session rules of SPEC §3 / §8 (times are New York minutes of the day; -1 = off)
    "llm_min_score", "delta_window", "delta_start_min", "delta_end_min", "hard_rollback_min",
    "rollback_1h", "rollback_2h", "rollback_1h_window_min", "rollback_2h_window_min", "rollback_min_actionable",
    "rollback_stop_rate", "rollback_flip_rate", "flip_window_s", "llm_surge_calls", "rollback_overflow_a",
    "rollback_delta_shrink", "rollback_cooldown_s", "rollback_lock_s", "rollback_llm_min_score",
    # the default preset's values the hard rollback returns to
    "default_cutoff_delta", "default_cooldown_s", "default_direction_lock_s", "default_reserve_fallback",
    "default_llm_min_score",
)
(
    P_CUTOFF, P_DELTA, P_STRONG_MARGIN, P_COOLDOWN, P_LOCK, P_CAD_A, P_CAD_B, P_TOK_A, P_TOK_B, P_TOK_R, P_FALLBACK,
    P_FALLBACK_WIN, P_CAP_A, P_CAP_B, P_CAP_BENCH, P_CAP_ETF, P_GLOBAL_CAP, P_IDEM, P_RPT, P_SL, P_TP,
    P_MAX_RISK, P_DAILY_LOSS, P_MAX_POS, P_EXPOSURE, P_MIN_SLOTS, P_KELLY, P_KELLY_MIN, P_ETF_LOCK,
    P_FLATTEN, P_MAX_HOLD, P_SLIP, P_FEE_SHARE, P_FEE_ORDER,
    P_LLM_MIN, P_DELTA_WIN, P_DELTA_START, P_DELTA_END, P_HARD_AT,
    P_RB1, P_RB2, P_RB1_WIN, P_RB2_WIN, P_RB_MIN_ACT,
    P_RB_STOP_RATE, P_RB_FLIP_RATE, P_FLIP_WIN, P_LLM_SURGE, P_RB_OVER_A,
    P_RB_SHRINK, P_RB_COOLDOWN, P_RB_LOCK, P_RB_LLM_MIN,
    P_DEF_DELTA, P_DEF_COOLDOWN, P_DEF_LOCK, P_DEF_FALLBACK, P_DEF_LLM_MIN,
) = range(len(P_NAMES))
N_PARAMS = len(P_NAMES)
RATE_EPS = 1e-12  # a mean of per-minute rates kept as a running sum: compare with this slack

# basket parameter columns (B, 4): min_signals, neg_share, mean_threshold, consecutive
BK_MIN, BK_NEG, BK_THR, BK_CONSEC = range(4)

# ---- state layout -----------------------------------------------------------------------------
# f: account scalars, then the session's effective (possibly rolled back) values, then the running
# sums of per-minute Tier-A overflow rates of the two trigger windows
(F_CASH, F_DAY_START_EQ, F_SUM_WIN, F_SUM_LOSS, F_E_DELTA, F_E_COOLDOWN, F_E_LOCK, F_E_LLM_MIN, F_E_FALLBACK,
 F_RATE_1H, F_RATE_2H) = range(11)
N_F = 11
(I_DAY, I_GLOBAL, I_MINUTE, I_TOK_A, I_TOK_B, I_TOK_R, I_N_CLOSED, I_N_WINS, I_BARS, I_LOSS_HIT, I_FIRED_1H,
 I_FIRED_2H, I_HARD_DONE, I_WMIN) = range(14)
N_I = 14
SF_QTY, SF_ENTRY, SF_STOP, SF_TP, SF_LAST, SF_PENDING, SF_COST = range(7)
N_SF = 7
(SI_LAST_EVAL, SI_LAST_SIG, SI_LAST_SIGN, SI_DAY_COUNT, SI_COUNTED, SI_LAST_ORDER, SI_ENTRY_T, SI_PEND_REASON,
 SI_PEND_DEC, SI_FLIP_T, SI_FLIP_DIR) = range(11)
N_SI = 11
# trigger windows: a ring of per-minute buckets (minute = bar close epoch // 60, the token minute) and
# the sums of the closed buckets inside each window (row 0: 1 h trigger, row 1: 2 h trigger);
# in the sums, column W_MIN counts the minutes that wanted a Tier-A token
W_MIN, W_ACT, W_FLIP, W_CLOSED, W_STOP, W_LLM, W_WANT_A, W_OVER_A = range(8)
N_W = 8
RING = 240  # minutes; trigger windows are at most MAX_WINDOW_MIN long
MAX_WINDOW_MIN = 180

# ---- per-set statistics (K, S) ----------------------------------------------------------------
ST_WANT_A, ST_WANT_B, ST_WANT_R, ST_OVER_A, ST_OVER_B, ST_OVER_R, ST_FALLBACK, ST_EVALUATED, ST_STRONG, ST_CLOSED, ST_WINS, ST_GROSS_WIN, ST_GROSS_LOSS, ST_FILLS, ST_FEES, ST_ORDER_OVERFLOW, ST_CANCELED, ST_TRIGGERS = range(18)
STAT_NAMES = (
    "token_wants_a", "token_wants_b", "token_wants_reserve", "token_overflows_a", "token_overflows_b",
    "token_overflows_reserve", "reserve_fallbacks", "evaluated", "strong_signals", "closed_trades",
    "winning_trades", "gross_win", "gross_loss", "fills", "fees", "order_overflow", "canceled_entries",
    "session_events",
)
N_STATS = len(STAT_NAMES)

# order buffer columns
OI_BAR, OI_DEC, OI_COL, OI_SIDE, OI_REASON = range(5)
OF_QTY, OF_PRICE, OF_FEES = range(3)

# per-bar token counts (the `tok` output): wants then overflows of Tier A, Tier B, Reserve, then fallbacks
N_TOK = 7  # 6: Tier A evaluations that borrowed the Reserve token (reserve_fallback)

# session events (rollback triggers, hard rollback): one float row each
(EV_BAR, EV_TIME, EV_KIND, EV_WINDOW_MIN, EV_ACT, EV_FLIP, EV_CLOSED, EV_STOPS, EV_LLM, EV_OVER_A, EV_MINUTES,
 EV_DELTA_B, EV_DELTA_A, EV_COOL_B, EV_COOL_A, EV_LOCK_B, EV_LOCK_A, EV_LLM_B, EV_LLM_A, EV_FB_B, EV_FB_A) = range(21)
N_EV = 21
EVENTS_PER_SESSION = 3  # each trigger and the hard rollback at most once


class State(NamedTuple):
    """The whole rule state of one parameter set: plain arrays, so it saves and resumes exactly."""

    f: np.ndarray  # (N_F,) float64 account scalars
    i: np.ndarray  # (N_I,) int64 counters
    sf: np.ndarray  # (N, N_SF) float64 per-symbol book
    si: np.ndarray  # (N, N_SI) int64 per-symbol clocks and counters
    bi: np.ndarray  # (B, 2) int64 basket ticks: short side, long side
    wr: np.ndarray  # (RING, N_W) int64 per-minute buckets of the rollback-trigger windows
    ws: np.ndarray  # (2, N_W) int64 sums of the closed buckets inside the 1 h and 2 h windows


class Structure(NamedTuple):
    """What every parameter set of one run shares: the universe's shape."""

    tier: np.ndarray  # (N,) int64: 0 A, 1 B, 2 Bench, 3 ETF
    basket_members: np.ndarray  # (B, N) bool
    basket_target: np.ndarray  # (B,) int64 column of the inverse ETF
    basket_params: np.ndarray  # (B, 4) float64
    conflict: np.ndarray  # (N, N) bool: never held together


@njit(cache=True)
def new_state_nb(n_sym: int, n_baskets: int, init_cash: float) -> State:
    """A fresh state: all cash, no positions, every clock at NEVER."""
    f = np.zeros(N_F)
    f[F_CASH] = init_cash
    f[F_DAY_START_EQ] = init_cash
    i = np.zeros(N_I, dtype=np.int64)
    i[I_DAY] = -1
    i[I_MINUTE] = -1
    sf = np.zeros((n_sym, N_SF))
    si = np.zeros((n_sym, N_SI), dtype=np.int64)
    for j in range(n_sym):
        sf[j, SF_STOP] = np.nan
        sf[j, SF_TP] = np.nan
        sf[j, SF_LAST] = np.nan
        si[j, SI_LAST_EVAL] = NEVER
        si[j, SI_LAST_SIG] = NEVER
        si[j, SI_COUNTED] = NEVER
        si[j, SI_LAST_ORDER] = NEVER
        si[j, SI_ENTRY_T] = NEVER
        si[j, SI_PEND_DEC] = NEVER
        si[j, SI_FLIP_T] = NEVER
    i[I_WMIN] = -1
    return State(f, i, sf, si, np.zeros((n_baskets, 2), dtype=np.int64), np.zeros((RING, N_W), dtype=np.int64),
                 np.zeros((2, N_W), dtype=np.int64))


@njit(cache=True, inline="always")
def mark_price_nb(state: State, j: int) -> float:
    """A position's price for the book: its last close, else its entry (a position found at the
    broker before any bar), else 0 (no price known at all: the book stays a number)."""
    px = state.sf[j, SF_LAST]
    if math.isnan(px):
        px = state.sf[j, SF_ENTRY]
    if math.isnan(px):
        return 0.0
    return px


@njit(cache=True, inline="always")
def equity_nb(state: State) -> float:
    """Cash plus every position at its last known close."""
    eq = state.f[F_CASH]
    for j in range(state.sf.shape[0]):
        q = state.sf[j, SF_QTY]
        if q != 0.0:
            eq += q * mark_price_nb(state, j)
    return eq


@njit(cache=True, inline="always")
def _record_order_nb(
    ob_i: np.ndarray, ob_f: np.ndarray, n_orders: np.ndarray, stats: np.ndarray, bar: int, dec: int,
    col: int, side: int, qty: float, price: float, fees: float, reason: int,
) -> None:
    stats[ST_FILLS] += 1
    stats[ST_FEES] += fees
    k = n_orders[0]
    if k >= ob_i.shape[0]:
        stats[ST_ORDER_OVERFLOW] += 1
        return
    ob_i[k, OI_BAR] = bar
    ob_i[k, OI_DEC] = dec
    ob_i[k, OI_COL] = col
    ob_i[k, OI_SIDE] = side
    ob_i[k, OI_REASON] = reason
    ob_f[k, OF_QTY] = qty
    ob_f[k, OF_PRICE] = price
    ob_f[k, OF_FEES] = fees
    n_orders[0] = k + 1


@njit(cache=True, inline="always")
def _close_position_nb(
    state: State, j: int, price: float, p: np.ndarray, stats: np.ndarray, ob_i: np.ndarray,
    ob_f: np.ndarray, n_orders: np.ndarray, bar: int, dec: int, reason: int,
) -> None:
    qty = state.sf[j, SF_QTY]
    fee = order_fee_nb(qty, p[P_FEE_SHARE], p[P_FEE_ORDER])
    proceeds = qty * price - fee
    state.f[F_CASH] += proceeds
    pnl = proceeds - state.sf[j, SF_COST]
    state.i[I_N_CLOSED] += 1
    stats[ST_CLOSED] += 1
    if pnl > 0:
        state.i[I_N_WINS] += 1
        state.f[F_SUM_WIN] += pnl
        stats[ST_WINS] += 1
        stats[ST_GROSS_WIN] += pnl
    else:
        state.f[F_SUM_LOSS] += -pnl
        stats[ST_GROSS_LOSS] += -pnl
    state.sf[j, SF_QTY] = 0.0
    state.sf[j, SF_STOP] = np.nan
    state.sf[j, SF_TP] = np.nan
    state.sf[j, SF_COST] = 0.0
    state.si[j, SI_ENTRY_T] = NEVER
    _record_order_nb(ob_i, ob_f, n_orders, stats, bar, dec, j, SELL, qty, price, fee, reason)


@njit(cache=True, inline="always")
def _local_bar_nb(close_epoch: np.ndarray, epoch: int) -> int:
    """Index of the bar that closed at `epoch` in this run, or -1 (decided before the run began)."""
    k = np.searchsorted(close_epoch, epoch)
    if k < close_epoch.shape[0] and close_epoch[k] == epoch:
        return k
    return -1


@njit(cache=True, inline="always")
def _fill_phase_nb(
    state: State, t: int, o: np.ndarray, h: np.ndarray, low: np.ndarray, close_epoch: np.ndarray,
    bar_open: int, p: np.ndarray, s: Structure, stats: np.ndarray, ob_i: np.ndarray, ob_f: np.ndarray,
    n_orders: np.ndarray,
) -> tuple[int, int]:
    """Fill every symbol's pending market order at this bar's open, then check resting stops and
    take-profits inside the bar (SPEC §5b: cash an in-bar stop frees is not there at the open).
    Returns (positions closed, of which by a stop) for the rollback-trigger windows."""
    closed = 0
    stops = 0
    # the open's market sells and buys fill together: what the sells bring is there for every buy at
    # this open, whatever the column order (fills are still booked column by column)
    owed = 0.0
    n_owed = 0
    for j in range(o.shape[0]):
        if not math.isnan(o[j]) and state.sf[j, SF_PENDING] < 0.0 and state.sf[j, SF_QTY] > 0:
            n_owed += 1
            q = state.sf[j, SF_QTY]
            owed += q * market_fill_price_nb(o[j], SELL, p[P_SLIP]) - order_fee_nb(q, p[P_FEE_SHARE],
                                                                                   p[P_FEE_ORDER])
    for j in range(o.shape[0]):
        if math.isnan(o[j]):
            continue
        pend = state.sf[j, SF_PENDING]
        if pend != 0.0:
            dec = _local_bar_nb(close_epoch, state.si[j, SI_PEND_DEC])
            reason = state.si[j, SI_PEND_REASON]
            state.sf[j, SF_PENDING] = 0.0
            state.si[j, SI_PEND_REASON] = 0
            state.si[j, SI_PEND_DEC] = NEVER
            if pend > 0:
                price = market_fill_price_nb(o[j], BUY, p[P_SLIP])
                afford = math.floor((state.f[F_CASH] + owed - p[P_FEE_ORDER]) / (price + p[P_FEE_SHARE]))
                qty = min(pend, float(afford))
                if qty >= 1.0:
                    fee = order_fee_nb(qty, p[P_FEE_SHARE], p[P_FEE_ORDER])
                    state.f[F_CASH] -= qty * price + fee
                    state.sf[j, SF_QTY] = qty
                    state.sf[j, SF_ENTRY] = price
                    state.sf[j, SF_COST] = qty * price + fee
                    state.sf[j, SF_STOP] = price * (1.0 - p[P_SL])
                    state.sf[j, SF_TP] = price * (1.0 + p[P_TP])
                    state.si[j, SI_ENTRY_T] = bar_open  # max hold counts from the fill
                    _record_order_nb(ob_i, ob_f, n_orders, stats, t, dec, j, BUY, qty, price, fee, reason)
            elif state.sf[j, SF_QTY] > 0:
                price = market_fill_price_nb(o[j], SELL, p[P_SLIP])
                q = state.sf[j, SF_QTY]
                owed -= q * price - order_fee_nb(q, p[P_FEE_SHARE], p[P_FEE_ORDER])
                n_owed -= 1
                if n_owed == 0:
                    owed = 0.0  # every sale booked: no rounding left to spend
                _close_position_nb(state, j, price, p, stats, ob_i, ob_f, n_orders, t, dec, reason)
                closed += 1
    for j in range(o.shape[0]):
        if math.isnan(o[j]) or state.sf[j, SF_QTY] <= 0:
            continue
        code, price = bracket_exit_long_nb(o[j], h[j], low[j], state.sf[j, SF_STOP], state.sf[j, SF_TP])
        if code != EXIT_NONE:
            reason = C.ORDER_STOP if code == EXIT_STOP else C.ORDER_TAKE_PROFIT
            _close_position_nb(state, j, price, p, stats, ob_i, ob_f, n_orders, t, t - 1, reason)
            closed += 1
            if code == EXIT_STOP:
                stops += 1
            if s.tier[j] == C.TIER_ETF:
                state.si[j, SI_LAST_ORDER] = close_epoch[t]  # the ETF lock follows every order in the ETF
    return closed, stops


@njit(cache=True, inline="always")
def _book_nb(state: State, p: np.ndarray) -> tuple[int, float, float]:
    """(open or pending positions, exposure, risk to stop) of the book, pending entries included.

    A position with no known stop (found at the broker) risks qty * price * stop_loss_pct (SPEC §5),
    so the sum is always a number.
    """
    n_open = 0
    exposure = 0.0
    risk = 0.0
    for j in range(state.sf.shape[0]):
        q = state.sf[j, SF_QTY]
        pend = state.sf[j, SF_PENDING]
        last = state.sf[j, SF_LAST]
        if q > 0:
            n_open += 1
            px = mark_price_nb(state, j)
            exposure += q * px
            stop = state.sf[j, SF_STOP]
            entry = state.sf[j, SF_ENTRY]
            if math.isnan(stop) or math.isnan(entry):
                risk += q * px * p[P_SL]
            else:
                risk += q * max(entry - stop, 0.0)
        elif pend > 0:
            n_open += 1
            exposure += pend * last
            risk += pend * last * p[P_SL]
    return n_open, exposure, risk


@njit(cache=True, inline="always")
def _entry_nb(
    state: State, j: int, now: int, equity: float, p: np.ndarray, s: Structure, cap: float,
    reason: int, mtc: int,
) -> int:
    """Session window, conflicts, risk, idempotency and daily caps for a long entry in column j.

    On success the entry is left pending and the caps are counted; returns the decision code.
    """
    if p[P_FLATTEN] > 0 and mtc <= p[P_FLATTEN]:
        return C.SESSION_END
    for k in range(s.conflict.shape[1]):
        if s.conflict[j, k] and (state.sf[k, SF_QTY] > 0 or state.sf[k, SF_PENDING] > 0):
            return C.CONFLICT
    n_open, exposure, risk = _book_nb(state, p)
    rpt = p[P_RPT]
    if p[P_KELLY] > 0 and state.i[I_N_CLOSED] >= p[P_KELLY_MIN]:
        kf = kelly_fraction_nb(state.i[I_N_CLOSED], state.i[I_N_WINS], state.f[F_SUM_WIN], state.f[F_SUM_LOSS])
        if not math.isnan(kf):
            rpt = min(rpt, max(p[P_KELLY] * kf, 0.0))
    price = state.sf[j, SF_LAST]
    if rpt <= 0.0:
        return C.RISK
    qty, refusal = size_entry_nb(
        equity, price, state.i[I_LOSS_HIT] == 1, n_open, exposure, risk, rpt, p[P_SL], p[P_MAX_RISK],
        int(p[P_MAX_POS]), p[P_EXPOSURE], int(p[P_MIN_SLOTS]),
    )
    if refusal != REFUSE_NONE:
        return C.RISK
    code = cap_gate_nb(now, state.si[j, SI_COUNTED], p[P_IDEM], state.si[j, SI_DAY_COUNT], int(cap),
                       state.i[I_GLOBAL], int(p[P_GLOBAL_CAP]))
    if code != C.ACTIONABLE:
        return code
    state.si[j, SI_COUNTED] = now
    state.si[j, SI_DAY_COUNT] += 1
    state.i[I_GLOBAL] += 1
    state.sf[j, SF_PENDING] = qty
    state.si[j, SI_PEND_REASON] = reason
    state.si[j, SI_PEND_DEC] = now
    return C.ACTIONABLE


@njit(cache=True, inline="always")
def _exit_nb(state: State, j: int, now: int, reason: int) -> bool:
    """Leave a market exit pending for a held position (exits pass every gate); True if placed."""
    if state.sf[j, SF_QTY] > 0 and state.sf[j, SF_PENDING] >= 0:
        state.sf[j, SF_PENDING] = -state.sf[j, SF_QTY]
        state.si[j, SI_PEND_REASON] = reason
        state.si[j, SI_PEND_DEC] = now
        return True
    return False


# ---- session rules: test window, rollback triggers, hard rollback (SPEC §3, §8) -----------------

@njit(cache=True, inline="always")
def _session_reset_nb(state: State, p: np.ndarray) -> None:
    """A new session: the effective values start from the parameters, triggers re-arm, windows empty."""
    state.f[F_E_DELTA] = p[P_DELTA]
    state.f[F_E_COOLDOWN] = p[P_COOLDOWN]
    state.f[F_E_LOCK] = p[P_LOCK]
    state.f[F_E_LLM_MIN] = p[P_LLM_MIN]
    state.f[F_E_FALLBACK] = p[P_FALLBACK]
    state.f[F_RATE_1H] = 0.0
    state.f[F_RATE_2H] = 0.0
    state.i[I_FIRED_1H] = 0
    state.i[I_FIRED_2H] = 0
    state.i[I_HARD_DONE] = 0
    state.i[I_WMIN] = -1
    state.wr[:, :] = 0
    state.ws[:, :] = 0


@njit(cache=True, inline="always")
def _window_add_nb(state: State, w: int, slot: int, sign: int) -> None:
    """Add (sign 1) or remove (sign -1) one closed minute bucket to / from window w's sums."""
    for col in range(1, N_W):
        state.ws[w, col] += sign * state.wr[slot, col]
    if state.wr[slot, W_WANT_A] > 0:
        state.ws[w, W_MIN] += sign
        state.f[F_RATE_1H + w] += sign * (state.wr[slot, W_OVER_A] / state.wr[slot, W_WANT_A])


@njit(cache=True)
def window_roll_nb(state: State, minute: int, len_1h: int, len_2h: int) -> None:
    """Move the trigger windows to `minute`: the previous bucket joins the sums of each window it is
    still inside, buckets older than the window leave, and a fresh bucket starts. O(1) per minute."""
    prev = state.i[I_WMIN]
    if minute == prev:
        return
    if prev >= 0:
        for w in range(2):
            length = len_1h if w == 0 else len_2h
            if prev > minute - length:
                _window_add_nb(state, w, prev % RING, 1)
            for mid in range(prev - length + 1, min(prev - 1, minute - length) + 1):
                slot = mid % RING
                if state.wr[slot, W_MIN] == mid:
                    _window_add_nb(state, w, slot, -1)
            if state.ws[w, W_MIN] == 0:
                state.f[F_RATE_1H + w] = 0.0  # no minute left: no rounding left over either
    slot = minute % RING
    state.wr[slot, :] = 0
    state.wr[slot, W_MIN] = minute
    state.i[I_WMIN] = minute


@njit(cache=True)
def window_figures_nb(state: State, w: int) -> tuple[int, int, int, int, int, float, int]:
    """(actionable, flip-flops, closed entries, stop exits, LLM calls, mean per-minute Tier-A
    overflow rate, minutes with Tier-A wants) of trigger window w (0: 1 h, 1: 2 h), current minute included."""
    slot = state.i[I_WMIN] % RING
    cur = state.wr[slot]
    n = state.ws[w, W_MIN]
    rates = state.f[F_RATE_1H + w]
    if cur[W_WANT_A] > 0:
        n += 1
        rates += cur[W_OVER_A] / cur[W_WANT_A]
    mean = rates / n if n > 0 else 0.0
    return (state.ws[w, W_ACT] + cur[W_ACT], state.ws[w, W_FLIP] + cur[W_FLIP], state.ws[w, W_CLOSED] + cur[W_CLOSED],
            state.ws[w, W_STOP] + cur[W_STOP], state.ws[w, W_LLM] + cur[W_LLM], mean, n)


@njit(cache=True, inline="always")
def _record_event_nb(
    state: State, ev_f: np.ndarray, n_ev: np.ndarray, stats: np.ndarray, t: int, now: int, kind: int,
    window_min: float, figures: tuple[int, int, int, int, int, float, int],
    before: tuple[float, float, float, float, float],
) -> None:
    """Append a session event: when, which, the window's figures, the values before and after."""
    stats[ST_TRIGGERS] += 1
    k = n_ev[0]
    if k >= ev_f.shape[0]:
        return
    act, flips, closed, stops, llm, over_a, minutes = figures
    row = ev_f[k]
    row[EV_BAR] = t
    row[EV_TIME] = now
    row[EV_KIND] = kind
    row[EV_WINDOW_MIN] = window_min
    row[EV_ACT] = act
    row[EV_FLIP] = flips
    row[EV_CLOSED] = closed
    row[EV_STOPS] = stops
    row[EV_LLM] = llm
    row[EV_OVER_A] = over_a
    row[EV_MINUTES] = minutes
    row[EV_DELTA_B] = before[0]
    row[EV_COOL_B] = before[1]
    row[EV_LOCK_B] = before[2]
    row[EV_LLM_B] = before[3]
    row[EV_FB_B] = before[4]
    row[EV_DELTA_A] = state.f[F_E_DELTA]
    row[EV_COOL_A] = state.f[F_E_COOLDOWN]
    row[EV_LOCK_A] = state.f[F_E_LOCK]
    row[EV_LLM_A] = state.f[F_E_LLM_MIN]
    row[EV_FB_A] = state.f[F_E_FALLBACK]
    n_ev[0] = k + 1


@njit(cache=True, inline="always")
def _effective_nb(state: State) -> tuple[float, float, float, float, float]:
    return (state.f[F_E_DELTA], state.f[F_E_COOLDOWN], state.f[F_E_LOCK], state.f[F_E_LLM_MIN],
            state.f[F_E_FALLBACK])


@njit(cache=True, inline="always")
def _triggers_nb(
    state: State, t: int, now: int, p: np.ndarray, stats: np.ndarray, ev_f: np.ndarray, n_ev: np.ndarray,
) -> None:
    """The rollback triggers of SPEC §8 at this bar's close; what they change applies from the next bar."""
    if p[P_RB1] > 0 and state.i[I_FIRED_1H] == 0:
        fig = window_figures_nb(state, 0)
        act, flips, closed, stops = fig[0], fig[1], fig[2], fig[3]
        stop_out = act >= p[P_RB_MIN_ACT] and closed > 0 and stops / closed >= p[P_RB_STOP_RATE]
        flip_flop = act > 0 and flips / act >= p[P_RB_FLIP_RATE]
        if stop_out or flip_flop:
            before = _effective_nb(state)
            state.f[F_E_DELTA] *= p[P_RB_SHRINK]  # "shrink": toward 0, whatever the delta's sign
            state.f[F_E_COOLDOWN] = max(state.f[F_E_COOLDOWN], p[P_RB_COOLDOWN])
            state.f[F_E_LOCK] = max(state.f[F_E_LOCK], p[P_RB_LOCK])
            state.i[I_FIRED_1H] = 1
            _record_event_nb(state, ev_f, n_ev, stats, t, now, C.TRIGGER_1H, p[P_RB1_WIN], fig, before)
    if p[P_RB2] > 0 and state.i[I_FIRED_2H] == 0:
        fig = window_figures_nb(state, 1)
        llm, over_a, minutes = fig[4], fig[5], fig[6]
        if llm > p[P_LLM_SURGE] or (minutes > 0 and over_a >= p[P_RB_OVER_A] - RATE_EPS):
            before = _effective_nb(state)
            state.f[F_E_LLM_MIN] = max(state.f[F_E_LLM_MIN], p[P_RB_LLM_MIN])
            state.f[F_E_FALLBACK] = 0.0
            state.i[I_FIRED_2H] = 1
            _record_event_nb(state, ev_f, n_ev, stats, t, now, C.TRIGGER_2H, p[P_RB2_WIN], fig, before)


@njit(cache=True)
def step_nb(
    state: State, t: int, o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray,
    score: np.ndarray, event: np.ndarray, close_epoch: np.ndarray, bar_open: int, day: int, mtc: int,
    ny_min: int, llm_calls: int, p: np.ndarray, s: Structure, decisions: np.ndarray, dscore: np.ndarray,
    tok: np.ndarray, counts: np.ndarray, stats: np.ndarray, ob_i: np.ndarray, ob_f: np.ndarray,
    n_orders: np.ndarray, ev_f: np.ndarray, n_ev: np.ndarray, fresh: np.ndarray,
) -> None:
    """Advance one parameter set by one bar (row t of the inputs; `close_epoch` is the run's (T,)
    array of bar closes, `bar_open` this bar's start epoch, `ny_min` the New York minute of day of
    its close, `llm_calls` the LLM calls made at this bar). Writes one decision code per symbol
    into `decisions` (N,) and, for an inverse ETF decided by its basket, the basket's mean score
    into `dscore` (N,) (NaN elsewhere); this bar's token wants / overflows per tier and reserve fallbacks into `tok` (7,);
    adds to `counts` (per code) and `stats`, appends fills to the order buffers and session events
    (rollback triggers, hard rollback) to `ev_f` / `n_ev`.
    """
    n_sym = o.shape[0]
    now = close_epoch[t]
    # -- a new New York session: reset the daily counters and the start-of-day equity
    if day != state.i[I_DAY]:
        state.i[I_DAY] = day
        state.i[I_GLOBAL] = 0
        for j in range(n_sym):
            state.si[j, SI_DAY_COUNT] = 0
        for b in range(state.bi.shape[0]):
            state.bi[b, 0] = 0
            state.bi[b, 1] = 0
        state.f[F_DAY_START_EQ] = equity_nb(state)
        state.i[I_LOSS_HIT] = 0
        _session_reset_nb(state, p)
        if p[P_FLATTEN] > 0:  # intraday: an entry that found no bar before the close is dropped
            for j in range(n_sym):
                if state.sf[j, SF_PENDING] > 0:
                    state.sf[j, SF_PENDING] = 0.0
                    state.si[j, SI_PEND_REASON] = 0
                    state.si[j, SI_PEND_DEC] = NEVER
                    stats[ST_CANCELED] += 1
    # -- the hard rollback time: every relaxed value back to its default, from this very bar
    if p[P_HARD_AT] >= 0 and state.i[I_HARD_DONE] == 0 and ny_min >= p[P_HARD_AT]:
        before = _effective_nb(state)
        state.f[F_E_DELTA] = p[P_DEF_DELTA]
        state.f[F_E_COOLDOWN] = p[P_DEF_COOLDOWN]
        state.f[F_E_LOCK] = p[P_DEF_LOCK]
        state.f[F_E_LLM_MIN] = p[P_DEF_LLM_MIN]
        state.f[F_E_FALLBACK] = p[P_DEF_FALLBACK]
        state.i[I_HARD_DONE] = 1
        _record_event_nb(state, ev_f, n_ev, stats, t, now, C.TRIGGER_HARD, 0.0, (0, 0, 0, 0, 0, 0.0, 0), before)
    # -- fills at the open, stops and take-profits inside the bar
    closed_now, stops_now = _fill_phase_nb(state, t, o, h, low, close_epoch, bar_open, p, s, stats, ob_i, ob_f,
                                           n_orders)
    # -- mark at the close
    for j in range(n_sym):
        if not math.isnan(c[j]):
            state.sf[j, SF_LAST] = c[j]
    equity = equity_nb(state)
    state.i[I_BARS] += 1
    if daily_loss_hit_nb(equity, state.f[F_DAY_START_EQ], p[P_DAILY_LOSS]):
        state.i[I_LOSS_HIT] = 1  # latched: no new entries for the rest of the session (SPEC §5)
    for j in range(n_sym):
        decisions[j] = C.NOT_EVALUATED
        dscore[j] = np.nan
        fresh[j] = False
    # -- exits that pass every gate: flatten before the close, max hold
    for j in range(n_sym):
        if state.sf[j, SF_QTY] <= 0:
            continue
        placed = False
        if p[P_FLATTEN] > 0 and mtc <= p[P_FLATTEN]:
            placed = _exit_nb(state, j, now, C.ORDER_FLATTEN)
        elif p[P_MAX_HOLD] > 0 and state.si[j, SI_ENTRY_T] != NEVER and now - state.si[j, SI_ENTRY_T] >= \
                p[P_MAX_HOLD] * 60:  # from the fill; a position found at the broker has no known fill
            placed = _exit_nb(state, j, now, C.ORDER_MAX_HOLD)
        if placed and s.tier[j] == C.TIER_ETF:
            state.si[j, SI_LAST_ORDER] = now  # the ETF lock follows every order in the ETF
    # -- token buckets refill at the start of each minute
    minute = now // 60
    if minute != state.i[I_MINUTE]:
        state.i[I_MINUTE] = minute
        refill_nb(state.i[I_TOK_A:I_TOK_R + 1], int(p[P_TOK_A]), int(p[P_TOK_B]), int(p[P_TOK_R]))
    tokens = state.i[I_TOK_A:I_TOK_R + 1]
    second = float(now % 60)
    for k in range(N_TOK):
        tok[k] = 0
    # -- the session's effective values: the delta only inside its New York window (SPEC §3)
    delta = state.f[F_E_DELTA]
    if p[P_DELTA_WIN] > 0 and not (p[P_DELTA_START] <= ny_min < p[P_DELTA_END]):
        delta = 0.0
    cut = p[P_CUTOFF] + delta
    strong = cut + p[P_STRONG_MARGIN]
    cooldown = state.f[F_E_COOLDOWN]
    lock = state.f[F_E_LOCK]
    fallback = state.f[F_E_FALLBACK] > 0
    # -- evaluate the stocks in universe order
    for j in range(n_sym):
        tier = s.tier[j]
        if tier > 2 or math.isnan(score[j]):
            continue
        if tier == 0:
            due = now - state.si[j, SI_LAST_EVAL] >= p[P_CAD_A]
        elif tier == 1:
            due = now - state.si[j, SI_LAST_EVAL] >= p[P_CAD_B]
        else:
            due = False
        wants = int(due) + int(event[j])
        if wants == 0:
            continue
        got = 0
        for _ in range(wants):
            r = take_token_nb(tokens, tier, second, fallback, p[P_FALLBACK_WIN])
            stats[ST_WANT_A + tier] += 1
            tok[tier] += 1
            if r == TAKE_FAILED:
                stats[ST_OVER_A + tier] += 1
                tok[3 + tier] += 1
            else:
                got += 1
                if r == TAKE_FALLBACK:
                    stats[ST_FALLBACK] += 1
                    tok[6] += 1
        if got == 0:
            if state.sf[j, SF_QTY] > 0 and score[j] <= -cut:
                _exit_nb(state, j, now, C.ORDER_EXIT_SIGNAL)  # exits are never blocked by tokens
                state.si[j, SI_LAST_SIG] = now
                state.si[j, SI_LAST_SIGN] = -1
                decisions[j] = C.EXIT_SIGNAL
                counts[C.EXIT_SIGNAL] += 1
            else:
                decisions[j] = C.TOKEN
                counts[C.TOKEN] += 1
            continue
        state.si[j, SI_LAST_EVAL] = now
        fresh[j] = True
        sc = score[j]
        stats[ST_EVALUATED] += 1
        if abs(sc) >= strong:
            stats[ST_STRONG] += 1
        held = state.sf[j, SF_QTY] > 0
        code = stock_gate_nb(sc, held, state.sf[j, SF_PENDING] > 0, now, state.si[j, SI_LAST_SIG],
                             state.si[j, SI_LAST_SIGN], cut, cooldown, lock)
        if code == C.EXIT_SIGNAL:
            _exit_nb(state, j, now, C.ORDER_EXIT_SIGNAL)
        elif code == C.ACTIONABLE:
            cap = p[P_CAP_A] if tier == 0 else (p[P_CAP_B] if tier == 1 else p[P_CAP_BENCH])
            code = _entry_nb(state, j, now, equity, p, s, cap, C.ORDER_ENTRY, mtc)
        if code == C.ACTIONABLE or code == C.EXIT_SIGNAL or code == C.EVIDENCE:
            state.si[j, SI_LAST_SIG] = now
            state.si[j, SI_LAST_SIGN] = 1 if sc > 0 else -1
        decisions[j] = code
        counts[code] += 1
    # -- baskets: route a joint fall to the inverse ETF, sell it when the basket turns
    for b in range(s.basket_members.shape[0]):
        bp = s.basket_params[b]
        ticked, short, long_, mean = basket_condition_nb(score, fresh, s.basket_members[b], int(bp[BK_MIN]),
                                                         bp[BK_NEG], bp[BK_THR])
        if not ticked:
            continue  # too few fresh members: not a tick, the run of ticks neither grows nor breaks
        state.bi[b, 0] = advance_ticks_nb(state.bi[b, 0], short)
        state.bi[b, 1] = advance_ticks_nb(state.bi[b, 1], long_)
        e = s.basket_target[b]
        if state.bi[b, 1] >= bp[BK_CONSEC] and state.sf[e, SF_QTY] > 0:
            if state.sf[e, SF_PENDING] >= 0:
                _exit_nb(state, e, now, C.ORDER_BASKET_EXIT)
                state.si[e, SI_LAST_ORDER] = now  # the ETF lock follows every order in the ETF
                decisions[e] = C.EXIT_SIGNAL
                dscore[e] = mean
                counts[C.EXIT_SIGNAL] += 1
            continue
        if state.bi[b, 0] < bp[BK_CONSEC]:
            continue
        if now - state.si[e, SI_LAST_ORDER] < p[P_ETF_LOCK]:
            code = C.ETF_LOCK
        elif state.sf[e, SF_QTY] > 0 or state.sf[e, SF_PENDING] != 0:
            code = C.IN_POSITION
        elif math.isnan(state.sf[e, SF_LAST]):
            code = C.RISK  # no price seen yet for the ETF: cannot size
        else:
            code = _entry_nb(state, e, now, equity, p, s, p[P_CAP_ETF], C.ORDER_BASKET_ENTRY, mtc)
        if code == C.ACTIONABLE:
            state.si[e, SI_LAST_ORDER] = now
        decisions[e] = code
        dscore[e] = mean
        counts[code] += 1
    # -- flip-flops of this bar (SPEC §8: a signal - entry, exit or evidence - reversing the ticker's
    #    previous one within flip_window_s) and its actionable signals (entries: the rate's denominator,
    #    as research.kpis counts it), then the trigger windows and the rollback triggers
    act = 0
    flips = 0
    for j in range(n_sym):
        code = decisions[j]
        d = 1 if code == C.ACTIONABLE else (-1 if (code == C.EXIT_SIGNAL or code == C.EVIDENCE) else 0)
        if d == 0:
            continue
        if d > 0:
            act += 1
        last_d = state.si[j, SI_FLIP_DIR]
        if last_d != 0 and d != last_d and now - state.si[j, SI_FLIP_T] <= p[P_FLIP_WIN]:
            flips += 1
        state.si[j, SI_FLIP_DIR] = d
        state.si[j, SI_FLIP_T] = now
    if p[P_RB1] > 0 or p[P_RB2] > 0:
        window_roll_nb(state, minute, int(p[P_RB1_WIN]), int(p[P_RB2_WIN]))
        slot = minute % RING
        state.wr[slot, W_ACT] += act
        state.wr[slot, W_FLIP] += flips
        state.wr[slot, W_CLOSED] += closed_now
        state.wr[slot, W_STOP] += stops_now
        state.wr[slot, W_LLM] += llm_calls
        state.wr[slot, W_WANT_A] += tok[0]
        state.wr[slot, W_OVER_A] += tok[3]
        _triggers_nb(state, t, now, p, stats, ev_f, n_ev)


@njit(cache=True)
def decision_llm_min_nb(state: State, ev_f: np.ndarray, e0: int, e1: int) -> float:
    """The llm_min_score a step's decision used, from the state after it and the events rows [e0, e1) it
    fired: a rollback trigger at the bar's close applies from the next bar, so it reports its value before."""
    for e in range(e0, e1):
        if ev_f[e, EV_KIND] != C.TRIGGER_HARD:
            return ev_f[e, EV_LLM_B]
    return state.f[F_E_LLM_MIN]


@njit(cache=True, parallel=True)
def run_nb(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, scores: np.ndarray,
    events: np.ndarray, close_epoch: np.ndarray, open_epoch: np.ndarray, day: np.ndarray, mtc: np.ndarray,
    ny_min: np.ndarray, llm_calls: np.ndarray, pmat: np.ndarray, s: Structure, init_cash: float,
    record_decisions: bool, order_capacity: int, event_capacity: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
           np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run every parameter set (rows of `pmat`) over all bars, side by side (prange over sets).

    Returns equity (T, K), cash (T, K), decisions (K, T, N) (or (K, 1, N) when not recorded),
    counts (K, codes), stats (K, N_STATS), order ints (K, cap, 5), order floats (K, cap, 3),
    order counts (K,), the basket mean scores of basket decisions (K, T, N) (or (K, 1, N)), the
    per-bar token wants / overflows per tier and fallbacks (K, T, 7) (or (K, 1, 7)), session events
    (K, event_capacity, N_EV), event counts (K,) and the effective llm_min_score at each bar's
    decision (K, T) (or (K, 1)), the threshold the LLM gate must use at that bar.
    """
    t_total, n_sym = c.shape
    n_sets = pmat.shape[0]
    n_b = s.basket_members.shape[0]
    equity = np.empty((t_total, n_sets))
    cash = np.empty((t_total, n_sets))
    dec_t = t_total if record_decisions else 1
    decisions = np.zeros((n_sets, dec_t, n_sym), dtype=np.int8)
    dscores = np.full((n_sets, dec_t, n_sym), np.nan)
    toks = np.zeros((n_sets, dec_t, N_TOK), dtype=np.int64)
    ev_f = np.zeros((n_sets, event_capacity, N_EV))
    n_ev = np.zeros((n_sets, 1), dtype=np.int64)
    llm_min = np.full((n_sets, dec_t), np.nan)
    counts = np.zeros((n_sets, C.N_DECISIONS), dtype=np.int64)
    stats = np.zeros((n_sets, N_STATS))
    ob_i = np.zeros((n_sets, order_capacity, 5), dtype=np.int64)
    ob_f = np.zeros((n_sets, order_capacity, 3))
    n_orders = np.zeros((n_sets, 1), dtype=np.int64)
    for k in prange(n_sets):
        state = new_state_nb(n_sym, n_b, init_cash)
        p = pmat[k]
        dec_row = np.zeros(n_sym, dtype=np.int8)
        dscore_row = np.full(n_sym, np.nan)
        tok_row = np.zeros(N_TOK, dtype=np.int64)
        fresh = np.zeros(n_sym, dtype=np.bool_)
        for t in range(t_total):
            ev0 = n_ev[k, 0]
            step_nb(state, t, o[t], h[t], low[t], c[t], scores[t], events[t], close_epoch, open_epoch[t], day[t],
                    mtc[t], ny_min[t], llm_calls[t], p, s, dec_row, dscore_row, tok_row, counts[k], stats[k], ob_i[k],
                    ob_f[k], n_orders[k], ev_f[k], n_ev[k], fresh)
            if record_decisions:
                decisions[k, t] = dec_row
                dscores[k, t] = dscore_row
                toks[k, t] = tok_row
                llm_min[k, t] = decision_llm_min_nb(state, ev_f[k], ev0, n_ev[k, 0])
            equity[t, k] = equity_nb(state)
            cash[t, k] = state.f[F_CASH]
    return (equity, cash, decisions, counts, stats, ob_i, ob_f, n_orders[:, 0], dscores, toks, ev_f, n_ev[:, 0],
            llm_min)
