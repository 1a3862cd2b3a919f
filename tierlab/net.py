"""Loopback-only binding, shared by every server tierlab starts (the paper broker, the status server)."""

from __future__ import annotations

import functools
import ipaddress

from tierlab.errors import ConfigError


def loopback_host(host: str, server: str) -> str:
    """Return `host` if it is a loopback address (localhost -> 127.0.0.1); ConfigError naming it otherwise."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{server} binds to loopback only (127.0.0.1 or ::1); refusing host {host!r}")
    return host


def is_loopback_name(host: str | None) -> bool:
    """True for a loopback address or localhost (a Host or Origin header's host part, brackets allowed)."""
    if not host:
        return False
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def foreign_reason(host: str, origin: str | None) -> str | None:
    """Why a request to a loopback server cannot come from this machine's own clients, None when it can:
    a Host that is not a loopback name (DNS rebinding: a web page's name resolved to 127.0.0.1) or a
    browser's Origin from any other site. `host` is the Host header (port and IPv6 brackets allowed).
    Cached: a server asks on every request, and a client sends the same two headers every time."""
    from urllib.parse import urlsplit

    name = host if host.endswith("]") else host.rsplit(":", 1)[0]
    if not is_loopback_name(name):
        return f"host {host!r} is not a loopback name"
    if origin is not None and not is_loopback_name(urlsplit(origin).hostname):
        return f"origin {origin!r} is not on this machine"
    return None
