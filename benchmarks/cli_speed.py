"""CLI wall times: `--help` of every CLI, a warm sample backtest, and the tiered 256-set sweep.

Whole processes (what a user waits for), several runs each, median and spread printed, with the
median CPU seconds (user + sys of the child) beside the wall time, which a loaded machine inflates;
the `--help` figures sit next to a bare `python -c pass` as the peer (the interpreter's own start).
`--root DIR` measures another checkout (e.g. main, for before/after figures side by side).
The sweep is benchmarks/backtest_speed.py's tiered-basket run_grid (a year, 12 symbols, 256
sets) timed in a child process after a warm-up, so numba compilation is not counted.

    .venv/bin/python benchmarks/cli_speed.py [--runs 5] [--sweep] [--sets 256]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELP_CLIS = ("research.backtest", "research.tune", "research.compare", "research.llm", "live.sim", "data")

SWEEP = """
import time
from benchmarks.backtest_speed import tiered_sets
from data.sample import generate_panel
from research.backtest import run_grid
from strategies.tiered_basket import TieredBasketStrategy
panel = generate_panel("2024-01-01", "2024-12-31")
run_grid(TieredBasketStrategy(), panel.slice(None, panel.index[3000]), tiered_sets(2))
sets = tiered_sets({n})
t, c = time.perf_counter(), time.process_time()
run_grid(TieredBasketStrategy(), panel, sets)
print(time.perf_counter() - t, time.process_time() - c)
"""


CPU: list[float] = []  # CPU seconds of each child, in the order run


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wall(cmd: list[str], env: dict[str, str], root: Path = ROOT) -> float:
    """Wall seconds of one whole process (its output discarded); its CPU seconds go to CPU."""
    c0 = _child_cpu()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sec = time.perf_counter() - t
    CPU.append(_child_cpu() - c0)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return sec


def line(label: str, times: list[float], peer: float | None = None) -> str:
    """One printed row: median wall, min..max, median CPU of the same runs, the ratio to the peer."""
    med = statistics.median(times)
    cpu = statistics.median(CPU[-len(times):])
    ratio = f"  {med / peer:5.1f}x python -c pass" if peer else ""
    return (f"  {label:<44} median {med:6.2f} s wall, {cpu:6.2f} s cpu  (min {min(times):.2f}, "
            f"max {max(times):.2f}, n={len(times)}){ratio}")


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="processes per figure (the median is printed)")
    ap.add_argument("--sweep", action="store_true", help="also time the tiered 256-set sweep (about a minute per run)")
    ap.add_argument("--sweep-runs", type=int, default=1, help="sweep processes (each prints its own time)")
    ap.add_argument("--sets", type=int, default=256, help="sets in the sweep")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    ap.add_argument("--no-help", action="store_true", help="skip the --help figures")
    ap.add_argument("--no-backtest", action="store_true", help="skip the backtest figures")
    args = ap.parse_args()
    py = str(args.root / ".venv" / "bin" / "python") if (args.root / ".venv").exists() else sys.executable
    root = args.root.resolve()
    home = tempfile.mkdtemp(prefix="tierlab-bench-")
    env = {**os.environ, "TIERLAB_HOME": home, "PYTHONPATH": str(root)}

    print(f"checkout: {root}; python: {py}; TIERLAB_HOME={home}; load average {os.getloadavg()[0]:.1f}")
    peer = statistics.median(wall([py, "-c", "pass"], env, root) for _ in range(args.runs))
    print(f"  {'python -c pass (peer)':<44} median {peer:6.2f} s")
    if not args.no_help:
        for mod in HELP_CLIS:
            times = [wall([py, "-m", mod, "--help"], env, root) for _ in range(args.runs)]
            print(line(f"python -m {mod} --help", times, peer))

    if not args.no_backtest:
        out = tempfile.mkdtemp(prefix="tierlab-bench-out-")
        cmd = [py, "-m", "research.backtest", "--out", out]
        first = wall(cmd, env, root)  # builds the sample catalog (and compiles kernels on a cold cache)
        print(f"  {'first backtest (sample written, cache as found)':<44} {first:6.2f} s")
        times = [wall(cmd, env, root) for _ in range(args.runs)]
        print(line("warm `make backtest` (python -m research.backtest)", times, peer))

    if args.sweep:
        code = SWEEP.format(n=args.sets)
        for _ in range(args.sweep_runs):
            proc = subprocess.run([py, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
            wall_s, cpu_s = (float(x) for x in proc.stdout.split()[-2:])
            print(f"  tiered run_grid {args.sets} sets, a year x 12 symbols: {wall_s:6.2f} s wall, {cpu_s:6.2f} s cpu"
                  f" (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
