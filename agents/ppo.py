"""Recurrent PPO with a swappable memory core, as an SB3 algorithm.

``RecurrentPPO`` is SB3's ``PPO`` with three parts replaced: the policy (:mod:`agents.policy`, whose core is any of
``agents.CORES``), the rollout (which carries the core state through each env and stores it at every step), and the
update (which runs whole padded sequences through the core in one call per minibatch, see :mod:`agents.buffer`).
Everything else is SB3's: ``learn``, callbacks, ``VecEnv``, the logger and TensorBoard, schedules, ``save``/``load``,
``predict`` and ``evaluate_policy``.

Extra scalars beyond SB3's: ``train/grad_norm`` (before clipping, mean over the update) and ``train/grad_norm_max``,
``perf/rollout_s``, ``perf/update_s`` and ``perf/steps_per_s`` (env steps over rollout + update time).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional, Type

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import check_for_nested_spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.common.vec_env.patch_gym import _patch_env

from .buffer import RecurrentRolloutBuffer
from .exploration import RandomNetworkDistillation
from .cores import file_names_no_imports, get_core_class
from .policy import RecurrentActorCriticPolicy
from .serialization import (MODEL_DATA_NAME, POLICY_CONFIG_NAME, atomic_path, episode_data, plain_data_objects,
                            read_model_file, read_policy_config, saved_policy_kwargs)


def _positive_int(name: str, value: Any, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer" + (" or None" if allow_none else ""))
    return int(value)


class RecurrentPPO(PPO):
    """PPO whose policy carries memory through a core from ``agents.CORES``.

    :param policy: ``"MlpPolicy"`` (the recurrent actor-critic for every observation space, also named
        ``"MultiInputPolicy"``; the encoder follows ``policy_kwargs["encoder"]``)
    :param env: a ``VecEnv``, a gymnasium env, or a registered id
    :param core: memory core name (``"gru"``, ``"lstm"``, ``"mlp"``, ...)
    :param hidden_size: core units per layer
    :param num_layers: stacked core layers
    :param shared_core: share one core between actor and critic (default: a separate critic core)
    :param seq_len: truncated-BPTT length; sequences are cut at episode starts and every ``seq_len`` steps
        (``None``: only at episode starts and rollout boundaries, i.e. up to ``n_steps``)
    :param ent_coef: entropy bonus coefficient: a number >= 0, or a schedule of the progress remaining (1 -> 0), as
        ``learning_rate`` and ``clip_range`` take (e.g. ``LinearSchedule(0.05, 0, 1)``); logged as ``train/ent_coef``
    :param env_id: env id stored with the policy (default: read from the env's spec)
    :param nonfinite: what a non-finite gradient norm does: ``"stop"`` (default) raises ``FloatingPointError``;
        ``"skip"`` drops that minibatch's step, counted in ``train/skipped_steps``
    :param carry_state: keep each env's memory across episode boundaries during training (the rollout and the
        update never reset the core; GAE still stops at episode ends). ``False`` (default): the state is zeroed at
        every episode start. Inference (``predict``, ``policy.act``, evaluation) still resets where it is told to.
    :param ent_floor: a per-state entropy floor in nats (``None``: none): every state whose action distribution is
        below it adds ``ent_floor_coef * (ent_floor - entropy)`` to the loss, so no state's policy turns
        deterministic in training while the entropy bonus keeps only the *mean* up; logged as ``train/ent_floor_loss``
        and ``train/below_ent_floor`` (the share of steps below it). Evaluation still takes the most likely action.
    :param ent_floor_coef: weight of that hinge penalty
    :param rnd_coef: weight of a novelty bonus added to every training reward
        (:class:`agents.exploration.RandomNetworkDistillation`: the standardised error of a predictor of a fixed
        random network on the observation the step led to; logged as ``rollout/rnd_error`` and ``train/rnd_loss``).
        ``0`` (default): no bonus and no extra networks. Evaluation and the logged episode returns are the env's own.
    :param use_sde: gSDE exploration for Box actions (see ``RecurrentActorCriticPolicy``); ``sde_sample_freq``: new
        exploration weights every this many rollout steps (-1: once per rollout), as in SB3

    The other parameters are SB3 ``PPO``'s, with the same meaning and defaults, except ``batch_size`` (256): a
    minibatch is a set of whole sequences holding about ``batch_size`` real steps.
    """

    policy_aliases: ClassVar[Dict[str, Type[RecurrentActorCriticPolicy]]] = {
        "MlpPolicy": RecurrentActorCriticPolicy,
        "RecurrentPolicy": RecurrentActorCriticPolicy,
        "MultiInputPolicy": RecurrentActorCriticPolicy,  # SB3's name for Dict observations: the same policy here
    }
    policy: RecurrentActorCriticPolicy
    rollout_buffer: RecurrentRolloutBuffer

    def __init__(
        self,
        policy: str | Type[RecurrentActorCriticPolicy] = "MlpPolicy",
        env=None,
        core: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        shared_core: bool = False,
        seq_len: Optional[int] = None,
        carry_state: bool = False,
        ent_floor: Optional[float] = None,
        ent_floor_coef: float = 1.0,
        rnd_coef: float = 0.0,
        nonfinite: str = "stop",
        learning_rate=3e-4,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range=0.2,
        clip_range_vf=None,
        normalize_advantage: bool = True,
        ent_coef: float | Callable[[float], float] = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: Optional[float] = 0.5,
        target_kl: Optional[float] = None,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[Dict[str, Any]] = None,
        env_id: Optional[str] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        policy_kwargs = dict(policy_kwargs or {})
        if isinstance(policy, str) and policy in self.policy_aliases:
            policy = self.policy_aliases[policy]  # one policy for every space (SB3 asks for MultiInputPolicy on Dict)
        if _init_setup_model:
            get_core_class(core)  # unknown core: clear error before anything is built
            policy_kwargs.setdefault("core", core)
            policy_kwargs.setdefault("hidden_size", _positive_int("hidden_size", hidden_size))
            policy_kwargs.setdefault("num_layers", _positive_int("num_layers", num_layers))
            policy_kwargs.setdefault("shared_core", bool(shared_core))
            _positive_int("n_steps", n_steps)
            _positive_int("batch_size", batch_size)
            _positive_int("n_epochs", n_epochs)
            if max_grad_norm is not None and not (max_grad_norm > 0):
                raise ValueError(f"max_grad_norm={max_grad_norm!r}: expected a positive number or None (no clipping)")
            for name, value in (("gamma", gamma), ("gae_lambda", gae_lambda)):
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{name}={value!r}: expected a number in [0, 1]")
        self.seq_len = _positive_int("seq_len", seq_len, allow_none=True)
        if not isinstance(carry_state, (bool, np.bool_)):
            raise ValueError(f"carry_state={carry_state!r}: expected True or False")
        self.carry_state = bool(carry_state)
        if isinstance(rnd_coef, bool) or not isinstance(rnd_coef, (int, float, np.floating)) \
                or not (np.isfinite(rnd_coef) and rnd_coef >= 0):
            raise ValueError(f"rnd_coef={rnd_coef!r}: expected a number >= 0 (0: no exploration bonus)")
        self.rnd_coef = float(rnd_coef)
        for name, value in (("ent_floor", ent_floor), ("ent_floor_coef", ent_floor_coef)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))
                                      or not np.isfinite(value) or (name == "ent_floor_coef" and value < 0)):
                raise ValueError(f"{name}={value!r}: expected a finite number" + (" >= 0" if name == "ent_floor_coef"
                                                                                 else " (nats) or None"))
        self.ent_floor = None if ent_floor is None else float(ent_floor)
        self.ent_floor_coef = float(ent_floor_coef)
        self.rnd: Optional[RandomNetworkDistillation] = None
        self._rnd_next_obs: Optional[torch.Tensor] = None
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite={nonfinite!r}: expected 'stop' or 'skip'")
        self.nonfinite = nonfinite
        self._skipped_steps = 0
        super().__init__(
            policy, env, learning_rate=learning_rate, n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs,
            gamma=gamma, gae_lambda=gae_lambda, clip_range=clip_range, clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage, ent_coef=ent_coef, vf_coef=vf_coef,
            max_grad_norm=max_grad_norm if max_grad_norm is not None else float("inf"), use_sde=bool(use_sde),
            sde_sample_freq=int(sde_sample_freq),
            target_kl=target_kl, stats_window_size=stats_window_size, tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs, verbose=verbose, seed=seed, device=device, _init_setup_model=False,
        )
        if _init_setup_model and "env_id" not in self.policy_kwargs:
            self.policy_kwargs["env_id"] = env_id if env_id is not None else self._detect_env_id()
        self._last_state: Optional[torch.Tensor] = None
        self._rollout_seconds = 0.0
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _wrap_env(env, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        """SB3's wrapping (``Monitor``, ``DummyVecEnv``) without its ``VecTransposeImage``: the policy's CNN encoder
        takes images channels-last, as the env gives them, so a trained policy acts on ``make_env``'s observations
        unchanged (in ``predict``, ``load_policy`` and evaluation alike)."""
        if not isinstance(env, VecEnv):
            env = _patch_env(env)
            if monitor_wrapper and not is_wrapped(env, Monitor):
                env = Monitor(env)
            env = DummyVecEnv([lambda: env])
        check_for_nested_spaces(env.observation_space)
        return env

    def _detect_env_id(self) -> Optional[str]:
        try:
            spec = self.env.get_attr("spec", indices=[0])[0] if self.env is not None else None
            if spec is None:
                return None
            from envs import qualified_env_id

            return qualified_env_id(spec)
        except Exception:  # an env without a spec is fine: the id is only informative
            return None

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        **{"use_sde": self.use_sde, **self.policy_kwargs}).to(self.device)
        if not isinstance(self.policy, RecurrentActorCriticPolicy):
            raise ValueError(f"policy {self.policy_class!r} is not a RecurrentActorCriticPolicy")
        # Unpadded fixed-length chunks where every core resets inside its kernel and a minibatch still holds at least
        # n_envs sequences (so the recurrence keeps its batch width); otherwise padded episode-cut sequences.
        cores = [c for c in (self.policy.core_pi, self.policy.core_vf) if c is not None]
        chunk_len = self.seq_len or self.n_steps
        chunked = all(c.resets_in_kernel for c in cores) and chunk_len * self.n_envs <= self.batch_size
        self.rollout_buffer = RecurrentRolloutBuffer(
            self.n_steps, self.policy.packed_space, self.action_space, self.policy.state_size, device=self.device,
            gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs, seq_len=self.seq_len,
            chunked=chunked,
        )
        self._last_state = None
        self.rnd = RandomNetworkDistillation(int(np.prod(self.policy.packed_space.shape))).to(self.device) \
            if self.rnd_coef > 0 else None
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, (float, int)) and self.clip_range_vf <= 0:
                raise ValueError(f"clip_range_vf={self.clip_range_vf!r}: expected a positive number or None")
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        number = isinstance(self.ent_coef, (int, float, np.floating)) and not isinstance(self.ent_coef, bool)
        if not callable(self.ent_coef) and not (number and np.isfinite(self.ent_coef) and self.ent_coef >= 0):
            raise ValueError(f"ent_coef={self.ent_coef!r}: expected a number >= 0 or a schedule (progress -> value)")

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["_last_state", "rnd", "_rnd_next_obs"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        names, other = super()._get_torch_save_params()
        if self.rnd is not None:  # saved beside the policy, so a resumed run keeps its novelty estimates
            names = names + ["rnd", "rnd.optimizer"]
        return names, other

    # ---------------------------------------------------------------- rollout
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RecurrentRolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """Step every env ``n_rollout_steps`` times, carrying each env's state; store the state before each step."""
        assert self._last_obs is not None, "No previous observation was provided"
        t_start = time.perf_counter()
        self.policy.set_training_mode(False)
        if self._last_state is None or self._last_state.shape[0] != env.num_envs:
            self._last_state = self.policy.initial_state(env.num_envs)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        state = self._last_state
        dones = self._last_episode_starts
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)
        next_obs = [] if self.rnd is not None else None

        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)  # new exploration weights every sde_sample_freq steps
            obs = self.policy.pack_obs(self._last_obs)  # the network's input (packed for non-Box spaces)
            with torch.no_grad():
                obs_tensor = obs_as_tensor(obs, self.device)
                starts = torch.as_tensor(self._last_episode_starts, dtype=torch.float32, device=self.device)
                if self.carry_state:
                    starts = torch.zeros_like(starts)
                actions, values, log_probs, new_state = self.policy(obs_tensor, state, starts)
            actions = actions.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)

            # Truncated (not terminated) episodes: bootstrap from the value of the final observation, seen through
            # the critic's memory as it stands after this step (the episode's own state, before any reset).
            for idx, done in enumerate(dones):
                if done and infos[idx].get("terminal_observation") is not None \
                        and infos[idx].get("TimeLimit.truncated", False):
                    terminal_obs = self.policy.network_input(infos[idx]["terminal_observation"])
                    with torch.no_grad():
                        terminal_value = self.policy.predict_values(
                            terminal_obs, new_state[idx: idx + 1], torch.zeros(1, device=self.device))[0]
                    rewards[idx] += self.gamma * terminal_value.item()
            if next_obs is not None:  # the observation each step led to: the final one where an episode ended
                packed = np.array(self.policy.pack_obs(new_obs), dtype=np.float32)
                for idx, done in enumerate(dones):
                    if done and infos[idx].get("terminal_observation") is not None:
                        packed[idx] = self.policy.network_input(infos[idx]["terminal_observation"])[0].cpu().numpy()
                next_obs.append(packed)

            rollout_buffer.add_state(state)
            rollout_buffer.add(obs, actions, rewards, self._last_episode_starts, values, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones
            state = new_state

        self._last_state = state
        with torch.no_grad():
            starts = torch.as_tensor(dones, dtype=torch.float32, device=self.device)
            if self.carry_state:
                starts = torch.zeros_like(starts)
            values = self.policy.predict_values(obs_as_tensor(self.policy.pack_obs(new_obs), self.device), state,
                                                starts)
        if next_obs is not None:
            self._rnd_next_obs = torch.as_tensor(np.stack(next_obs), device=self.device)
            bonus = self.rnd.bonus(self._rnd_next_obs)
            rollout_buffer.rewards += self.rnd_coef * bonus
            self.logger.record("rollout/rnd_error", self.rnd.last_error)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        self._rollout_seconds = time.perf_counter() - t_start
        return True

    # ----------------------------------------------------------------- update
    def train(self) -> None:
        """PPO update over whole sequences: each minibatch runs through each core in one call, padding masked."""
        t_start = time.perf_counter()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = self.clip_range_vf(self._current_progress_remaining) if self.clip_range_vf is not None else None
        ent_coef = float(self.ent_coef(self._current_progress_remaining) if callable(self.ent_coef) else self.ent_coef)

        entropy_losses, pg_losses, value_losses, clip_fractions, grad_norms = [], [], [], [], []
        floor_losses, below_floor = [], []
        approx_kl_divs: list[float] = []
        fused_step = any(g.get("fused") for g in self.policy.optimizer.param_groups)
        continue_training = True
        loss = torch.zeros(())
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.get_sequences(self.batch_size):
                mask = batch.mask.reshape(-1)
                n_valid = mask.sum()

                def mmean(x: torch.Tensor) -> torch.Tensor:
                    return (x * mask).sum() / n_valid

                starts = torch.zeros_like(batch.episode_starts) if self.carry_state else batch.episode_starts
                values, log_prob, entropy = self.policy.evaluate_actions(
                    batch.observations, batch.actions, starts, batch.states)
                advantages = batch.advantages.reshape(-1)
                old_log_prob = batch.old_log_prob.reshape(-1)
                if self.normalize_advantage and n_valid > 1:
                    mean = mmean(advantages)
                    std = torch.sqrt(((advantages - mean) ** 2 * mask).sum() / (n_valid - 1))
                    advantages = (advantages - mean) / (std + 1e-8)

                ratio = torch.exp(log_prob - old_log_prob)
                policy_loss = -mmean(torch.min(advantages * ratio,
                                               advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)))
                old_values = batch.old_values.reshape(-1)
                values_pred = values if clip_range_vf is None else \
                    old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
                value_loss = mmean((batch.returns.reshape(-1) - values_pred) ** 2)
                entropy_loss = -mmean(entropy) if entropy is not None else mmean(log_prob)
                loss = policy_loss + ent_coef * entropy_loss + self.vf_coef * value_loss
                if self.ent_floor is not None and entropy is not None:
                    shortfall = torch.relu(self.ent_floor - entropy)
                    floor_loss = mmean(shortfall)
                    loss = loss + self.ent_floor_coef * floor_loss
                    floor_losses.append(floor_loss.item())
                    below_floor.append(mmean((shortfall > 0).float()).item())

                pg_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                entropy_losses.append(entropy_loss.item())
                clip_fractions.append(mmean((torch.abs(ratio - 1) > clip_range).float()).item())
                with torch.no_grad():
                    log_ratio = log_prob - old_log_prob
                    approx_kl = mmean((torch.exp(log_ratio) - 1) - log_ratio).item()
                approx_kl_divs.append(approx_kl)

                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at update {self._n_updates} (step {self.num_timesteps}): "
                        f"policy {policy_loss.item()}, value {value_loss.item()}, entropy {entropy_loss.item()}; "
                        "expected finite values (try a lower learning_rate or max_grad_norm)")
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    if self.nonfinite == "skip":  # this minibatch's step is dropped, counted in train/skipped_steps
                        self._skipped_steps += 1
                        self.policy.optimizer.zero_grad()
                        continue
                    raise FloatingPointError(
                        f"non-finite gradient norm {grad_norm.item()} at update {self._n_updates} (step "
                        f"{self.num_timesteps}); expected finite gradients (try a lower learning_rate, or "
                        "nonfinite=skip to drop such steps)")
                grad_norms.append(grad_norm.item())
                try:
                    self.policy.optimizer.step()
                    # finite gradients, yet non-finite weights: the step overflowed (a fused Adam does not raise)
                    if fused_step and not torch.isfinite(torch.nn.utils.get_total_norm(self.policy.parameters())):
                        raise RuntimeError("the step made some weights non-finite")
                except RuntimeError as exc:  # e.g. Adam's step size overflowing float32 at an extreme learning rate
                    raise FloatingPointError(f"optimizer step failed at update {self._n_updates} (step "
                                             f"{self.num_timesteps}): {' '.join(str(exc).split())}; expected a "
                                             "learning_rate that float32 can hold (try a lower one)") from None
            self._n_updates += 1
            if not continue_training:
                break

        if self.rnd is not None and self._rnd_next_obs is not None:
            self.logger.record("train/rnd_loss", self.rnd.fit(self._rnd_next_obs, self.batch_size))
        buf = self.rollout_buffer
        # normalisation statistics move only between updates, so each rollout and its update see the same ones
        self.policy.update_obs_normalizer(buf.observations)
        update_seconds = time.perf_counter() - t_start
        explained_var = explained_variance(buf.values.flatten(), buf.returns.flatten())
        log = self.logger.record
        log("train/entropy_loss", float(np.mean(entropy_losses)) if entropy_losses else float("nan"))
        log("train/policy_gradient_loss", float(np.mean(pg_losses)) if pg_losses else float("nan"))
        log("train/value_loss", float(np.mean(value_losses)) if value_losses else float("nan"))
        log("train/approx_kl", float(np.mean(approx_kl_divs)) if approx_kl_divs else float("nan"))
        log("train/clip_fraction", float(np.mean(clip_fractions)) if clip_fractions else float("nan"))
        log("train/loss", loss.item())
        log("train/explained_variance", float(explained_var))
        log("train/grad_norm", float(np.mean(grad_norms)) if grad_norms else float("nan"))
        log("train/grad_norm_max", float(np.max(grad_norms)) if grad_norms else float("nan"))
        if self.nonfinite == "skip":
            log("train/skipped_steps", self._skipped_steps)
        if hasattr(self.policy, "log_std"):
            log("train/std", torch.exp(self.policy.log_std).mean().item())
        if floor_losses:
            log("train/ent_floor_loss", float(np.mean(floor_losses)))
            log("train/below_ent_floor", float(np.mean(below_floor)))
        log("train/n_updates", self._n_updates, exclude="tensorboard")
        log("train/clip_range", clip_range)
        log("train/ent_coef", ent_coef)
        if clip_range_vf is not None:
            log("train/clip_range_vf", clip_range_vf)
        steps = buf.buffer_size * buf.n_envs
        log("perf/rollout_s", self._rollout_seconds)
        log("perf/update_s", update_seconds)
        log("perf/steps_per_s", steps / max(self._rollout_seconds + update_seconds, 1e-9))

    # ---------------------------------------------------------------- save/load
    def save(self, path, exclude=None, include=None) -> None:
        """SB3's ``save`` plus a plain-data policy description, written atomically (temp file, then rename)."""
        if isinstance(path, io.BufferedIOBase):
            raise ValueError("RecurrentPPO.save expects a file path (str or Path), not a file object")
        path = Path(path)
        if path.suffix != ".zip":
            path = path.with_name(path.name + ".zip")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            super().save(tmp, exclude=exclude, include=include)
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(POLICY_CONFIG_NAME, json.dumps(self.policy.config(), indent=2))
                archive.writestr(MODEL_DATA_NAME, json.dumps(episode_data(self)))

    @classmethod
    def load(cls, path, env=None, device="auto", custom_objects=None, print_system_info=False,
             force_reset=True, trust_file: bool = False, **kwargs):
        """SB3's ``load``, after checking that the file is a model saved by ``RecurrentPPO.save``, and without
        running code from the file: every field SB3 stored as a pickle is rebuilt from plain data
        (:func:`agents.serialization.plain_data_objects`; a field that cannot be is refused in one line), no env the
        file names is made, and a core of the user's own (``module:Class``) is taken only from a module already
        imported. ``trust_file=True`` lifts all three (SB3 unpickles: only for files you trust)."""
        p, blob = read_model_file(path)  # read once: every check and the load see the same bytes
        read_policy_config(p, blob)  # clear error for a corrupt or foreign file
        objects = {} if trust_file else plain_data_objects(p, blob)
        policy_kwargs = saved_policy_kwargs(p, blob)
        if policy_kwargs is not None:
            objects["policy_kwargs"] = policy_kwargs
        objects.update(custom_objects or {})
        with file_names_no_imports(not trust_file):
            return super().load(io.BytesIO(blob), env=env, device=device, custom_objects=objects,
                                print_system_info=print_system_info, force_reset=force_reset, **kwargs)
