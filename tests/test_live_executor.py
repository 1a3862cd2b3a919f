"""live.executor against live.sim and a real Redis: refusals are recorded and acknowledged, a stuck
order holds back only what must wait behind it, and exits cancel the legs the executor placed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
import requests

from data.bars import Panel
from live.broker import AlpacaBroker
from live.executor import Executor
from live.sim import SimConfig, SimServer
from live.state import GROUP, Keys, RedisState
from strategies.intents import OrderIntent
from tierlab.errors import BrokerError

pytestmark = pytest.mark.redis

T0 = pd.Timestamp("2024-11-01 14:00", tz="UTC")  # a Friday, inside the XNYS session
STRATEGY = "tiered_basket"


def _panel() -> Panel:
    idx = pd.date_range("2024-11-01 13:30", periods=60, freq="1min", tz="UTC")
    one = np.full((len(idx), 3), 10.0)
    return Panel(index=idx, symbols=("AAA", "BBB", "CCC"), open=one, high=one + 0.1, low=one - 0.1, close=one,
                 volume=np.full((len(idx), 3), 1e7))


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(_panel(), SimConfig(initial_cash=1e6), rate_limit=1_000_000) as s:
        s.step(2)  # the session is open and has a price
        yield s


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisState]:
    st = RedisState(redis.Redis.from_url(redis_url), Keys.of("test", STRATEGY, "default",
                                                              root=f"tierlab-test:{uuid.uuid4().hex[:10]}:"))
    st.ensure_group()
    yield st
    st.delete_all()


def _intent(sym: str, side: str, qty: float, minute: int, intent: str, **kw: Any) -> OrderIntent:
    return OrderIntent(STRATEGY, sym, side, qty, T0 + pd.Timedelta(minutes=minute + 1), intent=intent, **kw)


def _publish(store: RedisState, it: OrderIntent) -> None:
    """One order entry on signals.raw, as the runner writes it."""
    bar = it.bar_time - pd.Timedelta(minutes=1)
    store.r.xadd(store.keys.signals, {
        "kind": "order", "symbol": it.symbol, "code": 1, "reason": it.intent, "score": "0.5",
        "bar_time": bar.isoformat(), "mode": "default", "strategy": STRATEGY,
        "client_order_id": it.client_order_id, "side": it.side, "qty": repr(float(it.qty)), "intent": it.intent,
        "decided": str(int(it.bar_time.timestamp())), "stop_loss": "" if it.stop_loss is None else it.stop_loss,
        "take_profit": "" if it.take_profit is None else it.take_profit})


def _sent(store: RedisState) -> dict[str, str]:
    return {f[b"client_order_id"].decode(): f[b"status"].decode() for _, f in store.r.xrange(store.keys.sent)}


def _pending(store: RedisState) -> int:
    return int(store.r.xpending(store.keys.signals, GROUP)["pending"])


def _at_broker(sim: SimServer) -> list[str]:
    """client_order_ids of the sim's orders, in the order they arrived (legs excluded)."""
    return sim.call(lambda: [o.client_order_id for o in sim.engine.orders.values() if o.parent is None])


def test_oversell_is_recorded_as_rejected_and_the_next_order_goes_through(sim: SimServer, store: RedisState) -> None:
    broker = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url)
    ex = Executor(store, broker)
    oversell = _intent("AAA", "sell", 5, 0, "signal_exit")  # nothing held: refused before anything is sent
    buy = _intent("BBB", "buy", 3, 0, "entry")
    _publish(store, oversell)
    _publish(store, buy)
    ex.drain()
    assert _at_broker(sim) == [buy.client_order_id]
    assert _sent(store)[oversell.client_order_id] == "rejected"
    assert _pending(store) == 0 and ex.counts["rejects"] == 1


