"""Run the sim: in-process on a background thread (tests, notebooks) or as the CLI's foreground server.

`SimServer(panel).start()` binds 127.0.0.1 (port 0 picks a free one), and `.step(n)` advances the
replay clock from the calling thread; `speed > 0` replays on its own at speed x real time
(60 -> one minute bar per second).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from data.bars import Panel
from live.sim.app import Hub, build_app
from live.sim.assets import AssetFlags
from live.sim.engine import SimConfig, SimEngine, load_fill_kernels
from live.sim.ratelimit import RateLimiter
from tierlab.errors import ConfigError
from tierlab.log import get_logger
from tierlab.net import loopback_host as _loopback_host

log = get_logger(__name__)

DEFAULT_KEY = "tierlab-sim-key"
DEFAULT_SECRET = "tierlab-sim-secret"


def loopback_host(host: str) -> str:
    """Return `host` if it is a loopback address (or localhost); ConfigError naming it otherwise."""
    return _loopback_host(host, "live.sim")


def sim_keys(api_key: str | None = None, secret_key: str | None = None) -> tuple[str, str]:
    """The sim's key pair: explicit values (in-process callers), else SIM_API_KEY/SIM_SECRET_KEY, else the defaults.

    The defaults are published in the README: fit for a sim on loopback, never for anything reachable.
    """
    return (api_key or os.environ.get("SIM_API_KEY") or DEFAULT_KEY,
            secret_key or os.environ.get("SIM_SECRET_KEY") or DEFAULT_SECRET)


class SimServer:
    """An Alpaca-compatible paper broker replaying `panel` on loopback.

    `bars_page_limit` caps one /v2/stocks/bars page (Alpaca: 10,000); a small cap makes clients page.
    """

    def __init__(self, panel: Panel, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 speed: float = 0.0, api_key: str | None = None, secret_key: str | None = None,
                 rate_limit: int = 200, rate_window_s: float = 60.0,
                 clock: Callable[[], float] | None = None, bars_page_limit: int = 10_000,
                 assets: Mapping[str, AssetFlags] | None = None) -> None:
        self.host = loopback_host(host)
        self.port = port
        self.speed = float(speed)
        if self.speed < 0:
            raise ConfigError(f"speed must be >= 0 (0 = step mode), got {speed!r}")
        self.api_key, self.secret_key = sim_keys(api_key, secret_key)
        limiter = RateLimiter(rate_limit, rate_window_s, clock) if clock else RateLimiter(rate_limit, rate_window_s)
        self.engine = SimEngine(panel, config, assets)
        if bars_page_limit < 1:
            raise ConfigError(f"bars_page_limit must be >= 1, got {bars_page_limit!r}")
        self.hub = Hub(self.engine, self.api_key, self.secret_key, limiter, bars_page_limit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()

    # -------------------------------------------------------------- urls
    @property
    def url(self) -> str:
        """Base URL for TradingClient/StockHistoricalDataClient(url_override=...)."""
        return f"http://{self._netloc}"

    @property
    def trade_stream_url(self) -> str:
        """URL for TradingStream(url_override=...)."""
        return f"ws://{self._netloc}/stream"

    @property
    def data_stream_url(self) -> str:
        """URL for StockDataStream(url_override=...)."""
        return f"ws://{self._netloc}/v2/iex"

    @property
    def _netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -------------------------------------------------------------- lifecycle
    async def serve(self) -> None:
        """Serve until `stop()` (the CLI runs this in the foreground)."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        await self._start_site()
        replay = asyncio.create_task(self._replay()) if self.speed > 0 else None
        try:
            await self._stopped.wait()
        finally:
            if replay:
                replay.cancel()
            for ws in [*self.hub.trade_listeners, *self.hub.bar_subs]:
                await ws.close()
            await self._runner.cleanup()

    async def _start_site(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except (OSError, OverflowError) as e:  # port taken, or not a port: one line for the user, no traceback
            sock.close()
            why = getattr(e, "strerror", None) or str(e)
            raise ConfigError(f"live.sim cannot listen on {self._netloc}: {why} (pick another --port, or 0 for a free one)") from None
        self.port = sock.getsockname()[1]
        load_fill_kernels()  # before the port answers: the first fill must not stall the requests behind it
        self._runner = web.AppRunner(build_app(self.hub), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("sim_started", url=self.url, bars=len(self.engine.panel.index),
                 symbols=len(self.engine.panel.symbols), speed=self.speed)

    async def _replay(self) -> None:
        while not self.engine.done:
            await asyncio.sleep(60.0 / self.speed)
            await self.hub.step(1)
        log.info("replay_done", time=str(self.engine.now))

    def start(self) -> SimServer:
        """Start serving on a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                try:
                    self._loop = asyncio.get_running_loop()
                    self._stopped = asyncio.Event()
                    await self._start_site()
                except BaseException as e:
                    error.append(e)
                    ready.set()
                    raise
                ready.set()
                replay = asyncio.create_task(self._replay()) if self.speed > 0 else None
                await self._stopped.wait()
                if replay:
                    replay.cancel()
                for ws in [*self.hub.trade_listeners, *self.hub.bar_subs]:
                    await ws.close()
                await self._runner.cleanup()

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="tierlab-sim", daemon=True)
        self._thread.start()
        ready.wait(30)
        if error:
            raise error[0]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> SimServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------- control from other threads
    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the server's loop (safe access to the engine) and return its result."""
        async def wrapped() -> Any:
            async with self.hub.lock:
                return fn()

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(30)

    def step(self, n: int = 1) -> list[dict[str, Any]]:
        """Advance the replay clock n steps (closing bars, streaming bars and fills)."""
        return asyncio.run_coroutine_threadsafe(self.hub.step(n), self._loop).result(60)

    def inject_fault(self, status: int = 504, *, after_accept: bool = False, count: int = 1) -> None:
        """Make the next `count` POST /v2/orders answer `status`; `after_accept` accepts the order first."""
        self.call(lambda: self.hub.faults.extend([(status, after_accept)] * count))
