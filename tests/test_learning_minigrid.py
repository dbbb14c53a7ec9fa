"""Learning check on the headline task: the default ``train_agent --core gru --env MiniGrid-Memory`` run, one fixed
seed, learns MiniGrid-MemoryS7 (success >= 0.9 on 50 evaluation episodes of minigrid's own task, no training aid).

This guards the default recipe and the pipeline against regressions on one seed; how reliable the default is across
seeds is measured in results/studies/minigrid_memory_protocol.md. Slow (about 6 minutes on 2 CPU cores): run with
``python -m pytest -m slow``; CI runs it.
"""

import json

import pytest

from agents.config import resolve_config
from agents.train import train

pytestmark = pytest.mark.slow


def test_default_config_learns_minigrid_memory(tmp_path):
    cfg = resolve_config(env="MiniGrid-Memory", overrides={"core": "gru", "seed": 0, "logdir": str(tmp_path)},
                         set_items=["final_eval_episodes=50", "checkpoint_freq=0"])
    assert not cfg.train_wrappers and cfg.train_levels is None  # the plain task, as a user runs it
    result = train(cfg, progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.status == "completed" and summary["eval_episodes"] == 50
    assert summary["eval_success_rate"] >= 0.9, summary
