"""The recurrent actor-critic policy: encoder -> memory core(s) -> actor and critic heads.

The policy is separate from the algorithm (SB3 style): :class:`RecurrentActorCriticPolicy` is a ``torch.nn.Module``
(an SB3 ``BasePolicy``) that can be rebuilt from plain data (:meth:`config` / :meth:`from_config`), which is what
``agents.load_policy`` does with no trainer and no env.

State: one tensor ``[B, S]`` per batch of envs. With a separate critic core (``shared_core=False``) it is the actor
core's state followed by the critic core's state, each flattened; only the cores know what is inside.

Shapes::

    state = policy.initial_state(batch_size=B)                                # [B, S]
    actions, values, log_prob, state = policy(obs [B, *obs], state, episode_start [B])        # one rollout step
    values, log_prob, entropy = policy.evaluate_actions(obs [T, B, *obs], actions [T, B, ...],
                                                        episode_start [T, B], state [B, S])   # [T*B] each
    action, state = policy.act(obs, state, episode_start, deterministic)      # inference (numpy or torch)
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    make_proba_distribution,
)
from stable_baselines3.common.policies import BasePolicy
from torch import nn
from torch.distributions import Bernoulli, Categorical, Normal

from .cores import MemoryCore, core_options, make_core
from .encoders import FlatEncoder, MiniGridEncoder, build_mlp, make_encoder, resolve_encoder, run_mlp
from .kernels import load as load_kernels
from .kernels.fused import _tracing_or_compiling, gru_step, lstm_step
from .obspack import ObsPacker, is_structured
from .spaces import space_from_config, space_to_config

#: version of the saved policy format (``recurrent_policy.json``); bumped when the layout changes
POLICY_FORMAT_VERSION = 1

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
def saved_core_kwargs(core: str, core_kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A saved policy's core options as its core takes them now: policies saved before cores declared their own
    options carry ``kernel="auto"`` for every core; the kernel is a runtime choice (agents.kernels), so it is dropped
    where the core does not take it."""
    out = dict(core_kwargs or {})
    if "kernel" in out and "kernel" not in core_options(core):
        del out["kernel"]
    return out