class _Flaky(AlpacaBroker):
    """A broker whose answer to one client_order_id is lost (and cannot be looked up) until `heal()`."""

    def __init__(self, *a: Any, lost: str, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.lost: str | None = lost

    def submit(self, intent: OrderIntent, **kw: Any) -> Any:
        if intent.client_order_id == self.lost:
            raise requests.ReadTimeout("read timed out")
        return super().submit(intent, **kw)

    def order_by_client_id(self, cid: str) -> Any:
        if cid == self.lost:
            raise BrokerError("lookup failed: HTTP 503", status=503, retryable=True)
        return super().order_by_client_id(cid)


def test_a_stuck_order_holds_back_its_symbol_and_buys_while_other_exits_go_on(sim: SimServer,
                                                                               store: RedisState) -> None:
    setup = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url)
    setup.submit(_intent("CCC", "buy", 4, -5, "entry"))
    sim.step(1)  # CCC filled: 4 held
    stuck = _intent("AAA", "buy", 2, 0, "entry")
    broker = _Flaky(sim.api_key, sim.secret_key, url=sim.url, lost=stuck.client_order_id)
    ex = Executor(store, broker)
    behind_buy = _intent("BBB", "buy", 3, 0, "entry")
    same_symbol = _intent("AAA", "buy", 1, 1, "entry")
    other_exit = _intent("CCC", "sell", 4, 1, "signal_exit")
    for it in (stuck, behind_buy, same_symbol, other_exit):
        _publish(store, it)
    ex.drain()
    before = _at_broker(sim)
    assert other_exit.client_order_id in before  # an exit of another symbol is not held hostage
    assert not {stuck.client_order_id, behind_buy.client_order_id, same_symbol.client_order_id} & set(before)
    assert _pending(store) == 3
    ex.drain()  # still unresolved: nothing moves, nothing is lost
    assert _pending(store) == 3
    broker.lost = None  # the broker answers again: the three go, in stream order
    ex.drain()
    assert _at_broker(sim)[len(before):] == [stuck.client_order_id, behind_buy.client_order_id,
                                             same_symbol.client_order_id]
    assert _pending(store) == 0


def test_refusals_that_sent_nothing_are_final_but_unknown_outcomes_are_looked_up() -> None:
    from live.broker import OutcomeUnknown, OversellRefused
    from live.executor import maybe_placed

    assert not maybe_placed(OversellRefused("nothing held", held=0.0, available=0.0))
    assert not maybe_placed(BrokerError("base price 0.01 leaves no room for a stop", retryable=False))
    assert not maybe_placed(BrokerError("HTTP 403 insufficient buying power", status=403))
    # shares held but promised to legs whose cancel is not confirmed yet: the exit must not be dropped
    assert maybe_placed(OversellRefused("all 5 held shares are promised", held=5.0, available=0.0))
    assert maybe_placed(OutcomeUnknown("lookup failed", "tl-x", 503))
    assert maybe_placed(BrokerError("HTTP 500", status=500, retryable=True))
    assert maybe_placed(requests.ReadTimeout("read timed out"))


# ------------------------------------------------------------------ exits cancel the legs the executor placed
def _protect(store: RedisState, sym: str, minute: int, qty: float, stop: float, tp: float) -> None:
    """A re-anchor entry, as the runner writes it after the kernel's fill."""
    bar = T0 + pd.Timedelta(minutes=minute)
    store.r.xadd(store.keys.signals, {
        "kind": "protect", "symbol": sym, "code": 0, "reason": "reanchor_exits", "score": "nan",
        "bar_time": bar.isoformat(), "mode": "default", "strategy": STRATEGY, "client_order_id": "",
        "stop_loss": repr(stop), "take_profit": repr(tp), "qty": repr(float(qty))})


