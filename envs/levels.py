"""A fixed pool of training levels for any gymnasium env (procgen's ``num_levels``, generalised).

A *level* is an env seed: ``reset(seed=k)`` builds level ``k`` (for MiniGrid the layout, the objects and the start).
:class:`LevelPool` makes every reset draw its level from ``range(n_levels)``, uniformly, so a policy trains on
``n_levels`` fixed layouts; an env without the wrapper draws a fresh layout at every reset (unlimited levels).
Evaluating with and without the wrapper tells how much of what was learned holds beyond the pool - where a task has
many distinct layouts. Where it has few (MiniGrid-MemoryS7: 4 start cells x 2 cues x 2 end orders = 16), fresh seeds
repeat the pool's layouts, and the two evaluations measure nearly the same thing.

>>> env = LevelPool(gymnasium.make("MiniGrid-MemoryS7-v0"), n_levels=100)
>>> obs, info = env.reset(seed=3)        # seeds the pool's own draw; info["level"] is the level it drew
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["LevelPool", "validate_n_levels"]

_POOL_STREAM = 0x1E7E1  # the pool's generator: SeedSequence([seed, this]), independent of the env's own


def validate_n_levels(n_levels: Any) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 1:
        raise ValueError(f"n_levels={n_levels!r}: expected a positive integer (the number of fixed training levels)")
    return int(n_levels)


class LevelPool(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Every reset starts one of ``n_levels`` fixed levels (env seeds ``0 .. n_levels - 1``), drawn uniformly.

    ``reset(seed=s)`` seeds the draw (so vec-env seeding stays reproducible) and then draws a level like every other
    reset; ``info["level"]`` names the level. The env's own randomness inside an episode is reseeded by the level,
    so a level plays out the same way for the same actions.
    """

    def __init__(self, env: gym.Env, n_levels: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, n_levels=n_levels)
        super().__init__(env)
        self.n_levels = validate_n_levels(n_levels)
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), _POOL_STREAM]))
        level = int(self._rng.integers(self.n_levels))
        obs, info = self.env.reset(seed=level, options=options)
        return obs, {**info, "level": level}
