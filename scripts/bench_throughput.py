"""Training throughput and act latency of RecurrentPPO, side by side with the tools it is measured against.

Sections, all measured in this one process on this machine (one torch thread for every contender unless said; the
scale section's subproc rows step their envs in subprocesses):

1. CartPoleNoVel-v1 with rl-zoo3's ppo_lstm hyperparameters (8 envs, n_steps 32, batch 256, 20 epochs, gamma 0.98,
   lambda 0.8, lr lin 1e-3, clip lin 0.2, hidden 64, separate critic core, pi/vf [64], ReLU, no ortho init):
   sb3-contrib's RecurrentPPO (LSTM) vs ours (LSTM and GRU): steps/s over the whole run, and the mean return of 20
   deterministic eval episodes at the end.
2. MiniGrid-MemoryS7-v0 (8 envs, n_steps 128, batch 256, 4 epochs, lr 2.5e-4, ent 0.01, hidden 128): ours (GRU,
   LSTM) vs SB3's memoryless PPO with the same settings and the same observation wrapper: steps/s.
   Also the GRU at the LSTM's parameter count (152 units).
2b. Stock vs fused kernels: ours (LSTM, GRU) with torch's nn.LSTM/nn.GRU vs the fused C++ kernels, same settings;
   and the GRU at the LSTM's parameter count (fused kernel): the equal-parameter training cost.
3. Batch-1 per-step latency: our ``policy.act`` (GRU, LSTM, hidden 64/128/256) vs sb3-contrib's ``predict``.
4. Scale (``--sections scale``, not in the default run): ours (GRU, LSTM) on MiniGrid-MemoryS7-v0 at larger widths
   and more envs (``--scale-hidden-sizes``, ``--scale-envs``; n_steps 128, 4 minibatches, 4 epochs): seconds of the
   last rollout and update (the first iteration pays warm-up). With ``--device cuda`` every row also runs on the CPU
   (``--scale-cpu-threads`` torch threads, default all cores), and the table gives the GPU / CPU ratio side by side.
   ``--scale-vec-env dummy,subproc`` times each row with the envs in this process and in a subprocess each.

Writes results/throughput.json and results/throughput.md. ``--quick`` runs a small version (for a smoke test).

    python scripts/bench_throughput.py                  # full: ~15-20 min on 2 CPU cores
    python scripts/bench_throughput.py --quick          # ~1-2 min
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from benchlib import device_error, provenance, time_per_call_us, write_results

import envs
from agents import RecurrentPPO, match_hidden_size
from agents.train import param_count
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from sb3_contrib import RecurrentPPO as ContribRecurrentPPO


def kernel_contenders(seed: int):
    """Ours with the fused C++ kernels vs torch's stock kernels, same rl-zoo3 CartPoleNoVel settings."""
    env = lambda: make_vec_env(lambda: envs.make_env("CartPoleNoVel-v1"), n_envs=8, seed=seed)  # noqa: E731
    hp = dict(n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0,
              learning_rate=LinearSchedule(1e-3, 0.0, 1.0), clip_range=LinearSchedule(0.2, 0.0, 1.0), seed=seed)
    # the core reads the raw observation here (no encoder layers): the parameter match is for that input size
    obs_size = envs.make_env("CartPoleNoVel-v1").observation_space.shape[0]
    matched = match_hidden_size("gru", "lstm", 64, input_size=obs_size)
    specs = [(core, 64, kernel, f"{core}, {kernel} kernel")
             for core in ("lstm", "gru") for kernel in ("stock", "fused")]
    # the equal-parameter row: the default (fused) kernel only
    specs.append(("gru", matched, "fused", f"gru {matched} units = the lstm's parameters, fused kernel"))
    rows = {}
    for core, hidden, kernel, name in specs:
        kwargs = dict(encoder_sizes=[], net_arch=dict(pi=[64], vf=[64]), activation="relu", ortho_init=False,
                      core_kwargs={"kernel": kernel})
        rows[name] = (lambda c=core, h=hidden, k=kwargs: RecurrentPPO(
            "MlpPolicy", env(), core=c, hidden_size=h, policy_kwargs=k, **hp))
    return rows


