"""Training-time wrappers: opt-in task aids applied to the training envs only, never to evaluation.

A run selects them by name with one generic config key, ``train_wrappers`` (``{name: {option: value}}``)::

    train_agent --env MiniGrid-Memory --set train_wrappers.memory_aids.lookback_start=0.25
    make_env("MiniGrid-Memory", wrappers={"memory_aids": {"lookback_start": 0.25}})   # the same, in Python

Each wrapper wraps the base env (before the observation wrappers of :func:`envs.make_env`) and checks that it
applies to it. No default uses them: they are experiment knobs for studying how a task is learned, and a result that
needs one says so (results/studies/).

Wrappers (:data:`TRAIN_WRAPPERS`):

- ``memory_aids`` (:class:`MemoryStartAid`): MiniGrid-Memory start and layout aids - ``cue_start``,
  ``lookback_start``, ``faceback_start`` (shares of resets started where the cue is in view or close) and
  ``ordered_ends`` (a share of resets with one fixed order of the end objects).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

import gymnasium as gym
import numpy as np

__all__ = ["TRAIN_WRAPPERS", "MemoryStartAid", "apply_train_wrappers", "check_train_wrappers", "START_AIDS",
           "TRAINING_AIDS", "validate_start_aids", "validate_ordered_ends"]

_CUE_STREAM = 0xC0E  # MemoryStartAid's generator: SeedSequence([seed, this]), independent of the env's (seed)
_ORDER_STREAM = 0x0DE  # its generator for ordered_ends, so that the start draws are the same with or without it

#: The start aids of :class:`MemoryStartAid`, as train_agent and ``make_env`` name them.
START_AIDS = ("cue_start", "lookback_start", "faceback_start")
#: Every training aid of :class:`MemoryStartAid`: the start aids, then the layout aid ``ordered_ends``.
TRAINING_AIDS = START_AIDS + ("ordered_ends",)
_AID_SHARE_OF = {"cue_start": "resets started beside the cue",
                 "lookback_start": "resets started at the junction past the hallway, facing back",
                 "faceback_start": "resets started on minigrid's start cell, facing back",
                 "ordered_ends": "resets forced to the key at the upper end and the ball at the lower"}


def _validate_share(value: Any, name: str) -> float:
    """A training aid's share (one of :data:`TRAINING_AIDS`) as a float in [0, 1] (``None``: 0), or a one-line
    ``ValueError``."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}={value!r}: expected a number in [0, 1] (the share of {_AID_SHARE_OF[name]})")
    return float(value)


def _set_aids(given: tuple) -> list[str]:
    """``name=value`` of each aid that is set, in :data:`TRAINING_AIDS` order (``given`` in that order too)."""
    return [f"{k}={v!r}" for k, v in zip(TRAINING_AIDS, given) if v]


def validate_start_aids(cue_start: Any = 0.0, lookback_start: Any = 0.0,
                        faceback_start: Any = 0.0) -> tuple[float, float, float]:
    """The start shares checked, and their sum at most 1 (one draw per reset picks at most one aid)."""
    given = (cue_start, lookback_start, faceback_start)
    shares = tuple(_validate_share(v, k) for k, v in zip(START_AIDS, given))
    if sum(shares) > 1.0 + 1e-9:  # 0.1 + 0.2 + 0.7 is 1.0000000000000002 in floats
        raise ValueError(f"{' and '.join(_set_aids(given))}: expected shares summing to at most 1 (each reset takes "
                         "one start)")
    return shares


def validate_ordered_ends(ordered_ends: Any = 0.0) -> float:
    """``ordered_ends`` checked (``None`` is 0): a share of its own, not part of the start shares' sum."""
    return _validate_share(ordered_ends, "ordered_ends")


def start_aid_text(cue_start: Any = None, lookback_start: Any = None, faceback_start: Any = None,
                   ordered_ends: Any = None) -> str:
    """The first training aid that is set, as ``name=value`` for an error message (``"a training aid"`` if none
    is)."""
    return next(iter(_set_aids((cue_start, lookback_start, faceback_start, ordered_ends))), "a training aid")


