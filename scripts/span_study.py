"""Memory span on the passive T-Maze (envs/tmaze.py): how long a corridor each core carries the cue across.

Run (resumable: the same command continues where it stopped; each length is one ``scripts/sweep.py`` invocation
into the same directory)::

    python scripts/span_study.py run --cores gru,lstm,mingru,lru,ffm,s6,mlp --lengths 10,25,100,250,500,1000 \\
        --seeds 0-2 --out results/runs/span_auto --workers 2
    python scripts/span_study.py report results/runs/span_auto --out results/span_auto

Protocol (the same for every core and length; a core is sized to a 128-unit LSTM's parameters):

- one rollout segment is one whole episode: ``n_steps = length + 1`` with 8 envs whose episodes start together, so
  training backpropagates through every step from the cue to the turn, with no padding and no cut; one minibatch
  per rollout (8 episodes), 10 epochs (configs/tmaze.yaml);
- the budget is ``--updates`` rollouts per run (``8 x updates`` episodes, ``8 x updates x (length + 1)`` steps);
  a run ends early at the first evaluation (every 10 updates, 20 deterministic episodes) with a success rate of
  ``--solved`` or more (``stop_at_success``); its final evaluation (100 episodes) is its result;
- lengths run shortest first, and a core goes on to the next length only while at least one of its seeds solved the
  last (final success >= ``--solved``): the lengths it skips are reported as not reached. A memoryless core is at
  50% by construction, so the control stops after the first length.

``--walk auto`` (default) is the T-Maze variant in which the env walks the corridor and the agent only turns (the
memory length is unchanged); ``--walk agent`` is the paper's task, where the walk must be learned too.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchlib import ROOT, git_commit, provenance

sys.path.insert(0, str(ROOT / "scripts"))
from report import bootstrap_ci, footer_text, load_runs, sweep_info_of, wilson_interval  # noqa: E402
from sweep import parse_seeds  # noqa: E402

sys.path.insert(0, str(ROOT))
from envs.tmaze import LENGTHS, WALKS  # noqa: E402

PROG = "span_study"
N_ENVS = 8
EVAL_EVERY = 10  # updates between evaluations


def _ints(text: str, name: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{PROG}: --{name} {text!r}: expected a comma list of integers") from None


def env_id(length: int) -> str:
    return f"TMaze-L{length}-v0"


def sweep_command(cores: Sequence[str], length: int, args: argparse.Namespace) -> List[str]:
    n = length + 1
    return [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--cores", ",".join(cores), "--envs", env_id(length),
            "--seeds", args.seeds, "--match-params", args.match_params,
            "--total-timesteps", str(args.updates * N_ENVS * n), "--n-envs", str(N_ENVS),
            "--set", f"n_steps={n}", f"batch_size={N_ENVS * n}", f"eval_freq={EVAL_EVERY * N_ENVS * n}",
            f"stop_at_success={args.solved}", f"env_kwargs.walk={args.walk}", *args.set,
            "--out", str(args.out), "--workers", str(args.workers)] + (["--variant", args.variant] if args.variant else [])


def results_of(out: Path) -> Dict[tuple, Dict[str, Any]]:
    """(label, length, seed) -> the finished run's summary; the label is the core, with ``@VARIANT`` appended for runs
    of a ``--variant``."""
    found = {}
    for run in load_runs(out):
        length = int((run.config.get("env_kwargs") or {}).get("length") or run.env.split("-L")[-1].split("-")[0])
        found[run.label, length, run.seed] = {**run.summary, "run": run}
    return found


def run(args: argparse.Namespace) -> int:
    cores = [c for c in args.cores.split(",") if c]
    lengths = sorted(_ints(args.lengths, "lengths"))
    bad = [n for n in lengths if n not in LENGTHS]
    if bad:
        raise SystemExit(f"{PROG}: --lengths {bad}: expected lengths with their own id, among {list(LENGTHS)}")
    seeds = parse_seeds(args.seeds)
    alive = list(cores)
    for length in lengths:
        if not alive:
            break
        cmd = sweep_command(alive, length, args)
        print(f"{PROG}: length {length}: {', '.join(alive)}\n  {shlex.join(cmd)}", flush=True)
        code = subprocess.call(cmd, cwd=ROOT)
        if code not in (0, 1):
            return code
        found = results_of(Path(args.out))
        label = (lambda c: f"{c}@{args.variant}") if args.variant else (lambda c: c)
        alive = [c for c in alive if any((found.get((label(c), length, s)) or {}).get("eval_success_rate", 0.0)
                                         >= args.solved for s in seeds)]
    return 0


# ---------------------------------------------------------------------------------------------------- report
def longest_held(rows: List[Dict[str, Any]], cores: Sequence[str]) -> Dict[str, Optional[int]]:
    """core -> the longest length a majority of its seeds solved (None: none)."""
    return {c: max([r["length"] for r in rows if r["core"] == c and 2 * r["solved"] > r["seeds"]], default=None)
            for c in cores}


def cells_of(found: Dict[tuple, Dict[str, Any]], cores: Sequence[str], lengths: Sequence[int]):
    """(core, length, [its runs]) for each core and length with at least one run in ``found`` ((core, length,
    seed) -> run)."""
    for core in cores:
        for n in lengths:
            runs = [found[k] for k in sorted(found) if k[0] == core and k[1] == n]
            if runs:
                yield core, n, runs


def length_header(columns: Sequence[str], lengths: Sequence[int], last: str) -> List[str]:
    """The header and rule rows of a Markdown table: ``columns``, one column per length, then ``last``."""
    heads = [*columns, *(f"L={n}" for n in lengths), last]
    return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]


def length_cells(rows: List[Dict[str, Any]], core: str, lengths: Sequence[int], fmt) -> List[str]:
    """One table cell per length for ``core``: ``fmt(row)``, or ``-`` where the core was not run."""
    cells = []
    for n in lengths:
        r = next((r for r in rows if r["core"] == core and r["length"] == n), None)
        cells.append("-" if r is None else fmt(r))
    return cells


def report(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(args.out)
    found = results_of(Path(args.sweep))
    if not found:
        raise SystemExit(f"{PROG}: no finished runs under {args.sweep}")
    cores = list(dict.fromkeys(c for c, _, _ in sorted(found, key=lambda k: (k[1], k[0]))))
    lengths = sorted({n for _, n, _ in found})
    rows = []
    for core, n, runs in cells_of(found, cores, lengths):
        success = np.array([r["eval_success_rate"] for r in runs], dtype=float)
        _, lo, hi = bootstrap_ci(success, statistic=np.mean)
        solved = [r for r in runs if r["eval_success_rate"] >= args.solved]
        steps = [r["solved_step"] for r in runs if r.get("solved_step") is not None]
        rows.append({"core": core, "length": n, "seeds": len(runs), "success": float(success.mean()),
                     "ci": [float(lo), float(hi)], "solved": len(solved),
                     "median_solved_step": float(np.median(steps)) if steps else None,
                     "train_s": float(np.mean([r["wall_s"] for r in runs])),
                     "steps": float(np.mean([r["total_timesteps"] for r in runs])),
                     "params": runs[0]["core_parameters"], "kernel": runs[0]["kernel"],
                     "per_seed": [float(s) for s in success]})
    longest = longest_held(rows, cores)
    runs_all = [v["run"] for v in found.values()]
    info = sweep_info_of(Path(args.sweep), runs_all)
    command = "python scripts/span_study.py report " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    prov = provenance(command)
    footer = footer_text(prov, info["commands"][:1] + ([f"... {len(info['commands']) - 1} more (see the .md)"]
                                                      if len(info["commands"]) > 1 else []), command)

    fig, ax = plt.subplots(figsize=(10, 5))
    for core in cores:
        mine = [r for r in rows if r["core"] == core]
        xs = [r["length"] for r in mine]
        ys = [r["success"] for r in mine]
        line, = ax.plot(xs, ys, marker="o", label=f"{core} (longest solved: {longest[core] or '-'})")
        ax.fill_between(xs, [r["ci"][0] for r in mine], [r["ci"][1] for r in mine], alpha=0.15,
                        color=line.get_color())
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="no memory (50%)")
    ax.set_xscale("log")
    ax.set_xlabel("memory length L (corridor cells)")
    ax.set_ylabel("final success rate (mean over seeds, 95% bootstrap CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Passive T-Maze (walk={args.walk_label}): success vs memory length")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.text(0.01, 0.005, footer, fontsize=5, family="monospace", va="bottom")
    fig.subplots_adjust(bottom=0.25, right=0.72)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "span.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)

    md = [f"# Memory span on the passive T-Maze (walk={args.walk_label})", "",
          f"![success vs length]({png.name})", "",
          f"Commit {prov['commit']}, {prov['date']}; runs at commit(s) {', '.join(info['run_commits'])}; "
          f"machine: {'; '.join(info['machines'])}.", "",
          "Reproduce:", "", "```"] + info["commands"] + [command, "```", "",
          f"Success: final evaluation, 100 deterministic episodes; `solved`: seeds with success >= {args.solved}; "
          "longest solved: the longest length a majority of seeds solved. `-` after a length: the core was not run "
          "there (no seed solved a shorter length).", "",
          *length_header(["core", "params"], lengths, "longest solved")]
    for core in cores:
        cells = length_cells(rows, core, lengths, lambda r: f"{r['success']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] "
                                                            f"({r['solved']}/{r['seeds']})")
        params = next(r["params"] for r in rows if r["core"] == core)
        md.append(f"| {core} | {params:,} | " + " | ".join(cells) + f" | {longest[core] or '-'} |")
    md += ["", "Training cost per run (mean over seeds): seconds, env steps, and the median step at which solved runs "
           "stopped.", "", "| core | L | train s | steps | median solved step |", "|---|---|---|---|---|"]
    for r in rows:
        med = "-" if r["median_solved_step"] is None else f"{r['median_solved_step']:,.0f}"
        md.append(f"| {r['core']} | {r['length']} | {r['train_s']:.0f} | {r['steps']:,.0f} | {med} |")
    (out_dir / "span.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out_dir / "span.json").write_text(json.dumps({"provenance": prov, "rows": rows, "longest": longest,
                                                   "sweep": info}, indent=1, default=str), encoding="utf-8")
    print("\n".join(md[9:]))
    print(f"wrote {png}, {out_dir / 'span.md'}, {out_dir / 'span.json'}")
    return 0


# -------------------------------------------------------------------------------------------------- capacity
#: the encoder width in front of every core (the policy's default encoder output), so cores are sized as in ``run``
CAPACITY_FEATURES = 64


def tmaze_sequences(length: int) -> "torch.Tensor":
    """The two observation sequences of a ``walk=auto`` T-Maze of ``length`` cells, ``[length + 1, 2, 2]``: column 0
    has the cue +1, column 1 the cue -1; row ``t`` is what the agent sees before its action ``t`` (the last row: the
    junction, where it turns). Taken from the env itself, so the probe sees exactly the task's inputs."""
    import torch

    from envs.tmaze import RIGHT, TMazeEnv

    env = TMazeEnv(length=length, walk="auto")
    columns = []
    for goal in (1, -1):
        obs, _ = env.reset(seed=0, options={"goal": goal})
        seq = [obs]
        for _ in range(length):
            obs, _, done, _, _ = env.step(RIGHT)
            if not done:
                seq.append(obs)
        columns.append(np.stack(seq))
    return torch.as_tensor(np.stack(columns, axis=1))


