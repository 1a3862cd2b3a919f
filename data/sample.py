"""A reproducible synthetic market for the universe, so backtests need no keys, network or licensed data.

tierlab ships no market data: these bars are made by a seeded numpy generator and say so (parquet footer
metadata and `sample.json`). The model gives the rules something realistic to act on: a megatech
and a semis factor with trending episodes (baskets fall together), stock betas plus noise, QQQ on the
megatech factor, SQQQ/SOXS at about -3x their index, U-shaped volume and volatility, overnight gaps,
news-like jumps (the sample 8-K filings sit on the GOOGL/AMD/AVGO ones) and a few missing minutes for
the thin inverse ETFs, as on the IEX feed.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.bars import Panel
from data.calendar import session_minutes, sessions
from data.catalog import SAMPLE_EVENT_MARK, Catalog
from data.events import empty_events, validate_events
from data.universe import ETFS, MEGATECH, SEMIS, STOCKS, UNIVERSE

assert set(MEGATECH) | set(SEMIS) == set(STOCKS)

__all__ = ["DEFAULT_END", "DEFAULT_START", "UNIVERSE", "ensure_sample", "generate_panel", "sample_events"]

DEFAULT_START = dt.date(2024, 10, 21)
DEFAULT_END = dt.date(2024, 12, 6)
SEED = 7
NOTE = "synthetic bars from a seeded generator (data.sample); tierlab ships no licensed market data"
FACTOR_VOL = 0.0006  # per-minute factor volatility before the U-shape
# Drift of a trending run, per minute, as a share of the per-minute volatility: small, so momentum
# finds a faint edge (the default backtest is near break-even after slippage), never a free lunch.
EPISODE_DRIFT = 0.1
EVENT_TICKERS: tuple[str, ...] = ("GOOGL", "AMD", "AVGO")


@dataclass(frozen=True)
class _Spec:
    price: float
    beta: float
    idio: float  # per-minute idiosyncratic volatility
    volume: float  # mean shares per minute
    jumps_per_day: float
    missing: float = 0.0  # share of minutes without a bar


_SPECS: dict[str, _Spec] = {
    "NVDA": _Spec(140.0, 1.3, 0.0007, 400_000, 0.07),
    "TSLA": _Spec(220.0, 1.5, 0.0010, 250_000, 0.07),
    "AAPL": _Spec(235.0, 0.9, 0.0004, 120_000, 0.07),
    "MSFT": _Spec(420.0, 0.9, 0.0004, 60_000, 0.07),
    "AMZN": _Spec(190.0, 1.1, 0.0005, 100_000, 0.07),
    "META": _Spec(580.0, 1.2, 0.0006, 40_000, 0.07),
    "GOOGL": _Spec(165.0, 1.0, 0.0005, 60_000, 0.2),
    "AMD": _Spec(155.0, 1.2, 0.0007, 80_000, 0.2),
    "AVGO": _Spec(175.0, 1.1, 0.0006, 50_000, 0.2),
    "QQQ": _Spec(495.0, 1.0, 0.0001, 100_000, 0.0),
    "SQQQ": _Spec(8.0, -3.0, 0.0001, 150_000, 0.0, missing=0.04),
    "SOXS": _Spec(22.0, -3.0, 0.0001, 60_000, 0.0, missing=0.06),
}
_INDEX_OF = {"QQQ": "mega", "SQQQ": "QQQ", "SOXS": "semi"}
_GENERIC = _Spec(50.0, 0.5, 0.0008, 20_000, 0.05)


def _factor_of(name: str) -> str | None:
    """The factor a stock loads on: its basket's (SPEC §6); ETFs are built from their index instead."""
    if name in _INDEX_OF:
        return None
    return "semi" if name in SEMIS else "mega"



class _Grid:
    """The minute grid split into sessions, with the U-shape profile of each minute."""

    def __init__(self, start: dt.date, end: dt.date) -> None:
        self.index = session_minutes(start, end)
        days = pd.DatetimeIndex(self.index).tz_convert("America/New_York").normalize()
        first = np.r_[True, days[1:] != days[:-1]]
        self.starts = np.flatnonzero(first)
        self.ends = np.r_[self.starts[1:], len(self.index)]
        self.first = first
        self.minute = np.arange(len(self.index)) - np.repeat(self.starts, self.ends - self.starts)
        length = np.repeat(self.ends - self.starts, self.ends - self.starts)
        x = (self.minute - (length - 1) / 2) / ((length - 1) / 2)
        self.vol_shape = 0.7 + 1.6 * x**2
        self.volume_shape = 0.55 + 1.8 * x**2 + 1.5 * (self.minute < 5)


