"""KPIs of a RunResult: the usual performance figures per parameter set, and SPEC §8's signal KPIs.

One definition each, used by the single-set backtest, the grid and the report:
- equity figures from RunResult.equity/cash (T, K): total return, CAGR (252 sessions a year),
  Sharpe (with its standard error, Lo 2002) and Sortino of daily returns (New York session days;
  vectorbt's formulas in numpy, 252 days a year, `risk_free` an annual rate, default 0), max
  drawdown of the per-bar equity (bar-level, marked at each bar close), Calmar = CAGR / |max
  drawdown|, exposure = mean share of equity held in positions, n_sessions (annualised figures on
  fewer than a year of sessions carry a warning: `short_sample_warning`);
- trade figures from round trips (a trade opens when a symbol's position leaves 0 and closes when
  it returns to 0): n_trades (closed), win rate, profit factor, stop-out rate (closing order reason
  `stop`), MAE/MFE (worst/best low/high from the entry bar to the exit, relative to the entry
  price), fees, turnover (traded notional / mean equity);
- signal KPIs from reason_counts, decisions and extras (SPEC §8), per New York hour and in total,
  each rate on one basis in both: flip-flop rate = flip-flops / actionable signals (SPEC §8);
  token overflow rate = evaluations that found no token (`token`) / wanted evaluations (every
  decision other than not_evaluated), so the hours add up to the total. The per-tier
  `token_overflow_rate_<tier>` are the kernel's token-level counts (tokens refused / wanted).

A non-finite figure is NaN with a reason (`nonfinite_reasons`), shown the same everywhere by
`fmt_value` ("n/a (no losing trades)").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numba import njit, prange

from data.calendar import ny_days
from strategies import codes
from strategies.base import RunResult

NY = "America/New_York"
SESSIONS_PER_YEAR = 252
STRONG_MARGIN = 0.2  # SPEC §3: strong signal at |score| >= cutoff + 0.2 (params.strong_margin wins)
FLIP_WINDOW_S = 600  # SPEC §8: direction changes within 10 minutes
TIERS = ("A", "B", "Reserve")

TRADE_COLUMNS = (
    "set", "col", "entry_bar", "exit_bar", "qty", "entry_price", "exit_price", "pnl", "ret",
    "exit_reason", "mae", "mfe", "is_open",
)


def session_days(index: pd.DatetimeIndex) -> np.ndarray:
    """Days since the epoch of each bar's New York session date (data.calendar.ny_days as integers)."""
    return ny_days(index).astype(np.int64)


def epoch_seconds(index: pd.DatetimeIndex) -> np.ndarray:
    """Epoch seconds of each bar start, whatever the index's resolution (pandas 3 may use us)."""
    return index.as_unit("s").asi8


def daily_rf(risk_free: float) -> float:
    """The daily risk-free return of an annual rate (compounded over 252 sessions)."""
    return (1.0 + float(risk_free)) ** (1.0 / SESSIONS_PER_YEAR) - 1.0


