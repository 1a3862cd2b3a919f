"""The live runner's per-bar path: one score row per bar, the state's bytes, pipelined catch-up commits.

The runner scores bar t alone (`TieredBasketStrategy.score_row`) instead of a window: every row must
equal the vectorized score of a whole multi-day history bit for bit, missing bars included. A filing
The state is saved
after every bar in a raw format (states saved as npz still load). A catch-up decides minute r+1
while Redis stores minute r and must leave exactly what deciding minute by minute leaves.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import redis
from live_helpers import _month

from data.bars import Panel
from data.calendar import NEW_YORK, ny_days
from data.events import events_mask
from live.feeds import Bar
from live.runner import Runner
from live.state import Keys, RedisState
from strategies import kernel as K
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy, state_from_bytes, state_to_bytes
from tierlab.errors import DataError


def _with_holes(panel: Panel, share: float, seed: int) -> Panel:
    """The panel with a random share of its bars missing (NaN rows per symbol, as thin tickers have)."""
    rng = np.random.default_rng(seed)
    hole = rng.random(panel.shape) < share
    arrays = {}
    for name in ("open", "high", "low", "close", "volume"):
        a = getattr(panel, name).copy()
        a[hole] = np.nan
        arrays[name] = a
    return Panel(index=panel.index, symbols=panel.symbols, **arrays)


@pytest.mark.parametrize(("mode", "holes"), [("default", 0.0), ("relaxed", 0.0), ("default", 0.15)])
def test_score_row_equals_the_vectorized_score_on_every_session_of_the_month(mode: str, holes: float) -> None:
    month, events = _month()
    p = Params.preset(mode)
    panel = month.select(p.universe)
    if holes:
        panel = _with_holes(panel, holes, seed=7)
    s = TieredBasketStrategy(p)
    full = s.prepare(panel, events)  # the backtest's path: the whole month at once
    days = ny_days(panel.index)
    checked = finite = spikes = 0
    for day in np.unique(days):
        rows = np.flatnonzero(days == day)
        sess = panel.slice(panel.index[rows[0]], panel.index[rows[-1]] + pd.Timedelta(minutes=1))
        filings = events_mask(events, sess.index, sess.symbols)
        for r in range(len(sess.index)):
            score, ev = s.score_row(sess.high, sess.low, sess.close, sess.volume, r, filings[r])
            assert score.tobytes() == full.scores[rows[r]].tobytes(), f"{sess.index[r]} scores"  # bit for bit
            assert ev.tobytes() == full.events[rows[r]].tobytes(), f"{sess.index[r]} events"
            checked += 1
            finite += int(np.isfinite(score).sum())
            spikes += int(ev.sum())
    assert checked == len(panel.index) and finite > 10_000 and spikes > 0


def test_a_plugged_in_score_model_is_scored_on_a_window_not_by_the_builtin_row(redis_url: str,
                                                                              redis_prefix: str) -> None:
    class Contrarian(TieredBasketStrategy):
        def score(self, panel: Panel, params: Params | None = None) -> np.ndarray:
            return -super().score(panel, params)

    sess, events, p = _session("2024-11-05", "default")
    strat = Contrarian(p)
    assert strat.score_row(sess.high, sess.low, sess.close, sess.volume, 50) is None
    full = strat.prepare(sess, events)
    runner = Runner(strat, RedisState(redis.Redis.from_url(redis_url), Keys.of("t", "contrarian", "default",
                                                                              root=redis_prefix)), events=events)
    runner.open_session(sess.index[0].tz_convert(NEW_YORK).date())
    runner.add(_bars(sess, 0, 80))
    for r in (30, 79):
        score, _ = runner._inputs(r)
        np.testing.assert_array_equal(score, full.scores[r])
    assert np.isfinite(full.scores[79]).any()


def test_state_bytes_round_trip_exactly_and_old_npz_states_still_load() -> None:
    s = TieredBasketStrategy()
    state = s.new_state(12_345.678)
    rng = np.random.default_rng(3)
    state.sf[:] = rng.normal(size=state.sf.shape)
    state.sf[2, K.SF_STOP] = np.nan
    state.si[:] = rng.integers(-2**62, 2**62, size=state.si.shape)
    state.wr[:] = rng.integers(0, 50, size=state.wr.shape)
    blob = state_to_bytes(state)
    back = state_from_bytes(blob)
    for a, b, name in zip(state, back, K.State._fields, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name  # bit for bit, NaN payloads included
        assert b.flags.writeable, name  # the kernel writes into a loaded state
    buf = io.BytesIO()
    np.savez(buf, **state._asdict())  # how earlier versions saved it
    old = state_from_bytes(buf.getvalue())
    assert all(a.tobytes() == b.tobytes() for a, b in zip(state, old, strict=True))
    with pytest.raises(DataError, match="bytes past its last array"):
        state_from_bytes(blob + b"\0")
    with pytest.raises(DataError, match="not a tierlab state"):
        state_from_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        state_from_bytes(blob[:-8])  # cut short (a partial write)


def _bars(panel: Panel, lo: int, hi: int) -> list[Bar]:
    return [Bar(sym, panel.index[r], panel.open[r, j], panel.high[r, j], panel.low[r, j], panel.close[r, j],
                panel.volume[r, j])
            for r in range(lo, hi) for j, sym in enumerate(panel.symbols) if not np.isnan(panel.close[r, j])]


def _runner(url: str, prefix: str, account: str, p: Params, events: pd.DataFrame, sess: Panel | None = None,
            bars: int = 0) -> Runner:
    """A runner on its own namespace; with `sess`, that session opened and its first `bars` minutes filed."""
    rn = Runner(TieredBasketStrategy(p), RedisState(redis.Redis.from_url(url),
                                                    Keys.of(account, "tiered_basket", p.mode, root=prefix)),
                events=events)
    if sess is not None:
        rn.open_session(sess.index[0].tz_convert(NEW_YORK).date())
        rn.add(_bars(sess, 0, bars))
    return rn


def _session(day: str, mode: str) -> tuple[Panel, pd.DataFrame, Params]:
    """One regular session of the month (09:30-16:00 New York) in the mode's universe, the filings, the params."""
    month, events = _month()
    p = Params.preset(mode)
    lo = pd.Timestamp(f"{day} 09:30", tz=NEW_YORK).tz_convert("UTC")
    return month.slice(lo, lo + pd.Timedelta(minutes=390)).select(p.universe), events, p