class RecurrentActorCriticPolicy(BasePolicy):
    """Recurrent actor-critic for Box, Discrete, MultiDiscrete, MultiBinary, Dict and Tuple observations (the
    non-Box ones packed into one vector, :mod:`agents.obspack`) and Box / Discrete / MultiDiscrete / MultiBinary
    actions.

    :param core: name of the memory core (``agents.CORES``)
    :param hidden_size: units of the core (per layer)
    :param num_layers: stacked core layers
    :param shared_core: one core for actor and critic (True) or a separate critic core (False)
    :param encoder: ``"flat"`` (vector MLP), ``"minigrid"`` (symbolic grid), ``"cnn"`` (image), ``"combined"``
        (any non-Box space, SB3's preprocessing), or ``"auto"`` (chosen from the space)
    :param encoder_sizes: hidden layers of the encoder before the core (``[]``: the core sees the raw observation)
    :param normalize_obs: normalise observations with running statistics kept in the policy (flat encoder, and the
        Box parts under the combined encoder)
    :param encoder_norm: LayerNorm on each encoder layer's pre-activations (keeps tanh units off their +-1 plateau)
    :param net_arch: ``{"pi": [...], "vf": [...]}`` layers of the actor / critic heads after the core
    :param activation: activation of encoder and heads (``tanh``, ``relu``, ``elu``, ``gelu``, ``leaky_relu``)
    :param ortho_init: orthogonal initialisation of linear layers as in SB3's PPO
    :param log_std_init: initial log standard deviation for Box actions
    :param use_sde: generalized State-Dependent Exploration for Box actions (Raffin et al., "Smooth Exploration for
        Robotic Reinforcement Learning", CoRL 2021, https://arxiv.org/abs/2005.05719; SB3's
        ``StateDependentNoiseDistribution``): the exploration noise is a linear function of the actor's latent
        features, with weights resampled by :meth:`reset_noise`
    :param core_kwargs: extra keyword options for the core
    :param env_id: the env id the policy is trained on (stored with the model for ``envs.make_env``)
    :param env_kwargs: the ``envs.make_env`` options of that env (view size, action set, ...), stored with the model
        so that ``envs.make_env(policy.env_id, **policy.env_kwargs)`` builds the env it acts in (``None``: unknown)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule=None,
        core: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        shared_core: bool = False,
        encoder: str = "auto",
        encoder_sizes: Sequence[int] = (64,),
        normalize_obs: bool = False,
        encoder_norm: bool = False,
        net_arch: Optional[Dict[str, Sequence[int]]] = None,
        activation: str = "tanh",
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        core_kwargs: Optional[Dict[str, Any]] = None,
        env_id: Optional[str] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        optimizer_class=torch.optim.Adam,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        use_sde: bool = False,
    ) -> None:
        obs_cfg = space_to_config(observation_space)  # refuses the spaces the policy cannot take, in one line
        if use_sde and not isinstance(action_space, spaces.Box):
            raise ValueError(f"use_sde=True needs a Box action space, got {action_space}: expected use_sde=False")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is unknown: expected one of {', '.join(ACTIVATIONS)}")
        if optimizer_kwargs is None:
            optimizer_kwargs = {"eps": 1e-5, "foreach": True} if optimizer_class is torch.optim.Adam else {}
        super().__init__(observation_space, action_space, normalize_images=False,
                         optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs)
        net_arch = {"pi": [64], "vf": [64]} if net_arch is None else net_arch
        if not isinstance(net_arch, dict) or set(net_arch) - {"pi", "vf"}:
            raise ValueError(f"net_arch={net_arch!r}: expected a dict like {{'pi': [64], 'vf': [64]}}")
        self.core_name = core
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.shared_core = bool(shared_core)
        self.encoder_name = resolve_encoder(encoder, observation_space)
        self.encoder_sizes = [int(s) for s in encoder_sizes]
        self.normalize_obs = bool(normalize_obs)
        self.encoder_norm = bool(encoder_norm)
        self.net_arch = {"pi": [int(s) for s in net_arch.get("pi", [])], "vf": [int(s) for s in net_arch.get("vf", [])]}
        self.activation = activation
        self.ortho_init = ortho_init
        self.log_std_init = float(log_std_init)
        self.core_kwargs = dict(core_kwargs or {})
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs) if env_kwargs is not None else None
        #: deterministic act through one C++ call where the policy allows it (:meth:`_fused_act_plan`); False: always
        #: the eager torch path (for comparison; the two give the same actions and states)
        self.fused_act = True
        self.use_sde = bool(use_sde)
        # Box observations go to the network as they are; any other space is packed into one float32 vector
        # (agents.obspack), which is what the network, the rollout buffer and an ONNX export see.
        self._packer = ObsPacker(obs_cfg) if is_structured(obs_cfg) else None
        self.packed_space = observation_space if self._packer is None else \
            spaces.Box(-np.inf, np.inf, (self._packer.size,), np.float32)
        self._obs_shape = tuple(self.packed_space.shape)

        self.encoder = make_encoder(self.encoder_name, observation_space, self.encoder_sizes, ACTIVATIONS[activation],
                                    normalize=self.normalize_obs, layer_norm=self.encoder_norm)
        self.core_pi: MemoryCore = make_core(core, self.encoder.output_size, hidden_size, num_layers, **self.core_kwargs)
        self.core_vf: Optional[MemoryCore] = None
        if not self.shared_core:
            self.core_vf = make_core(core, self.encoder.output_size, hidden_size, num_layers, **self.core_kwargs)
        self._n_pi = int(np.prod(self.core_pi.state_shape))
        self._n_vf = int(np.prod(self.core_vf.state_shape)) if self.core_vf is not None else 0
        self.pi_net, pi_out = build_mlp(self.core_pi.output_size, self.net_arch["pi"], ACTIVATIONS[activation])
        self.vf_net, vf_out = build_mlp(self.core_pi.output_size, self.net_arch["vf"], ACTIVATIONS[activation])

        self.action_dist = make_proba_distribution(action_space, use_sde=self.use_sde)  # gSDE: SB3's defaults
        if isinstance(self.action_dist, StateDependentNoiseDistribution):
            self.action_net, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=pi_out, latent_sde_dim=pi_out, log_std_init=self.log_std_init)
        elif isinstance(self.action_dist, DiagGaussianDistribution):
            self.action_net, self.log_std = self.action_dist.proba_distribution_net(pi_out, log_std_init=self.log_std_init)
        else:
            self.action_net = self.action_dist.proba_distribution_net(pi_out)
        self.value_net = nn.Linear(vf_out, 1)

        if ortho_init:
            gains = {self.encoder: math.sqrt(2), self.pi_net: math.sqrt(2), self.vf_net: math.sqrt(2),
                     self.core_pi: math.sqrt(2), self.action_net: 0.01, self.value_net: 1.0}
            if self.core_vf is not None:
                gains[self.core_vf] = math.sqrt(2)
            for module, gain in gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        if lr_schedule is not None:
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
            # a fused optimizer writes the parameters without bumping their version counters: drop what the cores
            # cached from them after every step (other steps bump the versions, which the caches check)
            if any(group.get("fused") for group in self.optimizer.param_groups):
                self.optimizer.register_step_post_hook(lambda *_: self.drop_cached_constants())

    def drop_cached_constants(self) -> None:
        """Forget every parameter-derived tensor the cores cached for no-grad steps (see
        ``agents.cores.linear.LinearRecurrentCore._constant``); call it after changing parameters in place without
        autograd noticing (``.data`` writes, fused optimizers other than the policy's own)."""
        for module in self.modules():
            module.__dict__.pop("_constants", None)

    @property
    def device(self) -> torch.device:
        # SB3's BaseModel.device walks every parameter; one lookup keeps the per-step ``act`` path short.
        return self.value_net.weight.device

    # ------------------------------------------------------------------ config
    def config(self) -> Dict[str, Any]:
        """Plain-data description from which :meth:`from_config` rebuilds this network (weights aside)."""
        return {
            "format_version": POLICY_FORMAT_VERSION,
            "observation_space": space_to_config(self.observation_space),
            "action_space": space_to_config(self.action_space),
            "core": self.core_name,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "shared_core": self.shared_core,
            "encoder": self.encoder_name,
            "encoder_sizes": list(self.encoder_sizes),
            "normalize_obs": self.normalize_obs,
            "encoder_norm": self.encoder_norm,
            "net_arch": {k: list(v) for k, v in self.net_arch.items()},
            "activation": self.activation,
            "log_std_init": self.log_std_init,
            "core_kwargs": dict(self.core_kwargs),
            "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs) if self.env_kwargs is not None else None,
            "use_sde": self.use_sde,
        }

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "RecurrentActorCriticPolicy":
        version = cfg.get("format_version")
        if version != POLICY_FORMAT_VERSION:
            raise ValueError(f"policy format_version {version!r} is not supported: expected {POLICY_FORMAT_VERSION}")
        kwargs = {k: v for k, v in cfg.items() if k not in ("format_version", "observation_space", "action_space")}
        kwargs["core_kwargs"] = saved_core_kwargs(kwargs.get("core", "gru"), kwargs.get("core_kwargs"))
        return cls(space_from_config(cfg["observation_space"]), space_from_config(cfg["action_space"]),
                   lr_schedule=None, ortho_init=False, **kwargs)

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        cfg = self.config()
        data.update({k: v for k, v in cfg.items() if k not in ("format_version", "observation_space", "action_space")})
        return data

    def update_obs_normalizer(self, observations) -> None:
        """Fold network inputs (:meth:`pack_obs`'s output, any leading dims) into the running normalisation
        statistics, if the policy has them."""
        norm = getattr(self.encoder, "norm", None)
        if norm is not None:
            norm.update(self.encoder.normalizer_input(torch.as_tensor(np.asarray(observations), device=self.device)))

    def pack_obs(self, obs) -> np.ndarray:
        """A batch of observations as the network takes them: the same array for a Box space, the packed
        ``[B, packed size]`` float32 (:mod:`agents.obspack`) for any other (each part batched, as a VecEnv gives)."""
        if self._packer is None:
            return obs
        packed, single = self._packer.pack(obs)
        if single:
            raise ValueError(f"pack_obs() got one unbatched observation of {self.observation_space}: expected a "
                             "batch, each part with a leading batch dim (as a VecEnv returns it)")
        return packed

    # ------------------------------------------------------------------- state
    @property
    def state_size(self) -> int:
        """Features of the packed state of one env (``S``)."""
        return self._n_pi + self._n_vf

    def initial_state(self, batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """Zero state for ``batch_size`` envs: ``[batch_size, S]``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        return torch.zeros((int(batch_size), self.state_size), device=self.device if device is None else device)

    def _split(self, state: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if state.dim() != 2 or state.shape[1] != self.state_size:
            raise ValueError(f"state has shape {tuple(state.shape)}: expected [B, {self.state_size}] "
                             f"(from policy.initial_state) for core {self.core_name!r}")
        B = state.shape[0]
        s_pi = state[:, : self._n_pi].reshape(B, *self.core_pi.state_shape)
        s_vf = None
        if self.core_vf is not None:
            s_vf = state[:, self._n_pi:].reshape(B, *self.core_vf.state_shape)
        return s_pi, s_vf

    def _join(self, s_pi: torch.Tensor, s_vf: Optional[torch.Tensor]) -> torch.Tensor:
        if s_vf is None:
            return s_pi.reshape(s_pi.shape[0], -1)
        return torch.cat([s_pi.reshape(s_pi.shape[0], -1), s_vf.reshape(s_vf.shape[0], -1)], dim=1)

    # ----------------------------------------------------------- distribution
    def _distribution(self, latent_pi: torch.Tensor):
        """SB3's distribution for the action space, filled without torch's argument validation (which costs more
        than the network itself at rollout batch sizes; the parameters come straight from the network)."""
        out = self.action_net(latent_pi)
        dist = self.action_dist
        if isinstance(dist, StateDependentNoiseDistribution):
            dist.proba_distribution(out, self.log_std, latent_pi)
        elif isinstance(dist, DiagGaussianDistribution):
            dist.distribution = Normal(out, torch.ones_like(out) * self.log_std.exp(), validate_args=False)
        elif isinstance(dist, CategoricalDistribution):
            dist.distribution = Categorical(logits=out, validate_args=False)
        elif isinstance(dist, MultiCategoricalDistribution):
            dist.distribution = [Categorical(logits=part, validate_args=False)
                                 for part in torch.split(out, list(dist.action_dims), dim=-1)]
        elif isinstance(dist, BernoulliDistribution):
            dist.distribution = Bernoulli(logits=out, validate_args=False)
        else:  # pragma: no cover - make_proba_distribution only returns the four above without SDE
            raise ValueError(f"action distribution {type(dist).__name__} is not supported")
        return dist

    def reset_noise(self, n_envs: int = 1) -> None:
        """Sample new gSDE exploration weights (one set per env); does nothing without ``use_sde``."""
        if isinstance(self.action_dist, StateDependentNoiseDistribution):
            self.action_dist.sample_weights(self.log_std, batch_size=n_envs)

    def _mode(self, latent_pi: torch.Tensor) -> torch.Tensor:
        """Deterministic action straight from the head (no distribution object: this is the latency path)."""
        return self.mode_from_params(self.action_net(latent_pi))

    def mode_from_params(self, out: torch.Tensor) -> torch.Tensor:
        """Deterministic action from the action head's output ``[B, P]`` (logits, or the Gaussian mean), before
        clipping to a Box action space."""
        dist = self.action_dist
        if isinstance(dist, CategoricalDistribution):
            return out.argmax(dim=-1)
        if isinstance(dist, MultiCategoricalDistribution):
            return torch.stack([c.argmax(dim=-1) for c in torch.split(out, list(dist.action_dims), dim=-1)], dim=-1)
        if isinstance(dist, BernoulliDistribution):
            return (out > 0).to(out.dtype)
        return out  # Gaussian mean

    # ---------------------------------------------------------------- training
    def forward(self, obs: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor, deterministic: bool = False):
        """One rollout step for a batch of envs: ``(actions, values [B], log_prob [B], new state [B, S])``."""
        feat = self.encoder(obs)
        s_pi, s_vf = self._split(state)
        y_pi, s_pi = self.core_pi.step(feat, s_pi, episode_start)
        if self.core_vf is None:
            y_vf = y_pi
        else:
            y_vf, s_vf = self.core_vf.step(feat, s_vf, episode_start)
        dist = self._distribution(self.pi_net(y_pi))
        actions = dist.get_actions(deterministic=deterministic)
        log_prob = dist.log_prob(actions)
        values = self.value_net(self.vf_net(y_vf)).flatten()
        return actions, values, log_prob, self._join(s_pi, s_vf)

    def predict_values(self, obs: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        """Critic value of one step for a batch of envs: ``[B]``."""
        feat = self.encoder(obs)
        s_pi, s_vf = self._split(state)
        if self.core_vf is None:
            y_vf, _ = self.core_pi.step(feat, s_pi, episode_start)
        else:
            y_vf, _ = self.core_vf.step(feat, s_vf, episode_start)
        return self.value_net(self.vf_net(y_vf)).flatten()

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor, episode_start: torch.Tensor,
                         state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole sequences in one call per core: ``obs [T, B, *obs]``, ``actions [T, B, ...]``,
        ``episode_start [T, B]``, ``state [B, S]`` -> ``(values, log_prob, entropy)``, each ``[T * B]``."""
        T, B = episode_start.shape
        feat = self.encoder(obs)
        s_pi, s_vf = self._split(state)
        y_pi, _ = self.core_pi.forward_sequence(feat, s_pi, episode_start)
        if self.core_vf is None:
            y_vf = y_pi
        else:
            y_vf, _ = self.core_vf.forward_sequence(feat, s_vf, episode_start)
        dist = self._distribution(self.pi_net(y_pi.reshape(T * B, -1)))
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.reshape(T * B).long()
        else:
            actions = actions.reshape(T * B, -1)
        log_prob = dist.log_prob(actions)
        entropy = dist.entropy()
        values = self.value_net(self.vf_net(y_vf.reshape(T * B, -1))).flatten()
        return values, log_prob, entropy

    # --------------------------------------------------------------- inference
    def _as_batch(self, obs) -> Tuple[torch.Tensor, bool, bool]:
        if self._packer is not None:
            is_torch = isinstance(obs, torch.Tensor) or (isinstance(obs, (dict, tuple, list)) and any(
                isinstance(v, torch.Tensor) for v in (obs.values() if isinstance(obs, dict) else obs)))
            packed, single = self._packer.pack(_to_numpy(obs) if is_torch else obs)
            return torch.as_tensor(packed, device=self.device), is_torch, single
        is_torch = isinstance(obs, torch.Tensor)
        obs_t = obs if is_torch else torch.as_tensor(np.asarray(obs))
        single = self._is_single(obs_t)
        return (obs_t.unsqueeze(0) if single else obs_t).to(self.device), is_torch, single

    def _is_single(self, obs_t: torch.Tensor) -> bool:
        """True for one Box observation, False for a batch ``[B, *obs shape]``; a clear error for anything else."""
        shape = tuple(obs_t.shape)
        if shape == self._obs_shape:
            return True
        if len(shape) == len(self._obs_shape) + 1 and shape[1:] == self._obs_shape:
            return False
        raise ValueError(f"observation has shape {shape}: expected {self._obs_shape} or [B, *{self._obs_shape}]")

    def _act_starts(self, state: torch.Tensor, B: int, episode_start) -> Optional[torch.Tensor]:
        """Check ``state`` against a batch of ``B``; the reset flags of :meth:`act` (``None``: nothing resets)."""
        if tuple(state.shape) != (B, self._n_pi + self._n_vf):
            raise ValueError(f"state has shape {tuple(state.shape)}: expected [{B}, {self.state_size}] "
                             f"(policy.initial_state(batch_size={B}))")
        if episode_start is None or (isinstance(episode_start, (bool, np.bool_)) and not episode_start):
            return None
        return self._starts(episode_start, B)

    def network_input(self, obs) -> torch.Tensor:
        """One observation or a batch (numpy or torch; a dict / tuple for Dict / Tuple spaces) as the network's
        input, batched: ``[B, *obs shape]`` for a Box space, ``[B, packed size]`` float32 for any other."""
        return self._as_batch(obs)[0]

    def _starts(self, episode_start, batch: int) -> torch.Tensor:
        if isinstance(episode_start, (bool, np.bool_, int, float)) or episode_start is None:
            return torch.full((batch,), float(bool(episode_start)), device=self.device)
        es = torch.as_tensor(np.asarray(episode_start) if not isinstance(episode_start, torch.Tensor) else episode_start)
        es = es.reshape(-1).to(device=self.device, dtype=torch.float32)
        if es.shape[0] != batch:
            raise ValueError(f"episode_start has {es.shape[0]} entries: expected one per observation ({batch})")
        return es

    def _fused_act_plan(self) -> Optional[Dict[str, Any]]:
        """What :meth:`act`'s one-call C++ path (``policy_act`` in ``agents/kernels/rnn_kernels.cpp``) needs, or
        ``None`` where it does not apply: a Box observation through the flat encoder (optionally normalised) or the
        MiniGrid code embedding, tanh or ReLU layers without LayerNorm, a GRU or LSTM actor core on its fused kernel,
        and a categorical or Gaussian (no gSDE) action, with CPU float32 parameters. Built once and kept while the
        parameters keep their device and dtype (it holds the parameter tensors themselves, which optimizer steps and
        ``load_state_dict`` update in place)."""
        cached = self.__dict__.get("_fused_act")
        if cached is not None and cached[0].dtype is cached[1] and cached[0].is_cpu is cached[2]:
            return cached[3]
        p = next(self.parameters())
        plan = None
        fused = getattr(self.core_pi, "fused", None)
        dist = self.action_dist
        if (p.is_cpu and p.dtype is torch.float32 and self._packer is None
                and type(self.encoder) in (FlatEncoder, MiniGridEncoder)
                and fused is not None and fused.step_fn in (gru_step, lstm_step)
                and self.core_pi.kernel_in_use == "fused"
                and isinstance(dist, (CategoricalDistribution, DiagGaussianDistribution))
                and not isinstance(dist, StateDependentNoiseDistribution)):
            codes = set()
            layers = []
            for seq in (self.encoder.net, self.pi_net):
                mods = list(seq)
                ok = len(mods) % 2 == 0 and all(type(m) is nn.Linear for m in mods[0::2])
                codes.update({nn.Tanh: 0, nn.ReLU: 1}.get(type(m), -1) for m in mods[1::2])
                layers.append([t for m in mods[0::2] for t in (m.weight, m.bias)] if ok else None)
            if None not in layers and len(codes) <= 1 and -1 not in codes:
                enc = self.encoder
                plan = {"embed": (enc.embed.weight, enc.max_code, enc.rows) if type(enc) is MiniGridEncoder else None,
                        "norm": enc.norm, "encoder": layers[0], "head": layers[1],
                        "activation": codes.pop() if codes else 0, "lstm": fused.step_fn is lstm_step,
                        "state_shape": list(self.core_pi.state_shape), "core": fused.rnn._flat_weights,
                        "action": (self.action_net.weight, self.action_net.bias),
                        "discrete": isinstance(dist, CategoricalDistribution), "low": None, "high": None}
                if isinstance(self.action_space, spaces.Box):
                    plan["low"] = torch.as_tensor(self.action_space.low, dtype=torch.float32)
                    plan["high"] = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        self.__dict__["_fused_act"] = (p, p.dtype, p.is_cpu, plan)
        return plan

    def _act_fused_call(self, plan: Dict[str, Any], obs, state: torch.Tensor, episode_start):
        """:meth:`act` through ``policy_act``: the same checks, conversions and results as the eager path, in as few
        Python operations as the latency path allows."""
        is_torch = isinstance(obs, torch.Tensor)
        obs_t = obs if is_torch else torch.as_tensor(obs)
        single = self._is_single(obs_t)
        x = obs_t.reshape(1 if single else obs_t.shape[0], -1)
        if not x.is_cpu:
            x = x.cpu()
        starts = self._act_starts(state, x.shape[0], episode_start)
        embed = plan["embed"]
        if embed is None and x.dtype is not torch.float32:
            x = x.float()
        norm = plan["norm"]
        mean, var, clip, eps = (None, None, 0.0, 0.0) if norm is None else (norm.mean, norm.var, norm.clip, norm.eps)
        table, max_code, rows = (None, None, None) if embed is None else embed
        action, new_state = load_kernels().policy_act(
            x, state, starts, mean, var, clip, eps, table, max_code, rows, plan["encoder"], plan["activation"],
            plan["lstm"], plan["core"], plan["state_shape"], plan["head"], *plan["action"], plan["discrete"])
        if plan["low"] is not None:  # a Box action space: the mean clipped to its bounds
            action = torch.maximum(torch.minimum(action, plan["high"]), plan["low"])
        if single:
            action = action[0]
        return (action if is_torch else action.numpy()), new_state

    def act(self, obs, state: torch.Tensor, episode_start=False, deterministic: bool = True):
        """Act for one observation or a batch; numpy or torch. Returns ``(action, new_state)``.

        ``obs`` is one observation (shape of the observation space) or a batch ``[B, ...]``; the action comes back
        unbatched or batched to match, as numpy for numpy input and torch for torch input. ``state`` is
        ``[B, S]`` (from :meth:`initial_state`, ``B = 1`` for a single observation). ``episode_start`` (a bool or
        one flag per observation) zeroes the state first. Acting advances the actor's memory only: with a separate
        critic core, the critic's part of the state is only reset by ``episode_start``, not advanced.
        """
        plan = self._fused_act_plan() if deterministic and self._packer is None and self.fused_act else None
        if plan is not None and isinstance(state, torch.Tensor) and state.dtype is torch.float32 and state.is_cpu \
                and not _tracing_or_compiling():
            return self._act_fused_call(plan, obs, state, episode_start)
        obs_t, is_torch, single = self._as_batch(obs)
        B = obs_t.shape[0]
        if not isinstance(state, torch.Tensor):
            state = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        starts = self._act_starts(state, B, episode_start)
        action, new_state = self._act_eager(obs_t, state, starts, deterministic)
        if isinstance(self.action_space, spaces.Box):
            low = torch.as_tensor(self.action_space.low, device=action.device)
            high = torch.as_tensor(self.action_space.high, device=action.device)
            action = torch.maximum(torch.minimum(action, high), low)
        if single:
            action = action[0]
        if not is_torch:
            action = action.cpu().numpy()
        return action, new_state

    def _act_eager(self, obs_t: torch.Tensor, state: torch.Tensor, starts: Optional[torch.Tensor],
                   deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            feat = self.encoder.forward(obs_t)  # .forward: skip nn.Module call overhead on the latency path
            s_pi, s_vf = self._split(state.to(self.device))
            y, s_pi = self.core_pi.step(feat, s_pi, starts)  # starts None: the common per-step case, no reset
            if starts is not None and s_vf is not None:  # the critic's memory is not advanced when acting, but reset
                s_vf = self.core_vf.reset(s_vf, starts)
            latent = run_mlp(self.pi_net, y)
            if deterministic:
                action = self._mode(latent)
            else:
                action = self._distribution(latent).get_actions(deterministic=False)
            new_state = self._join(s_pi, s_vf)
        return action, new_state

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """SB3's ``predict``: numpy in, ``(actions, state)`` out, state as a numpy array ``[n_envs, S]``.

        ``state=None`` starts every env fresh; ``episode_start=None`` means no env starts an episode now.
        """
        self.set_training_mode(False)
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
            raise ValueError("predict() got a tuple (obs, info): pass only the observation "
                             "(gymnasium's reset() returns (obs, info); SB3's VecEnv.reset() returns obs)")
        if self._packer is not None:
            obs = observation
            n = self._packer.pack(observation)[0].shape[0]
        else:
            obs = np.asarray(observation)
            n = 1 if obs.shape == self._obs_shape or obs.ndim == 0 else obs.shape[0]  # act checks the shape
        if state is None:
            state_t = self.initial_state(n)
            episode_start = np.ones(n, dtype=bool)
        else:
            state_t = torch.as_tensor(np.asarray(state), dtype=torch.float32, device=self.device)
        if episode_start is None:
            episode_start = np.zeros(n, dtype=bool)
        actions, new_state = self.act(obs, state_t, episode_start, deterministic=deterministic)
        return actions, new_state.cpu().numpy()

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        # SB3's abstract hook; a recurrent policy needs its state, so ``predict``/``act`` are the entry points.
        n = self._as_batch(observation)[0].shape[0]
        actions, _ = self.act(observation, self.initial_state(n), True, deterministic)
        return actions


def _to_numpy(obs):
    """Torch tensors (alone, or the parts of a dict / tuple observation) as numpy arrays."""
    conv = lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v  # noqa: E731
    if isinstance(obs, dict):
        return {k: conv(v) for k, v in obs.items()}
    if isinstance(obs, (tuple, list)):
        return tuple(conv(v) for v in obs)
    return conv(obs)