def cartpole_contenders(seed: int, device: str = "cpu"):
    env = lambda: make_vec_env(lambda: envs.make_env("CartPoleNoVel-v1"), n_envs=8, seed=seed)  # noqa: E731
    hp = dict(n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0,
              learning_rate=LinearSchedule(1e-3, 0.0, 1.0), clip_range=LinearSchedule(0.2, 0.0, 1.0), seed=seed,
              device=device)
    ours_kwargs = dict(encoder_sizes=[], net_arch=dict(pi=[64], vf=[64]), activation="relu", ortho_init=False)
    return {
        "sb3-contrib RecurrentPPO (lstm)": lambda: ContribRecurrentPPO(
            "MlpLstmPolicy", env(), policy_kwargs=dict(ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64,
                                                       enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])), **hp),
        "recurrent-agents (lstm)": lambda: RecurrentPPO("MlpPolicy", env(), core="lstm", hidden_size=64,
                                                        policy_kwargs=ours_kwargs, **hp),
        "recurrent-agents (gru)": lambda: RecurrentPPO("MlpPolicy", env(), core="gru", hidden_size=64,
                                                       policy_kwargs=ours_kwargs, **hp),
    }


def minigrid_contenders(seed: int, device: str = "cpu"):
    env = lambda: make_vec_env(lambda: envs.make_env("MiniGrid-MemoryS7-v0"), n_envs=8, seed=seed)  # noqa: E731
    hp = dict(n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4, ent_coef=0.01, seed=seed, device=device)
    matched = match_hidden_size("gru", "lstm", 128, input_size=64)
    return {
        "SB3 PPO (memoryless MLP)": lambda: PPO("MlpPolicy", env(), **hp),
        "recurrent-agents (gru)": lambda: RecurrentPPO("MlpPolicy", env(), core="gru", hidden_size=128, **hp),
        "recurrent-agents (lstm)": lambda: RecurrentPPO("MlpPolicy", env(), core="lstm", hidden_size=128, **hp),
        # the GRU at the LSTM's parameter count (the core reads the 64-wide output of the MiniGrid encoder)
        f"recurrent-agents (gru, {matched} units = the lstm's parameters)": lambda: RecurrentPPO(
            "MlpPolicy", env(), core="gru", hidden_size=matched, **hp),
    }


def train_and_time(build, steps: int, eval_episodes: int, eval_env_id: str, seed: int) -> Dict[str, float]:
    model = build()
    t0 = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - t0
    row = {"steps": model.num_timesteps, "seconds": seconds, "steps_per_s": model.num_timesteps / seconds}
    logged = model.logger.name_to_value
    if "perf/update_s" in logged:
        row["last_rollout_s"] = logged["perf/rollout_s"]
        row["last_update_s"] = logged["perf/update_s"]
    if eval_episodes:
        eval_env = make_vec_env(lambda: envs.make_env(eval_env_id), n_envs=1, seed=seed + 1000)
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
        row["eval_mean_return"], row["eval_std_return"] = float(mean), float(std)
    return row


def run_contenders(contenders, steps: int, eval_episodes: int, env_id: str, seed: int) -> Dict[str, Dict[str, float]]:
    rows = {}
    for name, build in contenders.items():
        rows[name] = train_and_time(build, steps, eval_episodes, env_id, seed)
        extra = f"  eval {rows[name]['eval_mean_return']:6.1f}" if "eval_mean_return" in rows[name] else ""
        print(f"  {name:34s} {rows[name]['steps_per_s']:8.0f} steps/s{extra}", flush=True)
    return rows


