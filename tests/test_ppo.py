"""RecurrentPPO, the policy, the sequence buffer and the saved artifact."""

import json
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import LinearSchedule

import envs  # noqa: F401  (registers the masked ids, e.g. CartPole-P-v1, with gymnasium)
from agents import CORES, RecurrentPPO, load_policy
from agents.buffer import RecurrentRolloutBuffer
from agents.policy import RecurrentActorCriticPolicy

torch.set_num_threads(1)
ALL_CORES = sorted(CORES)


def small_model(core, gym_id="CartPole-v1", n_envs=2, **kw):
    env = make_vec_env(gym_id, n_envs=n_envs, seed=0)
    kw = {"n_steps": 16, "batch_size": 32, "n_epochs": 2, "hidden_size": 16, "seed": 0, **kw}
    return RecurrentPPO("MlpPolicy", env, core=core, **kw)


# ---------------------------------------------------------------- the policy contract
@pytest.mark.parametrize("name", ALL_CORES)
@pytest.mark.parametrize("shared", [False, True])
def test_policy_sequence_evaluation_equals_rollout_steps(name, shared):
    """evaluate_actions over a sequence with resets == the values/log-probs the rollout computed step by step."""
    torch.manual_seed(0)
    obs_space = spaces.Box(-1, 1, (3,), np.float32)
    policy = RecurrentActorCriticPolicy(obs_space, spaces.Discrete(3), core=name, hidden_size=8, num_layers=2,
                                        shared_core=shared)
    T, B = 12, 4
    obs = torch.randn(T, B, 3)
    starts = (torch.rand(T, B) < 0.25).float()
    state = policy.initial_state(B)
    state0 = state
    acts, vals, logps = [], [], []
    with torch.no_grad():
        for t in range(T):
            a, v, lp, state = policy(obs[t], state, starts[t])
            acts.append(a), vals.append(v), logps.append(lp)
        values, log_prob, entropy = policy.evaluate_actions(obs, torch.stack(acts).unsqueeze(-1), starts, state0)
    torch.testing.assert_close(values, torch.stack(vals).reshape(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_prob, torch.stack(logps).reshape(-1), atol=1e-5, rtol=1e-5)
    assert entropy.shape == (T * B,)


@pytest.mark.parametrize("action_space", [spaces.Box(-2, 2, (2,), np.float32), spaces.MultiDiscrete([3, 4]),
                                          spaces.MultiBinary(3), spaces.Discrete(5)])
def test_policy_action_spaces(action_space):
    policy = RecurrentActorCriticPolicy(spaces.Box(-1, 1, (4,), np.float32), action_space, core="gru", hidden_size=8)
    state = policy.initial_state(3)
    a, state = policy.act(np.zeros((3, 4), np.float32), state, True, deterministic=False)
    assert a.shape == (3, *action_space.shape)
    a1, _ = policy.act(np.zeros(4, np.float32), policy.initial_state(1), True)
    assert a1.shape == action_space.shape
    assert all(action_space.contains(np.asarray(x, dtype=action_space.dtype)) for x in a)


def test_act_types_and_batching():
    policy = RecurrentActorCriticPolicy(spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2), core="lstm",
                                        hidden_size=8)
    a, s = policy.act(torch.zeros(4), policy.initial_state(1), episode_start=True)
    assert isinstance(a, torch.Tensor) and a.shape == () and s.shape == (1, policy.state_size)
    a, s = policy.act(np.zeros((5, 4), np.float32), policy.initial_state(5), episode_start=np.ones(5, bool))
    assert isinstance(a, np.ndarray) and a.shape == (5,)
    with pytest.raises(ValueError, match=r"observation has shape \(5,\): expected \(4,\)"):
        policy.act(np.zeros(5, np.float32), policy.initial_state(1))
    with pytest.raises(ValueError, match=r"state has shape \(2, \d+\): expected \[1, \d+\]"):
        policy.act(np.zeros(4, np.float32), policy.initial_state(2))
    with pytest.raises(ValueError, match="episode_start has 2 entries"):
        policy.act(np.zeros((3, 4), np.float32), policy.initial_state(3), episode_start=[True, False])


MINIGRID_OBS = spaces.Box(0, 10, (7 * 7 * 3 + 1,), np.uint8)  # envs.MiniGridObsWrapper's symbolic view


@pytest.mark.parametrize("kw", [
    dict(core="gru"), dict(core="lstm"), dict(core="gru", shared_core=True), dict(core="lstm", num_layers=2),
    dict(core="gru", num_layers=2, activation="relu", normalize_obs=True), dict(core="gru", encoder_sizes=[]),
    dict(core="lstm", action_space=spaces.Box(-0.5, 0.5, (2,), np.float32)),
    dict(core="gru", obs_space=MINIGRID_OBS, encoder="minigrid"), dict(core="lstm", obs_space=MINIGRID_OBS)])
