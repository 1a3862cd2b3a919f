"""Loopback-only binding, shared by every server tierlab starts (the paper broker, the status server)."""

from __future__ import annotations

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
