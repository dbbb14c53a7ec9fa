"""Autograd wrappers of the fused kernels, and :class:`FusedRNN`, the part a core holds to run them.

Shapes (per layer inside the autograd functions; all layers in the helpers)::

    y, state = gru_sequence(x [T, B, F], state [B, L, H], keep [T, B] | None, weights)      # y [T, B, H]
    y, state = lstm_sequence(x [T, B, F], state [B, 2L, H], keep [T, B] | None, weights)    # h rows, then c rows
    y, state = gru_step(x [B, F], state [B, L, H], starts [B] | None, weights)              # no autograd
    y, state = lstm_step(x [B, F], state [B, 2L, H], starts [B] | None, weights)           # no autograd

``keep = 1 - episode_start`` multiplies the state before each step (``None``: no resets). ``weights`` is the
``_flat_weights`` list of the core's ``nn.GRU`` / ``nn.LSTM`` (``[w_ih_0, w_hh_0, b_ih_0, b_hh_0, w_ih_1, ...]``), so
parameters, state dicts and saved models are the same whichever kernel runs.
"""

from __future__ import annotations

import sys
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from .. import kernels as _kernels
from . import check_kernel_option, load, resolve

_FLOATS = (torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------ autograd functions
class GRULayerFunction(torch.autograd.Function):
    """One GRU layer over ``[T, B]`` with in-loop resets: ``(x, h0, keep, w_ih, w_hh, b_ih, b_hh) -> (y, hT)``."""

    @staticmethod
    def forward(ctx, x, h0, keep, w_ih, w_hh, b_ih, b_hh):
        y, hT, gates, gh, heff = load().gru_forward(x, h0, keep, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, keep, w_ih, w_hh, gates, gh, heff)
        return y, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT):
        x, keep, w_ih, w_hh, gates, gh, heff = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = load().gru_backward(
            dy, dhT, x, keep, w_ih, w_hh, gates, gh, heff, bool(need[0]), any(need[3:]))
        return dx, (dh0 if need[1] else None), None, dw_ih, dw_hh, db_ih, db_hh


class LSTMLayerFunction(torch.autograd.Function):
    """One LSTM layer over ``[T, B]`` with in-loop resets:
    ``(x, h0, c0, keep, w_ih, w_hh, b_ih, b_hh) -> (y, hT, cT)``."""

    @staticmethod
    def forward(ctx, x, h0, c0, keep, w_ih, w_hh, b_ih, b_hh):
        y, hT, cT, gates, tc, heff, ceff = load().lstm_forward(x, h0, c0, keep, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, keep, w_ih, w_hh, gates, tc, heff, ceff)
        return y, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT, dcT):
        x, keep, w_ih, w_hh, gates, tc, heff, ceff = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = load().lstm_backward(
            dy, dhT, dcT, x, keep, w_ih, w_hh, gates, tc, heff, ceff, bool(need[0]), any(need[4:]))
        return (dx, (dh0 if need[1] else None), (dc0 if need[2] else None), None, dw_ih, dw_hh,
                (db_ih if need[6] else None), (db_hh if need[7] else None))


