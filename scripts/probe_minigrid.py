"""What a trained MiniGrid-Memory policy remembers: where it looks at the cue and for how many steps it must hold it.

MiniGrid-MemoryS<N> shows a cue object in the start room; the episode ends when the agent steps next to one of the
two objects at the end of the hallway, with reward only if it matches the cue. How much memory the task needs
depends on the view and on the route the policy found: with minigrid's 7x7 view an agent that turns round at the
end of the hallway sees the cue, and both end objects, from there, so it has to hold the cue only for the few
actions that follow (turn, step); with a 3x3 view the cue is visible only from the start room.

For every run directory given (default: the MiniGrid-MemoryS7 comparison sweep, results/studies/minigrid_memory_s7.md), the trained
policy plays ``--episodes`` deterministic episodes (env seeds ``--seed``.., the same for every run, the env built with
the run's own options: view size, action set, episode limit). Per episode, read from the env itself:

* success: the episode ended on the matching object;
* cue seen: the cue's cell was in the agent's view (minigrid's ``agent_sees``, walls occlude) before some action;
* hold: the actions from the last view of the cue to the end of the episode (the one chosen while seeing it and the
  final step both counted) - how long the cue had to be remembered (0 = never needed: the cue never seen or the
  episode ran out);
* looked back: that last view was from the end of the hallway (the column of the two objects), not the start room;
* led back, succeeds: the same episode replayed with the route forced to the look-back point (walk to the end of the
  hallway, turn right twice to face the start room; the policy's state carried along), then played on by the
  policy: did it end on the matching object? High = it can make the decision once it is there, so a run at chance
  that never looks back failed to find the route, not to decide.

And per run, what its observation encoder still passes on: every observation the policy acted on in those episodes
goes through the policy's encoder (the layers before the memory core), and the probe reports the share of the
encoder's output units whose value varies across them (standard deviation >= 0.05: a unit that gives the same value
for every observation tells the core nothing) and, for a tanh encoder, the share of outputs pinned at +-1
(|x| >= 0.99, where tanh's gradient is under 2% of its peak). And how sure the policy is: the mean entropy (nats)
of its action distribution over the steps of its own episodes (ln 3 = 1.10 for a uniform choice of the three
movement actions, 0 for a policy that always picks one; the actions played are the deterministic ones either way).

    python scripts/probe_minigrid.py                                  # the MiniGrid-MemoryS7 sweep: about 1 min
    python scripts/probe_minigrid.py results/runs/sweep_minigrid9/*/*/ --name probe_minigrid9

And where a failing policy loses the cue (a linear read-out over the led-back episodes): the cue's kind from the
encoder's output on the look-back view, from the actor core's state after it and at the decision, and the matching
side from that last state (:func:`cue_probes`).

Writes results/<name>.json and results/<name>.md (default name probe_minigrid).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from bench_export import stateful  # noqa: E402

DEFAULT_RUNS = "results/runs/sweep_minigrid7/*/*/"
LEFT, RIGHT, FORWARD = 0, 1, 2  # minigrid's action numbers (also with action_set=move)


def probe_episode(env, act: Callable[[object, bool], object], seed: int) -> Dict[str, object]:
    """One episode of ``act(obs, episode_start) -> action`` on a MiniGrid-Memory env, measured from the env."""
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    if not hasattr(u, "success_pos"):
        raise ValueError(f"{env.spec.id if env.spec else type(u).__name__}: expected a MiniGrid-Memory env "
                         "(minigrid.envs.MemoryEnv), which has a cue and success/failure cells")
    cue = (1, u.height // 2 - 1)  # where MemoryEnv puts the start-room object
    end_column = u.success_pos[0]  # the column of the two end objects' neighbour cells
    start, done, steps, total = True, False, 0, 0.0
    last_seen, last_seen_x = None, None
    while not done:
        if u.agent_sees(*cue):
            last_seen, last_seen_x = steps, int(u.agent_pos[0])
        obs, reward, terminated, truncated, _ = env.step(act(obs, start))
        steps, total, start, done = steps + 1, total + float(reward), False, terminated or truncated
    ended_on_object = tuple(u.agent_pos) in (tuple(u.success_pos), tuple(u.failure_pos))
    return {"success": total > 0, "steps": steps, "cue_seen": last_seen is not None,
            "hold": steps - last_seen if (last_seen is not None and ended_on_object) else 0,
            "looked_back": last_seen_x is not None and last_seen_x >= end_column}


def led_back(env, act: Callable[[object, bool], object], seed: int) -> Dict[str, object]:
    """The episode of ``seed`` with the route forced to the end of the hallway and round to face the start room (two
    right turns; ``act`` sees every observation, so a recurrent policy's state follows the forced route), then played
    on by ``act``. Returns ``succeeds`` (it ended on the matching object), ``ended_on_object`` (on either one, not
    by running out of steps), ``calls`` (act calls in all; the first ``forced`` of them were on the forced route, so
    call ``forced`` is the one on the look-back view and the last one chose the final action), ``cue_is_key`` and
    ``upper_is_right`` (the matching object is the upper one)."""
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    cue = u.grid.get(1, u.height // 2 - 1)
    labels = {"cue_is_key": type(cue).__name__ == "Key", "upper_is_right": u.success_pos[1] < u.height // 2}
    forced = [FORWARD] * (u.success_pos[0] - int(u.agent_pos[0])) + [RIGHT, RIGHT]
    start, done, total, calls = True, False, 0.0, 0
    for action in forced:
        act(obs, start)
        calls += 1
        obs, reward, terminated, truncated, _ = env.step(action)
        start, total, done = False, total + float(reward), terminated or truncated
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs, False))
        calls += 1
        total, done = total + float(reward), terminated or truncated
    ended = tuple(u.agent_pos) in (tuple(u.success_pos), tuple(u.failure_pos))
    return {"succeeds": total > 0, "ended_on_object": ended, "calls": calls, "forced": len(forced), **labels}


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, l2: float = 1e-2, seed: int = 0) -> float:
    """Held-out accuracy of a linear read-out: an L2-regularised logistic regression from ``x [N, D]`` to the 0/1
    labels ``y [N]``, fitted on k-1 folds (features standardised by those folds) and scored on the last, over
    ``folds`` folds. 0.5 for features that say nothing about balanced labels, near 1 for ones that hold them."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(len(x), -1)
    y = torch.as_tensor(np.asarray(y, dtype=np.float64))
    if len(x) < 2 * folds or len(torch.unique(y)) < 2:
        raise ValueError(f"{len(x)} samples with labels {sorted(set(y.tolist()))}: a probe needs both labels and at "
                         f"least {2 * folds} samples")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    correct = 0
    for part in torch.chunk(order, folds):
        train = order[~torch.isin(order, part)]
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        xt, xv = (x[train] - mean) / std, (x[part] - mean) / std
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, y[train]) + l2 * (w * w).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            correct += int(((xv @ w + b > 0).double() == y[part]).sum())
    return correct / len(x)


