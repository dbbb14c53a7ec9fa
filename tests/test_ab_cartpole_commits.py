"""scripts/ab_cartpole_commits.py: two trees of this project timed side by side (the GPU run's code-or-host check)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ab_cartpole_commits.py"


def _run(args, tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["cpu", "0", "1"], "steps=0, reps=1: expected positive integers"),
    (["cpu", "64", "0"], "steps=64, reps=0: expected positive integers"),
    (["cpu", "64", "1", "/nonexistent/tree"], "old_tree='/nonexistent/tree': expected a tree of this project"),
    (["cpu"], "the following arguments are required: steps, reps"),
])
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
    proc = _run(args, tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert expected in last, proc.stderr


def test_two_trees_interleaved_rows(tmp_path):
    """The repo against itself: every (tree, core) row trained the asked steps, in the interleaved order."""
    proc = _run(["cpu", "64", "1", str(ROOT), "same"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "ab_cartpole.json").read_text())
    assert [(r["tree"], r["core"]) for r in rows] == [("same", "lstm"), ("same", "gru"), ("HEAD", "lstm"),
                                                       ("HEAD", "gru")]
    for r in rows:
        assert r["steps"] >= 64 and r["steps_per_s"] > 0 and r["seconds"] > 0 and r["rep"] == 0
    assert "same     lstm: median" in proc.stdout and "HEAD     gru: median" in proc.stdout
