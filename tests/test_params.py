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
