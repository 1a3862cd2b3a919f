"""Every rule parameter of SPEC.md as one frozen, validated model, with the named presets.

`Params.load(mode, path, env)` layers a preset (`default` or `relaxed`, SPEC §8), an optional TOML
file and `TIERLAB_*` environment variables, in that order. Every bad value is refused with a
`ConfigError` that names the field and the value (the old bot crashed on `6  # Tier A`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tierlab.errors import ConfigError

MODES = ("default", "relaxed")
ENV_PREFIX = "TIERLAB_"
RELAXED_FIELDS = ("cutoff_delta", "cooldown_s", "direction_lock_s", "reserve_fallback", "llm_min_score")


def minute_of_day(hhmm: str) -> int | None:
    """'09:30' -> 570 (minutes after New York midnight); None when not a time HH:MM in 00:00..24:00."""
    parts = hhmm.split(":")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
        return None
    h, m = int(parts[0]), int(parts[1])
    if m >= 60 or h * 60 + m > 24 * 60:
        return None
    return h * 60 + m


class Basket(BaseModel):
    """A basket of stocks whose joint fall is routed to one inverse ETF (SPEC §6)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str
    members: tuple[str, ...]
    target: str = Field(description="inverse ETF bought when the basket fires")
    min_signals: int = Field(3, ge=1, description="members with a fresh score needed at the bar")
    neg_share: float = Field(0.6, gt=0, le=1, description="share of negative scores among them")
    mean_threshold: float = Field(0.12, gt=0, le=1, description="mean score <= -threshold fires")
    consecutive: int = Field(2, ge=1, description="ticks the condition must hold in a row")


_DEFAULT_BASKETS = (
    Basket(name="MEGATECH", members=("AAPL", "MSFT", "AMZN", "META", "GOOGL", "TSLA"), target="SQQQ"),
    Basket(name="SEMIS", members=("NVDA", "AMD", "AVGO"), target="SOXS", min_signals=2),
)


