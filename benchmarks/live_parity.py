"""Parity over every sample session: live runner + executor + live.sim (step mode, orders on) against
research.backtest on the same bars, for default and relaxed. Prints one line per session and totals.

Usage: python benchmarks/live_parity.py [--modes default,relaxed] [--limit N] [--redis URL]
The executor sends the kernel's exact stop/take-profit levels and the sim accepts them (SimConfig(exact_prices=True),
the parity replays' one deliberate difference from Alpaca; see tests/test_live_parity.py).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.calendar import sessions
from data.sample import DEFAULT_END, DEFAULT_START, ensure_sample
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


def _rows(df: pd.DataFrame) -> list[tuple]:
    return sorted((pd.Timestamp(r.time), r.symbol, r.side, float(r.qty), float(r.price)) for r in df.itertuples())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="default,relaxed")
    ap.add_argument("--limit", type=int, help="only the first N sessions")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    a = ap.parse_args()
    cat = ensure_sample()
    days = sessions(DEFAULT_START, DEFAULT_END)[: a.limit]
    r = redis.Redis.from_url(a.redis)
    total = ok = 0
    n_orders = n_dec = 0
    t_all = time.perf_counter()
    for mode in a.modes.split(","):
        p = Params.preset(mode)
        for day in days:
            panel = cat.read_panel(list(p.universe), day, day)
            events = cat.read_events(day, day)
            sim = SimServer(panel, SimConfig(slippage=p.slippage, fee_per_share=p.fee_per_share,
                                             fee_per_order=p.fee_per_order, initial_cash=10_000.0,
                                             max_volume_share=1.0, exact_prices=True),
                            rate_limit=1_000_000).start()
            root = f"tierlab-bench:{uuid.uuid4().hex[:8]}:"
            store = RedisState(r, Keys.of("parity", "tiered_basket", mode, root=root))
            broker = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url, cancel_is_final=True)
            history = History(sim.api_key, sim.secret_key, url=sim.url)
            runner = Runner(TieredBasketStrategy(p), store, history, events=events)
            ex = Executor(store, broker, tick_round=False)
            t0 = time.perf_counter()
            drive_sim(runner, SimStepFeed(sim.url, sim.api_key, sim.secret_key), history, executor=ex)
            secs = time.perf_counter() - t0
            live_o = broker_orders(broker)
            live_d = decisions_frame(store.decisions(), runner.symbols)
            bt = backtest(TieredBasketStrategy(p), panel, p, events=events)
            same_o = _rows(live_o) == _rows(bt.orders)
            same_d = live_d.reset_index(drop=True).equals(bt.decisions.reset_index(drop=True))
            total += 1
            ok += same_o and same_d
            n_orders += len(bt.orders)
            n_dec += len(bt.decisions)
            print(f"{mode:<8} {day}  orders {len(live_o):>3}/{len(bt.orders):<3} decisions {len(live_d):>5}/"
                  f"{len(bt.decisions):<5} {'same' if same_o and same_d else 'DIFFERENT'}  {secs:5.1f} s", flush=True)
            for k in r.scan_iter(f"{root}*"):
                r.delete(k)
            sim.stop()
    print(f"sessions identical: {ok}/{total}; {n_orders} orders and {n_dec} decisions compared; "
          f"{time.perf_counter() - t_all:.0f} s")
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
