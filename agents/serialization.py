"""Loading a trained policy or model without unpickling anything, and atomic writes.

A model zip written by ``RecurrentPPO.save`` holds SB3's entries plus ``recurrent_policy.json`` (plain data: spaces,
core, sizes, env id) and ``recurrent_ppo.json`` (the episode statistics as plain numbers). :func:`load_policy` reads
only that JSON and the weights ``policy.pth`` (a state dict of tensors, read with ``torch.load(weights_only=True)``),
so loading runs no code from the file. SB3 stores some fields of its ``data`` entry as pickles;
:func:`plain_data_objects` rebuilds every one of them from plain data instead (spaces from ``recurrent_policy.json``,
schedules from the numbers SB3 writes beside each pickle), which is how ``RecurrentPPO.load`` loads a file without
running code from it, and refuses a field it cannot rebuild that way.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import zipfile
from collections import deque
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from .policy import RecurrentActorCriticPolicy

POLICY_CONFIG_NAME = "recurrent_policy.json"
MODEL_DATA_NAME = "recurrent_ppo.json"
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


def read_model_file(path) -> Tuple[Path, bytes]:
    """A model file's path and its bytes, read once (every later read works on these bytes, so a file replaced
    meanwhile cannot slip anything past the checks)."""
    p = _model_path(path)
    try:
        return p, p.read_bytes()
    except OSError as exc:
        raise ValueError(f"model file {str(p)!r} cannot be read ({exc.strerror or exc})") from None


def _read_archive(path, blob: Optional[bytes] = None) -> Tuple[Path, Dict[str, Any], bytes]:
    p, blob = read_model_file(path) if blob is None else (Path(path), blob)
    if not zipfile.is_zipfile(io.BytesIO(blob)):
        raise ValueError(f"model file {str(p)!r} is not a zip archive: expected a model.zip written by "
                         "RecurrentPPO.save (the file may be corrupt or truncated)")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
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


def read_policy_config(path, blob: Optional[bytes] = None) -> Dict[str, Any]:
    """The plain-data policy description stored in a model file (raises a clear error for a foreign file)."""
    return _read_archive(path, blob)[1]


def load_policy(path, device: torch.device | str = "cpu", trust_file: bool = False) -> RecurrentActorCriticPolicy:
    """Load a trained policy (a ``torch.nn.Module`` in eval mode) from a model zip or a run directory.

    Needs neither an env nor the trainer; executes no code from the file and imports no module the file names: a
    policy with a core of the user's own (``"module:Class"``) loads once that module is imported, or with
    ``trust_file=True``, which lets the loader import it.
    """
    from .cores import file_names_no_imports

    p, cfg, weights = _read_archive(path)
    try:
        with file_names_no_imports(not trust_file):
            policy = RecurrentActorCriticPolicy.from_config(cfg)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"model file {str(p)!r} has an incompatible policy description: "
                         f"{' '.join(str(exc).split())}") from None
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


# ---------------------------------------------------------------------------------------------------- plain data
_NUM = r"(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)"
_CONSTANT_RE = re.compile(rf"ConstantSchedule\(val={_NUM}\)")
_LINEAR_RE = re.compile(rf"LinearSchedule\(start={_NUM}, end={_NUM}, end_fraction={_NUM}\)")
_SCHEDULES = ("learning_rate", "lr_schedule", "clip_range", "clip_range_vf", "ent_coef")
_RESET_ON_LOAD = ("_last_obs", "_last_episode_starts", "_last_original_obs")
_EPISODE_BUFFERS = ("ep_info_buffer", "ep_success_buffer")


class UnsafeModelFile(ValueError):
    """A model file with a field that only unpickling (running code from the file) could restore."""


def _schedule(key: str, item: Dict[str, Any], path: Path):
    """A schedule from the plain numbers SB3 writes beside its pickle: a float or a ``LinearSchedule``."""
    from stable_baselines3.common.utils import LinearSchedule

    kind = str(item.get(":type:", ""))
    if kind.endswith(".LinearSchedule'>"):
        try:
            return LinearSchedule(float(item["start"]), float(item["end"]), float(item["end_fraction"]))
        except (KeyError, TypeError, ValueError):
            pass
    elif kind.endswith(".ConstantSchedule'>") and isinstance(item.get("val"), (int, float)):
        return float(item["val"])
    elif kind.endswith(".FloatSchedule'>"):
        text = str(item.get("value_schedule", ""))
        m = _CONSTANT_RE.fullmatch(text)
        if m:
            return float(m.group(1))
        m = _LINEAR_RE.fullmatch(text)
        if m:
            return LinearSchedule(*(float(g) for g in m.groups()))
    raise UnsafeModelFile(f"model file {str(path)!r}: {key} is a schedule that is not plain data ({kind or 'unknown'}); "
                          "restoring it would unpickle code from the file: expected a constant or linear schedule, "
                          "or RecurrentPPO.load(..., trust_file=True) for a file you trust")


def plain_data_objects(path, blob: Optional[bytes] = None) -> Dict[str, Any]:
    """For every field of a model file's ``data`` entry that SB3 stored as a pickle, its value rebuilt from plain
    data (SB3's ``custom_objects``): with these, ``BaseAlgorithm.load`` unpickles nothing. ``env`` is always None
    (SB3 would otherwise make an env the file names). Raises :class:`UnsafeModelFile` (one line) for a field that
    cannot be rebuilt so, and ``ValueError`` (one line) for a damaged one."""
    from stable_baselines3.common.utils import FloatSchedule

    from .spaces import space_from_config

    p, policy_cfg, _ = _read_archive(path, blob)
    data, extra = _data_entries(p, blob)
    try:
        window = data.get("_stats_window_size")
        window = min(max(window, 1), 1_000_000) if isinstance(window, int) and not isinstance(window, bool) else 100
        out: Dict[str, Any] = {"env": None}
        for key, item in data.items():
            if not (isinstance(item, dict) and ":serialized:" in item):
                continue
            if key == "policy_class":
                out[key] = RecurrentActorCriticPolicy
            elif key in ("observation_space", "action_space"):
                out[key] = space_from_config(policy_cfg[key])
            elif key in _RESET_ON_LOAD:
                out[key] = None  # SB3 resets the env before the next rollout
            elif key in _EPISODE_BUFFERS:
                saved = extra.get(key) if isinstance(extra.get(key), list) else []
                out[key] = deque((e for e in map(_plain_episode, saved) if e is not None), maxlen=window)
            elif key in _SCHEDULES:
                value = _schedule(key, item, p)
                out[key] = FloatSchedule(value) if key == "lr_schedule" else value
            else:
                raise UnsafeModelFile(f"model file {str(p)!r}: field {key!r} ({item.get(':type:', 'unknown type')}) "
                                      "is stored as a pickle, and restoring it would run code from the file: "
                                      "expected a model saved by RecurrentPPO.save, or RecurrentPPO.load(..., "
                                      "trust_file=True) for a file you trust")
    except UnsafeModelFile:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, AssertionError) as exc:
        raise ValueError(f"model file {str(p)!r} has a damaged entry ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}); expected a model.zip written by RecurrentPPO.save") from None
    return out


def _data_entries(p: Path, blob: Optional[bytes]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A model file's SB3 ``data`` entry and its ``recurrent_ppo.json``, as JSON objects."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob) if blob is not None else p) as archive:
            data = json.loads(archive.read("data").decode("utf-8"))
            extra = json.loads(archive.read(MODEL_DATA_NAME).decode("utf-8")) \
                if MODEL_DATA_NAME in archive.namelist() else {}
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"model file {str(p)!r} is corrupt ({type(exc).__name__}): expected a model.zip written by "
                         "RecurrentPPO.save") from None
    if not isinstance(data, dict) or not isinstance(extra, dict):
        raise ValueError(f"model file {str(p)!r}: its data entries are not JSON objects; expected a model.zip "
                         "written by RecurrentPPO.save")
    return data, extra


def saved_policy_kwargs(path, blob: Optional[bytes] = None) -> Optional[Dict[str, Any]]:
    """A model file's ``policy_kwargs`` with its core options as the core takes them now (``None`` if absent)."""
    from .policy import saved_core_kwargs

    p = Path(path)
    data, _ = _data_entries(p, blob)
    kwargs = data.get("policy_kwargs")
    if not isinstance(kwargs, dict):
        return None
    try:
        return {**kwargs, "core_kwargs": saved_core_kwargs(kwargs.get("core", "gru"), kwargs.get("core_kwargs"))}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model file {str(p)!r}: {' '.join(str(exc).split())}") from None


def _plain_episode(entry: Any) -> Optional[Any]:
    """An episode-statistics entry as plain data: finite ``{"r", "l", "t"}`` numbers (or a bool for success), else
    None (dropped)."""
    if isinstance(entry, bool):
        return entry
    if not isinstance(entry, dict):
        return None
    values = {k: entry[k] for k in ("r", "l", "t") if k in entry}
    if not {"r", "l"} <= set(values) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and math.isfinite(v) for v in values.values()):
        return None
    return {k: int(v) if k == "l" else float(v) for k, v in values.items()}


def episode_data(model) -> Dict[str, Any]:
    """The plain-data part of a model that SB3 would pickle and a resumed run needs: its episode statistics."""
    out: Dict[str, Any] = {}
    for key in _EPISODE_BUFFERS:
        buf = getattr(model, key, None) or []
        out[key] = [e for e in (_plain_episode(x) for x in buf) if e is not None]
    return out
