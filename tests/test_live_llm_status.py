"""Issue 12 KPIs in the live status: the LLM gate's calls, cache hits, skips by reason, tokens and cost reach
Redis (live.llm), `python -m live status [--json]`, the status server's /portfolio/summary and /metrics, and
the terminal view, as namespace totals that survive a runner restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest
import redis
from llm_endpoint import serve
from test_llm_gate import replay_session

from live.cli.__main__ import main as live_main
from live.llm import LiveLlm, counters_key, read_counters
from live.metrics import RunnerMetrics
from live.runner import Minute, Runner
from live.state import Keys, RedisState
from live.view import TerminalView, llm_text, summary_text
from strategies.llm_gate import LLM_REASONS, LlmGateConfig
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy

pytestmark = pytest.mark.redis
CFG = LlmGateConfig(min_score=0.4, daily_cap=5, retry_backoff_s=0, timeout_s=0.5, retries=0)


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from serve(monkeypatch)


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Any:
    """A runner namespace under this test's own root (its keys are deleted afterwards)."""
    r = redis.Redis.from_url(redis_url)
    yield RedisState(r, Keys.of("acct", "tiered_basket", "relaxed", root=redis_prefix))
    for k in r.scan_iter(match=redis_prefix + "*"):
        r.delete(k)


def _walk(live: LiveLlm, inp: Any, ev: Any, bars: np.ndarray) -> None:
    for t in bars:
        live.step(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index, ev, int(t), CFG.min_score)


def _live(store: Any, path: Path) -> LiveLlm:
    """The gate the way live_llm_from_env wires it: keys and counters under the runner's namespace."""
    prefix = store.keys.prefix
    return LiveLlm(CFG, store.r, path, prefix=f"{prefix}llm:", counters=counters_key(prefix))


def _reviewed(llm: Any, store: Any, tmp_path: Path) -> dict[str, float]:
    """Two runner lives over two sessions (the second a restart): the sum of their gates' counters."""
    inp, ev, _ = replay_session()
    llm.script.extend(["ok", "500"])  # AMD 10:00 answered (10:10 is a cache hit), 10:50 fails: an llm_error
    event_bars = np.flatnonzero(inp.events.any(axis=1))
    half = len(event_bars) // 2
    first, second = _live(store, tmp_path / "a.jsonl"), _live(store, tmp_path / "a.jsonl")
    _walk(first, inp, ev, event_bars[:half])
    _walk(second, inp, ev, event_bars[half:])
    return {k: first.gate.counters[k] + second.gate.counters[k] for k in first.gate.counters}


def test_counters_reach_redis_as_namespace_totals_across_a_restart(llm: Any, store: Any, tmp_path: Path) -> None:
    assert read_counters(store.r, store.keys.prefix) is None  # no gate ran: the status says off
    total = _reviewed(llm, store, tmp_path)
    c = read_counters(store.r, store.keys.prefix)
    assert c is not None and c["model"] == "gpt-4o-mini" and c["prompt_version"] == "review_v1"
    assert c["calls"] == total["llm_calls"] == len(llm.seen) == 10
    assert c["answers"] == total["llm_answers"] == 9 and c["cache_hits"] == total["llm_cached"] > 0
    assert c["skips"] == {r: int(total[r]) for r in LLM_REASONS}
    assert c["skips"]["llm_error"] == 1 and c["skips"]["llm_daily_cap"] > 0 and c["skips"]["llm_below_score"] > 0
    assert (c["tokens_in"], c["tokens_out"]) == (total["llm_tokens_in"], total["llm_tokens_out"]) == (1080, 270)  # 9 answers x (120, 30); the 500 used none
    assert c["cost"] == pytest.approx(total["llm_cost"]) and c["currency"] == "USD"
    # the last reviewed New York day: its calls against the cap, its month's spend against the budget
    assert (c["day"], c["calls_day"], c["daily_cap"]) == ("2024-11-05", 5, 5)
    assert c["month"] == "2024-11" and c["spent_month"] == pytest.approx(total["llm_cost"])
    assert c["monthly_budget"] == CFG.monthly_budget


def test_a_redis_failure_while_counting_is_logged_not_raised(tmp_path: Path) -> None:
    """The counters are for people: a Redis error writing them never stops a decision."""
    class Down:
        def pipeline(self, **_: Any) -> Any:
            raise redis.ConnectionError("gone")

    events: list[tuple[str, dict[str, Any]]] = []
    from live.llm import Reviewer

    live = LiveLlm(CFG, Down(), tmp_path / "a.jsonl", reviewer=Reviewer(CFG, model="gpt-4o-mini", client=object()),
                   log=lambda e, **kw: events.append((e, kw)))
    live._write({}, {"llm_calls": 1}, "llm_counters_not_written")
    assert [e for e, _ in events] == ["llm_counters_not_written"] * 2  # at start and at the count
    assert events[0][1]["reason"] == "ConnectionError"