class _Counting(AlpacaBroker):
    """The real adapter, counting the HTTP requests it sends."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sent: list[tuple[str, str]] = []
        inner = self.client._session.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            path = "/" + url.split("/", 3)[3].split("?")[0]
            self.sent.append((method, "/v2/orders/{id}" if path.startswith("/v2/orders/") else path))
            return inner(method, url, *args, **kwargs)

        self.client._session.request = request  # type: ignore[method-assign]


def _book(sim: SimServer, sym: str) -> tuple[float, list[str]]:
    """(shares held, client_order_ids of the symbol's open orders) at the sim."""
    def read() -> tuple[float, list[str]]:
        h = sim.engine.holdings.get(sym)
        return (h.qty if h else 0.0), [o.client_order_id for o in sim.engine.orders.values()
                                      if o.symbol == sym and o.is_open]
    return sim.call(read)


def _entered(sim: SimServer, store: RedisState, broker: AlpacaBroker) -> Executor:
    """An executor that bought 10 AAA as a bracket (filled) and re-anchored its exits as one OCO."""
    ex = Executor(store, broker)
    _publish(store, _intent("AAA", "buy", 10, 0, "entry", stop_loss=9.0, take_profit=11.0))
    ex.drain()
    sim.step(1)
    _protect(store, "AAA", 1, 10, 9.5, 10.5)
    ex.drain()
    return ex


def test_an_exit_cancels_its_own_legs_by_id_and_sells_without_a_share_check(sim: SimServer,
                                                                             store: RedisState) -> None:
    """The canceled OCO held the shares, so a position is held: cancel + sell, two round trips."""
    broker = _Counting(sim.api_key, sim.secret_key, url=sim.url, cancel_is_final=True)
    ex = _entered(sim, store, broker)
    assert broker.sent[-2:] == [("DELETE", "/v2/orders/{id}"), ("POST", "/v2/orders")]  # the re-anchor: no listing
    held, working = _book(sim, "AAA")
    assert held == 10 and len(working) == 2 and any("-protect-" in c for c in working)  # the OCO and its stop
    del broker.sent[:]
    _publish(store, _intent("AAA", "sell", 10, 2, "signal_exit"))
    ex.drain()
    assert broker.sent == [("DELETE", "/v2/orders/{id}"), ("POST", "/v2/orders")]
    sim.step(1)
    assert _book(sim, "AAA") == (0.0, [])  # sold exactly what was held, no leg left behind


def test_an_exit_on_a_venue_whose_cancels_may_be_pending_still_checks_the_shares(sim: SimServer,
                                                                                 store: RedisState) -> None:
    """Alpaca answers a cancel while the order is pending_cancel (it may still fill): the share check stays."""
    broker = _Counting(sim.api_key, sim.secret_key, url=sim.url, cancel_is_final=False)
    ex = _entered(sim, store, broker)
    del broker.sent[:]
    _publish(store, _intent("AAA", "sell", 10, 2, "signal_exit"))
    ex.drain()
    assert broker.sent == [("DELETE", "/v2/orders/{id}"), ("GET", "/v2/positions/AAA"), ("POST", "/v2/orders")]
    sim.step(1)
    assert _book(sim, "AAA") == (0.0, [])


def _moving_panel(high: float, volume: float) -> Panel:
    """The test panel, except bar 3 (the first an exit OCO placed by _entered can fill at): its high
    reaches `high` on `volume` shares (the sim lets 10% of a bar's volume trade)."""
    p = _panel()
    hi, vol = p.high.copy(), p.volume.copy()
    hi[3, 0], vol[3, 0] = high, volume
    return Panel(index=p.index, symbols=p.symbols, open=p.open, high=hi, low=p.low, close=p.close, volume=vol)


def _short_or_sold(sim: SimServer, cid: str) -> tuple[float, list[str], bool]:
    """(AAA held, AAA's open orders, whether an order with client_order_id `cid` reached the sim)."""
    held, working = _book(sim, "AAA")
    return held, working, cid in _at_broker(sim)


def test_an_exit_after_the_oco_partly_filled_sells_only_the_shares_left(store: RedisState) -> None:
    """The take-profit sold 4 of 10: the kernel's sell of 10 is refused by the broker (more than held), then
    the shares are read and exactly the 6 left are sold, under the same client_order_id: never a short."""
    with SimServer(_moving_panel(10.6, 40), SimConfig(initial_cash=1e6), rate_limit=1_000_000) as sim:
        sim.step(2)
        broker = _Counting(sim.api_key, sim.secret_key, url=sim.url, cancel_is_final=True)
        ex = _entered(sim, store, broker)
        sim.step(1)  # the OCO's take-profit fills 4 shares
        assert _book(sim, "AAA")[0] == 6
        del broker.sent[:]
        sell = _intent("AAA", "sell", 10, 2, "signal_exit")
        _publish(store, sell)
        ex.drain()
        assert broker.sent == [("DELETE", "/v2/orders/{id}"), ("POST", "/v2/orders"),  # refused: 10 > 6 held
                               ("GET", "/v2/positions/AAA"), ("GET", "/v2/orders:by_client_order_id"),  # as before
                               ("POST", "/v2/orders")]
        assert sim.call(lambda: sim.engine.by_client_id[sell.client_order_id].qty) == 6
        sim.step(1)
        assert _book(sim, "AAA") == (0.0, [])
        assert _pending(store) == 0 and _sent(store)[sell.client_order_id] != "rejected"


def test_an_exit_after_the_oco_filled_sells_nothing(store: RedisState) -> None:
    """The take-profit sold all 10 before the exit: its cancel misses (422), the shares are checked, nothing
    is held, so nothing is sent (a sell now would open a short) and the entry is recorded as refused."""
    with SimServer(_moving_panel(10.6, 1e7), SimConfig(initial_cash=1e6), rate_limit=1_000_000) as sim:
        sim.step(2)
        broker = _Counting(sim.api_key, sim.secret_key, url=sim.url, cancel_is_final=True)
        ex = _entered(sim, store, broker)
        sim.step(1)  # the OCO's take-profit fills all 10 shares
        sell = _intent("AAA", "sell", 10, 2, "signal_exit")
        _publish(store, sell)
        ex.drain()
        sim.step(1)
        assert _short_or_sold(sim, sell.client_order_id) == (0.0, [], False)
        assert _pending(store) == 0 and _sent(store)[sell.client_order_id] == "rejected"


class _Racing(_Counting):
    """Alpaca's asynchronous cancel: DELETE answers 204 (pending_cancel) while the OCO keeps its shares;
    `fill_meanwhile` steps the sim at that moment, so the OCO may fill before the cancel takes effect."""

    def __init__(self, *a: Any, sim: SimServer, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sim = sim
        self.pending = 0
        self.fill_meanwhile = False

    def cancel(self, order_id: str) -> None:
        if self.pending > 0:
            self.pending -= 1
            if self.fill_meanwhile:
                self.sim.step(1)
            return
        super().cancel(order_id)


def test_a_pending_cancel_refuses_the_fast_sell_and_the_exit_frees_the_shares_then_sells(store: RedisState) -> None:
    """The cancel by id answered but the OCO still holds its shares: the sell is refused (403), the exit
    cancels the symbol's listed orders (release) and sells all 10 in the same pass."""
    with SimServer(_panel(), SimConfig(initial_cash=1e6), rate_limit=1_000_000) as sim:
        sim.step(2)
        broker = _Racing(sim.api_key, sim.secret_key, url=sim.url, sim=sim, cancel_is_final=True)
        ex = _entered(sim, store, broker)
        broker.pending = 1
        sell = _intent("AAA", "sell", 10, 2, "signal_exit")
        _publish(store, sell)
        ex.drain()
        assert _pending(store) == 0 and ("GET", "/v2/orders") in broker.sent  # released, then sold
        sim.step(1)
        assert _book(sim, "AAA") == (0.0, [])
        assert sim.call(lambda: sim.engine.by_client_id[sell.client_order_id].filled_qty) == 10


def test_an_oco_filling_while_its_cancel_is_pending_never_turns_the_exit_into_a_short(store: RedisState) -> None:
    """Alpaca: DELETE answered 204, then the OCO filled all 10 before the cancel took effect. A sell now would
    open a short from flat (no venue refuses it): the exit checks the shares, since Alpaca's cancels are
    not final when answered, finds none and sends nothing."""
    with SimServer(_moving_panel(10.6, 1e7), SimConfig(initial_cash=1e6), rate_limit=1_000_000) as sim:
        sim.step(2)
        broker = _Racing(sim.api_key, sim.secret_key, url=sim.url, sim=sim, cancel_is_final=False)
        ex = _entered(sim, store, broker)
        broker.pending, broker.fill_meanwhile = 1, True
        sell = _intent("AAA", "sell", 10, 2, "signal_exit")
        _publish(store, sell)
        ex.drain()
        sim.step(1)
        assert _short_or_sold(sim, sell.client_order_id) == (0.0, [], False)
        assert _sent(store)[sell.client_order_id] == "rejected"


def test_an_exit_whose_legs_were_canceled_elsewhere_falls_back_to_the_listing(sim: SimServer,
                                                                              store: RedisState) -> None:
    broker = _Counting(sim.api_key, sim.secret_key, url=sim.url)
    ex = _entered(sim, store, broker)
    other = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url)  # a person (or the kill switch) steps in
    for o in other.open_orders(["AAA"]):
        other.cancel(str(o.id))
    other.submit(_intent("AAA", "sell", 4, 1, "by_hand", type="limit", limit_price=12.0))
    _publish(store, _intent("AAA", "sell", 10, 2, "signal_exit"))
    ex.drain()
    assert ("GET", "/v2/orders") in broker.sent  # the known OCO was gone (422): every open order listed instead
    sim.step(1)
    assert _book(sim, "AAA") == (0.0, [])


def test_shares_still_promised_to_an_unknown_order_are_freed_before_the_exit_sells(sim: SimServer,
                                                                                   store: RedisState) -> None:
    broker = _Counting(sim.api_key, sim.secret_key, url=sim.url)
    ex = Executor(store, broker)
    _publish(store, _intent("AAA", "buy", 10, 0, "entry", stop_loss=9.0, take_profit=11.0))
    ex.drain()
    sim.step(1)
    _protect(store, "AAA", 1, 6, 9.5, 10.5)  # the OCO guards 6 shares ...
    ex.drain()
    AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url).submit(  # ... and someone promised the other 4
        _intent("AAA", "sell", 4, 1, "by_hand", type="limit", limit_price=12.0))
    _publish(store, _intent("AAA", "sell", 10, 2, "signal_exit"))
    ex.drain()
    sim.step(1)
    assert _book(sim, "AAA") == (0.0, [])  # all 10 sold, not clamped to the 6 the known OCO freed
    assert _sent(store)[_intent("AAA", "sell", 10, 2, "signal_exit").client_order_id] != "rejected"


