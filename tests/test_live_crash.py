"""Crash safety: the runner and the executor are killed with SIGKILL mid-session and restarted; a
private Redis is stopped for 10 s. The broker ends with exactly the uninterrupted run's orders
(which equal research.backtest's, see test_live_parity), none duplicated or lost.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from live_helpers import expected, order_rows, private_redis_server, session, start_sim

from live.broker import AlpacaBroker
from live.journal import broker_orders

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BARS = 70


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int, workdir: Path) -> subprocess.Popen:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for the crash/outage tests (apt-get install redis-server)")
    return private_redis_server(workdir, port, fsync="everysec")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """A private redis-server with append-only persistence (restartable by the test)."""
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    holder = {"proc": proc}
    try:
        yield f"redis://127.0.0.1:{port}/0", tmp_path, port
    finally:
        p = holder["proc"]
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(port), "shutdown", "nosave"],
                       capture_output=True, check=False)
        p.wait(10)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["AUTO_MODE"] = "1"
    return env


def _proc(kind: str, sim_url: str, redis_url: str, root: str, log: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "live", kind, "--sim-url", sim_url, "--redis", redis_url, "--root", root,
            "--account", "sim", "--mode", "default", *extra]
    if kind == "run":
        args.append("--quiet")
    else:
        args.append("--exact-prices")
    return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=open(log, "ab"))


def _bar(r: redis.Redis, root: str) -> int:
    try:
        v = r.get(f"{root}sim:tiered_basket:default:bar")
    except redis.ConnectionError:
        return -1
    return -1 if v is None else int(v)


def _setup(redis_url: str):
    _, panel, _, p = session("2024-11-05", "default")
    panel = panel.slice(None, panel.index[BARS])
    sim = start_sim(panel, p)
    root = f"tierlab-test:{uuid.uuid4().hex[:10]}:"
    bt_orders, _ = expected(panel, None, p)
    assert len(bt_orders) >= 4
    return sim, panel, root, bt_orders


def _finish(sim, bt_orders, tmp_path: Path) -> None:
    live = broker_orders(AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url))
    assert order_rows(live) == order_rows(bt_orders), (tmp_path / "runner.log").read_text()[-3000:]
    assert live["client_order_id"].is_unique


def test_runner_killed_at_random_bars_ends_with_the_same_orders(redis_url: str, tmp_path: Path) -> None:
    sim, panel, root, bt_orders = _setup(redis_url)
    r = redis.Redis.from_url(redis_url)
    start = int(panel.index[0].value // 1_000_000_000)
    kills = sorted(random.Random(7).sample(range(22, BARS - 2), 10))
    ex = _proc("executor", sim.url, redis_url, root, tmp_path / "executor.log")
    try:
        for target in kills:
            run = _proc("run", sim.url, redis_url, root, tmp_path / "runner.log")
            deadline = time.monotonic() + 120
            while _bar(r, root) < start + 60 * target and run.poll() is None:
                assert time.monotonic() < deadline, "runner made no progress"
                time.sleep(0.005)
            run.send_signal(signal.SIGKILL)
            run.wait(10)
        run = _proc("run", sim.url, redis_url, root, tmp_path / "runner.log")
        assert run.wait(300) == 0, (tmp_path / "runner.log").read_text()[-3000:]
        for _ in range(200):
            if r.xpending(f"{root}sim:tiered_basket:default:signals.raw", "executor")["pending"] == 0:
                break
            time.sleep(0.05)
        _finish(sim, bt_orders, tmp_path)
    finally:
        ex.terminate()
        ex.wait(10)
        for k in r.scan_iter(f"{root}*"):
            r.delete(k)
        sim.stop()


def test_executor_killed_at_random_signals_ends_with_the_same_orders(redis_url: str, tmp_path: Path) -> None:
    sim, panel, root, bt_orders = _setup(redis_url)
    r = redis.Redis.from_url(redis_url)
    start = int(panel.index[0].value // 1_000_000_000)
    run = _proc("run", sim.url, redis_url, root, tmp_path / "runner.log")
    try:
        n_kills = mid_work = 0
        rng = random.Random(11)
        while run.poll() is None and n_kills < 10:
            ex = _proc("executor", sim.url, redis_url, root, tmp_path / "executor.log")
            # each life lets the runner decide 1-3 more minutes (it waits for the executor between them),
            # then dies at a random moment of the next minute's signals: 10 kills fit in any session of
            # 30+ minutes however fast the executor places a minute's orders
            b0 = _bar(r, root)
            want = (b0 if b0 >= 0 else start - 60) + 60 * rng.randint(1, 3)
            deadline = time.monotonic() + 60
            while _bar(r, root) < want and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
            ex.send_signal(signal.SIGKILL)
            ex.wait(10)
            n_kills += 1
            mid_work += r.xpending(f"{root}sim:tiered_basket:default:signals.raw", "executor")["pending"] > 0
        ex = _proc("executor", sim.url, redis_url, root, tmp_path / "executor.log")
        assert run.wait(300) == 0, (tmp_path / "runner.log").read_text()[-3000:]
        ex.terminate()
        ex.wait(10)
        assert n_kills >= 10
        assert mid_work >= 1, "no kill landed while signals were read but not acknowledged"
        _finish(sim, bt_orders, tmp_path)
    finally:
        if run.poll() is None:
            run.kill()
        for k in r.scan_iter(f"{root}*"):
            r.delete(k)
        sim.stop()


def test_redis_stopped_for_10s_holds_orders_and_resumes(private_redis: tuple[str, Path, int], tmp_path: Path) -> None:
    url, workdir, port = private_redis
    sim, panel, root, bt_orders = _setup(url)
    r = redis.Redis.from_url(url)
    start = int(panel.index[0].value // 1_000_000_000)
    ex = _proc("executor", sim.url, url, root, tmp_path / "executor.log")
    run = _proc("run", sim.url, url, root, tmp_path / "runner.log")
    try:
        deadline = time.monotonic() + 180
        while _bar(r, root) < start + 60 * 35:
            assert time.monotonic() < deadline and run.poll() is None, (tmp_path / "runner.log").read_text()[-2000:]
            time.sleep(0.01)
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(port), "shutdown"], capture_output=True,
                       check=False)
        orders_at_stop = len(sim.call(lambda: list(sim.engine.orders)))
        time.sleep(10)
        orders_after = len(sim.call(lambda: list(sim.engine.orders)))
        assert orders_after == orders_at_stop, "an order went out while the state could not be persisted"
        assert run.poll() is None, "the runner died with Redis"
        _start_redis(port, workdir)
        assert run.wait(300) == 0, (tmp_path / "runner.log").read_text()[-3000:]
        log = (tmp_path / "runner.log").read_text()
        assert "state_not_persisted" in log or "redis_unreachable" in log
        for _ in range(200):
            if r.xpending(f"{root}sim:tiered_basket:default:signals.raw", "executor")["pending"] == 0:
                break
            time.sleep(0.05)
        _finish(sim, bt_orders, tmp_path)
    finally:
        for p in (run, ex):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        sim.stop()


def test_redis_stopped_during_a_catch_up_with_shared_tokens_is_waited_out(
        private_redis: tuple[str, Path, int], tmp_path: Path) -> None:
    """A catch-up decides bar r+1 while Redis stores bar r, and each bar takes its tokens from the account's
    bucket: Redis stopping right after a commit is sent, then coming back, leaves exactly what an
    uninterrupted catch-up leaves (every bar stored once, the same signals and state)."""
    import threading

    from test_live_fast_path import _runner, _session, _stored

    from live.tokens import RedisTokenBucket

    url, workdir, port = private_redis
    sess, events, p = _session("2024-11-13", "relaxed")
    runs = {}
    for account in ("calm", "outage"):
        rn = _runner(url, f"tierlab-test:{uuid.uuid4().hex[:8]}:", account, p, events, sess, 120)
        rn.retry_s = 0.05
        rn.budget = RedisTokenBucket(rn.store.r, rn.store.keys.tokens, p.tokens_a, p.tokens_b, p.tokens_reserve)
        runs[account] = rn
    runs["calm"].decide_through(sess.index[119])
    rn = runs["outage"]
    send, stop_at = rn._send, int(sess.index[60].value // 1_000_000_000)
    restarted = []

    def send_then_stop_redis() -> None:
        send()
        if rn._inflight[0] == stop_at and not restarted:
            subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(port), "shutdown"],
                           capture_output=True, check=False)
            restarted.append(threading.Timer(1.0, lambda: restarted.append(_start_redis(port, workdir))))
            restarted[0].start()

    rn._send = send_then_stop_redis  # type: ignore[method-assign]
    minutes = rn.decide_through(sess.index[119])
    assert len(restarted) == 2, "Redis was not stopped and started again"
    assert len(minutes) == 120 and rn.persist_failures + rn.redis_waits > 0, "the outage was never met"
    got, want = _stored(rn), _stored(runs["calm"])
    assert [r["t"] for r in got[0]] == [int(t.value // 1_000_000_000) for t in sess.index[:120]]
    assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2]
