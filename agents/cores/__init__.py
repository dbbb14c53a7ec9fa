"""Memory cores: one file per core, one line per core in ``CORES``.

``CORES[name](input_size=..., hidden_size=..., num_layers=...)`` builds a core; see ``base.MemoryCore`` for the
interface. ``match_hidden_size`` sizes one core to another's parameter count (compare cores at equal parameters).
"""

from __future__ import annotations

import difflib
from typing import Dict, Type

import torch

from .base import MemoryCore
from .gru import GRUCore
from .lstm import LSTMCore
from .mlp import MLPCore

CORES: Dict[str, Type[MemoryCore]] = {
    "gru": GRUCore,
    "lstm": LSTMCore,
    "mlp": MLPCore,
}


def get_core_class(name: str) -> Type[MemoryCore]:
    """The core class registered as ``name``; a clear error listing the known cores otherwise."""
    if name not in CORES:
        close = difflib.get_close_matches(str(name), list(CORES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown core {name!r}{hint}: expected one of {', '.join(sorted(CORES))}")
    return CORES[name]


def make_core(name: str, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs) -> MemoryCore:
    return get_core_class(name)(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, **kwargs)


def core_param_count(name: str, input_size: int, hidden_size: int, num_layers: int = 1) -> int:
    """Number of trainable parameters of core ``name`` at this size (built on the meta device: no memory used)."""
    with torch.device("meta"):
        core = make_core(name, input_size, hidden_size, num_layers)
    return sum(p.numel() for p in core.parameters())


def match_hidden_size(
    core: str, target_core: str, target_hidden_size: int, input_size: int, num_layers: int = 1,
    target_num_layers: int | None = None, max_hidden: int = 1 << 16,
) -> int:
    """Hidden size at which ``core`` has the parameter count closest to ``target_core`` at ``target_hidden_size``.

    Example: ``match_hidden_size("gru", "lstm", 128, input_size=64)`` -> 152 (99,408 vs 99,328 parameters).
    Parameter count grows monotonically with hidden size, so a bisection finds the closest size.
    """
    target = core_param_count(target_core, input_size, target_hidden_size, target_num_layers or num_layers)
    lo, hi = 1, max_hidden
    while lo < hi:
        mid = (lo + hi) // 2
        if core_param_count(core, input_size, mid, num_layers) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min((h for h in (lo - 1, lo) if h >= 1),
               key=lambda h: abs(core_param_count(core, input_size, h, num_layers) - target))
    return best


__all__ = ["CORES", "MemoryCore", "GRUCore", "LSTMCore", "MLPCore", "get_core_class", "make_core",
           "core_param_count", "match_hidden_size"]
