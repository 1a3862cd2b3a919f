"""The paper broker's state: replay clock, orders, fills, positions, cash and margin.

Pure Python over a `data.bars.Panel`; every fill price comes from strategies/fills.py (the one
fill model the backtest uses). Timing: bars [0, k) have closed and `now` is the close of bar
k-1; an order accepted now is first checked against bar k, so a market order submitted after
bar t closed fills at bar t+1's open moved by `slippage`. Resting orders fill inside a bar at
their price or at the open on a gap (no slippage: fills.py's rule); a triggered stop's unfilled
remainder becomes a market order. Partial fills: each bar lets at most `max_volume_share` of
its volume (whole shares) trade per symbol, shared by orders in submission order.

Account (as Alpaca paper): a margin account by default (multiplier 2, 4 when last_equity >=
$25,000; shorting enabled; Reg T and day-trading buying power as Alpaca documents), or a cash
account (`SimConfig(account="cash")`: multiplier 1, no shorting, buying power = cash minus open
buys). Orders sent while the market is closed are accepted and queued for the next session's
open. Sim choices that differ from Alpaca are listed in the README's paper-broker table.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data.bars import Panel
from live.sim import wire
from live.sim.assets import AssetFlags, flags_for
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
OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled", "held", "pending_new", "pending_cancel",
                           "pending_replace"})
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIFS = ("day", "gtc", "opg", "cls", "ioc", "fok")
# which time_in_force each order type takes (Alpaca: opg/cls/ioc/fok for market and limit orders only)
TIF_BY_TYPE = {"market": TIFS, "limit": TIFS, "stop": ("day", "gtc"), "stop_limit": ("day", "gtc"),
               "trailing_stop": ("day", "gtc")}
PDT_EQUITY = 25_000.0  # FINRA's pattern-day-trader minimum: 4x intraday buying power at or above it
MARGIN_EQUITY = 2_000.0  # below it Alpaca allows neither margin nor shorting (multiplier 1)
SHORT_PRICE_BUFFER = 1.03  # Alpaca values an opening short at MAX(limit, 3% above the current price)
CLS_CUTOFF = pd.Timedelta(minutes=10)  # cls orders are refused in the session's last 10 minutes


class SimReject(Exception):
    """An order or request the sim refuses, with Alpaca's HTTP status and error JSON."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = wire.error_body(code, message, **extra)


