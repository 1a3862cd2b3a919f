"""Runs never overwrite each other; TIERLAB_<FIELD> settings apply; every flag has help; symbol lists."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from research.backtest import build_parser, main, split_symbols
from research.runs import RunDir, settings_hash
from strategies.params import Params
from tierlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DAY = ["--start", "2024-10-22", "--end", "2024-10-22"]
FILES = {"report.html", "orders.parquet", "decisions.parquet", "params.toml", "meta.json"}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(args)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _complete(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    meta = json.loads((folder / "meta.json").read_text())
    return FILES <= names and set(meta["files"]) == FILES


def test_runs_with_other_mode_params_or_symbols_keep_their_own_complete_folders(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports"
    p = tmp_path / "p.toml"
    p.write_text("[params]\ncutoff = 0.5\n")
    runs = [[*DAY], ["--mode", "relaxed", *DAY], ["--params", str(p), *DAY], ["--symbols", "NVDA,AMD,SOXS", *DAY]]
    seen = []
    for args in runs:
        rc, text, err = _run([*args, "--out", str(out)], capsys)
        assert rc == 0, err
        seen.append(Path(text.split("report: ")[1].split()[0]).parent)
    folders = sorted(d for d in out.iterdir() if d.is_dir() and not d.is_symlink())
    assert len(folders) == 4 and len(set(seen)) == 4
    assert all(_complete(f) for f in folders)
    assert (out / "latest").resolve() == seen[-1].resolve()
    # each folder's files are its own run's: modes, params and symbols differ as asked
    metas = [json.loads((d / "meta.json").read_text()) for d in seen]
    assert [m["mode"] for m in metas] == ["default", "relaxed", "default", "default"]
    assert metas[3]["symbols"] == ["NVDA", "AMD", "SOXS"]
    assert "cutoff = 0.5" in (seen[2] / "params.toml").read_text()
    assert Params.from_toml(seen[1] / "params.toml").cooldown_s == 120.0  # params.toml re-runs the same set
    first = pd.read_parquet(seen[0] / "orders.parquet")
    relaxed = pd.read_parquet(seen[1] / "orders.parquet")
    assert not first.equals(relaxed) and set(pd.read_parquet(seen[3] / "orders.parquet")["symbol"]) <= {
        "NVDA", "AMD", "SOXS"}
    assert "--mode relaxed" in metas[1]["command"] and metas[0]["tierlab_version"]
    # the same settings again land in the same folder (a re-run replaces its own files only)
    rc, _, _ = _run([*DAY, "--out", str(out)], capsys)
    assert rc == 0 and len([d for d in out.iterdir() if d.is_dir() and not d.is_symlink()]) == 4


def test_run_folder_hash_follows_params_and_symbols(tmp_path: Path) -> None:
    p = Params.preset("default")
    assert settings_hash(p, ["NVDA"]) == settings_hash(Params.preset("default"), ["NVDA"])
    assert settings_hash(p, ["NVDA"]) != settings_hash(p.replace(cooldown_s=600.0), ["NVDA"])
    assert settings_hash(p, ["NVDA"]) != settings_hash(p, ["NVDA", "AMD"])
    a = RunDir.create("tune", mode="default", params=p, root=tmp_path, argv=["research.tune", "--trials", "3"])
    a.finish(["report.html"])
    b = RunDir.create("compare", params={"modes": "default,relaxed"}, root=tmp_path)
    b.finish()
    assert a.path != b.path and (tmp_path / "latest").resolve() == b.path.resolve()
    assert json.loads((a.path / "meta.json").read_text())["command"].endswith("--trials 3")


def test_env_setting_changes_the_backtest_and_a_bad_value_is_one_line(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rc, base, _ = _run([*DAY, "--out", str(tmp_path / "a")], capsys)
    assert rc == 0
    monkeypatch.setenv("TIERLAB_COOLDOWN_S", "600")
    rc, slow, _ = _run([*DAY, "--out", str(tmp_path / "b")], capsys)
    assert rc == 0

    def cooldowns(text: str) -> int:
        return int(text.split("suppression breakdown")[1].split("cooldown")[1].split()[0].replace(",", ""))

    assert cooldowns(slow) > cooldowns(base)  # a 10-minute cooldown suppresses more signals
    run_b = Path(slow.split("report: ")[1].split()[0]).parent
    assert "cooldown_s = 600.0" in (run_b / "params.toml").read_text()
    monkeypatch.setenv("TIERLAB_COOLDOWN_S", "abc")
    rc, _, err = _run([*DAY, "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "TIERLAB_COOLDOWN_S" in err and "abc" in err
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.html"))


CLI_ARGS = {  # a run of each CLI that would start working (no keys needed before the parameters load)
    "research.backtest": [*DAY],
    "research.tune": ["--trials", "1", "--no-progress", *DAY],
    "live.sim": ["--replay", "2024-10-22", "--port", "0", "--speed", "0"],
    "research.compare": [*DAY, "--bootstrap", "10"],
    "research.llm": ["record", *DAY],
}


@pytest.mark.parametrize("var, value", [("TIERLAB_COOLDOWN_S", "abc"), ("TIERLAB_MODE", "fast")])
@pytest.mark.parametrize("cli", list(CLI_ARGS))
def test_bad_env_value_is_one_line_in_every_cli(cli: str, var: str, value: str, home: Path, tmp_path: Path) -> None:
    """Through the shared helper (Params.load): each CLI that builds parameters refuses the value, exit 2."""
    env = {"TIERLAB_HOME": str(home), var: value, "PATH": "/usr/bin:/bin"}
    args = [*CLI_ARGS[cli], *(["--out", str(tmp_path / "out")] if cli.startswith("research.") else [])]
    proc = subprocess.run([sys.executable, "-m", cli, *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert var in proc.stderr and value in proc.stderr
    assert not list(tmp_path.rglob("*.html"))  # nothing half-written


def test_env_setting_changes_a_tune_study_and_cannot_resume_one_made_without_it(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from research.tune import TuneConfig, backtest_problem, run_study

    cfg = TuneConfig(study="env", trials=1, progress=False, storage=f"sqlite:///{tmp_path / 'o.db'}",
                     start="2024-10-21", end="2024-10-25", train_days=2, test_days=1, purge_days=0, holdout_days=0,
                     min_trades=0)
    plain = backtest_problem(cfg)
    run_study(cfg, problem=plain)
    monkeypatch.setenv("TIERLAB_COOLDOWN_S", "600")
    slow = backtest_problem(cfg)
    assert (plain.base.cooldown_s, slow.base.cooldown_s) == (Params.preset("default").cooldown_s, 600.0)
    week = range(0, 5)
    assert plain.evaluate(plain.base, week).metrics != slow.evaluate(slow.base, week).metrics
    with pytest.raises(ConfigError, match="base_params"):  # the study's trials were scored on other params
        run_study(cfg, problem=slow)
    monkeypatch.setenv("TIERLAB_MODE", "relaxed")
    monkeypatch.delenv("TIERLAB_COOLDOWN_S")
    from research.tune_cli import parse_args

    relaxed = parse_args(["--trials", "1"])
    assert relaxed.mode == "relaxed" and relaxed.study == "tierlab-relaxed"  # TIERLAB_MODE picks the preset
    assert backtest_problem(relaxed).base.cooldown_s == 120.0


def test_env_setting_reaches_the_sim_costs(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sim's slippage and fees default to the parameters' (preset, then TIERLAB_<FIELD>)."""
    import live.sim.__main__ as sim_cli

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def capture(panel: object, cfg: object, **kw: object) -> None:
        seen["cfg"], seen["symbols"] = cfg, list(panel.symbols)  # type: ignore[attr-defined]
        raise Stop

    monkeypatch.setattr("live.sim.server.SimServer", capture)
    monkeypatch.setenv("TIERLAB_SLIPPAGE", "0.001")
    monkeypatch.setenv("TIERLAB_FEE_PER_ORDER", "1.5")
    with pytest.raises(Stop):
        sim_cli.main(["--replay", "2024-10-22", "--port", "0", "--symbols", "NVDA", "AMD"])
    cfg = seen["cfg"]
    assert (cfg.slippage, cfg.fee_per_order, cfg.fee_per_share) == (0.001, 1.5, 0.0)  # type: ignore[attr-defined]
    assert seen["symbols"] == ["NVDA", "AMD"]  # symbols by spaces
    with pytest.raises(Stop):
        sim_cli.main(["--replay", "2024-10-22", "--port", "0", "--slippage", "0", "--symbols", "NVDA,AMD"])
    assert seen["cfg"].slippage == 0.0  # type: ignore[attr-defined]  # a flag beats the environment
    assert seen["symbols"] == ["NVDA", "AMD"]  # symbols by commas


