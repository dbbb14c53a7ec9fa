"""Memory cores: one file per core, one line per core in ``CORES``.

``CORES[name](input_size=..., hidden_size=..., num_layers=...)`` builds a core; see ``base.MemoryCore`` for the
interface. A core's own options are its constructor's keyword arguments (:func:`core_options`). A user's core is
named ``"module:Class"`` (a ``MemoryCore`` subclass, imported on first use) wherever a core name is taken.
``match_hidden_size`` sizes one core to another's parameter count (compare cores at equal parameters).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import inspect
import sys
from typing import Any, Dict, Iterator, Mapping, Type

import torch

from .base import MemoryCore
from .ffm import FFMCore
from .gru import GRUCore
from .lru import LRUCore
from .lstm import LSTMCore
from .mingru import MinGRUCore
from .mlp import MLPCore
from .s6 import S6Core

CORES: Dict[str, Type[MemoryCore]] = {
    "gru": GRUCore,
    "lstm": LSTMCore,
    "mlp": MLPCore,
    "mingru": MinGRUCore,
    "lru": LRUCore,
    "ffm": FFMCore,
    "s6": S6Core,
}


#: the constructor arguments every core takes; the rest of a core's signature are its own options
BASE_ARGS = ("input_size", "hidden_size", "num_layers")


#: False while a file is being loaded: a ``module:Class`` core named by the file is then taken only from a module that
#: is already imported (loading a file never imports a module it names; see :func:`file_names_no_imports`)
_IMPORTS_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("core_imports_allowed", default=True)


@contextlib.contextmanager
def file_names_no_imports(active: bool = True) -> Iterator[None]:
    """While active, :func:`get_core_class` resolves ``module:Class`` only from modules already in ``sys.modules``
    (what a loader uses for a core named by a file, so that loading the file imports nothing)."""
    token = _IMPORTS_ALLOWED.set(not active)
    try:
        yield
    finally:
        _IMPORTS_ALLOWED.reset(token)


def _import_core(name: str) -> Type[MemoryCore]:
    module_name, _, attr = name.partition(":")
    if not _IMPORTS_ALLOWED.get() and module_name not in sys.modules:
        raise ValueError(f"core {name!r}: module {module_name!r} is not imported, and loading a file does not import "
                         f"the modules it names; expected `import {module_name}` before loading (or trust_file=True "
                         "for a file you trust)")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError) as exc:
        raise ValueError(f"core {name!r}: cannot import module {module_name!r} ({exc}); expected an importable "
                         "module:Class") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"core {name!r}: module {module_name!r} has no attribute {attr!r}; expected module:Class")
    if not (isinstance(cls, type) and issubclass(cls, MemoryCore)):
        raise ValueError(f"core {name!r} is {cls!r}: expected a subclass of agents.cores.MemoryCore")
    return cls


def get_core_class(name: str) -> Type[MemoryCore]:
    """The core class registered as ``name``, or the class a ``"module:Class"`` name imports; a clear error listing
    the known cores otherwise."""
    if isinstance(name, str) and ":" in name:
        return _import_core(name)
    if name not in CORES:
        close = difflib.get_close_matches(str(name), list(CORES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown core {name!r}{hint}: expected one of {', '.join(sorted(CORES))} or a "
                         "module:Class of your own")
    return CORES[name]


def core_options(name: str) -> Dict[str, Any]:
    """The options core ``name`` declares: keyword argument -> default (``inspect.Parameter.empty``: required)."""
    params = inspect.signature(get_core_class(name).__init__).parameters
    return {k: p.default for k, p in params.items()
            if k != "self" and k not in BASE_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def takes_any_option(name: str) -> bool:
    """True when core ``name``'s constructor takes ``**kwargs`` (it then checks its options itself)."""
    params = inspect.signature(get_core_class(name).__init__).parameters
    return any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_core_kwargs(name: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """``kwargs`` checked against core ``name``'s options: unknown or missing required ones are a one-line
    ``ValueError`` naming them and the core's options. (The core checks the values when it is built.)"""
    options = core_options(name)
    listed = ", ".join(f"{k} (required)" if d is inspect.Parameter.empty else f"{k}={d!r}" for k, d in options.items())
    listed = listed or "none"
    unknown = [] if takes_any_option(name) else [k for k in kwargs if k not in options]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(options), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"core {name!r} has no option {unknown[0]!r}{hint}: its options are {listed}")
    missing = [k for k, d in options.items() if d is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"core {name!r} needs option {missing[0]!r}: its options are {listed}")
    return dict(kwargs)


def make_core(name: str, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs) -> MemoryCore:
    return get_core_class(name)(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, **kwargs)


def core_param_count(name: str, input_size: int, hidden_size: int, num_layers: int = 1,
                     **kwargs: Any) -> int:
    """Number of trainable parameters of core ``name`` at this size (built on the meta device: no memory used);
    ``kwargs``: the core's options (a required one must be given)."""
    with torch.device("meta"):
        core = make_core(name, input_size, hidden_size, num_layers, **kwargs)
    return sum(p.numel() for p in core.parameters())


def match_hidden_size(
    core: str, target_core: str, target_hidden_size: int, input_size: int, num_layers: int = 1,
    target_num_layers: int | None = None, max_hidden: int = 1 << 16, core_kwargs: Mapping[str, Any] | None = None,
) -> int:
    """Hidden size at which ``core`` has the parameter count closest to ``target_core`` at ``target_hidden_size``.

    Example: ``match_hidden_size("gru", "lstm", 128, input_size=64)`` -> 152 (99,408 vs 99,328 parameters).
    Parameter count grows monotonically with hidden size, so a bisection finds the closest size.
    """
    target = core_param_count(target_core, input_size, target_hidden_size, target_num_layers or num_layers)
    options = dict(core_kwargs or {})
    lo, hi = 1, max_hidden
    while lo < hi:
        mid = (lo + hi) // 2
        if core_param_count(core, input_size, mid, num_layers, **options) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min((h for h in (lo - 1, lo) if h >= 1),
               key=lambda h: abs(core_param_count(core, input_size, h, num_layers, **options) - target))
    return best


__all__ = ["CORES", "MemoryCore", "GRUCore", "LSTMCore", "MLPCore", "MinGRUCore", "LRUCore", "FFMCore", "S6Core", "get_core_class", "make_core", "core_options",
           "check_core_kwargs", "core_param_count", "match_hidden_size", "file_names_no_imports"]
