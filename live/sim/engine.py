"""The paper broker's state: replay clock, orders, fills, positions and cash.

Pure Python over a `data.bars.Panel`; every fill price comes from strategies/fills.py (the one
fill model the backtest uses). Timing: bars [0, k) have closed and `now` is the close of bar
k-1; an order accepted now is first checked against bar k, so a market order submitted after
bar t closed fills at bar t+1's open moved by `slippage`. Resting orders fill inside a bar at
their price or at the open on a gap (no slippage: fills.py's rule); a triggered stop's unfilled
remainder becomes a market order. Partial fills: each bar lets at most `max_volume_share` of
its volume (whole shares) trade per symbol, shared by orders in submission order.

Sim choices (documented, not Alpaca's): orders are refused while the market is closed; no
shorting (a sell needs shares held); no margin (buying power = cash minus open buys); fractional
quantities are accepted for market orders only; `notional` orders are refused. Buys reserve
buying power at the last known price (latest close, else the symbol's first open); orders for a
symbol with no price anywhere in the replay are refused (422 naming it).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data.bars import Panel
from live.sim import wire
from strategies.fills import (
    BUY,
    EXIT_STOP,
    EXIT_TAKE_PROFIT,
    SELL,
    bracket_exit_long_nb,
    limit_fill_price_nb,
    market_fill_price_nb,
    order_fee_nb,
    stop_fill_price_nb,
    stop_limit_fill_price_nb,
)
from tierlab.errors import ConfigError
from tierlab.log import get_logger

log = get_logger(__name__)

MINUTE = pd.Timedelta(minutes=1)
OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled", "held", "pending_new"})
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
TIFS = ("day", "gtc", "ioc", "fok")


class SimReject(Exception):
    """An order or request the sim refuses, with Alpaca's HTTP status and error JSON."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = wire.error_body(code, message, **extra)


@dataclass(frozen=True)
class SimConfig:
    """Sim parameters: costs as in the backtest, the starting cash and the volume cap."""

    slippage: float = 0.0005
    fee_per_share: float = 0.0
    fee_per_order: float = 0.0
    initial_cash: float = 100_000.0
    max_volume_share: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "slippage": 0.0 <= self.slippage < 0.5,
            "fee_per_share": self.fee_per_share >= 0.0,
            "fee_per_order": self.fee_per_order >= 0.0,
            "initial_cash": self.initial_cash > 0.0,
            "max_volume_share": 0.0 < self.max_volume_share <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"SimConfig.{name}={getattr(self, name)!r} is out of range")


@dataclass(eq=False)
class SimOrder:
    """One order (or bracket/oco leg) and its fill state."""

    id: str
    client_order_id: str
    symbol: str
    side: int
    qty: float
    type: str
    tif: str
    order_class: str
    created_at: pd.Timestamp
    eligible_bar: int
    limit_price: float | None = None
    stop_price: float | None = None
    status: str = "new"
    filled_qty: float = 0.0
    filled_avg_price: float = 0.0
    fees: float = 0.0
    triggered: bool = False
    filled_at: pd.Timestamp | None = None
    canceled_at: pd.Timestamp | None = None
    expired_at: pd.Timestamp | None = None
    replaced_at: pd.Timestamp | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    legs: list[SimOrder] = field(default_factory=list)
    parent: SimOrder | None = None
    siblings: list[SimOrder] = field(default_factory=list)
    updated_at: pd.Timestamp | None = None

    @property
    def submitted_at(self) -> pd.Timestamp:
        """Alpaca's submitted_at (the sim accepts instantly)."""
        return self.created_at

    @property
    def remaining(self) -> float:
        """Quantity still to fill."""
        return self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        """True while the order can still fill or be canceled."""
        return self.status in OPEN_STATUSES

    @property
    def active(self) -> bool:
        """True when the order is working at the venue (open and not a held leg)."""
        return self.is_open and self.status != "held"


@dataclass
class Holding:
    """A long position: quantity and total cost."""

    qty: float = 0.0
    cost: float = 0.0


@dataclass(frozen=True)
class StepInfo:
    """What one clock step did: the closed bar (or None when it moved to a session open)."""

    bar: int | None
    time: pd.Timestamp
    done: bool