# ------------------------------------------------------------------------------------------ multi-layer helpers
def gru_sequence(x: torch.Tensor, state: torch.Tensor, keep: Optional[torch.Tensor],
                 weights: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """All layers over ``x [T, B, F]`` from ``state [B, L, H]`` -> ``(y [T, B, H], final state [B, L, H])``."""
    hs: List[torch.Tensor] = []
    for k in range(state.shape[1]):
        x, hT = GRULayerFunction.apply(x, state[:, k], keep, *weights[4 * k: 4 * k + 4])
        hs.append(hT)
    return x, torch.stack(hs, dim=1)


def lstm_sequence(x: torch.Tensor, state: torch.Tensor, keep: Optional[torch.Tensor],
                  weights: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """All layers over ``x [T, B, F]`` from ``state [B, 2L, H]`` -> ``(y [T, B, H], final state [B, 2L, H])``."""
    L = state.shape[1] // 2
    hs: List[torch.Tensor] = []
    cs: List[torch.Tensor] = []
    for k in range(L):
        x, hT, cT = LSTMLayerFunction.apply(x, state[:, k], state[:, L + k], keep, *weights[4 * k: 4 * k + 4])
        hs.append(hT)
        cs.append(cT)
    return x, torch.stack(hs + cs, dim=1)


def gru_step(x: torch.Tensor, state: torch.Tensor, starts: Optional[torch.Tensor],
             weights: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of all layers, no autograd (grad disabled or inference mode). ``starts [B]`` resets first."""
    y, new_state = load().gru_step(x, state, starts, weights)
    return y, new_state


def lstm_step(x: torch.Tensor, state: torch.Tensor, starts: Optional[torch.Tensor],
              weights: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of all layers, no autograd (grad disabled or inference mode). ``starts [B]`` resets first."""
    y, new_state = load().lstm_step(x, state, starts, weights)
    return y, new_state


# ------------------------------------------------------------------------------------------ the core's part
_is_tracing = torch._C._is_tracing
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def _tracing_or_compiling() -> bool:
    """TorchScript tracing (which ONNX export runs under), torch.export or torch.compile is capturing the ops."""
    return _is_tracing() or _is_compiling() or _is_exporting()


def _capturing() -> bool:
    """Tracing, ONNX export, torch.export and torch.compile must see torch ops, not an opaque extension call."""
    if _tracing_or_compiling():
        return True
    onnx = sys.modules.get("torch.onnx")  # only an export that has imported torch.onnx can be running
    return bool(onnx is not None and onnx.is_in_onnx_export())


class FusedRNN:
    """The fused path of one ``nn.GRU`` / ``nn.LSTM``: a part a core holds (composition), not a base class.

    ``FusedRNN(rnn, sequence_fn, step_fn, kernel)`` with ``sequence_fn`` / ``step_fn`` one of the pairs above
    (:func:`gru_sequence` / :func:`gru_step`, :func:`lstm_sequence` / :func:`lstm_step`). The core asks
    :meth:`applies` per call and, where it does, runs :meth:`step` / :meth:`sequence` (resets inside the kernel);
    otherwise it takes its own stock path. The weights are always ``rnn``'s own.
    """

    def __init__(self, rnn: torch.nn.RNNBase, sequence_fn: Callable, step_fn: Callable,
                 kernel: Optional[str] = None) -> None:
        self.rnn = rnn
        self.sequence_fn, self.step_fn = sequence_fn, step_fn
        self.kernel = check_kernel_option(kernel)  # "auto", "fused" or "stock"
        if self.kernel == "fused":
            resolve("fused")  # a clear KernelBuildError now, not at the first forward

    def in_use(self) -> str:
        """``"fused"`` or ``"stock"``: the path the core's forward takes now (builds the kernels on first call under
        ``"auto"``). CPU float32/float64 parameters are needed for ``"fused"``."""
        if self.kernel == "stock":
            return "stock"
        w = self.rnn._flat_weights[0]
        if w.device.type != "cpu" or w.dtype not in _FLOATS:
            return "stock"
        return resolve(self.kernel)

    def applies(self, x: torch.Tensor, state: torch.Tensor) -> bool:
        """Whether this call runs the fused kernel (the tensors' device/dtype permitting)."""
        if self.kernel == "stock":
            return False
        w = self.rnn._flat_weights[0]
        dtype = x.dtype
        if not (x.is_cpu and state.is_cpu and w.is_cpu and (dtype is torch.float32 or dtype is torch.float64)
                and state.dtype is dtype and w.dtype is dtype):
            if self.kernel == "fused":
                raise ValueError(
                    f"kernel='fused' runs on CPU float32/float64 tensors of one dtype; got x {x.dtype} on {x.device}, "
                    f"state {state.dtype} on {state.device}, weights {w.dtype} on {w.device} "
                    "(kernel='auto' takes the stock path for these)")
            return False
        if _capturing():
            return False
        return _kernels._module is not None or resolve(self.kernel) == "fused"

    def _grad_needed(self, *tensors: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in tensors) or any(p.requires_grad for p in self.rnn._flat_weights)

    def step(self, x: torch.Tensor, state: torch.Tensor,
             episode_start: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of all layers; ``episode_start [B]`` (or ``None``) resets first."""
        w = self.rnn._flat_weights
        if self._grad_needed(x, state):  # the sequence kernel with T = 1 carries the autograd
            keep = None if episode_start is None else self._keep(episode_start.view(1, -1), x)
            y, state = self.sequence_fn(x.unsqueeze(0), state, keep, w)
            return y[0], state
        return self.step_fn(x, state, episode_start, w)

    def sequence(self, x: torch.Tensor, state: torch.Tensor,
                 episode_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x [T, B, F]``, ``episode_start [T, B]`` -> ``(y [T, B, H], final state)``: the whole sequence, resets
        included, is one kernel call per layer."""
        return self.sequence_fn(x, state, self._keep(episode_start, x), self.rnn._flat_weights)

    @staticmethod
    def _keep(episode_start: torch.Tensor, like: torch.Tensor) -> Optional[torch.Tensor]:
        """``1 - episode_start`` in ``like``'s dtype, or ``None`` where nothing resets."""
        if not bool(episode_start.any()):
            return None
        return (1.0 - episode_start.to(dtype=like.dtype)).contiguous()


# ------------------------------------------------------------------------------------------------ linear scan
class ScanFunction(torch.autograd.Function):
    """``h_t = a_t * h_{t-1} + b_t`` over ``[T, ...]`` in one kernel call each way (``scan_forward`` /
    ``scan_backward`` in rnn_kernels.cpp); ``a``, ``b``, ``h0`` contiguous, of one CPU float dtype."""

    @staticmethod
    def forward(ctx, a, b, h0, complex):
        T = b.shape[0]
        h = _kernels._module.scan_forward(a.view(T, -1), b.view(T, -1), h0.reshape(-1), complex).view_as(b)
        ctx.complex = complex
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        T = h.shape[0]
        ga, gb, gh0 = _kernels._module.scan_backward(a.view(T, -1), h.view(T, -1), h0.reshape(-1),
                                                     grad_h.reshape(T, -1), ctx.complex)
        return ga.view_as(a), gb.view_as(h), gh0.view_as(h0), None


def scan_applies(method: str, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> bool:
    """Whether :func:`linear_scan` with ``method`` ("auto" or "fused") runs the fused kernel on these tensors.

    ``"auto"`` takes it for CPU float32/float64 tensors of one dtype, outside tracing/export/compile, where the
    kernels build and ``$RECURRENT_AGENTS_KERNEL`` is not ``stock``; ``"fused"`` raises where it cannot."""
    dtype = b.dtype
    fits = (a.is_cpu and b.is_cpu and h0.is_cpu and dtype in _FLOATS and a.dtype is dtype and h0.dtype is dtype)
    if method == "fused":
        if not fits:
            raise ValueError(f"scan='fused' runs on CPU float32/float64 tensors of one dtype; got a {a.dtype} on "
                             f"{a.device}, b {b.dtype} on {b.device}, h0 {h0.dtype} on {h0.device}")
        load()
        return not _capturing()
    if not fits or _capturing():
        return False
    if _kernels._module is not None:
        return True
    return check_kernel_option(None) != "stock" and _kernels.available()


def fused_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, complex: bool) -> torch.Tensor:
    """Every state of the scan (``a`` already the full shape of ``b``), through the fused kernel."""
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or h0.requires_grad):
        return ScanFunction.apply(a, b, h0, complex)
    T = b.shape[0]
    return _kernels._module.scan_forward(a.view(T, -1), b.view(T, -1), h0.reshape(-1), complex).view_as(b)
