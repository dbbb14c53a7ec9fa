"""LRU memory core (Linear Recurrent Unit).

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting Recurrent Neural Networks for Long Sequences",
ICML 2023 (https://arxiv.org/abs/2303.06349). A complex diagonal recurrence with the paper's exponential
parametrisation and normalisation:

    lambda = exp(-exp(nu_log) + i exp(theta_log)),  gamma = exp(gamma_log) (init sqrt(1 - |lambda|^2))
    h_t = lambda * h_{t-1} + gamma * (B x_t),  y_t = Re(C h_t) + D x_t

``|lambda|`` starts uniform on the ring ``[r_min, r_max]`` and its phase uniform in ``[0, max_phase]`` (the paper's
defaults 0, 1 and 2 pi). ``hidden_size`` is both the state size N (complex) and the output width; ``D`` is the
paper's diagonal skip where a layer's input is ``hidden_size`` wide, and a linear map where it is not (the first
layer). The paper wraps each LRU in a block with normalisation, a GLU/MLP and a residual; this core stacks plain
LRU layers (``num_layers``), the heads after it supplying the nonlinearity.

State: ``[B, num_layers, 2 * hidden_size]`` (real and imaginary parts).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .linear import LinearRecurrentCore


class LRULayer(nn.Module):
    def __init__(self, input_size: int, size: int, r_min: float, r_max: float, max_phase: float) -> None:
        super().__init__()
        u1, u2 = torch.rand(size), torch.rand(size)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
        theta_log = torch.log(max_phase * u2)
        lam_abs = torch.exp(-torch.exp(nu_log))
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1.0 - lam_abs ** 2)))
        # B and C complex, as real and imaginary parts (contiguous, so each product is one plain matmul)
        self.B_re = nn.Parameter(torch.randn(size, input_size) / math.sqrt(2 * input_size))
        self.B_im = nn.Parameter(torch.randn(size, input_size) / math.sqrt(2 * input_size))
        self.C_re = nn.Parameter(torch.randn(size, size) / math.sqrt(size))
        self.C_im = nn.Parameter(torch.randn(size, size) / math.sqrt(size))
        if input_size == size:
            self.D = nn.Parameter(torch.randn(size))
            self.skip = None
        else:
            self.register_parameter("D", None)
            self.skip = nn.Linear(input_size, size, bias=False)

    def decay(self) -> torch.Tensor:
        """lambda as ``[size, 2]`` (real, imaginary)."""
        mod = torch.exp(-torch.exp(self.nu_log))
        phase = torch.exp(self.theta_log)
        return torch.stack((mod * torch.cos(phase), mod * torch.sin(phase)), dim=-1)


class LRUCore(LinearRecurrentCore):
    name = "lru"
    complex_state = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, r_min: float = 0.0,
                 r_max: float = 1.0, max_phase: float = 2 * math.pi, scan: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, scan)
        if not (0.0 <= r_min < r_max <= 1.0):
            raise ValueError(f"r_min={r_min!r}, r_max={r_max!r}: expected 0 <= r_min < r_max <= 1")
        if not max_phase > 0:
            raise ValueError(f"max_phase={max_phase!r}: expected a positive number")
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.layers = nn.ModuleList(LRULayer(self.layer_input_size(k), hidden_size, r_min, r_max, max_phase)
                                    for k in range(num_layers))

    @property
    def h_shape(self) -> Tuple[int, ...]:
        return (self.hidden_size, 2)

    def _coefficients(self, k: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer = self.layers[k]
        gamma = self._constant(k, "gamma", lambda: torch.exp(layer.gamma_log))
        bx = torch.stack((F.linear(x, layer.B_re) * gamma, F.linear(x, layer.B_im) * gamma), dim=-1)  # [T, B, N, 2]
        return self._constant(k, "decay", layer.decay)[None, None], bx, x

    def _readout(self, k: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[k]
        y = F.linear(h[..., 0], layer.C_re) - F.linear(h[..., 1], layer.C_im)  # Re(C h)
        return y + (layer.D * x if layer.skip is None else layer.skip(x))
