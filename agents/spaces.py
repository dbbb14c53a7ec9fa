"""Gymnasium spaces <-> plain data (JSON), so a saved policy carries its spaces without pickling objects."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from gymnasium import spaces

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, or a Dict / Tuple of those"


def space_to_config(space: spaces.Space) -> Dict[str, Any]:
    """A JSON-serialisable description of ``space`` (:data:`SUPPORTED`; a Dict keeps its keys' order)."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": space.low.tolist(), "high": space.high.tolist()}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        cfg = {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
        if np.any(space.start != 0):
            cfg["start"] = space.start.tolist()
        return cfg
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": int(space.n) if np.ndim(space.n) == 0 else [int(k) for k in space.n]}
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        inner = space.spaces.items() if isinstance(space, spaces.Dict) else enumerate(space.spaces)
        subs = []
        for key, sub in inner:
            if isinstance(sub, (spaces.Dict, spaces.Tuple)):
                raise ValueError(f"space {space!r} nests a {type(sub).__name__} (at {key!r}): expected {SUPPORTED} "
                                 "(one level; flatten deeper nesting first)")
            subs.append([key, space_to_config(sub)] if isinstance(space, spaces.Dict) else space_to_config(sub))
        return {"type": type(space).__name__, "spaces": subs}
    raise ValueError(f"space {space!r} is not supported: expected {SUPPORTED}")


def space_from_config(cfg: Dict[str, Any]) -> spaces.Space:
    """Inverse of :func:`space_to_config`."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    if kind == "Box":
        dtype = np.dtype(cfg["dtype"])
        return spaces.Box(low=np.array(cfg["low"], dtype=dtype), high=np.array(cfg["high"], dtype=dtype),
                          shape=tuple(cfg["shape"]), dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(cfg["n"]), start=int(cfg.get("start", 0)))
    if kind == "MultiDiscrete":
        start = cfg.get("start")
        return spaces.MultiDiscrete(np.array(cfg["nvec"]), start=None if start is None else np.array(start))
    if kind == "MultiBinary":
        return spaces.MultiBinary(cfg["n"])
    if kind == "Dict":
        return spaces.Dict({key: space_from_config(sub) for key, sub in cfg["spaces"]})
    if kind == "Tuple":
        return spaces.Tuple([space_from_config(sub) for sub in cfg["spaces"]])
    raise ValueError(f"space description {cfg!r} is not understood: expected a dict with type {SUPPORTED}")
