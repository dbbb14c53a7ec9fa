"""The scan behind the linear-recurrence cores: fused C++ vs loop vs parallel (Hillis-Steele), per core, at the
training shapes.

For every core (mingru, lru, ffm, s6), sequence length T and batch B (hidden 128, input 64, one layer, resets at
random steps as in training), forward+backward through ``core.forward_sequence`` with ``scan="fused"``, ``scan="loop"``
and ``scan="parallel"`` and the same weights, interleaved round-robin, median of ``--repeats`` timings; and the batch-1
``core.step`` time (the act path, where both are one multiply-add). One torch thread. A ratio above 1 means the fused scan is
faster than the other; ``scan="auto"`` (``agents/cores/scan.py``) takes the one this table favours. Writes results/scan.json and results/scan.md (commit, CPU, torch version, command).

    python scripts/bench_scan.py                       # the grid: about 2 min on 2 shared CPU cores
    python scripts/bench_scan.py --T 8 16 --cores lru  # a slice
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List

import torch

from benchlib import provenance, time_per_call_us, write_results

from agents.cores import make_core

CORES = ("mingru", "lru", "ffm", "s6")
METHODS = ("fused", "loop", "parallel")


def _fwd_bwd(core, x, state, starts, g):
    def run():
        core.zero_grad(set_to_none=True)
        y, _ = core.forward_sequence(x, state, starts)
        (y * g).sum().backward()
    return run


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", nargs="+", default=list(CORES))
    p.add_argument("--T", nargs="+", type=int, default=[8, 16, 32, 128])
    p.add_argument("--B", nargs="+", type=int, default=[8, 16])
    p.add_argument("--H", type=int, default=128)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows: List[Dict[str, object]] = []
    table = ["| core | T | B | fused fwd+bwd ms | loop ms | parallel ms | loop / fused | parallel / fused |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.cores:
        for T in args.T:
            for B in args.B:
                torch.manual_seed(0)
                cores = {m: make_core(name, args.input_size, args.H, scan=m) for m in METHODS}
                for m in METHODS[1:]:
                    cores[m].load_state_dict(cores["fused"].state_dict())
                x = torch.randn(T, B, args.input_size, requires_grad=True)
                starts = torch.rand(T, B) < 0.02
                state = cores["fused"].initial_state(B)
                g = torch.randn(T, B, args.H)
                fns = {m: _fwd_bwd(c, x, state, starts, g) for m, c in cores.items()}
                for fn in fns.values():
                    fn()
                times = {m: [] for m in METHODS}
                for _ in range(args.repeats):
                    for m, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        times[m].append(time.perf_counter() - t0)
                ms = {m: 1e3 * statistics.median(v) for m, v in times.items()}
                rows.append({"core": name, "T": T, "B": B, "H": args.H, **{f"{m}_ms": ms[m] for m in METHODS},
                             "loop_over_fused": ms["loop"] / ms["fused"],
                             "parallel_over_fused": ms["parallel"] / ms["fused"]})
                table.append(f"| {name} | {T} | {B} | {ms['fused']:.2f} | {ms['loop']:.2f} | {ms['parallel']:.2f} | "
                             f"{ms['loop'] / ms['fused']:.2f} | {ms['parallel'] / ms['fused']:.2f} |")
                print(table[-1], flush=True)
    step_rows = ["", "Batch-1 `core.step` (inference mode), hidden " + str(args.H) + ":", "",
                 "| core | p50 us | state floats |", "|---|---|---|"]
    steps = {}
    for name in args.cores:
        core = make_core(name, args.input_size, args.H)
        x1, s1 = torch.randn(1, args.input_size), core.initial_state(1)
        with torch.inference_mode():
            t = time_per_call_us(lambda: core.step(x1, s1), warmup=100, n=1000)
        steps[name] = t
        step_rows.append(f"| {name} | {t['p50_us']:.1f} | {s1.numel()} |")
        print(step_rows[-1], flush=True)
    write_results("scan", {"provenance": provenance(), "rows": rows, "step": steps}, table + step_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
