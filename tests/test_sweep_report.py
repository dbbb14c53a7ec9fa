"""scripts/sweep.py, scripts/report.py and scripts/bench_latency.py: a tiny grid end to end, resumability, the
statistics against hand-computed values, the latency smoke run, and the Ray backend on a local Ray instance."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}
TINY = ["--total-timesteps", "512", "--set", "n_steps=32", "batch_size=64", "n_epochs=1", "eval_freq=128",
        "eval_episodes=2", "n_envs=2", "checkpoint_freq=256", "latency_steps=50"]
GRID = ["--cores", "mlp,gru", "--envs", "CartPole-P-v1", "--seeds", "0,1", *TINY]

pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sweep = _load("sweep")
report = _load("report")


def run_script(args, timeout=150, env=ENV):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    return proc


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sweep_tiny"
    proc = run_script([str(SCRIPTS / "sweep.py"), *GRID, "--out", str(out), "--workers", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


# ---------------------------------------------------------------------------------------------------- sweep
def test_sweep_runs_every_cell_and_records_it(sweep_dir):
    cells = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert cells == [f"CartPole-P-v1__{c}__hcfg__s{s}" for c in ("gru", "mlp") for s in (0, 1)]
    for cell in cells:
        run_dirs = sweep.run_dirs(sweep_dir / cell)
        assert len(run_dirs) == 1 and run_dirs[0].name.startswith(f"CartPole-P-v1__{cell.split('__')[1]}__s")
        summary = json.loads((run_dirs[0] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["total_timesteps"] == 512
        record = json.loads((sweep_dir / cell / "cell.json").read_text())
        assert record["status"] == "completed" and record["peak_rss_mb"] > 50
        assert (sweep_dir / cell / "train.log").read_text().count("train_agent: done") == 1
    invocations = json.loads((sweep_dir / "sweep.json").read_text())["invocations"]
    assert invocations[0]["command"].startswith("python scripts/sweep.py --cores mlp,gru")
    assert invocations[0]["commit"] and invocations[0]["machine"]["cpu"]


def test_second_invocation_skips_finished_cells(sweep_dir, capsys):
    summaries = sorted(sweep_dir.glob("*/*/summary.json"))
    before = {p: p.stat().st_mtime_ns for p in summaries}
    assert sweep.main([*GRID, "--out", str(sweep_dir), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (done)") == 4, out
    assert {p: p.stat().st_mtime_ns for p in summaries} == before
    assert sorted(sweep_dir.glob("*/*/summary.json")) == summaries  # no new run directories


def test_a_changed_recipe_is_refused_not_skipped(sweep_dir, capsys):
    """A finished cell is only skipped (or extended) when its run was trained with the recipe asked for."""
    summaries = sorted(sweep_dir.glob("*/*/summary.json"))
    changed = [*GRID, "ent_coef=0.02", "--out", str(sweep_dir)]  # one more --set item than the runs had
    assert sweep.main(changed) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ent_coef=0.0 (this command: 0.02)" in err[0] and "(and 3 more cells)" in err[0], err
    assert "--variant" in err[0]
    assert sweep.main([*changed, "--dry-run"]) == 2  # refused while planning, so a dry run says it too
    capsys.readouterr()
    assert sorted(sweep_dir.glob("*/*/summary.json")) == summaries  # nothing ran
    # a longer run of the same recipe is not a conflict: the cells are extended from their checkpoints
    longer = [a if a != "512" else "1024" for a in GRID]
    assert sweep.main([*longer, "--out", str(sweep_dir), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" resume ") == 4


def test_a_recipe_key_added_since_counts_as_its_default(sweep_dir, tmp_path, capsys):
    """A run whose config.yaml predates a key was trained with that key's default: asking for another value is a
    conflict, asking for the default is not."""
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    for config in out.glob("*/*/config.yaml"):  # as written before the ent_coef key existed
        text = config.read_text(encoding="utf-8")
        config.write_text("".join(line for line in text.splitlines(True) if not line.startswith("ent_coef:")),
                          encoding="utf-8")
    assert sweep.main([*GRID, "--out", str(out), "--dry-run"]) == 0  # the default: skipped as before
    capsys.readouterr()
    assert sweep.main([*GRID, "ent_coef=0.02", "--out", str(out), "--dry-run"]) == 2
    assert "ent_coef=0.0 (this command: 0.02)" in capsys.readouterr().err


def test_a_run_config_of_an_earlier_version_matches_its_recipe(sweep_dir, tmp_path, capsys):
    """A config.yaml written before core options and training aids moved (``kernel: auto`` at the top level) is read
    where those keys live now: the same recipe is no conflict."""
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    for config in out.glob("*/*/config.yaml"):
        text = config.read_text(encoding="utf-8")
        text = "".join(x for x in text.splitlines(True) if not x.startswith(("core_kwargs:", "train_wrappers:")))
        config.write_text(text + "kernel: auto\nlstm_forget_bias: null\ncue_start: 0.0\n", encoding="utf-8")
    assert sweep.main([*GRID, "--out", str(out), "--dry-run"]) == 0
    capsys.readouterr()


def test_runs_outside_a_sweep_are_labelled_by_their_env_aids(sweep_dir, tmp_path):
    """A folder of train_agent runs (no cell.json): frame stacking and training-aid runs are not pooled with plain
    ones."""
    src = sweep.run_dirs(sweep_dir / "CartPole-P-v1__mlp__hcfg__s0")[0]
    for name, line in (("plain", ""), ("fs", "frame_stack: 4\n"), ("cue", "cue_start: 0.5\n"),
                       ("back", "lookback_start: 0.25\n"), ("face", "faceback_start: 0.5\n"),
                       ("ord", "faceback_start: 0.5\nordered_ends: 0.25\n")):
        dst = tmp_path / "runs" / name
        shutil.copytree(src, dst)
        config = dst / "config.yaml"
        text = "".join(x for x in config.read_text(encoding="utf-8").splitlines(True)
                       if not x.startswith(("frame_stack:", "cue_start:", "lookback_start:", "faceback_start:",
                                            "ordered_ends:")))
        config.write_text(text + line, encoding="utf-8")
    new = tmp_path / "runs" / "wrapped"  # the aids as train_wrappers name them now
    shutil.copytree(src, new)
    config = new / "config.yaml"
    text = "".join(x for x in config.read_text(encoding="utf-8").splitlines(True) if not x.startswith("train_wrappers:"))
    config.write_text(text + "train_wrappers: {memory_aids: {cue_start: 0.25, ordered_ends: 0.5}}\n", encoding="utf-8")
    labels = {run.run_dir.name: run.label for run in report.load_runs(tmp_path / "runs")}
    assert labels == {"plain": "mlp", "fs": "mlp+fs4", "cue": "mlp+cue0.5", "back": "mlp+back0.25",
                      "face": "mlp+face0.5", "ord": "mlp+face0.5+ord0.25", "wrapped": "mlp+cue0.25+ord0.5"}


def test_interrupted_cell_is_resumed_and_unresumable_one_restarted(sweep_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    src = sweep_dir / "CartPole-P-v1__mlp__hcfg__s0"
    shutil.copytree(src, out / src.name)
    run_dir = sweep.run_dirs(out / src.name)[0]
    (run_dir / "summary.json").unlink()  # as if killed after the checkpoint at step 256
    shutil.rmtree(run_dir / "checkpoints" / "step_000000512")
    assert sweep.cell_state(out / src.name, 512) == ("resume", run_dir)
    assert sweep.main(["--cores", "mlp", "--envs", "CartPole-P-v1", "--seeds", "0", *TINY, "--out", str(out),
                       "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert "resume" in line and f"--resume {run_dir}" in line and "--total-timesteps 512" in line
    # a finished cell asked for more steps continues from its last checkpoint too
    assert sweep.cell_state(sweep_dir / src.name, 1024)[0] == "resume"
    # no checkpoint at all: start again
    shutil.rmtree(run_dir / "checkpoints")
    assert sweep.cell_state(out / src.name, 512) == ("new", None)


def test_grid_cells_sizes_and_labels():
    assert sweep.parse_seeds("0-2,5") == [0, 1, 2, 5]
    sizes = sweep.size_specs(["64"], ["lstm:64"])
    assert [s[0] for s in sizes] == ["h64", "pm-lstm64"]
    cells = sweep.build_cells(["gru", "lstm"], ["CartPole-P"], [0], sizes, 512, ["n_steps=32", "batch_size=512"])
    by_id = {c.cell_id: c for c in cells}
    # lstm at pm-lstm64 would be the same run as lstm at h64: trained once (the report puts it in both groups)
    assert set(by_id) == {"CartPole-P-v1__gru__h64__s0", "CartPole-P-v1__lstm__h64__s0",
                          "CartPole-P-v1__gru__pm-lstm64__s0"}
    assert "--match-params" in by_id["CartPole-P-v1__gru__pm-lstm64__s0"].argv
    only_matched = sweep.build_cells(["gru", "lstm"], ["CartPole-P"], [0], sweep.size_specs([], ["lstm:128"]), 512, [],
                                     variant="abl")
    lstm = next(c for c in only_matched if c.core == "lstm")
    assert lstm.cell_id == "CartPole-P-v1__lstm@abl__pm-lstm128__s0" and lstm.hidden_size == 128
    assert "--hidden-size" in lstm.argv and "--match-params" not in lstm.argv
    # every seed of every size keeps that size's flags (a loop variable once leaked into the next seed's size)
    many = sweep.build_cells(["gru"], ["CartPole-P"], [0, 1, 2], sweep.size_specs(["64", "96"], ["lstm:64"]), 512, [])
    assert len(many) == 9
    for cell in many:
        size_flag = "--match-params" if cell.size.startswith("pm-") else "--hidden-size"
        expected = "lstm:64" if cell.size.startswith("pm-") else cell.size[1:]
        assert cell.argv[cell.argv.index(size_flag) + 1] == expected, cell.cell_id


def test_bad_input_fails_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "never"
    assert sweep.main(["--cores", "gru,transformer", "--envs", "CartPole-P-v1", "--out", str(out)]) == 2
    assert "transformer" in capsys.readouterr().err
    assert sweep.main(["--cores", "gru", "--envs", "CartPole-P-v1", "--out", str(out), "--set", "n_stepz=3"]) == 2
    assert "n_stepz" in capsys.readouterr().err
    assert not out.exists()


def test_frame_stack_cells_pass_the_config_key(tmp_path, capsys):
    code = sweep.main(["--cores", "gru", "--frame-stack", "4", "--envs", "CartPole-P-v1", "--seeds", "0",
                       "--out", str(tmp_path / "fs"), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "CartPole-P-v1__mlp+fs4__hcfg__s0" in captured.out and "frame_stack=4" in captured.out


# ---------------------------------------------------------------------------------------------------- statistics
def test_iqm_matches_hand_computed_values():
    assert report.iqm(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(2.5)       # drop 1 each end: (2+3)/2
    assert report.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)                  # (3+4+5+6)/4
    assert report.iqm(np.array([0.0, 0.0, 0.0, 100.0])) == pytest.approx(0.0)     # the outlier is trimmed
    assert report.iqm(np.array([5.0, 1.0, 3.0, 100.0, -50.0])) == pytest.approx(3.0)  # n=5: drop 1 each end
    assert report.iqm(np.array([1.0, 2.0, 6.0])) == pytest.approx(3.0)            # n=3: floor(0.75)=0, plain mean
    np.testing.assert_allclose(report.iqm(np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]), axis=0),
                               [2.5, 25.0])


def test_bootstrap_matches_hand_computed_intervals():
    # two runs {0, 1}, statistic mean: the bootstrap means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5th and 97.5th percentiles are 0 and 1
    point, lo, hi = report.bootstrap_ci(np.array([0.0, 1.0]), statistic=np.mean, reps=4000)
    assert (point, lo, hi) == (0.5, 0.0, 1.0)
    # constant runs: a zero-width interval
    assert report.bootstrap_ci(np.full(5, 3.0)) == (3.0, 3.0, 3.0)
    # stratified: each task constant, so every replicate pools the same multiset {0,0,0,1,1,1}:
    # IQM (n=6, drop 1 each end) = (0+0+1+1)/4 = 0.5 with a zero-width CI; an unstratified bootstrap would vary
    point, lo, hi = report.stratified_bootstrap_ci([np.zeros(3), np.ones(3)])
    assert (point, lo, hi) == (0.5, 0.5, 0.5)
    # curves: trailing dimensions are kept point by point
    p, lo, hi = report.bootstrap_ci(np.array([[0.0, 2.0], [0.0, 2.0]]), reps=200)
    np.testing.assert_allclose(p, [0.0, 2.0])
    np.testing.assert_allclose(lo, p)
    np.testing.assert_allclose(hi, p)
    assert report.first_crossing(np.array([10.0, 20.0, 30.0]), np.array([1.0, 5.0, 9.0]), 5.0) == 20.0
    assert report._median_censored([100.0, None, None]) == (None, 1)
    assert report._median_censored([100.0, 300.0, None]) == (300.0, 2)


def _fake_run(label, size, seed, values, core=None, steps=(100, 200, 300, 400), env="CartPole-P-v1"):
    steps = np.array(steps, dtype=float)
    summary = {"core": core or label, "env": env, "seed": seed, "total_timesteps": 400, "rollout_s": 0.3,
               "update_s": 0.1, "steps_per_s": 1000.0, "parameters": 100, "core_parameters": 60, "hidden_size": 64,
               "latency_p50_us": 100.0, "latency_p99_us": 200.0, "git_commit": "abc"}
    scalars = {"eval/mean_reward": (steps, np.array(values, dtype=float), steps / 1000),
               "perf/rollout_s": (steps, np.full(4, 0.075), steps), "perf/update_s": (steps, np.full(4, 0.025), steps)}
    return report.Run(Path(f"/runs/{label}{size}{seed}"), summary, {}, {"peak_rss_mb": 300.0}, env, label, size, seed,
                      scalars)


def test_report_metrics_match_hand_computed_values():
    runs = [_fake_run("gru", "h64", s, [0, 250, 500, 500]) for s in range(3)]
    runs += [_fake_run("lstm", "h64", s, [0, 0, 0, 250 * s]) for s in (2, 0, 1)]  # found out of seed order
    runs += [_fake_run("gru", "pm-lstm64", s, [0, 250, 500, 500]) for s in range(3)]
    result = report.analyse(runs, report.parse_thresholds([]), report.parse_bounds([]), reps=200, reference="lstm")
    groups = {(g["label"], g["size"]): g for g in result["envs"]["CartPole-P-v1"]["groups"]}
    gru = groups[("gru", "h64")]
    # normalized by [0, 500]: [0, .5, 1, 1]; trapezoids 25 + 75 + 100 over a span of 300 steps
    assert gru["auc"]["iqm"] == pytest.approx(200 / 300)
    assert gru["steps_to_threshold"]["median"] == 300 and gru["steps_to_threshold"]["reached"] == 3
    # training seconds: 0.1 s per 100 steps, so 475 is first reached after 0.3 s
    assert gru["seconds_to_threshold"]["median"] == pytest.approx(0.3)
    lstm = groups[("lstm", "h64")]
    # only seed 2 reaches 475 (at step 400): the median over seeds is "not reached"
    assert lstm["steps_to_threshold"]["median"] is None and lstm["steps_to_threshold"]["reached"] == 1
    assert lstm["final"]["iqm"] == pytest.approx(250.0)  # [0, 250, 500]: n=3, plain mean
    assert lstm["seeds"] == [0, 1, 2] and lstm["final"]["per_seed"] == [0.0, 250.0, 500.0]  # in the order of "seeds"
    assert lstm["curve_steps"]["per_seed"] == [[0, 0, 0, 0], [0, 0, 0, 250], [0, 0, 0, 500]]  # each run's own curve
    assert lstm["commit_per_seed"] == ["abc"] * 3
    assert gru["rollout_s_per_1k"] == pytest.approx(0.75) and gru["update_fraction"] == pytest.approx(0.25)
    # the parameter-matched group borrows the reference core's plain-size runs
    assert groups[("lstm", "pm-lstm64")]["run_dirs"] == lstm["run_dirs"]
    assert {(r["label"], r["size"]) for r in result["envs"]["CartPole-P-v1"]["ratios"]} == {("gru", "h64"),
                                                                                          ("gru", "pm-lstm64")}


# ---------------------------------------------------------------------------------------------------- report
def test_report_max_steps_reads_curves_up_to_a_common_budget(sweep_dir, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert report.main([str(sweep_dir), "--out", str(full), "--reps", "200", "--no-plots"]) == 0
    assert report.main([str(sweep_dir), "--out", str(cut), "--reps", "200", "--no-plots", "--max-steps", "300"]) == 0
    def groups_of(out):
        data = json.loads((out / "comparison.json").read_text())
        return {g["label"]: g for g in data["envs"]["CartPole-P-v1"]["groups"]}

    groups, whole = groups_of(cut), groups_of(full)
    for label, g in groups.items():
        assert g["curve_steps"]["x"][-1] <= 300 < whole[label]["curve_steps"]["x"][-1]
        assert g["final"]["step"] <= 300
        assert g["steps_to_threshold"]["budget"] <= 300  # "not reached" is said of the budget read
        # the curve up to the cut is the whole run's curve up to there
        n = len(g["curve_steps"]["x"])
        assert g["curve_steps"]["x"] == whole[label]["curve_steps"]["x"][:n]
        assert g["curve_steps"]["iqm"] == whole[label]["curve_steps"]["iqm"][:n]
    capsys.readouterr()
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "x"), "--max-steps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-steps 10" in err[0] and "no eval/" in err[0], err


def test_report_writes_plots_and_tables_with_provenance(sweep_dir, tmp_path, capsys):
    out = tmp_path / "comparison"
    assert report.main([str(sweep_dir), "--out", str(out), "--reps", "200", "--reference", "gru"]) == 0
    for name in ("curves_CartPole-P-v1.png", "speed.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (out / "comparison.md").read_text()
    assert "| gru | h64 | 64 | 2 |" in md and "| mlp | h64 | 64 | 2 |" in md
    assert "python scripts/sweep.py --cores mlp,gru" in md and "python scripts/report.py" in md
    assert "Report commit `" in md and "threshold mean_reward >= 475" in md
    data = json.loads((out / "comparison.json").read_text())
    groups = data["envs"]["CartPole-P-v1"]["groups"]
    assert {g["label"] for g in groups} == {"gru", "mlp"}
    for g in groups:
        assert g["n"] == 2 and g["curve_steps"]["x"][-1] == 512 and g["peak_rss_mb"] > 50
        assert g["final"]["lo"] <= g["final"]["iqm"] <= g["final"]["hi"]
        assert 0.0 <= g["auc"]["iqm"] <= 1.0 and g["steps_to_threshold"]["reached"] == 0
        assert g["update_s_per_1k"] > 0 and g["rollout_s_per_1k"] > 0 and g["latency_p50_us"] > 0
    assert data["envs"]["CartPole-P-v1"]["ratios"][0]["label"] == "mlp"
    assert report.main([str(tmp_path / "empty-does-not-exist"), "--out", str(out)]) == 2
    # --labels: one question per figure
    only = tmp_path / "only_gru"
    assert report.main([str(sweep_dir), "--out", str(only), "--reps", "200", "--labels", "gru", "--no-plots"]) == 0
    groups = json.loads((only / "comparison.json").read_text())["envs"]["CartPole-P-v1"]["groups"]
    assert {g["label"] for g in groups} == {"gru"}
    capsys.readouterr()
    assert report.main([str(sweep_dir), "--out", str(only), "--labels", "gru,lstm@L9"]) == 2
    assert "--labels lstm@L9: no finished runs" in capsys.readouterr().err
    # the Reproduce block quotes the sweep commands that made the reported runs, not every command of the directory
    shared = tmp_path / "shared"
    shutil.copytree(sweep_dir, shared)
    record = json.loads((shared / "sweep.json").read_text())
    other = "python scripts/sweep.py --cores lstm --envs CartPole-P-v1 --seeds 0 --variant other"
    record["invocations"].append({**record["invocations"][0], "command": other,
                                  "cells": ["CartPole-P-v1__lstm@other__hcfg__s0"]})
    (shared / "sweep.json").write_text(json.dumps(record))
    assert report.main([str(shared), "--out", str(only), "--reps", "200", "--no-plots"]) == 0
    md = (only / "comparison.md").read_text()
    assert "python scripts/sweep.py --cores mlp,gru" in md and other not in md
    # --seeds: the same seeds in every group (an ablation run on fewer seeds than its baseline)
    assert report.main([str(sweep_dir), "--out", str(only), "--reps", "200", "--seeds", "1", "--no-plots"]) == 0
    groups = json.loads((only / "comparison.json").read_text())["envs"]["CartPole-P-v1"]["groups"]
    assert {g["label"] for g in groups} == {"gru", "mlp"} and all(g["seeds"] == [1] for g in groups)
    capsys.readouterr()
    assert report.main([str(sweep_dir), "--out", str(only), "--seeds", "4-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds '4-2'" in err[0], err
    assert report.main([str(sweep_dir), "--out", str(only), "--seeds", "7"]) == 2
    assert "--seeds 7: no finished runs with these seeds" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- latency
def test_bench_latency_quick_runs(tmp_path):
    bench = _load("bench_latency")
    assert bench.main(["--quick", "--hidden-sizes", "64", "--n", "30", "--warmup", "5",
                       "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "latency_quick.json").read_text())
    rows = data["rows"]
    assert {r["env"] for r in rows} == {"CartPole-P-v1", "MiniGrid-MemoryS7-v0"}
    assert len(rows) == 2 * 6  # per env: 3 cores at equal hidden, gru/mlp/lstm at equal params
    matched = {r["core"]: r for r in rows if r["view"] == "equal params" and r["env"] == "CartPole-P-v1"}
    assert abs(matched["gru"]["core_params"] - matched["lstm"]["core_params"]) / matched["lstm"]["core_params"] < 0.02
    for r in rows:
        assert 0 < r["act_b1_p50_us"] <= r["act_b1_p99_us"] and r["core_b16_p50_us"] > 0
    assert "Reproduce: `python scripts/bench_latency.py --quick" in (tmp_path / "latency_quick.md").read_text()


def test_bench_device_errors_are_one_line(capsys, monkeypatch):
    """A --device torch cannot use here, and CPU-only sections on a GPU, stop with one line naming the value."""
    bench = _load("bench_latency")
    for device in ("gpu", "cuda:99", "cuda:x"):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", device])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and f"--device {device!r}: expected cpu, or cuda / cuda:N" in err
    assert bench.benchlib.device_error("cpu") is None
    throughput = _load("bench_throughput")
    device = "cuda" if torch.cuda.is_available() else "cuda:99"
    monkeypatch.setattr(sys, "argv", ["bench_throughput.py", "--device", device, "--sections", "kernels"])
    with pytest.raises(SystemExit) as e:
        throughput.main()
    assert e.value.code == 2 and f"--device {device!r}:" in capsys.readouterr().err


def test_bench_provenance_names_the_commit_it_is_given(monkeypatch):
    """RECURRENT_AGENTS_COMMIT names the commit; without it the provenance is the checkout's own short HEAD (marked
    +dirty where tracked files outside results/ changed), or "unknown" outside a git checkout."""
    bench = _load("bench_latency")
    monkeypatch.setenv("RECURRENT_AGENTS_COMMIT", "abc1234")
    assert bench.benchlib.provenance("cmd")["commit"] == "abc1234"
    monkeypatch.delenv("RECURRENT_AGENTS_COMMIT")
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        assert bench.benchlib.provenance("cmd")["commit"] == "unknown"
        return
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results").stdout.strip()
    assert bench.benchlib.provenance("cmd")["commit"] == head.stdout.strip() + ("+dirty" if changed else "")


# ---------------------------------------------------------------------------------------------------- throughput
def test_bench_throughput_equal_parameter_rows_match_the_lstm():
    """The GRU rows labelled 'the lstm's parameters' really have the LSTM's core parameter count (within 2%), with
    the same encoder in front (so the same core input), and the equal-width rows really have the LSTM's width."""
    bench = _load("bench_throughput")

    def core_params(model):
        return sum(p.numel() for p in model.policy.core_pi.parameters())

    for contenders in (bench.kernel_contenders(0), bench.minigrid_contenders(0)):
        models = {name: build() for name, build in contenders.items() if "SB3" not in name and "sb3" not in name}
        lstm = next(m for name, m in models.items() if "lstm" in name)
        matched = [(name, m) for name, m in models.items() if "the lstm's parameters" in name]
        assert len(matched) == 1
        name, gru = matched[0]
        assert gru.policy.core_name == "gru" and gru.policy.encoder.output_size == lstm.policy.encoder.output_size
        assert f"{gru.policy.hidden_size} units" in name and gru.policy.hidden_size > lstm.policy.hidden_size
        assert abs(core_params(gru) - core_params(lstm)) / core_params(lstm) < 0.02
        for other_name, m in models.items():
            if "the lstm's parameters" not in other_name:
                assert m.policy.hidden_size == lstm.policy.hidden_size


