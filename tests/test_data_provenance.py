"""Real bars and the synthetic sample never mix (issue 9 §2): the catalog records where each symbol-day
came from, `research.backtest` writes the sample only into an empty catalog, a range mixing the two
kinds or holding no bars is refused in one line, and importer mistakes (--label end, --repair) are named."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data.__main__ import main as data_main
from data.catalog import Catalog
from data.sample import ensure_sample, generate_panel, sample_events
from research.backtest import main as backtest_main

REAL_WEEK = ("2025-03-03", "2025-03-07")
BASKET = ("NVDA", "AMD", "AVGO", "SOXS")  # a custom universe: the semis basket and its inverse ETF
END_HINT = "these look like bars labelled by their end: try --label end"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def real_csv(path: Path, symbol: str, start: str, end: str, *, seed: int = 99, label_end: bool = False) -> Path:
    """A vendor-style export of one symbol's minute bars (New York offsets, vwap and trade count, gaps left out)."""
    bars = generate_panel(start, end, (symbol,), seed=seed).bars(symbol).dropna()
    times = bars.index + (pd.Timedelta(minutes=1) if label_end else pd.Timedelta(0))
    out = bars.assign(datetime=[t.tz_convert("America/New_York").isoformat() for t in times])
    out[["datetime", "open", "high", "low", "close", "volume", "vwap", "trade_count"]].to_csv(path, index=False)
    return path


