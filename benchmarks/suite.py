"""The suite table: the field's cooperative benchmarks × our fast configs, each on held-out seeds.

    nice -n 5 python benchmarks/suite.py --out /tmp/suite                # every task, seeds 11-15
    python benchmarks/suite.py --tasks spread lbf --seeds 11 12 13 --out /tmp/suite
    python benchmarks/suite.py --resume /tmp/suite                        # after a Ctrl-C
    python benchmarks/suite.py --out /tmp/suite --md docs/suite.md      # also write the table there

Each task's config trains at its shipped budget (``train.total_env_steps`` in the YAML) as the
trials of one ``marl sweep``, so the run directories, ``summary.json`` and a stopped sweep's
``--resume`` are the sweep's own. The table (``DIR/suite.md``) has, per task: the config, its
budget, the greedy team return's IQM with rliable's 95% stratified-bootstrap CI over the seeds,
each seed's value, the SMAX win rate where the env reports one, the median wall clock of a run on
this machine, and the reference figure with its source and return scale (see
``../shared/DESIGN.md``, "Return scales"). Where no published figure was retrieved, the cell says
so instead of quoting one from memory.

The configs were tuned on seeds 0-2; report on others (a seed set that overlaps is flagged).
``--set`` adds overrides to every trial (e.g. ``--set train.total_env_steps=20000`` for a smoke run;
the table then says it is not the shipped budget).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run as a script from anywhere

TUNING_SEEDS = [0, 1, 2]
DEFAULT_SEEDS = [11, 12, 13, 14, 15]


@dataclass(frozen=True)
class SuiteTask:
    """One row of the suite: a task, the config that trains it, and the figure it is read against."""
    key: str            # --tasks name
    task: str           # what the row is called in the table
    config: str         # path under the project root

    @property
    def path(self) -> str:
        return str(ROOT / self.config)
    reference: str      # the figure to read ours against, with its source and scale
    extra: str = ""     # the optional extra the env needs ("" = none)


SUITE = [
    SuiteTask("spread", "MPE simple_spread (N=3, 25 steps), batched twin", "configs/spread_fast.yaml",
              "MAPPO paper (Yu et al., 2022), converged R ≈ −120 on the original MPE scale = T ≈ −22.5 here "
              "(T = (R + 75) / 2), at 20M env steps"),
    SuiteTask("spread_qmix", "MPE simple_spread, QMIX on the twin", "configs/spread_fast_qmix.yaml",
              "same task as above (T scale)"),
    SuiteTask("lbf", "LBF Foraging-8x8-2p-2f-coop-v3, batched twin", "configs/lbf_fast.yaml",
              "team return in [0, 1]; the PyTorch MARL codebase's MAPPO measured here: 0.34–0.37 at 500k "
              "(its paper's per-task table not retrieved)"),
    SuiteTask("lbf_qmix", "LBF Foraging-8x8-2p-2f-coop-v3, QMIX", "configs/lbf_qmix.yaml",
              "team return in [0, 1]; the issue's bar: greedy ≥ 0.7 at 1M (published table not retrieved)"),
    SuiteTask("rware", "RWARE tiny-2ag, batched twin", "configs/rware_fast.yaml",
              "+1 per delivered shelf, summed over agents; published per-task table not retrieved"),
    SuiteTask("smax_3m", "SMAX 3m (JaxMARL)", "configs/smax_3m.yaml",
              "win rate; JaxMARL's published SMAX figures not retrieved", extra="jaxmarl"),
]


def _extra_missing(task: SuiteTask) -> bool:
    if task.extra != "jaxmarl":
        return False
    try:
        import jaxmarl  # noqa: F401
    except ImportError:
        return True
    return False


def suite_rows(summary: dict, tasks: list[SuiteTask], overrides: list[str]) -> list[dict]:
    """One row per task from a sweep's ``summary.json``: IQM and 95% CI of the finished trials'
    greedy returns, each seed's value, the mean win rate, the median wall clock and the budget."""
    from marl.compare import iqm_interval
    from marl.config import load_config

    rows = []
    for task in tasks:
        trials = [t for t in summary["trials"] if t["config"] == task.path]
        done = [t for t in trials if t["status"] == "done" and t["greedy_return"] is not None]
        budget = load_config(task.path).train.total_env_steps
        steps = sorted({t["env_steps"] for t in done}) or [budget]
        row = {"task": task.task, "config": task.config, "reference": task.reference, "seeds": [t["seed"] for t in done],
               "per_seed": [t["greedy_return"] for t in done], "env_steps": steps,
               "failed": [f"s{t['seed']}: {t['error']}" for t in trials if t["status"] == "failed"],
               "shipped_budget": not any(o.startswith("train.total_env_steps=") for o in overrides),
               "wall_s": statistics.median(t["wall_s"] for t in done) if done else None,
               "win_rate": None, "iqm": None, "ci": None}
        wins = [t["win_rate"] for t in done if t.get("win_rate") is not None]
        if wins:
            row["win_rate"] = sum(wins) / len(wins)
        if done:
            interval = iqm_interval(row["per_seed"])
            row["iqm"], row["ci"] = interval["iqm"], interval["ci"]
        rows.append(row)
    return rows


