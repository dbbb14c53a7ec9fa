"""Ours on CartPoleNoVel-v1 at two trees of this project, interleaved in one call on one host: is a speed change the
code or the machine?

Each row is one fresh process running ``bench_throughput``'s CartPole contender (rl-zoo3's ppo_lstm hyperparameters,
8 envs, seed 0, no eval) from that tree, so the two trees' rows share the host and its load.

    git archive <old commit> | (mkdir -p .whl/old && tar -x -C .whl/old)
    python scripts/ab_cartpole_commits.py cuda 10240 3 [.whl/old [<old commit>]]

Prints each row and the per-tree medians; writes the rows to ``$OUT/ab_cartpole.json`` (``$OUT`` unset: here).
``$SITE``, if set, goes first on each process's PYTHONPATH (packages installed with ``pip --target``)."""
import argparse
import json
import os
import subprocess
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("device", help="torch device of the policy: cpu, cuda or cuda:N")
parser.add_argument("steps", type=int, help="env steps per row, e.g. 10240")
parser.add_argument("reps", type=int, help="rows per tree and core")
parser.add_argument("old_tree", nargs="?", default=".whl/old", help="the other tree (default .whl/old)")
parser.add_argument("old_label", nargs="?", default="f5cb553", help="its name in the rows (default f5cb553)")
args = parser.parse_args()
device, steps, reps, old_tree, old_label = args.device, args.steps, args.reps, args.old_tree, args.old_label
if steps < 1 or reps < 1:
    parser.error(f"steps={steps}, reps={reps}: expected positive integers")
if not os.path.isfile(os.path.join(old_tree, "scripts", "bench_throughput.py")):
    parser.error(f"old_tree={old_tree!r}: expected a tree of this project (no scripts/bench_throughput.py there)")
code = ("import sys, json; sys.path.insert(0, 'scripts'); import bench_throughput as b; "
        "c = b.cartpole_contenders(0, sys.argv[1]); "
        "print(json.dumps(b.train_and_time(c[sys.argv[2]], int(sys.argv[3]), 0, 'CartPoleNoVel-v1', 0)))")
trees = {old_label: os.path.abspath(old_tree), "HEAD": os.getcwd()}
out = []
for rep in range(reps):
    for label, tree in trees.items():
        for core in ("lstm", "gru"):
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in [os.environ.get("SITE", ""), tree] if p]))
            r = subprocess.run([sys.executable, "-c", code, device, f"recurrent-agents ({core})", str(steps)], cwd=tree,
                               env=env, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-2000:])
                sys.exit(1)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row.update(rep=rep, tree=label, core=core)
            out.append(row)
            print(f"rep {rep} {label:8s} {core:4s} {row['steps_per_s']:7.0f} steps/s  last rollout "
                  f"{row.get('last_rollout_s', float('nan')):.3f} update {row.get('last_update_s', float('nan')):.3f}",
                  flush=True)
for label in trees:
    for core in ("lstm", "gru"):
        v = sorted(r["steps_per_s"] for r in out if r["tree"] == label and r["core"] == core)
        print(f"{label:8s} {core}: median {v[len(v)//2]:.0f} steps/s, runs {[round(x) for x in v]}")
with open(os.path.join(os.environ.get("OUT", "."), "ab_cartpole.json"), "w") as f:
    json.dump(out, f, indent=1)
