"""The local parquet catalog: bars partitioned by symbol and month, filing events in one table.

Layout under the root (default `tierlab_home()/"catalog"`):
    bars/symbol=NVDA/month=2024-11/bars.parquet   one file per symbol and month, sorted by time
    events/events.parquet                         time, ticker, form, title, url
Month files (not day files) keep a year for 12 symbols at ~150 files, which reads in well under a
second; the day is still the unit of appending: `write` adds only New York session days the catalog
does not hold yet. Every write validates all input first, then writes temp files and renames them
into place (os.replace), so a refused import leaves the catalog untouched.

Each month file's footer records where each of its days came from (`tierlab.origins`: day -> "sample",
"file" or "alpaca"), so synthetic and real bars are never read into one panel: real bars written over
synthetic sample days replace them, and `read_panel` refuses a range that holds both kinds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from data.bars import BAR_COLUMNS, OPTIONAL_COLUMNS, Panel
from data.calendar import ny_days, session_minutes, sessions, to_date
from data.validate import validate_bars
from tierlab.errors import ConfigError, DataError
from tierlab.paths import tierlab_home

STORED_COLUMNS: tuple[str, ...] = BAR_COLUMNS + OPTIONAL_COLUMNS
BAR_SCHEMA = pa.schema(
    [pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False)]
    + [pa.field(c, pa.float64()) for c in STORED_COLUMNS]
)
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.\-]{0,11}$")
_BARS_FILE = "bars.parquet"
ORIGINS: tuple[str, ...] = ("sample", "file", "alpaca")  # synthetic sample, file import, Alpaca
SYNTHETIC_ORIGINS = frozenset({"sample"})
ORIGINS_KEY = "tierlab.origins"
SAMPLE_EVENT_MARK = "(synthetic sample filing"  # in the title of every event data.sample writes


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it is a plain ticker (upper case, digits, '.', '-'); DataError otherwise."""
    if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
        raise DataError(f"bad symbol {symbol!r}: expected an upper-case ticker such as NVDA or BRK.B")
    return symbol


def normalize_symbol(symbol: str) -> str:
    """A user-typed ticker upper-cased and checked (`nvda` -> `NVDA`); DataError if it is still not a ticker."""
    return check_symbol(symbol.strip().upper() if isinstance(symbol, str) else symbol)


def is_synthetic(origin: str) -> bool:
    """True for bars the sample generator made, False for real bars (file import, Alpaca)."""
    return origin in SYNTHETIC_ORIGINS


def _legacy_origin(meta: dict[bytes, bytes]) -> str:
    """Origin of every day of a file written before origins were recorded: its footer's source, else a file."""
    return "sample" if meta.get(b"tierlab.source") == b"synthetic" else "file"


def _footer(origins: dict[str, str], extras: dict[str, str]) -> dict[str, str]:
    """Footer metadata of a month file: per-day origins, the kind of its bars, and the writer's extras."""
    kinds = {"synthetic" if is_synthetic(o) else "real" for o in origins.values()}
    out = {**extras, ORIGINS_KEY: json.dumps(dict(sorted(origins.items())), separators=(",", ":")),
           "tierlab.source": kinds.pop() if len(kinds) == 1 else "mixed"}
    return dict(sorted(out.items()))


def describe_days(days: list[dt.date]) -> str:
    """Dates as short runs of consecutive sessions: '2024-11-04..2024-11-08, 2025-03-03'."""
    if not days:
        return "none"
    days = sorted(days)
    runs, first, prev = [], days[0], days[0]
    for d in days[1:]:
        if len(sessions(prev, d)) > 2:  # a session is missing between prev and d
            runs.append((first, prev))
            first = d
        prev = d
    runs.append((first, prev))
    text = [str(a) if a == b else f"{a}..{b}" for a, b in runs]
    return ", ".join(text[:4]) + (f" and {len(text) - 4} more runs" if len(text) > 4 else "")


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write `table` to a temp file next to `path` with deterministic settings; return the temp path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="lz4", write_statistics=True,
                   row_group_size=1 << 20)
    return tmp


def commit(temps: list[tuple[Path, Path]]) -> None:
    """Rename prepared temp files into place, all or none.

    Each replaced file is first moved aside; if any rename fails, the files already renamed are
    taken back out and the old ones restored, so a failed multi-month write leaves the catalog as it
    was. (A process killed mid-commit can still leave a mix; the moved-aside `.bak` files say which.)
    """
    done: list[tuple[Path, Path | None]] = []
    try:
        for tmp, final in temps:
            backup = final.with_name(f".{final.name}.{os.getpid()}.bak") if final.exists() else None
            if backup is not None:
                os.replace(final, backup)
            done.append((final, backup))
            os.replace(tmp, final)
    except BaseException:
        for final, backup in reversed(done):
            if backup is not None:
                os.replace(backup, final)
            else:
                final.unlink(missing_ok=True)
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


