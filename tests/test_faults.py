"""Fault injection: crafted and damaged files must not run code, and fail in one line.

A pickled payload that creates a marker file when unpickled is planted in model files; loading them must leave the
marker absent (no code ran) and either load from plain data or refuse in one line.
"""

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

import envs
from agents import RecurrentPPO, load_policy
from agents.serialization import UnsafeModelFile

torch.set_num_threads(1)


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _serialized(marker: Path, type_name: str) -> dict:
    return {":type:": type_name, ":serialized:": base64.b64encode(pickle.dumps(_Payload(marker))).decode()}


def _rewrite_data(src: Path, dst: Path, edit) -> None:
    """Copy a model zip, passing its ``data`` JSON through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            payload = zin.read(name)
            if name == "data":
                data = json.loads(payload)
                edit(data)
                payload = json.dumps(data).encode()
            zout.writestr(name, payload)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    env = make_vec_env(lambda: envs.make_env("CartPole-P-v1"), n_envs=2, seed=0)
    model = RecurrentPPO("MlpPolicy", env, core="lstm", hidden_size=8, n_steps=16, batch_size=32, n_epochs=1, seed=0,
                         learning_rate=LinearSchedule(1e-3, 0.0, 1.0), ent_coef=LinearSchedule(0.02, 0.0, 1.0),
                         clip_range_vf=0.3)
    model.learn(96)
    path = tmp_path_factory.mktemp("model") / "model.zip"
    model.save(path)
    return path, model


def test_every_pickled_field_is_rebuilt_from_plain_data(saved, tmp_path):
    """Each field SB3 pickles carries a payload; the model still loads (from the plain numbers beside each pickle
    and recurrent_policy.json), no payload runs, and the loaded model matches the saved one."""
    path, model = saved
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.zip"

    def plant(data):
        for key, item in data.items():
            if isinstance(item, dict) and ":serialized:" in item:
                item[":serialized:"] = _serialized(marker, item[":type:"])[":serialized:"]

    _rewrite_data(path, evil, plant)
    loaded = RecurrentPPO.load(evil)
    assert not marker.exists()
    assert loaded.learning_rate(0.5) == pytest.approx(5e-4) and loaded.ent_coef(0.25) == pytest.approx(0.005)
    assert loaded.clip_range(1.0) == pytest.approx(0.2) and loaded.clip_range_vf(1.0) == pytest.approx(0.3)
    assert loaded.observation_space == model.observation_space and loaded.action_space == model.action_space
    assert [e["r"] for e in loaded.ep_info_buffer] == [e["r"] for e in model.ep_info_buffer]
    for a, b in zip(loaded.policy.state_dict().values(), model.policy.state_dict().values()):
        torch.testing.assert_close(a, b)
    obs = np.array([[0.1, -0.2]], dtype=np.float32)
    assert loaded.predict(obs, deterministic=True)[0] == model.predict(obs, deterministic=True)[0]
    load_policy(evil)
    assert not marker.exists()


@pytest.mark.parametrize("key, type_name", [("evil", "<class 'builtins.object'>"),
                                            ("learning_rate", "<class 'builtins.function'>"),
                                            ("clip_range", "<class 'stable_baselines3.common.utils.FloatSchedule'>")])
def test_a_field_only_a_pickle_could_restore_is_refused_in_one_line(saved, tmp_path, key, type_name):
    path, _ = saved
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.zip"

    def plant(data):
        data[key] = _serialized(marker, type_name)  # no plain numbers beside it
        if key == "clip_range":
            data[key]["value_schedule"] = "<function <lambda> at 0x7f>"

    _rewrite_data(path, evil, plant)
    with pytest.raises(UnsafeModelFile) as info:
        RecurrentPPO.load(evil)
    message = str(info.value)
    assert "\n" not in message and key in message and "trust_file=True" in message
    assert not marker.exists()
    # the explicit opt-in does what it says: SB3 unpickles the field
    if key == "evil":
        RecurrentPPO.load(evil, trust_file=True)
        assert marker.exists()


# ------------------------------------------------------------------------------------------------ checkpoints
RUN_ARGS = ["--core", "gru", "--env", "CartPole-P-v1", "--n-envs", "2", "--no-progress", "--set", "n_steps=64",
            "batch_size=128", "n_epochs=1", "hidden_size=8", "eval_episodes=2", "eval_freq=0", "latency_steps=20",
            "checkpoint_freq=128", "keep_checkpoints=3"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from agents.cli import main

    logdir = tmp_path_factory.mktemp("runs")
    assert main([*RUN_ARGS, "--total-timesteps", "512", "--logdir", str(logdir)]) == 0
    (run_dir,) = [p for p in logdir.iterdir() if p.is_dir()]
    return run_dir


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil
    dst = tmp_path / run_dir.name
    shutil.copytree(run_dir, dst)
    return dst


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _resume(run_dir: Path, capsys, *extra: str):
    from agents.cli import main

    code = main(["--resume", str(run_dir), "--total-timesteps", "640", "--no-progress", *extra])
    return code, capsys.readouterr().err


def _newest(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").glob("step_*"))[-1]


@pytest.mark.parametrize("damage", ["flip rng.json", "truncate state.json", "truncate model.zip", "drop manifest",
                                    "model of another step"])
def test_a_damaged_checkpoint_is_refused_before_anything_is_written(finished_run, tmp_path, capsys, damage):
    run_dir = _copy_run(finished_run, tmp_path)
    ckpt = _newest(run_dir)
    if damage == "flip rng.json":
        data = bytearray((ckpt / "rng.json").read_bytes())
        data[len(data) // 2] ^= 0x01
        (ckpt / "rng.json").write_bytes(bytes(data))
    elif damage.startswith("truncate"):
        name = damage.split()[1]
        (ckpt / name).write_bytes((ckpt / name).read_bytes()[:20])
    elif damage == "drop manifest":
        (ckpt / "manifest.json").unlink()
    else:  # another checkpoint's model, with a manifest rewritten to match it: the steps still disagree
        import hashlib
        older = sorted((run_dir / "checkpoints").glob("step_*"))[-2]
        (ckpt / "model.zip").write_bytes((older / "model.zip").read_bytes())
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"]["model.zip"] = hashlib.sha256((ckpt / "model.zip").read_bytes()).hexdigest()
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    before = _snapshot(run_dir)
    code, err = _resume(run_dir, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ckpt.name in err and "previous good checkpoint" in err
    assert _snapshot(run_dir) == before  # nothing written, nothing lost


def test_a_checkpoint_of_an_earlier_version_needs_trust(finished_run, tmp_path, capsys):
    """rng.pkl instead of rng.json and no manifest: refused (a planted payload does not run) unless trusted."""
    run_dir = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "ran"
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        (ckpt / "manifest.json").unlink()
        (ckpt / "rng.json").unlink()
        (ckpt / "rng.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    before = _snapshot(run_dir)
    code, err = _resume(run_dir, capsys)
    assert code == 2 and "--trust-checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and _snapshot(run_dir) == before
    # a real earlier-version checkpoint (pickled RNG state) resumes when trusted
    import random
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        (ckpt / "rng.pkl").write_bytes(pickle.dumps({"python": random.getstate(), "numpy": np.random.get_state(),
                                                     "torch": torch.get_rng_state(), "cuda": None}))
    code, err = _resume(run_dir, capsys, "--trust-checkpoint")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_timesteps"] >= 640 and summary["sessions"] == 2


def test_a_sound_checkpoint_resumes(finished_run, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path)
    code, err = _resume(run_dir, capsys)
    assert code == 0, err
    newest = _newest(run_dir)
    manifest = json.loads((newest / "manifest.json").read_text())
    # CartPole's config scales rewards: its statistics travel as plain numbers too
    assert manifest["step"] >= 640
    assert set(manifest["files"]) == {"model.zip", "rng.json", "state.json", "vecnormalize.json"}
    assert json.loads((newest / "vecnormalize.json").read_text())["ret_count"] > 640
    assert not list(run_dir.rglob("*.pkl"))  # nothing a resume would have to unpickle


def test_reward_statistics_round_trip_through_plain_data(tmp_path):
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.rundir import _vecnormalize_state, restore_vecnormalize

    make = lambda: VecNormalize(make_vec_env(lambda: envs.make_env("CartPole-P-v1"), n_envs=2, seed=0),  # noqa: E731
                                norm_obs=False, norm_reward=True, gamma=0.9)
    venv = make()
    venv.reset()
    for _ in range(50):
        venv.step(np.array([0, 1]))
    (tmp_path / "v.json").write_text(json.dumps(_vecnormalize_state(venv)))
    fresh = make()
    restore_vecnormalize(fresh, tmp_path / "v.json")
    assert fresh.ret_rms.count == venv.ret_rms.count and np.allclose(fresh.ret_rms.var, venv.ret_rms.var)


# ------------------------------------------------------------------------------------------------ extreme values
def _train(tmp_path, capsys, *sets: str, steps: int = 512):
    from agents.cli import main

    code = main([*RUN_ARGS, *sets, "--total-timesteps", str(steps), "--logdir", str(tmp_path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("lr, expected", [("1e38", "optimizer step failed"), ("3e6", "non-finite gradient norm")])
def test_an_extreme_learning_rate_stops_in_one_line(tmp_path, capsys, lr, expected):
    code, err = _train(tmp_path, capsys, f"learning_rate={lr}")
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    assert "--set learning_rate=X" in err


def test_resume_may_change_the_learning_rate_and_config_yaml_says_so(finished_run, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _copy_run(finished_run, tmp_path)
    code, err = _resume(run_dir, capsys, "--set", "learning_rate=1e-4")
    assert code == 0, err
    assert "learning_rate: 0.0001" in (run_dir / "config.yaml").read_text()  # config.yaml tells what ran
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert acc.Scalars("train/learning_rate")[-1].value == pytest.approx(1e-4)


def test_nonfinite_skip_drops_the_steps_and_counts_them(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, err = _train(tmp_path, capsys, "learning_rate=3e6", "nonfinite=skip")
    assert code == 0, err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert acc.Scalars("train/skipped_steps")[-1].value > 0


def test_resume_refuses_to_change_what_shapes_the_run(finished_run, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path)
    before = _snapshot(run_dir)
    code, err = _resume(run_dir, capsys, "--set", "n_steps=32")
    assert code == 2 and "n_steps cannot change on resume" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(run_dir) == before


def _rewrite_entry(src: Path, dst: Path, name: str, edit) -> None:
    """Copy a model zip, passing its JSON entry ``name`` through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for entry in zin.namelist():
            payload = zin.read(entry)
            if entry == name:
                data = json.loads(payload)
                edit(data)
                payload = json.dumps(data).encode()
            zout.writestr(entry, payload)