def _stored(runner: Runner) -> tuple[list, list, bytes]:
    st = runner.store
    recs = st.decisions()
    sigs = [{k: v for k, v in s.items()} for s in st.signals()]
    blob, _ = st.load()
    return recs, sigs, blob


def test_a_catch_up_stores_what_deciding_minute_by_minute_stores(redis_url: str, redis_prefix: str) -> None:
    sess, events, p = _session("2024-11-13", "relaxed")
    stepwise = _runner(redis_url, redis_prefix, "stepwise", p, events, sess)
    for r in range(200):
        stepwise.add(_bars(sess, r, r + 1))
        stepwise.decide_through(sess.index[r])
    catchup = _runner(redis_url, redis_prefix, "catchup", p, events, sess, 200)
    minutes = catchup.decide_through(sess.index[199])
    assert len(minutes) == 200
    a, b = _stored(stepwise), _stored(catchup)
    assert sum(len(m.fills) for m in minutes) > 0, "a catch-up without fills proves little"
    assert a[0] == b[0]  # every bar's record: codes, scores, fills, equity
    assert a[1] == b[1]  # every signal, in order
    assert a[2] == b[2]  # the state after the last bar
    summary = catchup.store.r.hget(catchup.store.keys.status, "summary")
    assert summary is not None and sess.index[199].isoformat().encode() in summary  # the newest bar's status
    assert catchup.last_epoch == stepwise.last_epoch == int(sess.index[199].value // 1_000_000_000)


def test_a_second_life_catching_up_over_decided_minutes_keeps_the_stored_decisions(redis_url: str,
                                                                                   redis_prefix: str) -> None:
    """A runner that starts without resuming (a second life) and catches up over minutes an earlier life
    decided: each is refused by Redis, the stored state is adopted, and only the new minutes are added."""
    sess, events, p = _session("2024-11-05", "default")
    first = _runner(redis_url, redis_prefix, "acct", p, events, sess, 150)
    first.decide_through(sess.index[99])
    second = _runner(redis_url, redis_prefix, "acct", p, events, sess, 150)  # same keys, fresh state, no resume()
    seen = []
    second.on_minute = seen.append
    minutes = second.decide_through(sess.index[149])
    alone = _runner(redis_url, redis_prefix, "alone", p, events, sess, 150)
    alone.decide_through(sess.index[149])
    got, want = _stored(second), _stored(alone)
    assert [r["t"] for r in got[0]] == [int(t.value // 1_000_000_000) for t in sess.index[:150]]  # once each
    assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2]
    assert [m.t for m in minutes] == [m.t for m in seen] == list(sess.index[100:150])  # only what it stored


def test_a_zombie_that_decided_the_bar_just_before_hands_over_its_state(redis_url: str, redis_prefix: str) -> None:
    """Two lives on one namespace: the other one stored bar r-1 from a state this runner never had (it
    adopted the broker's cash). Redis refuses this runner's bar r-1; it loads that state and decides bar r
    and on from it, instead of sending bar r stepped from its own state."""
    sess, events, p = _session("2024-11-05", "default")
    me = _runner(redis_url, redis_prefix, "acct", p, events, sess, 120)
    me.decide_through(sess.index[97])
    zombie = _runner(redis_url, redis_prefix, "acct", p, events, sess, 120)
    zombie.resume()  # the state this life stored up to bar 97
    zombie.adopt({}, 50_000.0)  # its broker said so
    zombie.decide_through(sess.index[98])
    minutes = me.decide_through(sess.index[119])
    records = me.store.decisions()
    assert [r["t"] for r in records] == [int(t.value // 1_000_000_000) for t in sess.index[:120]]
    assert records[98]["cash"] > 40_000  # the zombie's bar
    assert all(r["equity"] > 40_000 for r in records[99:])  # decided from the zombie's state, not this one's
    assert [m.t for m in minutes] == list(sess.index[99:120])


def test_a_refused_bar_leaves_the_status_of_the_life_that_stored_it(redis_url: str, redis_prefix: str) -> None:
    """The status summary goes right behind its commit; when Redis refuses the commit (another life stored
    that bar first), the summary of the refused decision must not replace the stored one's."""
    import json

    sess, events, p = _session("2024-11-05", "default")
    me = _runner(redis_url, redis_prefix, "acct", p, events, sess, 100)
    me.decide_through(sess.index[97])
    zombie = _runner(redis_url, redis_prefix, "acct", p, events, sess, 100)
    zombie.resume()
    zombie.adopt({}, 50_000.0)
    zombie.decide_through(sess.index[98])
    assert me.decide_through(sess.index[98]) == []  # refused: the zombie stored bar 98
    shown = json.loads(me.store.r.hget(me.store.keys.status, "summary"))
    assert shown["time"] == sess.index[98].isoformat() and shown["equity"] > 40_000  # the zombie's view
    me.decide_through(sess.index[99])
    shown = json.loads(me.store.r.hget(me.store.keys.status, "summary"))
    assert shown["time"] == sess.index[99].isoformat() and shown["equity"] > 40_000  # its next bar, from that state


def test_delete_all_removes_the_llm_gate_keys_of_its_namespace_only(redis_url: str, redis_prefix: str) -> None:
    r = redis.Redis.from_url(redis_url)
    mine = RedisState(r, Keys.of("acct", "tiered_basket", "default", root=redis_prefix))
    other = RedisState(r, Keys.of("acct", "tiered_basket", "relaxed", root=redis_prefix))
    for st in (mine, other):
        r.set(st.keys.prefix + "llm:llm:cache:abc", "{}")
        r.hset(st.keys.prefix + "llm:counters", "calls", 3)
        r.set(st.keys.state, b"x")
    mine.delete_all()
    assert not list(r.scan_iter(match=mine.keys.prefix + "*"))
    assert r.exists(other.keys.prefix + "llm:llm:cache:abc", other.keys.prefix + "llm:counters", other.keys.state) == 3
    other.delete_all()


def test_after_redis_lost_its_scripts_the_bar_and_its_status_are_both_stored(tmp_path) -> None:
    """A restarted Redis has no scripts: the commit answers NOSCRIPT, and the status sent behind it is refused
    (its bar is not stored yet). Both are sent again: the bar is stored once and `live status` shows it."""
    import json
    import shutil
    import socket

    from live_helpers import private_redis_server

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = private_redis_server(tmp_path, port)
    try:
        sess, events, p = _session("2024-11-05", "default")
        rn = _runner(f"redis://127.0.0.1:{port}/0", "tierlab-test:", "acct", p, events, sess, 12)
        rn.decide_through(sess.index[9])
        rn.store.r.script_flush()  # what a restart does to the script cache (the data stays)
        assert len(rn.decide_through(sess.index[10])) == 1
        assert [r["t"] for r in rn.store.decisions()] == [int(t.value // 1_000_000_000) for t in sess.index[:11]]
        shown = json.loads(rn.store.r.hget(rn.store.keys.status, "summary"))
        assert shown["time"] == sess.index[10].isoformat()
    finally:
        proc.terminate()
        proc.wait(10)
