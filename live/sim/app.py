"""The sim's aiohttp app: Alpaca's trading REST, /v2/stocks/bars, trade_updates and market-data websockets.

Bound to loopback only. Every REST route (and a stream path asked for without a websocket
upgrade) needs the APCA-API-KEY-ID / APCA-API-SECRET-KEY headers: missing or wrong keys get
Alpaca's 401 {"code": 40110000, "message": "request is not authorized"}. The two websocket
routes authenticate with their first message, as Alpaca's streams do; an Upgrade header on any
other path changes nothing. 200 requests/min per key (429 with X-Ratelimit-* headers); control
endpoints under /sim/ (step, state) skip the rate limit. Every error is Alpaca's JSON
{"code", "message"}: bad client input a 400/422 naming the parameter, a sim bug a short 500
(never an HTML page).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import json
from collections import deque
from typing import Any

import msgpack
import numpy as np
import pandas as pd
from aiohttp import WSMsgType, web

from data.calendar import calendar as xnys_calendar
from live.sim import wire
from live.sim.engine import SimEngine, SimReject
from live.sim.ratelimit import RateLimiter
from tierlab.log import get_logger
from tierlab.net import foreign_reason

log = get_logger(__name__)

ENGINE = web.AppKey("engine", SimEngine)
HUB = web.AppKey("hub", "Hub")
REQ_SYMBOL = web.RequestKey("symbol", str)
REQ_CID = web.RequestKey("cid", str)
BAR_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
                "corrections", "cancelErrors")


class Hub:
    """Shared app state: keys, rate limiter, websocket subscribers, injected faults."""

    def __init__(self, engine: SimEngine, api_key: str, secret_key: str, limiter: RateLimiter,
                 bars_page_limit: int = 10_000) -> None:
        self.engine = engine
        self.bars_page_limit = int(bars_page_limit)  # Alpaca's largest /v2/stocks/bars page
        self.api_key = api_key
        self.secret_key = secret_key
        self.limiter = limiter
        self.trade_listeners: set[web.WebSocketResponse] = set()
        engine.stream_events = False  # until a trade_updates listener subscribes
        self.bar_subs: dict[web.WebSocketResponse, set[str]] = {}
        self.faults: deque[tuple[int, bool]] = deque()
        self.lock = asyncio.Lock()
        self.created_at = wire.ts(engine.panel.index[0])  # the account's opening: the replay's first bar

    def keys_ok(self, key: object, secret: object) -> bool:
        """Constant-time check of a key pair (any text, non-ASCII or not a string at all, is simply wrong)."""
        if not (isinstance(key, str) and isinstance(secret, str) and key and secret):
            return False
        enc = lambda s: s.encode("utf-8", "surrogatepass")  # noqa: E731 (compare_digest refuses non-ASCII str)
        return hmac.compare_digest(enc(key), enc(self.api_key)) & hmac.compare_digest(enc(secret), enc(self.secret_key))

    async def flush(self) -> None:
        """Send pending trade updates and closed bars to the websocket subscribers."""
        events, bars = self.engine.drain()
        self.engine.stream_events = bool(self.trade_listeners)  # no listener: no trade_updates payloads to build
        for data in events:
            frame = json.dumps({"stream": "trade_updates", "data": data}).encode()
            for ws in list(self.trade_listeners):
                await _safe_send(ws, frame, self.trade_listeners)
        if bars:
            for ws, syms in list(self.bar_subs.items()):
                msgs = [wire.bar_frame(b["symbol"], b["t"], b["o"], b["h"], b["l"], b["c"], b["v"], b["n"], b["vw"])
                        for b in bars if "*" in syms or b["symbol"] in syms]
                if msgs:
                    await _safe_send(ws, wire.pack(msgs), self.bar_subs)

    async def step(self, n: int = 1) -> list[dict[str, Any]]:
        """Advance the replay clock n times, streaming what happened after each step."""
        out = []
        async with self.lock:
            for _ in range(n):
                info = self.engine.step()
                await self.flush()
                out.append({"bar": info.bar, "time": wire.ts(info.time), "done": info.done})
                if info.done:
                    break
        return out


async def _safe_send(ws: web.WebSocketResponse, frame: bytes, registry: Any) -> None:
    try:
        await ws.send_bytes(frame)
    except (ConnectionError, RuntimeError):
        registry.discard(ws) if isinstance(registry, set) else registry.pop(ws, None)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=wire.dumps)


_CODES = {400: wire.CODE_BAD_REQUEST, 401: wire.CODE_UNAUTHORIZED, 403: wire.CODE_FORBIDDEN,
          404: wire.CODE_NOT_FOUND, 422: wire.CODE_UNPROCESSABLE, 429: wire.CODE_RATE_LIMIT}


def _is_stream(request: web.Request) -> bool:
    """True for a websocket upgrade on one of the two stream routes (they authenticate by message)."""
    route = request.match_info.route
    return (getattr(route, "handler", None) in (trade_stream, data_stream) and request.method == "GET"
            and request.headers.get("Upgrade", "").lower() == "websocket")


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answers Alpaca-style JSON: aiohttp's own 404/405/413 and any unexpected exception (500)."""
    if _is_stream(request):
        return await handler(request)  # a prepared websocket cannot turn into a JSON answer
    try:
        return await handler(request)
    except SimReject as e:
        return _json(e.body, e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json(wire.error_body(_CODES.get(e.status, e.status * 100_000), e.reason.lower()), e.status)
    except Exception as e:  # a sim bug, not the client's: say so briefly, log the rest
        log.error("sim_internal_error", path=request.path, method=request.method, reason=type(e).__name__,
                  exc_info=True)
        return _json(wire.error_body(wire.CODE_INTERNAL, f"internal error ({type(e).__name__})"), 500)


def _bad(name: str, value: Any, why: str = "") -> SimReject:
    """A 400 naming the bad query parameter or body."""
    return SimReject(400, wire.CODE_BAD_REQUEST, f"invalid {name}: {value!r}{' (' + why + ')' if why else ''}")


def _q_int(q: Any, name: str, default: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _bad(name, raw, "expected an integer") from None


def _q_float(q: Any, name: str) -> float | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if v != v or v in (float("inf"), float("-inf")):
        raise _bad(name, raw, "expected a number")
    return v


def _q_time(q: Any, name: str) -> pd.Timestamp | None:
    raw = q.get(name)
    if not raw:
        return None
    t = _parse_time(raw)
    if t is None:
        raise _bad(name, raw, "expected an RFC 3339 time or a date between 1678 and 2261")
    return t


@functools.lru_cache(maxsize=256)
def _parse_time(raw: str) -> pd.Timestamp | None:
    """A query time, or None when it is not one (cached: a feed sends the same minute for every request)."""
    try:
        t = pd.Timestamp(raw).as_unit("ns")  # ns: years 1678..2261 (1500-01-01 parsed, then broke comparisons: 500)
    except (ValueError, TypeError, OverflowError):  # OutOfBoundsDatetime is a ValueError
        return None
    return None if pd.isna(t) else t


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or Alpaca's 400 for a body that is not one."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        body = None
    if not isinstance(body, dict):
        raise SimReject(400, wire.CODE_BAD_REQUEST, "request body format is invalid: expected a JSON object")
    return body


@web.middleware
async def _auth_and_rate(request: web.Request, handler: Any) -> web.StreamResponse:
    hub: Hub = request.app[HUB]
    path = request.path
    why = foreign_reason(request.host, request.headers.get("Origin"))
    if why is not None:  # checked before anything else, websocket upgrades included
        log.warning("foreign_request", path=path, method=request.method, reason=why)
        return _json(wire.error_body(wire.CODE_FORBIDDEN, f"forbidden: {why}"), 403)
    if _is_stream(request):
        return await handler(request)  # the streams authenticate with their first message
    key = request.headers.get("APCA-API-KEY-ID")
    secret = request.headers.get("APCA-API-SECRET-KEY")
    if not hub.keys_ok(key, secret):  # missing or wrong: Alpaca answers 401 either way
        log.warning("unauthorized", path=path, method=request.method, reason="missing keys" if not (key and secret)
                    else "wrong keys")
        return _json(wire.error_body(wire.CODE_UNAUTHORIZED, "request is not authorized"), 401)
    if path.startswith("/sim/"):
        return await handler(request)
    decision = hub.limiter.hit(key)
    if not decision.allowed:
        log.warning("rate_limited", path=path, reason="429", remaining=0, reset=decision.reset)
        resp: web.StreamResponse = _json(wire.error_body(wire.CODE_RATE_LIMIT, "rate limit exceeded"), 429)
    else:
        fault = hub.faults.popleft() if (hub.faults and request.method == "POST" and path == "/v2/orders") else None
        if fault is not None and not fault[1]:
            resp = _json(wire.error_body(wire.CODE_INTERNAL, "injected fault"), fault[0])
        else:
            async with hub.lock:
                try:
                    resp = await handler(request)
                except SimReject as e:
                    resp = _json(e.body, e.status)
                    if REQ_SYMBOL in request:  # a new order refused
                        log.info("order_rejected", ticker=request[REQ_SYMBOL], client_order_id=request.get(REQ_CID),
                                 status=e.status, reason=e.body["message"])
                    else:  # a cancel or replace refused; a lookup's 4xx (a flat symbol's position) is routine
                        (log.debug if request.method == "GET" else log.info)(
                            "request_refused", method=request.method, path=path, status=e.status,
                            reason=e.body["message"])
                await hub.flush()
            if fault is not None:  # accepted, but the answer is lost on the way back
                resp = _json(wire.error_body(wire.CODE_INTERNAL, "injected fault after accept"), fault[0])
    resp.headers.update(decision.headers())
    return resp


# ------------------------------------------------------------------ trading REST
async def account(request: web.Request) -> web.Response:
    """GET /v2/account: a margin account by default (multiplier 2, or 4 at >= $25,000), or a cash account."""
    e = request.app[ENGINE]
    eq = e.equity()

    def money(x: float) -> str | None:
        return wire.num(round(x, 2))

    bp = money(max(e.buying_power(), 0.0))
    return _json({
        "id": wire.ACCOUNT_ID, "account_number": "PA-TIERLAB-SIM", "status": "ACTIVE",
        "crypto_status": "INACTIVE", "currency": "USD", "buying_power": bp,
        "regt_buying_power": money(max(e.regt_buying_power(), 0.0)),
        "daytrading_buying_power": money(max(e.daytrading_buying_power(), 0.0)),
        "non_marginable_buying_power": money(max(e.non_marginable_buying_power(), 0.0)),
        "effective_buying_power": bp,
        "cash": money(e.cash), "accrued_fees": "0", "portfolio_value": money(eq), "equity": money(eq),
        "last_equity": money(e.last_equity), "long_market_value": money(e.long_market_value()),
        "short_market_value": money(e.short_market_value()), "position_market_value": money(e.market_value()),
        "initial_margin": money(e.initial_margin()), "maintenance_margin": money(e.maintenance_margin()),
        "last_maintenance_margin": money(e.last_maintenance_margin), "sma": "0",
        "multiplier": str(e.multiplier), "shorting_enabled": e.shorting_enabled, "trading_blocked": False,
        "transfers_blocked": False, "account_blocked": False, "trade_suspended_by_user": False,
        "pattern_day_trader": False, "daytrade_count": 0, "options_trading_level": 0,
        "created_at": request.app[HUB].created_at,
    })


async def clock(request: web.Request) -> web.Response:
    """GET /v2/clock: replay time; open means inside a replayed session."""
    e = request.app[ENGINE]
    return _json(_clock_body(e.now, e.is_open))


@functools.lru_cache(maxsize=8)
def _clock_body(now: pd.Timestamp, is_open: bool) -> dict[str, Any]:
    """GET /v2/clock's answer at one replay instant (the client polls it; the calendar lookups are slow)."""
    cal = xnys_calendar()
    return {"timestamp": now.tz_convert("America/New_York").isoformat(), "is_open": is_open,
            "next_open": cal.next_open(now).tz_convert("America/New_York").isoformat(),
            "next_close": cal.next_close(now).tz_convert("America/New_York").isoformat()}


async def calendar(request: web.Request) -> web.Response:
    """GET /v2/calendar?start=&end=: XNYS sessions with New York open/close times."""
    e = request.app[ENGINE]
    cal = xnys_calendar()
    start = _q_time(request.query, "start") or pd.Timestamp(e.now.date())
    end = _q_time(request.query, "end") or start + pd.Timedelta(days=30)
    start, end = (t.tz_convert(None) if t.tz is not None else t for t in (start, end))
    start, end = max(start.normalize(), cal.first_session), min(end.normalize(), cal.last_session)
    out = []
    for s in cal.sessions_in_range(start, end) if start <= end else []:
        o = cal.session_open(s).tz_convert("America/New_York")
        c = cal.session_close(s).tz_convert("America/New_York")
        out.append({"date": s.strftime("%Y-%m-%d"), "open": o.strftime("%H:%M"), "close": c.strftime("%H:%M"),
                    "session_open": "0400", "session_close": "2000", "settlement_date": s.strftime("%Y-%m-%d")})
    return _json(out)


def _asset(e: SimEngine, symbol: str) -> dict[str, Any]:
    f = e.flags(symbol)
    return {"id": wire.asset_id(symbol), "class": "us_equity", "exchange": f.exchange, "symbol": symbol,
            "name": symbol, "status": "active", "tradable": True, "marginable": f.marginable,
            "shortable": f.shortable, "easy_to_borrow": f.easy_to_borrow, "fractionable": f.fractionable,
            "maintenance_margin_requirement": 30 if f.leverage == 1 else {2: 60, 3: 90}.get(f.leverage, 100),
            "attributes": []}


async def assets(request: web.Request) -> web.Response:
    """GET /v2/assets: the replayed symbols with their flags from live.sim.assets."""
    e = request.app[ENGINE]
    return _json([_asset(e, s) for s in e.panel.symbols])


async def asset(request: web.Request) -> web.Response:
    """GET /v2/assets/{symbol}."""
    sym = request.match_info["symbol"].upper()
    if sym not in request.app[ENGINE].panel.symbols:
        raise SimReject(404, wire.CODE_NOT_FOUND, "asset not found")
    return _json(_asset(request.app[ENGINE], sym))


def _position(e: SimEngine, sym: str) -> dict[str, Any]:
    h = e.holdings[sym]
    px = e.quote(sym)
    last = float(e.lastday_close[e.panel.symbols.index(sym)])
    last = px if last != last else last
    mv, avg = h.qty * px, h.cost / h.qty
    pl = mv - h.cost
    plpc = pl / abs(h.cost) if h.cost else 0.0
    avail = e.available_qty(sym) if h.qty > 0 else -e._cover_available(sym)
    return {
        "asset_id": wire.asset_id(sym), "symbol": sym, "exchange": e.flags(sym).exchange, "asset_class": "us_equity",
        "asset_marginable": e.flags(sym).marginable, "avg_entry_price": wire.num(avg), "qty": wire.num(h.qty),
        "side": "long" if h.qty > 0 else "short", "market_value": wire.num(mv), "cost_basis": wire.num(h.cost),
        "unrealized_pl": wire.num(pl), "unrealized_plpc": wire.num(plpc),
        "unrealized_intraday_pl": wire.num(pl), "unrealized_intraday_plpc": wire.num(plpc),
        "current_price": wire.num(px), "lastday_price": wire.num(last),
        "change_today": wire.num(px / last - 1.0 if last else 0.0),
        "qty_available": wire.num(max(avail, 0.0) if h.qty > 0 else min(avail, 0.0)),
    }


async def positions(request: web.Request) -> web.Response:
    """GET /v2/positions."""
    e = request.app[ENGINE]
    return _json([_position(e, s) for s in sorted(e.holdings)])


async def position(request: web.Request) -> web.Response:
    """GET /v2/positions/{symbol}: 404 when flat."""
    e = request.app[ENGINE]
    sym = request.match_info["symbol"].upper()
    if sym not in e.holdings:
        raise SimReject(404, wire.CODE_NOT_FOUND, "position does not exist")
    return _json(_position(e, sym))


async def close_position(request: web.Request) -> web.Response:
    """DELETE /v2/positions/{symbol}?qty=|percentage=: a market sell order."""
    q = request.query
    o = request.app[ENGINE].close_position(request.match_info["symbol"], _q_float(q, "qty"),
                                           _q_float(q, "percentage"))
    return _json(wire.order_json(o))


async def close_all_positions(request: web.Request) -> web.Response:
    """DELETE /v2/positions?cancel_orders=true: one market sell per position (207 multi-status)."""
    e = request.app[ENGINE]
    if request.query.get("cancel_orders", "").lower() == "true":
        e.cancel_all()
    out = []
    for sym in sorted(e.holdings):
        try:
            o = e.close_position(sym)
            out.append({"symbol": sym, "status": 200, "order_id": o.id, "body": wire.order_json(o)})
        except SimReject as err:
            out.append({"symbol": sym, "status": err.status, "body": {**err.body, "symbol": sym}})
    return _json(out, 207)


async def submit_order(request: web.Request) -> web.Response:
    """POST /v2/orders."""
    body = await _json_body(request)
    request[REQ_SYMBOL], request[REQ_CID] = body.get("symbol"), body.get("client_order_id")
    return _json(wire.order_json(request.app[ENGINE].submit(body)))


def _open_filter(status: str, o: Any) -> bool:
    return status == "all" or (status == "open") == o.is_open


async def list_orders(request: web.Request) -> web.Response:
    """GET /v2/orders?status=open|closed|all&limit=&after=&until=&direction=&nested=&side=&symbols=."""
    e = request.app[ENGINE]
    q = request.query
    status = q.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid status: {status!r} (open, closed or all)")
    nested = q.get("nested", "").lower() == "true"
    limit = _q_int(q, "limit", 50)
    if limit < 1:  # a slice by 0 or a negative number would silently drop orders from the answer
        raise _bad("limit", q.get("limit"), "1 to 500")
    limit = min(limit, 500)
    direction = q.get("direction", "desc")
    if direction not in ("asc", "desc"):
        raise _bad("direction", direction, "asc or desc")
    syms = {s.strip().upper() for s in q["symbols"].split(",")} if q.get("symbols") else None
    after, until = _q_time(q, "after"), _q_time(q, "until")
    rows = []
    for o in (e.open_orders() if status == "open" else e.orders.values()):  # the same orders, in the same order
        if nested and o.parent is not None:
            continue
        if not _open_filter(status, o) or (syms and o.symbol not in syms):
            continue
        if q.get("side") and ("buy" if o.side > 0 else "sell") != q["side"]:
            continue
        if (after is not None and o.created_at <= _utc(after)) or (until is not None and o.created_at >= _utc(until)):
            continue
        rows.append(o)
    if direction == "desc":
        rows.reverse()
    return _json([wire.order_json(o, nested=nested) for o in rows[:limit]])


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


async def get_order(request: web.Request) -> web.Response:
    """GET /v2/orders/{id}."""
    return _json(wire.order_json(request.app[ENGINE].get(request.match_info["order_id"])))


async def get_order_by_client_id(request: web.Request) -> web.Response:
    """GET /v2/orders:by_client_order_id?client_order_id=."""
    return _json(wire.order_json(request.app[ENGINE].get_by_client_id(request.query.get("client_order_id", ""))))


async def replace_order(request: web.Request) -> web.Response:
    """PATCH /v2/orders/{id}."""
    body = await _json_body(request)
    return _json(wire.order_json(request.app[ENGINE].replace(request.match_info["order_id"], body)))


async def cancel_order(request: web.Request) -> web.Response:
    """DELETE /v2/orders/{id}: 204."""
    request.app[ENGINE].cancel(request.match_info["order_id"])
    return web.Response(status=204)


async def cancel_all(request: web.Request) -> web.Response:
    """DELETE /v2/orders: 207 with one entry per canceled order."""
    return _json(request.app[ENGINE].cancel_all(), 207)


# ------------------------------------------------------------------ activities and portfolio history
ACTIVITY_TYPES = ("FILL", "FEE", "CSD")  # the kinds the sim produces; any other known kind lists empty
_KNOWN_ACTIVITY_TYPES = frozenset({"FILL", "TRANS", "MISC", "ACATC", "ACATS", "CFEE", "CIL", "CSD", "CSW", "DIV",
                                   "DIVCGL", "DIVCGS", "DIVFEE", "DIVFT", "DIVNRA", "DIVROC", "DIVTW", "DIVTXEX",
                                   "FEE", "INT", "INTNRA", "INTTW", "JNL", "JNLC", "JNLS", "MA", "NC", "OPASN",
                                   "OPEXP", "OPXRC", "PTC", "PTR", "REORG", "SC", "SSO", "SSP", "SPLIT"})


async def activities(request: web.Request) -> web.Response:
    """GET /v2/account/activities[/{activity_type}]: FILL, FEE and CSD entries, newest first, paged by id."""
    e = request.app[ENGINE]
    q = request.query
    kinds = request.match_info.get("activity_type") or q.get("activity_types") or q.get("activity_type") or ""
    wanted = {k.strip().upper() for k in kinds.split(",") if k.strip()}
    unknown = sorted(wanted - _KNOWN_ACTIVITY_TYPES)
    if unknown:
        raise SimReject(422, wire.CODE_BAD_REQUEST, f"invalid activity type: {unknown[0]}")
    direction = q.get("direction", "desc")
    if direction not in ("asc", "desc"):
        raise _bad("direction", direction, "asc or desc")
    page_size = _q_int(q, "page_size", 100)
    if not 1 <= page_size <= 100:
        raise _bad("page_size", q.get("page_size"), "1 to 100")
    date, after, until = _q_time(q, "date"), _q_time(q, "after"), _q_time(q, "until")
    rows = [a for a in e.activities if not wanted or a["activity_type"] in wanted]
    if date is not None:
        day = (date.tz_convert("America/New_York") if date.tz is not None else date).strftime("%Y-%m-%d")
        rows = [a for a in rows if _activity_day(a) == day]
    if after is not None:
        rows = [a for a in rows if a["_t"] > _utc(after)]
    if until is not None:
        rows = [a for a in rows if a["_t"] < _utc(until)]
    if direction == "desc":
        rows = rows[::-1]
    token = q.get("page_token")
    if token:
        ids = [a["id"] for a in rows]
        if token not in ids:
            raise _bad("page_token", token, "not an activity id of this query")
        rows = rows[ids.index(token) + 1:]
    return _json([{k: v for k, v in a.items() if k != "_t"} for a in rows[:page_size]])


def _activity_day(a: dict[str, Any]) -> str:
    return a.get("date") or a["_t"].tz_convert("America/New_York").strftime("%Y-%m-%d")


_PERIOD_UNITS = {"D": "days", "W": "weeks", "M": "months", "A": "years"}
_TIMEFRAMES = {"1Min": "1min", "5Min": "5min", "15Min": "15min", "1H": "1h", "1D": "1D"}


async def portfolio_history(request: web.Request) -> web.Response:
    """GET /v2/account/portfolio/history: equity at each closed bar, bucketed by timeframe over a period."""
    e = request.app[ENGINE]
    q = request.query
    period = q.get("period") or "1M"
    unit = period[-1:].upper()
    if unit not in _PERIOD_UNITS or not period[:-1].isdigit() or not 0 < int(period[:-1]) <= 1000:
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid period: {period!r} (a number and D, W, M or A)")
    span = pd.DateOffset(**{_PERIOD_UNITS[unit]: int(period[:-1])})
    days = {"D": 1, "W": 7, "M": 30, "A": 365}[unit] * int(period[:-1])
    timeframe = q.get("timeframe") or ("1Min" if days < 7 else "15Min" if days < 30 else "1D")
    if timeframe not in _TIMEFRAMES:
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid timeframe: {timeframe!r} (1Min, 5Min, 15Min, 1H or 1D)")
    start, end = _q_time(q, "start"), _q_time(q, "end")
    date_end = _q_time(q, "date_end")
    if end is None and date_end is not None:
        end = pd.Timestamp(date_end.strftime("%Y-%m-%d"), tz="America/New_York") + pd.Timedelta(days=1)
    end = _utc(end) if end is not None else e.now
    if start is None:
        try:
            start = end - span
        except (OverflowError, ValueError):  # a period reaching before 1678 (400A): the whole replay
            start = min(e.panel.index[0], end)
    start = _utc(start)
    if start > end:
        raise SimReject(422, wire.CODE_UNPROCESSABLE, "start must be before end")
    points = [(t, v) for t, v in e.history if start <= t < end]
    before = [v for t, v in e.history if t < start]
    base = before[-1] if before else e.start_equity
    buckets: dict[pd.Timestamp, float] = {}
    for t, v in points:
        if timeframe == "1D":
            key = pd.Timestamp(t.tz_convert("America/New_York").date(), tz="America/New_York")
        else:
            key = t.floor(_TIMEFRAMES[timeframe])
        buckets[key] = v  # the equity at the end of each window, labelled by its start
    stamps = sorted(buckets)
    equity = [round(buckets[k], 2) for k in stamps]
    return _json({"timestamp": [int(k.timestamp()) for k in stamps], "equity": equity,
                  "profit_loss": [round(v - base, 2) for v in equity],
                  "profit_loss_pct": [round((v - base) / base, 6) if base else 0.0 for v in equity],
                  "base_value": round(base, 2), "timeframe": timeframe, "cashflow": {}})


# ------------------------------------------------------------------ market data REST
async def stock_bars(request: web.Request) -> web.Response:
    """GET /v2/stocks/bars: closed 1Min bars only (never a bar from the replay's future), paginated."""
    e = request.app[ENGINE]
    q = request.query
    if q.get("timeframe", "1Min") not in ("1Min", "1T"):
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"the sim serves 1Min bars only, got {q.get('timeframe')!r}")
    syms = sorted({s.strip().upper() for s in q.get("symbols", "").split(",") if s.strip()})
    unknown = [s for s in syms if s not in e.panel.symbols]
    if not syms or unknown:
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid symbol(s): {','.join(unknown) or '(none)'}")
    hub: Hub = request.app[HUB]
    limit = max(1, min(_q_int(q, "limit", 1000), hub.bars_page_limit))
    closed = e.bar_ns[: e.k]  # the starts of the closed bars, epoch ns
    start, end = _q_time(q, "start"), _q_time(q, "end")
    lo = 0 if start is None else int(closed.searchsorted(_utc(start).value, "left"))
    hi = len(closed) if end is None else int(closed.searchsorted(_utc(end).value, "right"))
    p = e.panel
    has = ~np.isnan(p.close[lo:hi, [p.symbols.index(s) for s in syms]].T)  # (symbol, bar): the bars that exist
    items = [(syms[a], lo + b) for a, b in zip(*(x.tolist() for x in np.nonzero(has)), strict=True)]
    start_at = 0
    if q.get("page_token"):
        start_at = _page_start(q["page_token"], items)
    page = items[start_at : start_at + limit]
    rows, cols = [i for _, i in page], [p.symbols.index(s) for s, _ in page]
    fields = [[None] * len(page) if x is None else x[rows, cols].tolist()  # the page's values, one read per field
              for x in (p.open, p.high, p.low, p.close, p.volume, p.trade_count, p.vwap)]
    out: dict[str, list[dict[str, Any]]] = {}
    for (s, _), t, *values in zip(page, closed[rows].tolist(), *fields, strict=True):
        out.setdefault(s, []).append(wire.bar_json(t, *values))
    nxt = items[start_at + limit] if start_at + limit < len(items) else None
    token = base64.urlsafe_b64encode(f"{nxt[0]}:{nxt[1]}".encode()).decode() if nxt else None
    return _json({"bars": out, "next_page_token": token})


def _page_start(token: str, items: list[tuple[str, int]]) -> int:
    """Where a next_page_token points in `items`; 400 naming page_token when it is not one of ours."""
    try:
        sym, i = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return items.index((sym, int(i)))
    except (binascii.Error, UnicodeError, ValueError):
        raise _bad("page_token", token, "not a next_page_token of this query") from None


# ------------------------------------------------------------------ websockets
async def trade_stream(request: web.Request) -> web.WebSocketResponse:
    """The trade_updates stream: JSON authenticate, then listen; frames are binary JSON as Alpaca's paper API."""
    hub: Hub = request.app[HUB]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    authed = False
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        try:
            m = json.loads(msg.data)
        except (ValueError, TypeError, RecursionError):
            m = None
        if not isinstance(m, dict) or not isinstance(m.get("data") or {}, dict):
            await ws.send_bytes(json.dumps({"stream": "error", "data": {"error_message": "invalid json"}}).encode())
            continue
        data = m.get("data") or {}
        if m.get("action") in ("authenticate", "auth"):
            authed = hub.keys_ok(data.get("key_id"), data.get("secret_key"))
            await ws.send_bytes(json.dumps({"stream": "authorization", "data": {
                "action": "authenticate", "status": "authorized" if authed else "unauthorized"}}).encode())
            if not authed:
                await ws.close()
                break
        elif m.get("action") == "listen":
            if not authed:
                await ws.send_bytes(json.dumps({"stream": "authorization", "data": {
                    "action": "listen", "status": "unauthorized"}}).encode())
                continue
            streams = [s for s in (data.get("streams") or []) if s == "trade_updates"]
            if streams:
                hub.trade_listeners.add(ws)
            else:
                hub.trade_listeners.discard(ws)
            hub.engine.stream_events = bool(hub.trade_listeners)
            await ws.send_bytes(json.dumps({"stream": "listening", "data": {"streams": streams}}).encode())
    hub.trade_listeners.discard(ws)
    return ws


async def data_stream(request: web.Request) -> web.WebSocketResponse:
    """The market-data stream (/v2/iex or /v2/sip): msgpack connected -> auth -> subscribe -> bars."""
    hub: Hub = request.app[HUB]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_bytes(wire.pack([{"T": "success", "msg": "connected"}]))
    authed = False
    subs: dict[str, set[str]] = {c: set() for c in BAR_CHANNELS}
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        try:
            m = msgpack.unpackb(msg.data) if msg.type == WSMsgType.BINARY else json.loads(msg.data)
        except Exception:
            m = None
        if not isinstance(m, dict):
            await ws.send_bytes(wire.pack([{"T": "error", "code": 400, "msg": "invalid syntax"}]))
            continue
        action = m.get("action")
        if action == "auth":
            authed = hub.keys_ok(m.get("key"), m.get("secret"))
            if not authed:
                await ws.send_bytes(wire.pack([{"T": "error", "code": 402, "msg": "auth failed"}]))
                await ws.close()
                break
            await ws.send_bytes(wire.pack([{"T": "success", "msg": "authenticated"}]))
        elif action in ("subscribe", "unsubscribe"):
            if not authed:
                await ws.send_bytes(wire.pack([{"T": "error", "code": 401, "msg": "not authenticated"}]))
                continue
            for ch in BAR_CHANNELS:
                got = m.get(ch) or []
                syms = {x for x in got if isinstance(x, str)} if isinstance(got, list) else set()
                subs[ch] = subs[ch] | syms if action == "subscribe" else subs[ch] - syms
            hub.bar_subs[ws] = subs["bars"]
            await ws.send_bytes(wire.pack([{"T": "subscription", **{c: sorted(v) for c, v in subs.items()}}]))
    hub.bar_subs.pop(ws, None)
    return ws


# ------------------------------------------------------------------ control
async def sim_step(request: web.Request) -> web.Response:
    """POST /sim/step?n=1: advance the replay clock (step mode)."""
    n = _q_int(request.query, "n", 1)
    return _json({"steps": await request.app[HUB].step(n)})


async def sim_state(request: web.Request) -> web.Response:
    """GET /sim/state: replay position and account totals."""
    e = request.app[ENGINE]
    return _json({"bar": e.k, "bars": len(e.panel.index), "time": wire.ts(e.now), "is_open": e.is_open,
                  "done": e.done, "cash": e.cash, "equity": e.equity(), "rate_limited": request.app[HUB].limiter.rejected})


def build_app(hub: Hub) -> web.Application:
    """The aiohttp application serving one engine."""
    app = web.Application(middlewares=[_json_errors, _auth_and_rate])
    app[ENGINE] = hub.engine
    app[HUB] = hub
    r = app.router
    r.add_get("/v2/account", account)
    r.add_get("/v2/account/activities", activities)
    r.add_get("/v2/account/activities/{activity_type}", activities)
    r.add_get("/v2/account/portfolio/history", portfolio_history)
    r.add_get("/v2/clock", clock)
    r.add_get("/v2/calendar", calendar)
    r.add_get("/v2/assets", assets)
    r.add_get("/v2/assets/{symbol}", asset)
    r.add_get("/v2/positions", positions)
    r.add_delete("/v2/positions", close_all_positions)
    r.add_get("/v2/positions/{symbol}", position)
    r.add_delete("/v2/positions/{symbol}", close_position)
    r.add_post("/v2/orders", submit_order)
    r.add_get("/v2/orders", list_orders)
    r.add_delete("/v2/orders", cancel_all)
    r.add_get("/v2/orders:by_client_order_id", get_order_by_client_id)
    r.add_get("/v2/orders/{order_id}", get_order)
    r.add_patch("/v2/orders/{order_id}", replace_order)
    r.add_delete("/v2/orders/{order_id}", cancel_order)
    r.add_get("/v2/stocks/bars", stock_bars)
    r.add_get("/stream", trade_stream)
    r.add_get("/v2/{feed:iex|sip|test}", data_stream)
    r.add_post("/sim/step", sim_step)
    r.add_get("/sim/state", sim_state)
    return app