def scale_rows(hidden_sizes: List[int], n_envs: int, iterations: int, device: str, cpu_threads: int,
               seed: int, vec_envs: Sequence[str] = ("dummy",)) -> List[Dict[str, object]]:
    """Ours on MiniGrid-MemoryS7-v0 at each width, on ``device`` and (when that is a GPU) on the CPU beside it, with
    the envs stepping in this process (``dummy``) and/or one subprocess each (``subproc``)."""
    n_steps = 128
    batch_size = n_envs * n_steps // 4
    devices = [device] + (["cpu"] if device != "cpu" else [])
    threads_before = torch.get_num_threads()
    rows = []
    try:
        for hidden in hidden_sizes:
            for core, vec_env, dev in itertools.product(("gru", "lstm"), vec_envs, devices):
                torch.set_num_threads(cpu_threads if dev == "cpu" else 1)
                env = make_vec_env(lambda: envs.make_env("MiniGrid-MemoryS7-v0"), n_envs=n_envs, seed=seed,
                                   vec_env_cls=SubprocVecEnv if vec_env == "subproc" else DummyVecEnv)
                try:
                    model = RecurrentPPO("MlpPolicy", env, core=core, hidden_size=hidden, n_steps=n_steps,
                                         batch_size=batch_size, n_epochs=4, learning_rate=2.5e-4, ent_coef=0.01,
                                         seed=seed, device=dev)
                    model.learn(iterations * n_envs * n_steps)
                finally:
                    env.close()  # subproc workers end here even when training fails
                logged = model.logger.name_to_value
                rollout_s, update_s = logged["perf/rollout_s"], logged["perf/update_s"]
                row = {"core": core, "hidden": hidden, "n_envs": n_envs, "n_steps": n_steps,
                       "batch_size": batch_size, "vec_env": vec_env, "device": dev,
                       "torch_threads": torch.get_num_threads(), "iterations": iterations,
                       "steps": model.num_timesteps, "kernel": model.policy.core_pi.kernel_in_use,
                       "params": param_count(model),
                       "last_rollout_s": rollout_s, "last_update_s": update_s,
                       "steps_per_s": n_envs * n_steps / (rollout_s + update_s)}
                rows.append(row)
                print(f"  {core:4s} H {hidden:5d} {dev:7s} {row['kernel']:5s} {vec_env:7s} rollout {rollout_s:7.3f} s"
                      f"  update {update_s:7.3f} s  {row['steps_per_s']:8.0f} steps/s", flush=True)
                del model, env
    finally:
        torch.set_num_threads(threads_before)
    add_cpu_ratios(rows)
    return rows


def add_cpu_ratios(rows: List[Dict[str, object]]) -> None:
    """Give each GPU row ``ratio_vs_cpu``: its steps/s over the CPU row of the same core, width and env stepping."""
    for row in rows:
        if row["device"] != "cpu":
            cpu = next(r for r in rows if r["device"] == "cpu" and r["core"] == row["core"]
                       and r["hidden"] == row["hidden"] and r["vec_env"] == row["vec_env"])
            row["ratio_vs_cpu"] = row["steps_per_s"] / cpu["steps_per_s"]


