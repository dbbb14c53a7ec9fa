"""The scan behind the linear-recurrence cores (minGRU, LRU, FFM, S6): ``h_t = a_t * h_{t-1} + b_t``, elementwise.

``a`` and ``b`` hold every step at once (``[T, B, ...]``, computed from the inputs in one batched call), so a whole
sequence costs one elementwise scan. An episode reset at step ``t`` is ``a_t = 0``: the state carried in is dropped
and ``h_t = b_t`` (:func:`reset_decay`). Complex recurrences (LRU, FFM) keep real and imaginary parts in a trailing
dimension of size 2 (``complex=True``), so every op is real: the same code runs in training, in ``step`` and in an
ONNX graph, which has no complex type.

Three ways to run it, equal up to float rounding (tests/test_linear_cores.py checks values and gradients):

* ``"fused"``: the whole scan, forward and its adjoint backward, in one C++ call each (``scan_forward`` /
  ``scan_backward`` in agents/kernels/rnn_kernels.cpp, built with the GRU/LSTM kernels; CPU float32/float64);
* ``"loop"``: ``T`` torch steps of one multiply-add each (in training one autograd node, whose backward runs the
  recurrence's adjoint, ``g_t = dL/dh_t + conj(a_{t+1}) g_{t+1}``, from the end);
* ``"parallel"``: Hillis & Steele's inclusive scan over the pairs ``(a, b)`` with ``(a2, b2) o (a1, b1) =
  (a2 a1, a2 b1 + b2)``: ``ceil(log2 T)`` rounds of whole-tensor ops, ``O(T log T)`` work but few, large ops.

``"auto"`` is the fused kernel where it applies (CPU floats, the kernels build, ``$RECURRENT_AGENTS_KERNEL`` is not
``stock``, not tracing/exporting) and the loop elsewhere; the fastest at the training shapes on CPU
(``results/scan.md``). An ONNX export traces the loop.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..kernels.fused import fused_scan, scan_applies

METHODS = ("auto", "fused", "loop", "parallel")


def cmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Complex product of tensors whose last dimension (size 2) holds real and imaginary parts."""
    xr, xi = x[..., 0], x[..., 1]
    yr, yi = y[..., 0], y[..., 1]
    return torch.stack((xr * yr - xi * yi, xr * yi + xi * yr), dim=-1)


def _mul(x: torch.Tensor, y: torch.Tensor, complex: bool) -> torch.Tensor:
    return cmul(x, y) if complex else x * y


def _conj_mul(x: torch.Tensor, y: torch.Tensor, complex: bool) -> torch.Tensor:
    """``conj(x) * y`` (complex pairs) or ``x * y``: how a gradient flows back through a product by ``x``."""
    if not complex:
        return x * y
    return cmul(torch.stack((x[..., 0], -x[..., 1]), dim=-1), y)


class _LoopScan(torch.autograd.Function):
    """The loop as one autograd node: the forward fills the states without recording T small ops, the backward
    runs the recurrence's adjoint, ``g_t = dL/dh_t + conj(a_{t+1}) g_{t+1}``, from the end (``dL/db_t = g_t``,
    ``dL/da_t = conj(h_{t-1}) g_t``, ``dL/dh0 = conj(a_0) g_0``)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, complex: bool) -> torch.Tensor:
        h = torch.empty_like(b)
        prev = h0
        for t in range(b.shape[0]):
            prev = _mul(a[t], prev, complex) + b[t]
            h[t] = prev
        ctx.complex = complex
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h, h0 = ctx.saved_tensors
        complex = ctx.complex
        T = h.shape[0]
        grad_b = torch.empty_like(grad_h)
        g = grad_h[T - 1]
        grad_b[T - 1] = g
        for t in range(T - 2, -1, -1):
            g = grad_h[t] + _conj_mul(a[t + 1], g, complex)
            grad_b[t] = g
        prev = torch.cat((h0.unsqueeze(0), h[:-1]), dim=0)
        grad_a = _conj_mul(prev, grad_b, complex)
        grad_h0 = _conj_mul(a[0], grad_b[0], complex)
        return grad_a, grad_b, grad_h0, None


def reset_decay(a: torch.Tensor, episode_start: Optional[torch.Tensor]) -> torch.Tensor:
    """``a [T, B, ...]`` with the steps where ``episode_start [T, B]`` is set zeroed (the state carried in is dropped
    there). ``a`` may broadcast over ``T`` and ``B`` (shape ``[1, 1, ...]``): the result is then full size."""
    if episode_start is None:
        return a
    keep = 1.0 - episode_start.to(dtype=a.dtype)
    return a * keep.reshape(*keep.shape, *([1] * (a.dim() - 2)))


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, complex: bool = False,
                method: str = "auto") -> torch.Tensor:
    """Every state of ``h_t = a_t * h_{t-1} + b_t`` for ``t = 0 .. T-1``, from ``h_{-1} = h0``.

    ``b [T, B, ...]``; ``a`` the same shape or broadcastable to it; ``h0 [B, ...]``. With ``complex=True`` the last
    dimension (size 2) holds real and imaginary parts and the products are complex. Returns ``h [T, B, ...]``.
    """
    if method not in METHODS:
        raise ValueError(f"scan method {method!r}: expected one of {', '.join(METHODS)}")
    T = b.shape[0]
    if T == 1:  # a step: one multiply-add, whatever the method
        return (_mul(a[0], h0, complex) + b[0]).unsqueeze(0)
    a = a.expand_as(b)
    if method in ("auto", "fused") and T > 0 and scan_applies(method, a, b, h0):
        return fused_scan(a, b, h0, complex)
    if method in ("loop", "auto", "fused"):
        if T > 1 and torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or h0.requires_grad):
            return _LoopScan.apply(a.contiguous(), b.contiguous(), h0, complex)
        hs = []
        h = h0
        for t in range(T):
            h = _mul(a[t], h, complex) + b[t]
            hs.append(h)
        return torch.stack(hs, dim=0)
    # fold h0 into the first step, then combine pairs 1, 2, 4, ... steps apart
    b = torch.cat((_mul(a[:1], h0.unsqueeze(0), complex) + b[:1], b[1:]), dim=0)
    d = 1
    while d < T:
        b = torch.cat((b[:d], _mul(a[d:], b[:-d], complex) + b[d:]), dim=0)
        if 2 * d < T:  # the decays are needed only for a further round
            a = torch.cat((a[:d], _mul(a[d:], a[:-d], complex)), dim=0)
        d *= 2
    return b