# ------------------------------------------------------------------ several symbols in one minute
def _bought(sim: SimServer, store: RedisState, broker: AlpacaBroker, syms: tuple[str, ...]) -> Executor:
    """An executor holding 5 of each symbol, each guarded by its re-anchored OCO."""
    ex = Executor(store, broker)
    for s in syms:
        _publish(store, _intent(s, "buy", 5, 0, "entry", stop_loss=9.0, take_profit=11.0))
    ex.drain()
    sim.step(1)
    for s in syms:
        _protect(store, s, 1, 5, 9.5, 10.5)
    ex.drain()
    return ex


class _Meeting(AlpacaBroker):
    """Cancels wait for each other at a barrier: they only get through when two run at the same time."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.barrier: Any = None

    def cancel(self, order_id: str) -> None:
        if self.barrier is not None:
            self.barrier.wait(timeout=10)  # BrokenBarrierError when the other exit is not on its way
        super().cancel(order_id)


def test_exits_of_different_symbols_in_one_minute_go_side_by_side(sim: SimServer, store: RedisState) -> None:
    import threading

    broker = _Meeting(sim.api_key, sim.secret_key, url=sim.url)
    ex = _bought(sim, store, broker, ("AAA", "BBB"))
    broker.barrier = threading.Barrier(2)
    for s in ("AAA", "BBB"):
        _publish(store, _intent(s, "sell", 5, 2, "flatten"))
    ex.drain()
    ex.close()
    sim.step(1)
    assert [_book(sim, s) for s in ("AAA", "BBB")] == [(0.0, []), (0.0, [])]
    assert _pending(store) == 0


class _SlowBuys(AlpacaBroker):
    """Records whether a buy started while another was still on its way."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        import threading

        super().__init__(*a, **kw)
        self.in_flight = 0
        self.overlapped = False
        self.lock = threading.Lock()

    def submit(self, intent: OrderIntent, **kw: Any) -> Any:
        import time as _time

        if intent.side != "buy":
            return super().submit(intent, **kw)
        with self.lock:
            self.overlapped |= self.in_flight > 0
            self.in_flight += 1
        try:
            _time.sleep(0.05)  # a slow answer: a concurrent buy would start meanwhile
            return super().submit(intent, **kw)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_buys_keep_their_stream_order_while_a_re_anchor_goes_beside_them(sim: SimServer, store: RedisState) -> None:
    broker = _SlowBuys(sim.api_key, sim.secret_key, url=sim.url)
    ex = Executor(store, broker)
    _publish(store, _intent("CCC", "buy", 5, 0, "entry", stop_loss=9.0, take_profit=11.0))
    ex.drain()
    sim.step(1)
    _protect(store, "CCC", 1, 5, 9.5, 10.5)  # the runner writes re-anchors first ...
    buys = [_intent(s, "buy", 2, 1, "entry", stop_loss=9.0, take_profit=11.0) for s in ("BBB", "AAA")]
    for it in buys:
        _publish(store, it)  # ... then the minute's decisions
    ex.drain()
    ex.close()
    assert not broker.overlapped  # buying power is spent in stream order
    arrived = _at_broker(sim)
    assert arrived.index(buys[0].client_order_id) < arrived.index(buys[1].client_order_id)
    assert _pending(store) == 0 and _book(sim, "CCC")[1]  # the re-anchored OCO is working


