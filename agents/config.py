"""Training configuration: one typed, documented, validated dataclass, loaded from YAML and overridable from the CLI.

:class:`TrainConfig` holds every option of a ``train_agent`` run: the run itself (env, core, seed, budget, devices),
the environment wrappers, evaluation, the network and PPO. Values are layered, lowest precedence first::

    TrainConfig defaults < configs/default.yaml < configs/<family>.yaml (picked from the env id)
                         < --config FILE < command-line flags < --set key=value

Every layer is checked as it is applied: an unknown key or an impossible value raises :class:`ConfigError`, whose
one-line message names the key, the value, where it came from and what was expected. Cross-field rules are checked
once the layers are merged (:meth:`TrainConfig.validate`).

>>> cfg = resolve_config(env="CartPoleNoVel", overrides={"core": "lstm"}, set_items=["n_steps=64"])
>>> cfg.env, cfg.n_envs, cfg.learning_rate, make_schedule(cfg.learning_rate)(0.5)
('CartPoleNoVel-v1', 8, 'lin_1e-3', 0.0005)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, get_args, \
    get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "TrainConfig", "FAMILIES", "family_for", "load_family", "load_config_file", "parse_set",
           "resolve_config", "make_schedule", "config_help"]

#: A learning rate, clip range or entropy coefficient: a number, or ``"lin_<x>"`` (linear decay from x to 0 over the
#: run; rl-zoo3's syntax).
Schedule = Union[float, str]

_SCHEDULE_RE = re.compile(r"lin_([0-9.]+(?:[eE][-+]?[0-9]+)?)")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]+)?|mps")


class ConfigError(ValueError):
    """An unknown config key or an impossible value; the message is one line naming it and what was expected."""


def _opt(default: Any, doc: str, **rules: Any) -> Any:
    """A dataclass field with its documentation and value rules (``choices``, ``min``, ``max``, ``gt``, ``odd``)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **rules})
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc, **rules})
    return field(default=default, metadata={"doc": doc, **rules})


#: The TrainConfig keys that are ``envs.make_env`` options (how train_agent builds each env; export manifests
#: record them so an exported policy's env can be rebuilt).
ENV_OPTIONS = ("view_size", "action_set", "obs_mode", "tile_size", "max_episode_steps", "frame_stack", "env_kwargs")


