"""`make live-paper` without keys: it finishes with KPIs and a report; the status endpoints answer
during the run; `python -m live kill` cancels the working orders and flattens every position.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), AUTO_MODE="1", TIERLAB_HOME=str(home))
    env.pop("ALPACA_API_KEY", None)
    env.pop("ALPACA_SECRET_KEY", None)
    return env


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def test_make_live_paper_offline_report_status_and_kill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "reports"
    env = _env(home)
    env.pop("REDIS_URL", None)  # the private server path
    proc = subprocess.Popen([sys.executable, "-m", "tierlab.live_paper", "--quiet", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "err.log", "wb"),
                            text=True)
    head = ""
    while "kill switch:" not in head:
        line = proc.stdout.readline()
        assert line, (tmp_path / "err.log").read_text()[-2000:]
        head += line
    status = re.search(r"status at (http://\S+)/portfolio/summary", head).group(1)
    kill_cmd = re.search(r"kill switch: python -m live kill (.*)$", head, re.M).group(1).split()
    deadline = time.monotonic() + 240
    while True:
        code, body = _get(status + "/portfolio/summary")
        assert code == 200
        summary = json.loads(body)
        positions = summary.get("portfolio", summary).get("positions") or {}
        if positions:
            break
        assert proc.poll() is None and time.monotonic() < deadline, "no position was opened to flatten"
        time.sleep(0.05)
    code, body = _get(status + "/health")
    assert code == 200 and json.loads(body)["redis"]["ok"]
    assert b"decision_latency" in _get(status + "/metrics")[1]
    k = subprocess.run([sys.executable, "-m", "live", "kill", *kill_cmd], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert k.returncode == 0, k.stderr[-2000:]
    closed = int(re.search(r"(\d+) positions closed", k.stdout).group(1))
    assert closed >= 1
    rest = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, (tmp_path / "err.log").read_text()[-2000:]
    assert "run: killed" in rest and "total_return" in rest and "suppression breakdown" in rest
    report = next(out.glob("live-default-*"))
    assert (report / "report.html").stat().st_size > 10_000
    orders = pd.read_parquet(report / "orders.parquet")
    decisions = pd.read_parquet(report / "decisions.parquet")
    assert {"time", "symbol", "side", "qty", "price", "reason"} <= set(orders.columns)
    assert list(decisions.columns) == ["time", "symbol", "reason", "score"]
    assert len(decisions) > 0
    # a RunDir run folder (kind live) with what research.compare --from-live reads
    assert list(orders.columns) == ["set", "time", "decision_time", "symbol", "side", "qty", "price", "fees", "reason"]
    tokens = pd.read_parquet(report / "tokens.parquet")
    assert list(tokens.columns) == ["time", "wants_a", "wants_b", "wants_reserve", "overflows_a", "overflows_b",
                                    "overflows_reserve", "reserve_fallbacks"]
    assert tokens["time"].is_monotonic_increasing and tokens["wants_a"].sum() > 0
    assert "trigger" in pd.read_parquet(report / "triggers.parquet").columns
    meta = json.loads((report / "meta.json").read_text())
    assert meta["kind"] == "live" and meta["mode"] == "default" and "tokens.parquet" in meta["files"]
    assert "mode = \"default\"" in (report / "params.toml").read_text()


def test_live_paper_without_redis_says_how_to_get_one(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    env["PATH"] = str(Path(sys.executable).parent)  # no redis-server on PATH
    r = subprocess.run([sys.executable, "-m", "tierlab.live_paper", "--bars", "30", "--quiet"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: no Redis")
