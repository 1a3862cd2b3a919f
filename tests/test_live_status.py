"""live.status + live.metrics: the runner's loopback status endpoints, read with an aiohttp client."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import pytest
from kernel_fixtures import strategy

from live.metrics import RunnerMetrics
from live.status import SUMMARY_FIELDS, StatusServer, StatusSnapshot
from tierlab.errors import ConfigError


def _get(url: str) -> tuple[int, str, Any]:
    """GET with an aiohttp client: (status, content type, JSON or text)."""
    async def go() -> tuple[int, str, Any]:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            ctype = r.headers.get("Content-Type", "")
            body = await (r.json() if ctype.startswith("application/json") else r.text())
            return r.status, ctype, body

    return asyncio.run(go())


class Runner:
    """A stand-in for the runner's state: what the snapshot callable reads."""

    def __init__(self) -> None:
        strat = strategy()
        self.summary = strat.risk_summary(strat.new_state(10_000.0))  # the real SPEC §5 summary
        self.redis_ok, self.broker_ok, self.lag = True, True, 3.0
        self.fail: str | None = None
        self.slow = threading.Event()

    def snapshot(self) -> StatusSnapshot:
        if self.fail:
            raise RuntimeError(self.fail)
        if self.slow.is_set():
            time.sleep(1.0)
        return StatusSnapshot(self.redis_ok, self.broker_ok, self.lag, dict(self.summary),
                              info={"mode": "relaxed", "strategy": "tiered"})


@pytest.fixture
def served():
    runner, metrics = Runner(), RunnerMetrics()
    with StatusServer(runner.snapshot, metrics, max_feed_lag_s=60.0, snapshot_timeout_s=0.3) as srv:
        yield runner, metrics, srv


def test_health_reports_redis_broker_and_feed_lag(served) -> None:
    runner, _, srv = served
    status, _, body = _get(srv.url + "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["redis"] == {"ok": True} and body["broker"] == {"ok": True}
    assert body["feed"] == {"ok": True, "lag_s": 3.0, "max_lag_s": 60.0} and body["info"]["mode"] == "relaxed"
    runner.redis_ok = False
    status, _, body = _get(srv.url + "/health")
    assert status == 503 and body["status"] == "degraded" and body["redis"] == {"ok": False}
    runner.redis_ok, runner.lag = True, 95.0  # the feed stalled
    status, _, body = _get(srv.url + "/health")
    assert status == 503 and body["feed"]["ok"] is False
    runner.lag = None  # no bar yet
    assert _get(srv.url + "/health")[0] == 503


def test_portfolio_summary_has_the_spec_fields(served) -> None:
    runner, _, srv = served
    status, ctype, body = _get(srv.url + "/portfolio/summary")
    assert status == 200 and ctype.startswith("application/json")
    assert set(SUMMARY_FIELDS) <= set(body)
    assert body["risk_status"] == "safe" and body["max_risk_pct"] == pytest.approx(2.0)
    assert body["current_risk_pct"] == 0.0 and body["max_positions"] == 4
    runner.summary["current_risk_pct"] = float("inf")  # equity <= 0: JSON has no Infinity
    assert _get(srv.url + "/portfolio/summary")[2]["current_risk_pct"] is None
    del runner.summary["risk_status"]
    status, _, body = _get(srv.url + "/portfolio/summary")
    assert status == 503 and "risk_status" in body["error"]


def test_a_failing_or_slow_snapshot_is_a_503_with_a_reason_never_a_500(served) -> None:
    runner, _, srv = served
    runner.fail = "redis connection lost"
    status, _, body = _get(srv.url + "/health")
    assert status == 503 and "redis connection lost" in body["reason"]
    assert _get(srv.url + "/portfolio/summary")[0] == 503
    runner.fail = None
    runner.slow.set()
    status, _, body = _get(srv.url + "/health")
    assert status == 503 and "longer than" in body["reason"]


def test_metrics_are_prometheus_text_per_runner(served) -> None:
    _, metrics, srv = served
    metrics.signals_generated.inc(7)
    metrics.signals_processed.inc(5)
    metrics.suppressed.labels(reason="cooldown").inc(2)
    metrics.suppressed.labels(reason="token").inc()
    metrics.orders.labels(side="buy", intent="entry").inc()
    metrics.fills.labels(side="buy").inc()
    metrics.rejects.labels(reason="insufficient_buying_power").inc()
    for s in (0.0008, 0.003, 0.004):
        metrics.decision_latency.observe(s)
    with metrics.time_decision():
        pass
    status, ctype, text = _get(srv.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    lines = set(text.splitlines())
    assert {"signals_generated_total 7.0", "signals_processed_total 5.0", 'suppressed_total{reason="cooldown"} 2.0',
            'suppressed_total{reason="token"} 1.0', 'orders_total{intent="entry",side="buy"} 1.0',
            'fills_total{side="buy"} 1.0', 'rejects_total{reason="insufficient_buying_power"} 1.0',
            'decision_latency_seconds_bucket{le="0.001"} 2.0', 'decision_latency_seconds_bucket{le="0.005"} 4.0',
            "decision_latency_seconds_count 4.0"} <= lines
    # a second runner in the same process has its own registry
    assert "signals_generated_total 0.0" in RunnerMetrics().render().decode().splitlines()


def test_status_server_binds_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback only"):
        StatusServer(lambda: None, RunnerMetrics(), host="0.0.0.0")


def test_times_and_decimals_in_a_snapshot_are_json_text_not_a_500(served) -> None:
    """Catches: a runner putting a datetime (session, last bar) or a Decimal in its snapshot turned both
    endpoints into aiohttp's text/plain 500 (json.dumps cannot encode them)."""
    import datetime as dt
    from decimal import Decimal

    runner, _, srv = served
    runner.summary["as_of"] = dt.datetime(2024, 11, 1, 14, 30, tzinfo=dt.UTC)
    runner.summary["cash"] = Decimal("1234.5")
    status, ctype, body = _get(srv.url + "/portfolio/summary")
    assert (status, ctype.split(";")[0]) == (200, "application/json")
    assert (body["as_of"], body["cash"]) == ("2024-11-01T14:30:00+00:00", "1234.5")
    orig = runner.snapshot
    runner.snapshot = lambda: StatusSnapshot(True, True, 3.0, {}, info={"session": dt.date(2024, 11, 1)})
    srv.snapshot = runner.snapshot
    try:
        status, _, body = _get(srv.url + "/health")
        assert status == 200 and body["info"] == {"session": "2024-11-01"}
    finally:
        srv.snapshot = orig


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Origin": "http://evil.example"}])
def test_a_web_page_cannot_read_the_status(served, headers: dict) -> None:
    """No keys guard the status: a page whose name rebinds to 127.0.0.1, or a cross-site fetch, gets a 403."""
    import requests

    _, _, srv = served
    for path in ("/health", "/portfolio/summary", "/metrics"):
        r = requests.get(srv.url + path, headers=headers, timeout=10)
        assert r.status_code == 403 and "forbidden" in r.json()["error"], (path, r.status_code, r.text)
    assert requests.get(srv.url + "/portfolio/summary", headers={"Origin": "http://localhost:3000"},
                        timeout=10).status_code == 200
