"""scripts/probe_minigrid.py: the per-episode accounting against scripted routes whose answers are known, and the
command end to end on a tiny trained MiniGrid-Memory run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
LEFT, RIGHT, FORWARD = 0, 1, 2  # minigrid's action numbers, kept by action_set=move
EAST, SOUTH, WEST, NORTH = 0, 1, 2, 3
SCRIPT = Path(sys.executable).with_name("train_agent")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "agents.cli"]

spec = importlib.util.spec_from_file_location("probe_minigrid", SCRIPTS / "probe_minigrid.py")
probe = importlib.util.module_from_spec(spec)
sys.modules["probe_minigrid"] = probe
spec.loader.exec_module(probe)


def make(view_size=7):
    return envs.make_env("MiniGrid-Memory", view_size=view_size, action_set="move", max_episode_steps=64)


def straight_route(env, side=LEFT):
    """No memory: walk to the end of the hallway, turn to one fixed side, step - right half the time."""
    u = env.unwrapped

    def act(obs, start):
        if u.agent_pos[0] < u.success_pos[0]:
            return FORWARD
        return side if u.agent_dir == EAST else FORWARD
    return act


def look_back_route(env):
    """The route the 7x7 view allows: at the end of the hallway turn round to face the start room (the cue and both
    end objects are in view there), then turn to the object that matches and step onto the cell beside it."""
    u = env.unwrapped
    plan = []

    def act(obs, start):
        if start:
            plan.clear()
        if u.agent_pos[0] < u.success_pos[0]:
            return FORWARD
        if not plan:
            assert u.agent_dir == EAST
            # an oracle for the test: the env knows which cell is the matching one; the probe must see that the
            # agent looked at the cue from the end of the hallway and held it for the turn and the step after it
            up = u.success_pos[1] < u.agent_pos[1]
            plan.extend([RIGHT, RIGHT, RIGHT if up else LEFT, FORWARD])
        return plan.pop(0)
    return act


def test_straight_route_is_at_chance_and_holds_the_cue_only_from_the_leftmost_start():
    env = make()
    eps, starts = [], []
    for seed in range(60):
        env.reset(seed=seed)
        starts.append(int(env.unwrapped.agent_pos[0]))
        eps.append(probe.probe_episode(env, straight_route(env), seed))
    assert 0.3 < sum(e["success"] for e in eps) / len(eps) < 0.7
    for x0, e in zip(starts, eps):
        assert not e["looked_back"]
        assert e["steps"] == (5 - x0) + 2  # forward to the end column, turn, step
        # facing east, the 7x7 view shows the cue (up and to the left) only from the leftmost start cell
        assert e["cue_seen"] == (x0 == 1)
        assert e["hold"] == (e["steps"] if x0 == 1 else 0)
    summary = probe.summarize(eps)
    assert summary["looked_back"] == 0.0 and summary["hold_max_success"] in (None, 6)


def test_look_back_route_always_wins_and_holds_the_cue_for_two_actions():
    env = make()
    eps = [probe.probe_episode(env, look_back_route(env), seed) for seed in range(40)]
    assert all(e["success"] and e["cue_seen"] and e["looked_back"] and e["hold"] == 2 for e in eps)
    summary = probe.summarize(eps)
    assert summary == {**summary, "success": 1.0, "looked_back": 1.0, "hold_median_success": 2.0,
                       "hold_max_success": 2}


def test_led_back_tells_a_policy_that_decides_from_one_that_never_gets_there():
    env = make()
    assert all(probe.led_back(env, look_back_route(env), seed)["succeeds"] for seed in range(20))
    # the straight route, put there, walks back into the start room and never turns round: the episode runs out
    assert not any(probe.led_back(env, straight_route(env), seed)["succeeds"] for seed in range(20))
    # turning left there (then stepping on) wins exactly when the matching object is the lower one
    u = env.unwrapped
    turns_left = [probe.led_back(env, lambda obs, start: LEFT if u.agent_dir == WEST else FORWARD, seed)["succeeds"]
                  for seed in range(40)]
    lower = []
    for seed in range(40):
        env.reset(seed=seed)
        lower.append(u.success_pos[1] > u.agent_pos[1])
    assert turns_left == lower and 0 < sum(lower) < 40


def test_led_back_labels_and_act_calls_are_the_envs():
    env = make()
    u = env.unwrapped
    kinds = set()
    for seed in range(30):
        back = probe.led_back(env, look_back_route(env), seed)
        env.reset(seed=seed)
        cue_kind = type(u.grid.get(1, u.height // 2 - 1)).__name__
        kinds.add(cue_kind)
        assert back["cue_is_key"] == (cue_kind == "Key")
        assert back["upper_is_right"] == (u.success_pos[1] < u.agent_pos[1])
        # forced: forward to the end column and two turns; then the oracle's turn and step
        assert back["ended_on_object"]
        assert back["forced"] == (u.success_pos[0] - int(u.agent_pos[0])) + 2 and back["calls"] == back["forced"] + 2
    assert kinds == {"Key", "Ball"}


def test_linear_probe_reads_what_the_features_hold_and_nothing_else():
    rng = np.random.default_rng(0)
    y = rng.random(120) < 0.5
    noise = rng.normal(size=(120, 16))
    held = noise.copy()
    held[:, 3] += np.where(y, 1.5, -1.5)  # one unit carries the label
    assert probe.linear_probe_accuracy(held, y) > 0.9
    assert 0.3 < probe.linear_probe_accuracy(noise, y) < 0.7
    with pytest.raises(ValueError, match="needs both labels"):
        probe.linear_probe_accuracy(noise, np.ones(120))


def test_with_a_3x3_view_the_cue_is_out_of_view_from_the_end_of_the_hallway():
    env = make(view_size=3)
    for seed in range(30):
        env.reset(seed=seed)
        x0 = int(env.unwrapped.agent_pos[0])
        e = probe.probe_episode(env, look_back_route(env), seed)
        # the oracle still wins (it reads the env), but only the leftmost start showed the cue, on the way out:
        # a policy would have had to hold it down the whole hallway
        assert e["success"] and not e["looked_back"] and e["cue_seen"] == (x0 == 1)
        assert e["hold"] == (e["steps"] if x0 == 1 else 0)


def test_an_env_without_a_cue_is_a_one_line_error():
    env = envs.make_env("CartPole-P-v1")
    with pytest.raises(ValueError, match="expected a MiniGrid-Memory env"):
        probe.probe_episode(env, lambda obs, start: 0, seed=0)


def test_encoder_activity_tells_a_live_encoder_from_a_pinned_one():
    """A freshly built encoder passes on what it sees; one whose last layer is pinned (tanh of a large constant) gives
    every observation the same features, all saturated; a ReLU encoder has no saturation share."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    from agents import RecurrentPPO

    env = make_vec_env(make, n_envs=4, seed=0)
    obs = [env.reset()]
    for _ in range(15):
        obs.append(env.step([FORWARD, LEFT, RIGHT, FORWARD])[0])
    obs = np.concatenate(obs)
    policy = RecurrentPPO("MlpPolicy", env, core="gru", hidden_size=8, n_steps=16, batch_size=32, seed=0).policy
    live = probe.encoder_activity(policy, obs)
    assert live["encoder_units"] == 64 and live["encoder_varying"] > 0.5 and live["encoder_saturated"] < 0.5
    last = policy.encoder.net[-2]  # the last Linear before the final tanh
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)
    assert probe.encoder_activity(policy, obs) == {"encoder_units": 64, "encoder_varying": 0.0,
                                                   "encoder_saturated": 1.0}
    relu = RecurrentPPO("MlpPolicy", env, core="gru", hidden_size=8, n_steps=16, batch_size=32, seed=0,
                        policy_kwargs={"activation": "relu"}).policy
    assert probe.encoder_activity(relu, obs)["encoder_saturated"] is None


