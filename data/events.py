"""Filing events (time, ticker, form, title, url): validation, the CSV importer and the per-bar mask.

An event at time e is seen at the first bar whose close (start + 1 minute) is >= e, so a filing
that lands inside a bar is acted on at that bar's close and never earlier (no look-ahead).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from data.calendar import BAR, ny_days
from tierlab.errors import DataError

EVENT_COLUMNS: tuple[str, ...] = ("time", "ticker", "form", "title", "url")
OPTIONAL_COLUMNS: tuple[str, ...] = ("url",)  # tables and CSVs written before url existed read as ""
EVENT_SCHEMA = pa.schema([
    pa.field("time", pa.timestamp("ns", tz="UTC"), nullable=False),
    pa.field("ticker", pa.string(), nullable=False),
    pa.field("form", pa.string(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
])


def empty_events() -> pd.DataFrame:
    """An events frame with no rows and the right columns and dtypes."""
    return pd.DataFrame({"time": pd.DatetimeIndex([], tz="UTC"), "ticker": pd.Series([], dtype=object),
                         "form": pd.Series([], dtype=object), "title": pd.Series([], dtype=object),
                         "url": pd.Series([], dtype=object)})


def validate_events(df: pd.DataFrame, *, source: str, known: Iterable[str]) -> pd.DataFrame:
    """Check an events frame (unknown/missing columns, unparsable or tz-naive times, unknown tickers, empty forms).

    Returns a clean frame (time tz-aware UTC) sorted by time; DataError names the source, row and field.
    Rows are numbered as file lines (header = line 1).
    """
    extra = [c for c in df.columns if c not in EVENT_COLUMNS]
    if extra:
        raise DataError(f"{source}: unknown column(s) {', '.join(map(str, extra))}; expected {', '.join(EVENT_COLUMNS)}")
    missing = [c for c in EVENT_COLUMNS if c not in df.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}")
    known = set(known)
    times = []
    for i, raw in enumerate(df["time"].tolist()):
        line = i + 2
        try:
            ts = pd.Timestamp(raw)
        except (ValueError, TypeError):
            ts = pd.NaT
        if ts is pd.NaT or pd.isna(ts):
            raise DataError(f"{source}: line {line}: field time: cannot read {raw!r} as a time")
        if ts.tz is None:
            raise DataError(f"{source}: line {line}: field time: {raw!r} is tz-naive; add an offset such as -05:00 or Z")
        times.append(ts.tz_convert("UTC"))
    for i, (tk, form) in enumerate(zip(df["ticker"].tolist(), df["form"].tolist(), strict=True)):
        if tk not in known:
            raise DataError(f"{source}: line {i + 2}: field ticker: unknown ticker {tk!r} "
                            f"(known: {', '.join(sorted(known))})")
        if not isinstance(form, str) or not form.strip():
            raise DataError(f"{source}: line {i + 2}: field form: empty")
    out = pd.DataFrame({"time": pd.DatetimeIndex(times, tz="UTC").as_unit("ns"), "ticker": df["ticker"].astype(str),
                        "form": df["form"].astype(str).str.strip(), "title": df["title"].fillna("").astype(str),
                        "url": (df["url"].fillna("").astype(str) if "url" in df.columns else "")})
    return out.sort_values(["time", "ticker"], kind="stable").reset_index(drop=True)


def events_table(df: pd.DataFrame) -> pa.Table:
    """The events frame as an arrow table with the stored schema (no pandas metadata, deterministic bytes)."""
    t = pd.DatetimeIndex(df["time"]).tz_convert("UTC").as_unit("ns").asi8
    return pa.table({"time": pa.array(t, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
                     **{c: pa.array(df[c].astype(str).tolist(), pa.string()) for c in EVENT_COLUMNS[1:]}},
                    schema=EVENT_SCHEMA)


def events_mask(events_df: pd.DataFrame, index: pd.DatetimeIndex, symbols: Sequence[str]) -> np.ndarray:
    """Bool (T, N): True at the first bar whose close is >= the event time, for each event's ticker.

    Tickers not in `symbols` are ignored, and so are events dated before the first bar's New York
    session day (they belong to an earlier panel) or after the last bar's close.
    """
    t, n = len(index), len(symbols)
    mask = np.zeros((t, n), dtype=bool)
    for p, j in zip(*event_cells(events_df, index, symbols), strict=True):
        if p >= 0:
            mask[p, j] = True
    return mask


def event_cells(events_df: pd.DataFrame, index: pd.DatetimeIndex,
                symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(bar, col) of each event row, -1 where `events_mask` would ignore it (the one placement rule).

    The LLM gate uses this to know which filing stands behind an event bar.
    """
    t = len(index)
    m = len(events_df)
    bars = np.full(m, -1, dtype=np.int64)
    cols = np.full(m, -1, dtype=np.int64)
    if t == 0 or m == 0:
        return bars, cols
    col = {s: j for j, s in enumerate(symbols)}
    closes = (pd.DatetimeIndex(index).tz_convert("UTC") + BAR).as_unit("ns").asi8
    times = pd.DatetimeIndex(events_df["time"])
    if times.tz is None:
        raise DataError("events_mask: event times are tz-naive")
    ev = times.tz_convert("UTC").as_unit("ns").asi8
    first_day = ny_days(pd.DatetimeIndex(index[:1]))[0]
    pos = np.searchsorted(closes, ev, side="left")
    ok = (pos < t) & (ny_days(times) >= first_day)
    for i, (p, tk, good) in enumerate(zip(pos, events_df["ticker"].tolist(), ok, strict=True)):
        if good and tk in col:
            bars[i], cols[i] = p, col[tk]
    return bars, cols


def import_events(path: str | os.PathLike[str], root: str | None = None, fmt: str = "auto",
                  tickers: str | os.PathLike[str] | None = None) -> str:
    """CLI entry (`python -m data events PATH`): validate events and merge them into the catalog.

    `fmt` is csv, edgar-index (form.idx/company.idx), edgar-atom (latest-filings feed) or auto (by
    file name); EDGAR files are mapped to tickers through `tickers` (company_tickers.json layout).
    """
    from data.catalog import Catalog
    from data.universe import UNIVERSE

    catalog = Catalog(root)
    if fmt == "auto":
        from data.importers.edgar import sniff_format

        fmt = sniff_format(path)
    if fmt != "csv":
        from data.importers.edgar import read_edgar

        df = read_edgar(path, fmt, tickers, known=set(UNIVERSE) | set(catalog.symbols()))
        added = catalog.write_events(df)
        return f"{path}: {len(df)} events for the universe read, {added} new in {catalog.events_path}"
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read events CSV: {exc}") from exc
    df = validate_events(raw, source=str(path), known=set(UNIVERSE) | set(catalog.symbols()))
    added = catalog.write_events(df)
    return f"{path}: {len(df)} events read, {added} new in {catalog.events_path}"
