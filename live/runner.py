"""The live loop: for every closed minute bar, score, run one `step_nb`, persist, publish.

Per minute (SPEC §0-§6, §9): the session's bars are kept on the XNYS grid by bar time; the newest
score row comes from the strategy's own `prepare` (its `score`, volume spikes and events) on a
window of the session that holds the score model's lookback, so it equals the vectorized score bit
for bit; one `kernel.step_nb` decides; the state, the bar's decision record and one `signals.raw`
entry per decision are written by one Lua script (live/state.py). A minute already decided is
never decided again; minutes missed while down are fetched from the history API first. No rule
lives here: sizing, gates, tokens, baskets and fills are the kernel's.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import pandas as pd
import redis

from data.calendar import NEW_YORK
from live.feeds import Bar, History, SessionBars
from live.state import RedisState, commit_args
from strategies import codes as C
from strategies import kernel as K
from strategies.tiered_basket import (
    TieredBasketStrategy,
    param_matrix,
    state_from_bytes,
    state_to_bytes,
    structure,
)
from tierlab.errors import ConfigError
from tierlab.log import get_logger

log = get_logger(__name__)
ORDER_BUF = 64
CATCH_UP_CHECK = 50  # a catch-up reads the kill switch and writes the status summary every this many bars


def ny_date(t: pd.Timestamp) -> dt.date:
    """The New York date of a UTC time (the session a bar belongs to)."""
    return t.tz_convert(NEW_YORK).date()


@dataclass
class Minute:
    """What one decided minute produced (kept in memory for the view and the benchmarks)."""

    t: pd.Timestamp
    decisions: np.ndarray
    scores: np.ndarray
    fills: list[list[Any]]
    signals: list[dict[str, Any]]
    seconds: float = 0.0


@dataclass
class Step:
    """One `step_nb`'s outputs: decisions, stats, the orders it filled (ob_i/ob_f rows), the bar's token
    counts (kernel.N_TOK: wants A/B/R, overflows A/B/R, reserve fallbacks), the basket scores behind
    inverse-ETF decisions and the session events it fired (ev_f rows, kernel.N_EV columns)."""

    decisions: np.ndarray
    stats: np.ndarray
    oi: np.ndarray
    of: np.ndarray
    tok: np.ndarray
    dscore: np.ndarray
    events: np.ndarray


@dataclass
class Runner:
    """One strategy on one account and mode, bar by bar, with its state in Redis.

    `budget`, when given, is a shared token bucket (`consume(minute, counts) -> (ok, remaining)`):
    the step is re-run with the kernel's bucket sizes lowered to what the account has left.
    """

    strategy: TieredBasketStrategy
    store: RedisState
    history: History | None = None
    init_cash: float = 10_000.0
    events: pd.DataFrame | None = None
    budget: Any = None
    retry_s: float = 0.5
    on_minute: Callable[[Minute], None] | None = None
    state: K.State = field(init=False)
    last_epoch: int = field(init=False, default=-1)
    bars: SessionBars | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        p = self.strategy.params
        self.params = p
        self.symbols = tuple(p.universe)
        self.pvec = param_matrix([p])[0]
        self.struct = structure(p)
        self.stock_cols = np.arange(len(p.stocks))
        lb = getattr(self.strategy, "score_lookback", None)
        self.lookback = lb(p) if callable(lb) else None
        self.state = self.strategy.new_state(self.init_cash)
        self.n = len(self.symbols)
        self.persist_failures = 0  # commits retried while Redis was unreachable
        self.redis_waits = 0  # token-bucket / LLM-gate calls retried while Redis was unreachable
        # [bar epoch, commit args, still to send, Minute, status summary or None]: not answered yet
        self._inflight: list[Any] | None = None
        self._stored: list[Minute] = []  # minutes Redis stored during this decide / decide_through
        self.history_minutes: list[Minute] = []

    # ------------------------------------------------------------------ start / resume
    def resume(self) -> None:
        """Load the state and last decided bar from Redis (a fresh state when there is none)."""
        blob, last = self.store.load()
        if blob is not None:
            self.state = state_from_bytes(blob)
            self.last_epoch = last
            log.info("state_resumed", bar=_iso(last), equity=round(float(K.equity_nb(self.state)), 2))
        else:
            log.info("state_fresh", init_cash=self.init_cash)

    def open_session(self, day: dt.date) -> None:
        """Start keeping `day`'s bars; after a restart, refetch its decided minutes for the score windows."""
        if self.bars is not None and self.bars.day == day:
            return
        self.bars = SessionBars(self.symbols, day)
        self._filings = self._filing_mask(self.bars)
        if self.last_epoch >= 0 and self.history is not None:
            last_r = self.bars.row(self.last_epoch)
            if last_r is not None:
                self.add(self.history.fetch(self.symbols, self.bars.index[0], self.bars.index[last_r]))
        log.info("session_open", day=str(day), minutes=len(self.bars.index))

    def _filing_mask(self, b: SessionBars) -> np.ndarray | None:
        """The session's filing events as a (T_day, N) mask, placed as `prepare` places them on any window."""
        if self.events is None or not len(self.events):
            return None
        from data.events import events_mask

        return events_mask(self.events, b.index, b.symbols)

    def add(self, bars: Sequence[Bar]) -> None:
        """File bars by their time; a bar for a minute already decided is kept for later scores and logged."""
        assert self.bars is not None
        for b in bars:
            r = self.bars.add(b)
            if r is not None and b.epoch <= self.last_epoch:
                log.warning("late_bar", ticker=b.symbol, time=str(b.t), reason="minute_already_decided")

    # ------------------------------------------------------------------ deciding
    def decide_through(self, t: pd.Timestamp) -> list[Minute]:
        """Decide every undecided minute of the session up to bar start `t`, oldest first.

        Minutes between the last decided one and `t` that never arrived are fetched from history first.
        """
        assert self.bars is not None
        r_end = self.bars.row(t)
        if r_end is None:
            log.warning("minute_ignored", time=str(t), reason="off_session")
            return []
        r0 = self.bars.row(self.last_epoch)
        start = 0 if r0 is None else r0 + 1
        if r0 is None and self.last_epoch >= int(self.bars.index[0].value // 1_000_000_000):
            return []  # decided past this session already
        if start <= r_end and self.history is not None:
            missing = [r for r in range(start, r_end + 1) if not self.bars.has(r).any()]
            if missing:
                got = self.history.fetch(self.symbols, self.bars.index[missing[0]], self.bars.index[missing[-1]])
                self.add(got)
                log.info("minutes_refetched", first=str(self.bars.index[missing[0]]), count=len(missing),
                         bars=len(got), reason="missed_bars")
        # a catch-up: commits pipelined (bar r+1 is decided while Redis stores bar r); the status summary
        # and the kill switch every CATCH_UP_CHECK bars and with the newest one
        self._stored = []
        for n, r in enumerate(range(start, r_end + 1), 1):
            if int(self.bars.open_epoch[r]) <= self.last_epoch:
                continue  # an earlier life decided it: its state was adopted when Redis refused our commit
            if n % CATCH_UP_CHECK == 0 and self._kill_set():
                log.warning("catch_up_stopped", bar=_iso(self.last_epoch), rule="kill", reason="kill switch set")
                break
            self._decide(r, status=r == r_end or n % CATCH_UP_CHECK == 0)
        self.settle()  # every commit is answered before this returns
        out, self._stored = self._stored, []
        return out

    def _kill_set(self) -> bool:
        """The account's kill switch, read once the commits sent are stored (unreadable: not set, go on)."""
        self.settle()
        try:
            return self.store.killed()
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def _inputs(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Row r's scores and events: the strategy's own per-bar `score_row` (bit for bit the vectorized
        rows) when it has one, else its `prepare` on a session window holding the score's lookback."""
        b = self.bars
        assert b is not None
        row = self.strategy.score_row(b.high, b.low, b.close, b.volume, r,
                                      None if self._filings is None else self._filings[r])
        if row is not None:
            return row
        inp = self._window_inputs(r)
        return inp.scores[-1].copy(), inp.events[-1].copy()

    def _window_inputs(self, r: int) -> Any:
        """The strategy's own prepare on the shortest session window ending at r that fixes row r's score."""
        assert self.bars is not None
        lo = self.bars.window_start(r, self.stock_cols, self.lookback)
        prev = numba.get_num_threads()
        numba.set_num_threads(1)  # a window of a few dozen rows: a thread pool costs more than it saves
        try:
            inp = self.strategy.prepare(self.bars.panel(lo, r), self.events)
        finally:
            numba.set_num_threads(prev)
        return inp

    def _step(self, r: int, score: np.ndarray, ev: np.ndarray, pvec: np.ndarray, llm_calls: int = 0) -> Step:
        """One `kernel.step_nb` on session row r: decisions, stats, fills, and this bar's token counts,
        basket scores and session events (rollback triggers) as the backtest records them."""
        b = self.bars
        assert b is not None
        dec = np.zeros(self.n, dtype=np.int8)
        dscore = np.full(self.n, np.nan)
        tok = np.zeros(K.N_TOK, dtype=np.int64)
        counts = np.zeros(C.N_DECISIONS, dtype=np.int64)
        stats = np.zeros(K.N_STATS)
        ob_i = np.zeros((ORDER_BUF, 5), dtype=np.int64)
        ob_f = np.zeros((ORDER_BUF, 3))
        n_orders = np.zeros(1, dtype=np.int64)
        ev_f = np.zeros((K.EVENTS_PER_SESSION, K.N_EV))
        n_ev = np.zeros(1, dtype=np.int64)
        fresh = np.zeros(self.n, dtype=np.bool_)
        K.step_nb(self.state, r, b.open[r], b.high[r], b.low[r], b.close[r], score, ev, b.close_epoch,
                  int(b.open_epoch[r]), int(b.day_ord[r]), int(b.mtc[r]), int(b.ny_minute[r]), int(llm_calls),
                  pvec, self.struct, dec, dscore, tok, counts, stats, ob_i, ob_f, n_orders, ev_f, n_ev, fresh)
        return Step(dec, stats, ob_i[: n_orders[0]], ob_f[: n_orders[0]], tok, dscore, ev_f[: n_ev[0]].copy())

    def decide(self, r: int) -> Minute | None:
        """Decide row r of the session: score, step (within the shared token budget), persist, publish.

        None when an earlier life of this runner had decided it (Redis keeps that decision)."""
        self._stored = []
        self._decide(r)
        self.settle()
        out, self._stored = self._stored, []
        return out[0] if out else None

    def _decide(self, r: int, status: bool = True) -> None:
        """`decide` whose commit is sent once the previous bar's is answered, without waiting for its own
        (its Minute goes out when Redis has stored it); `status=False` leaves the status summary out."""
        t0 = time.perf_counter()
        b = self.bars
        assert b is not None
        t = b.times[r]
        epoch = int(b.open_epoch[r])
        score, ev = self._inputs(r)
        if "llm" not in self.__dict__:  # the LLM gate: off unless OPENAI_BASE_URL and TIERLAB_LLM_MODEL are set
            from live.llm import live_llm_from_env

            self.llm = live_llm_from_env(self.params, self.store.r, self.store.keys.prefix, log=log.info)
        llm_calls = 0
        llm_due = self.llm is not None and bool((ev & np.isfinite(score)).any())
        # the state before the step, for the re-runs of the LLM gate's dry run and of a refused token take
        before = _copy_state(self.state) if llm_due or self.budget is not None else self.state
        if (llm_due or self.budget is not None) and not self._settled(r, status):
            return  # the gate's and the bucket's Redis calls wait until the bar before is stored
        if llm_due:
            dry = self._step(r, score, ev, self.pvec)  # the threshold this bar's decision uses (SPEC §8), from
            min_score = float(K.decision_llm_min_nb(self.state, dry.events, 0, len(dry.events)))  # the kernel
            self.state = _copy_state(before)
            score, llm_calls = self._waiting_out("llm_gate", self.llm.step_inputs, self._window_inputs(r), self.events,
                                                 min_score)
        st = self._step(r, score, ev, self.pvec, llm_calls=llm_calls)
        if self.budget is not None:
            st = self._within_budget(r, t, before, score, ev, st, llm_calls)
        dec, stats, oi, of = st.decisions, st.stats, st.oi, st.of
        now = int(b.close_epoch[r])
        # the kernel's own fills (fill bar, decision bar: session rows; fees) -> the backtest's order rows
        fills = [[self.symbols[int(oi[k, K.OI_COL])], int(oi[k, K.OI_SIDE]), float(of[k, K.OF_QTY]),
                  float(of[k, K.OF_PRICE]), C.ORDER_REASON_NAMES.get(int(oi[k, K.OI_REASON]), "?"),
                  float(of[k, K.OF_FEES]), int(b.open_epoch[int(oi[k, K.OI_BAR])]),
                  int(b.open_epoch[int(oi[k, K.OI_DEC])])]
                 for k in range(len(oi))]
        signals = self._signals(b.iso[r], now, dec, score, oi)
        record = {"t": epoch, "codes": dec.tolist(), "scores": score.tolist(),
                  "dscores": st.dscore.tolist(), "tok": st.tok.tolist(), "events": st.events.tolist(),
                  "fills": fills, "equity": float(K.equity_nb(self.state)), "cash": float(self.state.f[K.F_CASH]),
                  "stats": stats.tolist(), "llm_calls": llm_calls}
        args = commit_args(epoch, state_to_bytes(self.state), record, signals)
        if not self._settled(r, status):
            return
        self._inflight = [epoch, args, True, Minute(t, dec, score, fills, signals, time.perf_counter() - t0), None]
        self._send()
        if status:  # the view, computed while Redis stores the bar, and kept only if it does
            self._inflight[4] = self.summary(t, dec, score)
            if not self._inflight[2]:
                self._send_status(self._inflight[4])

    def _settled(self, r: int, status: bool) -> bool:
        """Settle the commit in flight; False when Redis refused it (an earlier life had decided that bar):
        the stored state is loaded and bar r decided again from it, unless that life decided r too."""
        if self.settle():
            return True
        if self.last_epoch < int(self.bars.open_epoch[r]):  # type: ignore[union-attr]
            self._decide(r, status)
        return False

    def _within_budget(self, r: int, t: pd.Timestamp, before: K.State, score: np.ndarray, ev: np.ndarray,
                       st: Step, llm_calls: int = 0) -> Step:
        """Take the tokens the step used from the account's shared bucket; on refusal re-run the step
        with the kernel's bucket sizes lowered to what the account has left (the arithmetic stays the
        kernel's). The op id makes a re-decided minute (after a crash) not pay twice.
        """
        b = self.bars
        assert b is not None
        minute = int(b.close_epoch[r]) // 60  # the kernel's minute: the bar close's
        op = f"{self.store.keys.prefix}{minute}"
        for attempt in range(5):
            used = _tokens_used(st.stats)
            ok, remaining = self._waiting_out("token_budget", self.budget.consume, minute, used, op_id=op)
            if ok:
                if attempt:
                    log.info("token_budget_shared", time=str(t), used=used, rule="token",
                             reason="another runner on the account used tokens this minute")
                return st
            self.state = _copy_state(before)
            pvec = self.pvec.copy()
            pvec[K.P_TOK_A], pvec[K.P_TOK_B], pvec[K.P_TOK_R] = (float(x) for x in remaining)
            st = self._step(r, score, ev, pvec, llm_calls=llm_calls)  # the bar's LLM calls stay in the surge window
        raise RuntimeError(f"token budget: no consistent take after 5 attempts at {t}")

    def _waiting_out(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call `fn` (idempotent: the bucket's op id, the gate's cache) until Redis answers; nothing is
        decided, stored or published meanwhile."""
        waited = 0
        while True:
            try:
                out = fn(*args, **kwargs)
                break
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if waited == 0:
                    log.error("redis_unreachable", what=what, reason=type(e).__name__,
                              action="no decision until Redis answers; retrying")
                self.redis_waits += 1
                waited += 1
                time.sleep(self.retry_s)
        if waited:
            log.info("redis_back", what=what, retries=waited)
        return out

    def _signals(self, bar_iso: str, now: int, dec: np.ndarray, score: np.ndarray, oi: np.ndarray) -> list[dict]:
        """One entry per decision; order entries carry the intent; a filled entry re-anchors its exits."""
        p = self.params
        intents = {}
        if self.state.sf[:, K.SF_PENDING].any():
            when = pd.Timestamp(now, unit="s", tz="UTC")
            intents = {i.symbol: i for i in self.strategy.intents(self.state) if i.bar_time == when}
        out: list[dict[str, Any]] = []
        base = {"bar_time": bar_iso, "mode": p.mode, "strategy": self.strategy.name}
        # the fills of this bar happened at its open, before the decisions at its close: re-anchor first, so an
        # exit decided at this close (flatten, signal, max hold) cancels the re-anchored legs, not the reverse
        for k in range(len(oi)):
            j = int(oi[k, K.OI_COL])
            if int(oi[k, K.OI_SIDE]) > 0 and self.state.sf[j, K.SF_QTY] > 0:
                out.append({"kind": "protect", "symbol": self.symbols[j], "code": 0, "reason": "reanchor_exits",
                            "score": "nan", **base, "client_order_id": "",
                            "stop_loss": repr(float(self.state.sf[j, K.SF_STOP])),
                            "take_profit": repr(float(self.state.sf[j, K.SF_TP])),
                            "qty": repr(float(self.state.sf[j, K.SF_QTY]))})
        for j, sym in enumerate(self.symbols):
            code = int(dec[j])
            it = intents.pop(sym, None)
            if code == C.NOT_EVALUATED and it is None:
                continue
            s = {"kind": "decision", "symbol": sym, "code": code, "reason": C.DECISION_NAMES[code],
                 "score": repr(float(score[j])), **base, "client_order_id": ""}
            if it is not None:
                s.update(kind="order", client_order_id=it.client_order_id, side=it.side, qty=repr(it.qty),
                         intent=it.intent, decided=str(now), stop_loss=it.stop_loss, take_profit=it.take_profit)
                if code == C.NOT_EVALUATED:
                    s["reason"] = it.intent
            out.append(s)
        return out

    def _send(self) -> None:
        """Send the in-flight commit; a send that fails is sent again by `settle` (nothing went out)."""
        try:
            self.store.send_commit(self._inflight[1])
            self._inflight[2] = False
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("commit_send_failed", bar=_iso(self._inflight[0]), reason=type(e).__name__,
                        action="sent again before the next bar")

    def _send_status(self, summary: dict[str, Any]) -> None:
        """The status summary behind the commit just sent (a failed write sends both again in `settle`)."""
        try:
            self.store.send_status(summary)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._inflight[2] = True  # type: ignore[index]
            log.warning("commit_send_failed", bar=_iso(self._inflight[0]), reason=type(e).__name__,  # type: ignore[index]
                        action="sent again before the next bar")

    def settle(self) -> bool:
        """Wait until Redis has answered the commit in flight; while Redis is unreachable keep sending it
        again (nothing is published meanwhile, so no order goes out). False when the bar had been decided
        already (by an earlier life of this runner): the stored state is loaded, Redis is the record.
        """
        if self._inflight is None:
            return True
        bar_epoch, args, need_send, minute, summary = self._inflight
        waited = 0
        while True:
            try:
                if need_send:
                    self.store.unanswered()
                    self.store.send_commit(args)
                    if summary is not None:
                        self.store.send_status(summary)
                ok = self.store.read_commit()
                break
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if waited == 0:
                    log.error("state_not_persisted", bar=_iso(bar_epoch), reason=type(e).__name__,
                              action="no orders until Redis answers; retrying")
                self.persist_failures += 1
                waited += 1
                need_send = True
                time.sleep(self.retry_s)
        self._inflight = None
        if waited:
            log.info("state_persisted_after_outage", bar=_iso(bar_epoch), retries=waited)
        if not ok:
            blob, last = self.store.load()
            if blob == args[1]:  # our own commit, stored before its answer was lost
                ok = True
            elif blob is not None:
                self.state = state_from_bytes(blob)
                self.last_epoch = last
                log.warning("bar_already_decided", bar=_iso(bar_epoch), reason="kept_the_stored_decision")
                return False
        self.last_epoch = bar_epoch
        self._stored.append(minute)
        if self.on_minute is not None:
            self.on_minute(minute)
        return True

    # ------------------------------------------------------------------ views
    def summary(self, t: pd.Timestamp, dec: np.ndarray | None = None, score: np.ndarray | None = None) -> dict:
        """Risk summary (SPEC §5), positions, tokens left and the last decision per ticker."""
        st = self.state
        rs = self.strategy.risk_summary(st)
        pos = {s: float(st.sf[j, K.SF_QTY]) for j, s in enumerate(self.symbols) if st.sf[j, K.SF_QTY] > 0}
        out = {"time": t.isoformat(), "mode": self.params.mode, "risk": rs, "positions": pos,
               "cash": float(st.f[K.F_CASH]), "equity": float(K.equity_nb(st)),
               "pnl": float(K.equity_nb(st)) - self.init_cash,
               "tokens": {"A": int(st.i[K.I_TOK_A]), "B": int(st.i[K.I_TOK_B]), "R": int(st.i[K.I_TOK_R])}}
        if dec is not None and score is not None:
            tiers = self.__dict__.get("_tiers") or self.__dict__.setdefault(
                "_tiers", [C.TIER_NAMES[int(x)] for x in self.struct.tier])
            out["tickers"] = {s: {"score": None if x != x else round(x, 4), "tier": tier, "decision": C.DECISION_NAMES[d]}
                              for s, x, tier, d in zip(self.symbols, score.tolist(), tiers, dec.tolist(), strict=True)}
        return out

    # ------------------------------------------------------------------ the broker is the truth
    def adopt(self, positions: dict[str, tuple[float, float]], cash: float | None) -> list[dict[str, Any]]:
        """Adopt the broker's book (qty, avg entry per symbol; cash); returns and logs each difference."""
        st = self.state
        diffs = []
        for j, sym in enumerate(self.symbols):
            ours = float(st.sf[j, K.SF_QTY])
            theirs, avg = positions.get(sym, (0.0, float("nan")))
            if abs(ours - theirs) > 1e-9:
                diffs.append({"ticker": sym, "field": "qty", "ours": ours, "broker": theirs})
                st.sf[j, K.SF_QTY] = theirs
                if theirs > 0:
                    st.sf[j, K.SF_ENTRY] = avg
                    st.sf[j, K.SF_COST] = theirs * avg
                    if np.isnan(st.sf[j, K.SF_LAST]):
                        st.sf[j, K.SF_LAST] = avg
                    if np.isnan(st.sf[j, K.SF_STOP]):  # no known stop: risked at stop_loss_pct (SPEC §5)
                        st.sf[j, K.SF_STOP] = avg * (1.0 - self.params.stop_loss_pct)
                else:
                    st.sf[j, K.SF_STOP] = st.sf[j, K.SF_TP] = np.nan
                    st.sf[j, K.SF_COST] = 0.0
        unknown = sorted(set(positions) - set(self.symbols))
        for sym in unknown:
            diffs.append({"ticker": sym, "field": "qty", "ours": 0.0, "broker": positions[sym][0],
                          "note": "outside the universe; left alone"})
        if cash is not None and abs(float(st.f[K.F_CASH]) - cash) > 0.005:
            diffs.append({"ticker": "-", "field": "cash", "ours": float(st.f[K.F_CASH]), "broker": cash})
            st.f[K.F_CASH] = cash
        for d in diffs:
            log.warning("reconcile_difference", **d, reason="adopted_broker_book")
        if not diffs:
            log.info("reconciled_no_difference", positions=len(positions))
        return diffs


def _copy_state(state: K.State) -> K.State:
    """A deep copy of a kernel state (the step mutates its arrays in place)."""
    return K.State(*(a.copy() for a in state))


def _tokens_used(stats: np.ndarray) -> list[int]:
    """Tokens a step took per bucket (A, B, Reserve); a Tier A fallback is paid from the Reserve."""
    used = [int(stats[K.ST_WANT_A + k] - stats[K.ST_OVER_A + k]) for k in range(3)]
    fb = int(stats[K.ST_FALLBACK])
    return [used[0] - fb, used[1], used[2] + fb]


def _iso(epoch: int) -> str:
    return "none" if epoch < 0 else pd.Timestamp(epoch, unit="s", tz="UTC").isoformat()


def check_mode(mode: str) -> str:
    """A mode name the presets know."""
    if mode not in ("default", "relaxed"):
        raise ConfigError(f"mode must be default or relaxed, got {mode!r}")
    return mode


def drive_sim(runner: Runner, feed: Any, history: History, *, executor: Any = None, wait_executor: bool = True,
              stop: Callable[[], bool] = lambda: False, max_steps: int | None = None,
              on_step: Callable[[pd.Timestamp], None] | None = None) -> str:
    """Replay the sim's step-mode clock through the runner until the replay ends (or a stop / kill).

    Before each step every signal already published is at the broker (an in-process `executor`
    drains it; else the runner waits for the executor's consumer group to be idle), so orders reach
    the sim before the next bar closes, as they would reach Alpaca within the minute. After a
    restart the minutes the sim closed while the runner was down are fetched and decided first.
    """
    st = feed.state()
    now = pd.Timestamp(st["time"]).tz_convert("UTC")
    closed = now - pd.Timedelta(minutes=1)
    if st["bar"] > 0:
        runner.open_session(ny_date(closed))
        if runner.bars is not None and runner.bars.row(closed) is not None:
            runner.decide_through(closed)
    steps = 0
    down = False
    while True:
        try:
            if stop() or runner.store.killed():
                return "stopped"
            if executor is not None:
                executor.drain()
            elif wait_executor:
                while not runner.store.executor_idle():
                    if stop() or runner.store.killed():
                        return "stopped"
                    time.sleep(0.001)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if not down:
                log.error("redis_unreachable", reason=type(e).__name__, action="clock held; no step, no order")
            down = True
            time.sleep(runner.retry_s)
            continue
        if down:
            log.info("redis_back", action="resuming")
            down = False
        if max_steps is not None and steps >= max_steps:
            return "paused"
        t, done = feed.advance()
        steps += 1
        if t is not None:
            if on_step is not None:
                on_step(t)
            runner.open_session(ny_date(t))
            runner.add(history.fetch(runner.symbols, t, t))
            runner.decide_through(t)
        if done:
            if executor is not None:
                executor.drain()
            return "done"


def reconcile(runner: Runner, broker: Any) -> list[dict[str, Any]]:
    """The broker is the truth: read its book (every page, legs included) and adopt it into the state."""
    rec = broker.reconcile()
    details = getattr(rec, "position_details", {}) or {}
    pos = {}
    for sym, qty in rec.positions.items():
        d = details.get(sym)
        avg = float(d.avg_entry_price) if d is not None and d.avg_entry_price is not None else float("nan")
        pos[sym] = (float(qty), avg)
    diffs = runner.adopt(pos, None)
    if diffs:
        runner.store.r.set(runner.store.keys.state, state_to_bytes(runner.state))
    return diffs


def kill_switch(store: RedisState, broker: Any) -> dict[str, int]:
    """Cancel every open order and close every position at the broker (logged); the state stays saved."""
    canceled = closed = 0
    for o in broker.open_orders():
        try:
            broker.cancel(str(o.id))
            canceled += 1
        except Exception as e:  # an order that filled or expired meanwhile
            log.warning("kill_cancel_failed", ticker=o.symbol, client_order_id=o.client_order_id, reason=str(e))
    for p in broker.positions():
        try:
            broker._call("close_position", broker.client.close_position, p.symbol, ticker=p.symbol)
            closed += 1
        except Exception as e:
            log.error("kill_flatten_failed", ticker=p.symbol, reason=str(e))
    store.r.hset(store.keys.status, "stopped", "kill_switch")
    log.warning("kill_switch", canceled=canceled, closed=closed, rule="kill", reason="kill switch set")
    return {"canceled": canceled, "closed": closed}


def drive_alpaca(runner: Runner, api_key: str, secret_key: str, broker: Any, *,
                 stop: Callable[[], bool] = lambda: False, grace_s: float = 3.0) -> str:
    """Alpaca paper: live minute bars from StockDataStream; a minute is decided when every symbol has
    sent its bar or `grace_s` after its end; minutes missed (reconnects, restarts) come from history.
    """
    from live.feeds import AlpacaBarFeed

    feed = AlpacaBarFeed(api_key, secret_key, runner.symbols, grace_s=grace_s).start()
    reconcile(runner, broker)
    try:
        while not (stop() or runner.store.killed()):
            now = pd.Timestamp.now(tz="UTC")
            runner.open_session(ny_date(now))
            runner.add(feed.poll(0.25))
            b = runner.bars
            assert b is not None
            r_now = b.row(now.floor("min") - pd.Timedelta(minutes=1))
            if r_now is None:
                if now >= b.index[-1] + pd.Timedelta(minutes=2):
                    return "session_closed"
                continue
            r0 = b.row(runner.last_epoch)
            nxt = 0 if r0 is None else r0 + 1
            while nxt <= r_now:
                t = b.index[nxt]
                if not (b.has(nxt).all() or feed.due(t)):
                    break
                runner.decide_through(t)
                nxt += 1
        return "stopped"
    finally:
        feed.stop()