@pytest.mark.parametrize("batch", [1, 3, 7])  # 7: more rows than the dot-product path takes
def test_fused_act_equals_the_eager_act(kw, batch):
    """The one-call C++ act (agents/kernels policy_act) gives the eager path's actions and states, resets and the
    critic's untouched memory included, over several steps."""
    kw = dict(kw)
    obs_space = kw.pop("obs_space", spaces.Box(-3, 3, (5,), np.float32))
    action_space = kw.pop("action_space", spaces.Discrete(4))
    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(obs_space, action_space, hidden_size=16, **kw)
    if kw.get("normalize_obs"):
        policy.update_obs_normalizer(np.random.default_rng(1).normal(2.0, 3.0, (64, 5)).astype(np.float32))
    assert policy._fused_act_plan() is not None
    rng = np.random.default_rng(0)
    state_fused = state_eager = torch.randn(batch, policy.state_size)
    for t in range(4):
        obs = np.stack([obs_space.sample() for _ in range(batch)])
        starts = rng.random(batch) < 0.4
        a_fused, state_fused = policy.act(obs, state_fused, starts)
        obs_t = torch.as_tensor(obs)
        a_eager, state_eager = policy._act_eager(obs_t, state_eager, policy._starts(starts, batch), True)
        if isinstance(action_space, spaces.Box):
            a_eager = torch.clamp(a_eager, -0.5, 0.5)
            np.testing.assert_allclose(a_fused, a_eager.numpy(), atol=1e-5)
        else:
            np.testing.assert_array_equal(a_fused, a_eager.numpy())
        torch.testing.assert_close(state_fused, state_eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("view,layer_norm", [(7, False), (3, True)])
def test_minigrid_encoder_training_path_has_the_embeddings_values_and_gradients(view, layer_norm):
    """With gradients on, the MiniGrid encoder runs its embedding and first layer as one one-hot product; values
    and every parameter's gradient are embedding-then-linear's (the path it takes under no_grad and in export)."""
    from agents.encoders import MiniGridEncoder
    space = spaces.Box(0, 10, (view * view * 3 + 1,), np.uint8)
    torch.manual_seed(0)
    enc = MiniGridEncoder(space, [16, 8], nn.Tanh, layer_norm=layer_norm)
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(12)])).view(3, 4, -1)
    out = enc(obs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    enc.zero_grad()
    codes = torch.minimum(obs.long(), enc.max_code) + enc.rows
    ref = enc.net(nn.functional.embedding(codes, enc.embed.weight).flatten(-2))
    (ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in enc.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=lambda m: f"{n}: {m}")
    assert grads["embed.weight"].abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(enc(obs), ref)


def test_fused_act_stands_aside_where_it_does_not_apply():
    obs_space, action_space = spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(3)
    for kw in (dict(core="mingru"), dict(core="gru", encoder_norm=True), dict(core="gru", activation="elu"),
               dict(core="gru", core_kwargs={"kernel": "stock"})):
        policy = RecurrentActorCriticPolicy(obs_space, action_space, hidden_size=8, **kw)
        assert policy._fused_act_plan() is None, kw
        a, s = policy.act(np.zeros(4, np.float32), policy.initial_state(1), True)
        assert a.shape == () and s.shape == (1, policy.state_size)
    policy = RecurrentActorCriticPolicy(obs_space, action_space, hidden_size=8, core="gru")
    assert policy._fused_act_plan() is not None
    policy.double()  # float64 weights: no plan (act takes the eager path)
    assert policy._fused_act_plan() is None
    policy.float()
    assert policy._fused_act_plan() is not None


def test_unsupported_spaces_and_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"space Text\(.* is not supported: expected Box, Discrete"):
        RecurrentActorCriticPolicy(spaces.Text(3), spaces.Discrete(2))
    with pytest.raises(ValueError, match="activation 'sigmoidish' is unknown"):
        RecurrentActorCriticPolicy(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), activation="sigmoidish")
    with pytest.raises(ValueError, match="unknown core 'transformer'"):
        small_model("transformer")
    with pytest.raises(ValueError, match="seq_len=0: expected a positive integer"):
        small_model("gru", seq_len=0)
    with pytest.raises(ValueError, match="gamma=1.5: expected a number in"):
        small_model("gru", gamma=1.5)


# ------------------------------------------------------------------------ buffer
def test_buffer_cuts_sequences_at_episode_starts_and_seq_len():
    rng = np.random.default_rng(0)
    T, E, S, seq_len = 20, 3, 2, 6
    obs_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    buf = RecurrentRolloutBuffer(T, obs_space, spaces.Discrete(2), S, device="cpu", n_envs=E, seq_len=seq_len)
    starts = rng.random((T, E)) < 0.15
    for t in range(T):
        buf.add_state(torch.full((E, S), float(t)) + torch.arange(E).view(E, 1) * 100)
        obs = np.array([[t * 10 + e] for e in range(E)], np.float32)
        buf.add(obs, np.zeros((E, 1)), np.zeros(E), starts[t], torch.zeros(E), torch.zeros(E))
    buf.compute_returns_and_advantage(torch.zeros(E), np.zeros(E))
    seen = []
    for batch in buf.get_sequences(batch_size=16):
        L, N = batch.mask.shape
        assert L <= seq_len
        for n in range(N):
            valid = batch.mask[:, n].bool()
            codes = batch.observations[valid, n, 0].numpy().astype(int)
            t0, e = codes[0] // 10, codes[0] % 10
            np.testing.assert_array_equal(codes, (t0 + np.arange(len(codes))) * 10 + e)  # consecutive steps, one env
            assert batch.states[n, 0].item() == t0 + 100 * e  # starts from the state stored before its first step
            assert batch.episode_starts[0, n].item() == float(starts[t0, e])
            assert batch.episode_starts[1:, n].sum() == 0
            assert not starts[t0 + 1: t0 + len(codes), e].any()  # no episode starts inside a sequence
            seen.extend(codes.tolist())
    assert sorted(seen) == sorted(t * 10 + e for t in range(T) for e in range(E))  # every step exactly once


