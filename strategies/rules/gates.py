"""Signal gates of SPEC §3-§4, in their order: cutoff, exit, cooldown, direction lock, evidence.

Risk (§5) and the daily caps (§4.5) follow in the step kernel, because they need the account.
"""

from __future__ import annotations

from numba import njit

from strategies.codes import (
    ACTIONABLE,
    BELOW_CUTOFF,
    COOLDOWN,
    DAILY_CAP,
    DIRECTION_LOCK,
    DUPLICATE,
    EVIDENCE,
    EXIT_SIGNAL,
    IN_POSITION,
)


@njit(cache=True)
def stock_gate_nb(
    score: float,
    held: bool,
    pending_entry: bool,
    now: int,
    last_signal: int,
    last_sign: int,
    cutoff: float,
    cooldown_s: float,
    lock_s: float,
) -> int:
    """Decision code for one evaluated stock score before risk and caps.

    ACTIONABLE here means "a long entry candidate"; EXIT_SIGNAL (a held long meeting a score
    <= -cutoff) is never blocked by cooldown or lock; EVIDENCE is a negative score on a stock
    not held, which only feeds the baskets (no shorting of stocks).
    """
    if abs(score) < cutoff:
        return BELOW_CUTOFF
    if held and score < 0:
        return EXIT_SIGNAL
    if now - last_signal < cooldown_s:
        return COOLDOWN
    sign = 1 if score > 0 else -1
    if last_sign != 0 and sign != last_sign and now - last_signal < lock_s:
        return DIRECTION_LOCK
    if score < 0:
        return EVIDENCE
    if held or pending_entry:
        return IN_POSITION
    return ACTIONABLE


@njit(cache=True)
def cap_gate_nb(
    now: int, last_counted: int, idem_window_s: float, ticker_count: int, ticker_cap: int,
    global_count: int, global_cap: int,
) -> int:
    """Daily-cap gate of SPEC §4.5: DUPLICATE inside the idempotency window, DAILY_CAP when full.

    Returns ACTIONABLE when the signal may be counted (the caller then increments both counters).
    """
    if now - last_counted < idem_window_s:
        return DUPLICATE
    if ticker_count >= ticker_cap or global_count >= global_cap:
        return DAILY_CAP
    return ACTIONABLE
