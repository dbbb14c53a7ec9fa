"""Observation encoders: observation -> feature vector handed to the memory core.

Every encoder maps ``[..., *obs_shape]`` to ``[..., output_size]`` for any number of leading dims (``[B]`` for a
rollout step, ``[T, B]`` for a training sequence).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Type

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .kernels.fused import _capturing


_ACTIVATION_FNS = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu, nn.ELU: torch.nn.functional.elu,
                   nn.GELU: torch.nn.functional.gelu, nn.LeakyReLU: torch.nn.functional.leaky_relu}


def build_mlp(in_size: int, sizes: Sequence[int], activation: Type[nn.Module],
              layer_norm: bool = False) -> Tuple[nn.Sequential, int]:
    """Linear + activation per entry of ``sizes`` (Linear + LayerNorm + activation with ``layer_norm``: each layer's
    pre-activations normalised over its units); returns the Sequential and its output size."""
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_size, int(size))] + ([nn.LayerNorm(int(size))] if layer_norm else []) + [activation()]
        in_size = int(size)
    return nn.Sequential(*layers), in_size


def run_mlp(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)`` for a Sequential of Linear, LayerNorm and activation layers, without nn.Module call overhead (the
    per-step latency path: each module call costs a few microseconds at batch 1)."""
    for m in seq:
        if type(m) is nn.Linear:
            x = torch.nn.functional.linear(x, m.weight, m.bias)
        elif type(m) is nn.LayerNorm:
            x = torch.nn.functional.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
        else:
            x = _ACTIVATION_FNS[type(m)](x)
    return x


class RunningNorm(nn.Module):
    """Observation normalisation with running mean and variance kept *inside* the policy (buffers in its state
    dict), so a saved or exported policy normalises exactly as in training with no env wrapper to carry along.

    The statistics change only through :meth:`update` (the trainer calls it after each update with that rollout's
    observations), so a rollout and the update on it see the same normalisation.
    """

    def __init__(self, size: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = float(clip), float(eps)
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``[N, size]`` into the running statistics (parallel-variance formula, as SB3's RunningMeanStd)."""
        x = x.reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        new_mean = self.mean + delta * (n / total).to(self.mean.dtype)
        m2 = self.var * self.count.to(self.var.dtype) + b_var * n + delta ** 2 * (self.count * n / total).to(self.var.dtype)
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total.to(self.var.dtype))
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + self.eps), -self.clip, self.clip)


class FlatEncoder(nn.Module):
    """Flatten the observation, optionally normalise it (:class:`RunningNorm`), then an MLP (``sizes`` may be empty:
    the core sees the raw observation; ``layer_norm``: see :func:`build_mlp`)."""

    def __init__(self, observation_space: spaces.Box, sizes: Sequence[int], activation: Type[nn.Module],
                 normalize: bool = False, layer_norm: bool = False) -> None:
        super().__init__()
        self.obs_ndim = len(observation_space.shape)
        in_size = int(np.prod(observation_space.shape))
        self.norm = RunningNorm(in_size) if normalize else None
        self.net, self.output_size = build_mlp(in_size, sizes, activation, layer_norm=layer_norm)

    def normalizer_input(self, obs: torch.Tensor) -> torch.Tensor:
        """What :attr:`norm` sees: the observations (any leading dims) as ``[N, features]``."""
        return obs.reshape(-1, self.norm.mean.shape[0]).float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(*obs.shape[: obs.dim() - self.obs_ndim], -1).float()
        if self.norm is not None:
            x = self.norm(x)
        return run_mlp(self.net, x)