# ----------------------------------------------------------------------- predict
@pytest.mark.parametrize("name", ALL_CORES)
def test_predict_follows_sb3_semantics(name):
    model = small_model(name)
    obs = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    a, state = model.predict(obs, deterministic=True)
    assert a.shape == (2,) and isinstance(state, np.ndarray) and state.shape == (2, model.policy.state_size)
    # state=None means "start fresh": same as passing any state with episode_start all True
    junk = np.random.default_rng(1).normal(size=state.shape).astype(np.float32)
    a2, state2 = model.predict(obs, state=junk, episode_start=np.ones(2, bool), deterministic=True)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_allclose(state, state2, atol=1e-6)
    # episode_start=None means no reset: the state carries over
    _, state3 = model.predict(obs, state=state, deterministic=True)
    if name != "mlp":
        assert not np.allclose(state3, state)
    # an unbatched observation gives an unbatched action
    a1, s1 = model.predict(obs[0], deterministic=True)
    assert np.ndim(a1) == 0 and s1.shape == (1, model.policy.state_size)
    with pytest.raises(ValueError, match=r"observation has shape \(3,\)"):
        model.predict(np.zeros(3, np.float32))


def _episode_returns(policy, gym_id, seed, n_episodes, carry=True):
    """Returns of ``n_episodes`` deterministic episodes played by hand with ``policy.act``: one env reset with ``seed``
    and then unseeded, as a seeded single-env VecEnv does; the state is carried within an episode and zeroed at its
    start (``carry=False``: zeroed at every step, i.e. no memory)."""
    env = gym.make(gym_id)
    obs, _ = env.reset(seed=seed)
    out = []
    while len(out) < n_episodes:
        state, start, total, done = policy.initial_state(1), True, 0.0, False
        while not done:
            action, state = policy.act(obs, state, episode_start=start or not carry, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            start, total, done = False, total + float(reward), terminated or truncated
        out.append(total)
        obs, _ = env.reset()
    return out


def test_evaluate_policy_works_on_recurrent_ppo():
    """SB3's evaluate_policy passes the state and episode starts through predict: its episode returns are exactly
    those of the same episodes played by hand with the state carried, and differ from a memoryless replay."""
    model = small_model("gru")
    with torch.no_grad():  # larger logits and a stronger recurrence, so the state visibly changes the actions
        model.policy.action_net.weight.mul_(50.0)
        model.policy.core_pi.rnn.weight_hh_l0.mul_(3.0)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=123)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=5, deterministic=True, return_episode_rewards=True)
    assert returns == _episode_returns(model.policy, "CartPole-v1", 123, 5)
    assert returns != _episode_returns(model.policy, "CartPole-v1", 123, 5, carry=False)  # the state matters here


