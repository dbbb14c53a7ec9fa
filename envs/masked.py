"""Classic-control tasks made partially observable by hiding parts of the observation.

Two families, both registered with gymnasium by :mod:`envs.registry`:

* ``<Name>-P-v*`` / ``<Name>-V-v*`` (pomdp-baselines naming, Ni et al. 2022, "Recurrent Model-Free
  RL Can Be a Strong Baseline for Many POMDPs"): the hidden dims are **removed**, so the observation
  shrinks to the kept dims ("P" keeps positions/angles, "V" keeps velocities). Wrapper: :class:`KeepDims`.
* ``<Name>NoVel-v*`` (rl-baselines3-zoo's ``MaskVelocityWrapper`` ids): the velocity dims are
  **zeroed**, the observation keeps its shape and bounds, so results compare with rl-zoo3's published
  numbers. Wrapper: :class:`ZeroDims`.

Each masked id is registered as its base env's class plus one wrapper in ``additional_wrappers``, so
``gymnasium.make(id)`` builds ``ObsWrapper(TimeLimit(OrderEnforcing(PassiveEnvChecker(BaseEnv))))``
with the base env's episode limit, and ``env.spec`` recreates the same env.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["KeepDims", "ZeroDims", "MaskedEnvSpec", "MASKED_ENVS"]


def _check_dims(env: gym.Env, dims: Sequence[int], wrapper: str) -> tuple[np.ndarray, spaces.Box]:
    space = env.observation_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(
            f"{wrapper} needs a 1-D Box observation space, got {space!r}"
        )
    idx = np.asarray(list(dims), dtype=np.int64)
    n = space.shape[0]
    if idx.ndim != 1 or idx.size == 0 or np.any(idx < 0) or np.any(idx >= n) or len(set(idx.tolist())) != idx.size:
        raise ValueError(
            f"{wrapper} dims must be distinct indices in [0, {n}), got {list(dims)!r}"
        )
    return idx, space


class KeepDims(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Keep only the observation dims ``dims`` (in that order); the others are removed.

    Observation: ``Box(low=base.low[dims], high=base.high[dims], shape=(len(dims),), dtype=base.dtype)``;
    ``obs = base_obs[dims]``.
    """

    def __init__(self, env: gym.Env, dims: Sequence[int]):
        gym.utils.RecordConstructorArgs.__init__(self, dims=tuple(int(d) for d in dims))
        gym.ObservationWrapper.__init__(self, env)
        idx, space = _check_dims(env, dims, "KeepDims")
        self.dims: tuple[int, ...] = tuple(idx.tolist())
        self._idx = idx
        self.observation_space = spaces.Box(
            low=space.low[idx], high=space.high[idx], dtype=space.dtype
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=self.observation_space.dtype)[self._idx]


