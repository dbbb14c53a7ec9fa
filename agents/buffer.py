"""Rollout buffer that stores the core state at every step and serves whole padded sequences.

Extends SB3's ``RolloutBuffer`` (same storage and the same GAE, with SB3's handling of ``episode_starts``) with:

* ``states [n_steps, n_envs, S]``: the packed policy state *before* each step;
* :meth:`get_sequences`: each env's rollout is cut into sequences that begin at an episode start, at the start of
  the rollout, or every ``seq_len`` steps (truncated BPTT); each sequence starts from its stored state. Sequences
  are padded to a common length ``L`` and returned time-major ``[L, N, ...]`` with a ``mask`` that is 0 on padding,
  so a minibatch runs through each core in one call.
* ``chunked=True`` (for cores that reset inside their kernel, see ``MemoryCore.resets_in_kernel``): sequences are
  fixed-length chunks of each env's rollout (every ``seq_len`` steps, not cut at episode starts); episode starts stay
  inside them as flags, and there is no padding when ``seq_len`` divides ``n_steps``. Same steps, same loss, fewer
  and fuller sequences. Inside a sequence no episode starts after step 0, so even
  the stock ``nn.GRU`` / ``nn.LSTM`` kernels (which cannot reset mid-sequence) take each minibatch in one call.
"""

from __future__ import annotations

from typing import Generator, NamedTuple, Optional

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer


class SequenceBatch(NamedTuple):
    observations: torch.Tensor   # [L, N, *obs_shape]
    actions: torch.Tensor        # [L, N, action_dim]
    old_values: torch.Tensor     # [L, N]
    old_log_prob: torch.Tensor   # [L, N]
    advantages: torch.Tensor     # [L, N]
    returns: torch.Tensor        # [L, N]
    episode_starts: torch.Tensor  # [L, N] (only row 0 can be 1, unless the buffer is chunked)
    mask: torch.Tensor           # [L, N] 1 on real steps, 0 on padding
    states: torch.Tensor         # [N, S] state before each sequence's first step


class RecurrentRolloutBuffer(RolloutBuffer):
    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space, state_size: int,
                 device: torch.device | str = "auto", gae_lambda: float = 1.0, gamma: float = 0.99, n_envs: int = 1,
                 seq_len: Optional[int] = None, chunked: bool = False) -> None:
        self.state_size = int(state_size)
        self.chunked = bool(chunked)
        self.seq_len = int(seq_len) if seq_len is not None else int(buffer_size)
        super().__init__(buffer_size, observation_space, action_space, device=device, gae_lambda=gae_lambda,
                         gamma=gamma, n_envs=n_envs)

    def reset(self) -> None:
        super().reset()
        self._padded_cache: Optional[dict] = None
        self.states = np.zeros((self.buffer_size, self.n_envs, self.state_size), dtype=np.float32)

    def add_state(self, state: torch.Tensor) -> None:
        """Store the state before the step that the next :meth:`add` records (call it first)."""
        self.states[self.pos] = state.detach().cpu().numpy()

    # ------------------------------------------------------------- sequences
    def _sequence_layout(self):
        """Env-major layout: for every (env, step) its sequence id and position in it."""
        T, E = self.buffer_size, self.n_envs
        if self.chunked:  # chunks of seq_len steps; episode starts stay inside as flags
            starts = np.zeros((E, T), dtype=bool)
        else:
            starts = self.episode_starts.T.astype(bool).copy()  # [E, T]
        starts[:, 0] = True
        flat_starts = starts.reshape(-1)
        idx = np.arange(E * T)
        # first index of the episode segment each step belongs to, then cut every seq_len steps inside it
        seg_first = np.maximum.accumulate(np.where(flat_starts, idx, 0))
        seq_start = ((idx - seg_first) % self.seq_len) == 0
        seq_id = np.cumsum(seq_start) - 1
        seq_first = np.flatnonzero(seq_start)
        pos = idx - seq_first[seq_id]
        return seq_id, pos, seq_first, len(seq_first)

    def _padded(self) -> dict:
        """All sequences of the rollout, padded once per rollout (cached until the next ``reset``/``add``)."""
        if self._padded_cache is not None:
            return self._padded_cache
        T, E = self.buffer_size, self.n_envs
        seq_id, pos, seq_first, n_seq = self._sequence_layout()
        lengths = np.bincount(seq_id, minlength=n_seq)
        L = int(lengths.max())

        def env_major(a: np.ndarray) -> np.ndarray:  # [T, E, ...] -> [E*T, ...]
            return np.swapaxes(a, 0, 1).reshape(E * T, *a.shape[2:])

        def pad(a: np.ndarray) -> torch.Tensor:  # [E*T, ...] -> [L, n_seq, ...]
            out = np.zeros((L, n_seq, *a.shape[1:]), dtype=a.dtype)
            out[pos, seq_id] = a
            return self.to_torch(out)

        self._padded_cache = {
            "lengths": lengths,
            "observations": pad(env_major(self.observations)),
            "actions": pad(env_major(self.actions)),
            "old_values": pad(env_major(self.values)),
            "old_log_prob": pad(env_major(self.log_probs)),
            "advantages": pad(env_major(self.advantages)),
            "returns": pad(env_major(self.returns)),
            "episode_starts": pad(env_major(self.episode_starts) * (1.0 if self.chunked else (pos == 0))),
            "mask": pad(np.ones(E * T, dtype=np.float32)),
            "states": self.to_torch(env_major(self.states)[seq_first]),
        }
        return self._padded_cache

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        super().compute_returns_and_advantage(last_values, dones)
        self._padded_cache = None

    def get_sequences(self, batch_size: int) -> Generator[SequenceBatch, None, None]:
        """Minibatches of whole sequences, shuffled, about ``batch_size`` real steps each."""
        assert self.full, "the rollout buffer must be full before sampling sequences"
        data = self._padded()
        lengths = data["lengths"]
        n_seq = len(lengths)
        n_minibatches = max(1, int(round(self.buffer_size * self.n_envs / batch_size)))
        order = np.random.permutation(n_seq)
        for group in np.array_split(order, min(n_minibatches, n_seq)):
            Lg = int(lengths[group].max())
            g = torch.as_tensor(group, device=self.device)
            if len(group) == n_seq:  # one minibatch holds the whole rollout: no gather needed
                g = slice(None)
            yield SequenceBatch(*(data[k][:Lg, g] for k in SequenceBatch._fields[:-1]), data["states"][g])
