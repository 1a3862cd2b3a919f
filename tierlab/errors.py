"""Errors that say who must act: a human fixes ConfigError/DataError; BrokerError may be retried."""

from __future__ import annotations


class TierlabError(Exception):
    """Base of every error tierlab raises on purpose; CLIs print it as one line."""


class ConfigError(TierlabError, ValueError):
    """A parameter or settings value is wrong; the message names the field and the value."""


class DataError(TierlabError, ValueError):
    """Bad bars or events; the message names the file/symbol, the row or time, and the field."""


class BrokerError(TierlabError):
    """The broker refused or failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
