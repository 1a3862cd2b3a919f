"""The backtest HTML report: what a quant reads first, then the detail, all offline.

Sections, in order: the headline (every figure with its unit, next to buy-and-hold of the traded
stocks, equal weight, and of QQQ), equity and drawdown with both benchmarks, the trade list
(sortable), tables per symbol and per exit reason, SPEC §8 signal KPIs (total and per New York
hour, one basis for both), the suppression breakdown, trades on price with a symbol selector,
suppression reasons per day, basket routing, provenance (data origin, mode, range, symbols,
command line, tierlab version), every parameter, and a glossary of the reason codes.

Figures are plain plotly JSON drawn by plotly.js, which is written once per reports folder
(`plotly-<version>.min.js` beside the run folders) and loaded from there, so a report stays small
and opens offline. Lines are decimated (min/max per bucket: the eye sees the same envelope);
trade markers are exact. Time axes skip nights, weekends, holidays and half-day afternoons.
No plotly/vectorbt import here: the report costs no start-up time.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.util
import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from research import kpis
from strategies import codes

NY = "America/New_York"
MAX_LINE_POINTS = 2000  # per line: min/max decimation above this
_COLORS = {
    "entry": "#2ca02c", "signal": "#1f77b4", "exit_signal": "#d62728", "stop": "#9467bd",
    "take_profit": "#17becf", "flatten": "#7f7f7f", "max_hold": "#8c564b", "basket_entry": "#ff7f0e",
    "basket_exit": "#bcbd22",
}
_MARKERS = {"entry": "triangle-up", "basket_entry": "star-triangle-up", "basket_exit": "star-triangle-down"}


# --- plotly.js, once per folder ------------------------------------------------------------------


def plotly_js_path() -> Path:
    """The plotly.min.js bundled with the plotly package (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("plotly is not installed: the report needs its plotly.min.js")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


def ensure_plotly_js(folder: Path) -> str:
    """Copy plotly.min.js into `folder` once (named by its version); returns the file name."""
    src = plotly_js_path()
    head = src.read_bytes()[:200].decode("ascii", "replace")
    version = head.split("plotly.js v", 1)[1].split()[0] if "plotly.js v" in head else "bundled"
    name = f"plotly-{version}.min.js"
    dst = folder / name
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return name


# --- helpers ---------------------------------------------------------------------------------------


def _ny(index: Any) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(index).tz_convert(NY).tz_localize(None)


def _times(index: Any) -> list[str]:
    """New York wall-clock minutes as plotly date strings (vectorised: a year of bars in milliseconds)."""
    return np.datetime_as_string(_ny(index).to_numpy().astype("datetime64[m]"), unit="m").tolist()


def decimate(y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> np.ndarray:
    """Row positions to keep for a line of `y`: first, last and each bucket's min and max."""
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    yy = np.where(np.isnan(y), np.nanmean(y) if np.isfinite(y).any() else 0.0, y)
    keep = [0, n - 1]
    for a, b in itertools.pairwise(edges):
        if b > a:
            seg = yy[a:b]
            keep += [a + int(np.argmin(seg)), a + int(np.argmax(seg))]
    return np.unique(keep)


def _r(a: Any, nd: int = 4) -> list[Any]:
    out = np.round(np.asarray(a, dtype=np.float64), nd)
    return [None if not np.isfinite(v) else float(v) for v in out]


def rangebreaks(index: pd.DatetimeIndex) -> list[dict[str, Any]]:
    """plotly rangebreaks that hide nights, weekends, holidays and half-day afternoons (NY clock)."""
    t = _ny(index)
    if len(t) == 0:
        return []
    breaks: list[dict[str, Any]] = [{"bounds": ["sat", "mon"]}, {"bounds": [16, 9.5], "pattern": "hour"}]
    days = pd.DatetimeIndex(t.normalize().unique())
    weekdays = pd.bdate_range(days[0], days[-1])
    # holidays and half-day afternoons as session-hours gaps only: a break overlapping the nightly
    # one (e.g. a whole holiday from 00:00) makes plotly draw lines out of order
    for d in weekdays.difference(days):
        breaks.append({"values": [f"{d:%Y-%m-%d} 09:30"], "dvalue": int(6.5 * 3600 * 1000)})
    last = pd.Series(t, index=t).groupby(t.normalize()).max()
    for day, end in last.items():
        close = day + pd.Timedelta(hours=16)
        stop = end + pd.Timedelta(minutes=1)
        if stop < close:
            breaks.append({"values": [stop.strftime("%Y-%m-%d %H:%M")],
                           "dvalue": int((close - stop).total_seconds() * 1000)})
    return breaks


def _figure(div_id: str, data: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    layout = {"margin": {"t": 50, "b": 40, "l": 60, "r": 20}, "hovermode": "closest", **layout}
    blob = json.dumps({"data": data, "layout": layout}, separators=(",", ":"), allow_nan=False)
    return (f'<div id="{div_id}" class="fig"></div>\n<script>(function(){{var f={blob};'
            f'Plotly.newPlot("{div_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>')


# --- headline and benchmarks ---------------------------------------------------------------------


def benchmark_curves(bt: Any, qqq_close: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Buy-and-hold value curves starting at the run's cash: the traded stocks equal weight, and QQQ."""
    p = bt.params
    syms = list(bt.panel.symbols)
    stocks = [s for s in syms if s in set(getattr(p, "stocks", ()) or ())] or [
        s for s in syms if s not in set(getattr(p, "other_etfs", ()) or ())]
    cash = float(bt.result.init_cash)
    out: dict[str, np.ndarray] = {}
    if stocks:
        cols = [bt.panel.col(s) for s in stocks]
        out[f"Buy & hold, {len(stocks)} stocks equal weight"] = kpis.buy_and_hold(bt.panel.close[:, cols], cash)
    if "QQQ" in syms:
        qqq_close = bt.panel.close[:, bt.panel.col("QQQ")]
    if qqq_close is not None and len(qqq_close) == len(bt.panel.index) and np.isfinite(qqq_close).any():
        out["Buy & hold QQQ"] = kpis.buy_and_hold(np.asarray(qqq_close)[:, None], cash)
    return out


HEADLINE = (
    ("total_return", "Total return"), ("cagr", "CAGR"), ("sharpe", "Sharpe (daily, annualised)"),
    ("sharpe_se", "Sharpe standard error"), ("sortino", "Sortino"), ("max_drawdown", "Max drawdown (bar-level)"),
    ("win_rate", "Win rate"), ("profit_factor", "Profit factor"), ("n_trades", "Trades (closed)"),
    ("exposure", "Exposure (mean share invested)"), ("fees", "Fees"), ("slippage_cost", "Slippage cost (modelled)"),
    ("net_pnl", "Net P&L"), ("final_equity", "Final equity"),
)


def headline_table(bt: Any, curves: Mapping[str, np.ndarray]) -> str:
    """Strategy figures with units beside each benchmark's (trade figures do not apply to those)."""
    m = dict(bt.metrics)
    m["net_pnl"] = float(m.get("final_equity", np.nan)) - float(bt.result.init_cash)
    reasons = kpis.nonfinite_reasons(m, bt.signals)
    cols = {"Strategy": (m, reasons)}
    for name, curve in curves.items():
        e = kpis.equity_metrics(curve[:, None], np.zeros((len(curve), 1)), bt.result.index, float(bt.result.init_cash),
                                bt.risk_free).iloc[0].to_dict()
        e["net_pnl"] = e["final_equity"] - float(bt.result.init_cash)
        cols[name] = (e, kpis.nonfinite_reasons(e))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for key, label in HEADLINE:
        cells = []
        for name, (vals, why) in cols.items():
            if key not in vals or (name != "Strategy" and key in ("win_rate", "profit_factor", "n_trades", "fees",
                                                                   "slippage_cost")):
                cells.append('<td class="na">—</td>')
            else:
                cells.append(f"<td>{html.escape(kpis.fmt_value(key, vals[key], why.get(key)))}</td>")
        rows.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    n = int(m.get("n_sessions", 0))
    warn = kpis.short_sample_warning(n)
    notes = [f"{n} sessions; risk-free rate {bt.risk_free:.2%} a year; Sharpe ± its standard error "
             f"(Lo 2002); max drawdown is bar-level (equity marked at every bar close)."]
    if warn:
        notes.append(f'<span class="warn">Warning: {html.escape(warn)}.</span>')
    return (f'<h2 id="headline-title">Headline</h2>\n<table class="kpi headline" id="headline"><thead><tr><th></th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n<p class='note'>{' '.join(notes)}</p>")


# --- trade tables --------------------------------------------------------------------------------


def _hold(td: pd.Timedelta | None) -> str:
    if td is None or pd.isna(td):
        return "open"
    mins = int(td.total_seconds() // 60)
    d, rem = divmod(mins, 24 * 60)
    h, mi = divmod(rem, 60)
    return f"{d}d {h}h {mi:02d}m" if d else (f"{h}h {mi:02d}m" if h else f"{mi}m")


def trade_list(bt: Any) -> pd.DataFrame:
    """One row per round trip, newest last: times in New York, prices, P&L, return, reason, MAE/MFE, hold."""
    t = bt.trades
    if t.empty:
        return pd.DataFrame()
    hold = [None if o else x - e for e, x, o in zip(t["entry_time"], t["exit_time"], t["is_open"], strict=True)]
    return pd.DataFrame({
        "entry_time": _ny(t["entry_time"]),
        "exit_time": [pd.NaT if o else x for x, o in zip(_ny(t["exit_time"].fillna(t["entry_time"])), t["is_open"],
                                                         strict=True)],
        "symbol": t["symbol"].to_numpy(),
        "qty": t["qty"].astype(np.int64).to_numpy(),
        "entry_price": t["entry_price"].to_numpy(),
        "exit_price": t["exit_price"].to_numpy(),
        "pnl": t["pnl"].to_numpy(),
        "return": t["ret"].to_numpy(),
        "exit_reason": t["exit_reason"].to_numpy(),
        "mae": t["mae"].to_numpy(),
        "mfe": t["mfe"].to_numpy(),
        "hold": hold,
    }).sort_values(["entry_time", "symbol"], kind="stable").reset_index(drop=True)


def group_table(trades: pd.DataFrame, by: str) -> pd.DataFrame:
    """freqtrade-style summary per `by` (symbol or exit_reason): trades, wins, P&L, returns, hold, MAE/MFE."""
    closed = trades[trades["exit_reason"] != "open"] if len(trades) else trades
    if closed.empty:
        return pd.DataFrame()
    g = closed.groupby(by)
    hold_min = closed["hold"].map(lambda x: x.total_seconds() / 60 if x is not None else np.nan)
    out = pd.DataFrame({
        "trades": g.size(),
        "win_rate": g["pnl"].apply(lambda x: (x > 0).mean()),
        "pnl": g["pnl"].sum(),
        "avg_return": g["return"].mean(),
        "best": g["return"].max(),
        "worst": g["return"].min(),
        "avg_hold_min": hold_min.groupby(closed[by]).mean(),
        "mae_median": g["mae"].median(),
        "mfe_median": g["mfe"].median(),
    })
    return out.sort_values("pnl", ascending=False)


_FMT_KEYS = {"avg_return": "return", "best": "return", "worst": "return", "entry_price": "price",
             "exit_price": "price", "share": "share"}


def _cell(col: str, v: Any, reasons: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(display text, sort key) of one table cell."""
    if isinstance(v, pd.Timestamp):
        return (v.strftime("%Y-%m-%d %H:%M"), v.isoformat()) if not pd.isna(v) else ("open", "9999")
    if v is pd.NaT:
        return "open", "9999"
    if isinstance(v, pd.Timedelta) or (col == "hold"):
        secs = v.total_seconds() if isinstance(v, pd.Timedelta) else float("inf")
        return _hold(v if isinstance(v, pd.Timedelta) else None), f"{secs}"
    key = _FMT_KEYS.get(col, col)
    if key == "price" and isinstance(v, (float, np.floating)) and np.isfinite(v):
        return f"{v:,.2f}", f"{v}"
    if col == "avg_hold_min" and isinstance(v, (float, np.floating)) and np.isfinite(v):
        return _hold(pd.Timedelta(minutes=float(v))), f"{v}"
    text = kpis.fmt_value(key, v, (reasons or {}).get(col))
    sort = f"{float(v)}" if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) else text
    return text, sort


def html_table(df: pd.DataFrame, table_id: str, *, index: bool = True, sortable: bool = False,
               reasons: Mapping[str, str] | None = None, index_name: str | None = None) -> str:
    """A formatted HTML table (units per column; `sortable` adds click-to-sort headers)."""
    cls = "kpi sortable" if sortable else "kpi"
    cols = list(df.columns)
    head = ([f"<th>{html.escape(index_name or str(df.index.name or ''))}</th>"] if index else []) + [
        f"<th>{html.escape(str(c))}</th>" for c in cols]
    body = []
    for idx, row in zip(df.index, df.itertuples(index=False), strict=True):
        cells = [f"<th>{html.escape(str(idx))}</th>"] if index else []
        for c, v in zip(cols, row, strict=True):
            text, key = _cell(str(c), v, reasons)
            cells.append(f'<td data-v="{html.escape(key)}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="{cls}" id="{table_id}"><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def kv_table(rows: Mapping[str, Any], table_id: str, reasons: Mapping[str, str] | None = None) -> str:
    """A two-column name/value table with units and n/a reasons."""
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(kpis.fmt_value(str(k), v, (reasons or {}).get(str(k))))}"
        f"</td></tr>" for k, v in rows.items())
    return f'<table class="kpi" id="{table_id}"><tbody>{body}</tbody></table>'


# --- figures -------------------------------------------------------------------------------------


def equity_figure(bt: Any, curves: Mapping[str, np.ndarray]) -> str:
    """Equity (the rules' mark-to-market, equal to the vectorbt replay to the cent) with both
    benchmarks, and the bar-level drawdown, on a session-only time axis."""
    value = np.asarray(bt.result.equity[:, 0], dtype=np.float64)
    dd = value / np.maximum(np.maximum.accumulate(value), bt.result.init_cash) - 1.0
    x = np.asarray(_times(bt.result.index), dtype=object)
    keep = decimate(value)
    keep_dd = np.union1d(keep, decimate(dd))
    data = [{"type": "scatter", "x": x[keep].tolist(), "y": _r(value[keep], 2), "name": "strategy",
             "line": {"width": 1.4, "color": "#1f77b4"}}]
    for (name, curve), color in zip(curves.items(), ("#2ca02c", "#7f7f7f"), strict=False):
        k = decimate(curve)
        data.append({"type": "scatter", "x": x[k].tolist(), "y": _r(curve[k], 2), "name": name,
                     "line": {"width": 1.0, "color": color, "dash": "dot"}})
    data.append({"type": "scatter", "x": x[keep_dd].tolist(), "y": _r(dd[keep_dd], 5), "name": "drawdown",
                 "xaxis": "x2", "yaxis": "y2", "fill": "tozeroy", "line": {"width": 0.8, "color": "#d62728"},
                 "showlegend": False})
    rb = rangebreaks(bt.result.index)
    layout = {
        "height": 560, "legend": {"orientation": "h", "y": 1.08},
        "xaxis": {"rangebreaks": rb, "matches": "x2", "showticklabels": False},
        "xaxis2": {"rangebreaks": rb, "anchor": "y2"},
        "yaxis": {"domain": [0.34, 1.0], "title": {"text": "value ($)"}, "tickprefix": "$"},
        "yaxis2": {"domain": [0.0, 0.26], "tickformat": ".1%", "title": {"text": "drawdown"}},
        "annotations": [
            {"text": "Equity", "xref": "paper", "yref": "paper", "x": 0, "y": 1.0, "showarrow": False,
             "xanchor": "left", "yanchor": "bottom", "font": {"size": 14}},
            {"text": "Drawdown", "xref": "paper", "yref": "paper", "x": 0, "y": 0.27, "showarrow": False,
             "xanchor": "left", "yanchor": "bottom", "font": {"size": 14}},
        ],
    }
    return _figure("fig0", data, layout)


def trades_figure(bt: Any) -> str | None:
    """Price with fills for one symbol at a time (a selector switches symbol); entries, exits and
    basket orders each with their own marker and colour."""
    orders = bt.orders
    if orders.empty:
        return None
    syms = [s for s in bt.panel.symbols if s in set(orders["symbol"])]
    x_all = np.asarray(_times(bt.panel.index), dtype=object)
    data: list[dict[str, Any]] = []
    owner: list[int] = []
    for i, s in enumerate(syms):
        close = bt.panel.close[:, bt.panel.col(s)]
        ok = np.flatnonzero(np.isfinite(close))
        k = ok[decimate(close[ok])]
        data.append({"type": "scatter", "x": x_all[k].tolist(), "y": _r(close[k], 3), "name": f"{s} close",
                     "line": {"width": 0.9, "color": "#444"}, "visible": i == 0, "showlegend": False})
        owner.append(i)
        o = orders[orders["symbol"] == s]
        for (reason, side), g in o.groupby(["reason", "side"]):
            sym = _MARKERS.get(reason, "triangle-up" if side == "buy" else "triangle-down")
            data.append({
                "type": "scatter", "mode": "markers", "x": _times(g["time"]), "y": _r(g["price"], 3),
                "name": f"{side} {reason}", "visible": i == 0,
                "marker": {"symbol": sym, "size": 10 if reason.startswith("basket") else 8,
                           "color": _COLORS.get(reason, "#000"), "line": {"width": 1, "color": "#222"}},
                "text": [f"{s} {side} {q:g} @ {p:.2f} ({reason})" for q, p in zip(g["qty"], g["price"], strict=True)],
                "hoverinfo": "text+x",
            })
            owner.append(i)
    buttons = [{"label": s, "method": "update",
                "args": [{"visible": [o == i for o in owner]}, {"title": {"text": f"Trades on price — {s}"}}]}
               for i, s in enumerate(syms)]
    layout = {
        "height": 460, "title": {"text": f"Trades on price — {syms[0]}"},
        "xaxis": {"rangebreaks": rangebreaks(bt.panel.index)}, "yaxis": {"tickprefix": "$"},
        "updatemenus": [{"type": "dropdown", "buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15,
                         "yanchor": "top", "showactive": True}],
        "legend": {"orientation": "h", "y": -0.15},
    }
    return _figure("fig1", data, layout)


def suppression_figure(bt: Any) -> str | None:
    """Decisions per New York session day, stacked by suppression reason (plus actionable)."""
    d = bt.decisions
    if d.empty:
        return None
    names = [codes.DECISION_NAMES[c] for c in codes.SUPPRESSION_CODES] + ["actionable", "exit_signal"]
    d = d[d["reason"].isin(names)]
    if d.empty:
        return None
    day = _ny(d["time"]).normalize()
    table = pd.crosstab(day, d["reason"].to_numpy())
    x = [t.strftime("%Y-%m-%d") for t in table.index]
    data = [{"type": "bar", "x": x, "y": table[c].astype(int).tolist(), "name": c} for c in table.columns]
    return _figure("fig2", data, {"barmode": "stack", "height": 380, "title": {"text": "Signals by reason per session day"},
                                  "xaxis": {"type": "category"}})


def basket_figure(bt: Any) -> str | None:
    """Basket routing events: inverse-ETF entries and exits over time."""
    o = bt.orders[bt.orders["reason"].isin(["basket_entry", "basket_exit"])]
    if o.empty:
        return None
    data = [{"type": "scatter", "mode": "markers", "x": _times(g["time"]), "y": g["symbol"].tolist(), "name": reason,
             "marker": {"size": 11, "color": _COLORS[reason], "symbol": _MARKERS[reason]}}
            for reason, g in o.groupby("reason")]
    return _figure("fig3", data, {"height": 300, "title": {"text": "Basket routing events"},
                                  "xaxis": {"rangebreaks": rangebreaks(bt.panel.index)}})


# --- the page ------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table.kpi{border-collapse:collapse;font-size:13px;margin:.5em 0}
table.kpi td,table.kpi th{padding:2px 10px;text-align:right;white-space:nowrap}
table.kpi tbody th{text-align:left;font-weight:600}
table.kpi tr:nth-child(even){background:#f4f4f4}
table.headline{font-size:15px} table.headline td{min-width:11em}
.scroll{max-height:480px;overflow:auto;border:1px solid #eee;display:inline-block;max-width:100%}
table.sortable thead th{cursor:pointer;position:sticky;top:0;background:#fff}
table.sortable thead th:after{content:" \\2195";color:#aaa}
.warn{color:#a94400;font-weight:600} .note{color:#555;font-size:13px} td.na{color:#999}
.empty{background:#fff4e5;border:1px solid #f0c080;padding:.8em 1em}
.cols{display:flex;flex-wrap:wrap;gap:2em}"""

_SORT_JS = """document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
var b=t.tBodies[0],r=Array.from(b.rows),d=th.dataset.dir==='a'?'d':'a';th.dataset.dir=d;
r.sort(function(x,y){var p=x.cells[i].dataset.v||x.cells[i].textContent,q=y.cells[i].dataset.v||y.cells[i].textContent;
var m=parseFloat(p),n=parseFloat(q),c=(!isNaN(m)&&!isNaN(n)&&isFinite(p)&&isFinite(q))?m-n:p.localeCompare(q);
return d==='a'?c:-c;});r.forEach(function(e){b.appendChild(e);});});});});"""


def glossary_html() -> str:
    """The reason codes, as the CLI's --help lists them."""
    from research.backtest import GLOSSARY

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
                   for k, v in GLOSSARY.items())
    return f'<h2>Glossary of reason codes</h2>\n<table class="kpi" id="glossary"><tbody>{rows}</tbody></table>'


def provenance_html(bt: Any, provenance: Mapping[str, str] | None, meta: Mapping[str, Any] | None) -> str:
    """What ran: data origin per symbol, mode, range, symbols, command line, version."""
    meta = dict(meta or {})
    prov = dict(provenance or {})
    by_kind: dict[str, list[str]] = {}
    for s, origin in prov.items():
        by_kind.setdefault(origin, []).append(s)
    kinds = sorted(by_kind) or ["unknown (not read from a catalog)"]
    idx = _ny(bt.panel.index)
    rows = {
        "data": "; ".join(kinds) + (" — synthetic bars say nothing about real markets"
                                    if any("synthetic" in k for k in kinds) else ""),
        "strategy": bt.strategy,
        "mode": getattr(bt.params, "mode", "n/a"),
        "range (New York)": f"{idx[0]:%Y-%m-%d %H:%M} .. {idx[-1]:%Y-%m-%d %H:%M}" if len(idx) else "empty",
        "sessions": str(len(pd.unique(idx.normalize()))),
        "bars": f"{len(idx):,}",
        "symbols": " ".join(bt.panel.symbols),
        "initial cash": f"${bt.result.init_cash:,.2f}",
        "risk-free rate": f"{bt.risk_free:.2%} a year",
        "LLM gate": llm_policy_text(bt),
        "command line": meta.get("command", "n/a"),
        "tierlab version": meta.get("tierlab_version", "n/a"),
        "settings hash": meta.get("settings_hash", "n/a"),
        "created (UTC)": meta.get("created_utc", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
    }
    if len(by_kind) > 1:
        for origin, syms in sorted(by_kind.items()):
            rows[f"data: {origin}"] = " ".join(syms)
    body = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                   for k, v in rows.items())
    return f'<h2>Provenance</h2>\n<table class="kpi" id="provenance"><tbody>{body}</tbody></table>'


def llm_policy_text(bt: Any) -> str:
    """Which LLM policy ran (SPEC §7): off, or recorded answers from which file."""
    policy = (getattr(bt, "llm", None) or {}).get("llm_policy")
    if policy is None:
        return "not reported by this run"
    policy = str(policy)
    if policy.startswith("recorded:"):
        return f"recorded answers from {policy[len('recorded:'):]} (--llm {policy})"
    return "off: no LLM review, scores as computed (--llm off)" if policy == "off" else policy


def llm_html(bt: Any) -> str:
    """The policy line and, for recorded answers, the LLM look-ahead warning (research/llm.py)."""
    llm = getattr(bt, "llm", None) or {}
    text = f'<p class="note" id="llm-policy"><b>LLM gate:</b> {html.escape(llm_policy_text(bt))}.</p>'
    if llm.get("llm_note"):
        text += f'\n<p class="empty" id="llm-lookahead"><b>Warning:</b> {html.escape(str(llm["llm_note"]))}</p>'
    return text


def params_html(params: Any) -> str:
    """Every parameter as a table (the same values as params.toml beside this report)."""
    from research.runs import params_mapping

    values = params_mapping(params)
    body = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(_param_text(v))}</td></tr>"
                   for k, v in values.items())
    return (f'<h2>Parameters</h2>\n<p class="note">All of them, as in <a href="params.toml">params.toml</a> beside '
            f'this report (`python -m research.backtest --params params.toml` re-runs it).</p>\n'
            f'<table class="kpi" id="parameters"><tbody>{body}</tbody></table>')


def _param_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_param_text(x) for x in v) if v else "(none)"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_param_text(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_report(bt: Any, path: str | Path, title: str = "tierlab backtest", *,
                 provenance: Mapping[str, str] | None = None, meta: Mapping[str, Any] | None = None,
                 qqq_close: np.ndarray | None = None, plotly_dir: str | Path | None = None) -> Path:
    """Write the HTML report of a BacktestResult to `path`; plotly.js is written once into `plotly_dir`
    (default: the report's folder; run folders share their parent's copy) and loaded relatively."""
    import os

    from research.backtest import empty_run_reason

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(plotly_dir) if plotly_dir is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    js_src = Path(os.path.relpath(folder / ensure_plotly_js(folder), path.parent)).as_posix()
    curves = benchmark_curves(bt, qqq_close)
    reasons = kpis.nonfinite_reasons(bt.metrics, bt.signals)
    trades = trade_list(bt)
    why = empty_run_reason(bt)
    sections = [headline_table(bt, curves), llm_html(bt)]
    if why:
        sections.append(f'<p class="empty" id="empty"><b>No trades.</b> {html.escape(why)}</p>')
    sections.append(equity_figure(bt, curves))
    if len(trades):
        sections.append('<h2>Trades</h2>\n<p class="note">Click a column to sort. Times New York; return and '
                        'MAE/MFE relative to the entry price; P&amp;L after fees.</p>\n<div class="scroll">'
                        + html_table(trades, "trades", index=False, sortable=True) + "</div>")
        sections.append('<div class="cols"><div><h2>Per symbol</h2>'
                        + html_table(group_table(trades, "symbol"), "per-symbol", sortable=True, index_name="symbol")
                        + '</div><div><h2>Per exit reason</h2>'
                        + html_table(group_table(trades, "exit_reason"), "per-reason", sortable=True,
                                     index_name="exit reason") + "</div></div>")
    else:
        sections.append('<h2>Trades</h2>\n<table class="kpi" id="trades"><tbody><tr><td>no trades</td></tr>'
                        '</tbody></table><table class="kpi" id="per-symbol"></table><table class="kpi" '
                        'id="per-reason"></table>')
    fig = trades_figure(bt)
    if fig:
        sections.append(fig)
    signal_keys = {k: v for k, v in bt.signals.items() if not k.startswith("suppressed_")}
    supp = bt.suppression_table().set_index("reason")[["count", "share"]]
    sections.append('<div class="cols"><div><h2>Signals (SPEC §8), total</h2>'
                    '<p class="note">flip-flop rate = flip-flops / actionable signals (SPEC §8); token overflow rate = '
                    'evaluations that found no token / wanted evaluations, the same basis per hour below; per-tier '
                    'rates count tokens.</p>' + kv_table(signal_keys, "signals", reasons)
                    + '</div><div><h2>Suppression breakdown</h2>'
                    + html_table(supp, "suppression", index_name="reason") + "</div></div>")
    for f in (suppression_figure(bt), basket_figure(bt)):
        if f:
            sections.append(f)
    hourly = bt.hourly.copy()
    hourly.index = [f"{h:02d}:00" for h in hourly.index]
    sections.append('<h2>KPIs per New York hour</h2><div class="scroll">'
                    + html_table(hourly, "hourly", index_name="hour") + "</div>")
    sections.append(provenance_html(bt, provenance, meta))
    sections.append(params_html(bt.params))
    sections.append(glossary_html())
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style><script src="{html.escape(js_src)}"></script></head>
<body><h1>{html.escape(title)}</h1>
<p class="note">Fills: a decision at a bar's close fills at the next bar's open plus slippage; stops and
take-profits inside later bars (strategies/fills.py). Times are America/New_York. Benchmarks buy at the
first close and hold. Data: {html.escape('; '.join(sorted(set((provenance or {}).values()))) or 'not from a catalog')}.</p>
{chr(10).join(sections)}
<script>{_SORT_JS}</script>
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path


def report_sections(path: str | Path) -> Sequence[str]:
    """The table ids a report holds (for tests and tools that check a report's completeness)."""
    text = Path(path).read_text(encoding="utf-8")
    return [i for i in ("headline", "trades", "per-symbol", "per-reason", "signals", "suppression", "hourly",
                        "provenance", "parameters", "glossary") if f'id="{i}"' in text]
