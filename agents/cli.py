"""``train_agent``: train a recurrent PPO agent from the command line.

    train_agent --core gru --env MiniGrid-Memory
    train_agent --core lstm --env CartPoleNoVel --seed 3 --total-timesteps 200000
    train_agent --core gru --match-params lstm:128 --env MiniGrid-MemoryS9 --set n_epochs=8 ent_coef=0.005
    train_agent --resume results/runs/MiniGrid-MemoryS7-v0__gru__s0__20250101-120000

A run reads top to bottom in :func:`run`: resolve the config (:mod:`agents.config`), build the envs and the model,
create the run directory, train with the callbacks of :mod:`agents.callbacks`, evaluate, time batch-1 acting, and
write the model, the summary and the final checkpoint. Everything the user can get wrong is checked before training
starts and reported as one line ``train_agent: error: ...`` with exit status 2.

Run directory ``<logdir>/<env>__<core>__s<seed>__<YYYYmmdd-HHMMSS>/``::

    events.out.tfevents.*  TensorBoard: rollout/, eval/, train/, perf/, latency/ scalars and the hparams summary
    config.yaml            the resolved config (what --resume reads)
    model.zip              the trained model (RecurrentPPO.load / agents.load_policy)
    summary.json           final eval, success rate, steps/s, rollout/update seconds, latency, parameters, ...
    checkpoints/step_N/    the latest checkpoints (see agents.callbacks)

Exit status: 0 done; 2 bad input (flags, config, env id, logdir); 1 training failed (non-finite loss, write error);
130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM after saving a checkpoint (resume with ``--resume RUN_DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .config import ConfigError, TrainConfig, config_help, family_for, resolve_config

PROG = "train_agent"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

#: summary.json keys that measure time (they differ between two otherwise identical runs)
TIMING_KEYS = ("steps_per_s", "wall_s", "rollout_s", "update_s", "latency_p50_us", "latency_p99_us",
               "latency_mean_us", "peak_rss_mb")
#: summary.json keys that name where/when a run happened (also differ between identical runs)
PLACE_KEYS = ("run_dir", "model", "finished_at")

#: flags that may be combined with --resume (everything else comes from the run's config.yaml)
_RESUME_FLAGS = ("total_timesteps", "device", "vec_env")


class CLIError(Exception):
    """A user-facing problem detected before training: printed as one line, exit status 2."""


class TrainingFailed(Exception):
    """Training started and could not finish (non-finite loss, write error): one line, exit status 1."""


# ---------------------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; one line is enough
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .cores import CORES

    p = _Parser(
        prog=PROG,
        description="Train a recurrent PPO agent (agents.RecurrentPPO) with a swappable memory core and write a run\n"
                    "directory <logdir>/<env>__<core>__s<seed>__<time>/: TensorBoard events (tags rollout/, eval/,\n"
                    "train/, perf/, latency/ - the same for every core, so runs overlay), model.zip, config.yaml,\n"
                    "summary.json and checkpoints/. Example: train_agent --core gru --env MiniGrid-Memory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config precedence (lowest first): built-in defaults < configs/default.yaml < the env family's "
               "file\n(configs/minigrid_memory.yaml, cartpole.yaml, ... picked from the env id) < --config FILE "
               "< flags < --set.\n\nconfig keys (YAML files and --set key=value):\n" + config_help() +
               "\n\nexit status: 0 done, 2 bad input, 1 training failed (e.g. non-finite loss), 130/143 stopped by "
               "Ctrl-C/SIGTERM\nafter saving a checkpoint (continue with --resume RUN_DIR).",
    )
    p.add_argument("--core", choices=sorted(CORES), help="memory core (default gru; mlp is the memoryless control)")
    p.add_argument("--env", metavar="ID", help="env id or alias, e.g. MiniGrid-Memory, MiniGrid-MemoryS9, "
                                               "CartPoleNoVel, CartPole-P-v1 (default MiniGrid-Memory)")
    p.add_argument("--seed", type=_int_arg("--seed"), metavar="N", help="random seed (default 0)")
    p.add_argument("--total-timesteps", type=_int_arg("--total-timesteps"), metavar="N",
                   help="env steps to train for (default: the family config's); with --resume: the new total")
    p.add_argument("--n-envs", type=_int_arg("--n-envs"), metavar="N", help="parallel training envs")
    p.add_argument("--vec-env", choices=("dummy", "subproc"),
                   help="dummy: step the envs in this process (default); subproc: one worker process per env")
    p.add_argument("--device", metavar="{auto,cpu,cuda}", help="torch device (default auto; also cuda:N)")
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys, applied over the family config")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--hidden-size", type=_int_arg("--hidden-size"), metavar="N", help="core units per layer")
    size.add_argument("--match-params", metavar="CORE:HIDDEN",
                      help="size this core to the parameter count of CORE at HIDDEN units, e.g. lstm:128 "
                           "(compare cores at equal parameters, not equal hidden size)")
    p.add_argument("--logdir", metavar="DIR", help="parent of the run directory (default results/runs)")
    p.add_argument("--eval-episodes", type=_int_arg("--eval-episodes"), metavar="N",
                   help="episodes per evaluation, the final one too unless final_eval_episodes is set (default: the "
                        "family config's)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its latest checkpoint, in the same directory and "
                        "TensorBoard curves (config from RUN_DIR/config.yaml; may change --total-timesteps, "
                        "--device, --vec-env)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config key (listed below), e.g. --set n_steps=64 ent_coef=0.01 "
                        "encoder_sizes=[128]")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (all keys, after every layer and match_params) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _int_arg(flag: str):
    def parse(text: str) -> int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            try:
                x = float(text)
            except ValueError:
                x = float("nan")
            if x == x and x == int(x):
                return int(x)
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    parse.__name__ = flag
    return parse


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``train_agent`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("TRAIN_AGENT_DEBUG"))
    try:
        return run(args)
    except (CLIError, ConfigError) as exc:
        if debug:
            raise
        return _error(exc, EXIT_BAD_INPUT)
    except TrainingFailed as exc:
        if debug:
            raise
        return _error(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _error(exc: BaseException, code: int) -> int:
    print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
    return code


@dataclass
class Session:
    """Everything a training session holds (closed in :meth:`close`)."""

    cfg: TrainConfig
    run_dir: Path
    model: Any
    train_env: Any
    eval_env: Any
    resumed_from: Optional[Any] = None  # the Checkpoint a resumed run starts from
    start_step: int = 0
    input_size: int = 0
    matched: Optional[str] = None
    #: evaluation on the training level pool (``train_levels``), beside ``eval_env``'s unseen levels; else None
    pool_env: Optional[Any] = None
    #: the commit of the code this session runs, read when it starts (the tree may move on while it trains)
    git_commit: Optional[str] = field(default_factory=lambda: _git_commit())

    def close(self) -> None:
        release_lock(self.run_dir)
        for env in (self.train_env, self.eval_env, self.pool_env):
            try:
                if env is not None:
                    env.close()
            except Exception:  # closing after a failure must not hide the failure
                pass
        try:
            self.model.logger.close()
        except Exception:
            pass


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*mini-batch size.*")  # sequences make minibatches approximate
        warnings.filterwarnings("ignore", message=".*[Bb]uiltin type .* has no __module__.*")  # Box2D's SWIG
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.print_config:
        if args.resume:
            raise CLIError("--print-config shows the config of a new run; the config of a run to resume is "
                           "RUN_DIR/config.yaml")
        cfg, _, matched = prepare_config(args)
        note = f"\nhidden_size: {matched}" if matched else ""
        print(cfg.to_yaml(f"Resolved config (family file configs/{family_for(cfg.env)}.yaml){note}"), end="")
        return 0
    session = resume_session(args) if args.resume else new_session(args)
    try:
        return train(session, progress=not args.no_progress)
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------------- setup
def _flag_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    names = ("core", "seed", "total_timesteps", "n_envs", "vec_env", "device", "hidden_size", "match_params",
             "logdir", "eval_episodes")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _setup_errors():
    """The exception types that mean bad input while setting up (reported as one line, exit status 2)."""
    from gymnasium.error import Error as GymError
    return (ValueError, GymError, ImportError)


def prepare_config(args: argparse.Namespace) -> tuple:
    """The checked config of a new run, with the core sized (match_params): ``(cfg, input_size, note)``."""
    import envs
    try:
        cfg = resolve_config(env=args.env, overrides=_flag_overrides(args), set_items=args.set,
                             config_file=args.config)
    except envs.UnknownEnvError as exc:
        raise CLIError(str(exc)) from None
    spaces_env = _make_one_env(cfg)
    try:
        input_size, matched = _size_core(cfg, spaces_env)
    finally:
        spaces_env.close()
    return cfg, input_size, matched


def new_session(args: argparse.Namespace) -> Session:
    cfg, input_size, matched = prepare_config(args)
    device = _setup_torch(cfg)
    model = train_env = eval_env = None
    try:
        train_env, eval_env = make_envs(cfg, seed=cfg.seed)
        model = build_model(cfg, train_env, device)
        run_dir = create_run_dir(Path(cfg.logdir), _run_name(cfg), _needed_bytes(model, cfg))
    except BaseException as exc:
        _close_all(train_env, eval_env)
        if isinstance(exc, _setup_errors()):
            raise CLIError(_one_line(exc)) from None
        raise
    session = Session(cfg, run_dir, model, train_env, eval_env, input_size=input_size, matched=matched,
                      pool_env=make_pool_env(cfg, seed=cfg.seed))
    try:
        acquire_lock(run_dir)
        write_config(run_dir, cfg)
        model.set_logger(_make_logger(run_dir, None))
        _log_hparams(session)
    except BaseException as exc:
        session.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CLIError(f"cannot write to run directory {str(run_dir)!r} ({exc.strerror or exc})") from None
        raise
    return session


def resume_session(args: argparse.Namespace) -> Session:
    from .callbacks import latest_checkpoint, restore_rng
    from .ppo import RecurrentPPO

    given = {k for k, v in _flag_overrides(args).items()} | ({"env"} if args.env else set()) \
        | ({"config"} if args.config else set()) | ({"set"} if args.set else set())
    extra = sorted(given - set(_RESUME_FLAGS))
    if extra:
        flags = ", ".join("--" + e.replace("_", "-") for e in extra)
        raise CLIError(f"--resume takes the run's settings from RUN_DIR/config.yaml; {flags} cannot be combined with "
                       f"it (allowed: {', '.join('--' + f.replace('_', '-') for f in _RESUME_FLAGS)})")
    run_dir = Path(args.resume)
    cfg_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise CLIError(f"--resume {str(run_dir)!r}: no such directory; expected a run directory written by {PROG}")
    if not cfg_path.is_file():
        raise CLIError(f"--resume {str(run_dir)!r}: no config.yaml in it; expected a run directory written by {PROG}")
    import yaml
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CLIError(f"{cfg_path}: cannot be read ({_one_line(exc)})") from None
    cfg = TrainConfig.from_dict(data or {}, str(cfg_path))
    for name in _RESUME_FLAGS:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.validate()
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CLIError(f"--resume {str(run_dir)!r}: no checkpoint in {run_dir / 'checkpoints'}; nothing to resume "
                       "(start a new run)")
    if ckpt.step >= cfg.total_timesteps:
        raise CLIError(f"--resume {str(run_dir)!r}: the run already has {ckpt.step} steps >= total_timesteps="
                       f"{cfg.total_timesteps}; pass --total-timesteps N with N > {ckpt.step} to train further")
    device = _setup_torch(cfg)
    acquire_lock(run_dir)
    train_env = eval_env = None
    try:
        # new env seeds: a resumed run does not replay the episodes of its first steps
        train_env, eval_env = make_envs(cfg, seed=cfg.seed + ckpt.step, vecnormalize=ckpt.vecnormalize)
        model = RecurrentPPO.load(ckpt.model, env=train_env, device=device)
        if model.policy.core_name != cfg.core:
            raise CLIError(f"{ckpt.model}: core {model.policy.core_name!r} does not match config.yaml's "
                           f"core {cfg.core!r}")
        probe_run_dir(run_dir, _needed_bytes(model, cfg))
    except BaseException as exc:
        _close_all(train_env, eval_env)
        release_lock(run_dir)
        if isinstance(exc, _setup_errors()):
            raise CLIError(f"--resume {str(run_dir)!r}: {_one_line(exc)}") from None
        raise
    restore_rng(ckpt)
    session = Session(cfg, run_dir, model, train_env, eval_env, resumed_from=ckpt, start_step=ckpt.step,
                      input_size=model.policy.encoder.output_size, pool_env=make_pool_env(cfg, cfg.seed + ckpt.step))
    try:
        write_config(run_dir, cfg)
        # events the interrupted session logged after this checkpoint are purged, so the curves never step back
        model.set_logger(_make_logger(run_dir, ckpt.step + 1))
    except OSError as exc:
        session.close()
        raise CLIError(f"cannot write to run directory {str(run_dir)!r} ({exc.strerror or exc})") from None
    return session


def _close_all(*envs) -> None:
    for env in envs:
        if env is not None:
            try:
                env.close()
            except Exception:  # closing after a failure must not hide the failure
                pass


def device_unavailable(device: str) -> Optional[str]:
    """Why torch cannot use ``device`` (a well-formed ``cuda``, ``cuda:N`` or ``mps``) on this machine, or None.
    Shared by ``train_agent`` and the benchmark scripts."""
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
        raise CLIError(f"device={cfg.device!r}: {reason}; expected auto or cpu")
    return get_device(cfg.device)


def env_factory(cfg: TrainConfig, training: bool = False, pool: bool = False):
    """A no-argument function building one env as train_agent does for ``cfg`` (view, actions, limit, stacking);
    ``training=True`` adds the training-only options (the aids, ``envs.minigrid_obs.TRAINING_AIDS``, and the level
    pool); ``pool=True`` only the level pool (``train_levels``: evaluation on the training levels)."""
    from envs import make_env
    from envs.minigrid_obs import TRAINING_AIDS

    from .config import ENV_OPTIONS
    kwargs = {key: getattr(cfg, key) for key in ENV_OPTIONS}
    if training:
        kwargs.update({key: getattr(cfg, key) for key in TRAINING_AIDS if getattr(cfg, key)})
    if training or pool:
        kwargs["n_levels"] = cfg.train_levels
    return partial(make_env, cfg.env, **kwargs)


def _make_one_env(cfg: TrainConfig):
    import envs
    try:
        return env_factory(cfg, training=True)()
    except envs.MissingDependencyError as exc:
        raise CLIError(_one_line(exc)) from None
    except ValueError as exc:
        raise CLIError(f"env {cfg.env}: {_one_line(exc)}") from None


def _size_core(cfg: TrainConfig, env) -> tuple:
    """Check the observation space against the encoder; apply match_params. Returns (core input size, note)."""
    from .config import parse_match_params
    from .cores import core_param_count, match_hidden_size
    from .encoders import make_encoder, resolve_encoder
    from .policy import ACTIVATIONS

    try:
        encoder_name = resolve_encoder(cfg.encoder, env.observation_space)
        encoder = make_encoder(encoder_name, env.observation_space, cfg.encoder_sizes, ACTIVATIONS[cfg.activation],
                               normalize=cfg.normalize_obs and encoder_name == "flat", layer_norm=cfg.encoder_norm)
    except ValueError as exc:
        raise CLIError(f"encoder={cfg.encoder!r} for {cfg.env}: {_one_line(exc)}") from None
    if cfg.normalize_obs and encoder_name != "flat":
        raise CLIError(f"normalize_obs=true (env {cfg.env}, encoder {encoder_name}): only the flat encoder "
                       "normalizes observations (MiniGrid's are integer codes, embedded); expected normalize_obs=false")
    if cfg.encoder_norm and not len(encoder.net):  # the built encoder says whether it has layers
        raise CLIError(f"encoder_norm=true with encoder_sizes={list(cfg.encoder_sizes)} ({encoder_name} encoder): "
                       "no encoder layer to normalise; expected at least one size in encoder_sizes")
    input_size = encoder.output_size
    note = None
    if cfg.match_params:
        target_core, target_hidden = parse_match_params(cfg.match_params)
        cfg.hidden_size = match_hidden_size(cfg.core, target_core, target_hidden, input_size, cfg.num_layers)
        mine = core_param_count(cfg.core, input_size, cfg.hidden_size, cfg.num_layers)
        theirs = core_param_count(target_core, input_size, target_hidden, cfg.num_layers)
        note = f"matched to {target_core}:{target_hidden} ({mine:,} vs {theirs:,} core parameters)"
    return input_size, note


def make_envs(cfg: TrainConfig, seed: int, vecnormalize: Optional[Path] = None):
    """Training VecEnv (Monitor per env; VecNormalize for rewards only: observations are normalized inside the
    policy, see normalize_obs) and a DummyVecEnv for evaluation (raw rewards)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    env_fn, train_fn = env_factory(cfg), env_factory(cfg, training=True)
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
    eval_env = make_vec_env(env_fn, n_envs=min(cfg.n_envs, cfg.eval_episodes), seed=seed + 10_000_019,
                            vec_env_cls=DummyVecEnv)
    if cfg.normalize_reward:
        if vecnormalize is not None and Path(vecnormalize).exists():
            train_env = VecNormalize.load(str(vecnormalize), train_env)
            train_env.training = True
        else:
            train_env = VecNormalize(train_env, norm_obs=False, norm_reward=True, gamma=cfg.gamma)
    return train_env, eval_env


