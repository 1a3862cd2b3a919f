"""Two runners on one account share one token budget (SPEC §2): between them they never take more
than Tier A 6 / Tier B 3 / Reserve 1 per minute, and the second runner's step is re-run with what
the account has left (its surplus evaluations become `token` decisions)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest
import redis
from live_helpers import session

from live.feeds import Bar
from live.runner import Runner
from live.state import Keys, RedisState
from live.tokens import RedisTokenBucket
from strategies import kernel as K
from strategies.tiered_basket import TieredBasketStrategy

pytestmark = pytest.mark.redis


def _bars(panel, r: int) -> list[Bar]:
    out = []
    for j, s in enumerate(panel.symbols):
        if not np.isnan(panel.close[r, j]):
            out.append(Bar(s, panel.index[r], panel.open[r, j], panel.high[r, j], panel.low[r, j],
                           panel.close[r, j], panel.volume[r, j]))
    return out


def test_two_runners_on_one_account_share_the_token_budget(redis_url: str, capsys: pytest.CaptureFixture) -> None:
    _, panel, events, p = session("2024-11-05", "default")
    r = redis.Redis.from_url(redis_url)
    root = f"tierlab-test:{uuid.uuid4().hex[:10]}:"
    runners = []
    for mode in ("default", "relaxed"):
        from strategies.params import Params

        q = Params.preset(mode)
        store = RedisState(r, Keys.of("shared", "tiered_basket", mode, root=root))
        budget = RedisTokenBucket(r, store.keys.tokens, q.tokens_a, q.tokens_b, q.tokens_reserve)
        run = Runner(TieredBasketStrategy(q), store, None, events=events, budget=budget)
        run.open_session(panel.index[0].tz_convert("America/New_York").date())
        runners.append(run)
    try:
        n = 45
        for row in range(n):
            for run in runners:
                run.add(_bars(panel, row))
                run.decide_through(panel.index[row])
        recs = [run.store.decisions() for run in runners]
        caps = np.array([p.tokens_a, p.tokens_b, p.tokens_reserve])
        overflow_b = 0
        for row in range(n):
            used = np.zeros(3)
            for k in range(2):
                st = np.asarray(recs[k][row]["stats"])
                fb = st[K.ST_FALLBACK]
                got = st[K.ST_WANT_A:K.ST_WANT_R + 1] - st[K.ST_OVER_A:K.ST_OVER_R + 1]
                used += got + np.array([-fb, 0, fb])
            assert (used <= caps).all(), f"minute {panel.index[row]}: {used} > {caps}"
            overflow_b += sum(np.asarray(recs[k][row]["stats"])[K.ST_OVER_B] for k in range(2))
        assert overflow_b > 0, "with 3 Tier B tickers per runner the shared B bucket must overflow"
        alone = TieredBasketStrategy(p).run(panel.slice(None, panel.index[n - 1] + pd.Timedelta(minutes=1)), [p],
                                            events=events)
        assert alone.extras["token_overflows_b"][0] == 0  # one runner alone fits the budget
        from live.cli.__main__ import main

        capsys.readouterr()
        assert main(["status", "--json", "--redis", redis_url, "--root", root, "--account", "shared"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["time"] == panel.index[n - 1].isoformat() and summary["killed"] is False
        for field in ("current_risk_pct", "max_risk_pct", "risk_status", "remaining_capacity", "daily_loss_limit",
                      "risk_per_trade", "max_positions", "stop_loss_pct"):
            assert field in summary["risk"]
        assert main(["status", "--redis", redis_url, "--root", root, "--account", "shared"]) == 0
        assert "risk_status=" in capsys.readouterr().out
    finally:
        for k in r.scan_iter(f"{root}*"):
            r.delete(k)
