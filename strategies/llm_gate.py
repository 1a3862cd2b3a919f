"""The LLM gate of SPEC §7: which events get a review, caps, cache, budget, and how an answer moves a score.

Written once and used by research (recorded answers, `research.llm`) and live (the real call,
`live.llm`). The decision is pure: an `ask(request, key) -> Answer` callable is injected, so the
same gate replays a recorded-answers file bit for bit. Per request, in this order:

1. only an event bar (a filing or a volume spike) with a fresh score |score| >= min_score is a
   candidate; an event below it is skipped as `llm_below_score`;
2. an identical request (same model, prompt version and rendered content) answered less than
   `cache_s` ago is served from the cache (`llm_cached`, no call);
3. at most `daily_cap` calls per New York day (`llm_daily_cap`);
4. no call once the month's spend (token usage x price table) reached `monthly_budget` (`llm_budget`);
5. a failed, late or malformed answer leaves the score unchanged (`llm_error`).

An answer moves the score at its bar by direction x confidence x `max_adjust` (clipped to [-1, 1]).
The gate runs BEFORE the kernel: it returns the adjusted (T, N) scores and the per-bar call counts
the kernel's LLM-surge trigger (SPEC §8) reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tierlab.errors import ConfigError, DataError

LLM_REASONS: tuple[str, ...] = ("llm_below_score", "llm_cached", "llm_daily_cap", "llm_budget", "llm_error")
COUNTERS: tuple[str, ...] = ("llm_candidates", "llm_calls", "llm_answers", *LLM_REASONS,
                             "llm_tokens_in", "llm_tokens_out", "llm_cost")
PROMPTS = Path(__file__).with_name("prompts")
DIRECTION_SIGN = {"bullish": 1.0, "bearish": -1.0, "neutral": 0.0}

# USD per 1M tokens (input, output), list prices; the user adds their model here or in a TOML.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1": (2.00, 8.00),
}


class LlmGateConfig(BaseModel):
    """Frozen settings of the LLM gate (SPEC §7); defaults are the old bot's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_score: float = Field(0.7, ge=0, le=1, description="|score| needed to ask (relaxed 0.6, rollback 0.65)")
    daily_cap: int = Field(120, ge=0, description="calls per New York day")
    cache_s: int = Field(1800, ge=0, description="an identical request within this many seconds is a cache hit")
    max_adjust: float = Field(0.15, ge=0, le=1, description="most an answer may move a score")
    monthly_budget: float = Field(55.0, ge=0, description="money per calendar month (about 80,000 KRW in USD)")
    currency: str = Field("USD", description="currency of monthly_budget and prices")
    prices: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(DEFAULT_PRICES),
                                                   description="model -> (input, output) price per 1M tokens")
    timeout_s: float = Field(8.0, gt=0, description="seconds to wait for one answer; live waits at most "
                             "(1 + retries) x timeout_s + backoffs per request, inside the minute bar")
    retries: int = Field(2, ge=0, le=10, description="extra attempts after a failed/late/malformed answer")
    retry_backoff_s: float = Field(0.5, ge=0, description="wait before retry k is backoff * 2**k")
    prompt: str = Field("review_v1", pattern=r"^[A-Za-z0-9_.-]+$", description="prompt file (= version)")
    strength_step: float = Field(0.1, gt=0, le=1, description="|score| is rounded to this in the request")

    MIN_SCORE_RELAXED: ClassVar[float] = 0.6
    MIN_SCORE_ROLLBACK: ClassVar[float] = 0.65

    @classmethod
    def for_params(cls, params: Any, **overrides: Any) -> LlmGateConfig:
        """The gate settings of a strategy Params set (its llm_min_score and llm_daily_limit win)."""
        kw: dict[str, Any] = {}
        if hasattr(params, "llm_min_score"):
            kw["min_score"] = float(params.llm_min_score)
        if hasattr(params, "llm_daily_limit"):
            kw["daily_cap"] = int(params.llm_daily_limit)
        return cls(**{**kw, **overrides})

    @classmethod
    def preset(cls, mode: str = "default") -> LlmGateConfig:
        """default (min_score 0.7) or relaxed (0.6)."""
        if mode not in ("default", "relaxed"):
            raise ConfigError(f"mode: expected default or relaxed, got {mode!r}")
        return cls(min_score=cls.MIN_SCORE_RELAXED) if mode == "relaxed" else cls()

    def cost(self, model: str, tokens_in: int, tokens_out: int) -> float:
        """Money for one call from its token usage and the price table."""
        price = self.prices.get(model)
        if price is None:
            raise ConfigError(f"LLM model {model!r} has no price in the price table (known: "
                              f"{', '.join(sorted(self.prices))}); add it to LlmGateConfig.prices")
        return (tokens_in * price[0] + tokens_out * price[1]) / 1e6


