"""Observations of any supported space <-> one flat float32 vector per env (the policy's network input).

A policy for a Discrete, MultiDiscrete, MultiBinary, Dict or Tuple observation space runs its network on a *packed*
observation: every leaf of the space flattened and written side by side, as numbers, into one float32 vector of
``size`` entries (a Discrete leaf is its integer value, one entry; a Box leaf its values, row-major). The encoder
turns the packed vector into features as SB3's preprocessing does (``agents.encoders.CombinedEncoder``: one-hot for
discrete parts, 0/1 floats for binary parts, Box parts as they are), so the rollout buffer, the sequence training and
the exported ONNX graph all handle one tensor whatever the space.

This module needs only numpy and works from the plain-data description of a space (``agents.spaces
.space_to_config``), so the torch-free ONNX runtime packs observations exactly as the torch policy does.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

#: spaces that may appear as leaves (alone or inside one Dict / Tuple)
LEAF_TYPES = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")


class Leaf:
    """One leaf of a space: where it sits in the observation (``path``) and in the packed vector (``offset``)."""

    def __init__(self, path: Tuple[Any, ...], cfg: Dict[str, Any], offset: int) -> None:
        self.path, self.kind, self.offset = path, cfg["type"], offset
        if self.kind == "Box":
            self.shape = tuple(cfg["shape"])
        elif self.kind == "Discrete":
            self.shape = ()
            self.n, self.start = np.array([int(cfg["n"])]), np.array([int(cfg.get("start", 0))])
        elif self.kind == "MultiDiscrete":
            nvec = np.asarray(cfg["nvec"], dtype=np.int64)
            self.shape = tuple(nvec.shape)
            self.n = nvec.reshape(-1)
            start = cfg.get("start")
            self.start = np.zeros_like(self.n) if start is None else np.asarray(start, dtype=np.int64).reshape(-1)
        elif self.kind == "MultiBinary":
            n = cfg["n"]
            self.shape = (int(n),) if isinstance(n, (int, np.integer)) else tuple(int(k) for k in n)
        else:
            raise ValueError(f"space {cfg.get('type')!r} at {self.name} cannot be a leaf: expected one of "
                             f"{', '.join(LEAF_TYPES)}")
        self.width = int(np.prod(self.shape, dtype=np.int64))

    @property
    def name(self) -> str:
        return "obs" + "".join(f"[{p!r}]" for p in self.path)

    def check(self, values: np.ndarray) -> None:
        """Values outside the leaf's space: one-line error naming the value and the expected range."""
        if self.kind == "Box":
            return
        if self.kind == "MultiBinary":
            bad = (values != 0) & (values != 1)
            expected = "0 or 1"
        else:
            low = np.broadcast_to(self.start, values.shape[-1:])
            high = low + np.broadcast_to(self.n, values.shape[-1:])
            bad = (values < low) | (values >= high) | (values != np.round(values))
            expected = (f"integers in [{int(self.start[0])}, {int(self.start[0] + self.n[0])})"
                        if self.kind == "Discrete" else f"integers in [start, start + nvec) per entry, nvec "
                                                        f"{self.n.tolist()}")
        if np.any(bad):
            value = values[bad].reshape(-1)[0].item()
            raise ValueError(f"{self.name} holds {value!r}: expected {expected} ({self.kind} space)")


