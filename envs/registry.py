"""Registration with gymnasium, id aliases, and ``make_env`` (what the trainer calls per worker)."""

from __future__ import annotations

import difflib
import importlib.util
import re
from typing import Any, Sequence

import gymnasium as gym
import minigrid  # noqa: F401  (hard dependency; importing it registers the MiniGrid-* ids)
from gymnasium.envs.registration import EnvSpec, WrapperSpec
from gymnasium.error import DependencyNotInstalled

from .masked import MASKED_ENVS, MaskedEnvSpec
from .levels import LevelPool, validate_n_levels
from .minigrid_obs import (ACTION_SETS, OBS_MODES, MiniGridMoveActions, MiniGridSymbolicObs, rgb_view,
                           validate_tile_size, validate_view_size)
from .tmaze import register_tmaze
from .train_wrappers import apply_train_wrappers, check_train_wrappers

__all__ = [
    "ENV_IDS",
    "ALIASES",
    "UnknownEnvError",
    "MissingDependencyError",
    "register_envs",
    "resolve_env_id",
    "split_env_id",
    "qualified_env_id",
    "import_gym_package",
    "list_env_ids",
    "is_minigrid_id",
    "make_env",
]

#: The ids this package registers with gymnasium (masked classic control), in a stable order.
ENV_IDS: tuple[str, ...] = tuple(MASKED_ENVS)

BOX2D_INSTALL = 'pip install "gymnasium[box2d]"'
_VERSION_RE = re.compile(r"-v(\d+)$")


class UnknownEnvError(ValueError):
    """An env id that is neither a project id, an alias, nor a registered gymnasium id."""


class MissingDependencyError(DependencyNotInstalled):
    """The env exists but needs an optional package that is not installed (e.g. Box2D)."""


def _gym_spec(masked: MaskedEnvSpec) -> EnvSpec:
    base = gym.spec(masked.base_id)
    return EnvSpec(
        id=masked.id,
        entry_point=base.entry_point,
        reward_threshold=base.reward_threshold,
        nondeterministic=base.nondeterministic,
        max_episode_steps=base.max_episode_steps,
        order_enforce=base.order_enforce,
        disable_env_checker=False,
        kwargs=dict(base.kwargs),
        additional_wrappers=(
            WrapperSpec(
                name=masked.wrapper.__name__,
                entry_point=f"{masked.wrapper.__module__}:{masked.wrapper.__name__}",
                kwargs={"dims": tuple(masked.dims)},
            ),
        ),
    )


def register_envs() -> None:
    """Register every id of :data:`ENV_IDS` with gymnasium. Idempotent and silent.

    Runs at ``import envs``; call it again only if something cleared gymnasium's registry.
    The base env's entry point is stored as a string, so registering LunarLander ids never needs Box2D.
    """
    register_tmaze()
    for masked in MASKED_ENVS.values():
        spec = _gym_spec(masked)
        current = gym.registry.get(spec.id)
        if current is None:
            gym.register(
                id=spec.id,
                entry_point=spec.entry_point,
                reward_threshold=spec.reward_threshold,
                nondeterministic=spec.nondeterministic,
                max_episode_steps=spec.max_episode_steps,
                order_enforce=spec.order_enforce,
                disable_env_checker=spec.disable_env_checker,
                additional_wrappers=spec.additional_wrappers,
                kwargs=spec.kwargs,
            )
        elif current != spec:
            # Our ids are ours: replace a stale definition without gymnasium's "Overriding" warning.
            gym.registry[spec.id] = spec


def _minigrid_memory_aliases() -> dict[str, str]:
    aliases = {"MiniGrid-Memory": "MiniGrid-MemoryS7-v0"}
    for env_id, spec in gym.registry.items():
        if spec.namespace is None and spec.name.startswith("MiniGrid-Memory") and spec.version is not None:
            best = aliases.get(spec.name)
            if best is None or int(_VERSION_RE.search(best).group(1)) < spec.version:
                aliases[spec.name] = env_id
    return dict(sorted(aliases.items()))


