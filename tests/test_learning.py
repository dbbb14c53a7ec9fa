"""Learning checks on a memory task: GRU and LSTM learn CartPole-P-v1 (positions only), the memoryless control cannot.

CartPole-P-v1 hides both velocities; a policy that sees only the current (x, theta) cannot balance the pole for long
(tests/test_envs.py shows the best memoryless linear controller stays far below 500). A recurrent core can recover
the velocities from consecutive positions.

Seed 0 trains the full 100k steps (and must keep what it learned; its int8 export is checked against claim C10);
seeds 1 and 2 train 40,960 steps and must reach 475, as every GRU and LSTM run of the 5-seed sweep did by 30,720
(results/comparison_rnorm/comparison.json, steps_to_threshold).

Slow (about 6 minutes on 2 CPU cores): run with ``python -m pytest -m slow``; CI runs it.
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


def train(core: str, seed: int = 0, model_out: dict | None = None, steps: int = STEPS) -> list:
    """Train with exactly what ``train_agent --env CartPole-P-v1 --core CORE`` uses (configs/cartpole.yaml), for
    ``steps`` steps (the config's learning rate is constant, so a shorter run is the start of a longer one)."""
    torch.set_num_threads(1)
    cfg = resolve_config(env=ENV_ID, overrides={"core": core, "seed": seed})
    env, unused = make_envs(cfg, seed)  # train_agent's training env (reward scaling per the config)
    unused.close()
    eval_env = make_vec_env(lambda: envs.make_env(ENV_ID), n_envs=1, seed=seed + 10_000)
    model = build_model(cfg, env)
    callback = PeriodicEval(eval_env)
    model.learn(steps, callback=callback)
    print(f"{core} seed {seed}: eval returns every {EVAL_EVERY} steps: {[round(r) for r in callback.returns]}")
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
    # and keeps it: without reward scaling most seeds fell back late; with it the 5-seed sweep's final IQMs are 498
    # [316, 500] (GRU) and 500 [500, 500] (LSTM) (results/comparison_rnorm/), so this guards the recipe on seed 0,
    # not every seed
    assert np.mean(returns[-3:]) >= 400, returns
    assert max(control_returns) < 200, control_returns
    assert np.mean(returns[-3:]) > 2 * np.mean(control_returns[-3:]), (returns, control_returns)
    check_int8_return(trained["model"].policy, tmp_path, max_change=INT8_MAX_CHANGE[core])


@pytest.mark.parametrize("core", ["gru", "lstm"])
@pytest.mark.parametrize("seed", [1, 2])
def test_recurrent_core_learns_cartpole_p_on_other_seeds(core, seed):
    returns = train(core, seed=seed, steps=40_960)
    assert max(returns) >= 475, returns


# C10 ("int8 GRUs lose < 1%"): results/export.md measured int8 - torch = +0.0 on each of the 5 trained GRU policies
# and at most 1.2 of 107.5 (1.1%) on the LSTM's, so the GRU is held to the claim and the LSTM to its measured spread
INT8_MAX_CHANGE = {"gru": 0.01, "lstm": 0.02}


def check_int8_return(policy, tmp_path, max_change: float, episodes: int = 10):
    """The trained policy exported to ONNX: float32 gives the torch return exactly; int8 moves the mean return over
    the same episodes by at most ``max_change`` of it and picks torch's action on at least 99% of the steps (the
    5-seed sweep's policies: 99.8-100%, results/export.md; scripts/bench_export.py)."""
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
    onnx_i8 = play(stateful(i8.act, i8.initial_state(1)), env, seeds,
                   reference=stateful(lambda o, s, e: policy.act(o, s, e, deterministic=True), policy.initial_state(1)))
    print(f"returns over {episodes} episodes: torch {ref['mean_return']:.1f}, onnx {onnx_fp['mean_return']:.1f}, "
          f"int8 {onnx_i8['mean_return']:.1f} (int8 = torch on {100 * onnx_i8['action_agreement']:.1f}% of steps)")
    assert onnx_fp["mean_return"] == ref["mean_return"], (onnx_fp, ref)
    assert abs(onnx_i8["mean_return"] - ref["mean_return"]) <= max_change * ref["mean_return"], (onnx_i8, ref)
    assert onnx_i8["action_agreement"] >= 0.99, onnx_i8
