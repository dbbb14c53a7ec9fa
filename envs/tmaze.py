"""Passive T-Maze: a memory task whose memory length is a parameter.

Bakker, "Reinforcement Learning with Long Short-Term Memory", NeurIPS 2001; in the passive form of Ni, Ma, Eysenbach,
Bacon, "When Do Transformers Shine in RL? Decoupling Memory from Credit Assignment", NeurIPS 2023 (their
``TMazeClassicPassive``, also in pomdp-baselines). A corridor of ``length`` cells ends in a junction with a goal above
and below it::

                     g (+1)
    s--------------- j
                     g (-1)

- Observation ``Box(-1, 1, (2,))``, the position ambiguous: ``[0, cue]`` at the start (``cue`` = +1 or -1 says which
  goal pays; shown at t = 0 only), ``[0, 0]`` anywhere in the corridor, ``[1, y]`` at the junction (y = 0) or a goal.
- Actions ``Discrete(4)``: right, up, left, down (a move into a wall keeps the agent in place).
- Episodes last exactly ``length + 1`` steps: ``length`` moves right reach the junction, the last move goes up or down.
- Reward: ``goal_reward`` (1) at the last step if the agent is on the cued goal, else 0; before that ``penalty`` for
  each step on which the agent is behind the optimal schedule (position ``x < t``). The default ``penalty`` is
  ``-1 / length`` (pomdp-baselines' choice for its T-Mazes with a penalty; the paper's passive T-Maze has a negative
  penalty so that the walk right is easy to learn and the task tests memory, not exploration). The optimal return
  is 1; ``info["is_success"]`` at the last step says whether the goal was the cued one.

``walk="auto"`` is a variant that keeps the cue, the corridor and the memory length but takes the walk out of the
task: every action before the junction moves the agent right (so it is never behind and no penalty is ever due), and
only the last action, the turn, is the agent's. In the paper's form (``walk="agent"``, the default) the agent must
move right on every one of the ``length`` steps to be at the junction when the episode ends; a policy that samples
its actions reaches it with probability ``p(right) ** length``, so at long lengths the walk is an exploration
problem of its own, on top of the memory.

A policy without memory sees the same ``[1, 0]`` at the junction whatever the cue, so it succeeds in half of the
episodes at best; one that remembers the first observation succeeds in all (``tests/test_tmaze.py``). The memory
length is ``length`` steps. Ids: ``TMaze-v0`` (``length`` 10, any other through ``env_kwargs`` / ``--env-kwargs
length=L``) and ``TMaze-L<L>-v0`` for the lengths of the span study.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: lengths that get their own id, TMaze-L<L>-v0
LENGTHS = (10, 25, 50, 100, 250, 500, 1000)

#: who walks the corridor: the agent (the paper's task) or the env (only the turn at the junction is the agent's)
WALKS = ("agent", "auto")

#: actions: (dx, dy) of right, up, left, down
MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))
RIGHT, UP, LEFT, DOWN = range(4)


class TMazeEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, length: int = 10, penalty: Optional[float] = None, goal_reward: float = 1.0,
                 walk: str = "agent") -> None:
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
            raise ValueError(f"length={length!r}: expected a positive integer (the corridor's cells)")
        if walk not in WALKS:
            raise ValueError(f"walk={walk!r}: expected one of {', '.join(WALKS)}")
        if penalty is None:
            penalty = -1.0 / int(length)
        if isinstance(penalty, bool) or not isinstance(penalty, numbers.Real) or not penalty <= 0:
            raise ValueError(f"penalty={penalty!r}: expected a number <= 0 (or None: -1 / length)")
        if isinstance(goal_reward, bool) or not isinstance(goal_reward, numbers.Real) or not goal_reward > 0:
            raise ValueError(f"goal_reward={goal_reward!r}: expected a positive number")
        self.length, self.penalty, self.goal_reward = int(length), float(penalty), float(goal_reward)
        self.walk = walk
        self.episode_length = self.length + 1
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.action_space = spaces.Discrete(4)
        self.x = self.y = self.t = 0
        self.goal = 1

    def _obs(self) -> np.ndarray:
        if self.x == self.length:
            return np.array([1.0, self.y], dtype=np.float32)
        return np.array([0.0, self.goal if self.t == 0 else 0.0], dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        self.x = self.y = self.t = 0
        goal = (options or {}).get("goal")
        self.goal = int(goal) if goal in (-1, 1) else int(self.np_random.choice((-1, 1)))
        return self._obs(), {"goal": self.goal}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r}: expected an integer in [0, 4)")
        dx, dy = MOVES[RIGHT if self.walk == "auto" and self.x < self.length else int(action)]
        x, y = self.x + dx, self.y + dy
        if (y == 0 and 0 <= x <= self.length) or (x == self.length and abs(y) == 1 and self.y == 0):
            self.x, self.y = x, y
        self.t += 1
        done = self.t >= self.episode_length
        info: dict[str, Any] = {}
        if done:
            success = self.y == self.goal
            reward = self.goal_reward if success else 0.0
            info["is_success"] = bool(success)
        else:
            reward = self.penalty if self.x < self.t else 0.0
        return self._obs(), float(reward), done, False, info


def register_tmaze() -> None:
    """Register ``TMaze-v0`` and ``TMaze-L<L>-v0`` (idempotent)."""
    ids = {"TMaze-v0": {}} | {f"TMaze-L{n}-v0": {"length": n} for n in LENGTHS}
    for env_id, kwargs in ids.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.tmaze:TMazeEnv", kwargs=kwargs)