# ---- prompt, request, answer -------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    """A versioned prompt file: `[system]` and `[user]` sections; the file name is the version."""

    version: str
    system: str
    user: str

    def messages(self, payload: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for one request payload."""
        event = (f"new SEC filing {payload['form']}: {payload['title']} ({payload['url']})"
                 if payload["kind"] == "filing" else "volume spike on the last minute bar")
        user = self.user.format(ticker=payload["ticker"], event=event, side=payload["side"],
                                strength=payload["strength"])
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_prompt(version: str = "review_v1") -> Prompt:
    """Read strategies/prompts/<version>.txt."""
    path = PROMPTS / f"{version}.txt"
    if not path.exists():
        raise ConfigError(f"prompt {version!r}: no file {path} (have: "
                          f"{', '.join(sorted(p.stem for p in PROMPTS.glob('*.txt')))})")
    text = path.read_text()
    if "[system]\n" not in text or "\n[user]\n" not in text:
        raise ConfigError(f"{path}: expected a [system] and a [user] section")
    system, user = text.split("[system]\n", 1)[1].split("\n[user]\n", 1)
    return Prompt(version, system.strip(), user.strip())


@dataclass(frozen=True)
class Request:
    """One wanted review: an event (filing or volume spike) on a ticker at a bar close."""

    bar: int
    col: int
    ticker: str
    kind: Literal["filing", "spike"]
    score: float
    at: int  # bar close, epoch seconds UTC
    day: int  # New York session day (proleptic ordinal)
    form: str = ""
    title: str = ""
    url: str = ""

    def payload(self, step: float = 0.1) -> dict[str, Any]:
        """What is sent (and hashed): ticker, event, side and rounded strength; never the bar or time."""
        out: dict[str, Any] = {"ticker": self.ticker, "kind": self.kind, "side": "long" if self.score >= 0 else "short",
                               "strength": f"{round(abs(self.score) / step) * step:.2f}"}
        if self.kind == "filing":
            out.update(form=self.form, title=self.title, url=self.url)
        return out


def request_key(payload: dict[str, Any], model: str, prompt_version: str) -> str:
    """The request hash: identical model, prompt version and content <=> identical key (cache, recorded file)."""
    blob = json.dumps({"model": model, "prompt": prompt_version, "request": payload}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ReviewSchema(BaseModel):
    """The answer the model must give (validated; anything else is `llm_error` reason schema)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    direction: Literal["bullish", "bearish", "neutral"]
    confidence: float = Field(ge=0, le=1)
    rationale: str = Field(min_length=1, max_length=300, pattern=r"^[^\n\r]*$")


def parse_review(text: str | None) -> tuple[ReviewSchema | None, str | None]:
    """(answer, None) or (None, reason) with reason `not_json` or `schema: <field>: <problem>`."""
    try:
        doc = json.loads(text or "")
    except (json.JSONDecodeError, TypeError):
        return None, "not_json"
    if isinstance(doc, dict) and isinstance(doc.get("confidence"), int) and not isinstance(doc["confidence"], bool):
        doc["confidence"] = float(doc["confidence"])
    try:
        return ReviewSchema.model_validate(doc), None
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "answer"
        return None, f"schema: {loc}: {e['msg'].replace(chr(39), '')}"


@dataclass(frozen=True)
class Answer:
    """What one request got: a validated review or an error reason, with usage and cost."""

    direction: str | None
    confidence: float
    rationale: str
    model: str
    prompt_version: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """True for a usable review."""
        return self.error is None and self.direction in DIRECTION_SIGN

    def delta(self, max_adjust: float) -> float:
        """How far this answer moves a score (0 for an error)."""
        if not self.ok:
            return 0.0
        return DIRECTION_SIGN[str(self.direction)] * float(self.confidence) * max_adjust

    @classmethod
    def failed(cls, reason: str, model: str, prompt_version: str, **kw: Any) -> Answer:
        """An error answer (leaves the score unchanged)."""
        return cls(None, 0.0, "", model, prompt_version, error=reason, **kw)


Ask = Callable[[Request, str], Answer]


# ---- gate state --------------------------------------------------------------------------------------
class GateStore(Protocol):
    """Where the gate keeps its cache, daily call counts and monthly spend (memory here, Redis in live)."""

    def cached(self, key: str, now: int) -> Answer | None: ...
    def remember(self, key: str, answer: Answer, now: int) -> None: ...
    def calls_on(self, day: int) -> int: ...
    def add_call(self, day: int) -> None: ...
    def spent_in(self, month: str) -> float: ...
    def add_spend(self, month: str, cost: float) -> None: ...


@dataclass
class MemoryStore:
    """The in-process store the backtest replay uses (a fresh one per run: deterministic)."""

    cache_s: int = 1800
    cache: dict[str, tuple[int, Answer]] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    spend: dict[str, float] = field(default_factory=dict)

    def cached(self, key: str, now: int) -> Answer | None:
        """The answer stored for key less than cache_s ago."""
        hit = self.cache.get(key)
        return hit[1] if hit is not None and now - hit[0] < self.cache_s else None

    def remember(self, key: str, answer: Answer, now: int) -> None:
        """Cache an answer from `now`."""
        self.cache[key] = (now, answer)

    def calls_on(self, day: int) -> int:
        """Calls made on a New York day."""
        return self.calls.get(day, 0)

    def add_call(self, day: int) -> None:
        """Count one call."""
        self.calls[day] = self.calls.get(day, 0) + 1

    def spent_in(self, month: str) -> float:
        """Money spent in a month (YYYY-MM)."""
        return self.spend.get(month, 0.0)

    def add_spend(self, month: str, cost: float) -> None:
        """Add a call's cost to its month."""
        self.spend[month] = self.spend.get(month, 0.0) + cost


def month_of(day: int) -> str:
    """YYYY-MM of a New York session day ordinal."""
    return dt.date.fromordinal(int(day)).strftime("%Y-%m")


class LlmGate:
    """The per-request decision of SPEC §7 with its counters; `review` is all live and research call."""

    def __init__(self, cfg: LlmGateConfig, model: str, store: GateStore | None = None,
                 log: Callable[..., Any] | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.prompt = load_prompt(cfg.prompt)
        self.store: GateStore = store if store is not None else MemoryStore(cfg.cache_s)
        self.counters: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.counters["llm_cost"] = 0.0
        self.log = log

    def key(self, req: Request) -> str:
        """The request hash of `req` under this gate's model and prompt version."""
        return request_key(req.payload(self.cfg.strength_step), self.model, self.prompt.version)

    def _skip(self, req: Request, reason: str, **kw: Any) -> None:
        self.counters[reason] += 1
        if self.log is not None:
            self.log("llm_skipped", ticker=req.ticker, rule="llm_gate", reason=reason, kind=req.kind, bar=req.bar, **kw)

    def review(self, req: Request, min_score: float, ask: Ask) -> tuple[float, bool]:
        """Decide for one request, maybe ask, and return (adjusted score, whether a call was made)."""
        self.counters["llm_candidates"] += 1
        score = float(req.score)
        if not abs(score) >= min_score:
            self._skip(req, "llm_below_score", score=round(score, 4), min_score=min_score)
            return score, False
        key = self.key(req)
        hit = self.store.cached(key, req.at)
        if hit is not None:
            self._skip(req, "llm_cached", key=key)
            return self.adjust(score, hit), False
        if self.store.calls_on(req.day) >= self.cfg.daily_cap:
            self._skip(req, "llm_daily_cap", cap=self.cfg.daily_cap)
            return score, False
        month = month_of(req.day)
        spent = self.store.spent_in(month)
        if spent >= self.cfg.monthly_budget:
            self._skip(req, "llm_budget", spent=round(spent, 6), budget=self.cfg.monthly_budget)
            return score, False
        ans = ask(req, key)
        self.store.add_call(req.day)
        self.store.add_spend(month, ans.cost)
        c = self.counters
        c["llm_calls"] += 1
        c["llm_tokens_in"] += ans.tokens_in
        c["llm_tokens_out"] += ans.tokens_out
        c["llm_cost"] += ans.cost
        if not ans.ok:
            self._skip(req, "llm_error", key=key, error=ans.error, attempts=ans.attempts)
            return score, True
        c["llm_answers"] += 1
        self.store.remember(key, ans, req.at)
        new = self.adjust(score, ans)
        if self.log is not None:
            self.log("llm_answer", ticker=req.ticker, rule="llm_gate", reason=ans.direction, kind=req.kind,
                     bar=req.bar, key=key, score=round(score, 4), adjusted=round(new, 4), cost=round(ans.cost, 6))
        return new, True

    def adjust(self, score: float, ans: Answer) -> float:
        """score moved by the answer, at most max_adjust, kept in [-1, 1]."""
        return float(np.clip(score + ans.delta(self.cfg.max_adjust), -1.0, 1.0))


# ---- over a history ----------------------------------------------------------------------------------
def gate_requests(scores: np.ndarray, events: np.ndarray, close_epoch: np.ndarray, day: np.ndarray,
                  symbols: Sequence[str], index: pd.DatetimeIndex | None = None,
                  filings: pd.DataFrame | None = None, only_bar: int | None = None) -> list[Request]:
    """Every event bar with a fresh score, in (bar, column) order; a filing's fields when one stands behind it.

    `events` is the kernel's (T, N) event mask (filings | volume spikes); `filings` the events table,
    placed on bars by the same rule as the mask (data.events.event_cells). `only_bar` keeps one bar
    (the live runner's current bar; pass the arrays up to and including it).
    """
    behind: dict[tuple[int, int], dict[str, str]] = {}
    if filings is not None and len(filings) and index is not None:
        from data.events import event_cells

        bars, cols = event_cells(filings, index, symbols)
        recs = filings.to_dict("records")
        for b, j, rec in zip(bars.tolist(), cols.tolist(), recs, strict=True):
            if b >= 0:
                behind.setdefault((b, j), rec)
    out = []
    want = events & np.isfinite(scores)
    if only_bar is not None:
        keep = np.zeros(want.shape[0], dtype=bool)
        keep[only_bar] = True
        want = want & keep[:, None]
    for t, j in zip(*np.nonzero(want), strict=True):
        t, j = int(t), int(j)
        rec = behind.get((t, j))
        out.append(Request(t, j, symbols[j], "filing" if rec else "spike", float(scores[t, j]),
                           int(close_epoch[t]), int(day[t]),
                           **({"form": str(rec["form"]), "title": str(rec["title"]),
                               "url": str(rec.get("url", "") or "")} if rec else {})))
    return out


@dataclass
class GateResult:
    """The gate over a history: adjusted scores, calls per bar (the kernel's surge input), counters."""

    scores: np.ndarray
    calls: np.ndarray
    counters: dict[str, float]
    requests: int = 0


def run_gate(scores: np.ndarray, requests: Sequence[Request], gate: LlmGate, ask: Ask,
             min_score: float | np.ndarray | None = None) -> GateResult:
    """Apply the gate to every request in time order; `min_score` may be per bar (T,) (rollback)."""
    out = np.array(scores, dtype=np.float64, copy=True)
    calls = np.zeros(out.shape[0], dtype=np.int64)
    ms = np.full(out.shape[0], gate.cfg.min_score if min_score is None else 0.0)
    if min_score is not None:
        ms[:] = min_score
    for req in requests:
        new, called = gate.review(req, float(ms[req.bar]), ask)
        out[req.bar, req.col] = new
        calls[req.bar] += int(called)
    return GateResult(out, calls, dict(gate.counters), len(requests))


# ---- the recorded-answers file (research reads it, live and `research.llm record` write it) -----------
ANSWER_FIELDS = ("key", "at", "ticker", "kind", "request", "model", "prompt_version", "answer", "error",
                 "tokens_in", "tokens_out", "cost", "attempts", "source")


def answer_record(req: Request, key: str, ans: Answer, payload: dict[str, Any], source: str) -> dict[str, Any]:
    """One line of the recorded-answers file (JSON Lines)."""
    review = ({"direction": ans.direction, "confidence": ans.confidence, "rationale": ans.rationale}
              if ans.ok else None)
    return {"key": key, "at": pd.Timestamp(req.at, unit="s", tz="UTC").isoformat(), "ticker": req.ticker,
            "kind": req.kind, "request": payload, "model": ans.model, "prompt_version": ans.prompt_version,
            "answer": review, "error": ans.error, "tokens_in": ans.tokens_in, "tokens_out": ans.tokens_out,
            "cost": ans.cost, "attempts": ans.attempts, "source": source}


def append_answer(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record and fsync (a crash loses at most the line being written)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class AnswerBook:
    """A recorded-answers file in memory: request hash -> answers by the bar close they were asked at."""

    def __init__(self, records: dict[str, list[tuple[int, Answer]]], path: str = "") -> None:
        self.records = records
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnswerBook:
        """Read and check a JSON Lines file; DataError names the file, line and field."""
        recs: dict[str, list[tuple[int, Answer]]] = {}
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(f"{path}: cannot read recorded answers: {exc.strerror or exc}") from exc
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {n}: not JSON ({exc.msg}); a partly written last line "
                                "can be deleted") from exc
            missing = [f for f in ANSWER_FIELDS if not isinstance(r, dict) or f not in r]
            if missing:
                raise DataError(f"{path}: line {n}: field {missing[0]}: missing")
            try:
                at = int(pd.Timestamp(r["at"]).timestamp())
            except (ValueError, TypeError) as exc:
                raise DataError(f"{path}: line {n}: field at: cannot read {r['at']!r} as a time") from exc
            if r["answer"] is None:
                ans = Answer.failed(str(r["error"] or "error"), str(r["model"]), str(r["prompt_version"]),
                                    tokens_in=int(r["tokens_in"]), tokens_out=int(r["tokens_out"]),
                                    cost=float(r["cost"]), attempts=int(r["attempts"]))
            else:
                review, why = parse_review(json.dumps(r["answer"]))
                if review is None:
                    raise DataError(f"{path}: line {n}: field answer: {why}")
                ans = Answer(review.direction, review.confidence, review.rationale, str(r["model"]),
                             str(r["prompt_version"]), int(r["tokens_in"]), int(r["tokens_out"]), float(r["cost"]),
                             None, int(r["attempts"]))
            recs.setdefault(str(r["key"]), []).append((at, ans))
        for v in recs.values():
            v.sort(key=lambda x: x[0])
        return cls(recs, str(path))

    def models(self) -> set[str]:
        """Models that answered in this file."""
        return {a.model for v in self.records.values() for _, a in v}

    def lookup(self, key: str, at: int) -> Answer | None:
        """The answer asked at `at` for `key`; else the latest one asked before; else None."""
        v = self.records.get(key)
        if not v:
            return None
        before = [a for t, a in v if t <= at]
        exact = [a for t, a in v if t == at]
        return exact[-1] if exact else (before[-1] if before else None)

    def exact(self, key: str, at: int) -> Answer | None:
        """The answer asked for `key` at exactly bar close `at`, if recorded."""
        hits = [a for t, a in self.records.get(key, ()) if t == at]
        return hits[-1] if hits else None

    def ask(self, model: str, prompt_version: str) -> Ask:
        """An `ask` that answers from this file (an unrecorded request is `llm_error` not_recorded)."""
        def _ask(req: Request, key: str) -> Answer:
            hit = self.lookup(key, req.at)
            return hit if hit is not None else Answer.failed("not_recorded", model, prompt_version, attempts=0)
        return _ask


def answer_as_dict(ans: Answer) -> dict[str, Any]:
    """Plain dict of an answer (for caches and logs)."""
    return asdict(ans)


def answer_from_dict(d: dict[str, Any]) -> Answer:
    """Inverse of answer_as_dict."""
    return Answer(**d)
