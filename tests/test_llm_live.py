"""Live LLM side (issue 12.4, the parts without the runner): Redis-backed gate, every answer recorded, replay parity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from llm_endpoint import serve
from test_llm_gate import replay_session

from live.llm import LiveLlm, RedisGateStore, Reviewer
from research.llm import apply_recorded
from strategies.llm_gate import Answer, LlmGateConfig

pytestmark = pytest.mark.redis


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from serve(monkeypatch)


@pytest.fixture
def r(redis_url: str, redis_prefix: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    for k in client.scan_iter(match=redis_prefix + "*"):
        client.delete(k)


def _walk(live: LiveLlm, inp: Any, ev: Any, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    scores = inp.scores.copy()
    calls = np.zeros(len(inp.index), dtype=np.int64)
    for t in np.flatnonzero(inp.events.any(axis=1)):  # the runner calls step at every bar; others are no-ops
        scores[t], calls[t] = live.step(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index,
                                        ev, int(t), min_score)
    return scores, calls


def test_live_answers_are_recorded_and_a_recorded_replay_reproduces_them(
        llm: Any, r: Any, redis_prefix: str, tmp_path: Path) -> None:
    inp, ev, _ = replay_session()
    cfg = LlmGateConfig(min_score=0.4, daily_cap=5, retry_backoff_s=0, timeout_s=0.3, retries=1)
    llm.script.extend(["500", "500"])  # the first request fails for good: recorded as an error, replayed as one
    answers = tmp_path / "live-answers.jsonl"
    live = LiveLlm(cfg, r, answers, prefix=redis_prefix)
    scores, calls = _walk(live, inp, ev, 0.4)
    recs = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(recs) == calls.sum() == live.gate.counters["llm_calls"] == 10
    assert {x["source"] for x in recs} == {"live"} and recs[0]["error"] == "http_500" and recs[0]["answer"] is None
    assert live.gate.counters["llm_error"] == 1
    # the backtest's replay of that file gives the very same adjusted scores and per-bar calls
    res = apply_recorded(inp, ev, str(answers), cfg=cfg, min_score=0.4)
    assert np.array_equal(res.scores, scores, equal_nan=True)
    assert np.array_equal(res.calls, calls)
    for name in ("llm_calls", "llm_cached", "llm_daily_cap", "llm_error", "llm_below_score"):
        assert res.counters[name] == live.gate.counters[name], name
    assert res.counters["llm_cost"] == pytest.approx(live.gate.counters["llm_cost"])


def test_redis_store_survives_a_restart(llm: Any, r: Any, redis_prefix: str, tmp_path: Path) -> None:
    inp, ev, bars = replay_session()
    cfg = LlmGateConfig(min_score=0.4, daily_cap=5, retry_backoff_s=0)
    answers = tmp_path / "a.jsonl"
    first = LiveLlm(cfg, r, answers, prefix=redis_prefix)
    t0 = bars["2024-11-04 10:00:20"]
    args = (inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index, ev)
    row0, n0 = first.step(*args, t0, 0.4)
    assert n0 == 1
    # a new process (same Redis): the 10:10 repeat is still a cache hit and the day's count carries on
    second = LiveLlm(cfg, r, answers, prefix=redis_prefix, reviewer=Reviewer(cfg))
    t1 = bars["2024-11-04 10:10:20"]
    window = dataclasses.replace(inp, **{f: getattr(inp, f)[: t1 + 1] for f in (
        "index", "scores", "events", "close_epoch", "day", "llm_calls")})  # every per-bar field: BarInputs checks
    row1, n1 = second.step_inputs(window, ev, 0.4)  # the runner's way: the newest bar of its window
    assert n1 == 0 and second.gate.counters["llm_cached"] == 1 and len(llm.seen) == 1
    j = inp.symbols.index("AMD")
    assert row1[j] - inp.scores[t1, j] == pytest.approx(row0[j] - inp.scores[t0, j]) == 0.8 * cfg.max_adjust
    store = RedisGateStore(r, redis_prefix, cfg.cache_s)
    assert store.calls_on(int(inp.day[t0])) == 1 and store.spent_in("2024-11") == pytest.approx(3.6e-05)
    # the cache is a hit by the bar clock, as in research: 30 minutes later it is gone
    key = second.gate.key(_req_at(inp, ev, t0))
    assert store.cached(key, int(inp.close_epoch[t0]) + 1799) is not None
    assert store.cached(key, int(inp.close_epoch[t0]) + 1800) is None


def _req_at(inp: Any, ev: Any, t: int) -> Any:
    from strategies.llm_gate import gate_requests

    return next(q for q in gate_requests(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index,
                                         ev, only_bar=t) if q.ticker == "AMD")


def test_answer_roundtrips_through_redis(r: Any, redis_prefix: str) -> None:
    store = RedisGateStore(r, redis_prefix, 1800)
    a = Answer("bearish", 0.25, "guidance cut", "gpt-4o-mini", "review_v1", 100, 20, 2.7e-05, None, 2)
    store.remember("k", a, 1000)
    assert store.cached("k", 1500) == a
