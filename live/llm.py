"""The LLM review in live: the real `openai` client, a Redis store for the gate, every answer recorded.

`Reviewer.ask` is the one place tierlab calls an LLM (research.llm's `record` uses it too). The
model comes from TIERLAB_LLM_MODEL; endpoint and key from the client's own OPENAI_BASE_URL and
OPENAI_API_KEY (never logged). Timeouts, HTTP errors (429, 5xx), non-JSON and schema-breaking
answers are retried up to `retries` times, then the request is an `llm_error` that leaves the
score unchanged. The gate itself (caps, cache, budget) is strategies.llm_gate, shared with research.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from strategies.llm_gate import (
    COUNTERS,
    LLM_REASONS,
    Answer,
    Ask,
    LlmGate,
    LlmGateConfig,
    Request,
    answer_as_dict,
    answer_from_dict,
    answer_record,
    append_answer,
    gate_requests,
    load_prompt,
    month_of,
    parse_review,
)
from tierlab.errors import ConfigError

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "review",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "direction": {"type": "string", "enum": ["bullish", "bearish", "neutral"]},
                "confidence": {"type": "number"},
                "rationale": {"type": "string"},
            },
            "required": ["direction", "confidence", "rationale"],
            "additionalProperties": False,
        },
    },
}
_NO_RETRY = {400, 401, 403, 404, 422}  # the request itself is wrong: trying again cannot help


def llm_model(env: dict[str, str] | None = None) -> str:
    """The model name from TIERLAB_LLM_MODEL (ConfigError if unset)."""
    model = (env if env is not None else os.environ).get("TIERLAB_LLM_MODEL", "").strip()
    if not model:
        raise ConfigError("TIERLAB_LLM_MODEL is not set: name the chat model to ask (e.g. gpt-4o-mini)")
    return model


class Reviewer:
    """Asks the endpoint for one structured review per request, with retries, timeouts and cost."""

    def __init__(self, cfg: LlmGateConfig, model: str | None = None, client: Any = None,
                 log: Callable[..., Any] | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.model = model or llm_model()
        cfg.cost(self.model, 0, 0)  # unknown model -> ConfigError now, not at the first event
        self.prompt = load_prompt(cfg.prompt)
        self.log = log
        self.sleep = sleep
        if client is None:
            import openai

            try:
                client = openai.OpenAI(max_retries=0, timeout=cfg.timeout_s)
            except openai.OpenAIError as exc:
                raise ConfigError("the openai client cannot start: set OPENAI_API_KEY (and OPENAI_BASE_URL "
                                  "for another endpoint)") from exc
        self.client = client

    def _failed_attempt(self, req: Request, reason: str, attempt: int) -> None:
        if self.log is not None:
            self.log("llm_attempt_failed", ticker=req.ticker, rule="llm_review", reason=reason, attempt=attempt,
                     retries=self.cfg.retries)

    def ask(self, req: Request, key: str) -> Answer:
        """One review: up to 1 + retries attempts; usage and cost summed over every attempt."""
        import openai

        messages = self.prompt.messages(req.payload(self.cfg.strength_step))
        tin = tout = 0
        reason = "error"
        attempts = 0
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self.sleep(self.cfg.retry_backoff_s * 2 ** (attempt - 1))
            attempts = attempt + 1
            try:
                resp = self.client.chat.completions.create(
                    model=self.model, messages=messages, response_format=RESPONSE_FORMAT, temperature=0,
                    timeout=self.cfg.timeout_s)
            except openai.APITimeoutError:
                reason = "timeout"
            except openai.APIStatusError as exc:
                reason = f"http_{exc.status_code}"
                if exc.status_code in _NO_RETRY:
                    self._failed_attempt(req, reason, attempts)
                    break
            except openai.APIConnectionError:
                reason = "connection"
            else:
                usage = getattr(resp, "usage", None)
                tin += int(getattr(usage, "prompt_tokens", 0) or 0)
                tout += int(getattr(usage, "completion_tokens", 0) or 0)
                choices = getattr(resp, "choices", None) or []
                text = choices[0].message.content if choices else None
                review, why = parse_review(text)
                if review is not None:
                    return Answer(review.direction, review.confidence, review.rationale, self.model,
                                  self.prompt.version, tin, tout, self.cfg.cost(self.model, tin, tout), None, attempts)
                reason = str(why)
            self._failed_attempt(req, reason, attempts)
        return Answer.failed(reason, self.model, self.prompt.version, tokens_in=tin, tokens_out=tout,
                             cost=self.cfg.cost(self.model, tin, tout), attempts=attempts)


def recording(ask: Ask, path: str | os.PathLike[str], step: float = 0.1, source: str = "live") -> Ask:
    """Wrap `ask` so every answer (errors too) is appended to the recorded-answers file."""
    def _ask(req: Request, key: str) -> Answer:
        ans = ask(req, key)
        append_answer(path, answer_record(req, key, ans, req.payload(step), source))
        return ans
    return _ask


@dataclass
class RedisGateStore:
    """The gate's cache, daily call counts and monthly spend in Redis, shared by every live process.

    The cache holds (asked-at bar close, answer) and is a hit while the bar clock is within cache_s,
    as in research; Redis expiry only cleans up.
    """

    redis: Any
    prefix: str = "tierlab:"
    cache_s: int = 1800

    def _k(self, *parts: object) -> str:
        return self.prefix + "llm:" + ":".join(str(p) for p in parts)

    def cached(self, key: str, now: int) -> Answer | None:
        """The answer cached for key less than cache_s bar-seconds ago."""
        raw = self.redis.get(self._k("cache", key))
        if raw is None:
            return None
        d = json.loads(raw)
        return answer_from_dict(d["answer"]) if now - int(d["at"]) < self.cache_s else None

    def remember(self, key: str, answer: Answer, now: int) -> None:
        """Cache an answer from bar close `now`."""
        self.redis.set(self._k("cache", key), json.dumps({"at": int(now), "answer": answer_as_dict(answer)}),
                       ex=self.cache_s + 86_400)

    def calls_on(self, day: int) -> int:
        """Calls made on a New York day."""
        return int(self.redis.get(self._k("calls", day)) or 0)

    def add_call(self, day: int) -> None:
        """Count one call (kept 3 days)."""
        pipe = self.redis.pipeline()
        pipe.incr(self._k("calls", day))
        pipe.expire(self._k("calls", day), 3 * 86_400)
        pipe.execute()

    def spent_in(self, month: str) -> float:
        """Money spent in a month."""
        return float(self.redis.get(self._k("spend", month)) or 0.0)

    def add_spend(self, month: str, cost: float) -> None:
        """Add a call's cost to its month (kept 40 days)."""
        pipe = self.redis.pipeline()
        pipe.incrbyfloat(self._k("spend", month), float(cost))
        pipe.expire(self._k("spend", month), 40 * 86_400)
        pipe.execute()


