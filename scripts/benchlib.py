"""Shared helpers for the benchmark scripts: provenance (commit, machine), latency timing, result files."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def git_commit() -> str:
    """The checkout's short commit (``+dirty`` when tracked code outside results/ changed), or "unknown".

    ``RECURRENT_AGENTS_COMMIT`` overrides it: for a copy of a clean checkout sent to another machine (a GPU host),
    whose own .git, if any, need not match the tree that runs."""
    if os.environ.get("RECURRENT_AGENTS_COMMIT"):
        return os.environ["RECURRENT_AGENTS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # results/ is what the benchmarks write: a re-run over earlier results is not a change of the measured code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def machine() -> Dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "gpu": gpu, "torch": torch.__version__,
            "torch_threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "platform": platform.platform()}


def device_error(device: str) -> str | None:
    """Why ``--device`` cannot run here, in one line, or None: ``cpu``, or ``cuda`` / ``cuda:N`` where torch sees
    that GPU."""
    from agents.train import device_unavailable

    if device == "cpu":
        return None
    well_formed = re.fullmatch(r"cuda(:[0-9]+)?", device)
    reason = device_unavailable(device) if well_formed else "not a torch device these benchmarks take"
    if reason is None:
        return None
    return f"--device {device!r}: expected cpu, or cuda / cuda:N on a machine where torch sees that GPU ({reason})"


def provenance(command: str | None = None) -> Dict[str, object]:
    if command is None:
        script = Path(sys.argv[0]).resolve()
        shown = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]
        command = "python " + " ".join([shown] + sys.argv[1:])
    return {"commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": command}


def time_per_call_us(fn: Callable[[], object], warmup: int = 300, n: int = 3000) -> Dict[str, float]:
    """p50/p99/mean wall time of ``fn`` in microseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        fn()
        samples[i] = time.perf_counter_ns() - t
    samples /= 1e3
    return {"p50_us": float(np.percentile(samples, 50)), "p99_us": float(np.percentile(samples, 99)),
            "mean_us": float(samples.mean())}


def write_results(name: str, payload: Dict[str, object], table: List[str]) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the table plus provenance)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    prov = payload["provenance"]
    m = prov["machine"]
    header = [f"# {name}", "",
              f"Commit `{prov['commit']}`, {prov['date']}; {m['cpu']}, {m['cores']} cores, "
              + (f"GPU {m['gpu']}, " if m.get("gpu", "none") != "none" else "") + f"torch {m['torch']} "
              f"({m['torch_threads']} thread(s)), Python {m['python']}.", "",
              f"Reproduce: `{prov['command']}`", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(header + table) + "\n")


def publish(name: str, script: str, argv: Sequence[str], table: List[str], out_dir=None, **fields) -> None:
    """Print ``table`` and write ``<name>.json`` / ``<name>.md`` into results/ (or ``out_dir``), their provenance
    naming the command ``python scripts/<script> <argv>``; ``fields`` (settings, rows, ...) follow it in the JSON."""
    global RESULTS
    print("\n".join(table))
    if out_dir:
        RESULTS = Path(out_dir)
    command = f"python scripts/{script} {shlex.join(list(argv))}".strip()
    write_results(name, {"provenance": provenance(command), **fields}, table)
    print(f"wrote {RESULTS / (name + '.json')} and {RESULTS / (name + '.md')}")


def trained_runs(paths: Iterable) -> List[Path]:
    """The run directories among ``paths`` that hold a model.zip, relative to the repository root when inside it."""
    runs = []
    for p in map(Path, paths):
        if (p / "model.zip").exists():
            runs.append(p.resolve().relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p)
    return runs


_EXPORT_DIRS: List[tempfile.TemporaryDirectory] = []  # temporary export folders, kept until the process ends


def export_to_temp(policy) -> str:
    """``policy`` exported (ONNX float32 + int8, parity-checked, ``agents.export.write_export``) to a temporary
    folder that lives until the process ends; returns the folder."""
    from agents.export import write_export

    tmp = tempfile.TemporaryDirectory()
    _EXPORT_DIRS.append(tmp)
    write_export(policy, tmp.name, int8=True, check=True)
    return tmp.name
