"""recurrent-agents: recurrent PPO with swappable memory cores.

Public surface::

    from agents import RecurrentPPO, load_policy, CORES
    from agents import export_policy                  # ONNX (+ int8) export, see agents.export
    from agents.runtime import OnnxPolicy             # run an export with ONNX Runtime only (no torch import)

Names are imported on first use, so ``import agents.runtime`` (or ``train_agent --help``) does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "CORES": ".cores", "MemoryCore": ".cores", "core_param_count": ".cores", "match_hidden_size": ".cores",
    "RecurrentActorCriticPolicy": ".policy",
    "RecurrentPPO": ".ppo",
    "load_policy": ".serialization", "read_policy_config": ".serialization",
    "export_policy": ".export",
    "OnnxPolicy": ".runtime",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
