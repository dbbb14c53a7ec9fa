"""LSTM memory core.

Long short-term memory: Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997; with the
forget gate of Gers et al. 2000 as in ``torch.nn.LSTM``. Four gate blocks per layer.

State: ``[B, 2 * num_layers, hidden_size]``: rows ``0..L-1`` hold each layer's hidden state h, rows ``L..2L-1`` its
cell state c. The packing is this core's business only; the policy, buffer and trainer see one tensor.

Kernels (option ``kernel``, see ``agents.kernels``): ``"fused"`` runs a whole ``[T, B]`` sequence per layer in one
C++ call with the ``episode_start`` resets inside the loop, and single steps in one C++ call for all layers;
``"stock"`` runs sequences through ``torch.nn.LSTM`` (cut at resets) and steps through ``torch.lstm_cell``; ``"auto"``
(default) takes the fused path where it builds. The weights are those of ``self.rnn`` (an ``nn.LSTM``) either way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import fused
from .base import init_chrono, init_gate_bias
from .rnn import TorchRNNCore


class LSTMCore(TorchRNNCore):
    name = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, kernel: Optional[str] = None,
                 forget_bias: Optional[float] = None, recurrent_dropout: float = 0.0,
                 chrono: Optional[int] = None) -> None:
        super().__init__(input_size, hidden_size, num_layers)
        self._set_recurrent_dropout(recurrent_dropout)
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers=num_layers)
        if forget_bias is not None and chrono is not None:
            raise ValueError(f"forget_bias={forget_bias!r} and chrono={chrono!r}: expected at most one of them (both "
                             "set the forget gate's bias)")
        if forget_bias is not None:
            self.init_forget_bias(forget_bias)
        if chrono is not None:
            self.init_chrono(chrono)
        self._init_kernel(fused.lstm_sequence, fused.lstm_step, kernel)

    def init_forget_bias(self, value: float) -> None:
        """Start every layer's forget gate at bias ``value`` (Gers et al. 2000; Jozefowicz et al. 2015 use 1.0, Keras'
        default): ``bias_ih`` gets ``value`` and ``bias_hh`` 0 in the forget block (torch's gate order i, f, g, o), so
        at initialisation the cell keeps about sigmoid(value) of its content per step. ``None`` (the default) keeps
        torch's uniform init, under which it keeps about half."""
        init_gate_bias(self.rnn, 1, value, "forget_bias")

    def init_chrono(self, t_max: int) -> None:
        """Chrono initialisation (Tallec & Ollivier 2018): forget-gate biases ``log(u)``, ``u ~ U(1, t_max - 1)`` per
        unit, and input-gate biases ``-log(u)``, so the cells start with forgetting times spread up to ``t_max`` steps
        (see :func:`agents.cores.base.init_chrono`). Torch's gate order is i, f, g, o."""
        init_chrono(self.rnn, 1, 0, t_max, "chrono")

    @property
    def state_shape(self) -> Tuple[int, ...]:
        return (2 * self.num_layers, self.hidden_size)

    # ------------------------------------------------------------------ steps
    def _step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.rnn._flat_weights
        L = self.num_layers
        hs, cs = [], []
        for k in range(L):
            h, c = torch.lstm_cell(x, (state[:, k], state[:, L + k]),
                                   w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3])
            hs.append(h)
            cs.append(c)
            x = h
        return x, torch.stack(hs + cs, dim=1)

    def _masked_step(self, x: torch.Tensor, state: torch.Tensor,
                     masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.rnn._flat_weights
        L = self.num_layers
        hs, cs = [], []
        for k in range(L):
            gates = F.linear(x, w[4 * k], w[4 * k + 2]) + F.linear(state[:, k] * masks[k], w[4 * k + 1], w[4 * k + 3])
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * state[:, L + k] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            hs.append(x)
            cs.append(c)
        return x, torch.stack(hs + cs, dim=1)

    # --------------------------------------------------------------- sequences
    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        L = self.num_layers
        h0 = state[:, :L].transpose(0, 1).contiguous()
        c0 = state[:, L:].transpose(0, 1).contiguous()
        y, (h, c) = self.rnn(x, (h0, c0))
        return y, torch.cat([h, c], dim=0).transpose(0, 1)
