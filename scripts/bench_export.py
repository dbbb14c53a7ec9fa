"""Return of exported policies: torch vs ONNX float32 vs ONNX int8, per trained run, same episodes.

For every run directory given (default: the CartPole-P-v1 comparison sweep, gru/lstm/mlp x 5 seeds, see
results/studies/cartpole_p.md), the policy is exported (``agents.export.write_export`` into a temporary folder) and played for
``--episodes`` episodes by three runtimes on the same env seeds: torch ``policy.act`` (eager, fused kernels), ONNX
Runtime on ``policy.onnx`` and on ``policy.int8.onnx`` (``agents.runtime.OnnxPolicy``, 1 thread). Deterministic
actions. Also reported: file sizes, and the fraction of steps on which int8 chose the action torch would have chosen
(run beside the torch policy on int8's own trajectory).

    python scripts/bench_export.py                                 # the CartPole-P sweep runs: about 5 min
    python scripts/bench_export.py results/runs/sweep_x/*/*/ --episodes 10 --name export_x

Writes results/export.json and results/export.md. Per-step latency of the exported files: scripts/bench_latency.py.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DEFAULT_RUNS = "results/runs/sweep_main/CartPole-P-v1__{gru,lstm,mlp,mlp+fs4}__h64__s*/*/"


def play(act, env, seeds: List[int], reference=None) -> Dict[str, float]:
    """Episodes with ``act(obs, start) -> action``; with ``reference`` (another act) also the action agreement."""
    returns, agree, steps = [], 0, 0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        start, done, total = True, False, 0.0
        while not done:
            action = act(obs, start)
            if reference is not None:
                agree += int(np.allclose(np.asarray(reference(obs, start)), np.asarray(action), atol=1e-4))
            steps += 1
            obs, reward, terminated, truncated, _ = env.step(action)
            start, total, done = False, total + float(reward), terminated or truncated
        returns.append(total)
    out = {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)), "steps": steps}
    if reference is not None:
        out["action_agreement"] = agree / max(steps, 1)
    return out


def stateful(fn, initial, on_state=None):
    """Wrap ``fn(obs, state, start) -> (action, state)`` into ``act(obs, start) -> action`` keeping the state;
    ``on_state(state)``, if given, sees each new state."""
    box = {"state": initial}

    def act(obs, start):
        action, box["state"] = fn(obs, box["state"], start)
        if on_state is not None:
            on_state(box["state"])
        return action.item() if np.ndim(action) == 0 else action
    return act


def evaluate_run(run_dir: Path, episodes: int, seed0: int) -> Dict[str, object]:
    import envs
    from agents import load_policy
    from agents.export import policy_env_kwargs, write_export
    from agents.runtime import OnnxPolicy

    policy = load_policy(run_dir)
    env = envs.make_env(policy.env_id, **policy_env_kwargs(policy, run_dir))
    parts = run_dir.parent.name.split("__")  # sweep cells are <env>__<label>__<size>__s<seed>
    label = parts[1] if len(parts) == 4 else policy.core_name
    seeds = list(range(seed0, seed0 + episodes))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_export(policy, tmp, int8=True, check=True, source=str(run_dir))
        fp32, int8 = OnnxPolicy(tmp, "fp32"), OnnxPolicy(tmp, "int8")
        torch_act = stateful(lambda o, s, e: policy.act(o, s, e, deterministic=True), policy.initial_state(1))
        row = {"run": str(run_dir), "env": policy.env_id, "core": label, "hidden": policy.hidden_size,
               "bytes_fp32": manifest["files"]["fp32"]["bytes"], "bytes_int8": manifest["files"]["int8"]["bytes"]}
        row["torch"] = play(torch_act, env, seeds)
        row["onnx_fp32"] = play(stateful(fp32.act, fp32.initial_state(1)), env, seeds)
        # int8's own trajectory, with the torch policy run beside it on the same observations
        shadow = stateful(lambda o, s, e: policy.act(o, s, e, deterministic=True), policy.initial_state(1))
        row["onnx_int8"] = play(stateful(int8.act, int8.initial_state(1)), env, seeds, reference=shadow)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="*", help=f"run directories (default: {DEFAULT_RUNS})")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per runtime (default 20)")
    parser.add_argument("--seed", type=int, default=1000, help="env seed of the first episode (default 1000)")
    parser.add_argument("--name", default="export", help="results file stem (default export)")
    parser.add_argument("--out-dir", default=None, help="folder for the result files (default results/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    patterns = [DEFAULT_RUNS.replace("{gru,lstm,mlp,mlp+fs4}", label) for label in ("gru", "lstm", "mlp", "mlp+fs4")]
    found = [r for pat in patterns for r in sorted(glob.glob(str(benchlib.ROOT / pat)))]
    runs = benchlib.trained_runs(args.runs or found)
    if not runs:
        parser.error(f"no run directories with a model.zip (default {DEFAULT_RUNS}: run the CartPole sweep first, "
                     "see results/studies/cartpole_p.md)")
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: expected a positive integer")
    t0 = time.perf_counter()
    rows = []
    for i, run in enumerate(runs):
        rows.append(evaluate_run(run, args.episodes, args.seed))
        r = rows[-1]
        print(f"[{i + 1}/{len(runs)}] {run.parent.name}: torch {r['torch']['mean_return']:.1f}, onnx "
              f"{r['onnx_fp32']['mean_return']:.1f}, int8 {r['onnx_int8']['mean_return']:.1f} "
              f"(int8 actions = torch's on {100 * r['onnx_int8']['action_agreement']:.1f}% of steps)", flush=True)

    table = [f"Deterministic actions, {args.episodes} episodes per runtime on env seeds {args.seed}.."
             f"{args.seed + args.episodes - 1} (the same for every runtime). torch = `policy.act` (eager, fused "
             "kernels); onnx = ONNX Runtime on `policy.onnx`; int8 = ONNX Runtime on `policy.int8.onnx` (dynamic "
             "quantization: int8 weights of every linear layer and recurrent product). 'int8 = torch' is the share "
             "of int8's steps on which the torch policy, run beside it on the same observations and carrying its "
             "own state, chose the same action.", "",
             "## Per core (mean over runs of each run's mean return)", "",
             "| env | core | runs | torch return | onnx return | int8 return | int8 - torch (worst run) | "
             "int8 = torch | size fp32 / int8 KiB |", "|---|---|---|---|---|---|---|---|---|"]
    for env in dict.fromkeys(r["env"] for r in rows):
        for core in dict.fromkeys(r["core"] for r in rows if r["env"] == env):
            sel = [r for r in rows if r["env"] == env and r["core"] == core]
            m = {k: float(np.mean([r[k]["mean_return"] for r in sel])) for k in ("torch", "onnx_fp32", "onnx_int8")}
            worst = min(r["onnx_int8"]["mean_return"] - r["torch"]["mean_return"] for r in sel)
            agree = float(np.mean([r["onnx_int8"]["action_agreement"] for r in sel]))
            size = f"{np.mean([r['bytes_fp32'] for r in sel]) / 1024:.0f} / {np.mean([r['bytes_int8'] for r in sel]) / 1024:.0f}"
            table.append(f"| {env} | {core} | {len(sel)} | {m['torch']:.1f} | {m['onnx_fp32']:.1f} | "
                         f"{m['onnx_int8']:.1f} | {m['onnx_int8'] - m['torch']:+.1f} ({worst:+.1f}) | "
                         f"{100 * agree:.1f}% | {size} |")
    table += ["", "## Per run", "", "| run | torch | onnx | int8 | int8 = torch |", "|---|---|---|---|---|"]
    for r in rows:
        name = Path(r["run"]).parent.name
        table.append(f"| {name} | {r['torch']['mean_return']:.1f} | {r['onnx_fp32']['mean_return']:.1f} | "
                     f"{r['onnx_int8']['mean_return']:.1f} | {100 * r['onnx_int8']['action_agreement']:.1f}% |")
    table += ["", f"Total benchmark time {time.perf_counter() - t0:.0f} s."]
    benchlib.publish(args.name, "bench_export.py", sys.argv[1:] if argv is None else argv, table, args.out_dir,
                     settings={"episodes": args.episodes, "seed": args.seed}, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