def counters_key(keys_prefix: str) -> str:
    """The Redis hash holding a runner namespace's LLM counters (LiveLlm writes it, `live status` reads it)."""
    return f"{keys_prefix}llm:counters"


_INT_COUNTERS = tuple(c for c in COUNTERS if c != "llm_cost")


class LiveLlm:
    """What the live runner calls once per bar, before `kernel.step_nb`: adjusted scores + call count.

    Its gate counters (calls, cache hits, skips by reason, tokens, cost) are also added to a Redis hash
    (`counters_key`), so the status server, `python -m live status` and a restarted runner see the
    namespace's totals, not one process's.
    """

    def __init__(self, cfg: LlmGateConfig, redis: Any, answers_path: str | os.PathLike[str], prefix: str = "tierlab:",
                 reviewer: Reviewer | None = None, log: Callable[..., Any] | None = None,
                 counters: str | None = None) -> None:
        self.reviewer = reviewer if reviewer is not None else Reviewer(cfg, log=log)
        self.gate = LlmGate(cfg, self.reviewer.model, RedisGateStore(redis, prefix, cfg.cache_s), log)
        self.answers_path = answers_path
        self.ask = recording(self.reviewer.ask, answers_path, cfg.strength_step, "live")
        self.redis = redis
        self.counters_key = counters or f"{prefix}counters"
        self.log = log
        self._write({"model": self.reviewer.model, "prompt_version": self.gate.prompt.version,
                     "daily_cap": cfg.daily_cap, "monthly_budget": cfg.monthly_budget, "currency": cfg.currency},
                    {}, "llm_counters_not_written")

    def also_record(self, path: str | os.PathLike[str]) -> None:
        """Append every later answer to `path` too (e.g. a run's own file next to its report)."""
        self.ask = recording(self.ask, path, self.gate.cfg.strength_step, "live")

    def _write(self, fields: dict[str, Any] | Callable[[], dict[str, Any]], deltas: dict[str, float],
               event: str) -> None:
        """HSET `fields` (a callable: read from Redis first) and add `deltas` to the counters hash in one
        transaction; a Redis failure is logged, never raised (the counters are for people; the decision
        must not wait on them)."""
        import redis as redis_lib

        try:
            fields = fields() if callable(fields) else fields
            pipe = self.redis.pipeline(transaction=True)
            for k, v in deltas.items():
                if k == "llm_cost":
                    pipe.hincrbyfloat(self.counters_key, k, float(v))
                else:
                    pipe.hincrby(self.counters_key, k, int(v))
            if fields:
                pipe.hset(self.counters_key, mapping={k: str(v) for k, v in fields.items()})
            pipe.execute()
        except (redis_lib.RedisError, OSError) as e:
            if self.log is not None:
                self.log(event, rule="llm_gate", reason=type(e).__name__, key=self.counters_key)

    def step_inputs(self, inputs: Any, filings: pd.DataFrame | None, min_score: float,
                    t: int = -1) -> tuple[np.ndarray, int]:
        """`step` on a prepared BarInputs (the runner's session window); t = -1 is its newest bar."""
        t = t % len(inputs.index)
        return self.step(inputs.scores, inputs.events, inputs.close_epoch, inputs.day, inputs.symbols,
                         inputs.index, filings, t, min_score)

    def step(self, scores: np.ndarray, events: np.ndarray, close_epoch: np.ndarray, day: np.ndarray,
             symbols: tuple[str, ...], index: pd.DatetimeIndex, filings: pd.DataFrame | None, t: int,
             min_score: float) -> tuple[np.ndarray, int]:
        """Review bar t's event cells (arrays cover bars 0..t at least); return its score row and calls."""
        row = np.array(scores[t], dtype=np.float64, copy=True)
        calls = 0
        before = dict(self.gate.counters)
        last = None
        for req in gate_requests(scores, events, close_epoch, day, symbols, index, filings, only_bar=t):
            row[req.col], called = self.gate.review(req, min_score, self.ask)
            calls += int(called)
            last = req
        if last is not None:
            deltas = {k: self.gate.counters[k] - before.get(k, 0) for k in COUNTERS}
            store, day, month = self.gate.store, int(last.day), month_of(last.day)
            self._write(lambda: {"day": dt.date.fromordinal(day).isoformat(), "calls_day": store.calls_on(day),
                                 "month": month, "spent_month": repr(float(store.spent_in(month)))},
                        {k: v for k, v in deltas.items() if v}, "llm_counters_not_written")
        return row, calls