@dataclass
class TrainConfig:
    """Everything a ``train_agent`` run needs. Field docs are what ``train_agent --help`` prints."""

    # ------------------------------------------------------------------ run
    env: str = _opt("MiniGrid-Memory", "environment id or alias (envs.make_env); picks the family config file")
    gym_packages: List[str] = _opt([], "modules imported before the env id is resolved: packages that register "
                                       "gymnasium envs, e.g. [popgym] (or give the id as module:EnvId)",
                                   pattern=re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"))
    core: str = _opt("gru", "memory core: a name in agents.CORES or module:Class (a MemoryCore subclass of your own)",
                     core=True)
    seed: int = _opt(0, "seed for python, numpy, torch and the envs", min=0, max=2**32 - 1)
    total_timesteps: int = _opt(1_000_000, "env steps to train for (all envs together)", min=1)
    n_envs: int = _opt(8, "parallel training envs", min=1)
    vec_env: str = _opt("dummy", "dummy: envs step in this process; subproc: one worker process per env",
                        choices=("dummy", "subproc"))
    device: str = _opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:N", pattern=_DEVICE_RE)
    torch_threads: int = _opt(1, "torch CPU threads (0: torch's default); 1 is fastest for small recurrent nets",
                              min=0)
    logdir: str = _opt("results/runs", "parent directory of the run directories")
    checkpoint_freq: int = _opt(50_000, "env steps between checkpoints (0: only at the end and on interruption)",
                                min=0)
    keep_checkpoints: int = _opt(2, "most recent checkpoints kept in RUN_DIR/checkpoints", min=1)
    # ------------------------------------------------------------------ env
    view_size: Optional[int] = _opt(None, "MiniGrid only: the agent's view size (odd, >= 3); null: minigrid's 7",
                                    min=3, odd=True)
    action_set: str = _opt("all", "MiniGrid only: all (minigrid's 7 actions) or move (turn left, turn right, "
                                  "forward)", choices=("all", "move"))
    obs_mode: Optional[str] = _opt(None, "MiniGrid only: symbolic (cell codes and heading) or rgb (the partial view "
                                         "as an image, read by a CNN encoder); null: symbolic",
                                   choices=("symbolic", "rgb"))
    tile_size: Optional[int] = _opt(None, "MiniGrid obs_mode=rgb only: pixels per grid cell (null: 8)", min=1)
    env_kwargs: Dict[str, Any] = _opt({}, "keyword arguments of the env's constructor (gymnasium.make(env, **env_kwargs)"
                                      "), e.g. --env-kwargs length=100; recorded in saved policies")
    max_episode_steps: Optional[int] = _opt(None, "episode step limit (null: the env's own)", min=1)
    frame_stack: int = _opt(1, "observations stacked into one (the frame-stacking control: a memoryless core "
                               "given the last k observations); 1: no stacking", min=1)
    train_levels: Optional[int] = _opt(None, "training envs draw every episode's level (env seed) from a fixed pool of "
                                             "this many (procgen's num_levels); evaluation reports both unseen "
                                             "levels (eval/) and the pool (eval_pool/); null: a new level every "
                                             "episode", min=1)
    train_wrappers: Dict[str, Any] = _opt({}, "training envs only: opt-in task aids by name with their options, "
                                              "{name: {option: value}} (envs.train_wrappers; e.g. --set "
                                              "train_wrappers.memory_aids.cue_start=0.25); evaluation never uses "
                                              "them", mapping="train_wrappers")
    normalize_obs: bool = _opt(False, "normalize observations by running mean/std kept inside the policy (saved "
                                      "with the model; flat encoder only, not MiniGrid's symbolic codes)")
    normalize_reward: bool = _opt(False, "scale rewards by a running std of the discounted return (SB3 VecNormalize, "
                                         "training only; statistics saved in checkpoints)")
    # ------------------------------------------------------------------ evaluation
    eval_freq: int = _opt(25_000, "env steps between evaluations logged as eval/* (0: only the final one)", min=0)
    eval_episodes: int = _opt(10, "episodes per evaluation", min=1)
    final_eval_episodes: Optional[int] = _opt(
        None, "episodes of the evaluation after the last update, the run's final result (null: eval_episodes); more "
              "episodes give a final figure with less evaluation noise", min=1)
    eval_deterministic: bool = _opt(True, "evaluate with the most likely action instead of sampling")
    success_threshold: Optional[float] = _opt(
        None, "an eval episode succeeds when its return is > this (MiniGrid: 0); null: no success rate")
    stop_at_success: Optional[float] = _opt(
        None, "end training at the first evaluation whose success rate is >= this (needs success_threshold and "
              "eval_freq > 0; the final evaluation still follows); null: train the whole budget", gt=0, max=1)
    latency_steps: int = _opt(1000, "batch-1 act calls timed after training (after 100 warm-up calls)", min=10)
    # ------------------------------------------------------------------ network
    hidden_size: int = _opt(64, "core units per layer", min=1)
    match_params: Optional[str] = _opt(
        None, "CORE:HIDDEN: size this core to CORE's parameter count at HIDDEN units (overrides hidden_size)",
        pattern=re.compile(r"[^:\s]+:[0-9]+"), match_params=True)
    num_layers: int = _opt(1, "stacked core layers", min=1)
    core_kwargs: Dict[str, Any] = _opt({}, "the core's own options, checked against its constructor (e.g. --set "
                                           "core_kwargs.forget_bias=1.0 for the LSTM, core_kwargs.kernel=stock for "
                                           "GRU/LSTM; agents.cores.core_options lists them)", mapping="core_kwargs")
    shared_core: bool = _opt(False, "one core for actor and critic (false: a separate critic core)")
    seq_len: Optional[int] = _opt(None, "truncated-BPTT length in steps (null: whole rollout segments)", min=1)
    carry_state: bool = _opt(False, "training keeps each env's memory across episode boundaries instead of zeroing it "
                                    "at every episode start (evaluation and inference still start from zero)")
    encoder: str = _opt("auto", "observation encoder: auto (from the obs space), flat, minigrid, cnn (images)",
                        choices=("auto", "flat", "minigrid", "cnn"))
    encoder_sizes: List[int] = _opt([64], "encoder hidden layers before the core ([]: the core sees the raw obs)",
                                    min=1)
    encoder_norm: bool = _opt(False, "LayerNorm on each encoder layer's pre-activations (keeps tanh units off their "
                                     "+-1 plateau)")
    net_arch_pi: List[int] = _opt([64], "actor head layers after the core", min=1)
    net_arch_vf: List[int] = _opt([64], "critic head layers after the core", min=1)
    activation: str = _opt("tanh", "activation of encoder and heads", choices="activations")
    ortho_init: bool = _opt(True, "orthogonal initialisation (SB3 PPO's)")
    log_std_init: float = _opt(0.0, "initial log std of Gaussian actions (Box action spaces)")
    use_sde: bool = _opt(False, "generalized state-dependent exploration (gSDE) for Box actions, as SB3's use_sde")
    sde_sample_freq: int = _opt(-1, "with use_sde: new exploration weights every this many rollout steps (-1: once "
                                    "per rollout)", min=-1)
    # ------------------------------------------------------------------ PPO
    learning_rate: Schedule = _opt(3e-4, "Adam learning rate: a number or lin_<x> (linear decay x -> 0)", gt=0)
    n_steps: int = _opt(128, "rollout steps per env between updates", min=1)
    batch_size: int = _opt(256, "env steps per minibatch (whole sequences, about this many steps)", min=2)
    n_epochs: int = _opt(10, "passes over each rollout", min=1)
    gamma: float = _opt(0.99, "discount factor", min=0.0, max=1.0)
    gae_lambda: float = _opt(0.95, "GAE lambda", min=0.0, max=1.0)
    clip_range: Schedule = _opt(0.2, "PPO clip range: a number or lin_<x>", gt=0)
    clip_range_vf: Optional[float] = _opt(None, "value clip range (null: no value clipping)", gt=0)
    normalize_advantage: bool = _opt(True, "normalize advantages per minibatch")
    ent_floor: Optional[float] = _opt(None, "per-state entropy floor in nats: steps whose action distribution is "
                                      "below it are penalised (null: none)")
    ent_floor_coef: float = _opt(1.0, "weight of the entropy floor's hinge penalty", min=0.0)
    rnd_coef: float = _opt(0.0, "weight of a novelty bonus on training rewards (random network distillation, "
                                "agents.exploration; 0: off)", min=0.0)
    ent_coef: Schedule = _opt(0.0, "entropy bonus coefficient: a number or lin_<x> (linear decay x -> 0)", min=0.0)
    vf_coef: float = _opt(0.5, "value loss coefficient", min=0.0)
    max_grad_norm: Optional[float] = _opt(0.5, "gradient norm clip (null: no clipping)", gt=0)
    target_kl: Optional[float] = _opt(None, "stop an update's epochs early above this KL (null: never)", gt=0)
    nonfinite: str = _opt("stop", "a non-finite gradient norm: stop (the run ends with a one-line error, keeping the "
                                  "last good checkpoint) or skip (that step is dropped, counted in "
                                  "train/skipped_steps)", choices=("stop", "skip"))

    # ------------------------------------------------------------------ api
    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> Dict[str, Any]:
        return {name: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for name, v in dataclasses.asdict(self).items()}

    def to_yaml(self, header: str = "") -> str:
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return "".join(f"# {line}\n" for line in header.splitlines()) + body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "TrainConfig":
        """A checked config from a complete or partial mapping (missing keys take the defaults)."""
        values = coerce_values(upgrade_legacy(data) if isinstance(data, Mapping) else data, source)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Cross-field rules (each field was checked on its own when it was set)."""
        for f in dataclasses.fields(self):  # a config built in code gets the same per-field checks
            setattr(self, f.name, coerce_value(f.name, getattr(self, f.name), "config"))
        if self.batch_size > self.n_steps * self.n_envs:
            raise ConfigError(f"batch_size={self.batch_size} is larger than a rollout (n_steps={self.n_steps} x "
                              f"n_envs={self.n_envs} = {self.n_steps * self.n_envs} steps): expected at most "
                              f"{self.n_steps * self.n_envs}")
        if self.stop_at_success is not None and (self.success_threshold is None or self.eval_freq == 0):
            raise ConfigError(f"stop_at_success={self.stop_at_success}: needs success_threshold (got "
                              f"{self.success_threshold}) and eval_freq > 0 (got {self.eval_freq})")
        if self.n_steps * self.n_envs < 2:
            raise ConfigError(f"n_steps={self.n_steps} x n_envs={self.n_envs} = {self.n_steps * self.n_envs} steps "
                              "per rollout: expected at least 2 (advantages are normalized over a minibatch)")
        if self.match_params is not None:
            parse_match_params(self.match_params)
        try:
            from .cores import check_core_kwargs
            check_core_kwargs(self.core, self.core_kwargs)
        except ValueError as exc:
            raise ConfigError(f"core_kwargs={self.core_kwargs!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------------- value checks
_HINTS = None


def _field_map() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _types() -> Dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = get_type_hints(TrainConfig)
    return _HINTS


def _choices(spec: Any) -> Tuple[str, ...]:
    if spec == "cores":
        from .cores import CORES
        return tuple(sorted(CORES))
    if spec == "activations":
        from .policy import ACTIVATIONS
        return tuple(ACTIVATIONS)
    return tuple(spec)


#: keys of earlier versions -> where the option lives now (a run directory's config.yaml is upgraded on --resume)
LEGACY_KEYS = {
    "kernel": "core_kwargs.kernel",
    "lstm_forget_bias": "core_kwargs.forget_bias",
    "gru_update_bias": "core_kwargs.update_bias",
    **{aid: f"train_wrappers.memory_aids.{aid}"
       for aid in ("cue_start", "lookback_start", "faceback_start", "ordered_ends")},
}


def upgrade_legacy(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A config mapping of an earlier version with its :data:`LEGACY_KEYS` moved where they live now: left out where
    they held the old default (``null``, ``0``, ``auto``) or where the run's core does not take them (the old keys
    were ignored by the other cores); and a ``batch_size`` above one rollout, which then meant one minibatch of the
    whole rollout, set to the rollout."""
    out = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
    try:
        from .cores import core_options
        taken = set(core_options(str(data.get("core", TrainConfig.core))))
    except ValueError:
        taken = set()
    for key, target in LEGACY_KEYS.items():
        value = data.get(key)
        if key not in data or value in (None, 0, 0.0, "auto"):
            continue
        *path, leaf = target.split(".")
        if path == ["core_kwargs"] and leaf not in taken:
            continue
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        rollout = int(data.get("n_steps", 0)) * int(data.get("n_envs", 0))
        if rollout and int(data.get("batch_size", 0)) > rollout:
            out["batch_size"] = rollout
    except (TypeError, ValueError):
        pass  # left to the checks, which name the value
    return out


def _unknown_key(key: str, source: str) -> ConfigError:
    if key in LEGACY_KEYS:
        return ConfigError(f"config key {key!r} in {source} is now {LEGACY_KEYS[key]} (e.g. --set "
                           f"{LEGACY_KEYS[key]}=VALUE)")
    close = difflib.get_close_matches(str(key), TrainConfig.field_names(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key {key!r} in {source}{hint}: expected one of the TrainConfig fields "
                       "(train_agent --help lists them)")


def _fail(name: str, value: Any, source: str, expected: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} (from {source}): expected {expected}")


def _as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            return None
    return None


def _coerce_scalar(name: str, tp: Any, value: Any, source: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _fail(name, value, source, "a boolean (true or false)")
    if tp is int:
        x = _as_number(value)
        if x is None or not math.isfinite(x) or x != int(x):
            raise _fail(name, value, source, "an integer")
        return int(x)
    if tp is float:
        x = _as_number(value)
        if x is None or not math.isfinite(x):
            raise _fail(name, value, source, "a finite number")
        return float(x)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise _fail(name, value, source, "a non-empty string")
        return value
    raise TypeError(f"config field {name}: unsupported type {tp!r}")  # a bug in TrainConfig, not user input


def _num(x: Any) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_rules(name: str, value: Any, meta: Mapping[str, Any], source: str, item: bool = False,
                 shown: Any = None) -> None:
    what = "each entry" if item else ("an integer" if isinstance(value, int) else "a number")
    if shown is not None:
        def _fail(name, value, source, expected, _shown=shown):  # noqa: F811  (report the whole list)
            return ConfigError(f"{name}={_shown!r} (from {source}): expected {expected}")
    else:
        _fail = globals()["_fail"]
    if "choices" in meta:
        choices = _choices(meta["choices"])
        if value not in choices:
            close = difflib.get_close_matches(str(value), list(choices), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _fail(name, value, source, f"one of {', '.join(choices)}{hint}")
    if meta.get("core"):
        from .cores import get_core_class
        try:
            get_core_class(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r} (from {source}): {exc}") from None
    if "pattern" in meta and not meta["pattern"].fullmatch(value):
        expected = {"device": "auto, cpu, cuda, cuda:N or mps", "match_params": "CORE:HIDDEN, e.g. lstm:128",
                    "gym_packages": "Python module names, e.g. [popgym]"}.get(
            name, f"a string matching {meta['pattern'].pattern}")
        raise _fail(name, value, source, expected)
    if meta.get("match_params"):
        try:
            parse_match_params(value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {source})") from None
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None and not (low <= value <= high):
        raise _fail(name, value, source, f"{what} in [{_num(low)}, {_num(high)}]")
    if low is not None and high is None and value < low:
        raise _fail(name, value, source, f"{what} >= {_num(low)}")
    if "gt" in meta and not value > meta["gt"]:
        raise _fail(name, value, source, f"{what} > {_num(meta['gt'])}")
    if meta.get("odd") and value % 2 != 1:
        raise _fail(name, value, source, f"an odd integer >= {low}")


def coerce_value(name: str, value: Any, source: str) -> Any:
    """``value`` converted to field ``name``'s type and checked against its rules; :class:`ConfigError` if not."""
    fields_ = _field_map()
    if name not in fields_:
        raise _unknown_key(name, source)
    meta = fields_[name].metadata
    tp = _types()[name]
    origin, args = get_origin(tp), get_args(tp)
    if tp == Schedule:
        return _coerce_schedule(name, value, meta, source)
    if origin is Union and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~", "")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin = get_origin(tp)
    if origin in (dict, Dict):
        return _coerce_mapping(name, value, meta, source)
    if origin in (list, List):
        if isinstance(value, str):
            text = value.strip()
            value = [] if text in ("", "[]") else yaml.safe_load(text if text.startswith("[") else f"[{text}]")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        (item_tp,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(name, value, source, "a list of positive integers, e.g. [64, 64] or []" if item_tp is int
                        else "a list, e.g. [popgym] or []")
        out = [_coerce_scalar(name, item_tp, v, source) for v in value]
        for v in out:
            _check_rules(name, v, meta, source, item=True, shown=value)
        return out
    out = _coerce_scalar(name, tp, value, source)
    _check_rules(name, out, meta, source)
    return out


def _coerce_mapping(name: str, value: Any, meta: Mapping[str, Any], source: str) -> Dict[str, Any]:
    example = {"core_kwargs": "{forget_bias: 1.0}", "env_kwargs": "{length: 100}",
               "train_wrappers": "{memory_aids: {cue_start: 0.25}}"}[name]
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError:
            raise _fail(name, value, source, f"a mapping, e.g. {example}") from None
        value = {} if value is None else value
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise _fail(name, value, source, f"a mapping with string keys, e.g. {example}")
    if meta.get("mapping") == "train_wrappers":
        from envs.train_wrappers import check_train_wrappers
        try:
            return check_train_wrappers(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={dict(value)!r} (from {source}): {exc}") from None
    return dict(value)


def merge_layer(merged: Dict[str, Any], layer: Mapping[str, Any]) -> None:
    """``merged.update(layer)``, except that a mapping field (``core_kwargs``, ``train_wrappers``) is merged key by
    key (a wrapper's options too), so a later layer adds options instead of replacing them all."""
    for key, value in layer.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            new = dict(old)
            for k, v in value.items():
                new[k] = {**new[k], **v} if isinstance(v, dict) and isinstance(new.get(k), dict) else v
            merged[key] = new
        else:
            merged[key] = value


def _coerce_schedule(name: str, value: Any, meta: Mapping[str, Any], source: str) -> Schedule:
    zero_ok = "gt" not in meta  # a learning rate or clip range must be > 0 (gt=0); ent_coef's 0 is no bonus (min=0)
    number, example = ("a number >= 0", "0.01") if zero_ok else ("a positive number", "3e-4")
    expected = f"{number} or lin_<x> with x > 0 (linear decay from x to 0), e.g. {example} or lin_1e-3"
    if isinstance(value, str):
        text = value.strip()
        m = _SCHEDULE_RE.fullmatch(text)
        if m:
            try:
                x = float(m.group(1))
            except ValueError:
                raise _fail(name, value, source, expected) from None
            if not (math.isfinite(x) and x > 0):
                raise _fail(name, value, source, expected)
            return f"lin_{m.group(1)}"
    x = _as_number(value)
    if x is None or not math.isfinite(x) or not (x >= 0 if zero_ok else x > 0):
        raise _fail(name, value, source, expected)
    return float(x)


def coerce_values(data: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """Every key checked (unknown keys rejected with close matches) and every value converted and checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of config keys to values, got {type(data).__name__}")
    return {key: coerce_value(key, value, source) for key, value in data.items()}


def make_schedule(value: Schedule) -> Union[float, Callable[[float], float]]:
    """A config schedule as SB3 takes it: a float, or ``LinearSchedule(x, 0, 1)`` for ``"lin_<x>"``."""
    if isinstance(value, str):
        from stable_baselines3.common.utils import LinearSchedule
        return LinearSchedule(float(_SCHEDULE_RE.fullmatch(value).group(1)), 0.0, 1.0)
    return float(value)


def parse_match_params(text: str) -> Tuple[str, int]:
    """``"lstm:128"`` -> ``("lstm", 128)``, checked."""
    core, _, hidden = str(text).partition(":")
    cores = _choices("cores")
    if core not in cores or not hidden.isdigit() or int(hidden) < 1:
        raise ConfigError(f"match_params={text!r}: expected CORE:HIDDEN with CORE one of {', '.join(cores)} and "
                          "HIDDEN a positive integer, e.g. lstm:128")
    return core, int(hidden)


# ---------------------------------------------------------------------------------------------------- YAML sources
#: Env id (canonical, after alias resolution) -> family config file in ``configs/``; the first match wins.
FAMILIES: List[Tuple[str, str]] = [
    (r"^MiniGrid-Memory", "minigrid_memory"),
    (r"^MiniGrid-", "minigrid"),
    (r"^CartPole", "cartpole"),
    (r"^Pendulum", "pendulum"),
    (r"^Acrobot", "acrobot"),
    (r"^MountainCarContinuous", "mountaincar_continuous"),
    (r"^MountainCar", "mountaincar"),
    (r"^LunarLander", "lunarlander"),
    (r"^popgym-", "popgym"),
    (r"^TMaze-", "tmaze"),
]


def family_for(env_id: str) -> str:
    """The family config name for a canonical env id (``"default"`` when no family matches)."""
    env_id = env_id.rpartition(":")[2]  # "module:EnvId": the id picks the family
    for pattern, name in FAMILIES:
        if re.match(pattern, env_id):
            return name
    return "default"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # left to the base loader, which reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys to values, got {type(data).__name__}")
    return data


def load_family(name: str) -> Dict[str, Any]:
    """The checked values of ``configs/<name>.yaml`` (shipped as package data of ``configs``)."""
    source = f"configs/{name}.yaml"
    text = files("configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = _parse_yaml(text, source)
    if "env" in data:
        raise ConfigError(f"{source}: a family file must not set 'env' (the env picks the family)")
    return coerce_values(data, source)


def load_config_file(path: str | Path) -> Dict[str, Any]:
    """The checked values of a user's YAML file (``--config``); any subset of the fields."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist: expected a YAML file of config keys") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    return coerce_values(_parse_yaml(text, str(p)), str(p))


def parse_set(items: Iterable[str], source: str = "--set") -> Dict[str, Any]:
    """``["n_steps=64", "encoder_sizes=[64, 64]"]`` -> checked values (each value parsed as YAML, then typed)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source} {item!r}: expected key=value, e.g. --set n_steps=64")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        field_name, _, path = key.partition(".")
        if path:  # a dotted key reaches into a mapping field: core_kwargs.forget_bias=1.0
            if field_name not in _field_map() or get_origin(_types()[field_name]) not in (dict, Dict):
                raise ConfigError(f"{source} {item!r}: only the mapping keys (core_kwargs, train_wrappers) take a "
                                  f"dotted KEY.NAME=VALUE; {field_name!r} is not one")
            for part in reversed(path.split(".")):
                value = {part: value}
            key = field_name
        layer = {key: coerce_value(key, value, f"{source} {item}")}
        merge_layer(out, layer)
    return out


def resolve_config(
    env: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    set_items: Sequence[str] = (),
    config_file: Optional[str | Path] = None,
    resolve_env: Optional[Callable[[str], str]] = None,
) -> TrainConfig:
    """Layer defaults < default.yaml < family yaml < ``config_file`` < ``overrides`` (CLI flags) < ``set_items``.

    The env (which picks the family) is taken with the same precedence; it is stored canonical (aliases resolved).
    """
    if resolve_env is None:
        from envs import resolve_env_id as resolve_env
    flags = coerce_values(dict(overrides or {}), "command line")
    user = load_config_file(config_file) if config_file is not None else {}
    sets = parse_set(set_items)
    base = load_family("default")
    env_given = sets.get("env") or flags.get("env") or env or user.get("env") or base.get("env") or TrainConfig.env
    packages = next((layer["gym_packages"] for layer in (sets, flags, user, base) if "gym_packages" in layer), [])
    env_id = resolve_env(env_given, packages) if packages else resolve_env(env_given)
    family = family_for(env_id)
    merged: Dict[str, Any] = {}
    for layer in (base, load_family(family) if family != "default" else {}, user, flags, sets):
        merge_layer(merged, layer)
        if "hidden_size" in layer and "match_params" not in layer:  # a later explicit size beats an earlier match
            merged["match_params"] = None
    merged["env"] = env_id
    cfg = TrainConfig(**merged)
    cfg.validate()
    return cfg


def _type_name(tp: Any) -> str:
    if tp == Schedule:
        return "number or lin_<x>"
    args = get_args(tp)
    if get_origin(tp) is Union and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or null"
    if get_origin(tp) in (list, List):
        return f"list of {_type_name(args[0])}"
    return tp.__name__


def config_help() -> str:
    """One line per field: name, type, default and doc (for ``--help``)."""
    lines = []
    hints = _types()
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tname = _type_name(hints[f.name])
        meta = f.metadata
        extra = f" {{{', '.join(_choices(meta['choices']))}}}" if "choices" in meta else ""
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"  {f.name} ({tname}{extra}, default {shown}): {meta['doc']}")
    return "\n".join(lines)