class SimEngine:
    """Replays a Panel bar by bar and runs an Alpaca-like cash account against it."""

    def __init__(self, panel: Panel, config: SimConfig | None = None) -> None:
        if len(panel.index) == 0:
            raise ConfigError("the sim needs a panel with at least one bar")
        self.panel = panel
        self.config = config or SimConfig()
        self.k = 0
        self.now: pd.Timestamp = panel.index[0]
        self.cash = float(self.config.initial_cash)
        self.start_equity = self.cash
        self.holdings: dict[str, Holding] = {}
        self.orders: dict[str, SimOrder] = {}
        self.by_client_id: dict[str, SimOrder] = {}
        self.outbox: list[dict[str, Any]] = []
        self.bars_out: list[dict[str, Any]] = []
        self._cols = {s: j for j, s in enumerate(panel.symbols)}
        idx = panel.index
        gap = np.ones(len(idx), dtype=bool)
        if len(idx) > 1:
            gap[:-1] = (idx[1:] - idx[:-1]) != MINUTE
        self._last_of_run = gap  # True where a contiguous run of minutes (a session) ends
        self.last_close = np.full(len(panel.symbols), np.nan)
        opens = np.asarray(panel.open, dtype=float)
        has_open = ~np.isnan(opens)
        first = has_open.argmax(axis=0)
        self._first_open = np.where(has_open.any(axis=0), opens[first, np.arange(opens.shape[1])], np.nan)
        self.lastday_close = np.full(len(panel.symbols), np.nan)

    # ---------------------------------------------------------------- clock
    @property
    def done(self) -> bool:
        """True once every bar of the panel has closed."""
        return self.k >= len(self.panel.index)

    @property
    def is_open(self) -> bool:
        """The market is open when the next bar starts exactly now (we sit inside a session)."""
        return not self.done and self.panel.index[self.k] == self.now

    def step(self) -> StepInfo:
        """Advance to the next event: close the next bar, or move from a session close to the next open."""
        if self.done:
            return StepInfo(None, self.now, True)
        if not self.is_open:
            self.now = self.panel.index[self.k]
            return StepInfo(None, self.now, False)
        k = self.k
        self._process_bar(k)
        has = ~np.isnan(self.panel.close[k])
        self.last_close[has] = self.panel.close[k][has]
        self.bars_out.extend(self._bar_records(k))
        self.now = self.panel.index[k] + MINUTE
        self.k = k + 1
        if self._last_of_run[k]:
            self._end_session()
        return StepInfo(k, self.now, self.done)

    def _end_session(self) -> None:
        for o in list(self.orders.values()):
            if o.is_open and o.tif == "day":
                self._set_status(o, "expired", "expired")
        self.lastday_close = self.last_close.copy()

    def _bar_records(self, k: int) -> list[dict[str, Any]]:
        p = self.panel
        out = []
        for j, s in enumerate(p.symbols):
            if np.isnan(p.close[k, j]):
                continue
            out.append({
                "symbol": s, "t": p.index[k], "o": float(p.open[k, j]), "h": float(p.high[k, j]),
                "l": float(p.low[k, j]), "c": float(p.close[k, j]), "v": float(p.volume[k, j]),
                "n": None if p.trade_count is None else float(p.trade_count[k, j]),
                "vw": None if p.vwap is None else float(p.vwap[k, j]),
            })
        return out

    # ---------------------------------------------------------------- prices and account
    def quote(self, symbol: str) -> float:
        """The last known price: the latest close at or before now, else the symbol's first open.

        NaN only for a symbol with no price anywhere in the replay (`submit` refuses its orders).
        """
        j = self._cols[symbol]
        if not np.isnan(self.last_close[j]):
            return float(self.last_close[j])
        return float(self._first_open[j])

    def _est_price(self, o: SimOrder) -> float:
        """What a buy may cost per share (for buying power); never NaN for an accepted order."""
        if o.type in ("limit", "stop_limit"):
            return float(o.limit_price)
        q = self.quote(o.symbol)
        if np.isnan(q):  # unreachable for accepted orders (submit refuses priceless symbols)
            return float(o.stop_price) if o.type == "stop" else 0.0
        q *= 1.0 + self.config.slippage
        return max(q, float(o.stop_price)) if o.type == "stop" else q

    def reserved_buy(self, exclude: SimOrder | None = None) -> float:
        """Cash held for open buy orders (legs held behind a bracket excluded)."""
        return sum(o.remaining * self._est_price(o) for o in self.orders.values()
                   if o.active and o.side == BUY and o is not exclude)

    def buying_power(self) -> float:
        """Cash account: cash minus what open buys may spend."""
        return self.cash - self.reserved_buy()

    def available_qty(self, symbol: str, exclude: SimOrder | None = None) -> float:
        """Shares held minus shares promised to open sells (an OCO pair counts once)."""
        held = self.holdings.get(symbol, Holding()).qty
        promised = sum(o.remaining for o in self.orders.values()
                       if o.active and o.side == SELL and o.symbol == symbol and o is not exclude
                       and not (o.siblings and o.type == "stop" and any(s.active for s in o.siblings)))
        return held - promised

    def market_value(self) -> float:
        """Long market value at the last known prices."""
        return sum(h.qty * self.quote(s) for s, h in self.holdings.items() if h.qty)

    def equity(self) -> float:
        """Cash plus positions at the last known prices."""
        return self.cash + self.market_value()

    # ---------------------------------------------------------------- submit
    def submit(self, body: dict[str, Any]) -> SimOrder:
        """Validate and accept a POST /v2/orders body; raise SimReject with Alpaca's answer."""
        body = _body(body)
        symbol = _text(body, "symbol").upper()
        cid = _text(body, "client_order_id") or str(uuid.uuid4())
        order_class = _text(body, "order_class") or "simple"
        if order_class not in ("simple", "bracket", "oco", "oto"):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid order_class {order_class!r}")
        if len(cid) > 128:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "client_order_id must be no more than 128 characters")
        if cid in self.by_client_id:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "client_order_id must be unique")
        if body.get("notional") is not None:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "notional orders are not supported by the sim")
        if symbol not in self._cols:
            raise SimReject(422, wire.CODE_BAD_REQUEST, f'asset "{symbol}" not found')
        if np.isnan(self.quote(symbol)):
            raise SimReject(422, wire.CODE_UNPROCESSABLE,
                            f'asset "{symbol}" has no price in this replay (no bars); the sim cannot take orders for it',
                            symbol=symbol)
        qty = _float(body.get("qty"), "qty")
        if qty is None or not qty > 0:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "qty must be > 0")
        side = {"buy": BUY, "sell": SELL}.get(_text(body, "side"))
        if side is None:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid side {body.get('side')!r}")
        typ = _text(body, "type") or _text(body, "order_type")
        if typ not in ORDER_TYPES:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid order type {typ!r}")
        tif = _text(body, "time_in_force")
        if tif not in TIFS:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid time_in_force {tif!r}")
        limit = _float(body.get("limit_price"), "limit_price")
        stop = _float(body.get("stop_price"), "stop_price")
        if order_class == "oco" and limit is None:
            limit = _exit_prices(body)[0]
        if typ in ("limit", "stop_limit") and not (limit and limit > 0):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "limit_price is required and must be > 0")
        if typ in ("stop", "stop_limit") and not (stop and stop > 0):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "stop_price is required and must be > 0")
        if qty != math.floor(qty) and (typ != "market" or tif != "day" or order_class != "simple"):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "fractional orders must be simple market day orders")
        if not self.is_open:
            raise SimReject(403, wire.CODE_FORBIDDEN, "market is closed")

        o = self._new_order(cid, symbol, side, qty, typ, tif, order_class, limit, stop)
        if order_class == "oco":
            tp, sl = _exit_prices(body)
            o.type, o.limit_price, o.stop_price = "limit", tp, None
            o.legs = [self._new_order(str(uuid.uuid4()), symbol, side, qty, "stop" if sl[1] is None else "stop_limit",
                                      tif, order_class, sl[1], sl[0], parent=o)]
            o.siblings, o.legs[0].siblings = [o.legs[0]], [o]
        elif order_class in ("bracket", "oto"):
            tp, sl = _exit_prices(body, need_both=order_class == "bracket")
            if side == BUY and tp is not None and sl[0] is not None and not tp > sl[0]:
                raise SimReject(422, wire.CODE_UNPROCESSABLE,
                                "take_profit.limit_price must be > stop_loss.stop_price")
            if tif not in ("day", "gtc"):
                raise SimReject(422, wire.CODE_UNPROCESSABLE, f"{order_class} orders must be day or gtc")
            if tp is not None:
                o.legs.append(self._new_order(str(uuid.uuid4()), symbol, -side, qty, "limit", tif,
                                              order_class, tp, None, parent=o, held=True))
            if sl[0] is not None:
                o.legs.append(self._new_order(str(uuid.uuid4()), symbol, -side, qty,
                                              "stop" if sl[1] is None else "stop_limit", tif, order_class,
                                              sl[1], sl[0], parent=o, held=True))
            if len(o.legs) == 2:
                o.legs[0].siblings, o.legs[1].siblings = [o.legs[1]], [o.legs[0]]
        self._check_funds(o)
        self._check_wash(o)
        for x in [o, *o.legs]:
            self.orders[x.id] = x
            self.by_client_id[x.client_order_id] = x
        self._event("new", o)
        return o

    def _new_order(self, cid: str, symbol: str, side: int, qty: float, typ: str, tif: str, order_class: str,
                   limit: float | None, stop: float | None, parent: SimOrder | None = None,
                   held: bool = False) -> SimOrder:
        return SimOrder(
            id=str(uuid.uuid4()), client_order_id=cid, symbol=symbol, side=side, qty=qty, type=typ, tif=tif,
            order_class=order_class, created_at=self.now, updated_at=self.now, eligible_bar=self.k,
            limit_price=limit, stop_price=stop, parent=parent, status="held" if held else "new",
        )

    def _check_funds(self, o: SimOrder, replacing: SimOrder | None = None) -> None:
        if o.side == BUY:
            cost = o.qty * self._est_price(o)
            bp = self.cash - self.reserved_buy(exclude=replacing)
            if not cost <= bp:  # a NaN estimate refuses rather than slipping through
                raise SimReject(403, wire.CODE_FORBIDDEN, "insufficient buying power",
                                buying_power=wire.num(round(bp, 2)), cost_basis=wire.num(round(cost, 2)))
        else:
            avail = self.available_qty(o.symbol, exclude=replacing)
            if o.qty > avail + 1e-9:
                raise SimReject(403, wire.CODE_FORBIDDEN,
                                f"insufficient qty available for order (requested: {wire.num(o.qty)}, "
                                f"available: {wire.num(max(avail, 0.0))})",
                                symbol=o.symbol)

    def _check_wash(self, o: SimOrder) -> None:
        """Refuse an order that could trade against one of our own opposite working orders."""
        if o.type not in ("market", "limit"):
            return
        for x in self.orders.values():
            if not (x.active and x.symbol == o.symbol and x.side == -o.side and x.type in ("market", "limit")):
                continue
            if o.type == "market" or x.type == "market":
                cross = True
            else:
                buy_px, sell_px = (o.limit_price, x.limit_price) if o.side == BUY else (x.limit_price, o.limit_price)
                cross = buy_px >= sell_px
            if cross:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "potential wash trade detected. use complex orders",
                                reject_reason="opposite side order exists", existing_order_id=x.id)

    # ---------------------------------------------------------------- cancel / replace / close
    def get(self, order_id: str) -> SimOrder:
        """Order by id or a 404 SimReject."""
        o = self.orders.get(order_id)
        if o is None:
            raise SimReject(404, wire.CODE_NOT_FOUND, "order not found")
        return o

    def get_by_client_id(self, cid: str) -> SimOrder:
        """Order by client_order_id or a 404 SimReject."""
        o = self.by_client_id.get(cid)
        if o is None:
            raise SimReject(404, wire.CODE_NOT_FOUND, "order not found")
        return o

    def cancel(self, order_id: str) -> None:
        """Cancel an open order (and its legs / OCO partner); 422 when it is no longer open."""
        o = self.get(order_id)
        if not o.is_open:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"order is not cancelable (status {o.status})")
        for x in [o, *o.legs, *o.siblings]:
            if x.is_open:
                self._set_status(x, "canceled", "canceled")

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every open order; Alpaca's 207 list of {id, status, body}."""
        out = []
        for o in list(self.orders.values()):
            if o.is_open:
                self.cancel(o.id)
                out.append({"id": o.id, "status": 200, "body": None})
        return out

    def replace(self, order_id: str, body: dict[str, Any]) -> SimOrder:
        """PATCH an open limit/stop order: a new order replaces it (events replaced + new)."""
        body = _body(body)
        o = self.get(order_id)
        if not o.active or o.type == "market" or o.filled_qty > 0:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"order is not replaceable (status {o.status}, type {o.type})")
        qty = _float(body.get("qty"), "qty") or o.qty
        if not qty > 0:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "qty must be > 0")
        cid = _text(body, "client_order_id") or str(uuid.uuid4())
        if len(cid) > 128:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "client_order_id must be no more than 128 characters")
        if cid in self.by_client_id:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "client_order_id must be unique")
        tif = _text(body, "time_in_force") or o.tif
        if tif not in TIFS:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid time_in_force {tif!r}")
        limit = _float(body.get("limit_price"), "limit_price") or o.limit_price
        stop = _float(body.get("stop_price"), "stop_price") or o.stop_price
        if (limit is not None and not limit > 0) or (stop is not None and not stop > 0):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "limit_price and stop_price must be > 0")
        new = self._new_order(cid, o.symbol, o.side, qty, o.type, tif,
                              o.order_class, limit, stop, parent=o.parent)
        new.replaces = o.id
        self._check_funds(new, replacing=o)
        new.siblings = o.siblings
        for s in o.siblings:
            s.siblings = [new if x is o else x for x in s.siblings]
        if o.parent is not None:
            o.parent.legs = [new if x is o else x for x in o.parent.legs]
        o.replaced_by, o.replaced_at = new.id, self.now
        self._set_status(o, "replaced", "replaced")
        self.orders[new.id] = new
        self.by_client_id[cid] = new
        self._event("new", new)
        return new

    def close_position(self, symbol: str, qty: float | None = None, percentage: float | None = None) -> SimOrder:
        """Sell (part of) a position at market: DELETE /v2/positions/{symbol}."""
        h = self.holdings.get(symbol.upper())
        if h is None or h.qty <= 0:
            raise SimReject(404, wire.CODE_NOT_FOUND, "position does not exist")
        if percentage is not None:
            qty = math.floor(h.qty * percentage / 100.0)
        qty = h.qty if qty is None else qty
        return self.submit({"symbol": symbol.upper(), "qty": qty, "side": "sell", "type": "market",
                            "time_in_force": "day"})

    # ---------------------------------------------------------------- fills
    def _process_bar(self, k: int) -> None:
        p, cfg = self.panel, self.config
        room = np.floor(cfg.max_volume_share * np.nan_to_num(p.volume[k]))
        seen: set[str] = set()
        for o in list(self.orders.values()):
            if o.id in seen or not o.active or o.eligible_bar > k:
                continue
            j = self._cols[o.symbol]
            if np.isnan(p.close[k, j]):
                continue  # no bar for this symbol: the order waits for the next bar that exists
            op, hi, lo = float(p.open[k, j]), float(p.high[k, j]), float(p.low[k, j])
            group = [o, *o.siblings]
            seen.update(x.id for x in group)
            target, price = self._group_fill(group, op, hi, lo) if o.siblings else (o, self._fill_price(o, op, hi, lo))
            if target is not None and not np.isnan(price):
                target.triggered = True
                qty = min(target.remaining, room[j]) if target.tif != "fok" else target.remaining
                if target.tif == "fok" and target.remaining > room[j]:
                    qty = 0.0
                if qty > 0:
                    room[j] -= qty
                    self._fill(target, qty, price, k)
            if o.tif in ("ioc", "fok") and o.is_open:
                self._set_status(o, "canceled", "canceled")

    def _fill_price(self, o: SimOrder, op: float, hi: float, lo: float) -> float:
        if o.type == "market" or (o.triggered and o.type == "stop"):
            return market_fill_price_nb(op, o.side, self.config.slippage)
        if o.type == "limit":
            return limit_fill_price_nb(o.side, o.limit_price, op, hi, lo)
        if o.type == "stop":
            return stop_fill_price_nb(o.side, o.stop_price, op, hi, lo)
        if o.triggered:
            return limit_fill_price_nb(o.side, o.limit_price, op, hi, lo)
        return stop_limit_fill_price_nb(o.side, o.stop_price, o.limit_price, op, hi, lo)

    def _group_fill(self, group: list[SimOrder], op: float, hi: float, lo: float) -> tuple[SimOrder | None, float]:
        """An OCO pair (take-profit limit + stop): the shared bracket rule decides which leg fills."""
        tp = next((x for x in group if x.type == "limit" and x.active), None)
        sl = next((x for x in group if x.type in ("stop", "stop_limit") and x.active), None)
        if tp is not None and sl is not None and sl.type == "stop" and tp.side == SELL and not sl.triggered:
            code, price = bracket_exit_long_nb(op, hi, lo, sl.stop_price, tp.limit_price)
            if code == EXIT_STOP:
                return sl, price
            if code == EXIT_TAKE_PROFIT:
                return tp, price
            return None, float("nan")
        for x in (sl, tp):  # stop first: the conservative choice
            if x is not None:
                price = self._fill_price(x, op, hi, lo)
                if not np.isnan(price):
                    return x, price
        return None, float("nan")

    def _fill(self, o: SimOrder, qty: float, price: float, k: int) -> None:
        cfg = self.config
        fees = order_fee_nb(qty, cfg.fee_per_share, cfg.fee_per_order if o.filled_qty == 0 else 0.0)
        h = self.holdings.setdefault(o.symbol, Holding())
        if o.side == BUY:
            self.cash -= qty * price + fees
            h.qty += qty
            h.cost += qty * price
        else:
            avg = h.cost / h.qty if h.qty else 0.0
            self.cash += qty * price - fees
            h.qty -= qty
            h.cost = 0.0 if h.qty <= 1e-9 else h.cost - avg * qty
        if h.qty <= 1e-9:
            self.holdings.pop(o.symbol, None)
        o.filled_avg_price = price if o.filled_qty == 0 else (
            (o.filled_avg_price * o.filled_qty + price * qty) / (o.filled_qty + qty))
        o.filled_qty += qty
        o.fees += fees
        o.filled_at = self.panel.index[k]
        done = o.remaining <= 1e-9
        self._set_status(o, "filled" if done else "partially_filled", "fill" if done else "partial_fill",
                         price=price, qty=qty)
        for s in o.siblings:  # the OCO partner: gone on a full fill, shrunk on a partial one
            if s.is_open:
                if done:
                    self._set_status(s, "canceled", "canceled")
                else:
                    s.qty = s.filled_qty + o.remaining
        if o.parent is None and o.legs and o.order_class in ("bracket", "oto"):
            for leg in o.legs:
                if leg.status == "held" and done:
                    leg.eligible_bar = k + 1
                    self._set_status(leg, "new", "new")

    # ---------------------------------------------------------------- events
    def _set_status(self, o: SimOrder, status: str, event: str, **extra: Any) -> None:
        o.status, o.updated_at = status, self.now
        if status == "canceled":
            o.canceled_at = self.now
        elif status == "expired":
            o.expired_at = self.now
        self._event(event, o, **extra)

    def _event(self, event: str, o: SimOrder, price: float | None = None, qty: float | None = None) -> None:
        h = self.holdings.get(o.symbol)
        data: dict[str, Any] = {"event": event, "timestamp": wire.ts(self.now), "order": wire.order_json(o)}
        if price is not None:
            data.update(execution_id=str(uuid.uuid4()), price=wire.num(price), qty=wire.num(qty),
                        position_qty=wire.num(h.qty if h else 0.0))
        self.outbox.append(data)
        log.info("order_event", ticker=o.symbol, client_order_id=o.client_order_id, status=o.status,
                 reason=event, order_type=o.type, side="buy" if o.side > 0 else "sell",
                 qty=qty if qty is not None else o.qty, price=price)

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Take the pending trade updates and closed bars (for the websockets)."""
        ev, bars = self.outbox, self.bars_out
        self.outbox, self.bars_out = [], []
        return ev, bars


def _float(x: Any, name: str) -> float | None:
    if x is None or x == "":
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(x, bool) or not math.isfinite(v):
        raise SimReject(422, wire.CODE_BAD_REQUEST, f"{name} must be a number, got {x!r}")
    return v


def _body(body: Any) -> dict[str, Any]:
    """An order body must be a JSON object."""
    if not isinstance(body, dict):
        raise SimReject(400, wire.CODE_BAD_REQUEST, "request body format is invalid: expected a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    """A string field ('' when absent); 422 naming the field when it is not a string."""
    x = body.get(name)
    if x is None:
        return ""
    if not isinstance(x, str):
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"{name} must be a string, got {x!r}")
    return x


def _obj(body: dict[str, Any], name: str) -> dict[str, Any]:
    """A nested object field ({} when absent); 422 naming the field when it is not an object."""
    x = body.get(name)
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise SimReject(422, wire.CODE_UNPROCESSABLE, f"{name} must be an object, got {x!r}")
    return x


def _exit_prices(body: dict[str, Any], need_both: bool = True) -> tuple[float | None, tuple[float | None, float | None]]:
    tp = _float(_obj(body, "take_profit").get("limit_price"), "take_profit.limit_price")
    sl = _obj(body, "stop_loss")
    stop = _float(sl.get("stop_price"), "stop_loss.stop_price")
    sl_limit = _float(sl.get("limit_price"), "stop_loss.limit_price")
    if need_both and (tp is None or stop is None):
        raise SimReject(422, wire.CODE_UNPROCESSABLE, "take_profit.limit_price and stop_loss.stop_price are required")
    if tp is None and stop is None:
        raise SimReject(422, wire.CODE_UNPROCESSABLE, "oto orders require take_profit or stop_loss")
    return tp, (stop, sl_limit)
