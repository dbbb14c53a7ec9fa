"""The training pipeline: one function, :func:`train`, that a run reads top to bottom.

    from agents.config import resolve_config
    from agents.train import train
    result = train(resolve_config(env="MiniGrid-Memory", overrides={"core": "gru"}))
    result.status, result.run_dir, result.summary["eval_success_rate"]

config -> envs -> model -> run directory -> learn with callbacks -> final evaluation -> summary. ``train_agent``
(:mod:`agents.cli`) parses its arguments into a :class:`~agents.config.TrainConfig` and calls :func:`train`;
:func:`train` with ``resume=RUN_DIR`` continues an interrupted run from its latest checkpoint. The pieces a script
needs on their own - :func:`make_envs`, :func:`build_model`, :func:`env_factory`, :func:`param_count` - are
public here. The run directory's layout and checkpoints are :mod:`agents.rundir`'s.

Errors: :class:`SetupError` (bad input found before training: one line, nothing written) and :class:`TrainingFailed`
(training started and could not finish: one line naming the last good checkpoint).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

from .config import TrainConfig, family_for, make_schedule, parse_match_params
from .rundir import (PROG, RunDirError, acquire_lock, checkpoint_to_resume, create_run_dir, git_commit, peak_rss_mb,
                     probe_run_dir, read_run_config, release_lock, restore_rng, restore_vecnormalize, run_name,
                     save_checkpoint, versions, write_atomic, write_config)

__all__ = ["train", "TrainResult", "SetupError", "TrainingFailed", "RESUME_OPTIONS", "TIMING_KEYS", "PLACE_KEYS",
           "make_envs", "make_pool_env", "env_factory", "build_model", "size_core", "param_count",
           "device_unavailable"]

#: summary.json keys that measure time (they differ between two otherwise identical runs)
TIMING_KEYS = ("steps_per_s", "wall_s", "rollout_s", "update_s", "latency_p50_us", "latency_p99_us",
               "latency_mean_us", "peak_rss_mb")
#: summary.json keys that name where/when a run happened (also differ between identical runs)
PLACE_KEYS = ("run_dir", "model", "finished_at")
#: the options a resumed run may change (everything else comes from the run's config.yaml): where and how long it
#: runs, and the optimisation settings that do not change the network, the rollout or the env
RESUME_OPTIONS = ("total_timesteps", "device", "vec_env", "learning_rate", "ent_coef", "ent_floor", "ent_floor_coef",
                  "clip_range", "vf_coef",
                  "max_grad_norm", "target_kl", "n_epochs", "nonfinite", "eval_freq", "eval_episodes",
                  "final_eval_episodes", "checkpoint_freq", "keep_checkpoints", "latency_steps")


class SetupError(ValueError):
    """Bad input found before training started (config, env, core, device, run directory): one line."""


class TrainingFailed(RuntimeError):
    """Training started and could not finish (non-finite loss, write error): one line naming what was kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns. ``status``: ``"completed"``, or ``"stopped"`` by a signal after saving a
    checkpoint (``signal`` names it), or ``"aborted"`` by a second signal without saving."""

    status: str
    run_dir: Path
    summary: Optional[Dict[str, Any]] = None
    signal: Optional[str] = None

    @property
    def exit_code(self) -> int:
        """The shell exit status: 0 completed, 128 + the signal's number when stopped, 130 when aborted."""
        if self.status == "completed":
            return 0
        if self.status == "stopped" and self.signal:
            return 128 + int(getattr(signal, self.signal))
        return 130


