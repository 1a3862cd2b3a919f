"""The parquet catalog: round trip onto the session grid, missing minutes stay missing, append-only days."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.calendar import session_minutes
from data.catalog import Catalog
from data.sample import generate_panel
from tierlab.errors import DataError


@pytest.fixture(scope="module")
def panel():
    return generate_panel("2024-10-28", "2024-11-08", ("NVDA", "SOXS"))


def test_round_trip_keeps_every_value_and_every_gap(tmp_path, panel):
    cat = Catalog(tmp_path)
    for s in panel.symbols:
        cat.write(s, panel.bars(s))
    back = cat.read_panel(["SOXS", "NVDA"], "2024-10-28", "2024-11-08")
    assert back.symbols == ("SOXS", "NVDA")
    assert back.index.equals(session_minutes("2024-10-28", "2024-11-08"))
    for f in ("open", "high", "low", "close", "volume", "vwap", "trade_count"):
        np.testing.assert_array_equal(getattr(back, f)[:, ::-1], getattr(panel, f))
    gaps = np.isnan(back.close[:, 0])
    assert gaps.sum() > 0 and np.isnan(back.open[gaps, 0]).all()  # never forward-filled
    assert cat.symbols() == ["NVDA", "SOXS"]
    assert cat.range("NVDA") == (panel.index[0], panel.index[-1])


def test_end_date_is_inclusive_and_missing_days_are_nan(tmp_path, panel):
    cat = Catalog(tmp_path)
    cat.write("NVDA", panel.bars("NVDA").loc[: "2024-11-01"])
    p = cat.read_panel(["NVDA"], "2024-11-01", "2024-11-04")
    assert len(p.index) == 2 * 390
    assert not np.isnan(p.close[:390]).any() and np.isnan(p.close[390:]).all()


def test_write_adds_only_missing_days_and_never_overwrites(tmp_path, panel):
    cat = Catalog(tmp_path)
    first = panel.bars("NVDA").loc["2024-10-28":"2024-10-29"]
    cat.write("NVDA", first)
    changed = panel.bars("NVDA").loc["2024-10-28":"2024-10-30"].copy()
    changed["close"] = changed["close"].clip(upper=changed["high"])
    changed[["open", "high", "low", "close"]] *= 2.0  # a re-import with different prices
    rep = cat.write("NVDA", changed)
    assert [str(d) for d in rep.days_skipped] == ["2024-10-28", "2024-10-29"]
    assert [str(d) for d in rep.days_written] == ["2024-10-30"]
    stored = cat.read_panel(["NVDA"], "2024-10-28", "2024-10-30").bars("NVDA")
    pd.testing.assert_series_equal(stored["close"].loc[:"2024-10-29"], first["close"], check_names=False,
                                   check_freq=False, check_index_type=False)
    assert not list(tmp_path.rglob("*.tmp"))


def test_unknown_symbol_and_bad_symbol_are_named(tmp_path, panel):
    cat = Catalog(tmp_path)
    with pytest.raises(DataError, match="AMD: no bars in catalog"):
        cat.read_panel(["AMD"], "2024-11-01", "2024-11-01")
    with pytest.raises(DataError, match=r"bad symbol '\.\./x'"):
        cat.write("../x", panel.bars("NVDA"))


def test_default_root_is_under_tierlab_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERLAB_HOME", str(tmp_path / "home"))
    assert Catalog().root == tmp_path / "home" / "catalog"


def test_a_write_that_fails_midway_leaves_the_catalog_as_it_was(tmp_path, monkeypatch):
    """A write spanning two months, with one month already stored, dies on its second rename."""
    import hashlib
    import os

    import data.catalog as catalog_module

    two_months = generate_panel("2024-10-30", "2024-11-04", ("AAPL",))
    cat = Catalog(tmp_path)
    cat.write("AAPL", two_months.bars("AAPL").loc[:"2024-10-30 23:59"])  # October's file holds Oct 30
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    calls = {"n": 0}
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # October moved aside and swapped in; November's rename fails
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(catalog_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        cat.write("AAPL", two_months.bars("AAPL"))
    monkeypatch.setattr(catalog_module.os, "replace", real_replace)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # no new month, October untouched, no temp or backup files left
    assert calls["n"] == 4  # Oct aside, Oct in, Nov in (fails), Oct restored
    assert [str(d) for d in Catalog(tmp_path).days("AAPL")] == ["2024-10-30"]
    cat.write("AAPL", two_months.bars("AAPL"))  # the same write, once the disk is fine, goes through
    assert [str(d) for d in Catalog(tmp_path).days("AAPL")] == ["2024-10-30", "2024-10-31", "2024-11-01", "2024-11-04"]


# --- issue 9 §4 -------------------------------------------------------------------------------


def _hashes(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fail_at", [1, 2, 3], ids=["moving-october-aside", "october-into-place", "november-into-place"])
def test_a_failed_rename_restores_the_stored_month_byte_for_byte(tmp_path, monkeypatch, fail_at):
    """October is already stored; a write adding Oct 31 and November dies at one of its renames."""
    import os

    import data.catalog as catalog_module

    bars = generate_panel("2024-10-30", "2024-11-04", ("AAPL",)).bars("AAPL")
    cat = Catalog(tmp_path)
    cat.write("AAPL", bars.loc[:"2024-10-30 23:59"])
    before = _hashes(tmp_path)
    calls = {"n": 0}
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(catalog_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        cat.write("AAPL", bars)
    monkeypatch.setattr(catalog_module.os, "replace", real_replace)
    assert _hashes(tmp_path) == before  # October's file back, byte for byte; no .bak, no .tmp, no November
    assert [str(d) for d in Catalog(tmp_path).days("AAPL")] == ["2024-10-30"]


def test_an_earlier_day_written_into_a_stored_month_keeps_it_sorted(tmp_path):
    import pyarrow.parquet as pq

    bars = generate_panel("2024-11-04", "2024-11-08", ("AMD",)).bars("AMD")
    cat = Catalog(tmp_path)
    cat.write("AMD", bars.loc["2024-11-06":])
    rep = cat.write("AMD", bars.loc[:"2024-11-05 23:59"])  # two earlier days into the same month
    assert [str(d) for d in rep.days_written] == ["2024-11-04", "2024-11-05"]
    ts = pq.read_table(tmp_path / "bars/symbol=AMD/month=2024-11/bars.parquet").column("timestamp").to_pandas()
    assert ts.is_monotonic_increasing and ts.is_unique and len(ts) == 5 * 390
    assert cat.range("AMD") == (pd.Timestamp("2024-11-04 14:30", tz="UTC"), pd.Timestamp("2024-11-08 20:59", tz="UTC"))
    back = cat.read_panel(["AMD"], "2024-11-04", "2024-11-08").bars("AMD")
    pd.testing.assert_frame_equal(back[list(bars.columns)], bars, check_freq=False, check_index_type=False,
                                  check_names=False)