# --------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ALL_CORES)
def test_learn_logs_and_updates(name, tmp_path):
    model = small_model(name, tensorboard_log=str(tmp_path))
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(64)
    assert model.num_timesteps >= 64
    after = list(model.policy.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    logged = model.logger.name_to_value
    for key in ("train/grad_norm", "perf/rollout_s", "perf/update_s", "perf/steps_per_s"):
        assert key in logged and np.isfinite(logged[key]), key


@pytest.mark.parametrize("name", ALL_CORES)
@pytest.mark.parametrize("shared, seq_len, batch_size", [(False, None, 64), (True, 5, 64), (False, 8, 16),
                                                         (True, None, 16)])
def test_update_replays_the_rollout_before_its_first_step(name, shared, seq_len, batch_size):
    """Before any gradient step every minibatch's log-probs and values equal what the rollout computed (ratio 1).

    Runs through the real path: rollouts on an env whose episodes end inside them, the stored states, the buffer's
    sequences (padded or chunked, cut every seq_len) and evaluate_actions; the second rollout comes after an update."""
    model = small_model(name, gym_id="CartPole-v1", n_envs=2, n_steps=64, batch_size=batch_size, seq_len=seq_len,
                        shared_core=shared)
    checked = []
    train = model.train

    def checking_train():
        buf = model.rollout_buffer
        assert buf.episode_starts[1:].any()  # episodes end inside the rollout
        n = 0
        with torch.no_grad():
            for batch in buf.get_sequences(batch_size):
                values, log_prob, _ = model.policy.evaluate_actions(batch.observations, batch.actions,
                                                                    batch.episode_starts, batch.states)
                valid = batch.mask.reshape(-1).bool()
                torch.testing.assert_close(log_prob[valid], batch.old_log_prob.reshape(-1)[valid],
                                           atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(values[valid], batch.old_values.reshape(-1)[valid], atol=1e-5, rtol=1e-5)
                n += int(valid.sum())
        checked.append(n)
        # ... and train's own pass agrees: with the optimizer's step disabled, every minibatch of every epoch sees
        # the rollout's policy, so the logged KL and clip fraction are zero
        step, model.policy.optimizer.step = model.policy.optimizer.step, lambda *a, **k: None
        train()
        model.policy.optimizer.step = step
        logged = model.logger.name_to_value
        assert logged["train/approx_kl"] < 1e-9 and logged["train/clip_fraction"] == 0.0
        train()

    model.train = checking_train
    model.learn(256)
    assert checked == [128, 128]
    cores = [c for c in (model.policy.core_pi, model.policy.core_vf) if c is not None]
    assert model.rollout_buffer.chunked == (seq_len is not None and all(c.resets_in_kernel for c in cores))


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("seq_len", [None, 8])
def test_carry_state_keeps_memory_across_episodes_in_rollout_and_update(name, seq_len):
    """carry_state=True: no reset at episode starts, in the rollout and in the update alike (ratio 1 before any
    step, although episodes start inside the rollout); the same rollout replayed with resets would differ."""
    model = small_model(name, n_envs=2, n_steps=64, batch_size=64, seq_len=seq_len, carry_state=True)
    seen = []
    train = model.train

    def checking_train():
        buf = model.rollout_buffer
        assert buf.episode_starts[1:].any()
        diffs = []
        with torch.no_grad():
            for batch in buf.get_sequences(64):
                valid = batch.mask.reshape(-1).bool()
                carried = model.policy.evaluate_actions(batch.observations, batch.actions,
                                                        torch.zeros_like(batch.episode_starts), batch.states)[1]
                torch.testing.assert_close(carried[valid], batch.old_log_prob.reshape(-1)[valid], atol=1e-5,
                                           rtol=1e-5)
                reset = model.policy.evaluate_actions(batch.observations, batch.actions, batch.episode_starts,
                                                      batch.states)[1]
                diffs.append(float((reset - carried)[valid].abs().max()))
        seen.append(max(diffs))
        step, model.policy.optimizer.step = model.policy.optimizer.step, lambda *a, **k: None
        train()
        model.policy.optimizer.step = step
        assert model.logger.name_to_value["train/approx_kl"] < 1e-9

    model.train = checking_train
    model.learn(128)
    assert seen and max(seen) > 1e-4  # resetting would have changed the log-probs: the state was carried


def test_carry_state_is_saved_and_checked(tmp_path):
    model = small_model("gru", carry_state=True)
    model.save(tmp_path / "m.zip")
    assert RecurrentPPO.load(tmp_path / "m.zip").carry_state is True
    with pytest.raises(ValueError, match="carry_state='yes'"):
        small_model("gru", carry_state="yes")


def test_rnd_error_is_larger_on_new_observations_than_on_fitted_ones():
    from agents.exploration import RandomNetworkDistillation

    torch.manual_seed(0)
    rnd = RandomNetworkDistillation(6, learning_rate=1e-3)
    seen = torch.randn(4, 64, 6)  # [T, E, obs]
    new = torch.randn(4, 64, 6) + 3.0
    rnd.bonus(torch.cat([seen, new]))  # the input statistics cover both sets
    before = rnd.error(new).mean().item()
    for _ in range(100):
        rnd.fit(seen, batch_size=64)
    assert rnd.error(seen).mean().item() < 0.2 * rnd.error(new).mean().item()
    assert rnd.error(new).mean().item() > 0.2 * before  # fitting one set does not erase the novelty of the other
    z = rnd.bonus(torch.cat([seen, new]))
    assert z.shape == (8, 64) and z[4:].mean() > z[:4].mean() + 1.0


def test_rnd_bonus_is_added_to_training_rewards_only_and_travels(tmp_path):
    """rnd_coef: the buffer's rewards are the env's plus rnd_coef x the standardised novelty of each next
    observation; the logged episode returns stay the env's; the networks are saved and loaded with the model."""
    coef = 0.5
    model = small_model("gru", rnd_coef=coef, n_steps=32)
    env_rewards = []
    step = model.env.step_wait

    def recording_step_wait():
        out = step()
        env_rewards.append(out[1].copy())
        return out

    model.env.step_wait = recording_step_wait
    compute = model.rollout_buffer.compute_returns_and_advantage
    added = []

    def checking_compute(last_values, dones):
        added.append(model.rollout_buffer.rewards.copy())
        compute(last_values=last_values, dones=dones)

    model.rollout_buffer.compute_returns_and_advantage = checking_compute
    model.learn(64)
    extra = added[0] - np.stack(env_rewards[:32])  # CartPole never truncates here: no bootstrap in the rewards
    assert np.abs(extra).max() > 0.1 * coef
    np.testing.assert_allclose(extra.mean(), 0.0, atol=1e-4)  # the first rollout is standardised by itself
    np.testing.assert_allclose(extra.std(), coef, rtol=0.05)
    assert all(ep["r"] == int(ep["r"]) for ep in model.ep_info_buffer)  # CartPole's own returns (whole numbers)
    assert np.isfinite(model.logger.name_to_value["train/rnd_loss"])

    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip")
    assert loaded.rnd_coef == coef
    for a, b in zip(model.rnd.state_dict().values(), loaded.rnd.state_dict().values()):
        torch.testing.assert_close(a, b)
    small_model("gru").save(tmp_path / "plain.zip")
    assert "rnd.pth" not in zipfile.ZipFile(tmp_path / "plain.zip").namelist()
    with pytest.raises(ValueError, match="rnd_coef=-1"):
        small_model("gru", rnd_coef=-1)


def test_ent_floor_keeps_every_state_stochastic_and_is_logged():
    """A policy made nearly deterministic (logits +-4: entropy ~0.003 nats) is lifted towards the floor by a few
    updates with ent_floor; the same updates without it leave it far below."""
    entropies = {}
    for floor in (None, 0.5):
        model = small_model("gru", n_steps=32, n_epochs=4, learning_rate=3e-3, ent_floor=floor, ent_floor_coef=10.0)
        with torch.no_grad():
            model.policy.action_net.weight.zero_()
            model.policy.action_net.bias.copy_(torch.tensor([4.0, -4.0]))
        model.learn(256)
        batch = next(model.rollout_buffer.get_sequences(10**6))
        with torch.no_grad():
            _, _, entropy = model.policy.evaluate_actions(batch.observations, batch.actions, batch.episode_starts,
                                                          batch.states)
        entropies[floor] = entropy[batch.mask.reshape(-1).bool()].mean().item()
        logged = model.logger.name_to_value
        if floor is None:
            assert "train/ent_floor_loss" not in logged
        else:
            assert 0.0 <= logged["train/below_ent_floor"] <= 1.0 and logged["train/ent_floor_loss"] >= 0.0
    assert entropies[0.5] > 0.3 and entropies[None] < 0.1, entropies
    with pytest.raises(ValueError, match="ent_floor_coef=-1"):
        small_model("gru", ent_floor=0.5, ent_floor_coef=-1)


@pytest.mark.parametrize("core", ["gru", "ffm"])
def test_a_fused_adam_keeps_the_rollout_and_update_in_step_and_stops_cleanly(core):
    """Adam(fused=True) changes the weights without bumping their version counters: the policy drops what the scan
    cores cached from them after each step, so the next rollout sees the new weights (ratio 1 before its update);
    and an overflowing step, which the fused kernel does not raise on, still stops in one line."""
    fused = {"optimizer_kwargs": {"eps": 1e-5, "fused": True}}
    model = small_model(core, n_steps=32, batch_size=64, learning_rate=1e-3, policy_kwargs=fused)
    kls = []
    train = model.train

    def checking_train():
        step, model.policy.optimizer.step = model.policy.optimizer.step, lambda *a, **k: None
        train()
        model.policy.optimizer.step = step
        kls.append(model.logger.name_to_value["train/approx_kl"])
        train()

    model.train = checking_train
    model.learn(192)
    assert len(kls) == 3 and max(kls) < 1e-9, kls
    model = small_model(core, learning_rate=1e38, policy_kwargs=fused)
    with pytest.raises(FloatingPointError, match="optimizer step failed .*non-finite"):
        model.learn(64)


def test_target_kl_stops_the_epochs_early():
    # batch 16 of a 32-step rollout: the first minibatch sees the unchanged policy (KL 0); after its step the
    # second minibatch's KL exceeds a tiny target, so the update ends in its first epoch
    runs = {}
    for target in (None, 1e-9):
        model = small_model("gru", n_epochs=5, batch_size=16, target_kl=target)
        model.learn(32)
        runs[target] = model._n_updates
    assert runs == {None: 5, 1e-9: 1}


def test_ent_coef_schedule_sets_each_updates_entropy_bonus():
    seen = []

    def schedule(progress_remaining):
        seen.append(progress_remaining)
        return 0.1 + 0.3 * progress_remaining

    logged = []

    class Recording(Logger):
        def record(self, key, value, exclude=None):
            if key == "train/ent_coef":
                logged.append(value)
            super().record(key, value, exclude)

    model = small_model("gru", ent_coef=schedule)
    model.set_logger(Recording(None, []))
    model.learn(96)  # three rollouts of 2 envs x 16 steps: progress 2/3, 1/3 and 0 at the three updates
    assert seen == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert logged == pytest.approx([0.3, 0.2, 0.1])

    def trained(ent_coef):
        m = small_model("gru", ent_coef=ent_coef)
        m.learn(64)
        return torch.cat([p.detach().flatten() for p in m.policy.parameters()])

    constant = trained(0.3)  # a schedule's value is the loss's coefficient: a constant one trains the same weights
    torch.testing.assert_close(trained(lambda _: 0.3), constant, atol=0, rtol=0)
    assert not torch.equal(trained(lambda _: 0.0), constant)
    for bad in (-0.1, "lin_0.05", None):  # the config's "lin_<x>" reaches RecurrentPPO through make_schedule
        with pytest.raises(ValueError, match=rf"ent_coef={bad!r}: expected a number >= 0 or a schedule"):
            small_model("gru", ent_coef=bad)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Acrobot-v1"])
def test_learn_box_and_other_discrete(env_id):
    """A Box action space (Gaussian head) and a 3-action Discrete one train end to end: the steps are counted, the
    rollout stores actions of the space's shape, every update runs, the core and the action head move, and the
    trained model acts inside the space."""
    model = small_model("lstm", gym_id=env_id, seq_len=5)
    space = model.action_space
    core_before = [p.detach().clone() for p in model.policy.core_pi.parameters()]
    head_before = [p.detach().clone() for p in model.policy.action_net.parameters()]
    std_before = model.policy.log_std.detach().clone() if isinstance(space, spaces.Box) else None
    model.learn(64)  # two rollouts of 2 envs x 16 steps, 2 epochs each
    assert model.num_timesteps == 64 and model._n_updates == 4
    assert np.isfinite(model.logger.name_to_value["train/grad_norm"])
    actions = model.rollout_buffer.actions  # the second rollout, as the policy sampled it (before clipping)
    if isinstance(space, spaces.Box):
        assert actions.shape == (16, 2, *space.shape) and np.isfinite(actions).all()
        assert not torch.equal(std_before, model.policy.log_std)  # the Gaussian's std is learned
    else:
        assert actions.shape == (16, 2, 1)
        assert set(np.unique(actions).tolist()) <= set(range(space.n)) and len(np.unique(actions)) > 1
    assert any(not torch.equal(b, a) for b, a in zip(core_before, model.policy.core_pi.parameters()))
    assert any(not torch.equal(b, a) for b, a in zip(head_before, model.policy.action_net.parameters()))
    obs = np.stack([model.observation_space.sample() for _ in range(64)])
    acted, _ = model.predict(obs, deterministic=False)
    assert acted.shape == (64, *space.shape) and all(space.contains(np.asarray(a, dtype=space.dtype)) for a in acted)


def test_same_seed_same_result():
    results = []
    for _ in range(2):
        model = small_model("gru")
        model.learn(64)
        results.append(torch.cat([p.detach().flatten() for p in model.policy.parameters()]))
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)


class _Truncating(gym.Env):
    """Reward 1 per step; truncates after 5 steps and never terminates, except action-independent termination at 7
    steps for episodes that are not truncated (not reached). Observation is the step counter."""

    observation_space = spaces.Box(0, 100, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, False, self.t >= 5, {}


def test_truncation_bootstraps_from_terminal_value():
    """A truncated step's reward becomes r + gamma * V(final observation), V seen through the critic's memory of that
    episode (its steps 0..4, then the final observation): computed here over the whole episode as one sequence, and
    checked to differ from the value through a zeroed state or the state before the last step."""
    gamma = 0.9
    env = make_vec_env(_Truncating, n_envs=1, seed=0)
    model = RecurrentPPO("MlpPolicy", env, core="gru", hidden_size=8, n_steps=10, batch_size=10, seed=0, gamma=gamma)
    with torch.no_grad():  # a critic whose value depends visibly on its memory
        model.policy.value_net.weight.mul_(50.0)
    model.train = lambda: None  # keep the rollout's weights, so the values below are the ones it used
    model.learn(10)
    rewards = model.rollout_buffer.rewards[:, 0]

    def value_after(observations):
        """V of the last of ``observations``, the critic having seen the others from a fresh episode start."""
        obs = torch.tensor(observations, dtype=torch.float32).view(-1, 1, 1)
        starts = torch.zeros(len(observations), 1)
        starts[0] = 1.0
        with torch.no_grad():
            values, _, _ = model.policy.evaluate_actions(obs, torch.zeros(len(observations), 1, 1), starts,
                                                         model.policy.initial_state(1))
        return values[-1].item()

    own = value_after([0, 1, 2, 3, 4, 5])  # the episode's observations 0..4, then its final observation 5
    for wrong in (value_after([5]), value_after([0, 1, 2, 3, 5])):  # zeroed state; state before the last step
        assert abs(own - wrong) > 1e-3, (own, wrong)  # so a bootstrap through either would fail below
    for t in (4, 9):  # both episodes are truncated after 5 steps, the second in the same way as the first
        assert rewards[t] == pytest.approx(1.0 + gamma * own, abs=1e-5), (t, rewards[t], own)
    assert all(rewards[t] == 1.0 for t in range(10) if t not in (4, 9))

def test_nan_loss_is_a_clear_error():
    model = small_model("gru")
    with torch.no_grad():
        model.policy.value_net.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        model.learn(64)


# ----------------------------------------------------------------- save and load
@pytest.mark.parametrize("name", ALL_CORES)
def test_save_load_act_round_trip(name, tmp_path):
    model = small_model(name, gym_id="CartPole-P-v1", ent_coef=LinearSchedule(0.05, 0.0, 1.0))
    model.learn(32)
    path = tmp_path / "run" / "model.zip"
    model.save(path)
    obs = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    starts = np.zeros(20, bool)
    starts[[0, 9]] = True

    def rollout(act, state):
        out = []
        for o, s in zip(obs, starts):
            a, state = act(o, state, s)
            out.append(int(a))
        return out

    policy = load_policy(path)
    assert policy.env_id == "CartPole-P-v1" and not policy.training  # read from the training env's spec
    reference = rollout(lambda o, st, s: model.policy.act(o, st, s), model.policy.initial_state(1))
    assert rollout(lambda o, st, s: policy.act(o, st, s), policy.initial_state(1)) == reference
    assert load_policy(tmp_path / "run").env_id == "CartPole-P-v1"  # a run directory works too
    loaded = RecurrentPPO.load(path)
    assert loaded.ent_coef(0.5) == pytest.approx(0.025)  # a schedule travels with the model (checkpoints, --resume)
    assert rollout(lambda o, st, s: loaded.predict(o, st, np.array([s]), deterministic=True),
                   None) == reference
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters()):
        torch.testing.assert_close(p, q)
    assert not list(path.parent.glob("*.tmp.zip"))  # the atomic save leaves no temp file


def test_env_id_is_read_from_the_env_or_taken_as_given(tmp_path):
    """Without env_id the id comes from the training env's spec (None for an env without one); a given env_id is
    recorded as given, also where the env has no spec to read."""
    cases = [(make_vec_env("Acrobot-v1", n_envs=1), None, "Acrobot-v1"),
             (make_vec_env(_Truncating, n_envs=1), None, None),
             (make_vec_env(_Truncating, n_envs=1), "my-counter-task", "my-counter-task")]
    for i, (env, given, expected) in enumerate(cases):
        model = RecurrentPPO("MlpPolicy", env, core="gru", hidden_size=8, n_steps=8, batch_size=8, env_id=given)
        assert model.policy.env_id == expected
        model.save(tmp_path / f"m{i}.zip")
        assert load_policy(tmp_path / f"m{i}.zip").env_id == expected


def test_load_policy_needs_no_pickle(tmp_path, monkeypatch):
    model = small_model("lstm")
    model.save(tmp_path / "m.zip")
    import pickle

    def refuse(*a, **k):
        raise AssertionError("load_policy must not unpickle objects")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    assert isinstance(load_policy(tmp_path / "m.zip"), torch.nn.Module)


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "missing.zip")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="is not a zip archive"):
        load_policy(junk)
    with pytest.raises(ValueError, match="is not a zip archive"):
        RecurrentPPO.load(junk)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("data", "{}")
    with pytest.raises(ValueError, match="has no recurrent_policy.json"):
        load_policy(foreign)
    # a description that does not fit the weights
    model = small_model("gru")
    good = tmp_path / "good.zip"
    model.save(good)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "recurrent_policy.json":
                cfg = json.loads(data)
                cfg["hidden_size"] = 32
                data = json.dumps(cfg)
            zout.writestr(item, data)
    with pytest.raises(ValueError, match="weights do not fit the described policy"):
        load_policy(bad)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError):
        load_policy(truncated)


