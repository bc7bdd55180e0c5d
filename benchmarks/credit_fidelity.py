"""Credit-fidelity benchmark: every credit method on every diagnostic env.

    python benchmarks/credit_fidelity.py --seeds 11 12 13 14 15 --steps 10000

Each (env, method, seed) trains from the env's config in ``configs/`` with the method's overrides
(on lazy_agent these are the ``configs/diag_lazy_agent_*.yaml`` variants: the env's common
settings with only the method switched; ``benchmarks/lazy_agent_credit.py`` runs those), then scores
the trained critic with ``marl.credit.credit_fidelity`` (uniformly random episodes, Spearman rank
correlation of advantages with the env's ``true_credit``). Prints a markdown table:
per (env, method) the interquartile mean (IQM) over seeds of each score, with a 95%
stratified-bootstrap confidence interval computed by ``rliable``, each agent's credit share (IQM and
CI), and the per-seed overall fidelity; and, on ``lazy_agent``, on how many seeds each method gives
agent_2 (whose effort is worth nothing) the lowest share. Report on seeds the configs were not tuned
on (they were tuned on seeds 0-2; the default seeds are 11-15); an overlap is flagged. All per-seed
results go to ``--json PATH`` (default: a new temporary folder) and the tables to ``--md PATH``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import math
import sys
import tempfile
from pathlib import Path

ENVS = {
    "climbing": "configs/diag_climbing.yaml",
    "penalty": "configs/diag_penalty.yaml",
    "lazy_agent": "configs/diag_lazy_agent.yaml",
    "delayed_chain": "configs/diag_delayed_chain.yaml",
}
METHODS = {
    "GAE, central V, shared": [],
    "TD(λ), central V, shared": ["algo.advantage=td_lambda"],
    "n-step (5), central V, shared": ["algo.advantage=n_step", "algo.n_step=5"],
    "MC, central V, shared": ["algo.advantage=mc"],
    "GAE, local V (IPPO), shared": ["algo.critic=local"],
    "COMA (PPO actor)": ["algo.advantage=coma", "algo.lam=0.8"],
    "COMA-λ (PPO actor)": ["algo.advantage=coma_lambda", "algo.lam=0.8"],
    "GAE, central V, mixed α=0.5": ["env.reward=mixed", "env.alpha=0.5"],
    "difference rewards (re-simulated), GAE": ["env.reward=difference"],
    "Shapley, M=8 (PPO actor)": ["algo.advantage=shapley", "algo.lam=0.8"],
    "Shapley-λ, M=8 (PPO actor)": ["algo.advantage=shapley_lambda", "algo.lam=0.8"],
    "DOP (PPO actor)": ["algo.advantage=dop", "algo.lam=0.8"],
    "DOP-λ (PPO actor)": ["algo.advantage=dop_lambda", "algo.lam=0.8"],
}
# Only the lazy-agent env has per-agent reward terms; elsewhere every agent's own reward is the team's.
INDIVIDUAL = {"lazy_agent": ["env.reward=individual", "env.kwargs.rewards=own"]}
LAZY_ENV, LAZY_AGENT = "lazy_agent", "agent_2"   # the agent whose effort the team reward ignores
TUNING_SEEDS = [0, 1, 2]
DEFAULT_SEEDS = [11, 12, 13, 14, 15]


def _run(job: dict) -> dict:
    import torch

    from marl.config import load_config
    from marl.credit import credit_fidelity
    from marl.evaluate import evaluate
    from marl.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(job["config"], [f"seed={job['seed']}", f"train.total_env_steps={job['steps']}",
                                      "train.progress=false", *job["set"]])
    trainer = Trainer(cfg, None)
    try:
        trainer.train()
        score = credit_fidelity(trainer, episodes=job["episodes"], seed=job["seed"])
        ret = evaluate(trainer.actor, cfg.env.id, cfg.env.kwargs, 16, seed=job["seed"])["team_return_mean"]
    finally:
        trainer.close()
    return {**job, "score": score, "agents": trainer.agents, "eval_return": ret}


def lowest_agent(score: dict, agents: list[str]) -> str | None:
    """The agent with the strictly lowest ``share/<agent>`` in ``score``, or None on a tie."""
    shares = {a: score[f"share/{a}"] for a in agents}
    low = min(shares, key=shares.get)
    return low if sum(v == shares[low] for v in shares.values()) == 1 else None


def summarise(results: list[dict], envs: list[str], reps: int) -> list[dict]:
    """One row per (env, method): IQM and 95% CI (rliable) of the fidelity scores, the shares and the
    greedy return; on lazy_agent, the seeds on which agent_2 has the lowest share."""
    import numpy as np

    from marl.compare import bootstrap_interval, iqm_interval

    rows = []
    for env in envs:
        for method in list(METHODS) + (["GAE, central V, individual"] if env in INDIVIDUAL else []):
            rs = sorted((r for r in results if r["env"] == env and r["method"] == method), key=lambda r: r["seed"])
            if not rs:
                continue
            agents = rs[0]["agents"]
            shares = np.array([[r["score"][f"share/{a}"] for a in agents] for r in rs])
            point, low, high, n = bootstrap_interval(shares, "iqm", reps)
            share = {a: {"iqm": float(point[j]), "ci": [float(low[j]), float(high[j])] if n > 1 else None,
                         "per_seed": shares[:, j].tolist()} for j, a in enumerate(agents)}
            row = {"env": env, "method": method, "seeds": [r["seed"] for r in rs], "agents": agents,
                   "overall": iqm_interval([r["score"]["overall"] for r in rs], reps),
                   "per_step": iqm_interval([r["score"]["per_step"] for r in rs], reps),
                   "eval_return": iqm_interval([r["eval_return"] for r in rs], reps),
                   "share": share, "lowest": lowest_agent({f"share/{a}": share[a]["iqm"] for a in agents}, agents),
                   "per_seed_overall": [r["score"]["overall"] for r in rs],
                   "per_seed_lowest": [lowest_agent(r["score"], agents) for r in rs]}
            if env == LAZY_ENV:
                hits = sum(a == LAZY_AGENT for a in row["per_seed_lowest"])
                row["lazy_agent_lowest"] = {"seeds": hits, "of": len(rs), "every_seed": hits == len(rs)}
            rows.append(row)
    return rows


def tables_markdown(rows: list[dict], reps: int) -> str:
    from marl.compare import format_interval

    def ci(d, digits=2):
        return format_interval(d["iqm"], d["ci"], digits)

    def seed_value(x):
        return "n/a" if x is None or x != x else f"{x:.2f}"

    lines = ["| env | method | seeds | fidelity overall: IQM [95% CI] | fidelity per step: IQM [95% CI] | "
             "credit share per agent: IQM [95% CI] | lowest-credit agent (IQM share) | greedy team return: "
             "IQM [95% CI] | fidelity overall per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        seeds = ", ".join(str(s) for s in row["seeds"])
        shares = "; ".join(f"{a} {ci(v)}" for a, v in row["share"].items())
        low = row["lowest"]
        low = f"{low} ({row['share'][low]['iqm']:.2f})" if low else f"tie ({min(v['iqm'] for v in row['share'].values()):.2f})"
        per_seed = ", ".join(f"s{s}: {seed_value(x)}" for s, x in zip(row["seeds"], row["per_seed_overall"]))
        lines.append(f"| {row['env']} | {row['method']} | {seeds} | {ci(row['overall'])} | {ci(row['per_step'])} | "
                     f"{shares} | {low} | {ci(row['eval_return'], 1)} | {per_seed} |")
    lazy = [row for row in rows if row["env"] == LAZY_ENV]
    if lazy:
        lines += ["", f"{LAZY_ENV}: is {LAZY_AGENT} (whose effort the team reward ignores) the lowest-credit agent "
                  f"on every seed?", "",
                  f"| method | seeds where {LAZY_AGENT} has the lowest share | every seed | lowest-credit agent per seed |",
                  "|---|---|---|---|"]
        for row in lazy:
            hit = row["lazy_agent_lowest"]
            per_seed = ", ".join(f"s{s}: {a or 'tie'}" for s, a in zip(row["seeds"], row["per_seed_lowest"]))
            lines.append(f"| {row['method']} | {hit['seeds']}/{hit['of']} | {'yes' if hit['every_seed'] else 'no'} | "
                         f"{per_seed} |")
    lines += ["", f"IQM = interquartile mean over seeds; 95% stratified-bootstrap CI from rliable ({reps:,} "
              "resamples; none for a single seed). NaN fidelity scores (constant advantages) are left out."]
    return "\n".join(lines)


def _plain(value):
    """JSON-safe copy: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def main(argv=None) -> None:
    from marl.compare import seed_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help="seeds to report on, not ones the configs were tuned on (default 11-15)")
    parser.add_argument("--tuning-seeds", type=int, nargs="*", default=TUNING_SEEDS,
                        help="seeds the configs were tuned on (default 0 1 2); an overlap is flagged")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per fidelity score")
    parser.add_argument("--envs", nargs="+", choices=list(ENVS), default=list(ENVS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--bootstrap-reps", type=int, default=5_000, help="bootstrap resamples of the CIs")
    parser.add_argument("--json", help="write the per-seed results and the table here "
                                       "(default credit_fidelity.json in a new temporary folder)")
    parser.add_argument("--md", help="also write the markdown tables here")
    parser.add_argument("--methods", nargs="+", metavar="SUBSTRING",
                        help="only the methods whose label contains one of these (e.g. Shapley DOP)")
    args = parser.parse_args(argv)

    seeds = seed_report(args.seeds, args.tuning_seeds)
    if not seeds["held_out"]:
        print(seeds["seed_note"], file=sys.stderr, flush=True)
    jobs = []
    for env in args.envs:
        methods = dict(METHODS)
        if env in INDIVIDUAL:
            methods["GAE, central V, individual"] = INDIVIDUAL[env]
        for method, overrides in methods.items():
            if args.methods and not any(part.lower() in method.lower() for part in args.methods):
                continue
            for seed in args.seeds:
                jobs.append({"env": env, "method": method, "config": ENVS[env], "set": overrides,
                             "seed": seed, "steps": args.steps, "episodes": args.episodes})
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        results = []
        for r in pool.imap_unordered(_run, jobs):
            results.append(r)
            print(f"  {r['env']} / {r['method']} / seed {r['seed']}: overall {r['score']['overall']:.3f}",
                  file=sys.stderr, flush=True)
    rows = summarise(results, args.envs, args.bootstrap_reps)
    md = (tables_markdown(rows, args.bootstrap_reps) + f"\n\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), "
          f"{args.steps:,} env steps each, {args.episodes} scoring episodes. {seeds['seed_note']}")
    print(md)
    json_path = Path(args.json) if args.json else Path(tempfile.mkdtemp(prefix="marl-fidelity-")) / "credit_fidelity.json"
    json_path.write_text(json.dumps(_plain({**seeds, "steps": args.steps, "episodes": args.episodes,
                                            "bootstrap_reps": args.bootstrap_reps, "table": rows,
                                            "results": results}), indent=2, default=str))
    if args.md:
        Path(args.md).write_text(md + "\n")
    print(f"\nresults in {json_path}")


if __name__ == "__main__":
    main()
