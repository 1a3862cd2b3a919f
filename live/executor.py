"""The executor: reads `signals.raw` in a consumer group and places the orders through the broker (SPEC §9).

Exactly once: an entry is acknowledged only after the broker has the order (its answer, or a
lookup by client_order_id finds it), or after a definitive refusal (the broker's 4xx, or a sell of
shares not held, which sends nothing: recorded and logged). An entry whose outcome stays unknown is
left pending and retried each pass; the same symbol's later orders and all buys wait behind it,
other symbols' exits and re-anchors go on (they only reduce risk). Entries a
crashed executor left pending are read again on start (this consumer's own history) and taken
over from other consumers with XAUTOCLAIM; the idempotent client_order_id makes a second submit
a lookup, never a second order. `auto=False` (AUTO_MODE=0) records signals without ordering.
Nothing is sent outside the XNYS regular session (own gate: Alpaca would queue it).
"""

from __future__ import annotations

import datetime
import functools
import math
import threading
import time
import zoneinfo
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    hours = _session_hours(t.tz_convert("America/New_York").date())
    return hours is not None and hours[0] <= t < hours[1]


_NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_US = datetime.timedelta(microseconds=1)


def _in_session_ns(t: int) -> bool:
    """`in_session` for a time in integer nanoseconds since the epoch (the order path: no pandas per order)."""
    hours = _session_ns(datetime.datetime.fromtimestamp(t // 1_000_000_000, _NEW_YORK).date())
    return hours is not None and hours[0] <= t < hours[1]


def _epoch_ns(text: str) -> int:
    """An ISO time with its offset (the runner's bar_time) in nanoseconds since the epoch; whatever
    datetime cannot read exactly goes through pandas, which also refuses a naive time, as before."""
    try:
        d = datetime.datetime.fromisoformat(text)
    except ValueError:
        d = None
    if d is None or d.tzinfo is None:
        return pd.Timestamp(text).tz_convert("UTC").value
    return (d - _EPOCH) // _US * 1000


@functools.lru_cache(maxsize=64)
def _session_hours(day: datetime.date) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(open, close) of the XNYS session on a New York date, None on a holiday or weekend (once per day:
    the calendar's lookups cost ~0.3 ms, every order entry asks twice)."""
    cal = calendar()
    d = pd.Timestamp(day)
    if not cal.is_session(d):
        return None
    return cal.session_open(d), cal.session_close(d)


@functools.lru_cache(maxsize=64)
def _session_ns(day: datetime.date) -> tuple[int, int] | None:
    """`_session_hours` in integer nanoseconds since the epoch."""
    hours = _session_hours(day)
    return None if hours is None else (hours[0].value, hours[1].value)


def maybe_placed(e: BaseException) -> bool:
    """True when a failed submit may still have placed the order, or may succeed when tried again later.

    Such an outcome is looked up by client_order_id and left pending, never rejected: a timeout or a
    dropped connection, a retryable error (429/5xx, retries exhausted, OutcomeUnknown), an answer
    that was lost or not understood. Definitive refusals (the broker's 4xx; OversellRefused and bad
    prices, which send nothing) are not: they are recorded as rejects. A sell refused only because
    the held shares are still promised to orders being canceled is retried (OversellRefused.transient).
    """
    if not isinstance(e, BrokerError):
        return True
    return bool(e.retryable or getattr(e, "outcome_unknown", False) or getattr(e, "unparsed", False)
                or getattr(e, "transient", False))


class _ReadIntent(OrderIntent):
    """An intent read from signals.raw. Its client_order_id (a hash over pandas times, ~25 us) is computed
    once: the executor checks it against the entry's, then the broker reads it for each request."""

    @functools.cached_property
    def client_order_id(self) -> str:  # type: ignore[override]
        """The idempotency key of this intent (OrderIntent's, cached)."""
        return OrderIntent.client_order_id.fget(self)  # type: ignore[attr-defined]


# orders.sent records (each: field count, then fields and values), then XACK of the batch's entries
_FLUSH = """
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * n))
  i = i + 1 + 2 * n
end
if i <= #ARGV then
  redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, i, #ARGV))
end
return i
"""


class _Held:
    """What one drain pass holds back: symbols with a stuck entry, symbols queued behind one, a count."""

    def __init__(self) -> None:
        self.stuck: set[str] = set()
        self.symbols: set[str] = set()
        self.waiting = 0



class Executor:
    """Consume order signals and place them through a `live.broker.AlpacaBroker`-like broker."""

    def __init__(self, store: RedisState, broker: Any, *, consumer: str = "executor-1", auto: bool = True,
                 clock: str = "bar", min_idle_ms: int = 5_000, tick_round: bool = True,
                 now: Callable[[], float] = time.time, lanes: int = 4,
                 stop_check: Callable[[], bool] | None = None) -> None:
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
        self._stuck: dict[bytes, tuple[float, int]] = {}  # entry id -> (first failure, attempts)
        # symbol -> ("bracket" | "oco", id of one member): the exit orders this executor placed, canceled by
        # id before the next sell or re-anchor instead of listing the symbol's open orders first
        self._groups: dict[str, tuple[str, str]] = {}
        self.lanes = lanes
        self._pool: ThreadPoolExecutor | None = None  # lanes for several symbols' sells at once (made on first use)
        self._lock = threading.Lock()
        self._records: list[dict[str, str]] = []  # orders.sent records of the batch, written by _flush
        self._flush_script = self.r.register_script(_FLUSH)
        self.stop_check = stop_check  # read before each batch is placed (run's `stop` when not given)
        store.ensure_group()

    # ------------------------------------------------------------------ reading
    def drain(self, block_ms: int | None = None) -> int:
        """Handle every waiting entry once (own pending first, then idle ones of others, then new); returns acks.

        An entry that cannot be acknowledged (its outcome is unknown) stays pending and is retried on
        the next pass. Entries behind it wait when order matters: the same symbol's (they must go in
        order) and every buy (it could pair with the stuck order, SPEC §6, or need the cash it frees).
        Other symbols' sells and re-anchored exits go on: they only ever reduce risk.
        """
        k = self.store.keys.signals
        held = _Held()
        done = 0
        last = "0"
        while True:  # this consumer's pending entries (a crashed life's, or ones held back), every page
            own = self.r.xreadgroup(GROUP, self.consumer, {k: last}, count=100)
            entries = own[0][1] if own else []
            if not entries:
                break
            done += self._batch(entries, held, reread=True)
            last = entries[-1][0]
        claimed = self.r.xautoclaim(k, GROUP, self.consumer, self.min_idle_ms, "0-0", count=100)
        if claimed and claimed[1]:
            log.info("signals_reclaimed", count=len(claimed[1]), reason="idle_pending_of_another_consumer")
            done += self._batch(claimed[1], held, reread=True)
        while True:
            got = self.r.xreadgroup(GROUP, self.consumer, {k: ">"}, count=100, block=block_ms)
            entries = got[0][1] if got else []
            if not entries:
                break
            done += self._batch(entries, held)
            block_ms = None
        if held.waiting:
            log.error("orders_waiting", count=held.waiting, stuck=",".join(sorted(held.stuck)),
                      held_back=",".join(sorted(held.symbols - held.stuck)),
                      reason="an order with an unknown outcome is not yet resolved",
                      action="retried on the next pass; same-symbol orders and buys wait behind it")
        return done

    def _batch(self, entries: list[tuple[bytes, dict | None]], held: _Held, reread: bool = False) -> int:
        """Handle entries in stream order; acknowledge the handled ones; hold back what must wait.

        `reread`: entries delivered before (a crashed life's, a held-back or a claimed one): each order
        is looked up by client_order_id first, since it may already be at the broker.
        """
        acks: list[bytes] = []
        orders: list[tuple[bytes, dict[str, str]]] = []
        try:
            for eid, fields in entries:
                if fields is None:  # deleted entry still pending: just ack it
                    acks.append(eid)
                    continue
                if self.auto and fields.get(b"kind") not in (b"order", b"protect"):
                    self._count("processed")  # a decision without an order (handle's first line): nothing to do
                    acks.append(eid)
                    continue
                f = {a.decode(): b.decode() for a, b in fields.items()}
                if f.get("kind") in ("order", "protect") and self.auto:
                    if reread:
                        f["_reread"] = "1"
                    orders.append((eid, f))
                else:
                    self.handle(f)  # a decision without an order (or AUTO_MODE=0): recorded, nothing placed
                    acks.append(eid)
            if orders:
                self._place(orders, acks, held)
        finally:
            self._flush(acks)
        return len(acks)

    def _place(self, orders: list[tuple[bytes, dict[str, str]]], acks: list[bytes], held: _Held) -> None:
        """Place a batch's orders: each symbol's in stream order, different symbols side by side.

        An exit costs two or three round trips (cancel, share check unless the cancel proved shares
        are held, sell): a flatten of five positions must not cost ten or fifteen in a row. An entry
        waits for its symbol's earlier entries; a buy waits for every earlier entry of the batch
        (buying power and the exits it was decided after go in stream order); if one of those cannot
        be acknowledged it waits too. A symbol, or a buy while anything is held back, does not go.
        """
        tasks: list[tuple[bytes, dict[str, str], str, Future]] = []
        last_of: dict[str, Future] = {}
        head: tuple[Future, dict[str, str]] | None = None  # the batch's first order, run on this thread
        if self.stop_check is not None and self.stop_check():  # the kill switch: nothing more goes out
            held.waiting += len(orders)
            log.warning("orders_held", count=len(orders), rule="kill", reason="stop requested")
            return
        pooled = len(orders) > 1 and self.lanes > 1
        if pooled and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix=f"{self.consumer}-lane")
        for eid, f in orders:
            sym = f.get("symbol", "")
            buy = f.get("kind") == "order" and f.get("side") == "buy"
            if sym in held.symbols or (buy and (held.stuck or held.symbols)):
                held.symbols.add(sym)  # keeps this symbol's later entries in order behind it
                held.waiting += 1
                continue
            # a buy waits for every earlier order of the batch (the kernel decided it after those exits:
            # their cash, a conflict pair's exit), not for other symbols' re-anchors; sells go side by side
            deps = ([t[3] for t in tasks if t[1].get("kind") == "order" or t[2] == sym] if buy
                    else [d for d in (last_of.get(sym),) if d is not None])
            if pooled and tasks:
                fut = self._pool.submit(self._task, f, deps)  # type: ignore[union-attr]
            elif pooled:  # the batch's first order (it waits for nothing) runs on this thread once the rest
                fut = Future()  # is handed to the lanes: no thread hand-off before the first order goes out
                head = (fut, f)
            else:
                fut = Future()
                fut.set_result(self._task(f, deps))
            last_of[sym] = fut
            tasks.append((eid, f, sym, fut))
        if head is not None:
            fut, f = head
            try:
                fut.set_result(self._task(f, []))
            except BaseException as e:  # (an interrupt) lanes waiting for it must not wait forever
                if not fut.done():
                    fut.set_result(("error", e))
                raise
        error: BaseException | None = None
        for eid, f, sym, fut in tasks:  # in stream order
            state, exc = fut.result()
            error = error or exc
            if state == "ok":
                acks.append(eid)
                self._stuck.pop(eid, None)
                continue
            held.symbols.add(sym)
            held.waiting += 1
            if state != "stuck":
                continue  # held behind a stuck one (or a bug's entry): read again next pass
            held.stuck.add(sym)
            first, tries = self._stuck.get(eid, (self._now(), 0))
            self._stuck[eid] = (first, tries + 1)
            log.error("order_stuck", ticker=sym, client_order_id=f.get("client_order_id") or None,
                      kind=f.get("kind"), attempts=tries + 1, stuck_s=round(self._now() - first, 1),
                      reason="outcome unknown: not acknowledged",
                      action="retried on the next pass; this symbol's later orders and all buys wait")
        if error is not None:
            raise error  # after the batch's other entries are recorded (the caller writes them)

    def _task(self, f: dict[str, str], deps: list[Future]) -> tuple[str, BaseException | None]:
        """One order entry once the entries it waits for are through: ("ok" | "stuck" | "held" | "error", error)."""
        if any(d.result()[0] != "ok" for d in deps):
            return "held", None
        try:
            return ("ok" if self.handle(f) else "stuck"), None
        except Exception as e:  # a bug, not the broker: raised once the other entries are recorded
            return "error", e

    def _flush(self, acks: list[bytes]) -> None:
        """The batch's records, then its acknowledgements, in one round trip (a crash before it only means
        the entries are read again: their client_order_ids make that a lookup, never a second order).

        One script: a record Redis refuses (out of memory, a wrong key) stops it before any acknowledgement,
        so an entry is never acknowledged without its record (a pipeline would go on past the error).
        """
        with self._lock:
            records, self._records = self._records, []
        if records:
            flat = [x for rec in records for x in (len(rec), *(y for kv in rec.items() for y in kv))]
            self._flush_script(keys=[self.store.keys.sent, self.store.keys.signals],
                               args=[GROUP, len(records), *flat, *acks])
        elif acks:
            self.r.xack(self.store.keys.signals, GROUP, *acks)

    def run(self, stop: Callable[[], bool], block_ms: int = 500) -> None:
        """Loop until `stop()`; Redis outages are waited out (entries stay pending, nothing is lost).

        An entry left pending is retried once per pass, and a pass with nothing new waits `block_ms`,
        so a stuck order is retried about twice a second, not in a tight loop.
        """
        if self.stop_check is None:
            self.stop_check = stop
        if self.auto:  # the XNYS calendar is built now (~1 s), not on the way of the first order
            _session_ns(datetime.datetime.fromtimestamp(self._now(), _NEW_YORK).date())
        try:
            while True:
                try:
                    if stop():
                        return
                    self.drain(block_ms)
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    log.error("executor_redis_unreachable", reason=type(e).__name__)
                    time.sleep(0.5)
        finally:
            self.close()

    def _count(self, what: str) -> None:
        with self._lock:  # lanes count from several threads
            self.counts[what] += 1

    def close(self) -> None:
        """Stop the lane threads (idle ones end at once; a running order finishes first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ handling
    def handle(self, f: dict[str, str]) -> bool:
        """Act on one entry; True when it may be acknowledged."""
        self._count("processed")
        kind = f.get("kind")
        if kind not in ("order", "protect") or not self.auto:
            if kind == "order":
                log.info("signal_recorded", ticker=f["symbol"], reason=f.get("intent"), rule="auto_mode_off",
                         client_order_id=f["client_order_id"])
            return True
        t = _epoch_ns(f["bar_time"]) + 60_000_000_000  # the decision: the bar's close (ns since the epoch)
        now = t if self.clock == "bar" else round(self._now() * 1e9)
        if not (_in_session_ns(t) and _in_session_ns(now - 1_000)):
            self._count("blocked")
            log.warning("order_blocked", ticker=f["symbol"], reason="outside_xnys_session", rule="session_gate",
                        client_order_id=f.get("client_order_id"))
            return True
        if kind == "protect":
            return self._protect(f)
        return self._order(f)

    def _intent(self, f: dict[str, str]) -> OrderIntent:
        def num(x: str | None) -> float | None:
            return float(x) if x not in (None, "", "None") else None

        it = _ReadIntent(f["strategy"], f["symbol"], f["side"], float(f["qty"]),
                         pd.Timestamp(int(f["decided"]) * 1_000_000_000, tz="UTC"), intent=f["intent"],
                         stop_loss=num(f.get("stop_loss")), take_profit=num(f.get("take_profit")))
        if it.client_order_id != f["client_order_id"]:
            raise AssertionError(f"client_order_id mismatch for {f['symbol']}: {it.client_order_id} != "
                                 f"{f['client_order_id']}")
        return it

    def _order(self, f: dict[str, str]) -> bool:
        it = self._intent(f)
        cid, sym = it.client_order_id, it.symbol
        if f.get("_reread"):
            placed = self._placed_before(cid, sym)
            if placed is not None:
                return placed
        canceled_buy = False
        try:
            release = None
            held_known = False
            if it.side == "sell":  # the kernel's exit: free the shares its exit legs hold, then sell
                if self._cancel_known(sym, ("oco",), it.intent):
                    release = lambda: self._cancel_listed(sym, it.intent)  # noqa: E731 (if shares stay promised)
                    # the OCO was open and is canceled: it held shares, so a long position is held (a venue
                    # whose cancel answers before it is final, Alpaca's pending_cancel, keeps the share check)
                    held_known = bool(getattr(self.broker, "cancel_is_final", False))
                else:
                    canceled_buy = self._cancel_listed(sym, it.intent)
            order = self.broker.submit(it, release=release, held_known=held_known)
        except Exception as e:
            self._groups.pop(sym, None)
            if canceled_buy and isinstance(e, BrokerError) and getattr(e, "held", None) == 0:
                log.warning("exit_waiting", ticker=sym, client_order_id=cid, rule="no_oversell",
                            reason="nothing held yet, but the entry it canceled may still fill (cancel pending)",
                            action="checked again next pass")
                return False
            if maybe_placed(e):
                return self._lookup(cid, sym, e)
            return self._reject(cid, sym, e, "order_rejected")
        self._count("orders")
        self._record(cid, sym, str(getattr(order.status, "value", order.status)), str(order.id))
        legs = list(getattr(order, "legs", None) or [])
        if it.side == "buy" and legs:
            self._groups[sym] = ("bracket", str(legs[0].id))
        else:
            self._groups.pop(sym, None)
        return True

    def _placed_before(self, cid: str, symbol: str) -> bool | None:
        """An entry read again: True when the broker already has its order (recorded: acknowledge it),
        False when the broker cannot say (left pending), None when it has none (act on the entry).

        Without it a re-read exit would first cancel the symbol's open orders, its own sell among them,
        and then find its client_order_id taken: the position would stay, unprotected.
        """
        try:
            o = self.broker.order_by_client_id(cid)
        except Exception as e:
            if isinstance(e, BrokerError) and e.status == 404:
                return None
            log.warning("order_outcome_unknown", ticker=symbol, client_order_id=cid, reason="entry read again",
                        lookup=type(e).__name__, detail=str(e)[:200], action="left pending; retried later")
            return False
        log.info("order_found_by_lookup", ticker=symbol, client_order_id=cid, status=str(o.status),
                 reason="entry read again")
        self._count("orders")
        self._record(cid, symbol, str(getattr(o.status, "value", o.status)), str(o.id))
        self._groups.pop(symbol, None)  # what else is working for the symbol: the listing will say
        return True

    def _reject(self, cid: str, symbol: str, e: BaseException, event: str) -> bool:
        """A definitive refusal (the broker's 4xx, or nothing sent at all): recorded, logged, acknowledged."""
        self._count("rejects")
        self._record(cid, symbol, "rejected", str(e))
        log.warning(event, ticker=symbol, client_order_id=cid, reason=str(e), status=getattr(e, "status", None),
                    error=type(e).__name__, action="acknowledged; not retried")
        return True

    def _lookup(self, cid: str, symbol: str, err: BaseException) -> bool:
        """Outcome unknown: the order is looked up by client_order_id, never decided again."""
        self._count("unknown")
        try:
            o = self.broker.order_by_client_id(cid)
        except Exception as e:
            log.warning("order_outcome_unknown", ticker=symbol, client_order_id=cid, reason=type(err).__name__,
                        detail=str(err)[:200], lookup=type(e).__name__, action="left pending; retried later")
            return False
        log.info("order_found_by_lookup", ticker=symbol, client_order_id=cid, status=str(o.status))
        self._count("orders")
        self._record(cid, symbol, str(getattr(o.status, "value", o.status)), str(o.id))
        return True

    def _open_orders(self, symbol: str) -> list[Any]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, symbols=[symbol], nested=False, limit=500)
        return list(self.broker._call("get_orders", self.broker.client.get_orders, req, ticker=symbol))

    def _cancel_known(self, symbol: str, kinds: tuple[str, ...], reason: str) -> bool:
        """Cancel the exit orders this executor placed for `symbol` by id (one request); False when it cannot.

        A bracket's legs are one OCO group, as is an OCO with its stop: canceling one member frees
        the group's shares. False (the caller lists the symbol's open orders instead) when nothing is
        known (a restart, another executor), the kind does not fit (an entry may still be working),
        or the broker says the order is gone (404/422: filled, canceled or replaced meanwhile). The
        broker stays the truth: the sell's share check (or the venue's 403 to a sell beyond the
        shares held, see AlpacaBroker.submit's `held_known`) and the OCO's own refusal catch the rest.
        """
        known = self._groups.pop(symbol, None)
        if known is None or known[0] not in kinds:
            return False
        try:
            self.broker.cancel(known[1])
        except BrokerError as e:
            if e.status in (404, 422):
                log.info("cancel_by_id_missed", ticker=symbol, order_id=known[1], status=e.status, reason=reason,
                         action="canceling every open order of the symbol instead")
                return False
            raise
        log.info("order_canceled", ticker=symbol, order_id=known[1], group=known[0], reason=reason)
        return True

    def _cancel_listed(self, symbol: str, reason: str = "kernel_exit") -> bool:
        """Cancel every open order of the symbol the broker lists (bracket legs, OCOs, entries still working);
        True when one was a buy (an entry that may still fill while its cancel is pending at the broker)."""
        buy = False
        for o in self._open_orders(symbol):
            try:
                self.broker.cancel(str(o.id))
                buy = buy or str(getattr(o.side, "value", o.side)) == "buy"
                log.info("order_canceled", ticker=symbol, client_order_id=o.client_order_id, reason=reason)
            except BrokerError as e:
                if e.status not in (404, 422):  # already filled/canceled meanwhile (an OCO partner goes with it)
                    raise
        return buy

    def _protect(self, f: dict[str, str]) -> bool:
        """Re-anchor a filled entry's exits at the kernel's fill-based stop and take-profit.

        The bracket legs (anchored at the decision close) are canceled and one OCO sell (take-profit
        limit + stop) goes in their place, with an idempotent client_order_id of its own.
        """
        from live.broker import oco_sell_body, round_price
        from strategies.intents import client_order_id

        sym = f["symbol"]
        stop, tp, qty = float(f["stop_loss"]), float(f["take_profit"]), float(f["qty"])
        if math.isnan(stop) or math.isnan(tp) or not qty > 0:
            return True
        cid = client_order_id(f["strategy"], sym, pd.Timestamp(f["bar_time"]), "protect")
        if f.get("_reread"):
            placed = self._placed_before(cid, sym)
            if placed is not None:
                return placed
        if self.tick_round:  # valid ticks away from the market, as the adapter rounds a bracket's levels: the
            stop, tp = round_price(stop, "down"), round_price(tp, "up")  # broker's exits never trigger before the kernel's
        body = oco_sell_body(sym, qty, tp, stop, cid)

        def place() -> Any:
            return self.broker._call("submit_order", self.broker.submit_body, body, ticker=sym, client_order_id=cid)

        try:
            if self._cancel_known(sym, ("bracket", "oco"), "reanchor_exits"):
                try:
                    o = place()
                except BrokerError as e:
                    if e.status != 403:  # 403: shares still promised to an order canceling by id did not free
                        raise
                    self._cancel_listed(sym, "reanchor_exits")
                    o = place()
            else:
                self._cancel_listed(sym, "reanchor_exits")
                o = place()
        except BrokerError as e:
            if e.status in (409, 422) and "unique" in str(e):
                return True  # placed by an earlier life of this executor
            if maybe_placed(e):
                return self._lookup(cid, sym, e)
            if e.status == 403:  # the shares are still promised: a cancel is pending at the broker (Alpaca
                held, _ = self.broker._held(sym)  # answers 204 and cancels later); the legs are gone, so
                if held > 0:  # never give up on protecting a held position: retried next pass
                    log.warning("reanchor_waiting", ticker=sym, client_order_id=cid, held=held, reason=str(e),
                                action="retried once the canceled legs free the shares")
                    return False
                log.info("reanchor_moot", ticker=sym, client_order_id=cid, reason="nothing held any more")
                return True
            return self._reject(cid, sym, e, "reanchor_rejected")
        except Exception as e:
            return self._lookup(cid, sym, e)
        self._groups[sym] = ("oco", str(o.id))
        self._record(cid, sym, str(getattr(o.status, "value", o.status)), str(o.id))
        log.info("exits_reanchored", ticker=sym, stop=stop, take_profit=tp, rule="bracket", client_order_id=cid)
        return True

    def _record(self, cid: str, symbol: str, status: str, detail: str) -> None:
        """What happened to an order, for reports and status: written with the batch's acknowledgements,
        ahead of them in the same round trip (`_flush`), not on the way of the batch's next order. Never
        an acknowledgement without its record: a crash before the flush leaves the entry pending, and its
        second reading is a lookup by client_order_id, which records the order then."""
        with self._lock:  # lanes record from several threads
            self._records.append({"client_order_id": cid, "symbol": symbol, "status": status, "detail": detail[:300]})