def make_pool_env(cfg: TrainConfig, seed: int):
    """A DummyVecEnv evaluating on the training level pool (``train_levels``), or None without a pool."""
    if cfg.train_levels is None:
        return None
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    return make_vec_env(env_factory(cfg, pool=True), n_envs=min(cfg.n_envs, cfg.eval_episodes),
                        seed=seed + 20_000_003, vec_env_cls=DummyVecEnv)


def core_kwargs(cfg: TrainConfig) -> dict:
    """The core options a TrainConfig sets (``lstm_forget_bias`` reaches LSTM cores only, ``gru_update_bias`` GRU
    cores only)."""
    kwargs = {"kernel": cfg.kernel}
    if cfg.core == "lstm" and cfg.lstm_forget_bias is not None:
        kwargs["forget_bias"] = cfg.lstm_forget_bias
    if cfg.core == "gru" and cfg.gru_update_bias is not None:
        kwargs["update_bias"] = cfg.gru_update_bias
    return kwargs


def build_model(cfg: TrainConfig, train_env, device="cpu"):
    """The RecurrentPPO a TrainConfig describes (what train_agent trains; tests and scripts reuse it)."""
    from .config import make_schedule
    from .ppo import RecurrentPPO

    return RecurrentPPO(
        "MlpPolicy", train_env, core=cfg.core, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        shared_core=cfg.shared_core, seq_len=cfg.seq_len, carry_state=cfg.carry_state, env_id=cfg.env,
        learning_rate=make_schedule(cfg.learning_rate), n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=make_schedule(cfg.clip_range),
        clip_range_vf=cfg.clip_range_vf, normalize_advantage=cfg.normalize_advantage,
        ent_coef=make_schedule(cfg.ent_coef), vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl, seed=cfg.seed, use_sde=cfg.use_sde, sde_sample_freq=cfg.sde_sample_freq,
        device=device, verbose=0,
        policy_kwargs=dict(core_kwargs=core_kwargs(cfg), encoder=cfg.encoder, encoder_sizes=list(cfg.encoder_sizes),
                           normalize_obs=cfg.normalize_obs, encoder_norm=cfg.encoder_norm,
                           net_arch=dict(pi=list(cfg.net_arch_pi), vf=list(cfg.net_arch_vf)),
                           activation=cfg.activation, ortho_init=cfg.ortho_init, log_std_init=cfg.log_std_init),
    )


