"""Report of a sweep: learning curves with IQM and 95% bootstrap CIs, steps to threshold, AUC, speed, size, latency.

    python scripts/report.py results/runs/sweep_main                      # -> results/comparison/
    python scripts/report.py results/runs/sweep_main --out results/comparison_sizes --reference lstm \\
        --threshold CartPole=475 --threshold MiniGrid=success_rate:0.9

Reads every finished run under the sweep directory (``summary.json`` with status completed, the run's TensorBoard
scalars ``eval/*``, ``perf/rollout_s``, ``perf/update_s``, ``train/grad_norm``, and the sweep's ``cell.json`` /
``sweep.json``), groups runs by (env, core label, size) - the seeds of a group are its samples - and writes into
``--out``:

    comparison.md        tables (markdown) with provenance: commit, machine, the sweep command(s) and this command
    comparison.json      the same numbers, machine-readable
    curves_<env>.png     eval metric vs env steps and vs training seconds (IQM over seeds, 95% CI band), grad norm
    speed.png            seconds per 1,000 env steps, split into rollout and update, per group

Statistics (rliable's, Agarwal et al. 2021, https://arxiv.org/abs/2108.13264, in numpy): the interquartile mean
(IQM: the mean of the middle 50% of the runs, ``scipy.stats.trim_mean(x, 0.25)``) and 95% percentile-bootstrap
confidence intervals that resample runs with replacement within each task (stratified bootstrap; a group's curve
is one task, the "all envs" AUC row has one stratum per env).

Definitions. Training seconds: cumulative ``perf/rollout_s + perf/update_s`` (evaluation and checkpoint time
excluded; TensorBoard wall-clock when those tags are missing). Steps to threshold: the first evaluation at which the
metric reaches the env's threshold (median over seeds; ``>N`` when at most half the seeds reach it). Normalized AUC:
the area under the normalized metric (``(y - lo) / (hi - lo)``) over the evaluated steps, divided by their span
(1 = at the upper bound from the first evaluation on). Speed numbers come from runs that may have shared the machine
with other runs: compare ratios of runs made side by side in one sweep, not absolute numbers across sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, provenance  # noqa: E402

PROG = "report"
#: env id prefix -> (metric, threshold); the first match wins; --threshold entries come before these
DEFAULT_THRESHOLDS: List[Tuple[str, str, float]] = [
    ("MiniGrid-", "success_rate", 0.9),
    ("CartPole", "mean_reward", 475.0),
    ("Acrobot", "mean_reward", -100.0),
    ("MountainCarContinuous", "mean_reward", 90.0),
    ("MountainCar", "mean_reward", -110.0),
    ("Pendulum", "mean_reward", -200.0),
    ("LunarLander", "mean_reward", 200.0),
]
#: env id prefix -> (metric, lo, hi) for the normalized AUC; envs without one use the observed min/max of the sweep
DEFAULT_BOUNDS: List[Tuple[str, str, float, float]] = [
    ("MiniGrid-", "success_rate", 0.0, 1.0),
    ("MiniGrid-", "mean_reward", 0.0, 1.0),
    ("CartPole", "mean_reward", 0.0, 500.0),
]
CURVE_TAGS = ("eval/mean_reward", "eval/success_rate", "perf/rollout_s", "perf/update_s", "train/grad_norm",
              "rollout/ep_rew_mean", "eval_pool/mean_reward", "eval_pool/success_rate")


def metric_tag(metric: str) -> str:
    """The TensorBoard tag of a metric: an eval/ metric by its name (``success_rate``), any other by its whole tag
    (``rollout/ep_rew_mean``: the mean return of the last 100 training episodes; ``eval_pool/success_rate``)."""
    return metric if "/" in metric else f"eval/{metric}"


def metric_label(metric: str) -> str:
    return metric.replace("/", " ") if "/" in metric else f"eval {metric}"


class ReportError(Exception):
    """Bad input: one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------- statistics