class MemoryStartAid(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """MiniGrid-Memory only, training aids: a share of resets start the agent on a cell or heading that puts the cue
    in view, or brings it there by walking on (the start aids), and a share put the end objects in one fixed order
    (``ordered_ends``, below).

    minigrid's ``MemoryEnv`` starts the agent facing on (east) at a random cell of the start room or hallway, from
    x = 1 to the hallway's end; only at x = 1 is the cue (at x = 1, one row up) in its first view - 1 reset in 4 on
    MemoryS7 - and from the other cells the agent must turn or walk back to see it. After the env's own reset
    (layout, objects and episode are the env's; only the start cell and heading change) this wrapper moves or turns

    - a share ``cue_start`` of the agents to x = 1, still facing on, the cue just left of the agent: episodes where
      the cue is seen at the first step and must be held down the hallway;
    - a share ``lookback_start`` to the junction past the hallway's end (the cell between the two objects, one past
      minigrid's last start cell), facing back (west): the spot and heading where a policy that looks back for the
      cue arrives, so that the choice made from there is trained whether or not the policy has found the way to it
      yet. With minigrid's 7x7 view the cue and both objects are in this first view on MemoryS7 and S9 (and on the
      Random ids when their hallway is as short); on longer hallways, with a 5x5 view beyond S7, or with a 3x3 view
      the cue is out of sight from there;
    - a share ``faceback_start`` on minigrid's own start cell, turned to face back (west), towards the cue: with a
      3x3 view the cue is in sight facing west from x = 1 to 3 (the start room) and x - 3 steps ahead from a hallway
      cell x, so these episodes reward walking back to the cue, turning and holding it down the hallway - the search
      minigrid's east-facing starts ask for, less its first two turns. (With the 7x7 view the cue is in the first view
      facing west from every start cell of MemoryS7 and S9, so there this is one more "cue in view" start.)

    One draw per reset picks at most one of the three (their sum is at most 1). It draws from a generator of its own
    (seeded by ``reset(seed=...)``, on a stream apart from the env's), so the env's layouts are the same sequence as
    without it and which episodes it moves does not depend on their layout.

    A layout aid, ``ordered_ends``, acts on its own draw (from a second stream, so the start draws are the same with
    or without it): that share of resets are forced to one order of the two end objects, the key at the upper end and
    the ball at the lower (minigrid draws the order at random, so it is already so in half of the others; where it
    drew the ball up, the two objects and the success and failure cells swap). In those episodes the cue alone tells
    the side - key: up, ball: down - so holding it pays without looking at the end objects; in minigrid's episodes
    the side is the cue XOR which object is up, which the cue alone does not predict. Everything else is the env's
    own episode.

    Wrap the raw env (it reads and regenerates minigrid's dict observation). Evaluate without it: the task is
    minigrid's start and layout distribution.
    """

    def __init__(self, env: gym.Env, cue_start: float = 0.0, lookback_start: float = 0.0, faceback_start: float = 0.0,
                 ordered_ends: float = 0.0):
        gym.utils.RecordConstructorArgs.__init__(self, cue_start=cue_start, lookback_start=lookback_start,
                                                 faceback_start=faceback_start, ordered_ends=ordered_ends)
        gym.Wrapper.__init__(self, env)
        from minigrid.envs.memory import MemoryEnv

        if not isinstance(env.unwrapped, MemoryEnv):
            name = getattr(env.unwrapped.spec, "id", None) or type(env.unwrapped).__name__
            raise ValueError(f"{start_aid_text(cue_start, lookback_start, faceback_start, ordered_ends)} applies "
                             f"only to the MiniGrid-Memory envs, not {name!r}")
        self.cue_start, self.lookback_start, self.faceback_start = validate_start_aids(cue_start, lookback_start,
                                                                                       faceback_start)
        self.ordered_ends = validate_ordered_ends(ordered_ends)
        self._rng = np.random.default_rng()
        self._order_rng = np.random.default_rng()

    @property
    def p(self) -> float:
        """The share of resets moved or turned by any aid."""
        return self.cue_start + self.lookback_start + self.faceback_start

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:  # a stream of its own: default_rng(seed) would replay the env's generator, seeded alike
            self._rng = np.random.default_rng([seed, _CUE_STREAM])
            self._order_rng = np.random.default_rng([seed, _ORDER_STREAM])
        base = self.env.unwrapped
        if self.p > 0:
            draw = self._rng.random()
            if draw < self.p:
                if draw < self.cue_start:  # beside the cue, facing on (east)
                    base.agent_pos, base.agent_dir = np.array((1, base.height // 2)), 0
                elif draw < self.cue_start + self.lookback_start:  # the junction between the two objects
                    base.agent_pos, base.agent_dir = np.array((base.success_pos[0], base.height // 2)), 2  # west
                else:  # minigrid's own start cell, facing west (back towards the cue)
                    base.agent_dir = 2
                obs = base.gen_obs()
        if self.ordered_ends > 0 and self._order_rng.random() < self.ordered_ends:
            x, mid = base.success_pos[0], base.height // 2
            up, down = base.grid.get(x, mid - 2), base.grid.get(x, mid + 2)  # the objects, beyond the two end cells
            if up.type != "key":
                base.grid.set(x, mid - 2, down)
                base.grid.set(x, mid + 2, up)
                base.success_pos, base.failure_pos = base.failure_pos, base.success_pos
                obs = base.gen_obs()
        return obs, info


#: name -> wrapper class; a wrapper's options are its constructor's keyword arguments after ``env``
TRAIN_WRAPPERS: Dict[str, type] = {"memory_aids": MemoryStartAid}


def _options(cls: type) -> list[str]:
    return [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "env")]


def check_train_wrappers(wrappers: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{name: {option: value}}`` checked for known names and options (values are checked by the wrapper when it is
    built); a one-line ``ValueError`` otherwise."""
    if not isinstance(wrappers, Mapping):
        raise ValueError(f"train_wrappers={wrappers!r}: expected a mapping of wrapper name to options, e.g. "
                         "{memory_aids: {cue_start: 0.25}}")
    out: Dict[str, Dict[str, Any]] = {}
    for name, options in wrappers.items():
        if name not in TRAIN_WRAPPERS:
            raise ValueError(f"train wrapper {name!r} is unknown: expected one of {', '.join(TRAIN_WRAPPERS)}")
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ValueError(f"train wrapper {name!r}: options {options!r} are not a mapping; expected e.g. "
                             f"{{{_options(TRAIN_WRAPPERS[name])[0]}: ...}}")
        known = _options(TRAIN_WRAPPERS[name])
        for key in options:
            if key not in known:
                raise ValueError(f"train wrapper {name!r} has no option {key!r}: expected some of {', '.join(known)}")
        out[str(name)] = dict(options)
    return out


def apply_train_wrappers(env: gym.Env, wrappers: Mapping[str, Any] | None) -> gym.Env:
    """``env`` wrapped in each named wrapper, in the order given (nothing when ``wrappers`` is empty or None)."""
    for name, options in check_train_wrappers(wrappers or {}).items():
        env = TRAIN_WRAPPERS[name](env, **options)
    return env
