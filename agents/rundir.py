"""The run directory: naming, creation, lock, atomic writes, checkpoints, resume lookup and run metadata.

Run directory ``<logdir>/<env>__<core>__s<seed>__<YYYYmmdd-HHMMSS>/``::

    events.out.tfevents.*  TensorBoard: rollout/, eval/, train/, perf/, latency/ scalars and the hparams summary
    config.yaml            the resolved config (what a resume reads)
    model.zip              the trained model (RecurrentPPO.load / agents.load_policy)
    summary.json           final eval, success rate, steps/s, rollout/update seconds, latency, parameters, ...
    checkpoints/step_N/    the latest checkpoints
    .lock                  the pid of the process training in it

Checkpoint layout (written into a temporary directory, then renamed: a checkpoint exists whole or not at all;
every file is plain data - nothing in a checkpoint is unpickled)::

    RUN_DIR/checkpoints/step_000012288/
        model.zip          RecurrentPPO.save: policy, optimizer, schedules, step and update counters, episode buffer
        rng.json           python, numpy and torch RNG states, as numbers
        vecnormalize.json  reward normalization statistics (only with normalize_reward: true)
        state.json         step, accumulated rollout/update/wall seconds, number of sessions
        manifest.json      the step and each file's sha256, written last: a resume checks it before anything else

Checkpoints of earlier versions hold ``rng.pkl`` / ``vecnormalize.pkl`` (pickles) and no manifest: they are resumed
only with ``trust_checkpoint=True`` (``train_agent --resume RUN_DIR --trust-checkpoint``).

Every problem a user can cause here (a logdir that is a file or read-only, a full disk, a run in use, a run
directory without config or checkpoint) is a :class:`RunDirError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import TrainConfig, family_for
from .serialization import write_atomic

__all__ = ["RunDirError", "CheckpointError", "RunState", "write_atomic", "run_name", "create_run_dir", "probe_run_dir",
           "acquire_lock", "release_lock", "write_config", "read_run_config", "Checkpoint", "save_checkpoint",
           "list_checkpoints", "latest_checkpoint", "checkpoint_to_resume", "check_checkpoint", "restore_rng",
           "git_commit", "versions", "peak_rss_mb", "PROG"]

#: the name in messages: the console script that runs the pipeline
PROG = "train_agent"
CHECKPOINT_DIR = "checkpoints"
_CKPT_PREFIX = "step_"
_LOCK = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be created, written, locked or resumed: one line naming it and what is expected."""


class CheckpointError(RunDirError):
    """A checkpoint that is damaged, inconsistent or of a format that would need unpickling: one line."""


def run_name(cfg: TrainConfig) -> str:
    """``<env>__<core>__s<seed>__<YYYYmmdd-HHMMSS>`` (a user core ``pkg.mod:Class`` is named by its class, an env
    ``module:EnvId`` by its id)."""
    core = cfg.core.rpartition(":")[2]
    env = cfg.env.rpartition(":")[2]
    return f"{env}__{core}__s{cfg.seed}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunState:
    """What a run accumulates across sessions (saved in each checkpoint's ``state.json``)."""

    rollout_s: float = 0.0  #: seconds spent collecting rollouts (sum of perf/rollout_s)
    update_s: float = 0.0  #: seconds spent in PPO updates (sum of perf/update_s)
    wall_s: float = 0.0  #: wall-clock seconds inside learn(), all sessions
    sessions: int = 0  #: training sessions (1 + number of resumes)
    rollout_start_step: int = 0  #: step counter at the start of the current rollout (not saved)
    stop_requested: Optional[str] = None  #: name of the signal that asked to stop (not saved)
    last_eval: Optional[Dict[str, float]] = None  #: most recent evaluation (not saved)
    solved_step: Optional[int] = None  #: step of the evaluation that reached ``stop_at_success`` (training ended)

    _SAVED = ("rollout_s", "update_s", "wall_s", "sessions", "solved_step")

    def to_json(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self._SAVED}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "RunState":
        return cls(**{k: data[k] for k in cls._SAVED if k in data})


def create_run_dir(logdir: Path, name: str, needed_bytes: int) -> Path:
    """Create ``logdir/name`` (``name-2``, ... if taken) and check it is writable with enough free space."""
    if logdir.exists() and not logdir.is_dir():
        raise RunDirError(f"--logdir {str(logdir)!r} is a file; expected a writable directory")
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"--logdir {str(logdir)!r} cannot be created ({exc.strerror or exc}); expected a writable "
                       "directory") from None
    for i in range(1, 1000):
        candidate = logdir / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"--logdir {str(logdir)!r}: cannot create a run directory in it ({exc.strerror or exc}); "
                           "expected a writable directory") from None
    else:
        raise RunDirError(f"--logdir {str(logdir)!r}: too many runs named {name!r}")
    try:
        probe_run_dir(candidate, needed_bytes)
    except RunDirError:
        shutil.rmtree(candidate, ignore_errors=True)
        raise
    return candidate


