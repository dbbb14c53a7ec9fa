"""Sweep runner: one ``train_agent`` run per cell of cores x envs x sizes x seeds, resumable, local or on Ray.

    python scripts/sweep.py --cores gru,lstm,mlp --envs CartPole-P-v1,MiniGrid-Memory --seeds 0-4 \\
        --total-timesteps 100000 --out results/runs/sweep_main
    python scripts/sweep.py --cores gru,lstm,mlp --envs MiniGrid-Memory --seeds 0-4 --hidden-sizes 64,128 \\
        --match-params lstm:64 --match-params lstm:128 --out results/runs/sweep_sizes
    python scripts/sweep.py --cores gru,mlp --frame-stack 4 --envs CartPole-P-v1 --seeds 0-4 --out ...   # + mlp+fs4
    python scripts/sweep.py ... --backend ray --address 10.0.0.1:6379    # same grid on an existing Ray cluster

Cells. A cell is (env, core label, size, seed). A core label is a core name (``gru``, ``lstm``, ``mlp``, ...) or
``CORE+fsK`` (that core fed the last K observations: ``--set frame_stack=K``; ``--frame-stack K`` adds ``mlp+fsK``),
with ``@NAME`` appended under ``--variant NAME`` (ablations such as ``--variant noclip --set max_grad_norm=null``
share the sweep directory and the report with the baseline).
A size is ``hN`` (``--hidden-sizes``), ``pm-CORE<H>`` (``--match-params CORE:H``: every core sized to CORE's
parameter count at H units, CORE itself at H units) or ``hcfg`` (neither flag: the env family config's size).

Layout. Each cell trains with ``--logdir OUT/<cell-id>/``, so its run directory is the only
``<env>__<core>__s<seed>__<time>/`` inside it; ``<cell-id>`` = ``<env>__<label>__<size>__s<seed>`` (env id as
given, less any `module:` prefix). Next to the run directory: ``train.log`` (the run's stdout and stderr) and ``cell.json`` (what the sweep
ran, exit status, wall seconds, the training process's peak RSS). ``OUT/sweep.json`` records every invocation (its
command, commit and machine): ``scripts/report.py OUT`` quotes it under every figure.

Resuming. Re-running the same command skips finished cells (summary.json with status completed and at least the
requested steps), continues interrupted ones from their latest checkpoint (``train_agent --resume``; also how a
finished cell is extended when ``--total-timesteps`` grows), and starts the rest. Ctrl-C stops every running cell
after it saves a checkpoint; run the command again to continue. A cell is only skipped or continued when its run was
trained with the recipe the command asks for (its config.yaml against the cell's resolved config, where and how long
aside): a changed ``--set``, ``--config`` or family config file is refused before anything starts, naming the key -
give the new recipe a ``--variant`` (or another OUT) so both stay.

Backends. ``local`` (default): ``--workers`` cells at a time on this machine, each a ``train_agent`` subprocess with
one torch thread. ``ray``: each cell is a Ray task (``--cpus-per-cell`` CPUs) running the same cell function on some
node of the cluster at ``--address``; OUT must then be a directory every node can write (a shared file system).

Exit status: 0 every cell done; 1 some cell failed (see its train.log); 2 bad input (nothing started); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
PROG = "sweep"
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
DONE_STATUSES = ("completed", "done")
LABEL_RE = re.compile(r"^(?P<core>[A-Za-z0-9_]+)(?:\+fs(?P<k>[0-9]+))?$")
CELL_FILE, LOG_FILE, LOCK_FILE, SWEEP_FILE = "cell.json", "train.log", ".sweep-lock", "sweep.json"


class SweepError(Exception):
    """Bad input, reported as one line with exit status 2 before any cell starts."""


# ---------------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One train_agent run of the grid. ``argv`` are train_agent's arguments for a new run (without the program)."""

    cell_id: str
    env: str
    label: str
    core: str
    size: str
    seed: int
    total_timesteps: int
    frame_stack: int = 1
    hidden_size: Optional[int] = None
    match_params: Optional[str] = None
    argv: List[str] = field(default_factory=list)
    # the resolved config keys a finished run must match (planning only; the run's config.yaml records it)
    recipe: Dict[str, Any] = field(default_factory=dict, repr=False)


