"""The memory-core interface every core implements.

A core maps a sequence of feature vectors to a sequence of outputs while carrying a state. Everything outside a
core (policy, buffer, trainer) treats the state as one opaque tensor, batch first ``[B, ...]``, and resets it only
by passing ``episode_start`` flags to the core. Adding a core is one file plus one line in ``agents/cores/__init__.py``.

Shapes::

    state = core.initial_state(batch_size=B)                    # [B, *state_shape]
    y, state = core.step(x, state, episode_start)               # x [B, F], episode_start [B] -> y [B, output_size]
    y, state = core.forward_sequence(x, state, episode_start)   # x [T, B, F], episode_start [T, B] -> y [T, B, output_size]

``episode_start[t, b]`` true means "zero the state of env b before step t".
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
from torch import nn


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return value


def init_gate_bias(rnn: nn.RNNBase, block: int, value: float, name: str) -> None:
    """Start gate block ``block`` of every layer of ``rnn`` (an ``nn.GRU`` / ``nn.LSTM``) at bias ``value``:
    ``bias_ih`` gets ``value`` and ``bias_hh`` 0 in that block, the other blocks keep torch's init. ``name`` is the
    option's name in the error for a value that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    value = float(value)
    H = rnn.hidden_size
    with torch.no_grad():
        for k in range(rnn.num_layers):
            getattr(rnn, f"bias_ih_l{k}")[block * H:(block + 1) * H].fill_(value)
            getattr(rnn, f"bias_hh_l{k}")[block * H:(block + 1) * H].zero_()


def init_chrono(rnn: nn.RNNBase, keep_block: int, input_block: Optional[int], t_max: object, name: str) -> None:
    """Chrono initialisation (Tallec & Ollivier, "Can Recurrent Neural Networks Warp Time?", ICLR 2018,
    https://arxiv.org/abs/1804.11188): gate block ``keep_block`` of every layer starts at bias ``log(u)``, one
    ``u ~ U(1, t_max - 1)`` per unit, so unit ``j`` keeps ``u_j / (1 + u_j)`` of its state per step (a forgetting time
    of about ``1 + u_j`` steps, spread from 2 to ``t_max``); ``input_block`` (the LSTM's input gate), when given, starts
    at ``-log(u)``. ``bias_hh`` is zeroed in those blocks; the other blocks keep torch's init. Draws from torch's
    global generator (seeded by training)."""
    if isinstance(t_max, bool) or not isinstance(t_max, numbers.Integral) or t_max < 3:
        raise ValueError(f"{name}={t_max!r}: expected an integer >= 3 (the longest time scale to start with, in steps)")
    H = rnn.hidden_size
    with torch.no_grad():
        for k in range(rnn.num_layers):
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
            log_u = torch.empty(H).uniform_(1.0, float(t_max) - 1.0).log_()
            b_ih[keep_block * H:(keep_block + 1) * H] = log_u
            b_hh[keep_block * H:(keep_block + 1) * H] = 0.0
            if input_block is not None:
                b_ih[input_block * H:(input_block + 1) * H] = -log_u
                b_hh[input_block * H:(input_block + 1) * H] = 0.0


_is_tracing = torch._C._is_tracing  # torch.jit.is_tracing's C check, without its Python wrapper (the act path)


