"""Reason codes (int8) shared by the kernel, the KPIs, the reports and the live logs.

A decision code says what happened to one symbol at one bar; an order reason says why an order
was placed. Names are the SPEC's reason strings.
"""

from __future__ import annotations

# --- decision codes (per bar, per symbol) -------------------------------------------------
NOT_EVALUATED = 0  # no fresh bar, not due, or warm-up
TOKEN = 1  # the tier's token bucket was empty (SPEC §2)
BELOW_CUTOFF = 2  # |score| < effective cutoff (SPEC §4.1)
COOLDOWN = 3  # signalled less than cooldown_s ago (SPEC §4.2)
DIRECTION_LOCK = 4  # reverse of the last signal within direction_lock_s (SPEC §4.3)
RISK = 5  # the risk manager refused (SPEC §5)
DAILY_CAP = 6  # per-ticker or global daily cap reached (SPEC §4.5)
DUPLICATE = 7  # same signal inside the idempotency window: not counted twice (SPEC §4.5)
ETF_LOCK = 8  # an order in this ETF less than etf_lock_s ago (SPEC §6)
CONFLICT = 9  # the conflicting side of a pair is held (SPEC §6)
IN_POSITION = 10  # already holding the symbol: no pyramiding
EVIDENCE = 11  # negative score on a stock not held: basket evidence, never a short (SPEC §6)
ACTIONABLE = 12  # passed every gate: an entry intent
EXIT_SIGNAL = 13  # actionable signal against a held position: an exit intent (SPEC §5b)
SESSION_END = 14  # inside the flatten window before the close: no new entries (SPEC §5b)

DECISION_NAMES: tuple[str, ...] = (
    "not_evaluated",
    "token",
    "below_cutoff",
    "cooldown",
    "direction_lock",
    "risk",
    "daily_cap",
    "duplicate",
    "etf_lock",
    "conflict",
    "in_position",
    "evidence",
    "actionable",
    "exit_signal",
    "session_end",
)
N_DECISIONS = len(DECISION_NAMES)
SUPPRESSION_CODES: tuple[int, ...] = (
    TOKEN, BELOW_CUTOFF, COOLDOWN, DIRECTION_LOCK, RISK, DAILY_CAP, DUPLICATE, ETF_LOCK, CONFLICT, IN_POSITION,
    SESSION_END,
)

# --- order reasons ----------------------------------------------------------------------------
ORDER_ENTRY = 1  # stock entry on a positive actionable signal
ORDER_EXIT_SIGNAL = 2  # stock sold on an actionable signal against it
ORDER_STOP = 3  # stop-loss hit inside a bar
ORDER_TAKE_PROFIT = 4  # take-profit hit inside a bar
ORDER_FLATTEN = 5  # flatten_before_close_min
ORDER_MAX_HOLD = 6  # max_hold_minutes reached
ORDER_BASKET_ENTRY = 7  # inverse ETF bought on a basket signal
ORDER_BASKET_EXIT = 8  # inverse ETF sold when its basket turns
ORDER_SIGNAL = 9  # plain signal strategies (entries/exits arrays)

ORDER_REASON_NAMES: dict[int, str] = {
    ORDER_ENTRY: "entry",
    ORDER_EXIT_SIGNAL: "exit_signal",
    ORDER_STOP: "stop",
    ORDER_TAKE_PROFIT: "take_profit",
    ORDER_FLATTEN: "flatten",
    ORDER_MAX_HOLD: "max_hold",
    ORDER_BASKET_ENTRY: "basket_entry",
    ORDER_BASKET_EXIT: "basket_exit",
    ORDER_SIGNAL: "signal",
}

# --- session events (SPEC §8): rollback triggers and the hard rollback time ---------------------
TRIGGER_1H = 1  # 1 h window: stop-out rate or flip-flop rate
TRIGGER_2H = 2  # 2 h window: LLM call surge or Tier-A token overflow
TRIGGER_HARD = 3  # the hard rollback time: every relaxed value back to its default
TRIGGER_NAMES: dict[int, str] = {TRIGGER_1H: "rollback_1h", TRIGGER_2H: "rollback_2h", TRIGGER_HARD: "hard_rollback"}

# token tiers (bucket index)
TIER_A = 0
TIER_B = 1
TIER_BENCH = 2  # draws from the Reserve bucket
TIER_ETF = 3  # traded only by basket routing; never evaluated, no bucket
TIER_NAMES: tuple[str, ...] = ("A", "B", "Bench", "ETF")
