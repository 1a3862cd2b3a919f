"""Read a year of 1-minute bars for 12 symbols from the catalog, side by side with two peers.

Peers on the same bars: pandas read_csv of one CSV per symbol (the usual export), and a naive read of
one parquet file per symbol and day. Prints seconds (best of 3) and ratios; no pass/fail here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data.catalog import Catalog
from data.sample import UNIVERSE, generate_panel

START, END = "2024-01-02", "2024-12-31"


def best_of(fn, n: int = 3) -> tuple[float, object]:
    """Fastest of n runs (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    """Build the three stores in a temp dir, time each read of the whole year, print figures and ratios."""
    t = time.perf_counter()
    panel = generate_panel(START, END, UNIVERSE)
    print(f"generate {panel.shape[0]} minutes x {panel.shape[1]} symbols: {time.perf_counter() - t:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cat = Catalog(root / "catalog")
        t = time.perf_counter()
        for s in UNIVERSE:
            bars = panel.bars(s)
            cat.write(s, bars)
            bars.to_csv(root / f"{s}.csv")
            table, days = pa.Table.from_pandas(bars), bars.index.date
            (root / "daily" / s).mkdir(parents=True)
            for day in sorted(set(days)):
                rows = np.flatnonzero(days == day)
                pq.write_table(table.slice(rows[0], len(rows)), root / "daily" / s / f"{day}.parquet")
        print(f"write catalog + csv + daily files: {time.perf_counter() - t:.1f} s")

        t_cat, got = best_of(lambda: cat.read_panel(list(UNIVERSE), START, END))

        def read_csv():
            frames = {s: pd.read_csv(root / f"{s}.csv", index_col=0, parse_dates=[0]) for s in UNIVERSE}
            return pd.concat(frames, axis=1)

        def read_daily():
            return pd.concat({s: pd.concat([pq.read_table(f).to_pandas() for f in sorted((root / "daily" / s).iterdir())])
                              for s in UNIVERSE}, axis=1)

        t_csv, _ = best_of(read_csv)
        t_day, _ = best_of(read_daily)
    assert np.array_equal(got.close, panel.close, equal_nan=True)
    bars = int((~np.isnan(got.close)).sum())
    print(f"bars read: {bars:,} ({len(UNIVERSE)} symbols, {START}..{END})")
    print(f"catalog.read_panel      {t_cat:7.3f} s   {bars / t_cat:12,.0f} rows/s   (1.00x)")
    print(f"pandas read_csv         {t_csv:7.3f} s   {bars / t_csv:12,.0f} rows/s   ({t_csv / t_cat:5.1f}x slower)")
    print(f"per-day parquet files   {t_day:7.3f} s   {bars / t_day:12,.0f} rows/s   ({t_day / t_cat:5.1f}x slower)")


if __name__ == "__main__":
    main()
