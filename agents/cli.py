"""``train_agent``: train a recurrent PPO agent from the command line.

    train_agent --core gru --env MiniGrid-Memory
    train_agent --core lstm --env CartPoleNoVel --seed 3 --total-timesteps 200000
    train_agent --core gru --match-params lstm:128 --env MiniGrid-MemoryS9 --set n_epochs=8 ent_coef=0.005
    train_agent --core mypkg.cores:MyCore --core-kwargs alpha=0.5          # a core of your own
    train_agent --resume results/runs/MiniGrid-MemoryS7-v0__gru__s0__20250101-120000

This module only parses arguments into a config (:mod:`agents.config`) and calls the training pipeline,
:func:`agents.train.train`, which reads top to bottom; the run directory is described in :mod:`agents.rundir`.
Everything the user can get wrong is checked before training starts and reported as one line
``train_agent: error: ...`` with exit status 2.

Exit status: 0 done; 2 bad input (flags, config, env id, logdir); 1 training failed (non-finite loss, write error);
130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM after saving a checkpoint (resume with ``--resume RUN_DIR``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, Optional, Sequence

from .config import ConfigError, config_help, family_for, parse_set, resolve_config
from .train import PLACE_KEYS, RESUME_OPTIONS, TIMING_KEYS, SetupError, TrainingFailed, size_core, train

__all__ = ["main", "build_parser", "PLACE_KEYS", "TIMING_KEYS"]

PROG = "train_agent"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


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
    p.add_argument("--core", metavar="CORE",
                   help=f"memory core: {', '.join(sorted(CORES))} (default gru; mlp is the memoryless control) or "
                        "module:Class, a MemoryCore subclass of your own")
    p.add_argument("--env-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="keyword arguments of the env's constructor, e.g. --env-kwargs length=100 (rl-zoo3's flag; "
                        "same as --set env_kwargs.KEY=VALUE; recorded in the run's config and saved policies)")
    p.add_argument("--core-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="the core's own options, e.g. --core-kwargs forget_bias=1.0 (same as --set "
                        "core_kwargs.KEY=VALUE; agents.cores.core_options lists a core's options)")
    p.add_argument("--env", metavar="ID", help="env id or alias, e.g. MiniGrid-Memory, MiniGrid-MemoryS9, "
                                               "CartPoleNoVel, CartPole-P-v1 (default MiniGrid-Memory)")
    p.add_argument("--gym-packages", nargs="+", default=None, metavar="PKG",
                   help="modules to import before the env id is resolved (packages that register gymnasium envs, "
                        "e.g. popgym); or give the id as module:EnvId")
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
                        "--device, --vec-env, and with --set the optimisation settings, e.g. learning_rate)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="with --resume: accept a checkpoint of an earlier version, whose RNG and reward statistics "
                        "are pickles (unpickling runs code from the file: only for runs you made yourself)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config key (listed below), e.g. --set n_steps=64 ent_coef=0.01 "
                        "encoder_sizes=[128]; a mapping key by KEY.NAME=VALUE, e.g. core_kwargs.kernel=stock")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``train_agent`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("TRAIN_AGENT_DEBUG"))
    try:
        return run(args)
    except (SetupError, ConfigError) as exc:
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


def run(args: argparse.Namespace) -> int:
    """The parsed arguments -> a config -> :func:`agents.train.train` (or the printed config); the exit status."""
    for name, expected in _NON_EMPTY.items():  # an empty value is a mistake, never "not given"
        if getattr(args, name) == "":
            raise SetupError(f"--{name.replace('_', '-')} '': expected {expected}")
    if args.resume is not None:
        return _resume(args)
    import envs

    for flag, items, example in (("core-kwargs", args.core_kwargs, "forget_bias=1.0"),
                                 ("env-kwargs", args.env_kwargs, "length=100")):
        for item in items:
            if not item.partition("=")[0].strip() or "=" not in item:
                raise SetupError(f"--{flag} {item!r}: expected KEY=VALUE, e.g. --{flag} {example}")
    set_items = (list(args.set) + [f"core_kwargs.{item}" for item in args.core_kwargs]
                 + [f"env_kwargs.{item}" for item in args.env_kwargs])
    try:
        cfg = resolve_config(env=args.env, overrides=_flag_overrides(args), set_items=set_items,
                             config_file=args.config)
    except (envs.UnknownEnvError, envs.MissingDependencyError) as exc:
        raise SetupError(str(exc)) from None
    if args.trust_checkpoint:
        raise SetupError("--trust-checkpoint applies only with --resume RUN_DIR")
    if args.print_config:
        matched = size_core(cfg)
        note = f"\nhidden_size: {matched}" if matched else ""
        print(cfg.to_yaml(f"Resolved config (family file configs/{family_for(cfg.env)}.yaml){note}"), end="")
        return 0
    return train(cfg, progress=not args.no_progress).exit_code


#: string flags and what a value must be (the message for an empty one)
_NON_EMPTY = {"resume": "the path of a run directory", "env": "an env id, e.g. MiniGrid-Memory",
              "core": "a core name (gru, lstm, mlp, mingru, lru, ffm, s6) or module:Class", "match_params": "CORE:HIDDEN, e.g. lstm:128",
              "config": "the path of a YAML file", "logdir": "a directory", "device": "auto, cpu, cuda or cuda:N"}


def _resume(args: argparse.Namespace) -> int:
    if args.print_config:
        raise SetupError("--print-config shows the config of a new run; the config of a run to resume is "
                         "RUN_DIR/config.yaml")
    flags = _flag_overrides(args)
    given = set(flags) | {name for name in ("env", "config", "core_kwargs", "env_kwargs") if getattr(args, name)}
    allowed = ("total_timesteps", "device", "vec_env")
    extra = sorted(given - set(allowed))
    if extra:
        names = ", ".join("--" + e.replace("_", "-") for e in extra)
        raise SetupError(f"--resume takes the run's settings from RUN_DIR/config.yaml; {names} cannot be combined "
                         f"with it (allowed: {', '.join('--' + f.replace('_', '-') for f in allowed)}, and --set "
                         "for the optimisation settings)")
    sets = parse_set(args.set)
    for key in sets:
        if key not in RESUME_OPTIONS:
            raise SetupError(f"--resume with --set {key}=...: {key} cannot change on resume (it shapes the network, "
                             f"the rollout or the env); expected one of {', '.join(RESUME_OPTIONS)}")
    flags.update(sets)
    return train(resume=args.resume, resume_overrides=flags, trust_checkpoint=args.trust_checkpoint,
                 progress=not args.no_progress).exit_code


def _flag_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    names = ("core", "seed", "total_timesteps", "n_envs", "vec_env", "device", "hidden_size", "match_params",
             "logdir", "eval_episodes", "gym_packages")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


if __name__ == "__main__":
    sys.exit(main())