def test_obs_normalizer_lives_in_the_policy_and_travels(tmp_path):
    model = small_model("gru", policy_kwargs=dict(normalize_obs=True))
    model.learn(32)  # one rollout of 16 steps x 2 envs
    norm = model.policy.encoder.norm
    seen = model.rollout_buffer.observations.reshape(-1, 4)
    assert norm.count.item() == pytest.approx(32 + 1e-4)
    assert np.isfinite(norm.mean.numpy()).all() and np.abs(norm.mean.numpy()).sum() > 0
    # one rollout so far -> its statistics are exactly the rollout's (up to the tiny prior count)
    np.testing.assert_allclose(norm.mean.numpy(), seen.mean(0), atol=1e-4)
    np.testing.assert_allclose(norm.var.numpy(), seen.var(0), rtol=1e-3, atol=1e-4)
    model.save(tmp_path / "m.zip")
    policy = load_policy(tmp_path / "m.zip")
    torch.testing.assert_close(policy.encoder.norm.mean, norm.mean)
    obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32) * 3
    a_ref, _ = model.policy.act(obs, model.policy.initial_state(6), True)
    a, _ = policy.act(obs, policy.initial_state(6), True)
    np.testing.assert_array_equal(a, a_ref)


def test_encoder_norm_keeps_tanh_units_off_the_plateau_and_travels(tmp_path):
    """encoder_norm=true: a LayerNorm between each encoder Linear and its tanh. With first-layer weights blown up 50x
    (as training did to MiniGrid encoders) plain tanh units sit at +-1, normalised ones do not; the module call and
    the latency path (run_mlp) agree; the option is saved with the policy."""
    from agents.encoders import make_encoder, run_mlp
    import envs

    minigrid = envs.make_env("MiniGrid-MemoryS7-v0", view_size=3)
    flat_space = spaces.Box(-1, 1, (6,), np.float32)
    rng = np.random.default_rng(0)
    cases = [("flat", flat_space, torch.as_tensor(rng.normal(size=(64, 6)).astype(np.float32))),
             ("minigrid", minigrid.observation_space,
              torch.as_tensor(np.stack([minigrid.observation_space.sample() for _ in range(64)])))]
    for name, space, obs in cases:
        saturated = {}
        for layer_norm in (False, True):
            torch.manual_seed(0)
            deep = make_encoder(name, space, [32, 16], torch.nn.Tanh, layer_norm=layer_norm)
            kinds = [type(m).__name__ for m in deep.net]
            assert kinds == (["Linear", "LayerNorm", "Tanh"] * 2 if layer_norm else ["Linear", "Tanh"] * 2), kinds
            enc = make_encoder(name, space, [32], torch.nn.Tanh, layer_norm=layer_norm)
            with torch.no_grad():
                enc.net[0].weight.mul_(50.0)
                out = enc(obs)
                if name == "flat":
                    torch.testing.assert_close(run_mlp(deep.net, obs), deep.net(obs))
            saturated[layer_norm] = float((out.abs() >= 0.99).float().mean())
        assert saturated[False] > 0.5 and saturated[True] < 0.05, (name, saturated)

    model = small_model("gru", policy_kwargs=dict(encoder_norm=True))
    model.learn(32)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.policy.encoder.modules())
    model.save(tmp_path / "m.zip")
    policy = load_policy(tmp_path / "m.zip")
    assert policy.encoder_norm and policy.config()["encoder_norm"] is True
    obs = rng.normal(size=(6, 4)).astype(np.float32)
    a_ref, s_ref = model.policy.act(obs, model.policy.initial_state(6), True)
    a, s = policy.act(obs, policy.initial_state(6), True)
    np.testing.assert_array_equal(a, a_ref)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("name", ALL_CORES)