def test_bench_throughput_scale_rows_time_the_last_iteration(capsys, monkeypatch):
    """The scale section trains each core at each width with the asked envs and reports the last iteration's split
    (its steps over rollout + update seconds); its bad flags stop with one line naming the value."""
    bench = _load("bench_throughput")
    threads = torch.get_num_threads()
    rows = bench.scale_rows([8, 24], n_envs=2, iterations=2, device="cpu", cpu_threads=threads + 1, seed=0)
    assert [(r["core"], r["hidden"]) for r in rows] == [("gru", 8), ("lstm", 8), ("gru", 24), ("lstm", 24)]
    for r in rows:
        assert r["device"] == "cpu" and r["vec_env"] == "dummy" and r["n_envs"] == 2 and r["steps"] == 2 * 2 * 128
        assert r["torch_threads"] == threads + 1
        assert r["last_rollout_s"] > 0 and r["last_update_s"] > 0
        assert r["steps_per_s"] == pytest.approx(2 * 128 / (r["last_rollout_s"] + r["last_update_s"]))
        assert "ratio_vs_cpu" not in r
    assert rows[2]["params"] > rows[0]["params"] and rows[1]["params"] > rows[0]["params"]
    assert torch.get_num_threads() == threads  # the CPU rows' thread count does not leak
    both = bench.scale_rows([8], n_envs=2, iterations=2, device="cpu", cpu_threads=1, seed=0,
                            vec_envs=("dummy", "subproc"))
    assert [(r["core"], r["vec_env"]) for r in both] == [("gru", "dummy"), ("gru", "subproc"), ("lstm", "dummy"),
                                                          ("lstm", "subproc")]
    assert both[0]["params"] == both[1]["params"] and all(r["last_rollout_s"] > 0 for r in both)
    # a GPU row's ratio is to the CPU row of its own core, width and env stepping
    fake = [dict(r, device=d, steps_per_s=v) for r, d, v in ((both[0], "cuda", 300.0), (both[0], "cpu", 100.0),
                                                             (both[1], "cuda", 500.0), (both[1], "cpu", 125.0))]
    bench.add_cpu_ratios(fake)
    assert [r.get("ratio_vs_cpu") for r in fake] == [3.0, None, 4.0, None]
    for flags, named in ((["--sections", "scale,gpu"], "--sections 'scale,gpu'"),
                         (["--scale-envs", "0"], "--scale-envs 0"),
                         (["--scale-hidden-sizes", "64,x"], "--scale-hidden-sizes '64,x'"),
                         (["--scale-iterations", "1"], "--scale-iterations 1"),
                         (["--scale-vec-env", "sub"], "--scale-vec-env 'sub'")):
        monkeypatch.setattr(sys, "argv", ["bench_throughput.py", "--sections", "scale", *flags])
        with pytest.raises(SystemExit) as e:
            bench.main()
        assert e.value.code == 2 and named in capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------------- ray
