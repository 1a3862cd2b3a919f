"""Prometheus metrics of one runner, in its own CollectorRegistry (two runners in a process never mix counts).

Names follow the old bot (SPEC §9): signals_generated_total, signals_processed_total,
suppressed_total{reason}, plus orders_total, fills_total, rejects_total and a decision-latency histogram.
The LLM gate's counters (SPEC §7) are read at scrape time from a source (`watch_llm`, live.llm.read_counters
over Redis): llm_calls_total, llm_answers_total, llm_cache_hits_total, llm_skips_total{reason},
llm_tokens_total{direction}, llm_cost_total{currency}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from strategies.llm_gate import LLM_REASONS
from tierlab.log import get_logger

log = get_logger(__name__)


class LlmCollector:
    """Prometheus view of the LLM gate's counters, read from `source()` at every scrape (None: gate off,
    all zero), so the figures are the namespace's totals in Redis whichever process made the calls."""

    def __init__(self, source: Callable[[], dict[str, Any] | None]) -> None:
        self.source = source

    def describe(self) -> list[Any]:
        """No fixed description: the registry must not call `source` at registration."""
        return []

    def collect(self) -> Iterator[Any]:
        """The counter families from one read of the source."""
        try:
            c = self.source() or {}
        except Exception as e:  # Redis down: the other metrics still answer
            log.warning("llm_metrics_unavailable", rule="llm_gate", reason=f"{type(e).__name__}: {e}")
            return
        skips = c.get("skips") or {}
        calls = CounterMetricFamily("llm_calls", "LLM reviews asked (each counts once, retries included)")
        calls.add_metric([], float(c.get("calls", 0)))
        answers = CounterMetricFamily("llm_answers", "LLM calls that returned a valid review")
        answers.add_metric([], float(c.get("answers", 0)))
        hits = CounterMetricFamily("llm_cache_hits", "Identical requests served from the 30-minute cache")
        hits.add_metric([], float(c.get("cache_hits", 0)))
        sk = CounterMetricFamily("llm_skips", "LLM reviews skipped or failed, by SPEC §7 reason", labels=["reason"])
        for reason in LLM_REASONS:
            sk.add_metric([reason], float(skips.get(reason, 0)))
        tok = CounterMetricFamily("llm_tokens", "Tokens used by LLM calls", labels=["direction"])
        tok.add_metric(["in"], float(c.get("tokens_in", 0)))
        tok.add_metric(["out"], float(c.get("tokens_out", 0)))
        cost = CounterMetricFamily("llm_cost", "Money spent on LLM calls (token usage x price table)",
                                   labels=["currency"])
        cost.add_metric([str(c.get("currency") or "USD")], float(c.get("cost", 0.0)))
        yield from (calls, answers, hits, sk, tok, cost)

# bar arrival -> order submitted: the target is p99 < 5 ms on loopback (issue 11, acceptance 7)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RunnerMetrics:
    """Counters and the decision-latency histogram of one runner; `render()` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.signals_generated = Counter("signals_generated", "Evaluations that produced a decision", registry=r)
        self.signals_processed = Counter("signals_processed", "Signals the executor has handled (acked)",
                                         registry=r)
        self.suppressed = Counter("suppressed", "Signals suppressed, by SPEC §4 reason", ["reason"], registry=r)
        self.orders = Counter("orders", "Orders the broker accepted", ["side", "intent"], registry=r)
        self.fills = Counter("fills", "Fills reported by the broker", ["side"], registry=r)
        self.rejects = Counter("rejects", "Orders the broker refused (or the adapter refused to send)",
                               ["reason"], registry=r)
        self.decision_latency = Histogram("decision_latency_seconds", "Bar arrival to order submitted",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.feed_lag = Gauge("feed_lag_seconds", "Seconds since the newest bar closed", registry=r)

    def watch_llm(self, source: Callable[[], dict[str, Any] | None]) -> None:
        """Expose the LLM gate's counters from `source` (e.g. live.llm.read_counters on the runner's Redis)."""
        self.registry.register(LlmCollector(source))

    @contextmanager
    def time_decision(self) -> Iterator[None]:
        """Observe the wall time of the block in the decision-latency histogram."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.decision_latency.observe(time.perf_counter() - t)

    def render(self) -> bytes:
        """The Prometheus text exposition of this runner's registry."""
        return generate_latest(self.registry)
