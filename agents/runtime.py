"""Run an exported policy with ONNX Runtime alone: numpy in, numpy out, no torch import.

``export_policy`` (see ``agents.export``) writes ``policy.onnx``, ``policy.int8.onnx`` and ``export.json``. This
module needs only numpy and onnxruntime (``pip install 'recurrent-agents[onnx]'``); importing it does not import
torch, so it runs where torch is not installed::

    from agents.runtime import OnnxPolicy

    policy = OnnxPolicy("results/runs/<run>/export")          # or precision="int8"
    policy.reset(batch_size=1)                                # the wrapper keeps the state between calls
    obs, _ = env.reset()
    action = policy.step(obs, episode_start=True)             # one observation -> one action
    ...
    # or carry the state yourself, exactly like torch's policy.act:
    state = policy.initial_state(1)                           # [B, S] float32
    action, state = policy.act(obs, state, episode_start=False)

A file that is missing, corrupt, changed after export or from another tool gives one :class:`ExportError` naming
the file and what was expected, before ONNX Runtime sees it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .obspack import ObsPacker, is_structured

EXPORT_FORMAT = "recurrent-agents-onnx"
EXPORT_FORMAT_VERSION = 1
MANIFEST_NAME = "export.json"
INPUT_NAMES = ("obs", "state", "episode_start")
OUTPUT_NAMES = ("action", "dist_params", "state_out")
PRECISIONS = ("fp32", "int8")


class ExportError(ValueError):
    """An exported policy that cannot be written, found, read or trusted."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _locate(path) -> Tuple[Path, Optional[str]]:
    """``path`` (export directory, export.json, or one of its .onnx files) -> (manifest path, file name or None)."""
    p = Path(path)
    if p.is_dir():
        return p / MANIFEST_NAME, None
    if p.suffix == ".json":
        return p, None
    return p.parent / MANIFEST_NAME, p.name


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def read_manifest(path) -> Dict[str, Any]:
    """The manifest (``export.json``) of an export directory, checked for format, version and structure."""
    manifest_path, _ = _locate(path)
    if not manifest_path.exists():
        where = f"{str(path)!r} does not exist" if not Path(path).exists() else f"{str(manifest_path)!r} does not exist"
        raise ExportError(f"{where}: expected an export directory holding the export.json written by export_policy "
                          "(run `export_policy <run dir>`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ExportError(f"{str(manifest_path)!r} is unreadable or corrupt ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}): expected the JSON written by export_policy") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{str(manifest_path)!r} is not a recurrent-agents export: expected format {EXPORT_FORMAT!r}")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{str(manifest_path)!r} has format_version {manifest.get('format_version')!r}: expected "
                          f"{EXPORT_FORMAT_VERSION} (re-export the model with this version's export_policy)")
    try:
        files = manifest["files"]
        assert isinstance(files, dict) and files
        for entry in files.values():
            assert isinstance(entry, dict) and isinstance(entry["path"], str) and entry["path"]
            assert Path(entry["path"]).name == entry["path"] and isinstance(entry["sha256"], str)
        ios = {d["name"]: d for d in manifest["inputs"] + manifest["outputs"]}
        assert tuple(ios) == INPUT_NAMES + OUTPUT_NAMES
        for d in ios.values():
            np.dtype(d["dtype"])
            assert isinstance(d["shape"], list) and d["shape"][0] == "batch"
            assert all(isinstance(n, int) and n >= 0 for n in d["shape"][1:])
        assert isinstance(manifest["state_size"], int) and manifest["state_size"] >= 0
        assert isinstance(manifest["observation_space"], dict) and isinstance(manifest["action_space"], dict)
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else "malformed entries"
        raise ExportError(f"{str(manifest_path)!r} is incomplete ({detail}): expected files, inputs, outputs, "
                          "state_size and spaces as written by export_policy") from None
    return manifest


