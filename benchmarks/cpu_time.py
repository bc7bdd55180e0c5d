"""Process CPU time of the local trainer's collection and update, for comparing two versions of the
code on a shared machine, where wall-clock throughput drifts with other tenants' load.

    python benchmarks/cpu_time.py --baseline-tree ../before --repeats 3
    python benchmarks/cpu_time.py --set model.recurrent=true          # this tree only

Each measurement runs in a fresh process with the tree's own code (``PYTHONPATH``): it builds the
trainer for ``--config`` (default ``configs/spread_mappo.yaml``), warms up with one collection and
one update, then times ``--iterations`` collections and as many updates with
``time.process_time()``. Trees alternate within each repeat. Prints one line per measurement.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
from marl.config import load_config
from marl.trainer import Trainer
config, iterations, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
trainer = Trainer(load_config(config, ["train.progress=false", *overrides]), None)
try:
    trainer.collect(); trainer.update()
    t0 = time.process_time()
    for _ in range(iterations):
        trainer.collect()
    t1 = time.process_time()
    for _ in range(iterations):
        trainer.update()
    print(f"collect {t1 - t0:.2f} s, update {time.process_time() - t1:.2f} s")
finally:
    trainer.close()
"""


def measure(tree: Path, config: str, iterations: int, overrides: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree / config), str(iterations), *overrides],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return proc.stdout.strip().splitlines()[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/spread_mappo.yaml", help="relative to each tree")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-tree", type=Path, help="a checkout of an earlier commit (git worktree add PATH REV)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline_tree.resolve())] if args.baseline_tree else [])
    for repeat in range(1, args.repeats + 1):
        for name, tree in trees:
            print(f"repeat {repeat}, {name}: {measure(tree, args.config, args.iterations, args.set)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
