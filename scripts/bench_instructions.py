"""Instructions per acting step, counted by valgrind (callgrind): per-step cost without the machine's timing noise.

Wall-clock latency on a shared machine moves by tens of percent between runs (see results/latency.md), more than
the GRU/LSTM difference it is meant to show. Instruction counts do not move: the same binary on the same input runs
the same instructions whatever else the machine is doing. They are not time (a cache miss or a wide vector
instruction counts one), but for two graphs of the same kind on the same runtime they rank the work done.

For each core (gru, lstm, mlp) and hidden size, the policy train_agent builds for the env (as in bench_latency.py) is
stepped at batch 1 under ``valgrind --tool=callgrind --instr-atstart=no``: start-up runs uninstrumented, then
counting is switched on (``callgrind_control -i on``) for ``--n`` calls of

* ``eager``: ``policy.act`` (torch, one thread, fused kernels),
* ``onnx`` / ``int8``: ``agents.runtime.OnnxPolicy.act`` on the exported float32 / int8 file (ONNX Runtime, one thread),

and the count of a run with zero calls (the switching itself) is subtracted. Each runtime is counted in its own
process.

    python scripts/bench_instructions.py                      # CartPole-P-v1, H 64-512, 3 runtimes: about 15 min
    python scripts/bench_instructions.py --hidden-sizes 64 --n 50 --name instructions_quick --out-dir /tmp/x

Needs valgrind (Debian package ``valgrind``). Writes results/instructions.json and results/instructions.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
RUNTIMES = ("eager", "onnx", "int8")


# ------------------------------------------------------------------------------------------------ child process
def child(runtime: str, env_id: str, core: str, hidden: int, export_dir: str, n: int) -> None:
    """Runs under valgrind: build the acting call, warm it up, count ``n`` calls."""
    if runtime == "eager":
        import torch

        sys.path.insert(0, str(HERE))
        from bench_latency import build_policy

        torch.set_num_threads(1)
        policy, obs, _ = build_policy(env_id, core, hidden)
        state = policy.initial_state(1)

        def call():
            policy.act(obs, state, episode_start=False, deterministic=True)
    else:
        from agents.runtime import OnnxPolicy

        policy = OnnxPolicy(export_dir, "fp32" if runtime == "onnx" else "int8", threads=1)
        obs = np.zeros(policy.obs_shape, dtype=policy.obs_dtype)
        state = policy.initial_state(1)

        def call():
            policy.act(obs, state, False)
    for _ in range(20):
        call()
    gc.collect()
    gc.disable()  # a collection inside the counted calls would be counted as the step's work
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
    for _ in range(n):
        call()
    subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    gc.enable()


def count(runtime: str, env_id: str, core: str, hidden: int, export_dir: str, n: int) -> int:
    """Instructions collected by callgrind over ``n`` counted calls in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/cg.out",
               sys.executable, str(Path(__file__).resolve()), "--child", runtime, env_id, core, str(hidden),
               export_dir or "-", str(n)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"valgrind run failed for {runtime} {core} H={hidden} (exit {proc.returncode}): "
                           + " | ".join(tail))
    return int(found.group(1))


