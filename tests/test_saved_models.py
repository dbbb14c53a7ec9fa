"""Models saved by an earlier version (commit 5c3e8b8, before cores declared their own options) still load and act
as they did: through ``load_policy`` and through ``RecurrentPPO.load``."""

from pathlib import Path

import numpy as np
import pytest

from agents import RecurrentPPO, load_policy

DATA = Path(__file__).with_name("data")
OBS = np.array([[0.1, -0.2], [0.0, 0.05]], dtype=np.float32)  # two CartPole-P observations


@pytest.mark.parametrize("core", ["gru", "lstm", "mlp"])
def test_a_model_saved_before_this_version_loads_and_acts_the_same(core):
    path = DATA / f"cartpole_p_{core}_5c3e8b8.zip"
    expected = np.load(DATA / f"cartpole_p_{core}_5c3e8b8_expected.npy")  # [action, state...] per observation
    policy = load_policy(path)
    assert policy.core_name == core and (core != "mlp" or "kernel" not in policy.core_kwargs)
    action, state = policy.predict(OBS, deterministic=True)
    np.testing.assert_array_equal(action, expected[:, 0].astype(action.dtype))
    np.testing.assert_allclose(state, expected[:, 1:], atol=1e-6)
    model = RecurrentPPO.load(path)
    action2, state2 = model.predict(OBS, deterministic=True)
    np.testing.assert_array_equal(action2, action)
    np.testing.assert_allclose(state2, state, atol=1e-6)
    assert model.carry_state is False  # options added later take their defaults