#: what the capacity probe learns from: the cue as a label, or the env's reward for a sampled turn
SIGNALS = ("label", "reward")


def capacity_run(core: str, length: int, seed: int, hidden: int, steps: int, lr: float, eval_every: int,
                 core_kwargs: Dict[str, Any], signal: str = "label", batch: int = 8) -> Dict[str, Any]:
    """Train encoder + core + linear head by gradient descent to turn towards the cue at the junction, the loss on
    the last step only.

    - ``signal="label"``: cross-entropy on naming the cue, both cues in every step's batch: the full-batch gradient
      of the passive T-Maze's memory problem;
    - ``signal="reward"``: what RL gets instead. ``batch`` episodes per step with random cues; the head's 4 logits
      are the env's actions, the turn is sampled from them, the reward is the env's (1 for the cued goal, else 0).
      REINFORCE with the batch's mean reward as baseline, no critic, no PPO.

    Solved: at an evaluation both cues get probability >= 0.9 on the right turn. Stops when solved or after
    ``steps``."""
    import time

    import torch
    from torch import nn

    from agents.cores import make_core
    from envs.tmaze import DOWN, UP

    if signal not in SIGNALS:
        raise ValueError(f"signal={signal!r}: expected one of {', '.join(SIGNALS)}")
    torch.manual_seed(seed)
    x = tmaze_sequences(length)
    # the right output for column 0 (cue +1) and column 1 (cue -1): a class, or the env's turn towards the cue
    target = torch.tensor([0, 1]) if signal == "label" else torch.tensor([UP, DOWN])
    n = 2 if signal == "label" else batch
    starts = torch.zeros(x.shape[0], n)
    starts[0] = 1.0
    encoder = nn.Sequential(nn.Linear(2, CAPACITY_FEATURES), nn.Tanh())
    mem = make_core(core, CAPACITY_FEATURES, hidden, 1, **core_kwargs)
    head = nn.Linear(mem.output_size, 2 if signal == "label" else 4)
    params = [p for m in (encoder, mem, head) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)

    def logits(xs: torch.Tensor) -> torch.Tensor:
        y, _ = mem.forward_sequence(encoder(xs), mem.initial_state(xs.shape[1]), starts[:, :xs.shape[1]])
        return head(y[-1])

    solved_step, p_correct, t0 = None, 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        if signal == "label":
            loss = nn.functional.cross_entropy(logits(x), target)
        else:
            cue = torch.randint(0, 2, (batch,))
            dist = torch.distributions.Categorical(logits=logits(x[:, cue]))
            turn = dist.sample()
            reward = (turn == target[cue]).float()
            loss = -((reward - reward.mean()) * dist.log_prob(turn)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                p_correct = float(torch.softmax(logits(x), -1)[[0, 1], target].min())
            if p_correct >= 0.9:
                solved_step = step
                break
    wall = time.perf_counter() - t0
    return {"core": core, "length": length, "seed": seed, "hidden": hidden, "signal": signal,
            "batch": 2 if signal == "label" else batch, "solved": solved_step is not None,
            "solved_step": solved_step, "steps_run": step, "min_p_correct": p_correct, "wall_s": wall,
            "s_per_step": wall / step, "core_parameters": sum(p.numel() for p in mem.parameters())}


def capacity(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from agents.cores import CORES, match_hidden_size

    torch.set_num_threads(1)
    cores = [c for c in args.cores.split(",") if c]
    lengths = sorted(_ints(args.lengths, "lengths"))
    seeds = parse_seeds(args.seeds)
    target_core, _, target_h = args.match_params.partition(":")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_file = out_dir / "capacity_runs.jsonl"
    done = {}
    if runs_file.exists():  # resumable: a run already in the file is not run again
        for line in runs_file.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r.get("signal", "label") != args.signal:
                raise SystemExit(f"{PROG}: --signal {args.signal}: {runs_file} holds runs with signal "
                                 f"{r.get('signal', 'label')!r}; expected one signal per directory (use another --out)")
            done[r.get("label", r["core"]), r["length"], r["seed"]] = r
    core_kwargs = dict(kv.split("=", 1) for kv in args.core_kwargs)
    command = "python scripts/span_study.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for core in cores:
        label = f"{core}@{args.variant}" if args.variant else core
        kw = {k: int(v) for k, v in core_kwargs.items()} if core in ("gru", "lstm") else {}
        hidden = match_hidden_size(core, target_core, int(target_h), CAPACITY_FEATURES, core_kwargs=kw)
        alive = True
        for length in lengths:
            if not alive:
                break
            for seed in seeds:
                if (label, length, seed) not in done:
                    r = {**capacity_run(core, length, seed, hidden, args.steps, args.lr, args.eval_every, kw,
                                        args.signal, args.batch),
                         "label": label, "commit": git_commit(), "command": command}
                    done[label, length, seed] = r
                    with runs_file.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(r) + "\n")
                r = done[label, length, seed]
                print(f"{label:7s} L={length:5d} seed {seed}: {'solved at step ' + str(r['solved_step']) if r['solved'] else 'not solved'}"
                      f" (p_correct {r['min_p_correct']:.2f}, {r['wall_s']:.1f} s)", flush=True)
            alive = any(done[label, length, s]["solved"] for s in seeds)

    # the report covers every run in the file (other invocations' cores and variants too), in the registry's order
    order = list(CORES)
    cores = sorted({k[0] for k in done}, key=lambda c: (order.index(c.split("@")[0]) if c.split("@")[0] in order
                                                        else len(order), c))
    lengths = sorted({k[1] for k in done})
    rows = []
    for core, length, runs in cells_of(done, cores, lengths):
        solved = [r["solved_step"] for r in runs if r["solved"]]
        lo, hi = wilson_interval(len(solved), len(runs))
        rows.append({"core": core, "length": length, "seeds": len(runs), "solved": len(solved),
                     "solved_share_ci95": [lo, hi],
                     "median_solved_step": float(np.median(solved)) if solved else None,
                     "s_per_step": float(np.median([r["s_per_step"] for r in runs])),
                     "hidden": runs[0]["hidden"], "params": runs[0]["core_parameters"]})
    longest = longest_held(rows, cores)
    prov = provenance(command)
    m = prov["machine"]
    commands = list(dict.fromkeys(r.get("command", command) for r in done.values()))
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, core in enumerate(cores):
        mine = [r for r in rows if r["core"] == core]
        share = np.array([r["solved"] / r["seeds"] for r in mine])
        ci = np.array([r["solved_share_ci95"] for r in mine]).reshape(-1, 2)
        ax.errorbar([r["length"] * 1.03 ** (i - len(cores) / 2) for r in mine], share,
                    yerr=[share - ci[:, 0], ci[:, 1] - share], marker="os^vD<>p"[i % 8], ls=("-", "--", ":")[i % 3],
                    capsize=2, elinewidth=0.6, label=f"{core} (longest: {longest[core] or '-'})")
    ax.set_xscale("log")
    ax.set_xlabel("memory length L (corridor cells)")
    ax.set_ylabel("share of seeds solved (95% Wilson interval)")
    ax.set_ylim(-0.05, 1.05)
    title = ("T-Maze memory by gradient descent alone (no RL)" if args.signal == "label" else
             f"T-Maze memory from the reward alone (REINFORCE, {args.batch} episodes a step, no PPO)")
    ax.set_title(f"{title}: {args.steps} Adam steps at most", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.text(0.01, 0.005, f"commit {prov['commit']} | {m['cpu']}, {m['cores']} cores | " + " ; ".join(commands),
             fontsize=5, family="monospace", va="bottom", wrap=True)
    fig.subplots_adjust(bottom=0.2, right=0.72)
    png = out_dir / "capacity.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    how = ("both cues in every batch, cross-entropy on naming the cue at the junction" if args.signal == "label" else
           f"{args.batch} episodes with random cues a step; the turn at the junction is sampled from the head's 4 "
           "logits (the env's actions) and rewarded 1 on the cued goal, else 0; REINFORCE with the batch's mean "
           "reward as baseline (no critic, no PPO)")
    md = [f"# {title}", "", f"![seeds solved vs length]({png.name})", "",
          f"Commit {prov['commit']}, {prov['date']}; runs at commit(s) "
          f"{', '.join(sorted({r.get('commit', 'unknown') for r in done.values()}))}; {m['cpu']}, {m['cores']} cores, "
          f"torch {m['torch']} ({m['torch_threads']} thread(s)).",
          "", "Reproduce (each command runs its cores and writes this report of every run in the directory):", "",
          "```", *commands, "```", "",
          f"A 64-unit tanh encoder, the core (sized to {args.match_params}'s core parameters) and a linear head are "
          f"trained with Adam (learning rate {args.lr:g}) on the observation sequences of the `walk=auto` T-Maze of "
          f"length L (taken from the env): {how}. Solved: at an evaluation (every {args.eval_every} steps) both cues "
          f"get probability >= 0.9 on the right answer; at most {args.steps} steps. A core goes on "
          "to the next length only while one of its seeds solved the last (`-`: not run). Longest: the longest "
          "length a majority of seeds solved.", "",
          *length_header(["core", "hidden", "params"], lengths, "longest")]
    for core in cores:
        cells = length_cells(rows, core, lengths, lambda r: f"{r['solved']}/{r['seeds']}" + (
            " [{:.2f}, {:.2f}]".format(*r["solved_share_ci95"])) + (
            f" ({r['median_solved_step']:.0f})" if r["median_solved_step"] is not None else ""))
        first = next(r for r in rows if r["core"] == core)
        md.append(f"| {core} | {first['hidden']} | {first['params']:,} | " + " | ".join(cells)
                  + f" | {longest[core] or '-'} |")
    md += ["", "Cells: seeds solved [95% Wilson interval of the share solved] (median Adam steps to solve). Seconds "
           "per step (median over seeds):", "",
           "| core | " + " | ".join(f"L={n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for core in cores:
        md.append(f"| {core} | " + " | ".join(length_cells(rows, core, lengths,
                                                           lambda r: f"{r['s_per_step'] * 1e3:.1f} ms")) + " |")
    (out_dir / "capacity.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out_dir / "capacity.json").write_text(json.dumps({"provenance": prov, "settings": vars(args), "rows": rows,
                                                       "longest": longest}, indent=1), encoding="utf-8")
    print("\n".join(md[12:]))
    print(f"wrote {png}, {out_dir / 'capacity.md'}, {out_dir / 'capacity.json'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train every core at every length (resumable)")
    p.add_argument("--cores", default="gru,lstm,mingru,lru,ffm,s6,mlp")
    p.add_argument("--lengths", default="10,25,100,250,500,1000")
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--updates", type=int, default=300, help="rollouts (of 8 episodes) per run at most")
    p.add_argument("--solved", type=float, default=0.95, help="success rate that counts as solved")
    p.add_argument("--walk", choices=WALKS, default="auto")
    p.add_argument("--match-params", default="lstm:128")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more config overrides for every run, passed to sweep.py (e.g. core_kwargs.chrono=250)")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="name these runs' variant (sweep.py --variant): the labels become CORE@NAME")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=2)
    r = sub.add_parser("report", help="table and plot of a span study's runs")
    r.add_argument("sweep")
    r.add_argument("--out", required=True)
    r.add_argument("--solved", type=float, default=0.95)
    r.add_argument("--walk-label", default="auto", help="the walk the runs used, for the titles")
    c = sub.add_parser("capacity", help="the same memory problem by gradient descent alone, no RL (resumable)")
    c.add_argument("--cores", default="gru,lstm,mingru,lru,ffm,s6,mlp")
    c.add_argument("--lengths", default="10,25,100,250,500,1000")
    c.add_argument("--seeds", default="0-2")
    c.add_argument("--steps", type=int, default=1000, help="Adam steps per run at most")
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--eval-every", type=int, default=10)
    c.add_argument("--match-params", default="lstm:128")
    c.add_argument("--core-kwargs", nargs="+", default=[], metavar="KEY=INT",
                   help="integer options for the GRU and LSTM cores (e.g. chrono=1000)")
    c.add_argument("--signal", choices=SIGNALS, default="label",
                   help="label: the cue as a label (memory alone); reward: the env's reward for a sampled turn")
    c.add_argument("--batch", type=int, default=8, help="episodes per step with --signal reward")
    c.add_argument("--variant", default=None, metavar="NAME",
                   help="label these runs CORE@NAME (e.g. for --core-kwargs chrono=1000 beside the defaults)")
    c.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return {"run": run, "report": report, "capacity": capacity}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
