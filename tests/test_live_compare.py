"""Issue 13, live side: two dry-run runners (one per mode, AUTO_MODE=0: nothing is sent, the kernel
still decides and books its own fills) replay the same sample session through live.sim; their run
folders, read by `python -m research.compare --from-live DIR DIR`, give the very comparison table,
per-session KPIs and trigger timeline that the vectorized `--modes default,relaxed` gives.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from live_helpers import INIT_CASH, run_live, start_sim, wire

from data.catalog import Catalog
from live.journal import kernel_orders
from research import compare
from strategies.params import Params
from tierlab.live_paper import write_live_run

pytestmark = [pytest.mark.redis, pytest.mark.slow]
DAY = "2024-11-13"  # a session where the 1 h rollback trigger fires in both modes


def _dry_run(cat: Catalog, mode: str, redis_url: str, out: Path) -> Path:
    """One runner + executor with AUTO_MODE=0 over the whole session; its run folder."""
    p = Params.preset(mode)
    panel = cat.read_panel(list(p.universe), DAY, DAY)
    events = cat.read_events(DAY, DAY)
    sim = start_sim(panel, p)
    lv = wire(sim, redis_url, p, events, auto=False)
    try:
        assert run_live(lv) == "done"
        assert sim.call(lambda: len(sim.engine.orders)) == 0, "a dry run sent an order"
        assert lv.store.signals(), "the dry run recorded no signal"
        records = lv.store.decisions()
        assert len(records) == len(panel.index)
        path, _ = write_live_run(records, kernel_orders(records), lv.runner.symbols, p, panel, INIT_CASH, out,
                                 day=DAY, title=f"dry run {mode}")
        return path
    finally:
        lv.store.delete_all()
        sim.stop()


def _out(parent: Path) -> Path:
    (d,) = [x for x in parent.iterdir() if x.name.startswith("compare-") and not x.is_symlink()]  # not -latest
    return d


def test_dry_run_runners_give_the_vectorized_comparison(sample_home: Path, redis_url: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERLAB_HOME", str(sample_home))
    cat = Catalog(sample_home / "catalog")
    dirs = {mode: _dry_run(cat, mode, redis_url, tmp_path / "live") for mode in ("default", "relaxed")}

    # AUTO_MODE=0: orders.parquet holds the kernel's own fills in the backtest's schema, equal to its orders
    p = Params.preset("default")
    vec_run = compare.run_mode("default", p, cat.read_panel(list(p.universe), DAY, DAY), cat.read_events(DAY, DAY))
    live_orders = pd.read_parquet(dirs["default"] / "orders.parquet")
    assert len(vec_run.orders) > 0
    pd.testing.assert_frame_equal(live_orders, vec_run.orders.reset_index(drop=True))

    assert compare.main(["--modes", "default,relaxed", "--start", DAY, "--end", DAY, "--bootstrap", "300",
                         "--out", str(tmp_path / "vec")]) == 0
    assert compare.main(["--from-live", str(dirs["default"]), str(dirs["relaxed"]), "--start", DAY, "--end", DAY,
                         "--bootstrap", "300", "--out", str(tmp_path / "lv")]) == 0
    vec, live = _out(tmp_path / "vec"), _out(tmp_path / "lv")
    label = {dirs[m].name: m for m in dirs}
    for name in ("compare.parquet", "sessions.parquet", "hourly.parquet"):
        a = pd.read_parquet(vec / name)
        b = pd.read_parquet(live / name)
        for col in ("mode", "baseline"):
            if col in b:
                b[col] = b[col].map(label)
        pd.testing.assert_frame_equal(b, a, obj=name)
    sessions = pd.read_parquet(vec / "sessions.parquet")
    assert set(sessions["mode"]) == {"default", "relaxed"} and (sessions["actionable"] > 0).all()
    assert (sessions["token_overflow_rate_A"] >= 0).all()
    assert (live / "report.html").stat().st_size > 10_000
    # the trigger timeline: the session events the runners recorded are the kernel's
    for mode, d in dirs.items():
        vt = compare.run_mode(mode, Params.preset(mode), cat.read_panel(list(Params.preset(mode).universe), DAY, DAY),
                              cat.read_events(DAY, DAY)).triggers
        lt = pd.read_parquet(d / "triggers.parquet")
        pd.testing.assert_frame_equal(lt.reset_index(drop=True), vt.reset_index(drop=True), check_dtype=False)
        assert "rollback_1h" in set(lt["trigger"]), lt  # a trigger the runner's kernel fired, as the backtest's
        if mode == "relaxed":  # and relaxed's hard rollback (11:30 New York)
            assert "hard_rollback" in set(lt["trigger"]), lt
