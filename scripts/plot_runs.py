"""Overlay TensorBoard scalars of a few run directories in one PNG (what `tensorboard --logdir` shows, as a file).

    python scripts/plot_runs.py RUN_DIR [RUN_DIR ...] --out results/newcomer_gru_vs_lstm.png \
        --tags rollout/ep_rew_mean eval/success_rate --command "train_agent ..."

Each line is labelled with the run's core (from summary.json or config.yaml); the footer names the commit, the machine
and the commands that produced the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import provenance  # noqa: E402
from report import read_scalars  # noqa: E402


def _label(run_dir: Path) -> str:
    for name, load in (("summary.json", json.loads), ("config.yaml", yaml.safe_load)):
        path = run_dir / name
        if path.exists():
            data = load(path.read_text())
            return f"{data.get('core')} (hidden {data.get('hidden_size')})"
    return run_dir.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories written by train_agent")
    parser.add_argument("--tags", nargs="+", default=["rollout/ep_rew_mean", "eval/mean_reward"])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--command", action="append", default=[], help="command that produced the runs (repeatable)")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: its core)")
    parser.add_argument("--hline", action="append", default=[], metavar="Y[:TEXT]",
                        help="a dashed horizontal line on every panel at Y, e.g. 0.9:'reference target'")
    args = parser.parse_args()
    for run in args.runs:
        if not run.is_dir():
            parser.error(f"run directory {str(run)!r} does not exist")
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels has {len(args.labels)} labels for {len(args.runs)} runs: expected one per run")
    hlines = []
    for item in args.hline:
        y, _, text = item.partition(":")
        try:
            hlines.append((float(y), text))
        except ValueError:
            parser.error(f"--hline {item!r}: expected Y[:TEXT] with Y a number, e.g. 0.9:target")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tags), figsize=(5.5 * len(args.tags), 4.2), squeeze=False)
    for i, run in enumerate(args.runs):
        scalars = read_scalars(run, args.tags)
        label = args.labels[i] if args.labels is not None else _label(run)
        for ax, tag in zip(axes[0], args.tags):
            if tag in scalars:
                steps, values, _ = scalars[tag]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
    for ax, tag in zip(axes[0], args.tags):
        for y, text in hlines:
            ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=text or None)
        ax.set_title(tag)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend()
    prov = provenance()
    m = prov["machine"]
    footer = (f"commit {prov['commit']} | {m['cpu']}, {m['cores']} cores, torch {m['torch']} | "
              + " ; ".join(args.command or [prov["command"]]))
    fig.text(0.01, 0.005, footer, fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
