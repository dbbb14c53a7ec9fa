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

from ..kernels import fused
from .base import MemoryCore


class GRUCore(fused.FusedKernelMixin, MemoryCore):
    name = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, kernel: Optional[str] = None) -> None:
        super().__init__(input_size, hidden_size, num_layers)
        self.rnn = nn.GRU(input_size, hidden_size, num_layers=num_layers)
        self._init_kernel(kernel)

    @property
    def state_shape(self) -> Tuple[int, ...]:
        return (self.num_layers, self.hidden_size)

    # ------------------------------------------------------------------ steps
    def step(self, x: torch.Tensor, state: torch.Tensor,
             episode_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check_step(x, state, episode_start)
        if self._use_fused(x, state):
            return self._fused_step(x, state, episode_start)
        return self._stock_step(x, self._reset(state, episode_start))

    def _step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._use_fused(x, state):
            return self._fused_step(x, state, None)
        return self._stock_step(x, state)

    def _fused_step(self, x: torch.Tensor, state: torch.Tensor,
                    episode_start: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.rnn._flat_weights
        if self._grad_needed(x, state):  # the sequence kernel with T = 1 carries the autograd
            keep = None if episode_start is None else self._keep(episode_start.view(1, -1), x)
            y, state = fused.gru_sequence(x.unsqueeze(0), state, keep, w)
            return y[0], state
        return fused.gru_step(x, state, episode_start, w)

    def _stock_step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.rnn._flat_weights
        hs = []
        for k in range(self.num_layers):
            x = torch.gru_cell(x, state[:, k], w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3])
            hs.append(x)
        return x, torch.stack(hs, dim=1)

    # --------------------------------------------------------------- sequences
    def forward_sequence(
        self, x: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [T, B, F]``, ``episode_start [T, B]`` -> ``(y [T, B, H], final state)``; with the fused kernel the whole
        sequence, resets included, is one kernel call per layer."""
        self._check_sequence(x, state, episode_start)
        if x.shape[0] == 0 or x.shape[1] == 0 or not self._use_fused(x, state):
            return super().forward_sequence(x, state, episode_start)
        return fused.gru_sequence(x, state, self._keep(episode_start, x), self.rnn._flat_weights)

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(x, state.transpose(0, 1).contiguous())
        return y, h.transpose(0, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={self.kernel!r}"