def parse_seeds(text: str) -> List[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7-8"`` -> [0, 3, 7, 8]."""
    seeds: List[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            raise SweepError(f"--seeds {text!r}: expected seeds and ranges such as 0-4 or 0,3,7-8")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise SweepError(f"--seeds {text!r}: range {part} is empty (expected LOW-HIGH with LOW <= HIGH)")
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    if not seeds:
        raise SweepError(f"--seeds {text!r}: no seeds")
    return seeds


def _split_list(values: Optional[Sequence[str]]) -> List[str]:
    out: List[str] = []
    for v in values or []:
        out += [p.strip() for p in str(v).split(",") if p.strip()]
    return out


def parse_label(label: str) -> tuple:
    """``"gru"`` -> ("gru", 1); ``"mlp+fs4"`` -> ("mlp", 4)."""
    from agents import CORES
    m = LABEL_RE.match(label)
    if not m or m.group("core") not in CORES:
        raise SweepError(f"--cores {label!r}: expected a core ({', '.join(sorted(CORES))}) or CORE+fsK "
                         "(frame-stacked, e.g. mlp+fs4)")
    k = int(m.group("k") or 1)
    if m.group("k") is not None and k < 2:
        raise SweepError(f"--cores {label!r}: a frame stack needs K >= 2")
    return m.group("core"), k


def size_specs(hidden_sizes: Sequence[str], match_params: Sequence[str]) -> List[tuple]:
    """[(tag, kind, value)]: ("h64", "hidden", 64), ("pm-lstm64", "match", "lstm:64") or ("hcfg", None, None)."""
    from agents import CORES
    specs: List[tuple] = []
    for h in _split_list(hidden_sizes):
        if not h.isdigit() or int(h) < 1:
            raise SweepError(f"--hidden-sizes {h!r}: expected positive integers, e.g. 64,128")
        specs.append((f"h{int(h)}", "hidden", int(h)))
    for mp in _split_list(match_params):
        core, sep, h = mp.partition(":")
        if not sep or core not in CORES or not h.isdigit() or int(h) < 1:
            raise SweepError(f"--match-params {mp!r}: expected CORE:HIDDEN with CORE one of "
                             f"{', '.join(sorted(CORES))}, e.g. lstm:64")
        specs.append((f"pm-{core}{int(h)}", "match", f"{core}:{int(h)}"))
    if not specs:
        specs.append(("hcfg", None, None))
    seen, unique = set(), []
    for s in specs:
        if s[0] not in seen:
            seen.add(s[0])
            unique.append(s)
    return unique


def build_cells(labels: Sequence[str], env_ids: Sequence[str], seeds: Sequence[int], sizes: Sequence[tuple],
                total_timesteps: Optional[int], set_items: Sequence[str], config: Optional[str] = None,
                device: Optional[str] = None, n_envs: Optional[int] = None, variant: Optional[str] = None
                ) -> List[Cell]:
    """Every cell of the grid, each checked by resolving its config (unknown keys, bad values, unknown env: an error
    naming the cell before anything starts). ``variant`` is appended to every label (``gru@noclip``)."""
    if variant is not None and not re.fullmatch(r"[A-Za-z0-9_.=-]+", variant):
        raise SweepError(f"--variant {variant!r}: expected letters, digits and _ . = - only (it names directories)")
    import envs
    from agents.config import ConfigError, TrainConfig, resolve_config

    cells: List[Cell] = []
    for env_given in env_ids:
        try:
            env = envs.resolve_env_id(env_given)
        except envs.UnknownEnvError as exc:
            raise SweepError(f"--envs {env_given!r}: {' '.join(str(exc).split())}") from None
        for label in labels:
            core, k = parse_label(label)
            if k > 1 and "frame_stack" not in TrainConfig.field_names():
                raise SweepError(f"core label {label!r} needs a frame_stack config key (train_agent --set "
                                 "frame_stack=K), which agents.config.TrainConfig does not have yet")
            for tag, kind, value in sizes:
                for seed in seeds:
                    argv = ["--core", core, "--env", env, "--seed", str(seed)]
                    overrides: Dict[str, Any] = {"core": core, "seed": seed}
                    hidden = match = None
                    if kind == "hidden":
                        hidden = int(value)
                    elif kind == "match":
                        ref_core, _, ref_h = str(value).partition(":")
                        if ref_core == core:  # the reference core itself: plain hidden size
                            if any(k2 == "hidden" and v2 == int(ref_h) for _, k2, v2 in sizes):
                                continue  # the same run as its hN cell (the report counts that one in both groups)
                            hidden = int(ref_h)
                        else:
                            match = str(value)
                    for key, flag_value in (("hidden_size", hidden), ("match_params", match),
                                            ("total_timesteps", total_timesteps), ("n_envs", n_envs),
                                            ("device", device)):
                        if flag_value is not None:  # the train_agent flag and the config key of the cell record
                            argv += ["--" + key.replace("_", "-"), str(flag_value)]
                            overrides[key] = flag_value
                    if config is not None:
                        argv += ["--config", str(Path(config).resolve())]
                    sets = list(set_items) + ([f"frame_stack={k}"] if k > 1 else [])
                    if sets:
                        argv += ["--set", *sets]
                    shown = f"{label}@{variant}" if variant else label
                    cell_id = f"{env.rpartition(':')[2]}__{shown}__{tag}__s{seed}"  # "module:EnvId": bare id
                    try:
                        cfg = resolve_config(env=env, overrides=overrides, set_items=sets, config_file=config)
                    except ConfigError as exc:
                        raise SweepError(f"cell {cell_id}: {' '.join(str(exc).split())}") from None
                    cells.append(Cell(cell_id, env, shown, core, tag, seed, cfg.total_timesteps, k, hidden, match,
                                      argv, recipe_of(cfg)))
    return cells


# ---------------------------------------------------------------------------------------------------- cell state
def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_dirs(cell_dir: Path) -> List[Path]:
    """train_agent run directories inside a cell directory, newest first."""
    if not Path(cell_dir).is_dir():
        return []
    dirs = [p for p in Path(cell_dir).iterdir() if p.is_dir() and "__s" in p.name and (p / "config.yaml").exists()]
    return sorted(dirs, key=lambda p: p.name, reverse=True)


def _latest_checkpoint_step(run_dir: Path) -> Optional[int]:
    root = Path(run_dir) / "checkpoints"
    steps = []
    if root.is_dir():
        for p in root.iterdir():
            tail = p.name[len("step_"):]
            if p.name.startswith("step_") and tail.isdigit() and (p / "state.json").exists() \
                    and (p / "model.zip").exists():
                steps.append(int(tail))
    return max(steps) if steps else None


def cell_state(cell_dir: Path, total_timesteps: int) -> tuple:
    """What to do with a cell: ("done", run_dir) finished with >= total_timesteps requested; ("resume", run_dir)
    a checkpoint below total_timesteps to continue from; ("new", None) anything else."""
    for rd in run_dirs(cell_dir):
        summary = _read_json(rd / "summary.json")
        if summary and summary.get("status") in DONE_STATUSES and \
                int(summary.get("requested_timesteps", summary.get("total_timesteps", 0))) >= total_timesteps:
            return "done", rd
        step = _latest_checkpoint_step(rd)
        if step is not None and step < total_timesteps:
            return "resume", rd
    return "new", None


#: config keys that say where, how long or how fast a run trains, not what it learns: a finished or resumable run
#: may differ from the command in these (a longer --total-timesteps extends it)
NOT_RECIPE = ("total_timesteps", "logdir", "device", "torch_threads", "vec_env", "checkpoint_freq", "keep_checkpoints",
              "latency_steps")


def recipe_of(cfg: Any) -> Dict[str, Any]:
    """The resolved config of a cell as plain data, without the keys of NOT_RECIPE (and without hidden_size when
    match_params sizes the core: train_agent records the matched size there)."""
    recipe = {k: v for k, v in asdict(cfg).items() if k not in NOT_RECIPE}
    if recipe.get("match_params"):
        recipe.pop("hidden_size", None)
    return recipe


def _yaml_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)  # true / null / [64] as --set and config.yaml write them


def recipe_conflict(cell: Dict[str, Any], out: Path) -> Optional[str]:
    """``None`` when the cell has no run to skip or resume, or that run was trained with the cell's recipe; else
    what differs (``key=recorded, asked value``). A key the run's config.yaml does not have (added since) counts as
    its ``TrainConfig`` default, as ``train_agent --resume`` reads it; keys of earlier versions are read where they
    live now (``agents.config.upgrade_legacy``)."""
    import yaml

    from agents.config import TrainConfig, upgrade_legacy

    state, rd = cell_state(Path(out) / cell["cell_id"], int(cell["total_timesteps"]))
    if state == "new":
        return None
    try:
        recorded = upgrade_legacy(yaml.safe_load((rd / "config.yaml").read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    defaults = asdict(TrainConfig())
    diffs = [f"{k}={_yaml_value(had)} (this command: {_yaml_value(v)})"
             for k, v in cell.get("recipe", {}).items() if (had := recorded.get(k, defaults.get(k, v))) != v]
    return f"{rd.name} was trained with " + ", ".join(diffs) if diffs else None


def _move_aside(cell_dir: Path, keep: Optional[Path]) -> None:
    """Unfinished run directories that cannot be resumed go to cell_dir/stale/ (kept, out of the report's way)."""
    for rd in run_dirs(cell_dir):
        if rd != keep and not (rd / "summary.json").exists():
            dest = Path(cell_dir) / "stale" / rd.name
            dest.parent.mkdir(exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(rd, dest)


def _lock(cell_dir: Path) -> Optional[str]:
    """Take the cell's lock; return None, or who holds it."""
    lock = Path(cell_dir) / LOCK_FILE
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
                pid_i = int(pid)
            except (OSError, ValueError):
                host, pid_i = "", 0
            if host == socket.gethostname() and pid_i > 0 and pid_i != os.getpid():
                try:
                    os.kill(pid_i, 0)
                    return f"process {pid_i} on this machine"
                except ProcessLookupError:
                    pass
                except PermissionError:
                    return f"process {pid_i} on this machine"
            elif host and host != socket.gethostname():
                return f"process {pid_i} on {host} (delete {lock} if that sweep is gone)"
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return None
    return "an unknown process"


def _unlock(cell_dir: Path) -> None:
    lock = Path(cell_dir) / LOCK_FILE
    try:
        if lock.read_text().split()[-1] == str(os.getpid()):
            lock.unlink()
    except (OSError, IndexError):
        pass


#: train_agent processes running now (local backend: one per worker thread). No lock: set.add/discard and list(set)
#: are atomic under the GIL, and run_cell must stay picklable by value for Ray (a lock is not).
_CHILDREN: set = set()


def _signal_children(sig: int) -> None:
    for proc in list(_CHILDREN):
        try:
            proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass


def _wait_rusage(proc: subprocess.Popen) -> tuple:
    """Wait for ``proc``; (exit status, peak RSS in MiB of that process, not its children)."""
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:  # already reaped elsewhere
            return proc.wait(), None
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return code, usage.ru_maxrss * scale / 2**20


def run_cell(cell: Dict[str, Any], out: str, python: Optional[str] = None, dry_run: bool = False) -> Dict[str, Any]:
    """Run one cell to completion (or skip it when done): the function every backend calls, on any machine.

    ``cell`` is :class:`Cell` as a dict. Returns a result dict: cell_id, action (skipped / new / resume), status
    (done / completed / failed / interrupted / busy / planned), returncode, wall_s, peak_rss_mb, run_dir, log."""
    cell_dir = Path(out) / cell["cell_id"]
    if not dry_run:
        cell_dir.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {"cell_id": cell["cell_id"], "host": socket.gethostname()}
    state, rd = cell_state(cell_dir, int(cell["total_timesteps"]))
    if state == "done":
        return {**result, "action": "skipped", "status": "done", "run_dir": str(rd)}
    cmd = [python or sys.executable, "-m", "agents.cli"]
    if state == "resume":
        argv = ["--resume", str(rd), "--total-timesteps", str(cell["total_timesteps"])]
        argv += ["--device", cell["argv"][cell["argv"].index("--device") + 1]] if "--device" in cell["argv"] else []
    else:
        argv = list(cell["argv"]) + ["--logdir", str(cell_dir)]
    argv.append("--no-progress")
    result.update(action=state, argv=argv)
    if dry_run:
        return {**result, "status": "planned", "run_dir": str(rd) if rd else None}
    holder = _lock(cell_dir)
    if holder is not None:
        return {**result, "status": "busy", "error": f"cell in use by {holder}"}
    try:
        if state == "new":
            _move_aside(cell_dir, None)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        log_path = cell_dir / LOG_FILE
        t0 = time.time()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()}: {shlex.join(cmd + argv)}\n")
            log.flush()
            # own session: a Ctrl-C at the terminal reaches only the sweep, which passes exactly one SIGINT on
            # (train_agent saves a checkpoint on the first signal and quits without saving on a second)
            proc = subprocess.Popen(cmd + argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=str(ROOT) if (ROOT / "agents").is_dir() else None)
            _CHILDREN.add(proc)
            try:
                code, peak = _wait_rusage(proc)
            except KeyboardInterrupt:  # Ray's cancel of this task
                proc.send_signal(signal.SIGINT)
                code, peak = _wait_rusage(proc)
            finally:
                _CHILDREN.discard(proc)
        wall = time.time() - t0
        new_state, rd = cell_state(cell_dir, int(cell["total_timesteps"]))
        status = "completed" if code == 0 and new_state == "done" else \
            "interrupted" if code in (130, 143, -2, -15) else "failed"
        result.update(status=status, returncode=code, wall_s=wall, peak_rss_mb=peak,
                      run_dir=str(rd) if rd else None, log=str(log_path))
        if status == "failed":
            result["error"] = _last_error(log_path)
        record = _read_json(cell_dir / CELL_FILE) or {}
        attempts = record.get("attempts", []) + [{k: result.get(k) for k in (
            "action", "status", "returncode", "wall_s", "peak_rss_mb", "host", "argv")} | {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}]
        # the recipe is the run's config.yaml again (kept there): cell.json records the cell and its attempts
        plain = {k: v for k, v in cell.items() if k != "recipe"}
        _write_json_atomic(cell_dir / CELL_FILE, {**plain, "status": status, "run_dir": result["run_dir"],
                                                  "peak_rss_mb": peak, "attempts": attempts})
        return result
    finally:
        _unlock(cell_dir)


def _last_error(log_path: Path) -> str:
    try:
        lines = [ln for ln in Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [""])[-1][-300:]


# ---------------------------------------------------------------------------------------------------- backends
def run_local(cells: List[Cell], out: Path, workers: int, on_result, on_start=lambda: None) -> int:
    """``workers`` cells at a time, each a subprocess. Returns the exit status."""
    interrupted = False
    on_start()
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(run_cell, asdict(c), str(out)): c for c in cells}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                on_result(f.result())
    except KeyboardInterrupt:
        interrupted = True
        print(f"{PROG}: interrupted: running cells save a checkpoint and stop (run the same command to continue; "
              "interrupt again to stop them without saving)", file=sys.stderr, flush=True)
        for f in futures:
            f.cancel()
        _signal_children(signal.SIGINT)
        try:
            for f in futures:
                if not f.cancelled():
                    on_result(f.result())
        except KeyboardInterrupt:
            _signal_children(signal.SIGINT)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return EXIT_INTERRUPTED if interrupted else 0


def run_ray(cells: List[Cell], out: Path, address: Optional[str], cpus_per_cell: float, on_result,
            on_start=lambda: None) -> int:
    """Each cell a Ray task calling :func:`run_cell` on the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise SweepError("--backend ray needs ray, which is not installed; install it with: pip install "
                         "\"ray>=2.9\"") from None
    try:  # run_cell and its helpers travel by value: the workers need not find scripts/ on their path
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    except (AttributeError, ValueError):
        pass
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        except Exception as exc:  # ConnectionError, ValueError, ... : ray's own types vary across versions
            raise SweepError(f"--address {address!r}: cannot connect to a Ray cluster ({' '.join(str(exc).split())})") \
                from None
    on_start()
    remote = ray.remote(num_cpus=cpus_per_cell, max_retries=0)(run_cell)
    refs = {remote.remote(asdict(c), str(out)): c for c in cells}
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                try:
                    on_result(ray.get(ref))
                except Exception as exc:  # the task itself crashed (worker died, ...)
                    on_result({"cell_id": refs[ref].cell_id, "status": "failed", "error": " ".join(str(exc).split())})
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: cancelling the Ray tasks (each saves a checkpoint)", file=sys.stderr, flush=True)
        for ref in refs:
            ray.cancel(ref, force=False)
        return EXIT_INTERRUPTED
    return 0


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cores", required=True, help="comma list of core labels: gru,lstm,mlp or CORE+fsK")
    p.add_argument("--envs", required=True, help="comma list of env ids or aliases")
    p.add_argument("--seeds", default="0-4", help="seeds and ranges (default 0-4)")
    p.add_argument("--total-timesteps", type=int, default=None, help="env steps per run (default: family config)")
    p.add_argument("--hidden-sizes", action="append", default=[], metavar="N[,N...]", help="hidden sizes to sweep")
    p.add_argument("--match-params", action="append", default=[], metavar="CORE:HIDDEN",
                   help="parameter-matched group: every core sized to CORE at HIDDEN units (repeatable)")
    p.add_argument("--frame-stack", action="append", default=[], metavar="K",
                   help="add the frame-stacked memoryless control mlp+fsK (repeatable / comma list)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides passed to every run (train_agent --set)")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="suffix every core label with @NAME (an ablation beside the baseline in one sweep directory, "
                        "e.g. --variant noclip --set max_grad_norm=null)")
    p.add_argument("--config", metavar="FILE", help="YAML config passed to every run (train_agent --config)")
    p.add_argument("--n-envs", type=int, default=None, help="train_agent --n-envs for every run")
    p.add_argument("--device", default=None, help="train_agent --device for every run (default: config's)")
    p.add_argument("--out", required=True, help="sweep directory, e.g. results/runs/sweep_NAME")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="local backend: cells at a time (default: half the CPU cores, at least 1)")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None, help="ray backend: cluster address (default: RAY_ADDRESS or a new "
                                                   "local Ray instance)")
    p.add_argument("--cpus-per-cell", type=float, default=1.0, help="ray backend: CPUs reserved per cell (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what would run; train nothing")
    return p


def _record_invocation(out: Path, argv: Sequence[str], cells: List[Cell]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import provenance
    command = "python scripts/sweep.py " + shlex.join(list(argv))
    record = _read_json(out / SWEEP_FILE) or {"invocations": []}
    record["invocations"].append({**provenance(command), "host": socket.gethostname(),
                                  "cells": [c.cell_id for c in cells]})
    _write_json_atomic(out / SWEEP_FILE, record)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        labels = _split_list([args.cores])
        for k in _split_list(args.frame_stack):
            if not k.isdigit() or int(k) < 2:
                raise SweepError(f"--frame-stack {k!r}: expected an integer >= 2")
            labels.append(f"mlp+fs{int(k)}")
        labels = list(dict.fromkeys(labels))
        env_ids = _split_list([args.envs])
        if not labels or not env_ids:
            raise SweepError("--cores and --envs need at least one entry each")
        if args.workers < 1:
            raise SweepError(f"--workers {args.workers}: expected >= 1")
        if args.total_timesteps is not None and args.total_timesteps < 1:
            raise SweepError(f"--total-timesteps {args.total_timesteps}: expected >= 1")
        if args.config is not None and not Path(args.config).is_file():
            raise SweepError(f"--config {args.config!r}: no such file")
        cells = build_cells(labels, env_ids, parse_seeds(args.seeds), size_specs(args.hidden_sizes, args.match_params),
                            args.total_timesteps, args.set, args.config, args.device, args.n_envs, args.variant)
        out = Path(args.out).resolve()
        try:
            if not args.dry_run:
                out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SweepError(f"--out {args.out!r}: cannot create it ({exc.strerror or exc})") from None
        conflicts = [(c.cell_id, why) for c in cells if (why := recipe_conflict(asdict(c), out))]
        if conflicts:
            more = f" (and {len(conflicts) - 1} more cells)" if len(conflicts) > 1 else ""
            raise SweepError(f"cell {conflicts[0][0]}: {conflicts[0][1]}{more}; use --variant NAME to keep both "
                             "recipes in one sweep directory, or another --out")
    except SweepError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT

    if args.dry_run:
        for c in cells:
            r = run_cell(asdict(c), str(out), dry_run=True)
            what = "skip (done)" if r["action"] == "skipped" else r["action"]
            print(f"{c.cell_id:60s} {what:12s} train_agent {shlex.join(r.get('argv', []))}")
        return 0

    results: List[Dict[str, Any]] = []
    counts = {"skipped": 0}
    n = len(cells)
    t0 = time.time()

    def on_result(r: Dict[str, Any]) -> None:
        results.append(r)
        if r.get("action") == "skipped":
            counts["skipped"] += 1
            line = "skipped (done)"
        else:
            line = f"{r['status']}" + (f" ({r.get('action')})" if r.get("action") else "")
            if r.get("wall_s") is not None:
                line += f" in {r['wall_s']:.0f} s"
            if r.get("peak_rss_mb") is not None:
                line += f", peak RSS {r['peak_rss_mb']:.0f} MiB"
            if r.get("error"):
                line += f": {r['error']}"
        print(f"{PROG}: [{len(results)}/{n}] {r['cell_id']}: {line}", flush=True)

    def on_start() -> None:  # once the backend is up: sweep.json lists the commands that ran
        _record_invocation(out, argv, cells)

    workers = "ray" if args.backend == "ray" else f"{min(args.workers, n)} worker(s)"
    print(f"{PROG}: {n} cells ({len(env_ids)} env(s) x {len(labels)} core label(s) x "
          f"{len(size_specs(args.hidden_sizes, args.match_params))} size(s) x {len(parse_seeds(args.seeds))} "
          f"seed(s)) -> {out} ({workers})", flush=True)
    def on_sigterm(signum, frame):  # stop like Ctrl-C: every running cell saves a checkpoint
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        if args.backend == "ray":
            code = run_ray(cells, out, args.address, args.cpus_per_cell, on_result, on_start)
        else:
            code = run_local(cells, out, min(args.workers, n), on_result, on_start)
    except SweepError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    by_status: Dict[str, int] = {}
    for r in results:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()))
    print(f"{PROG}: {summary} of {n} cells in {time.time() - t0:.0f} s; report: python scripts/report.py {out}",
          flush=True)
    if code:
        return code
    if any(r["status"] in ("interrupted",) for r in results):
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(r["status"] not in ("done", "completed") for r in results) or len(results) < n else 0


if __name__ == "__main__":
    sys.exit(main())