register_envs()

#: Short names -> canonical ids. Any other id without "-vN" resolves to its latest registered version.
ALIASES: dict[str, str] = _minigrid_memory_aliases()


def is_minigrid_id(env_id: str) -> bool:
    """True for canonical ``MiniGrid-*`` ids registered by minigrid (these get :class:`MiniGridSymbolicObs`)."""
    return env_id.startswith("MiniGrid-") and env_id in gym.registry


def list_env_ids(include_minigrid: bool = True, include_aliases: bool = False) -> list[str]:
    """Project ids: the masked ids (:data:`ENV_IDS`) and the T-Maze ids, then every registered ``MiniGrid-*`` id, then
    aliases."""
    ids = list(ENV_IDS) + sorted(k for k in gym.registry if k.startswith("TMaze-"))
    if include_minigrid:
        ids += sorted(k for k in gym.registry if is_minigrid_id(k))
    if include_aliases:
        ids += list(ALIASES)
    return ids


def _close_matches(env_id: str) -> list[str]:
    ours = list_env_ids(include_minigrid=True, include_aliases=True)
    matches = difflib.get_close_matches(env_id, ours, n=5, cutoff=0.6)
    others = [k for k in gym.registry if k not in matches]
    for m in difflib.get_close_matches(env_id, others, n=5, cutoff=0.6):
        if m not in matches:
            matches.append(m)
    return matches[:6]


def import_gym_package(module: str, env_id: str | None = None) -> None:
    """Import a module that registers envs with gymnasium (``--gym-packages``, or the ``module`` of
    ``"module:EnvId"``); a missing or broken one is a one-line :class:`MissingDependencyError`."""
    if not isinstance(module, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module):
        raise UnknownEnvError(f"gym package {module!r}: expected a Python module name such as 'popgym'")
    what = f"env id {env_id!r} names module {module!r}" if env_id else f"gym package {module!r}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or module
        raise MissingDependencyError(f"{what}, which cannot be imported ({missing} is not installed): expected an "
                                     f"installed module (pip install {missing.split('.')[0]})") from None
    except Exception as e:  # the package's own import failed: say which and why, in one line
        raise MissingDependencyError(f"{what}, whose import failed ({type(e).__name__}: {_first_line(e)})") from None


def split_env_id(env_id: str) -> tuple[str | None, str]:
    """``"module:EnvId"`` (gymnasium's syntax: import ``module``, then make ``EnvId``) -> ``(module, EnvId)``;
    a plain id -> ``(None, id)``."""
    module, sep, name = env_id.rpartition(":")
    return (module, name) if sep else (None, env_id)


#: packages that ``import envs`` imports itself: their ids need no ``module:`` prefix
_IMPORTED_BY_ENVS = ("gymnasium", "minigrid", "envs")


def qualified_env_id(spec: EnvSpec) -> str:
    """The id that rebuilds ``spec``'s env in a fresh process after ``import envs``: ``spec.id`` for the ids this
    package, gymnasium and minigrid register; ``"module:id"`` for any other, ``module`` being the env's entry-point
    module (importing it imports the package that registered the id)."""
    entry = spec.entry_point
    module = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", None)
    if not module or module.split(".")[0] in _IMPORTED_BY_ENVS or module == "__main__":
        return spec.id
    return f"{module}:{spec.id}"


