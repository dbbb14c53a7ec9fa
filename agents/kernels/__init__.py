"""Fused CPU kernels for the GRU and LSTM cores: a torch C++ extension compiled on first use and cached.

The kernels (``rnn_kernels.cpp``) run a whole ``[T, B]`` sequence of one recurrent layer in one call, with the
``episode_start`` resets applied inside the time loop, and a hand-derived backward whose weight gradients are one
matrix product over all steps; plus a single-step forward (all layers) for rollouts and ``act``. ``fused.py`` wraps
them as autograd functions behind the core interface.

Which path a core takes is its ``kernel`` option::

    CORES["gru"](input_size=64, hidden_size=128, kernel="auto")   # "auto" (default) | "fused" | "stock"
    core.kernel_in_use                                            # "fused" or "stock", for logging

- ``"auto"``: the fused kernels when they build (once per machine; about a minute), else ONE warning and the stock
  ``torch.nn.GRU`` / ``torch.nn.LSTM`` path;
- ``"fused"``: the fused kernels or a clear :class:`KernelBuildError`;
- ``"stock"``: never builds anything.

The default (``kernel=None``) is ``"auto"`` unless the environment variable ``RECURRENT_AGENTS_KERNEL`` names another
choice (e.g. ``RECURRENT_AGENTS_KERNEL=stock`` where no compiler is wanted). The fused kernels run on CPU tensors of
float32/float64; anything else (CUDA, half, tracing/ONNX export, ``torch.compile``) takes the stock path.

Building needs a C++ compiler and ``ninja`` (``pip install ninja``). The build lives in
``$RECURRENT_AGENTS_KERNEL_DIR`` if set, else ``$TORCH_EXTENSIONS_DIR/recurrent-agents``, else
``$XDG_CACHE_HOME/recurrent-agents/kernels`` (``~/.cache/...``), in a
folder whose name hashes the source, the compiler flags, torch and Python versions and the CPU, so a changed source,
torch or machine gets a fresh build and never a stale or incompatible one. A cached build is imported directly
(neither ninja nor a compiler is needed then).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

__all__ = ["KERNEL_CHOICES", "KernelBuildError", "cache_dir", "check_kernel_option", "default_kernel", "load",
           "resolve", "available"]

KERNEL_CHOICES = ("auto", "fused", "stock")
ENV_KERNEL = "RECURRENT_AGENTS_KERNEL"
ENV_DIR = "RECURRENT_AGENTS_KERNEL_DIR"
SOURCE = Path(__file__).with_name("rnn_kernels.cpp")


class KernelBuildError(RuntimeError):
    """The fused kernels could not be built or loaded on this machine."""


# --------------------------------------------------------------------------------------------------- options
def check_kernel_option(kernel: Optional[str]) -> str:
    """The validated kernel choice; ``None`` means :func:`default_kernel`."""
    if kernel is None:
        return default_kernel()
    if kernel not in KERNEL_CHOICES:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(repr(k) for k in KERNEL_CHOICES)}")
    return kernel


def default_kernel() -> str:
    """``$RECURRENT_AGENTS_KERNEL`` if set (validated), else ``"auto"``."""
    value = os.environ.get(ENV_KERNEL, "").strip()
    if not value:
        return "auto"
    if value not in KERNEL_CHOICES:
        raise ValueError(f"{ENV_KERNEL}={value!r}: expected one of {', '.join(KERNEL_CHOICES)}")
    return value


# --------------------------------------------------------------------------------------------------- building
def cache_dir() -> Path:
    """Where builds are cached: ``$RECURRENT_AGENTS_KERNEL_DIR``, else ``$TORCH_EXTENSIONS_DIR/recurrent-agents``,
    else ``$XDG_CACHE_HOME/recurrent-agents/kernels`` (``~/.cache/recurrent-agents/kernels``)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser()
    torch_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
    if torch_dir:
        return Path(torch_dir).expanduser() / "recurrent-agents"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recurrent-agents" / "kernels"


def _cflags() -> list[str]:
    # -fno-math-errno / -fno-trapping-math (torch builds itself with both; no reassociation, unlike -ffast-math)
    # let the compiler vectorise the branch-free exp in the gate loops. -march=native is safe because the cache
    # key includes the CPU's feature flags.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-march=native")
    return flags


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model, flags = "", ""
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line.split(":", 1)[1].strip()
                if model and flags:
                    break
            return f"{model}|{flags}"
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