def train(cfg: Optional[TrainConfig] = None, *, resume: Optional[str | Path] = None,
          resume_overrides: Optional[Dict[str, Any]] = None, trust_checkpoint: bool = False,
          progress: bool = True) -> TrainResult:
    """Train one run: ``cfg`` (a new run) or ``resume`` (a run directory to continue, with ``resume_overrides`` of
    :data:`RESUME_OPTIONS`; its newest checkpoint is checked whole first, and one of an earlier version, whose RNG
    state is a pickle, is taken only with ``trust_checkpoint``). Prints a header line and a final summary line;
    returns a :class:`TrainResult`."""
    from .callbacks import count_pending_time, evaluate, make_logger, measure_act_latency, record_eval
    from .obspack import obs_at
    from .serialization import load_policy

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*mini-batch size.*")  # sequences make minibatches approximate
        warnings.filterwarnings("ignore", message=".*[Bb]uiltin type .* has no __module__.*")  # Box2D's SWIG

        # 1. config: a new run's (its core sized), or the interrupted run's own with its latest checkpoint
        if resume is None:
            if cfg is None:
                raise SetupError("train() needs a config (agents.config.resolve_config) or resume=RUN_DIR")
            matched = size_core(cfg)
            ckpt, start_step, env_seed = None, 0, cfg.seed
        else:
            cfg, ckpt = _config_to_resume(resume, resume_overrides or {}, trust_checkpoint)
            matched, start_step, env_seed = None, ckpt.step, cfg.seed + ckpt.step  # new seeds: no replayed episodes
        device = _setup_torch(cfg)

        # 2. envs, 3. model - nothing is written before both are built
        train_env = eval_env = pool_env = model = None
        final_stage_handlers: Dict[int, Any] = {}
        run_dir: Optional[Path] = Path(resume) if resume is not None else None
        locked = False
        try:
            try:
                train_env, eval_env = make_envs(cfg, seed=env_seed,
                                                vecnormalize=ckpt.vecnormalize if ckpt is not None else None,
                                                trust=trust_checkpoint)
                pool_env = make_pool_env(cfg, seed=env_seed)
                if ckpt is None:
                    model = build_model(cfg, train_env, device)
                else:
                    model = _load_checkpoint_model(ckpt, cfg, train_env, device, trust_checkpoint)
            except (ValueError, ImportError, TypeError) as exc:
                raise SetupError(_one_line(exc)) from None
            except Exception as exc:  # gymnasium's own errors
                if type(exc).__module__.startswith("gymnasium"):
                    raise SetupError(_one_line(exc)) from None
                raise

            # 4. run directory: created (or locked again), config written, TensorBoard logger
            if run_dir is None:
                run_dir = create_run_dir(Path(cfg.logdir), run_name(cfg), _needed_bytes(model, cfg))
            acquire_lock(run_dir)
            locked = True
            if ckpt is not None:
                probe_run_dir(run_dir, _needed_bytes(model, cfg))
                probe_run_dir(run_dir / "checkpoints", 0)  # a read-only checkpoints folder: now, not at the first save
            commit = git_commit()
            try:
                write_config(run_dir, cfg)
                # on resume, events logged after the checkpoint are purged, so the curves never step back
                model.set_logger(make_logger(run_dir, None if ckpt is None else ckpt.step + 1))
                if ckpt is None:
                    _log_hparams(cfg, model)
            except OSError as exc:
                if ckpt is None:
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise SetupError(f"cannot write to run directory {str(run_dir)!r} ({exc.strerror or exc})") from None
            if ckpt is not None:
                restore_rng(ckpt, trust_checkpoint)

            # 5. learn, with evaluation, checkpoints and a clean stop on SIGINT / SIGTERM
            _print_header(cfg, model, run_dir, matched, start_step)
            state, stopped = _learn(cfg, model, run_dir, ckpt, start_step, eval_env, pool_env, progress)
            if stopped is not None:
                return stopped

            # 6. final evaluation (unseen levels, and the training pool if any), model, latency, checkpoint; a signal
            #    now is noted and this short last stage finishes, so the evaluation is logged and saved with the model
            final_stage_handlers = _finish_before_stopping()
            logger, step = model.logger, int(model.num_timesteps)
            count_pending_time(logger, state)
            episodes = cfg.final_eval_episodes if cfg.final_eval_episodes is not None else cfg.eval_episodes
            result = evaluate(model, eval_env, episodes, cfg.eval_deterministic, cfg.success_threshold)
            record_eval(logger, result)
            pool = None
            if pool_env is not None:
                pool = evaluate(model, pool_env, episodes, cfg.eval_deterministic, cfg.success_threshold)
                record_eval(logger, pool, prefix="eval_pool")
            _save_or_fail(lambda: model.save(run_dir / "model.zip"), run_dir)
            latency = measure_act_latency(load_policy(run_dir / "model.zip", device=model.device),
                                          obs_at(eval_env.reset(), 0), n=cfg.latency_steps)
            for key, value in latency.items():
                logger.record(f"latency/{key}", value)
            logger.dump(step=step)
            _save_or_fail(lambda: save_checkpoint(run_dir, model, state, cfg.keep_checkpoints), run_dir)

            # 7. summary.json and the final line
            summary = _summary(cfg, model, run_dir, state, result, pool, latency, commit)
            _save_or_fail(lambda: write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n"),
                          run_dir)
            _print_done(cfg, summary, result, run_dir)
            return TrainResult("completed", run_dir, summary)
        except RunDirError as exc:
            raise SetupError(str(exc)) from None
        finally:
            for env in (train_env, eval_env, pool_env):
                _close_quietly(env)
            if locked and run_dir is not None:
                release_lock(run_dir)
            if getattr(model, "_logger", None) is not None:
                model.logger.close()
            for sig, handler in final_stage_handlers.items():
                signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------- the steps