class Params(BaseModel):
    """The parameters of the tiered basket rules. Times are seconds unless the name says minutes."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_default=True)

    mode: Literal["default", "relaxed"] = Field("default", description="preset this set started from")

    # --- universe and tiers (SPEC §1) ---
    tier_a: tuple[str, ...] = Field(("NVDA", "TSLA", "AAPL"), description="Tier A tickers")
    tier_b: tuple[str, ...] = Field(("MSFT", "AMZN", "META"), description="Tier B tickers")
    tier_bench: tuple[str, ...] = Field(("GOOGL", "AMD", "AVGO"), description="evaluated only on events")
    inverse_etfs: tuple[str, ...] = Field(("SQQQ", "SOXS"), description="traded only by basket routing")
    other_etfs: tuple[str, ...] = Field(("QQQ",), description="held only as conflict partners")
    cadence_a_s: float = Field(30.0, ge=0, description="Tier A evaluation cadence")
    cadence_b_s: float = Field(60.0, ge=0, description="Tier B evaluation cadence")

    # --- API budget (SPEC §2) ---
    tokens_a: int = Field(6, ge=0, description="Tier A tokens per minute")
    tokens_b: int = Field(3, ge=0, description="Tier B tokens per minute")
    tokens_reserve: int = Field(1, ge=0, description="Reserve tokens per minute (Bench draws here)")
    reserve_fallback: bool = Field(False, description="Tier A may borrow the Reserve token early in a minute")
    reserve_fallback_window_s: float = Field(10.0, ge=0, le=60, description="seconds 0..N of the minute")

    # --- score model ---
    mom_window: int = Field(10, ge=2, le=390, description="momentum lookback, bars")
    vol_window: int = Field(20, ge=2, le=390, description="volatility / volume lookback, bars")
    vwap_window: int = Field(20, ge=2, le=390, description="rolling VWAP lookback, bars")
    w_mom: float = Field(0.7, ge=0, description="weight of the momentum z-score")
    w_vwap: float = Field(0.3, ge=0, description="weight of the VWAP-deviation z-score")
    score_gain: float = Field(0.5, gt=0, description="tanh(gain * z): higher is more decisive")
    spike_mult: float = Field(3.0, gt=1, description="volume > mult x mean volume is a spike event")

    # --- cutoffs and suppression (SPEC §3, §4) ---
    cutoff: float = Field(0.45, gt=0, le=1, description="|score| needed to act")
    cutoff_delta: float = Field(0.0, ge=-0.5, le=0.5, description="session delta added to the cutoff")
    strong_margin: float = Field(0.2, ge=0, description="strong signal: |score| >= cutoff + margin")
    cooldown_s: float = Field(180.0, ge=0, description="min time between signals on a ticker")
    direction_lock_s: float = Field(300.0, ge=0, description="reversals refused within this window")
    cap_a: int = Field(10, ge=0, description="daily actionable signals per Tier A ticker")
    cap_b: int = Field(6, ge=0, description="daily actionable signals per Tier B ticker")
    cap_bench: int = Field(4, ge=0, description="daily actionable signals per Bench ticker")
    cap_etf: int = Field(4, ge=0, description="daily basket entries per inverse ETF")
    global_daily_cap: int = Field(100, ge=0, description="actionable signals per RTH day, all tickers")
    idempotency_window_s: float = Field(90.0, ge=0, description="TTL of the cap idempotency key")

    # --- risk and sizing (SPEC §5) ---
    risk_per_trade: float = Field(0.005, gt=0, le=0.1, description="share of equity risked per trade")
    stop_loss_pct: float = Field(0.015, gt=0, lt=1, description="stop distance as a share of entry")
    take_profit_pct: float = Field(0.03, gt=0, description="take-profit distance as a share of entry")
    max_concurrent_risk: float = Field(0.02, gt=0, le=1, description="sum of open risk to stop / equity")
    daily_loss_limit: float = Field(0.02, gt=0, le=1, description="no entries after this day loss")
    max_positions: int = Field(4, ge=1, description="open positions at most")
    exposure_cap: float = Field(0.8, gt=0, le=1, description="total notional / equity at most")
    min_slots: int = Field(3, ge=1, description="slots kept: one position <= cap * equity / slots")
    kelly_cap: float = Field(0.0, ge=0, le=1, description="0 = off; else risk <= kelly_cap * Kelly f")
    kelly_min_trades: int = Field(20, ge=1, description="closed trades before the Kelly cap applies")

    # --- baskets, ETF lock, conflicts (SPEC §6) ---
    baskets: tuple[Basket, ...] = Field(_DEFAULT_BASKETS)
    etf_lock_s: float = Field(90.0, ge=0, description="no new order in an ETF within this window")
    conflicts: tuple[tuple[str, str], ...] = Field((("QQQ", "SQQQ"),), description="never held together")

    # --- exits (SPEC §5b) ---
    flatten_before_close_min: int = Field(5, ge=0, description="flatten this many minutes before close")
    max_hold_minutes: int = Field(0, ge=0, description="0 = off")

    # --- fills (shared with the sim) ---
    slippage: float = Field(0.0002, ge=0, lt=0.1, description="market fills move this share against you")
    fee_per_share: float = Field(0.0, ge=0, description="fees per share")
    fee_per_order: float = Field(0.0, ge=0, description="fees per order")

    # --- LLM gate (SPEC §7; used by the live runner; the kernel keeps its rolled-back value) ---
    llm_min_score: float = Field(0.7, ge=0, le=1, description="|score| needed to ask the LLM")
    llm_daily_limit: int = Field(120, ge=0, description="LLM calls per day")

    # --- session rules (SPEC §3, §8): the delta's test window, rollback triggers, hard rollback ---
    # Times are New York clock "HH:MM" of the decision (the bar's close), windows half-open [start, end).
    delta_window: bool = Field(True, description="False: cutoff_delta applies all session (no test window)")
    delta_start: str = Field("09:30", description="New York time the cutoff delta starts applying")
    delta_end: str = Field("11:30", description="New York time the cutoff delta stops applying")
    hard_rollback_at: str = Field("", description="New York time every relaxed value returns to default; '' = off")
    rollback_1h: bool = Field(True, description="1 h trigger: stop-out rate or flip-flop rate")
    rollback_2h: bool = Field(True, description="2 h trigger: LLM call surge or Tier-A token overflow")
    rollback_1h_window_min: int = Field(60, ge=1, le=180, description="trailing window of the 1 h trigger")
    rollback_2h_window_min: int = Field(120, ge=1, le=180, description="trailing window of the 2 h trigger")
    rollback_min_actionable: int = Field(5, ge=0, description="signals in the window before the stop-out rate counts")
    rollback_stop_rate: float = Field(0.4, gt=0, le=1, description="stop exits / closed entries that fires 1 h")
    rollback_flip_rate: float = Field(0.25, gt=0, le=1, description="flip-flops / actionable signals that fires 1 h")
    flip_window_s: float = Field(600.0, ge=0, description="a reversal within this is a flip-flop")
    llm_surge_calls: int = Field(30, ge=0, description="more LLM calls than this in the 2 h window fires 2 h")
    rollback_overflow_a: float = Field(0.15, gt=0, le=1,
                                       description="mean per-minute Tier-A overflow rate (minutes with Tier-A wants) firing 2 h")
    rollback_delta_shrink: float = Field(0.5, ge=0, le=1, description="1 h: cutoff_delta times this (toward 0)")
    rollback_cooldown_s: float = Field(150.0, ge=0, description="1 h: cooldown at least this")
    rollback_lock_s: float = Field(120.0, ge=0, description="1 h: direction lock at least this")
    rollback_llm_min_score: float = Field(0.65, ge=0, le=1, description="2 h: llm_min_score at least this")

    @field_validator("delta_start", "delta_end", "hard_rollback_at")
    @classmethod
    def _hhmm(cls, v: str, info: Any) -> str:
        if v == "" and info.field_name == "hard_rollback_at":
            return v
        if minute_of_day(v) is None:
            raise ValueError(f"must be a New York time HH:MM between 00:00 and 24:00, got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        seen: dict[str, str] = {}
        for tier in ("tier_a", "tier_b", "tier_bench", "inverse_etfs", "other_etfs"):
            for sym in getattr(self, tier):
                if not sym or sym != sym.strip().upper():
                    raise ValueError(f"{tier}: ticker {sym!r} must be upper-case with no spaces")
                if sym in seen:
                    raise ValueError(f"{tier}: ticker {sym} is already in {seen[sym]}; a ticker sits in one tier")
                seen[sym] = tier
        stocks = set(self.stocks)
        for b in self.baskets:
            if b.target not in self.inverse_etfs:
                raise ValueError(
                    f"baskets: basket {b.name} routes to {b.target}, which is not an inverse ETF "
                    f"(inverse_etfs = {list(self.inverse_etfs)})"
                )
            for m in b.members:
                if m not in stocks:
                    raise ValueError(f"baskets: basket {b.name} member {m} is not a stock of the tiers")
            if b.min_signals > len(b.members):
                raise ValueError(f"baskets: basket {b.name} min_signals {b.min_signals} > {len(b.members)} members")
        for a, b in self.conflicts:
            for s in (a, b):
                if s not in seen:
                    raise ValueError(f"conflicts: pair ({a}, {b}) names {s}, which is not in the universe")
            if a == b:
                raise ValueError(f"conflicts: pair ({a}, {b}) pairs a ticker with itself")
        if minute_of_day(self.delta_start) >= minute_of_day(self.delta_end):  # type: ignore[operator]
            raise ValueError(f"delta_start {self.delta_start} must be before delta_end {self.delta_end}")
        if self.cutoff + self.cutoff_delta <= 0:
            raise ValueError(
                f"cutoff + cutoff_delta must be > 0, got cutoff={self.cutoff} cutoff_delta={self.cutoff_delta}"
            )
        if self.take_profit_pct <= 0 or self.stop_loss_pct * self.max_positions <= 0:
            raise ValueError("stop_loss_pct and take_profit_pct must be positive")
        return self

    # --- views ---
    @property
    def stocks(self) -> tuple[str, ...]:
        """Evaluated tickers: Tier A, Tier B, Bench."""
        return self.tier_a + self.tier_b + self.tier_bench

    @property
    def universe(self) -> tuple[str, ...]:
        """Every symbol the rules touch: stocks, then inverse ETFs, then other ETFs."""
        return self.stocks + self.inverse_etfs + self.other_etfs

    @property
    def effective_cutoff(self) -> float:
        """cutoff + cutoff_delta (SPEC §3)."""
        return self.cutoff + self.cutoff_delta

    # --- construction ---
    @classmethod
    def preset(cls, mode: str = "default") -> Params:
        """The named preset of SPEC §8: `default` or `relaxed`."""
        if mode not in MODES:
            raise ConfigError(f"mode: unknown preset {mode!r}; choose one of {', '.join(MODES)}")
        return cls.build(_PRESETS[mode], source=f"preset {mode}")

    @classmethod
    def build(cls, values: Mapping[str, Any], source: str = "params") -> Params:
        """Validate `values` (a flat mapping) into Params; errors name the field and the value."""
        unknown = [k for k in values if k not in cls.model_fields]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(k, list(cls.model_fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown parameter {k!r}{hint}")
        try:
            return cls.model_validate(_coerce(dict(values)))
        except ValidationError as exc:
            raise ConfigError(_explain(exc, values, source)) from None

    def replace(self, **changes: Any) -> Params:
        """A validated copy with `changes` applied."""
        return self.build({**self.model_dump(), **changes}, source="replace")

    @classmethod
    def from_toml(cls, path: str | Path, mode: str | None = None) -> Params:
        """Load a TOML file: its `mode` (or `mode=`) picks the preset, its other keys override it.

        A `mode` argument that differs from the file's own `mode` is a contradiction, refused.
        """
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: params file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        raw = raw.get("params", raw)
        if mode and "mode" in raw and raw["mode"] != mode:
            raise ConfigError(f"{path}: mode = {raw['mode']!r} in the file contradicts the requested mode {mode!r}; "
                              "drop one of them")
        base = mode or raw.get("mode", "default")
        return cls.build({**cls.preset(base).model_dump(), **raw, "mode": base}, source=str(path))

    def to_toml(self, path: str | Path | None = None) -> str:
        """Write every field as TOML (round-trips through `from_toml`); returns the text."""
        text = tomli_w.dumps({"params": _jsonable(self.model_dump())})
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def load(
        cls, mode: str | None = None, path: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> Params:
        """Preset, then TOML file, then `TIERLAB_<FIELD>` environment overrides.

        The preset is `mode`, else `TIERLAB_MODE`, else the file's `mode`, else `default`. A
        `TIERLAB_MODE` that is no preset, or that contradicts `mode`, is refused (never silently ignored).
        """
        env = os.environ if env is None else env
        env_mode = env.get(f"{ENV_PREFIX}MODE")
        if env_mode is not None:
            env_mode = env_mode.strip()
            if env_mode not in MODES:
                raise ConfigError(f"{ENV_PREFIX}MODE: mode must be one of {', '.join(MODES)}, got {env_mode!r}")
            if mode is not None and mode != env_mode:
                raise ConfigError(f"{ENV_PREFIX}MODE={env_mode} contradicts the requested mode {mode!r}; drop one of them")
        mode = mode or env_mode  # None with a file: the file's own mode
        p = cls.from_toml(path, mode=mode) if path else cls.preset(mode or "default")
        overrides: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            field = key[len(ENV_PREFIX) :].lower()
            if field in cls.model_fields and field not in ("mode", "baskets"):
                overrides[field] = _parse_env(key, field, raw, cls.model_fields[field].annotation)
        return p.build({**p.model_dump(), **overrides}, source="environment") if overrides else p


_RELAXED = {"mode": "relaxed", "cutoff_delta": -0.03, "cooldown_s": 120.0, "direction_lock_s": 90.0,
            "reserve_fallback": True, "llm_min_score": 0.6, "hard_rollback_at": "11:30"}
_PRESETS: dict[str, dict[str, Any]] = {"default": {"mode": "default"}, "relaxed": _RELAXED}

# Rollback values of SPEC §8 (the defaults of the rollback_* fields, which the kernel applies).
ROLLBACK_1H = {"cutoff_delta_shrink": 0.5, "direction_lock_s": 120.0, "cooldown_s": 150.0}
ROLLBACK_2H = {"llm_min_score": 0.65, "reserve_fallback": False}
# The issue-13 session rules switched off: the cutoff delta all session, no trigger, no hard rollback.
SESSION_RULES_OFF: dict[str, Any] = {"delta_window": False, "rollback_1h": False, "rollback_2h": False,
                                     "hard_rollback_at": ""}


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Strict mode refuses int for float and lists for tuples; accept those lossless forms only."""
    out = dict(values)
    for name, field in Params.model_fields.items():
        if name not in out:
            continue
        v = out[name]
        if field.annotation is float and isinstance(v, int) and not isinstance(v, bool):
            out[name] = float(v)
        elif name == "baskets" and isinstance(v, list | tuple):
            out[name] = tuple(Basket.model_validate(_coerce_basket(b)) if isinstance(b, dict) else b for b in v)
        elif name == "conflicts" and isinstance(v, list | tuple):
            out[name] = tuple(tuple(p) for p in v)
        elif isinstance(v, list):
            out[name] = tuple(v)
    return out


def _coerce_basket(b: dict[str, Any]) -> dict[str, Any]:
    b = dict(b)
    if isinstance(b.get("members"), list):
        b["members"] = tuple(b["members"])
    for k in ("neg_share", "mean_threshold"):
        if isinstance(b.get(k), int) and not isinstance(b.get(k), bool):
            b[k] = float(b[k])
    return b


def _parse_env(key: str, field: str, raw: str, annotation: Any) -> Any:
    """Parse one env value strictly: `6  # Tier A` is refused, not truncated."""
    text = raw.strip()
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        if annotation == tuple[str, ...]:
            return tuple(s.strip().upper() for s in text.split(",") if s.strip())
        return text
    except ValueError:
        kind = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{key}: {field} must be {kind}, got {raw!r}") from None


def _explain(exc: ValidationError, values: Mapping[str, Any], source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "params"
        top = err["loc"][0] if err["loc"] else None
        shown = values.get(top, err.get("input")) if top is not None else None
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc} = {shown!r}: {msg}" if top is not None else msg)
    return f"{source}: " + "; ".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v
