"""The project's one observation wrapper for MiniGrid tasks: a flat, compact uint8 vector.

Layout (``V`` = agent view size, odd, >= 3; default 7)::

    obs.shape == (3 * V * V + 1,), obs.dtype == uint8

    obs[: 3*V*V].reshape(V, V, 3)  == MiniGrid's symbolic partial view ``obs["image"]``, unchanged:
        image[i, j, 0]  object type index   0..10  (minigrid OBJECT_TO_IDX: 0 unseen, 1 empty, 2 wall,
                                                    3 floor, 4 door, 5 key, 6 ball, 7 box, 8 goal,
                                                    9 lava, 10 agent)
        image[i, j, 1]  color index         0..5   (COLOR_TO_IDX: 0 red, 1 green, 2 blue, 3 purple,
                                                    4 yellow, 5 grey)
        image[i, j, 2]  state index         0..2   (STATE_TO_IDX for doors: 0 open, 1 closed, 2 locked;
                                                    0 for every other object)
      i is the column (x, left to right), j the row (y, far to near) of the agent's egocentric view:
      the agent stands at image[V // 2, V - 1] (bottom row, centre) facing towards j = 0; that cell
      shows what the agent carries (or "empty"). Cells hidden behind walls are "unseen" (0, 0, 0).
    obs[3*V*V]  agent direction       0..3   (0 right/+x, 1 down/+y, 2 left/-x, 3 up/-y, in world frame)

The ``mission`` string is dropped (it is constant for MiniGrid-Memory and most navigation tasks; tasks
whose mission varies between episodes lose that information).

The observation space is ``Box(low=0, high=HIGH, shape=(3V^2+1,), dtype=uint8)`` where ``HIGH`` holds
the per-element maxima above (10, 5, 2 repeated V*V times, then 3), so every value is a category index:
a policy encoder should embed them (vocabulary sizes :data:`CHANNEL_SIZES` = (11, 6, 3) for the three
image channels and :data:`NUM_DIRECTIONS` = 4 for the direction), or one-hot them, not treat them as
pixels. :class:`MiniGridObsLayout` holds these numbers; :meth:`MiniGridObsLayout.split` cuts a
(batched) observation into ``(image [..., V, V, 3], direction [...])`` for numpy arrays and torch
tensors alike. Code that must not import ``envs`` (the saved policy) can rebuild the layout from the
numbers above: ``V = round(((obs_dim - 1) / 3) ** 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

__all__ = [
    "MiniGridSymbolicObs",
    "MiniGridObsWrapper",
    "MiniGridObsLayout",
    "minigrid_obs_layout",
    "CHANNEL_SIZES",
    "NUM_DIRECTIONS",
    "validate_view_size",
    "MiniGridMoveActions",
    "ACTION_SETS",
    "OBS_MODES",
    "rgb_view",
    "validate_tile_size",
]

#: Number of values each image channel takes: (object types, colors, states) = (11, 6, 3).
CHANNEL_SIZES: tuple[int, int, int] = (
    max(OBJECT_TO_IDX.values()) + 1,
    max(COLOR_TO_IDX.values()) + 1,
    max(STATE_TO_IDX.values()) + 1,
)
#: Number of agent directions (the last element of the observation takes 0..3).
NUM_DIRECTIONS: int = 4


def validate_view_size(view_size: Any) -> int:
    """Return ``view_size`` as an int if it is an odd int >= 3, else raise a one-line ValueError."""
    if isinstance(view_size, (bool, np.bool_)) or not isinstance(view_size, (int, np.integer)):
        raise ValueError(
            f"view_size must be an odd int >= 3 (MiniGrid agent_view_size), got {view_size!r} "
            f"({type(view_size).__name__})"
        )
    if view_size < 3 or view_size % 2 != 1:
        raise ValueError(f"view_size must be an odd int >= 3 (MiniGrid agent_view_size), got {view_size!r}")
    return int(view_size)


@dataclass(frozen=True)
class MiniGridObsLayout:
    """Where everything sits in the flat MiniGrid observation for a view size ``view_size`` (V).

    Attributes:
        view_size: V.
        image_shape: (V, V, 3), indexed [x, y, channel] as MiniGrid's ``obs["image"]``.
        image_size: 3 * V * V, number of leading elements that hold the image.
        direction_index: 3 * V * V, index of the direction element (the last one).
        obs_shape: (3 * V * V + 1,).
        channel_sizes: (11, 6, 3), values per image channel (object, color, state).
        num_directions: 4.
        high: uint8 array of shape obs_shape with the maximum of each element.
    """

    view_size: int
    image_shape: tuple[int, int, int] = field(init=False)
    image_size: int = field(init=False)
    direction_index: int = field(init=False)
    obs_shape: tuple[int] = field(init=False)
    channel_sizes: tuple[int, int, int] = field(init=False, default=CHANNEL_SIZES)
    num_directions: int = field(init=False, default=NUM_DIRECTIONS)

    def __post_init__(self) -> None:
        v = validate_view_size(self.view_size)
        object.__setattr__(self, "view_size", v)
        object.__setattr__(self, "image_shape", (v, v, 3))
        object.__setattr__(self, "image_size", 3 * v * v)
        object.__setattr__(self, "direction_index", 3 * v * v)
        object.__setattr__(self, "obs_shape", (3 * v * v + 1,))

    @property
    def high(self) -> np.ndarray:
        per_cell = np.array([n - 1 for n in self.channel_sizes], dtype=np.uint8)
        return np.concatenate(
            [np.tile(per_cell, self.view_size * self.view_size), np.array([self.num_directions - 1], np.uint8)]
        )

    @classmethod
    def from_obs_dim(cls, obs_dim: int) -> "MiniGridObsLayout":
        """The layout whose flat observation has ``obs_dim`` elements (3V^2 + 1); ValueError otherwise."""
        v = int(round(((int(obs_dim) - 1) / 3) ** 0.5))
        if 3 * v * v + 1 != obs_dim or v < 3 or v % 2 != 1:
            raise ValueError(
                f"obs_dim {obs_dim!r} is not a MiniGrid flat observation size 3*V*V+1 with odd V >= 3 "
                f"(e.g. 28 for V=3, 76 for V=5, 148 for V=7)"
            )
        return cls(v)

    def split(self, obs: Any) -> tuple[Any, Any]:
        """Cut observations of shape [..., 3V^2+1] into (image [..., V, V, 3], direction [...]).

        Works on numpy arrays and torch tensors (anything with ``.shape`` and ``.reshape``).
        """
        if tuple(obs.shape[-1:]) != self.obs_shape:
            raise ValueError(
                f"expected MiniGrid observations of shape [..., {self.obs_shape[0]}] (view_size="
                f"{self.view_size}), got shape {tuple(obs.shape)}"
            )
        lead = tuple(obs.shape[:-1])
        image = obs[..., : self.image_size].reshape(lead + self.image_shape)
        direction = obs[..., self.direction_index]
        return image, direction


def minigrid_obs_layout(view_size: int = 7) -> MiniGridObsLayout:
    """Layout of the project's MiniGrid observation for agent view size ``view_size`` (odd, >= 3)."""
    return MiniGridObsLayout(view_size)


