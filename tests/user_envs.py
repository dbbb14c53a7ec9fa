"""A user's own env with a Dict observation, registered at import (``tests.user_envs:CueDict-v0``): a cue shown only
at the first step, a step counter, and a reward at the last step for repeating the cue."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CueDictEnv(gym.Env):
    """``{"cue": Discrete(3) (0/1 at t=0, then 2 = no cue), "t": Box [0, 1]}``; action Discrete(2); ``length``
    steps; +1 at the last step if the action equals the cue, else -1."""

    def __init__(self, length: int = 4) -> None:
        self.length = int(length)
        self.observation_space = spaces.Dict({"cue": spaces.Discrete(3), "t": spaces.Box(0.0, 1.0, (1,), np.float32)})
        self.action_space = spaces.Discrete(2)

    def _obs(self):
        return {"cue": self.cue if self.t == 0 else 2, "t": np.array([self.t / self.length], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        reward = (1.0 if int(action) == self.cue else -1.0) if done else 0.0
        return self._obs(), reward, done, False, {}


if "CueDict-v0" not in gym.registry:
    gym.register("CueDict-v0", entry_point=f"{__name__}:CueDictEnv", max_episode_steps=50)
