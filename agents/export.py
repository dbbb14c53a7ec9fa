"""Export a trained policy to ONNX with its recurrent state as explicit inputs and outputs; quantize it to int8.

The exported graph is one acting step of the actor (a deployed policy needs no critic), for every core and a dynamic
batch ``B``::

    inputs   obs            [B, *obs_shape]   the observation space's dtype (float32, or uint8 for MiniGrid); for
                                              a Discrete, MultiDiscrete, MultiBinary, Dict or Tuple space the
                                              packed observation [B, size] float32 (agents.obspack; the layout
                                              is the manifest's obs_layout, and OnnxPolicy packs for you)
             state          [B, S]            float32, the actor core's state (zeros at the start)
             episode_start  [B]               float32, 1 = zero that env's state before this step
    outputs  action         [B] int64 (Discrete) | [B, n] int64 (MultiDiscrete) | [B, n] float32 (Box, clipped
                                              to the space; MultiBinary as 0/1 float32): the deterministic action
             dist_params    [B, P]            float32: logits, or the Gaussian mean (log_std is in the manifest)
             state_out      [B, S]            float32, fed back as ``state`` at the next step

``export_policy`` writes ``policy.onnx`` (float32), ``policy.int8.onnx`` (ONNX Runtime dynamic quantization: int8
weights of every linear layer, the recurrent core's included) and ``export.json`` (the manifest: inputs, outputs,
spaces, env id, core, state size, files with their sha256, and the parity check measured at export).
``agents.runtime.OnnxPolicy`` runs them with ONNX Runtime alone (no torch import).

Command line::

    export_policy results/runs/<run>            # -> results/runs/<run>/export/{policy.onnx, policy.int8.onnx, export.json}
    export_policy model.zip --out DIR --no-int8

The exporter is torch's TorchScript-based ``torch.onnx.export(..., dynamo=False)``: it exports every core in well
under a second, needs no onnxscript, and handles the memoryless core's empty state (torch.export-based ONNX
export takes several seconds per policy here and rejects the ``[B, 0]`` state).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .encoders import run_mlp
from .policy import RecurrentActorCriticPolicy
from .runtime import (EXPORT_FORMAT, EXPORT_FORMAT_VERSION, INPUT_NAMES, MANIFEST_NAME, OUTPUT_NAMES, ExportError,
                      OnnxPolicy, file_sha256)
from .serialization import write_atomic
from .obspack import ObsPacker
from .spaces import space_to_config

DEFAULT_OPSET = 17
#: largest float32 export difference accepted, relative to the magnitude of the compared values (at least 1)
PARITY_TOLERANCE = 1e-4
FILES = {"fp32": "policy.onnx", "int8": "policy.int8.onnx"}


class ActorStep(nn.Module):
    """The exported computation: ``(obs, state, episode_start) -> (action, dist_params, state_out)``, the same as
    :meth:`RecurrentActorCriticPolicy.act` with ``deterministic=True`` restricted to the actor's part of the state.

    Under export the GRU/LSTM cores take their stock path (``torch.gru_cell`` / ``torch.lstm_cell``), which exports
    to plain matrix products and elementwise ops; the fused C++ kernels are for the torch runtime only.
    """

    def __init__(self, policy: RecurrentActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.state_shape = tuple(policy.core_pi.state_shape)
        self.state_size = int(np.prod(self.state_shape))
        box = policy.action_space if isinstance(policy.action_space, spaces.Box) else None
        self.register_buffer("low", torch.as_tensor(box.low, dtype=torch.float32) if box is not None else None,
                             persistent=False)
        self.register_buffer("high", torch.as_tensor(box.high, dtype=torch.float32) if box is not None else None,
                             persistent=False)

    def forward(self, obs: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor):
        p = self.policy
        B = obs.shape[0]
        feat = p.encoder(obs)
        if self.state_size == 0:  # the memoryless core: its [B, 0] state cannot be reshaped by the exporter
            y, _ = p.core_pi.step(feat, state)
            s = state * (1.0 - episode_start).unsqueeze(1)  # keeps episode_start an input, as for every core
        else:
            y, s = p.core_pi.step(feat, state.reshape((B,) + self.state_shape), episode_start)
        out = p.action_net(run_mlp(p.pi_net, y))
        action = p.mode_from_params(out)
        if self.low is not None:
            action = torch.maximum(torch.minimum(action, self.high), self.low)
        return action, out, (s if self.state_size == 0 else s.reshape(B, self.state_size))


def _io_description(policy: RecurrentActorCriticPolicy, step: ActorStep, example_out) -> Dict[str, list]:
    obs_space = policy.packed_space  # the network's input: the observation space itself for a Box
    action, out, _ = example_out
    act_dtype = "int64" if action.dtype == torch.int64 else "float32"
    return {
        "inputs": [
            {"name": "obs", "shape": ["batch", *obs_space.shape], "dtype": str(obs_space.dtype)},
            {"name": "state", "shape": ["batch", step.state_size], "dtype": "float32"},
            {"name": "episode_start", "shape": ["batch"], "dtype": "float32"},
        ],
        "outputs": [
            {"name": "action", "shape": ["batch", *action.shape[1:]], "dtype": act_dtype},
            {"name": "dist_params", "shape": ["batch", out.shape[1]], "dtype": "float32"},
            {"name": "state_out", "shape": ["batch", step.state_size], "dtype": "float32"},
        ],
    }


def _example_inputs(policy: RecurrentActorCriticPolicy, batch: int, seed: int = 0):
    """Observations drawn from the observation space (MiniGrid codes stay valid), a random state, and resets."""
    obs = torch.as_tensor(policy.pack_obs(sample_batch(policy.observation_space, batch, seed)))
    gen = torch.Generator().manual_seed(seed)
    n = int(np.prod(policy.core_pi.state_shape))
    state = torch.randn((batch, n), generator=gen) * 0.5
    starts = (torch.arange(batch) % 3 == 1).to(torch.float32)
    return obs, state, starts


def sample_batch(space, batch: int, seed: int = 0):
    """``batch`` observations drawn from ``space``, batched as a VecEnv returns them (MiniGrid codes stay valid)."""
    space.seed(seed)
    return ObsPacker(space_to_config(space)).stack([space.sample() for _ in range(batch)])


def export_onnx(policy: RecurrentActorCriticPolicy, path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the acting step of ``policy`` as an ONNX file (batch dimension dynamic); returns the path."""
    path = Path(path)
    step = ActorStep(policy).eval()
    args = _example_inputs(policy, batch=2)
    dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(step, args, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    return path


def _gemm_to_matmul(model) -> int:
    """Rewrite ``Gemm(A, W, b)`` nodes with a constant weight as ``MatMul(A, W^T) + b`` in place.

    torch exports ``nn.Linear`` and the recurrent cells' input/hidden products as Gemm, which ONNX Runtime's dynamic
    quantization leaves in float32; as MatMul they get int8 weights. Returns the number of nodes rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = f"{node.input[1]}__matmul_{count}"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_matmul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_add"))
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return count


def quantize_onnx(src, dst) -> Path:
    """int8 dynamic quantization (ONNX Runtime's): int8 weights for every linear layer and recurrent product,
    activations quantized per call. Returns ``dst``."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ExportError(f"int8 export needs onnx and onnxruntime ({exc.name} is missing): "
                          "pip install 'recurrent-agents[onnx]', or pass --no-int8") from None
    model = onnx.load(str(src))
    _gemm_to_matmul(model)
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "matmul.onnx"
        onnx.save(model, str(mid))
        logger = logging.getLogger()  # the quantizer logs advice on the root logger at WARNING
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            # per-channel weight scales, and 7-bit weights (reduce_range) so the u8 x s8 products cannot saturate
            # on CPUs without VNNI (ONNX Runtime's advice; without it a 2-layer LSTM's state drifts ~15x more)
            quantize_dynamic(str(mid), str(dst), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gather"], per_channel=True, reduce_range=True)
        finally:
            logger.setLevel(level)
    return Path(dst)


def parity_check(policy: RecurrentActorCriticPolicy, runtime: OnnxPolicy, steps: int = 12, batch: int = 3,
                 seed: int = 0) -> Dict[str, float]:
    """Run the torch policy and the exported runtime side by side over ``steps`` steps of ``batch`` envs with resets
    in the middle (env ``b`` restarts at step ``steps // 2 + b``), each carrying its own state.

    Returns the largest differences of ``dist_params``, state and action (absolute, and relative to the largest
    magnitude seen, at least 1), and the fraction of actions equal to ``policy.act``'s (within 1e-4 for Box)."""
    space = policy.observation_space
    space.seed(seed)
    stack = ObsPacker(space_to_config(space)).stack
    step = ActorStep(policy).eval()
    t_state = policy.initial_state(batch)
    o_state = runtime.initial_state(batch)
    diff = {"dist_params": 0.0, "state": 0.0, "action": 0.0}
    scale = {"dist_params": 1.0, "state": 1.0, "action": 1.0}
    same = 0
    for t in range(steps):
        obs = stack([space.sample() for _ in range(batch)])
        starts = np.array([t == 0 or t == steps // 2 + b for b in range(batch)])
        with torch.no_grad():
            _, params, _ = step(torch.as_tensor(policy.pack_obs(obs)), t_state[:, : step.state_size],
                                torch.as_tensor(starts, dtype=torch.float32))
            action, t_state = policy.act(obs, t_state, starts, deterministic=True)
        out = runtime.run(obs, o_state, starts)
        o_state = out["state_out"]
        pairs = {"dist_params": (out["dist_params"], params.numpy()),
                 "state": (o_state, t_state[:, : step.state_size].numpy()),
                 "action": (np.asarray(out["action"], dtype=np.float64).reshape(batch, -1),
                            np.asarray(action, dtype=np.float64).reshape(batch, -1))}
        for key, (a, b) in pairs.items():
            diff[key] = max(diff[key], float(np.abs(a - b).max(initial=0.0)))
            scale[key] = max(scale[key], float(np.abs(b).max(initial=0.0)))
        a_o, a_t = pairs["action"]
        same += int(np.sum(np.all(np.isclose(a_o, a_t, rtol=1e-4, atol=1e-4), axis=1)))
    result = {f"max_abs_{k}": v for k, v in diff.items()}
    result.update({f"max_rel_{k}": diff[k] / scale[k] for k in diff})
    result.update({"action_agreement": same / (steps * batch), "steps": steps, "batch": batch})
    return result


def _write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def export_policy(source, out_dir=None, int8: bool = True, opset: int = DEFAULT_OPSET,
                  check: bool = True) -> Dict[str, Any]:
    """Export the policy in ``source`` (a run directory or a model.zip) to ``out_dir`` (default: ``<run dir>/export``
    or ``<model dir>/export``): ONNX float32, optionally int8, and ``export.json``. Returns the manifest.

    With ``check`` the exported file is run beside the torch policy (:func:`parity_check`) and the export fails
    when they disagree beyond float tolerance; the measured differences are stored in the manifest either way.
    """
    from .serialization import _model_path, load_policy

    model_path = _model_path(source)
    out = Path(out_dir) if out_dir is not None else default_export_dir(model_path)
    policy = load_policy(model_path)
    return write_export(policy, out, int8=int8, opset=opset, check=check, source=str(model_path),
                        make_env_kwargs=policy_env_kwargs(policy, model_path.parent))


def policy_env_kwargs(policy: RecurrentActorCriticPolicy, run_dir) -> Dict[str, Any]:
    """The ``envs.make_env`` options of the env a policy acts in: those it stored, or for a policy saved before
    policies stored them, those of its run (:func:`run_env_kwargs`)."""
    return dict(policy.env_kwargs) if policy.env_kwargs is not None else run_env_kwargs(run_dir)


def default_export_dir(model_path) -> Path:
    """Where ``export_policy`` writes without ``out_dir``: ``export/`` beside the model file."""
    return Path(model_path).parent / "export"


#: the ``envs.make_env`` options a run's config.yaml held before policies stored their own (``policy.env_kwargs``)
_LEGACY_ENV_OPTIONS = ("view_size", "action_set", "max_episode_steps", "frame_stack")


def run_env_kwargs(run_dir) -> Dict[str, Any]:
    """For a policy saved before policies stored their ``env_kwargs``: the ``envs.make_env`` options of its run,
    read as plain data from the run's ``config.yaml`` (``{}`` without one)."""
    run_config = Path(run_dir) / "config.yaml"
    if not run_config.exists():
        return {}
    import yaml

    cfg = yaml.safe_load(run_config.read_text()) or {}
    # unset options and minigrid's own action set are make_env's defaults: left out
    return {k: cfg[k] for k in _LEGACY_ENV_OPTIONS if cfg.get(k) is not None and (k, cfg[k]) != ("action_set", "all")}


def write_export(policy: RecurrentActorCriticPolicy, out_dir, int8: bool = True, opset: int = DEFAULT_OPSET,
                 check: bool = True, source: Optional[str] = None,
                 make_env_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """:func:`export_policy` for a policy already in memory (e.g. ``model.policy`` right after training; the policy
    itself is left as it is: a CPU copy is exported). ``make_env_kwargs`` (e.g. ``{"frame_stack": 4}``) are stored so
    users build the env as training did: ``envs.make_env(manifest["env_id"], **manifest["make_env_kwargs"])``.

    The files are written to a staging folder and moved into ``out_dir`` only after the parity check passed, so a
    failed export never leaves loadable files behind (nor replaces a previous export)."""
    # a CPU copy rebuilt from plain data and the weights (as load_policy does), so the caller's policy is untouched
    copy_ = RecurrentActorCriticPolicy.from_config(policy.config())
    copy_.load_state_dict({k: v.detach().cpu() for k, v in policy.state_dict().items()})
    policy = copy_
    policy.set_training_mode(False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = ActorStep(policy).eval()
    with torch.no_grad():
        example = step(*_example_inputs(policy, batch=2))
    manifest: Dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "source": source,
        "env_id": policy.env_id,
        "make_env_kwargs": dict(make_env_kwargs or {}),
        "core": policy.core_name,
        "hidden_size": policy.hidden_size,
        "num_layers": policy.num_layers,
        "state_size": step.state_size,
        "state_shape": list(step.state_shape),
        "observation_space": space_to_config(policy.observation_space),
        "obs_layout": ObsPacker(space_to_config(policy.observation_space)).layout()
        if policy.packed_space is not policy.observation_space else None,
        "action_space": space_to_config(policy.action_space),
        "log_std": policy.log_std.detach().tolist() if hasattr(policy, "log_std") else None,
        **_io_description(policy, step, example),
        "opset": opset,
        "versions": {"torch": torch.__version__},
        "files": {},
    }
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as staging_dir:
        staging = Path(staging_dir)
        written = {"fp32": export_onnx(policy, staging / FILES["fp32"], opset=opset)}
        if int8:
            written["int8"] = quantize_onnx(written["fp32"], staging / FILES["int8"])
        for precision, path in written.items():
            manifest["files"][precision] = {"path": path.name, "sha256": file_sha256(path),
                                            "bytes": path.stat().st_size}
        _write_json_atomic(staging / MANIFEST_NAME, manifest)
        if check:
            manifest["parity"] = {precision: parity_check(policy, OnnxPolicy(staging, precision=precision))
                                  for precision in written}
            fp32 = manifest["parity"]["fp32"]
            if fp32["max_rel_dist_params"] > PARITY_TOLERANCE or fp32["max_rel_state"] > PARITY_TOLERANCE:
                raise ExportError(
                    f"the ONNX export of {source or 'the policy'} disagrees with the torch policy (relative "
                    f"dist_params diff {fp32['max_rel_dist_params']:.1e}, state diff {fp32['max_rel_state']:.1e}): "
                    f"expected <= {PARITY_TOLERANCE:.0e}; nothing was written; please report this with the model")
            _write_json_atomic(staging / MANIFEST_NAME, manifest)
        for precision, path in written.items():
            os.replace(path, out / path.name)
        stale = out / FILES["int8"]
        if not int8 and stale.exists():  # an int8 file of an earlier export would not match this manifest
            stale.unlink()
        os.replace(staging / MANIFEST_NAME, out / MANIFEST_NAME)
    return manifest


# ------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_policy",
        description="Export a trained policy (run directory or model.zip) to ONNX with its recurrent state as "
                    "explicit inputs/outputs, plus an int8 version and export.json describing both.")
    parser.add_argument("source", help="run directory (results/runs/<run>) or model.zip written by train_agent")
    parser.add_argument("--out", default=None, help="output directory (default: <run dir>/export)")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 quantized file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the parity check of the exported files against the torch policy")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.opset < 14:
        print(f"export_policy: error: --opset {args.opset} is too old: expected 14 or newer", file=sys.stderr)
        return 2
    try:
        manifest = export_policy(args.source, args.out, int8=args.int8, opset=args.opset, check=args.check)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        print(f"export_policy: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_export_dir(manifest["source"])
    print(f"exported {manifest['core']} policy ({manifest['env_id']}, state size {manifest['state_size']}) to {out}")
    for precision, info in manifest["files"].items():
        line = f"  {precision:5s} {info['path']:18s} {info['bytes'] / 1024:8.1f} KiB"
        if "parity" in manifest:
            p = manifest["parity"][precision]
            line += (f"   vs torch: max |dist_params| diff {p['max_abs_dist_params']:.1e}, "
                     f"actions equal {100 * p['action_agreement']:.0f}%")
        print(line)
    print(f"  manifest {MANIFEST_NAME}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
