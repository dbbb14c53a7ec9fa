"""Every supported observation space (Box aside, covered everywhere else) through the policy, training, save/load,
the recurrent contract and ONNX export: Discrete, MultiDiscrete, MultiBinary, Dict and Tuple."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.preprocessing import preprocess_obs

from agents import CORES, RecurrentPPO, load_policy
from agents.obspack import ObsPacker
from agents.policy import RecurrentActorCriticPolicy
from agents.spaces import space_from_config, space_to_config

torch.set_num_threads(1)

SPACES = {
    "discrete": spaces.Discrete(4, start=1),
    "multidiscrete": spaces.MultiDiscrete([3, 2, 4]),
    "multibinary": spaces.MultiBinary(3),
    "dict": spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "key": spaces.Discrete(3),
                         "cards": spaces.MultiDiscrete([2, 5]), "flags": spaces.MultiBinary(2)}),
    "tuple": spaces.Tuple([spaces.Discrete(2), spaces.Box(-2, 2, (3,), np.float32), spaces.MultiBinary(2)]),
}


class SpaceEnv(gym.Env):
    """Observations drawn from ``space``; reward 1 at the last of ``length`` steps when the action repeats the
    parity of the first observation's first packed entry (a small memory task)."""

    def __init__(self, space: spaces.Space, length: int = 6) -> None:
        self.observation_space, self.action_space, self.length = space, spaces.Discrete(2), length
        self._first = ObsPacker(space_to_config(space)).leaves[0]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        obs = self.observation_space.sample()
        packed, _ = ObsPacker(space_to_config(self.observation_space)).pack(obs)
        self.target = int(abs(packed[0, 0]) * 10) % 2
        return obs, {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        return self.observation_space.sample(), float(done and int(action) == self.target), done, False, {}


def _sample_batch(space, n, seed):
    space.seed(seed)
    return ObsPacker(space_to_config(space)).stack([space.sample() for _ in range(n)])


@pytest.mark.parametrize("key", SPACES)
def test_space_description_round_trips_as_json(key):
    space = SPACES[key]
    cfg = json.loads(json.dumps(space_to_config(space)))
    assert space_from_config(cfg) == space


def test_unsupported_spaces_are_one_line_errors():
    nested = spaces.Dict({"a": spaces.Dict({"b": spaces.Discrete(2)})})
    with pytest.raises(ValueError, match=r"nests a Dict \(at 'a'\): expected Box, Discrete"):
        space_to_config(nested)
    with pytest.raises(ValueError, match=r"space Text\(.*is not supported: expected Box, Discrete"):
        RecurrentActorCriticPolicy(spaces.Text(5), spaces.Discrete(2))
    with pytest.raises(ValueError, match="encoder 'flat' reads Box observations"):
        RecurrentActorCriticPolicy(spaces.Discrete(3), spaces.Discrete(2), encoder="flat")


@pytest.mark.parametrize("key", SPACES)
def test_encoder_features_are_sb3_preprocessing(key):
    """The combined encoder's features are SB3's ``preprocess_obs`` of each part (one-hot, 0/1, Box as is),
    concatenated - the same columns, in the encoder's own order."""
    space = SPACES[key]
    policy = RecurrentActorCriticPolicy(space, spaces.Discrete(2), encoder_sizes=[])
    obs = _sample_batch(space, 64, seed=1)
    ours = policy.encoder.features(torch.as_tensor(policy.pack_obs(obs))).numpy()
    parts = space.spaces.items() if isinstance(space, spaces.Dict) else (
        enumerate(space.spaces) if isinstance(space, spaces.Tuple) else [(None, space)])
    sb3 = []
    for k, sub in parts:
        value = np.asarray(obs if k is None else obs[k])
        if isinstance(sub, (spaces.Discrete, spaces.MultiDiscrete)):
            value = value - sub.start  # SB3's one-hot ignores the space's start; ours counts from it
        sb3.append(preprocess_obs(torch.as_tensor(np.asarray(value)), sub).reshape(64, -1).float().numpy())
    sb3 = np.concatenate(sb3, axis=1)
    assert ours.shape == sb3.shape
    remaining = [sb3[:, j] for j in range(sb3.shape[1])]
    for i in range(ours.shape[1]):  # every column of ours is one column of SB3's, each used once
        j = next((j for j, col in enumerate(remaining) if np.array_equal(col, ours[:, i])), None)
        assert j is not None, f"feature column {i} is not one of SB3's preprocessed columns"
        remaining.pop(j)
    assert policy.encoder.output_size == sb3.shape[1]


@pytest.mark.parametrize("core", sorted(CORES))
@pytest.mark.parametrize("key", SPACES)
def test_sequence_equals_steps_with_resets_and_gradients(key, core):
    """Through the whole policy (packing, encoder, core, heads): evaluate_actions over a sequence with resets gives
    the values and log-probs of the step-by-step rollout, and the same gradients."""
    space = SPACES[key]
    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(space, spaces.Discrete(3), core=core, hidden_size=8, encoder_sizes=[16])
    T, B = 7, 3
    obs = torch.stack([torch.as_tensor(policy.pack_obs(_sample_batch(space, B, seed=t))) for t in range(T)])
    starts = (torch.rand(T, B) < 0.3).float()
    state0 = policy.initial_state(B)
    state, acts, vals, logps = state0, [], [], []
    for t in range(T):
        a, v, lp, state = policy(obs[t], state, starts[t])
        acts.append(a), vals.append(v), logps.append(lp)
    step_loss = torch.stack(vals).sum() + torch.stack(logps).sum()
    step_grads = torch.autograd.grad(step_loss, [p for p in policy.parameters() if p.requires_grad],
                                     allow_unused=True)
    values, log_prob, _ = policy.evaluate_actions(obs, torch.stack(acts).unsqueeze(-1), starts, state0)
    torch.testing.assert_close(values, torch.stack(vals).reshape(-1).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_prob, torch.stack(logps).reshape(-1).detach(), atol=1e-5, rtol=1e-5)
    seq_grads = torch.autograd.grad(values.sum() + log_prob.sum(),
                                    [p for p in policy.parameters() if p.requires_grad], allow_unused=True)
    for g_step, g_seq in zip(step_grads, seq_grads):
        if g_step is None or g_seq is None:
            assert g_step is None and g_seq is None
        else:
            torch.testing.assert_close(g_seq, g_step, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key", SPACES)
def test_trains_predicts_and_round_trips_through_save_and_load(key, tmp_path):
    space = SPACES[key]
    env = make_vec_env(lambda: SpaceEnv(space), n_envs=2, seed=0)
    model = RecurrentPPO("MlpPolicy", env, core="gru", hidden_size=16, n_steps=64, batch_size=64, n_epochs=2, seed=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(256)
    assert model.num_timesteps == 256
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters())), "learn() changed nothing"

    single = SpaceEnv(space).reset(seed=3)[0]
    action, state = model.predict(single, deterministic=True)
    assert np.asarray(action).shape == () and state.shape == (1, model.policy.state_size)
    batch = env.reset()
    actions, states = model.predict(batch, deterministic=True)
    assert actions.shape == (2,) and states.shape == (2, model.policy.state_size)

    model.save(tmp_path / "model.zip")
    for loaded in (load_policy(tmp_path / "model.zip"), RecurrentPPO.load(tmp_path / "model.zip").policy):
        assert loaded.observation_space == space
        s_a, s_b = model.policy.initial_state(2), loaded.initial_state(2)
        for t in range(8):
            obs = _sample_batch(space, 2, seed=100 + t)
            starts = np.array([t == 0, t == 4])
            a_a, s_a = model.policy.act(obs, s_a, starts)
            a_b, s_b = loaded.act(obs, s_b, starts)
            np.testing.assert_array_equal(a_a, a_b)
            torch.testing.assert_close(s_a, s_b)


@pytest.mark.parametrize("key", SPACES)
def test_single_and_torch_observations_act_as_a_batch_of_one(key):
    space = SPACES[key]
    policy = RecurrentActorCriticPolicy(space, spaces.Discrete(3), hidden_size=8)
    space.seed(0)
    obs = space.sample()
    a1, s1 = policy.act(obs, policy.initial_state(1), True)
    a2, s2 = policy.act(ObsPacker(space_to_config(space)).stack([obs]), policy.initial_state(1), True)
    assert np.asarray(a1).shape == () and a2.shape == (1,) and a1 == a2[0]
    torch.testing.assert_close(s1, s2)
    as_torch = ({k: torch.as_tensor(np.asarray(v)) for k, v in obs.items()} if isinstance(obs, dict) else
                tuple(torch.as_tensor(np.asarray(v)) for v in obs) if isinstance(obs, tuple) else
                torch.as_tensor(np.asarray(obs)))
    a3, s3 = policy.act(as_torch, policy.initial_state(1), True)
    assert isinstance(a3, torch.Tensor) and int(a3) == int(a1)
    torch.testing.assert_close(s3, s1)


def test_bad_observations_are_one_line_errors():
    policy = RecurrentActorCriticPolicy(SPACES["dict"], spaces.Discrete(2), hidden_size=8)
    good = SPACES["dict"].sample()
    with pytest.raises(ValueError, match=r"obs\['key'\] holds 7: expected integers in \[0, 3\) \(Discrete space\)"):
        policy.act({**good, "key": 7}, policy.initial_state(1))
    with pytest.raises(ValueError, match=r"observation lacks key\(s\) \['flags'\]"):
        policy.act({k: v for k, v in good.items() if k != "flags"}, policy.initial_state(1))
    with pytest.raises(ValueError, match=r"obs\['pos'\] has shape \(3,\): expected \(2,\) or \[B, \*\(2,\)\]"):
        policy.act({**good, "pos": np.zeros(3, np.float32)}, policy.initial_state(1))
    with pytest.raises(ValueError, match="observation is a list: expected a dict with keys"):
        policy.act([1, 2], policy.initial_state(1))
    mb = RecurrentActorCriticPolicy(SPACES["multibinary"], spaces.Discrete(2), hidden_size=8)
    with pytest.raises(ValueError, match=r"obs holds 2: expected 0 or 1 \(MultiBinary space\)"):
        mb.act(np.array([0, 2, 1]), mb.initial_state(1))
    tup = RecurrentActorCriticPolicy(SPACES["tuple"], spaces.Discrete(2), hidden_size=8)
    with pytest.raises(ValueError, match="observation is a tuple of 2: expected a tuple of 3 parts"):
        tup.act((0, np.zeros(3, np.float32)), tup.initial_state(1))


def test_normalize_obs_applies_to_the_box_parts_only():
    policy = RecurrentActorCriticPolicy(SPACES["dict"], spaces.Discrete(2), hidden_size=8, normalize_obs=True)
    assert policy.encoder.norm is not None and policy.encoder.norm.mean.shape == (2,)  # "pos" only
    obs = _sample_batch(SPACES["dict"], 50, seed=0)
    obs["pos"] = obs["pos"] * 0.1 + 0.5
    policy.update_obs_normalizer(policy.pack_obs(obs))
    np.testing.assert_allclose(policy.encoder.norm.mean.numpy(), obs["pos"].mean(0), atol=1e-3)


@pytest.mark.parametrize("key", SPACES)
def test_onnx_export_acts_on_the_same_observations(key, tmp_path):
    pytest.importorskip("onnxruntime")
    from agents.export import write_export
    from agents.runtime import OnnxPolicy

    space = SPACES[key]
    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(space, spaces.Discrete(3), core="lstm", hidden_size=8)
    manifest = write_export(policy, tmp_path, int8=False)
    assert manifest["parity"]["fp32"]["max_rel_dist_params"] < 1e-4
    assert manifest["obs_layout"]["size"] == policy.packed_space.shape[0]
    runtime = OnnxPolicy(tmp_path)
    t_state, o_state = policy.initial_state(2), runtime.initial_state(2)
    for t in range(6):
        obs = _sample_batch(space, 2, seed=200 + t)
        starts = np.array([t == 0, t in (0, 3)])
        a_t, t_state = policy.act(obs, t_state, starts)
        a_o, o_state = runtime.act(obs, o_state, starts)
        np.testing.assert_array_equal(a_t, a_o)
        np.testing.assert_allclose(o_state, t_state[:, : runtime.state_size].numpy(), atol=1e-5)
    space.seed(9)
    single = space.sample()
    runtime.reset(1)
    assert runtime.step(single, episode_start=True) == policy.act(single, policy.initial_state(1), True)[0]