def _run_name(cfg: TrainConfig) -> str:
    return f"{cfg.env}__{cfg.core}__s{cfg.seed}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _needed_bytes(model, cfg: TrainConfig) -> int:
    """Free disk space a run needs: the kept checkpoints, a checkpoint being written, the model and the logs."""
    per_model = 3 * 4 * param_count(model) + (1 << 16)  # weights + Adam's two moments, float32, plus zip overhead
    return (cfg.keep_checkpoints + 2) * per_model + (32 << 20)


def create_run_dir(logdir: Path, name: str, needed_bytes: int) -> Path:
    """Create ``logdir/name`` (``name-2``, ... if taken) and check it is writable with enough free space."""
    if logdir.exists() and not logdir.is_dir():
        raise CLIError(f"--logdir {str(logdir)!r} is a file; expected a writable directory")
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--logdir {str(logdir)!r} cannot be created ({exc.strerror or exc}); expected a writable "
                       "directory") from None
    for i in range(1, 1000):
        candidate = logdir / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise CLIError(f"--logdir {str(logdir)!r}: cannot create a run directory in it ({exc.strerror or exc}); "
                           "expected a writable directory") from None
    else:
        raise CLIError(f"--logdir {str(logdir)!r}: too many runs named {name!r}")
    try:
        probe_run_dir(candidate, needed_bytes)
    except CLIError:
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
        raise CLIError(f"run directory {str(run_dir)!r} is not writable ({exc.strerror or exc}); expected a "
                       "writable directory with free space (pass --logdir DIR)") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise CLIError(f"not enough free disk space for run directory {str(run_dir)!r}: {free / 2**20:.1f} MiB free, "
                       f"expected at least {needed_bytes / 2**20:.1f} MiB (checkpoints, model, logs)")