def _build_name(flags: list[str]) -> str:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), torch.__version__.encode(),
                 sys.version.encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return f"ra_rnn_kernels_{key.hexdigest()[:16]}"


def _clear_stale_lock(build_dir: Path, max_age_s: float = 900.0) -> None:
    """torch's build lock survives a build killed half-way and then blocks every later build forever."""
    lock = build_dir / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
    except OSError:
        pass


def _import_built(name: str, build_dir: Path) -> Optional[ModuleType]:
    """The cached build, imported directly (no ninja, no compiler needed), or None where there is none to use."""
    suffix = ".pyd" if sys.platform == "win32" else ".so"
    path = build_dir / f"{name}{suffix}"
    if not path.is_file() or (build_dir / "lock").exists():  # none, or another process is building it now
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, str(path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception:  # a broken file: rebuild below
        return None


def _build() -> ModuleType:
    """Load the cached build, or compile it (first use). Raises on any failure."""
    flags = _cflags()
    name = _build_name(flags)
    build_dir = cache_dir() / name
    module = _import_built(name, build_dir)
    if module is not None:
        return module

    from torch.utils import cpp_extension

    cpp_extension.verify_ninja_availability()  # RuntimeError("Ninja is required to load C++ extensions ...")
    build_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build_dir)
    fresh = not any(build_dir.glob(f"{name}*.so")) and not any(build_dir.glob(f"{name}*.pyd"))
    if fresh:
        print(f"recurrent-agents: compiling the fused GRU/LSTM CPU kernels into {build_dir} "
              "(first use on this machine; about a minute)...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, build_directory=str(build_dir),
                                with_cuda=False, verbose=False)
    if fresh:
        print(f"recurrent-agents: fused kernels built in {time.perf_counter() - t0:.0f} s (cached from now on)",
              file=sys.stderr, flush=True)
    return module


# --------------------------------------------------------------------------------------------------- loading
_lock = threading.Lock()
_module: Optional[ModuleType] = None
_error: Optional[str] = None   # why the build failed (cached: a failed build is not retried in this process)
_warned = False
build_seconds: Optional[float] = None  #: time the load/build took in this process (None before the first load)


def _reset() -> None:
    """Forget the loaded module, a cached failure and the warned flag (tests use this)."""
    global _module, _error, _warned, build_seconds
    with _lock:
        _module, _error, _warned, build_seconds = None, None, False, None


def _short(exc: BaseException, keep_lines: int = 6, width: int = 240) -> str:
    """The exception in a few lines: its first line and the last ones (where a compiler puts the error)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [ln if len(ln) <= width else ln[:width] + " ..." for ln in text.splitlines()]
    if len(lines) > keep_lines + 1:
        lines = [lines[0], "  ..."] + lines[-keep_lines:]
    return "\n".join(lines)


def load() -> ModuleType:
    """The compiled extension (built on first use, cached); :class:`KernelBuildError` if it cannot be had."""
    global _module, _error, build_seconds
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            if _error is None:
                t0 = time.perf_counter()
                try:
                    _module = _build()
                except Exception as exc:  # compiler missing, ninja missing, build error, import error, ...
                    _error = _short(exc)
                build_seconds = time.perf_counter() - t0
            if _module is None:
                raise KernelBuildError(
                    "the fused CPU GRU/LSTM kernels could not be built: " + _error + "\nThey need a C++ compiler "
                    "(g++ or clang++) and ninja (`pip install ninja`); kernel='stock' (or "
                    f"{ENV_KERNEL}=stock) uses torch's stock path instead.")
    return _module


def available() -> bool:
    """Whether the fused kernels can be used in this process (builds them on first call)."""
    try:
        load()
        return True
    except KernelBuildError:
        return False


def resolve(kernel: str) -> str:
    """``"fused"`` or ``"stock"`` for a validated choice: ``"fused"`` raises where the kernels cannot be built,
    ``"auto"`` warns once per process and falls back to ``"stock"``."""
    global _warned
    if kernel == "stock":
        return "stock"
    if _module is not None:
        return "fused"
    try:
        load()
        return "fused"
    except KernelBuildError as exc:
        if kernel == "fused":
            raise
        with _lock:
            first, _warned = not _warned, True
        if first:
            warnings.warn(f"{exc}\nFalling back to the stock torch.nn.GRU/LSTM path (correct, but slower to train); "
                          f"pass kernel='stock' or set {ENV_KERNEL}=stock to silence this warning.",
                          RuntimeWarning, stacklevel=3)
        return "stock"