def test_the_runners_executor_thread_places_a_committed_signal_and_stops_with_it(
        sim: SimServer, store: RedisState, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m live run --with-executor` on Alpaca: an executor thread blocking on XREADGROUP."""
    import argparse
    import threading
    import time as _time

    from live.cli.__main__ import executor_thread

    monkeypatch.setenv("AUTO_MODE", "1")
    stopping = threading.Event()
    worker = executor_thread(argparse.Namespace(redis=redis_url, sim_url=sim.url), store, stopping.is_set)
    buy = _intent("BBB", "buy", 3, 0, "entry")
    _publish(store, buy)
    deadline = _time.monotonic() + 20
    while buy.client_order_id not in _at_broker(sim) and _time.monotonic() < deadline:
        _time.sleep(0.02)
    stopping.set()
    worker.join(10)
    assert buy.client_order_id in _at_broker(sim) and _pending(store) == 0
    assert not worker.is_alive()


def test_an_exit_read_again_after_a_crash_finds_its_sell_and_does_not_cancel_it(sim: SimServer,
                                                                               store: RedisState) -> None:
    """A life placed the exit and died before acknowledging it: the next one must not cancel that very sell."""
    broker = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url)
    _entered(sim, store, broker)
    sell = _intent("AAA", "sell", 10, 2, "signal_exit")
    _publish(store, sell)
    store.r.xreadgroup(GROUP, "executor-1", {store.keys.signals: ">"})  # delivered to the life that dies ...
    for o in broker.open_orders(["AAA"]):
        broker.cancel(str(o.id))
    broker.submit(sell)  # ... after it placed the exit, before its ack
    Executor(store, broker).drain()  # the next life reads its pending entry again
    assert _pending(store) == 0 and _book(sim, "AAA")[1] == [sell.client_order_id]  # the sell still works
    sim.step(1)
    assert _book(sim, "AAA") == (0.0, [])


@pytest.mark.parametrize("lanes", [4, 1])
def test_a_buy_waits_behind_an_exit_of_another_symbol_whose_outcome_is_unknown(sim, store, lanes: int) -> None:
    """The kernel decided the buy after the exit (its cash, a conflict pair): while the exit is stuck the
    buy is not placed, in the same batch or the next, with lanes or without."""
    setup = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url)
    setup.submit(_intent("CCC", "buy", 4, -5, "entry"))
    sim.step(1)
    stuck = _intent("CCC", "sell", 4, 0, "flatten")
    ex = Executor(store, _Flaky(sim.api_key, sim.secret_key, url=sim.url, lost=stuck.client_order_id), lanes=lanes)
    buy = _intent("AAA", "buy", 3, 0, "entry")
    _publish(store, stuck)
    _publish(store, buy)
    ex.drain()
    ex.drain()
    ex.close()
    assert buy.client_order_id not in _at_broker(sim)
    assert _pending(store) == 2  # both kept, in order, for the next pass


class _LateCancels(AlpacaBroker):
    """Alpaca's DELETE answers 204 while the order goes pending_cancel: these cancels take effect later."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.defer = 0
        self.deferred: list[str] = []

    def cancel(self, order_id: str) -> None:
        if self.defer > 0:
            self.defer -= 1
            self.deferred.append(order_id)
            return
        super().cancel(order_id)


def test_a_reanchor_refused_while_cancels_are_pending_is_retried_not_dropped(sim, store) -> None:
    broker = _LateCancels(sim.api_key, sim.secret_key, url=sim.url)
    ex = Executor(store, broker)
    _publish(store, _intent("AAA", "buy", 10, 0, "entry", stop_loss=9.0, take_profit=11.0))
    ex.drain()
    sim.step(1)
    broker.defer = 10  # every cancel of this pass is still pending at the broker
    _protect(store, "AAA", 1, 10, 9.5, 10.5)
    ex.drain()
    assert _pending(store) == 1  # not acked as rejected: the position must get its exits
    for oid in broker.deferred:  # the cancels complete a moment later (a leg's partner goes with it: 422)
        try:
            AlpacaBroker.cancel(broker, oid)
        except BrokerError as e:
            assert e.status == 422
    ex.drain()
    ex.close()
    held, working = _book(sim, "AAA")
    assert held == 10 and working and _pending(store) == 0


def test_an_exit_that_canceled_a_working_entry_waits_a_pass_before_calling_nothing_held_final(sim, store) -> None:
    """On Alpaca a canceled entry may still fill while its cancel is pending: an exit that just canceled one
    and finds nothing held is checked again on the next pass, then recorded as refused (nothing sent)."""
    ex = Executor(store, AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url))
    entry = _intent("AAA", "buy", 3, 0, "entry")
    exit_ = _intent("AAA", "sell", 3, 0, "signal")
    _publish(store, entry)
    ex.drain()  # the entry works (a market order fills at the next bar's open)
    _publish(store, exit_)
    ex.drain()
    assert _pending(store) == 1 and exit_.client_order_id not in _sent(store)
    ex.drain()
    ex.close()
    assert _pending(store) == 0 and _sent(store)[exit_.client_order_id] == "rejected"
    assert exit_.client_order_id not in _at_broker(sim)  # nothing was ever sold


def test_a_reanchor_rounds_its_levels_away_from_the_market(sim, store) -> None:
    """The OCO's stop goes on the tick below the kernel's level and its take-profit on the tick above, so
    the broker's exits never trigger before the kernel's (nearest-tick rounding could, by half a cent)."""
    ex = Executor(store, AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url))
    _publish(store, _intent("AAA", "buy", 10, 0, "entry", stop_loss=9.0, take_profit=11.0))
    ex.drain()
    sim.step(1)
    _protect(store, "AAA", 1, 10, 9.5071, 10.5029)  # nearest would be 9.51 and 10.50
    ex.drain()
    ex.close()

    def oco() -> tuple[float, float]:
        o = next(o for o in sim.engine.orders.values() if o.symbol == "AAA" and o.is_open and "protect" in
                 o.client_order_id and o.legs)
        stop = next(x for x in (o, *o.legs) if x.stop_price is not None)
        limit = next(x for x in (o, *o.legs) if x.limit_price is not None)
        return float(stop.stop_price), float(limit.limit_price)

    assert sim.call(oco) == (9.50, 10.51)


def test_only_the_sim_counts_as_a_venue_whose_cancels_are_final() -> None:
    """Alpaca (paper or live) keeps the exit's share check, even behind a loopback URL (a local proxy);
    live.sim, named as such (`from_env(sim_url=)`, the CLI's --sim-url), answers a cancel once it is done."""
    assert not AlpacaBroker("key", "secret", paper=True).cancel_is_final
    assert not AlpacaBroker("key", "secret", paper=False).cancel_is_final
    assert not AlpacaBroker("key", "secret", url="https://paper-api.alpaca.markets").cancel_is_final
    assert not AlpacaBroker("key", "secret", url="http://127.0.0.1:8765").cancel_is_final
    assert AlpacaBroker.from_env(sim_url="http://127.0.0.1:8765").cancel_is_final


def test_the_order_paths_session_gate_agrees_with_the_calendar_to_the_microsecond() -> None:
    """The gate works on integer nanoseconds (no pandas per order): the same answer as `in_session` at every
    minute and a microsecond either side, over DST switches, a half day, a holiday and a weekend."""
    from live.executor import _epoch_ns, _in_session_ns, in_session

    days = ("2024-03-08", "2024-03-11", "2024-11-01", "2024-11-04", "2024-11-29", "2024-12-25", "2024-11-02")
    n = 0
    for day in days:
        start = pd.Timestamp(f"{day} 12:00", tz="UTC")
        for m in range(12 * 60):
            t = start + pd.Timedelta(minutes=m)
            assert _epoch_ns(t.isoformat()) == t.value
            for dt in (-1_000, 0, 1_000):
                x = t + pd.Timedelta(nanoseconds=dt)
                assert _in_session_ns(x.value) == in_session(x), x
                n += in_session(x)
    assert n > 0  # some minutes were in a session
    assert _epoch_ns("2024-11-01T10:00:00-04:00") == pd.Timestamp("2024-11-01 14:00", tz="UTC").value
    with pytest.raises(TypeError):  # a time without its offset is refused, as pandas refused it
        _epoch_ns("2024-11-01T14:00:00")


def test_on_the_wall_clock_an_order_goes_only_while_the_session_is_open_now(sim, store) -> None:
    """`clock="wall"` (Alpaca): the bar must be in a session and so must the wall clock, or nothing is sent."""
    late = _intent("AAA", "buy", 1, 0, "entry")
    saturday = pd.Timestamp("2024-11-02 15:00", tz="UTC").timestamp()
    ex = Executor(store, AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url), clock="wall", now=lambda: saturday)
    _publish(store, late)
    ex.drain()
    assert ex.counts["blocked"] == 1 and late.client_order_id not in _at_broker(sim) and _pending(store) == 0
    on_time = _intent("BBB", "buy", 1, 0, "entry")
    ex = Executor(store, AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url), clock="wall",
                  now=lambda: (T0 + pd.Timedelta(minutes=1, seconds=2)).timestamp())
    _publish(store, on_time)
    ex.drain()
    assert ex.counts["blocked"] == 0 and on_time.client_order_id in _at_broker(sim)


def test_a_running_executor_builds_the_exchange_calendar_before_the_first_order(store: RedisState) -> None:
    """exchange-calendars takes about a second to build XNYS: `run` does it at start, not the first order."""
    from data.calendar import calendar
    from live import executor

    calendar.cache_clear()
    executor._session_hours.cache_clear()
    executor._session_ns.cache_clear()
    Executor(store, object()).run(lambda: True)  # stops before reading anything
    assert calendar.cache_info().currsize == 1


def test_an_order_whose_record_redis_refuses_stays_unacknowledged_then_is_looked_up(sim: SimServer,
                                                                                    store: RedisState) -> None:
    """Records and acknowledgements go out together: when Redis refuses the record (here a key of the wrong
    type; out of memory alike), the entry must stay pending, so the next pass finds the placed order by
    client_order_id and records it, instead of leaving an order nobody's report knows of."""
    buy = _intent("BBB", "buy", 3, 0, "entry")
    _publish(store, buy)
    store.r.set(store.keys.sent, "not a stream")
    ex = Executor(store, AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url))
    with pytest.raises(redis.ResponseError):
        ex.drain()
    assert _at_broker(sim) == [buy.client_order_id] and _pending(store) == 1  # placed, not acknowledged
    store.r.delete(store.keys.sent)
    ex.drain()
    assert _at_broker(sim) == [buy.client_order_id]  # looked up, not placed again
    assert _pending(store) == 0 and _sent(store)[buy.client_order_id] != "rejected"