def _config_to_resume(resume, overrides: Dict[str, Any], trust: bool):
    """The run's config (with the allowed overrides) and its latest checkpoint, checked whole."""
    run_dir = Path(resume)
    try:
        cfg = read_run_config(run_dir)
    except RunDirError as exc:
        raise SetupError(str(exc)) from None
    for name, value in overrides.items():
        if name not in RESUME_OPTIONS:
            raise SetupError(f"resume: {name} cannot change on resume (it comes from {run_dir / 'config.yaml'}); "
                             f"expected only {', '.join(RESUME_OPTIONS)}")
        setattr(cfg, name, value)
    cfg.validate()
    try:
        ckpt = checkpoint_to_resume(run_dir, trust)
    except RunDirError as exc:
        raise SetupError(str(exc)) from None
    if ckpt is None:
        raise SetupError(f"--resume {str(run_dir)!r}: no checkpoint in {run_dir / 'checkpoints'}; nothing to resume "
                         "(start a new run)")
    if ckpt.step >= cfg.total_timesteps:
        raise SetupError(f"--resume {str(run_dir)!r}: the run already has {ckpt.step} steps >= total_timesteps="
                         f"{cfg.total_timesteps}; pass --total-timesteps N with N > {ckpt.step} to train further")
    return cfg, ckpt


def _load_checkpoint_model(ckpt, cfg: TrainConfig, train_env, device, trust: bool):
    from .ppo import RecurrentPPO

    from stable_baselines3.common.utils import FloatSchedule

    model = RecurrentPPO.load(ckpt.model, env=train_env, device=device, trust_file=trust)
    if model.policy.core_name != cfg.core:
        raise SetupError(f"{ckpt.model}: core {model.policy.core_name!r} does not match config.yaml's core "
                         f"{cfg.core!r}")
    # config.yaml must describe the checkpoint's run: a key that shapes it, edited in the file, is refused
    for key, trained in (("n_steps", model.n_steps), ("batch_size", model.batch_size), ("gamma", model.gamma),
                         ("gae_lambda", model.gae_lambda), ("n_envs", model.n_envs), ("seq_len", model.seq_len),
                         ("carry_state", getattr(model, "carry_state", False)),
                         ("rnd_coef", getattr(model, "rnd_coef", 0.0)),
                         ("normalize_advantage", model.normalize_advantage),
                         ("hidden_size", model.policy.hidden_size), ("num_layers", model.policy.num_layers),
                         ("shared_core", model.policy.shared_core)):
        if getattr(cfg, key) != trained:
            raise SetupError(f"{ckpt.path.parent.parent / 'config.yaml'}: {key}={getattr(cfg, key)!r}, but the "
                             f"checkpoint was trained with {key}={trained!r}; expected the run's own value (only "
                             f"{', '.join(RESUME_OPTIONS)} may change on resume)")
    # the optimisation settings come from the config (a resume may change them), so config.yaml tells what runs
    model.learning_rate = make_schedule(cfg.learning_rate)
    model._setup_lr_schedule()
    model.clip_range = FloatSchedule(make_schedule(cfg.clip_range))
    model.ent_coef = make_schedule(cfg.ent_coef)
    model.ent_floor, model.ent_floor_coef = cfg.ent_floor, cfg.ent_floor_coef
    model.vf_coef, model.target_kl, model.n_epochs, model.nonfinite = (cfg.vf_coef, cfg.target_kl, cfg.n_epochs,
                                                                        cfg.nonfinite)
    model.max_grad_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
    return model