def iqm(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean along ``axis``: sort, drop ``floor(n / 4)`` values at each end, average the rest
    (identical to ``scipy.stats.trim_mean(x, 0.25, axis)``, which rliable uses)."""
    x = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of an empty set")
    k = int(0.25 * n)
    return np.take(x, np.arange(k, n - k), axis=axis).mean(axis=axis)


def stratified_bootstrap_ci(tasks: Sequence[np.ndarray], statistic: Callable[..., np.ndarray] = iqm,
                            reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> Tuple[np.ndarray, np.ndarray,
                                                                                                   np.ndarray]:
    """Point estimate and percentile-bootstrap CI of ``statistic`` over runs pooled from every task.

    ``tasks``: one array per task (stratum), shape ``[runs_i, ...]`` (trailing dims, e.g. curve points, are kept).
    Each bootstrap replicate resamples ``runs_i`` runs with replacement within each task, pools them along axis 0 and
    applies ``statistic(pooled, axis=0)`` (``iqm``, ``np.mean``, ``np.median``, ...). Returns ``(point, lo, hi)``, each
    of the trailing shape.
    """
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    if not tasks or any(t.shape[0] == 0 for t in tasks):
        raise ValueError("every task needs at least one run")
    point = statistic(np.concatenate(tasks, axis=0), axis=0)
    rng = np.random.default_rng(seed)
    pooled = []
    for t in tasks:
        idx = rng.integers(0, t.shape[0], size=(reps, t.shape[0]))
        pooled.append(t[idx])  # [reps, runs_i, ...]
    boot = np.concatenate(pooled, axis=1)  # [reps, runs, ...]
    stats = statistic(boot, axis=1)
    alpha = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(stats, [alpha, 100 - alpha], axis=0)
    return point, lo, hi


def bootstrap_ci(runs: np.ndarray, statistic: Callable[..., np.ndarray] = iqm, reps: int = 2000,
                 confidence: float = 0.95, seed: int = 0):
    """:func:`stratified_bootstrap_ci` with one task."""
    return stratified_bootstrap_ci([np.asarray(runs, dtype=float)], statistic, reps, confidence, seed)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% at z = 1.96): unlike a bootstrap over a few 0/1 runs,
    it stays wide when all of them agree (3/3 -> [0.44, 1])."""
    if trials <= 0:
        raise ValueError(f"trials={trials}: expected a positive number of trials")
    p, z2 = successes / trials, z * z
    center = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, center - half), min(1.0, center + half)


# ---------------------------------------------------------------------------------------------------- loading
@dataclass
class Run:
    run_dir: Path
    summary: Dict[str, Any]
    config: Dict[str, Any]
    cell: Dict[str, Any]
    env: str
    label: str
    size: str
    seed: int
    scalars: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)  # tag -> step, value, t

    def train_seconds_at(self, steps: np.ndarray) -> np.ndarray:
        """Cumulative rollout + update seconds at these steps (TensorBoard wall-clock since the first event if the
        perf tags are missing)."""
        if "perf/rollout_s" in self.scalars and "perf/update_s" in self.scalars:
            s_r, v_r, _ = self.scalars["perf/rollout_s"]
            s_u, v_u, _ = self.scalars["perf/update_s"]
            per_step: Dict[int, float] = defaultdict(float)
            for s, v in zip(s_r, v_r):
                per_step[int(s)] += float(v)
            for s, v in zip(s_u, v_u):
                per_step[int(s)] += float(v)
            xs = np.array(sorted(per_step))
            cum = np.cumsum([per_step[s] for s in xs])
            return np.interp(steps, np.concatenate([[0], xs]), np.concatenate([[0.0], cum]))
        tag = next(iter(self.scalars))
        s, _, t = self.scalars[tag]
        return np.interp(steps, s, t - t.min())


def _size_tag(summary: Dict[str, Any]) -> str:
    mp = summary.get("match_params")
    if mp:
        core, _, h = str(mp).partition(":")
        return f"pm-{core}{h}"
    return f"h{summary.get('hidden_size')}"


