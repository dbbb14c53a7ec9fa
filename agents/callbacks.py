"""SB3 callbacks and helpers of a training run: the logger with the design's tag groups, progress bar, periodic
evaluation, periodic checkpoints (written by :mod:`agents.rundir`), clean stop on a signal, log flushing at rollout
boundaries, and the batch-1 act latency benchmark.

Periodic work (flush logs, evaluate, checkpoint) happens at the start of a rollout, i.e. right after an update: the
policy then matches the step counter, every logged step is <= the checkpoint's step, and a resumed run continues the
TensorBoard curves without stepping back.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecEnv

from .rundir import Checkpoint, RunState, save_checkpoint

__all__ = ["RunLogger", "TensorBoardFormat", "make_logger", "count_pending_time", "flush_logs",
           "BoundaryLogCallback", "EvalCallback", "CheckpointCallback", "StopOnRequestCallback", "ProgressBarCallback",
           "evaluate", "record_eval", "measure_act_latency"]


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
                 success_threshold: Optional[float], pool_env: Optional[VecEnv] = None,
                 stop_at_success: Optional[float] = None) -> None:
        super().__init__()
        self.stop_at_success = stop_at_success
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
        if self.stop_at_success is not None and result.get("success_rate", 0.0) >= self.stop_at_success:
            self.state.solved_step = self.num_timesteps  # learn() ends at the next env step, before it is trained on

    def _on_step(self) -> bool:
        return self.state.solved_step is None


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