def _learn(cfg: TrainConfig, model, run_dir: Path, ckpt, start_step: int, eval_env, pool_env, progress: bool):
    """``model.learn`` with the run's callbacks; a first SIGINT/SIGTERM stops after the current step and saves a
    checkpoint. Returns ``(state, None)`` when training ran to the end, ``(state, TrainResult)`` when it stopped."""
    from stable_baselines3.common.callbacks import CallbackList

    from .callbacks import (BoundaryLogCallback, CheckpointCallback, EvalCallback, ProgressBarCallback,
                            StopOnRequestCallback)
    from .rundir import RunState

    state = ckpt.state() if ckpt is not None else RunState()
    state.sessions += 1
    state.rollout_start_step = start_step
    bar = ProgressBarCallback(cfg.total_timesteps, state, desc=cfg.core.rpartition(":")[2], enabled=progress)
    last = {"ckpt": ckpt}
    callbacks = CallbackList([
        StopOnRequestCallback(state),
        BoundaryLogCallback(state),
        EvalCallback(eval_env, state, cfg.eval_freq, cfg.eval_episodes, cfg.eval_deterministic,
                     cfg.success_threshold, pool_env=pool_env, stop_at_success=cfg.stop_at_success),
        CheckpointCallback(run_dir, state, cfg.checkpoint_freq, cfg.keep_checkpoints,
                           on_save=lambda c: last.update(ckpt=c)),
        bar,
    ])

    def kept(prefix: str = "last good checkpoint") -> str:
        c = last["ckpt"]
        return (f"{prefix}: {c.path} (step {c.step}); continue with {PROG} --resume {run_dir}" if c is not None
                else "no checkpoint was written before it")

    def on_signal(signum, frame):
        if state.stop_requested is not None:  # second signal: stop now, without saving
            raise KeyboardInterrupt
        state.stop_requested = signal.Signals(signum).name
        bar.write(f"{PROG}: {state.stop_requested} received: stopping after this step and saving a checkpoint "
                  "(send it again to quit without saving)")

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    try:
        model.learn(total_timesteps=cfg.total_timesteps - start_step, callback=callbacks,
                    reset_num_timesteps=ckpt is None, progress_bar=False)
    except FloatingPointError as exc:
        bar.close()
        model.logger.discard_pending()
        raise TrainingFailed(f"training stopped: {_one_line(exc)}; {kept()} (a resume may change the learning rate: "
                             f"--set learning_rate=X)") from None
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM: quit now, without saving
        bar.close()
        print(f"{PROG}: aborted without saving; {kept('last checkpoint')}", file=sys.stderr, flush=True)
        return state, TrainResult("aborted", run_dir)
    except OSError as exc:
        bar.close()
        raise TrainingFailed(f"training stopped: cannot write to {run_dir} ({exc.strerror or exc}); "
                             f"{kept()}") from None
    finally:
        state.wall_s += time.perf_counter() - t0
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        bar.close()

    if state.stop_requested is None:
        if state.solved_step is not None:  # the env step taken after that evaluation was never trained on
            model.num_timesteps = state.solved_step
            model.logger.discard_pending()
            bar.write(f"{PROG}: evaluation success {100 * state.last_eval['success_rate']:.0f}% >= stop_at_success "
                      f"at step {state.solved_step:,}: training ends here")
        return state, None
    # the unfinished rollout was never trained on: the checkpoint's step is the start of that rollout
    model.num_timesteps = state.rollout_start_step
    model.logger.discard_pending()
    saved = _save_or_fail(lambda: save_checkpoint(run_dir, model, state, cfg.keep_checkpoints), run_dir)
    print(f"{PROG}: stopped by {state.stop_requested} at step {saved.step:,}; checkpoint saved to {saved.path}; "
          f"continue with: {PROG} --resume {run_dir}", file=sys.stderr, flush=True)
    return state, TrainResult("stopped", run_dir, signal=state.stop_requested)


