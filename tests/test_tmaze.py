"""The passive T-Maze (envs/tmaze.py) and train_agent's --env-kwargs, which sets its length."""

import itertools
import json

import numpy as np
import pytest

import envs
from agents import load_policy
from agents.cli import main
from envs.tmaze import DOWN, RIGHT, UP, TMazeEnv


def _episode(env, policy, goal):
    """Run one episode with ``policy(obs, t) -> action``; return (observations, rewards, info at the end)."""
    obs, _ = env.reset(seed=0, options={"goal": goal})
    observations, rewards, t, done = [obs], [], 0, False
    while not done:
        obs, r, terminated, truncated, info = env.step(policy(obs, t))
        observations.append(obs)
        rewards.append(r)
        t += 1
        done = terminated or truncated
    return np.array(observations), rewards, info


def _oracle(length):
    """Remembers the first observation: right ``length`` times, then towards the cue."""
    memory = {}

    def act(obs, t):
        if t == 0:
            memory["cue"] = obs[1]
        return RIGHT if t < length else (UP if memory["cue"] > 0 else DOWN)
    return act


@pytest.mark.parametrize("length", [1, 5, 100])
def test_the_cue_is_shown_only_at_the_first_step_and_the_oracle_always_succeeds(length):
    env = TMazeEnv(length=length)
    for goal in (-1, 1):
        obs, rewards, info = _episode(env, _oracle(length), goal)
        assert len(rewards) == length + 1  # length moves right, then the turn
        assert obs[0].tolist() == [0.0, goal]
        assert np.all(obs[1:length, 1] == 0) and np.all(obs[1:length, 0] == 0)  # the corridor looks the same everywhere
        assert obs[length].tolist() == [1.0, 0.0]  # the junction, whatever the cue
        assert info["is_success"] and rewards[-1] == 1.0 and sum(rewards) == 1.0  # never behind schedule: no penalty
    rng = np.random.default_rng(0)  # random cues: the oracle is at 100%
    wins = [_episode(env, _oracle(length), int(rng.choice((-1, 1))))[2]["is_success"] for _ in range(20)]
    assert all(wins)


def test_no_memoryless_policy_beats_one_half():
    """Every deterministic map from observation to action (all 4^6 of them over the six observations the maze can
    show) succeeds for at most one of the two cues: 50% at best, by construction."""
    length = 3
    observations = [(0.0, 1.0), (0.0, -1.0), (0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (1.0, -1.0)]
    env = TMazeEnv(length=length)
    best = 0
    for choice in itertools.product(range(4), repeat=len(observations)):
        table = dict(zip(observations, choice))
        wins = sum(_episode(env, lambda obs, t: table[tuple(obs.tolist())], goal)[2]["is_success"] for goal in (-1, 1))
        best = max(best, wins)
    assert best == 1  # some memoryless policy reaches a goal, none reaches both


def test_penalty_for_falling_behind_and_the_failure_return():
    env = TMazeEnv(length=4)
    assert env.penalty == -0.25
    _, rewards, info = _episode(env, lambda obs, t: UP, 1)  # walls: never leaves the start, never reaches a goal
    assert rewards == [-0.25] * 4 + [0.0] and not info["is_success"]
    _, rewards, info = _episode(TMazeEnv(length=4, penalty=0.0), _oracle(4), -1)
    assert rewards == [0.0] * 4 + [1.0]


def test_auto_walk_keeps_the_cue_and_the_length_and_leaves_only_the_turn_to_the_agent():
    length = 6
    env = TMazeEnv(length=length, walk="auto")
    for goal in (-1, 1):
        obs, rewards, info = _episode(env, lambda obs, t: DOWN if t < length else (UP if goal > 0 else DOWN), goal)
        assert len(rewards) == length + 1 and obs[0].tolist() == [0.0, goal] and obs[length].tolist() == [1.0, 0.0]
        assert np.all(obs[1:length] == 0) and rewards == [0.0] * length + [1.0] and info["is_success"]
        _, rewards, info = _episode(env, lambda obs, t: UP if goal < 0 else DOWN, goal)  # the wrong turn
        assert rewards == [0.0] * (length + 1) and not info["is_success"]
    # the agent's walk: the same actions leave it at the start, behind from the first step
    _, rewards, info = _episode(TMazeEnv(length=length), lambda obs, t: DOWN, 1)
    assert rewards == [-1 / length] * length + [0.0] and not info["is_success"]


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match=r"walk='run': expected one of agent, auto"):
        TMazeEnv(walk="run")
    with pytest.raises(ValueError, match=r"length=0: expected a positive integer"):
        TMazeEnv(length=0)
    with pytest.raises(ValueError, match=r"penalty=0.5: expected a number <= 0"):
        TMazeEnv(penalty=0.5)
    with pytest.raises(ValueError, match=r"TMaze-v0 does not accept these arguments \{'width': 3\}"):
        envs.make_env("TMaze-v0", env_kwargs={"width": 3})