def run_backtest(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`python -m research.backtest ARGS` in-process from `cwd`: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = backtest_main(args)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    err = err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_real_bars_in_a_fresh_catalog_stay_real_through_a_backtest(_isolated_home, tmp_path, monkeypatch):
    root = _isolated_home / "catalog"
    for s in BASKET:  # lower-case symbols are upper-cased, not refused
        f = real_csv(tmp_path / f"{s}.csv", s, *REAL_WEEK)
        assert data_main(["import", str(f), "--symbol", s.lower()]) == 0
    cat = Catalog(root)
    assert cat.symbols() == sorted(BASKET)
    days = {s: cat.origins(s) for s in BASKET}
    assert all(len(d) == 5 and set(d.values()) == {"file"} for d in days.values())
    before = snapshot(root)

    rc, out, err = run_backtest(["--mode", "relaxed", "--symbols", ",".join(BASKET)], tmp_path, monkeypatch)
    assert rc == 0, err
    assert out.splitlines()[0].startswith(f"tiered_basket: {REAL_WEEK[0]} .. {REAL_WEEK[1]}, 4 symbols")
    assert snapshot(root) == before  # no sample months, no sample.json, no events file: nothing written
    assert {s: Catalog(root).origins(s) for s in BASKET} == days
    report = Path(out.split("report: ", 1)[1].splitlines()[0].strip())
    orders = pd.read_parquet(report.parent / "orders.parquet")
    assert len(orders) and (orders["time"].dt.tz_convert("America/New_York").dt.year == 2025).all()


def test_backtest_on_an_empty_catalog_still_writes_the_sample(_isolated_home, tmp_path, monkeypatch):
    rc, _, err = run_backtest(["--start", "2024-10-22", "--end", "2024-10-22", "--symbols", "NVDA,SQQQ,QQQ"],
                                tmp_path, monkeypatch)
    assert rc == 0, err
    root = _isolated_home / "catalog"
    assert json.loads((root / "sample.json").read_text())["synthetic"] is True
    assert set(Catalog(root).origins("NVDA").values()) == {"sample"}


@pytest.fixture(scope="module")
def sample_week(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog root holding one synthetic sample week (2024-11-04 .. 2024-11-08), built once."""
    root = tmp_path_factory.mktemp("sample_week") / "catalog"
    ensure_sample(Catalog(root), "2024-11-04", "2024-11-08")
    return root


@pytest.fixture
def mixed_home(sample_week: Path, _isolated_home: Path, tmp_path: Path) -> Path:
    """A TIERLAB_HOME whose catalog holds a copy of the sample week."""
    import shutil

    shutil.copytree(sample_week, _isolated_home / "catalog")
    return _isolated_home


def test_real_bars_replace_sample_days_and_say_so(mixed_home, tmp_path, capsys):
    root = mixed_home / "catalog"
    events = sample_events(generate_panel("2024-11-04", "2024-11-08"))
    assert len(events)  # the sample week has news-like jumps with filings
    sym = events["ticker"].iloc[0]
    day = str(events["time"].iloc[0].tz_convert("America/New_York").date())
    before = Catalog(root).read_events()
    f = real_csv(tmp_path / "real.csv", sym, day, day)
    assert data_main(["import", str(f), "--symbol", sym]) == 0
    out = capsys.readouterr().out
    assert f"replaced the synthetic sample bars of 1 days: {day}" in out, out
    cat = Catalog(root)
    origins = {str(d): o for d, o in cat.origins(sym).items()}
    assert origins[day] == "file" and sum(o == "sample" for o in origins.values()) == 4
    meta = pq.read_schema(root / f"bars/symbol={sym}/month={day[:7]}/bars.parquet").metadata
    assert meta[b"tierlab.source"] == b"mixed"
    real = pd.read_csv(f)
    stored = cat.read_panel([sym], day, day).bars(sym).dropna()
    assert len(stored) == len(real) and stored["close"].tolist() == real["close"].tolist()
    after = cat.read_events()
    def on_day(ev: pd.DataFrame) -> pd.Series:
        return (ev["ticker"] == sym) & (ev["time"].dt.tz_convert("America/New_York").dt.date.astype(str) == day)

    assert on_day(before).sum() >= 1 and not on_day(after).any()
    assert len(after) == len(before) - on_day(before).sum()  # the other filings stay
    # importing the same real day again is skipped, never replaced
    assert data_main(["import", str(f), "--symbol", sym]) == 0
    assert "wrote 0 bars on 0 new days, skipped 1 days" in capsys.readouterr().out
    # the sample (asked for again) does not overwrite the real day
    assert data_main(["sample", "--start", "2024-11-04", "--end", "2024-11-08"]) == 0
    assert Catalog(root).origins(sym)[pd.Timestamp(day).date()] == "file"


def test_a_range_mixing_sample_and_real_bars_is_refused(mixed_home, tmp_path, monkeypatch, capsys):
    f = real_csv(tmp_path / "nvda.csv", "NVDA", "2024-11-06", "2024-11-06")
    assert data_main(["import", str(f), "--symbol", "NVDA"]) == 0
    before = snapshot(mixed_home / "catalog")
    rc, _, err = run_backtest(["--start", "2024-11-04", "--end", "2024-11-08", "--out", str(tmp_path / "r")],
                              tmp_path, monkeypatch)
    assert rc == 2
    line = one_line(err)
    assert "mixes synthetic sample bars" in line and "with real bars (NVDA 2024-11-06)" in line
    assert not (tmp_path / "r").exists() and snapshot(mixed_home / "catalog") == before
    # without dates, a backtest of the symbol's real days alone is what the default range picks
    lo, hi = Catalog(mixed_home / "catalog").resolve_range(["NVDA"])
    assert str(lo) == str(hi) == "2024-11-06"


def test_a_range_with_no_bars_for_the_symbols_is_refused(_isolated_home, tmp_path, monkeypatch):
    for day in ("2025-01-06", "2025-04-07"):  # two real days three months apart: a gap in the catalog
        for s in ("NVDA", "AMD"):
            f = real_csv(tmp_path / f"{s}-{day}.csv", s, day, day)
            assert data_main(["import", str(f), "--symbol", s]) == 0
    rc, _, err = run_backtest(["--symbols", "NVDA,AMD", "--start", "2025-02-03", "--end", "2025-02-07",
                               "--out", str(tmp_path / "r")], tmp_path, monkeypatch)
    assert rc == 2
    line = one_line(err)
    assert "no bars for NVDA, AMD from 2025-02-03 to 2025-02-07" in line
    assert "days found there for the requested symbols: none" in line and "2025-01-06, 2025-04-07" in line
    assert not (tmp_path / "r").exists()


def test_end_labelled_bars_read_as_starts_get_the_hint(tmp_path, capsys):
    f = real_csv(tmp_path / "end.csv", "AAPL", "2025-03-03", "2025-03-04", label_end=True)
    root = tmp_path / "cat"
    assert data_main(["import", str(f), "--symbol", "AAPL", "--root", str(root)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "(2025-03-03 16:00 New York)" in line and "field timestamp" in line and line.endswith(END_HINT)
    assert not root.exists()
    assert data_main(["import", str(f), "--symbol", "AAPL", "--label", "end", "--root", str(root)]) == 0
    assert len(Catalog(root).days("AAPL")) == 2


def test_repair_refuses_to_drop_the_close_bars_or_more_than_one_percent(tmp_path, capsys):
    root = tmp_path / "cat"
    seed = real_csv(tmp_path / "seed.csv", "AAPL", "2025-02-28", "2025-02-28")
    assert data_main(["import", str(seed), "--symbol", "AAPL", "--root", str(root)]) == 0
    capsys.readouterr()
    before = snapshot(root)
    # end-labelled: --repair would drop the two 16:00 bars (0.3%) and import the rest a minute late
    f = real_csv(tmp_path / "end.csv", "AAPL", "2025-03-03", "2025-03-04", label_end=True)
    assert data_main(["import", str(f), "--symbol", "AAPL", "--repair", "--root", str(root)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--repair would drop 2 of 780 rows (0.3%" in line and END_HINT in line and "--force" in line
    assert snapshot(root) == before
    # a start-labelled file with 5 bad rows of 390 (1.3%): refused, naming the share; --force imports the rest
    g = real_csv(tmp_path / "bad.csv", "AAPL", "2025-03-05", "2025-03-05")
    body = pd.read_csv(g)
    body.loc[[10, 20, 30, 40, 50], "high"] = body.loc[[10, 20, 30, 40, 50], "low"] - 1
    body.to_csv(g, index=False)
    assert data_main(["import", str(g), "--symbol", "AAPL", "--repair", "--root", str(root)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--repair would drop 5 of 390 rows (1.3%, more than 1%)" in line and "high is below low" in line
    assert END_HINT not in line and snapshot(root) == before
    assert data_main(["import", str(g), "--symbol", "AAPL", "--repair", "--force", "--root", str(root)]) == 0
    assert "dropped 5 rows where high is below low" in capsys.readouterr().out
    assert len(Catalog(root).read_panel(["AAPL"], "2025-03-05", "2025-03-05").bars("AAPL").dropna()) == 385
