"""`python -m research.backtest`: summary, its own run folder, a report a browser renders, one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from research.backtest import main

CHROMIUM = Path("/usr/bin/chromium")
WEEK = ["--start", "2024-10-21", "--end", "2024-10-25"]
DAY = ["--start", "2024-10-22", "--end", "2024-10-22"]


def run_folder(out: Path) -> Path:
    """The newest run folder under `out` (what `latest` points at)."""
    latest = out / "latest"
    assert latest.is_symlink(), f"no latest link in {out}"
    return latest.resolve()


@pytest.fixture(scope="module")
def week_run(sample_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """One CLI run over the first sample week (module-scoped: the report tests share it)."""
    out = tmp_path_factory.mktemp("reports")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIERLAB_HOME", str(sample_home))
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["--mode", "relaxed", *WEEK, "--out", str(out)])
    finally:
        mp.undo()
    return rc, buf.getvalue(), out


def test_cli_prints_summary_and_writes_report_and_parquet(week_run: tuple[int, str, Path]) -> None:
    rc, text, out = week_run
    assert rc == 0
    for needle in ("total_return", "sharpe", "max_drawdown", "suppression breakdown", "below_cutoff", "cooldown",
                   "strong_signal_rate", "flip_flops", "token_overflow_rate"):
        assert needle in text
    run = run_folder(out)
    assert run.name.startswith("backtest-relaxed-2024-10-21_2024-10-25-")
    assert {"report.html", "orders.parquet", "decisions.parquet", "params.toml", "meta.json"} <= {
        p.name for p in run.iterdir()}
    html = run / "report.html"
    text_html = html.read_text()
    assert 'src="http' not in text_html  # no remote script: plotly.js is a local file, written once
    scripts = re.findall(r'<script src="([^"]+)"', text_html)
    assert scripts and all((run / s).resolve().is_file() for s in scripts)
    assert len(list(out.glob("plotly-*.min.js"))) == 1
    orders = pd.read_parquet(run / "orders.parquet")
    decisions = pd.read_parquet(run / "decisions.parquet")
    assert len(orders) > 10 and {"time", "symbol", "side", "qty", "price", "fees", "reason"} <= set(orders.columns)
    assert (orders["time"] > orders["decision_time"]).all()
    assert orders["time"].min() >= pd.Timestamp("2024-10-21 13:30", tz="UTC")
    assert orders["time"].max() < pd.Timestamp("2024-10-26", tz="UTC")
    assert len(decisions) > len(orders) and "reason" in decisions


def _chromium() -> Path:
    if not CHROMIUM.exists():
        msg = "no /usr/bin/chromium (install: apt-get install -y chromium) - report not rendered"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg)  # .ci/run installs it: a missing browser in CI is a broken CI, not a skip
        pytest.skip(msg)
    return CHROMIUM


@pytest.fixture(scope="module")
def sample_run(sample_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make backtest` on the whole bundled sample (its report is the one a new user opens)."""
    out = tmp_path_factory.mktemp("sample_reports")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIERLAB_HOME", str(sample_home))
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--out", str(out)]) == 0
    finally:
        mp.undo()
    return run_folder(out)


def _text(fragment: str) -> str:
    import html

    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)))


def _table(dom: str, table_id: str) -> str:
    start = dom.index(f'id="{table_id}"')
    return dom[start: dom.index("</table>", start)]


