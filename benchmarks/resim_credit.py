"""Re-simulated credit (``algo.advantage: resim``) against the oracle on simple_spread and on LBF,
and its learning against MAPPO (GAE) at equal env steps and equal wall clock.

    python benchmarks/resim_credit.py tune --seeds 0 1 2 --steps 500000
    python benchmarks/resim_credit.py report --seeds 11 12 13 14 15 --steps 500000 --wall-seeds 11 12 13
    python benchmarks/resim_credit.py tune --task lbf --seeds 0 --steps 300000 --grid 3x2 6x2 10x1 10x2
    python benchmarks/resim_credit.py report --task lbf --resim 6x2 --seeds 11 12 13 --steps 300000

``--task``: ``spread`` compares ``configs/spread_credit.yaml`` (as shipped) with
``configs/spread_fast.yaml``; ``lbf`` compares ``configs/lbf_fast.yaml`` with
``algo.advantage=resim`` (H x K from ``--resim``) with lbf_fast itself (GAE), both on the LBF twin.

``tune``: trains the task's GAE config (MAPPO) for ``--steps`` on each seed, then scores the re-simulated
advantage for every (H, K) of ``--grid`` on that policy against one oracle (``--states`` states,
``--rollouts`` continuations to the episode's end): the estimator's fidelity and cost, per seed.

``report``: trains the task's resim config and its GAE config for ``--steps`` on
each seed in the same period, scores both with the oracle (``marl.oracle.oracle_fidelity``), and
reads the final greedy evaluation (``eval.json``, on the package env). With ``--wall-seeds``,
the GAE config is also trained for as many env steps as it takes in the wall clock of the resim run
on that seed (its own lr schedule over that budget): learning at equal wall clock. Prints markdown
tables (IQM with a 95% stratified-bootstrap CI, and per seed); everything goes to ``--out``.
Runs ``--jobs`` trainings at once (each single-threaded), ``nice``-d.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = {   # task: (resim config, GAE config, overrides that make the resim config re-simulate)
    "spread": ("configs/spread_credit.yaml", "configs/spread_fast.yaml", []),
    "lbf": ("configs/lbf_fast.yaml", "configs/lbf_fast.yaml", ["algo.advantage=resim"]),
}
GRID = ["1x4", "3x2", "5x1", "5x2", "10x1", "10x2", "25x1"]   # H x K


def train(config: str, run_dir: Path, seed: int, steps: int, sets: list[str] = ()) -> dict:
    """Train ``config`` (with ``--set`` overrides ``sets``) in a subprocess; returns the run's wall
    clock, final eval and throughput."""
    if not (run_dir / "eval.json").is_file():
        cmd = ["nice", "-n", "5", sys.executable, "-m", "marl.cli", "train", config, "--run-dir", str(run_dir),
               "--set", f"seed={seed}", "--set", f"train.total_env_steps={steps}", "--set", "train.progress=false"]
        cmd += [arg for kv in sets for arg in ("--set", kv)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run_dir / "eval.json").read_text())
    return {"run": str(run_dir), "seed": seed, "env_steps": records[-1]["env_steps"],
            "wall_s": records[-1]["perf/wall_s"], "eval_return": final["team_return_mean"],
            "sampled_return": final.get("sampled", {}).get("team_return_mean"),
            "resim_simulated_steps": sum(r.get("resim/simulated_steps", 0) for r in records),
            "resim_seconds": sum(r.get("resim/seconds", 0.0) for r in records)}


def score(run_dir: Path, states: int, rollouts: int) -> dict:
    from marl.oracle import oracle_fidelity
    from marl.run import load_trainer

    trainer = load_trainer(run_dir)
    try:
        return oracle_fidelity(trainer, states=states, rollouts=rollouts)
    finally:
        trainer.close()


def tune(args) -> dict:
    """Fidelity of the resim estimator per (H, K), on MAPPO policies at ``--steps``."""
    import numpy as np

    from marl.oracle import oracle_advantages, sample_states, score_credit
    from marl.run import load_run_config, load_trainer
    from marl.trainer import Trainer

    fast = TASKS[args.task][1]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: train(fast, args.out / f"fast_s{s}", s, args.steps), args.seeds))
    out = {}
    for run in runs:
        run_dir = Path(run["run"])
        mappo = load_trainer(run_dir)
        oracle = oracle_advantages(mappo, states=args.states, rollouts=args.rollouts)
        gae = score_credit(oracle["advantage"], oracle["oracle"], oracle["oracle_se"], list(mappo.agents))
        actor = mappo.learner.actor.state_dict()
        mappo.close()
        rows = {"gae": {"spearman": gae["spearman"], "sign_agreement": gae["sign_agreement"]},
                "oracle_reliability": score_credit(oracle["advantage"], oracle["oracle"], oracle["oracle_se"], [],
                                                   halves=oracle["oracle_halves"])["oracle_reliability"]}
        for hk in args.grid:
            h, k = (int(x) for x in hk.split("x"))
            cfg = load_run_config(run_dir)
            cfg.algo.advantage, cfg.algo.resim_horizon, cfg.algo.resim_rollouts = "resim", h, k
            trainer = Trainer(cfg, None)
            trainer.learner.actor.load_state_dict(actor)
            t0 = time.perf_counter()
            sampled, _ = sample_states(trainer, 32, args.states, 0)
            seconds = time.perf_counter() - t0
            adv = np.stack([st.advantage for st in sampled])
            s = score_credit(adv, oracle["oracle"], oracle["oracle_se"], list(trainer.agents), halves=None)
            rows[hk] = {"spearman": s["spearman"], "sign_agreement": s["sign_agreement"],
                        "twin_steps_per_env_step": trainer.venv.n_agents * trainer.venv.n_actions * h * k,
                        "seconds_32_episodes": seconds}
            trainer.close()
        out[run["seed"]] = {"train": run, "scores": rows}
        print(json.dumps({run["seed"]: rows}), flush=True)
    return out


def report(args) -> dict:
    from marl.compare import format_interval, iqm_interval

    credit, fast_config, sets = TASKS[args.task]
    if args.resim:
        h, k = args.resim.split("x")
        sets = [*sets, f"algo.resim_horizon={h}", f"algo.resim_rollouts={k}"]
    names = {"resim": f"resim ({Path(credit).name}{', ' + args.resim if args.resim else ''})",
             "fast": f"GAE ({Path(fast_config).name})"}

    def both(seed):
        resim = train(credit, args.out / f"credit_s{seed}", seed, args.steps, sets)
        fast = train(fast_config, args.out / f"fast_s{seed}", seed, args.steps)
        return seed, resim, fast

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(both, args.seeds))
    wall = {}
    if args.wall_seeds:
        def equal_wall(item):
            seed, resim, fast = item
            steps = round(args.steps * resim["wall_s"] / fast["wall_s"] / 6400) * 6400
            return seed, train(fast_config, args.out / f"fast_wall_s{seed}", seed, steps)
        with ThreadPoolExecutor(args.jobs) as pool:
            wall = dict(pool.map(equal_wall, [r for r in runs if r[0] in args.wall_seeds]))
    rows = []
    for seed, resim, fast in runs:
        rows.append({"seed": seed, "resim": {**resim, "oracle": score(Path(resim["run"]), args.states, args.rollouts)},
                     "fast": {**fast, "oracle": score(Path(fast["run"]), args.states, args.rollouts)},
                     "fast_wall": wall.get(seed)})
        print(json.dumps({"seed": seed, "resim_spearman": rows[-1]["resim"]["oracle"]["spearman"],
                          "gae_spearman": rows[-1]["fast"]["oracle"]["spearman"]}), flush=True)
    seeds = ", ".join(str(r["seed"]) for r in rows)
    lines = [(f"| method | oracle Spearman, IQM [95% CI] | per seed ({seeds}) | oracle reliability | sign agreement | "
              f"greedy return at {args.steps:,} steps | sampled return | wall s |"), "|---|---|---|---|---|---|---|---|"]
    def listed(values, digits=1):
        return ", ".join(f"{x:.{digits}f}" for x in values)

    digits = 2 if args.task == "lbf" else 1   # LBF's team return is in [0, 1]

    for key, name in names.items():
        sp = [r[key]["oracle"]["spearman"] for r in rows]
        rel = iqm_interval([r[key]["oracle"]["oracle_reliability"] for r in rows])
        sign = iqm_interval([r[key]["oracle"]["sign_agreement"] for r in rows])
        ret = iqm_interval([r[key]["eval_return"] for r in rows])
        wall_s = iqm_interval([r[key]["wall_s"] for r in rows])
        i = iqm_interval(sp)
        returns = listed([r[key]["eval_return"] for r in rows], digits)
        sampled = listed([r[key]["sampled_return"] for r in rows if r[key]["sampled_return"] is not None], 2)
        lines.append(f"| {name} | {format_interval(i['iqm'], i['ci'], 2)} | {listed(sp, 2)} | "
                     f"{rel['iqm']:.2f} | {sign['iqm']:.2f} | {format_interval(ret['iqm'], ret['ci'], digits)} "
                     f"({returns}) | {sampled} | {wall_s['iqm']:.0f} |")
    if wall:
        w = [wall[r["seed"]] for r in rows if r["seed"] in wall]
        ret = iqm_interval([x["eval_return"] for x in w])
        steps = ", ".join(f"{x['env_steps']:,}" for x in w)
        returns = listed([x["eval_return"] for x in w], digits)
        lines.append(f"| GAE at resim's wall clock ({steps} steps) | | | | | "
                     f"{format_interval(ret['iqm'], ret['ci'], digits)} ({returns}) "
                     f"| {listed([x['sampled_return'] or float('nan') for x in w], 2)} "
                     f"| {sum(x['wall_s'] for x in w) / len(w):.0f} |")
    sim = sum(r["resim"]["resim_simulated_steps"] for r in rows) / sum(r["resim"]["env_steps"] for r in rows)
    lines.append("")
    resim_wall = sum(r["resim"]["wall_s"] for r in rows)
    share = sum(r["resim"]["resim_seconds"] for r in rows) / resim_wall
    ratio = resim_wall / sum(r["fast"]["wall_s"] for r in rows)
    lines.append(f"resim cost: {sim:.0f} twin steps per env step; re-simulation {share:.0%} of its wall clock; wall "
                 f"per env step {ratio:.1f}x GAE's (same host, same period).")
    table = "\n".join(lines)
    print(table)
    (args.out / "report.md").write_text(table + "\n")
    return {"rows": rows, "table": table}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("tune", "report"))
    parser.add_argument("--task", choices=tuple(TASKS), default="spread")
    parser.add_argument("--resim", default=None, help="H x K of the resim run (report), e.g. 6x2; default: the config's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    parser.add_argument("--wall-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--grid", nargs="+", default=GRID, help="H x K pairs for tune, e.g. 5x2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        import tempfile
        args.out = Path(tempfile.mkdtemp(prefix="resim_credit_"))
    args.out.mkdir(parents=True, exist_ok=True)
    result = tune(args) if args.mode == "tune" else report(args)
    (args.out / f"{args.mode}.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
