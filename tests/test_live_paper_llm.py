"""Issue 12.4 end to end: `make live-paper` (no Alpaca keys, OPENAI_BASE_URL at a loopback endpoint) records
its LLM answers in its run folder, and `python -m research.backtest --llm recorded:FILE` of that session
reproduces the live orders and decisions exactly; `python -m live status` shows the run's LLM counters.

Both commands run as a user runs them (subprocesses, a fresh TIERLAB_HOME). The endpoint answers against
the signal (bearish on a long, bullish on a short) and `TIERLAB_LLM_MIN_SCORE=0.3` (default mode: no hard
rollback back to 0.7) lets more events through the gate, so the answers move orders, not only scores: a
backtest without them, or with other answers, cannot pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from llm_endpoint import LoopbackLLM

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
ORDER_KEY = ["time", "symbol", "side", "qty", "price"]


def contrarian(body: dict[str, Any]) -> dict[str, Any]:
    """A review that disagrees with the signal at full confidence (moves the score by -max_adjust)."""
    long = "Signal: long" in body["messages"][-1]["content"]
    return {"direction": "bearish" if long else "bullish", "confidence": 1.0, "rationale": "loopback contrarian"}


@pytest.fixture
def endpoint() -> Any:
    srv = LoopbackLLM().start()
    srv.review = contrarian
    try:
        yield srv
    finally:
        srv.stop()


def _sorted_orders(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(ORDER_KEY[:3], kind="stable").reset_index(drop=True)


def _signals_block(stdout: str) -> str:
    """The `signals (SPEC §8)` KPI lines of a summary (llm_calls among them)."""
    return stdout.split("signals (SPEC §8)", 1)[1].split("LLM gate (SPEC §7):", 1)[0]


def _llm_block(stdout: str) -> dict[str, str]:
    """The `LLM gate (SPEC §7)` figures of a summary (name -> shown value), without its policy line."""
    block = stdout.split("LLM gate (SPEC §7):", 1)[1].split("suppression breakdown", 1)[0]
    return dict(re.findall(r"^  (llm_\w+|skipped_llm_\w+)\s+(\S+)$", block, re.M))


def test_make_live_paper_records_answers_and_the_recorded_backtest_reproduces_its_orders(
        endpoint: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, out, bt_out = tmp_path / "home", tmp_path / "reports", tmp_path / "bt"
    account = f"llmpaper-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TIERLAB_HOME=str(home), REDIS_URL=redis_url,
               TIERLAB_ACCOUNT=account, OPENAI_BASE_URL=endpoint.base_url, OPENAI_API_KEY="sk-loopback-dummy",
               TIERLAB_LLM_MODEL="gpt-4o-mini", TIERLAB_LLM_MIN_SCORE="0.3")
    for k in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "TIERLAB_LLM_ANSWERS", "TIERLAB_MODE", "AUTO_MODE"):
        env.pop(k, None)
    r = redis.Redis.from_url(redis_url)
    try:
        live = subprocess.run(["make", "-o", ".venv/.installed", "live-paper", "MODE=default",
                               f"ARGS=--quiet --exact-prices --out {out}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert live.returncode == 0, live.stderr[-3000:]
        folder = Path(re.search(r"^run folder: (\S+)$", live.stdout, re.M).group(1))
        answers = Path(re.search(r"^llm answers: (\S+) ", live.stdout, re.M).group(1))
        assert answers == folder / "llm_answers.jsonl" and folder.parent == out
        meta = json.loads((folder / "meta.json").read_text())
        assert "llm_answers.jsonl" in meta["files"] and meta["auto_mode"] == 1 and meta["exact_prices"] is True
        recs = [json.loads(x) for x in answers.read_text().splitlines()]
        assert len(recs) == len(endpoint.seen) > 0  # every request the endpoint saw is recorded, once
        assert {x["source"] for x in recs} == {"live"} and all(x["answer"] for x in recs)
        day = meta["start"]

        bt = subprocess.run([sys.executable, "-m", "research.backtest", "--mode", "default", "--start", day,
                             "--end", day, "--llm", f"recorded:{answers}", "--out", str(bt_out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert bt.returncode == 0, bt.stderr[-3000:]
        assert len(endpoint.seen) == len(recs)  # the backtest never called the endpoint
        bt_folder = Path(re.search(r"^run folder: (\S+) ", bt.stdout, re.M).group(1))

        live_orders = pd.read_parquet(folder / "orders.parquet")
        bt_orders = pd.read_parquet(bt_folder / "orders.parquet")
        assert len(live_orders) > 0
        # the broker's fills (live) against the kernel's (backtest): same rows, to the last digit
        pd.testing.assert_frame_equal(_sorted_orders(live_orders), _sorted_orders(bt_orders))
        pd.testing.assert_frame_equal(pd.read_parquet(folder / "decisions.parquet"),
                                      pd.read_parquet(bt_folder / "decisions.parquet"))
        # the same KPIs in both summaries: the signal KPIs (llm_calls among them) and the LLM gate's calls,
        # cache hits, skips by reason, tokens and cost
        assert _signals_block(live.stdout) == _signals_block(bt.stdout)
        assert re.search(rf"^  llm_calls\s+{len(recs)}$", _signals_block(live.stdout), re.M)
        live_llm, bt_llm = _llm_block(live.stdout), _llm_block(bt.stdout)
        assert live_llm == bt_llm and int(live_llm["llm_calls"]) == len(recs)
        assert f"This file: {len(recs)} answers recorded live, 0 recorded after the fact." in bt.stdout

        # the answers mattered: without them the same session trades differently
        from data.catalog import Catalog
        from research.backtest import backtest
        from strategies.params import Params
        from strategies.tiered_basket import TieredBasketStrategy

        monkeypatch.setenv("TIERLAB_LLM_MIN_SCORE", "0.3")
        p = Params.load("default", None)
        cat = Catalog(home / "catalog")
        off = backtest(TieredBasketStrategy(p), cat.read_panel(list(p.universe), day, day), p,
                       events=cat.read_events(day, day))
        assert not _sorted_orders(off.orders)[ORDER_KEY].equals(_sorted_orders(live_orders)[ORDER_KEY])

        # the live status of that namespace (left in Redis) shows the same LLM counters
        st = subprocess.run([sys.executable, "-m", "live", "status", "--json", "--account", account, "--mode",
                             "default", "--redis", redis_url], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
        assert st.returncode == 0, st.stderr[-2000:]
        llm = json.loads(st.stdout)["llm"]
        assert llm["calls"] == llm["answers"] == len(recs) and llm["model"] == "gpt-4o-mini"
        assert llm["skips"]["llm_below_score"] == int(live_llm["skipped_llm_below_score"])
        assert llm["tokens_in"] == sum(x["tokens_in"] for x in recs)
        assert llm["cost"] == pytest.approx(sum(x["cost"] for x in recs)) and llm["day"] == day
    finally:
        for k in r.scan_iter(match=f"tierlab:{account}:*"):
            r.delete(k)


def test_exact_prices_is_refused_with_alpaca_keys(tmp_path: Path) -> None:
    """Sub-penny exits are for the sim: with keys set, `--exact-prices` is one line and exit 2, nothing sent."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TIERLAB_HOME=str(tmp_path), ALPACA_API_KEY="k",
               ALPACA_SECRET_KEY="s")
    r = subprocess.run([sys.executable, "-m", "tierlab.live_paper", "--exact-prices", "--quiet"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --exact-prices is for offline sim replays")
