"""Alpaca wire formats: JSON order/position/account bodies, error bodies and msgpack bar frames.

Money and quantities are strings in Alpaca's JSON; times are RFC 3339 UTC. Pure functions only.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from typing import TYPE_CHECKING, Any

import msgpack
import pandas as pd

if TYPE_CHECKING:
    from live.sim.engine import SimOrder

# Alpaca's error codes (the JSON body is {"code": ..., "message": ...})
CODE_BAD_REQUEST = 40010001
CODE_UNAUTHORIZED = 40110000
CODE_FORBIDDEN = 40310000
CODE_NOT_FOUND = 40410000
CODE_UNPROCESSABLE = 42210000
CODE_RATE_LIMIT = 42910000
CODE_INTERNAL = 50010000

ACCOUNT_ID = "5c1f4b0e-0000-4000-8000-000000000001"
_ASSET_NS = uuid.UUID("6f1b6c1e-6a39-4c65-9a54-7d3c0a1b2c3d")


@functools.lru_cache(maxsize=1024)
def asset_id(symbol: str) -> str:
    """A stable asset UUID per symbol (the same id on every run)."""
    return str(uuid.uuid5(_ASSET_NS, symbol))


def ts(t: pd.Timestamp | None) -> str | None:
    """RFC 3339 UTC text of a timestamp, or None."""
    if t is None:
        return None
    return _ts(pd.Timestamp(t))


@functools.lru_cache(maxsize=4096)
def _ts(t: pd.Timestamp) -> str:
    # an order's times are a handful of replay instants: formatting each once keeps an order's JSON cheap
    return t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def num(x: float | None, exact: bool = False) -> str | None:
    """A money/quantity field as Alpaca sends it: a decimal string with at most 9 decimals, no float noise.

    0.1 + 0.2 -> "0.3", 10.0 -> "10", 1e-12 -> "0"; None, NaN and infinities -> None (never a crash).
    `exact` (parity replays only) gives the float's shortest round-trip text instead.
    """
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(v):
        return None
    if exact:
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    text = f"{v:.9f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def error_body(code: int, message: str, **extra: Any) -> dict[str, Any]:
    """Alpaca's error JSON: {"code": ..., "message": ..., plus optional detail fields}."""
    return {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}


def order_json(o: SimOrder, nested: bool = True) -> dict[str, Any]:
    """One order as Alpaca's REST and trade_updates payload (legs nested when `nested`)."""
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "created_at": ts(o.created_at),
        "updated_at": ts(o.updated_at),
        "submitted_at": ts(o.submitted_at),
        "filled_at": ts(o.filled_at),
        "expired_at": ts(o.expired_at),
        "canceled_at": ts(o.canceled_at),
        "failed_at": None,
        "replaced_at": ts(o.replaced_at),
        "replaced_by": o.replaced_by,
        "replaces": o.replaces,
        "asset_id": asset_id(o.symbol),
        "symbol": o.symbol,
        "asset_class": "us_equity",
        "notional": num(o.notional),
        "qty": None if (o.notional is not None and o.filled_qty == 0) else num(o.qty),
        "filled_qty": num(o.filled_qty),
        "filled_avg_price": num(o.filled_avg_price, o.exact) if o.filled_qty > 0 else None,
        "order_class": o.order_class,
        "order_type": o.type,
        "type": o.type,
        "side": "buy" if o.side > 0 else "sell",
        "time_in_force": o.tif,
        "limit_price": num(o.limit_price, o.exact),
        "stop_price": num(o.trail_stop if o.type == "trailing_stop" else o.stop_price, o.exact),
        "status": o.status,
        "extended_hours": o.extended_hours,
        "legs": [order_json(leg) for leg in o.legs] if (nested and o.legs) else None,
        "trail_percent": num(o.trail_percent),
        "trail_price": num(o.trail_price),
        "hwm": num(o.hwm),
    }


def bar_json(t_ns: int, o: float, h: float, lo: float, c: float, v: float, n: float | None,
             vw: float | None) -> dict[str, Any]:
    """One bar as /v2/stocks/bars returns it (`t_ns` the bar's start in epoch ns, sent as RFC 3339 UTC)."""
    return {"t": _bar_time(t_ns), "o": o, "h": h, "l": lo, "c": c, "v": v, "n": n, "vw": vw}


@functools.lru_cache(maxsize=4096)
def _bar_time(t_ns: int) -> str:
    # the feed asks for the same few minutes over and over: format each once
    return pd.Timestamp(t_ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def bar_frame(symbol: str, t: pd.Timestamp, o: float, h: float, lo: float, c: float, v: float,
              n: float | None, vw: float | None) -> dict[str, Any]:
    """One minute bar as the market-data websocket sends it (`t` a msgpack Timestamp)."""
    return {"T": "b", "S": symbol, "o": o, "h": h, "l": lo, "c": c, "v": v,
            "t": msgpack.Timestamp.from_unix_nano(int(pd.Timestamp(t).value)), "n": n, "vw": vw}


def pack(msgs: list[dict[str, Any]]) -> bytes:
    """A market-data frame: a msgpack array of messages."""
    return msgpack.packb(msgs, datetime=False)


def dumps(obj: Any) -> str:
    """Compact JSON text."""
    return json.dumps(obj, separators=(",", ":"))
