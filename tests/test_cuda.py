"""The recurrent contract and the training loop on a CUDA device (skipped where torch sees no CUDA, as in CI).

Every check runs the same weights on the CPU and on the GPU and compares: the core's sequence pass with mid-sequence
resets (which takes cuDNN's kernels on the GPU), its gradients, the policy's evaluation of a rollout, a short
RecurrentPPO run, and ``train_agent --device cuda`` end to end. The tolerances allow for TF32 in cuDNN's RNN
kernels (torch's default on Ampere and newer); a reset applied at the wrong step moves outputs by O(0.1).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

import envs  # noqa: F401  (registers the masked envs)
from agents import CORES, RecurrentPPO, load_policy
from agents.cores import make_core
from agents.policy import RecurrentActorCriticPolicy
from test_cores import _grads, _inputs, _stepwise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ALL_CORES = sorted(CORES)
TOL = dict(atol=2e-3, rtol=2e-3)
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ALL_CORES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_core_on_cuda_matches_cpu_and_keeps_the_contract(name, num_layers):
    core = make_core(name, 6, 32, num_layers)
    gpu = copy.deepcopy(core).to(CUDA)
    assert gpu.kernel_in_use == "stock"  # the fused kernels are CPU-only; "auto" must fall back on the GPU
    x, starts, s0 = _inputs(core)
    y_cpu, s_cpu = core.forward_sequence(x, s0, starts)
    y_seq, s_seq = gpu.forward_sequence(x.to(CUDA), s0.to(CUDA), starts.to(CUDA))
    y_step, s_step = _stepwise(gpu, x.to(CUDA), s0.to(CUDA), starts.to(CUDA))
    assert y_seq.device.type == s_seq.device.type == "cuda"
    torch.testing.assert_close(y_seq.cpu(), y_cpu, **TOL)
    torch.testing.assert_close(s_seq.cpu(), s_cpu, **TOL)
    torch.testing.assert_close(y_step, y_seq, **TOL)
    torch.testing.assert_close(s_step, s_seq, **TOL)


@pytest.mark.parametrize("name", ALL_CORES)
def test_core_gradients_on_cuda_match_cpu(name):
    core = make_core(name, 6, 32, 2)
    gpu = copy.deepcopy(core).to(CUDA)
    x, starts, s0 = _inputs(core, T=9, B=3)
    grads = [_grads(c, lambda c=c, d=d: c.forward_sequence(x.to(d), s0.to(d), starts.to(d)))
             for c, d in ((core, "cpu"), (gpu, CUDA))]
    for g_cpu, g_gpu in zip(grads[0], [g.cpu() for g in grads[1]]):
        torch.testing.assert_close(g_gpu, g_cpu, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("name", ALL_CORES)
def test_policy_on_cuda_evaluates_a_rollout_like_the_cpu(name):
    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(3), core=name,
                                        hidden_size=16, num_layers=2)
    gpu = copy.deepcopy(policy).to(CUDA)
    T, B = 12, 4
    obs = torch.randn(T, B, 3)
    starts = (torch.rand(T, B) < 0.25).float()
    actions = torch.randint(0, 3, (T, B, 1))
    with torch.no_grad():
        v_cpu, lp_cpu, _ = policy.evaluate_actions(obs, actions, starts, policy.initial_state(B))
        v_gpu, lp_gpu, _ = gpu.evaluate_actions(obs.to(CUDA), actions.to(CUDA), starts.to(CUDA), gpu.initial_state(B))
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, **TOL)
    torch.testing.assert_close(lp_gpu.cpu(), lp_cpu, **TOL)
    # the per-step act path: numpy in, numpy out, the state stays on the GPU
    action, state = gpu.act(obs[0, 0].numpy(), gpu.initial_state(1), episode_start=True)
    assert isinstance(action, np.ndarray) and state.device.type == "cuda"


@pytest.mark.parametrize("name", ALL_CORES)
def test_recurrent_ppo_learns_on_cuda_and_loads_on_cpu(name, tmp_path):
    env = make_vec_env("CartPole-P-v1", n_envs=2, seed=0)
    model = RecurrentPPO("MlpPolicy", env, core=name, hidden_size=16, n_steps=16, batch_size=32, n_epochs=2,
                         seed=0, device="cuda")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(64)
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, model.policy.parameters()))
    assert np.isfinite(model.logger.name_to_value["train/grad_norm"])
    model.save(tmp_path / "model.zip")
    cpu = load_policy(tmp_path / "model.zip", device="cpu")
    obs = torch.randn(10, 2, *env.observation_space.shape)
    starts = torch.zeros(10, 2)
    starts[0] = 1
    actions = torch.zeros(10, 2, 1, dtype=torch.long)
    with torch.no_grad():
        v_cpu, _, _ = cpu.evaluate_actions(obs, actions, starts, cpu.initial_state(2))
        v_gpu, _, _ = model.policy.evaluate_actions(obs.to(CUDA), actions.to(CUDA), starts.to(CUDA),
                                                    model.policy.initial_state(2))
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, **TOL)


def test_train_agent_on_cuda_writes_a_run(tmp_path):
    from test_cli import COMMAND, ENV, TINY_SET, only_run_dir

    args = [*COMMAND, "--core", "gru", "--env", "MiniGrid-Memory", "--total-timesteps", "256", "--n-envs", "2",
            "--device", "cuda", "--logdir", str(tmp_path), "--no-progress", "--set", *TINY_SET]
    res = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["device"].startswith("cuda"), summary
    assert summary["eval_success_rate"] is not None and summary["latency_p50_us"] > 0
    assert load_policy(run_dir / "model.zip").env_id == "MiniGrid-MemoryS7-v0"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
