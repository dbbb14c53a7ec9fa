"""Exploration bonus from random network distillation (RND; Burda et al. 2019, "Exploration by Random Network
Distillation", ICLR).

A fixed, randomly initialised *target* network maps each observation to a feature vector; a *predictor* network is
trained to reproduce it on the observations the agent visits. Its error is small on observations seen often and
large on new ones, so it serves as a novelty reward. :class:`RandomNetworkDistillation` holds both networks, the
running statistics that whiten its input (as the paper does, clipped to [-5, 5]) and those that scale its output,
and the predictor's optimizer; the trainer (``agents.ppo.RecurrentPPO`` with ``rnd_coef > 0``) asks it for the
bonus of every transition of a rollout (:meth:`bonus`, the novelty of the observation the step led to) and then
fits the predictor on those observations (:meth:`fit`).

What differs from the paper, and why: the bonus is the prediction error *standardised* by its running mean and
standard deviation (the paper divides by the running std of the intrinsic return and keeps it non-episodic with a
second value head). A zero-mean bonus rewards going where the agent has been less often without paying it for
simply making episodes longer, which matters in tasks with a terminal reward and a time limit; it is added to the
env reward, so one critic learns both.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .encoders import RunningNorm


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.orthogonal_(linear.weight, gain=np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RandomNetworkDistillation(nn.Module):
    """Novelty of observations as the predictor's error against a fixed random network.

    :param obs_size: features of one flattened observation (the policy's network input)
    :param hidden: width of the two networks' hidden layers
    :param features: size of the target's output
    :param learning_rate: the predictor's Adam learning rate
    :param epochs: passes over each rollout's observations per :meth:`fit`
    """

    def __init__(self, obs_size: int, hidden: int = 128, features: int = 64, learning_rate: float = 1e-4,
                 epochs: int = 1) -> None:
        super().__init__()
        self.obs_size, self.epochs = int(obs_size), int(epochs)
        self.obs_norm = RunningNorm(self.obs_size, clip=5.0)
        self.error_norm = RunningNorm(1, clip=float("inf"))
        self.target = _mlp([self.obs_size, hidden, hidden, features])
        self.predictor = _mlp([self.obs_size, hidden, hidden, hidden, features])
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=learning_rate)
        self.last_error = float("nan")  # mean raw error of the last :meth:`bonus` call (logged)

    def _flat(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.reshape(-1, self.obs_size).float()

    def error(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-observation squared prediction error (mean over features), ``[N]`` for ``N`` observations."""
        x = self.obs_norm(self._flat(obs))
        return (self.predictor(x) - self.target(x)).pow(2).mean(-1)

    @torch.no_grad()
    def bonus(self, next_obs: torch.Tensor) -> np.ndarray:
        """Standardised novelty of a rollout's next observations ``[T, E, *obs]`` -> ``[T, E]``.

        The input statistics take this rollout in first (the paper's order: a new observation is whitened with
        statistics that include it), then the error statistics, so the first rollout is scaled by itself."""
        lead = next_obs.shape[:2]
        self.obs_norm.update(self._flat(next_obs))
        err = self.error(next_obs)
        self.error_norm.update(err.reshape(-1, 1))
        self.last_error = float(err.mean())
        z = (err - self.error_norm.mean) / torch.sqrt(self.error_norm.var + self.error_norm.eps)
        return z.reshape(lead).cpu().numpy().astype(np.float32)

    def fit(self, next_obs: torch.Tensor, batch_size: int) -> float:
        """Train the predictor on a rollout's observations (``epochs`` shuffled passes); returns the mean loss."""
        x = self._flat(next_obs)
        losses = []
        for _ in range(self.epochs):
            for idx in torch.randperm(x.shape[0], device=x.device).split(batch_size):
                loss = self.error(x[idx]).mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")