def ratio_figures(rets: np.ndarray, risk_free: float = 0.0) -> dict[str, np.ndarray]:
    """Sharpe, its standard error and Sortino per column of (D, K) daily returns.

    vectorbt's formulas (mean / std with ddof 1 x sqrt(252); Sortino: mean excess return / root
    mean square of the negative excess returns, annualised), in numpy so the CLI need not import
    vectorbt. Where vectorbt gives +-inf (no variation, no losing day) this gives NaN, and
    `nonfinite_reasons` says why. SE(Sharpe) = sqrt((1 + SR_d^2 / 2) / D) x sqrt(252) (Lo 2002, iid).
    """
    rets = np.asarray(rets, dtype=np.float64)
    if rets.ndim == 1:
        rets = rets[:, None]
    n = rets.shape[0]
    ann = np.sqrt(SESSIONS_PER_YEAR)
    nan = np.full(rets.shape[1], np.nan)
    if n < 2:
        return {"sharpe": nan, "sharpe_se": nan.copy(), "sortino": nan.copy()}
    ex = rets - daily_rf(risk_free)
    mean = ex.mean(axis=0)
    std = ex.std(axis=0, ddof=1)
    down = np.sqrt(np.mean(np.minimum(ex, 0.0) ** 2, axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        sr_d = np.where(std > 0, mean / std, np.nan)
        sortino = np.where(down > 0, mean / down * ann, np.nan)
    return {"sharpe": sr_d * ann, "sharpe_se": np.sqrt((1.0 + 0.5 * sr_d**2) / n) * ann, "sortino": sortino}


def equity_metrics(equity: np.ndarray, cash: np.ndarray, index: pd.DatetimeIndex, init_cash: float,
                   risk_free: float = 0.0) -> pd.DataFrame:
    """Return-based figures per set (rows) from (T, K) equity and cash at each bar close."""
    equity = np.asarray(equity, dtype=np.float64).reshape(len(index), -1)
    cash = np.asarray(cash, dtype=np.float64).reshape(len(index), -1)
    days = session_days(index)
    last_of_day = np.flatnonzero(np.r_[days[1:] != days[:-1], True])
    daily = np.vstack([np.full((1, equity.shape[1]), init_cash), equity[last_of_day]])
    ratios = ratio_figures(daily[1:] / daily[:-1] - 1.0, risk_free)
    final = equity[-1]
    n_sessions = len(last_of_day)
    years = n_sessions / SESSIONS_PER_YEAR
    total = final / init_cash - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        cagr = np.where(final > 0, (final / init_cash) ** (1.0 / years) - 1.0, -1.0)
        peak = np.maximum(np.maximum.accumulate(equity, axis=0), init_cash)
        max_dd = (equity / peak - 1.0).min(axis=0)
        calmar = np.where(max_dd < 0, cagr / np.abs(max_dd), np.nan)
        exposure = np.nanmean((equity - cash) / equity, axis=0)
    return pd.DataFrame(
        {
            "total_return": total,
            "cagr": cagr,
            "sharpe": ratios["sharpe"],
            "sharpe_se": ratios["sharpe_se"],
            "sortino": ratios["sortino"],
            "calmar": calmar,
            "max_drawdown": max_dd,
            "exposure": exposure,
            "final_equity": final,
            "n_sessions": np.full(equity.shape[1], n_sessions, dtype=np.int64),
        }
    )


@njit(cache=True)
def round_trips_nb(set_, col, bar, side, qty, price, fees, reason, last_close):
    """Round trips from orders sorted by (set, col, fill order).

    Returns a (n_trades, 13) float array in TRADE_COLUMNS order (mae/mfe left NaN for
    `excursions_nb`). An open trade at the end is marked at `last_close` of its column
    (is_open = 1, exit_bar = -1).
    """
    n = len(set_)
    out = np.full((n + 1, 13), np.nan)
    m = 0
    i = 0
    while i < n:
        s, c = set_[i], col[i]
        pos = 0.0
        cost = 0.0
        proceeds = 0.0
        fee = 0.0
        entry_bar = -1
        bought = 0.0
        while i < n and set_[i] == s and col[i] == c:
            if pos == 0.0:
                entry_bar = bar[i]
                cost = proceeds = fee = bought = 0.0
            pos += side[i] * qty[i]
            fee += fees[i]
            if side[i] > 0:
                cost += qty[i] * price[i]
                bought += qty[i]
            else:
                proceeds += qty[i] * price[i]
            closed = abs(pos) < 1e-9
            last_of_col = i + 1 >= n or set_[i + 1] != s or col[i + 1] != c
            if closed or last_of_col:
                if closed:
                    exit_px = proceeds / bought
                    pnl = proceeds - cost - fee
                else:
                    exit_px = last_close[c]
                    pnl = proceeds + pos * exit_px - cost - fee
                out[m, 0] = s
                out[m, 1] = c
                out[m, 2] = entry_bar
                out[m, 3] = bar[i] if closed else -1
                out[m, 4] = bought
                out[m, 5] = cost / bought if bought > 0 else np.nan
                out[m, 6] = exit_px
                out[m, 7] = pnl
                out[m, 8] = pnl / cost if cost > 0 else np.nan
                out[m, 9] = reason[i] if closed else 0
                out[m, 12] = 0.0 if closed else 1.0
                m += 1
                if closed:
                    pos = 0.0
            i += 1
    return out[:m]


@njit(cache=True, parallel=True)
def excursions_nb(trades, low, high):
    """Fill MAE/MFE of each trade in place: worst low / best high from the entry bar up to the
    exit (the exit price included; the exit bar's own range is not, a market exit fills at its
    open), relative to the entry price. Open trades run to the last bar."""
    T = low.shape[0]
    for m in prange(trades.shape[0]):
        c = int(trades[m, 1])
        entry_bar = int(trades[m, 2])
        closed = trades[m, 12] == 0.0
        stop = int(trades[m, 3]) if closed else T
        lo, hi = np.inf, -np.inf
        for t in range(entry_bar, stop):
            if not np.isnan(low[t, c]):
                lo = min(lo, low[t, c])
                hi = max(hi, high[t, c])
        if closed:
            lo = min(lo, trades[m, 6])
            hi = max(hi, trades[m, 6])
        entry_px = trades[m, 5]
        trades[m, 10] = lo / entry_px - 1.0 if lo < np.inf else 0.0
        trades[m, 11] = hi / entry_px - 1.0 if hi > -np.inf else 0.0


def round_trips(result: RunResult, low: np.ndarray, high: np.ndarray, close: np.ndarray) -> pd.DataFrame:
    """All round-trip trades of all sets as a DataFrame (TRADE_COLUMNS)."""
    o = result.orders
    key = o["set"].astype(np.int64) * (len(result.symbols) + 1) + o["col"]
    o = o[np.argsort(key, kind="stable")]  # orders are in fill order within a set: keep it
    valid = ~np.isnan(close)
    last_row = len(close) - 1 - np.argmax(valid[::-1], axis=0)
    last_close = np.where(valid.any(axis=0), close[last_row, np.arange(close.shape[1])], 0.0)
    arr = round_trips_nb(
        o["set"].astype(np.int64), o["col"].astype(np.int64), o["bar"], o["side"].astype(np.float64),
        o["qty"], o["price"], o["fees"], o["reason"].astype(np.int64), last_close,
    )
    excursions_nb(arr, low, high)
    df = pd.DataFrame({name: arr[:, i] for i, name in enumerate(TRADE_COLUMNS)})
    for name in ("set", "col", "entry_bar", "exit_bar", "exit_reason"):
        df[name] = df[name].astype(np.int64)
    df["is_open"] = df["is_open"].astype(bool)
    return df


def trade_metrics(trades: pd.DataFrame, result: RunResult) -> pd.DataFrame:
    """Trade figures per set (rows 0..K-1) from round trips and orders."""
    K = result.n_sets
    closed = trades[~trades["is_open"]]
    s = closed["set"].to_numpy()
    pnl = closed["pnl"].to_numpy()
    n = np.bincount(s, minlength=K)
    wins = np.bincount(s, weights=np.where(pnl > 0, pnl, 0.0), minlength=K)
    losses = np.bincount(s, weights=np.where(pnl < 0, -pnl, 0.0), minlength=K)
    n_win = np.bincount(s, weights=(pnl > 0).astype(float), minlength=K)
    n_stop = np.bincount(s, weights=(closed["exit_reason"].to_numpy() == codes.ORDER_STOP).astype(float), minlength=K)
    med = closed.groupby("set")[["mae", "mfe"]].median().reindex(pd.RangeIndex(K))
    o = result.orders
    notional = np.bincount(o["set"], weights=o["qty"] * o["price"], minlength=K)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({
            "n_trades": n.astype(np.int64),
            "win_rate": np.where(n > 0, n_win / n, np.nan),
            "profit_factor": np.where(n > 0, wins / losses, np.nan),
            "stop_out_rate": np.where(n > 0, n_stop / n, np.nan),
            "mae_median": med["mae"].to_numpy(),
            "mfe_median": med["mfe"].to_numpy(),
            "fees": np.bincount(o["set"], weights=o["fees"], minlength=K),
            "turnover": notional / np.maximum(result.equity.mean(axis=0), 1e-9),
            "n_orders": np.bincount(o["set"], minlength=K).astype(np.int64),
        })


def metrics(result: RunResult, low: np.ndarray, high: np.ndarray, close: np.ndarray, *, chunk: int = 32,
            trades: pd.DataFrame | None = None, risk_free: float = 0.0) -> pd.DataFrame:
    """Every per-set figure in one tidy table (one row per set), equity figures in column chunks."""
    parts = [
        equity_metrics(result.equity[:, a : a + chunk], result.cash[:, a : a + chunk], result.index, result.init_cash,
                       risk_free)
        for a in range(0, result.n_sets, chunk)
    ]
    eq = pd.concat(parts, ignore_index=True)
    trades = round_trips(result, low, high, close) if trades is None else trades
    return pd.concat([eq, trade_metrics(trades, result)], axis=1)


# --- SPEC §8 signal KPIs ----------------------------------------------------------------------

_DIRECTION = np.zeros(codes.N_DECISIONS, dtype=np.int8)
_DIRECTION[codes.ACTIONABLE] = 1
_DIRECTION[codes.EXIT_SIGNAL] = -1
_DIRECTION[codes.EVIDENCE] = -1


@njit(cache=True)
def flip_flops_nb(direction: np.ndarray, seconds: np.ndarray, window_s: int) -> np.ndarray:
    """(T, N) bool: a signal whose direction reverses the ticker's previous signal within `window_s`."""
    T, N = direction.shape
    out = np.zeros((T, N), dtype=np.bool_)
    for j in range(N):
        last_dir = 0
        last_t = 0
        for t in range(T):
            d = direction[t, j]
            if d == 0:
                continue
            if last_dir != 0 and d != last_dir and seconds[t] - last_t <= window_s:
                out[t, j] = True
            last_dir = d
            last_t = seconds[t]
    return out


def _flip_window(result: RunResult, set_: int) -> int:
    """The set's own flip window (`flip_window_s`, which the 1 h rollback trigger counts with), else 10 min."""
    params = result.params[set_] if len(result.params) > set_ else None
    return int(getattr(params, "flip_window_s", FLIP_WINDOW_S))


def _cutoff(params: Any) -> float | None:
    cutoff = getattr(params, "cutoff", None)
    if cutoff is None:
        return None
    return float(cutoff) + float(getattr(params, "cutoff_delta", 0.0) or 0.0)


def _strong(result: RunResult, set_: int, evaluated: np.ndarray) -> np.ndarray | None:
    params = result.params[set_] if len(result.params) > set_ else None
    cutoff = _cutoff(params)
    if result.scores is None or cutoff is None:
        return None
    margin = float(getattr(params, "strong_margin", STRONG_MARGIN))
    return evaluated & (np.abs(np.nan_to_num(result.scores)) >= cutoff + margin)


def signal_kpis(result: RunResult, trades: pd.DataFrame, set_: int = 0) -> dict[str, float]:
    """SPEC §8 KPIs of one set in total: generated vs suppressed by reason, strong-signal rate,
    flip-flops, direction-lock hits, token overflow rate (total and per tier), LLM calls, stop-out
    rate, MAE/MFE medians. Figures that need per-bar decisions are NaN when none were recorded."""
    counts = result.reason_counts[set_]
    out: dict[str, float] = {}
    generated = int(counts.sum() - counts[codes.NOT_EVALUATED])
    out["signals_generated"] = generated
    for c in codes.SUPPRESSION_CODES:
        out[f"suppressed_{codes.DECISION_NAMES[c]}"] = int(counts[c])
    out["suppressed_total"] = int(sum(counts[c] for c in codes.SUPPRESSION_CODES))
    for c in (codes.ACTIONABLE, codes.EXIT_SIGNAL, codes.EVIDENCE):
        out[codes.DECISION_NAMES[c]] = int(counts[c])
    out["direction_lock_hits"] = int(counts[codes.DIRECTION_LOCK])
    ex = result.extras
    evaluated_n = int(ex["evaluated"][set_]) if "evaluated" in ex else generated - int(counts[codes.TOKEN])
    if "strong_signals" in ex:
        out["strong_signal_rate"] = float(ex["strong_signals"][set_]) / evaluated_n if evaluated_n else np.nan
    elif result.decisions is not None and (strong := _strong(result, set_, _evaluated(result.decisions[set_]))) is not None:
        out["strong_signal_rate"] = float(strong.sum()) / evaluated_n if evaluated_n else np.nan
    else:
        out["strong_signal_rate"] = np.nan
    # one basis for the total and the hours: evaluations that found no token / wanted evaluations
    out["token_overflow_rate"] = counts[codes.TOKEN] / generated if generated else np.nan
    if "token_wants" in ex and "token_overflows" in ex:  # token-level, per tier (the kernel's counters)
        wants, over = np.asarray(ex["token_wants"][set_], float), np.asarray(ex["token_overflows"][set_], float)
        for i, tier in enumerate(TIERS[: len(wants)]):
            out[f"token_overflow_rate_{tier}"] = over[i] / wants[i] if wants[i] else np.nan
    out["llm_calls"] = float(np.asarray(ex["llm_calls"])[set_]) if "llm_calls" in ex else 0.0
    if result.decisions is not None:
        d = result.decisions[set_]
        flips = flip_flops_nb(_DIRECTION[d], epoch_seconds(result.index), _flip_window(result, set_))
        out["flip_flops"] = int(flips.sum())
        n_act = int(counts[codes.ACTIONABLE])  # SPEC §8: flip-flop rate = flip-flops / actionable signals
        out["flip_flop_rate"] = flips.sum() / n_act if n_act else np.nan
    else:
        out["flip_flops"] = out["flip_flop_rate"] = np.nan
    closed = trades[(trades["set"] == set_) & ~trades["is_open"]]
    out["stop_out_rate"] = float((closed["exit_reason"] == codes.ORDER_STOP).mean()) if len(closed) else np.nan
    out["mae_median"] = float(closed["mae"].median()) if len(closed) else np.nan
    out["mfe_median"] = float(closed["mfe"].median()) if len(closed) else np.nan
    return out


def _evaluated(d: np.ndarray) -> np.ndarray:
    return (d != codes.NOT_EVALUATED) & (d != codes.TOKEN)


def hourly_kpis(result: RunResult, trades: pd.DataFrame, set_: int = 0) -> pd.DataFrame:
    """SPEC §8 KPIs per New York hour (rows 9..15): needs recorded decisions for signal columns."""
    hours = result.index.tz_convert(NY).hour.to_numpy()
    out = pd.DataFrame(index=pd.Index(sorted(set(hours.tolist())), name="ny_hour"))
    if result.decisions is not None:
        d = result.decisions[set_]
        per_code = np.zeros((len(out), codes.N_DECISIONS), dtype=np.int64)
        pos = out.index.get_indexer(hours)
        for c in range(1, codes.N_DECISIONS):
            per_code[:, c] = np.bincount(pos, weights=(d == c).sum(axis=1), minlength=len(out))
        out["signals_generated"] = per_code.sum(axis=1)
        for c in codes.SUPPRESSION_CODES:
            out[f"suppressed_{codes.DECISION_NAMES[c]}"] = per_code[:, c]
        out["actionable"] = per_code[:, codes.ACTIONABLE]
        out["direction_lock_hits"] = per_code[:, codes.DIRECTION_LOCK]
        wanted = out["signals_generated"].to_numpy()  # the total's basis: token / wanted evaluations
        out["token_overflows"] = per_code[:, codes.TOKEN]
        with np.errstate(divide="ignore", invalid="ignore"):
            out["token_overflow_rate"] = np.where(wanted > 0, per_code[:, codes.TOKEN] / np.maximum(wanted, 1), np.nan)
        strong = _strong(result, set_, _evaluated(d))
        out["strong_signals"] = (
            np.bincount(pos, weights=strong.sum(axis=1), minlength=len(out)) if strong is not None else np.nan
        )
        direction = _DIRECTION[d]
        flips = flip_flops_nb(direction, epoch_seconds(result.index), _flip_window(result, set_))
        n_act = per_code[:, codes.ACTIONABLE]
        n_flip = np.bincount(pos, weights=flips.sum(axis=1), minlength=len(out)).astype(np.int64)
        out["flip_flops"] = n_flip
        with np.errstate(divide="ignore", invalid="ignore"):  # SPEC §8: flip-flops / actionable signals
            out["flip_flop_rate"] = np.where(n_act > 0, n_flip / np.maximum(n_act, 1), np.nan)
    if "llm_calls_bar" in result.extras:  # per-bar LLM calls (research.llm.run_policy): summed per hour
        per_bar = np.asarray(result.extras["llm_calls_bar"])[set_]
        out["llm_calls"] = np.bincount(out.index.get_indexer(hours), weights=per_bar, minlength=len(out)).astype(np.int64)
    else:
        out["llm_calls"] = 0.0 if "llm_calls" not in result.extras else np.nan
    closed = trades[(trades["set"] == set_) & ~trades["is_open"]].copy()
    closed["ny_hour"] = hours[closed["exit_bar"].to_numpy()] if len(closed) else []
    g = closed.groupby("ny_hour")
    out["exits"] = g.size().reindex(out.index, fill_value=0)
    out["stop_out_rate"] = g["exit_reason"].apply(lambda x: (x == codes.ORDER_STOP).mean()).reindex(out.index)
    out["mae_median"] = g["mae"].median().reindex(out.index)
    out["mfe_median"] = g["mfe"].median().reindex(out.index)
    return out


# --- one way to show a figure ------------------------------------------------------------------

PERCENT = frozenset({
    "total_return", "cagr", "max_drawdown", "win_rate", "exposure", "strong_signal_rate", "flip_flop_rate",
    "token_overflow_rate", "token_overflow_rate_A", "token_overflow_rate_B", "token_overflow_rate_Reserve",
    "stop_out_rate", "mae_median", "mfe_median", "share", "return", "mae", "mfe", "risk_free",
})
MONEY = frozenset({"fees", "slippage_cost", "final_equity", "pnl", "net_pnl", "gross_pnl", "init_cash"})
RATIO = frozenset({"sharpe", "sharpe_se", "sortino", "calmar", "profit_factor", "turnover"})
ANNUALISED = ("cagr", "sharpe", "sortino", "calmar")


def nonfinite_reasons(metrics: dict[str, Any], signals: dict[str, Any] | None = None) -> dict[str, str]:
    """Why each non-finite figure is not a number, in words a user can act on."""
    m = {**metrics, **(signals or {})}
    n_trades = m.get("n_trades", 0) or 0
    closed = "no closed trades" if not n_trades else None
    reasons = {
        "win_rate": closed, "stop_out_rate": closed, "mae_median": closed, "mfe_median": closed,
        "profit_factor": closed or "no losing trades",
        "sharpe": "fewer than 2 sessions" if m.get("n_sessions", 2) < 2 else "no variation in daily returns",
        "sortino": "fewer than 2 sessions" if m.get("n_sessions", 2) < 2 else "no losing session",
        "calmar": "no drawdown",
        "flip_flop_rate": "no actionable signals",
        "token_overflow_rate": "no evaluation wanted",
        "strong_signal_rate": "nothing evaluated, or no scores recorded",
    }
    reasons["sharpe_se"] = reasons["sharpe"]
    out = {}
    for k, v in m.items():
        if isinstance(v, (float, np.floating)) and not np.isfinite(v):
            out[k] = reasons.get(k) or (f"{k.removeprefix('token_overflow_rate_')} wanted no token"
                                        if k.startswith("token_overflow_rate_") else "not computed")
    return out


def fmt_value(key: str, v: Any, reason: str | None = None) -> str:
    """A figure with its unit: percent as percent, money as money, counts as integers, ratios as x.xx.

    Non-finite values read `n/a (<reason>)` wherever they are shown (CLI summary, report, tables).
    """
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        inf = "inf, " if isinstance(v, (float, np.floating)) and np.isinf(v) else ""
        return f"n/a ({inf}{reason})" if reason else ("n/a (inf)" if inf else "n/a")
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if not isinstance(v, (float, np.floating)):
        return str(v)
    if key in PERCENT or key.startswith(("token_overflow_rate", "suppressed_share")):
        return f"{v:.2%}"
    if key in MONEY:
        return f"${v:,.2f}" if v >= 0 else f"-${-v:,.2f}"
    if key in RATIO:
        return f"{v:,.2f}"
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.4g}"


def short_sample_warning(n_sessions: int) -> str | None:
    """The warning annualised figures carry on fewer than a year of sessions (None from a year on)."""
    if n_sessions >= SESSIONS_PER_YEAR:
        return None
    return (f"annualised from {n_sessions} session{'s' if n_sessions != 1 else ''} "
            f"(< {SESSIONS_PER_YEAR}): CAGR, Sharpe, Sortino and Calmar extrapolate a short sample")


def buy_and_hold(close: np.ndarray, init_cash: float = 1.0) -> np.ndarray:
    """Equal-weight buy-and-hold value of (T, N) closes: cash split at each symbol's first close, held.

    A symbol without a bar is marked at its last close (the first one before it trades).
    """
    c = pd.DataFrame(np.asarray(close, dtype=np.float64)).ffill().bfill().to_numpy()
    if c.size == 0:
        return np.full(len(close), float(init_cash))
    return init_cash * np.nanmean(c / c[0], axis=1)


def slippage_cost(result: RunResult, open_: np.ndarray, set_: int = 0) -> float:
    """Modelled slippage of one set's market fills: sum of qty x |fill price - that bar's open|.

    Stops and take-profits fill at their level (or the open on a gap), unslipped; market orders
    fill at open x (1 +- slippage), so this is exactly the cost the fill model charged.
    """
    o = result.orders[result.orders["set"] == set_]
    if not len(o):
        return 0.0
    resting = np.isin(o["reason"], (codes.ORDER_STOP, codes.ORDER_TAKE_PROFIT))
    ref = open_[o["bar"], o["col"]]
    cost = o["qty"] * np.abs(o["price"] - ref)
    return float(np.nansum(np.where(resting, 0.0, cost)))