class OnnxPolicy:
    """An exported policy on ONNX Runtime: deterministic actions, with the recurrent state as plain numpy.

    The state ``S`` is the actor core's state only (a deployed policy has no critic), so with a separate critic core
    it is smaller than the torch policy's ``state_size``.

    :param path: export directory, its ``export.json``, or one of its ``.onnx`` files
    :param precision: ``"fp32"`` or ``"int8"`` (ignored when ``path`` names an .onnx file)
    :param threads: ONNX Runtime intra-op threads (1 is fastest for batch-1 acting)
    """

    def __init__(self, path, precision: str = "fp32", threads: int = 1) -> None:
        manifest_path, file_name = _locate(path)
        self.manifest = read_manifest(path)
        files = self.manifest["files"]
        if file_name is not None:
            matches = [k for k, v in files.items() if v["path"] == file_name]
            if not matches:
                raise ExportError(f"{str(path)!r} is not listed in {str(manifest_path)!r}: expected one of "
                                  f"{', '.join(v['path'] for v in files.values())}")
            precision = matches[0]
        if precision not in files:
            raise ExportError(f"precision {precision!r} was not exported to {str(manifest_path.parent)!r}: expected one "
                              f"of {', '.join(files)}")
        entry = files[precision]
        self.precision = precision
        self.path = manifest_path.parent / entry["path"]
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ExportError(f"{str(self.path)!r} cannot be read ({type(exc).__name__}): export.json lists it; "
                              "re-run export_policy") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise ExportError(f"{str(self.path)!r} does not match export.json (sha256 {digest[:12]}... vs "
                              f"{entry['sha256'][:12]}...): the file was changed or truncated after export; "
                              "re-run export_policy")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("onnxruntime is not installed: pip install 'recurrent-agents[onnx]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for invalid models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{str(self.path)!r} could not be loaded by ONNX Runtime ({first}): expected a model "
                              "written by export_policy") from None
        self._check_session()
        inputs = {d["name"]: d for d in self.manifest["inputs"]}
        self.obs_shape = tuple(inputs["obs"]["shape"][1:])
        self.obs_dtype = np.dtype(inputs["obs"]["dtype"])
        space = self.manifest["observation_space"]
        #: packs Discrete / MultiDiscrete / MultiBinary / Dict / Tuple observations as the torch policy does
        self._packer = ObsPacker(space) if is_structured(space) else None
        self.state_size = int(self.manifest["state_size"])
        self.env_id = self.manifest.get("env_id")
        #: keyword arguments of ``envs.make_env`` the policy was trained with (e.g. ``{"frame_stack": 4}``)
        self.make_env_kwargs = dict(self.manifest.get("make_env_kwargs") or {})
        self.core = self.manifest.get("core")
        self._zeros: Dict[int, np.ndarray] = {}

    def _check_session(self) -> None:
        """Every input and output of the loaded graph has the name, dtype and non-batch shape export.json gives."""
        declared = self.manifest["inputs"] + self.manifest["outputs"]
        actual = list(self.session.get_inputs()) + list(self.session.get_outputs())

        def fits(a, d) -> bool:
            dims = a.shape[1:]
            return (a.name == d["name"] and _ORT_TYPES.get(a.type) == d["dtype"] and len(dims) == len(d["shape"]) - 1
                    and all(not isinstance(n, int) or n == m for n, m in zip(dims, d["shape"][1:])))

        if len(actual) != len(declared):
            raise ExportError(f"{str(self.path)!r} has {len(actual)} inputs and outputs, export.json declares "
                              f"{len(declared)}: the files come from different exports; re-run export_policy")
        for a, d in zip(actual, declared):
            if not fits(a, d):
                raise ExportError(f"{str(self.path)!r} has {a.name} {a.type} {a.shape} where export.json declares "
                                  f"{d['name']} {d['dtype']} {d['shape']}: the files come from different exports; "
                                  "re-run export_policy")

    def __repr__(self) -> str:
        return (f"OnnxPolicy(core={self.core!r}, env_id={self.env_id!r}, precision={self.precision!r}, "
                f"state_size={self.state_size})")

    # ------------------------------------------------------------------ functional
    def initial_state(self, batch_size: int = 1) -> np.ndarray:
        """Zero state for ``batch_size`` envs: ``[batch_size, S]`` float32."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        return np.zeros((int(batch_size), self.state_size), dtype=np.float32)

    def _batch(self, obs) -> Tuple[np.ndarray, bool]:
        if self._packer is not None:
            return self._packer.pack(obs)
        obs = np.asarray(obs)
        if obs.shape == self.obs_shape:
            return obs[None].astype(self.obs_dtype, copy=False), True
        if obs.ndim == len(self.obs_shape) + 1 and obs.shape[1:] == self.obs_shape:
            return obs.astype(self.obs_dtype, copy=False), False
        raise ValueError(f"observation has shape {obs.shape}: expected {self.obs_shape} or [B, *{self.obs_shape}]")

    def run(self, obs, state, episode_start=False) -> Dict[str, np.ndarray]:
        """One step for a batch: ``obs [B, ...]``, ``state [B, S]``, ``episode_start`` (bool or ``[B]``) ->
        ``{"action", "dist_params", "state_out"}`` (all batched)."""
        return dict(zip(OUTPUT_NAMES, self._run(obs, state, episode_start)[0]))

    def _run(self, obs, state, episode_start):
        obs_b, single = self._batch(obs)
        B = obs_b.shape[0]
        if type(state) is not np.ndarray or state.dtype != np.float32 or not state.flags.c_contiguous:
            state = np.ascontiguousarray(state, dtype=np.float32)
        if state.shape != (B, self.state_size):
            raise ValueError(f"state has shape {state.shape}: expected [{B}, {self.state_size}] "
                             f"(policy.initial_state({B}))")
        if episode_start is None or episode_start is False:  # the per-step case: one cached array of zeros
            starts = self._zeros.get(B)
            if starts is None:
                starts = self._zeros[B] = np.zeros(B, dtype=np.float32)
        else:
            starts = np.asarray(episode_start, dtype=np.float32)
            starts = np.full(B, starts, dtype=np.float32) if starts.ndim == 0 else starts.reshape(-1)
            if starts.shape != (B,):
                raise ValueError(f"episode_start has {starts.shape[0]} entries: expected one per observation ({B})")
        out = self.session.run(None, {"obs": obs_b, "state": state, "episode_start": starts})
        return out, single

    def act(self, obs, state, episode_start=False) -> Tuple[np.ndarray, np.ndarray]:
        """Like torch's ``policy.act(obs, state, episode_start, deterministic=True)``: one observation or a batch ->
        ``(action, new_state)``; the action is unbatched for a single observation."""
        (action, _, new_state), single = self._run(obs, state, episode_start)
        return (action[0] if single else action), new_state

    # -------------------------------------------------------------------- stateful
    def reset(self, batch_size: int = 1) -> None:
        """Forget the kept state (``batch_size`` envs)."""
        self._state = self.initial_state(batch_size)

    def step(self, obs, episode_start=False) -> np.ndarray:
        """Act with the state kept inside the wrapper (call :meth:`reset` first to choose the batch size; a single
        observation uses batch 1). ``episode_start=True`` zeroes the kept state before this step."""
        state = getattr(self, "_state", None)
        n = self._batch(obs)[0].shape[0]
        if state is None:
            state = self.initial_state(n)
        elif state.shape[0] != n:
            raise ValueError(f"step() got {n} observation(s) but the kept state is for {state.shape[0]} env(s): "
                             f"expected {state.shape[0]}, or call reset(batch_size={n}) first")
        action, self._state = self.act(obs, state, episode_start)
        return action