def test_chunked_and_padded_sequences_give_the_same_loss_terms(name):
    """With resets inside the kernel, fixed chunks (episode starts inside) equal padded episode-cut sequences."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    T, E = 24, 3
    obs_space = spaces.Box(-1, 1, (3,), np.float32)
    policy = RecurrentActorCriticPolicy(obs_space, spaces.Discrete(2), core=name, hidden_size=8)
    if not policy.core_pi.resets_in_kernel:
        pytest.skip("this core runs on the stock kernel here")
    bufs = [RecurrentRolloutBuffer(T, obs_space, spaces.Discrete(2), policy.state_size, device="cpu", n_envs=E,
                                   seq_len=8, chunked=c) for c in (False, True)]
    state = policy.initial_state(E)
    starts = rng.random((T, E)) < 0.2
    starts[0] = True
    with torch.no_grad():
        for t in range(T):
            obs = rng.normal(size=(E, 3)).astype(np.float32)
            a, v, lp, new_state = policy(torch.as_tensor(obs), state, torch.as_tensor(starts[t], dtype=torch.float32))
            for buf in bufs:
                buf.add_state(state)
                buf.add(obs, a.numpy().reshape(-1, 1), np.zeros(E), starts[t], v, lp)
            state = new_state
        per_step = []
        for buf in bufs:
            buf.compute_returns_and_advantage(torch.zeros(E), np.zeros(E))
            (batch,) = list(buf.get_sequences(batch_size=T * E))
            values, log_prob, _ = policy.evaluate_actions(batch.observations, batch.actions, batch.episode_starts,
                                                          batch.states)
            valid = batch.mask.reshape(-1).bool()
            key = (batch.observations.reshape(-1, 3)[valid] * 1000).round().numpy()
            order = np.lexsort(key.T)
            per_step.append((values[valid].numpy()[order], log_prob[valid].numpy()[order], valid.sum().item(),
                             batch.mask.shape))
    (v0, l0, n0, shape0), (v1, l1, n1, shape1) = per_step
    assert n0 == n1 == T * E
    assert shape1 == (8, E * 3)  # chunks: no padding
    assert shape0[1] > shape1[1]  # episode cuts: more, padded sequences
    np.testing.assert_allclose(v0, v1, atol=1e-5)
    np.testing.assert_allclose(l0, l1, atol=1e-5)


# ------------------------------------------------------------------------------- gSDE (state-dependent exploration)
@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_gsde_sequence_evaluation_equals_rollout_steps(name):
    """With gSDE the log-probs of the rollout's sampled actions are recomputed exactly over sequences with resets."""
    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-2, 2, (2,), np.float32),
                                        core=name, hidden_size=8, use_sde=True)
    T, B = 10, 4
    obs, starts = torch.randn(T, B, 3), (torch.rand(T, B) < 0.25).float()
    policy.reset_noise(B)
    state = state0 = policy.initial_state(B)
    acts, logps = [], []
    with torch.no_grad():
        for t in range(T):
            a, _, lp, state = policy(obs[t], state, starts[t])
            acts.append(a), logps.append(lp)
        _, log_prob, entropy = policy.evaluate_actions(obs, torch.stack(acts), starts, state0)
    torch.testing.assert_close(log_prob, torch.stack(logps).reshape(-1), atol=1e-5, rtol=1e-5)
    assert entropy.shape == (T * B,)


