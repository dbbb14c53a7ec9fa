"""minGRU memory core.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, "Were RNNs All We Needed?", 2024 (https://arxiv.org/abs/2410.01201).
A GRU whose gates read only the input, so the recurrence is linear and a sequence is one scan:

    z_t = sigmoid(W_z x_t),  h~_t = g(W_h x_t),  h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

``g`` is the paper's ``g(x) = x + 0.5 if x >= 0 else sigmoid(x)`` (its log-space variant's positive candidate;
``candidate="g"``, the default) or the identity (``candidate="linear"``, its plain variant). The paper stacks
minGRU layers with residual connections, normalisation and a feed-forward block for language modelling; this core
stacks plain layers (``num_layers``), each ``hidden_size`` wide, like the GRU core.

State: ``[B, num_layers, hidden_size]``. Parameters per layer: ``2 * hidden_size * (inputs + 1)``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .linear import LinearRecurrentCore

CANDIDATES = ("g", "linear")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive candidate activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous);
    written as ``relu(x) + sigmoid(min(x, 0))``, the same values in fewer, cheaper passes than a ``where``."""
    return F.relu(x) + torch.sigmoid(torch.clamp(x, max=0.0))


class MinGRUCore(LinearRecurrentCore):
    name = "mingru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, candidate: str = "g",
                 scan: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, scan)
        if candidate not in CANDIDATES:
            raise ValueError(f"candidate={candidate!r}: expected one of {', '.join(CANDIDATES)}")
        self.candidate = candidate
        self.layers = nn.ModuleList(nn.Linear(self.layer_input_size(k), 2 * hidden_size) for k in range(num_layers))

    @property
    def h_shape(self) -> Tuple[int, ...]:
        return (self.hidden_size,)

    def _coefficients(self, k: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, None]:
        gate, cand = self.layers[k](x).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        return 1.0 - z, z * (g(cand) if self.candidate == "g" else cand), None

    def _readout(self, k: int, h: torch.Tensor, context: None) -> torch.Tensor:
        return h
