"""Learning benchmark: ``marl sweep`` of configs over held-out seeds at a fixed env-step budget,
reporting each config's greedy-evaluation team return (IQM with a 95% rliable CI, per seed).

    python benchmarks/learning.py configs/spread_mappo.yaml --seeds 11 12 13 14 15 --steps 200000

A thin caller of ``marl.sweep``: ``--steps`` and ``--eval-episodes`` become overrides of every
trial, ``--jobs`` trials run at a time on a local Ray instance, and the run directories and
``summary.md`` / ``summary.json`` go to ``--out-dir`` (default a new temporary folder). The configs
were tuned on seeds 0-2 (``--tuning-seeds``); a seed set that overlaps them is flagged.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

TUNING_SEEDS = [0, 1, 2]        # the seeds the configs in configs/ were tuned on
DEFAULT_SEEDS = [11, 12, 13, 14, 15]


def sweep_command(configs: list[str], seeds: list[int], out: str, sets: list[str], jobs: int | None) -> list[str]:
    """The ``marl sweep`` arguments for ``configs`` × ``seeds`` into ``out``, quiet, with ``sets``."""
    command = ["sweep", *configs, "--seeds", *map(str, seeds), "--out", str(out), "--set", "train.progress=false"]
    for item in sets:
        command += ["--set", item]
    return command + (["--jobs", str(jobs)] if jobs else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="YAML configs; 'path.yaml@key=v,key=v' adds overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help="seeds to report on, not ones the config was tuned on (default 11-15)")
    parser.add_argument("--tuning-seeds", type=int, nargs="*", default=TUNING_SEEDS,
                        help="seeds the configs were tuned on (default 0 1 2); an overlap is flagged")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--eval-episodes", type=int, default=1000,
                        help="greedy episodes per run (a trained policy's team return varies by ~15 between episodes)")
    parser.add_argument("--jobs", type=int, default=None, help="trials at a time (default one per core)")
    parser.add_argument("--set", action="append", default=[], help="override for every config (KEY=V1,V2: a grid)")
    parser.add_argument("--out-dir", help="the sweep directory (new or empty)")
    args = parser.parse_args(argv)

    from marl.cli import main as marl
    from marl.compare import seed_report

    seeds = seed_report(args.seeds, args.tuning_seeds)
    out = args.out_dir or str(Path(tempfile.mkdtemp(prefix="marl-bench-")) / "sweep")
    sets = [f"train.total_env_steps={args.steps}", f"train.eval_episodes={args.eval_episodes}", *args.set]
    code = marl(sweep_command(args.configs, args.seeds, out, sets, args.jobs))
    print(seeds["seed_note"])
    return code


if __name__ == "__main__":
    sys.exit(main())