def test_sample_report_renders_in_headless_chromium_with_every_section(sample_run: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    html = sample_run / "report.html"
    assert html.stat().st_size < 2_000_000, f"sample report is {html.stat().st_size:,} bytes"
    shot = tmp_path / "report.png"
    args = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=8000", "--window-size=1400,900"]
    dom = subprocess.run([*args, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    subprocess.run([*args, f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
    # plotly drew the equity figure (strategy and both benchmarks) and the drawdown into SVG
    first = dom[dom.index('id="fig0"'):]
    assert 'class="main-svg"' in first[:200_000] and 'class="scatterlayer' in first[:400_000]
    assert ">Equity<" in first[:400_000] and ">Drawdown<" in first[:400_000]
    assert "Buy &amp; hold QQQ" in first[:400_000]
    # the headline: figures with units, next to both benchmarks
    head = _text(_table(dom, "headline"))
    for needle in ("Total return", "CAGR", "Sharpe", "Sortino", "Max drawdown (bar-level)", "Win rate",
                   "Profit factor", "Trades", "Exposure", "Fees", "Slippage cost", "Buy & hold QQQ", "equal weight"):
        assert needle in head, needle
    assert re.search(r"Total return -?[\d.]+% -?[\d.]+% -?[\d.]+%", head), head[:300]
    assert re.search(r"Slippage cost \(modelled\) \$[\d,]+\.\d\d", head)
    assert re.search(r"Trades \(closed\) \d[\d,]* —", head)  # an integer, no decimals
    # the trade list, sortable, one row per round trip
    trades = pd.read_parquet(sample_run / "orders.parquet")
    rows = _table(dom, "trades").count("<tr>") - 1
    assert rows > 10 and rows <= len(trades)
    assert "sortable" in dom[dom.index('id="trades"') - 60: dom.index('id="trades"')]
    for col in ("entry_time", "exit_time", "symbol", "qty", "entry_price", "exit_price", "pnl", "return",
                "exit_reason", "mae", "mfe", "hold"):
        assert f">{col}" in _table(dom, "trades")[:3000], col
    assert "NVDA" in _text(_table(dom, "per-symbol")) and "exit_signal" in _text(_table(dom, "per-reason"))
    prov = _text(_table(dom, "provenance"))
    assert "synthetic sample" in prov and "python -m research.backtest" in prov and "tierlab version" in prov
    params = _text(_table(dom, "parameters"))
    assert "cooldown_s 180.0" in params and "cutoff" in params
    assert "in_position" in _text(_table(dom, "glossary"))
    # the trades chart shows one symbol at a time with a selector; the basket chart is there too
    assert "Trades on price — " in dom and 'class="updatemenu-container"' in dom
    for title in ("Signals by reason per session day", "Basket routing events"):
        assert f">{title}<" in dom, title
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--symbols", "NVDA,ZZZZ"], "ZZZZ"),
        (["--start", "2024-11-05", "--end", "2024-11-01"], "empty range"),
        (["--start", "2023-01-03", "--end", "2023-01-10"], "outside the catalog"),
        (["--start", "2024-10-26", "--end", "2024-10-27"], "no trading sessions"),
        (["--mode", "fast"], "invalid choice"),
    ],
    ids=["unknown_symbol", "empty_range", "outside_catalog", "weekend_only", "bad_mode"],
)
def test_bad_requests_fail_with_one_line(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], needle: str) -> None:
    try:
        rc = main([*args, "--out", str(tmp_path)])
    except SystemExit as exc:  # a usage error from argument parsing
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not list(tmp_path.rglob("*.html"))


def test_contradicting_params_fail_with_one_line(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[params]\ncutoff = 0.1\ncutoff_delta = -0.2\n")
    assert main(["--params", str(bad), *WEEK, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cutoff" in err and str(bad) in err


def test_cli_runs_as_a_module_on_a_symbol_subset(home: Path, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "research.backtest", "--symbols", "NVDA,AMD,AVGO,SOXS", *WEEK,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "4 symbols" in proc.stdout and "report:" in proc.stdout
    orders = pd.read_parquet(run_folder(tmp_path) / "orders.parquet")
    assert set(orders["symbol"]) <= {"NVDA", "AMD", "AVGO", "SOXS"} and len(orders) > 0


def test_params_file_names_its_mode_and_overrides_the_preset(home: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "p.toml"
    good.write_text('[params]\nmode = "relaxed"\ncutoff = 0.5\n')
    day = ["--start", "2024-10-22", "--end", "2024-10-22"]
    assert main(["--params", str(good), *day, "--out", str(tmp_path)]) == 0
    assert "12 symbols" in capsys.readouterr().out
    run = run_folder(tmp_path)
    assert run.name.startswith("backtest-relaxed-2024-10-22_2024-10-22-")
    tail = (run / "report.html").read_text()[-200_000:]
    assert re.search(r"<th>cutoff</th>\s*<td[^>]*>0.5</td>", tail)
    assert re.search(r"<th>cooldown_s</th>\s*<td[^>]*>120.0</td>", tail)
    assert "cutoff = 0.5" in (run / "params.toml").read_text()
