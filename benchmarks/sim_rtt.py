"""live.sim round trips: the requests the executor and the feed send, timed one by one from another process.

`python -m live.sim` (step mode, a rate limit no run reaches) serves one sample session in a process of
its own (benchmarks/live_latency.py's SimProcess); this process talks to it with urllib3 over one
keep-alive connection, as a broker client does. Each round is one replayed minute:
  POST /sim/step, GET /v2/stocks/bars (the minute's bars), GET /v2/account, GET /v2/clock;
  a bracket buy (market, 1 share) of the round's symbol, then GET /v2/orders:by_client_order_id;
  four minutes later that position is re-anchored (DELETE its take-profit leg, which cancels the
  stop, then POST an OCO sell); four more and it is exited (GET /v2/orders?status=open&symbols=,
  DELETE the OCO, GET /v2/positions/{symbol}, POST a market sell); GET /v2/positions of a flat
  symbol (404). So at most 2 open orders per symbol (<= 24 for the default universe).
The step of round 1, whose market buy is the replay's first fill, is listed on its own.
Peer: a bare aiohttp app answering a small JSON body in a process of its own, timed the same way after
each run (what any aiohttp server costs on this box; the sim's figures less this are the sim's own).
Prints p50/p99 per kind for each run, then the best and the median over the runs. Figures only.
Usage: python benchmarks/sim_rtt.py [--day 2024-11-05] [--rounds 300] [--runs 3] [--sim process|thread]
       [--profile FILE]   (a cProfile dump of the sim: its process, or this whole process with --sim thread)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_latency import SimProcess, _free_port  # (the benchmarks folder is not a package)

from data.sample import ensure_sample
from live.sim import SimConfig, SimServer
from strategies.params import Params

WARMUP = 10  # rounds left out of the figures (first requests fill the sim's caches)


class Client:
    """One keep-alive connection to the sim; every request timed under its kind."""

    def __init__(self, url: str, key: str, secret: str) -> None:
        u = urlsplit(url)
        self.pool = urllib3.HTTPConnectionPool(u.hostname, u.port, maxsize=1, retries=False)
        self.headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret, "Content-Type": "application/json"}
        self.times: dict[str, list[float]] = defaultdict(list)
        self.record = True

    def __call__(self, kind: str, method: str, path: str, query: dict[str, Any] | None = None,
                 body: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = f"{path}?{urlencode(query)}" if query else path
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        r = self.pool.urlopen(method, url, body=data, headers=self.headers)
        dt = time.perf_counter() - t0
        if self.record:
            self.times[kind].append(dt)
        return r.status, (json.loads(r.data) if r.data else None)


def session(c: Client, symbols: list[str], rounds: int, tag: str) -> None:
    """The request mix, one replayed minute per round (see the module docstring)."""
    n = len(symbols)
    entry: dict[str, dict[str, Any]] = {}  # symbol -> the bracket buy's answer
    oco: dict[str, str] = {}  # symbol -> the OCO sell's id
    for i in range(rounds):
        c.record = i >= WARMUP or i == 1  # round 1's step fills round 0's buy: the replay's first fill
        _, steps = c("POST /sim/step" if i != 1 else "POST /sim/step (the first fill)", "POST", "/sim/step")
        c.record = i >= WARMUP
        closed = datetime.fromisoformat(steps["steps"][-1]["time"]) - timedelta(minutes=1)  # the bar's start
        t = closed.strftime("%Y-%m-%dT%H:%M:%SZ")
        _, bars = c("GET /v2/stocks/bars", "GET", "/v2/stocks/bars",
                    {"symbols": ",".join(symbols), "timeframe": "1Min", "start": t, "end": t})
        last = {s: b[-1]["c"] for s, b in bars["bars"].items()}
        c("GET /v2/account", "GET", "/v2/account")
        c("GET /v2/clock", "GET", "/v2/clock")

        buy, anchor, out = symbols[i % n], symbols[(i - 4) % n], symbols[(i - 8) % n]
        if buy not in entry and buy not in oco and buy in last:
            px = last[buy]
            cid = f"{tag}-{buy}-{i}-entry"
            status, o = c("POST /v2/orders bracket buy", "POST", "/v2/orders", body={
                "symbol": buy, "qty": "1", "side": "buy", "type": "market", "time_in_force": "day",
                "order_class": "bracket", "client_order_id": cid,
                "take_profit": {"limit_price": f"{px * 1.05:.2f}"}, "stop_loss": {"stop_price": f"{px * 0.95:.2f}"}})
            if status == 200:
                entry[buy] = o
            c("GET /v2/orders:by_client_order_id", "GET", "/v2/orders:by_client_order_id", {"client_order_id": cid})
        if anchor in entry and anchor in last and i >= 4:
            legs = entry.pop(anchor)["legs"] or []
            c("DELETE /v2/orders/{id}", "DELETE", f"/v2/orders/{legs[0]['id']}")  # its OCO partner goes with it
            px = last[anchor]
            status, o = c("POST /v2/orders oco sell", "POST", "/v2/orders", body={
                "symbol": anchor, "qty": "1", "side": "sell", "type": "limit", "time_in_force": "day",
                "order_class": "oco", "client_order_id": f"{tag}-{anchor}-{i}-protect",
                "take_profit": {"limit_price": f"{px * 1.04:.2f}"}, "stop_loss": {"stop_price": f"{px * 0.96:.2f}"}})
            if status == 200:
                oco[anchor] = o["id"]
        if out in oco and i >= 8:
            c("GET /v2/orders?status=open&symbols=", "GET", "/v2/orders", {"status": "open", "symbols": out})
            c("DELETE /v2/orders/{id}", "DELETE", f"/v2/orders/{oco.pop(out)}")
            status, pos = c("GET /v2/positions/{symbol}", "GET", f"/v2/positions/{out}")
            if status == 200:
                c("POST /v2/orders market sell", "POST", "/v2/orders", body={
                    "symbol": out, "qty": pos["qty"], "side": "sell", "type": "market", "time_in_force": "day",
                    "client_order_id": f"{tag}-{out}-{i}-exit"})
        flat = symbols[(i + 2) % n]  # exited two rounds ago
        if flat not in entry and flat not in oco:
            c("GET /v2/positions/{symbol} (404)", "GET", f"/v2/positions/{flat}")


PEER = "peer: bare aiohttp GET, JSON body"


def serve_peer(port: int) -> None:
    """The peer server: aiohttp with one route answering {"ok": true} (no middleware, no state)."""
    from aiohttp import web

    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/peer", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def time_peer(n: int) -> list[float]:
    """n round trips to the peer server (after a warm-up), in seconds."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-peer", str(port)])
    try:
        c = Client(f"http://127.0.0.1:{port}", "", "")
        for _ in range(600):
            try:
                c(PEER, "GET", "/peer")
                break
            except urllib3.exceptions.HTTPError:
                time.sleep(0.05)
        c.times.clear()
        for _ in range(n + WARMUP):
            c(PEER, "GET", "/peer")
        return c.times[PEER][WARMUP:]
    finally:
        proc.terminate()
        proc.wait(10)


