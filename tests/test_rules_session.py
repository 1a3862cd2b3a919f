"""The session rules of SPEC §3 and §8 on constructed sessions: the cutoff delta's New York window,
the 1 h and 2 h rollback triggers (right bar, from the next bar, once per session) and the hard
rollback time, at their exact minutes. Bar t of make_inputs closes at 09:31 + t New York time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from kernel_fixtures import decision, make_inputs, strategy

from strategies import kernel as K
from strategies.base import RunResult
from strategies.tiered_basket import BarInputs, TieredBasketStrategy

A = ("NVDA", "TSLA", "AAPL")


def _both(strat: TieredBasketStrategy, inputs: BarInputs) -> RunResult:
    """Run the compiled loop and the bar-by-bar walk; they must agree, triggers included."""
    res = strat.run_inputs(inputs)
    log = strat.walk(inputs, strat.new_state())
    np.testing.assert_array_equal(res.decisions[0], log.decisions)
    np.testing.assert_array_equal(res.orders, log.orders)
    np.testing.assert_array_equal(res.triggers, log.triggers)
    return res


def _fired(res: RunResult, name: str) -> list[int]:
    df = res.triggers_frame(0)
    return df.loc[df["trigger"] == name, "bar"].tolist()


# ---- 1 h trigger: stop-out rate after 5 actionable signals -------------------------------------

def _stop_out_inputs(shrink_probe: bool = True) -> BarInputs:
    """Entries on a new ticker each bar; NVDA and AAPL take profit, TSLA and MSFT are stopped."""
    scores = [(0, "NVDA", 0.6), (1, "TSLA", 0.6), (2, "AAPL", 0.6), (3, "MSFT", 0.6), (4, "AMZN", 0.6),
              (5, "META", 0.6), (5, "MSFT", 0.6),  # MSFT: 120 s after its last signal, at the firing bar
              (6, "AMZN", 0.6)]  # AMZN: 120 s after its last signal, the bar after
    if shrink_probe:
        scores.append((6, "AAPL", 0.43))  # inside the relaxed cutoff 0.42, outside a shrunk 0.435
    bars = {(2, "NVDA"): {"high": 110.0}, (3, "TSLA"): {"low": 90.0}, (4, "AAPL"): {"high": 110.0},
            (5, "MSFT"): {"low": 90.0}, (7, "META"): {"low": 90.0}, (8, "MSFT"): {"low": 90.0}}
    return make_inputs(10, scores, bars=bars)


def test_stop_out_rate_fires_the_1h_trigger_at_the_right_bar_from_the_next_bar_once() -> None:
    on = strategy(mode="relaxed", rollback_1h=True, max_concurrent_risk=0.1)
    off = strategy(mode="relaxed", max_concurrent_risk=0.1)
    inputs = _stop_out_inputs()
    res, twin = _both(on, inputs), _both(off, inputs)
    # bar 3: 2 closed, 1 stopped (50 %) but only 4 signals; bar 4: 5 signals, 1 of 3 stopped (33 %);
    # bar 5: 7 signals, 2 of 4 stopped (50 %): fires
    assert _fired(res, "rollback_1h") == [5]  # once, though the rate stays high afterwards
    ev = res.triggers_frame(0).iloc[0]
    assert (ev["actionable"], ev["closed"], ev["stop_exits"], ev["stop_out_rate"]) == (7, 4, 2, 0.5)
    assert ev["changed"] == "cutoff_delta -0.03 -> -0.015; cooldown_s 120 -> 150; direction_lock_s 90 -> 120"
    assert ev["time_ny"].strftime("%H:%M") == "09:36"
    # nothing changes up to the firing bar, inclusive
    np.testing.assert_array_equal(res.decisions[0][:6], twin.decisions[0][:6])
    assert decision(res.decisions[0], 5, "MSFT") == "actionable"  # 120 s >= the old 120 s cooldown
    # from the next bar: cooldown 150 s, the delta halved
    assert decision(twin.decisions[0], 6, "AMZN") == "in_position"
    assert decision(res.decisions[0], 6, "AMZN") == "cooldown"
    assert decision(twin.decisions[0], 6, "AAPL") == "actionable"
    assert decision(res.decisions[0], 6, "AAPL") == "below_cutoff"


def test_stop_out_rate_needs_five_signals() -> None:
    strat = strategy(mode="relaxed", rollback_1h=True, rollback_min_actionable=8, max_concurrent_risk=0.1)
    assert _fired(_both(strat, _stop_out_inputs()), "rollback_1h") == [6]  # the 8th signal comes at bar 6


def test_the_1h_trigger_fires_again_in_the_next_session_only() -> None:
    base = _stop_out_inputs(shrink_probe=False)
    n = len(base.index)
    inputs = make_inputs(2 * n, [(t + k * n, s, v) for k in (0, 1) for t, s, v in
                                 [(0, "NVDA", 0.6), (1, "TSLA", 0.6), (2, "AAPL", 0.6), (3, "MSFT", 0.6),
                                  (4, "AMZN", 0.6), (5, "META", 0.6), (5, "MSFT", 0.6)]],
                         bars={(t + k * n, s): f for k in (0, 1) for (t, s), f in
                               {(2, "NVDA"): {"high": 110.0}, (3, "TSLA"): {"low": 90.0},
                                (4, "AAPL"): {"high": 110.0}, (5, "MSFT"): {"low": 90.0}}.items()},
                         day=[1] * n + [2] * n, minutes_to_close=([300] * (n - 2) + [1, 0]) * 2)
    res = _both(strategy(mode="relaxed", rollback_1h=True, max_concurrent_risk=0.1), inputs)
    assert _fired(res, "rollback_1h") == [5, n + 5]
    # the new session starts from the relaxed values again
    assert res.triggers_frame(0).iloc[1]["cooldown_s_before"] == 120.0


# ---- 1 h trigger: flip-flop rate ----------------------------------------------------------------

def test_flip_flop_rate_fires_the_1h_trigger_when_it_reaches_25_percent() -> None:
    # SPEC §8: flip-flop rate = flip-flops / actionable signals (entries, as research.kpis counts them)
    scores = [(0, s, 0.6) for s in ("NVDA", "TSLA", "AAPL", "MSFT")]  # 4 actionable, no flip-flop: 0 %
    scores += [(2, "NVDA", -0.6),  # an exit signal reversing NVDA's entry 120 s ago: 1 / 4 = 25 %: fires
               (3, "AMZN", 0.43)]  # relaxed cutoff 0.42, shrunk 0.435
    inputs = make_inputs(6, scores)
    res = _both(strategy(mode="relaxed", rollback_1h=True, max_concurrent_risk=0.1), inputs)
    twin = _both(strategy(mode="relaxed", max_concurrent_risk=0.1), inputs)
    assert _fired(res, "rollback_1h") == [2]
    ev = res.triggers_frame(0).iloc[0]
    assert (ev["actionable"], ev["flip_flops"], ev["flip_flop_rate"]) == (4, 1, 0.25)
    np.testing.assert_array_equal(res.decisions[0][:3], twin.decisions[0][:3])
    assert decision(res.decisions[0], 2, "NVDA") == "exit_signal"
    assert decision(twin.decisions[0], 3, "AMZN") == "actionable"
    assert decision(res.decisions[0], 3, "AMZN") == "below_cutoff"


def test_the_1h_trigger_halves_a_positive_cutoff_delta_toward_zero_too() -> None:
    # SPEC §8: "shrink" halves cutoff_delta toward 0, whatever its sign: +0.04 -> +0.02
    scores = [(0, s, 0.6) for s in ("NVDA", "TSLA", "AAPL", "MSFT")]
    scores += [(2, "NVDA", -0.6),  # 1 flip-flop / 4 actionable at bar 2: fires
               (3, "AMZN", 0.48)]  # cutoff 0.45 + 0.04 = 0.49; halved delta: 0.47
    gates = {"cooldown_s": 0.0, "direction_lock_s": 0.0, "delta_window": False, "cutoff_delta": 0.04,
             "max_concurrent_risk": 0.1}
    inputs = make_inputs(6, scores)
    res = _both(strategy(rollback_1h=True, **gates), inputs)
    twin = _both(strategy(**gates), inputs)
    assert _fired(res, "rollback_1h") == [2]
    ev = res.triggers_frame(0).iloc[0]
    assert (ev["cutoff_delta_before"], ev["cutoff_delta_after"]) == (0.04, 0.02)
    assert decision(twin.decisions[0], 3, "AMZN") == "below_cutoff"
    assert decision(res.decisions[0], 3, "AMZN") == "actionable"


def test_a_reversal_after_the_flip_window_is_no_flip_flop() -> None:
    scores = [(0, "NVDA", -0.6), (11, "NVDA", 0.6)]  # 660 s apart: outside the 600 s window
    res = _both(strategy(mode="relaxed", rollback_1h=True), make_inputs(13, scores))
    assert _fired(res, "rollback_1h") == []
    scores = [(0, "NVDA", -0.6), (10, "NVDA", 0.6)]  # 600 s apart: a flip-flop (1 of 2 signals)
    res = _both(strategy(mode="relaxed", rollback_1h=True), make_inputs(13, scores))
    assert _fired(res, "rollback_1h") == [10]


# ---- 2 h trigger: Tier-A token overflow ----------------------------------------------------------

def _overflow_inputs(n: int = 24) -> BarInputs:
    """Bars 0-10: only NVDA is scored (no overflow); from bar 11 all of Tier A (one overflow a minute)."""
    scores = [(t, "NVDA", 0.1) for t in range(n)] + [(t, s, 0.1) for t in range(11, n) for s in ("TSLA", "AAPL")]
    return make_inputs(n, scores)


def test_tier_a_overflow_fires_the_2h_trigger_at_a_15_percent_mean() -> None:
    # relaxed, tokens_a 1: NVDA takes the Tier-A token, TSLA borrows the Reserve one, AAPL overflows (1/3)
    strat = strategy(mode="relaxed", rollback_2h=True, tokens_a=1)
    res = _both(strat, _overflow_inputs())
    # mean per-minute rate: 9 minutes at 1/3 over 20 minutes = 15 % exactly, at bar 19 (8/19 x 1/3 < 15 % before)
    assert _fired(res, "rollback_2h") == [19]
    ev = res.triggers_frame(0).iloc[0]
    assert ev["overflow_a"] == pytest.approx(0.15) and ev["minutes"] == 20
    assert ev["changed"] == "llm_min_score 0.6 -> 0.65; reserve_fallback on -> off"
    d = res.decisions[0]
    assert decision(d, 19, "TSLA") == "below_cutoff"  # still borrowed at the firing bar
    assert decision(d, 20, "TSLA") == "token"  # no fallback from the next bar on
    # the report's per-minute table holds the very numbers the trigger read
    per_min = res.token_minutes_frame(0)
    assert per_min["overflow_rate_a"].iloc[:20].mean() == pytest.approx(ev["overflow_a"], abs=1e-12)
    assert per_min["overflow_rate_a"].iloc[11] == pytest.approx(1 / 3)


def test_tier_a_overflow_just_under_15_percent_does_not_fire() -> None:
    strat = strategy(mode="relaxed", rollback_2h=True, tokens_a=1)
    assert _fired(_both(strat, _overflow_inputs(19)), "rollback_2h") == []


# ---- 2 h trigger: LLM call surge ---------------------------------------------------------------

def _llm_inputs(n: int, calls: dict[int, int], day: list[int] | None = None) -> BarInputs:
    inputs = make_inputs(n, day=day)
    llm = np.zeros(n, dtype=np.int64)
    for t, k in calls.items():
        llm[t] = k
    return dataclasses.replace(inputs, llm_calls=llm)


@pytest.mark.parametrize("calls, fired", [({5: 20, 9: 11}, [9]), ({5: 20, 9: 10}, []), ({0: 20, 119: 11}, [119]),
                                          ({0: 20, 120: 11}, []), ({0: 31}, [0])])
def test_more_than_30_llm_calls_in_the_2h_window_fire_the_2h_trigger(calls: dict, fired: list) -> None:
    strat = strategy(mode="relaxed", rollback_2h=True)
    res = _both(strat, _llm_inputs(130, calls))
    assert _fired(res, "rollback_2h") == fired
    if fired:
        ev = res.triggers_frame(0).iloc[0]
        assert ev["llm_calls"] == 31 and ev["llm_min_score_after"] == 0.65


def test_the_llm_gate_reads_the_rolled_back_llm_min_score_from_the_state() -> None:
    strat = strategy(mode="relaxed", rollback_2h=True)
    inputs = _llm_inputs(12, {5: 20, 9: 11})
    state = strat.new_state()
    assert strat.effective(state)["llm_min_score"] == 0.6  # before any bar: the parameters
    strat.walk(inputs, state, 0, 9)
    assert strat.effective(state)["llm_min_score"] == 0.6
    strat.walk(inputs, state, 9, 10)  # fires at bar 9's close: the gate uses 0.65 for bar 10
    assert strat.effective(state)["llm_min_score"] == 0.65 and state.f[K.F_E_LLM_MIN] == 0.65
    assert strat.effective(state, day=int(inputs.day[0]) + 1)["llm_min_score"] == 0.6  # a new session


# ---- the cutoff delta's New York window and the hard rollback time (SPEC §3, §8) ---------------

def test_the_cutoff_delta_applies_only_inside_its_window_to_the_minute() -> None:
    # relaxed: cutoff 0.45 - 0.03 inside 09:35 <= close < 09:40; a 0.43 score acts only there
    strat = strategy(mode="relaxed", delta_window=True, delta_start="09:35", delta_end="09:40")
    scores = [(3, "NVDA", 0.43), (4, "TSLA", 0.43), (8, "AAPL", 0.43), (9, "MSFT", 0.43)]
    d = _both(strat, make_inputs(11, scores)).decisions[0]
    assert decision(d, 3, "NVDA") == "below_cutoff"  # 09:34
    assert decision(d, 4, "TSLA") == "actionable"  # 09:35
    assert decision(d, 8, "AAPL") == "actionable"  # 09:39
    assert decision(d, 9, "MSFT") == "below_cutoff"  # 09:40
    # switched off: the delta applies all session
    d = _both(strategy(mode="relaxed", delta_window=False), make_inputs(11, scores)).decisions[0]
    assert [decision(d, t, s) for t, s, _ in scores] == ["actionable"] * 4


def test_the_delta_window_follows_new_york_time_across_dst() -> None:
    # 2024-07-01 is EDT: 13:30 UTC is 09:30 New York; the window 09:30-09:35 holds bars closing 09:31-09:34
    inputs = make_inputs(6, [(3, "NVDA", 0.43), (4, "TSLA", 0.43)])
    shift = int((np.datetime64("2024-07-01T13:30") - np.datetime64("2024-11-04T14:30")) / np.timedelta64(1, "s"))
    summer = BarInputs(inputs.index + np.timedelta64(shift, "s"), inputs.symbols, inputs.open, inputs.high,
                       inputs.low, inputs.close, inputs.scores, inputs.events, inputs.close_epoch + shift,
                       inputs.day, inputs.minutes_to_close)
    assert summer.ny_minute[0] == 9 * 60 + 31
    d = _both(strategy(mode="relaxed", delta_window=True, delta_start="09:30", delta_end="09:35"), summer).decisions[0]
    assert decision(d, 3, "NVDA") == "actionable" and decision(d, 4, "TSLA") == "below_cutoff"


def test_the_hard_rollback_restores_every_relaxed_value_at_the_exact_minute() -> None:
    strat = strategy(mode="relaxed", delta_window=False, hard_rollback_at="09:40", tokens_a=2)
    scores = [(t, s, 0.1) for t in (8, 9) for s in A]  # 3 Tier-A evaluations, 2 tokens: the 3rd borrows
    scores += [(8, "MSFT", 0.43), (9, "AMZN", 0.43)]  # relaxed cutoff 0.42, default 0.45
    scores += [(6, "META", 0.6), (8, "META", 0.6), (7, "GOOGL", 0.6)]  # META: 120 s apart
    scores += [(9, "GOOGL", 0.6)]
    inputs = make_inputs(11, scores, events=[(7, "GOOGL"), (9, "GOOGL")])
    res = _both(strat, inputs)
    d = res.decisions[0]
    assert decision(d, 8, "AAPL") == "below_cutoff" and decision(d, 9, "AAPL") == "token"  # fallback ends 09:40
    assert decision(d, 8, "MSFT") == "actionable" and decision(d, 9, "AMZN") == "below_cutoff"  # delta ends
    assert decision(d, 8, "META") == "in_position"  # 120 s passes the relaxed 120 s cooldown
    assert decision(d, 9, "GOOGL") == "cooldown"  # 120 s fails the default 180 s cooldown from 09:40 on
    assert _fired(res, "hard_rollback") == [9]
    ev = res.triggers_frame(0).iloc[0]
    assert ev["time_ny"].strftime("%H:%M") == "09:40"
    assert ev["changed"] == ("cutoff_delta -0.03 -> 0; cooldown_s 120 -> 180; direction_lock_s 90 -> 300; "
                             "llm_min_score 0.6 -> 0.7; reserve_fallback on -> off")


def test_a_bad_time_is_refused_naming_the_field() -> None:
    from tierlab.errors import ConfigError

    with pytest.raises(ConfigError, match="delta_start"):
        strategy(delta_start="9h30")
    with pytest.raises(ConfigError, match="hard_rollback_at"):
        strategy(hard_rollback_at="25:00")
    with pytest.raises(ConfigError, match="must be before delta_end"):
        strategy(delta_start="11:30", delta_end="09:30")


def test_the_state_with_its_windows_saves_and_resumes_exactly() -> None:
    from strategies.tiered_basket import state_from_bytes, state_to_bytes

    strat = strategy(mode="relaxed", rollback_2h=True, tokens_a=1)
    inputs = _overflow_inputs()
    whole = strat.walk(inputs, strat.new_state())
    state = strat.new_state()
    first = strat.walk(inputs, state, 0, 15)
    second = strat.walk(inputs, state_from_bytes(state_to_bytes(state)), 15)
    np.testing.assert_array_equal(whole.decisions, np.concatenate([first.decisions, second.decisions]))
    np.testing.assert_array_equal(whole.triggers, np.concatenate([first.triggers, second.triggers]))
    assert len(whole.triggers) == 1


def test_presets_carry_the_session_rules_of_spec_8() -> None:
    from strategies.params import Params

    d, r = Params.preset("default"), Params.preset("relaxed")
    assert (d.delta_start, d.delta_end, d.delta_window) == ("09:30", "11:30", True)
    assert (d.rollback_1h, d.rollback_2h, d.hard_rollback_at) == (True, True, "")
    assert (r.hard_rollback_at, r.llm_min_score, r.rollback_llm_min_score) == ("11:30", 0.6, 0.65)
    assert (r.rollback_cooldown_s, r.rollback_lock_s, r.rollback_delta_shrink) == (150.0, 120.0, 0.5)
    assert (r.rollback_stop_rate, r.rollback_flip_rate, r.rollback_overflow_a, r.llm_surge_calls) == (0.4, 0.25, 0.15, 30)


def test_triggers_of_several_score_models_keep_their_set() -> None:
    from data.sample import generate_panel
    from strategies.params import Params

    panel = generate_panel("2024-11-04", "2024-11-05")
    r = Params.preset("relaxed")
    plist = [r, r.replace(mom_window=20)]
    both = TieredBasketStrategy(r).run(panel, plist)
    alone = TieredBasketStrategy(r).run(panel, [plist[1]])
    assert len(alone.triggers) > 0
    got = both.triggers_frame(1).drop(columns="set").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, alone.triggers_frame(0).drop(columns="set").reset_index(drop=True))