@dataclass
class WriteReport:
    """What a write did: days added, synthetic days replaced, days already present (skipped), rows, repairs."""

    symbol: str
    days_written: list[dt.date] = field(default_factory=list)
    days_skipped: list[dt.date] = field(default_factory=list)
    rows_written: int = 0
    repairs: list[str] = field(default_factory=list)
    days_replaced: list[dt.date] = field(default_factory=list)
    events_dropped: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        new = len(self.days_written) - len(self.days_replaced)
        replaced = (f" (and replaced the synthetic sample bars of {len(self.days_replaced)} days: "
                    f"{describe_days(self.days_replaced)}"
                    + (f", with their {self.events_dropped} synthetic filing events" if self.events_dropped else "")
                    + ")") if self.days_replaced else ""
        return (f"{self.symbol}: wrote {self.rows_written} bars on {new} new days{replaced}, "
                f"skipped {len(self.days_skipped)} days already in the catalog"
                + (f"; repairs: {len(self.repairs)}" if self.repairs else ""))


class Catalog:
    """A parquet store of 1-minute bars and filing events under `root` (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else tierlab_home() / "catalog"

    def __repr__(self) -> str:
        return f"Catalog({str(self.root)!r})"

    # ---- layout -------------------------------------------------------------------------------
    def _symbol_dir(self, symbol: str) -> Path:
        return self.root / "bars" / f"symbol={check_symbol(symbol)}"

    def _month_files(self, symbol: str) -> dict[str, Path]:
        d = self._symbol_dir(symbol)
        if not d.is_dir():
            return {}
        return {p.name.split("=", 1)[1]: p / _BARS_FILE
                for p in sorted(d.glob("month=*")) if (p / _BARS_FILE).is_file()}

    def symbols(self) -> list[str]:
        """Symbols that have bars in the catalog, sorted."""
        base = self.root / "bars"
        if not base.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.glob("symbol=*") if self._month_files(p.name[7:]))

    def days(self, symbol: str) -> list[dt.date]:
        """New York session dates on which the catalog holds at least one bar of `symbol`."""
        out: set[dt.date] = set()
        for path in self._month_files(symbol).values():
            ts = pq.read_table(path, columns=["timestamp"]).column(0).to_numpy()
            out.update(d.item() for d in np.unique(ny_days(pd.DatetimeIndex(ts, tz="UTC"))))
        return sorted(out)

    def range(self, symbol: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """(first, last) bar start of `symbol`; DataError if the catalog has none."""
        files = list(self._month_files(symbol).values())
        if not files:
            raise DataError(f"{symbol}: no bars in catalog {self.root}")
        first = pq.read_table(files[0], columns=["timestamp"]).column(0)[0].as_py()
        last = pq.read_table(files[-1], columns=["timestamp"]).column(0)[-1].as_py()
        return pd.Timestamp(first).tz_convert("UTC"), pd.Timestamp(last).tz_convert("UTC")

    def origins(self, symbol: str, start: dt.date | pd.Timestamp | str | None = None,
                end: dt.date | pd.Timestamp | str | None = None) -> dict[dt.date, str]:
        """Where each stored day of `symbol` (from `start` to `end`, inclusive) came from: sample, file or alpaca."""
        lo = None if start is None else to_date(start)
        hi = None if end is None else to_date(end)
        out: dict[dt.date, str] = {}
        for month, path in self._month_files(symbol).items():
            if (lo is not None and month < f"{lo:%Y-%m}") or (hi is not None and month > f"{hi:%Y-%m}"):
                continue
            for day, origin in _file_origins(path).items():
                d = dt.date.fromisoformat(day)
                if (lo is None or d >= lo) and (hi is None or d <= hi):
                    out[d] = origin
        return dict(sorted(out.items()))

    def check_one_kind(self, symbols: list[str] | tuple[str, ...], start: dt.date | pd.Timestamp | str,
                       end: dt.date | pd.Timestamp | str) -> None:
        """DataError if the days of `symbols` from `start` to `end` hold synthetic sample bars and real bars."""
        synthetic: dict[str, list[dt.date]] = {}
        real: dict[str, list[dt.date]] = {}
        for s in symbols:
            for day, origin in self.origins(s, start, end).items():
                (synthetic if is_synthetic(origin) else real).setdefault(s, []).append(day)
        if synthetic and real:
            def said(by: dict[str, list[dt.date]]) -> str:
                names = list(by)
                text = "; ".join(f"{s} {describe_days(by[s])}" for s in names[:3])
                return text + (f"; and {len(names) - 3} more symbols" if len(names) > 3 else "")

            raise DataError(f"{to_date(start)} .. {to_date(end)} mixes synthetic sample bars ({said(synthetic)}) with "
                            f"real bars ({said(real)}): choose dates that hold one kind, or import real bars for "
                            "the sample days (they replace them)")

    def resolve_range(self, symbols: list[str] | tuple[str, ...], start: dt.date | pd.Timestamp | str | None = None,
                      end: dt.date | pd.Timestamp | str | None = None) -> tuple[dt.date, dt.date]:
        """The first and last session date a backtest of `symbols` reads, checked; one-line errors otherwise.

        Missing bounds default to the range every symbol covers, counting real days only when every
        symbol has some (so a catalog holding the sample and real bars defaults to the real ones).
        Refused: unknown symbols, start after end, a range outside the stored days, a range without
        sessions, a symbol with no bar in the range (a gap in the catalog), synthetic mixed with real.
        """
        known = set(self.symbols())
        unknown = [s for s in symbols if s not in known]
        if unknown:
            raise DataError(f"unknown symbol(s) {', '.join(unknown)}; catalog has {', '.join(sorted(known)) or 'nothing'}"
                            + ("" if known else " (try `python -m data sample`)"))
        held = {s: self.origins(s) for s in symbols}
        real = {s: [d for d, o in h.items() if not is_synthetic(o)] for s, h in held.items()}
        pool = real if all(real.values()) else {s: list(h) for s, h in held.items()}
        lo = to_date(start) if start is not None else max(min(v) for v in pool.values())
        hi = to_date(end) if end is not None else min(max(v) for v in pool.values())
        if lo > hi:
            raise ConfigError(f"empty range: --start {lo} is after --end {hi}"
                              + ("" if start is not None and end is not None else " (the symbols' stored days do not overlap)"))
        for s, h in held.items():
            first, last = min(h), max(h)
            if lo < first or hi > last:
                raise DataError(f"{s}: range {lo} .. {hi} is outside the catalog's {first} .. {last}")
        if not sessions(lo, hi):
            raise DataError(f"no trading sessions between {lo} and {hi}")
        found = {s: [d for d in h if lo <= d <= hi] for s, h in held.items()}
        empty = [s for s in symbols if not found[s]]
        if empty:
            days = sorted({d for v in found.values() for d in v})
            raise DataError(f"no bars for {', '.join(empty)} from {lo} to {hi} (a gap in the catalog); days found "
                            f"there for the requested symbols: {describe_days(days)}; {empty[0]} is stored on "
                            f"{describe_days(list(held[empty[0]]))}")
        self.check_one_kind(symbols, lo, hi)
        return lo, hi

    # ---- write ----------------------------------------------------------------------------------
    def write(self, symbol: str, df: pd.DataFrame, repair: bool = False, *, source: str | None = None,
              metadata: dict[str, str] | None = None, origin: str = "file") -> WriteReport:
        """Validate `df` (long bars of one symbol, index = bar-start times) and add the days not yet stored.

        Nothing is written unless all of `df` passes (or was repaired with `repair=True`). Days already
        in the catalog are skipped, never overwritten, except synthetic sample days under real bars
        (`origin` "file" or "alpaca"): those are replaced, with the sample's filing events of that
        symbol and day, and the report lists them. `metadata` goes into each written file's footer.
        """
        check_symbol(symbol)
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, got {origin!r}")
        clean, repairs = validate_bars(df, symbol, source=source, repair=repair)
        report = WriteReport(symbol, repairs=repairs)
        if clean.empty:
            return report
        days = ny_days(clean.index)
        months = days.astype("datetime64[M]")
        temps: list[tuple[Path, Path]] = []
        try:
            for month in np.unique(months):
                final = self._symbol_dir(symbol) / f"month={month}" / _BARS_FILE
                new = clean[months == month]
                new_days = days[months == month].astype(str)
                old = pq.read_table(final) if final.exists() else None
                old_meta = (old.schema.metadata or {}) if old is not None else {}
                old_days = (np.empty(0, dtype="<U10") if old is None else ny_days(pd.DatetimeIndex(
                    old.column("timestamp").to_numpy(), tz="UTC")).astype(str))
                origins = _origins_of(old_meta, old_days)
                replace = set() if is_synthetic(origin) else {
                    d for d in np.unique(new_days) if is_synthetic(origins.get(d, "file"))}
                held = np.array(sorted(set(origins) - replace), dtype=old_days.dtype)
                fresh = ~np.isin(new_days, held)
                report.days_skipped += [dt.date.fromisoformat(d) for d in sorted(set(new_days[~fresh]))]
                if not fresh.any():
                    continue
                report.days_written += [dt.date.fromisoformat(d) for d in sorted(set(new_days[fresh]))]
                report.days_replaced += [dt.date.fromisoformat(d) for d in sorted(replace)]
                report.rows_written += int(fresh.sum())
                origins = {d: o for d, o in origins.items() if d not in replace}
                origins.update({d: origin for d in np.unique(new_days[fresh])})
                table = _to_table(new[fresh])
                if old is not None:
                    old = old.cast(BAR_SCHEMA).filter(pa.array(~np.isin(old_days, sorted(replace))))
                    table = pa.concat_tables([old, table])
                    table = table.take(pc.sort_indices(table, [("timestamp", "ascending")]))
                keep_old = any(is_synthetic(o) for o in origins.values())  # the sample's generator notes
                extras = {k.decode(): v.decode() for k, v in old_meta.items()
                          if keep_old and k.startswith(b"tierlab.") and k not in (ORIGINS_KEY.encode(), b"tierlab.source")}
                extras.update({k: str(v) for k, v in (metadata or {}).items() if k != "tierlab.source"})
                table = table.replace_schema_metadata(_footer(origins, extras))
                temps.append((write_parquet_atomic(table, final), final))
            if report.days_replaced:
                temps += self._drop_sample_events(symbol, report)
        except BaseException:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            raise
        commit(temps)
        return report

    def _drop_sample_events(self, symbol: str, report: WriteReport) -> list[tuple[Path, Path]]:
        """The events file without the sample's filings of `symbol` on the days real bars replaced (as a temp)."""
        from data.events import events_table

        ev = self.read_events()
        if ev.empty:
            return []
        day = ny_days(pd.DatetimeIndex(ev["time"]))
        gone = ((ev["ticker"] == symbol).to_numpy() & ev["title"].str.contains(SAMPLE_EVENT_MARK, regex=False).to_numpy()
                & np.isin(day, np.array(report.days_replaced, dtype="datetime64[D]")))
        report.events_dropped = int(gone.sum())
        if not gone.any():
            return []
        return [(write_parquet_atomic(events_table(ev[~gone]), self.events_path), self.events_path)]

    # ---- read -----------------------------------------------------------------------------------
    def read_panel(self, symbols: list[str] | tuple[str, ...] | None = None,
                   start: dt.date | pd.Timestamp | str | None = None,
                   end: dt.date | pd.Timestamp | str | None = None) -> Panel:
        """Bars of `symbols` (default: all) on the session grid from `start` to `end` (dates, end inclusive).

        Bounds default to the stored range. A range holding synthetic and real bars is refused (DataError). A timestamp bound with a time of day also trims the grid
        to bar starts within [start, end]. Missing minutes stay NaN.
        """
        symbols = tuple(self.symbols() if symbols is None else symbols)
        files = {s: self._month_files(s) for s in symbols}
        for s, f in files.items():
            if not f:
                raise DataError(f"{s}: no bars in catalog {self.root}; known symbols: "
                                f"{', '.join(self.symbols()) or 'none'} (try `python -m data sample`)")
        if start is None:
            start = min(self.range(s)[0] for s in symbols)
        if end is None:
            end = max(self.range(s)[1] for s in symbols)
        self.check_one_kind(symbols, start, end)
        index = session_minutes(start, end)
        index = _trim(index, start, end)
        t, n = len(index), len(symbols)
        rows = {c: np.full((n, t), np.nan) for c in STORED_COLUMNS}  # symbol-major while filling: contiguous
        if t:
            lo_m, hi_m = str(np.datetime64(to_date(start), "M")), str(np.datetime64(to_date(end), "M"))
            lo, hi = index[0], index[-1]
            grid = index.asi8
            for j, s in enumerate(symbols):
                paths = [str(p) for m, p in files[s].items() if lo_m <= m <= hi_m]
                if not paths:
                    continue
                tab = ds.dataset(paths, format="parquet", schema=BAR_SCHEMA).to_table(
                    filter=(ds.field("timestamp") >= lo) & (ds.field("timestamp") <= hi))
                ts = tab.column("timestamp").to_numpy().view("int64")
                pos = np.searchsorted(grid, ts)
                ok = (pos < t) & (grid[np.minimum(pos, t - 1)] == ts)
                for c in STORED_COLUMNS:
                    rows[c][j, pos[ok]] = tab.column(c).to_numpy()[ok]
        arrays = {c: np.ascontiguousarray(a.T) for c, a in rows.items()}
        opt = {c: (arrays[c] if not np.isnan(arrays[c]).all() else None) for c in OPTIONAL_COLUMNS}
        return Panel(index=index, symbols=symbols, **{c: arrays[c] for c in BAR_COLUMNS}, **opt,
                     meta={"catalog": str(self.root)})

    # ---- events ---------------------------------------------------------------------------------
    @property
    def events_path(self) -> Path:
        """The events table file."""
        return self.root / "events" / "events.parquet"

    def read_events(self, start: dt.date | pd.Timestamp | str | None = None,
                    end: dt.date | pd.Timestamp | str | None = None) -> pd.DataFrame:
        """Stored filing events (time UTC, ticker, form, title, url), optionally from `start` to `end` (dates, inclusive)."""
        from data.events import EVENT_COLUMNS, empty_events

        if not self.events_path.exists():
            return empty_events()
        df = pq.read_table(self.events_path).to_pandas()
        for c in EVENT_COLUMNS:  # a table written before a column (url) existed reads it as ""
            if c not in df.columns:
                df[c] = ""
        df["time"] = pd.DatetimeIndex(df["time"]).tz_convert("UTC")
        day = ny_days(pd.DatetimeIndex(df["time"]))
        keep = np.ones(len(df), dtype=bool)
        if start is not None:
            keep &= day >= np.datetime64(to_date(start))
        if end is not None:
            keep &= day <= np.datetime64(to_date(end))
        return df.loc[keep, list(EVENT_COLUMNS)].reset_index(drop=True)

    def write_events(self, events: pd.DataFrame) -> int:
        """Merge validated events into the table (exact duplicates dropped); return how many were new."""
        from data.events import events_table

        old = self.read_events()
        merged = pd.concat([old, events], ignore_index=True) if len(old) else events.copy()
        merged = merged.drop_duplicates().sort_values(["time", "ticker", "form", "title"], kind="stable")
        added = len(merged) - len(old)
        if added:
            commit([(write_parquet_atomic(events_table(merged), self.events_path), self.events_path)])
        return added


