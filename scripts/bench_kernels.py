"""Fused CPU GRU/LSTM kernels vs the stock torch.nn.GRU / torch.nn.LSTM (oneDNN) path, one recurrent layer.

For every T x B x H of the grid (input size 64 by default, no resets inside the sequence so the stock path is ONE
nn.GRU / nn.LSTM call), through the core interface (``core.forward_sequence``) with ``kernel="fused"`` and
``kernel="stock"`` and the same weights:

- forward+backward (loss = <y, g> for a fixed random g; gradients of x, the initial state and every weight),
- forward only (``torch.no_grad``),

median of ``--repeats`` timings, the contenders interleaved round-robin so that machine noise hits all alike; the
matrix-product rate (GFLOP/s) of each beside this machine's measured single-thread peak; and the per-step latency of
``core.step`` (the ``act`` path, inference mode) at B = 1 and B = 8 (rollouts). Then every
registered core with its default kernel (the linear cores' fused scan included): forward+backward with resets at
``--all-T`` (B 8, H 128) against the fused GRU, and batch-1 step latency. One torch thread. Writes results/kernels.json and results/kernels.md (commit, CPU, torch version, command).

    python scripts/bench_kernels.py                          # the full grid: ~3-5 min on 2 shared CPU cores
    python scripts/bench_kernels.py --T 32 --B 8 --H 64 128  # a slice
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from benchlib import provenance, time_per_call_us, write_results

from agents import kernels
from agents.cores import CORES as CORE_REGISTRY, make_core

CORES = ("gru", "lstm")
KERNELS = ("stock", "fused")
STOCK_LABEL = {"gru": "nn.GRU", "lstm": "nn.LSTM (oneDNN)"}


def _calibrate(fn: Callable[[], object], min_time_s: float) -> int:
    """Calls per timing so that one timing lasts at least ``min_time_s`` (after a warm-up call)."""
    fn()
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    return max(1, math.ceil(min_time_s / max(once, 1e-7)))


def sequence_row(T: int, B: int, H: int, F: int, repeats: int, min_time_s: float) -> Dict[str, float]:
    """Median ms of fwd+bwd and fwd-only for each (core, kernel) at one shape."""
    g = torch.Generator().manual_seed(T * 10000 + B * 100 + H)
    x = torch.randn(T, B, F, generator=g)
    starts = torch.zeros(T, B)
    fns: Dict[str, Callable[[], object]] = {}
    for name in CORES:
        torch.manual_seed(0)
        stock = make_core(name, F, H, 1, kernel="stock")
        fused = make_core(name, F, H, 1, kernel="fused")
        fused.load_state_dict(stock.state_dict())
        state0 = torch.randn(B, *stock.state_shape, generator=g) * 0.1
        gy = torch.randn(T, B, H, generator=g)
        for kernel, core in (("stock", stock), ("fused", fused)):
            xg = x.clone().requires_grad_(True)
            sg = state0.clone().requires_grad_(True)

            def fwd_bwd(core=core, xg=xg, sg=sg, gy=gy):
                y, s = core.forward_sequence(xg, sg, starts)
                (y * gy).sum().backward()

            def fwd(core=core, state0=state0):
                with torch.no_grad():
                    core.forward_sequence(x, state0, starts)

            fns[f"{name}_{kernel}_fb"] = fwd_bwd
            fns[f"{name}_{kernel}_f"] = fwd
    return _interleaved_ms(fns, repeats, min_time_s)


def _interleaved_ms(fns: Dict[str, Callable[[], object]], repeats: int, min_time_s: float) -> Dict[str, float]:
    """Median ms per call of each contender, timed round-robin (each repeat times every contender once)."""
    inner = {k: _calibrate(fn, min_time_s) for k, fn in fns.items()}
    samples: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner[k]):
                fn()
            samples[k].append((time.perf_counter() - t) / inner[k] * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def step_rows(batches: List[int], hiddens: List[int], F: int, n: int) -> List[Dict[str, object]]:
    rows = []
    for B in batches:
        for H in hiddens:
            row: Dict[str, object] = {"B": B, "H": H}
            for name in CORES:
                torch.manual_seed(0)
                for kernel in KERNELS:
                    core = make_core(name, F, H, 1, kernel=kernel)
                    x = torch.randn(B, F)
                    state = core.initial_state(B)

                    def act(core=core, x=x, state=state):
                        with torch.inference_mode():
                            core.step(x, state)

                    row[f"{name}_{kernel}_p50_us"] = time_per_call_us(act, warmup=200, n=n)["p50_us"]
            rows.append(row)
    return rows


def every_core_rows(Ts: List[int], B: int, H: int, F: int, repeats: int, min_time_s: float,
                    step_calls: int) -> List[Dict[str, object]]:
    """Every registered memory core with its default kernel (fused GRU/LSTM, fused scan for the linear cores):
    forward+backward over ``[T, B]`` with resets (5% of steps), median ms, contenders interleaved; then batch-1
    ``core.step`` p50 us."""
    names = [n for n in CORE_REGISTRY if n != "mlp"]
    rows = []
    for T in Ts:
        g = torch.Generator().manual_seed(T)
        x = torch.randn(T, B, F, generator=g)
        starts = torch.rand(T, B, generator=g) < 0.05
        fns: Dict[str, Callable[[], object]] = {}
        for name in names:
            torch.manual_seed(0)
            core = make_core(name, F, H, 1)
            xg = x.clone().requires_grad_(True)
            sg = (torch.randn(B, *core.state_shape, generator=g) * 0.1).requires_grad_(True)
            gy = torch.randn(T, B, H, generator=g)

            def fwd_bwd(core=core, xg=xg, sg=sg, gy=gy):
                y, _ = core.forward_sequence(xg, sg, starts)
                (y * gy).sum().backward()

            fns[name] = fwd_bwd
        ms = _interleaved_ms(fns, repeats, min_time_s)
        for name in names:
            rows.append({"core": name, "T": T, "B": B, "H": H, "F": F, "fb_ms": ms[name],
                         "kernel": make_core(name, F, H, 1).kernel_in_use, "gru_over_core": ms["gru"] / ms[name]})
    if step_calls:
        for name in names:
            torch.manual_seed(0)
            core = make_core(name, F, H, 1)
            x1, state = torch.randn(1, F), core.initial_state(1)

            def act(core=core, x1=x1, state=state):
                with torch.inference_mode():
                    core.step(x1, state)

            p50 = time_per_call_us(act, warmup=200, n=step_calls)["p50_us"]
            for r in rows:
                if r["core"] == name:
                    r["step_b1_p50_us"] = p50
    return rows


GATES = {"gru": 3, "lstm": 4}


def matmul_flops(core: str, T: int, B: int, H: int, F: int, backward: bool) -> float:
    """The matrix-product floating-point operations of one layer over ``[T, B]``: per step, the input and recurrent
    products ``2 * B * (F + H) * G * H`` (``G`` gate blocks); the backward pass does two such products per forward
    one (the gradients of the inputs and of the weights), so forward + backward counts 3x. Elementwise gate
    arithmetic is left out: it is a small share at these sizes, and it is not what a GEMM peak measures."""
    fwd = 2.0 * T * B * (F + H) * GATES[core] * H
    return 3.0 * fwd if backward else fwd


def measured_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's single-thread float32 matrix-product rate: the best of ``repeats`` timings of an ``n x n``
    by ``n x n`` ``torch.mm`` (GFLOP/s); the ceiling any of these kernels' matrix products can reach."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def _gmean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[16, 32, 128])
    parser.add_argument("--B", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--H", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timings per contender and shape (median reported)")
    parser.add_argument("--min-time-ms", type=float, default=20.0, help="each timing loops the call this long at least")
    parser.add_argument("--step-calls", type=int, default=2000, help="calls per step-latency measurement (0: skip)")
    parser.add_argument("--name", default="kernels", help="results file stem")
    parser.add_argument("--all-T", type=int, nargs="*", default=[32, 128, 512],
                        help="sequence lengths of the every-core table (B 8, H 128; none: skip it)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    t_build = time.perf_counter()
    kernels.load()  # raises KernelBuildError with the reason where it cannot build
    build_s = time.perf_counter() - t_build
    print(f"fused kernels ready in {build_s:.1f} s (includes the build on first use)", flush=True)

    peak = measured_peak_gflops()
    print(f"measured peak: {peak:.1f} GFLOP/s (one thread, 1024^2 float32 torch.mm, best of 5)", flush=True)
    F = args.input_size
    header = (f"{'T':>4} {'B':>3} {'H':>4} | {'nn.GRU':>8} {'fusedGRU':>8} {'x':>5} | {'nn.LSTM':>8} {'fusedLSTM':>9} "
              f"{'x':>5} | {'fGRU/nnLSTM':>11}")
    rows = []
    print(f"median ms over {args.repeats} repeats; x = stock / fused (higher: fused faster)")
    print(header)
    t0 = time.perf_counter()
    for T in args.T:
        for B in args.B:
            for H in args.H:
                r = sequence_row(T, B, H, F, args.repeats, args.min_time_ms / 1e3)
                row = {"T": T, "B": B, "H": H, "F": F, **{f"{k}_ms": v for k, v in r.items()}}
                for mode in ("fb", "f"):
                    row[f"gru_speedup_{mode}"] = r[f"gru_stock_{mode}"] / r[f"gru_fused_{mode}"]
                    row[f"lstm_speedup_{mode}"] = r[f"lstm_stock_{mode}"] / r[f"lstm_fused_{mode}"]
                    row[f"fused_gru_vs_stock_lstm_{mode}"] = r[f"lstm_stock_{mode}"] / r[f"gru_fused_{mode}"]
                for core in CORES:
                    for kern in KERNELS:
                        flops = matmul_flops(core, T, B, H, F, backward=True)
                        row[f"{core}_{kern}_fb_gflops"] = flops / (r[f"{core}_{kern}_fb"] / 1e3) / 1e9
                rows.append(row)
                print(f"{T:4d} {B:3d} {H:4d} | {r['gru_stock_fb']:8.2f} {r['gru_fused_fb']:8.2f} "
                      f"{row['gru_speedup_fb']:5.2f} | {r['lstm_stock_fb']:8.2f} {r['lstm_fused_fb']:9.2f} "
                      f"{row['lstm_speedup_fb']:5.2f} | {row['fused_gru_vs_stock_lstm_fb']:11.2f}   "
                      f"(fwd-only x: GRU {row['gru_speedup_f']:.2f}, LSTM {row['lstm_speedup_f']:.2f}; fwd+bwd "
                      f"GFLOP/s fused GRU {row['gru_fused_fb_gflops']:.1f}, fused LSTM "
                      f"{row['lstm_fused_fb_gflops']:.1f}, nn.LSTM {row['lstm_stock_fb_gflops']:.1f})", flush=True)
    seq_s = time.perf_counter() - t0

    steps = []
    if args.step_calls:
        print("per-step latency, core.step in inference mode (p50 us)", flush=True)
        steps = step_rows([1, 8], args.H, F, args.step_calls)
        for s in steps:
            print(f"  B={s['B']:2d} H={s['H']:4d}  GRU stock {s['gru_stock_p50_us']:6.1f} "
                  f"fused {s['gru_fused_p50_us']:6.1f} | LSTM stock {s['lstm_stock_p50_us']:6.1f} "
                  f"fused {s['lstm_fused_p50_us']:6.1f}", flush=True)

    every = []
    if args.all_T:
        print("every core, default kernel, fwd+bwd with resets, B=8 H=128 (median ms; x = fused GRU / core)",
              flush=True)
        every = every_core_rows(args.all_T, 8, 128, F, args.repeats, args.min_time_ms / 1e3, args.step_calls)
        for r in every:
            step = f"  act B=1 p50 {r['step_b1_p50_us']:6.1f} us" if "step_b1_p50_us" in r else ""
            print(f"  {r['core']:7s} ({r['kernel']:5s}) T={r['T']:4d}  {r['fb_ms']:8.2f} ms  x {r['gru_over_core']:5.2f}"
                  f"{step}", flush=True)

    # ------------------------------------------------------------------ targets
    n = len(rows)
    summary = {
        "shapes": n,
        "gru_fb_speedup_gmean": _gmean([r["gru_speedup_fb"] for r in rows]),
        "gru_fb_speedup_min": min(r["gru_speedup_fb"] for r in rows),
        "gru_fb_speedup_max": max(r["gru_speedup_fb"] for r in rows),
        "gru_fb_at_least_3x": sum(r["gru_speedup_fb"] >= 3.0 for r in rows),
        "fused_gru_faster_than_stock_lstm_fb": sum(r["fused_gru_vs_stock_lstm_fb"] > 1.0 for r in rows),
        "lstm_fb_speedup_gmean": _gmean([r["lstm_speedup_fb"] for r in rows]),
        "lstm_fb_speedup_min": min(r["lstm_speedup_fb"] for r in rows),
        "lstm_fb_no_slower": sum(r["lstm_speedup_fb"] >= 1.0 for r in rows),
        "gru_f_speedup_gmean": _gmean([r["gru_speedup_f"] for r in rows]),
        "lstm_f_speedup_gmean": _gmean([r["lstm_speedup_f"] for r in rows]),
        "lstm_f_no_slower": sum(r["lstm_speedup_f"] >= 1.0 for r in rows),
        "peak_gflops": peak,
        "fused_gru_fb_peak_share_max": max(r["gru_fused_fb_gflops"] for r in rows) / peak,
        "fused_lstm_fb_peak_share_max": max(r["lstm_fused_fb_gflops"] for r in rows) / peak,
        "sequence_seconds": seq_s,
        "kernel_load_seconds": build_s,
    }
    print(f"fused GRU vs nn.GRU fwd+bwd: gmean {summary['gru_fb_speedup_gmean']:.2f}x "
          f"(min {summary['gru_fb_speedup_min']:.2f}, max {summary['gru_fb_speedup_max']:.2f}), >= 3x on "
          f"{summary['gru_fb_at_least_3x']}/{n}; faster than nn.LSTM on "
          f"{summary['fused_gru_faster_than_stock_lstm_fb']}/{n}")
    print(f"fused LSTM vs oneDNN fwd+bwd: gmean {summary['lstm_fb_speedup_gmean']:.2f}x (min "
          f"{summary['lstm_fb_speedup_min']:.2f}), no slower on {summary['lstm_fb_no_slower']}/{n}; fwd-only gmean "
          f"{summary['lstm_f_speedup_gmean']:.2f}x, no slower on {summary['lstm_f_no_slower']}/{n}")

    # ------------------------------------------------------------------ files
    table: List[str] = [
        f"One recurrent layer, input size {F}, no resets inside the sequences (so the stock path is one nn.GRU / "
        f"nn.LSTM call), through `core.forward_sequence` with `kernel=\"stock\"` vs `kernel=\"fused\"` and the same "
        f"weights. Median of {args.repeats} timings (contenders interleaved), each looping the call for "
        f">= {args.min_time_ms:g} ms; one torch thread. `x` = stock time / fused time (> 1: fused is faster). "
        "`fused GRU vs nn.LSTM` = nn.LSTM time / fused GRU time at the same hidden size.", ""]
    for mode, title in (("fb", "Forward + backward (ms)"), ("f", "Forward only, no grad (ms)")):
        table += [f"## {title}", "",
                  "| T | B | H | nn.GRU | fused GRU | x | nn.LSTM (oneDNN) | fused LSTM | x | fused GRU vs nn.LSTM |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            table.append(f"| {r['T']} | {r['B']} | {r['H']} | {r[f'gru_stock_{mode}_ms']:.2f} | "
                         f"{r[f'gru_fused_{mode}_ms']:.2f} | {r[f'gru_speedup_{mode}']:.2f} | "
                         f"{r[f'lstm_stock_{mode}_ms']:.2f} | {r[f'lstm_fused_{mode}_ms']:.2f} | "
                         f"{r[f'lstm_speedup_{mode}']:.2f} | {r[f'fused_gru_vs_stock_lstm_{mode}']:.2f} |")
        table.append("")
    table += ["## Matrix-product rate, forward + backward (GFLOP/s; % of the measured peak)", "",
              f"Measured peak: **{peak:.1f} GFLOP/s** (one thread, a 1024 x 1024 float32 `torch.mm`, best of 5). "
              "Counted: the input and recurrent matrix products, `3 x 2 x T x B x (F + H) x G x H` for G gate blocks "
              "(forward, and the two backward products per forward one); the gate arithmetic is not counted, so "
              "these rates are a floor on the work done.", "",
              "| T | B | H | nn.GRU | fused GRU | nn.LSTM (oneDNN) | fused LSTM |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f'{c}_{k}_fb_gflops']:.1f} ({100 * r[f'{c}_{k}_fb_gflops'] / peak:.0f}%)"
                 for c in CORES for k in KERNELS]
        table.append(f"| {r['T']} | {r['B']} | {r['H']} | " + " | ".join(cells) + " |")
    table.append("")
    if steps:
        table += ["## Per-step latency, `core.step` in inference mode (p50 us; the act/rollout path)", "",
                  "| B | H | GRU stock | GRU fused | LSTM stock | LSTM fused |", "|---|---|---|---|---|---|"]
        for s in steps:
            table.append(f"| {s['B']} | {s['H']} | {s['gru_stock_p50_us']:.1f} | {s['gru_fused_p50_us']:.1f} | "
                         f"{s['lstm_stock_p50_us']:.1f} | {s['lstm_fused_p50_us']:.1f} |")
        table.append("")
    if every:
        names = list(dict.fromkeys(r["core"] for r in every))
        Ts = list(dict.fromkeys(r["T"] for r in every))
        at = {(r["core"], r["T"]): r for r in every}
        table += ["## Every core, forward + backward with resets (ms)", "",
                  "Each registered core with its default kernel (`kernel` column: the fused GRU/LSTM kernels, the "
                  "fused scan of the linear cores), B = 8, H = 128, input 64, resets at 5% of the steps; "
                  "`x` = fused GRU time / core time (> 1: faster than the fused GRU). Act: batch-1 `core.step` "
                  "p50, inference mode.", "",
                  "| core | kernel | " + " | ".join(f"T={T} ms | x" for T in Ts) + " | act B=1 p50 us |",
                  "|---|---|" + "---|---|" * len(Ts) + "---|"]
        for name in names:
            cells = " | ".join(f"{at[name, T]['fb_ms']:.2f} | {at[name, T]['gru_over_core']:.2f}" for T in Ts)
            step = at[name, Ts[0]].get("step_b1_p50_us")
            table.append(f"| {name} | {at[name, Ts[0]]['kernel']} | {cells} | "
                         f"{'' if step is None else f'{step:.1f}'} |")
        table.append("")
        if 128 in Ts:
            scan = [n for n in names if at[n, 128]["kernel"] == "fused" and n not in ("gru", "lstm")]
            fast = [n for n in scan if at[n, 128]["gru_over_core"] >= 3.0]
            summary["scan_cores_3x_fused_gru_at_T128"] = f"{len(fast)}/{len(scan)}"
            table += [f"- scan cores >= 3x faster than the fused GRU at T=128: {len(fast)}/{len(scan)} "
                      f"({', '.join(fast) or 'none'}).", ""]
    table += ["## Targets", "",
              f"- fused GRU >= 3x nn.GRU (fwd+bwd): {summary['gru_fb_at_least_3x']}/{n} shapes; speedup gmean "
              f"{summary['gru_fb_speedup_gmean']:.2f}x, range {summary['gru_fb_speedup_min']:.2f}-"
              f"{summary['gru_fb_speedup_max']:.2f}x.",
              f"- fused GRU faster than nn.LSTM (oneDNN) at equal hidden size (fwd+bwd): "
              f"{summary['fused_gru_faster_than_stock_lstm_fb']}/{n} shapes.",
              f"- fused LSTM no slower than oneDNN: fwd+bwd {summary['lstm_fb_no_slower']}/{n} shapes (gmean "
              f"{summary['lstm_fb_speedup_gmean']:.2f}x, min {summary['lstm_fb_speedup_min']:.2f}x); fwd-only "
              f"{summary['lstm_f_no_slower']}/{n} (gmean {summary['lstm_f_speedup_gmean']:.2f}x).",
              f"- matrix-product rate, fwd+bwd: fused GRU up to {100 * summary['fused_gru_fb_peak_share_max']:.0f}%, "
              f"fused LSTM up to {100 * summary['fused_lstm_fb_peak_share_max']:.0f}% of the measured "
              f"{peak:.1f} GFLOP/s peak.",
              f"- kernel load: {build_s:.1f} s in this run (a first build on this machine takes ~35-45 s).", ""]
    command = "python scripts/bench_kernels.py" + "".join(f" {a}" for a in sys.argv[1:])
    payload = {"provenance": provenance(command), "settings": vars(args), "summary": summary, "sequence": rows,
               "step_latency": steps, "every_core": every}
    write_results(args.name, payload, table)
    print(f"wrote results/{args.name}.json and results/{args.name}.md")


if __name__ == "__main__":
    main()