def _finish_before_stopping() -> Dict[int, Any]:
    """From here to the end of :func:`train`, SIGINT / SIGTERM do not cut the final evaluation, model and summary
    short: a signal is noted and the run finishes them (seconds). Returns the handlers it replaced, which train
    restores when it returns."""
    def on_signal(signum, frame):
        print(f"{PROG}: {signal.Signals(signum).name} received: finishing the final evaluation and writing the model "
              "first", file=sys.stderr, flush=True)

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _summary(cfg: TrainConfig, model, run_dir: Path, state, result, pool, latency, commit) -> Dict[str, Any]:
    step = int(model.num_timesteps)
    return {
        "status": "completed",
        "env": cfg.env,
        "core": cfg.core,
        "seed": cfg.seed,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "shared_core": cfg.shared_core,
        "match_params": cfg.match_params,
        "core_kwargs": dict(cfg.core_kwargs),
        "kernel": model.policy.core_pi.kernel_in_use,
        "parameters": param_count(model),
        "core_parameters": _core_param_count(model),
        "total_timesteps": step,
        "requested_timesteps": cfg.total_timesteps,
        "solved_step": state.solved_step,
        "n_updates": int(model._n_updates),
        "eval_mean_return": result["mean_reward"],
        "eval_std_return": result["std_reward"],
        "eval_mean_length": result["mean_ep_length"],
        "eval_episodes": result["episodes"],
        "eval_success_rate": result.get("success_rate"),
        "train_levels": cfg.train_levels,
        "eval_pool_mean_return": pool["mean_reward"] if pool else None,
        "eval_pool_success_rate": pool.get("success_rate") if pool else None,
        "steps_per_s": step / max(state.rollout_s + state.update_s, 1e-9),
        "wall_s": state.wall_s,
        "rollout_s": state.rollout_s,
        "update_s": state.update_s,
        "latency_p50_us": latency["act_p50_us"],
        "latency_p99_us": latency["act_p99_us"],
        "latency_mean_us": latency["act_mean_us"],
        "peak_rss_mb": peak_rss_mb(),
        "device": str(model.device),
        "sessions": state.sessions,
        "git_commit": commit,
        "versions": versions(),
        "run_dir": str(run_dir),
        "model": str(run_dir / "model.zip"),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------------- envs
def env_factory(cfg: TrainConfig, training: bool = False, pool: bool = False):
    """A no-argument function building one env as a run does for ``cfg`` (view, actions, limit, stacking);
    ``training=True`` adds the training-only options (``train_wrappers`` and the level pool); ``pool=True`` only the
    level pool (``train_levels``: evaluation on the training levels)."""
    from envs import make_env

    from .config import ENV_OPTIONS
    kwargs: Dict[str, Any] = {key: getattr(cfg, key) for key in ENV_OPTIONS}
    if training and cfg.train_wrappers:
        kwargs["wrappers"] = cfg.train_wrappers
    if training or pool:
        kwargs["n_levels"] = cfg.train_levels
    return partial(make_env, cfg.env, **kwargs)


def env_kwargs(cfg: TrainConfig) -> Dict[str, Any]:
    """The ``envs.make_env`` options of the env a trained policy acts in (stored in the policy)."""
    from .config import ENV_OPTIONS
    # unset options and minigrid's own action set are make_env's defaults: left out
    return {k: getattr(cfg, k) for k in ENV_OPTIONS
            if getattr(cfg, k) not in (None, {}) and (k, getattr(cfg, k)) != ("action_set", "all")}


def make_envs(cfg: TrainConfig, seed: int, vecnormalize: Optional[Path] = None, trust: bool = False):
    """Training VecEnv (Monitor per env; VecNormalize for rewards only: observations are normalized inside the
    policy, see normalize_obs) and a DummyVecEnv for evaluation (raw rewards, no training wrappers).
    ``vecnormalize``: a checkpoint's reward statistics (``vecnormalize.json``; a pickled ``.pkl`` of an earlier
    version is read only with ``trust``)."""
    import envs
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    train_fn = env_factory(cfg, training=True)
    try:
        train_fn().close()  # a bad option or a missing package fails here, in this process, as one line
    except envs.MissingDependencyError as exc:
        raise SetupError(_one_line(exc)) from None
    except ValueError as exc:
        raise SetupError(f"env {cfg.env}: {_one_line(exc)}") from None
    if cfg.vec_env == "subproc":
        # workers ignore SIGINT/SIGTERM (inherited): on Ctrl-C only this process reacts, saves and closes them
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            train_env = make_vec_env(train_fn, n_envs=cfg.n_envs, seed=seed, vec_env_cls=SubprocVecEnv)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    else:
        train_env = make_vec_env(train_fn, n_envs=cfg.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    # sized by eval_episodes, not final_eval_episodes: a longer final evaluation leaves the periodic ones unchanged
    eval_env = make_vec_env(env_factory(cfg), n_envs=min(cfg.n_envs, cfg.eval_episodes), seed=seed + 10_000_019,
                            vec_env_cls=DummyVecEnv)
    if cfg.normalize_reward:
        if vecnormalize is not None and Path(vecnormalize).suffix == ".pkl" and Path(vecnormalize).exists():
            if not trust:
                train_env.close()
                eval_env.close()
                raise SetupError(f"{vecnormalize} is a pickle (a checkpoint of an earlier version); expected "
                                 "--trust-checkpoint for a run you made yourself")
            train_env = VecNormalize.load(str(vecnormalize), train_env)
            train_env.training = True
        else:
            train_env = VecNormalize(train_env, norm_obs=False, norm_reward=True, gamma=cfg.gamma)
            if vecnormalize is not None and Path(vecnormalize).exists():
                restore_vecnormalize(train_env, vecnormalize)
    return train_env, eval_env


def make_pool_env(cfg: TrainConfig, seed: int):
    """A DummyVecEnv evaluating on the training level pool (``train_levels``), or None without a pool."""
    if cfg.train_levels is None:
        return None
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    return make_vec_env(env_factory(cfg, pool=True), n_envs=min(cfg.n_envs, cfg.eval_episodes),
                        seed=seed + 20_000_003, vec_env_cls=DummyVecEnv)


# ---------------------------------------------------------------------------------------------------- model
def size_core(cfg: TrainConfig) -> Optional[str]:
    """Check the env's observation space against the encoder and apply ``match_params`` to ``cfg.hidden_size``.
    Returns a note on the matching (``None`` without it)."""
    import envs

    from .cores import core_param_count, match_hidden_size
    from .encoders import make_encoder, resolve_encoder
    from .policy import ACTIVATIONS

    try:
        env = env_factory(cfg, training=True)()
    except envs.MissingDependencyError as exc:
        raise SetupError(_one_line(exc)) from None
    except ValueError as exc:
        raise SetupError(f"env {cfg.env}: {_one_line(exc)}") from None
    try:
        encoder_name = resolve_encoder(cfg.encoder, env.observation_space)
        encoder = make_encoder(encoder_name, env.observation_space, cfg.encoder_sizes, ACTIVATIONS[cfg.activation],
                               normalize=cfg.normalize_obs and encoder_name in ("flat", "combined"),
                               layer_norm=cfg.encoder_norm)
    except ValueError as exc:
        raise SetupError(f"encoder={cfg.encoder!r} for {cfg.env}: {_one_line(exc)}") from None
    finally:
        env.close()
    if cfg.normalize_obs and getattr(encoder, "norm", None) is None:
        raise SetupError(f"normalize_obs=true (env {cfg.env}, encoder {encoder_name}): only Box observations (or "
                         "the Box parts of a Dict / Tuple) are normalized, not codes, one-hots or images; "
                         "expected normalize_obs=false")
    if cfg.encoder_norm and not len(encoder.net):  # the built encoder says whether it has layers
        raise SetupError(f"encoder_norm=true with encoder_sizes={list(cfg.encoder_sizes)} ({encoder_name} encoder): "
                         "no encoder layer to normalise; expected at least one size in encoder_sizes")
    if not cfg.match_params:
        return None
    target_core, target_hidden = parse_match_params(cfg.match_params)
    input_size = encoder.output_size
    try:
        cfg.hidden_size = match_hidden_size(cfg.core, target_core, target_hidden, input_size, cfg.num_layers,
                                            core_kwargs=cfg.core_kwargs)
        mine = core_param_count(cfg.core, input_size, cfg.hidden_size, cfg.num_layers, **cfg.core_kwargs)
    except (TypeError, ValueError) as exc:
        raise SetupError(f"match_params={cfg.match_params!r} with core {cfg.core!r}: {_one_line(exc)}") from None
    theirs = core_param_count(target_core, input_size, target_hidden, cfg.num_layers)
    return f"matched to {target_core}:{target_hidden} ({mine:,} vs {theirs:,} core parameters)"


def build_model(cfg: TrainConfig, train_env, device="cpu"):
    """The RecurrentPPO a TrainConfig describes (what :func:`train` trains; tests and scripts reuse it)."""
    from .ppo import RecurrentPPO

    return RecurrentPPO(
        "MlpPolicy", train_env, core=cfg.core, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        shared_core=cfg.shared_core, seq_len=cfg.seq_len, carry_state=cfg.carry_state, rnd_coef=cfg.rnd_coef,
        ent_floor=cfg.ent_floor, ent_floor_coef=cfg.ent_floor_coef, env_id=cfg.env,
        learning_rate=make_schedule(cfg.learning_rate), n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=make_schedule(cfg.clip_range),
        clip_range_vf=cfg.clip_range_vf, normalize_advantage=cfg.normalize_advantage,
        ent_coef=make_schedule(cfg.ent_coef), vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl, nonfinite=cfg.nonfinite, seed=cfg.seed, use_sde=cfg.use_sde,
        sde_sample_freq=cfg.sde_sample_freq,
        device=device, verbose=0,
        policy_kwargs=dict(core_kwargs=dict(cfg.core_kwargs), encoder=cfg.encoder,
                           encoder_sizes=list(cfg.encoder_sizes), normalize_obs=cfg.normalize_obs,
                           encoder_norm=cfg.encoder_norm, net_arch=dict(pi=list(cfg.net_arch_pi),
                                                                        vf=list(cfg.net_arch_vf)),
                           activation=cfg.activation, ortho_init=cfg.ortho_init, log_std_init=cfg.log_std_init,
                           env_kwargs=env_kwargs(cfg)),
    )


def param_count(model) -> int:
    """Parameters of a model's whole policy (encoder, cores and heads)."""
    return int(sum(p.numel() for p in model.policy.parameters()))


def _core_param_count(model) -> int:
    pol = model.policy
    cores = [pol.core_pi] + ([pol.core_vf] if pol.core_vf is not None else [])
    return int(sum(p.numel() for c in cores for p in c.parameters()))


# ---------------------------------------------------------------------------------------------------- helpers
def device_unavailable(device: str) -> Optional[str]:
    """Why torch cannot use ``device`` (a well-formed ``cuda``, ``cuda:N`` or ``mps``) on this machine, or None.
    Shared by the pipeline and the benchmark scripts."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"CUDA is not available (torch {torch.__version__}, torch.cuda.is_available() is False)"
        if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} CUDA device(s) visible"
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "MPS is not available"
    return None


def _setup_torch(cfg: TrainConfig):
    import torch
    from stable_baselines3.common.utils import get_device

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    reason = device_unavailable(cfg.device)
    if reason:
        raise SetupError(f"device={cfg.device!r}: {reason}; expected auto or cpu")
    return get_device(cfg.device)


def _needed_bytes(model, cfg: TrainConfig) -> int:
    """Free disk space a run needs: the kept checkpoints, a checkpoint being written, the model and the logs."""
    per_model = 3 * 4 * param_count(model) + (1 << 16)  # weights + Adam's two moments, float32, plus zip overhead
    return (cfg.keep_checkpoints + 2) * per_model + (32 << 20)


def _log_hparams(cfg: TrainConfig, model) -> None:
    from stable_baselines3.common.logger import HParam
    hp = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in cfg.to_dict().items()}
    hp["parameters"] = param_count(model)
    metrics = {"eval/mean_reward": 0.0, "rollout/ep_rew_mean": 0.0}
    model.logger.record("hparams", HParam(hp, metrics), exclude=("stdout", "log", "json", "csv"))
    model.logger.dump(step=0)


def _save_or_fail(fn, run_dir: Path):
    try:
        return fn()
    except OSError as exc:
        raise TrainingFailed(f"cannot write a checkpoint in {run_dir} ({exc.strerror or exc})") from None


def _print_header(cfg: TrainConfig, model, run_dir: Path, matched: Optional[str], start_step: int) -> None:
    what = f"resuming from step {start_step:,}" if start_step else f"config {family_for(cfg.env)}.yaml"
    size = f"hidden {cfg.hidden_size}" + (f", {matched}" if matched else "")
    print(f"{PROG}: {cfg.env} | core {cfg.core} ({size}, {param_count(model):,} parameters, "
          f"{model.policy.core_pi.kernel_in_use} kernel) | {cfg.n_envs} envs ({cfg.vec_env}) | {model.device} | "
          f"{cfg.total_timesteps:,} steps | {what} | run: {run_dir}", flush=True)
    note = rollout_rounding(cfg, start_step)
    if note:
        print(f"{PROG}: note: {note}", flush=True)


def rollout_rounding(cfg: TrainConfig, start_step: int = 0) -> Optional[str]:
    """A note when ``total_timesteps`` is not a whole number of rollouts (training runs whole rollouts, so it takes
    more steps than asked); ``None`` when it is."""
    rollout = cfg.n_envs * cfg.n_steps
    todo = cfg.total_timesteps - start_step
    runs = start_step + -(-todo // rollout) * rollout
    if runs == cfg.total_timesteps:
        return None
    return (f"total_timesteps={cfg.total_timesteps:,} is not a whole number of rollouts ({cfg.n_envs} envs x "
            f"{cfg.n_steps} steps = {rollout:,}); training runs whole rollouts, so it will take {runs:,} steps")


def _print_done(cfg: TrainConfig, summary: Dict[str, Any], result: Dict[str, Any], run_dir: Path) -> None:
    success = "" if result.get("success_rate") is None else f", success {100 * result['success_rate']:.0f}%"
    print(f"{PROG}: done {cfg.env} {cfg.core} s{cfg.seed}: {summary['total_timesteps']:,} steps | eval return "
          f"{result['mean_reward']:.3g} ± {result['std_reward']:.2g} over {result['episodes']} episodes{success} | "
          f"{summary['steps_per_s']:,.0f} steps/s | {summary['parameters']:,} parameters | act p50 "
          f"{summary['latency_p50_us']:.0f} µs, p99 {summary['latency_p99_us']:.0f} µs | run: {run_dir}", flush=True)


def _close_quietly(env) -> None:
    if env is not None:
        try:
            env.close()
        except Exception:  # closing after a failure must not hide the failure
            pass


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())
