"""SB3 callbacks and helpers of a ``train_agent`` run: progress bar, periodic evaluation, atomic checkpoints, clean
stop on a signal, log flushing at rollout boundaries, and the batch-1 act latency benchmark.

Periodic work (flush logs, evaluate, checkpoint) happens at the start of a rollout, i.e. right after an update: the
policy then matches the step counter, every logged step is <= the checkpoint's step, and a resumed run continues the
TensorBoard curves without stepping back.

Checkpoint layout (written into a temporary directory, then renamed: a checkpoint exists whole or not at all)::

    RUN_DIR/checkpoints/step_000012288/
        model.zip         RecurrentPPO.save: policy, optimizer, schedules, step and update counters, episode buffer
        rng.pkl           python, numpy and torch RNG states
        vecnormalize.pkl  reward normalization statistics (only with normalize_reward: true)
        state.json        step, accumulated rollout/update/wall seconds, number of sessions
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecEnv

__all__ = ["RunState", "RunLogger", "TensorBoardFormat", "make_logger", "count_pending_time", "flush_logs",
           "BoundaryLogCallback", "EvalCallback", "CheckpointCallback", "StopOnRequestCallback", "ProgressBarCallback",
           "Checkpoint", "save_checkpoint", "list_checkpoints", "latest_checkpoint", "restore_rng", "evaluate",
           "record_eval", "measure_act_latency", "write_atomic"]

CHECKPOINT_DIR = "checkpoints"
_CKPT_PREFIX = "step_"


# ---------------------------------------------------------------------------------------------- run bookkeeping
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

    _SAVED = ("rollout_s", "update_s", "wall_s", "sessions")

    def to_json(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self._SAVED}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "RunState":
        return cls(**{k: data[k] for k in cls._SAVED if k in data})


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file via a temporary file and ``os.replace``: readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------------------------- logging
class TensorBoardFormat(TensorBoardOutputFormat):
    """SB3's TensorBoard writer, optionally with ``purge_step``: on resume, events from an earlier session at steps
    >= ``purge_step`` (logged after its last checkpoint) are hidden by TensorBoard, so the curves never step back."""

    def __init__(self, folder: str, purge_step: Optional[int] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False


class RunLogger(Logger):
    """SB3's logger with the tag groups of the design: SB3's ``time/*`` scalars (duplicates of ``perf/*``) stay out
    of TensorBoard, so every tag is under rollout/, eval/, train/, perf/ or latency/ (plus the hparams summary)."""

    def record(self, key: str, value: Any, exclude=None) -> None:
        if key.startswith("time/"):
            exclude = ("tensorboard",)
        super().record(key, value, exclude)

    def has_pending(self) -> bool:
        return bool(self.name_to_value)

    def discard_pending(self) -> None:
        self.name_to_value.clear()
        self.name_to_count.clear()
        self.name_to_excluded.clear()


def make_logger(run_dir: Path, purge_step: Optional[int] = None) -> RunLogger:
    return RunLogger(folder=str(run_dir), output_formats=[TensorBoardFormat(str(run_dir), purge_step)])


def count_pending_time(logger: Logger, state: RunState) -> None:
    """Add the pending (not yet written) perf/rollout_s and perf/update_s of the last update to ``state``."""
    pending = logger.name_to_value
    if "perf/update_s" in pending:
        state.rollout_s += float(pending.get("perf/rollout_s", 0.0))
        state.update_s += float(pending["perf/update_s"])


def flush_logs(model, state: RunState, step: Optional[int] = None) -> None:
    """Count the pending update's time in ``state``, then write the pending records at ``step`` (default: now)."""
    count_pending_time(model.logger, state)
    if model.logger.name_to_value:
        model.logger.dump(step=model.num_timesteps if step is None else step)


class BoundaryLogCallback(BaseCallback):
    """At each rollout start (after an update): write the update's train/ and perf/ records at the current step and
    remember the step (a stopped run rolls back to it: the steps of an unfinished rollout were never trained on)."""

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def _on_rollout_start(self) -> None:
        flush_logs(self.model, self.state)
        self.state.rollout_start_step = self.num_timesteps

    def _on_step(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate(model, eval_env: VecEnv, n_episodes: int, deterministic: bool = True,
             success_threshold: Optional[float] = None) -> Dict[str, float]:
    """``evaluate_policy`` over ``n_episodes``: mean/std return, mean length, success rate (return > threshold).

    ``eval_env`` gives raw rewards (observation normalization, if any, is inside the policy)."""
    returns, lengths = evaluate_policy(model, eval_env, n_eval_episodes=n_episodes, deterministic=deterministic,
                                       return_episode_rewards=True, warn=False)
    result = {"mean_reward": float(np.mean(returns)), "std_reward": float(np.std(returns)),
              "mean_ep_length": float(np.mean(lengths)), "episodes": len(returns)}
    if success_threshold is not None:
        result["success_rate"] = float(np.mean([r > success_threshold for r in returns]))
    return result


def record_eval(logger: Logger, result: Dict[str, float], prefix: str = "eval") -> None:
    for key in ("mean_reward", "std_reward", "mean_ep_length", "success_rate"):
        if key in result:
            logger.record(f"{prefix}/{key}", result[key])


class EvalCallback(BaseCallback):
    """Evaluate every ``eval_freq`` env steps (at the first rollout start at or past each multiple), log eval/*."""

    def __init__(self, eval_env: VecEnv, state: RunState, eval_freq: int, n_episodes: int, deterministic: bool,
                 success_threshold: Optional[float], pool_env: Optional[VecEnv] = None) -> None:
        super().__init__()
        self.eval_env, self.state, self.eval_freq, self.pool_env = eval_env, state, eval_freq, pool_env
        self.n_episodes, self.deterministic, self.success_threshold = n_episodes, deterministic, success_threshold
        self.next_eval: Optional[int] = None

    def _on_training_start(self) -> None:
        if self.eval_freq > 0:
            self.next_eval = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq

    def _on_rollout_start(self) -> None:
        if self.next_eval is None or self.num_timesteps < self.next_eval or self.state.stop_requested:
            return
        self.next_eval = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq
        result = evaluate(self.model, self.eval_env, self.n_episodes, self.deterministic, self.success_threshold)
        self.state.last_eval = result
        record_eval(self.logger, result)
        if self.pool_env is not None:  # the training levels, beside the unseen ones above
            pool = evaluate(self.model, self.pool_env, self.n_episodes, self.deterministic, self.success_threshold)
            record_eval(self.logger, pool, prefix="eval_pool")
        self.logger.dump(step=self.num_timesteps)

    def _on_step(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    path: Path
    step: int

    @property
    def model(self) -> Path:
        return self.path / "model.zip"

    @property
    def vecnormalize(self) -> Path:
        return self.path / "vecnormalize.pkl"

    def state(self) -> RunState:
        return RunState.from_json(json.loads((self.path / "state.json").read_text()))


def save_checkpoint(run_dir: Path, model, state: RunState, keep: int) -> Checkpoint:
    """Write a checkpoint of ``model`` at its current step atomically (temp directory, then rename); keep the
    ``keep`` most recent ones."""
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
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        write_atomic(tmp / "rng.pkl", pickle.dumps(rng))
        venv = model.get_vec_normalize_env()
        if venv is not None:
            venv.save(str(tmp / "vecnormalize.pkl"))
        write_atomic(tmp / "state.json", json.dumps({"step": step, "time": time.time(), **state.to_json()}, indent=2))
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


def restore_rng(ckpt: Checkpoint) -> None:
    """Set the python, numpy and torch RNGs to their state at the checkpoint (our own file: pickle is fine here)."""
    with open(ckpt.path / "rng.pkl", "rb") as fh:
        rng = pickle.load(fh)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


class CheckpointCallback(BaseCallback):
    """Checkpoint every ``freq`` env steps (at the first rollout start at or past each multiple)."""

    def __init__(self, run_dir: Path, state: RunState, freq: int, keep: int,
                 on_save: Optional[Callable[[Checkpoint], None]] = None) -> None:
        super().__init__()
        self.run_dir, self.state, self.freq, self.keep, self.on_save = Path(run_dir), state, freq, keep, on_save
        self.next_save: Optional[int] = None

    def _on_training_start(self) -> None:
        if self.freq > 0:
            self.next_save = (self.num_timesteps // self.freq + 1) * self.freq

    def _on_rollout_start(self) -> None:
        if self.next_save is None or self.num_timesteps < self.next_save or self.state.stop_requested:
            return
        self.next_save = (self.num_timesteps // self.freq + 1) * self.freq
        ckpt = save_checkpoint(self.run_dir, self.model, self.state, self.keep)
        if self.on_save is not None:
            self.on_save(ckpt)

    def _on_step(self) -> bool:
        return True


class StopOnRequestCallback(BaseCallback):
    """Stop learn() at the next env step once ``state.stop_requested`` is set (by a signal handler)."""

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def _on_step(self) -> bool:
        return self.state.stop_requested is None


# ---------------------------------------------------------------------------------------------------- progress
class ProgressBarCallback(BaseCallback):
    """A tqdm bar over env steps: rate (steps/s), ETA, recent episode return, last eval return."""

    def __init__(self, total: int, state: RunState, desc: str = "", enabled: bool = True) -> None:
        super().__init__()
        self.total, self.state, self.desc, self.enabled = total, state, desc, enabled
        self.bar = None
        self._last_postfix = 0.0

    def _on_training_start(self) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, desc=self.desc, unit="step",
                        dynamic_ncols=True, smoothing=0.1, mininterval=0.5 if tty else 10.0, file=sys.stderr,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def _on_step(self) -> bool:
        if self.bar is not None:
            if self.num_timesteps > self.bar.total:  # learn() ends on a whole rollout, past the requested total
                self.bar.total = self.num_timesteps
            self.bar.update(self.num_timesteps - self.bar.n)
            now = time.monotonic()
            if now - self._last_postfix > 1.0:
                self._last_postfix = now
                self.bar.set_postfix_str(self.postfix(), refresh=False)
        return True

    def postfix(self) -> str:
        parts = []
        buf = self.model.ep_info_buffer
        if buf:
            parts.append(f"return {np.mean([ep['r'] for ep in buf]):.3g}")
        if self.state.last_eval is not None:
            parts.append(f"eval {self.state.last_eval['mean_reward']:.3g}")
        return ", ".join(parts)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.close()
            self.bar = None

    def _on_training_end(self) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------- latency
def measure_act_latency(policy, obs: np.ndarray, n: int = 1000, warmup: int = 100) -> Dict[str, float]:
    """Batch-1 ``policy.act`` latency in microseconds (p50, p99, mean) over ``n`` calls after ``warmup`` calls."""
    state = policy.initial_state(1)
    times = np.empty(n, dtype=np.float64)
    start = True
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        _, state = policy.act(obs, state, episode_start=start, deterministic=True)
        t1 = time.perf_counter_ns()
        start = False
        if i >= warmup:
            times[i - warmup] = (t1 - t0) / 1e3
    return {"act_p50_us": float(np.percentile(times, 50)), "act_p99_us": float(np.percentile(times, 99)),
            "act_mean_us": float(times.mean())}


def as_plain(value: Any) -> Any:
    """A JSON/YAML-safe copy (dataclasses, numpy scalars, paths)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