class MiniGridEncoder(nn.Module):
    """MiniGrid's symbolic view (see ``envs.MiniGridObsWrapper``): a flat uint8 vector of ``V*V*3`` cell codes
    (object, colour, state per cell, row-major over the view) followed by the agent's direction.

    Every code is embedded (each channel and the direction have their own rows of one table: one lookup per call),
    the embeddings are flattened, and an MLP maps them to the core's input. Embeddings instead of raw integers: the
    codes are categories, not magnitudes. ``layer_norm`` (see :func:`build_mlp`) keeps the MLP's tanh units off
    their +-1 plateau (results/studies/minigrid_memory_s7.md).
    """

    #: sizes of the code vocabularies: MiniGrid's OBJECT_TO_IDX, COLOR_TO_IDX, STATE_TO_IDX, and 4 directions
    VOCAB = (11, 6, 3)
    N_DIRECTIONS = 4

    def __init__(self, observation_space: spaces.Box, sizes: Sequence[int], activation: Type[nn.Module],
                 normalize: bool = False, layer_norm: bool = False, embed_dim: int = 8) -> None:
        super().__init__()
        self.norm = None  # categorical codes: nothing to normalise
        n = int(np.prod(observation_space.shape))
        if len(observation_space.shape) != 1 or (n - 1) % 3 != 0:
            raise ValueError(f"observation shape {observation_space.shape} is not a MiniGrid symbolic view: "
                             "expected (V*V*3 + 1,) from envs.MiniGridObsWrapper")
        cells = (n - 1) // 3
        sizes_per_code = list(self.VOCAB) * cells + [self.N_DIRECTIONS]
        self.register_buffer("max_code", torch.as_tensor(sizes_per_code, dtype=torch.long) - 1, persistent=False)
        # rows: [objects, colours, states] for each cell position kind, then directions; shared across cells
        self.embed = nn.Embedding(sum(self.VOCAB) + self.N_DIRECTIONS, embed_dim)
        shared = np.concatenate([[0, 11, 17]] * cells + [[20]])
        self.register_buffer("rows", torch.as_tensor(shared, dtype=torch.long), persistent=False)
        self.n_codes = n
        # one-hot column of each code's first value in the folded first layer: channel blocks (cells x vocab each),
        # then the directions
        offsets = np.cumsum([0] + [cells * v for v in self.VOCAB])
        base = [offsets[g] + c * v for c in range(cells) for g, v in enumerate(self.VOCAB)] + [offsets[-1]]
        self.register_buffer("columns", torch.as_tensor(base, dtype=torch.long), persistent=False)
        in_size = n * embed_dim
        self.net, self.output_size = build_mlp(in_size, sizes or (64,), activation, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        codes = torch.minimum(obs.long().clamp_min(0), self.max_code)  # [..., n], each in its own vocabulary
        if torch.is_grad_enabled() and not _capturing():
            return self.net[1:](self._folded_first_layer(codes))
        return self.net(self.embed(codes + self.rows).flatten(-2))  # tracing and export see the plain embedding

    def _folded_first_layer(self, codes: torch.Tensor) -> torch.Tensor:
        """The embedding and the first linear layer as one product: ``onehot(codes) @ table + bias``, where each
        table row is one code's embedding through its position's slice of the layer's weight. The same function
        and gradients as embedding-then-linear, with about half the training arithmetic (no gradient for the
        input, no gathers; results/profile.md)."""
        linear = self.net[0]
        out, dim, cells = linear.out_features, self.embed.embedding_dim, (self.n_codes - 1) // 3
        weight = linear.weight.view(out, self.n_codes, dim)
        per_cell = weight[:, :-1].reshape(out, cells, 3, dim)
        tables, first = [], 0
        for channel, size in enumerate(self.VOCAB):
            rows = self.embed.weight[first:first + size]
            tables.append(torch.einsum("ve,oce->cvo", rows, per_cell[:, :, channel]).reshape(cells * size, out))
            first += size
        tables.append(self.embed.weight[first:first + self.N_DIRECTIONS] @ weight[:, -1].t())
        table = torch.cat(tables)
        flat = codes.reshape(-1, self.n_codes)
        onehot = table.new_zeros(flat.shape[0], table.shape[0]).scatter_(1, flat + self.columns, 1.0)
        return torch.addmm(linear.bias, onehot, table).view(*codes.shape[:-1], out)


class CnnEncoder(nn.Module):
    """An image ``[..., H, W, C]`` (uint8, channels last, as gymnasium's image spaces) -> convolutions -> MLP.

    Pixels are scaled to [0, 1]. Images of at least 36 pixels a side get the Nature-DQN convolutions (Mnih et al.
    2015: 32 8x8/4, 64 4x4/2, 64 3x3/1, ReLU; what SB3's ``NatureCNN`` and the reference recurrent-PPO setups for
    MiniGrid use); smaller ones three padded 3x3 convolutions (16/1, 32/2, 32/2, ReLU). Then ``sizes`` layers of
    ``activation`` (Nature's single 512-unit layer is ``sizes=[512]`` with ReLU).
    """

    def __init__(self, observation_space: spaces.Box, sizes: Sequence[int], activation: Type[nn.Module],
                 normalize: bool = False, layer_norm: bool = False) -> None:
        super().__init__()
        self.norm = None  # pixels are scaled to [0, 1], not normalised by running statistics
        if not looks_like_image(observation_space):
            raise ValueError(f"observation shape {observation_space.shape} ({observation_space.dtype}) is not an "
                             "image: expected uint8 (H, W, C) with C in 1, 3, 4 and H, W >= 8")
        h, w, c = observation_space.shape
        if min(h, w) >= 36:
            convs = [nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                     nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]
        else:
            convs = [nn.Conv2d(c, 16, 3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                     nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            n_flat = int(self.convs(torch.zeros(1, c, h, w)).shape[1])
        self.image_shape = (h, w, c)
        self.net, self.output_size = build_mlp(n_flat, sizes, activation, layer_norm=layer_norm)
        if not sizes:
            self.output_size = n_flat

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[: obs.dim() - 3]
        x = obs.reshape(-1, *self.image_shape).permute(0, 3, 1, 2).float() / 255.0
        return run_mlp(self.net, self.convs(x)).reshape(*lead, -1)


class CombinedEncoder(nn.Module):
    """Any supported non-Box space (Discrete, MultiDiscrete, MultiBinary, or a Dict / Tuple of those and Box), read
    from its packed observation ``[..., size]`` (:mod:`agents.obspack`) -> features -> MLP.

    The features are SB3's preprocessing of each part (``stable_baselines3.common.preprocessing.preprocess_obs``),
    concatenated as SB3's ``CombinedExtractor`` does for a Dict: Box parts flattened (uint8 images scaled to [0, 1]),
    MultiBinary parts as 0/1 floats, each Discrete value and each MultiDiscrete entry one-hot (counted from the
    space's ``start``, which SB3's one-hot ignores). Image parts are
    flattened, not convolved (a Dict holding large images wants a CNN per image: not provided). ``normalize``
    applies :class:`RunningNorm` to the Box parts only.
    """

    def __init__(self, observation_space: spaces.Space, sizes: Sequence[int], activation: Type[nn.Module],
                 normalize: bool = False, layer_norm: bool = False) -> None:
        super().__init__()
        from .obspack import ObsPacker
        from .spaces import space_to_config

        packer = ObsPacker(space_to_config(observation_space))
        self.packed_size = packer.size
        box, scale, binary, unit_col, unit_value = [], [], [], [], []
        for leaf in packer.leaves:
            cols = list(range(leaf.offset, leaf.offset + leaf.width))
            if leaf.kind == "Box":
                sub = observation_space[leaf.path[0]] if leaf.path else observation_space
                box += cols
                scale += [1.0 / 255.0 if looks_like_image(sub) else 1.0] * leaf.width
            elif leaf.kind == "MultiBinary":
                binary += cols
            else:  # one unit per (entry, value): the unit is 1 where the entry holds that value
                for col, n, start in zip(cols, np.broadcast_to(leaf.n, (leaf.width,)),
                                         np.broadcast_to(leaf.start, (leaf.width,))):
                    unit_col += [col] * int(n)
                    unit_value += list(range(int(start), int(start) + int(n)))
        for name, values, dtype in (("box_cols", box, torch.long), ("box_scale", scale, torch.float32),
                                    ("binary_cols", binary, torch.long), ("unit_cols", unit_col, torch.long),
                                    ("unit_values", unit_value, torch.float32)):
            self.register_buffer(name, torch.as_tensor(values, dtype=dtype), persistent=False)
        self.norm = RunningNorm(len(box)) if normalize and box else None
        self.n_features = len(box) + len(binary) + len(unit_col)
        self.net, self.output_size = build_mlp(self.n_features, sizes, activation, layer_norm=layer_norm)

    def normalizer_input(self, obs: torch.Tensor) -> torch.Tensor:
        """What :attr:`norm` sees: the Box parts (scaled) of the packed observations, as ``[N, box features]``."""
        return obs.reshape(-1, self.packed_size).float()[:, self.box_cols] * self.box_scale

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The preprocessed parts, concatenated: ``[..., size]`` packed -> ``[..., n_features]``."""
        x = obs.float()
        parts = []
        if self.box_cols.numel():
            box = x[..., self.box_cols] * self.box_scale
            parts.append(self.norm(box) if self.norm is not None else box)
        if self.binary_cols.numel():
            parts.append(x[..., self.binary_cols])
        if self.unit_cols.numel():
            parts.append((x[..., self.unit_cols] == self.unit_values).to(x.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return run_mlp(self.net, self.features(obs))


ENCODERS = {"flat": FlatEncoder, "minigrid": MiniGridEncoder, "cnn": CnnEncoder, "combined": CombinedEncoder}


def looks_like_image(observation_space: spaces.Box) -> bool:
    """True for an image space: uint8 ``(H, W, C)``, ``C`` in 1, 3, 4, ``H, W >= 8`` (channels last)."""
    shape = observation_space.shape
    return (observation_space.dtype == np.uint8 and len(shape) == 3 and shape[2] in (1, 3, 4)
            and min(shape[:2]) >= 8)


def looks_like_minigrid(observation_space: spaces.Box) -> bool:
    """True for the observation space of ``envs.MiniGridObsWrapper``: uint8 ``(3*V*V + 1,)``, highs 10, 5, 2 per cell
    and 3 for the direction."""
    shape = observation_space.shape
    if observation_space.dtype != np.uint8 or len(shape) != 1 or (shape[0] - 1) % 3:
        return False
    cells = (shape[0] - 1) // 3
    view = int(round(np.sqrt(cells)))
    if view * view != cells:
        return False
    expected = np.concatenate([np.tile(np.array(MiniGridEncoder.VOCAB) - 1, cells), [MiniGridEncoder.N_DIRECTIONS - 1]])
    return bool(np.array_equal(observation_space.high.astype(np.int64), expected))


def resolve_encoder(name: str, observation_space: spaces.Space) -> str:
    """``"auto"`` -> ``"combined"`` for any space but a Box, ``"minigrid"`` for MiniGrid's symbolic view, ``"cnn"``
    for an image, ``"flat"`` otherwise; other names are checked (a non-Box space takes only ``"combined"``)."""
    if not isinstance(observation_space, spaces.Box):
        if name not in ("auto", "combined"):
            raise ValueError(f"encoder {name!r} reads Box observations; the space {observation_space} takes "
                             "encoder 'combined' (or 'auto')")
        return "combined"
    if name == "combined":
        raise ValueError(f"encoder 'combined' reads non-Box spaces; the space {observation_space} takes 'auto', "
                         "'flat', 'minigrid' or 'cnn'")
    if name == "auto":
        if looks_like_minigrid(observation_space):
            return "minigrid"
        return "cnn" if looks_like_image(observation_space) else "flat"
    if name not in ENCODERS:
        raise ValueError(f"encoder {name!r} is unknown: expected 'auto' or one of {', '.join(ENCODERS)}")
    return name


def make_encoder(name: str, observation_space: spaces.Space, sizes: Sequence[int], activation: Type[nn.Module],
                 normalize: bool = False, layer_norm: bool = False) -> nn.Module:
    return ENCODERS[name](observation_space, sizes, activation, normalize=normalize, layer_norm=layer_norm)
