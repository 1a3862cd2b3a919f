"""A loopback OpenAI-compatible endpoint for the LLM tests (aiohttp, POST /v1/chat/completions).

It answers like a chat-completions server: a JSON review for the `response_format` it was sent,
with usage. `script` queues faults for the next requests: "timeout", "400", "500", "429",
"not_json", "schema", or "ok". Every request body is kept in `seen`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any

from aiohttp import web


def default_review(body: dict[str, Any]) -> dict[str, Any]:
    """Deterministic review: a long signal is confirmed (bullish 0.8), a short one contradicted (bullish 0.5)."""
    user = body["messages"][-1]["content"]
    return {"direction": "bullish", "confidence": 0.8 if "Signal: long" in user else 0.5,
            "rationale": "deterministic loopback answer"}


class LoopbackLLM:
    """Runs the endpoint on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, slow_s: float = 2.0) -> None:
        self.seen: list[dict[str, Any]] = []
        self.script: deque[str] = deque()
        self.slow_s = slow_s
        self.review = default_review
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        fault = self.script.popleft() if self.script else "ok"
        if fault == "timeout":
            await asyncio.sleep(self.slow_s)
        if fault == "500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if fault == "400":
            return web.json_response({"error": {"message": "unknown model", "type": "invalid_request"}}, status=400)
        if fault == "429":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429)
        content = json.dumps(self.review(body))
        if fault == "not_json":
            content = "Sure! The filing looks bullish to me."
        elif fault == "schema":
            content = json.dumps({"direction": "up", "confidence": 7, "rationale": "x"})
        return web.json_response({
            "id": f"chatcmpl-{len(self.seen)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "x"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
        })

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def start(self) -> LoopbackLLM:
        """Start the server; `base_url` is ready when this returns."""
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        """Shut the server and its loop down."""
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL points at."""
        return f"http://127.0.0.1:{self.port}/v1"


SECRET = "sk-loopback-test-key-do-not-log"


def serve(monkeypatch: Any, slow_s: float = 1.5) -> Any:
    """Fixture body: start the endpoint and point the openai client's env at it (yields the server)."""
    srv = LoopbackLLM(slow_s=slow_s).start()
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("TIERLAB_LLM_MODEL", "gpt-4o-mini")
    try:
        yield srv
    finally:
        srv.stop()