def leaves_of(cfg: Dict[str, Any]) -> List[Leaf]:
    """The leaves of a space description, in packing order (a Dict's keys in the space's order)."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    if kind in ("Dict", "Tuple"):
        items = [(k, sub) for k, sub in cfg["spaces"]] if kind == "Dict" else list(enumerate(cfg["spaces"]))
        leaves, offset = [], 0
        for key, sub in items:
            if isinstance(sub, dict) and sub.get("type") in ("Dict", "Tuple"):
                raise ValueError(f"a {sub['type']} inside a {kind} (at obs[{key!r}]) is not supported: expected "
                                 f"one level of Dict or Tuple with leaves {', '.join(LEAF_TYPES)} (flatten it first)")
            leaf = Leaf((key,), sub, offset)
            leaves.append(leaf)
            offset += leaf.width
        return leaves
    return [Leaf((), cfg, 0)]


class ObsPacker:
    """Packs observations of one space (given as its plain-data description) into ``[B, size]`` float32."""

    def __init__(self, space_cfg: Dict[str, Any]) -> None:
        self.kind = space_cfg["type"]
        self.leaves = leaves_of(space_cfg)
        self.size = sum(leaf.width for leaf in self.leaves)

    def _parts(self, obs) -> List[Any]:
        if self.kind == "Dict":
            if not isinstance(obs, dict):
                raise ValueError(f"observation is a {type(obs).__name__}: expected a dict with keys "
                                 f"{[leaf.path[0] for leaf in self.leaves]}")
            missing = [leaf.path[0] for leaf in self.leaves if leaf.path[0] not in obs]
            if missing:
                raise ValueError(f"observation lacks key(s) {missing}: expected keys "
                                 f"{[leaf.path[0] for leaf in self.leaves]}")
            return [obs[leaf.path[0]] for leaf in self.leaves]
        if self.kind == "Tuple":
            if not isinstance(obs, (tuple, list)) or len(obs) != len(self.leaves):
                got = f"a {type(obs).__name__} of {len(obs)}" if isinstance(obs, (tuple, list)) else \
                    f"a {type(obs).__name__}"
                raise ValueError(f"observation is {got}: expected a tuple of {len(self.leaves)} parts")
            return list(obs)
        return [obs]

    def pack(self, obs) -> Tuple[np.ndarray, bool]:
        """One observation or a batch (each leaf with a leading batch dim, as a ``VecEnv`` returns them) ->
        ``(packed [B, size] float32, single)``; ``single`` is True for one unbatched observation (``B = 1``)."""
        parts = [np.asarray(p) for p in self._parts(obs)]
        single, batch = None, None
        for leaf, arr in zip(self.leaves, parts):
            if arr.shape == leaf.shape:
                s, b = True, 1
            elif arr.ndim == len(leaf.shape) + 1 and arr.shape[1:] == leaf.shape:
                s, b = False, arr.shape[0]
            else:
                raise ValueError(f"{leaf.name} has shape {arr.shape}: expected {leaf.shape} or [B, *{leaf.shape}] "
                                 f"({leaf.kind} space)")
            if single is None:
                single, batch = s, b
            elif (s, b) != (single, batch):
                raise ValueError(f"{leaf.name} has shape {arr.shape} but the observation's other parts are "
                                 f"{'unbatched' if single else f'a batch of {batch}'}: expected every part alike")
        out = np.empty((batch, self.size), dtype=np.float32)
        for leaf, arr in zip(self.leaves, parts):
            flat = arr.reshape(batch, leaf.width)
            leaf.check(flat)
            out[:, leaf.offset: leaf.offset + leaf.width] = flat
        return out, bool(single)

    def stack(self, samples: Sequence[Any]):
        """A batch (as a ``VecEnv`` returns it) from a list of single observations."""
        if self.kind == "Dict":
            return {leaf.path[0]: np.stack([s[leaf.path[0]] for s in samples]) for leaf in self.leaves}
        if self.kind == "Tuple":
            return tuple(np.stack([s[i] for s in samples]) for i in range(len(self.leaves)))
        return np.stack([np.asarray(s) for s in samples])

    def layout(self) -> Dict[str, Any]:
        """Where each leaf sits in the packed vector and how the encoder reads it (stored in ONNX manifests)."""
        return {"size": self.size,
                "leaves": [{"path": list(leaf.path), "type": leaf.kind, "offset": leaf.offset, "width": leaf.width,
                            "shape": list(leaf.shape)} for leaf in self.leaves]}


def obs_at(obs, i: int):
    """Observation ``i`` of a batch as a VecEnv returns it (an array, or a dict / tuple of arrays)."""
    if isinstance(obs, dict):
        return {k: v[i] for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(v[i] for v in obs)
    return obs[i]


def is_structured(space_cfg: Dict[str, Any]) -> bool:
    """True for the spaces whose observations are packed (everything but a top-level Box)."""
    return space_cfg.get("type") != "Box"
