"""Learning benchmark: train configs over several seeds at a fixed env-step budget and report the
greedy-evaluation team return (the reward summed over agents and steps) and training speed.

    python benchmarks/learning.py configs/spread_mappo.yaml --seeds 11 12 13 14 15 --steps 200000

Report on seeds the configs were not tuned on: they were tuned on seeds 0-2 (``--tuning-seeds``),
and the default seeds are 11-15; a seed set that overlaps the tuning seeds is flagged in the
output. Each config's row gives the interquartile mean (IQM) of the per-seed returns with a 95%
stratified-bootstrap confidence interval computed by ``rliable``, the mean ± std, and every seed's
return.

Runs go to a temporary folder (or --out-dir) and are executed ``--jobs`` at a time in separate
processes. Prints a markdown table; the raw results, per seed, go to ``--json PATH`` (default
``learning.json`` in the run folder) and the table to ``--md PATH`` if given.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

TUNING_SEEDS = [0, 1, 2]        # the seeds the configs in configs/ were tuned on
DEFAULT_SEEDS = [11, 12, 13, 14, 15]


def _overrides(job: dict) -> list[str]:
    return [f"seed={job['seed']}", f"train.total_env_steps={job['steps']}", "train.progress=false",
            "train.eval_episodes=0"] + job["set"]


def _run_one(job: dict) -> dict:
    """Train and evaluate one job; a failure is returned as ``{"error": ...}``, not raised, so
    that the other runs go on."""
    import torch

    from marl.config import load_config
    from marl.evaluate import evaluate
    from marl.run import new_run

    torch.set_num_threads(1)
    try:
        cfg = load_config(job["config"], _overrides(job))
        trainer = new_run(cfg, job["run_dir"])
        try:
            summary = trainer.train(progress=False)
            result = evaluate(trainer.actor, cfg.env.id, cfg.env.kwargs, job["eval_episodes"], seed=job["seed"])
        finally:
            trainer.close()
    except Exception as exc:  # reported in the summary; the run directory keeps what was written
        return {"label": job["label"], "seed": job["seed"], "error": f"{type(exc).__name__}: {exc}"}
    return {"config": job["config"], "label": job["label"], "seed": job["seed"],
            "eval_return": result["team_return_mean"], "train_env_steps_per_s": summary["env_steps_per_s"],
            "wall_s": summary["wall_s"], "env_steps": summary["env_steps"], "run_dir": job["run_dir"]}


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in seeds) if seeds else "none"


def summarise(results: list[dict], reps: int = 10_000) -> list[dict]:
    """One row per config label: IQM of the per-seed eval returns with its 95% stratified-bootstrap
    CI (rliable), mean ± std, and the per-seed returns (sorted by seed)."""
    from marl.compare import iqm_interval

    rows = {}
    for r in results:
        rows.setdefault(r["label"], []).append(r)
    table = []
    for label, rs in rows.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        returns = [r["eval_return"] for r in rs]
        iqm = iqm_interval(returns, reps=reps)
        table.append({"label": label, "seeds": len(rs), "seed_list": [r["seed"] for r in rs],
                      "iqm": iqm["iqm"], "ci": iqm["ci"], "mean": statistics.mean(returns),
                      "std": statistics.pstdev(returns), "per_seed": returns,
                      "steps_per_s": statistics.median(r["train_env_steps_per_s"] for r in rs)})
    return table


def table_markdown(table: list[dict], steps: int, seeds: list[int], reps: int = 10_000) -> str:
    from marl.compare import format_interval

    lines = [f"| config | seeds | greedy team return at {steps:,} env steps: IQM [95% CI] | mean ± std | "
             f"per seed ({_seed_list(seeds)}) | train env steps/s (median) |", "|---|---|---|---|---|---|"]
    for row in table:
        by_seed = dict(zip(row["seed_list"], row["per_seed"]))
        d = 2 if max(abs(x) for x in row["per_seed"]) < 10 else 1   # LBF's returns lie in [0, 1]
        if row["seed_list"] == list(seeds):
            per_seed = ", ".join(f"{x:.{d}f}" for x in row["per_seed"])
        else:   # some runs failed (or extra seeds): name each seed
            per_seed = ", ".join(f"s{s}: {by_seed[s]:.{d}f}" if s in by_seed else f"s{s}: failed"
                                 for s in sorted(set(seeds) | set(by_seed)))
        lines.append(f"| {row['label']} | {row['seeds']} | **{format_interval(row['iqm'], row['ci'], d)}** | "
                     f"{row['mean']:.{d}f} ± {row['std']:.{d}f} | {per_seed} | {row['steps_per_s']:.0f} |")
    lines.append(f"\nIQM = interquartile mean over seeds; 95% stratified-bootstrap CI from rliable "
                 f"({reps:,} resamples; no CI for a single seed).")
    return "\n".join(lines)


def print_table(table: list[dict], steps: int, file=sys.stdout, seeds: list[int] | None = None,
                reps: int = 10_000) -> None:
    seeds = seeds if seeds is not None else sorted({s for row in table for s in row["seed_list"]})
    print(table_markdown(table, steps, seeds, reps), file=file)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="YAML configs; 'path.yaml@key=v,key=v' adds overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help="seeds to report on, not ones the config was tuned on (default 11-15)")
    parser.add_argument("--tuning-seeds", type=int, nargs="*", default=TUNING_SEEDS,
                        help="seeds the configs were tuned on (default 0 1 2); an overlap is flagged")
    parser.add_argument("--bootstrap-reps", type=int, default=10_000, help="bootstrap resamples of the CIs")
    parser.add_argument("--md", help="also write the markdown table to this file")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--eval-episodes", type=int, default=1000,
                        help="greedy episodes per run (a trained policy's team return varies by ~15 between episodes)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="override for every config")
    parser.add_argument("--out-dir", help="keep the run directories here")
    parser.add_argument("--json", help="write the raw per-seed results here (default learning.json in the run folder)")
    args = parser.parse_args(argv)

    from marl.compare import seed_report

    seeds = seed_report(args.seeds, args.tuning_seeds)
    if not seeds["held_out"]:
        print(seeds["seed_note"], file=sys.stderr, flush=True)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="marl-bench-"))
    jobs = []
    for spec in args.configs:
        path, _, extra = spec.partition("@")
        extra_set = [s for s in extra.split(",") if s]
        label = Path(path).stem + (f" ({', '.join(extra_set)})" if extra_set else "")
        for seed in args.seeds:
            run_dir = out_dir / f"{Path(path).stem}{'-' + '-'.join(extra_set) if extra_set else ''}-s{seed}"
            jobs.append({"config": path, "label": label, "seed": seed, "steps": args.steps,
                         "eval_episodes": args.eval_episodes, "set": args.set + extra_set,
                         "run_dir": str(run_dir).replace("=", "_")})
    from marl.config import ConfigError, load_config
    for job in jobs:   # bad configs or overrides stop here, in one line, before anything trains
        try:
            load_config(job["config"], _overrides(job))
        except ConfigError as exc:
            sys.exit(f"{job['label']}: {exc}")
    start = time.time()
    # Not a multiprocessing.Pool: its daemonic workers may not start env worker processes (env.workers).
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool:
        results, failed = [], []
        for future in as_completed([pool.submit(_run_one, job) for job in jobs]):
            r = future.result()
            if "error" in r:
                failed.append(r)
                print(f"  {r['label']} seed {r['seed']}: FAILED: {r['error']}", file=sys.stderr, flush=True)
                continue
            results.append(r)
            print(f"  {r['label']} seed {r['seed']}: {r['eval_return']:.2f} "
                  f"({r['train_env_steps_per_s']:.0f} steps/s)", file=sys.stderr, flush=True)
    table = summarise(results, args.bootstrap_reps)
    md = table_markdown(table, args.steps, args.seeds, args.bootstrap_reps) + "\n\n" + seeds["seed_note"]
    print(md)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else out_dir / "learning.json"
    json_path.write_text(json.dumps({**seeds, "steps": args.steps, "eval_episodes": args.eval_episodes,
                                     "bootstrap_reps": args.bootstrap_reps, "results": results, "failed": failed,
                                     "table": table}, indent=2))
    if args.md:
        Path(args.md).write_text(md + "\n")
    print(f"\n{len(jobs)} runs, {args.jobs} at a time, {time.time() - start:.0f} s wall; runs in {out_dir}; "
          f"results in {json_path}")
    if failed:
        sys.exit(f"{len(failed)} of {len(jobs)} runs failed: " + "; ".join(
            f"{r['label']} seed {r['seed']}: {r['error']}" for r in failed))


if __name__ == "__main__":
    main()
