"""The local parquet catalog: bars partitioned by symbol and month, filing events in one table.

Layout under the root (default `tierlab_home()/"catalog"`):
    bars/symbol=NVDA/month=2024-11/bars.parquet   one file per symbol and month, sorted by time
    events/events.parquet                         time, ticker, form, title, url
Month files (not day files) keep a year for 12 symbols at ~150 files, which reads in well under a
second; the day is still the unit of appending: `write` adds only New York session days the catalog
does not hold yet. Every write validates all input first, then writes temp files and renames them
into place (os.replace), so a refused import leaves the catalog untouched.
"""

from __future__ import annotations

import datetime as dt
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
from data.calendar import ny_days, session_minutes, to_date
from data.validate import validate_bars
from tierlab.errors import DataError
from tierlab.paths import tierlab_home

STORED_COLUMNS: tuple[str, ...] = BAR_COLUMNS + OPTIONAL_COLUMNS
BAR_SCHEMA = pa.schema(
    [pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False)]
    + [pa.field(c, pa.float64()) for c in STORED_COLUMNS]
)
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.\-]{0,11}$")
_BARS_FILE = "bars.parquet"


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it is a plain ticker (upper case, digits, '.', '-'); DataError otherwise."""
    if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
        raise DataError(f"bad symbol {symbol!r}: expected an upper-case ticker such as NVDA or BRK.B")
    return symbol


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
    """What a write did: days added, days already present (skipped), rows written, repairs made."""

    symbol: str
    days_written: list[dt.date] = field(default_factory=list)
    days_skipped: list[dt.date] = field(default_factory=list)
    rows_written: int = 0
    repairs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI."""
        return (f"{self.symbol}: wrote {self.rows_written} bars on {len(self.days_written)} new days, "
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

    # ---- write ----------------------------------------------------------------------------------
    def write(self, symbol: str, df: pd.DataFrame, repair: bool = False, *, source: str | None = None,
              metadata: dict[str, str] | None = None) -> WriteReport:
        """Validate `df` (long bars of one symbol, index = bar-start times) and add the days not yet stored.

        Nothing is written unless all of `df` passes (or was repaired with `repair=True`). Days already
        in the catalog are skipped, never overwritten. `metadata` goes into each written file's footer.
        """
        check_symbol(symbol)
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
                new_days = days[months == month]
                old = pq.read_table(final).cast(BAR_SCHEMA) if final.exists() else None
                have = set() if old is None else set(np.unique(ny_days(pd.DatetimeIndex(
                    old.column("timestamp").to_numpy(), tz="UTC"))).tolist())
                fresh = ~np.isin(new_days, np.array(sorted(have), dtype="datetime64[D]"))
                report.days_skipped += sorted({d.item() for d in new_days[~fresh]})
                if not fresh.any():
                    continue
                report.days_written += sorted({d.item() for d in new_days[fresh]})
                report.rows_written += int(fresh.sum())
                table = _to_table(new[fresh])
                if old is not None:
                    table = pa.concat_tables([old, table])
                    table = table.take(pc.sort_indices(table, [("timestamp", "ascending")]))
                if metadata:
                    table = table.replace_schema_metadata({k: str(v) for k, v in sorted(metadata.items())})
                temps.append((write_parquet_atomic(table, final), final))
        except BaseException:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            raise
        commit(temps)
        return report

    # ---- read -----------------------------------------------------------------------------------
    def read_panel(self, symbols: list[str] | tuple[str, ...] | None = None,
                   start: dt.date | pd.Timestamp | str | None = None,
                   end: dt.date | pd.Timestamp | str | None = None) -> Panel:
        """Bars of `symbols` (default: all) on the session grid from `start` to `end` (dates, end inclusive).

        Bounds default to the stored range. A timestamp bound with a time of day also trims the grid
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