def summarize(episodes: List[Dict[str, object]]) -> Dict[str, float]:
    wins = [e for e in episodes if e["success"]]
    held = [e["hold"] for e in wins if e["hold"] > 0]
    return {"episodes": len(episodes), "success": float(np.mean([e["success"] for e in episodes])),
            "steps": float(np.mean([e["steps"] for e in episodes])),
            "cue_seen": float(np.mean([e["cue_seen"] for e in episodes])),
            "looked_back": float(np.mean([e["looked_back"] for e in episodes])),
            "led_back_succeeds": float(np.mean([e["led_back_succeeds"] for e in episodes]))
            if all("led_back_succeeds" in e for e in episodes) else None,
            "hold_median_success": float(np.median(held)) if held else None,
            "hold_max_success": int(max(held)) if held else None}


#: a unit whose output varies less than this across the probe's observations is counted as passing nothing on
VARYING_STD = 0.05
#: |tanh(x)| at or above this is counted as saturated (the gradient 1 - tanh^2 is then below 0.02)
SATURATED = 0.99


def encoder_activity(policy, observations: np.ndarray) -> Dict[str, object]:
    """Share of the encoder's output units that vary across ``observations`` (std >= VARYING_STD) and, for a tanh
    encoder, share of its outputs at |x| >= SATURATED (None for other activations)."""
    with torch.no_grad():
        features = policy.encoder(torch.as_tensor(np.asarray(observations)))
    varying = float((features.std(0) >= VARYING_STD).float().mean()) if len(features) > 1 else None
    saturated = float((features.abs() >= SATURATED).float().mean()) if policy.activation == "tanh" else None
    return {"encoder_units": int(features.shape[-1]), "encoder_varying": varying, "encoder_saturated": saturated}


def action_entropy(policy, observations: np.ndarray, starts: np.ndarray, mask: np.ndarray) -> float:
    """Mean entropy of the policy's action distribution at the steps where ``mask`` is set, the acted observations
    replayed as one sequence through ``evaluate_actions`` (reset at each ``starts``, so the states are the ones the
    acting carried: the recurrent contract)."""
    obs = torch.as_tensor(np.asarray(observations)).unsqueeze(1)
    starts_t = torch.as_tensor(np.asarray(starts, dtype=np.float32)).unsqueeze(1)
    with torch.no_grad():  # the entropy does not depend on the action passed
        _, _, entropy = policy.evaluate_actions(obs, torch.zeros(starts_t.shape), starts_t, policy.initial_state(1))
    return float(entropy[torch.as_tensor(np.asarray(mask, dtype=bool))].mean())


