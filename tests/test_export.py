"""Export: ONNX (state and episode_start as explicit inputs/outputs) and int8, the ONNX Runtime wrapper, the
export_policy command, clear errors for bad files, and the documented import paths (README "Using a trained policy
elsewhere")."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import envs  # noqa: E402
from agents import RecurrentPPO  # noqa: E402
from agents.export import FILES, main as export_main, run_env_kwargs, write_export  # noqa: E402
from agents.policy import RecurrentActorCriticPolicy  # noqa: E402
from agents.runtime import MANIFEST_NAME, ExportError, OnnxPolicy, file_sha256  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

# (env id or None, action space override) -> the cases every core is exported for
CASES = {
    "cartpole-p": dict(env_id="CartPole-P-v1", normalize_obs=True),
    "pendulum-novel-box": dict(env_id="PendulumNoVel-v1"),
    "pendulum-gsde": dict(env_id="PendulumNoVel-v1", use_sde=True),
    "minigrid-uint8": dict(env_id="MiniGrid-MemoryS7-v0", view_size=3),
    "minigrid-encoder-norm": dict(env_id="MiniGrid-MemoryS7-v0", view_size=3, encoder_norm=True),
    "cartpole-p-encoder-norm": dict(env_id="CartPole-P-v1", normalize_obs=True, encoder_norm=True),
    "multidiscrete": dict(env_id=None, action_space=spaces.MultiDiscrete([3, 2])),
    "multibinary": dict(env_id=None, action_space=spaces.MultiBinary(3)),
}


def make_policy(core, case, num_layers=1, shared_core=False, seed=0):
    torch.manual_seed(seed)
    spec = CASES[case]
    if spec["env_id"] is not None:
        env = envs.make_env(spec["env_id"], **({"view_size": spec["view_size"]} if "view_size" in spec else {}))
        obs_space, act_space = env.observation_space, env.action_space
    else:
        env = None
        obs_space, act_space = spaces.Box(-2.0, 2.0, (5,), np.float32), spec["action_space"]
    policy = RecurrentActorCriticPolicy(obs_space, act_space, core=core, hidden_size=24, num_layers=num_layers,
                                        shared_core=shared_core, normalize_obs=spec.get("normalize_obs", False),
                                        encoder_norm=spec.get("encoder_norm", False),
                                        env_id=spec["env_id"], use_sde=spec.get("use_sde", False))
    if spec.get("normalize_obs"):  # non-trivial statistics, so the export must carry them
        policy.update_obs_normalizer(np.random.default_rng(seed).normal(0.5, 2.0, size=(256, *obs_space.shape)))
    with torch.no_grad():  # larger logits than the 0.01-gain init, so argmax ties cannot hide a difference
        policy.action_net.weight.mul_(50.0)
    policy.set_training_mode(False)
    return policy, env


def episode_observations(env, obs_space, steps, seed=0):
    """Observations of a real episode (env) or samples of the space; env resets when an episode ends."""
    out = []
    if env is None:
        obs_space.seed(seed)
        return [obs_space.sample() for _ in range(steps)]
    obs, _ = env.reset(seed=seed)
    for t in range(steps):
        out.append(obs)
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    return out


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("core,num_layers,shared", [("gru", 1, False), ("lstm", 1, False), ("mlp", 1, False),
                                                    ("gru", 2, True), ("lstm", 2, False)])
def test_onnx_matches_torch_over_an_episode_with_a_mid_sequence_reset(tmp_path, case, core, num_layers, shared):
    policy, env = make_policy(core, case, num_layers, shared)
    manifest = write_export(policy, tmp_path, int8=False, check=False)
    runtime = OnnxPolicy(tmp_path)
    n_pi = manifest["state_size"]
    assert n_pi == int(np.prod(policy.core_pi.state_shape))
    steps, reset_at = 30, 13
    t_state, o_state = policy.initial_state(1), runtime.initial_state(1)
    compared_state = False
    for t, obs in enumerate(episode_observations(env, policy.observation_space, steps)):
        start = t in (0, reset_at)
        action, t_state = policy.act(obs, t_state, episode_start=start, deterministic=True)
        out = runtime.run(obs[None], o_state, np.array([start]))
        o_action, o_state = out["action"][0], out["state_out"]
        with torch.no_grad():
            latent = policy.pi_net(t_state[:, : n_pi].reshape(1, *policy.core_pi.state_shape)[:, num_layers - 1]
                                   if core != "mlp" else policy.core_pi.net(policy.encoder(torch.as_tensor(obs[None]))))
            logits = policy.action_net(latent).numpy()
        np.testing.assert_allclose(out["dist_params"], logits, rtol=1e-4, atol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(o_state, t_state[:, :n_pi].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"step {t}")
        if isinstance(policy.action_space, spaces.Box):
            np.testing.assert_allclose(o_action, action, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(o_action, action, err_msg=f"step {t}")
        compared_state = compared_state or np.abs(o_state).sum() > 0
    assert compared_state or core == "mlp"
    # the reset really happened inside the graph: the state after the reset equals a fresh start's
    obs = episode_observations(env, policy.observation_space, 1)[0]
    fresh = runtime.run(obs[None], runtime.initial_state(1), np.array([0.0]))["state_out"]
    reset = runtime.run(obs[None], o_state, np.array([1.0]))["state_out"]
    np.testing.assert_allclose(reset, fresh, atol=1e-6)


@pytest.mark.parametrize("core", ["gru", "lstm", "mlp", "mingru", "lru", "ffm", "s6"])
def test_batched_onnx_equals_batched_torch_with_per_env_resets(tmp_path, core):
    policy, env = make_policy(core, "cartpole-p")
    write_export(policy, tmp_path, int8=False, check=False)
    runtime = OnnxPolicy(tmp_path)
    B, rng = 5, np.random.default_rng(1)
    t_state, o_state = policy.initial_state(B), runtime.initial_state(B)
    for t in range(10):
        obs = rng.normal(size=(B, 2)).astype(np.float32)
        starts = rng.random(B) < 0.3
        a_t, t_state = policy.act(obs, t_state, starts, deterministic=True)
        a_o, o_state = runtime.act(obs, o_state, starts)
        np.testing.assert_array_equal(a_o, a_t)
        np.testing.assert_allclose(o_state, t_state[:, : runtime.state_size].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("core", ["mingru", "lru", "ffm", "s6"])
def test_scan_cores_export_with_the_state_as_inputs_and_outputs(tmp_path, core):
    """The scan cores' acting step in ONNX: float32 parity with torch over steps with resets (export's own check),
    the int8 file written and its agreement reported."""
    policy, env = make_policy(core, "cartpole-p", num_layers=2)
    manifest = write_export(policy, tmp_path, int8=True, check=True)
    assert manifest["state_size"] == int(np.prod(policy.core_pi.state_shape))
    parity = manifest["parity"]
    assert parity["fp32"]["max_abs_dist_params"] < 1e-4 and parity["fp32"]["max_abs_state"] < 1e-4
    assert parity["fp32"]["action_agreement"] == 1.0
    assert 0.0 <= parity["int8"]["action_agreement"] <= 1.0 and (tmp_path / FILES["int8"]).is_file()


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_int8_export_is_smaller_and_close(tmp_path, core):
    """The int8 graph of an untrained policy (random weights, logits scaled up) stays close to torch over the export's
    parity run (12 steps x 3 envs, resets inside): logits and state within 0.02 (about 0.001-0.006 here; per-tensor
    scales without reduce_range drift to ~0.12), at most one of the 36 actions different. Whether int8 costs return
    on a trained policy (claim C10) is checked by tests/test_learning.py on the policies it trains."""
    policy, env = make_policy(core, "cartpole-p")
    manifest = write_export(policy, tmp_path, int8=True, check=True)
    files = manifest["files"]
    assert files["int8"]["bytes"] < 0.7 * files["fp32"]["bytes"]  # hidden 24: per-channel scales weigh in
    parity = manifest["parity"]
    assert parity["fp32"]["max_abs_dist_params"] < 1e-4 and parity["fp32"]["action_agreement"] == 1.0
    int8 = parity["int8"]
    assert int8["max_abs_dist_params"] < 0.02 and int8["max_abs_state"] < 0.02, int8
    assert int8["action_agreement"] >= 35 / 36, int8
    import onnx  # the int8 graph really holds int8 weights for the recurrent products and the linear layers
    model = onnx.load(str(tmp_path / FILES["int8"]))
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulInteger" in ops and "Gemm" not in ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) >= 0.9 * sum(
        p.numel() for n, p in policy.named_parameters() if "weight" in n and ("core_pi" in n or "pi_net" in n
                                                                              or "action_net" in n or "encoder" in n))
    int8 = OnnxPolicy(tmp_path, precision="int8")
    action, state = int8.act(np.zeros(2, np.float32), int8.initial_state(1), True)
    assert action.shape == () and state.shape == (1, manifest["state_size"])


# ------------------------------------------------------------------------------------------------ command
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    venv = envs.make_env("CartPole-P-v1")
    model = RecurrentPPO("MlpPolicy", venv, core="gru", hidden_size=16, n_steps=32, batch_size=32, n_epochs=1,
                         seed=0, policy_kwargs={"env_id": "CartPole-P-v1"})
    model.learn(64)
    path = tmp_path_factory.mktemp("run") / "model.zip"
    model.save(path)
    return path


def test_export_policy_command_writes_onnx_int8_and_manifest(saved_model, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_main([str(saved_model.parent), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "policy.onnx" in printed and "policy.int8.onnx" in printed and "vs torch" in printed
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["env_id"] == "CartPole-P-v1" and manifest["core"] == "gru" and manifest["state_size"] == 16
    assert [i["name"] for i in manifest["inputs"]] == ["obs", "state", "episode_start"]
    assert [o["name"] for o in manifest["outputs"]] == ["action", "dist_params", "state_out"]
    assert manifest["inputs"][0]["shape"] == ["batch", 2] and manifest["outputs"][0]["dtype"] == "int64"
    assert manifest["observation_space"]["type"] == "Box" and manifest["action_space"] == {
        "type": "Discrete", "n": 2, "start": 0}
    for precision, name in FILES.items():
        assert manifest["files"][precision]["sha256"] == file_sha256(out / name)
    assert manifest["parity"]["fp32"]["action_agreement"] == 1.0
    assert manifest["make_env_kwargs"] == {}
    # default output directory: beside the model; a run directory's env wrappers (config.yaml) go into the manifest
    (saved_model.parent / "config.yaml").write_text("frame_stack: 4\nview_size: null\naction_set: all\n")
    try:
        assert export_main([str(saved_model), "--no-int8", "--no-check"]) == 0
    finally:
        (saved_model.parent / "config.yaml").unlink()
    assert json.loads((saved_model.parent / "export" / MANIFEST_NAME).read_text())["make_env_kwargs"] == {
        "frame_stack": 4}
    assert (saved_model.parent / "export" / "policy.onnx").exists()
    assert not (saved_model.parent / "export" / "policy.int8.onnx").exists()


def test_run_env_kwargs_rebuild_the_training_env(tmp_path):
    assert run_env_kwargs(tmp_path) == {}
    (tmp_path / "config.yaml").write_text("env: MiniGrid-MemoryS7-v0\nview_size: 3\naction_set: move\n"
                                          "max_episode_steps: 64\nframe_stack: 1\n")
    kwargs = run_env_kwargs(tmp_path)
    assert kwargs == {"view_size": 3, "action_set": "move", "max_episode_steps": 64, "frame_stack": 1}
    env = envs.make_env("MiniGrid-MemoryS7-v0", **kwargs)
    assert env.action_space.n == 3 and env.observation_space.shape == (28,)


def test_export_policy_bad_source_is_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    junk = tmp_path / "model.zip"
    junk.write_bytes(b"not a zip")
    assert export_main([str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a zip" in err


# ------------------------------------------------------------------------------------------------ bad files
@pytest.fixture()
def exported(tmp_path):
    policy, _ = make_policy("gru", "cartpole-p")
    write_export(policy, tmp_path / "gru", int8=False, check=False)
    return tmp_path / "gru"


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def replace_onnx_keeping_manifest_valid(export_dir, data: bytes):
    """Overwrite policy.onnx and record its sha256, so only ONNX Runtime's own checks can catch it."""
    (export_dir / "policy.onnx").write_bytes(data)
    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    manifest["files"]["fp32"]["sha256"] = file_sha256(export_dir / "policy.onnx")
    (export_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_truncated_or_changed_onnx_is_a_clear_error(exported):
    data = (exported / "policy.onnx").read_bytes()
    (exported / "policy.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError) as e:
        OnnxPolicy(exported)
    assert "does not match export.json" in _one_line(e) and "policy.onnx" in str(e.value)


def test_garbage_onnx_with_matching_manifest_is_a_clear_error(exported):
    replace_onnx_keeping_manifest_valid(exported, b"\x08\x07garbage" * 50)
    with pytest.raises(ExportError) as e:
        OnnxPolicy(exported)
    assert "could not be loaded by ONNX Runtime" in _one_line(e)


def test_manifest_problems_are_clear_errors(exported, tmp_path):
    with pytest.raises(ExportError, match="does not exist: expected an export directory"):
        OnnxPolicy(tmp_path)
    manifest_path = exported / MANIFEST_NAME
    good = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    with pytest.raises(ExportError, match="unreadable or corrupt"):
        OnnxPolicy(exported)
    manifest_path.write_text(json.dumps({**good, "format": "something-else"}))
    with pytest.raises(ExportError, match="is not a recurrent-agents export"):
        OnnxPolicy(exported)
    manifest_path.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(ExportError, match="format_version 99"):
        OnnxPolicy(exported)
    for broken in ({**good, "files": {"fp32": "policy.onnx"}}, {**good, "files": {"fp32": {"path": ""}}},
                   {k: v for k, v in good.items() if k != "inputs"}, {**good, "state_size": "24"},
                   {**good, "files": {"fp32": {**good["files"]["fp32"], "path": "../policy.onnx"}}}):
        manifest_path.write_text(json.dumps(broken))
        with pytest.raises(ExportError, match="is incomplete") as e:
            OnnxPolicy(exported)
        _one_line(e)
    manifest_path.write_text(json.dumps(good))
    with pytest.raises(ExportError, match="precision 'int8' was not exported"):
        OnnxPolicy(exported, precision="int8")
    with pytest.raises(ExportError, match="is not listed in"):
        OnnxPolicy(exported / "other.onnx")


def test_onnx_file_from_another_export_is_a_clear_error(exported, tmp_path):
    policy, _ = make_policy("lstm", "cartpole-p")
    write_export(policy, tmp_path / "lstm", int8=False, check=False)
    replace_onnx_keeping_manifest_valid(exported, (tmp_path / "lstm" / "policy.onnx").read_bytes())
    with pytest.raises(ExportError) as e:
        OnnxPolicy(exported)
    assert "different exports" in _one_line(e)


def test_onnx_file_with_another_observation_shape_is_a_clear_error(exported, tmp_path):
    policy, _ = make_policy("gru", "multidiscrete")  # 5 observation features instead of 2, same state size
    write_export(policy, tmp_path / "other", int8=False, check=False)
    replace_onnx_keeping_manifest_valid(exported, (tmp_path / "other" / "policy.onnx").read_bytes())
    with pytest.raises(ExportError) as e:
        OnnxPolicy(exported)
    assert "where export.json declares obs" in _one_line(e) and "different exports" in str(e.value)


def test_failed_parity_check_writes_nothing(tmp_path, monkeypatch):
    import agents.export as export

    policy, _ = make_policy("gru", "cartpole-p")
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # any difference at all fails the check
    with pytest.raises(ExportError, match="disagrees with the torch policy"):
        write_export(policy, tmp_path, int8=False, check=True)
    assert list(tmp_path.iterdir()) == []


def test_export_leaves_the_policy_as_it_was(tmp_path):
    policy, _ = make_policy("lstm", "cartpole-p")
    policy.set_training_mode(True)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    write_export(policy, tmp_path, int8=False, check=True)
    assert policy.training and all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_runtime_input_errors_name_the_shapes(exported):
    policy = OnnxPolicy(exported / "policy.onnx")
    with pytest.raises(ValueError, match=r"observation has shape \(3,\): expected \(2,\)"):
        policy.act(np.zeros(3, np.float32), policy.initial_state(1))
    with pytest.raises(ValueError, match=r"state has shape \(1, 5\): expected \[1, 24\]"):
        policy.act(np.zeros(2, np.float32), np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="episode_start has 2 entries"):
        policy.run(np.zeros((3, 2), np.float32), policy.initial_state(3), [True, False])
    policy.reset(batch_size=4)
    with pytest.raises(ValueError, match=r"call reset\(batch_size=1\)"):
        policy.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="batch_size=0"):
        policy.initial_state(0)
    # episode_start=None means "no reset", as for torch's act/predict (not NaN)
    state = policy.act(np.ones(2, np.float32), policy.initial_state(1), True)[1]
    np.testing.assert_array_equal(policy.act(np.ones(2, np.float32), state, None)[1],
                                  policy.act(np.ones(2, np.float32), state, False)[1])


def test_stateful_step_equals_functional_act(exported):
    policy = OnnxPolicy(exported)
    state = policy.initial_state(1)
    policy.reset()
    rng = np.random.default_rng(0)
    for t in range(8):
        obs = rng.normal(size=2).astype(np.float32)
        a1, state = policy.act(obs, state, episode_start=(t == 4))
        a2 = policy.step(obs, episode_start=(t == 4))
        assert a1 == a2
    np.testing.assert_array_equal(policy._state, state)


# ------------------------------------------------------------------------------------------------ import paths
def readme_blocks():
    """The python blocks of the README section "Using a trained policy elsewhere", keyed by their first comment."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using a trained policy elsewhere", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {b.splitlines()[0].lstrip("# ").strip(): b for b in blocks}


def test_readme_import_paths_run(saved_model, tmp_path):
    blocks = readme_blocks()
    assert len(blocks) == 3, list(blocks)
    run_dir = saved_model.parent
    assert export_main([str(run_dir), "--no-check"]) == 0
    no_torch = [title for title in blocks if "no torch import" in title]
    assert len(no_torch) == 1, list(blocks)
    # the blocks run verbatim from a directory laid out as train_agent leaves it
    runs = tmp_path / "cwd" / "results" / "runs"
    runs.mkdir(parents=True)
    shutil.copytree(run_dir, runs / "CartPole-P-v1__gru__s0__20261125-120000")
    for title, code in blocks.items():
        script = tmp_path / "block.py"
        script.write_text(code)
        if title in no_torch:  # must run with no torch import at all
            script.write_text(code + "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n")
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=runs.parent.parent,
                              timeout=300)
        assert proc.returncode == 0, f"README block {title!r} failed:\n{proc.stderr[-2000:]}"
        assert "return" in proc.stdout, proc.stdout
