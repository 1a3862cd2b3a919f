"""Rules-kernel speed: bar-evaluations per second for 1, 64 and 1024 parameter sets over a year of
minute bars for the 12-symbol universe. Peers in the same script: the same compiled step driven bar
by bar from a Python loop (the live runner's path), and the same step interpreted by CPython
(NUMBA_DISABLE_JIT=1, in a child process) on a slice. Compile time is reported apart.

Run: .venv/bin/python benchmarks/rules_kernel.py [--sets 1,64,1024] [--year 2024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from data.sample import generate_panel
from strategies.tiered_basket import TieredBasketStrategy, run_arrays, structure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="1,64,1024")
    ap.add_argument("--year", type=int, default=2024)
    ap.add_argument("--peer-bars", type=int, default=20_000, help="bars the Python-driven peer walks")
    ap.add_argument("--interp-bars", type=int, default=3_000, help="bars the interpreted peer walks")
    args = ap.parse_args()

    t0 = time.perf_counter()
    panel = generate_panel(f"{args.year}-01-01", f"{args.year}-12-31")
    t_gen = time.perf_counter() - t0
    strat = TieredBasketStrategy()
    base = strat.params
    t0 = time.perf_counter()
    inputs = strat.prepare(panel)
    t_prep = time.perf_counter() - t0
    n_bars, n_sym = inputs.close.shape
    print(f"panel: {n_bars:,} bars x {n_sym} symbols ({len(np.unique(inputs.day))} sessions), "
          f"generated in {t_gen:.2f} s, scored in {t_prep:.2f} s")

    st = structure(base)
    t0 = time.perf_counter()
    run_arrays(inputs, [base], st, 10_000.0, False)  # compile (or load from the numba cache)
    print(f"first call (compile or cache load): {time.perf_counter() - t0:.2f} s")

    rng = np.random.default_rng(0)
    print(f"{'sets':>6} {'seconds':>9} {'bar-evals/s':>14} {'sets/s':>9}")
    kernel_rate = None
    for k in (int(x) for x in args.sets.split(",")):
        plist = [base] + [base.replace(cutoff=float(rng.choice([0.3, 0.35, 0.4, 0.45, 0.5, 0.55])),
                                       cooldown_s=float(rng.choice([60, 120, 180, 240])),
                                       direction_lock_s=float(rng.choice([90, 180, 300])))
                          for _ in range(k - 1)]
        t0 = time.perf_counter()
        run_arrays(inputs, plist, st, 10_000.0, False)
        dt = time.perf_counter() - t0
        rate = n_bars * n_sym * k / dt
        kernel_rate = kernel_rate or rate
        print(f"{k:>6} {dt:>9.3f} {rate:>14,.0f} {k / dt:>9.2f}")

    # peer: the very same step function driven bar by bar from a Python loop (the live path)
    peer_bars = min(args.peer_bars, n_bars)
    state = strat.new_state()
    t0 = time.perf_counter()
    strat.walk(inputs, state, 0, peer_bars)
    dt = time.perf_counter() - t0
    peer_rate = peer_bars * n_sym / dt
    print(f"peer (Python loop over step_nb, {peer_bars:,} bars, 1 set): {peer_rate:,.0f} bar-evals/s")
    print(f"ratio compiled loop / Python-driven loop (1 set): {kernel_rate / peer_rate:,.1f}x")

    # peer: the very same step interpreted by CPython (what the rules cost without numba)
    code = (
        "import time; from data.sample import generate_panel; "
        "from strategies.tiered_basket import TieredBasketStrategy; "
        f"pn = generate_panel('{args.year}-01-01', '{args.year}-01-31'); s = TieredBasketStrategy(); "
        "inp = s.prepare(pn); st = s.new_state(); t0 = time.perf_counter(); "
        f"s.walk(inp, st, 0, {args.interp_bars}); print(time.perf_counter() - t0)"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    interp_rate = args.interp_bars * n_sym / float(out.stdout.strip().splitlines()[-1])
    print(f"peer (same step interpreted by CPython, {args.interp_bars:,} bars, 1 set): {interp_rate:,.0f} bar-evals/s")
    print(f"ratio compiled loop / interpreted step (1 set): {kernel_rate / interp_rate:,.0f}x")


if __name__ == "__main__":
    main()
