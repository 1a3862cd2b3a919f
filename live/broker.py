"""The broker adapter: a small `Broker` Protocol and `AlpacaBroker`, a thin layer over alpaca-py.

One code path for both venues: with ALPACA_API_KEY/ALPACA_SECRET_KEY it talks to Alpaca paper;
with a sim URL it talks to live.sim on loopback. What it adds to alpaca-py:
- idempotent client_order_ids derived from strategy, symbol, bar time and intent (a short hash),
  so a retried or re-run decision can never place a second order;
- retries with jittered exponential backoff on 429/5xx and connection errors, waiting for
  X-Ratelimit-Reset on a 429 (alpaca-py's own fixed 3 x 3 s retry loop is switched off);
- a duplicate client_order_id answer (422/409) means "already placed": the order is looked up;
- reconciliation of open orders and positions at start.
Errors are tierlab.errors.BrokerError with `status` and `retryable`; keys never appear in them.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order, Position, TradeAccount
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from strategies.intents import OrderIntent
from tierlab.errors import BrokerError, ConfigError
from tierlab.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")


@dataclass
class Reconciliation:
    """The broker's view at start: open orders by client_order_id, positions by symbol, account."""

    open_orders: dict[str, Order] = field(default_factory=dict)
    positions: dict[str, float] = field(default_factory=dict)
    cash: float = 0.0
    equity: float = 0.0


class Broker(Protocol):
    """What the live runner needs from a broker."""

    def submit(self, intent: OrderIntent) -> Order:
        """Place an intent once (idempotent by its client_order_id) and return the broker's order."""
        ...

    def cancel(self, order_id: str) -> None:
        """Cancel one open order."""
        ...

    def open_orders(self) -> list[Order]:
        """All open orders (legs nested)."""
        ...

    def positions(self) -> list[Position]:
        """All open positions."""
        ...

    def account(self) -> TradeAccount:
        """Cash, equity and buying power."""
        ...

    def reconcile(self) -> Reconciliation:
        """Open orders and positions at start, so a restart neither loses nor repeats an order."""
        ...


