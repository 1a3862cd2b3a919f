"""Live runner speed: bar arrival -> order submitted (sim on loopback), and replay throughput without a broker.

1. One sample session replayed through live.sim (step mode) + runner + in-process executor: for every
   minute with an order, the time from the minute's bars arriving (history answer in hand) to the
   last order of that minute acknowledged by the broker; p50/p99 over the session.
2. The same bars fed straight to the runner (Redis state and signals.raw, no broker, AUTO_MODE=0):
   bars/s (symbol-bars) and minutes/s, next to the vectorized backtest of the same bars (the peer).
Targets of issue 11: p99 < 5 ms for the 12-symbol universe, > 20,000 bars/s.
Usage: python benchmarks/live_latency.py [--day 2024-11-05] [--mode default] [--minutes 390]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.sample import ensure_sample
from live.broker import AlpacaBroker
from live.executor import Executor
from live.feeds import Bar, History, SimStepFeed
from live.runner import Runner
from live.sim import SimConfig, SimServer
from live.state import Keys, RedisState
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy


def _bars(panel, r: int) -> list[Bar]:
    return [Bar(s, panel.index[r], panel.open[r, j], panel.high[r, j], panel.low[r, j], panel.close[r, j],
                panel.volume[r, j]) for j, s in enumerate(panel.symbols) if not np.isnan(panel.close[r, j])]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--day", default="2024-11-05")
    ap.add_argument("--mode", default="default")
    ap.add_argument("--minutes", type=int, default=390)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    a = ap.parse_args()
    p = Params.preset(a.mode)
    cat = ensure_sample()
    panel = cat.read_panel(list(p.universe), a.day, a.day)
    panel = panel.slice(None, panel.index[min(a.minutes, len(panel.index)) - 1] + pd.Timedelta(minutes=1))
    events = cat.read_events(a.day, a.day)
    r = redis.Redis.from_url(a.redis)
    root = f"tierlab-bench:{uuid.uuid4().hex[:8]}:"
    try:
        # 1. bar arrival -> order submitted, against the sim
        sim = SimServer(panel, SimConfig(slippage=p.slippage, initial_cash=10_000.0, max_volume_share=1.0),
                        rate_limit=1_000_000).start()
        store = RedisState(r, Keys.of("bench", "tiered_basket", a.mode, root=root))
        history = History(sim.api_key, sim.secret_key, url=sim.url)
        runner = Runner(TieredBasketStrategy(p), store, history, events=events)
        ex = Executor(store, AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url))
        feed = SimStepFeed(sim.url, sim.api_key, sim.secret_key)
        lat, decide = [], []
        while True:
            t, done = feed.advance()
            if t is not None:
                runner.open_session(t.tz_convert("America/New_York").date())
                bars = history.fetch(runner.symbols, t, t)
                t0 = time.perf_counter()  # the minute's bars have arrived
                runner.add(bars)
                ms = runner.decide_through(t)
                t1 = time.perf_counter()
                ex.drain()
                t2 = time.perf_counter()
                decide.append(t1 - t0)
                if any(s.get("kind") == "order" for m in ms for s in m.signals):
                    lat.append(t2 - t0)
            if done:
                break
        sim.stop()
        lat_ms, dec_ms = np.array(lat) * 1e3, np.array(decide) * 1e3
        print(f"session {a.day} ({len(panel.index)} minutes x {len(panel.symbols)} symbols), mode {a.mode}")
        print(f"  bar arrival -> order submitted (sim, loopback): n={len(lat_ms)} minutes with orders, "
              f"p50 {np.percentile(lat_ms, 50):.2f} ms, p99 {np.percentile(lat_ms, 99):.2f} ms")
        print(f"  bar arrival -> decision persisted (every minute): p50 {np.percentile(dec_ms, 50):.2f} ms, "
              f"p99 {np.percentile(dec_ms, 99):.2f} ms")
        # 2. replay throughput without the broker
        store2 = RedisState(r, Keys.of("bench2", "tiered_basket", a.mode, root=root))
        runner2 = Runner(TieredBasketStrategy(p), store2, None, events=events)
        runner2.open_session(panel.index[0].tz_convert("America/New_York").date())
        rows = [_bars(panel, k) for k in range(len(panel.index))]
        n_bars = sum(len(b) for b in rows)
        t0 = time.perf_counter()
        for k, b in enumerate(rows):
            runner2.add(b)
            runner2.decide_through(panel.index[k])
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        TieredBasketStrategy(p).run(panel, [p], events=events)
        bt = time.perf_counter() - t0
        print(f"  replay without broker (Redis state + signals): {n_bars / dt:,.0f} bars/s "
              f"({len(rows) / dt:,.0f} minutes/s, {dt / len(rows) * 1e3:.2f} ms/minute)")
        print(f"  peer: vectorized backtest of the same bars: {n_bars / bt:,.0f} bars/s "
              f"(live/backtest = {bt / dt:.3f}x)")
        print("  targets: p99 < 5 ms, > 20,000 bars/s")
    finally:
        for k in r.scan_iter(f"{root}*"):
            r.delete(k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