@dataclass(frozen=True)
class SimConfig:
    """Sim parameters: costs as in the backtest, the starting cash, the volume cap, the account type.

    `exact_prices=True` is for parity replays: it accepts the kernel's exact stop/take-profit levels
    (Alpaca refuses sub-penny prices) and reports order and fill prices as exact float round-trips
    instead of Alpaca's decimals (at most 9 places). Leave it off for anything meant to run on Alpaca.
    """

    slippage: float = 0.0005
    fee_per_share: float = 0.0
    fee_per_order: float = 0.0
    initial_cash: float = 100_000.0
    max_volume_share: float = 0.1
    account: str = "margin"
    exact_prices: bool = False

    def __post_init__(self) -> None:
        checks = {
            "slippage": 0.0 <= self.slippage < 0.5,
            "fee_per_share": self.fee_per_share >= 0.0,
            "fee_per_order": self.fee_per_order >= 0.0,
            "initial_cash": self.initial_cash > 0.0,
            "max_volume_share": 0.0 < self.max_volume_share <= 1.0,
            "account": self.account in ("margin", "cash"),
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
    notional: float | None = None
    trail_price: float | None = None
    trail_percent: float | None = None
    hwm: float | None = None
    extended_hours: bool = False
    armed: bool = False  # a held stop-loss leg that works behind its take-profit (Alpaca shows it "held")
    exact: bool = False  # report prices as exact float round-trips (SimConfig.exact_prices, parity replays)

    @property
    def trail_stop(self) -> float | None:
        """A trailing stop's current stop price, from the high-water mark (low-water for a buy)."""
        if self.hwm is None:
            return None
        if self.trail_price is not None:
            return self.hwm + self.side * self.trail_price
        return self.hwm * (1.0 + self.side * (self.trail_percent or 0.0) / 100.0)

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
        """True when the order is working at the venue (open, not queued, not a held leg unless armed)."""
        return self.is_open and self.status != "accepted" and (self.status != "held" or self.armed)

    @property
    def pending(self) -> bool:
        """True for an order that is or will be working: active, or queued (`accepted`) for the next open.

        Alpaca counts a queued order as open, so the short-sale and wash-trade checks must see it too.
        """
        return self.is_open and (self.status != "held" or self.armed)


@dataclass
class Holding:
    """A position: signed quantity (negative = short), signed cost, and shares opened this session."""

    qty: float = 0.0
    cost: float = 0.0
    day_qty: float = 0.0


@dataclass(frozen=True)
class StepInfo:
    """What one clock step did: the closed bar (or None when it moved to a session open)."""

    bar: int | None
    time: pd.Timestamp
    done: bool


class SimEngine:
    """Replays a Panel bar by bar and runs an Alpaca-like margin (or cash) account against it."""

    def __init__(self, panel: Panel, config: SimConfig | None = None,
                 assets: Mapping[str, AssetFlags] | None = None) -> None:
        if len(panel.index) == 0:
            raise ConfigError("the sim needs a panel with at least one bar")
        self.panel = panel
        self.config = config or SimConfig()
        self.assets = dict(assets or {})
        self.k = 0
        self.now: pd.Timestamp = panel.index[0]
        self.cash = float(self.config.initial_cash)
        self.start_equity = self.cash
        self.last_equity = self.cash
        self.last_maintenance_margin = 0.0
        self.holdings: dict[str, Holding] = {}
        self.orders: dict[str, SimOrder] = {}
        self._maybe_open: dict[str, SimOrder] = {}  # every order not yet seen terminal (see open_orders)
        self.by_client_id: dict[str, SimOrder] = {}
        self.outbox: list[dict[str, Any]] = []
        self.stream_events = True  # build trade_updates payloads (the app turns it off while nobody listens)
        self.bars_out: list[dict[str, Any]] = []
        self.activities: list[dict[str, Any]] = []
        self.history: list[tuple[pd.Timestamp, float]] = []  # (bar start, equity after the bar closed)
        self._cols = {s: j for j, s in enumerate(panel.symbols)}
        idx = panel.index
        self.bar_ns = idx.as_unit("ns").asi8  # bar starts in epoch ns: clock checks without a pandas lookup
        gap = np.ones(len(idx), dtype=bool)
        if len(idx) > 1:
            gap[:-1] = (idx[1:] - idx[:-1]) != MINUTE
        self._last_of_run = gap  # True where a contiguous run of minutes (a session) ends
        self._first_of_run = np.concatenate([[True], gap[:-1]])
        ends = np.flatnonzero(gap)
        self._run_end = ends[np.searchsorted(ends, np.arange(len(idx)))]  # last bar of the run holding bar i
        self.last_close = np.full(len(panel.symbols), np.nan)
        opens = np.asarray(panel.open, dtype=float)
        has_open = ~np.isnan(opens)
        first = has_open.argmax(axis=0)
        self._first_open = np.where(has_open.any(axis=0), opens[first, np.arange(opens.shape[1])], np.nan)
        self._quotes: dict[str, float] = {}
        self._refresh_quotes()
        self.lastday_close = np.full(len(panel.symbols), np.nan)
        self._activity("CSD", self.cash, description="initial paper account funding")

    def flags(self, symbol: str) -> AssetFlags:
        """The asset flags of `symbol` (this engine's table, then live.sim.assets.TABLE)."""
        return flags_for(symbol, self.assets)

    # ---------------------------------------------------------------- clock
    @property
    def done(self) -> bool:
        """True once every bar of the panel has closed."""
        return self.k >= len(self.panel.index)

    @property
    def is_open(self) -> bool:
        """The market is open when the next bar starts exactly now (we sit inside a session)."""
        return self.k < len(self.bar_ns) and int(self.bar_ns[self.k]) == self.now.value

    def step(self) -> StepInfo:
        """Advance to the next event: close the next bar, or move from a session close to the next open."""
        if self.done:
            return StepInfo(None, self.now, True)
        if not self.is_open:
            self.now = self.panel.index[self.k]
            self._open_session()
            return StepInfo(None, self.now, False)
        k = self.k
        self._process_bar(k)
        has = ~np.isnan(self.panel.close[k])
        self.last_close[has] = self.panel.close[k][has]
        self._refresh_quotes()
        t = self.panel.index[k]
        self.bars_out.extend(self._bar_records(k, t))
        self.now = t + MINUTE
        self.k = k + 1
        self.history.append((t, self.equity()))
        if self._last_of_run[k]:
            self._end_session()
        return StepInfo(k, self.now, self.done)

    def _open_session(self) -> None:
        """At the open, orders queued while the market was closed are routed (pending_new, then new)."""
        for o in self.open_orders():
            if o.status == "accepted":
                o.eligible_bar = self.k
                self._route(o)

    def _end_session(self) -> None:
        for o in self.open_orders():
            if o.is_open and o.status != "accepted" and o.tif in ("day", "cls", "opg"):
                self._set_status(o, "expired", "expired")
        self.lastday_close = self.last_close.copy()
        self.last_equity = self.equity()
        self.last_maintenance_margin = self.maintenance_margin()
        for h in self.holdings.values():
            h.day_qty = 0.0

    def _bar_records(self, k: int, t: pd.Timestamp) -> list[dict[str, Any]]:
        """Bar k of every symbol that has one (`t` its start), as plain floats for the market-data stream."""
        p = self.panel
        o, h, lo, c, v = (x[k].tolist() for x in (p.open, p.high, p.low, p.close, p.volume))
        n = None if p.trade_count is None else p.trade_count[k].tolist()
        vw = None if p.vwap is None else p.vwap[k].tolist()
        return [{"symbol": s, "t": t, "o": o[j], "h": h[j], "l": lo[j], "c": c[j], "v": v[j],
                 "n": None if n is None else n[j], "vw": None if vw is None else vw[j]}
                for j, s in enumerate(p.symbols) if not math.isnan(c[j])]  # NaN close: no bar for that symbol

    # ---------------------------------------------------------------- prices and account
    def quote(self, symbol: str) -> float:
        """The last known price: the latest close at or before now, else the symbol's first open.

        NaN only for a symbol with no price anywhere in the replay (`submit` refuses its orders).
        """
        return self._quotes[symbol]

    def _refresh_quotes(self) -> None:
        """quote()'s table, rebuilt when closes change (every request reads it, many times over)."""
        px = np.where(np.isnan(self.last_close), self._first_open, self.last_close)
        self._quotes = dict(zip(self.panel.symbols, px.tolist(), strict=True))

    def held_qty(self, symbol: str) -> float:
        """Signed shares held (0 when flat); the open-order scans ask it once per order."""
        h = self.holdings.get(symbol)
        return 0.0 if h is None else h.qty

    def _est_price(self, o: SimOrder) -> float:
        """What a buy may cost per share (for buying power); never NaN for an accepted order."""
        if o.type in ("limit", "stop_limit"):
            return float(o.limit_price)
        q = self.quote(o.symbol)
        if math.isnan(q):  # unreachable for accepted orders (submit refuses priceless symbols)
            return float(o.stop_price) if o.type == "stop" else 0.0
        q *= 1.0 + self.config.slippage
        return max(q, float(o.stop_price)) if o.type == "stop" else q

    def _opening_value(self, o: SimOrder, held: float | None = None) -> float:
        """Buying power an order uses: the part that opens or adds to a position (Alpaca's check).

        Buys are valued at their limit (else the last price plus slippage); an opening short at
        MAX(limit, 3% above the last price). Sells of held shares and buys to cover use none.
        """
        held = self.held_qty(o.symbol) if held is None else held
        closing = max(0.0, -held) if o.side == BUY else max(0.0, held)
        opening = max(0.0, o.remaining - closing)
        if opening <= 0.0:
            return 0.0
        if o.side == BUY:
            return opening * self._est_price(o)
        return opening * max(o.limit_price or 0.0, self.quote(o.symbol) * SHORT_PRICE_BUFFER)

    def open_orders(self) -> list[SimOrder]:
        """The orders that may still fill, in arrival order (as in `orders`): what every open-order scan reads.

        A terminal order never reopens, so it is dropped from the set for good; the scans stay
        proportional to the working orders, not to every order of the replay.
        """
        live = [o for o in self._maybe_open.values() if o.is_open]
        if len(live) != len(self._maybe_open):
            self._maybe_open = {o.id: o for o in live}
        return live

    def reserved_buy(self, exclude: SimOrder | None = None) -> float:
        """Buying power held for open orders that open positions (legs held behind a bracket excluded)."""
        return sum(self._opening_value(o) for o in self.open_orders()
                   if o.is_open and o.status != "held" and o is not exclude)

    @property
    def margin(self) -> bool:
        """True for a margin account (the default, as Alpaca paper accounts are)."""
        return self.config.account == "margin"

    @property
    def multiplier(self) -> int:
        """Alpaca's buying-power multiplier: 1 cash (or equity < $2,000), 4 at >= $25,000 (PDT-eligible), else 2."""
        if not self.margin or self.last_equity < MARGIN_EQUITY:
            return 1
        return 4 if self.last_equity >= PDT_EQUITY else 2

    @property
    def shorting_enabled(self) -> bool:
        """Margin accounts with at least $2,000 equity may sell short (Alpaca's rule)."""
        return self.margin and self.equity() >= MARGIN_EQUITY

    def _position_value(self, symbol: str, h: Holding) -> float:
        return h.qty * self.quote(symbol)

    def initial_margin(self) -> float:
        """Reg T initial margin: 50% of marginable positions, 100% of the rest (cash account: 0)."""
        if not self.margin:
            return 0.0
        return sum(abs(self._position_value(s, h)) * (0.5 if self.flags(s).marginable else 1.0)
                   for s, h in self.holdings.items())

    def maintenance_margin(self) -> float:
        """Alpaca's maintenance table: longs 30% (100% under $2.50; 3x/2x ETFs 90%/60%), shorts 30% or $5/share."""
        if not self.margin:
            return 0.0
        total = 0.0
        for s, h in self.holdings.items():
            px = self.quote(s)
            mv = abs(h.qty) * px
            if h.qty > 0:
                lev = self.flags(s).leverage
                rate = 1.0 if px < 2.5 or not self.flags(s).marginable else {3: 0.9, 2: 0.6}.get(lev, 0.3)
                total += mv * rate
            elif px < 5.0:
                total += max(2.5 * abs(h.qty), mv)
            else:
                total += max(5.0 * abs(h.qty), 0.3 * mv)
        return total

    def _day_used(self) -> float:
        return sum(h.day_qty * abs(h.cost / h.qty) for h in self.holdings.values() if h.qty)

    def regt_buying_power(self) -> float:
        """Reg T buying power: (equity - initial margin) x 2 less open orders (cash account: cash less open buys)."""
        if not self.margin:
            return self.cash - self.reserved_buy()
        return max(self.equity() - self.initial_margin(), 0.0) * 2.0 - self.reserved_buy()

    def daytrading_buying_power(self) -> float:
        """4 x (last_equity - last_maintenance_margin), less what today's open positions and orders use; 0 unless PDT."""
        if self.multiplier != 4:
            return 0.0
        base = 4.0 * max(self.last_equity - self.last_maintenance_margin, 0.0)
        return max(base - self._day_used(), 0.0) - self.reserved_buy()

    def non_marginable_buying_power(self) -> float:
        """What a non-marginable asset may use: excess equity (cash account: cash) less open orders."""
        if not self.margin:
            return self.cash - self.reserved_buy()
        return max(self.equity() - self.initial_margin(), 0.0) - self.reserved_buy()

    def buying_power(self) -> float:
        """Alpaca's buying_power: day-trading BP at multiplier 4, Reg T BP at 2, cash less open buys at 1."""
        m = self.multiplier
        if m == 4:
            return self.daytrading_buying_power()
        if m == 2:
            return self.regt_buying_power()
        return self.cash - self.reserved_buy()

    def available_qty(self, symbol: str, exclude: SimOrder | None = None) -> float:
        """Shares held long minus shares promised to open sells (an OCO pair counts once); <= 0 when flat or short."""
        held = self.held_qty(symbol)
        promised = sum(o.remaining for o in self.open_orders()
                       if o.is_open and o.status not in ("held",) and o.side == SELL and o.symbol == symbol
                       and o is not exclude and not (o.siblings and o.type in ("stop", "stop_limit")
                                                     and any(s.is_open for s in o.siblings)))
        promised += sum(o.remaining for o in self.open_orders()
                        if o.status == "held" and o.armed and o.side == SELL and o.symbol == symbol
                        and o is not exclude and not any(s.is_open for s in o.siblings))
        return held - promised

    def _cover_available(self, symbol: str, exclude: SimOrder | None = None) -> float:
        """Shares short minus shares promised to open buys to cover (0 when long or flat)."""
        held = self.held_qty(symbol)
        if held >= 0:
            return 0.0
        promised = sum(o.remaining for o in self.open_orders()
                       if o.is_open and o.status != "held" and o.side == BUY and o.symbol == symbol
                       and o is not exclude and not (o.siblings and o.type in ("stop", "stop_limit")))
        return -held - promised

    def long_market_value(self) -> float:
        """Long market value at the last known prices."""
        return sum(h.qty * self.quote(s) for s, h in self.holdings.items() if h.qty > 0)

    def short_market_value(self) -> float:
        """Short market value (negative) at the last known prices."""
        return sum(h.qty * self.quote(s) for s, h in self.holdings.items() if h.qty < 0)

    def market_value(self) -> float:
        """Net market value of all positions."""
        return self.long_market_value() + self.short_market_value()

    def equity(self) -> float:
        """Cash plus long market value plus (negative) short market value."""
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
        if not symbol:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "symbol is required")
        if symbol not in self._cols:
            raise SimReject(422, wire.CODE_BAD_REQUEST, f'asset "{symbol}" not found')
        if math.isnan(self.quote(symbol)):
            raise SimReject(422, wire.CODE_UNPROCESSABLE,
                            f'asset "{symbol}" has no price in this replay (no bars); the sim cannot take orders for it',
                            symbol=symbol)
        side = {"buy": BUY, "sell": SELL}.get(_text(body, "side"))
        if side is None:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid side {body.get('side')!r}")
        typ = _text(body, "type") or _text(body, "order_type")
        if typ not in ORDER_TYPES:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid order type {typ!r}")
        tif = _text(body, "time_in_force")
        if tif not in TIFS:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid time_in_force {tif!r}")
        if tif not in TIF_BY_TYPE[typ]:
            raise SimReject(422, wire.CODE_UNPROCESSABLE,
                            f"invalid time_in_force {tif} for {typ} orders (allowed: {', '.join(TIF_BY_TYPE[typ])})")
        ext = body.get("extended_hours", False)
        if ext is None:
            ext = False
        if not isinstance(ext, bool):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"extended_hours must be a boolean, got {ext!r}")
        if ext and (typ != "limit" or tif != "day"):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "extended hours order must be DAY limit orders")

        qty = _float(body.get("qty"), "qty")
        notional = _float(body.get("notional"), "notional")
        if qty is not None and notional is not None:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "qty and notional cannot both be set")
        if notional is not None:
            if not notional >= 1.0:
                raise SimReject(422, wire.CODE_BAD_REQUEST, "notional must be >= 1")
            if typ != "market" or tif != "day" or order_class != "simple":
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "notional orders must be simple market day orders")
            self._check_tick(notional, "notional", cents_only=True)
        elif qty is None:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "qty or notional is required")
        elif not qty > 0:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "qty must be > 0")
        if qty is not None and _off_grid(qty, 9):
            raise SimReject(422, wire.CODE_BAD_REQUEST, f"qty {wire.num(qty)} has more than 9 decimal places")

        limit = _float(body.get("limit_price"), "limit_price")
        stop = _float(body.get("stop_price"), "stop_price")
        trail_price = _float(body.get("trail_price"), "trail_price")
        trail_percent = _float(body.get("trail_percent"), "trail_percent")
        if order_class == "oco":
            if typ != "limit":
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "oco orders must be limit orders")
            if limit is None:
                limit = _exit_prices(body)[0]
        if typ in ("limit", "stop_limit") and not (limit and limit > 0):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "limit_price is required and must be > 0")
        if typ in ("stop", "stop_limit") and not (stop and stop > 0):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "stop_price is required and must be > 0")
        if typ == "trailing_stop":
            if (trail_price is None) == (trail_percent is None):
                raise SimReject(422, wire.CODE_UNPROCESSABLE,
                                "trailing_stop orders need exactly one of trail_price and trail_percent")
            if not ((trail_price or 0) > 0 or (trail_percent or 0) > 0) or (trail_percent or 0) >= 100:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "trail_price must be > 0; trail_percent in (0, 100)")
        for name, v in (("limit_price", limit), ("stop_price", stop), ("trail_price", trail_price)):
            if v is not None:
                self._check_tick(v, name)
        fractional = notional is not None or (qty is not None and qty != math.floor(qty))
        if fractional:
            if not self.flags(symbol).fractionable:
                raise SimReject(403, wire.CODE_FORBIDDEN, f'asset "{symbol}" is not fractionable', symbol=symbol)
            if typ not in ("market", "limit") or tif != "day" or order_class != "simple":
                raise SimReject(422, wire.CODE_UNPROCESSABLE,
                                "fractional orders must be simple market or limit orders with time_in_force day")
        if tif == "opg" and self.is_open:
            raise SimReject(422, wire.CODE_UNPROCESSABLE,
                            "opg orders are accepted only while the market is closed (before 09:28 ET)")
        if tif == "cls" and self.is_open and self._session_close() - self.now < CLS_CUTOFF:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "cls orders are not accepted after 15:50 ET")

        est_qty = qty if qty is not None else notional / self._est_price_for(symbol, side)
        o = self._new_order(cid, symbol, side, est_qty, typ, tif, order_class, limit, stop)
        o.notional, o.trail_price, o.trail_percent, o.extended_hours = notional, trail_price, trail_percent, ext
        if typ == "trailing_stop":
            o.hwm = self.quote(symbol)
        if order_class == "oco":
            tp, sl = _exit_prices(body)
            for name, v in (("take_profit.limit_price", tp), ("stop_loss.stop_price", sl[0]),
                            ("stop_loss.limit_price", sl[1])):
                if v is not None:
                    self._check_tick(v, name)
            o.type, o.limit_price, o.stop_price = "limit", tp, None
            o.legs = [self._new_order(str(uuid.uuid4()), symbol, side, qty, "stop" if sl[1] is None else "stop_limit",
                                      tif, order_class, sl[1], sl[0], parent=o)]
            o.siblings, o.legs[0].siblings = [o.legs[0]], [o]
        elif order_class in ("bracket", "oto"):
            tp, sl = _exit_prices(body, need_both=order_class == "bracket")
            for name, v in (("take_profit.limit_price", tp), ("stop_loss.stop_price", sl[0]),
                            ("stop_loss.limit_price", sl[1])):
                if v is not None:
                    self._check_tick(v, name)
            if typ not in ("market", "limit"):
                raise SimReject(422, wire.CODE_UNPROCESSABLE, f"{order_class} orders must be market or limit orders")
            if tif not in ("day", "gtc"):
                raise SimReject(422, wire.CODE_UNPROCESSABLE, f"{order_class} orders must be day or gtc")
            self._check_bracket_levels(o, tp, sl[0])
            if tp is not None:
                o.legs.append(self._new_order(str(uuid.uuid4()), symbol, -side, qty, "limit", tif,
                                              order_class, tp, None, parent=o, held=True))
            if sl[0] is not None:
                o.legs.append(self._new_order(str(uuid.uuid4()), symbol, -side, qty,
                                              "stop" if sl[1] is None else "stop_limit", tif, order_class,
                                              sl[1], sl[0], parent=o, held=True))
            if len(o.legs) == 2:
                o.legs[0].siblings, o.legs[1].siblings = [o.legs[1]], [o.legs[0]]
        self._check_position_side(o)
        self._check_funds(o)
        self._check_wash(o)
        for x in [o, *o.legs]:
            self.orders[x.id] = x
            self._maybe_open[x.id] = x
            self.by_client_id[x.client_order_id] = x
        self._release_or_queue(o)
        return o

    def _check_tick(self, v: float, name: str, cents_only: bool = False) -> None:
        """Alpaca's tick rule, unless this sim was started for exact-price parity replays."""
        if not self.config.exact_prices:
            _check_tick(v, name, cents_only)

    def _est_price_for(self, symbol: str, side: int) -> float:
        """The price a notional order is sized at before it fills (last price, plus slippage for a buy)."""
        q = self.quote(symbol)
        return q * (1.0 + self.config.slippage) if side == BUY else q

    def _session_close(self) -> pd.Timestamp:
        """When the current session's last bar closes."""
        return self.panel.index[int(self._run_end[min(self.k, len(self.panel.index) - 1)])] + MINUTE

    def _release_or_queue(self, o: SimOrder) -> None:
        """Route an order now (pending_new, then new), or queue it (accepted) while the market is closed.

        Extended-hours limit orders are routed at once: they may work outside the regular session.
        """
        if self.is_open or o.extended_hours:
            self._route(o)
        else:
            o.status, o.updated_at = "accepted", self.now
            self._event("accepted", o)

    def _route(self, o: SimOrder) -> None:
        self._set_status(o, "pending_new", "pending_new")
        self._set_status(o, "new", "new")

    def _check_bracket_levels(self, o: SimOrder, tp: float | None, sl: float | None) -> None:
        """Alpaca's rule: take-profit at least $0.01 beyond the base price, stop-loss at least $0.01 short of it."""
        base = o.limit_price if o.type == "limit" else self.quote(o.symbol)
        base_txt = wire.num(round(base, 4))
        cent = 0.01 - 1e-9
        if o.side == BUY:
            if tp is not None and not tp >= base + cent:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "take_profit.limit_price must be >= base_price + 0.01",
                                base_price=base_txt)
            if sl is not None and not sl <= base - cent:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "stop_loss.stop_price must be <= base_price - 0.01",
                                base_price=base_txt)
        else:
            if tp is not None and not tp <= base - cent:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "take_profit.limit_price must be <= base_price - 0.01",
                                base_price=base_txt)
            if sl is not None and not sl >= base + cent:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, "stop_loss.stop_price must be >= base_price + 0.01",
                                base_price=base_txt)

    def _new_order(self, cid: str, symbol: str, side: int, qty: float, typ: str, tif: str, order_class: str,
                   limit: float | None, stop: float | None, parent: SimOrder | None = None,
                   held: bool = False) -> SimOrder:
        return SimOrder(
            id=str(uuid.uuid4()), client_order_id=cid, symbol=symbol, side=side, qty=qty, type=typ, tif=tif,
            order_class=order_class, created_at=self.now, updated_at=self.now, eligible_bar=self.k,
            limit_price=limit, stop_price=stop, parent=parent, status="held" if held else "new",
            exact=self.config.exact_prices,
        )

    def _check_position_side(self, o: SimOrder, replacing: SimOrder | None = None) -> None:
        """A sell beyond the shares held long is refused; a sell when flat or short opens a short (margin only)."""
        held = self.held_qty(o.symbol)
        if replacing is not None and (replacing.parent is not None or replacing.siblings):
            if o.qty > replacing.remaining + 1e-9:  # an OCO/bracket member's shares are promised once, by its group
                raise SimReject(403, wire.CODE_FORBIDDEN,
                                f"insufficient qty available for order (requested: {wire.num(o.qty)}, "
                                f"available: {wire.num(replacing.remaining)})", symbol=o.symbol)
            return
        if o.side == SELL:
            if o.parent is not None and o.parent.side == BUY and o.parent.order_class != "oco":
                return  # an exit leg sells what its entry will buy
            if held > 0 or (o.order_class == "oco" and held >= 0):
                avail = self.available_qty(o.symbol, exclude=replacing)
                if o.qty > avail + 1e-9:
                    raise SimReject(403, wire.CODE_FORBIDDEN,
                                    f"insufficient qty available for order (requested: {wire.num(o.qty)}, "
                                    f"available: {wire.num(max(avail, 0.0))})", symbol=o.symbol)
                return
            if o.notional is not None:
                raise SimReject(403, wire.CODE_FORBIDDEN,
                                f"insufficient qty available for order (requested: notional {wire.num(o.notional)}, "
                                "available: 0)", symbol=o.symbol)
            self._check_short(o)
        elif held < 0:
            avail = self._cover_available(o.symbol, exclude=replacing)
            if o.qty > avail + 1e-9:
                raise SimReject(403, wire.CODE_FORBIDDEN,
                                f"insufficient qty available for order (requested: {wire.num(o.qty)}, "
                                f"available: {wire.num(max(avail, 0.0))})", symbol=o.symbol)
        elif held == 0:  # flat: a buy opens a long, which Alpaca refuses while a sale opening a short is open
            for x in self.open_orders():
                if x.pending and x.symbol == o.symbol and x.side == SELL and x.parent is None and x is not replacing:
                    raise SimReject(403, wire.CODE_FORBIDDEN, "cannot open a long buy while a short sell order is open",
                                    symbol=o.symbol, existing_order_id=x.id)

    def _check_short(self, o: SimOrder) -> None:
        """Alpaca's short-sale checks: a shortable, easy-to-borrow (or day-only) whole-share sale on a margin account."""
        f = self.flags(o.symbol)
        if not self.shorting_enabled:
            raise SimReject(403, wire.CODE_FORBIDDEN, "account is not allowed to short", symbol=o.symbol)
        if not f.shortable:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f'asset "{o.symbol}" cannot be sold short', symbol=o.symbol)
        if o.qty != math.floor(o.qty):
            raise SimReject(422, wire.CODE_UNPROCESSABLE, "fractional orders cannot be sold short", symbol=o.symbol)
        if not f.easy_to_borrow and o.tif != "day":
            raise SimReject(422, wire.CODE_UNPROCESSABLE,
                            f"only day orders are allowed for hard-to-borrow asset {o.symbol}", symbol=o.symbol)
        for x in self.open_orders():
            if x.pending and x.symbol == o.symbol and x.side == BUY and x.parent is None:
                raise SimReject(403, wire.CODE_FORBIDDEN, "cannot open a short sell while a long buy order is open",
                                symbol=o.symbol, existing_order_id=x.id)

    def _check_funds(self, o: SimOrder, replacing: SimOrder | None = None) -> None:
        """Buying power for the part of the order that opens a position (Alpaca's buying-power check)."""
        cost = self._opening_value(o)
        if cost <= 0.0 and not math.isnan(cost):
            return
        bp = self.buying_power() + (self._opening_value(replacing) if replacing is not None
                                    and replacing.is_open and replacing.status != "held" else 0.0)
        if not self.flags(o.symbol).marginable and self.margin:
            bp = min(bp, self.non_marginable_buying_power())
        if not cost <= bp:  # a NaN estimate refuses rather than slipping through
            raise SimReject(403, wire.CODE_FORBIDDEN, "insufficient buying power",
                            buying_power=wire.num(round(bp, 2)), cost_basis=wire.num(round(cost, 2)))

    def _check_wash(self, o: SimOrder) -> None:
        """Refuse an order that could trade against one of our own opposite working orders."""
        if o.type not in ("market", "limit"):
            return
        for x in self.open_orders():
            if not (x.pending and x.symbol == o.symbol and x.side == -o.side and x.type in ("market", "limit")):
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
        """Cancel an open order (pending_cancel, then canceled) with its legs / OCO partner; 422 once closed."""
        o = self.get(order_id)
        if not o.is_open:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"order is not cancelable (status {o.status})")
        self._set_status(o, "pending_cancel", "pending_cancel")
        for x in [o, *o.legs, *o.siblings]:
            if x.is_open:
                self._set_status(x, "canceled", "canceled")

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every open order; Alpaca's 207 list of {id, status, body}."""
        out = []
        for o in self.open_orders():
            if o.is_open:
                self.cancel(o.id)
                out.append({"id": o.id, "status": 200, "body": None})
        return out

    def replace(self, order_id: str, body: dict[str, Any]) -> SimOrder:
        """PATCH an open limit/stop order: pending_replace, then a new order replaces it (replaced + new)."""
        body = _body(body)
        o = self.get(order_id)
        old_status = o.status
        if not o.is_open or (o.status == "held" and not o.armed) or o.type == "market" or o.filled_qty > 0:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"order is not replaceable (status {o.status}, type {o.type})")
        qty = _float(body.get("qty"), "qty")
        if qty is not None and not qty > 0:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "qty must be > 0")
        qty = o.qty if qty is None else qty
        if qty != math.floor(qty) and (o.type not in ("market", "limit") or o.tif != "day"):
            raise SimReject(422, wire.CODE_UNPROCESSABLE,
                            "fractional orders must be simple market or limit orders with time_in_force day")
        cid = _text(body, "client_order_id") or str(uuid.uuid4())
        if len(cid) > 128:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "client_order_id must be no more than 128 characters")
        if cid in self.by_client_id:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "client_order_id must be unique")
        tif = _text(body, "time_in_force") or o.tif
        if tif not in TIFS or tif not in TIF_BY_TYPE[o.type]:
            raise SimReject(422, wire.CODE_UNPROCESSABLE, f"invalid time_in_force {tif!r} for {o.type} orders")
        limit = _float(body.get("limit_price"), "limit_price")
        stop = _float(body.get("stop_price"), "stop_price")
        trail = _float(body.get("trail"), "trail")
        for name, v in (("limit_price", limit), ("stop_price", stop), ("trail", trail)):
            if v is not None and not v > 0:
                raise SimReject(422, wire.CODE_UNPROCESSABLE, f"{name} must be > 0")
            if v is not None and name != "trail":
                self._check_tick(v, name)
        trail_now = o.trail_price if o.trail_price is not None else o.trail_percent
        if (qty == o.qty and tif == o.tif and (limit is None or limit == o.limit_price)
                and (stop is None or stop == o.stop_price) and (trail is None or trail == trail_now)):
            raise SimReject(403, wire.CODE_FORBIDDEN, "order parameters are not changed")  # Alpaca's answer
        limit = o.limit_price if limit is None else limit
        stop = o.stop_price if stop is None else stop
        new = self._new_order(cid, o.symbol, o.side, qty, o.type, tif, o.order_class, limit, stop, parent=o.parent)
        new.replaces, new.extended_hours, new.armed = o.id, o.extended_hours, o.armed
        new.trail_price, new.trail_percent, new.hwm = o.trail_price, o.trail_percent, o.hwm
        if trail is not None and o.type == "trailing_stop":
            if o.trail_price is not None:
                new.trail_price = trail
            else:
                new.trail_percent = trail
        self._check_position_side(new, replacing=o)
        self._check_funds(new, replacing=o)
        new.siblings = o.siblings
        for s in o.siblings:
            s.siblings = [new if x is o else x for x in s.siblings]
        if o.parent is not None:
            o.parent.legs = [new if x is o else x for x in o.parent.legs]
        self._set_status(o, "pending_replace", "pending_replace")
        o.replaced_by, o.replaced_at = new.id, self.now
        self._set_status(o, "replaced", "replaced")
        self.orders[new.id] = new
        self._maybe_open[new.id] = new
        self.by_client_id[cid] = new
        if old_status == "held":
            new.status = "held"
            self._event("new", new)
        else:
            self._release_or_queue(new)
        return new

    def close_position(self, symbol: str, qty: float | None = None, percentage: float | None = None) -> SimOrder:
        """Close (part of) a long or short position at market: DELETE /v2/positions/{symbol}."""
        symbol = symbol.upper()
        h = self.holdings.get(symbol)
        if h is None or h.qty == 0:
            raise SimReject(404, wire.CODE_NOT_FOUND, "position does not exist")
        if qty is not None and percentage is not None:
            raise SimReject(422, wire.CODE_BAD_REQUEST, "only one of qty or percentage may be given")
        if percentage is not None:
            if not 0 < percentage <= 100:
                raise SimReject(422, wire.CODE_BAD_REQUEST, "percentage must be in (0, 100]")
            qty = math.floor(abs(h.qty) * percentage / 100.0 * 1e9) / 1e9
        qty = abs(h.qty) if qty is None else qty
        return self.submit({"symbol": symbol, "qty": qty, "side": "sell" if h.qty > 0 else "buy",
                            "type": "market", "time_in_force": "day"})

    # ---------------------------------------------------------------- fills
    def _process_bar(self, k: int) -> None:
        p, cfg = self.panel, self.config
        room = np.floor(cfg.max_volume_share * np.nan_to_num(p.volume[k]))
        seen: set[str] = set()
        first, last = bool(self._first_of_run[k]), bool(self._last_of_run[k])
        for o in self.open_orders():
            if o.id in seen or not o.active or o.eligible_bar > k:
                continue
            if (o.tif == "opg" and not first) or (o.tif == "cls" and not last):
                if o.tif == "opg":  # missed its opening auction (e.g. no bar at the open): Alpaca cancels it
                    self._set_status(o, "canceled", "canceled")
                continue
            j = self._cols[o.symbol]
            if np.isnan(p.close[k, j]):
                if o.tif in ("opg", "cls"):
                    self._set_status(o, "canceled", "canceled")
                continue  # no bar for this symbol: the order waits for the next bar that exists
            op, hi, lo, cl = float(p.open[k, j]), float(p.high[k, j]), float(p.low[k, j]), float(p.close[k, j])
            group = [o, *o.siblings]
            seen.update(x.id for x in group)
            if o.tif == "cls":  # the closing auction: the session's last bar's close
                target, price = o, (market_fill_price_nb(cl, o.side, cfg.slippage) if o.type == "market"
                                    else limit_fill_price_nb(o.side, o.limit_price, cl, cl, cl))
            elif o.siblings:
                target, price = self._group_fill(group, op, hi, lo)
            else:
                target, price = o, self._fill_price(o, op, hi, lo)
            if target is not None and not np.isnan(price):
                target.triggered = True
                if target.notional is not None and target.filled_qty == 0:
                    target.qty = self._notional_qty(target, price)
                qty = min(target.remaining, room[j]) if target.tif != "fok" else target.remaining
                if target.tif == "fok" and target.remaining > room[j]:
                    qty = 0.0
                if qty > 0:
                    room[j] -= qty
                    self._fill(target, qty, price, k)
            elif o.type == "trailing_stop" and o.hwm is not None:  # not triggered: the mark follows the price
                o.hwm = max(o.hwm, hi) if o.side == SELL else min(o.hwm, lo)
            if o.tif in ("ioc", "fok", "opg", "cls") and o.is_open:
                self._set_status(o, "canceled", "canceled")

    def _notional_qty(self, o: SimOrder, price: float) -> float:
        """Shares a notional order buys (or sells) at `price`, rounded down to 9 decimals."""
        q = math.floor(o.notional / price * 1e9) / 1e9
        if o.side == SELL:
            q = min(q, max(self.held_qty(o.symbol), 0.0))
        return q

    def _fill_price(self, o: SimOrder, op: float, hi: float, lo: float) -> float:
        if o.type == "market" or (o.triggered and o.type in ("stop", "trailing_stop")):
            return market_fill_price_nb(op, o.side, self.config.slippage)
        if o.type == "limit":
            return limit_fill_price_nb(o.side, o.limit_price, op, hi, lo)
        if o.type == "stop":
            return stop_fill_price_nb(o.side, o.stop_price, op, hi, lo)
        if o.type == "trailing_stop":
            return stop_fill_price_nb(o.side, o.trail_stop, op, hi, lo)
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
        before = h.qty
        signed = o.side * qty
        self.cash -= signed * price + fees
        if h.qty == 0 or (h.qty > 0) == (signed > 0):  # open or add
            h.qty += signed
            h.cost += signed * price
            h.day_qty += qty
        else:  # reduce, close, or (never by submit's checks) cross through zero
            closing = min(qty, abs(h.qty))
            avg = h.cost / h.qty
            h.qty += o.side * closing
            h.cost = 0.0 if abs(h.qty) <= 1e-9 else h.cost + o.side * closing * avg
            h.day_qty = max(h.day_qty - closing, 0.0)
            rest = qty - closing
            if rest > 1e-12:
                h.qty, h.cost, h.day_qty = o.side * rest, o.side * rest * price, rest
        if abs(h.qty) <= 1e-9:
            self.holdings.pop(o.symbol, None)
        o.filled_avg_price = price if o.filled_qty == 0 else (
            (o.filled_avg_price * o.filled_qty + price * qty) / (o.filled_qty + qty))
        o.filled_qty += qty
        o.fees += fees
        o.filled_at = self.panel.index[k]
        done = o.remaining <= 1e-9
        self._set_status(o, "filled" if done else "partially_filled", "fill" if done else "partial_fill",
                         price=price, qty=qty)
        self._activity("FILL", order=o, price=price, qty=qty, short=o.side == SELL and before <= 0, done=done)
        if fees > 0:
            self._activity("FEE", -fees, symbol=o.symbol, description=f"order fees ({o.id})")
        for s in o.siblings:  # the OCO partner: gone on a full fill, shrunk on a partial one
            if s.is_open:
                if done:
                    self._set_status(s, "canceled", "canceled")
                else:
                    s.qty = s.filled_qty + o.remaining
        if o.parent is None and o.legs and o.order_class in ("bracket", "oto") and done:
            for leg in o.legs:
                if leg.status == "held" and not leg.armed:
                    leg.eligible_bar, leg.armed = k + 1, True
                    if leg.siblings and leg.type in ("stop", "stop_limit"):
                        continue  # Alpaca shows the stop-loss leg "held" while its take-profit works
                    self._set_status(leg, "new", "new")

    # ---------------------------------------------------------------- activities and events
    def _activity(self, kind: str, amount: float = 0.0, *, order: SimOrder | None = None, price: float = 0.0,
                  qty: float = 0.0, short: bool = False, done: bool = False, symbol: str | None = None,
                  description: str = "") -> None:
        """Record one /v2/account/activities entry (FILL, FEE, CSD)."""
        t = self.panel.index[self.k] if order is not None and not self.done else self.now
        aid = f"{pd.Timestamp(t).tz_convert('UTC').strftime('%Y%m%d%H%M%S%f')[:17]}::{uuid.uuid4()}"
        if kind == "FILL":
            o = order
            self.activities.append({
                "id": aid, "account_id": wire.ACCOUNT_ID, "activity_type": "FILL", "transaction_time": wire.ts(o.filled_at),
                "type": "fill" if done else "partial_fill", "price": wire.num(price, exact=o.exact), "qty": wire.num(qty),
                "side": "buy" if o.side == BUY else ("sell_short" if short else "sell"), "symbol": o.symbol,
                "leaves_qty": wire.num(max(o.remaining, 0.0)), "order_id": o.id, "cum_qty": wire.num(o.filled_qty),
                "order_status": o.status, "_t": o.filled_at})
            return
        day = self.panel.index[min(self.k, len(self.panel.index) - 1)].tz_convert("America/New_York")
        self.activities.append({
            "id": aid, "account_id": wire.ACCOUNT_ID, "activity_type": kind, "date": day.strftime("%Y-%m-%d"),
            "net_amount": wire.num(round(amount, 4)), "description": description, "status": "executed",
            **({"symbol": symbol} if symbol else {}), "_t": pd.Timestamp(t)})

    def _set_status(self, o: SimOrder, status: str, event: str, **extra: Any) -> None:
        o.status, o.updated_at = status, self.now
        if status == "canceled":
            o.canceled_at = self.now
        elif status == "expired":
            o.expired_at = self.now
        self._event(event, o, **extra)

    def _event(self, event: str, o: SimOrder, price: float | None = None, qty: float | None = None) -> None:
        if self.stream_events:
            h = self.holdings.get(o.symbol)
            data: dict[str, Any] = {"event": event, "timestamp": wire.ts(self.now), "order": wire.order_json(o)}
            if price is not None:
                data.update(execution_id=str(uuid.uuid4()), price=wire.num(price, exact=o.exact), qty=wire.num(qty),
                            position_qty=wire.num(h.qty if h else 0.0))
            self.outbox.append(data)
        # the acknowledgements one request sends together are debug chatter; what changes the book is info
        level = log.debug if event in _ACK_EVENTS else log.info
        level("order_event", ticker=o.symbol, client_order_id=o.client_order_id, status=o.status,
              reason=event, order_type=o.type, side="buy" if o.side > 0 else "sell",
              qty=qty if qty is not None else o.qty, price=price)

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Take the pending trade updates and closed bars (for the websockets)."""
        ev, bars = self.outbox, self.bars_out
        self.outbox, self.bars_out = [], []
        return ev, bars


def load_fill_kernels() -> None:
    """Load strategies/fills.py's numba kernels now: their first call in a process takes ~1 s (cache load),
    which would otherwise stall the first fill's step and every request queued behind it."""
    market_fill_price_nb(100.0, BUY, 0.0)
    limit_fill_price_nb(BUY, 100.0, 100.0, 100.0, 100.0)
    stop_fill_price_nb(BUY, 100.0, 100.0, 100.0, 100.0)
    stop_limit_fill_price_nb(BUY, 100.0, 100.0, 100.0, 100.0, 100.0)
    bracket_exit_long_nb(100.0, 101.0, 99.0, 98.0, 102.0)
    order_fee_nb(1.0, 0.0, 0.0)


_ACK_EVENTS = frozenset({"pending_new", "new", "accepted", "held", "pending_cancel", "pending_replace"})


def _off_grid(v: float, places: int) -> bool:
    """True when `v` has more than `places` decimals (float noise of a typed decimal tolerated)."""
    scaled = v * 10**places
    if not math.isfinite(scaled) or abs(scaled) >= 1e15:
        return False  # no float this large carries a fraction to check
    return abs(scaled - round(scaled)) > 1e-6


def _check_tick(v: float, name: str, cents_only: bool = False) -> None:
    """Alpaca's minimum price increment: $0.01 at or above $1.00, $0.0001 below (422 naming the field)."""
    if _off_grid(v, 2 if (v >= 1.0 or cents_only) else 4):
        raise SimReject(422, wire.CODE_UNPROCESSABLE,
                        f"invalid {name} {wire.num(v)}. sub-penny increment does not fulfill minimum pricing criteria")


def _float(x: Any, name: str) -> float | None:
    if x is None or x == "":
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float (10**400)
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