def cue_probes(policy, observations: np.ndarray, states: np.ndarray, looks: List[Dict[str, object]]):
    """Where the cue is lost, if it is: linear-probe accuracy (:func:`linear_probe_accuracy`) of the cue's kind from
    the encoder's output on the look-back view, from the actor core's state after that view and from its state at
    the decision (the one the step onto an object was chosen from), and of the matching side from that last state
    (what the action head needs), over the led-back episodes that ended on an object. None where those do not have
    both labels."""
    names = ("probe_cue_encoder_look", "probe_cue_state_look", "probe_cue_state_decide", "probe_side_state_decide")
    cue = np.array([lk["cue_is_key"] for lk in looks], dtype=float)
    side = np.array([lk["upper_is_right"] for lk in looks], dtype=float)
    if len(looks) < 10 or len(set(cue)) < 2 or len(set(side)) < 2:
        return dict.fromkeys(names)
    look = [lk["look"] for lk in looks]
    decide = [lk["decide"] for lk in looks]
    with torch.no_grad():
        encoded = policy.encoder(torch.as_tensor(observations[look])).numpy()
    return dict(zip(names, (linear_probe_accuracy(encoded, cue), linear_probe_accuracy(states[look], cue),
                            linear_probe_accuracy(states[decide], cue), linear_probe_accuracy(states[decide], side))))