def run_once(a: argparse.Namespace, p: Params, k: int) -> dict[str, list[float]]:
    """One session against a fresh sim; the round trips (seconds) by kind."""
    symbols = list(p.universe)
    if a.sim == "process":
        if a.profile:
            os.environ["LIVE_LATENCY_SIM_PROFILE"] = f"{a.profile}.{k}" if a.runs > 1 else a.profile
        sim: Any = SimProcess(a.day, p, symbols, Path(tempfile.gettempdir()) / f"sim_rtt_{os.getpid()}.log")
    else:
        panel = ensure_sample().read_panel(symbols, a.day, a.day)
        sim = SimServer(panel, SimConfig(slippage=p.slippage, fee_per_share=p.fee_per_share,
                                         fee_per_order=p.fee_per_order, initial_cash=10_000.0,
                                         max_volume_share=1.0), rate_limit=100_000_000).start()
    prof = None
    if a.sim == "thread" and a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        c = Client(sim.url, sim.api_key, sim.secret_key)
        session(c, symbols, a.rounds, f"rtt{k}")
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(a.profile)
        sim.stop()
    c.times[PEER] = time_peer(a.rounds)
    return c.times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--day", default="2024-11-05")
    ap.add_argument("--mode", default="default", help="the parameter preset (universe and costs)")
    ap.add_argument("--rounds", type=int, default=300, help="replayed minutes per run (a session has 390)")
    ap.add_argument("--runs", type=int, default=3, help="fresh sims, each one session")
    ap.add_argument("--sim", choices=("process", "thread"), default="process",
                    help="live.sim in its own process (default) or on a thread of this one (profiling)")
    ap.add_argument("--profile", help="write a cProfile dump here (per run: FILE.<run> when --runs > 1)")
    ap.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the peer's own process
    a = ap.parse_args()
    if a.serve_peer:
        serve_peer(a.serve_peer)
        return 0
    if not 12 < a.rounds < 390:
        ap.error("--rounds must be 13..389 (one session, past the warm-up)")
    p = Params.preset(a.mode)
    ensure_sample()
    runs = [run_once(a, p, k) for k in range(a.runs)]
    print(f"sim_rtt {a.day}: {len(p.universe)} symbols, {a.rounds} rounds (first {WARMUP} left out), "
          f"{a.runs} runs, sim: {a.sim}")
    kinds = sorted({k for r in runs for k in r}, key=lambda k: (k == PEER, -len(runs[0].get(k, [])), k))
    print(f"  {'request':<38} {'n':>4}  {'p50 ms per run':<24} {'p99 ms per run':<24} p50 best/median  p99 best/median")
    for k in kinds:
        p50 = [np.percentile(r[k], 50) * 1e3 for r in runs if r.get(k)]
        p99 = [np.percentile(r[k], 99) * 1e3 for r in runs if r.get(k)]
        each = lambda xs: " ".join(f"{x:5.2f}" for x in xs)  # noqa: E731
        print(f"  {k:<38} {len(runs[0].get(k, [])):>4}  {each(p50):<24} {each(p99):<24} "
              f"{min(p50):5.2f} / {np.median(p50):5.2f}    {min(p99):5.2f} / {np.median(p99):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
