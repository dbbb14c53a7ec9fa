"""Learning checks on a memory task: GRU and LSTM learn CartPole-P-v1 (positions only), the memoryless control cannot.

CartPole-P-v1 hides both velocities; a policy that sees only the current (x, theta) cannot balance the pole for long
(tests/test_envs.py shows the best memoryless linear controller stays far below 500). A recurrent core can recover
the velocities from consecutive positions.

Slow (about 3-4 minutes on 2 CPU cores): run with ``python -m pytest -m slow``; CI runs it.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import envs
from agents.train import build_model, make_envs
from agents.config import resolve_config

pytestmark = pytest.mark.slow

ENV_ID = "CartPole-P-v1"
STEPS = 100_000
EVAL_EVERY = 10_000
EVAL_EPISODES = 10


class PeriodicEval(BaseCallback):
    def __init__(self, eval_env):
        super().__init__()
        self.eval_env, self.next_eval, self.returns = eval_env, EVAL_EVERY, []

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.next_eval += EVAL_EVERY
            mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
            self.returns.append(mean)
        return True


def train(core: str, seed: int = 0, model_out: dict | None = None) -> list:
    """Train with exactly what ``train_agent --env CartPole-P-v1 --core CORE`` uses (configs/cartpole.yaml)."""
    torch.set_num_threads(1)
    cfg = resolve_config(env=ENV_ID, overrides={"core": core, "seed": seed})
    env, unused = make_envs(cfg, seed)  # train_agent's training env (reward scaling per the config)
    unused.close()
    eval_env = make_vec_env(lambda: envs.make_env(ENV_ID), n_envs=1, seed=seed + 10_000)
    model = build_model(cfg, env)
    callback = PeriodicEval(eval_env)
    model.learn(STEPS, callback=callback)
    print(f"{core}: eval returns every {EVAL_EVERY} steps: {[round(r) for r in callback.returns]}")
    if model_out is not None:
        model_out["model"] = model
    return callback.returns


@pytest.fixture(scope="module")
def control_returns():
    return train("mlp")


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_recurrent_core_learns_cartpole_p_where_the_control_cannot(core, control_returns, tmp_path):
    trained = {}
    returns = train(core, model_out=trained)
    assert max(returns) >= 450, returns
    # and keeps it: without reward scaling most seeds fell back late; with it 13 of 15 sweep runs end at 500 (seed 0,
    # the one trained here, among them), so this guards the recipe, not every seed
    assert np.mean(returns[-3:]) >= 400, returns
    assert max(control_returns) < 200, control_returns
    assert np.mean(returns[-3:]) > 2 * np.mean(control_returns[-3:]), (returns, control_returns)
    check_int8_return(trained["model"].policy, tmp_path)


def check_int8_return(policy, tmp_path, episodes: int = 10):
    """The trained policy exported to ONNX: float32 gives the torch return exactly; int8 stays within 10% (+5) of it
    on the same episodes (scripts/bench_export.py measures this over the 5-seed sweep: results/export.md)."""
    pytest.importorskip("onnxruntime")
    from agents.export import write_export
    from agents.runtime import OnnxPolicy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench_export import play, stateful

    write_export(policy, tmp_path, int8=True, check=True)
    env, seeds = envs.make_env(ENV_ID), list(range(1000, 1000 + episodes))
    fp, i8 = OnnxPolicy(tmp_path, "fp32"), OnnxPolicy(tmp_path, "int8")
    ref = play(stateful(lambda o, s, e: policy.act(o, s, e, deterministic=True), policy.initial_state(1)), env, seeds)
    onnx_fp = play(stateful(fp.act, fp.initial_state(1)), env, seeds)
    onnx_i8 = play(stateful(i8.act, i8.initial_state(1)), env, seeds)
    print(f"returns over {episodes} episodes: torch {ref['mean_return']:.1f}, onnx {onnx_fp['mean_return']:.1f}, "
          f"int8 {onnx_i8['mean_return']:.1f}")
    assert onnx_fp["mean_return"] == ref["mean_return"], (onnx_fp, ref)
    assert abs(onnx_i8["mean_return"] - ref["mean_return"]) <= 0.1 * ref["mean_return"] + 5, (onnx_i8, ref)