class MemoryCore(nn.Module):
    """Base class of memory cores.

    The public interface - all that the policy, the buffer, the trainer and the exporter call - is
    :meth:`initial_state`, :meth:`step`, :meth:`forward_sequence`, :meth:`reset`, :attr:`state_shape`,
    :attr:`output_size`, :attr:`kernel_in_use` and :attr:`resets_in_kernel`.

    A subclass sets ``state_shape`` and implements ``_step(x, state)`` (one step, no reset) and
    ``_sequence(x, state)`` (a sequence with no reset after its first step); the base class applies the resets and
    checks the shapes. A core with a faster path (a fused kernel that resets inside its loop) overrides ``step`` /
    ``forward_sequence`` itself and says so in ``resets_in_kernel``. Its own options are its constructor's keyword
    arguments after ``input_size, hidden_size, num_layers``, each with a default from its paper
    (:func:`agents.cores.core_options` lists them; configs pass them as ``core_kwargs``).
    """

    #: short registry name, set by subclasses
    name: str = "base"
    #: which kernel runs this core ("stock" unless a core has a fused path, see agents.kernels)
    kernel_in_use: str = "stock"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        self.input_size = _check_positive_int("input_size", input_size)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.num_layers = _check_positive_int("num_layers", num_layers)

    # ----------------------------------------------------------------- interface
    @property
    def resets_in_kernel(self) -> bool:
        """True when :meth:`forward_sequence` applies mid-sequence resets inside one kernel call (so training can
        take fixed-length chunks with resets inside instead of padded episode-cut sequences)."""
        return self.kernel_in_use == "fused"

    @property
    def output_size(self) -> int:
        """Features per step handed to the heads."""
        return self.hidden_size

    @property
    def state_shape(self) -> Tuple[int, ...]:
        """Shape of one env's state (without the batch dimension)."""
        raise NotImplementedError

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zero state for ``batch_size`` envs: ``[batch_size, *state_shape]``."""
        _check_positive_int("batch_size", batch_size)
        if device is None:
            device = self._device()
        return torch.zeros((batch_size, *self.state_shape), device=device)

    @staticmethod
    def reset(state: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
        """``state [B, ...]`` with the rows where ``episode_start [B]`` is set zeroed (a new tensor)."""
        keep = 1.0 - episode_start.to(dtype=state.dtype)
        return state * keep.view(-1, *([1] * (state.dim() - 1)))

    def step(self, x: torch.Tensor, state: torch.Tensor,
             episode_start: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One time step. ``x [B, F]``, ``state [B, *state_shape]``, ``episode_start [B]`` (or ``None``: no env
        starts an episode) -> ``(y [B, output_size], state)``."""
        self._check_step(x, state, episode_start)
        if episode_start is not None:
            state = self.reset(state, episode_start)
        return self._step(x, state)

    def forward_sequence(
        self, x: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """A whole sequence in one call. ``x [T, B, F]``, ``episode_start [T, B]`` -> ``(y [T, B, H], final state)``.

        Resets anywhere in the sequence are honoured: the sequence is cut at every step where some env starts an
        episode and each piece runs through ``_sequence`` in one call (training sequences that start episodes only
        at t=0 take a single call).
        """
        self._check_sequence(x, state, episode_start)
        return self._sequence_with_resets(x, state, episode_start)

    # ------------------------------------------------------------ for subclasses
    def _step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A sequence without resets after its first step. ``x [T, B, F]`` -> ``(y [T, B, H], state)``."""
        raise NotImplementedError

    def _sequence_with_resets(self, x: torch.Tensor, state: torch.Tensor,
                              episode_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``_sequence`` over the pieces between resets (the stock path for cores without in-kernel resets)."""
        T = x.shape[0]
        starts = episode_start.to(dtype=torch.bool)
        # time steps (after the first) at which at least one env resets: the sequence is cut there
        cuts = [0] + (torch.nonzero(starts[1:].any(dim=1)).flatten() + 1).tolist() + [T]
        outputs = []
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            if t1 <= t0:
                continue
            state = self.reset(state, starts[t0])
            y, state = self._sequence(x[t0:t1], state)
            outputs.append(y)
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
        return y, state

    # ------------------------------------------------------------------- helpers
    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _check_state(self, state: torch.Tensor, batch: int) -> None:
        if _is_tracing():  # shapes are fixed while tracing (ONNX export): nothing to check
            return
        if state.shape[0] != batch or state.shape[1:] != self.state_shape:
            raise ValueError(f"state has shape {tuple(state.shape)}: expected {[batch, *self.state_shape]} for core "
                             f"{self.name!r}")

    def _check_sequence(self, x: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected [T, B, {self.input_size}]")
        T, B = x.shape[0], x.shape[1]
        if tuple(episode_start.shape) != (T, B):
            raise ValueError(f"episode_start has shape {tuple(episode_start.shape)}: expected [T, B] = [{T}, {B}]")
        self._check_state(state, B)

    def _check_step(self, x: torch.Tensor, state: torch.Tensor, episode_start: Optional[torch.Tensor]) -> None:
        if _is_tracing():
            return
        if x.dim() != 2 or x.shape[-1] != self.input_size:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected [B, {self.input_size}]")
        if episode_start is not None and tuple(episode_start.shape) != (x.shape[0],):
            raise ValueError(f"episode_start has shape {tuple(episode_start.shape)}: expected [B] = [{x.shape[0]}]")
        self._check_state(state, x.shape[0])

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}"
