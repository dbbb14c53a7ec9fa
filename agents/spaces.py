"""Gymnasium spaces <-> plain data (JSON), so a saved policy carries its spaces without pickling objects."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from gymnasium import spaces


def space_to_config(space: spaces.Space) -> Dict[str, Any]:
    """A JSON-serialisable description of ``space`` (Box, Discrete, MultiDiscrete, MultiBinary)."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": space.low.tolist(), "high": space.high.tolist()}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": space.n if isinstance(space.n, int) else list(space.n)}
    raise ValueError(f"space {space!r} is not supported: expected Box, Discrete, MultiDiscrete or MultiBinary")


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
        return spaces.MultiDiscrete(np.array(cfg["nvec"]))
    if kind == "MultiBinary":
        return spaces.MultiBinary(cfg["n"])
    raise ValueError(f"space description {cfg!r} is not understood: expected a dict with type Box, Discrete, "
                     "MultiDiscrete or MultiBinary")
