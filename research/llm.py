"""The LLM gate in research: replay a recorded-answers file (deterministic, free) or record one.

`python -m research.llm record --start 2024-11-04 --end 2024-11-08 [--mode relaxed] [--out FILE]`
asks the endpoint (TIERLAB_LLM_MODEL, OPENAI_BASE_URL, OPENAI_API_KEY) once for every request a
backtest of that range would make, within the daily cap, cache and budget, and appends each
answer to FILE. A backtest with `--llm recorded:FILE` then replays it with `apply_recorded`.

LLM look-ahead: answers recorded after the fact come from a model that may know what happened
next; only answers recorded live (live.llm writes the same format) carry none.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `--help` and a bad flag answer before numpy, pandas and the gate load
    from research.llm_cli import build_parser as _early_parser

    _early_parser().parse_args()

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from strategies.llm_gate import (
    LLM_REASONS,
    AnswerBook,
    GateResult,
    LlmGate,
    LlmGateConfig,
    gate_requests,
    run_gate,
)
from tierlab.errors import ConfigError, TierlabError

CALLS_FIELD = "llm_calls"  # BarInputs field: LLM calls per bar (T,), read by the kernel's surge trigger
MIN_SCORE_EXTRA = "llm_min_score"  # RunResult.extras: the kernel's effective llm_min_score per bar (K, T)
LOOKAHEAD_WARNING = ("LLM look-ahead: answers recorded after the fact can carry knowledge the model did not have "
                     "at the time; answers recorded live carry none.")


def parse_policy(policy: str | None) -> tuple[str, str | None]:
    """`off` (default) or `recorded:FILE` -> (kind, file); ConfigError names --llm otherwise."""
    policy = (policy or "off").strip()
    if policy == "off":
        return "off", None
    if policy.startswith("recorded:") and policy[len("recorded:"):].strip():
        path = policy[len("recorded:"):].strip()
        if not Path(path).exists():
            raise ConfigError(f"--llm {policy}: no such file {path}")
        return "recorded", path
    raise ConfigError(f"--llm: expected off or recorded:FILE, got {policy!r}")


def apply_recorded(inputs: Any, events: pd.DataFrame | None, path: str, params: Any = None,
                   cfg: LlmGateConfig | None = None, model: str | None = None,
                   min_score: Any = None, log: Any = None) -> GateResult:
    """Run the gate over prepared BarInputs answering from the recorded file at `path`.

    `model` defaults to the file's only model; `min_score` may be a (T,) array (the kernel's
    effective llm_min_score per bar, for the SPEC §8 rollback), else the params'/config's value.
    """
    cfg = cfg or (LlmGateConfig.for_params(params) if params is not None else LlmGateConfig())
    book = AnswerBook.load(path)
    if model is None:
        models = book.models()
        if len(models) > 1:
            raise ConfigError(f"{path}: answers from several models ({', '.join(sorted(models))}); pass model=")
        model = models.pop() if models else "none"
    gate = LlmGate(cfg, model, log=log)
    reqs = gate_requests(inputs.scores, inputs.events, inputs.close_epoch, inputs.day, inputs.symbols,
                         inputs.index, events)
    return run_gate(inputs.scores, reqs, gate, book.ask(model, gate.prompt.version), min_score)


def llm_inputs(inputs: Any, events: pd.DataFrame | None, params: Any, policy: str | None,
               min_score: Any = None) -> tuple[Any, GateResult | None, str]:
    """BarInputs with the policy's adjusted scores, the gate result (None when off) and the policy text.

    This is the one call research.backtest/tune make before the kernel for `--llm off|recorded:FILE`.
    When BarInputs has an `llm_calls` field (the kernel's SPEC §8 surge input) it is filled too.
    """
    kind, path = parse_policy(policy)
    if kind == "off":
        return inputs, None, "off"
    res = apply_recorded(inputs, events, str(path), params, min_score=min_score)
    extra = {CALLS_FIELD: res.calls} if CALLS_FIELD in {f.name for f in dataclasses.fields(inputs)} else {}
    return dataclasses.replace(inputs, scores=res.scores, **extra), res, f"recorded:{path}"


def run_with_llm(strategy: Any, inputs: Any, events: pd.DataFrame | None, params: Any, policy: str | None,
                 *, init_cash: float = 10_000.0, record: bool = True) -> tuple[Any, GateResult | None, str]:
    """Gate then kernel for one parameter set, repeated until the gate's threshold per bar is the kernel's.

    The kernel raises llm_min_score (SPEC §8 rollback) from the bar after a trigger, and the trigger
    at bar t depends only on bars <= t; so re-running the gate with the kernel's per-bar
    `extras["llm_min_score"]` settles in at most one pass per session, to what live does bar by bar.
    Without that extra (kernel not wired yet) this is one gate pass and one kernel pass.
    """
    adj, res, pol = llm_inputs(inputs, events, params, policy)
    out = strategy.run_inputs(adj, [params], init_cash=init_cash, record=record)
    if res is None:
        return out, None, pol
    used = np.full(len(inputs.index), float(LlmGateConfig.for_params(params).min_score))
    for _ in range(len(np.unique(inputs.day)) + 1):
        eff = getattr(out, "extras", {}).get(MIN_SCORE_EXTRA)
        if eff is None:
            break
        eff = np.asarray(eff, dtype=np.float64).reshape(-1, len(inputs.index))[0]
        if np.array_equal(eff, used):
            break
        used = eff
        adj, res, pol = llm_inputs(inputs, events, params, policy, min_score=used)
        out = strategy.run_inputs(adj, [params], init_cash=init_cash, record=record)
    return out, res, pol


def run_policy(strategy: Any, panel: Any, params: Any, events: pd.DataFrame | None, policy: str | None,
               *, init_cash: float = 10_000.0) -> tuple[Any, dict[str, Any]]:
    """One set's recorded run under `--llm recorded:FILE`: gate + kernel (`run_with_llm`) and its LLM KPIs.

    The RunResult carries `extras["llm_calls"]` (K,) and `extras["llm_calls_bar"]` (K, T) for the KPI
    tables. The caller keeps `strategy.run` for `off`, so an off run is exactly today's.
    """
    if not hasattr(strategy, "prepare"):
        raise ConfigError(f"--llm {policy}: strategy {type(strategy).__name__} has no LLM gate; use --llm off")
    inputs = strategy.prepare(panel, events, params)
    out, res, pol = run_with_llm(strategy, inputs, events, params, policy, init_cash=init_cash, record=True)
    calls = res.calls if res is not None else np.zeros(len(inputs.index), dtype=np.int64)
    out.extras["llm_calls"] = np.array([float(calls.sum())])
    out.extras["llm_calls_bar"] = calls[None, :].astype(np.int64)
    figs = llm_kpis(res, pol)
    figs["llm_note"] = f"{LOOKAHEAD_WARNING} {answer_sources(str(parse_policy(policy)[1]))}"
    return out, figs


def answer_sources(path: str) -> str:
    """Where a recorded-answers file's answers came from, in a sentence (live ones carry no look-ahead)."""
    import json

    sources: dict[str, int] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            src = str(json.loads(line).get("source", "unknown"))
            sources[src] = sources.get(src, 0) + 1
    live = sources.pop("live", 0)
    later = sum(sources.values())
    return (f"This file: {live} answers recorded live, {later} recorded after the fact"
            f"{' (' + ', '.join(f'{k}: {v}' for k, v in sorted(sources.items())) + ')' if later else ''}.")


def llm_kpis(res: GateResult | None, policy: str) -> dict[str, Any]:
    """The LLM figures for a backtest's KPIs: policy, calls, cache hits, skips by reason, tokens, cost."""
    c = res.counters if res is not None else {}
    out: dict[str, Any] = {"llm_policy": policy, "llm_calls": int(c.get("llm_calls", 0)),
                           "llm_cache_hits": int(c.get("llm_cached", 0))}
    for reason in LLM_REASONS:
        out[f"skipped_{reason}"] = int(c.get(reason, 0))
    out.update(llm_tokens_in=int(c.get("llm_tokens_in", 0)), llm_tokens_out=int(c.get("llm_tokens_out", 0)),
               llm_cost=float(c.get("llm_cost", 0.0)))
    if policy.startswith("recorded:"):
        out["llm_note"] = LOOKAHEAD_WARNING
    return out


def llm_hourly(res: GateResult | None, index: pd.DatetimeIndex) -> pd.Series:
    """LLM calls per New York hour (the hourly KPI table's column), zeros when the LLM is off."""
    hours = pd.DatetimeIndex(index).tz_convert("America/New_York").floor("h")
    calls = res.calls if res is not None else np.zeros(len(index), dtype=np.int64)
    return pd.Series(calls, index=hours, name="llm_calls").groupby(level=0).sum()


def record(start: str, end: str, out: str, mode: str | None = None, root: str | None = None,
           cfg: LlmGateConfig | None = None, reviewer: Any = None,
           params_file: str | None = None) -> tuple[GateResult, str]:
    """Ask the endpoint for every request a backtest of [start, end] makes; append answers to `out`.

    Answers already in `out` for the same request and bar are reused, not asked again (resumable);
    recorded errors are asked again, and the later line wins on replay.
    """
    from data.catalog import Catalog
    from live.llm import Reviewer, recording
    from strategies.params import Params
    from strategies.tiered_basket import TieredBasketStrategy
    from tierlab.log import get_logger

    log = get_logger("research.llm")
    params = Params.load(mode, params_file)  # preset, file, then TIERLAB_<FIELD> (a bad value: one line)
    cfg = cfg or LlmGateConfig.for_params(params)
    catalog = Catalog(root)
    panel = catalog.read_panel(list(params.universe), pd.Timestamp(start).date(), pd.Timestamp(end).date())
    if len(panel.index) == 0:
        raise ConfigError(f"--start/--end: no trading sessions between {start} and {end} in {catalog.root}")
    events = catalog.read_events(pd.Timestamp(start).date(), pd.Timestamp(end).date())
    strategy = TieredBasketStrategy(params)
    inputs = strategy.prepare(panel, events, params)
    reviewer = reviewer or Reviewer(cfg, log=log.info)
    book = AnswerBook.load(out) if Path(out).exists() else AnswerBook({}, out)
    live_ask = recording(reviewer.ask, out, cfg.strength_step, source="record")

    def ask(req: Any, key: str) -> Any:
        hit = book.exact(key, req.at)
        return hit if hit is not None and hit.ok else live_ask(req, key)  # a recorded error is asked again

    gate = LlmGate(cfg, reviewer.model, log=log.info)
    reqs = gate_requests(inputs.scores, inputs.events, inputs.close_epoch, inputs.day, inputs.symbols,
                         inputs.index, events)
    res = run_gate(inputs.scores, reqs, gate, ask)
    c = res.counters
    text = (f"{out}: {len(reqs)} event bars, {int(c['llm_calls'])} calls, {int(c['llm_cached'])} cache hits, "
            f"{int(c['llm_below_score'])} below score, {int(c['llm_daily_cap'])} over the daily cap, "
            f"{int(c['llm_budget'])} over budget, {int(c['llm_error'])} errors; "
            f"{int(c['llm_tokens_in'])}+{int(c['llm_tokens_out'])} tokens, {c['llm_cost']:.4f} {cfg.currency}\n"
            f"note: {LOOKAHEAD_WARNING}")
    return res, text


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m research.llm record ...`: one line per problem, exit 2 on a user error."""
    from research.llm_cli import build_parser

    a = build_parser().parse_args(argv)
    from tierlab.paths import tierlab_home

    out = a.out or str(tierlab_home() / "llm" / "answers.jsonl")
    try:
        print(record(a.start, a.end, out, a.mode, a.root, params_file=a.params)[1])
    except TierlabError as exc:
        if a.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