def resolve_env_id(env_id: str, gym_packages: Sequence[str] = ()) -> str:
    """Map an id or alias to its canonical, gymnasium-registered id; raise :class:`UnknownEnvError` if none.

    ``"MiniGrid-Memory"`` -> ``"MiniGrid-MemoryS7-v0"``, ``"MiniGrid-MemoryS9"`` -> ``"MiniGrid-MemoryS9-v0"``;
    an id without ``-vN`` resolves to the latest registered version (``"CartPole-P"`` -> ``"CartPole-P-v1"``).
    ``"module:EnvId"`` imports ``module`` first and keeps it: ``"popgym:popgym-RepeatPreviousEasy"`` ->
    ``"popgym:popgym-RepeatPreviousEasy-v0"``. ``gym_packages`` are imported first, in order; an id registered by
    package ``P`` comes back as ``"P:EnvId"``, one some other module registered as ``"module:EnvId"``
    (:func:`qualified_env_id`), so the id alone rebuilds the env in a fresh
    process (``envs.make_env(policy.env_id)``).
    """
    if not isinstance(env_id, str):
        raise UnknownEnvError(f"env id must be a str, got {env_id!r} ({type(env_id).__name__})")
    module, name = split_env_id(env_id)
    if module is not None:
        import_gym_package(module, env_id)
        try:
            return f"{module}:{_resolve_plain(name)}"
        except UnknownEnvError as e:
            raise UnknownEnvError(f"{e} (after importing {module!r})") from None
    if isinstance(gym_packages, str):
        gym_packages = [gym_packages]
    for package in gym_packages:
        import_gym_package(package)
    try:
        canonical = _resolve_plain(env_id)
    except UnknownEnvError as e:
        if gym_packages:
            raise UnknownEnvError(f"{e} (after importing {', '.join(map(repr, gym_packages))})") from None
        raise
    qualified = qualified_env_id(gym.spec(canonical))
    module = split_env_id(qualified)[0]
    for package in gym_packages:
        if module is not None and (module == package or module.startswith(package + ".")):
            return f"{package}:{canonical}"
    return qualified


def _resolve_plain(env_id: str) -> str:
    if env_id in ALIASES:
        return ALIASES[env_id]
    if env_id in gym.registry:
        return env_id
    if not _VERSION_RE.search(env_id):
        versions = [
            spec for spec in gym.registry.values()
            if spec.namespace is None and spec.name == env_id and spec.version is not None
        ]
        if versions:
            return max(versions, key=lambda s: s.version).id
    matches = _close_matches(env_id)
    hint = f"close matches: {', '.join(matches)}" if matches else "no close match"
    raise UnknownEnvError(
        f"unknown env id {env_id!r}; {hint} (envs.list_env_ids() lists the project ids; any gymnasium-registered "
        f"id also works, and 'module:EnvId' or --gym-packages MODULE import the module that registers it)"
    )


def _box2d_available() -> bool:
    return importlib.util.find_spec("Box2D") is not None


_COMMON_KWARGS = "render_mode, max_episode_steps, frame_stack, n_levels, wrappers, env_kwargs"


