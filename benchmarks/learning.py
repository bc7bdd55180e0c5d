"""Learning benchmark: train configs over several seeds at a fixed env-step budget and report the
greedy-evaluation team return (the reward summed over agents and steps) and training speed.

    python benchmarks/learning.py configs/spread_mappo.yaml --seeds 0 1 2 --steps 200000

Runs go to a temporary folder (or --out-dir) and are executed ``--jobs`` at a time in separate
processes. Prints a markdown table; ``--json PATH`` also writes the raw results.
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


def summarise(results: list[dict]) -> list[dict]:
    rows = {}
    for r in results:
        rows.setdefault(r["label"], []).append(r)
    table = []
    for label, rs in rows.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        returns = [r["eval_return"] for r in rs]
        table.append({"label": label, "seeds": len(rs), "mean": statistics.mean(returns),
                      "std": statistics.pstdev(returns), "per_seed": returns,
                      "steps_per_s": statistics.median(r["train_env_steps_per_s"] for r in rs)})
    return table


def print_table(table: list[dict], steps: int, file=sys.stdout) -> None:
    print(f"| config | seeds | greedy team return at {steps:,} env steps (mean ± std over seeds) | per seed | "
          f"train env steps/s (median) |", file=file)
    print("|---|---|---|---|---|", file=file)
    for row in table:
        per_seed = ", ".join(f"{x:.1f}" for x in row["per_seed"])
        print(f"| {row['label']} | {row['seeds']} | {row['mean']:.1f} ± {row['std']:.1f} | {per_seed} | "
              f"{row['steps_per_s']:.0f} |", file=file)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="YAML configs; 'path.yaml@key=v,key=v' adds overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--eval-episodes", type=int, default=1000,
                        help="greedy episodes per run (a trained policy's team return varies by ~15 between episodes)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="override for every config")
    parser.add_argument("--out-dir", help="keep the run directories here")
    parser.add_argument("--json", help="write raw results to this file")
    args = parser.parse_args(argv)

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
    table = summarise(results)
    print_table(table, args.steps)
    print(f"\n{len(jobs)} runs, {args.jobs} at a time, {time.time() - start:.0f} s wall; runs in {out_dir}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "failed": failed, "table": table}, indent=2))
    if failed:
        sys.exit(f"{len(failed)} of {len(jobs)} runs failed: " + "; ".join(
            f"{r['label']} seed {r['seed']}: {r['error']}" for r in failed))


if __name__ == "__main__":
    main()