RAY_HEAD = """
import sys, ray
ctx = ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
print("ADDRESS", ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""


def test_ray_backend_runs_the_same_cells(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray", reason="ray is not installed (pip install \"ray>=2.9\")")
    head = subprocess.Popen([sys.executable, "-c", RAY_HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.append(head.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=60)
        if not lines or not lines[0].startswith("ADDRESS"):
            pytest.skip(f"a local Ray instance did not start in 60 s: {lines!r}")
        address = lines[0].split()[1]
        out = tmp_path / "sweep_ray"
        # in this process (a second Ray driver): the cell function travels to the Ray worker by value
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        code = sweep.main(["--cores", "mlp", "--envs", "CartPole-P-v1", "--seeds", "3", *TINY, "--out", str(out),
                           "--backend", "ray", "--address", address])
        stdout = capsys.readouterr().out
        assert code == 0, stdout + (out / "CartPole-P-v1__mlp__hcfg__s3" / "train.log").read_text()[-3000:]
        assert "completed (new)" in stdout
        record = json.loads((out / "CartPole-P-v1__mlp__hcfg__s3" / "cell.json").read_text())
        assert record["status"] == "completed"
        assert json.loads((Path(record["run_dir"]) / "summary.json").read_text())["status"] == "completed"
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()  # disconnect this driver
        try:
            head.stdin.close()
            head.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            head.kill()
            head.wait()


def test_report_metric_may_be_any_logged_tag():
    """--threshold/--bounds take an eval/ metric by name or any scalar tag whole (the training-episode return)."""
    curve = (np.array([1.0, 2.0]), np.array([0.5, 0.95]), np.array([0.0, 1.0]))
    runs = [report.Run(Path("r"), {}, {}, {}, "MiniGrid-MemoryS9-v0", "lstm", "h256", 0,
                       {"rollout/ep_rew_mean": curve, "eval/success_rate": curve})]
    thresholds = report.parse_thresholds(["MiniGrid=rollout/ep_rew_mean:0.9"])
    assert report.metric_for("MiniGrid-MemoryS9-v0", runs, thresholds) == ("rollout/ep_rew_mean", 0.9)
    assert report.metric_for("MiniGrid-MemoryS9-v0", runs, report.parse_thresholds([])) == ("success_rate", 0.9)
    bounds = report.parse_bounds(["MiniGrid=rollout/ep_rew_mean:0:1"])
    assert report.bounds_for("MiniGrid-MemoryS9-v0", "rollout/ep_rew_mean", runs, bounds)[:2] == (0.0, 1.0)
    assert report.metric_tag("success_rate") == "eval/success_rate"


def test_plot_runs_labels_lines_and_bad_labels(sweep_dir, tmp_path):
    import subprocess
    runs = [str(sweep.run_dirs(sweep_dir / name)[0]) for name in ("CartPole-P-v1__mlp__hcfg__s0",
                                                                   "CartPole-P-v1__mlp__hcfg__s1")]
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "plot_runs.py")
    out = tmp_path / "p.png"
    ok = subprocess.run([sys.executable, script, *runs, "--labels", "a", "b", "--hline", "20:target", "--tags",
                         "eval/mean_reward", "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0 and out.stat().st_size > 0, ok.stderr
    bad = subprocess.run([sys.executable, script, *runs, "--labels", "a", "--out", str(out)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--labels has 1 labels for 2 runs" in bad.stderr


def test_wilson_interval_of_a_few_runs():
    from report import wilson_interval
    lo, hi = wilson_interval(3, 3)
    assert hi == 1.0 and lo == pytest.approx(0.4385, abs=1e-4)  # all agree: still wide
    lo, hi = wilson_interval(0, 3)
    assert lo == 0.0 and hi == pytest.approx(0.5615, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    with pytest.raises(ValueError, match="trials=0"):
        wilson_interval(0, 0)