def test_ids_and_env_kwargs():
    assert envs.make_env("TMaze-L250-v0").unwrapped.length == 250
    assert envs.make_env("TMaze-v0", env_kwargs={"length": 42}).unwrapped.length == 42
    assert "TMaze-L1000-v0" in envs.list_env_ids(include_minigrid=False)


def test_env_kwargs_reach_the_env_and_survive_save_load_and_export(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from agents.export import main as export_main

    code = main(["--core", "gru", "--env", "TMaze-v0", "--env-kwargs", "length=7", "--total-timesteps", "256",
                 "--logdir", str(tmp_path), "--no-progress", "--eval-episodes", "2", "--set", "n_envs=2",
                 "n_steps=64", "batch_size=64", "n_epochs=1", "hidden_size=8", "eval_freq=0", "checkpoint_freq=0",
                 "final_eval_episodes=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    (run_dir,) = list(tmp_path.iterdir())
    assert "env_kwargs: {length: 7}" in (run_dir / "config.yaml").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_episodes"] == 2
    policy = load_policy(run_dir)
    assert policy.env_kwargs["env_kwargs"] == {"length": 7}
    assert envs.make_env(policy.env_id, **policy.env_kwargs).unwrapped.length == 7
    assert export_main([str(run_dir), "--no-int8"]) == 0
    manifest = json.loads((run_dir / "export" / "export.json").read_text())
    assert manifest["make_env_kwargs"]["env_kwargs"] == {"length": 7}
    assert main(["--env", "TMaze-v0", "--env-kwargs", "length"]) == 2
    assert "--env-kwargs 'length': expected KEY=VALUE" in capsys.readouterr().err


def _span_study():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    return importlib.import_module("span_study")


def test_capacity_probe_sees_the_tasks_inputs_and_separates_memory_from_none():
    """span_study's capacity probe trains on the env's own observation sequences (the cue at row 0 only, the
    junction last), a core with a long memory learns to name the cue 50 steps later, and the memoryless core cannot
    tell the two sequences apart at the junction (the same output for both: one of them gets at most 0.5)."""
    span = _span_study()
    x = span.tmaze_sequences(50)
    assert x.shape == (51, 2, 2)
    assert x[0, 0].tolist() == [0.0, 1.0] and x[0, 1].tolist() == [0.0, -1.0]
    assert x[1:-1].abs().sum() == 0 and x[-1].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    solved = span.capacity_run("gru", 50, 0, 32, 300, 1e-2, 10, {"chrono": 100})
    assert solved["solved"] and solved["min_p_correct"] >= 0.9 and solved["steps_run"] == solved["solved_step"]
    none = span.capacity_run("mlp", 50, 0, 32, 30, 1e-2, 10, {})
    assert not none["solved"] and none["steps_run"] == 30 and none["min_p_correct"] <= 0.5 + 1e-6


def test_capacity_probe_learns_from_the_reward_of_a_sampled_turn():
    """With ``signal="reward"`` the probe gets only the env's reward for a turn it sampled (REINFORCE): a GRU learns
    to turn towards the cue 10 steps later, the memoryless core cannot, and a bad signal is a one-line error."""
    span = _span_study()
    solved = span.capacity_run("gru", 10, 0, 32, 1500, 3e-3, 10, {"chrono": 20}, "reward", 8)
    assert solved["solved"] and solved["signal"] == "reward" and solved["batch"] == 8
    none = span.capacity_run("mlp", 10, 0, 32, 100, 3e-3, 10, {}, "reward", 8)
    assert not none["solved"] and none["min_p_correct"] <= 0.5
    with pytest.raises(ValueError, match="^signal='labels': expected one of label, reward$"):
        span.capacity_run("gru", 10, 0, 8, 1, 1e-3, 1, {}, "labels")
