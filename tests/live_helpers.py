"""Shared pieces of the live tests: one sample session in the sim, a runner and an executor on it."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import redis

from data.sample import generate_panel, sample_events
from live.broker import AlpacaBroker
from live.executor import Executor
from live.feeds import History, SimStepFeed
from live.journal import broker_orders, decisions_frame
from live.runner import Runner, drive_sim
from live.sim import SimConfig, SimServer
from live.state import Keys, RedisState
from research.backtest import backtest
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy

INIT_CASH = 10_000.0


def private_redis_server(tmp: Path, port: int, fsync: str = "always") -> subprocess.Popen:
    """A redis-server of the test's own on `port` (append-only, data in `tmp`): it can be stopped and
    restarted, and its script cache flushed, without touching the shared server."""
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "yes", "--appendfsync", fsync, "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            if r.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("private redis-server did not start")


@lru_cache(maxsize=1)
def _month() -> tuple[Any, pd.DataFrame]:
    panel = generate_panel("2024-11-01", "2024-11-29")
    return panel, sample_events(panel)


def session(day: str, mode: str) -> tuple[Any, Any, pd.DataFrame, Params]:
    """The month's synthetic panel, one session of it and its filings, with the mode's params."""
    month, events = _month()
    p = Params.preset(mode)
    d = pd.Timestamp(day)
    lo = pd.Timestamp(d.date(), tz="America/New_York").tz_convert("UTC")
    panel = month.slice(lo, lo + pd.Timedelta(days=1)).select(p.universe)
    ev = events[(events["time"] >= lo) & (events["time"] < lo + pd.Timedelta(days=1))]
    return month, panel, ev, p


def start_sim(panel: Any, p: Params) -> SimServer:
    """The sim in step mode with the backtest's costs and cash (no volume cap: the backtest has none).

    `exact_prices=True` is the one deliberate difference from Alpaca in parity replays: the kernel
    anchors its exits at unrounded prices, so the sim must accept and fill them exactly (README, live).
    """
    cfg = SimConfig(slippage=p.slippage, fee_per_share=p.fee_per_share, fee_per_order=p.fee_per_order,
                    initial_cash=INIT_CASH, max_volume_share=1.0, exact_prices=True)
    return SimServer(panel, cfg, speed=0.0, rate_limit=1_000_000).start()


@dataclass
class Live:
    """A runner + executor wired to one sim and one Redis namespace."""

    sim: SimServer
    store: RedisState
    runner: Runner
    executor: Executor
    broker: AlpacaBroker
    history: History
    feed: SimStepFeed


def wire(sim: SimServer, redis_url: str, p: Params, events: pd.DataFrame, root: str | None = None,
         auto: bool = True) -> Live:
    """Runner and in-process executor against `sim`, keys under a unique root."""
    root = root or f"tierlab-test:{uuid.uuid4().hex[:10]}:"
    store = RedisState(redis.Redis.from_url(redis_url), Keys.of("sim", "tiered_basket", p.mode, root=root))
    broker = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url, cancel_is_final=True)  # live.sim, as --sim-url builds it
    history = History(sim.api_key, sim.secret_key, url=sim.url)
    runner = Runner(TieredBasketStrategy(p), store, history, init_cash=INIT_CASH, events=events)
    runner.resume()
    ex = Executor(store, broker, auto=auto)
    return Live(sim, store, runner, ex, broker, history, SimStepFeed(sim.url, sim.api_key, sim.secret_key))


def run_live(lv: Live) -> str:
    """Replay the whole sim session through runner + executor."""
    return drive_sim(lv.runner, lv.feed, lv.history, executor=lv.executor)


def expected(panel: Any, events: pd.DataFrame, p: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """research.backtest's orders and decisions on the same bars."""
    bt = backtest(TieredBasketStrategy(p), panel, p, events=events, init_cash=INIT_CASH)
    return bt.orders, bt.decisions


def expected_run(panel: Any, events: pd.DataFrame, p: Params) -> Any:
    """research.backtest's whole result (orders, decisions, per-bar token counts, triggers)."""
    return backtest(TieredBasketStrategy(p), panel, p, events=events, init_cash=INIT_CASH)


def live_frames(lv: Live) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The broker's fills and the runner's recorded decisions."""
    return broker_orders(lv.broker), decisions_frame(lv.store.decisions(), lv.runner.symbols)


def order_rows(df: pd.DataFrame) -> list[tuple]:
    """(time, symbol, side, qty, price) rows, sorted."""
    return sorted((pd.Timestamp(r.time), r.symbol, r.side, float(r.qty), float(r.price)) for r in df.itertuples())
