"""The live CLIs build parameters with Params.load: preset, --params file, then TIERLAB_<FIELD>.

A bad value (TIERLAB_COOLDOWN_S=abc) is one line naming the variable and exit 2, before anything
connects; a good one reaches the strategy the runner runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]

CLIS = {
    "live run": ["live", "run", "--sim-url", "http://127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0", "--quiet"],
    "live-paper": ["tierlab.live_paper", "--quiet", "--bars", "5"],
}


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_bad_env_value_is_one_line_in_the_live_clis(cli: str, tmp_path: Path) -> None:
    env = {"TIERLAB_HOME": str(tmp_path), "TIERLAB_COOLDOWN_S": "abc", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", *CLIS[cli]], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TIERLAB_COOLDOWN_S" in lines[0] and "abc" in lines[0], proc.stderr


@pytest.mark.redis
def test_env_values_reach_the_runners_strategy(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """TIERLAB_COOLDOWN_S over a --params file over the preset: the strategy `python -m live run` builds."""
    import strategies.tiered_basket as tb
    from live.cli.__main__ import main
    from strategies.params import Params

    seen = []

    class Stop(Exception):
        pass

    class Capture(tb.TieredBasketStrategy):
        def __init__(self, params: Params | None = None) -> None:
            seen.append(params)
            raise Stop

    f = tmp_path / "p.toml"
    Params.preset("relaxed").model_copy(update={"direction_lock_s": 77.0}).to_toml(f)
    monkeypatch.setattr(tb, "TieredBasketStrategy", Capture)
    monkeypatch.setenv("TIERLAB_COOLDOWN_S", "600")
    root = f"tierlab-test:{uuid.uuid4().hex[:10]}:"
    try:
        with pytest.raises(Stop):
            main(["run", "--params", str(f), "--sim-url", "http://127.0.0.1:1", "--redis", redis_url, "--root", root,
                  "--quiet"])
    finally:
        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(f"{root}*"):
            r.delete(k)
    (p,) = seen
    assert (p.mode, p.cooldown_s, p.direction_lock_s) == ("relaxed", 600.0, 77.0)
    assert p.cutoff_delta == Params.preset("relaxed").cutoff_delta
    assert os.environ["TIERLAB_COOLDOWN_S"] == "600"
