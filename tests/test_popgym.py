"""POPGym (the optional extra ``pip install -e ".[popgym]"``) and user envs named ``module:EnvId``, through the
library's command line, load_policy and export_policy."""

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from agents import RecurrentPPO, load_policy
from agents.cli import main

torch.set_num_threads(1)
popgym = pytest.importorskip("popgym")

ROOT = Path(__file__).resolve().parents[1]
EASY = sorted(k for k in gym.registry if k.startswith("popgym-") and k.endswith("Easy-v0"))
TINY = ["--set", "n_envs=2", "n_steps=64", "batch_size=64", "n_epochs=1", "hidden_size=16", "encoder_sizes=[16]",
        "net_arch_pi=[16]", "net_arch_vf=[16]", "eval_freq=0", "checkpoint_freq=0", "--eval-episodes", "2",
        "--no-progress"]


def test_every_easy_env_trains_a_few_hundred_steps():
    assert len(EASY) >= 14, EASY  # the 14 Easy envs popgym registers without its navigation extra
    for env_id in EASY:
        env = envs.make_env(f"popgym:{env_id}")
        model = RecurrentPPO("MlpPolicy", env, core="gru", hidden_size=8, n_steps=128, batch_size=128, n_epochs=1,
                             seed=0)
        model.learn(256)
        assert model.num_timesteps == 256, env_id
        assert model.policy.env_id == f"popgym.{env.unwrapped.__module__.split('.', 1)[1]}:{env_id}" or \
            model.policy.env_id.endswith(f":{env_id}"), model.policy.env_id
        obs, _ = env.reset(seed=0)
        action, _ = model.predict(obs, deterministic=True)
        assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype)), env_id


def _run_dir(logdir: Path) -> Path:
    (run_dir,) = [p for p in logdir.iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.parametrize("env_id, family", [("popgym:popgym-RepeatPreviousEasy-v0", "popgym"),
                                            ("tests.user_envs:CueDict-v0", "default")])
def test_module_env_id_trains_loads_and_exports_from_the_command_line(env_id, family, tmp_path, capsys,
                                                                       monkeypatch):
    pytest.importorskip("onnxruntime")
    from agents.export import main as export_main
    from agents.runtime import OnnxPolicy

    monkeypatch.syspath_prepend(str(ROOT))  # tests.user_envs is importable as it is from the repository root
    code = main(["--core", "gru", "--env", env_id, "--total-timesteps", "256", "--logdir", str(tmp_path / "runs"),
                 *TINY])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"config {family}.yaml" in out
    run_dir = _run_dir(tmp_path / "runs")
    assert ":" not in run_dir.name  # the module is not part of the directory name
    policy = load_policy(run_dir)
    assert policy.env_id == env_id
    env = envs.make_env(policy.env_id, **policy.env_kwargs)  # the saved id alone rebuilds the env
    assert env.observation_space == policy.observation_space
    assert export_main([str(run_dir), "--no-int8"]) == 0
    manifest = json.loads((run_dir / "export" / "export.json").read_text())
    assert manifest["env_id"] == env_id and manifest["obs_layout"] is not None
    runtime = OnnxPolicy(run_dir / "export")
    obs, _ = env.reset(seed=0)
    runtime.reset(1)
    assert runtime.step(obs, episode_start=True) == policy.act(obs, policy.initial_state(1), True)[0]


def test_gym_packages_imports_before_resolving_and_names_the_module(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    code = main(["--env", "CueDict-v1", "--gym-packages", "tests.user_envs", "--print-config"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown env id 'CueDict-v1'; close matches: CueDict-v0" in err and "after importing 'tests.user_envs'" in err
    code = main(["--env", "CueDict-v0", "--gym-packages", "tests.user_envs", "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and "env: tests.user_envs:CueDict-v0" in out and "gym_packages: [tests.user_envs]" in out
    code = main(["--env", "CueDict-v0", "--gym-packages", "no_such_package_xyz"])
    err = capsys.readouterr().err
    assert code == 2 and "gym package 'no_such_package_xyz', which cannot be imported" in err


def test_total_timesteps_that_is_not_whole_rollouts_is_said(tmp_path, capsys):
    code = main(["--core", "mlp", "--env", "popgym:popgym-RepeatPreviousEasy-v0", "--total-timesteps", "100",
                 "--logdir", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert code == 0
    assert ("total_timesteps=100 is not a whole number of rollouts (2 envs x 64 steps = 128); training runs whole "
            "rollouts, so it will take 128 steps") in out
    summary = json.loads((_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["total_timesteps"] == 128


@pytest.mark.slow
def test_gru_beats_the_memoryless_control_on_repeat_previous(tmp_path):
    """The popgym config's GRU learns RepeatPreviousEasy (recall the card 4 steps back), which a memoryless
    policy cannot: final evaluation return (20 episodes) of
    2 seeds each, 61,440 steps per run."""
    from agents.config import resolve_config
    from agents.train import train

    finals = {}
    for core in ("gru", "mlp"):
        finals[core] = []
        for seed in range(2):
            cfg = resolve_config(env="popgym:popgym-RepeatPreviousEasy-v0", overrides={
                "core": core, "seed": seed, "total_timesteps": 61_440, "logdir": str(tmp_path / core),
                "eval_episodes": 20}, set_items=["eval_freq=0", "checkpoint_freq=0"])
            finals[core].append(train(cfg, progress=False).summary["eval_mean_return"])
    assert min(finals["gru"]) > max(finals["mlp"]) + 0.2, finals
