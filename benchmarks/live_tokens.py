"""Cost of the shared token bucket per evaluation, side by side with two peers.

live.tokens.RedisTokenBucket.take (one atomic Lua call) and .consume (one call per bar) against
(1) the kernel's in-process take_token_nb and (2) a naive non-atomic read-then-decrement over
plain Redis commands (two round trips, and racy). Prints p50/p99 microseconds per call; needs a
Redis at REDIS_URL (default redis://127.0.0.1:6379/0); keys go under a unique prefix and are deleted.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import redis

from live.tokens import RedisTokenBucket
from strategies.rules.tokens import refill_nb, take_token_nb

N = 5_000
MINUTE0 = 29_000_000


def pct(xs: list[float]) -> str:
    """p50 / p99 in microseconds."""
    a = np.asarray(xs) * 1e6
    return f"p50 {np.percentile(a, 50):8.1f} us   p99 {np.percentile(a, 99):8.1f} us"


def main() -> None:
    """Time N calls of each, over minutes of 10 tokens (most calls find the bucket empty, as under load)."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    r = redis.Redis.from_url(url)
    try:
        r.ping()
    except redis.ConnectionError:
        print(f"no Redis answers at {url}: set REDIS_URL to run this benchmark")
        return
    prefix = f"tierlab-bench:{uuid.uuid4().hex[:8]}:"
    b = RedisTokenBucket(r, prefix, 6, 3, 1)
    try:
        lua, cons, naive, nb = [], [], [], []
        for i in range(N):
            t = time.perf_counter()
            b.take(MINUTE0 + i // 20, i % 3, 5.0, True, 10.0)
            lua.append(time.perf_counter() - t)
        for i in range(N):
            t = time.perf_counter()
            b.consume(MINUTE0 + 1000 + i, [2, 1, 0])
            cons.append(time.perf_counter() - t)
        for i in range(N):
            key, field = f"{prefix}naive:{MINUTE0 + i // 20}", "abr"[i % 3]
            t = time.perf_counter()
            left = r.hget(key, field)
            if left is None:
                r.hset(key, mapping={"a": 6, "b": 3, "r": 1})
                left = {"a": 6, "b": 3, "r": 1}[field]
            if int(left) > 0:
                r.hincrby(key, field, -1)
            naive.append(time.perf_counter() - t)
        tokens = np.zeros(3, dtype=np.int64)
        take_token_nb(tokens, 0, 5.0, True, 10.0)  # compile outside the timing
        for i in range(N):
            if i % 20 == 0:
                refill_nb(tokens, 6, 3, 1)
            t = time.perf_counter()
            take_token_nb(tokens, i % 3, 5.0, True, 10.0)
            nb.append(time.perf_counter() - t)
        print(f"{N} calls each, Redis at {url}")
        print(f"  RedisTokenBucket.take (Lua, atomic)   {pct(lua)}")
        print(f"  RedisTokenBucket.consume (Lua, batch) {pct(cons)}")
        print(f"  naive HGET+HINCRBY (racy)             {pct(naive)}")
        print(f"  take_token_nb (in process, no share)  {pct(nb)}")
        print(f"  ratio take/naive p50: {np.median(lua) / np.median(naive):.2f}")
    finally:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])


if __name__ == "__main__":
    main()