def test_gsde_noise_is_state_dependent_and_resampled():
    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-2, 2, (1,), np.float32),
                                        core="gru", hidden_size=8, use_sde=True, log_std_init=0.0)
    obs, state = torch.randn(2, 3), policy.initial_state(2)
    starts = torch.ones(2)
    policy.reset_noise(2)
    with torch.no_grad():
        mean = policy.mode_from_params(policy.action_net(policy.pi_net(policy.core_pi.step(
            policy.encoder(obs), state[:, : policy._n_pi].reshape(2, 1, 8), starts)[0])))
        a1 = policy(obs, state, starts)[0]
        a2 = policy(obs, state, starts)[0]  # same weights, same input: the same noise (no per-step sampling)
        policy.reset_noise(2)
        a3 = policy(obs, state, starts)[0]
    torch.testing.assert_close(a1, a2)
    assert not torch.allclose(a1, a3) and not torch.allclose(a1, mean)
    det, _ = policy.act(obs.numpy(), state, True, deterministic=True)
    np.testing.assert_allclose(det, mean.numpy(), atol=1e-6)


def test_gsde_needs_a_box_action_space():
    with pytest.raises(ValueError, match="use_sde=True needs a Box action space"):
        RecurrentActorCriticPolicy(spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(2), use_sde=True)