def test_metrics_expose_the_llm_counters_from_their_source(llm: Any, store: Any, tmp_path: Path) -> None:
    total = _reviewed(llm, store, tmp_path)
    m = RunnerMetrics()
    m.watch_llm(lambda: read_counters(store.r, store.keys.prefix))
    lines = set(m.render().decode().splitlines())
    assert {"llm_calls_total 10.0", "llm_answers_total 9.0", f"llm_cache_hits_total {total['llm_cached']:.1f}",
            'llm_skips_total{reason="llm_error"} 1.0', 'llm_skips_total{reason="llm_budget"} 0.0',
            f'llm_skips_total{{reason="llm_daily_cap"}} {total["llm_daily_cap"]:.1f}',
            'llm_tokens_total{direction="in"} 1080.0', 'llm_tokens_total{direction="out"} 270.0'} <= lines
    cost = next(x for x in lines if x.startswith('llm_cost_total{currency="USD"}'))
    assert float(cost.split()[-1]) == pytest.approx(total["llm_cost"])
    assert "signals_generated_total 0.0" in lines
    gone = RunnerMetrics()
    gone.watch_llm(lambda: (_ for _ in ()).throw(redis.ConnectionError("down")))
    text = gone.render().decode()  # Redis down: the other metrics still answer
    assert "signals_generated_total 0.0" in text and "llm_calls_total" not in text
    off = RunnerMetrics()
    off.watch_llm(lambda: None)  # gate off: zeros
    assert "llm_calls_total 0.0" in off.render().decode().splitlines()


def _get(url: str) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    return asyncio.run(go())


def test_status_server_summary_and_metrics_carry_the_llm_section(llm: Any, store: Any, tmp_path: Path) -> None:
    from tierlab.live_paper import _status_server

    runner = Runner(TieredBasketStrategy(Params.preset("relaxed")), store)
    server, _ = _status_server(runner, None)
    try:
        code, body = _get(server.url + "/portfolio/summary")
        assert code == 200 and body["llm"] is None and body["risk_status"] == "safe"
        _reviewed(llm, store, tmp_path)
        code, body = _get(server.url + "/portfolio/summary")
        assert code == 200 and body["llm"]["calls"] == 10 and body["llm"]["skips"]["llm_error"] == 1
        assert "llm_calls_total 10.0" in _get(server.url + "/metrics")[1].splitlines()
    finally:
        server.stop()


def _status_hash(store: Any) -> None:
    """What a runner's commit leaves in the status hash (its last bar's summary)."""
    runner = Runner(TieredBasketStrategy(Params.preset("relaxed")), store)
    s = runner.summary(pd.Timestamp("2024-11-05 15:00", tz="UTC"))
    store.r.hset(store.keys.status, mapping={"bar": "1", "summary": json.dumps(s)})


def test_live_status_prints_the_llm_counters(llm: Any, store: Any, tmp_path: Path, redis_url: str,
                                             redis_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    _status_hash(store)
    args = ["status", "--account", "acct", "--mode", "relaxed", "--redis", redis_url, "--root", redis_prefix]
    assert live_main(args) == 0
    assert "llm    off" in capsys.readouterr().out
    total = _reviewed(llm, store, tmp_path)
    assert live_main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["llm"]
    assert got["calls"] == 10 and got["cache_hits"] == total["llm_cached"] and got["tokens_out"] == 270
    assert got["skips"]["llm_daily_cap"] == total["llm_daily_cap"]
    assert live_main(args) == 0
    text = capsys.readouterr().out
    assert f"llm    calls 10  answers 9  cache hits {int(total['llm_cached'])}  tokens 1080/270  model gpt-4o-mini" in text
    assert f"daily_cap={int(total['llm_daily_cap'])} budget=0 error=1" in text
    assert "day 2024-11-05 5/5 calls  month 2024-11 " in text and "cost 0.000324 USD" in text


def test_terminal_view_shows_the_llm_lines(llm: Any, store: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _reviewed(llm, store, tmp_path)
    runner = Runner(TieredBasketStrategy(Params.preset("relaxed")), store)
    t = pd.Timestamp("2024-11-05 15:00", tz="UTC")
    n = len(runner.symbols)
    dec, scores = np.zeros(n, dtype=np.int8), np.zeros(n)
    summary = {**runner.summary(t, dec, scores), "llm": read_counters(store.r, store.keys.prefix)}
    capsys.readouterr()
    view = TerminalView("relaxed")
    view.symbols = runner.symbols
    try:
        view.update(Minute(t, dec, scores, [], []), summary)
    finally:
        view.close()
    shown = capsys.readouterr().out
    for line in llm_text(summary["llm"]).splitlines():  # each line whole on an 80-column screen
        assert line.rstrip() in shown
    assert "llm    calls 10  answers 9" in shown and "NVDA" in shown
    assert llm_text(summary["llm"]) in summary_text(summary)


def test_live_status_before_the_first_summary_says_so(store: Any, redis_url: str, redis_prefix: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The summary follows its bar's commit: asked in between, `live status` says so instead of a traceback."""
    store.r.hset(store.keys.status, mapping={"bar": "1730817000", "writer": "x"})
    args = ["status", "--account", "acct", "--mode", "relaxed", "--redis", redis_url, "--root", redis_prefix]
    assert live_main(args) == 1
    assert "bar 1730817000 stored, no summary yet" in capsys.readouterr().out