def make_env(
    env_id: str,
    *,
    view_size: int | None = None,
    action_set: str | None = None,
    obs_mode: str | None = None,
    tile_size: int | None = None,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    frame_stack: int | None = None,
    n_levels: int | None = None,
    wrappers: dict[str, dict[str, Any]] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    **unexpected: Any,
) -> gym.Env:
    """Build one env exactly as training does (the trainer calls this once per vec-env worker).

    Args:
        env_id: a project id (:data:`ENV_IDS`), an alias (:data:`ALIASES`), any ``MiniGrid-*`` id, or any
            other gymnasium id (passed through unwrapped, e.g. ``"CartPole-v1"`` as a fully observed control),
            also as ``"module:EnvId"`` (``module`` is imported first: the package that registers ``EnvId``).
        view_size: MiniGrid only: the agent's view size (odd int >= 3; minigrid's default is 7).
        action_set: MiniGrid only: ``"all"`` (minigrid's 7 actions, the default) or ``"move"`` (turn left, turn
            right, forward: ``Discrete(3)``, the action numbers unchanged).
        obs_mode: MiniGrid only: ``"symbolic"`` (cell codes and direction, the default) or ``"rgb"`` (the partial
            view rendered as an image, ``tile_size`` pixels per cell; the policy picks a CNN encoder for it).
        tile_size: MiniGrid ``obs_mode="rgb"`` only: pixels per grid cell (default 8).
        render_mode: passed to the env (``None`` or e.g. ``"rgb_array"``).
        max_episode_steps: override the episode limit (positive int).
        frame_stack: stack the last k observations into one flat vector (oldest first, zeros before the episode's
            first observation) - the frame-stacking control, a memoryless policy given a short window of history.
            ``None`` or 1: no stacking.
        n_levels: every reset draws its level (env seed) from ``range(n_levels)`` - a fixed pool of training
            layouts (:class:`envs.levels.LevelPool`, procgen's ``num_levels``). ``None``: a new layout every reset.
        wrappers: training-time wrappers by name with their options, ``{name: {option: value}}``, from
            :data:`envs.train_wrappers.TRAIN_WRAPPERS` (opt-in task aids; each checks that it applies to the env).
            They wrap the base env, inside the observation wrappers. ``None``: none.
        env_kwargs: keyword arguments of the env's own constructor, passed to ``gymnasium.make`` (e.g.
            ``{"length": 100}`` for ``TMaze-v0``; train_agent's ``--env-kwargs length=100``). A keyword the env does
            not take is a one-line ``ValueError``.

    Returns:
        ``gymnasium.make(id)`` for masked and passthrough ids; ``MiniGridSymbolicObs(gymnasium.make(id))``
        for MiniGrid ids (flat uint8 observation, see :mod:`envs.minigrid_obs`). No Monitor: the trainer
        adds its own episode statistics wrapper.

    Raises:
        UnknownEnvError: unknown id (lists close matches).
        ValueError: bad or unknown keyword argument.
        MissingDependencyError: LunarLander ids without Box2D installed, or any other id whose optional
            package is missing (e.g. the MiniGrid WFC ids without ``minigrid[wfc]``).
    """
    canonical = split_env_id(resolve_env_id(env_id))[1]  # "module:EnvId": the module is imported, the id kept
    minigrid_env = is_minigrid_id(canonical)
    if frame_stack is not None and frame_stack != 1:
        if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
            raise ValueError(f"frame_stack must be None or a positive int, got {frame_stack!r}")
        if obs_mode == "rgb":
            raise ValueError(f"frame_stack={frame_stack} stacks flat observations; with obs_mode='rgb' (images) "
                             "expected frame_stack=1")
        env = make_env(env_id, view_size=view_size, action_set=action_set, obs_mode=obs_mode,
                       tile_size=tile_size, render_mode=render_mode, n_levels=n_levels,
                       max_episode_steps=max_episode_steps, wrappers=wrappers, env_kwargs=env_kwargs, **unexpected)
        return stack_frames(env, frame_stack)

    if unexpected:
        expected = _COMMON_KWARGS + (", view_size, action_set, obs_mode, tile_size" if minigrid_env
                                     else " (view_size, action_set, obs_mode, tile_size: MiniGrid-* ids only)")
        raise ValueError(
            f"make_env({env_id!r}) got unknown keyword argument(s) {', '.join(sorted(unexpected))}; "
            f"expected: {expected}"
        )
    if view_size is not None and not minigrid_env:
        raise ValueError(f"view_size={view_size!r} applies only to MiniGrid-* ids, not {canonical!r}")
    if obs_mode is not None and obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode={obs_mode!r}: expected one of {', '.join(OBS_MODES)} (or None)")
    if obs_mode not in (None, "symbolic") and not minigrid_env:
        raise ValueError(f"obs_mode={obs_mode!r} applies only to MiniGrid-* ids, not {canonical!r}")
    if tile_size is not None:
        validate_tile_size(tile_size)
        if obs_mode != "rgb":
            raise ValueError(f"tile_size={tile_size!r} applies only with obs_mode='rgb', not obs_mode={obs_mode!r}")
    n_levels = validate_n_levels(n_levels) if n_levels is not None else None
    if obs_mode == "rgb" and tile_size is not None and (view_size or 7) * tile_size < 8:
        raise ValueError(f"tile_size={tile_size!r} with view_size={view_size or 7}: an image of "
                         f"{(view_size or 7) * tile_size} pixels a side is too small for the CNN encoder; expected "
                         f"view_size * tile_size >= 8")
    wrappers = check_train_wrappers(wrappers or {})
    if action_set is not None:
        if action_set not in ACTION_SETS:
            raise ValueError(f"action_set must be one of {', '.join(ACTION_SETS)} (or None), got {action_set!r}")
        if not minigrid_env and action_set != "all":
            raise ValueError(f"action_set={action_set!r} applies only to MiniGrid-* ids, not {canonical!r}")

    if env_kwargs is None:
        env_kwargs = {}
    if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in env_kwargs):
        raise ValueError(f"env_kwargs={env_kwargs!r}: expected a mapping of keyword names to values, e.g. "
                         "{'length': 100}")
    make_kwargs: dict[str, Any] = dict(env_kwargs)
    if render_mode is not None:
        if not isinstance(render_mode, str):
            raise ValueError(f"render_mode must be None or a str such as 'rgb_array', got {render_mode!r}")
        make_kwargs["render_mode"] = render_mode
    if max_episode_steps is not None:
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be None or a positive int, got {max_episode_steps!r}")
        make_kwargs["max_episode_steps"] = max_episode_steps

    if canonical in MASKED_ENVS:
        masked = MASKED_ENVS[canonical]
        if masked.needs_box2d and not _box2d_available():
            raise MissingDependencyError(
                f"{canonical} needs Box2D, which is not installed; install it with: {BOX2D_INSTALL} "
                f"(or the project's extra: pip install \"recurrent-agents[box2d]\")"
            )
        return apply_train_wrappers(_pooled(_make(canonical, make_kwargs), n_levels), wrappers)

    if minigrid_env:
        entry = gym.spec(canonical).entry_point
        if isinstance(entry, str) and entry.startswith("minigrid.envs.wfc") and not all(
            importlib.util.find_spec(m) is not None for m in ("imageio", "networkx")
        ):
            # minigrid only notices at the first reset(); fail here instead.
            raise MissingDependencyError(
                f"{canonical} needs imageio and networkx, which are not installed; install them with: "
                f'pip install "minigrid[wfc]"'
            )
        if view_size is not None:
            make_kwargs["agent_view_size"] = validate_view_size(view_size)
        try:
            env = _make(canonical, make_kwargs)
        except TypeError as e:
            raise ValueError(
                f"{canonical} does not accept these arguments {make_kwargs}: {_first_line(e)}"
            ) from e
        env = apply_train_wrappers(_pooled(env, n_levels), wrappers)
        env = rgb_view(env, tile_size or 8) if obs_mode == "rgb" else MiniGridSymbolicObs(env)
        return MiniGridMoveActions(env) if action_set == "move" else env

    return apply_train_wrappers(_pooled(_make(canonical, make_kwargs), n_levels), wrappers)


def _pooled(env: gym.Env, n_levels: int | None) -> gym.Env:
    """The base env drawing its levels from a fixed pool (inside the training wrappers, so that a wrapper's own
    draws do not follow the level)."""
    return env if n_levels is None else LevelPool(env, n_levels)


def stack_frames(env: gym.Env, k: int) -> gym.Env:
    """The last ``k`` observations as one flat Box (oldest first; zero-padded at the start of an episode)."""
    from gymnasium.wrappers import FlattenObservation, FrameStackObservation

    return FlattenObservation(FrameStackObservation(env, stack_size=k, padding_type="zero"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _make(canonical: str, make_kwargs: dict[str, Any]) -> gym.Env:
    """``gymnasium.make`` that turns a missing optional package into a one-line MissingDependencyError and a keyword
    the env does not take into a one-line ValueError."""
    try:
        return gym.make(canonical, **make_kwargs)
    except MissingDependencyError:
        raise
    except TypeError as e:
        raise ValueError(f"{canonical} does not accept these arguments {make_kwargs}: {_first_line(e)}") from e
    except (DependencyNotInstalled, ImportError) as e:
        raise MissingDependencyError(
            f"{canonical} needs a package that is not installed: {_first_line(e)}"
        ) from e
