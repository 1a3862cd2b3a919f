"""The LLM gate (issue 12.1): who gets a review, daily cap, 30-minute cache, monthly budget, bounded adjustment."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
from llm_endpoint import serve

from data.events import validate_events
from data.sample import generate_panel, sample_events
from data.universe import UNIVERSE
from live.llm import Reviewer
from strategies.llm_gate import (
    Answer,
    LlmGate,
    LlmGateConfig,
    Request,
    gate_requests,
    load_prompt,
    month_of,
    request_key,
    run_gate,
)
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy
from tierlab.errors import ConfigError

NY = "America/New_York"
AMD_FILINGS = ("2024-11-04 10:00:20", "2024-11-04 10:10:20", "2024-11-04 10:50:20")  # one 8-K seen three times


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from serve(monkeypatch)


def replay_session() -> tuple[Any, pd.DataFrame, dict[str, int]]:
    """Two synthetic sessions + the same AMD 8-K three times (10:00, 10:10, 10:50 NY) with a 0.7-ish score."""
    pn = generate_panel("2024-11-04", "2024-11-05")
    extra = pd.DataFrame({"time": [pd.Timestamp(t, tz=NY).isoformat() for t in AMD_FILINGS], "ticker": "AMD",
                          "form": "8-K", "title": "8-K - ADVANCED MICRO DEVICES INC (0000002488)",
                          "url": "https://www.sec.gov/Archives/edgar/data/2488/0000002488-24-000150.txt"})
    ev = pd.concat([sample_events(pn), validate_events(extra, source="test", known=UNIVERSE)], ignore_index=True)
    p = Params.preset("relaxed")
    inp = TieredBasketStrategy(p).prepare(pn, ev, p)
    scores = inp.scores.copy()
    j = inp.symbols.index("AMD")
    bars = {}
    for t_str, s in zip(AMD_FILINGS, (0.72, 0.74, 0.71), strict=True):
        t = int(np.searchsorted(inp.index + pd.Timedelta(minutes=1), pd.Timestamp(t_str, tz=NY)))
        scores[t, j] = s
        bars[t_str] = t
    return dataclasses.replace(inp, scores=scores), ev, bars


def hand_count(reqs: list[Request], min_score: float, cap: int, cache_s: int) -> Counter:
    """The SPEC §7 rules counted by hand over the request list (independent of LlmGate)."""
    c: Counter = Counter()
    answered: dict[str, int] = {}
    per_day: Counter = Counter()
    for r in reqs:
        c["llm_candidates"] += 1
        if abs(r.score) < min_score:
            c["llm_below_score"] += 1
            continue
        k = json.dumps(r.payload(), sort_keys=True)
        if k in answered and r.at - answered[k] < cache_s:
            c["llm_cached"] += 1
            continue
        if per_day[r.day] >= cap:
            c["llm_daily_cap"] += 1
            continue
        per_day[r.day] += 1
        c["llm_calls"] += 1
        answered[k] = r.at
    return c


def test_replayed_session_calls_only_over_threshold_within_cap_and_caches(llm: Any) -> None:
    inp, ev, bars = replay_session()
    cfg = LlmGateConfig(min_score=0.4, daily_cap=5, retry_backoff_s=0)
    logs: list[tuple[str, dict]] = []
    gate = LlmGate(cfg, "gpt-4o-mini", log=lambda event, **kw: logs.append((event, kw)))
    reqs = gate_requests(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index, ev)
    res = run_gate(inp.scores, reqs, gate, Reviewer(cfg).ask)

    hand = hand_count(reqs, 0.4, 5, 1800)
    for name in ("llm_candidates", "llm_below_score", "llm_cached", "llm_daily_cap", "llm_calls"):
        assert res.counters[name] == hand[name], name
    assert res.counters["llm_calls"] == len(llm.seen) == res.calls.sum() == 10  # 5 a day, day 1 capped
    assert res.counters["llm_daily_cap"] == 3 and res.counters["llm_cached"] == 1
    assert res.counters["llm_error"] == res.counters["llm_budget"] == 0
    assert res.counters["llm_tokens_in"] == 120 * 10 and res.counters["llm_cost"] == pytest.approx(10 * 3.6e-05)
    # only events/spikes over the threshold reach the endpoint: every request it saw is one of them
    over = {json.dumps(gate.prompt.messages(r.payload())) for r in reqs if abs(r.score) >= 0.4}
    assert all(json.dumps(b["messages"]) in over for b in llm.seen)
    assert all(b["response_format"]["type"] == "json_schema" and b["model"] == "gpt-4o-mini" for b in llm.seen)
    # never more than the daily cap per New York day
    called_days = Counter(int(inp.day[t]) for t in np.repeat(np.arange(len(res.calls)), res.calls))
    assert max(called_days.values()) == 5
    # the repeat at 10:10 is a cache hit (no call, same adjustment); 10:50 is 50 min after the answer: a call
    j = inp.symbols.index("AMD")
    t0, t1, t2 = (bars[t] for t in AMD_FILINGS)
    assert (res.calls[t0], res.calls[t1], res.calls[t2]) == (1, 0, 1)
    assert res.scores[t1, j] - inp.scores[t1, j] == pytest.approx(0.8 * cfg.max_adjust)  # long confirmed 0.8
    assert [kw["bar"] for e, kw in logs if kw.get("reason") == "llm_cached"] == [t1]
    # scores move only at reviewed cells, by at most max_adjust
    moved = np.argwhere(~np.isclose(np.nan_to_num(res.scores), np.nan_to_num(inp.scores)))
    assert len(moved) == res.counters["llm_answers"] + res.counters["llm_cached"]
    assert np.nanmax(np.abs(res.scores - inp.scores)) <= cfg.max_adjust + 1e-12
    reasons = Counter(kw["reason"] for e, kw in logs if e == "llm_skipped")
    assert reasons == {k: int(res.counters[k]) for k in ("llm_below_score", "llm_cached", "llm_daily_cap")}


def _req(bar: int, day: int, score: float = 0.8, ticker: str = "NVDA", at: int | None = None) -> Request:
    return Request(bar, 0, ticker, "spike", score, at if at is not None else 10_000 * bar, day)


def _ok(cost: float) -> Any:
    def ask(req: Request, key: str) -> Answer:
        return Answer("bearish", 1.0, "x", "gpt-4o-mini", "review_v1", 1000, 100, cost)
    return ask


def test_monthly_budget_stops_calls_until_next_month() -> None:
    cfg = LlmGateConfig(monthly_budget=0.25, daily_cap=1000)
    gate = LlmGate(cfg, "gpt-4o-mini")
    nov = pd.Timestamp("2024-11-04").toordinal()
    dec = pd.Timestamp("2024-12-02").toordinal()
    reqs = [_req(i, nov + i // 3, ticker=f"T{i}") for i in range(6)] + [_req(6, dec, ticker="T6")]
    res = run_gate(np.full((7, 1), 0.8), reqs, gate, _ok(0.1))
    # 0.1 per call: calls 1-3 reach 0.3 >= 0.25, the rest of November is over budget, December starts afresh
    assert res.calls.tolist() == [1, 1, 1, 0, 0, 0, 1]
    assert res.counters["llm_budget"] == 3 and res.counters["llm_cost"] == pytest.approx(0.4)
    assert month_of(nov) == "2024-11"


def test_adjustment_is_bounded_and_clipped_and_threshold_may_vary_by_bar() -> None:
    cfg = LlmGateConfig(max_adjust=0.2)
    gate = LlmGate(cfg, "gpt-4o-mini")
    scores = np.array([[0.9], [-0.75], [0.66]])
    reqs = [_req(0, 1, 0.9, "A"), _req(1, 1, -0.75, "B"), _req(2, 1, 0.66, "C")]
    res = run_gate(scores, reqs, gate, _ok(0.0), min_score=np.array([0.7, 0.7, 0.65]))
    assert res.scores[:, 0].tolist() == pytest.approx([0.7, -0.95, 0.46])  # bearish 1.0 -> -0.2 each
    res2 = run_gate(scores, reqs, LlmGate(cfg, "gpt-4o-mini"), _ok(0.0))  # 0.7 everywhere: C is below score
    assert res2.scores[2, 0] == 0.66 and res2.counters["llm_below_score"] == 1
    assert LlmGate(cfg, "m").adjust(-0.95, Answer("bearish", 1.0, "x", "m", "v")) == -1.0


def test_key_changes_with_prompt_version_and_model_not_with_time() -> None:
    p = _req(1, 1).payload()
    assert request_key(p, "gpt-4o-mini", "review_v1") == request_key(_req(7, 2, 0.81).payload(), "gpt-4o-mini",
                                                                     "review_v1")
    assert request_key(p, "gpt-4o-mini", "review_v1") != request_key(p, "gpt-4o-mini", "review_v2")
    assert request_key(p, "gpt-4o-mini", "review_v1") != request_key(p, "gpt-4o", "review_v1")


def test_config_follows_params_and_refuses_unknowns() -> None:
    assert LlmGateConfig.for_params(Params.preset("relaxed")).min_score == 0.6
    assert LlmGateConfig.for_params(Params.preset("default")).daily_cap == 120
    cfg = LlmGateConfig()
    assert (cfg.min_score, cfg.daily_cap, cfg.cache_s) == (0.7, 120, 1800)
    with pytest.raises(ConfigError, match="model 'mystery' has no price"):
        cfg.cost("mystery", 1, 1)
    with pytest.raises(ConfigError, match="prompt 'review_v9'"):
        load_prompt("review_v9")
    with pytest.raises(ValueError, match="daily_cap"):
        LlmGateConfig(daily_cap=-1)
