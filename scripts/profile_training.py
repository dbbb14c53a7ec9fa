"""Where the time goes: one training iteration (rollout and update) and one batch-1 ``act`` call, by component;
one MiniGrid update by operator.

Each component is a function of the trainer, the policy, the env or torch, timed by wrapping it with a wall clock
for the profiled iterations only (a few hundred nanoseconds per call, no tracing profiler); whatever is left of the
iteration is "the rest" (the PPO loss arithmetic, logging, callbacks, Python between the calls). The ``act`` call is
split by torch's profiler into the ATen operators it runs, with the remainder as Python and dispatch around them.

Settings are the benchmarks' (scripts/bench_throughput.py): MiniGrid-MemoryS7-v0 with 8 envs x 128 steps, batch
256, 4 epochs, hidden 128, and CartPoleNoVel-v1 with rl-zoo3's ppo_lstm settings (8 envs x 32 steps, 20 epochs,
batch 256, hidden 64); SB3's memoryless PPO runs the MiniGrid settings beside ours for reference.

    python scripts/profile_training.py                 # ~2-3 min on 2 CPU cores; writes results/profile.{md,json}
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch

from bench_throughput import cartpole_contenders, minigrid_contenders
from benchlib import publish

import envs
from agents import RecurrentPPO
from agents.buffer import RecurrentRolloutBuffer
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env

Target = Tuple[object, str, str]  # (owner, attribute, component name)


@contextmanager
def timed(targets: List[Target]) -> Iterator[Dict[str, List[float]]]:
    """Wrap each ``owner.attribute`` with a wall clock adding to ``seconds[component]`` (outermost call only, so a
    component that calls another wrapped one is not counted twice); restore the originals afterwards."""
    seconds: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0])
    depth = [0]
    saved = []
    for owner, attr, name in targets:
        original = getattr(owner, attr)
        own = vars(owner)
        saved.append((owner, attr, attr in own, own.get(attr)))

        def wrapper(*args, __f=original, __name=name, **kwargs):
            if depth[0]:
                return __f(*args, **kwargs)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return __f(*args, **kwargs)
            finally:
                seconds[__name][0] += time.perf_counter() - t
                seconds[__name][1] += 1
                depth[0] -= 1

        setattr(owner, attr, wrapper)
    try:
        yield seconds
    finally:
        for owner, attr, had_own, value in reversed(saved):
            if had_own:
                setattr(owner, attr, value)
            else:
                delattr(owner, attr)


def rollout_targets(model) -> List[Target]:
    policy = model.policy
    targets = [(model.env, "step", "env.step (VecEnv, all envs)"),
               (policy, "forward", "policy forward (encoder, core steps, heads, sampling)"),
               (model.rollout_buffer, "add", "buffer add (SB3)")]
    if hasattr(policy, "pack_obs"):
        targets.append((policy, "pack_obs", "observation packing"))
    if isinstance(model.rollout_buffer, RecurrentRolloutBuffer):
        targets.append((model.rollout_buffer, "add_state", "buffer add_state (core state copy)"))
    targets.append((model.rollout_buffer, "compute_returns_and_advantage", "GAE (once per rollout)"))
    targets.append((model, "_update_info_buffer", "episode info bookkeeping (SB3)"))
    return targets


def update_targets(model) -> List[Target]:
    policy = model.policy
    targets = [(policy, "evaluate_actions", "forward over the minibatch (encoder, core sequence, heads)"),
            (torch.Tensor, "backward", "backward"),
            (torch.nn.utils, "clip_grad_norm_", "gradient clipping"),
            (policy.optimizer, "step", "optimizer step (Adam)"),
            (policy.optimizer, "zero_grad", "zero_grad"),
            (model.rollout_buffer, "_padded" if hasattr(model.rollout_buffer, "_padded") else "get",
             "minibatch preparation (padding, gathers)")]
    if hasattr(policy, "update_obs_normalizer"):
        targets.append((policy, "update_obs_normalizer", "observation statistics"))
    return targets


def profile_iterations(model, iterations: int) -> Dict[str, object]:
    """Seconds per 1,000 env steps of the rollout and of the update, each split by component."""
    model.learn(model.n_steps * model.n_envs)  # warm-up iteration (and sets up the logger)
    out: Dict[str, object] = {}
    steps = model.n_steps * model.n_envs * iterations
    callback = CallbackList([])
    callback.init_callback(model)
    phases = {"rollout": (rollout_targets, lambda: model.collect_rollouts(model.env, callback, model.rollout_buffer,
                                                                          model.n_steps)),
              "update": (update_targets, model.train)}
    totals = dict.fromkeys(phases, 0.0)
    all_parts: Dict[str, Dict[str, List[float]]] = {ph: defaultdict(lambda: [0.0, 0]) for ph in phases}
    for _ in range(iterations):
        for phase, (targets, run) in phases.items():
            with timed(targets(model)) as parts:
                t = time.perf_counter()
                run()
                totals[phase] += time.perf_counter() - t
            for k, (sec, calls) in parts.items():
                all_parts[phase][k][0] += sec
                all_parts[phase][k][1] += calls
    for phase, total in totals.items():
        parts = all_parts[phase]
        rows = [{"component": k, "s_per_1k_steps": v[0] / steps * 1e3, "share": v[0] / total, "calls": v[1]}
                for k, v in sorted(parts.items(), key=lambda kv: -kv[1][0])]
        rest = total - sum(v[0] for v in parts.values())
        rows.append({"component": "the rest", "s_per_1k_steps": rest / steps * 1e3, "share": rest / total,
                     "calls": None})
        out[phase] = {"s_per_1k_steps": total / steps * 1e3, "rows": rows}
    return out


def profile_act(policy, obs, calls: int) -> Dict[str, object]:
    """p50 of batch-1 ``policy.act`` and the ATen operators inside it (torch profiler, self CPU time per call)."""
    state = policy.initial_state(1)
    for _ in range(300):
        _, state = policy.act(obs, state)
    samples = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter_ns()
        _, state = policy.act(obs, state)
        samples[i] = time.perf_counter_ns() - t
    p50 = float(np.percentile(samples, 50)) / 1e3
    from torch.profiler import ProfilerActivity, profile

    n = 500
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            _, state = policy.act(obs, state)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    rows = [{"op": e.key, "us_per_act": e.self_cpu_time_total / n, "calls_per_act": e.count / n} for e in ops
            if e.self_cpu_time_total / n >= 0.5]
    return {"p50_us": p50, "ops": rows, "ops_us_under_profiler": sum(e.self_cpu_time_total for e in ops) / n}


def profile_update_ops(model, top: int = 15) -> Dict[str, object]:
    """One update (``model.train()`` after a rollout) split by torch's profiler into its ATen operators and the
    autograd functions of the fused kernels (self CPU time; the profiler adds its own overhead per operator)."""
    from torch.profiler import ProfilerActivity, profile

    model.learn(model.n_steps * model.n_envs)  # a fresh rollout in the buffer
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.train()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    rows = [{"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in ops[:top]]
    return {"ms_under_profiler": total / 1e3, "ops": rows}


def phase_table(title: str, result: Dict[str, object]) -> List[str]:
    lines = [f"### {title}", "", "| phase | component | s per 1k steps | share of phase | calls |",
             "|---|---|---|---|---|"]
    for phase in ("rollout", "update"):
        r = result[phase]
        lines.append(f"| **{phase}** | **all** | **{r['s_per_1k_steps']:.3f}** | 100% | |")
        for row in r["rows"]:
            calls = "" if row["calls"] is None else f"{row['calls']:,}"
            lines.append(f"| {phase} | {row['component']} | {row['s_per_1k_steps']:.3f} | {row['share']:.0%} "
                         f"| {calls} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=4, help="profiled rollout+update iterations per model")
    parser.add_argument("--act-calls", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="profile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload: Dict[str, object] = {"settings": vars(args), "training": {}, "act": {}}
    table: List[str] = ["## One training iteration, by component", "",
                        "Seconds per 1,000 env steps, summed over the profiled iterations; a component's calls "
                        "made from inside another timed component count only in the outer one.", ""]
    minigrid, cartpole = minigrid_contenders(args.seed), cartpole_contenders(args.seed)
    for label, build in (("MiniGrid-MemoryS7-v0, ours (gru)", minigrid["recurrent-agents (gru)"]),
                         ("MiniGrid-MemoryS7-v0, ours (lstm)", minigrid["recurrent-agents (lstm)"]),
                         ("MiniGrid-MemoryS7-v0, SB3 PPO (memoryless MLP)", minigrid["SB3 PPO (memoryless MLP)"]),
                         ("CartPoleNoVel-v1 (rl-zoo3 ppo_lstm settings), ours (lstm)",
                          cartpole["recurrent-agents (lstm)"]),
                         ("CartPoleNoVel-v1 (rl-zoo3 ppo_lstm settings), ours (gru)",
                          cartpole["recurrent-agents (gru)"])):
        result = profile_iterations(build(), args.iterations)
        payload["training"][label] = result
        table += phase_table(label, result)
        print(f"{label}: rollout {result['rollout']['s_per_1k_steps']:.3f} s/1k, "
              f"update {result['update']['s_per_1k_steps']:.3f} s/1k", flush=True)
    table += ["## One update, by operator (MiniGrid-MemoryS7-v0, ours)", "",
              "Self CPU time of the operators of one `model.train()` (4 epochs over a 1,024-step rollout) under "
              "torch's profiler, the 15 largest; `GRULayerFunction*` / `LSTMLayerFunction*` are the fused kernels' "
              "per-step loops (their matrix products over all steps count as `aten::mm` / `aten::addmm`).", ""]
    for core in ("gru", "lstm"):
        result = profile_update_ops(minigrid[f"recurrent-agents ({core})"]())
        payload.setdefault("update_ops", {})[core] = result
        table += [f"### {core}: {result['ms_under_profiler']:.0f} ms under the profiler", "",
                  "| operator | ms | share | calls |", "|---|---|---|---|"]
        table += [f"| {r['op']} | {r['ms']:.1f} | {r['share']:.0%} | {r['calls']:,} |" for r in result["ops"]]
        table.append("")
        print(f"update ops {core}: {result['ms_under_profiler']:.0f} ms", flush=True)
    table += ["## One batch-1 `policy.act` call (hidden 128, deterministic), by ATen operator", "",
              "p50 wall time of the call without the profiler; operator times are self CPU time per call under "
              "torch's profiler (which adds its own overhead), the operators below 0.5 us left out.", ""]
    for env_id in ("CartPole-P-v1", "MiniGrid-MemoryS7-v0"):
        for core in ("gru", "lstm"):
            env = make_vec_env(lambda: envs.make_env(env_id), n_envs=1, seed=args.seed)
            model = RecurrentPPO("MlpPolicy", env, core=core, hidden_size=128, seed=args.seed)
            policy = model.policy
            policy.set_training_mode(False)
            obs = env.reset()[0]
            result = profile_act(policy, obs, args.act_calls)
            label = f"{env_id}, {core}"
            payload["act"][label] = result
            table += [f"### {label}: p50 {result['p50_us']:.0f} us "
                      f"(operators under the profiler: {result['ops_us_under_profiler']:.0f} us)", "",
                      "| ATen operator | us per act | calls per act |", "|---|---|---|"]
            table += [f"| {r['op']} | {r['us_per_act']:.1f} | {r['calls_per_act']:.0f} |" for r in result["ops"]]
            table.append("")
            print(f"act {label}: p50 {result['p50_us']:.0f} us", flush=True)
    publish(args.name, "profile_training.py", sys.argv[1:], table, **payload)


if __name__ == "__main__":
    main()