class ZeroDims(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Set the observation dims ``dims`` to 0; shape, dtype and bounds stay those of the base env.

    Same effect as rl-zoo3's ``MaskVelocityWrapper`` (which multiplies by a 0/1 mask).
    """

    def __init__(self, env: gym.Env, dims: Sequence[int]):
        gym.utils.RecordConstructorArgs.__init__(self, dims=tuple(int(d) for d in dims))
        gym.ObservationWrapper.__init__(self, env)
        idx, space = _check_dims(env, dims, "ZeroDims")
        self.dims: tuple[int, ...] = tuple(idx.tolist())
        self._idx = idx
        self.observation_space = space

    def observation(self, observation: np.ndarray) -> np.ndarray:
        out = np.array(observation, dtype=self.observation_space.dtype, copy=True)
        out[self._idx] = 0
        return out


@dataclass(frozen=True)
class MaskedEnvSpec:
    """One masked id: which base env, which wrapper, which dims.

    ``kind == "keep"``: ``dims`` are the dims kept (others removed, :class:`KeepDims`).
    ``kind == "zero"``: ``dims`` are the dims zeroed (shape unchanged, :class:`ZeroDims`).
    """

    id: str
    base_id: str
    kind: str  # "keep" | "zero"
    dims: tuple[int, ...]
    base_dim_names: tuple[str, ...]
    needs_box2d: bool = False

    @property
    def wrapper(self) -> type[gym.ObservationWrapper]:
        return KeepDims if self.kind == "keep" else ZeroDims

    @property
    def visible_dims(self) -> tuple[int, ...]:
        """Base-obs indices whose values the agent sees."""
        if self.kind == "keep":
            return self.dims
        return tuple(i for i in range(len(self.base_dim_names)) if i not in self.dims)

    @property
    def hidden_dims(self) -> tuple[int, ...]:
        """Base-obs indices the agent does not see (removed or zeroed)."""
        return tuple(i for i in range(len(self.base_dim_names)) if i not in self.visible_dims)

    def apply(self, base_obs: Any) -> np.ndarray:
        """What this id's observation is, given the base env's observation (used by tests)."""
        base_obs = np.asarray(base_obs)
        if self.kind == "keep":
            return base_obs[list(self.dims)]
        out = base_obs.copy()
        out[list(self.dims)] = 0
        return out


_CARTPOLE = ("x", "x_dot", "theta", "theta_dot")
_PENDULUM = ("cos(theta)", "sin(theta)", "theta_dot")
_ACROBOT = ("cos(theta1)", "sin(theta1)", "cos(theta2)", "sin(theta2)", "theta1_dot", "theta2_dot")
_MOUNTAINCAR = ("position", "velocity")
_LUNAR = ("x", "y", "vx", "vy", "angle", "angular_vel", "leg1_contact", "leg2_contact")

_SPECS = (
    # dims removed (pomdp-baselines "-P"/"-V")
    MaskedEnvSpec("CartPole-P-v1", "CartPole-v1", "keep", (0, 2), _CARTPOLE),
    MaskedEnvSpec("CartPole-V-v1", "CartPole-v1", "keep", (1, 3), _CARTPOLE),
    MaskedEnvSpec("Pendulum-P-v1", "Pendulum-v1", "keep", (0, 1), _PENDULUM),
    MaskedEnvSpec("Pendulum-V-v1", "Pendulum-v1", "keep", (2,), _PENDULUM),
    MaskedEnvSpec("Acrobot-P-v1", "Acrobot-v1", "keep", (0, 1, 2, 3), _ACROBOT),
    MaskedEnvSpec("Acrobot-V-v1", "Acrobot-v1", "keep", (4, 5), _ACROBOT),
    MaskedEnvSpec("MountainCar-P-v0", "MountainCar-v0", "keep", (0,), _MOUNTAINCAR),
    MaskedEnvSpec("MountainCarContinuous-P-v0", "MountainCarContinuous-v0", "keep", (0,), _MOUNTAINCAR),
    # pomdp-baselines' LunarLander-P/V: [0, 1, 4, 6, 7] / [2, 3, 5, 6, 7] (leg contacts in both)
    MaskedEnvSpec("LunarLander-P-v3", "LunarLander-v3", "keep", (0, 1, 4, 6, 7), _LUNAR, needs_box2d=True),
    MaskedEnvSpec("LunarLander-V-v3", "LunarLander-v3", "keep", (2, 3, 5, 6, 7), _LUNAR, needs_box2d=True),
    # dims zeroed (rl-zoo3 MaskVelocityWrapper.velocity_indices)
    MaskedEnvSpec("CartPoleNoVel-v1", "CartPole-v1", "zero", (1, 3), _CARTPOLE),
    MaskedEnvSpec("PendulumNoVel-v1", "Pendulum-v1", "zero", (2,), _PENDULUM),
    MaskedEnvSpec("MountainCarContinuousNoVel-v0", "MountainCarContinuous-v0", "zero", (1,), _MOUNTAINCAR),
    MaskedEnvSpec("LunarLanderNoVel-v3", "LunarLander-v3", "zero", (2, 3, 5), _LUNAR, needs_box2d=True),
)

#: Every masked id, by id.
MASKED_ENVS: dict[str, MaskedEnvSpec] = {s.id: s for s in _SPECS}