_LOCK = ".lock"


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
                raise CLIError(f"run directory {str(run_dir)!r} is in use by process {pid} (another {PROG}); "
                               f"expected it to be free (delete {lock} if that process is not {PROG})") from None
            lock.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise CLIError(f"run directory {str(run_dir)!r} is not writable ({exc.strerror or exc})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return
    raise CLIError(f"cannot lock run directory {str(run_dir)!r}")


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
    from .callbacks import write_atomic
    header = (f"Resolved config of this run, written by {PROG} (keys: agents.config.TrainConfig).\n"
              f"Built from: defaults < configs/default.yaml < configs/{family_for(cfg.env)}.yaml < --config < flags "
              f"< --set.\n{PROG} --resume RUN_DIR reads this file.")
    write_atomic(run_dir / "config.yaml", cfg.to_yaml(header))


def _make_logger(run_dir: Path, purge_step: Optional[int]):
    from .callbacks import make_logger
    return make_logger(run_dir, purge_step)


def _log_hparams(session: Session) -> None:
    from stable_baselines3.common.logger import HParam
    hp = {}
    for k, v in session.cfg.to_dict().items():
        hp[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
    hp["parameters"] = param_count(session.model)
    metrics = {"eval/mean_reward": 0.0, "rollout/ep_rew_mean": 0.0}
    session.model.logger.record("hparams", HParam(hp, metrics), exclude=("stdout", "log", "json", "csv"))
    session.model.logger.dump(step=0)


def param_count(model) -> int:
    """Parameters of a model's whole policy (encoder, cores and heads)."""
    return int(sum(p.numel() for p in model.policy.parameters()))


def _core_param_count(model) -> int:
    pol = model.policy
    cores = [pol.core_pi] + ([pol.core_vf] if pol.core_vf is not None else [])
    return int(sum(p.numel() for c in cores for p in c.parameters()))


# ---------------------------------------------------------------------------------------------------- training
def train(s: Session, progress: bool = True) -> int:
    from stable_baselines3.common.callbacks import CallbackList

    from .callbacks import (BoundaryLogCallback, CheckpointCallback, EvalCallback, ProgressBarCallback, RunState,
                            StopOnRequestCallback, save_checkpoint)

    cfg, model = s.cfg, s.model
    state = s.resumed_from.state() if s.resumed_from is not None else RunState()
    state.sessions += 1
    state.rollout_start_step = s.start_step
    bar = ProgressBarCallback(cfg.total_timesteps, state, desc=f"{cfg.core}", enabled=progress)
    last_ckpt = {"ckpt": s.resumed_from}
    callbacks = CallbackList([
        StopOnRequestCallback(state),
        BoundaryLogCallback(state),
        EvalCallback(s.eval_env, state, cfg.eval_freq, cfg.eval_episodes, cfg.eval_deterministic,
                     cfg.success_threshold, pool_env=s.pool_env),
        CheckpointCallback(s.run_dir, state, cfg.checkpoint_freq, cfg.keep_checkpoints,
                           on_save=lambda c: last_ckpt.update(ckpt=c)),
        bar,
    ])
    _print_header(s)

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if state.stop_requested is not None:  # second signal: stop now, without saving
            raise KeyboardInterrupt
        state.stop_requested = name
        bar.write(f"{PROG}: {name} received: stopping after this step and saving a checkpoint "
                  "(send it again to quit without saving)")

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    try:
        model.learn(total_timesteps=cfg.total_timesteps - s.start_step, callback=callbacks,
                    reset_num_timesteps=s.resumed_from is None, progress_bar=False)
    except FloatingPointError as exc:
        bar.close()
        model.logger.discard_pending()
        ckpt = last_ckpt["ckpt"]
        keep = (f"last good checkpoint: {ckpt.path} (step {ckpt.step}); continue with {PROG} --resume {s.run_dir}"
                if ckpt is not None else "no checkpoint was written before it")
        raise TrainingFailed(f"training stopped: {_one_line(exc)}; {keep}") from None
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM: quit now, without saving
        bar.close()
        ckpt = last_ckpt["ckpt"]
        keep = (f"last checkpoint: {ckpt.path} (step {ckpt.step}); continue with {PROG} --resume {s.run_dir}"
                if ckpt is not None else "no checkpoint was written")
        print(f"{PROG}: aborted without saving; {keep}", file=sys.stderr, flush=True)
        return 130
    except OSError as exc:
        bar.close()
        ckpt = last_ckpt["ckpt"]
        keep = f"last good checkpoint: {ckpt.path}" if ckpt is not None else "no checkpoint was written"
        raise TrainingFailed(f"training stopped: cannot write to {s.run_dir} ({exc.strerror or exc}); {keep}") \
            from None
    finally:
        state.wall_s += time.perf_counter() - t0
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        bar.close()

    if state.stop_requested is not None:
        # the unfinished rollout was never trained on: the checkpoint's step is the start of that rollout
        model.num_timesteps = state.rollout_start_step
        model.logger.discard_pending()
        ckpt = _save_or_fail(lambda: save_checkpoint(s.run_dir, model, state, cfg.keep_checkpoints), s)
        print(f"{PROG}: stopped by {state.stop_requested} at step {ckpt.step:,}; checkpoint saved to {ckpt.path}; "
              f"continue with: {PROG} --resume {s.run_dir}", file=sys.stderr, flush=True)
        return 128 + int(getattr(signal, state.stop_requested))

    return finish(s, state)


def _save_or_fail(fn, s: Session):
    try:
        return fn()
    except OSError as exc:
        raise TrainingFailed(f"cannot write a checkpoint in {s.run_dir} ({exc.strerror or exc})") from None


def finish(s: Session, state) -> int:
    """Final evaluation, model, latency, summary and checkpoint of a completed run."""
    from .callbacks import count_pending_time, evaluate, measure_act_latency, record_eval, save_checkpoint, write_atomic
    from .serialization import load_policy

    cfg, model, logger = s.cfg, s.model, s.model.logger
    step = int(model.num_timesteps)
    # the last update's train/ and perf/ records are still pending: count its time, write them with the final eval
    count_pending_time(logger, state)
    final_episodes = cfg.final_eval_episodes if cfg.final_eval_episodes is not None else cfg.eval_episodes
    result = evaluate(model, s.eval_env, final_episodes, cfg.eval_deterministic, cfg.success_threshold)
    record_eval(logger, result)
    pool = None
    if s.pool_env is not None:
        pool = evaluate(model, s.pool_env, final_episodes, cfg.eval_deterministic, cfg.success_threshold)
        record_eval(logger, pool, prefix="eval_pool")

    _save_or_fail(lambda: model.save(s.run_dir / "model.zip"), s)

    policy = load_policy(s.run_dir / "model.zip", device=model.device)
    obs = s.eval_env.reset()[0]
    latency = measure_act_latency(policy, obs, n=cfg.latency_steps)
    for key, value in latency.items():
        logger.record(f"latency/{key}", value)
    logger.dump(step=step)
    _save_or_fail(lambda: save_checkpoint(s.run_dir, model, state, cfg.keep_checkpoints), s)

    steps_per_s = step / max(state.rollout_s + state.update_s, 1e-9)
    summary = {
        "status": "completed",
        "env": cfg.env,
        "core": cfg.core,
        "seed": cfg.seed,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "shared_core": cfg.shared_core,
        "match_params": cfg.match_params,
        "kernel": model.policy.core_pi.kernel_in_use,
        "parameters": param_count(model),
        "core_parameters": _core_param_count(model),
        "total_timesteps": step,
        "requested_timesteps": cfg.total_timesteps,
        "n_updates": int(model._n_updates),
        "eval_mean_return": result["mean_reward"],
        "eval_std_return": result["std_reward"],
        "eval_mean_length": result["mean_ep_length"],
        "eval_episodes": result["episodes"],
        "eval_success_rate": result.get("success_rate"),
        "train_levels": cfg.train_levels,
        "eval_pool_mean_return": pool["mean_reward"] if pool else None,
        "eval_pool_success_rate": pool.get("success_rate") if pool else None,
        "steps_per_s": steps_per_s,
        "wall_s": state.wall_s,
        "rollout_s": state.rollout_s,
        "update_s": state.update_s,
        "latency_p50_us": latency["act_p50_us"],
        "latency_p99_us": latency["act_p99_us"],
        "latency_mean_us": latency["act_mean_us"],
        "peak_rss_mb": _peak_rss_mb(),
        "device": str(model.device),
        "sessions": state.sessions,
        "git_commit": s.git_commit,
        "versions": _versions(),
        "run_dir": str(s.run_dir),
        "model": str(s.run_dir / "model.zip"),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    _save_or_fail(lambda: write_atomic(s.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n"), s)

    success = "" if result.get("success_rate") is None else f", success {100 * result['success_rate']:.0f}%"
    print(f"{PROG}: done {cfg.env} {cfg.core} s{cfg.seed}: {step:,} steps | eval return "
          f"{result['mean_reward']:.3g} ± {result['std_reward']:.2g} over {result['episodes']} episodes{success} | "
          f"{steps_per_s:,.0f} steps/s | {summary['parameters']:,} parameters | act p50 "
          f"{latency['act_p50_us']:.0f} µs, p99 {latency['act_p99_us']:.0f} µs | run: {s.run_dir}", flush=True)
    return 0


def _print_header(s: Session) -> None:
    cfg = s.cfg
    what = f"resuming from step {s.start_step:,}" if s.resumed_from is not None else \
        f"config {family_for(cfg.env)}.yaml"
    size = f"hidden {cfg.hidden_size}" + (f", {s.matched}" if s.matched else "")
    print(f"{PROG}: {cfg.env} | core {cfg.core} ({size}, {param_count(s.model):,} parameters, "
          f"{s.model.policy.core_pi.kernel_in_use} kernel) | "
          f"{cfg.n_envs} envs ({cfg.vec_env}) | {s.model.device} | {cfg.total_timesteps:,} steps | {what} | "
          f"run: {s.run_dir}", flush=True)


def _peak_rss_mb() -> Optional[float]:
    """Peak resident memory of this process so far, in MiB (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parents[1]
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


def _versions() -> Dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch

    from . import __version__
    return {"recurrent-agents": __version__, "torch": torch.__version__,
            "stable-baselines3": stable_baselines3.__version__,
            "gymnasium": gymnasium.__version__, "python": sys.version.split()[0]}


if __name__ == "__main__":
    sys.exit(main())