class MiniGridSymbolicObs(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MiniGrid dict observation -> flat uint8 vector ``[image.ravel() (V*V*3), direction]``.

    See the module docstring for the exact layout; ``self.layout`` is the :class:`MiniGridObsLayout`.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not (
            isinstance(space, spaces.Dict)
            and "image" in space.spaces
            and "direction" in space.spaces
            and isinstance(space["image"], spaces.Box)
            and len(space["image"].shape) == 3
            and space["image"].shape[0] == space["image"].shape[1]
            and space["image"].shape[2] == 3
        ):
            raise ValueError(
                "MiniGridSymbolicObs needs a MiniGrid Dict observation space with 'image' (V, V, 3) and "
                f"'direction', got {space!r}"
            )
        self.layout = MiniGridObsLayout(space["image"].shape[0])
        self.observation_space = spaces.Box(
            low=np.zeros(self.layout.obs_shape, dtype=np.uint8), high=self.layout.high, dtype=np.uint8
        )

    def observation(self, observation: dict) -> np.ndarray:
        out = np.empty(self.layout.obs_shape, dtype=np.uint8)
        out[: self.layout.image_size] = np.asarray(observation["image"], dtype=np.uint8).reshape(-1)
        out[self.layout.direction_index] = observation["direction"]
        return out


#: Alias of :class:`MiniGridSymbolicObs`.
MiniGridObsWrapper = MiniGridSymbolicObs


#: MiniGrid observation modes: ``symbolic`` = :class:`MiniGridSymbolicObs` (cell codes and direction); ``rgb`` =
#: the partial view rendered as an image, ``(V * tile_size, V * tile_size, 3)`` uint8 (minigrid's
#: ``RGBImgPartialObsWrapper``; the agent sits at the bottom centre facing up, so the image carries no heading).
OBS_MODES = ("symbolic", "rgb")


def validate_tile_size(tile_size: Any) -> int:
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
        raise ValueError(f"tile_size={tile_size!r}: expected a positive integer (pixels per grid cell)")
    return int(tile_size)


def rgb_view(env: gym.Env, tile_size: int = 8) -> gym.Env:
    """MiniGrid's partial view as an RGB image: ``Box(0, 255, (V * tile_size, V * tile_size, 3), uint8)``."""
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    return ImgObsWrapper(RGBImgPartialObsWrapper(env, tile_size=validate_tile_size(tile_size)))


#: MiniGrid action sets: ``all`` = minigrid's 7 actions; ``move`` = its first three, turn left, turn right and
#: forward (pickup, drop, toggle and done do nothing in the navigation and memory tasks).
ACTION_SETS = ("all", "move")


class MiniGridMoveActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Only MiniGrid's movement actions: ``Discrete(3)`` = 0 turn left, 1 turn right, 2 forward.

    These are minigrid's own action numbers 0-2, so actions pass through unchanged; only the space shrinks
    (the reference recurrent-PPO setups for MiniGrid-Memory use these three actions).
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        if not (isinstance(env.action_space, spaces.Discrete) and env.action_space.n >= 3):
            raise ValueError(f"MiniGridMoveActions needs MiniGrid's Discrete(7) actions, got {env.action_space!r}")
        self.action_space = spaces.Discrete(3)

    def action(self, action):
        return action
