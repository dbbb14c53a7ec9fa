"""train_agent: the console script end to end (subprocesses, tiny budgets), its configs and its error paths.

The end-to-end runs start once per module (two at a time) and are shared by the tests that read their outputs.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml

from agents import CORES, load_policy, match_hidden_size
from agents.cli import PLACE_KEYS, TIMING_KEYS, main
from agents.config import FAMILIES, ConfigError, TrainConfig, family_for, load_family, parse_set, resolve_config

pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

SCRIPT = Path(sys.executable).with_name("train_agent")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "agents.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
#: a run of a few seconds: 4 updates of 2 envs x 32 steps; episodes of 16 steps so rollout/ tags appear
TINY_SET = ["n_steps=32", "batch_size=64", "n_epochs=1", "eval_episodes=2", "max_episode_steps=16",
            "latency_steps=50", "eval_freq=128", "checkpoint_freq=128"]
TAG_GROUPS = ("rollout/", "eval/", "train/", "perf/", "latency/")
SUMMARY_KEYS = {"status", "env", "core", "seed", "parameters", "core_parameters", "total_timesteps",
                "eval_mean_return", "eval_success_rate", "steps_per_s", "rollout_s", "update_s", "latency_p50_us",
                "latency_p99_us", "git_commit", "run_dir", "hidden_size"}


def cli_args(core: str, logdir: Path, *extra: str, steps: int = 256, seed: int = 0) -> list[str]:
    return [*COMMAND, "--core", core, "--env", "MiniGrid-Memory", "--total-timesteps", str(steps), "--n-envs", "2",
            "--seed", str(seed), "--device", "cpu", "--logdir", str(logdir), *extra, "--set", *TINY_SET]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {timeout} s; stderr: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def only_run_dir(logdir: Path) -> Path:
    dirs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def scalar_events(run_dir: Path) -> dict[str, list[int]]:
    """Raw steps per scalar tag across all event files of a run, in file order (no purging, no reordering)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    steps: dict[str, list[int]] = {}
    for path in sorted(glob.glob(str(run_dir / "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.HasField("simple_value") or value.metadata.plugin_data.plugin_name == "scalars":
                    steps.setdefault(value.tag, []).append(event.step)
    return steps


def scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four tiny MiniGrid-Memory runs: gru (twice, same seed), lstm, mlp; two processes at a time (2 CPU cores)."""
    root = tmp_path_factory.mktemp("runs")
    jobs = {name: cli_args(core, root / name) for name, core in
            [("gru", "gru"), ("gru_again", "gru"), ("lstm", "lstm"), ("mlp", "mlp")]}
    results = {}
    names = list(jobs)
    for i in range(0, len(names), 2):
        procs = {n: start(jobs[n]) for n in names[i:i + 2]}
        for n, proc in procs.items():
            res = finish(proc)
            assert res.returncode == 0, f"{n}: exit {res.returncode}\n{res.stderr[-3000:]}"
            results[n] = (res, only_run_dir(root / n))
    return results


# ---------------------------------------------------------------------------------------------- end to end
def test_train_agent_gru_minigrid_memory_writes_a_run(runs):
    res, run_dir = runs["gru"]
    assert run_dir.name.startswith("MiniGrid-MemoryS7-v0__gru__s0__")
    assert glob.glob(str(run_dir / "events.out.tfevents.*"))
    for name in ("model.zip", "config.yaml", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["core"] == "gru" and summary["env"] == "MiniGrid-MemoryS7-v0"
    assert summary["total_timesteps"] == 256 and summary["eval_success_rate"] is not None
    assert summary["latency_p50_us"] > 0 and summary["steps_per_s"] > 0 and summary["parameters"] > 0
    cfg = TrainConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), "config.yaml")
    assert (cfg.core, cfg.n_steps, cfg.total_timesteps, cfg.view_size) == ("gru", 32, 256, 7)
    assert (cfg.action_set, cfg.max_episode_steps) == ("move", 16)  # the config's actions; TINY_SET's limit
    policy = load_policy(run_dir / "model.zip")
    assert policy.env_id == "MiniGrid-MemoryS7-v0" and policy.hidden_size == cfg.hidden_size
    last = res.stdout.strip().splitlines()[-1]  # the final summary line
    assert "eval return" in last and "success" in last and "steps/s" in last and "parameters" in last
    assert str(run_dir) in last
    assert (run_dir / "checkpoints").is_dir() and list((run_dir / "checkpoints").glob("step_*/model.zip"))


def test_same_tensorboard_tags_for_every_core(runs):
    tags = {core: scalar_tags(runs[core][1]) for core in ("gru", "lstm", "mlp")}
    assert tags["gru"] == tags["lstm"] == tags["mlp"]
    for group in TAG_GROUPS:
        assert any(t.startswith(group) for t in tags["gru"]), group
    assert all(t.startswith(TAG_GROUPS) for t in tags["gru"]), tags["gru"]
    for tag in ("train/grad_norm", "perf/steps_per_s", "perf/rollout_s", "perf/update_s", "eval/mean_reward",
                "eval/success_rate", "latency/act_p50_us", "latency/act_p99_us", "rollout/ep_rew_mean"):
        assert tag in tags["gru"], tag


def test_same_seed_same_summary_on_cpu(runs):
    a, b = (json.loads((runs[n][1] / "summary.json").read_text()) for n in ("gru", "gru_again"))
    varying = set(TIMING_KEYS) | set(PLACE_KEYS)
    assert {k: v for k, v in a.items() if k not in varying} == {k: v for k, v in b.items() if k not in varying}


def test_sigterm_saves_and_resume_continues_the_same_curves(tmp_path):
    logdir = tmp_path / "runs"
    proc = start(cli_args("gru", logdir, steps=100_000) + ["checkpoint_freq=64"])
    deadline = time.monotonic() + 90
    while not glob.glob(str(logdir / "*" / "checkpoints" / "step_*" / "state.json")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    res = finish(proc)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "--resume" in res.stderr
    run_dir = only_run_dir(logdir)
    assert not (run_dir / "summary.json").exists()
    stopped_at = max(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))
    assert 0 < stopped_at < 100_000 and stopped_at % 64 == 0  # a rollout boundary

    total = stopped_at + 192
    res = finish(start([*COMMAND, "--resume", str(run_dir), "--total-timesteps", str(total)]))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_timesteps"] == total and summary["sessions"] == 2
    assert only_run_dir(logdir) == run_dir  # same run directory
    steps = scalar_events(run_dir)
    for tag in ("perf/steps_per_s", "train/grad_norm", "rollout/ep_len_mean"):
        s = steps[tag]
        assert all(b > a for a, b in zip(s, s[1:])), f"{tag} steps go back: {s}"
        assert s[0] <= stopped_at < s[-1] == total, (tag, s)
    assert len(glob.glob(str(run_dir / "events.out.tfevents.*"))) == 2


def test_bad_input_is_one_line_without_traceback_subprocess(tmp_path):
    # (the in-process test below covers many more cases; these check the installed script end to end)
    cases = [["--core", "transformer"], ["--env", "MiniGrid-Memroy", "--set", "n_steps=64"]]
    procs = [start([*COMMAND, *args, "--logdir", str(tmp_path)]) for args in cases]
    for args, proc in zip(cases, procs):
        res = finish(proc)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train_agent: error: "), (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------------------------------------- in process
def run_main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, expected", [
    (["--core", "gruu"], "unknown core 'gruu' (did you mean gru, mingru?)"),
    (["--core", "nosuchpkg.cores:Core"], "cannot import module 'nosuchpkg.cores'"),
    (["--core", "agents.policy:RecurrentActorCriticPolicy"], "expected a subclass of agents.cores.MemoryCore"),
    (["--core-kwargs", "alpha=1"], "core 'gru' has no option 'alpha'"),
    (["--set", "cue_start=0.5"], "'cue_start' in --set cue_start=0.5 is now train_wrappers.memory_aids.cue_start"),
    (["--set", "train_wrappers.aids.cue_start=0.5"], "train wrapper 'aids' is unknown"),
    (["--env", "CartPole-X-v1"], "close matches"),
    (["--set", "n_step=32"], "did you mean n_steps"),
    (["--set", "gamma=1.5"], "gamma=1.5"),
    (["--set", "n_steps"], "expected key=value"),
    (["--set", "learning_rate=fast"], "lin_<x>"),
    (["--set", "learning_rate=0"], "learning_rate=0 (from --set learning_rate=0): expected a positive number or lin_<x>"),
    (["--set", "ent_coef=-0.01"], "ent_coef=-0.01 (from --set ent_coef=-0.01): expected a number >= 0 or lin_<x>"),
    (["--set", "ent_coef=lin_0"], "ent_coef='lin_0' (from --set ent_coef=lin_0): expected a number >= 0 or lin_<x> with x > 0"),
    (["--set", "encoder_sizes=[64, -1]"], "encoder_sizes=[64, -1]"),
    (["--set", "activation=sigmoid"], "activation='sigmoid'"),
    (["--total-timesteps", "0"], "total_timesteps=0"),
    (["--n-envs", "-2"], "n_envs=-2"),
    (["--device", "tpu"], "device='tpu'"),
    (["--match-params", "lstm"], "CORE:HIDDEN"),
    (["--match-params", "rnn:128"], "match_params='rnn:128'"),
    (["--hidden-size", "64", "--match-params", "lstm:64"], "not allowed with argument"),
    (["--env", "CartPole-P-v1", "--set", "view_size=3"], "view_size=3"),
    (["--env", "CartPole-P-v1", "--set", "action_set=move"], "action_set='move'"),
    (["--set", "action_set=turn"], "action_set='turn'"),
    (["--set", "normalize_obs=true"], "normalize_obs=true"),
    (["--env", "CartPole-P-v1", "--set", "encoder_norm=true", "encoder_sizes=[]"], "encoder_norm=true"),
    (["--core", "lstm", "--core-kwargs", "forget_bias=big"], "forget_bias='big': expected a finite number"),
    (["--core-kwargs", "update_bias=nan"], "update_bias='nan': expected a finite number"),
    (["--core", "mlp", "--core-kwargs", "kernel=stock"], "core 'mlp' has no option 'kernel'"),
    (["--set", "train_wrappers.memory_aids.cue_start=1.5"], "cue_start=1.5"),
    (["--env", "CartPole-P-v1", "--set", "train_wrappers.memory_aids.cue_start=0.5"], "cue_start=0.5 applies only to the MiniGrid-Memory envs"),
    (["--set", "train_wrappers.memory_aids.lookback_start=-0.25"], "lookback_start=-0.25"),
    (["--env", "CartPole-P-v1", "--set", "train_wrappers.memory_aids.lookback_start=0.25"], "lookback_start=0.25 applies only to the MiniGrid"),
    (["--set", "train_wrappers.memory_aids.cue_start=0.5", "--set", "train_wrappers.memory_aids.lookback_start=0.75"], "expected shares summing to at most 1"),
    (["--set", "train_wrappers.memory_aids.faceback_start=2"], "faceback_start=2"),
    (["--env", "CartPole-P-v1", "--set", "train_wrappers.memory_aids.faceback_start=0.5"], "faceback_start=0.5 applies only to the MiniGrid"),
    (["--set", "train_wrappers.memory_aids.lookback_start=0.5", "train_wrappers.memory_aids.faceback_start=0.75"], "lookback_start=0.5 and faceback_start=0.75: expected"),
    (["--set", "train_wrappers.memory_aids.ordered_ends=-1"], "ordered_ends=-1"),
    (["--env", "CartPole-P-v1", "--set", "train_wrappers.memory_aids.ordered_ends=0.5"], "ordered_ends=0.5 applies only to the MiniGrid-Memory"),
    (["--config", "/nonexistent/cfg.yaml"], "does not exist"),
    (["--env", ""], "--env '': expected an env id"),
    (["--set", "batch_size=4096"], "batch_size=4096 is larger than a rollout (n_steps=128 x n_envs=8 = 1024 steps)"),
    (["--core", ""], "--core '': expected a core name"),
    (["--match-params", ""], "--match-params '': expected CORE:HIDDEN"),
    (["--resume", ""], "--resume '': expected the path of a run directory"),
    (["--resume", "/nonexistent/run"], "no such directory"),
    (["--resume", "/tmp", "--core", "lstm"], "--core cannot be combined"),
])
def test_bad_input_is_one_clear_line(argv, expected, capsys, tmp_path):
    logdir = [] if "--resume" in argv else ["--logdir", str(tmp_path / "runs")]
    code, _, err = run_main([*argv, *logdir, "--no-progress"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_agent: error: "), err
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_resume_refuses_a_run_in_use(runs, capsys):
    run_dir = runs["mlp"][1]
    (run_dir / ".lock").write_text(str(os.getppid()))  # a live process holds the run
    try:
        code, _, err = run_main(["--resume", str(run_dir), "--total-timesteps", "512", "--no-progress"], capsys)
    finally:
        (run_dir / ".lock").unlink()
    assert code == 2 and f"is in use by process {os.getppid()}" in err, err


def test_config_file_with_a_key_given_twice_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("n_steps: 64\nent_coef: 0.01\nn_steps: 32\n")
    code, _, err = run_main(["--config", str(cfg), "--logdir", str(tmp_path / "runs"), "--no-progress"], capsys)
    assert code == 2 and "line 3" in err and "'n_steps' is given twice" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_config_file_with_unknown_key_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("n_steps: 64\nlearning_rat: 1e-3\n")
    code, _, err = run_main(["--config", str(cfg), "--logdir", str(tmp_path)], capsys)
    assert code == 2 and "learning_rat" in err and "did you mean learning_rate" in err and str(cfg) in err


def test_unwritable_logdir_fails_before_training(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for logdir in (a_file, a_file / "sub"):
        code, _, err = run_main(["--core", "mlp", "--logdir", str(logdir), "--no-progress", "--set", *TINY_SET],
                                capsys)
        assert code == 2 and err.startswith("train_agent: error: --logdir") and len(err.strip().splitlines()) == 1


def test_summary_names_the_commit_the_run_started_at(tmp_path, capsys, monkeypatch):
    """A commit made while a run trains does not become the run's commit: the code that ran is the one it started
    with."""
    from agents import RecurrentPPO

    head = {"commit": "started-at"}
    monkeypatch.setattr("agents.train.git_commit", lambda: head["commit"])
    learn = RecurrentPPO.learn

    def learn_while_the_tree_moves_on(self, *args, **kwargs):
        head["commit"] = "moved-on"
        return learn(self, *args, **kwargs)

    monkeypatch.setattr(RecurrentPPO, "learn", learn_while_the_tree_moves_on)
    code, _, err = run_main(["--core", "mlp", "--logdir", str(tmp_path), "--total-timesteps", "128", "--n-envs", "2",
                             "--no-progress", "--set", *TINY_SET], capsys)
    assert code == 0, err
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["git_commit"] == "started-at"


def test_full_disk_fails_before_training(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("agents.rundir.shutil.disk_usage", lambda path: usage(1 << 30, (1 << 30) - 4096, 4096))
    code, _, err = run_main(["--core", "mlp", "--logdir", str(tmp_path), "--no-progress", "--set", *TINY_SET],
                            capsys)
    assert code == 2 and "not enough free disk space" in err, err
    assert not list(tmp_path.iterdir())  # the run directory was removed again


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from agents.ppo import RecurrentPPO
    original, calls = RecurrentPPO.train, []

    def train(self):
        calls.append(self.num_timesteps)
        if len(calls) == 3:
            raise FloatingPointError(f"non-finite loss nan at update 2 (step {self.num_timesteps}): policy nan")
        return original(self)

    monkeypatch.setattr(RecurrentPPO, "train", train)
    code, _, err = run_main(["--core", "gru", "--env", "MiniGrid-Memory", "--total-timesteps", "1024", "--n-envs",
                             "2", "--logdir", str(tmp_path), "--no-progress", "--set", *TINY_SET,
                             "checkpoint_freq=64"], capsys)
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("train_agent: error: training stopped: non-finite loss nan") and "Traceback" not in err
    assert "last good checkpoint" in line and "step_000000128" in line and "--resume" in line
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "checkpoints" / "step_000000128" / "model.zip").is_file()
    assert not (run_dir / "model.zip").exists() and not (run_dir / "summary.json").exists()


def test_help_explains_every_flag_and_config_key(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for flag in ("--core", "--env", "--seed", "--total-timesteps", "--n-envs", "--device", "--config",
                 "--hidden-size", "--match-params", "--logdir", "--eval-episodes", "--resume", "--set", "--vec-env"):
        assert flag in out, flag
    for name in TrainConfig.field_names():
        assert f"\n  {name} (" in out, name
    for core in CORES:
        assert core in out


def test_print_config_applies_match_params(capsys):
    code, out, _ = run_main(["--core", "gru", "--match-params", "lstm:128", "--print-config"], capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    # the core's input is the MiniGrid encoder's output (encoder_sizes[-1] = 64 in minigrid_memory.yaml)
    assert cfg["hidden_size"] == match_hidden_size("gru", "lstm", 128, input_size=64) != 128
    assert cfg["match_params"] == "lstm:128" and cfg["view_size"] == 7


# ---------------------------------------------------------------------------------------------- configs
def test_every_family_file_loads_and_masked_envs_have_a_family():
    import envs
    for _, name in FAMILIES + [("", "default")]:
        values = load_family(name)
        TrainConfig.from_dict(values, name)  # complete after defaults, and valid
    for env_id in envs.ENV_IDS:
        assert family_for(env_id) != "default", env_id
    assert family_for("MiniGrid-MemoryS7-v0") == "minigrid_memory"
    assert family_for("MiniGrid-DoorKey-5x5-v0") == "minigrid"
    assert family_for("CartPole-v1") == "cartpole" and family_for("Taxi-v3") == "default"


def test_config_precedence_and_rl_zoo_values(tmp_path):
    cfg = resolve_config(env="CartPoleNoVel")  # configs/cartpole.yaml, the recipe tests/test_learning.py checks
    assert (cfg.env, cfg.n_envs, cfg.n_steps, cfg.batch_size, cfg.n_epochs) == ("CartPoleNoVel-v1", 16, 64, 1024, 10)
    assert (cfg.gamma, cfg.gae_lambda, cfg.learning_rate, cfg.normalize_obs) == (0.99, 0.95, 1e-3, True)
    user = tmp_path / "user.yaml"
    user.write_text("n_steps: 64\nn_epochs: 3\nhidden_size: 32\n")
    cfg = resolve_config(env="CartPoleNoVel", config_file=user, overrides={"hidden_size": 48},
                         set_items=["n_epochs=5", "encoder_sizes=[16, 16]"])
    assert (cfg.n_steps, cfg.n_epochs, cfg.hidden_size, cfg.encoder_sizes) == (64, 5, 48, [16, 16])
    cfg = resolve_config(env="MiniGrid-Memory", set_items=["env=CartPole-P"])  # --set env picks the family
    assert cfg.env == "CartPole-P-v1" and cfg.n_steps == 64


def test_set_values_are_typed():
    values = parse_set(["seq_len=null", "ortho_init=false", "learning_rate=1e-3", "total_timesteps=1e5",
                        "net_arch_pi=[]", "clip_range=lin_0.1", "success_threshold=0.5", "ent_coef=lin_0.05"])
    assert values == {"seq_len": None, "ortho_init": False, "learning_rate": 1e-3, "total_timesteps": 100_000,
                      "net_arch_pi": [], "clip_range": "lin_0.1", "success_threshold": 0.5, "ent_coef": "lin_0.05"}
    assert parse_set(["ent_coef=0"]) == {"ent_coef": 0.0}  # no bonus is a value; a zero learning rate is not
    with pytest.raises(ConfigError, match="batch_size=1 .*expected an integer >= 2"):
        parse_set(["batch_size=1"])


def test_core_kwargs_reach_the_core_and_merge_across_layers(tmp_path):
    from agents.train import build_model, make_envs

    user = tmp_path / "user.yaml"
    user.write_text("core_kwargs: {kernel: stock}\n")
    cfg = resolve_config(env="CartPole-P-v1", config_file=user, set_items=["core_kwargs.forget_bias=1.5"],
                         overrides={"core": "lstm", "n_envs": 2, "batch_size": 128, "hidden_size": 8})
    assert cfg.core_kwargs == {"kernel": "stock", "forget_bias": 1.5}  # the --set layer adds to the file's
    train_env, eval_env = make_envs(cfg, seed=0)
    model = build_model(cfg, train_env)
    train_env.close()
    eval_env.close()
    assert model.policy.core_kwargs == {"kernel": "stock", "forget_bias": 1.5}
    assert model.policy.core_pi.kernel_in_use == "stock"
    assert resolve_config(env="MiniGrid-Memory", overrides={"core": "mlp"}).core_kwargs == {}


def test_train_wrappers_wrap_the_training_envs_only():
    from agents.train import make_envs
    from envs.train_wrappers import MemoryStartAid

    cfg = resolve_config(env="MiniGrid-Memory", set_items=["train_wrappers.memory_aids.cue_start=0.5"],
                         overrides={"n_envs": 2})
    train_env, eval_env = make_envs(cfg, seed=0)
    assert train_env.env_is_wrapped(MemoryStartAid) == [True, True]
    assert not any(eval_env.env_is_wrapped(MemoryStartAid))
    assert train_env.get_attr("p") == [0.5, 0.5]
    for env in (train_env, eval_env):
        env.close()
    aids = ["train_wrappers.memory_aids.lookback_start=0.25", "train_wrappers.memory_aids.cue_start=0.125",
            "train_wrappers.memory_aids.faceback_start=0.5"]
    cfg = resolve_config(env="MiniGrid-Memory", set_items=aids, overrides={"n_envs": 2})
    train_env, eval_env = make_envs(cfg, seed=0)
    assert train_env.get_attr("lookback_start") == [0.25, 0.25] and train_env.get_attr("cue_start") == [0.125] * 2
    assert train_env.get_attr("faceback_start") == [0.5, 0.5] and train_env.get_attr("p") == [0.875, 0.875]
    assert not any(eval_env.env_is_wrapped(MemoryStartAid))
    for env in (train_env, eval_env):
        env.close()
    train_env, eval_env = make_envs(resolve_config(env="MiniGrid-Memory", overrides={"n_envs": 2}), seed=0)
    assert not any(train_env.env_is_wrapped(MemoryStartAid))
    for env in (train_env, eval_env):
        env.close()


def test_run_config_of_an_earlier_version_is_upgraded():
    old = {**resolve_config(env="MiniGrid-Memory").to_dict(), "kernel": "auto", "lstm_forget_bias": 1.0,
           "gru_update_bias": None, "cue_start": 0.25, "lookback_start": 0.0, "ordered_ends": 0.5}
    del old["core_kwargs"], old["train_wrappers"]
    cfg = TrainConfig.from_dict({**old, "core": "lstm"}, "config.yaml")
    assert cfg.core_kwargs == {"forget_bias": 1.0}
    assert cfg.train_wrappers == {"memory_aids": {"cue_start": 0.25, "ordered_ends": 0.5}}
    # the old keys were ignored by the cores that do not take them; a batch above the rollout meant the rollout
    gru = TrainConfig.from_dict({**old, "core": "gru", "gru_update_bias": 2.0, "batch_size": 4096}, "config.yaml")
    assert gru.core_kwargs == {"update_bias": 2.0} and gru.batch_size == gru.n_steps * gru.n_envs
    mlp = TrainConfig.from_dict({**old, "core": "mlp", "kernel": "stock"}, "config.yaml")
    assert mlp.core_kwargs == {}


@pytest.mark.parametrize("core, kwarg", [("lstm", "forget_bias"), ("gru", "update_bias")])
def test_gate_bias_survives_save_and_load(tmp_path, core, kwarg):
    from agents.train import build_model, make_envs

    cfg = resolve_config(env="CartPole-P-v1", set_items=[f"core_kwargs.{kwarg}=2.5"],
                         overrides={"core": core, "hidden_size": 8, "n_envs": 2, "batch_size": 128})
    train_env, eval_env = make_envs(cfg, seed=0)
    model = build_model(cfg, train_env)
    for built in (model.policy.core_pi, model.policy.core_vf):
        assert torch.all(built.rnn.bias_ih_l0[8:16] == 2.5) and torch.all(built.rnn.bias_hh_l0[8:16] == 0.0)
    with torch.no_grad():  # a trained value: what reloads must be the saved weight, not the init
        model.policy.core_pi.rnn.bias_ih_l0[8] = -7.0
    model.save(tmp_path / "model.zip")
    train_env.close()
    eval_env.close()
    policy = load_policy(tmp_path / "model.zip")
    assert policy.core_kwargs[kwarg] == 2.5
    assert policy.core_pi.rnn.bias_ih_l0[8] == -7.0 and torch.all(policy.core_pi.rnn.bias_ih_l0[9:16] == 2.5)


def test_config_schedules_reach_the_model():
    from agents.train import build_model, make_envs

    def model(*set_items):
        cfg = resolve_config(env="CartPole-P-v1", set_items=list(set_items), overrides={"n_envs": 2, "batch_size": 128})
        train_env, eval_env = make_envs(cfg, seed=0)
        try:
            return build_model(cfg, train_env)
        finally:
            train_env.close()
            eval_env.close()

    decaying = model("ent_coef=lin_0.05", "clip_range=lin_0.2")
    assert decaying.ent_coef(1.0) == pytest.approx(0.05) and decaying.ent_coef(0.5) == pytest.approx(0.025)
    assert decaying.clip_range(0.5) == pytest.approx(0.1)
    assert model("ent_coef=0.02").ent_coef == 0.02


def test_final_eval_episodes_sets_only_the_last_evaluation(tmp_path, capsys, monkeypatch):
    """Periodic evals keep eval_episodes; the evaluation after the last update (the run's final figure, in
    summary.json and at the last eval/ step) plays final_eval_episodes."""
    import agents.callbacks as callbacks

    evaluate, calls = callbacks.evaluate, []

    def counting_evaluate(model, env, n_episodes, *args, **kwargs):
        calls.append((int(model.num_timesteps), n_episodes))
        return evaluate(model, env, n_episodes, *args, **kwargs)

    monkeypatch.setattr(callbacks, "evaluate", counting_evaluate)
    code, _, err = run_main(["--core", "mlp", "--logdir", str(tmp_path), "--total-timesteps", "384", "--n-envs", "2",
                             "--no-progress", "--set", *TINY_SET, "final_eval_episodes=5"], capsys)
    assert code == 0, err
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["eval_episodes"] == 5 and summary["total_timesteps"] == 384
    assert calls[-1] == (384, 5) and len(calls) >= 3
    assert {n for _, n in calls[:-1]} == {2}
    calls.clear()
    code, _, err = run_main(["--core", "mlp", "--logdir", str(tmp_path / "default"), "--total-timesteps", "128",
                             "--n-envs", "2", "--no-progress", "--set", *TINY_SET], capsys)
    assert code == 0, err
    assert calls[-1] == (128, 2)  # null: the final evaluation plays eval_episodes


def test_train_levels_trains_on_a_pool_and_evaluates_both(tmp_path, capsys, monkeypatch):
    """train_levels: the training envs draw from the pool; eval/ stays on unseen levels, eval_pool/ on the pool."""
    import agents.callbacks as callbacks
    from envs.levels import LevelPool

    seen = []
    evaluate = callbacks.evaluate

    def recording_evaluate(model, env, *args, **kwargs):
        seen.append(bool(any(env.env_is_wrapped(LevelPool))))
        return evaluate(model, env, *args, **kwargs)

    monkeypatch.setattr(callbacks, "evaluate", recording_evaluate)
    code, _, err = run_main(["--core", "gru", "--logdir", str(tmp_path), "--total-timesteps", "256", "--n-envs", "2",
                             "--no-progress", "--set", *TINY_SET, "train_levels=4", "carry_state=true"], capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_levels"] == 4 and summary["eval_pool_success_rate"] is not None
    assert {"eval/success_rate", "eval_pool/success_rate"} <= scalar_tags(run_dir)
    assert True in seen and False in seen and seen.count(True) == seen.count(False)
    cfg = TrainConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), "config.yaml")
    assert cfg.train_levels == 4 and cfg.carry_state is True


def test_stop_at_success_ends_training_at_the_first_evaluation_that_reaches_it(tmp_path, capsys, monkeypatch):
    """An evaluation whose success rate reaches stop_at_success ends training there (the steps after it untrained,
    not counted); the final evaluation still runs; a threshold no evaluation reaches changes nothing."""
    import agents.callbacks as callbacks

    evaluate, calls = callbacks.evaluate, []

    def scripted_evaluate(model, env, n_episodes, *args, **kwargs):
        calls.append(int(model.num_timesteps))
        result = evaluate(model, env, n_episodes, *args, **kwargs)
        return {**result, "success_rate": 1.0 if model.num_timesteps >= 256 else 0.0}

    monkeypatch.setattr(callbacks, "evaluate", scripted_evaluate)
    code, _, err = run_main(["--core", "gru", "--logdir", str(tmp_path / "a"), "--total-timesteps", "1024",
                             "--n-envs", "2", "--no-progress", "--set", *TINY_SET, "success_threshold=0",
                             "stop_at_success=0.9"], capsys)
    assert code == 0, err
    summary = json.loads((only_run_dir(tmp_path / "a") / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["solved_step"] == 256 and summary["total_timesteps"] == 256
    assert summary["requested_timesteps"] == 1024 and calls == [128, 256, 256]  # 2 periodic evaluations, the final
    assert "training ends here" in err
    calls.clear()
    code, _, err = run_main(["--core", "gru", "--logdir", str(tmp_path / "b"), "--total-timesteps", "384",
                             "--n-envs", "2", "--no-progress", "--set", *TINY_SET, "success_threshold=0",
                             "stop_at_success=1.0", "eval_freq=1000"], capsys)
    assert code == 0, err
    summary = json.loads((only_run_dir(tmp_path / "b") / "summary.json").read_text())
    assert summary["solved_step"] is None and summary["total_timesteps"] == 384
    code, _, err = run_main(["--core", "mlp", "--print-config", "--set", "stop_at_success=0.9",
                             "success_threshold=null"], capsys)
    assert code == 2 and "stop_at_success=0.9: needs success_threshold" in err
