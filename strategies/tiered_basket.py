"""The shipped strategy: tiered evaluation, token budget, gates, risk, baskets (SPEC §1-§6).

`TieredBasketStrategy.run(panel, params_list)` is the history driver: scores once per distinct
score model, then `kernel.run_nb` with every parameter set as a column. `walk(...)` drives the very
same `kernel.step_nb` from a Python loop, bar by bar, from a saved state: that is what the live
runner does, and the tests hold the two drivers to identical decisions.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from data.bars import Panel
from strategies import codes as C
from strategies import kernel as K
from strategies.base import ORDER_DTYPE, TRIGGER_DTYPE, RunResult, Strategy, triggers_frame
from strategies.intents import OrderIntent
from strategies.params import RELAXED_FIELDS, Params, minute_of_day
from strategies.rules.risk import kelly_fraction_nb
from strategies.score import score_nb, score_row_nb, volume_spikes_nb
from strategies.space import Constraint, FloatParam, IntParam
from tierlab.errors import ConfigError, DataError

SCORE_FIELDS = ("mom_window", "vol_window", "vwap_window", "w_mom", "w_vwap", "score_gain", "spike_mult")
STRUCTURE_FIELDS = ("tier_a", "tier_b", "tier_bench", "inverse_etfs", "other_etfs", "baskets", "conflicts")


@dataclass(frozen=True)
class BarInputs:
    """Everything the kernel reads, as aligned arrays over the panel's bars (T) and symbols (N).

    Derived when not given: `open_epoch` (each bar's start, epoch seconds) from `index`;
    `ny_minute` (New York minute of day of each bar's close, the decision clock of the session
    rules) from `close_epoch`; `llm_calls` (LLM calls made at each bar, for the surge trigger) zeros.
    """

    index: pd.DatetimeIndex
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    scores: np.ndarray
    events: np.ndarray
    close_epoch: np.ndarray
    day: np.ndarray
    minutes_to_close: np.ndarray
    open_epoch: np.ndarray | None = None
    ny_minute: np.ndarray | None = None
    llm_calls: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.open_epoch is None:
            start = pd.DatetimeIndex(self.index).as_unit("s").asi8.astype(np.int64)
            object.__setattr__(self, "open_epoch", start)
        if self.ny_minute is None:
            object.__setattr__(self, "ny_minute", ny_minute_of_day(self.close_epoch))
        if self.llm_calls is None:
            object.__setattr__(self, "llm_calls", np.zeros(len(self.close_epoch), dtype=np.int64))
        elif len(self.llm_calls) != len(self.close_epoch):
            raise ConfigError(f"llm_calls has {len(self.llm_calls)} rows, the bars {len(self.close_epoch)}")


def ny_minute_of_day(epoch: np.ndarray) -> np.ndarray:
    """New York minute of day (0..1440) of each epoch second: 15:30:00 EDT or EST -> 930."""
    t = pd.DatetimeIndex(pd.to_datetime(np.asarray(epoch, dtype=np.int64), unit="s", utc=True)).tz_convert(
        "America/New_York")
    return (t.hour * 60 + t.minute).to_numpy().astype(np.int64)


def _stocks_only(scores: np.ndarray, events: np.ndarray, n_stocks: int) -> None:
    """ETFs (the columns after the stocks) are traded by baskets only: never scored, never an event."""
    scores[..., n_stocks:] = np.nan
    events[..., n_stocks:] = False


def param_matrix(params_list: Sequence[Params]) -> np.ndarray:
    """The (K, P) float matrix of scalar parameters the kernel reads (kernel.P_NAMES order)."""
    rows = []
    defaults = Params.preset("default")
    for p in params_list:
        d = p.model_dump()
        d["delta_start_min"] = minute_of_day(p.delta_start)
        d["delta_end_min"] = minute_of_day(p.delta_end)
        d["hard_rollback_min"] = minute_of_day(p.hard_rollback_at) if p.hard_rollback_at else -1
        for name in RELAXED_FIELDS:
            d[f"default_{name}"] = getattr(defaults, name)
        rows.append([float(d[name]) for name in K.P_NAMES])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), K.N_PARAMS)


def structure(p: Params) -> K.Structure:
    """The universe's shape for the kernel: tiers, basket membership and targets, conflicts."""
    uni = p.universe
    col = {s: j for j, s in enumerate(uni)}
    tier = np.array([0] * len(p.tier_a) + [1] * len(p.tier_b) + [2] * len(p.tier_bench)
                    + [3] * (len(p.inverse_etfs) + len(p.other_etfs)), dtype=np.int64)
    nb = len(p.baskets)
    members = np.zeros((nb, len(uni)), dtype=np.bool_)
    target = np.zeros(nb, dtype=np.int64)
    bparams = np.zeros((nb, 4))
    for b, bk in enumerate(p.baskets):
        for m in bk.members:
            members[b, col[m]] = True
        target[b] = col[bk.target]
        bparams[b] = (bk.min_signals, bk.neg_share, bk.mean_threshold, bk.consecutive)
    conflict = np.zeros((len(uni), len(uni)), dtype=np.bool_)
    for a, b in p.conflicts:
        conflict[col[a], col[b]] = conflict[col[b], col[a]] = True
    return K.Structure(tier, members, target, bparams, conflict)


class TieredBasketStrategy(Strategy):
    """Tiered momentum/VWAP scores gated by SPEC §2-§6; short exposure only via inverse ETFs."""

    name: ClassVar[str] = "tiered_basket"
    params_cls: ClassVar[type] = Params
    search_space: ClassVar[dict[str, Any]] = {
        "cutoff": FloatParam(0.25, 0.7, step=0.05),
        "cutoff_delta": FloatParam(-0.1, 0.05, step=0.01),
        "cooldown_s": IntParam(60, 600, step=30),
        "direction_lock_s": IntParam(60, 900, step=60),
        "stop_loss_pct": FloatParam(0.005, 0.03, step=0.0025),
        "take_profit_pct": FloatParam(0.01, 0.06, step=0.005),
        "mom_window": IntParam(5, 30, step=5),
    }
    constraints: ClassVar[tuple[Constraint, ...]] = (
        Constraint(lambda v: v["cutoff"] + v["cutoff_delta"] > 0, "cutoff + cutoff_delta > 0"),
        Constraint(lambda v: v["take_profit_pct"] >= v["stop_loss_pct"], "take_profit_pct >= stop_loss_pct"),
    )

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params if params is not None else Params.preset("default"))

    # ---- inputs -------------------------------------------------------------------------------
    def prepare(self, panel: Panel, events: pd.DataFrame | None = None, params: Params | None = None) -> BarInputs:
        """Align the panel to the universe, score it, and mark events (filings + volume spikes)."""
        from data.calendar import session_info

        p = params or self.params
        missing = [s for s in p.universe if s not in panel.symbols]
        if missing:
            raise DataError(f"panel lacks universe symbol(s) {', '.join(missing)}; it has {', '.join(panel.symbols)}")
        pn = panel.select(p.universe)
        info = session_info(pn.index)
        day = np.asarray(info.day, dtype=np.int64)
        scores = np.array(self.score(pn, p), dtype=np.float64)
        if scores.shape != pn.shape:
            raise ConfigError(f"{type(self).__name__}.score returned shape {scores.shape}, expected {pn.shape}")
        bad = np.abs(scores) > 1
        if bad.any():
            t, j = np.argwhere(bad)[0]
            raise ConfigError(f"{type(self).__name__}.score: {pn.symbols[j]} at {pn.index[t]} scored "
                              f"{float(scores[t, j])!r}, outside [-1, 1]")
        scores[~pn.has_bar] = np.nan  # no bar, no fresh score (SPEC §0)
        ev = volume_spikes_nb(pn.close, pn.volume, day, p.vol_window, p.spike_mult)
        if events is not None and len(events):
            from data.events import events_mask

            ev |= events_mask(events, pn.index, pn.symbols)
        _stocks_only(scores, ev, len(p.stocks))
        return BarInputs(pn.index, pn.symbols, pn.open, pn.high, pn.low, pn.close, scores, ev,
                         np.asarray(info.close_epoch, dtype=np.int64), day,
                         np.asarray(info.minutes_to_close, dtype=np.int64))

    def score(self, panel: Panel, params: Params | None = None) -> np.ndarray:
        """Scores (T, N) in [-1, 1] for the panel's own symbols (causal; NaN where not fresh).

        Override this to plug in another model: it must be causal (row t uses rows <= t only).
        """
        from data.calendar import session_info

        p = params or self.params
        day = np.asarray(session_info(panel.index).day, dtype=np.int64)
        return score_nb(panel.open, panel.high, panel.low, panel.close, panel.volume, day, p.mom_window,
                        p.vol_window, p.vwap_window, p.w_mom, p.w_vwap, p.score_gain)

    def score_row(self, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, t: int,
                  filings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Row t of `prepare`'s scores and events, for (T, N) arrays of ONE session in universe order.

        The live runner's per-bar path: `score_row_nb` applies the very formulas of `score_nb` and
        `volume_spikes_nb` to bar t only, so both rows equal the vectorized ones bit for bit;
        `filings` is the session's filing mask row (`data.events.events_mask`). None when `score` or
        `prepare` is overridden (a plugged-in model): the runner then runs `prepare` on a window.
        """
        cls = type(self)
        if cls.score is not TieredBasketStrategy.score or cls.prepare is not TieredBasketStrategy.prepare:
            return None
        p = self.params
        scores, ev = score_row_nb(high, low, close, volume, int(t), p.mom_window, p.vol_window, p.vwap_window,
                                  p.w_mom, p.w_vwap, p.score_gain, p.vol_window, p.spike_mult)
        if filings is not None:
            ev |= filings
        _stocks_only(scores, ev, len(p.stocks))
        return scores, ev

    def score_lookback(self, params: Params | None = None) -> int:
        """Real bars per symbol (this one included) that fix the newest score and volume-spike row.

        The live runner scores a window of the session holding this many bars of every stock and
        reads its last row; the windows of `score_nb`/`volume_spikes_nb` restart each session, so
        the row equals the one of the vectorized score bit for bit.
        """
        p = params or self.params
        return max(p.mom_window, p.vol_window, p.vwap_window) + 1

    # ---- the history driver -------------------------------------------------------------------
    def run(
        self,
        panel: Panel,
        params_list: Sequence[Params] | None = None,
        *,
        events: pd.DataFrame | None = None,
        init_cash: float = 10_000.0,
        record: bool | None = None,
        progress: bool = False,
    ) -> RunResult:
        """Walk the panel once per parameter set (side by side) and collect orders and equity.

        `record` keeps (K, T, N) decisions; by default only for up to 8 sets.
        """
        plist = list(params_list) if params_list is not None else [self.params]
        if not plist:
            raise ConfigError("params_list is empty")
        base = plist[0]
        for q in plist[1:]:
            for f in STRUCTURE_FIELDS:
                if getattr(q, f) != getattr(base, f):
                    raise ConfigError(f"params_list: every set must share {f}; set differs: {getattr(q, f)!r}")
        if init_cash <= 0:
            raise ConfigError(f"init_cash must be > 0, got {init_cash}")
        record = len(plist) <= 8 if record is None else record
        groups: dict[tuple, list[int]] = {}
        for k, q in enumerate(plist):
            groups.setdefault(tuple(getattr(q, f) for f in SCORE_FIELDS), []).append(k)
        iterator: Any = groups.values()
        if progress and len(groups) > 1:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(groups), desc="score models", unit="model")
        results = [(ks, self.run_inputs(self.prepare(panel, events, plist[ks[0]]), [plist[k] for k in ks],
                                         init_cash=init_cash, record=record)) for ks in iterator]
        return results[0][1] if len(results) == 1 else _merge(results, plist)

    def run_inputs(
        self, inputs: BarInputs, params_list: Sequence[Params] | None = None, *, init_cash: float = 10_000.0,
        record: bool = True,
    ) -> RunResult:
        """Run the kernel on prepared (or hand-made) inputs; all sets share `inputs.scores`."""
        plist = list(params_list) if params_list is not None else [self.params]
        equity, cash, decisions, counts, stats, ob_i, ob_f, n_orders, dscores, toks, ev_f, n_ev, llm_min = run_arrays(
            inputs, plist, structure(plist[0]), init_cash, record)
        orders = np.concatenate([_orders(k, ob_i[k], ob_f[k], int(n_orders[k])) for k in range(len(plist))])
        triggers = np.concatenate([_triggers(k, ev_f[k], int(n_ev[k])) for k in range(len(plist))])
        extras = {name: stats[:, i] for i, name in enumerate(K.STAT_NAMES)}
        extras["token_wants"] = stats[:, K.ST_WANT_A:K.ST_WANT_R + 1]
        extras["token_overflows"] = stats[:, K.ST_OVER_A:K.ST_OVER_R + 1]
        if record:  # per bar and tier: the numbers the overflow trigger read (RunResult.token_minutes_frame)
            extras["token_wants_bar"] = toks[:, :, :3]
            extras["token_overflows_bar"] = toks[:, :, 3:6]
            extras["reserve_fallbacks_bar"] = toks[:, :, 6]
            extras["llm_min_score"] = llm_min  # (K, T): the LLM gate's threshold per bar (SPEC §8 rollbacks)
        return RunResult(
            index=inputs.index, symbols=inputs.symbols, init_cash=float(init_cash), orders=orders, equity=equity,
            cash=cash, reason_counts=counts, decisions=decisions if record else None, scores=inputs.scores,
            params=plist, extras=extras, decision_scores=dscores if record else None, triggers=triggers,
            close_epoch=inputs.close_epoch,
        )

    # ---- the bar-by-bar driver ----------------------------------------------------------------
    def new_state(self, init_cash: float = 10_000.0) -> K.State:
        """A fresh state for this strategy's universe."""
        return K.new_state_nb(len(self.params.universe), len(self.params.baskets), float(init_cash))

    def walk(self, inputs: BarInputs, state: K.State, start: int = 0, stop: int | None = None) -> WalkLog:
        """Drive `kernel.step_nb` from Python over bars [start, stop) of `inputs`, mutating `state`."""
        p = param_matrix([self.params])[0]
        st = structure(self.params)
        n = len(inputs.symbols)
        stop = len(inputs.index) if stop is None else stop
        log = WalkLog.empty(stop - start, n, inputs.close_epoch)
        ob_i = np.zeros((4 * (stop - start) + 16, 5), dtype=np.int64)
        ob_f = np.zeros((4 * (stop - start) + 16, 3))
        n_orders = np.zeros(1, dtype=np.int64)
        ev_f = np.zeros((K.EVENTS_PER_SESSION * (len(np.unique(inputs.day[start:stop])) + 1), K.N_EV))
        n_ev = np.zeros(1, dtype=np.int64)
        fresh = np.zeros(n, dtype=np.bool_)
        for r, t in enumerate(range(start, stop)):
            K.step_nb(state, t, inputs.open[t], inputs.high[t], inputs.low[t], inputs.close[t], inputs.scores[t],
                      inputs.events[t], inputs.close_epoch, int(inputs.open_epoch[t]), inputs.day[t],
                      inputs.minutes_to_close[t], int(inputs.ny_minute[t]), int(inputs.llm_calls[t]), p, st,
                      log.decisions[r], log.basket_scores[r], log.tokens[r], log.counts, log.stats, ob_i, ob_f,
                      n_orders, ev_f, n_ev, fresh)
            log.equity[r] = K.equity_nb(state)
            log.cash[r] = state.f[K.F_CASH]
        log.orders = _orders(0, ob_i, ob_f, int(n_orders[0]))
        log.triggers = _triggers(0, ev_f, int(n_ev[0]))
        return log

    def effective(self, state: K.State, day: int | None = None) -> dict[str, Any]:
        """The session's effective values in `state` (after rollback triggers / the hard rollback):
        cutoff_delta (before its time window), cooldown_s, direction_lock_s, reserve_fallback and
        llm_min_score (the LLM gate reads this one). For a state not yet stepped, or whose last step
        was another session than `day`, the parameters' own values (a new session starts from them).
        """
        p = self.params
        if int(state.i[K.I_DAY]) < 0 or (day is not None and int(state.i[K.I_DAY]) != int(day)):
            return {name: getattr(p, name) for name in RELAXED_FIELDS}
        f = state.f
        return {"cutoff_delta": float(f[K.F_E_DELTA]), "cooldown_s": float(f[K.F_E_COOLDOWN]),
                "direction_lock_s": float(f[K.F_E_LOCK]), "reserve_fallback": bool(f[K.F_E_FALLBACK] > 0),
                "llm_min_score": float(f[K.F_E_LLM_MIN])}

    def intents(self, state: K.State) -> list[OrderIntent]:
        """The market orders the step left pending at the last bar's close, as broker intents.

        Entries carry a bracket (stop and take-profit) estimated from the decision close; the
        kernel itself re-anchors both at the fill price. Ids are idempotent per decision.
        """
        p = self.params
        out = []
        for j, sym in enumerate(p.universe):
            q = float(state.sf[j, K.SF_PENDING])
            if q == 0.0:
                continue
            reason = C.ORDER_REASON_NAMES.get(int(state.si[j, K.SI_PEND_REASON]), "signal")
            when = pd.Timestamp(int(state.si[j, K.SI_PEND_DEC]), unit="s", tz="UTC")
            if q > 0:
                last = float(state.sf[j, K.SF_LAST])
                out.append(OrderIntent(self.name, sym, "buy", q, when, intent=reason,
                                       stop_loss=round(last * (1 - p.stop_loss_pct), 2),
                                       take_profit=round(last * (1 + p.take_profit_pct), 2)))
            else:
                out.append(OrderIntent(self.name, sym, "sell", -q, when, intent=reason))
        return out

    def risk_summary(self, state: K.State) -> dict[str, Any]:
        """The old bot's /portfolio/summary fields (SPEC §5) for a state."""
        if getattr(self, "_pv_of", None) is not self.params:  # the live runner asks once per bar
            self._pv, self._pv_of = param_matrix([self.params])[0], self.params
        return risk_summary(state, self.params, self._pv)


@dataclass
class WalkLog:
    """What `walk` saw: per-bar decisions (rows = bars walked), equity, cash, counts and orders.

    basket_scores: (bars, N) the basket mean score behind each inverse-ETF decision (NaN elsewhere).
    tokens:        (bars, 7) token wants of Tier A, B, Reserve, their overflows, then reserve fallbacks, per bar.
    triggers:      session events (rollback triggers, hard rollback) as TRIGGER_DTYPE rows.
    """

    decisions: np.ndarray
    equity: np.ndarray
    cash: np.ndarray
    counts: np.ndarray
    stats: np.ndarray
    orders: np.ndarray
    basket_scores: np.ndarray
    tokens: np.ndarray
    triggers: np.ndarray

    @classmethod
    def empty(cls, n_bars: int, n_sym: int, close_epoch: np.ndarray | None = None) -> WalkLog:
        """Zeroed buffers for n_bars bars."""
        return cls(np.zeros((n_bars, n_sym), dtype=np.int8), np.zeros(n_bars), np.zeros(n_bars),
                   np.zeros(C.N_DECISIONS, dtype=np.int64), np.zeros(K.N_STATS), np.zeros(0, dtype=ORDER_DTYPE),
                   np.full((n_bars, n_sym), np.nan), np.zeros((n_bars, K.N_TOK), dtype=np.int64),
                   np.zeros(0, dtype=TRIGGER_DTYPE))

    def triggers_frame(self) -> pd.DataFrame:
        """The session events of this walk as a table (see RunResult.triggers_frame)."""
        return triggers_frame(self.triggers)


_FILLS_PER_DAY = [24]  # learned per process: the order buffer's first guess, raised when a run needed more


def run_arrays(inputs: BarInputs, plist: list[Params], st: K.Structure, init_cash: float, record: bool) -> tuple:
    """Run `kernel.run_nb` on prepared inputs, growing the order buffer until every fill fits.

    A run that overflows the buffer is re-run at the exact size, and the fills per day it needed
    become the next run's first guess, so a sweep in chunks re-runs at most its first chunk.
    """
    pmat = param_matrix(plist)
    n_days = max(1, len(np.unique(inputs.day)))
    capacity = 64 + _FILLS_PER_DAY[0] * n_days
    while True:
        out = K.run_nb(inputs.open, inputs.high, inputs.low, inputs.close, inputs.scores, inputs.events,
                       inputs.close_epoch, inputs.open_epoch, inputs.day, inputs.minutes_to_close, inputs.ny_minute,
                       inputs.llm_calls, pmat, st, float(init_cash), record, capacity,
                       K.EVENTS_PER_SESSION * (n_days + 1))
        fills = int(out[4][:, K.ST_FILLS].max(initial=0))
        if fills <= capacity:
            return out
        _FILLS_PER_DAY[0] = max(_FILLS_PER_DAY[0], -(-fills // n_days) + 4)
        capacity = fills + 16  # exact size known from the first pass


def _merge(results: list[tuple[list[int], RunResult]], plist: list[Params]) -> RunResult:
    """Put the runs of several score-model groups back into the caller's set order."""
    n = len(plist)
    where: dict[int, tuple[RunResult, int]] = {k: (r, local) for ks, r in results for local, k in enumerate(ks)}
    first = results[0][1]
    orders = []
    for k in range(n):
        r, local = where[k]
        o = r.orders[r.orders["set"] == local].copy()
        o["set"] = k
        orders.append(o)
    def pick(attr: str, axis: int) -> np.ndarray:
        return np.stack([np.take(getattr(where[k][0], attr), where[k][1], axis=axis) for k in range(n)], axis=axis)
    extras = {name: np.stack([where[k][0].extras[name][where[k][1]] for k in range(n)]) for name in first.extras}
    return RunResult(
        index=first.index, symbols=first.symbols, init_cash=first.init_cash, orders=np.concatenate(orders),
        equity=pick("equity", 1), cash=pick("cash", 1), reason_counts=pick("reason_counts", 0),
        decisions=pick("decisions", 0) if first.decisions is not None else None, scores=None, params=plist,
        extras=extras, decision_scores=pick("decision_scores", 0) if first.decision_scores is not None else None,
        triggers=np.concatenate([_reset_set(where[k][0].triggers, where[k][1], k) for k in range(n)]),
        close_epoch=first.close_epoch,
    )


def _reset_set(rows: np.ndarray | None, local: int, k: int) -> np.ndarray:
    if rows is None:
        return np.zeros(0, dtype=TRIGGER_DTYPE)
    out = rows[rows["set"] == local].copy()
    out["set"] = k
    return out


def _orders(set_: int, ob_i: np.ndarray, ob_f: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(int(n), dtype=ORDER_DTYPE)
    out["set"] = set_
    out["bar"] = ob_i[:n, K.OI_BAR]
    out["decision_bar"] = ob_i[:n, K.OI_DEC]
    out["col"] = ob_i[:n, K.OI_COL]
    out["side"] = ob_i[:n, K.OI_SIDE]
    out["reason"] = ob_i[:n, K.OI_REASON]
    out["qty"] = ob_f[:n, K.OF_QTY]
    out["price"] = ob_f[:n, K.OF_PRICE]
    out["fees"] = ob_f[:n, K.OF_FEES]
    return out


def _triggers(set_: int, ev_f: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(int(n), dtype=TRIGGER_DTYPE)
    out["set"] = set_
    e = ev_f[:n]
    for name, col in (("bar", K.EV_BAR), ("time", K.EV_TIME), ("kind", K.EV_KIND), ("window_min", K.EV_WINDOW_MIN),
                      ("actionable", K.EV_ACT), ("flip_flops", K.EV_FLIP), ("closed", K.EV_CLOSED),
                      ("stop_exits", K.EV_STOPS), ("llm_calls", K.EV_LLM), ("overflow_a", K.EV_OVER_A),
                      ("minutes", K.EV_MINUTES), ("cutoff_delta_before", K.EV_DELTA_B),
                      ("cutoff_delta_after", K.EV_DELTA_A), ("cooldown_s_before", K.EV_COOL_B),
                      ("cooldown_s_after", K.EV_COOL_A), ("direction_lock_s_before", K.EV_LOCK_B),
                      ("direction_lock_s_after", K.EV_LOCK_A), ("llm_min_score_before", K.EV_LLM_B),
                      ("llm_min_score_after", K.EV_LLM_A), ("reserve_fallback_before", K.EV_FB_B),
                      ("reserve_fallback_after", K.EV_FB_A)):
        out[name] = e[:, col]
    return out


def risk_summary(state: K.State, p: Params, pv: np.ndarray | None = None) -> dict[str, Any]:
    """current_risk_pct, max_risk_pct, risk_status, remaining_capacity, ... of SPEC §5 (`pv`: p's param_matrix row)."""
    pv = param_matrix([p])[0] if pv is None else pv
    equity = float(K.equity_nb(state))
    n_open, exposure, risk = K._book_nb(state, pv)
    current = risk / equity if equity > 0 else float("inf")
    day_loss = 1.0 - equity / state.f[K.F_DAY_START_EQ] if state.f[K.F_DAY_START_EQ] > 0 else 0.0
    blocked = (not np.isfinite(current) or current >= p.max_concurrent_risk or day_loss >= p.daily_loss_limit
               or n_open >= p.max_positions)
    warning = current >= 0.75 * p.max_concurrent_risk or day_loss >= 0.75 * p.daily_loss_limit
    kelly = float(kelly_fraction_nb(int(state.i[K.I_N_CLOSED]), int(state.i[K.I_N_WINS]),
                                    float(state.f[K.F_SUM_WIN]), float(state.f[K.F_SUM_LOSS])))
    return {
        "current_risk_pct": 100.0 * current,
        "max_risk_pct": 100.0 * p.max_concurrent_risk,
        "risk_status": "blocked" if blocked else ("warning" if warning else "safe"),
        "remaining_capacity": max(0.0, 100.0 * (p.max_concurrent_risk - current)),
        "daily_loss_limit": 100.0 * p.daily_loss_limit,
        "risk_per_trade": 100.0 * p.risk_per_trade,
        "max_positions": p.max_positions,
        "open_positions": n_open,
        "exposure_pct": 100.0 * exposure / equity if equity > 0 else 0.0,
        "stop_loss_pct": 100.0 * p.stop_loss_pct,
        "kelly_fraction": None if np.isnan(kelly) else kelly,
        "equity": equity,
    }


_STATE_MAGIC = b"TLSTATE1"


def state_to_bytes(state: K.State) -> bytes:
    """Serialize a state exactly (a JSON header of field names, dtypes and shapes, then the raw array
    bytes) so the live runner can save it after every bar; ~20x cheaper than npz."""
    return b"".join([_state_header(tuple((a.dtype.str, a.shape) for a in state)),
                     *(np.ascontiguousarray(a).tobytes() for a in state)])


@functools.lru_cache(maxsize=16)
def _state_header(layout: tuple[tuple[str, tuple[int, ...]], ...]) -> bytes:
    """Magic, length and JSON header of a state layout (dtypes and shapes): the same for every bar of a run."""
    head = json.dumps([[f, d, list(sh)] for f, (d, sh) in zip(K.State._fields, layout, strict=True)]).encode()
    return _STATE_MAGIC + len(head).to_bytes(4, "little") + head


def state_from_bytes(blob: bytes) -> K.State:
    """Inverse of `state_to_bytes` (states saved as npz by earlier versions load too)."""
    if blob[:2] == b"PK":
        with np.load(io.BytesIO(blob)) as z:
            arrays = {f: np.array(z[f]) for f in z.files}
    elif blob[:8] == _STATE_MAGIC:
        n = int.from_bytes(blob[8:12], "little")
        pos = 12 + n
        arrays = {}
        try:
            for name, dtype, shape in json.loads(blob[12:pos]):
                a = np.frombuffer(blob, dtype=np.dtype(dtype), count=int(np.prod(shape, dtype=np.int64)), offset=pos)
                arrays[name] = a.reshape(shape).copy()
                pos += a.nbytes
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError; so is a short buffer
            raise DataError(f"saved state: corrupt ({e}); start the session from a new state") from None
        if pos != len(blob):
            raise DataError(f"saved state: {len(blob) - pos} bytes past its last array; the blob is corrupt")
    else:
        raise DataError("saved state: not a tierlab state (unknown header); start the session from a new state")
    missing = [f for f in K.State._fields if f not in arrays]
    if missing:
        raise DataError(f"saved state lacks {', '.join(missing)}: it was saved by an older kernel; "
                        "start the session from a new state")
    return K.State(*(arrays[f] for f in K.State._fields))
