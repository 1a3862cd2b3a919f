"""The executor: reads `signals.raw` in a consumer group and places the orders through the broker (SPEC §9).

Exactly once: an entry is acknowledged only after the broker has the order (its answer, or a
lookup by client_order_id finds it), or after the broker refused it for good (logged). Entries a
crashed executor left pending are read again on start (this consumer's own history) and taken
over from other consumers with XAUTOCLAIM; the idempotent client_order_id makes a second submit
a lookup, never a second order. `auto=False` (AUTO_MODE=0) records signals without ordering.
Nothing is sent outside the XNYS regular session (own gate: Alpaca would queue it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import redis

from data.calendar import calendar
from live.state import GROUP, RedisState
from strategies.intents import OrderIntent
from tierlab.errors import BrokerError
from tierlab.log import get_logger

log = get_logger(__name__)


def in_session(t: pd.Timestamp) -> bool:
    """True when `t` (UTC) lies inside an XNYS regular session (half days and holidays included)."""
    cal = calendar()
    day = pd.Timestamp(t.tz_convert("America/New_York").date())
    if not cal.is_session(day):
        return False
    return bool(cal.session_open(day) <= t < cal.session_close(day))


def round_tick(price: float) -> float:
    """A valid price tick: cents from $1, hundredths of a cent below (Alpaca refuses sub-penny prices)."""
    return round(price, 2) if price >= 1.0 else round(price, 4)


class Executor:
    """Consume order signals and place them through a `live.broker.AlpacaBroker`-like broker."""

    def __init__(self, store: RedisState, broker: Any, *, consumer: str = "executor-1", auto: bool = True,
                 clock: str = "bar", min_idle_ms: int = 5_000, tick_round: bool = True,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.r = store.r
        self.broker = broker
        self.consumer = consumer
        self.auto = auto
        self.clock = clock
        self.min_idle_ms = min_idle_ms
        self.tick_round = tick_round
        self._now = now
        self.counts = {"processed": 0, "orders": 0, "rejects": 0, "blocked": 0, "unknown": 0}
        store.ensure_group()

    # ------------------------------------------------------------------ reading
    def _read(self, block_ms: int | None) -> list[tuple[bytes, dict]]:
        k = self.store.keys.signals
        own = self.r.xreadgroup(GROUP, self.consumer, {k: "0"}, count=100)
        entries = own[0][1] if own else []
        if entries:
            return entries
        claimed = self.r.xautoclaim(k, GROUP, self.consumer, self.min_idle_ms, "0-0", count=100)
        if claimed and claimed[1]:
            log.info("signals_reclaimed", count=len(claimed[1]), reason="idle_pending_of_another_consumer")
            return claimed[1]
        got = self.r.xreadgroup(GROUP, self.consumer, {k: ">"}, count=100, block=block_ms)
        return got[0][1] if got else []

    def drain(self, block_ms: int | None = None) -> int:
        """Handle entries until none is waiting; returns how many were acknowledged."""
        done = 0
        while True:
            entries = self._read(block_ms)
            if not entries:
                return done
            for eid, fields in entries:
                if fields is None:  # deleted entry still pending: just ack it
                    self.r.xack(self.store.keys.signals, GROUP, eid)
                    continue
                f = {a.decode(): b.decode() for a, b in fields.items()}
                if self.handle(f):
                    self.r.xack(self.store.keys.signals, GROUP, eid)
                    done += 1
                else:
                    return done  # keep order: retry this entry later
            block_ms = None

    def run(self, stop: Callable[[], bool], block_ms: int = 500) -> None:
        """Loop until `stop()`; Redis outages are waited out (entries stay pending, nothing is lost)."""
        while True:
            try:
                if stop():
                    return
                self.drain(block_ms)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.error("executor_redis_unreachable", reason=type(e).__name__)
                time.sleep(0.5)

    # ------------------------------------------------------------------ handling
    def handle(self, f: dict[str, str]) -> bool:
        """Act on one entry; True when it may be acknowledged."""
        self.counts["processed"] += 1
        kind = f.get("kind")
        if kind not in ("order", "protect") or not self.auto:
            if kind == "order":
                log.info("signal_recorded", ticker=f["symbol"], reason=f.get("intent"), rule="auto_mode_off",
                         client_order_id=f["client_order_id"])
            return True
        t = pd.Timestamp(f["bar_time"]) + pd.Timedelta(minutes=1)
        now = t if self.clock == "bar" else pd.Timestamp(self._now(), unit="s", tz="UTC")
        if not (in_session(t) and in_session(now - pd.Timedelta(microseconds=1))):
            self.counts["blocked"] += 1
            log.warning("order_blocked", ticker=f["symbol"], reason="outside_xnys_session", rule="session_gate",
                        client_order_id=f.get("client_order_id"))
            return True
        if kind == "protect":
            return self._protect(f)
        return self._order(f)

    def _intent(self, f: dict[str, str]) -> OrderIntent:
        def num(x: str | None) -> float | None:
            return float(x) if x not in (None, "", "None") else None

        it = OrderIntent(f["strategy"], f["symbol"], f["side"], float(f["qty"]),
                         pd.Timestamp(int(f["decided"]), unit="s", tz="UTC"), intent=f["intent"],
                         stop_loss=num(f.get("stop_loss")), take_profit=num(f.get("take_profit")))
        if it.client_order_id != f["client_order_id"]:
            raise AssertionError(f"client_order_id mismatch for {f['symbol']}: {it.client_order_id} != "
                                 f"{f['client_order_id']}")
        return it

    def _order(self, f: dict[str, str]) -> bool:
        it = self._intent(f)
        cid = it.client_order_id
        try:
            if it.side == "sell":
                self._cancel_open(it.symbol)
            order = self.broker.submit(it)
        except BrokerError as e:
            if e.retryable or e.status is None:
                return self._lookup(cid, it.symbol, e)
            self.counts["rejects"] += 1
            self._record(cid, it.symbol, "rejected", str(e))
            log.warning("order_rejected", ticker=it.symbol, client_order_id=cid, reason=str(e), status=e.status)
            return True
        except Exception as e:  # unknown outcome (timeout, connection dropped after sending)
            return self._lookup(cid, it.symbol, e)
        self.counts["orders"] += 1
        self._record(cid, it.symbol, str(getattr(order.status, "value", order.status)), str(order.id))
        return True

    def _lookup(self, cid: str, symbol: str, err: BaseException) -> bool:
        """Outcome unknown: the order is looked up by client_order_id, never decided again."""
        self.counts["unknown"] += 1
        try:
            o = self.broker.order_by_client_id(cid)
        except Exception as e:
            log.warning("order_outcome_unknown", ticker=symbol, client_order_id=cid, reason=type(err).__name__,
                        lookup=type(e).__name__, action="left pending; retried later")
            return False
        log.info("order_found_by_lookup", ticker=symbol, client_order_id=cid, status=str(o.status))
        self.counts["orders"] += 1
        self._record(cid, symbol, str(getattr(o.status, "value", o.status)), str(o.id))
        return True

    def _open_orders(self, symbol: str) -> list[Any]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, symbols=[symbol], nested=False, limit=500)
        return list(self.broker._call("get_orders", self.broker.client.get_orders, req, ticker=symbol))

    def _cancel_open(self, symbol: str) -> None:
        """Cancel the symbol's working orders (bracket legs) before a kernel exit sells the position."""
        for o in self._open_orders(symbol):
            try:
                self.broker.cancel(str(o.id))
                log.info("order_canceled", ticker=symbol, client_order_id=o.client_order_id, reason="kernel_exit")
            except BrokerError as e:
                if e.status != 422:  # 422: already filled/canceled meanwhile
                    raise

    def _protect(self, f: dict[str, str]) -> bool:
        """Re-anchor a filled entry's exits at the kernel's fill-based stop and take-profit.

        The bracket legs (anchored at the decision close) are canceled and one OCO sell (take-profit
        limit + stop) goes in their place, with an idempotent client_order_id of its own.
        """
        from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, StopLossRequest, TakeProfitRequest

        from strategies.intents import client_order_id

        sym = f["symbol"]
        stop, tp, qty = float(f["stop_loss"]), float(f["take_profit"]), float(f["qty"])
        if math.isnan(stop) or math.isnan(tp) or not qty > 0:
            return True
        cid = client_order_id(f["strategy"], sym, pd.Timestamp(f["bar_time"]), "protect")
        if self.tick_round:
            stop, tp = round_tick(stop), round_tick(tp)
        try:
            self._cancel_open(sym)
            req = LimitOrderRequest(symbol=sym, qty=qty, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                                    limit_price=tp, order_class=OrderClass.OCO, client_order_id=cid,
                                    take_profit=TakeProfitRequest(limit_price=tp),
                                    stop_loss=StopLossRequest(stop_price=stop))
            o = self.broker._call("submit_order", self.broker.client.submit_order, req, ticker=sym,
                                  client_order_id=cid)
        except BrokerError as e:
            if e.status in (409, 422) and "unique" in str(e):
                return True  # placed by an earlier life of this executor
            if e.retryable or e.status is None:
                return self._lookup(cid, sym, e)
            self.counts["rejects"] += 1
            log.warning("reanchor_rejected", ticker=sym, client_order_id=cid, reason=str(e), status=e.status)
            return True
        except Exception as e:
            return self._lookup(cid, sym, e)
        self._record(cid, sym, str(getattr(o.status, "value", o.status)), str(o.id))
        log.info("exits_reanchored", ticker=sym, stop=stop, take_profit=tp, rule="bracket", client_order_id=cid)
        return True

    def _record(self, cid: str, symbol: str, status: str, detail: str) -> None:
        self.r.xadd(self.store.keys.sent, {"client_order_id": cid, "symbol": symbol, "status": status,
                                           "detail": detail[:300]})
