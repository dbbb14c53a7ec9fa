"""What the GRU and LSTM cores share: weights in a torch ``nn.GRU`` / ``nn.LSTM``, and a fused CPU kernel they hold.

Kernels (option ``kernel``, see ``agents.kernels``): ``"fused"`` runs a whole ``[T, B]`` sequence per layer in one
C++ call with the ``episode_start`` resets inside the loop, and single steps in one C++ call for all layers;
``"stock"`` runs sequences through the torch module (cut at resets) and steps through torch's cell functions;
``"auto"`` (default) takes the fused path where it builds. The weights are those of ``self.rnn`` either way, so
parameters, state dicts and saved models do not depend on the kernel.

Recurrent dropout (option ``recurrent_dropout=p``, off by default): variational dropout on the recurrent input, Gal &
Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural Networks", NeurIPS 2016
(https://arxiv.org/abs/1512.05287): in training mode each ``forward_sequence`` call draws one mask per env and layer,
``Bernoulli(1 - p) / (1 - p)`` over the hidden units, and multiplies the state by it where it enters the
hidden-to-hidden product, at every step of the sequence. The state carried forward is not masked. Acting (``step``)
and evaluation mode never drop. A masked sequence runs step by step in Python (neither the fused kernel nor the torch
module takes a mask), so training with it is slower.
"""

from __future__ import annotations

import math
import numbers
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
    #: probability of dropping a hidden unit from the recurrent input in training (see the module docstring)
    recurrent_dropout: float = 0.0

    def _set_recurrent_dropout(self, p: float) -> None:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or not 0.0 <= p < 1.0:
            raise ValueError(f"recurrent_dropout={p!r}: expected a probability in [0, 1)")
        self.recurrent_dropout = float(p)

    def recurrent_masks(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """One dropout mask per layer and env, ``[num_layers, B, hidden_size]``: 0 or ``1 / (1 - p)``."""
        keep = 1.0 - self.recurrent_dropout
        probs = torch.full((self.num_layers, batch_size, self.hidden_size), keep, device=device or self._device())
        return torch.bernoulli(probs) / keep

    def masked_sequence(self, x: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor,
                        masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A sequence step by step with the recurrent input of layer ``k`` multiplied by ``masks[k]`` at every step
        (``masks`` from :meth:`recurrent_masks`; all ones gives the plain core)."""
        ys = []
        for t in range(x.shape[0]):
            y, state = self._masked_step(x[t], self.reset(state, episode_start[t]), masks)
            ys.append(y)
        return torch.stack(ys), state

    def _masked_step(self, x: torch.Tensor, state: torch.Tensor,
                     masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

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
        if self.training and self.recurrent_dropout > 0 and x.shape[0] > 0 and x.shape[1] > 0:
            return self.masked_sequence(x, state, episode_start, self.recurrent_masks(x.shape[1], x.device))
        if x.shape[0] == 0 or x.shape[1] == 0 or not self.fused.applies(x, state):
            return self._sequence_with_resets(x, state, episode_start)
        return self.fused.sequence(x, state, episode_start)

    def extra_repr(self) -> str:
        extra = f", recurrent_dropout={self.recurrent_dropout}" if self.recurrent_dropout else ""
        return super().extra_repr() + f", kernel={self.kernel!r}" + extra