class AlpacaBroker:
    """`Broker` over alpaca-py's TradingClient (Alpaca paper, or live.sim through `url`)."""

    def __init__(self, api_key: str, secret_key: str, *, url: str | None = None, paper: bool = True,
                 max_attempts: int = 8, max_wait_s: float = 65.0,
                 sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time) -> None:
        if not api_key or not secret_key:
            raise ConfigError("AlpacaBroker needs an API key and a secret key")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        self.client = TradingClient(api_key, secret_key, paper=paper, url_override=url)
        self.client._retry = 0  # alpaca-py would sleep 3 s x 3 on 429/504 by itself; we retry here
        self.venue = url or ("alpaca-paper" if paper else "alpaca-live")
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self._sleep = sleep
        self._now = now

    @classmethod
    def from_env(cls, sim_url: str | None = None, **kwargs: Any) -> AlpacaBroker:
        """Real Alpaca paper when ALPACA_API_KEY/ALPACA_SECRET_KEY are set and no sim URL is given; else the sim."""
        if sim_url:
            from live.sim.server import sim_keys

            key, secret = sim_keys()
            return cls(key, secret, url=sim_url, **kwargs)
        key, secret = os.environ.get("ALPACA_API_KEY"), os.environ.get("ALPACA_SECRET_KEY")
        if not key or not secret:
            raise ConfigError("set ALPACA_API_KEY and ALPACA_SECRET_KEY for Alpaca paper, or pass a sim URL")
        return cls(key, secret, paper=True, **kwargs)

    # -------------------------------------------------------------- retrying core
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **ctx: Any) -> T:
        def once() -> T:
            try:
                return fn(*args)
            except APIError as e:
                raise _broker_error(e, what, ctx) from None
            except requests.RequestException as e:
                raise BrokerError(f"{what} {_ctx(ctx)}: {type(e).__name__} talking to the broker",
                                  retryable=True) from None

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, BrokerError) and e.retryable),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "broker_retry", what=what, attempt=rs.attempt_number, status=getattr(rs.outcome.exception(), "status", None),
                wait_s=round(rs.upcoming_sleep, 3), **ctx),
        )
        return retrying(once)

    def _wait(self, rs: RetryCallState) -> float:
        """Until X-Ratelimit-Reset on a 429 (plus jitter), else jittered exponential backoff."""
        exc = rs.outcome.exception() if rs.outcome else None
        reset = getattr(exc, "reset_at", None)
        if reset is not None:
            return min(self.max_wait_s, max(0.0, reset - self._now()) + random.uniform(0.0, 0.5))
        return min(self.max_wait_s, wait_random_exponential(multiplier=0.25, max=8.0)(rs))

    # -------------------------------------------------------------- Broker
    def submit(self, intent: OrderIntent) -> Order:
        """Place the intent once; a duplicate client_order_id answer returns the order already placed."""
        cid = intent.client_order_id
        ctx = {"ticker": intent.symbol, "client_order_id": cid}
        try:
            order = self._call("submit_order", self.client.submit_order, _order_request(intent, cid), **ctx)
        except BrokerError as e:
            if e.status in (409, 422) and "client_order_id" in str(e) and "unique" in str(e):
                order = self._call("get_order_by_client_id", self.client.get_order_by_client_id, cid, **ctx)
                log.info("order_already_placed", status=order.status.value, reason="duplicate_client_order_id", **ctx)
                return order
            log.warning("order_failed", status=e.status, reason=str(e), retryable=e.retryable, **ctx)
            raise
        log.info("order_submitted", status=order.status.value, reason=intent.intent, side=intent.side,
                 qty=intent.qty, order_type=intent.type, **ctx)
        return order

    def order_by_client_id(self, cid: str) -> Order:
        """Look an order up by its client_order_id."""
        return self._call("get_order_by_client_id", self.client.get_order_by_client_id, cid, client_order_id=cid)

    def cancel(self, order_id: str) -> None:
        """Cancel one open order."""
        self._call("cancel_order", self.client.cancel_order_by_id, order_id, order_id=order_id)

    def open_orders(self) -> list[Order]:
        """All open orders, legs nested."""
        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True, limit=500)
        return self._call("get_orders", self.client.get_orders, req)

    def positions(self) -> list[Position]:
        """All open positions."""
        return self._call("get_all_positions", self.client.get_all_positions)

    def account(self) -> TradeAccount:
        """Cash, equity and buying power."""
        return self._call("get_account", self.client.get_account)

    def close_position(self, symbol: str) -> Order:
        """Sell a whole position at market."""
        return self._call("close_position", self.client.close_position, symbol, ticker=symbol)

    def reconcile(self) -> Reconciliation:
        """Read open orders, positions and the account at start (logged as one event)."""
        orders = self.open_orders()
        pos = self.positions()
        acct = self.account()
        rec = Reconciliation(
            open_orders={o.client_order_id: o for o in orders},
            positions={p.symbol: float(p.qty) for p in pos},
            cash=float(acct.cash or 0.0),
            equity=float(acct.equity or 0.0),
        )
        log.info("reconciled", venue=self.venue, open_orders=len(rec.open_orders), positions=len(rec.positions),
                 cash=rec.cash, equity=rec.equity)
        return rec


def _order_request(i: OrderIntent, cid: str) -> OrderRequest:
    common: dict[str, Any] = {"symbol": i.symbol, "qty": i.qty, "side": OrderSide(i.side),
                              "time_in_force": TimeInForce(i.time_in_force), "client_order_id": cid}
    if i.take_profit is not None and i.stop_loss is not None:
        common.update(order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=i.take_profit),
                      stop_loss=StopLossRequest(stop_price=i.stop_loss))
    if i.type == "market":
        return MarketOrderRequest(**common)
    if i.type == "limit":
        return LimitOrderRequest(limit_price=i.limit_price, **common)
    if i.type == "stop":
        return StopOrderRequest(stop_price=i.stop_price, **common)
    return StopLimitOrderRequest(stop_price=i.stop_price, limit_price=i.limit_price, **common)


def _ctx(ctx: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in ctx.items())


def _broker_error(e: APIError, what: str, ctx: dict[str, Any]) -> BrokerError:
    """Translate alpaca-py's APIError: status, Alpaca's code and message; never headers or keys."""
    status = e.status_code
    try:
        code, message = e.code, e.message
    except (ValueError, KeyError, TypeError):
        code, message = None, (str(e) or "no body")[:200]
    retryable = status is not None and (status == 429 or status >= 500)
    err = BrokerError(f"{what} {_ctx(ctx)}: HTTP {status} {message} (code {code})".replace("  ", " "),
                      status=status, retryable=retryable)
    resp = e.response
    reset = resp.headers.get("X-Ratelimit-Reset") if (resp is not None and status == 429) else None
    err.reset_at = float(reset) if reset else None  # type: ignore[attr-defined]
    err.code = code  # type: ignore[attr-defined]
    return err
