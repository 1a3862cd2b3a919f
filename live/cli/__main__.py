"""`python -m live run|executor|kill|status`: the live runner's processes and controls.

run       the loop (sim step-mode replay with --sim-url, else Alpaca paper + its live bar stream)
executor  the signals.raw consumer that places orders (AUTO_MODE=1) or only records them
kill      set the account's kill switch, cancel open orders, flatten; the runner saves and stops
status    the last bar's summary (SPEC §5 risk fields, positions, tokens, LLM counters); --json for machines

`run` builds its parameters with strategies.params.Params.load: the --mode preset, the --params
file, then TIERLAB_<FIELD> environment variables; a bad value is one line naming it (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from tierlab.errors import TierlabError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _common(ap: argparse.ArgumentParser, run: bool = False) -> None:
    # run: None lets Params.load pick TIERLAB_MODE or the --params file's mode (else default)
    dflt = os.environ.get("MODE") or (None if run else os.environ.get("TIERLAB_MODE") or "default")
    ap.add_argument("--mode", default=dflt, choices=("default", "relaxed"))
    ap.add_argument("--account", default=os.environ.get("TIERLAB_ACCOUNT", "paper"))
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--root", default="tierlab:", help="Redis key root (default tierlab:)")
    ap.add_argument("--sim-url", help="live.sim base URL (step mode); without it Alpaca paper via ALPACA_* keys")
    ap.add_argument("--debug", action="store_true")


def _store(a: argparse.Namespace) -> Any:
    import redis

    from live.state import Keys, RedisState

    return RedisState(redis.Redis.from_url(a.redis, socket_timeout=5, socket_connect_timeout=2),
                      Keys.of(a.account, "tiered_basket", a.mode, root=a.root))


def _broker(a: argparse.Namespace) -> Any:
    from live.broker import AlpacaBroker

    return AlpacaBroker.from_env(sim_url=a.sim_url)


def _keys(a: argparse.Namespace) -> tuple[str, str]:
    if a.sim_url:
        from live.sim.server import sim_keys

        return sim_keys()
    return os.environ["ALPACA_API_KEY"], os.environ["ALPACA_SECRET_KEY"]


def auto_mode() -> bool:
    """AUTO_MODE=1 places orders; 0 (or unset) records signals only. Inline comments are refused."""
    raw = os.environ.get("AUTO_MODE", "0").strip()
    if raw not in ("0", "1"):
        from tierlab.errors import ConfigError

        raise ConfigError(f"AUTO_MODE must be 0 or 1, got {raw!r}")
    return raw == "1"


def cmd_run(a: argparse.Namespace) -> int:
    """The runner process."""
    from live.feeds import History, SimStepFeed
    from live.runner import Runner, drive_sim, reconcile
    from strategies.params import Params
    from strategies.tiered_basket import TieredBasketStrategy

    params = Params.load(a.mode, a.params)  # preset, then --params file, then TIERLAB_<FIELD> variables
    a.mode = params.mode  # the Redis keys are the mode the parameters resolved to
    store = _store(a)
    store.ensure_group()
    key, secret = _keys(a)
    events = None
    if a.events_from_catalog:
        from data.catalog import Catalog

        events = Catalog().read_events()
    budget = None
    if a.shared_tokens:
        from live.tokens import RedisTokenBucket

        budget = RedisTokenBucket(store.r, store.keys.tokens, params.tokens_a, params.tokens_b,
                                  params.tokens_reserve)
    view = None
    if not a.quiet:
        from live.view import TerminalView

        view = TerminalView(params.mode)
        view.symbols = tuple(params.universe)
    runner = Runner(TieredBasketStrategy(params), store, History(key, secret, url=a.sim_url),
                    init_cash=a.cash, events=events, budget=budget)
    if view is not None:
        from live.llm import read_counters

        def show(m: Any) -> None:
            view.update(m, {**runner.summary(m.t, m.decisions, m.scores),
                            "llm": read_counters(store.r, store.keys.prefix)})

        runner.on_minute = show
    runner.resume()
    broker = _broker(a)
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__("now", True))
    if a.sim_url:
        feed = SimStepFeed(a.sim_url, key, secret)
        st = feed.state()
        import pandas as pd

        from live.runner import ny_date

        runner.open_session(ny_date(pd.Timestamp(st["time"]).tz_convert("UTC")))
        reconcile(runner, broker)
        ex = None
        if a.with_executor:
            from live.executor import Executor

            ex = Executor(store, broker, auto=auto_mode())
        out = drive_sim(runner, feed, runner.history, executor=ex, wait_executor=auto_mode(),
                        stop=lambda: stopping["now"])
    else:
        from live.runner import drive_alpaca

        worker = executor_thread(a, store, lambda: stopping["now"] or store.killed()) if a.with_executor else None
        try:
            out = drive_alpaca(runner, key, secret, broker, stop=lambda: stopping["now"])
        finally:
            if worker is not None:
                stopping["now"] = True
                worker.join()  # its batch in flight ends before the kill switch cancels and flattens
    if store.killed():
        from live.runner import kill_switch

        kill_switch(store, broker)
        out = "killed"
    print(json.dumps({"result": out, "bar": store.load()[1]}))
    return 0


def executor_thread(a: argparse.Namespace, store: Any, stop: Any) -> Any:
    """`run --with-executor` on Alpaca: the executor on a thread of the runner's process, blocking on
    XREADGROUP as its own process would (a signal is picked up the moment it is committed), with its
    own Redis connection and broker session; it stops with the runner."""
    import threading

    from live.executor import Executor
    from live.state import RedisState
    from tierlab.log import get_logger

    log = get_logger("live.executor")
    own = RedisState(type(store.r).from_url(a.redis, socket_timeout=5, socket_connect_timeout=2), store.keys)
    ex = Executor(own, _broker(a), consumer="executor-run", auto=auto_mode(), clock="bar" if a.sim_url else "wall",
                  tick_round=not getattr(a, "exact_prices", False))

    def work() -> None:
        try:
            ex.run(stop)
        except Exception as e:  # the runner goes on deciding; without an executor nothing is placed: say so
            log.error("executor_thread_died", reason=f"{type(e).__name__}: {e}", action="no orders are placed")
            raise

    t = threading.Thread(target=work, name="executor", daemon=True)
    t.start()
    return t


def cmd_executor(a: argparse.Namespace) -> int:
    """The executor process."""
    from live.executor import Executor

    store = _store(a)
    ex = Executor(store, _broker(a), consumer=a.consumer, auto=auto_mode(),
                  clock="bar" if a.sim_url else "wall", tick_round=not a.exact_prices)
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__("now", True))
    ex.run(lambda: stopping["now"] or store.killed())
    return 0


def cmd_kill(a: argparse.Namespace) -> int:
    """Set the kill switch, cancel every open order and flatten."""
    from live.runner import kill_switch

    store = _store(a)
    done = kill_switch(store, _broker(a))  # first, while the runner (and a sim it drives) still serves
    store.r.set(store.keys.kill, str(time.time()))
    if a.sim_url is None:  # Alpaca: anything a runner placed meanwhile (a sim replay stops on its own)
        kill_switch(store, _broker(a))
    print(f"kill switch set for account {a.account}: {done['canceled']} orders canceled, "
          f"{done['closed']} positions closed; runners stop after their current bar")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    """Print the last bar's summary."""
    store = _store(a)
    h = store.r.hgetall(store.keys.status)
    if not h:
        print(f"no runner state for account {a.account} mode {a.mode} in {store.keys.prefix}*")
        return 1
    from live.llm import read_counters

    if b"summary" not in h:  # a bar is stored but its summary not yet (it follows the commit)
        print(f"account {a.account} mode {a.mode}: bar {h.get(b'bar', b'?').decode()} stored, no summary yet; "
              "try again in a moment")
        return 1
    summary = json.loads(h[b"summary"])
    summary["killed"] = store.killed()
    summary["llm"] = read_counters(store.r, store.keys.prefix)  # None: the gate is off
    if a.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    from live.view import summary_text

    print(summary_text(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch a subcommand; a user's mistake prints one line and exits 2."""
    ap = _Parser(prog="python -m live", description=__doc__.splitlines()[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the runner loop")
    _common(r, run=True)
    r.add_argument("--params", help="TOML parameters file; TIERLAB_<FIELD> variables override it")
    r.add_argument("--cash", type=float, default=10_000.0, help="the kernel's starting cash (sim replays)")
    r.add_argument("--with-executor", action="store_true", help="run the executor in this process")
    r.add_argument("--events-from-catalog", action="store_true", help="filings from the catalog (sim replays)")
    r.add_argument("--shared-tokens", action="store_true", help="share the account's token budget in Redis")
    r.add_argument("--quiet", action="store_true", help="structured logs only, no terminal view")
    e = sub.add_parser("executor", help="the signals.raw consumer")
    _common(e)
    e.add_argument("--consumer", default="executor-1")
    e.add_argument("--exact-prices", action="store_true",
                   help="send the kernel's exact stop/take-profit levels (sim parity; Alpaca needs ticks)")
    k = sub.add_parser("kill", help="kill switch: cancel, flatten, stop")
    _common(k)
    s = sub.add_parser("status", help="the last bar's summary")
    _common(s)
    s.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        return {"run": cmd_run, "executor": cmd_executor, "kill": cmd_kill, "status": cmd_status}[a.cmd](a)
    except (TierlabError, KeyError) as exc:
        if a.debug:
            raise
        msg = f"missing environment variable {exc.args[0]}" if isinstance(exc, KeyError) else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
