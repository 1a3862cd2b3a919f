"""The README's commands run: every command in its code blocks that needs no keys, in a scratch folder.

Each command line of the README's shell blocks is classified: run (with a short range where the
command leaves the range open, and fewer tuning trials), or skipped for a stated reason (needs keys,
a file of your own, or is the test suite itself). A command the rules do not know fails the test, so
a new README command cannot go untested and an old one cannot drift. The Python block runs as is.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.catalog import Catalog
from data.sample import ensure_sample

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHORT = ["--start", "2024-10-22", "--end", "2024-10-22"]

SKIP = (  # (pattern, reason): a command matching it is not run
    (r"^make test\b", "the test suite itself"),
    (r"^make setup$", "the venv exists (make -o .venv/.installed is used for the others)"),
    (r"^make (bench|lint)\b|benchmarks/", "benchmarks take minutes; run by `make bench`"),
    (r"ALPACA_|^python -m data fetch\b", "needs Alpaca keys"),
    (r"^python -m research\.llm\b", "asks an LLM endpoint (keys)"),
    (r"^python -m data (import|events) ", "needs a file of your own (placeholder name)"),
    (r"--storage postgresql", "the same CLI as `make tune`; PostgreSQL storage is tests/test_tune_workers.py"),
    (r"^make live-paper\b|^python -m live (status|kill)\b",
     "a live session with Redis and live.sim (minutes): tests/test_live_paper.py runs it, status and kill"),
)


def shell_commands(text: str) -> list[str]:
    """Command lines of the README's untagged code blocks (continuations joined, comments cut)."""
    out: list[str] = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang:  # ```python runs separately; ```text is output
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.split(r"\s{2,}#|\s#\s", line)[0].strip()
            out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def python_blocks(text: str) -> list[str]:
    """The README's ```python blocks."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def skip_reason(cmd: str) -> str | None:
    """Why a command is not run, or None."""
    return next((why for pat, why in SKIP if re.search(pat, cmd)), None)


def has_range(args: list[str]) -> bool:
    return any(a.startswith("--start") for a in args)


def env_prefix(cmd: str) -> tuple[dict[str, str], str]:
    """`TIERLAB_X=1 make backtest` -> ({"TIERLAB_X": "1"}, "make backtest")."""
    args = shlex.split(cmd)
    env = {}
    while args and re.match(r"^[A-Z_][A-Z0-9_]*=", args[0]):
        k, v = args.pop(0).split("=", 1)
        env[k] = v
    return env, shlex.join(args)


def runnable(cmd: str, out: Path) -> list[str]:
    """The argv that runs `cmd` here: make without re-installing, a short range, a scratch --out."""
    args = shlex.split(env_prefix(cmd)[1])
    if args[:2] == ["make", "backtest"]:
        extra = next((a for a in args if a.startswith("ARGS=")), "ARGS=")[5:]
        extra = f"{extra} --out {out}" + ("" if "--start" in extra else " " + " ".join(SHORT))
        return ["make", "-s", "-o", ".venv/.installed", *[a for a in args[1:] if not a.startswith("ARGS=")],
                f"ARGS={extra.strip()}"]
    if args[:2] == ["make", "tune"]:
        return ["make", "-s", "-o", ".venv/.installed", "tune", "TRIALS=2", "ARGS=--no-progress"]
    if args[:2] == ["make", "compare"]:
        return ["make", "-s", "-o", ".venv/.installed", *args[1:], f"ARGS={' '.join(SHORT)}"]
    if args[:3] == ["python", "-m", "research.backtest"] or args[:3] == ["python", "-m", "research.compare"]:
        return [sys.executable, *args[1:], *([] if has_range(args) else SHORT), "--out", str(out)]
    if args[:3] == ["python", "-m", "research.tune"]:
        return [sys.executable, *args[1:], "--trials", "2", "--no-progress"]
    raise AssertionError(f"README command not covered by tests/test_readme.py: {cmd!r} (add a rule)")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A working folder like a fresh clone's (the repo's Makefile and venv) and a sample catalog."""
    work = tmp_path_factory.mktemp("readme")
    home = work / "home"
    ensure_sample(Catalog(home / "catalog"))
    (work / "Makefile").symlink_to(ROOT / "Makefile")
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "TIERLAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("MAKEFLAGS", None)
    return work, env


def test_readme_shell_commands_are_all_classified() -> None:
    cmds = shell_commands(README.read_text())
    assert any(c.startswith("make backtest") for c in cmds) and any("research.tune" in c for c in cmds)
    for cmd in cmds:
        if not skip_reason(cmd) and not cmd.startswith("python -m live.sim"):
            runnable(cmd, Path("reports"))  # raises for an unknown command


def test_readme_keyless_commands_run(scratch: tuple[Path, dict[str, str]]) -> None:
    work, env = scratch
    cmds = [c for c in shell_commands(README.read_text()) if not skip_reason(c)]
    # tuning first: the backtest example reads the parameters `make tune` writes
    cmds.sort(key=lambda c: 0 if "tune" in c and "--params" not in c else 1)
    ran = []
    for cmd in cmds:
        if cmd.startswith("python -m live.sim"):
            continue  # a server: test_readme_sim_command_serves
        argv = runnable(cmd, work / "reports")
        proc = subprocess.run(argv, cwd=work, env={**env, **env_prefix(cmd)[0]}, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"
        ran.append(cmd)
        if "backtest" in cmd:
            assert "report: " in proc.stdout, cmd
            report = Path(proc.stdout.split("report: ")[1].split()[0])
            report = report if report.is_absolute() else work / report
            assert report.is_file() and (report.parent / "params.toml").is_file(), cmd
    assert len(ran) >= 4, ran
    assert (work / "reports" / "latest").exists()


def test_readme_python_block_runs(scratch: tuple[Path, dict[str, str]]) -> None:
    work, env = scratch
    for block in python_blocks(README.read_text()):
        proc = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_sim_command_serves(scratch: tuple[Path, dict[str, str]]) -> None:
    work, env = scratch
    cmds = [c for c in shell_commands(README.read_text()) if c.startswith("python -m live.sim")]
    assert cmds
    for cmd in cmds:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, *shlex.split(cmd)[1:], "--port", str(port)], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            up = False
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    up = True
                    break
                except OSError:
                    time.sleep(0.3)
            assert up, f"{cmd}: nothing listening on {port}; exit {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
