"""What the GRU and LSTM cores share: weights in a torch ``nn.GRU`` / ``nn.LSTM``, and a fused CPU kernel they hold.

Kernels (option ``kernel``, see ``agents.kernels``): ``"fused"`` runs a whole ``[T, B]`` sequence per layer in one
C++ call with the ``episode_start`` resets inside the loop, and single steps in one C++ call for all layers;
``"stock"`` runs sequences through the torch module (cut at resets) and steps through torch's cell functions;
``"auto"`` (default) takes the fused path where it builds. The weights are those of ``self.rnn`` either way, so
parameters, state dicts and saved models do not depend on the kernel.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..kernels.fused import FusedRNN
from .base import MemoryCore


class TorchRNNCore(MemoryCore):
    """A core whose recurrent weights live in ``self.rnn``; subclasses build ``rnn`` and implement ``_step`` (the
    stock cell) and ``_sequence`` (the stock module), then call :meth:`_init_kernel` with their fused functions."""

    rnn: nn.RNNBase
    fused: FusedRNN

    def _init_kernel(self, sequence_fn: Callable, step_fn: Callable, kernel: Optional[str]) -> None:
        self.fused = FusedRNN(self.rnn, sequence_fn, step_fn, kernel)

    @property
    def kernel(self) -> str:
        """The requested kernel: ``"auto"``, ``"fused"`` or ``"stock"``."""
        return self.fused.kernel

    @property
    def kernel_in_use(self) -> str:
        return self.fused.in_use()

    def step(self, x: torch.Tensor, state: torch.Tensor,
             episode_start: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check_step(x, state, episode_start)
        if self.fused.applies(x, state):
            return self.fused.step(x, state, episode_start)
        return self._step(x, state if episode_start is None else self.reset(state, episode_start))

    def forward_sequence(self, x: torch.Tensor, state: torch.Tensor,
                         episode_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [T, B, F]``, ``episode_start [T, B]`` -> ``(y [T, B, H], final state)``; with the fused kernel the whole
        sequence, resets included, is one kernel call per layer."""
        self._check_sequence(x, state, episode_start)
        if x.shape[0] == 0 or x.shape[1] == 0 or not self.fused.applies(x, state):
            return self._sequence_with_resets(x, state, episode_start)
        return self.fused.sequence(x, state, episode_start)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={self.kernel!r}"
