"""Gate + kernel under the SPEC §8 LLM-surge rollback: the backtest's passes settle on what live does bar by bar."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from test_llm_gate import replay_session

from live.llm import recording
from research.llm import run_with_llm
from strategies.llm_gate import Answer, LlmGate, LlmGateConfig, Request, gate_requests

BASE, ROLLBACK, SURGE, WINDOW = 0.4, 0.65, 2, 120  # a surge = more than 2 calls in the trailing 120 bars


@dataclasses.dataclass(frozen=True)
class Inputs:
    """BarInputs as the kernel will have it: plus the per-bar LLM calls it reads."""

    index: pd.DatetimeIndex
    symbols: tuple[str, ...]
    scores: np.ndarray
    events: np.ndarray
    close_epoch: np.ndarray
    day: np.ndarray
    llm_calls: np.ndarray


def surge_thresholds(calls: np.ndarray, day: np.ndarray) -> np.ndarray:
    """A stand-in for the kernel's trigger: once per session, from the bar after the surge, llm_min_score 0.65."""
    ms = np.full(len(calls), BASE)
    fired: set[int] = set()
    for t in range(len(calls)):
        if int(day[t]) in fired:
            ms[t] = ROLLBACK
            continue
        lo = max(0, t - WINDOW + 1)
        window = calls[lo:t + 1][day[lo:t + 1] == day[t]]
        if window.sum() > SURGE:
            fired.add(int(day[t]))
    return ms


class StubKernel:
    """run_inputs -> extras["llm_min_score"] (K, T) like the kernel will report, plus what it was given."""

    def run_inputs(self, inp: Inputs, plist: list, init_cash: float = 0.0, record: bool = True) -> Any:
        return SimpleNamespace(extras={"llm_min_score": surge_thresholds(inp.llm_calls, inp.day)[None, :]},
                               scores=inp.scores, calls=inp.llm_calls)


def fake_ask(req: Request, key: str) -> Answer:
    return Answer("bearish", 0.5, "fake", "gpt-4o-mini", "review_v1", 100, 10, 2.1e-05)


def test_passes_converge_to_the_bar_by_bar_result(tmp_path: Path) -> None:
    real, ev, _ = replay_session()
    inp = Inputs(real.index, real.symbols, real.scores, real.events, real.close_epoch, real.day,
                 np.zeros(len(real.index), dtype=np.int64))
    cfg = LlmGateConfig(min_score=BASE, daily_cap=1000)
    answers = tmp_path / "live.jsonl"
    # live: gate at bar t with the kernel's threshold after bar t-1, then the kernel sees calls[t]
    gate = LlmGate(cfg, "gpt-4o-mini")
    ask = recording(fake_ask, answers)
    scores, calls = inp.scores.copy(), np.zeros(len(inp.index), dtype=np.int64)
    ms_live = np.full(len(inp.index), BASE)
    for t in range(len(inp.index)):
        ms_live[t] = ROLLBACK if _fired_before(calls, inp.day, t) else BASE
        for req in gate_requests(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index, ev,
                                 only_bar=t):
            scores[t, req.col], called = gate.review(req, float(ms_live[t]), ask)
            calls[t] += int(called)
    assert (ms_live == ROLLBACK).any() and gate.counters["llm_below_score"] > 0  # the rollback did bite

    out, res, _ = run_with_llm(StubKernel(), inp, ev, SimpleNamespace(llm_min_score=BASE, llm_daily_limit=1000),
                                    f"recorded:{answers}")
    assert np.array_equal(out.calls, calls) and np.array_equal(out.scores, scores, equal_nan=True)
    assert res is not None and res.counters["llm_calls"] == gate.counters["llm_calls"]
    # a single pass at the base threshold would have asked more than live did
    reqs = gate_requests(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index, ev)
    assert sum(abs(r.score) >= BASE for r in reqs) > res.counters["llm_calls"]


def _fired_before(calls: np.ndarray, day: np.ndarray, t: int) -> bool:
    """Whether the stand-in trigger fired today at a bar < t (so bar t uses the rollback value)."""
    return bool(surge_thresholds(np.append(calls[:t], 0), np.append(day[:t], day[t]))[-1] == ROLLBACK)