def latency_rows(hidden_sizes: List[int], n: int) -> List[Dict[str, object]]:
    env = make_vec_env(lambda: envs.make_env("CartPoleNoVel-v1"), n_envs=1, seed=0)
    obs = env.reset()[0]
    rows = []
    for hidden in hidden_sizes:
        for core in ("gru", "lstm"):
            policy = RecurrentPPO("MlpPolicy", env, core=core, hidden_size=hidden, n_steps=8, batch_size=8).policy
            state = policy.initial_state(1)
            t = time_per_call_us(lambda: policy.act(obs, state, episode_start=False, deterministic=True), n=n)
            rows.append({"impl": "recurrent-agents act", "core": core, "hidden": hidden, **t})
        # the floor: the bare eager-torch network (Linear+ReLU -> GRUCell -> Linear, argmax), as in ANCHORS.md
        lin1, cell, lin2 = nn.Linear(obs.shape[-1], 64), nn.GRUCell(64, hidden), nn.Linear(hidden, 2)
        h = torch.zeros(1, hidden)

        def floor():
            with torch.inference_mode():
                return lin2(cell(torch.relu(lin1(torch.from_numpy(obs).unsqueeze(0))), h)).argmax(-1).numpy()

        rows.append({"impl": "floor: bare eager torch step", "core": "gru", "hidden": hidden,
                     **time_per_call_us(floor, n=n)})
        contrib = ContribRecurrentPPO("MlpLstmPolicy", env, n_steps=8, batch_size=8,
                                      policy_kwargs=dict(lstm_hidden_size=hidden))
        _, lstm_state = contrib.predict(obs[None], deterministic=True)
        starts = np.zeros(1, dtype=bool)
        t = time_per_call_us(lambda: contrib.predict(obs[None], state=lstm_state, episode_start=starts,
                                                     deterministic=True), n=n)
        rows.append({"impl": "sb3-contrib predict", "core": "lstm", "hidden": hidden, **t})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke test; ratios are rough)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cartpole-steps", type=int, default=None, help="default 100000 (quick: 4096)")
    parser.add_argument("--minigrid-steps", type=int, default=None, help="default 30720 (quick: 4096)")
    parser.add_argument("--sections", default="cartpole,kernels,minigrid,latency")
    parser.add_argument("--kernel-steps", type=int, default=None, help="default 20480 (quick: 2048)")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="cartpole: deterministic eval episodes after training (default 20; quick: 0)")
    parser.add_argument("--name", default=None, help="results file stem (default throughput, quick: throughput_quick)")
    parser.add_argument("--device", default="cpu", help="torch device of every contender in the cartpole, minigrid "
                        "and scale sections: cpu (default), cuda or cuda:N; the kernels and latency sections are "
                        "CPU-only")
    parser.add_argument("--scale-hidden-sizes", default="256,1024,2048", help="scale section: widths (default "
                        "256,1024,2048)")
    parser.add_argument("--scale-envs", type=int, default=64, help="scale section: parallel envs (default 64)")
    parser.add_argument("--scale-iterations", type=int, default=3, help="scale section: rollout+update iterations "
                        "per row, the last one timed (default 3)")
    parser.add_argument("--scale-vec-env", default="dummy", help="scale section: how the envs step, dummy (in this "
                        "process, default), subproc (a process each) or dummy,subproc (both, side by side)")
    parser.add_argument("--scale-cpu-threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="scale section: torch threads of the CPU rows (default: every core this process may use)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if unknown := sections - {"cartpole", "kernels", "minigrid", "latency", "scale"}:
        parser.error(f"--sections {args.sections!r}: unknown {','.join(sorted(unknown))}; expected a comma-separated "
                     "subset of cartpole,kernels,minigrid,latency,scale")
    if reason := device_error(args.device):
        parser.error(reason)
    if args.device != "cpu" and sections & {"kernels", "latency"}:
        parser.error(f"--device {args.device!r}: the kernels (CPU C++ kernels) and latency sections are CPU-only; "
                     "expected --sections cartpole,minigrid,scale (scripts/bench_latency.py --device times GPU "
                     "latency)")
    for flag, value, least in (("--scale-envs", args.scale_envs, 1), ("--scale-iterations", args.scale_iterations, 2),
                               ("--scale-cpu-threads", args.scale_cpu_threads, 1)):
        if value < least:
            parser.error(f"{flag} {value}: expected an integer >= {least}")
    scale_vec_envs = list(dict.fromkeys(args.scale_vec_env.split(",")))
    if not set(scale_vec_envs) <= {"dummy", "subproc"}:
        parser.error(f"--scale-vec-env {args.scale_vec_env!r}: expected dummy, subproc or dummy,subproc")
    try:
        scale_hidden = [int(h) for h in args.scale_hidden_sizes.split(",")]
        if min(scale_hidden) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--scale-hidden-sizes {args.scale_hidden_sizes!r}: expected comma-separated positive integers")
    torch.set_num_threads(1)
    cartpole_steps = args.cartpole_steps or (4096 if args.quick else 100_000)
    minigrid_steps = args.minigrid_steps or (4096 if args.quick else 30_720)
    kernel_steps = args.kernel_steps or (2048 if args.quick else 20_480)
    payload: Dict[str, object] = {"provenance": provenance(), "device": args.device}
    table: List[str] = [f"Every contender's policy on `{args.device}`"
                        + (f" ({torch.cuda.get_device_name(args.device)}); the envs step on the CPU." if
                           args.device != "cpu" else ".")
                        + " One torch thread" + (" (the scale section's CPU rows: as said there)." if "scale" in
                                                  sections else "."), ""]

    if "cartpole" in sections:
        print(f"== CartPoleNoVel-v1, rl-zoo3 ppo_lstm hyperparameters, {cartpole_steps} steps", flush=True)
        eval_episodes = args.eval_episodes if args.eval_episodes is not None else (0 if args.quick else 20)
        rows = run_contenders(cartpole_contenders(args.seed, args.device), cartpole_steps, eval_episodes,
                              "CartPoleNoVel-v1", args.seed)
        base = rows["sb3-contrib RecurrentPPO (lstm)"]["steps_per_s"]
        table += ["## CartPoleNoVel-v1 (rl-zoo3 ppo_lstm hyperparameters)", "",
                  f"{cartpole_steps} steps, seed {args.seed}; eval: {eval_episodes} deterministic episodes after "
                  "training.", "",
                  "| implementation | steps/s | vs sb3-contrib | eval return | last rollout s | last update s |",
                  "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            r["ratio_vs_sb3_contrib"] = r["steps_per_s"] / base
            table.append(f"| {name} | {r['steps_per_s']:.0f} | {r['ratio_vs_sb3_contrib']:.2f}x | "
                         f"{r.get('eval_mean_return', float('nan')):.1f} | {r.get('last_rollout_s', float('nan')):.3f} | "
                         f"{r.get('last_update_s', float('nan')):.3f} |")
        table.append("")
        payload["cartpole"] = rows

    if "kernels" in sections:
        print(f"== CartPoleNoVel-v1 (same settings), stock vs fused kernels, {kernel_steps} steps", flush=True)
        rows = run_contenders(kernel_contenders(args.seed), kernel_steps, 0, "CartPoleNoVel-v1", args.seed)
        table += ["## Training cost, stock vs fused kernels (CartPoleNoVel-v1, rl-zoo3 ppo_lstm settings)", "",
                  f"{kernel_steps} steps, seed {args.seed}; rollout/update seconds of the last iteration (256 steps).",
                  "", "| core, kernel | steps/s | last rollout s | last update s |", "|---|---|---|---|"]
        for name, r in rows.items():
            table.append(f"| {name} | {r['steps_per_s']:.0f} | {r.get('last_rollout_s', float('nan')):.3f} | "
                         f"{r.get('last_update_s', float('nan')):.3f} |")
        table.append("")
        payload["kernels"] = rows

    if "minigrid" in sections:
        print(f"== MiniGrid-MemoryS7-v0, {minigrid_steps} steps", flush=True)
        rows = run_contenders(minigrid_contenders(args.seed, args.device), minigrid_steps, 0, "MiniGrid-MemoryS7-v0",
                              args.seed)
        base = rows["SB3 PPO (memoryless MLP)"]["steps_per_s"]
        table += ["## MiniGrid-MemoryS7-v0 (8 envs, n_steps 128, batch 256, 4 epochs, hidden 128)", "",
                  f"{minigrid_steps} steps, seed {args.seed}.", "",
                  "| implementation | steps/s | vs SB3 PPO (no memory) |", "|---|---|---|"]
        for name, r in rows.items():
            r["ratio_vs_sb3_ppo"] = r["steps_per_s"] / base
            table.append(f"| {name} | {r['steps_per_s']:.0f} | {r['ratio_vs_sb3_ppo']:.2f}x |")
        table.append("")
        payload["minigrid"] = rows

    if "latency" in sections:
        print("== batch-1 per-step latency (CartPoleNoVel obs, deterministic)", flush=True)
        rows = latency_rows([64, 128] if args.quick else [64, 128, 256], 500 if args.quick else 3000)
        table += ["## Batch-1 per-step latency (us, after warm-up)", "",
                  "| implementation | core | hidden | p50 | p99 |", "|---|---|---|---|---|"]
        for r in rows:
            print(f"  {r['impl']:22s} {r['core']:5s} {r['hidden']:4d}  p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:7.1f} us")
            table.append(f"| {r['impl']} | {r['core']} | {r['hidden']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
        table.append("")
        payload["latency"] = rows

    if "scale" in sections:
        print(f"== MiniGrid-MemoryS7-v0 at scale: {args.scale_envs} envs, hidden {args.scale_hidden_sizes}", flush=True)
        rows = scale_rows(scale_hidden, args.scale_envs, args.scale_iterations, args.device, args.scale_cpu_threads,
                          args.seed, scale_vec_envs)
        versus = args.device != "cpu"
        n_steps, batch_size = rows[0]["n_steps"], rows[0]["batch_size"]
        table += [f"## MiniGrid-MemoryS7-v0 at scale ({args.scale_envs} envs, n_steps {n_steps}, batch "
                  f"{batch_size}, 4 epochs)", "",
                  f"Seed {args.seed}; the last of {args.scale_iterations} iterations "
                  f"({args.scale_envs * n_steps} steps) "
                  "timed; steps/s = its steps / (rollout s + update s)."
                  + f" CPU rows: {args.scale_cpu_threads} torch threads.", "",
                  "| core | hidden | params | envs step in | device (kernel) | rollout s | update s | steps/s |"
                  + (" vs CPU |" if versus else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if versus else "")]
        for r in rows:
            ratio = (f" {r['ratio_vs_cpu']:.2f}x |" if "ratio_vs_cpu" in r else " |") if versus else ""
            table.append(f"| {r['core']} | {r['hidden']} | {r['params']:,} | {r['vec_env']} | "
                         f"{r['device']} ({r['kernel']}) | "
                         f"{r['last_rollout_s']:.3f} | {r['last_update_s']:.3f} | {r['steps_per_s']:.0f} |{ratio}")
        table.append("")
        payload["scale"] = rows

    write_results(args.name or ("throughput_quick" if args.quick else "throughput"), payload, table)


if __name__ == "__main__":
    main()
