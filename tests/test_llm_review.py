"""Failed reviews (issue 12.2): timeout, 500, 429, non-JSON and schema-breaking answers leave the score unchanged."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from llm_endpoint import SECRET, serve

from live.llm import Reviewer, llm_model
from strategies.llm_gate import LlmGate, LlmGateConfig, Request, run_gate
from tierlab.errors import ConfigError
from tierlab.log import get_logger

DAY = 739194  # 2024-11-04


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from serve(monkeypatch, slow_s=1.0)


def _one(score: float = 0.8, bar: int = 0, at: int = 1_730_730_000) -> Request:
    return Request(bar, 0, "NVDA", "spike", score, at + 60 * bar, DAY)


@pytest.mark.parametrize(("fault", "reason"), [
    ("timeout", "timeout"), ("500", "http_500"), ("429", "http_429"), ("not_json", "not_json"),
    ("schema", "schema: direction"),
])
def test_failed_answer_leaves_score_unchanged_after_configured_retries(
        llm: Any, capsys: pytest.CaptureFixture, fault: str, reason: str) -> None:
    cfg = LlmGateConfig(retries=2, timeout_s=0.3, retry_backoff_s=0)
    llm.script.extend([fault] * 3)
    log = get_logger("live.llm").info
    gate = LlmGate(cfg, "gpt-4o-mini", log=log)
    res = run_gate(np.array([[0.8]]), [_one()], gate, Reviewer(cfg, log=log).ask)
    assert res.scores[0, 0] == 0.8  # unchanged
    assert len(llm.seen) == 3  # 1 + retries, no more
    assert res.counters["llm_error"] == 1 and res.counters["llm_calls"] == 1 and res.calls.tolist() == [1]
    err = capsys.readouterr().err
    attempts = [ln for ln in err.splitlines() if "event='llm_attempt_failed'" in ln]
    assert len(attempts) == 3 and all(f"reason='{reason}" in ln and "ticker='NVDA'" in ln for ln in attempts)
    skipped = [ln for ln in err.splitlines() if "event='llm_skipped'" in ln]
    assert len(skipped) == 1 and "reason='llm_error'" in skipped[0] and f"error='{reason}" in skipped[0]
    assert SECRET not in err


def test_retry_that_succeeds_moves_the_score_and_bills_every_attempt(llm: Any) -> None:
    cfg = LlmGateConfig(retries=2, timeout_s=0.3, retry_backoff_s=0)
    llm.script.extend(["429", "not_json"])
    rev = Reviewer(cfg)
    ans = rev.ask(_one(), "k")
    assert ans.ok and ans.attempts == 3 and len(llm.seen) == 3
    assert ans.tokens_in == 2 * 120  # the 429 used no tokens, the non-JSON answer did
    assert ans.cost == pytest.approx(cfg.cost("gpt-4o-mini", 240, 60))


def test_no_retries_configured_means_one_attempt_and_errors_are_not_cached(llm: Any) -> None:
    cfg = LlmGateConfig(retries=0, timeout_s=0.3, retry_backoff_s=0)
    llm.script.extend(["500"])
    gate = LlmGate(cfg, "gpt-4o-mini")
    res = run_gate(np.array([[0.8], [0.8]]), [_one(bar=0), _one(bar=1)], gate, Reviewer(cfg).ask)
    assert len(llm.seen) == 2  # the error was not cached: the repeat a minute later asks again
    assert res.scores[:, 0].tolist() == [0.8, pytest.approx(0.8 + 0.8 * cfg.max_adjust)]
    assert res.counters["llm_error"] == 1 and res.counters["llm_answers"] == 1 and res.counters["llm_cached"] == 0


def test_client_errors_are_not_retried(llm: Any) -> None:
    llm.script.extend(["400", "400"])
    ans = Reviewer(LlmGateConfig(retries=3, timeout_s=0.3, retry_backoff_s=0)).ask(_one(), "k")
    assert ans.error == "http_400" and ans.attempts == 1 and len(llm.seen) == 1  # a wrong request stays wrong


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERLAB_LLM_MODEL", raising=False)
    with pytest.raises(ConfigError, match="TIERLAB_LLM_MODEL is not set"):
        llm_model()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as err:
        Reviewer(LlmGateConfig(), model="gpt-4o-mini")
    assert not re.search(r"sk-", str(err.value))