# ------------------------------------------------------------------------------------------------ parent
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        runtime, env_id, core, hidden, export_dir, n = argv[1:7]
        child(runtime, env_id, core, int(hidden), export_dir, int(n))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--envs", default="CartPole-P-v1", help="comma list (default CartPole-P-v1)")
    parser.add_argument("--hidden-sizes", default="64,128,256,512", help="comma list (default 64,128,256,512)")
    parser.add_argument("--cores", default="gru,lstm,mlp", help="comma list (default gru,lstm,mlp)")
    parser.add_argument("--n", type=int, default=200, help="counted calls per run (default 200)")
    parser.add_argument("--name", default="instructions", help="results file stem (default instructions)")
    parser.add_argument("--out-dir", default=None, help="folder for the result files (default results/)")
    args = parser.parse_args(argv)
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        parser.error("valgrind is not installed: expected it on PATH (Debian: apt-get install valgrind)")
    if args.n < 1:
        parser.error(f"--n {args.n}: expected a positive integer")

    import torch

    sys.path.insert(0, str(HERE))
    import benchlib

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    hidden = [int(h) for h in args.hidden_sizes.split(",")]
    cores = [c.strip() for c in args.cores.split(",")]
    base = {rt: count(rt, "CartPole-P-v1", "gru", 64, _export("CartPole-P-v1", "gru", 64)
                      if rt != "eager" else "", 0) for rt in RUNTIMES}
    print(f"switching overhead (0 calls): {base}", flush=True)
    rows: List[Dict[str, object]] = []
    for env_id in [e.strip() for e in args.envs.split(",")]:
        for h in hidden:
            for core in cores:
                export_dir = _export(env_id, core, h)
                row = {"env": env_id, "core": core, "hidden": h}
                for rt in RUNTIMES:
                    total = count(rt, env_id, core, h, export_dir if rt != "eager" else "", args.n)
                    row[f"{rt}_instructions"] = (total - base[rt]) / args.n
                rows.append(row)
                print(f"{env_id} H={h} {core}: " + ", ".join(f"{rt} {row[f'{rt}_instructions'] / 1e3:.0f}k"
                                                            for rt in RUNTIMES), f"({time.perf_counter() - t0:.0f} s)",
                      flush=True)

    first = rows[0]
    repeat = {rt: (count(rt, first["env"], first["core"], first["hidden"],
                         _export(first["env"], first["core"], first["hidden"])
                         if rt != "eager" else "", args.n) - base[rt]) / args.n for rt in RUNTIMES}
    spread = {rt: abs(repeat[rt] / first[f"{rt}_instructions"] - 1) for rt in RUNTIMES}
    print(f"repeat of the first row: {repeat} (relative difference {spread})", flush=True)
    table = [f"Instructions per batch-1 acting step (valgrind callgrind, {args.n} counted calls after 20 warm-up calls, "
             "the count of a zero-call run subtracted; Python's garbage collector off while counting), deterministic "
             "act, state not reset. eager = torch "
             "`policy.act` (1 thread, fused kernels); onnx / int8 = `agents.runtime.OnnxPolicy.act` on the exported "
             "float32 / int8 file (ONNX Runtime, 1 thread). Counts do not depend on what else the machine runs, unlike "
             "wall-clock here (the repeat line below shows their spread); an instruction is not a fixed time, so "
             "read them as work, not latency.", "",
             "| env | hidden | core | eager k instr. | onnx k instr. | int8 k instr. | onnx / eager | int8 / onnx | "
             "gru/lstm eager | gru/lstm onnx | gru/lstm int8 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lstm = next((x for x in rows if x["env"] == r["env"] and x["hidden"] == r["hidden"] and x["core"] == "lstm"),
                    None)
        ratios = ["", "", ""]
        if r["core"] == "gru" and lstm is not None:
            ratios = [f"{r[f'{rt}_instructions'] / lstm[f'{rt}_instructions']:.2f}" for rt in RUNTIMES]
        table.append(f"| {r['env']} | {r['hidden']} | {r['core']} | "
                     + " | ".join(f"{r[f'{rt}_instructions'] / 1e3:,.0f}" for rt in RUNTIMES) + " | "
                     f"{r['onnx_instructions'] / r['eager_instructions']:.2f} | "
                     f"{r['int8_instructions'] / r['onnx_instructions']:.2f} | " + " | ".join(ratios) + " |")
    table += ["", "Repeatability: the first row counted again in fresh processes (and a fresh export) differs by "
                  + ", ".join(f"{rt} {100 * v:.2f}%" for rt, v in spread.items()) + ".",
              "", "Switching overhead subtracted (instructions of a zero-call run): "
                  + ", ".join(f"{rt} {v:,}" for rt, v in base.items()) + ".",
              "", f"Total benchmark time {time.perf_counter() - t0:.0f} s."]
    benchlib.publish(args.name, "bench_instructions.py", argv, table, args.out_dir,
                     settings={"n": args.n, "hidden_sizes": hidden, "baseline_instructions": base},
                     repeat_first_row=repeat, rows=rows)
    return 0


def _export(env_id: str, core: str, hidden: int) -> str:
    """The policy bench_latency.py times, exported (float32 + int8) to a temporary folder kept until exit."""
    import benchlib
    from bench_latency import build_policy

    policy, _, _ = build_policy(env_id, core, hidden)
    return benchlib.export_to_temp(policy)


if __name__ == "__main__":
    sys.exit(main())