def _origins_of(meta: dict[bytes, bytes], days: np.ndarray) -> dict[str, str]:
    """Day -> origin of one month file from its footer; days the footer does not name get the legacy origin."""
    raw = meta.get(ORIGINS_KEY.encode())
    named = json.loads(raw) if raw else {}
    legacy = _legacy_origin(meta)
    return {str(d): named.get(str(d), legacy) for d in np.unique(days)}


_ORIGINS_CACHE: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}


def _file_origins(path: Path) -> dict[str, str]:
    """Day -> origin of one stored month file (reads the footer; the timestamps only for old files).

    Cached per file version (inode, size, mtime): every write replaces the file, so a hit is current.
    """
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _ORIGINS_CACHE.get(str(path))
    if hit is not None and hit[0] == key:
        return dict(hit[1])
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(ORIGINS_KEY.encode())
    if raw:
        out = dict(json.loads(raw))
    else:
        ts = pq.read_table(path, columns=["timestamp"]).column(0).to_numpy()
        out = _origins_of(meta, ny_days(pd.DatetimeIndex(ts, tz="UTC")))
    if len(_ORIGINS_CACHE) > 4096:
        _ORIGINS_CACHE.clear()
    _ORIGINS_CACHE[str(path)] = (key, out)
    return dict(out)


def _to_table(df: pd.DataFrame) -> pa.Table:
    cols = {"timestamp": pa.array(df.index.as_unit("ns").asi8, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))}
    for c in STORED_COLUMNS:
        cols[c] = pa.array(df[c].to_numpy(np.float64) if c in df.columns else np.full(len(df), np.nan), pa.float64())
    return pa.table(cols, schema=BAR_SCHEMA)


def _trim(index: pd.DatetimeIndex, start: object, end: object) -> pd.DatetimeIndex:
    def has_time(x: object) -> bool:
        return isinstance(x, pd.Timestamp | dt.datetime) and pd.Timestamp(x) != pd.Timestamp(x).normalize()

    if has_time(start):
        s = pd.Timestamp(start)
        index = index[index >= (s.tz_localize("UTC") if s.tz is None else s)]
    if has_time(end):
        e = pd.Timestamp(end)
        index = index[index <= (e.tz_localize("UTC") if e.tz is None else e)]
    return index