def test_gsde_learns_saves_and_loads(tmp_path):
    model = small_model("gru", gym_id="Pendulum-v1", use_sde=True, sde_sample_freq=4)
    model.learn(64)
    path = tmp_path / "model.zip"
    model.save(path)
    policy = load_policy(path)
    assert policy.use_sde and policy.log_std.shape == model.policy.log_std.shape
    obs = np.zeros((1, 3), np.float32)
    a_ref, _ = model.policy.act(obs, model.policy.initial_state(1), True, deterministic=True)
    a_new, _ = policy.act(obs, policy.initial_state(1), True, deterministic=True)
    np.testing.assert_allclose(a_new, a_ref, atol=1e-6)
    loaded = RecurrentPPO.load(path, device="cpu")
    assert loaded.use_sde and loaded.sde_sample_freq == 4
    loaded.set_env(model.get_env())
    loaded.learn(32)


@pytest.mark.parametrize("tile", [8, 28])
def test_cnn_encoder_for_images_trains_and_acts_channels_last(tile, tmp_path):
    """An image observation gets the CNN encoder, the policy takes images as the env gives them (channels last) in
    training, predict and load_policy, and a sequence forward equals the rollout's steps."""
    import envs
    from agents.encoders import CnnEncoder

    env = make_vec_env(lambda: envs.make_env("MiniGrid-Memory", view_size=3, obs_mode="rgb", tile_size=tile,
                                             action_set="move"), n_envs=2, seed=0)
    model = RecurrentPPO("MlpPolicy", env, core="gru", n_steps=16, batch_size=32, n_epochs=1, hidden_size=16,
                         seed=0, policy_kwargs={"encoder_sizes": [32]})
    assert isinstance(model.policy.encoder, CnnEncoder)
    assert model.observation_space.shape == (3 * tile, 3 * tile, 3)  # not transposed by SB3
    before = [p.detach().clone() for p in model.policy.encoder.parameters()]
    model.learn(32)
    assert any(not torch.equal(b, a) for b, a in zip(before, model.policy.encoder.parameters()))
    obs = env.reset()
    action, state = model.predict(obs, deterministic=True)
    model.save(tmp_path / "m.zip")
    policy = load_policy(tmp_path / "m.zip")
    again, _ = policy.act(obs, policy.initial_state(2), episode_start=True, deterministic=True)
    np.testing.assert_array_equal(action, again)
    seq = torch.as_tensor(np.stack([obs, obs]))  # [T=2, B=2, H, W, C]
    feats = policy.encoder(seq)
    assert feats.shape == (2, 2, 32)
    torch.testing.assert_close(feats[1], policy.encoder(torch.as_tensor(obs)))
