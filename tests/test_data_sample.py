"""The synthetic sample: reproducible to the byte, labelled synthetic, and market-like where the rules look."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data.__main__ import main
from data.catalog import Catalog
from data.events import events_mask
from data.sample import UNIVERSE, ensure_sample, generate_panel
from data.universe import MEGATECH, SEMIS


def _files(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "a"
    ensure_sample(Catalog(root))
    return root


@pytest.fixture(scope="module")
def panel():
    return generate_panel()


def test_sample_is_byte_identical_across_runs(sample_root, tmp_path, capsys):
    assert main(["sample", "--root", str(tmp_path / "b")]) == 0
    assert "12 symbols" in capsys.readouterr().out
    a, b = _files(sample_root), _files(tmp_path / "b")
    assert len(a) == 12 * 3 + 2  # 12 symbols x 3 months, events, sample.json
    assert a == b


def test_sample_says_it_is_synthetic_and_covers_the_default_range(sample_root):
    info = json.loads((sample_root / "sample.json").read_text())
    assert info["synthetic"] is True and info["start"] == "2024-10-21" and info["end"] == "2024-12-06"
    assert info["symbols"] == list(UNIVERSE)
    meta = pq.read_schema(sample_root / "bars/symbol=QQQ/month=2024-11/bars.parquet").metadata
    assert meta[b"tierlab.source"] == b"synthetic"
    cat = Catalog(sample_root)
    assert cat.symbols() == sorted(UNIVERSE)
    assert str(cat.days("NVDA")[0]) == "2024-10-21" and str(cat.days("NVDA")[-1]) == "2024-12-06"
    assert len(cat.read_panel(["NVDA"], "2024-11-29", "2024-11-29").index) == 210


def test_ensure_sample_is_a_no_op_once_present(sample_root):
    before = _files(sample_root)
    ensure_sample(Catalog(sample_root))
    assert _files(sample_root) == before


def _returns(panel, sym):
    c = panel.close[:, panel.col(sym)]
    return np.diff(np.log(c))


def test_baskets_co_move_and_inverse_etfs_run_minus_three_x(panel):
    r = {s: _returns(panel, s) for s in UNIVERSE}
    ok = {s: ~np.isnan(v) for s, v in r.items()}
    def corr(a, b):
        m = ok[a] & ok[b]
        return np.corrcoef(r[a][m], r[b][m])[0, 1]
    assert corr("AAPL", "MSFT") > 0.4 and corr("NVDA", "AMD") > 0.4
    assert corr("QQQ", "AAPL") > 0.5
    assert corr("SQQQ", "QQQ") < -0.9 and corr("SOXS", "NVDA") < -0.5
    m = ok["SQQQ"] & ok["QQQ"]
    beta = np.polyfit(r["QQQ"][m], r["SQQQ"][m], 1)[0]
    assert -3.3 < beta < -2.7


def test_only_the_thin_etfs_miss_minutes(panel):
    missing = dict(zip(panel.symbols, np.isnan(panel.close).mean(axis=0), strict=True))
    assert 0.01 < missing["SQQQ"] < 0.1 and 0.01 < missing["SOXS"] < 0.1
    assert all(missing[s] == 0 for s in UNIVERSE if s not in ("SQQQ", "SOXS"))


def test_volume_and_volatility_are_u_shaped(panel):
    local = panel.index.tz_convert("America/New_York")
    mins = local.hour * 60 + local.minute - 570
    open_, mid, close = (mins < 30), (mins >= 150) & (mins < 210), (mins >= 360)
    vol = panel.volume[:, panel.col("AAPL")]
    assert vol[open_].mean() > 1.5 * vol[mid].mean() and vol[close].mean() > 1.5 * vol[mid].mean()
    r = np.abs(np.r_[np.nan, _returns(panel, "AAPL")])
    assert np.nanmean(r[open_]) > 1.3 * np.nanmean(r[mid])


def test_baskets_fall_together_and_gaps_and_jumps_exist(panel):
    mega = np.column_stack([panel.close[:, panel.col(s)] for s in MEGATECH])
    r5 = mega[5:] / mega[:-5] - 1
    falling = ((r5 < -0.002).sum(axis=1) >= 4)
    days = len(set(panel.index.date))
    assert falling.sum() / days > 3  # several megatech members down together for 5 minutes, often
    semis = np.column_stack([panel.close[:, panel.col(s)] for s in SEMIS])
    assert ((semis[5:] / semis[:-5] - 1 < -0.002).all(axis=1)).sum() / days > 3
    first = np.r_[False, panel.index[1:].date != panel.index[:-1].date]
    gaps = np.abs(panel.open[first, panel.col("MSFT")] / panel.close[np.roll(first, -1), panel.col("MSFT")] - 1)
    assert np.median(gaps) > 0.002
    assert len(panel.meta["jumps"]) >= 15


def test_sample_events_sit_on_jump_bars(sample_root, panel):
    ev = Catalog(sample_root).read_events()
    assert set(ev["ticker"]) <= {"GOOGL", "AMD", "AVGO"} and (ev["form"] == "8-K").all()
    weeks = len(set(panel.index.isocalendar().week))
    assert 1 <= len(ev) / weeks <= 6
    mask = events_mask(ev, panel.index, panel.symbols)
    assert mask.sum() == len(ev)
    for t, j in zip(*np.nonzero(mask), strict=True):
        move = abs(panel.close[t, j] / panel.open[t, j] - 1)
        assert move > 0.008, (panel.index[t], panel.symbols[j], move)
