"""Live runner speed: bar arrival -> order at the broker (sim on loopback), and replay throughput without a broker.

1. One sample session replayed through live.sim (its own process by default, as a broker is, with a
   high rate limit) in step mode; the runner decides in this thread and an executor thread blocks on
   XREADGROUP, as `python -m live executor` does, so it picks a signal up the moment it is committed.
   Per ORDER, from the minute's bars arriving at the runner (the history answer in hand) to
   (a) sent: its POST /v2/orders leaving the executor, and (b) ack: the broker's answer back;
   p50/p99 for bracket entries (buys), exits (sells, after canceling the legs; the held shares are
   checked only when that cancel does not prove them held) and exit re-anchors (OCO sells), with the
   decision part (bar arrival -> signals committed in Redis) and every broker request's round trip by
   kind, which is what the rest is made of.
2. The same bars fed straight to the runner (Redis state and signals.raw, no broker, AUTO_MODE=0), bars/s
   (symbol-bars) best and median of REPS runs: minute by minute (each minute stored before the next
   arrives, as live) and as a restart's catch-up (all bars in hand, commits pipelined); next to the
   vectorized backtest of the same bars (the peer).
Targets of issue 11: p99 < 5 ms for the 12-symbol universe, > 20,000 bars/s.
Usage: python benchmarks/live_latency.py [--day 2024-11-05] [--mode default] [--minutes 390]
       [--sim process|thread] [--executor process|thread|inline]   (2>/dev/null hides the run's logs)
Probes (environment): LIVE_LATENCY_DETAIL=N prints the N slowest orders with every request of their
minute; LIVE_LATENCY_MIX=1 the minutes by order mix; LIVE_LATENCY_GC=1 the executor's collections;
LIVE_LATENCY_PROFILE=FILE / LIVE_LATENCY_SIM_PROFILE=FILE cProfile dumps of the executor / the sim.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.sample import ensure_sample
from live.broker import AlpacaBroker
from live.executor import Executor
from live.feeds import Bar, History, SimStepFeed
from live.runner import Runner
from live.sim import SimConfig, SimServer
from live.sim.server import sim_keys
from live.state import Keys, RedisState
from strategies.intents import client_order_id
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy

ROOT = Path(__file__).resolve().parents[1]
REPS = 5  # replay runs per figure (best and median)


def _bars(panel, r: int) -> list[Bar]:
    return [Bar(s, panel.index[r], panel.open[r, j], panel.high[r, j], panel.low[r, j], panel.close[r, j],
                panel.volume[r, j]) for j, s in enumerate(panel.symbols) if not np.isnan(panel.close[r, j])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """`python -m live.sim` in step mode on a free loopback port, in a process of its own."""

    def __init__(self, day: str, p: Params, symbols: list[str], log_path: Path) -> None:
        self.api_key, self.secret_key = sim_keys()
        self.url = f"http://127.0.0.1:{_free_port()}"
        prof = os.environ.get("LIVE_LATENCY_SIM_PROFILE")  # a cProfile dump of the sim's process
        wrap = os.environ.get("LIVE_LATENCY_SIM_WRAP")
        args = [sys.executable, *(["-m", "cProfile", "-o", prof] if prof else []),
                *([wrap] if wrap else ["-m", "live.sim"]), "--replay", day, "--speed", "0", "--port", self.url.rsplit(":", 1)[1],
                "--symbols", ",".join(symbols), "--cash", "10000", "--max-volume-share", "1.0",
                "--slippage", repr(p.slippage), "--fee-per-share", repr(p.fee_per_share),
                "--fee-per-order", repr(p.fee_per_order), "--rate-limit", "100000000"]
        self.log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        s = requests.Session()
        s.headers.update({"APCA-API-KEY-ID": self.api_key, "APCA-API-SECRET-KEY": self.secret_key})
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"live.sim exited {self.proc.returncode}; see {log_path}")
            try:
                if s.get(f"{self.url}/sim/state", timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        self.proc.wait(10)
        raise RuntimeError(f"live.sim did not answer on {self.url}; see {log_path}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # the CLI's clean stop (a profile is written)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


class Trace:
    """Every request of one requests.Session: (method, path, client_order_id, side, order_class, t0, t1)."""

    def __init__(self, session: requests.Session) -> None:
        self.rows: list[tuple[str, str, str | None, str | None, str | None, float, float]] = []
        inner = session.request

        def request(method: str, url: str, *a: Any, **kw: Any) -> requests.Response:
            body = kw.get("json") or {}
            t0 = time.perf_counter()
            try:
                return inner(method, url, *a, **kw)
            finally:
                path = "/" + url.split("/", 3)[3].split("?")[0] if url.count("/") >= 3 else url
                self.rows.append((method.upper(), path, body.get("client_order_id"), body.get("side"),
                                  body.get("order_class"), t0, time.perf_counter()))

        session.request = request  # type: ignore[method-assign]


def _executor_loop(ex: Executor, stopping: Any, drained: Any, block_ms: int) -> None:
    """Executor.run, what `python -m live executor` runs, telling the runner after each pass (its stop check)."""
    prof = None
    if os.environ.get("LIVE_LATENCY_PROFILE"):  # where the executor's time goes
        import cProfile

        prof = cProfile.Profile()
        prof.enable()

    def stop() -> bool:
        drained.set()  # called before each pass: the previous one has ended
        return bool(stopping.is_set())

    ex.run(stop, block_ms)
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["LIVE_LATENCY_PROFILE"])


def _executor_process(redis_url: str, keys: Keys, url: str, key: str, secret: str, stopping: Any, drained: Any,
                      out: Any) -> None:
    broker = AlpacaBroker(key, secret, url=url, cancel_is_final=True)  # live.sim, as --sim-url builds it
    trace = Trace(broker.client._session)
    ex = Executor(RedisState(redis.Redis.from_url(redis_url), keys), broker)
    reads = _trace_reads(ex)
    _executor_loop(ex, stopping, drained, 200)
    out.send((trace.rows + reads, ex.counts))


def _trace_reads(ex: Executor) -> list[tuple]:
    """XREADGROUP calls that returned new entries, as trace rows ("XREAD", "signals", ..., t0, t1);
    with LIVE_LATENCY_GC set, the garbage collector's passes too ("GC", generation, ..., t0, t1)."""
    rows: list[tuple] = []
    if os.environ.get("LIVE_LATENCY_GC"):
        import gc

        start: dict[str, float] = {}

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                start["t"] = time.perf_counter()
            else:
                rows.append(("GC", f"gen{info['generation']}", None, None, None, start.get("t", 0.0),
                             time.perf_counter()))

        gc.callbacks.append(on_gc)
    inner = ex.r.xreadgroup

    def xreadgroup(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        got = inner(*a, **kw)
        if got and got[0][1] and ">" in a[2].values():
            rows.append(("XREAD", "signals", None, None, None, t0, time.perf_counter()))
        return got

    ex.r.xreadgroup = xreadgroup  # type: ignore[method-assign]
    return rows


class ExecutorHost:
    """The executor blocking on XREADGROUP in a process of its own (as `python -m live executor`) or a thread."""

    def __init__(self, how: str, store: RedisState, redis_url: str, url: str, key: str, secret: str) -> None:
        self.how, self.store = how, store
        self.rows: list[tuple] = []
        self.counts: dict[str, int] = {}
        if how == "process":
            ctx = multiprocessing.get_context("fork")
            self.stopping, self.drained = ctx.Event(), ctx.Event()
            self.recv, send = ctx.Pipe(duplex=False)
            self.proc = ctx.Process(target=_executor_process, name="executor", daemon=True,
                                    args=(redis_url, store.keys, url, key, secret, self.stopping, self.drained, send))
            self.proc.start()
        else:
            self.stopping, self.drained = threading.Event(), threading.Event()
            broker = AlpacaBroker(key, secret, url=url, cancel_is_final=True)  # live.sim, as --sim-url builds it
            self.trace = Trace(broker.client._session)
            self.ex = Executor(RedisState(redis.Redis.from_url(redis_url), store.keys), broker)
            self.reads = _trace_reads(self.ex)
            if how == "thread":
                self.thread = threading.Thread(target=_executor_loop, name="executor", daemon=True,
                                               args=(self.ex, self.stopping, self.drained, 200))
                self.thread.start()

    def arm(self) -> None:
        """Before a minute is decided: forget the passes that ended before it."""
        if self.how != "inline":
            self.drained.clear()

    def wait_idle(self) -> None:
        """Until every committed signal is acknowledged: woken by each finished pass, and only then asking
        Redis (asking at once would put the harness's own requests beside the executor's first order)."""
        if self.how == "inline":
            self.ex.drain()
            return
        while True:
            self.drained.wait(5.0)
            self.drained.clear()
            if self.store.executor_idle():
                return

    def stop(self) -> None:
        self.stopping.set()
        if self.how == "process":
            if self.recv.poll(10):
                self.rows, self.counts = self.recv.recv()
            self.proc.join(5)
            return
        if self.how == "thread":
            self.thread.join(5)
        close = getattr(self.ex, "close", None)  # (an older executor has no lanes to close)
        if close is not None:
            close()
        self.rows, self.counts = self.trace.rows + self.reads, self.ex.counts


def _picked(reads: list[float], t0: float) -> float:
    """When the executor's XREADGROUP returned the signals of the minute whose bars arrived at t0."""
    i = int(np.searchsorted(reads, t0))
    return reads[i] if i < len(reads) else float("nan")


def _pct(x: list[float]) -> str:
    if not x:
        return "n=0"
    a = np.array(x) * 1e3
    return f"n={len(a):>3}  p50 {np.percentile(a, 50):6.2f} ms  p99 {np.percentile(a, 99):6.2f} ms  max {a.max():6.2f} ms"


def latency(a: argparse.Namespace, p: Params, panel, events, r: redis.Redis, root: str) -> None:
    """Part 1: bar arrival -> order sent / acknowledged, per order, against the sim."""
    day = pd.Timestamp(panel.index[0]).tz_convert("America/New_York").date()
    if a.sim == "process":
        sim: Any = SimProcess(str(day), p, list(panel.symbols), Path(tempfile.gettempdir()) / f"live_latency_sim_{os.getpid()}.log")
    else:
        sim = SimServer(panel, SimConfig(slippage=p.slippage, fee_per_share=p.fee_per_share,
                                         fee_per_order=p.fee_per_order, initial_cash=10_000.0,
                                         max_volume_share=1.0), rate_limit=100_000_000).start()
    worker: ExecutorHost | None = None
    try:  # the sim (a process of its own) is stopped whatever happens from here
        keys = Keys.of("bench", "tiered_basket", a.mode, root=root)
        store = RedisState(r, keys)
        store.ensure_group()
        history = History(sim.api_key, sim.secret_key, url=sim.url)
        runner = Runner(TieredBasketStrategy(p), store, history, events=events)
        worker = ExecutorHost(a.executor, store, a.redis, sim.url, sim.api_key, sim.secret_key)
        feed = SimStepFeed(sim.url, sim.api_key, sim.secret_key)
        commits: list[float] = []  # when Redis answered each commit (it has stored the bar and its signals)
        read_commit = store.read_commit

        def timed_read_commit() -> bool:
            ok = read_commit()
            commits.append(time.perf_counter())
            return ok

        store.read_commit = timed_read_commit  # type: ignore[method-assign]
        arrival: dict[str, tuple[float, float]] = {}  # client_order_id -> (bars arrived, signals committed)
        kinds: dict[str, str] = {}
        minutes: list[tuple[float, list[str]]] = []
        decide: list[float] = []
        steps = 0
        while steps < a.minutes + 1:
            t, done = feed.advance()
            steps += 1
            if t is not None:
                runner.open_session(t.tz_convert("America/New_York").date())
                bars = history.fetch(runner.symbols, t, t)
                commits.clear()
                worker.arm()
                t0 = time.perf_counter()  # the minute's bars have arrived
                runner.add(bars)
                ms = runner.decide_through(t)
                t_commit = commits[-1] if commits else time.perf_counter()
                if any(m.signals for m in ms):
                    worker.wait_idle()  # the bookkeeping below waits until the executor is done
                cids = []
                for m in ms:
                    for s in m.signals:
                        if s.get("kind") == "order":
                            cid, kind = s["client_order_id"], ("entry" if s["side"] == "buy" else "exit")
                        elif s.get("kind") == "protect":
                            cid = client_order_id(s["strategy"], s["symbol"], pd.Timestamp(s["bar_time"]), "protect")
                            kind = "reanchor"
                        else:
                            continue
                        arrival[cid], kinds[cid] = (t0, t_commit), kind
                        cids.append(cid)
                if any(m.signals for m in ms):
                    decide.append(t_commit - t0)
                if cids:
                    minutes.append((t0, cids))
            if done:
                break
    finally:
        if worker is not None:
            worker.stop()
        sim.stop()
    rows = worker.rows if worker is not None else []
    reads = sorted(t1 for m, *_rest, t1 in rows if m == "XREAD")
    posts = {c: (t0, t1) for m, path, c, *_rest, t0, t1 in rows if m == "POST" and path == "/v2/orders" and c}
    print(f"session {day} ({steps} steps x {len(panel.symbols)} symbols), mode {a.mode}; sim: {a.sim}, "
          f"executor: {a.executor}")
    print(f"  bar arrival -> signals committed (minutes with signals):     {_pct(decide)}")
    picked = [_picked(reads, t0) - t0 for t0, _ in minutes]
    print(f"  bar arrival -> executor has them (minutes with orders):      {_pct(picked)}")
    for kind, label in (("entry", "bracket entries (buy)"), ("exit", "exits (sell)"), ("reanchor", "exit re-anchors (OCO)")):
        cids = [c for c in posts if kinds.get(c) == kind]
        sent = [posts[c][0] - arrival[c][0] for c in cids]
        ack = [posts[c][1] - arrival[c][0] for c in cids]
        mine = [posts[c][0] - _picked(reads, arrival[c][0]) for c in cids]
        print(f"  {label}:")
        print(f"    bar arrival -> order sent:  {_pct(sent)}")
        print(f"    bar arrival -> broker ack:  {_pct(ack)}")
        print(f"    signals read -> order sent: {_pct(mine)}   (the executor's part)")
    every = [posts[c][0] - arrival[c][0] for c in posts if c in arrival]
    first = [min(posts[c][0] for c in cids if c in posts) - t0 for t0, cids in minutes if any(c in posts for c in cids)]
    print(f"  every order, bar arrival -> order sent:                    {_pct(every)}")
    print(f"  first order of each minute, bar arrival -> order sent:     {_pct(first)}")
    if every:
        p99 = float(np.percentile(np.array(every) * 1e3, 99))
        print(f"  target p99 < 5 ms (every order): {p99:.2f} ms, {'met' if p99 < 5 else 'NOT met'}")
    last_ack = [max(posts[c][1] for c in cids if c in posts) - t0 for t0, cids in minutes if any(c in posts for c in cids)]
    print(f"  per minute with orders, bar arrival -> its last order acked:   {_pct(last_ack)}")
    rtt: dict[str, list[float]] = defaultdict(list)
    for m, path, *_rest, t0, t1 in rows:
        if m in ("XREAD", "GC"):
            continue
        what = path if not path.startswith("/v2/orders/") else "/v2/orders/{id}"
        what = what if not path.startswith("/v2/positions/") else "/v2/positions/{symbol}"
        rtt[f"{m} {what}"].append(t1 - t0)
    print("  executor's broker round trips (request out -> answer in):")
    for k in sorted(rtt, key=lambda k: -len(rtt[k])):
        print(f"    {k:<34} {_pct(rtt[k])}")
    print(f"  executor: {worker.counts}")
    gcs = [(w, t1 - t0) for m, w, *_r, t0, t1 in rows if m == "GC"]
    if gcs:
        for g in ("gen0", "gen1", "gen2"):
            print(f"  executor's garbage collections {g}: {_pct([d for w, d in gcs if w == g])}")
    if os.environ.get("LIVE_LATENCY_MIX"):
        from collections import Counter
        print("  minutes by order mix:", Counter("".join(sorted({"entry": "b", "exit": "s", "reanchor": "r"}[kinds[c]] for c in cids)) for _, cids in minutes))
    if os.environ.get("LIVE_LATENCY_DETAIL"):  # the slowest orders, with every request of their minute
        for c in sorted(posts, key=lambda c: posts[c][0] - arrival[c][0])[-int(os.environ["LIVE_LATENCY_DETAIL"]):]:
            t0, tc = arrival[c]
            print(f"  {kinds[c]} {c}: sent {1e3 * (posts[c][0] - t0):.2f} ms (committed at {1e3 * (tc - t0):.2f})")
            for m, what, *_rest, a0, a1 in rows:
                if m == "XREAD" and t0 <= a1 <= posts[c][1]:
                    print(f"      {'':7} .. {1e3 * (a1 - t0):7.2f}  XREADGROUP returned the minute's signals")
                if m == "GC" and t0 <= a1 <= posts[c][1]:
                    print(f"      {1e3 * (a0 - t0):7.2f} .. {1e3 * (a1 - t0):7.2f}  garbage collection {what}")
            for m, path, cid, side, oc, a0, a1 in rows:
                if t0 <= a0 <= posts[c][1]:
                    print(f"      {1e3 * (a0 - t0):7.2f} .. {1e3 * (a1 - t0):7.2f}  {m} {path} {cid or ''} {side or ''} {oc or ''}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--day", default="2024-11-05")
    ap.add_argument("--mode", default="default")
    ap.add_argument("--minutes", type=int, default=390)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--sim", choices=("process", "thread"), default="process",
                    help="live.sim in its own process (default, as a broker is) or on a thread of this one")
    ap.add_argument("--executor", choices=("process", "thread", "inline"), default="process",
                    help="blocking on XREADGROUP in its own process (default, as `python -m live executor`) or in "
                         "a thread of the runner's, or drained by the runner after each decision (drive_sim)")
    ap.add_argument("--skip-replay", action="store_true", help="part 1 only")
    a = ap.parse_args()
    p = Params.preset(a.mode)
    cat = ensure_sample()
    panel = cat.read_panel(list(p.universe), a.day, a.day)
    panel = panel.slice(None, panel.index[min(a.minutes, len(panel.index)) - 1] + pd.Timedelta(minutes=1))
    events = cat.read_events(a.day, a.day)
    r = redis.Redis.from_url(a.redis)
    root = f"tierlab-bench:{uuid.uuid4().hex[:8]}:"
    try:
        # 1. bar arrival -> order sent / acknowledged, against the sim
        latency(a, p, panel, events, r, root)
        if a.skip_replay:
            return 0
        # 2. replay throughput without the broker: best and median of REPS runs each (a shared box is noisy)
        rows = [_bars(panel, k) for k in range(len(panel.index))]
        n_bars = sum(len(b) for b in rows)
        day = panel.index[0].tz_convert("America/New_York").date()

        def fresh(name: str) -> Runner:
            rn = Runner(TieredBasketStrategy(p), RedisState(r, Keys.of(name, "tiered_basket", a.mode, root=root)),
                        None, events=events)
            rn.open_session(day)
            return rn

        def minute_by_minute(k: int) -> float:
            rn = fresh(f"bench2m{k}")
            t0 = time.perf_counter()
            for i, b in enumerate(rows):
                rn.add(b)
                rn.decide_through(panel.index[i])  # each minute stored before the next one arrives
            return time.perf_counter() - t0

        def catch_up(k: int) -> float:
            rn = fresh(f"bench2c{k}")
            t0 = time.perf_counter()
            for b in rows:
                rn.add(b)
            rn.decide_through(panel.index[-1])  # a restart's catch-up: commits pipelined, one per bar
            return time.perf_counter() - t0

        def backtest(_: int) -> float:
            t0 = time.perf_counter()
            TieredBasketStrategy(p).run(panel, [p], events=events)
            return time.perf_counter() - t0

        backtest(0)  # compile
        medians = {}
        for name, fn in (("minute by minute", minute_by_minute), ("catch-up", catch_up), ("peer", backtest)):
            dts = np.array([fn(k) for k in range(REPS)])
            best, med = n_bars / dts.min(), n_bars / np.median(dts)
            medians[name] = med
            label = {"peer": "peer: vectorized backtest of the same bars"}.get(
                name, f"replay without broker, {name} (Redis state + signals)")
            print(f"  {label}: best {best:,.0f} bars/s, median {med:,.0f} bars/s "
                  f"({dts.min() / len(rows) * 1e3:.3f} ms/minute best of {REPS})")
        print(f"  target > 20,000 bars/s (median): catch-up {medians['catch-up']:,.0f} "
              f"{'met' if medians['catch-up'] > 20_000 else 'NOT met'}, minute by minute "
              f"{medians['minute by minute']:,.0f} {'met' if medians['minute by minute'] > 20_000 else 'NOT met'}")
    finally:
        for k in r.scan_iter(f"{root}*"):
            r.delete(k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