def _steps(n: int) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1_000_000 else f"{n / 1e3:.3g}k"


def suite_markdown(rows: list[dict], seed_note: str) -> str:
    from marl.compare import format_interval

    header = ("| task | config | env steps | greedy team return: IQM [95% CI] | per seed | win rate | "
              "wall clock per run | reference |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["iqm"] is None:
            ours, per_seed = "not run" + (f" ({'; '.join(r['failed'])})" if r["failed"] else ""), "–"
        else:
            ours = f"**{format_interval(r['iqm'], r['ci'], 2)}** ({len(r['seeds'])} seeds)"
            per_seed = ", ".join(f"{v:.2f}" for v in r["per_seed"])
        steps = "/".join(_steps(s) for s in r["env_steps"] if s) + ("" if r["shipped_budget"] else " (not shipped)")
        win = "–" if r["win_rate"] is None else f"{r['win_rate']:.2f}"
        wall = "–" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min"
        lines.append(f"| {r['task']} | `{Path(r['config']).name}` | {steps} | {ours} | {per_seed} | {win} | {wall} | "
                     f"{r['reference']} |")
    lines += ["", seed_note, "Wall clock: the median trial's, with the other trials of the sweep sharing the machine."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=[t.key for t in SUITE], help="default: every task")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--tuning-seeds", type=int, nargs="*", default=TUNING_SEEDS)
    parser.add_argument("--set", action="append", default=[], help="override for every trial")
    parser.add_argument("--jobs", type=int, help="trials at a time (default one per core)")
    parser.add_argument("--out", help="the sweep directory (new or empty)")
    parser.add_argument("--resume", metavar="DIR", help="continue a stopped suite sweep")
    parser.add_argument("--md", help="also write the table to this file")
    args = parser.parse_args(argv)
    if not (args.out or args.resume):
        parser.error("give --out DIR (or --resume DIR)")

    from benchmarks.learning import sweep_command
    from marl.cli import main as marl
    from marl.compare import seed_report

    chosen = [t for t in SUITE if not args.tasks or t.key in args.tasks]
    skipped = [t for t in chosen if _extra_missing(t)]
    for t in skipped:
        print(f"skipping {t.key}: its env needs the optional extra (pip install -e '.[{t.extra}]')")
    tasks = [t for t in chosen if t not in skipped]
    if not tasks:
        print("no task left to run")
        return 1
    out = Path(args.resume or args.out)
    if args.resume:
        code = marl(["sweep", "--resume", str(out)] + (["--jobs", str(args.jobs)] if args.jobs else []))
    else:
        code = marl(sweep_command([t.path for t in tasks], args.seeds, str(out), args.set, args.jobs))
    summary = json.loads((out / "summary.json").read_text())
    planned = {t["config"] for t in summary["trials"]}
    overrides = summary["trials"][0]["overrides"] if summary["trials"] else []
    rows = suite_rows(summary, [t for t in SUITE if t.path in planned], overrides)
    seeds = seed_report(sorted({t["seed"] for t in summary["trials"]}), args.tuning_seeds)
    table = suite_markdown(rows, seeds["seed_note"])
    (out / "suite.md").write_text(table)
    if args.md:
        Path(args.md).write_text(table)
    print(table)
    return code


if __name__ == "__main__":
    sys.exit(main())
