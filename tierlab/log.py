"""Structured logging: one event per line as key=value pairs, secrets redacted.

Use `get_logger(__name__).info("suppressed", ticker="NVDA", rule="cooldown", reason="...")`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(secret|api[_-]?key|token|password|authorization)", re.IGNORECASE)
_configured = False


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key != "event" and _SECRET_KEYS.search(key):
            event[key] = "***"
    return event


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of the call (test capture, notebooks, redirects)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str | None = None, stream: Any = None) -> None:
    """Configure structlog once for the process (level from `TIERLAB_LOG_LEVEL`, default INFO)."""
    global _configured
    lvl = getattr(logging, (level or os.environ.get("TIERLAB_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"], sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str) -> Any:
    """Return a structured logger bound to `component=name`."""
    if not _configured:
        configure()
    return structlog.get_logger().bind(component=name)