def test_action_entropy_tells_an_unsure_policy_from_a_sure_one():
    """A fresh policy (action head initialised near zero) is near uniform over the three actions, ln 3 nats; one whose
    head always prefers an action by a wide margin has entropy near 0."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    from agents import RecurrentPPO

    env = make_vec_env(make, n_envs=1, seed=0)
    obs, starts = [env.reset()[0]], [True]
    for t in range(15):
        step_obs, _, done, _ = env.step([FORWARD if t % 3 else LEFT])
        obs.append(step_obs[0])
        starts.append(bool(done[0]))
    obs, starts = np.stack(obs), np.array(starts)
    policy = RecurrentPPO("MlpPolicy", env, core="lstm", hidden_size=8, n_steps=32, batch_size=32, seed=0).policy
    every = np.ones(len(obs), bool)
    assert probe.action_entropy(policy, obs, starts, every) == pytest.approx(np.log(3), abs=0.01)
    with torch.no_grad():
        policy.action_net.weight.zero_()
        policy.action_net.bias.copy_(torch.tensor([30.0, 0.0, 0.0]))
    assert probe.action_entropy(policy, obs, starts, every) < 1e-6


def test_command_writes_the_table_for_a_trained_run(tmp_path):
    logdir = tmp_path / "runs"
    train = subprocess.run(
        [*COMMAND, "--core", "gru", "--env", "MiniGrid-Memory", "--total-timesteps", "256",
         "--logdir", str(logdir), "--no-progress", "--set", "n_envs=2", "n_steps=32", "batch_size=64", "n_epochs=1",
         "eval_freq=128", "eval_episodes=1", "checkpoint_freq=256", "latency_steps=10", "view_size=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    run_dir = next(logdir.iterdir())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "probe_minigrid.py"), str(run_dir), "--episodes", "5",
                           "--out-dir", str(out), "--name", "probe_t"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((out / "probe_t.json").read_text())["rows"][0]
    assert row["episodes"] == 5 and row["env_kwargs"]["view_size"] == 3 and 0.0 <= row["success"] <= 1.0
    assert row["encoder_units"] == 64 and 0.0 <= row["encoder_varying"] <= 1.0 and 0.0 <= row["encoder_saturated"] <= 1
    assert 0.0 <= row["action_entropy"] <= np.log(3) + 1e-6
    md = (out / "probe_t.md").read_text()
    assert "Reproduce: `python scripts/probe_minigrid.py" in md and f"| {run_dir.name} | view_size=3" in md
    bad = subprocess.run([sys.executable, str(SCRIPTS / "probe_minigrid.py"), str(tmp_path / "nothing"),
                          "--out-dir", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "no run directories with a model.zip" in bad.stderr
