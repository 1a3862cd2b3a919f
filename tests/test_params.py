"""Params: presets of SPEC §8, TOML and environment layering, and refusals that name field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from strategies.params import Params
from tierlab.errors import ConfigError


def test_relaxed_preset_is_spec_section_8() -> None:
    d, r = Params.preset("default"), Params.preset("relaxed")
    assert (d.cutoff_delta, d.cooldown_s, d.reserve_fallback) == (0.0, 180.0, False)
    assert (r.cutoff_delta, r.cooldown_s, r.direction_lock_s, r.reserve_fallback) == (-0.03, 120.0, 90.0, True)
    assert r.effective_cutoff == pytest.approx(d.cutoff - 0.03)
    assert r.reserve_fallback_window_s == 10.0


def test_toml_round_trip_and_mode_key(tmp_path: Path) -> None:
    p = Params.preset("relaxed").replace(cutoff=0.5, cooldown_s=150.0)
    path = tmp_path / "best.toml"
    p.to_toml(path)
    assert Params.from_toml(path) == p
    (tmp_path / "small.toml").write_text('mode = "relaxed"\ncutoff = 0.4\n')
    q = Params.from_toml(tmp_path / "small.toml")
    assert q.cutoff == 0.4 and q.cooldown_s == 120.0


def test_a_mode_that_contradicts_the_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "best.toml"
    Params.preset("relaxed").to_toml(f)
    assert Params.from_toml(f).mode == "relaxed" and Params.from_toml(f, mode="relaxed").mode == "relaxed"
    with pytest.raises(ConfigError, match=r"best\.toml: mode = 'relaxed' in the file contradicts the requested mode 'default'"):
        Params.from_toml(f, mode="default")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("cooldown_s = 200\n")
    p = Params.load("default", tmp_path / "p.toml", env={"TIERLAB_COOLDOWN_S": "240", "TIERLAB_TOKENS_A": "5",
                                                          "TIERLAB_RESERVE_FALLBACK": "true", "OTHER": "x"})
    assert (p.cooldown_s, p.tokens_a, p.reserve_fallback) == (240.0, 5, True)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Params.load(env={"TIERLAB_TOKENS_A": "6  # Tier A"}), "TIERLAB_TOKENS_A: tokens_a must be int, got '6  # Tier A'"),
        (lambda: Params.load(env={"TIERLAB_CUTOFF": "0.4 # tuned"}), "TIERLAB_CUTOFF: cutoff must be float, got '0.4 # tuned'"),
        (lambda: Params.preset().replace(cooldown_s=-5.0), "cooldown_s = -5.0"),
        (lambda: Params.preset().replace(cooldown_s=-5.0), "greater than or equal to 0"),
        (lambda: Params.preset().replace(tier_b=("MSFT", "NVDA", "META")), "ticker NVDA is already in tier_a"),
        (lambda: Params.preset().replace(baskets=[{"name": "X", "members": ["AAPL", "MSFT"], "target": "AAPL"}]),
         "basket X routes to AAPL, which is not an inverse ETF"),
        (lambda: Params.preset().replace(baskets=[{"name": "X", "members": ["AAPL", "ZZZ"], "target": "SQQQ"}]),
         "basket X member ZZZ is not a stock of the tiers"),
        (lambda: Params.preset().replace(cutof=0.3), "unknown parameter 'cutof'; did you mean 'cutoff'?"),
        (lambda: Params.preset().replace(cutoff=0.02, cutoff_delta=-0.03), "cutoff + cutoff_delta must be > 0"),
        (lambda: Params.preset().replace(conflicts=[("QQQ", "SOXL")]), "names SOXL, which is not in the universe"),
        (lambda: Params.preset().replace(max_positions="4"), "max_positions = '4'"),
        (lambda: Params.preset("aggressive"), "unknown preset 'aggressive'"),
    ],
)
def test_bad_values_are_refused_with_field_and_value(build, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build()
    assert message in str(err.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("cooldown_s = -1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: cooldown_s = -1"):
        Params.from_toml(f)
    f.write_text("cooldown_s = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Params.from_toml(f)
    with pytest.raises(ConfigError, match="params file not found"):
        Params.from_toml(tmp_path / "missing.toml")


# --- issue 9 §4: environment parsing, TIERLAB_MODE and the bounds of every number ---------------


@pytest.mark.parametrize("raw", ["maybe", "2", "tru", ""])
def test_a_bad_bool_in_the_environment_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        Params.load(env={"TIERLAB_RESERVE_FALLBACK": raw})
    assert str(err.value) == f"TIERLAB_RESERVE_FALLBACK: reserve_fallback must be bool, got {raw!r}"


@pytest.mark.parametrize(("raw", "want"), [("off", False), (" YES ", True), ("0", False), ("on", True)])
def test_good_bools_in_the_environment_are_read(raw: str, want: bool) -> None:
    assert Params.load("relaxed", env={"TIERLAB_RESERVE_FALLBACK": raw}).reserve_fallback is want


@pytest.mark.parametrize("raw", ["2.5", "3.0", "1e1", "three"])
def test_a_non_integer_int_is_refused_not_truncated(raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Params.load(env={"TIERLAB_MAX_POSITIONS": raw})
    assert str(err.value) == f"TIERLAB_MAX_POSITIONS: max_positions must be int, got {raw!r}"
    f = tmp_path / "p.toml"
    f.write_text("max_positions = 2.5\n")
    with pytest.raises(ConfigError, match=r"p\.toml: max_positions = 2\.5"):
        Params.from_toml(f)


def test_tierlab_mode_applies_its_preset_under_the_other_overrides(tmp_path: Path) -> None:
    p = Params.load(env={"TIERLAB_MODE": "relaxed", "TIERLAB_COOLDOWN_S": "150"})
    assert p.mode == "relaxed" and p.direction_lock_s == 90.0 and p.reserve_fallback is True
    assert p.cooldown_s == 150.0  # the field override still wins over the preset
    assert Params.load("relaxed", env={"TIERLAB_MODE": "relaxed"}) == Params.preset("relaxed")
    (tmp_path / "p.toml").write_text("cutoff = 0.5\n")
    q = Params.load(path=tmp_path / "p.toml", env={"TIERLAB_MODE": "relaxed"})
    assert (q.mode, q.cutoff, q.cooldown_s) == ("relaxed", 0.5, 120.0)
    assert Params.load(env={}) == Params.preset("default")


@pytest.mark.parametrize(
    ("mode", "env_mode", "message"),
    [
        (None, "fast", "TIERLAB_MODE: mode must be one of default, relaxed, got 'fast'"),
        (None, "Relaxed", "TIERLAB_MODE: mode must be one of default, relaxed, got 'Relaxed'"),
        ("default", "relaxed", "TIERLAB_MODE=relaxed contradicts the requested mode 'default'"),
    ],
)
def test_tierlab_mode_is_refused_when_unknown_or_contradicted(mode: str | None, env_mode: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Params.load(mode, env={"TIERLAB_MODE": env_mode})
    assert message in str(err.value)


# field: (lower bound, lower inclusive, upper bound, upper inclusive); None = unbounded. Written by hand
# from the parameter table: a bound loosened or dropped in strategies/params.py fails here.
BOUNDS: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "cadence_a_s": (0, True, None, False), "cadence_b_s": (0, True, None, False),
    "tokens_a": (0, True, None, False), "tokens_b": (0, True, None, False), "tokens_reserve": (0, True, None, False),
    "reserve_fallback_window_s": (0, True, 60, True),
    "mom_window": (2, True, 390, True), "vol_window": (2, True, 390, True), "vwap_window": (2, True, 390, True),
    "w_mom": (0, True, None, False), "w_vwap": (0, True, None, False), "score_gain": (0, False, None, False),
    "spike_mult": (1, False, None, False), "cutoff": (0, False, 1, True), "cutoff_delta": (-0.5, True, 0.5, True),
    "strong_margin": (0, True, None, False), "cooldown_s": (0, True, None, False),
    "direction_lock_s": (0, True, None, False), "cap_a": (0, True, None, False), "cap_b": (0, True, None, False),
    "cap_bench": (0, True, None, False), "cap_etf": (0, True, None, False), "global_daily_cap": (0, True, None, False),
    "idempotency_window_s": (0, True, None, False), "risk_per_trade": (0, False, 0.1, True),
    "stop_loss_pct": (0, False, 1, False), "take_profit_pct": (0, False, None, False),
    "max_concurrent_risk": (0, False, 1, True), "daily_loss_limit": (0, False, 1, True),
    "max_positions": (1, True, None, False), "exposure_cap": (0, False, 1, True), "min_slots": (1, True, None, False),
    "kelly_cap": (0, True, 1, True), "kelly_min_trades": (1, True, None, False), "etf_lock_s": (0, True, None, False),
    "flatten_before_close_min": (0, True, None, False), "max_hold_minutes": (0, True, None, False),
    "slippage": (0, True, 0.1, False), "fee_per_share": (0, True, None, False), "fee_per_order": (0, True, None, False),
    "llm_min_score": (0, True, 1, True), "llm_daily_limit": (0, True, None, False),
    # the session-rule parameters of issue 12 (rows for fields a branch does not have yet are not run)
    "rollback_1h_window_min": (1, True, 180, True), "rollback_2h_window_min": (1, True, 180, True),
    "rollback_min_actionable": (0, True, None, False), "rollback_stop_rate": (0, False, 1, True),
    "rollback_flip_rate": (0, False, 1, True), "flip_window_s": (0, True, None, False),
    "llm_surge_calls": (0, True, None, False), "rollback_overflow_a": (0, False, 1, True),
    "rollback_delta_shrink": (0, True, 1, True), "rollback_cooldown_s": (0, True, None, False),
    "rollback_lock_s": (0, True, None, False), "rollback_llm_min_score": (0, True, 1, True),
}


NUMBERS = sorted(n for n, f in Params.model_fields.items() if f.annotation in (int, float))


def test_the_bounds_table_covers_every_number() -> None:
    assert set(NUMBERS) <= set(BOUNDS), "add the new parameter's bounds to BOUNDS"
    assert len(NUMBERS) >= 42


@pytest.mark.parametrize("name", NUMBERS)
def test_each_bound_is_enforced_and_each_inclusive_bound_accepted(name: str) -> None:
    lo, lo_in, hi, hi_in = BOUNDS[name]
    is_int = Params.model_fields[name].annotation is int
    step = 1 if is_int else 1e-6
    base = Params.preset().replace(cutoff=0.9) if name == "cutoff_delta" else Params.preset()  # cutoff + delta > 0
    cast = int if is_int else float
    for bound, inclusive, outside in ((lo, lo_in, -step), (hi, hi_in, step)):
        if bound is None:
            continue
        bad = cast(bound + outside) if inclusive else cast(bound)
        with pytest.raises(ConfigError) as err:
            base.replace(**{name: bad})
        assert f"{name} = {bad!r}" in str(err.value) and ("greater than" in str(err.value) or "less than" in str(err.value))
        if inclusive:
            assert getattr(base.replace(**{name: cast(bound)}), name) == bound
    if hi is None:  # unbounded above: a large value is fine
        assert getattr(base.replace(**{name: cast(10**6)}), name) == 10**6
