"""Per-step inference latency of each core's policy: batch 1 and batch N, equal hidden size and equal parameters.

For each env (CartPole-P-v1: 2 floats; MiniGrid-Memory: the symbolic view and actions of configs/minigrid_memory.yaml) and
each hidden size H, the policy train_agent builds (its family config, ``agents.train.build_model``) is timed:

* equal hidden size: every core of ``--cores`` (default gru, lstm, mlp) at H units;
* equal parameters: every other core sized to the core parameter count of an LSTM at H (``agents.match_hidden_size``,
  same core input size), beside that LSTM.

Per configuration: ``policy.act`` (deterministic, state not reset: one C++ call for GRU/LSTM policies, see
``RecurrentActorCriticPolicy.fused_act``, and for those also the eager torch path at batch 1) at batch 1 and batch N, the same policy exported (``agents.export``) and run by ONNX Runtime in float32 and int8 at batch 1
(``agents.runtime.OnnxPolicy.act``, one thread; ``--no-export`` skips them), and the core alone (``core.step`` on random features under ``torch.inference_mode``) at batch 1 and N,
which separates the core's own cost from the encoder, heads and Python around it. One torch thread. Each number is
the median over ``--rounds`` rounds (configurations interleaved in every round, so machine drift hits all alike) of
the per-round p50 / p99 of ``--n`` calls after a warm-up.

    python scripts/bench_latency.py              # 64/128/256/512, both envs, batch 1 and 16: about 3 min
    python scripts/bench_latency.py --quick      # 64 and 256, fewer calls: < 30 s (smoke test; numbers are rough)

Writes results/latency.json and results/latency.md (``--quick``: latency_quick.*; ``--name``/``--out-dir`` change it).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import time_per_call_us  # noqa: E402

ENVS = ("CartPole-P-v1", "MiniGrid-Memory")
#: the cores timed unless --cores says otherwise
DEFAULT_CORES = ("gru", "lstm", "mlp")


def build_policy(env_id: str, core: str, hidden: int, device: str = "cpu"):
    """The policy train_agent would train for ``env_id`` (its family config) with this core and hidden size, on
    ``device``."""
    from agents.train import build_model, env_factory
    from agents.config import resolve_config
    from stable_baselines3.common.env_util import make_vec_env

    warnings.filterwarnings("ignore", message=".*mini-batch size.*")  # n_envs=1 here; never trained
    cfg = resolve_config(env=env_id, overrides={"core": core, "hidden_size": hidden, "device": device})
    cfg.n_envs, cfg.batch_size = 1, cfg.n_steps  # one env to build the model with; it is never trained
    venv = make_vec_env(env_factory(cfg), n_envs=1, seed=0)
    policy = build_model(cfg, venv, device).policy
    obs = venv.reset()[0]
    venv.close()
    policy.set_training_mode(False)
    return policy, obs, cfg.env


def configurations(env_id: str, hidden_sizes: List[int], device: str = "cpu",
                   cores: tuple = DEFAULT_CORES) -> List[Dict[str, Any]]:
    """[{view, core, hidden, policy, obs}] for one env: equal hidden size, then equal parameters (vs LSTM)."""
    from agents import core_param_count, match_hidden_size

    out = []
    for h in hidden_sizes:
        built = {}
        for core in dict.fromkeys(("lstm",) + tuple(cores)):  # the LSTM is the equal-parameters reference
            policy, obs, canonical = build_policy(env_id, core, h, device)
            built[core] = policy
            out.append({"env": canonical, "view": "equal hidden", "group": f"H={h}", "core": core, "hidden": h,
                        "policy": policy, "obs": obs})
        input_size = built["lstm"].core_pi.input_size
        target = core_param_count("lstm", input_size, h)
        for core in (c for c in cores if c != "lstm"):
            hm = match_hidden_size(core, "lstm", h, input_size)
            policy, obs, canonical = build_policy(env_id, core, hm, device)
            out.append({"env": canonical, "view": "equal params", "group": f"lstm:{h} ({target:,} core params)",
                        "core": core, "hidden": hm, "policy": policy, "obs": obs})
        out.append({**next(c for c in out if c["view"] == "equal hidden" and c["core"] == "lstm" and c["hidden"] == h
                            and c["env"] == canonical),
                    "view": "equal params", "group": f"lstm:{h} ({target:,} core params)"})
    return out


def exported(policy, exports: bool):
    """``{"onnx": OnnxPolicy, "int8": OnnxPolicy}`` for ``policy`` exported to a temporary folder (``{}`` when
    ``exports`` is off)."""
    if not exports:
        return {}
    from agents.runtime import OnnxPolicy

    folder = benchlib.export_to_temp(policy)
    return {"onnx": OnnxPolicy(folder, "fp32", threads=1), "int8": OnnxPolicy(folder, "int8", threads=1)}


def timers(c: Dict[str, Any], batch: int, exports: bool = True):
    """The timed calls of one configuration: act and core.step at batch 1 and N, exported act at batch 1."""
    policy, obs = c["policy"], c["obs"]
    core = policy.core_pi
    obs1 = obs
    obs_n = np.repeat(obs[None], batch, axis=0)
    device = policy.device
    s1, sn = policy.initial_state(1), policy.initial_state(batch)
    x1, xn = torch.randn(1, core.input_size, device=device), torch.randn(batch, core.input_size, device=device)
    c1, cn = core.initial_state(1), core.initial_state(batch)
    e1, en = torch.zeros(1, device=device), torch.zeros(batch, device=device)
    # act hands back numpy actions, so it waits for the GPU itself; core.step returns device tensors: wait for them
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def core_step(x, s, e):
        def f():
            with torch.inference_mode():
                out = core.step(x, s, e)
            sync()
            return out
        return f

    runtimes = exported(policy, exports)
    calls = {f"{kind}_b1": (lambda rt=rt, st=rt.initial_state(1): rt.act(obs1, st, False))
             for kind, rt in runtimes.items()}
    if runtimes:  # the floor: ONNX Runtime's session.run on ready-made inputs, no wrapper around it
        rt = runtimes["onnx"]
        feeds = {"obs": np.asarray(obs1)[None].astype(rt.obs_dtype), "state": rt.initial_state(1),
                 "episode_start": np.zeros(1, np.float32)}
        calls["ortraw_b1"] = lambda: rt.session.run(None, feeds)
    def unfused_act():
        policy.fused_act = False
        try:
            return policy.act(obs1, s1, episode_start=False, deterministic=True)
        finally:
            policy.fused_act = True

    if policy._fused_act_plan() is not None:  # the same act through the eager torch path, for the side-by-side ratio
        calls["eageract_b1"] = unfused_act
    return {
        **calls,
        "act_b1": lambda: policy.act(obs1, s1, episode_start=False, deterministic=True),
        f"act_b{batch}": lambda: policy.act(obs_n, sn, episode_start=False, deterministic=True),
        "core_b1": core_step(x1, c1, e1),
        f"core_b{batch}": core_step(xn, cn, en),
    }


def exported_table(rows: List[Dict[str, Any]]) -> List[str]:
    """Batch-1 act: eager torch vs ONNX Runtime fp32 vs int8, and the gru / lstm ratio in each runtime."""
    out = ["## Exported: batch-1 act, eager torch vs ONNX Runtime (fp32 and int8), equal hidden size", "",
           "One ONNX Runtime thread, `agents.runtime.OnnxPolicy.act` (numpy in and out, state carried by the caller), "
           "the same policy as the eager rows; 'bare session.run' = the fp32 graph called on ready-made inputs (no "
           "wrapper: the floor of the runtime). Ratios gru / lstm of the p50 in each runtime.", "",
           "| env | hidden | core | eager p50 / p99 µs | onnx p50 / p99 µs | int8 p50 / p99 µs | bare session.run "
           "p50 µs | onnx / eager | int8 / onnx | gru/lstm eager | gru/lstm onnx | gru/lstm int8 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sel = [r for r in rows if r["view"] == "equal hidden" and "onnx_b1_p50_us" in r]
    for r in sel:
        lstm = next(x for x in sel if x["env"] == r["env"] and x["hidden"] == r["hidden"] and x["core"] == "lstm")
        ratios = ["", "", ""]
        if r["core"] == "gru":
            ratios = [f"{r[k] / lstm[k]:.2f}" for k in ("act_b1_p50_us", "onnx_b1_p50_us", "int8_b1_p50_us")]
        out.append(f"| {r['env']} | {r['hidden']} | {r['core']} | {r['act_b1_p50_us']:.0f} / {r['act_b1_p99_us']:.0f} | "
                   f"{r['onnx_b1_p50_us']:.0f} / {r['onnx_b1_p99_us']:.0f} | "
                   f"{r['int8_b1_p50_us']:.0f} / {r['int8_b1_p99_us']:.0f} | {r['ortraw_b1_p50_us']:.0f} | "
                   f"{r['onnx_b1_p50_us'] / r['act_b1_p50_us']:.2f} | {r['int8_b1_p50_us'] / r['onnx_b1_p50_us']:.2f} | "
                   + " | ".join(ratios) + " |")
    return out + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="hidden 64 and 256, fewer calls (< 30 s; rough)")
    parser.add_argument("--hidden-sizes", default=None, help="comma list (default 64,128,256,512; quick: 64,256)")
    parser.add_argument("--envs", default=",".join(ENVS), help=f"comma list (default {','.join(ENVS)})")
    parser.add_argument("--cores", default=",".join(DEFAULT_CORES),
                        help=f"comma list of cores (default {','.join(DEFAULT_CORES)}; e.g. gru,lstm,mlp,mingru,lru,ffm,s6)")
    parser.add_argument("--batch", type=int, default=16, help="the batch-N size (default 16)")
    parser.add_argument("--n", type=int, default=None, help="timed calls per round (default 300; quick: 150)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per round (default 50; quick: 30)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick: 1)")
    parser.add_argument("--no-export", dest="exports", action="store_false",
                        help="skip the exported rows (ONNX Runtime fp32 and int8; needs onnx and onnxruntime)")
    parser.add_argument("--device", default="cpu", help="torch device of the eager rows: cpu (default), cuda or "
                        "cuda:N (the exported rows run on the CPU and are skipped on any other device)")
    parser.add_argument("--name", default=None, help="results file stem (default latency; quick: latency_quick)")
    parser.add_argument("--out-dir", default=None, help="folder for the result files (default results/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hidden = [int(h) for h in (args.hidden_sizes or ("64,256" if args.quick else "64,128,256,512")).split(",")]
    n = args.n or (150 if args.quick else 300)
    warmup = args.warmup if args.warmup is not None else (30 if args.quick else 50)
    rounds = args.rounds or (1 if args.quick else 5)
    batch = args.batch
    if min(hidden) < 1 or batch < 2 or n < 10 or rounds < 1:
        parser.error("expected hidden sizes >= 1, --batch >= 2, --n >= 10, --rounds >= 1")
    device = args.device
    if reason := benchlib.device_error(device):
        parser.error(reason)
    if device != "cpu":
        args.exports = False  # ONNX Runtime runs here on the CPU: its rows belong to the CPU table
    t0 = time.perf_counter()

    cores = tuple(c.strip() for c in args.cores.split(",") if c.strip())
    configs = [c for env_id in args.envs.split(",") for c in configurations(env_id.strip(), hidden, device, cores)]
    unique = list({id(c["policy"]): c for c in configs}.values())  # the equal-params LSTM is the equal-hidden one
    samples: Dict[int, Dict[str, List[Dict[str, float]]]] = {id(c["policy"]): {} for c in unique}
    calls = {id(c["policy"]): timers(c, batch, args.exports) for c in unique}
    for r in range(rounds):
        for c in unique:
            for key, fn in calls[id(c["policy"])].items():
                samples[id(c["policy"])].setdefault(key, []).append(time_per_call_us(fn, warmup=warmup, n=n))
        print(f"round {r + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    from agents import core_param_count
    rows = []
    for c in configs:
        pol = c["policy"]
        row = {k: c[k] for k in ("env", "view", "group", "core", "hidden")}
        row["core_params"] = core_param_count(c["core"], pol.core_pi.input_size, c["hidden"])
        row["policy_params"] = int(sum(p.numel() for p in pol.parameters()))
        for key, per_round in samples[id(pol)].items():
            row[f"{key}_p50_us"] = float(np.median([s["p50_us"] for s in per_round]))
            row[f"{key}_p99_us"] = float(np.median([s["p99_us"] for s in per_round]))
        rows.append(row)
    for r in rows:  # equal-params rows whose size could not reach the LSTM's count (match_hidden_size's size cap)
        ref = next(x for x in rows if x["env"] == r["env"] and x["group"] == r["group"] and x["core"] == "lstm")
        r["params_vs_lstm"] = r["core_params"] / ref["core_params"]

    bn = f"b{batch}"
    where = "" if device == "cpu" else f" Policy and state on {device} ({torch.cuda.get_device_name(device)}): " \
        "act takes numpy observations and returns numpy actions, core.step waits for the GPU (synchronize)."
    table = [f"One torch thread, eager, deterministic act, state not reset; batch N = {batch}.{where} "
             f"Median over {rounds} interleaved round(s) of the p50 / p99 of {n} calls after {warmup} warm-up calls. "
             "`core.step` = the core alone on random features (inference mode). Equal params: gru and mlp sized to "
             "the LSTM's core parameter count (agents.match_hidden_size). Ratios are gru / lstm of the act p50.", ""]
    for env in dict.fromkeys(r["env"] for r in rows):
        for view in ("equal hidden", "equal params"):
            table += [f"## {env}, {view}", "",
                      f"| group | core | hidden | core params | policy params | act b1 p50 / p99 µs | act {bn} p50 / "
                      f"p99 µs | core.step b1 p50 / p99 µs | core.step {bn} p50 / p99 µs | gru/lstm act b1 p50 |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            sel = [r for r in rows if r["env"] == env and r["view"] == view]
            for r in sel:
                lstm = next(x for x in sel if x["group"] == r["group"] and x["core"] == "lstm")
                ratio = f"{r['act_b1_p50_us'] / lstm['act_b1_p50_us']:.2f}" if r["core"] == "gru" else ""
                off = view == "equal params" and abs(r["params_vs_lstm"] - 1) > 0.02
                mark = f" (not matched: {100 * r['params_vs_lstm']:.0f}% of lstm)" if off else ""
                table.append(
                    f"| {r['group']} | {r['core']} | {r['hidden']} | {r['core_params']:,}{mark} | "
                    f"{r['policy_params']:,} | {r['act_b1_p50_us']:.0f} / {r['act_b1_p99_us']:.0f} | "
                    f"{r[f'act_{bn}_p50_us']:.0f} / {r[f'act_{bn}_p99_us']:.0f} | "
                    f"{r['core_b1_p50_us']:.0f} / {r['core_b1_p99_us']:.0f} | "
                    f"{r[f'core_{bn}_p50_us']:.0f} / {r[f'core_{bn}_p99_us']:.0f} | {ratio} |")
            table.append("")
    fused = [r for r in rows if r["view"] == "equal hidden" and "eageract_b1_p50_us" in r]
    if fused:
        table += ["## Fused act: one C++ call vs the eager torch path (batch 1, equal hidden size)", "",
                  "`policy.act` as above, and the same call with `policy.fused_act = False` (the eager path: encoder, "
                  "core step and heads as separate torch calls), interleaved in the same rounds.", "",
                  "| env | hidden | core | fused act p50 / p99 µs | eager act p50 / p99 µs | eager / fused |",
                  "|---|---|---|---|---|---|"]
        table += [f"| {r['env']} | {r['hidden']} | {r['core']} | {r['act_b1_p50_us']:.0f} / {r['act_b1_p99_us']:.0f} | "
                  f"{r['eageract_b1_p50_us']:.0f} / {r['eageract_b1_p99_us']:.0f} | "
                  f"{r['eageract_b1_p50_us'] / r['act_b1_p50_us']:.2f} |" for r in fused]
        table.append("")
    if args.exports:
        table += exported_table(rows)
    table.append(f"Total benchmark time {time.perf_counter() - t0:.0f} s.")
    settings = {"batch": batch, "n": n, "warmup": warmup, "rounds": rounds, "hidden_sizes": hidden, "torch_threads": 1,
                "device": device}
    benchlib.publish(args.name or ("latency_quick" if args.quick else "latency"), "bench_latency.py",
                     sys.argv[1:] if argv is None else argv, table, args.out_dir, settings=settings, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