def read_scalars(run_dir: Path, tags: Sequence[str] = CURVE_TAGS) -> Dict[str, Tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]]:
    """TensorBoard scalars of one run: tag -> (steps, values, wall times), one value per step (the last logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 1, "images": 1})
    acc.Reload()
    out = {}
    available = set(acc.Tags().get("scalars", []))
    for tag in tags:
        if tag not in available:
            continue
        by_step: Dict[int, Tuple[float, float]] = {}
        for ev in acc.Scalars(tag):
            by_step[int(ev.step)] = (float(ev.value), float(ev.wall_time))
        steps = np.array(sorted(by_step), dtype=float)
        out[tag] = (steps, np.array([by_step[int(s)][0] for s in steps]), np.array([by_step[int(s)][1] for s in steps]))
    return out


def truncate_run(run: Run, max_steps: int) -> Run:
    """The run with every scalar curve cut at ``max_steps`` env steps (points beyond it dropped)."""
    cut = {}
    for tag, (steps, values, times) in run.scalars.items():
        keep = steps <= max_steps
        cut[tag] = (steps[keep], values[keep], times[keep])
    return replace(run, scalars=cut)


def load_runs(sweep_dir: Path) -> List[Run]:
    """Every finished run under ``sweep_dir`` (summary.json with status completed/done), outside stale/ folders."""
    import yaml
    runs = []
    for summary_path in sorted(Path(sweep_dir).rglob("summary.json")):
        run_dir = summary_path.parent
        if "stale" in run_dir.relative_to(sweep_dir).parts:
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            print(f"{PROG}: warning: {summary_path} cannot be read; skipped", file=sys.stderr)
            continue
        if summary.get("status") not in ("completed", "done"):
            continue
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        cell = {}
        if (run_dir.parent / "cell.json").exists():
            try:
                cell = json.loads((run_dir.parent / "cell.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cell = {}
        fs = int(config.get("frame_stack") or 1)
        tags = (("cue_start", "cue"), ("lookback_start", "back"), ("faceback_start", "face"), ("ordered_ends", "ord"))
        # the MiniGrid-Memory aids: train_wrappers.memory_aids now, top-level keys in runs of earlier versions
        aid_options = {**config, **(((config.get("train_wrappers") or {}).get("memory_aids")) or {})}
        aids = "".join(f"+{tag}{float(aid_options[key]):g}" for key, tag in tags if aid_options.get(key))
        label = cell.get("label") or (summary["core"] + (f"+fs{fs}" if fs > 1 else "") + aids)
        size = cell.get("size") if cell.get("size") not in (None, "hcfg") else _size_tag(summary)
        runs.append(Run(run_dir, summary, config, cell, summary["env"], label, size, int(summary.get("seed", 0)),
                        read_scalars(run_dir)))
    return runs


# ---------------------------------------------------------------------------------------------------- analysis
def parse_thresholds(items: Sequence[str]) -> List[Tuple[str, str, float]]:
    out = []
    for item in items:
        prefix, sep, spec = item.partition("=")
        metric, _, value = spec.rpartition(":")
        try:
            out.append((prefix, metric or "mean_reward", float(value)))
        except ValueError:
            raise ReportError(f"--threshold {item!r}: expected ENV_PREFIX=[METRIC:]VALUE, e.g. CartPole=475 or "
                              "MiniGrid=success_rate:0.9") from None
        if not sep or not prefix:
            raise ReportError(f"--threshold {item!r}: expected ENV_PREFIX=[METRIC:]VALUE")
    return out + DEFAULT_THRESHOLDS


def parse_bounds(items: Sequence[str]) -> List[Tuple[str, str, float, float]]:
    out = []
    for item in items:
        m = re.fullmatch(r"([^=]+)=(?:([a-z_/]+):)?(-?[0-9.eE+-]+):(-?[0-9.eE+-]+)", item)
        if not m or float(m.group(4)) <= float(m.group(3)):
            raise ReportError(f"--bounds {item!r}: expected ENV_PREFIX=[METRIC:]LO:HI with LO < HI, e.g. "
                              "Pendulum=-1600:0")
        out.append((m.group(1), m.group(2) or "mean_reward", float(m.group(3)), float(m.group(4))))
    return out + DEFAULT_BOUNDS


def metric_for(env: str, runs: List[Run], thresholds) -> Tuple[str, Optional[float]]:
    """The eval metric and threshold of an env (success_rate only if the runs logged it)."""
    for prefix, metric, value in thresholds:
        if env.startswith(prefix):
            if all(metric_tag(metric) in r.scalars for r in runs):
                return metric, value
            break
    return "mean_reward", next((v for p, m, v in thresholds if env.startswith(p) and m == "mean_reward"), None)


def bounds_for(env: str, metric: str, runs: List[Run], bounds) -> Tuple[float, float, str]:
    for prefix, m, lo, hi in bounds:
        if env.startswith(prefix) and m == metric:
            return lo, hi, "fixed"
    values = np.concatenate([r.scalars[metric_tag(metric)][1] for r in runs])
    lo, hi = float(values.min()), float(values.max())
    return lo, (hi if hi > lo else lo + 1.0), "observed min/max"


def _curve_matrix(runs: List[Run], xs_of: Callable[[Run], np.ndarray], ys_of: Callable[[Run], np.ndarray],
                  grid: Optional[np.ndarray] = None, points: int = 60) -> Tuple[np.ndarray, np.ndarray]:
    """Runs interpolated onto one x grid covering the range every run has: ``(grid, values [runs, points])``."""
    xs = [np.asarray(xs_of(r), dtype=float) for r in runs]
    ys = [np.asarray(ys_of(r), dtype=float) for r in runs]
    lo, hi = max(x.min() for x in xs), min(x.max() for x in xs)
    if grid is None:
        grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    grid = grid[(grid >= lo - 1e-9) & (grid <= hi + 1e-9)]
    return grid, np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> Optional[float]:
    hit = np.nonzero(values >= threshold)[0]
    return float(steps[hit[0]]) if hit.size else None


def _median_censored(values: List[Optional[float]]) -> Tuple[Optional[float], int]:
    """Median with unreached (None) counted as +inf; (median or None when it is unreached, number reached)."""
    reached = sum(v is not None for v in values)
    med = float(np.median([math.inf if v is None else v for v in values]))
    return (None if math.isinf(med) else med), reached


def analyse(runs: List[Run], thresholds, bounds, reps: int, reference: Optional[str]) -> Dict[str, Any]:
    by_env: Dict[str, List[Run]] = defaultdict(list)
    for r in runs:
        by_env[r.env].append(r)
    envs_out: Dict[str, Any] = {}
    for env, env_runs in sorted(by_env.items()):
        metric, threshold = metric_for(env, env_runs, thresholds)
        tag = metric_tag(metric)
        env_runs = [r for r in env_runs if tag in r.scalars]
        if not env_runs:
            continue
        lo, hi, bounds_kind = bounds_for(env, metric, env_runs, bounds)
        groups: Dict[Tuple[str, str], List[Run]] = defaultdict(list)
        for r in env_runs:
            groups[(r.label, r.size)].append(r)
        # the reference core of a parameter-matched group (pm-lstm64) is its plain-size run (lstm h64): the sweep
        # trains it once, under hN; count it in the pm group too
        for size in {sz for _, sz in groups}:
            m = re.fullmatch(r"pm-([A-Za-z0-9_]+?)([0-9]+)", size)
            if not m:
                continue
            for (label, sz), g in list(groups.items()):
                # the plain core label only: ablation variants (lstm@L2) and controls were not run in the pm group
                if sz == f"h{m.group(2)}" and label == m.group(1) and (label, size) not in groups:
                    groups[(label, size)] = list(g)
        rows = []
        for (label, size), g in sorted(groups.items()):
            g = sorted(g, key=lambda r: r.seed)
            all_steps = np.unique(np.concatenate([r.scalars[tag][0] for r in g]))
            steps, vals = _curve_matrix(g, lambda r: r.scalars[tag][0], lambda r: r.scalars[tag][1], grid=all_steps)
            s_point, s_lo, s_hi = bootstrap_ci(vals, reps=reps)
            secs, svals = _curve_matrix(g, lambda r: r.train_seconds_at(r.scalars[tag][0]),
                                        lambda r: r.scalars[tag][1])
            w_point, w_lo, w_hi = bootstrap_ci(svals, reps=reps)
            grad = None
            if all("train/grad_norm" in r.scalars for r in g):
                gsteps, gvals = _curve_matrix(g, lambda r: r.scalars["train/grad_norm"][0],
                                              lambda r: r.scalars["train/grad_norm"][1])
                gp, glo, ghi = bootstrap_ci(gvals, reps=reps)
                grad = {"steps": gsteps.tolist(), "iqm": gp.tolist(), "lo": glo.tolist(), "hi": ghi.tolist()}
            norm = np.clip((vals - lo) / (hi - lo), 0.0, 1.0)
            span = steps[-1] - steps[0]
            auc = (_trapezoid(norm, steps, axis=1) / span) if span > 0 else norm[:, 0]
            auc_p, auc_lo, auc_hi = bootstrap_ci(auc, reps=reps)
            # each run's value at the last step every run reached (interpolated where a run has no eval there)
            final_p, final_lo, final_hi = bootstrap_ci(vals[:, -1], reps=reps)
            cross = [first_crossing(r.scalars[tag][0], r.scalars[tag][1], threshold) if threshold is not None
                     else None for r in g]
            cross_s = [None if c is None else float(r.train_seconds_at(np.array([c]))[0]) for c, r in zip(cross, g)]
            med_steps, reached = _median_censored(cross)
            med_secs, _ = _median_censored(cross_s)
            sm = [r.summary for r in g]
            steps_total = np.array([s["total_timesteps"] for s in sm], dtype=float)
            rollout_s = np.array([s["rollout_s"] for s in sm], dtype=float)
            update_s = np.array([s["update_s"] for s in sm], dtype=float)
            sps = np.array([s["steps_per_s"] for s in sm], dtype=float)
            sps_p, sps_lo, sps_hi = bootstrap_ci(sps, reps=reps)
            # peak RSS: train_agent's own (if summary.json has it), else the sweep's measurement of the process
            peaks = [r.summary.get("peak_rss_mb") or r.cell.get("peak_rss_mb") for r in g]
            params = sorted({s["parameters"] for s in sm})
            core_params = sorted({s.get("core_parameters") for s in sm})
            hidden = sorted({s.get("hidden_size") for s in sm})
            rows.append({
                "label": label, "size": size, "hidden_size": hidden[0] if len(hidden) == 1 else hidden,
                "seeds": [r.seed for r in g], "n": len(g),
                "parameters": params[0] if len(params) == 1 else params,
                "core_parameters": core_params[0] if len(core_params) == 1 else core_params,
                "final": {"iqm": float(final_p), "lo": float(final_lo), "hi": float(final_hi),
                          "step": float(steps[-1]), "per_seed": vals[:, -1].tolist()},
                "auc": {"iqm": float(auc_p), "lo": float(auc_lo), "hi": float(auc_hi), "per_seed": auc.tolist()},
                "steps_to_threshold": {"median": med_steps, "reached": reached, "per_seed": cross,
                                       # the steps every run was watched for (its last eval; --max-steps cuts it)
                                       "budget": float(min(steps_total.min(),
                                                           min(r.scalars[tag][0][-1] for r in g)))},
                "seconds_to_threshold": {"median": med_secs, "per_seed": cross_s},
                "steps_per_s": {"iqm": float(sps_p), "lo": float(sps_lo), "hi": float(sps_hi),
                                "median": float(np.median(sps))},
                "rollout_s_per_1k": float(np.median(rollout_s / steps_total * 1000)),
                "update_s_per_1k": float(np.median(update_s / steps_total * 1000)),
                "update_fraction": float(np.median(update_s / (rollout_s + update_s))),
                "latency_p50_us": float(np.median([s["latency_p50_us"] for s in sm])),
                "latency_p99_us": float(np.median([s["latency_p99_us"] for s in sm])),
                "peak_rss_mb": float(np.median(peaks)) if all(p is not None for p in peaks) else None,
                # per_seed: each run's curve on x (in the order of "seeds"; interpolated where it has no eval there)
                "curve_steps": {"x": steps.tolist(), "iqm": s_point.tolist(), "lo": s_lo.tolist(),
                                "hi": s_hi.tolist(), "per_seed": vals.tolist()},
                "curve_seconds": {"x": secs.tolist(), "iqm": w_point.tolist(), "lo": w_lo.tolist(),
                                  "hi": w_hi.tolist()},
                "grad_norm": grad,
                "commits": sorted({str(s.get("git_commit")) for s in sm}),
                "commit_per_seed": [str(s.get("git_commit")) for s in sm],
                "run_dirs": [str(r.run_dir) for r in g],
            })
        ratios = []
        if reference:
            for row in rows:
                ref = next((x for x in rows if x["label"] == reference and x["size"] == row["size"]), None)
                if ref is None or row is ref:
                    continue
                ratios.append({"label": row["label"], "size": row["size"], "reference": reference,
                               "steps_per_s": row["steps_per_s"]["median"] / ref["steps_per_s"]["median"],
                               "update_s": row["update_s_per_1k"] / ref["update_s_per_1k"],
                               "rollout_s": row["rollout_s_per_1k"] / ref["rollout_s_per_1k"],
                               "latency_p50": row["latency_p50_us"] / ref["latency_p50_us"],
                               "parameters": row["parameters"] / ref["parameters"]
                               if isinstance(row["parameters"], int) and isinstance(ref["parameters"], int) else None})
        envs_out[env] = {"metric": metric, "threshold": threshold, "bounds": [lo, hi], "bounds_kind": bounds_kind,
                         "groups": rows, "ratios": ratios}
    aggregate = []
    if len(envs_out) > 1:  # normalized AUC over all envs, stratified by env
        keys = set.intersection(*[{(g["label"], g["size"]) for g in e["groups"]} for e in envs_out.values()])
        for label, size in sorted(keys):
            tasks = [np.array(next(g for g in e["groups"] if (g["label"], g["size"]) == (label, size))["auc"]
                              ["per_seed"]) for e in envs_out.values()]
            p, lo_, hi_ = stratified_bootstrap_ci(tasks, reps=reps)
            aggregate.append({"label": label, "size": size, "auc_iqm": float(p), "lo": float(lo_), "hi": float(hi_),
                              "envs": len(tasks)})
    return {"envs": envs_out, "aggregate_auc": aggregate}


# ---------------------------------------------------------------------------------------------------- output
def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _ci(d: Dict[str, float], digits: int = 3) -> str:
    return f"{_fmt(d['iqm'], digits)} [{_fmt(d['lo'], digits)}, {_fmt(d['hi'], digits)}]"


def footer_text(prov: Dict[str, Any], sweep_commands: List[str], report_command: str) -> str:
    m = prov["machine"]
    lines = [f"commit {prov['commit']} | {m['cpu']}, {m['cores']} cores, torch {m['torch']} | {prov['date']}"]
    lines += [f"sweep: {c}" for c in sweep_commands] + [f"report: {report_command}"]
    return "\n".join(textwrap.fill(ln, 160, subsequent_indent="    ") for ln in lines)


def plot(result: Dict[str, Any], out: Path, footer: str) -> List[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # the footer (fontsize 6: ~0.1 inch a line, 160 characters ~8.5 inches wide) gets its own strip below the axes,
    # however many commands it lists
    footer_in = 0.1 * (footer.count("\n") + 1) + 0.35

    def finish(fig, height_in: float) -> None:
        fig.text(0.01, 0.005, footer, fontsize=6, va="bottom", family="monospace")
        fig.tight_layout(rect=(0, footer_in / height_in, 1, 1))

    for env, e in result["envs"].items():
        panels = 3 if any(g["grad_norm"] for g in e["groups"]) else 2
        height = 4.2 + footer_in
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, height))
        for g in e["groups"]:
            name = f"{g['label']} {g['size']} (n={g['n']})"
            for ax, key in zip(axes, ("curve_steps", "curve_seconds")):
                c = g[key]
                line, = ax.plot(c["x"], c["iqm"], label=name)
                ax.fill_between(c["x"], c["lo"], c["hi"], color=line.get_color(), alpha=0.2)
            if panels == 3 and g["grad_norm"]:
                c = g["grad_norm"]
                line, = axes[2].plot(c["steps"], c["iqm"], label=name)
                axes[2].fill_between(c["steps"], c["lo"], c["hi"], color=line.get_color(), alpha=0.2)
        for ax, xl in zip(axes, ("env steps", "training seconds (rollout + update)")):
            ax.set_xlabel(xl)
            ax.set_ylabel(f"{metric_label(e['metric'])} (IQM, 95% CI)")
            if e["threshold"] is not None:
                ax.axhline(e["threshold"], color="grey", ls=":", lw=1)
            ax.grid(alpha=0.3)
        if panels == 3:
            axes[2].set_xlabel("env steps")
            axes[2].set_ylabel("train/grad_norm before clipping (IQM, 95% CI)")
            axes[2].grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{env}: {metric_label(e['metric'])} over seeds")
        finish(fig, height)
        path = out / f"curves_{env.rpartition(':')[2]}.png"  # "module:EnvId": no colon in a file name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    bars = [(env, g) for env, e in result["envs"].items() for g in e["groups"]]
    if bars:
        height = 4.5 + footer_in
        fig, ax = plt.subplots(figsize=(max(9.0, 0.55 * len(bars) + 2), height))
        x = np.arange(len(bars))
        roll = [g["rollout_s_per_1k"] for _, g in bars]
        upd = [g["update_s_per_1k"] for _, g in bars]
        ax.bar(x, roll, label="rollout")
        ax.bar(x, upd, bottom=roll, label="update")
        ax.set_xticks(x, [f"{env}\n{g['label']} {g['size']}" for env, g in bars], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("seconds per 1,000 env steps (median over seeds)")
        ax.set_title("Training time per 1,000 env steps: rollout vs update")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        finish(fig, height)
        path = out / "speed.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def markdown(result: Dict[str, Any], prov: Dict[str, Any], sweep_info: Dict[str, Any], report_command: str,
             figures: List[Path], out: Path, n_runs: int) -> str:
    m = prov["machine"]
    lines = ["# Core comparison", "",
             f"Report commit `{prov['commit']}`, {prov['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"Python {m['python']}. {n_runs} finished runs.", ""]
    if sweep_info["commands"]:
        lines += ["Reproduce (the sweep, then this report):", "", "```bash"] + sweep_info["commands"] + \
                 [report_command, "```", ""]
        lines += [f"Sweep machine(s): {', '.join(sweep_info['machines'])}. Runs trained at commit(s): "
                  f"{', '.join(sweep_info['run_commits'])}.", ""]
    else:
        lines += [f"Reproduce: `{report_command}` (no sweep.json found: the runs were not made by scripts/sweep.py)",
                  ""]
    lines += ["IQM over seeds with 95% stratified-bootstrap CIs (rliable's method). Speed and latency are medians over "
              "seeds; runs of one sweep may have shared the machine, so compare ratios within a sweep.", ""]
    for env, e in result["envs"].items():
        th = "no threshold" if e["threshold"] is None else f"threshold {e['metric']} >= {_fmt(e['threshold'])}"
        lines += [f"## {env}", "",
                  f"Metric: {metric_label(e['metric'])}; {th}; AUC normalized to [{_fmt(e['bounds'][0])}, "
                  f"{_fmt(e['bounds'][1])}] ({e['bounds_kind']}).", ""]
        fig = out / f"curves_{env.rpartition(':')[2]}.png"
        if fig in figures:
            lines += [f"![{env} learning curves]({fig.name})", ""]
        lines += ["| core | size | hidden | seeds | parameters (core) | final IQM [95% CI] | norm. AUC IQM [95% CI] | "
                  "steps to threshold (median; reached) | train s to threshold | steps/s IQM [95% CI] | rollout s/1k "
                  "| update s/1k | update share | act p50 / p99 µs | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in e["groups"]:
            st = g["steps_to_threshold"]
            st_txt = (_fmt(st["median"]) if st["median"] is not None else f"> {_fmt(st['budget'])}") + \
                f"; {st['reached']}/{g['n']}"
            secs = g["seconds_to_threshold"]["median"]
            params = f"{g['parameters']:,} ({g['core_parameters']:,})" if isinstance(g["parameters"], int) and \
                isinstance(g["core_parameters"], int) else f"{g['parameters']} ({g['core_parameters']})"
            peak = "missing" if g["peak_rss_mb"] is None else f"{g['peak_rss_mb']:.0f}"
            lines.append(
                f"| {g['label']} | {g['size']} | {g['hidden_size']} | {g['n']} | {params} | {_ci(g['final'])} "
                f"@ {_fmt(g['final']['step'])} | {_ci(g['auc'])} | {st_txt} | {_fmt(secs)} | {_ci(g['steps_per_s'])} "
                f"| {_fmt(g['rollout_s_per_1k'])} | {_fmt(g['update_s_per_1k'])} | {100 * g['update_fraction']:.0f}% "
                f"| {_fmt(g['latency_p50_us'])} / {_fmt(g['latency_p99_us'])} | {peak} |")
        lines.append("")
        if e["ratios"]:
            lines += [f"Ratios to `{e['ratios'][0]['reference']}` at the same size (medians over seeds; > 1 means "
                      "more):", "", "| core | size | steps/s | update s | rollout s | act p50 | parameters |",
                      "|---|---|---|---|---|---|---|"]
            for r in e["ratios"]:
                pr = "-" if r["parameters"] is None else f"{r['parameters']:.3f}"
                lines.append(f"| {r['label']} | {r['size']} | {r['steps_per_s']:.2f} | {r['update_s']:.2f} | "
                             f"{r['rollout_s']:.2f} | {r['latency_p50']:.2f} | {pr} |")
            lines.append("")
    if result["aggregate_auc"]:
        lines += ["## All envs: normalized AUC", "", "IQM over every (env, seed) run, CI from a bootstrap stratified "
                  "by env.", "", "| core | size | envs | norm. AUC IQM [95% CI] |", "|---|---|---|---|"]
        for a in result["aggregate_auc"]:
            lines.append(f"| {a['label']} | {a['size']} | {a['envs']} | {_fmt(a['auc_iqm'])} [{_fmt(a['lo'])}, "
                         f"{_fmt(a['hi'])}] |")
        lines.append("")
    if "speed.png" in {f.name for f in figures}:
        lines += ["## Speed", "", "![seconds per 1,000 env steps](speed.png)", ""]
    if any(g["peak_rss_mb"] is None for e in result["envs"].values() for g in e["groups"]):
        lines += ["Peak RSS is missing for runs not made by scripts/sweep.py (summary.json has no peak memory).", ""]
    else:
        lines += ["Peak RSS: the training process's maximum resident set (os.wait4 by the sweep; includes the Python "
                  "and torch baseline, not SubprocVecEnv workers).", ""]
    return "\n".join(lines) + "\n"


def sweep_info_of(sweep_dir: Path, runs: List[Run]) -> Dict[str, Any]:
    """The sweep commands that made ``runs`` (from every sweep.json at or below ``sweep_dir``: an invocation is
    quoted when one of its cells holds a reported run, or when it does not list its cells), their machines and the
    runs' commits."""
    inv = []
    for path in sorted(Path(sweep_dir).rglob("sweep.json")):
        try:
            inv += json.loads(path.read_text(encoding="utf-8")).get("invocations", [])
        except (OSError, ValueError, AttributeError):
            print(f"{PROG}: warning: {path} cannot be read; its commands are not quoted", file=sys.stderr)
    cells = {r.run_dir.parent.name for r in runs}
    inv = [i for i in inv if "cells" not in i or cells.intersection(i["cells"])]
    commands = list(dict.fromkeys(i["command"] for i in inv))
    machines = list(dict.fromkeys(f"{i['machine']['cpu']} ({i['machine']['cores']} cores, host {i.get('host', '?')})"
                                  for i in inv))
    return {"commands": commands, "machines": machines,
            "run_commits": sorted({str(r.summary.get("git_commit")) for r in runs})}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("sweep_dir", help="a sweep directory (scripts/sweep.py --out) or any folder of train_agent runs")
    p.add_argument("--out", default=str(ROOT / "results" / "comparison"), help="output folder (default "
                                                                                "results/comparison)")
    p.add_argument("--threshold", action="append", default=[], metavar="ENV_PREFIX=[METRIC:]VALUE",
                   help="steps-to-threshold per env prefix (defaults: MiniGrid=success_rate:0.9, CartPole=475, ...); "
                        "METRIC is an eval/ metric or a whole tag, e.g. MiniGrid=rollout/ep_rew_mean:0.9")
    p.add_argument("--bounds", action="append", default=[], metavar="ENV_PREFIX=[METRIC:]LO:HI",
                   help="AUC normalization bounds (defaults: CartPole 0:500, MiniGrid 0:1, else observed min/max)")
    p.add_argument("--reference", default="lstm", help="core label the ratio table divides by (default lstm; '' "
                                                       "for none)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--labels", default=None, metavar="LABEL[,LABEL...]",
                   help="only these core labels (e.g. gru,lstm,gru@L2,lstm@L2): one readable figure per question")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="only runs with these seeds (e.g. 0-4 or 0,3,7-8): the same seeds in every group")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="read every curve only up to N env steps: runs of one sweep trained for different budgets "
                        "compared at a common one (learning statistics only; steps/s, time split and RSS stay "
                        "whole-run)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        sweep_dir = Path(args.sweep_dir)
        if not sweep_dir.is_dir():
            raise ReportError(f"{args.sweep_dir!r} is not a directory; expected a sweep directory (sweep.py --out)")
        if args.reps < 100:
            raise ReportError(f"--reps {args.reps}: expected >= 100")
        thresholds, bounds = parse_thresholds(args.threshold), parse_bounds(args.bounds)
        runs = load_runs(sweep_dir)
        if args.labels is not None:
            wanted = [x.strip() for x in args.labels.split(",") if x.strip()]
            unknown = sorted(set(wanted) - {r.label for r in runs})
            if unknown:
                raise ReportError(f"--labels {', '.join(unknown)}: no finished runs with that label under "
                                  f"{str(sweep_dir)!r}; expected some of {', '.join(sorted({r.label for r in runs}))}")
            runs = [r for r in runs if r.label in wanted]
        if args.seeds is not None:
            from sweep import SweepError, parse_seeds
            try:
                seeds = parse_seeds(args.seeds)
            except SweepError as exc:
                raise ReportError(str(exc)) from None
            have = sorted({r.seed for r in runs})
            runs = [r for r in runs if r.seed in seeds]
            if not runs:
                raise ReportError(f"--seeds {args.seeds}: no finished runs with these seeds under "
                                  f"{str(sweep_dir)!r}; expected some of {', '.join(map(str, have))}")
        if not runs:
            raise ReportError(f"no finished runs under {str(sweep_dir)!r} (expected run directories with summary.json "
                              "status completed)")
        if args.max_steps is not None:
            if args.max_steps < 1:
                raise ReportError(f"--max-steps {args.max_steps}: expected a positive number of env steps")
            runs = [truncate_run(r, args.max_steps) for r in runs]
            for r in runs:
                empty = sorted(t for t, (st, _, _) in r.scalars.items() if t.startswith("eval/") and not len(st))
                if empty:
                    raise ReportError(f"--max-steps {args.max_steps}: run {r.run_dir.name} has no {empty[0]} point "
                                      "at or before it; expected a budget that every run's first eval falls within")
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_command = "python scripts/report.py " + shlex.join(argv)
    prov = provenance(report_command)
    result = analyse(runs, thresholds, bounds, args.reps, args.reference or None)
    info = sweep_info_of(sweep_dir, runs)
    figures = [] if args.no_plots else plot(result, out, footer_text(prov, info["commands"], report_command))
    md = markdown(result, prov, info, report_command, figures, out, len(runs))
    (out / "comparison.md").write_text(md, encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps({"provenance": prov, "sweep": info, **result}, indent=1) + "\n",
                                         encoding="utf-8")
    print(md)
    print(f"{PROG}: wrote {out / 'comparison.md'}, {out / 'comparison.json'}"
          + "".join(f", {f}" for f in figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
