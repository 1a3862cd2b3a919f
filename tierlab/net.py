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
