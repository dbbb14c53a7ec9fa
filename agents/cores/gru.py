"""GRU memory core.

Gated recurrent unit: Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation", EMNLP 2014 (https://arxiv.org/abs/1406.1078). Three gate blocks per layer (reset, update, candidate),
so at equal hidden size it has 3/4 of an LSTM's weights.

State: ``[B, num_layers, hidden_size]`` (the hidden state of each layer).

Kernels (option ``kernel``, see ``agents.kernels``): ``"fused"`` runs a whole ``[T, B]`` sequence per layer in one
C++ call with the ``episode_start`` resets inside the loop, and single steps in one C++ call for all layers;
``"stock"`` runs sequences through ``torch.nn.GRU`` (cut at resets) and steps through ``torch.gru_cell``; ``"auto"``
(default) takes the fused path where it builds. The weights are those of ``self.rnn`` (an ``nn.GRU``) either way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import fused
from .base import init_chrono, init_gate_bias
from .rnn import TorchRNNCore


class GRUCore(TorchRNNCore):
    name = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, kernel: Optional[str] = None,
                 update_bias: Optional[float] = None, recurrent_dropout: float = 0.0,
                 chrono: Optional[int] = None) -> None:
        super().__init__(input_size, hidden_size, num_layers)
        self._set_recurrent_dropout(recurrent_dropout)
        self.rnn = nn.GRU(input_size, hidden_size, num_layers=num_layers)
        if update_bias is not None and chrono is not None:
            raise ValueError(f"update_bias={update_bias!r} and chrono={chrono!r}: expected at most one of them (both "
                             "set the update gate's bias)")
        if update_bias is not None:
            self.init_update_bias(update_bias)
        if chrono is not None:
            self.init_chrono(chrono)
        self._init_kernel(fused.gru_sequence, fused.gru_step, kernel)

    def init_update_bias(self, value: float) -> None:
        """Start every layer's update gate z at bias ``value`` (torch's gate order r, z, n; h' = (1 - z) * n + z * h):
        ``bias_ih`` gets ``value`` and ``bias_hh`` 0 in the z block, so at initialisation a unit keeps about
        sigmoid(value) of its state per step (0.73 at 1, 0.88 at 2), the GRU's counterpart of the LSTM's forget-gate
        bias (the "chrono" initialisation of Tallec & Ollivier 2018 draws such biases per unit). ``None`` (the
        default) keeps torch's uniform init, under which a unit keeps about half."""
        init_gate_bias(self.rnn, 1, value, "update_bias")

    def init_chrono(self, t_max: int) -> None:
        """Chrono initialisation (Tallec & Ollivier 2018) in the GRU's form: update-gate biases ``log(u)``,
        ``u ~ U(1, t_max - 1)`` per unit, so the units start keeping ``u / (1 + u)`` of their state per step, with
        forgetting times spread up to ``t_max`` steps (see :func:`agents.cores.base.init_chrono`)."""
        init_chrono(self.rnn, 1, None, t_max, "chrono")

    @property
    def state_shape(self) -> Tuple[int, ...]:
        return (self.num_layers, self.hidden_size)

    # ------------------------------------------------------------------ steps
    def _step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.rnn._flat_weights
        hs = []
        for k in range(self.num_layers):
            x = torch.gru_cell(x, state[:, k], w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3])
            hs.append(x)
        return x, torch.stack(hs, dim=1)

    def _masked_step(self, x: torch.Tensor, state: torch.Tensor,
                     masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.rnn._flat_weights
        hs = []
        for k in range(self.num_layers):
            h = state[:, k]
            ir, iz, i_n = F.linear(x, w[4 * k], w[4 * k + 2]).chunk(3, dim=1)
            hr, hz, h_n = F.linear(h * masks[k], w[4 * k + 1], w[4 * k + 3]).chunk(3, dim=1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            x = (1.0 - z) * torch.tanh(i_n + r * h_n) + z * h
            hs.append(x)
        return x, torch.stack(hs, dim=1)

    # --------------------------------------------------------------- sequences
    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(x, state.transpose(0, 1).contiguous())
        return y, h.transpose(0, 1)