def probe_run(run_dir: Path, episodes: int, seed0: int) -> Dict[str, object]:
    import envs
    from agents import load_policy
    from agents.export import policy_env_kwargs

    policy = load_policy(run_dir)
    kwargs = policy_env_kwargs(policy, run_dir)
    env = envs.make_env(policy.env_id, **kwargs)
    seen: List[np.ndarray] = []
    starts: List[bool] = []
    states: List[np.ndarray] = []  # the actor core's state each act call left (what its action was chosen from)
    policy_act = stateful(lambda o, s, e: policy.act(o, s, e, deterministic=True), policy.initial_state(1),
                          on_state=lambda s: states.append(policy._split(s)[0].reshape(-1).numpy().copy()))

    def act(obs, start):
        seen.append(np.array(obs))
        starts.append(bool(start))
        return policy_act(obs, start)

    eps, own, looks = [], [], []  # own: the steps of the policy's own episodes (not of the led-back replays)
    for seed in range(seed0, seed0 + episodes):
        first = len(seen)
        eps.append(probe_episode(env, act, seed))
        own.extend(range(first, len(seen)))
        first = len(seen)
        back = led_back(env, act, seed)
        eps[-1]["led_back_succeeds"] = back["succeeds"]
        if back["calls"] > back["forced"] and back["ended_on_object"]:  # the policy chose a side after the view
            looks.append({**back, "look": first + back["forced"], "decide": first + back["calls"] - 1})
    observations = np.stack(seen)
    activity = encoder_activity(policy, observations)
    own_mask = np.zeros(len(seen), dtype=bool)
    own_mask[own] = True
    activity["action_entropy"] = action_entropy(policy, observations, np.array(starts), own_mask)
    activity.update(cue_probes(policy, observations, np.stack(states), looks))
    parts = run_dir.parent.name.split("__")  # sweep cells are <env>__<label>__<size>__s<seed>
    cell = run_dir.parent.name if len(parts) == 4 else run_dir.name
    return {"run": str(run_dir), "env": policy.env_id, "cell": cell,
            "core": parts[1] if len(parts) == 4 else policy.core_name, "env_kwargs": kwargs, **summarize(eps),
            **activity}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="*", help=f"run directories or quoted glob patterns (default: {DEFAULT_RUNS})")
    parser.add_argument("--episodes", type=int, default=200, help="episodes per run (default 200)")
    parser.add_argument("--seed", type=int, default=1000, help="env seed of the first episode (default 1000)")
    parser.add_argument("--name", default="probe_minigrid", help="results file stem (default probe_minigrid)")
    parser.add_argument("--out-dir", default=None, help="folder for the result files (default results/)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: expected a positive integer")
    torch.set_num_threads(1)
    patterns = args.runs or [str(benchlib.ROOT / DEFAULT_RUNS)]  # quoted patterns are expanded here
    runs = benchlib.trained_runs([m for p in patterns for m in (sorted(glob.glob(p)) or [p])])
    if not runs:
        parser.error(f"no run directories with a model.zip (default {DEFAULT_RUNS}: run the MiniGrid-MemoryS7 sweep "
                     "first, see results/studies/minigrid_memory_s7.md)")
    rows = []
    for i, run in enumerate(runs):
        try:
            rows.append(probe_run(run, args.episodes, args.seed))
        except ValueError as exc:
            parser.error(f"{run}: {exc}")
        r = rows[-1]
        print(f"[{i + 1}/{len(runs)}] {r['cell']}: success {_pct(r['success'])}, cue seen {_pct(r['cue_seen'])}, "
              f"looked back {_pct(r['looked_back'])}, hold (median) {r['hold_median_success']}, led back succeeds "
              f"{_pct(r['led_back_succeeds'])}, encoder units varying {_pct(r['encoder_varying'])}, saturated "
              f"{_pct(r['encoder_saturated'])}, action entropy {r['action_entropy']:.3f}; cue read out from the "
              f"encoder at the look-back view {_pct(r['probe_cue_encoder_look'])}, the state there "
              f"{_pct(r['probe_cue_state_look'])}, at the decision {_pct(r['probe_cue_state_decide'])}; side at the "
              f"decision {_pct(r['probe_side_state_decide'])}", flush=True)

    table = [f"Deterministic actions, {args.episodes} episodes per run on env seeds {args.seed}.."
             f"{args.seed + args.episodes - 1}, each run's own env options. success: ended on the matching object; "
             "cue seen: the cue's cell was in view before some action; looked back: the last view of the cue was "
             "from the end of the hallway; hold: the actions from the last view of the cue to the end (the one chosen "
             "while seeing it and the final step both counted: how long the cue had to be remembered), median and "
             "max over successful episodes that saw it; led back, "
             "succeeds: the same episodes with the route forced to the end of the hallway and round (two right turns) "
             "to face the start room, then played on by the policy - the share that ended on the matching object. "
             f"encoder units varying: the share of the encoder's outputs whose standard deviation over every "
             f"observation the policy acted on here is >= {VARYING_STD}; saturated: the share of its outputs at "
             f"|x| >= {SATURATED} (tanh encoders); action entropy: the mean entropy (nats) of the policy's action "
             "distribution over the steps of its own episodes (ln 3 = 1.10: uniform over three actions). "
             "Each run's model.zip is its latest save: the end of training.", "",
             "| run | env options | success | mean steps | cue seen | looked back | hold median (max) | "
             "led back, succeeds | encoder units varying | encoder saturated | action entropy |", "|---" * 11 + "|"]
    for r in rows:
        opts = " ".join(f"{k}={v}" for k, v in r["env_kwargs"].items())
        hold = "-" if r["hold_median_success"] is None else f"{r['hold_median_success']:g} ({r['hold_max_success']})"
        table.append(f"| {r['cell']} | {opts} | {_pct(r['success'])} | {r['steps']:.1f} | {_pct(r['cue_seen'])} | "
                     f"{_pct(r['looked_back'])} | {hold} | {_pct(r['led_back_succeeds'])} | "
                     f"{_pct(r['encoder_varying'])} of {r['encoder_units']} | {_pct(r['encoder_saturated'])} | "
                     f"{r['action_entropy']:.3f} |")
    table += ["", "Where the cue is lost: held-out accuracy (5-fold) of a linear read-out (L2-regularised logistic "
              "regression) over the led-back episodes that ended on an object, of the cue's kind (key or ball) from "
              "the encoder's output on the look-back view, from the actor core's state after that view and from its "
              "state at the decision (the one the step onto an object was chosen from), and of the matching side "
              "(upper or lower object) from that last state. 50% = the features say nothing of it; near 100% = a "
              "linear head could read it; - = too few such episodes, or only one label among them.", "",
              "| run | led back, succeeds | cue from encoder, look-back | cue from state, look-back | "
              "cue from state, decision | side from state, decision |", "|---" * 6 + "|"]
    for r in rows:
        table.append(f"| {r['cell']} | {_pct(r['led_back_succeeds'])} | {_pct(r['probe_cue_encoder_look'])} | "
                     f"{_pct(r['probe_cue_state_look'])} | {_pct(r['probe_cue_state_decide'])} | "
                     f"{_pct(r['probe_side_state_decide'])} |")
    benchlib.publish(args.name, "probe_minigrid.py", sys.argv[1:] if argv is None else argv, table, args.out_dir,
                     settings={"episodes": args.episodes, "seed": args.seed}, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
