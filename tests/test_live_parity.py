"""Parity: sample sessions replayed through the live runner, the executor and the sim in step mode
(orders on) give exactly research.backtest's orders and decisions on the same bars.

Slices of the first 100 minutes keep the suite fast; benchmarks/live_parity.py runs every sample
session in full. The executor sends the kernel's exact stop/take-profit levels here (tick_round off):
the kernel anchors its exits at unrounded prices, so a tick-rounded leg would trade a cent apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from live_helpers import (
    expected,
    expected_run,
    live_frames,
    order_rows,
    run_live,
    session,
    start_sim,
    wire,
)

from live.journal import kernel_orders, tokens_frame
from research.compare import token_frame

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CASES = [("2024-11-29", "default"), ("2024-11-05", "default"), ("2024-11-29", "relaxed"), ("2024-11-13", "relaxed")]


@pytest.mark.parametrize(("day", "mode"), CASES)
def test_runner_against_sim_matches_backtest(redis_url: str, day: str, mode: str) -> None:
    _, panel, events, p = session(day, mode)
    panel = panel.slice(None, panel.index[100])
    sim = start_sim(panel, p)
    lv = wire(sim, redis_url, p, events)
    lv.executor.tick_round = False
    try:
        assert run_live(lv) == "done"
        live_orders, live_dec = live_frames(lv)
        bt_orders, bt_dec = expected(panel, events, p)
        assert len(bt_orders) > 0, "a parity case without orders proves nothing"
        assert order_rows(live_orders) == order_rows(bt_orders)
        pd.testing.assert_frame_equal(live_dec.reset_index(drop=True), bt_dec.reset_index(drop=True))
        assert (live_dec["reason"] == "actionable").any()
        # what the runner records per bar is what the backtest records: the kernel's own fills, token counts
        records = lv.store.decisions()
        bt = expected_run(panel, events, p)
        pd.testing.assert_frame_equal(kernel_orders(records), bt.orders.reset_index(drop=True), check_dtype=False)
        tok = tokens_frame(records).set_index("time")
        pd.testing.assert_frame_equal(tok, token_frame(bt.result), check_dtype=False, check_names=False)
        assert tok["wants_a"].sum() > 0
    finally:
        lv.store.delete_all()
        sim.stop()


def test_newest_score_row_equals_vectorized_score(redis_url: str) -> None:
    """The runner's windowed score row equals the full-history vectorized score bit for bit."""
    month, panel, events, p = session("2024-11-05", "default")
    from live_helpers import _month

    from strategies.tiered_basket import TieredBasketStrategy

    s = TieredBasketStrategy(p)
    many = month.slice(None, "2024-11-06").select(p.universe)
    full = s.prepare(many, _month()[1])
    sim = start_sim(panel.slice(None, panel.index[60]), p)
    lv = wire(sim, redis_url, p, events)
    try:
        sim.step(60)
        lv.runner.open_session(panel.index[0].tz_convert("America/New_York").date())
        lv.runner.add(lv.history.fetch(lv.runner.symbols, panel.index[0], panel.index[59]))
        off = int(many.index.searchsorted(panel.index[0]))
        assert np.isfinite(full.scores[off:off + 60]).any()
        for r in range(60):
            score, ev = lv.runner._inputs(r)
            np.testing.assert_array_equal(score, full.scores[off + r])
            np.testing.assert_array_equal(ev, full.events[off + r])
    finally:
        lv.store.delete_all()
        sim.stop()


def test_entry_filled_the_bar_before_flatten_is_flattened(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole sample session whose last entry fills one bar before the session-end flatten: the runner
    re-anchors that entry's exits before the flatten sells it (once the reverse order cancelled the flatten
    and the position stayed open at the close)."""
    from data.catalog import Catalog
    from data.sample import ensure_sample
    from strategies.params import Params

    home = tmp_path_factory.mktemp("parity_home")
    monkeypatch.setenv("TIERLAB_HOME", str(home))
    cat = ensure_sample(Catalog(home / "catalog"))
    p = Params.preset("default")
    day = "2024-10-25"
    panel = cat.read_panel(list(p.universe), day, day)
    events = cat.read_events(day, day)
    bt_orders, _ = expected(panel, events, p)
    flat = bt_orders[bt_orders["reason"] == "flatten"]
    entries = bt_orders[bt_orders["reason"] == "entry"]
    assert any(((entries["symbol"] == f.symbol) & (entries["time"] == f.time - pd.Timedelta(minutes=1))).any()
               for f in flat.itertuples()), "the case needs an entry filled the bar before its flatten"
    sim = start_sim(panel, p)
    lv = wire(sim, redis_url, p, events)
    lv.executor.tick_round = False
    try:
        assert run_live(lv) == "done"
        live_orders, _ = live_frames(lv)
        assert order_rows(live_orders) == order_rows(bt_orders)
    finally:
        lv.store.delete_all()
        sim.stop()