def test_params_load_is_the_shared_env_layer() -> None:
    """The helper every CLI calls: preset, then file, then TIERLAB_<FIELD>; bad values name the variable."""
    assert Params.load("default", env={"TIERLAB_COOLDOWN_S": "600"}).cooldown_s == 600.0
    assert Params.load("relaxed", env={}).cooldown_s == 120.0
    with pytest.raises(ConfigError, match="TIERLAB_COOLDOWN_S"):
        Params.load("default", env={"TIERLAB_COOLDOWN_S": "abc"})


@pytest.mark.parametrize("raw", [["NVDA,AMD"], ["NVDA", "AMD"], ["NVDA, AMD"], ["nvda amd"], ["NVDA,", "AMD,NVDA"]])
def test_symbol_lists_take_commas_or_spaces(raw: list[str]) -> None:
    assert split_symbols(raw) == ["NVDA", "AMD"]


def test_symbols_by_spaces_on_the_command_line(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = _run(["--symbols", "NVDA", "AMD", "SOXS", *DAY, "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert "3 symbols" in text


def test_every_flag_has_help_and_help_lists_the_reason_codes() -> None:
    ap = build_parser()
    for action in ap._actions:
        assert action.help, f"{action.option_strings} has no help text"
    text = ap.format_help()
    for code in ("evidence", "in_position", "token", "cooldown", "direction_lock", "basket_entry"):
        assert code in text
    assert "TIERLAB_COOLDOWN_S" in text


HEAVY = ("vectorbt", "plotly", "optuna", "numba", "pandas", "aiohttp", "alpaca", "numpy")
# live.sim is left out: `python -m live.sim` imports the live.sim package first, whose __init__ imports
# the engine and the server (numba, pandas, aiohttp); its own __main__ imports them only in main().
FAST_HELP = ("research.backtest", "research.tune", "research.compare", "research.llm", "data", "live.sim")


@pytest.mark.parametrize("cli", FAST_HELP)
def test_help_answers_without_importing_the_heavy_libraries(cli: str) -> None:
    code = ("import sys, runpy; sys.argv=['x','--help']\n"
            f"try: runpy.run_module({cli!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit: pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]", f"--help imported {proc.stdout.splitlines()[-1]}"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    import data.__main__ as data_cli
    import live.sim.__main__ as sim_cli
    from research import compare_cli, llm_cli, tune_cli

    return {"research.backtest": build_parser(), "research.tune": tune_cli.build_parser(),
            "research.compare": compare_cli.build_parser(), "research.llm": llm_cli.build_parser(),
            "data": data_cli.build_parser(), "live.sim": sim_cli.build_parser()}


@pytest.mark.parametrize("cli", ["research.backtest", "research.tune", "research.compare", "research.llm", "data",
                                 "live.sim"])
def test_every_flag_of_every_cli_has_help(cli: str) -> None:
    todo = [(cli, _parsers()[cli])]
    while todo:
        name, ap = todo.pop()
        for action in ap._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
    if cli != "data":  # the CLIs that build parameters say how the environment layer reaches them
        assert "TIERLAB_<FIELD>" in (_parsers()[cli].epilog or ""), cli


def test_data_fetch_takes_symbols_by_commas_and_spaces(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import data.__main__ as data_cli

    seen: list[list[str]] = []
    monkeypatch.setattr("data.importers.alpaca.fetch_cli", lambda symbols, *a: seen.append(symbols) or "ok")
    assert data_cli.main(["fetch", "--symbols", "NVDA, amd", "SOXS", "--start", "2024-10-22",
                          "--end", "2024-10-22"]) == 0
    assert seen == [["NVDA", "AMD", "SOXS"]] and capsys.readouterr().out.strip() == "ok"


def test_an_empty_run_says_why(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = _run(["--symbols", "QQQ", *DAY, "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert "no trades:" in text and "QQQ is only a conflict partner" in text
    report = (Path(text.split("report: ")[1].split()[0])).read_text()
    assert 'id="empty"' in report and "QQQ is only a conflict partner" in report


def test_risk_free_rate_is_a_parameter(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def sharpe(text: str) -> float:
        return float(text.split("  sharpe ")[1].split()[0])

    week = ["--start", "2024-10-21", "--end", "2024-10-25"]
    _, zero, _ = _run([*week, "--out", str(tmp_path)], capsys)
    _, high, _ = _run([*week, "--risk-free", "0.5", "--out", str(tmp_path)], capsys)
    assert sharpe(high) < sharpe(zero)


def test_cold_kernel_cache_says_it_is_compiling_and_shows_progress(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import io as _io

    from research.backtest import compile_notice

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    err = _io.StringIO()
    with compile_notice(stream=err, every_s=0.05):
        (tmp_path / "cache").mkdir()
        for i in range(3):
            (tmp_path / "cache" / f"k{i}.nbc").write_bytes(b"")
            time.sleep(0.1)
    text = err.getvalue()
    assert text.startswith("first run: compiling numba kernels") and "compiling kernels: " in text
    assert "kernels compiled and cached (3 files)" in text
    for i in range(4):
        (tmp_path / "cache" / f"k{i}.nbi").write_bytes(b"")
    warm = _io.StringIO()
    with compile_notice(stream=warm, every_s=0.05):
        time.sleep(0.1)
    assert warm.getvalue() == ""  # a warm cache: nothing to say
