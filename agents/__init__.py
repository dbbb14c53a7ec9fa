"""recurrent-agents: recurrent PPO with swappable memory cores.

Public surface::

    from agents import RecurrentPPO, load_policy, CORES
"""

from .cores import CORES, MemoryCore, core_param_count, match_hidden_size
from .policy import RecurrentActorCriticPolicy
from .ppo import RecurrentPPO
from .serialization import load_policy, read_policy_config

__all__ = ["CORES", "MemoryCore", "RecurrentPPO", "RecurrentActorCriticPolicy", "load_policy", "read_policy_config",
           "core_param_count", "match_hidden_size"]
__version__ = "0.1.0"
