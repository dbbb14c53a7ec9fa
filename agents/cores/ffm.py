"""FFM memory core (Fast and Forgetful Memory).

Morad, Kortvelesy, Liwicki, Prorok, "Reinforcement Learning with Fast and Forgetful Memory", NeurIPS 2023
(https://arxiv.org/abs/2310.04128). Designed for RL: an input-gated trace of ``memory_size`` channels is
accumulated into ``context_size / 2`` complex filters per channel, each with a learned decay and frequency,

    x~_t = W_x x_t * sigmoid(W_i x_t)
    S_t  = gamma * S_{t-1} + x~_t       (S: [memory_size, context_size / 2] complex; gamma_jk = exp(a_j + i b_k))
    z_t  = W_m [Re S_t, Im S_t],  q_t = sigmoid(W_q x_t)
    y_t  = LayerNorm(z_t) * q_t + W_s x_t * (1 - q_t)

with the paper's initialisation: decays ``a`` linearly spaced from ``-0.673`` (a value fades to 1% in about 7
steps) to ``log(forgotten_at) / max_period`` (1% after ``max_period`` steps), periods ``2 pi / b`` linearly spaced
in ``[min_period, max_period]``; defaults from the authors' RL configuration (memory 32, context 8, periods 1 and
1,024). The authors compute the trace in closed form in float64; here it is the same recurrence through the scan,
in float32, where no term grows. ``hidden_size`` is the output width; ``num_layers`` stacks FFM cells.

State: ``[B, num_layers, memory_size * context_size]`` (the complex trace as real and imaginary parts).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from .linear import LinearRecurrentCore

#: the authors' decay bound for float64 over 1,024 steps: log(float64 max) / 1024 - 0.01
_DECAY_LIMIT = math.log(torch.finfo(torch.float64).max) / 1024 - 0.01


class FFMLayer(nn.Module):
    def __init__(self, input_size: int, output_size: int, memory_size: int, context_size: int, min_period: float,
                 max_period: float, forgotten_at: float) -> None:
        super().__init__()
        self.memory_size, self.output_size = memory_size, output_size
        self.pre = nn.Linear(input_size, 2 * memory_size + 2 * output_size)
        self.mix = nn.Linear(memory_size * context_size, output_size)
        self.ln_out = nn.LayerNorm(output_size, elementwise_affine=False)
        a_low = -_DECAY_LIMIT + 0.01
        a_high = max(min(-1e-6, math.log(forgotten_at) / max_period), a_low)
        self.a = nn.Parameter(torch.linspace(a_low, a_high, memory_size))
        self.b = nn.Parameter(2 * math.pi / torch.linspace(min_period, max_period, context_size // 2))

    def decay(self) -> torch.Tensor:
        """gamma as ``[memory_size, context_size / 2, 2]`` (real, imaginary)."""
        mod = torch.exp(self.a.clamp(min=-_DECAY_LIMIT, max=-1e-8))[:, None]
        return torch.stack((mod * torch.cos(self.b)[None], mod * torch.sin(self.b)[None]), dim=-1)


class FFMCore(LinearRecurrentCore):
    name = "ffm"
    complex_state = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, memory_size: int = 32,
                 context_size: int = 8, min_period: float = 1.0, max_period: float = 1024.0,
                 forgotten_at: float = 0.01, scan: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, scan)
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
            raise ValueError(f"memory_size={memory_size!r}: expected a positive integer")
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2 or context_size % 2:
            raise ValueError(f"context_size={context_size!r}: expected an even integer >= 2 (real and imaginary "
                             "parts of context_size / 2 filters)")
        if not 0 < min_period <= max_period:
            raise ValueError(f"min_period={min_period!r}, max_period={max_period!r}: expected 0 < min <= max")
        if not 0 < forgotten_at < 1:
            raise ValueError(f"forgotten_at={forgotten_at!r}: expected a fraction in (0, 1)")
        self.memory_size, self.context_size = memory_size, context_size
        self.min_period, self.max_period, self.forgotten_at = min_period, max_period, forgotten_at
        self.layers = nn.ModuleList(
            FFMLayer(self.layer_input_size(k), hidden_size, memory_size, context_size, min_period, max_period,
                     forgotten_at) for k in range(num_layers))

    @property
    def h_shape(self) -> Tuple[int, ...]:
        return (self.memory_size, self.context_size // 2, 2)

    def _coefficients(self, k: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[torch.Tensor, ...]]:
        layer = self.layers[k]
        m, H = self.memory_size, self.hidden_size
        value, thru, gates = layer.pre(x).split([m, H, m + H], dim=-1)
        trace = value * torch.sigmoid(gates[..., :m])  # [T, B, m], real
        b = torch.stack((trace, torch.zeros_like(trace)), dim=-1).unsqueeze(-2)  # [T, B, m, 1, 2]
        b = b.expand(*trace.shape, self.context_size // 2, 2)
        return self._constant(k, "decay", layer.decay)[None, None], b, (thru, torch.sigmoid(gates[..., m:]))

    def _readout(self, k: int, h: torch.Tensor, context: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        thru, q = context
        layer = self.layers[k]
        return layer.ln_out(layer.mix(h.flatten(-3))) * q + thru * (1.0 - q)
