"""Prometheus metrics of one runner, in its own CollectorRegistry (two runners in a process never mix counts).

Names follow the old bot (SPEC §9): signals_generated_total, signals_processed_total,
suppressed_total{reason}, plus orders_total, fills_total, rejects_total and a decision-latency histogram.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