def probe_run_dir(run_dir: Path, needed_bytes: int) -> None:
    """Write and delete a probe file (catches read-only and full file systems), then check the free space."""
    probe = run_dir / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(os.urandom(1 << 16))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise RunDirError(f"run directory {str(run_dir)!r} is not writable ({exc.strerror or exc}); expected a "
                       "writable directory with free space (pass --logdir DIR)") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunDirError(f"not enough free disk space for run directory {str(run_dir)!r}: {free / 2**20:.1f} MiB free, "
                       f"expected at least {needed_bytes / 2**20:.1f} MiB (checkpoints, model, logs)")


def acquire_lock(run_dir: Path) -> None:
    """Mark the run directory as in use by this process (a second process resuming it would interleave its logs
    and checkpoints). A lock left by a process that no longer exists is taken over."""
    lock = run_dir / _LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                raise RunDirError(f"run directory {str(run_dir)!r} is in use by process {pid} (another {PROG}); "
                               f"expected it to be free (delete {lock} if that process is not {PROG})") from None
            lock.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise RunDirError(f"run directory {str(run_dir)!r} is not writable ({exc.strerror or exc})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return
    raise RunDirError(f"cannot lock run directory {str(run_dir)!r}")


def release_lock(run_dir: Path) -> None:
    lock = Path(run_dir) / _LOCK
    try:
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
    except (OSError, ValueError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    header = (f"Resolved config of this run, written by {PROG} (keys: agents.config.TrainConfig).\n"
              f"Built from: defaults < configs/default.yaml < configs/{family_for(cfg.env)}.yaml < --config < flags "
              f"< --set.\n{PROG} --resume RUN_DIR reads this file.")
    write_atomic(run_dir / "config.yaml", cfg.to_yaml(header))


def read_run_config(run_dir) -> TrainConfig:
    """The config of a run directory (its ``config.yaml``, upgraded from earlier versions), checked."""
    import yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise RunDirError(f"--resume {str(run_dir)!r}: no such directory; expected a run directory written by {PROG}")
    if not cfg_path.is_file():
        raise RunDirError(f"--resume {str(run_dir)!r}: no config.yaml in it; expected a run directory written by "
                          f"{PROG}")
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunDirError(f"{cfg_path}: cannot be read ({' '.join(str(exc).split())})") from None
    return TrainConfig.from_dict(data or {}, str(cfg_path))


@dataclass
class Checkpoint:
    path: Path
    step: int

    @property
    def model(self) -> Path:
        return self.path / "model.zip"

    @property
    def vecnormalize(self) -> Path:
        """The reward-normalisation statistics (``vecnormalize.json``; ``.pkl`` in checkpoints of earlier versions)."""
        new = self.path / "vecnormalize.json"
        return new if new.exists() or not (self.path / "vecnormalize.pkl").exists() else self.path / "vecnormalize.pkl"

    @property
    def legacy(self) -> bool:
        """Written by an earlier version: pickled RNG and normalisation files, no manifest."""
        return not (self.path / MANIFEST).exists() and (self.path / "rng.pkl").exists()

    def state(self) -> RunState:
        return RunState.from_json(json.loads((self.path / "state.json").read_text()))


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rng_state() -> Dict[str, Any]:
    """The python, numpy and torch RNG states as plain numbers."""
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state().tolist(),
            "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None}


def _vecnormalize_state(venv) -> Dict[str, Any]:
    """A reward-normalising VecNormalize's statistics as plain numbers (observations are normalised in the policy)."""
    rms = venv.ret_rms
    return {"ret_mean": np.asarray(rms.mean).tolist(), "ret_var": np.asarray(rms.var).tolist(),
            "ret_count": float(rms.count), "clip_reward": float(venv.clip_reward), "gamma": float(venv.gamma),
            "epsilon": float(venv.epsilon)}


def restore_vecnormalize(venv, path: Path) -> None:
    """Set a VecNormalize's reward statistics from ``vecnormalize.json`` (checked by :func:`check_checkpoint`)."""
    data = json.loads(Path(path).read_text())
    venv.ret_rms.mean = np.asarray(data["ret_mean"], dtype=np.float64)
    venv.ret_rms.var = np.asarray(data["ret_var"], dtype=np.float64)
    venv.ret_rms.count = float(data["ret_count"])


def save_checkpoint(run_dir: Path, model, state: RunState, keep: int) -> Checkpoint:
    """Write a checkpoint of ``model`` at its current step atomically (temp directory, then rename), plain data only,
    with a manifest of checksums written last; keep the ``keep`` most recent ones."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    step = int(model.num_timesteps)
    final = root / f"{_CKPT_PREFIX}{step:09d}"
    tmp = root / f".tmp-{os.getpid()}-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.save(tmp / "model.zip")
        write_atomic(tmp / "rng.json", json.dumps(_rng_state()))
        venv = model.get_vec_normalize_env()
        if venv is not None:
            write_atomic(tmp / "vecnormalize.json", json.dumps(_vecnormalize_state(venv)))
        write_atomic(tmp / "state.json", json.dumps({"step": step, "time": time.time(), **state.to_json()}, indent=2))
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        write_atomic(tmp / MANIFEST, json.dumps({"format": 2, "step": step, "files": files}, indent=2))
        if final.exists():  # same step checkpointed twice (e.g. periodic, then on a signal): replace it
            old = root / f".old-{os.getpid()}-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    for stale in root.iterdir():  # left by a process killed while writing (SIGKILL, power loss)
        if stale.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(stale, ignore_errors=True)
    return Checkpoint(final, step)


def list_checkpoints(run_dir: Path) -> List[Checkpoint]:
    """Complete checkpoints of a run, oldest first (temporary directories of interrupted writes are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    out = []
    if root.is_dir():
        for p in root.iterdir():
            name = p.name
            if name.startswith(_CKPT_PREFIX) and name[len(_CKPT_PREFIX):].isdigit() and (p / "state.json").exists() \
                    and (p / "model.zip").exists():
                out.append(Checkpoint(p, int(name[len(_CKPT_PREFIX):])))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> Optional[Checkpoint]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def check_checkpoint(ckpt: Checkpoint, trust: bool = False) -> None:
    """Check a whole checkpoint before anything is restored from it: its manifest, every file's checksum, and that
    the manifest, ``state.json`` and the model agree on the step. A checkpoint of an earlier version (pickled RNG
    state, no manifest) passes only with ``trust``. Raises :class:`CheckpointError` (one line)."""
    where = str(ckpt.path)
    if ckpt.legacy:
        if not trust:
            raise CheckpointError(f"checkpoint {where!r} was written by an earlier version (rng.pkl, a pickle): "
                                  "resuming from it would unpickle the file; expected a checkpoint with a "
                                  "manifest.json, or --trust-checkpoint for a run you made yourself")
        return
    try:
        manifest = json.loads((ckpt.path / MANIFEST).read_text(encoding="utf-8"))
        files, step = dict(manifest["files"]), int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {where!r}: {MANIFEST} is missing or unreadable ({type(exc).__name__}); "
                              "expected a checkpoint written whole by train_agent") from None
    for name in ("model.zip", "rng.json", "state.json"):
        if name not in files:
            raise CheckpointError(f"checkpoint {where!r}: {MANIFEST} does not list {name}")
    for name, digest in files.items():
        path = ckpt.path / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"checkpoint {where!r}: {name} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"checkpoint {where!r}: {name} does not match its checksum (damaged or changed "
                                  "after it was written)")
    try:
        state_step = int(json.loads((ckpt.path / "state.json").read_text())["step"])
        with zipfile.ZipFile(ckpt.model) as archive:
            model_step = int(json.loads(archive.read("data"))["num_timesteps"])
        rng = json.loads((ckpt.path / "rng.json").read_text())
        if not (isinstance(rng.get("python"), list) and isinstance(rng.get("numpy"), list)
                and isinstance(rng.get("torch"), list)):
            raise ValueError("rng.json")
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {where!r}: its files cannot be read ({type(exc).__name__}: {exc})") from None
    if not step == state_step == model_step == ckpt.step:
        raise CheckpointError(f"checkpoint {where!r}: steps disagree (directory {ckpt.step}, manifest {step}, "
                              f"state.json {state_step}, model {model_step}); expected one step")


def checkpoint_to_resume(run_dir: Path, trust: bool = False) -> Optional[Checkpoint]:
    """The newest checkpoint, checked (:func:`check_checkpoint`); when it is damaged the error names the previous
    good one. None when the run has no checkpoint."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    try:
        check_checkpoint(ckpts[-1], trust)
    except CheckpointError as exc:
        for older in reversed(ckpts[:-1]):
            try:
                check_checkpoint(older, trust)
            except CheckpointError:
                continue
            raise CheckpointError(f"{exc}; the previous good checkpoint is {str(older.path)!r}: move the damaged "
                                  "one aside to resume from it") from None
        raise
    return ckpts[-1]


def restore_rng(ckpt: Checkpoint, trust: bool = False) -> None:
    """Set the python, numpy and torch RNGs to their state at the checkpoint (``rng.json``; the pickled ``rng.pkl``
    of an earlier version only with ``trust``)."""
    if ckpt.legacy:
        if not trust:
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: rng.pkl is a pickle; expected --trust-checkpoint")
        with open(ckpt.path / "rng.pkl", "rb") as fh:
            rng = pickle.load(fh)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        return
    rng = json.loads((ckpt.path / "rng.json").read_text())
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])


# ---------------------------------------------------------------------------------------------------- metadata
def peak_rss_mb() -> Optional[float]:
    """Peak resident memory of this process so far, in MiB (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parents[1]  # the checkout this package runs from
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        # results/ (benchmark outputs, the written comparison) is not code: editing it does not make a run dirty
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!results"],
                               capture_output=True, text=True, timeout=5)
        return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> Dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch

    from . import __version__
    return {"recurrent-agents": __version__, "torch": torch.__version__,
            "stable-baselines3": stable_baselines3.__version__,
            "gymnasium": gymnasium.__version__, "python": sys.version.split()[0]}
