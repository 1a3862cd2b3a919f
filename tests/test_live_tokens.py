"""live.tokens.RedisTokenBucket on a real Redis: the Lua script is take_token_nb, and processes share it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_helpers import private_redis_server

from live.tokens import TAKE_FAILED, TAKE_FALLBACK, TAKE_OK, RedisTokenBucket
from strategies.rules.tokens import refill_nb, take_token_nb
from tierlab.errors import ConfigError

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[1]
MINUTE = 29_000_000  # any minute epoch: keys are namespaced by the test's own prefix


@pytest.fixture
def client(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:
    """A client on the shared Redis; deletes this test's keys (and only them) afterwards."""
    r = redis.Redis.from_url(redis_url)
    yield r
    keys = list(r.scan_iter(match=f"{redis_prefix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


_take = st.tuples(
    st.just("take"),
    st.sampled_from([0, 1, 2]),
    # None = exactly the fallback window (the boundary second is outside it)
    st.one_of(st.none(), st.sampled_from([0.0, 9.999, 10.0, 10.0001, 59.0]), st.floats(0.0, 59.999)),
    st.booleans(),
)
_minute = st.tuples(st.just("minute"), st.sampled_from([0, 1, 1, 2, -1]), st.just(0.0), st.just(False))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    caps=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
    window=st.sampled_from([0.0, 10.0, 10.5, 30.0]),
    ops=st.lists(st.one_of(_take, _take, _take, _minute), min_size=1, max_size=50),
)
def test_lua_take_agrees_with_take_token_nb_step_by_step(client, redis_prefix, caps, window, ops) -> None:
    prefix = f"{redis_prefix}{uuid.uuid4().hex[:8]}:"
    bucket = RedisTokenBucket(client, prefix, *caps)
    minute = MINUTE
    kernel: dict[int, np.ndarray] = {}  # minute -> the kernel's arrays (a minute seen again keeps its count)

    def tokens(m: int) -> np.ndarray:
        if m not in kernel:
            kernel[m] = np.zeros(3, dtype=np.int64)
            refill_nb(kernel[m], *caps)
        return kernel[m]

    for step, (kind, tier, second, fallback) in enumerate(ops):
        if kind == "minute":
            minute += tier
            continue
        second = window if second is None else second
        want = take_token_nb(tokens(minute), tier, second, fallback, window)
        got = bucket.take(minute, tier, second, fallback, window)
        assert got == want, f"step {step}: tier {tier} second {second} fallback {fallback} -> lua {got}, nb {want}"
        assert bucket.remaining(minute) == tokens(minute).tolist()


def test_fallback_window_and_bench_as_spec_says(client, redis_prefix) -> None:
    b = RedisTokenBucket(client, redis_prefix, 1, 1, 1)
    assert b.take(MINUTE, 0, 3.0, True, 10.0) == TAKE_OK
    assert b.take(MINUTE, 0, 10.0, True, 10.0) == TAKE_FAILED  # second 10 is outside [0, 10)
    assert b.take(MINUTE, 0, 9.5, False, 10.0) == TAKE_FAILED  # default mode never borrows
    assert b.take(MINUTE, 0, 9.5, True, 10.0) == TAKE_FALLBACK
    assert b.take(MINUTE, 2, 1.0, True, 10.0) == TAKE_FAILED  # Bench found the Reserve already borrowed
    assert b.take(MINUTE + 1, 2, 1.0, False, 10.0) == TAKE_OK  # a new minute starts full
    assert b.remaining(MINUTE) == [0, 1, 0] and b.remaining(MINUTE + 1) == [1, 1, 0]
    assert b.remaining(MINUTE + 2) == [1, 1, 1]
    ttl = client.ttl(b.key(MINUTE))
    assert 60 <= ttl <= 180  # a minute key expires by itself


def test_consume_is_all_or_nothing_and_idempotent_by_op_id(client, redis_prefix) -> None:
    b = RedisTokenBucket(client, redis_prefix, 6, 3, 1)
    assert b.consume(MINUTE, [2, 3, 0]) == (True, [4, 0, 1])
    # Tier B is empty: nothing is taken, not even the A and Reserve tokens that are there
    assert b.consume(MINUTE, [1, 1, 1]) == (False, [4, 0, 1])
    assert b.remaining(MINUTE) == [4, 0, 1]
    assert b.consume(MINUTE, [4, 0, 1], op_id="bar-1") == (True, [0, 0, 0])
    assert b.consume(MINUTE, [4, 0, 1], op_id="bar-1") == (True, [0, 0, 0])  # a retry is not taken twice
    assert b.consume(MINUTE, [0, 0, 0]) == (True, [0, 0, 0])
    assert b.consume(MINUTE + 1, [6, 3, 1]) == (True, [0, 0, 0])
    with pytest.raises(ConfigError, match="three whole numbers"):
        b.consume(MINUTE, [1, -1, 0])
    with pytest.raises(ConfigError, match="tier"):
        b.take(MINUTE, 3, 0.0, False, 10.0)
    with pytest.raises(ConfigError, match="finite"):
        b.take(MINUTE, 0, float("nan"), True, 10.0)


_WORKER = textwrap.dedent("""
    import json, random, sys, time
    import redis
    from live.tokens import RedisTokenBucket, TAKE_OK, TAKE_FALLBACK
    url, prefix, go, seed = sys.argv[1:5]
    r = redis.Redis.from_url(url)
    b = RedisTokenBucket(r, prefix, 6, 3, 1)
    rng = random.Random(int(seed))
    while not r.exists(go):
        time.sleep(0.001)
    got = {}
    for i in range(1500):
        minute = 29_000_000 + i % 5
        g = got.setdefault(minute, [0, 0, 0])
        if rng.random() < 0.3:
            counts = [rng.randint(0, 2), rng.randint(0, 1), rng.randint(0, 1)]
            ok, _ = b.consume(minute, counts)
            if ok:
                g = [x + c for x, c in zip(g, counts)]
                got[minute] = g
            continue
        tier = rng.randint(0, 2)
        res = b.take(minute, tier, rng.uniform(0, 20), True, 10.0)
        if res == TAKE_OK:
            g[tier] += 1
        elif res == TAKE_FALLBACK:
            g[2] += 1
    print(json.dumps(got))
""")


def test_two_processes_never_exceed_the_minute_budget_between_them(client, redis_url, redis_prefix) -> None:
    go = f"{redis_prefix}go"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, redis_url, redis_prefix, go, str(seed)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    client.set(go, 1)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append({int(k): v for k, v in json.loads(out).items()})
    bucket = RedisTokenBucket(client, redis_prefix, 6, 3, 1)
    for minute in range(MINUTE, MINUTE + 5):
        granted = [outs[0][minute][k] + outs[1][minute][k] for k in range(3)]
        # 600 wants per minute for 10 tokens: every token is granted once, none twice
        assert granted == [6, 3, 1], (minute, outs[0][minute], outs[1][minute])
        assert bucket.remaining(minute) == [0, 0, 0]


def test_a_redis_restart_keeps_the_minute_and_reloads_the_scripts(tmp_path) -> None:
    if shutil.which("redis-server") is None:  # CI installs it: there a missing server is a failure
        (pytest.fail if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else pytest.skip)(
            "redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = private_redis_server(tmp_path, port)
    try:
        client = redis.Redis(port=port)
        b = RedisTokenBucket(client, "acct:strat:", 6, 3, 1)
        assert b.consume(MINUTE, [5, 3, 0]) == (True, [1, 0, 1])
        proc.terminate()
        proc.wait(10)
        proc = private_redis_server(tmp_path, port)  # same data dir: the append-only file brings the minute back
        # the server forgot the scripts; redis-py loads them again on NOSCRIPT
        assert b.take(MINUTE, 0, 1.0, False, 10.0) == TAKE_OK
        assert b.take(MINUTE, 0, 1.0, False, 10.0) == TAKE_FAILED  # 6 A tokens in this minute, not 6 more
        assert b.remaining(MINUTE) == [0, 0, 1]
    finally:
        proc.terminate()
        proc.wait(10)
