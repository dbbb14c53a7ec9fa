"""Memoryless control core.

The same place in the network as a recurrent core (``num_layers`` layers of ``hidden_size`` units, tanh), but no
recurrence: each step sees only its own input. Any task on which this core scores as well as GRU/LSTM does not test
memory (the control used in e.g. Morad et al., "POPGym: Benchmarking Partially Observable Reinforcement Learning",
ICLR 2023, https://arxiv.org/abs/2303.01859).

State: ``[B, 0]`` (empty; kept so the interface is the same for every core).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .base import MemoryCore


class MLPCore(MemoryCore):
    name = "mlp"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__(input_size, hidden_size, num_layers)
        layers: list[nn.Module] = []
        for k in range(num_layers):
            layers += [nn.Linear(input_size if k == 0 else hidden_size, hidden_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    @property
    def state_shape(self) -> Tuple[int, ...]:
        return (0,)

    @property
    def resets_in_kernel(self) -> bool:
        return True  # no state: a sequence with resets is one call anyway

    def _step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), state

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), state

    def forward_sequence(self, x: torch.Tensor, state: torch.Tensor,
                         episode_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # No state to reset: one call over the whole sequence, whatever the resets.
        self._check_sequence(x, state, episode_start)
        return self.net(x), state