def _episodes(rng: np.random.Generator, grid: _Grid, per_day: float, size: float) -> np.ndarray:
    """A drift series: a few trending runs per session (6-20 minutes, `size` per minute, random sign).

    Each session's net episode drift is taken back evenly over that session, so runs are sharp but
    prices do not wander off over the weeks.
    """
    drift = np.zeros(len(grid.index))
    for s, e in zip(grid.starts, grid.ends, strict=True):
        for _ in range(rng.poisson(per_day)):
            n = int(rng.integers(6, 21))
            at = s + int(rng.integers(0, max(1, e - s - n)))
            drift[at:at + n] += rng.choice((-1.0, 1.0)) * rng.uniform(1.0, 2.0) * size
        drift[s:e] -= drift[s:e].mean()
    return drift


def _factor(rng: np.random.Generator, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """(open increments, intrabar returns) of one factor: U-shaped noise, episodes, overnight gaps."""
    sigma = FACTOR_VOL * grid.vol_shape
    intrabar = rng.normal(0.0, 1.0, len(sigma)) * sigma + _episodes(rng, grid, 6.0, EPISODE_DRIFT * FACTOR_VOL)
    opening = np.where(grid.first, rng.normal(0.0, 0.005, len(sigma)), 0.0)
    opening[0] = 0.0
    return opening, intrabar


class _Market:
    """Builds each symbol's log-return components on demand, every stream seeded by (seed, name)."""

    def __init__(self, grid: _Grid, seed: int) -> None:
        self.grid, self.seed = grid, seed
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.jumps: list[tuple[pd.Timestamp, str, float]] = []

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def returns(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.cache:
            self.cache[name] = self._build(name)
        return self.cache[name]

    def _build(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        g, rng = self.grid, self.rng(name)
        if name == "mega":
            return _factor(rng, g)
        if name == "semi":
            own_open, own_bar = _factor(rng, g)
            m_open, m_bar = self.returns("mega")
            return 0.6 * m_open + 0.8 * own_open, 0.6 * m_bar + 0.8 * own_bar
        spec = _SPECS.get(name, _GENERIC)
        noise_open = rng.normal(0.0, 0.15, len(g.index)) * spec.idio
        noise_bar = rng.normal(0.0, 1.0, len(g.index)) * spec.idio * g.vol_shape
        factor = _factor_of(name)
        if factor is None:
            base_open, base_bar = self.returns(_INDEX_OF[name])
            beta = spec.beta if name != "QQQ" else 0.9
            return beta * base_open + noise_open, beta * base_bar + noise_bar
        f_open, f_bar = self.returns(factor)
        gap = np.where(g.first, rng.normal(0.0, 0.006, len(g.index)), 0.0)
        gap[0] = 0.0
        bar = spec.beta * f_bar + noise_bar + _episodes(rng, g, 2.0, EPISODE_DRIFT * spec.idio)
        for s, e in zip(g.starts, g.ends, strict=True):
            if rng.random() < spec.jumps_per_day:
                at = s + int(rng.integers(15, e - s - 15))
                size = rng.choice((-1.0, 1.0)) * rng.uniform(0.01, 0.025)
                bar[at] += size
                self.jumps.append((g.index[at], name, float(size)))
        return spec.beta * f_open + noise_open + gap, bar


def _bars(market: _Market, name: str) -> dict[str, np.ndarray]:
    """OHLCV, vwap and trade count of one symbol from its return components."""
    g, rng = market.grid, market.rng(name + ":bars")
    spec = _SPECS.get(name, _GENERIC)
    opening, bar = market.returns(name)
    log_close = np.log(spec.price) + np.cumsum(opening + bar)
    close = np.exp(log_close)
    open_ = np.exp(log_close - bar)
    wick = np.abs(rng.normal(0.0, 0.35, (2, len(close)))) * FACTOR_VOL * g.vol_shape * max(1.0, abs(spec.beta))
    o, c = np.round(open_, 2), np.round(close, 2)
    high = np.maximum(np.round(np.maximum(open_, close) * np.exp(wick[0]), 2), np.maximum(o, c))
    low = np.minimum(np.round(np.minimum(open_, close) * np.exp(-wick[1]), 2), np.minimum(o, c))
    surprise = np.abs(bar) / (FACTOR_VOL * g.vol_shape)
    volume = np.round(spec.volume * g.volume_shape * rng.lognormal(0.0, 0.35, len(c)) * (1 + 0.3 * surprise))
    vwap = np.clip(np.round((high + low + c) / 3, 4), low, high)
    trades = np.maximum(1.0, np.round(volume / rng.uniform(80, 120)))
    out = {"open": o, "high": high, "low": low, "close": c, "volume": volume, "vwap": vwap, "trade_count": trades}
    if spec.missing:
        gone = (rng.random(len(c)) < spec.missing) & ~g.first & (g.minute < np.repeat(g.ends - g.starts, g.ends - g.starts) - 1)
        for a in out.values():
            a[gone] = np.nan
    return out


def generate_panel(start: dt.date | str = DEFAULT_START, end: dt.date | str = DEFAULT_END,
                   symbols: tuple[str, ...] | list[str] = UNIVERSE, seed: int = SEED) -> Panel:
    """Generate the synthetic minute panel in memory (same seed and range -> the same bars).

    A symbol outside the universe gets a generic megatech-like model. `meta["jumps"]` lists the
    news-like jumps as (bar start, symbol, log size).
    """
    grid = _Grid(pd.Timestamp(start).date(), pd.Timestamp(end).date())
    market = _Market(grid, seed)
    for name in ("mega", "semi", *STOCKS, *ETFS):
        market.returns(name)  # fixed build order: the jump list does not depend on `symbols`
    cols = {s: _bars(market, s) for s in symbols}
    fields = {f: np.column_stack([cols[s][f] for s in symbols]) if symbols else np.empty((len(grid.index), 0))
              for f in ("open", "high", "low", "close", "volume", "vwap", "trade_count")}
    jumps = sorted(market.jumps)
    return Panel(index=grid.index, symbols=tuple(symbols), **fields,
                 meta={"synthetic": True, "note": NOTE, "seed": seed, "jumps": jumps})


def sample_events(panel: Panel) -> pd.DataFrame:
    """Synthetic 8-K filings on GOOGL/AMD/AVGO, each 20 s into a bar where the generator put a jump."""
    rows = [{"time": t + pd.Timedelta(seconds=20), "ticker": s, "form": "8-K",
             "title": f"{s} 8-K {SAMPLE_EVENT_MARK}; price jump {size:+.1%})"}
            for t, s, size in panel.meta.get("jumps", []) if s in EVENT_TICKERS]
    if not rows:
        return empty_events()
    return validate_events(pd.DataFrame(rows), source="sample", known=UNIVERSE)


def ensure_sample(catalog: Catalog | None = None, start: dt.date | str = DEFAULT_START,
                  end: dt.date | str = DEFAULT_END, seed: int = SEED) -> Catalog:
    """Write the synthetic sample into `catalog` (default: the home catalog) where days are missing.

    Only for callers the user asked (`python -m data sample`, a backtest on an empty catalog): days that
    hold real bars are kept, and a range mixing them with sample days is refused when read.
    """
    catalog = catalog or Catalog()
    want = set(sessions(start, end))
    if all(want <= set(catalog.days(s)) for s in UNIVERSE) and catalog.events_path.exists():
        return catalog
    panel = generate_panel(start, end, UNIVERSE, seed)
    meta = {"tierlab.source": "synthetic", "tierlab.generator": "data.sample.generate_panel",
            "tierlab.seed": str(seed), "tierlab.note": NOTE}
    for s in UNIVERSE:
        catalog.write(s, panel.bars(s), source="sample", metadata=meta, origin="sample")
    events = sample_events(panel)
    catalog.write_events(events)
    info = {"synthetic": True, "note": NOTE, "generator": "data.sample.generate_panel", "seed": seed,
            "start": str(pd.Timestamp(start).date()), "end": str(pd.Timestamp(end).date()),
            "symbols": list(UNIVERSE), "sessions": len(want), "events": len(events)}
    catalog.root.mkdir(parents=True, exist_ok=True)
    (catalog.root / "sample.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return catalog


def write_sample(root: str | None = None, start: str | None = None, end: str | None = None) -> str:
    """CLI entry (`python -m data sample`): build the sample into `root` and say what is there."""
    cat = ensure_sample(Catalog(root), start or DEFAULT_START, end or DEFAULT_END)
    return f"synthetic sample ready in {cat.root}: {len(cat.symbols())} symbols, {len(cat.read_events())} events"
