"""Loading a trained policy without the trainer, without an env and without unpickling objects.

A model zip written by ``RecurrentPPO.save`` holds SB3's entries plus ``recurrent_policy.json`` (plain data: spaces,
core, sizes, env id). :func:`load_policy` reads only that JSON and the weights ``policy.pth`` (a state dict of
tensors, read with ``torch.load(weights_only=True)``), so loading runs no code from the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import torch

from .policy import RecurrentActorCriticPolicy

POLICY_CONFIG_NAME = "recurrent_policy.json"
WEIGHTS_NAME = "policy.pth"


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` in one rename (readers see the
    old or the new file, never a part), on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path` (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())


def _model_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "model.zip"
    elif not p.exists() and p.suffix != ".zip" and p.with_name(p.name + ".zip").exists():
        p = p.with_name(p.name + ".zip")
    if not p.exists():
        raise FileNotFoundError(f"model file {str(p)!r} does not exist: expected a model.zip written by "
                                "RecurrentPPO.save (or a run directory holding one)")
    return p


def _read_archive(path) -> Tuple[Path, Dict[str, Any], bytes]:
    p = _model_path(path)
    if not zipfile.is_zipfile(p):
        raise ValueError(f"model file {str(p)!r} is not a zip archive: expected a model.zip written by "
                         "RecurrentPPO.save (the file may be corrupt or truncated)")
    try:
        with zipfile.ZipFile(p) as archive:
            names = set(archive.namelist())
            if POLICY_CONFIG_NAME not in names:
                raise ValueError(f"model file {str(p)!r} has no {POLICY_CONFIG_NAME}: expected a model written by "
                                 "recurrent-agents' RecurrentPPO.save (SB3 and sb3-contrib models are not compatible)")
            if WEIGHTS_NAME not in names:
                raise ValueError(f"model file {str(p)!r} has no {WEIGHTS_NAME}: expected the policy weights inside")
            cfg = json.loads(archive.read(POLICY_CONFIG_NAME).decode("utf-8"))
            weights = archive.read(WEIGHTS_NAME)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"model file {str(p)!r} is corrupt ({type(exc).__name__}: {exc}): expected a model.zip "
                         "written by RecurrentPPO.save") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model file {str(p)!r}: {POLICY_CONFIG_NAME} holds {type(cfg).__name__}, expected an object")
    return p, cfg, weights


def read_policy_config(path) -> Dict[str, Any]:
    """The plain-data policy description stored in a model file (raises a clear error for a foreign file)."""
    return _read_archive(path)[1]


def load_policy(path, device: torch.device | str = "cpu") -> RecurrentActorCriticPolicy:
    """Load a trained policy (a ``torch.nn.Module`` in eval mode) from a model zip or a run directory.

    Needs neither an env nor the trainer; executes no code from the file.
    """
    p, cfg, weights = _read_archive(path)
    try:
        policy = RecurrentActorCriticPolicy.from_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"model file {str(p)!r} has an incompatible policy description: {exc}") from None
    try:
        state_dict = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt data
        raise ValueError(f"model file {str(p)!r}: weights could not be read ({type(exc).__name__}): "
                         "expected a state dict saved by RecurrentPPO.save") from None
    try:
        policy.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"model file {str(p)!r}: weights do not fit the described policy "
                         f"({' '.join(line.strip() for line in first[:3])})") from None
    policy.to(device)
    policy.set_training_mode(False)
    return policy
