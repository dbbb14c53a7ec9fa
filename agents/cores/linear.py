"""What the linear-recurrence cores (minGRU, LRU, FFM, S6) share: stacked layers, each a recurrence
``h_t = a_t * h_{t-1} + b_t`` run by :func:`agents.cores.scan.linear_scan`, with the resets inside the scan.

A subclass builds ``self.layers`` (one module per layer) and implements, per layer, ``_coefficients(layer, x)`` ->
``(a, b, context)`` for a whole sequence ``x [T, B, F]`` and ``_readout(layer, h, context)`` ->
``y [T, B, hidden_size]`` (``context``: whatever the readout needs from the input pass, e.g. ``x``); the
state of one layer is ``h`` flattened to ``state_width`` floats (complex states as real and imaginary pairs).
A layer whose input path has a state of its own (S6's causal convolution) overrides ``_layer``.

Steps are sequences of length one through the same code, so ``step`` and ``forward_sequence`` agree by construction
and the ONNX graph of a step is the training code's arithmetic.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from .base import MemoryCore
from ..kernels.fused import _capturing, scan_applies
from .scan import METHODS, linear_scan, reset_decay


class LinearRecurrentCore(MemoryCore):
    """Base class of the scan cores. State: ``[B, num_layers, state_width]``."""

    #: True when the recurrence is complex (the state holds real and imaginary parts in a trailing dim of 2)
    complex_state: bool = False
    layers: nn.ModuleList

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, scan: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers)
        if scan not in METHODS:
            raise ValueError(f"scan={scan!r}: expected one of {', '.join(METHODS)}")
        self.scan = scan

    # ------------------------------------------------------------ for subclasses
    @property
    def h_shape(self) -> Tuple[int, ...]:
        """Shape of one layer's recurrent state ``h`` for one env."""
        raise NotImplementedError

    def _coefficients(self, k: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Any]:
        raise NotImplementedError

    def _readout(self, k: int, h: torch.Tensor, context: Any) -> torch.Tensor:
        raise NotImplementedError

    def _constant(self, k: int, name: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``fn()``, a tensor computed from layer ``k``'s parameters only (a decay, a normalisation). Where no
        gradient is recorded (rollouts, ``act``) it is computed once per parameter version and reused: a step then
        costs only the input-dependent ops. The policy's optimizer drops the cache after each step
        (``RecurrentActorCriticPolicy.drop_cached_constants``), since a fused optimizer leaves versions unchanged."""
        if torch.is_grad_enabled() or _capturing():
            return fn()
        params = list(self.layers[k].parameters())
        if any(p.is_inference() for p in params):  # made under inference_mode: no version counter to watch
            return fn()
        key = tuple((p.data_ptr(), p._version) for p in params)
        cache = self.__dict__.setdefault("_constants", {})
        hit = cache.get((k, name))
        if hit is None or hit[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode too
                hit = cache[k, name] = (key, fn())
        return hit[1]

    def layer_input_size(self, k: int) -> int:
        return self.input_size if k == 0 else self.hidden_size

    # ----------------------------------------------------------------- interface
    @property
    def kernel_in_use(self) -> str:
        """``"fused"`` where the scan runs the C++ kernel (``scan`` "auto" or "fused" on CPU float parameters, the
        kernels built), else the torch scan: ``"loop"`` or ``"parallel"``."""
        if self.scan in ("auto", "fused"):
            p = next(self.parameters())
            if p.is_cpu and p.dtype in (torch.float32, torch.float64) and scan_applies(self.scan, p, p, p):
                return "fused"
            return "loop"
        return self.scan

    @property
    def resets_in_kernel(self) -> bool:
        return True  # a reset is a zero decay inside the scan: sequences with resets are one call

    @property
    def state_width(self) -> int:
        n = 1
        for d in self.h_shape:
            n *= d
        return n

    @property
    def state_shape(self) -> Tuple[int, ...]:
        return (self.num_layers, self.state_width)

    def _step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y, state = self._run(x.unsqueeze(0), state, None)
        return y[0], state

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, state, None)

    def forward_sequence(self, x: torch.Tensor, state: torch.Tensor,
                         episode_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [T, B, F]``, ``episode_start [T, B]`` -> ``(y [T, B, H], final state)``: one scan per layer, resets
        included."""
        self._check_sequence(x, state, episode_start)
        if x.shape[0] == 0:
            return x.new_zeros(0, x.shape[1], self.hidden_size), state
        return self._run(x, state, episode_start)

    # ------------------------------------------------------------------- helpers
    def _run(self, x: torch.Tensor, state: torch.Tensor,
             episode_start: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        finals = []
        for k in range(self.num_layers):
            x, final = self._layer(k, x, state[:, k], episode_start)
            finals.append(final)
        return x, torch.stack(finals, dim=1)

    def _layer(self, k: int, x: torch.Tensor, state: torch.Tensor,
               episode_start: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One layer over a sequence: ``(y [T, B, H], its final state [B, state_width])``."""
        B = x.shape[1]
        a, b, context = self._coefficients(k, x)
        h = linear_scan(reset_decay(a, episode_start), b, state.reshape(B, *self.h_shape),
                        complex=self.complex_state, method=self.scan)
        return self._readout(k, h, context), h[-1].reshape(B, -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scan={self.scan!r}"
