"""Partially observable environments for recurrent-agents.

``import envs`` registers the masked classic-control ids (:data:`ENV_IDS`) with gymnasium and imports
minigrid (which registers ``MiniGrid-*``). :func:`make_env` builds an env with the wrappers training
uses. See ``envs/README.md`` for the table of ids.

>>> from envs import make_env
>>> env = make_env("MiniGrid-Memory", view_size=3)   # MiniGrid-MemoryS7-v0, obs uint8 (28,)
>>> env = make_env("CartPole-P-v1")                   # CartPole with (x, theta) only
"""

from .masked import MASKED_ENVS, KeepDims, MaskedEnvSpec, ZeroDims
from .minigrid_obs import (
    ACTION_SETS,
    CHANNEL_SIZES,
    NUM_DIRECTIONS,
    MiniGridObsLayout,
    MiniGridMoveActions,
    MiniGridObsWrapper,
    MiniGridSymbolicObs,
    minigrid_obs_layout,
)
from .registry import (
    ALIASES,
    BOX2D_INSTALL,
    ENV_IDS,
    MissingDependencyError,
    UnknownEnvError,
    is_minigrid_id,
    list_env_ids,
    make_env,
    register_envs,
    resolve_env_id,
    split_env_id,
    qualified_env_id,
    import_gym_package,
)

__all__ = [
    "make_env",
    "resolve_env_id",
    "split_env_id",
    "qualified_env_id",
    "import_gym_package",
    "list_env_ids",
    "is_minigrid_id",
    "register_envs",
    "ENV_IDS",
    "ALIASES",
    "MASKED_ENVS",
    "MaskedEnvSpec",
    "UnknownEnvError",
    "MissingDependencyError",
    "BOX2D_INSTALL",
    "KeepDims",
    "ZeroDims",
    "MiniGridSymbolicObs",
    "MiniGridMoveActions",
    "ACTION_SETS",
    "MiniGridObsWrapper",
    "MiniGridObsLayout",
    "minigrid_obs_layout",
    "CHANNEL_SIZES",
    "NUM_DIRECTIONS",
]
