"""The runner's HTTP status server on loopback (aiohttp): /health, /portfolio/summary, /metrics.

The runner hands in a `snapshot` callable returning a StatusSnapshot; the server calls it in a worker
thread with a timeout, so a slow or failing snapshot gives a 503 with a reason, never a hang or a 500.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import math
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from live.metrics import RunnerMetrics
from tierlab.log import get_logger
from tierlab.net import foreign_reason, loopback_host

log = get_logger(__name__)

# SPEC §5: the old bot's /portfolio/summary fields
SUMMARY_FIELDS = ("current_risk_pct", "max_risk_pct", "risk_status", "remaining_capacity", "daily_loss_limit",
                  "risk_per_trade", "max_positions", "stop_loss_pct")


@dataclass(frozen=True)
class StatusSnapshot:
    """What the runner reports: service health, feed lag and the SPEC §5 summary (plus anything extra)."""

    redis_ok: bool
    broker_ok: bool
    feed_lag_s: float | None  # seconds since the newest bar closed; None before the first bar
    portfolio: dict[str, Any]  # strategy.risk_summary(state), optionally with positions, P&L, tokens...
    info: dict[str, Any] = field(default_factory=dict)  # mode, strategy, account, session...


def _json_safe(x: Any) -> Any:
    """Non-finite floats become None (JSON has no Infinity/NaN); numpy scalars become Python numbers; times ISO text."""
    if isinstance(x, dt.date | dt.datetime):  # pandas Timestamps too
        return x.isoformat()
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, dt.date | dt.datetime):  # numpy datetime64.item()
        return x.isoformat()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# anything else JSON cannot hold (a Decimal, an enum, a path) is sent as its text, never a 500
_dumps = functools.partial(json.dumps, default=str)



@web.middleware
async def _local_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """The status has no keys: a web page (DNS rebinding, a cross-site fetch) must not read positions."""
    why = foreign_reason(request.host, request.headers.get("Origin"))
    if why is not None:
        log.warning("foreign_request", path=request.path, reason=why)
        return web.json_response({"error": f"forbidden: {why}"}, status=403)
    return await handler(request)

class StatusServer:
    """aiohttp server on loopback serving a runner's snapshot and metrics."""

    def __init__(self, snapshot: Callable[[], StatusSnapshot], metrics: RunnerMetrics, *, host: str = "127.0.0.1",
                 port: int = 0, max_feed_lag_s: float = 120.0, snapshot_timeout_s: float = 2.0) -> None:
        self.snapshot = snapshot
        self.metrics = metrics
        self.host = loopback_host(host, "the status server")
        self.port = port
        self.max_feed_lag_s = float(max_feed_lag_s)
        self.snapshot_timeout_s = float(snapshot_timeout_s)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        """The aiohttp application (routes only; `start` serves it)."""
        app = web.Application(middlewares=[_local_only])
        app.router.add_get("/health", self._health)
        app.router.add_get("/portfolio/summary", self._summary)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _snap(self) -> StatusSnapshot | str:
        """The runner's snapshot, or a one-line reason it could not be had."""
        loop = asyncio.get_running_loop()
        try:
            snap = await asyncio.wait_for(loop.run_in_executor(None, self.snapshot), self.snapshot_timeout_s)
        except TimeoutError:
            return f"snapshot took longer than {self.snapshot_timeout_s:g} s"
        except Exception as e:  # the runner's failure must not become an HTTP 500
            log.warning("status_snapshot_failed", reason=f"{type(e).__name__}: {e}")
            return f"snapshot failed: {type(e).__name__}: {e}"
        if not isinstance(snap, StatusSnapshot):
            return f"snapshot returned {type(snap).__name__}, not StatusSnapshot"
        return snap

    async def _health(self, request: web.Request) -> web.Response:
        snap = await self._snap()
        if isinstance(snap, str):
            return web.json_response({"status": "down", "reason": snap}, status=503)
        lag = snap.feed_lag_s
        feed_ok = lag is not None and lag <= self.max_feed_lag_s
        if lag is not None:
            self.metrics.feed_lag.set(lag)
        body = {
            "status": "ok" if (snap.redis_ok and snap.broker_ok and feed_ok) else "degraded",
            "redis": {"ok": bool(snap.redis_ok)},
            "broker": {"ok": bool(snap.broker_ok)},
            "feed": {"ok": feed_ok, "lag_s": lag, "max_lag_s": self.max_feed_lag_s},
            **({"info": snap.info} if snap.info else {}),
        }
        return web.json_response(_json_safe(body), dumps=_dumps, status=200 if body["status"] == "ok" else 503)

    async def _summary(self, request: web.Request) -> web.Response:
        snap = await self._snap()
        if isinstance(snap, str):
            return web.json_response({"error": snap}, status=503)
        missing = [f for f in SUMMARY_FIELDS if f not in snap.portfolio]
        if missing:
            return web.json_response({"error": f"portfolio summary lacks {', '.join(missing)}"}, status=503)
        return web.json_response(_json_safe(dict(snap.portfolio)), dumps=_dumps)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -------------------------------------------------------------- lifecycle
    async def start_async(self) -> str:
        """Serve on the running loop; returns the URL once the port is bound."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("status_server_started", url=self.url)
        return self.url

    async def stop_async(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> StatusServer:
        """Serve on a daemon thread of its own (for a runner without an event loop); returns once bound."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stopped = asyncio.Event()
                try:
                    await self.start_async()
                except BaseException as e:
                    errors.append(e)
                    ready.set()
                    raise
                ready.set()
                await self._stopped.wait()
                await self.stop_async()

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="tierlab-status", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop the thread started by `start`."""
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