def test_loading_imports_no_module_the_file_names(saved, tmp_path, monkeypatch):
    """A core or an env named by the file as module:Name is not imported by loading it (importing runs the module's
    code); a module already imported is used."""
    path, _ = saved
    marker = tmp_path / "imported"
    (tmp_path / "plantedmod.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                            "from agents.cores import LSTMCore as Core\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    core_file, env_file = tmp_path / "core.zip", tmp_path / "env.zip"

    def name_core(cfg):
        cfg["core"] = "plantedmod:Core"

    def name_env(data):
        data["env"] = "plantedmod:Env-v0"
        data["policy_kwargs"]["core"] = "plantedmod:Core"

    _rewrite_entry(path, core_file, "recurrent_policy.json", name_core)
    _rewrite_entry(path, env_file, "data", name_env)
    for load, file in ((load_policy, core_file), (RecurrentPPO.load, env_file)):
        with pytest.raises(ValueError, match="module 'plantedmod' is not imported") as info:
            load(file)
        assert "\n" not in str(info.value)
    assert not marker.exists()
    import importlib
    importlib.import_module("plantedmod")  # the user's own module, imported by the user: now it loads
    assert load_policy(core_file).core_name == "plantedmod:Core"


# ------------------------------------------------------------------------------------------------ interrupts
@pytest.mark.parametrize("when", ["periodic", "final"])
def test_sigterm_during_an_evaluation_keeps_it_logged_and_saved(tmp_path, capsys, monkeypatch, when):
    """A SIGTERM in the middle of an evaluation: a periodic one is logged and the run stops with a checkpoint at
    that step; the final one is finished, logged and written with the model and summary."""
    import os
    import signal

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import agents.callbacks as callbacks
    from agents.cli import main

    evaluate, calls = callbacks.evaluate, []

    def interrupted_evaluate(model, env, *args, **kwargs):
        calls.append(int(model.num_timesteps))
        if (when == "periodic" and len(calls) == 2) or (when == "final" and model.num_timesteps >= 512):
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(model, env, *args, **kwargs)

    monkeypatch.setattr(callbacks, "evaluate", interrupted_evaluate)
    total = "768" if when == "periodic" else "512"  # periodic evaluations at 256 and 512; the final one at the end
    code = main([*RUN_ARGS, "eval_freq=256", "checkpoint_freq=512", "--total-timesteps", total, "--logdir",
                 str(tmp_path)])
    err = capsys.readouterr().err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    logged = [e.step for e in acc.Scalars("eval/mean_reward")]
    if when == "periodic":
        assert code == 143 and "stopped by SIGTERM" in err
        assert logged == calls == [256, 512] and _newest(run_dir).name == "step_000000512"
    else:
        assert code == 0 and "finishing the final evaluation" in err
        assert logged[-1] == calls[-1] == 512 and (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_kill_9_and_sigterm_at_random_points_never_corrupt_a_run(tmp_path):
    """A training process killed with SIGKILL or stopped with SIGTERM at random moments, again and again, then
    resumed: every checkpoint on disk is whole (it passes the resume check), a resume always continues, and the
    run finishes with its requested steps."""
    import random as pyrandom
    import signal
    import subprocess
    import sys
    import time

    from agents.rundir import check_checkpoint, list_checkpoints

    rng = pyrandom.Random(7)
    base = [sys.executable, "-m", "agents.cli", *RUN_ARGS, "checkpoint_freq=64", "eval_freq=256"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*base, "--total-timesteps", "4096", "--logdir", str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = None
    for attempt in range(8):
        time.sleep(rng.uniform(4.0, 10.0))
        proc.send_signal(signal.SIGKILL if attempt % 2 == 0 else signal.SIGTERM)
        proc.wait(timeout=120)
        dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
        if not dirs:
            run_dir = None
        else:
            (run_dir,) = dirs
            for ckpt in list_checkpoints(run_dir):
                check_checkpoint(ckpt)  # whole, whatever moment the process died at
        if run_dir is None or not list_checkpoints(run_dir):  # killed before its first checkpoint: start again
            for d in dirs:
                __import__("shutil").rmtree(d)
            proc = subprocess.Popen([*base, "--total-timesteps", "4096", "--logdir", str(tmp_path)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            continue
        if (run_dir / "summary.json").exists():
            break
        proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "--resume", str(run_dir), "--no-progress"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    else:
        proc.wait(timeout=600)
    if run_dir is None or not (run_dir / "summary.json").exists():
        if run_dir is None:
            (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
        done = subprocess.run([sys.executable, "-m", "agents.cli", "--resume", str(run_dir), "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_timesteps"] >= 4096 and summary["status"] == "completed"


def test_an_edited_config_yaml_that_no_longer_describes_the_checkpoint_is_refused(finished_run, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("n_steps: 64", "n_steps: 32"))
    before = _snapshot(run_dir)
    code, err = _resume(run_dir, capsys)
    assert code == 2 and "n_steps=32, but the checkpoint was trained with n_steps=64" in err
    assert _snapshot(run_dir) == before
    # an edited optimisation setting is what runs, and config.yaml keeps saying so
    config.write_text(config.read_text().replace("n_steps: 32", "n_steps: 64").replace("ent_coef: 0.0",
                                                                                        "ent_coef: 0.005"))
    code, err = _resume(run_dir, capsys)
    assert code == 0, err
    assert "ent_coef: 0.005" in config.read_text()
