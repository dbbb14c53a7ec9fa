"""S6 memory core: a Mamba-style selective state-space model, in plain PyTorch.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023
(https://arxiv.org/abs/2312.00752). Each layer is the Mamba block's mixer: the input is projected to
``E = expand * hidden_size`` channels and a gate, the channels go through a short causal depthwise convolution and
SiLU, and a diagonal SSM whose step size ``dt``, input matrix ``B`` and output matrix ``C`` depend on the input
(the "selection"):

    dt_t = softplus(W_dt (W_r u_t) + b_dt),  a_t = exp(dt_t * A),  h_t = a_t * h_{t-1} + dt_t * B_t * u_t
    y_t  = (C_t . h_t + D * u_t) * silu(z_t),  out_t = W_o y_t                     (h: [E, d_state] per env)

with the paper's options and initialisation (``d_state`` 16, ``expand`` 2, ``d_conv`` 4, ``dt_rank``
``ceil(hidden_size / 16)``, ``dt`` initialised log-uniform in ``[dt_min, dt_max]`` = ``[0.001, 0.1]``, ``A`` the
S4D-real ``-(1..d_state)``, ``D`` ones). The recurrence runs through the shared scan instead of the paper's fused
CUDA kernel. An episode start zeroes the SSM state and the convolution's window (inputs of the previous episode
never reach the convolution). Mamba stacks these mixers with RMSNorm and residual connections; this core stacks
plain mixers (``num_layers``), each ``hidden_size`` wide at its output.

State: ``[B, num_layers, E * d_state + (d_conv - 1) * E]`` (the SSM state, then the convolution's last inputs).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .linear import LinearRecurrentCore
from .scan import linear_scan, reset_decay


class S6Layer(nn.Module):
    def __init__(self, input_size: int, output_size: int, inner: int, d_state: int, d_conv: int, dt_rank: int,
                 dt_min: float, dt_max: float) -> None:
        super().__init__()
        self.inner, self.d_state, self.d_conv, self.dt_rank = inner, d_state, d_conv, dt_rank
        self.in_proj = nn.Linear(input_size, 2 * inner, bias=False)
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init for a depthwise kernel
        self.conv_weight = nn.Parameter(torch.empty(inner, d_conv).uniform_(-bound, bound))  # [:, j]: lag j
        self.conv_bias = nn.Parameter(torch.empty(inner).uniform_(-bound, bound))
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        std = dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, output_size, bias=False)


class S6Core(LinearRecurrentCore):
    name = "s6"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, d_state: int = 16, expand: int = 2,
                 d_conv: int = 4, dt_rank: Optional[int] = None, dt_min: float = 0.001, dt_max: float = 0.1,
                 scan: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, scan)
        for key, value, low in (("d_state", d_state, 1), ("expand", expand, 1), ("d_conv", d_conv, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}={value!r}: expected an integer >= {low}")
        if dt_rank is None:
            dt_rank = math.ceil(hidden_size / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank={dt_rank!r}: expected a positive integer or null (ceil(hidden_size / 16))")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min!r}, dt_max={dt_max!r}: expected 0 < dt_min <= dt_max")
        self.d_state, self.expand, self.d_conv, self.dt_rank = d_state, expand, d_conv, dt_rank
        self.dt_min, self.dt_max = dt_min, dt_max
        self.inner = expand * hidden_size
        self.layers = nn.ModuleList(
            S6Layer(self.layer_input_size(k), hidden_size, self.inner, d_state, d_conv, dt_rank, dt_min, dt_max)
            for k in range(num_layers))

    @property
    def h_shape(self) -> Tuple[int, ...]:
        return (self.inner, self.d_state)

    @property
    def state_width(self) -> int:
        return self.inner * self.d_state + (self.d_conv - 1) * self.inner

    def _conv(self, layer: S6Layer, u: torch.Tensor, window: torch.Tensor,
              episode_start: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise convolution of ``u [T, B, E]`` after ``window [K-1, B, E]`` (the previous inputs, oldest
        first), taps reaching back past an episode start dropped. Returns ``(conv [T, B, E], new window)``."""
        T, K = u.shape[0], self.d_conv
        seq = torch.cat((window, u), dim=0)  # [K-1+T, B, E]
        if episode_start is not None:
            seg = torch.cumsum(episode_start.to(torch.int64), dim=0)  # episode index within the sequence
            seg = torch.cat((seg.new_zeros(K - 1, seg.shape[1]), seg), dim=0)  # the window: before any start
        out = layer.conv_bias + layer.conv_weight[:, 0] * u
        for j in range(1, K):
            tap = seq[K - 1 - j:K - 1 - j + T]
            if episode_start is not None:
                tap = tap * (seg[K - 1 - j:K - 1 - j + T] == seg[K - 1:]).unsqueeze(-1).to(tap.dtype)
            out = out + layer.conv_weight[:, j] * tap
        new_window = seq[T:]
        if episode_start is not None:
            new_window = new_window * (seg[T:] == seg[-1:]).unsqueeze(-1).to(new_window.dtype)
        return out, new_window

    def _layer(self, k: int, x: torch.Tensor, state: torch.Tensor,
               episode_start: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        layer: S6Layer = self.layers[k]
        B, E, N, K = x.shape[1], self.inner, self.d_state, self.d_conv
        h0 = state[:, :E * N].reshape(B, E, N)
        window = state[:, E * N:].reshape(B, K - 1, E).transpose(0, 1)
        u, z = layer.in_proj(x).chunk(2, dim=-1)
        u, window = self._conv(layer, u, window, episode_start)
        u = F.silu(u)
        dt_in, Bm, Cm = layer.x_proj(u).split([self.dt_rank, N, N], dim=-1)
        dt = F.softplus(layer.dt_proj(dt_in))  # [T, B, E]
        A = self._constant(k, "A", lambda: -torch.exp(layer.A_log))  # [E, N]
        a = torch.exp(dt.unsqueeze(-1) * A)  # [T, B, E, N]
        b = (dt * u).unsqueeze(-1) * Bm.unsqueeze(-2)
        h = linear_scan(reset_decay(a, episode_start), b, h0, method=self.scan)
        y = (h * Cm.unsqueeze(-2)).sum(-1) + layer.D * u
        y = layer.out_proj(y * F.silu(z))
        final = torch.cat((h[-1].reshape(B, -1), window.transpose(0, 1).reshape(B, -1)), dim=1)
        return y, final