def read_counters(redis: Any, keys_prefix: str) -> dict[str, Any] | None:
    """A runner namespace's LLM figures from Redis, or None when its gate never ran (LLM off).

    calls, answers, cache_hits, candidates, skips by reason, tokens (in/out), cost and its currency,
    the last reviewed New York day's calls against daily_cap and its month's spend against monthly_budget.
    """
    raw = redis.hgetall(counters_key(keys_prefix))
    if not raw:
        return None
    h = {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
         for k, v in raw.items()}

    def num(name: str) -> float:
        return float(h.get(name) or 0.0)

    c = {k: int(num(k)) for k in _INT_COUNTERS}
    return {"model": h.get("model"), "prompt_version": h.get("prompt_version"),
            "calls": c["llm_calls"], "answers": c["llm_answers"], "cache_hits": c["llm_cached"],
            "candidates": c["llm_candidates"], "skips": {r: c[r] for r in LLM_REASONS},
            "tokens_in": c["llm_tokens_in"], "tokens_out": c["llm_tokens_out"],
            "cost": num("llm_cost"), "currency": h.get("currency", "USD"),
            "day": h.get("day"), "calls_day": int(num("calls_day")), "daily_cap": int(num("daily_cap")),
            "month": h.get("month"), "spent_month": num("spent_month"), "monthly_budget": num("monthly_budget")}


def live_llm_from_env(params: Any, redis: Any, prefix: str = "tierlab:", env: dict[str, str] | None = None,
                      log: Callable[..., Any] | None = None) -> LiveLlm | None:
    """The live runner's LLM gate: on only when OPENAI_BASE_URL and TIERLAB_LLM_MODEL are both set, else None.

    Every answer is appended to TIERLAB_LLM_ANSWERS (default $TIERLAB_HOME/llm/answers.jsonl), the
    file a backtest of the session replays with `--llm recorded:FILE` (no LLM look-ahead: asked live).
    """
    env = dict(os.environ) if env is None else env
    model = env.get("TIERLAB_LLM_MODEL", "").strip()
    if not (env.get("OPENAI_BASE_URL", "").strip() and model):
        return None
    from pathlib import Path

    from tierlab.paths import tierlab_home

    path = Path(env.get("TIERLAB_LLM_ANSWERS", "").strip() or tierlab_home() / "llm" / "answers.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = LlmGateConfig.for_params(params)
    return LiveLlm(cfg, redis, path, prefix=f"{prefix}llm:", reviewer=Reviewer(cfg, model=model, log=log), log=log,
                   counters=counters_key(prefix))
