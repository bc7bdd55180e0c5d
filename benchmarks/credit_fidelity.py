"""Credit-fidelity benchmark: every credit method on every diagnostic env.

    python benchmarks/credit_fidelity.py --seeds 0 1 --steps 10000

Each (env, method, seed) trains from the env's config in ``configs/`` with the method's overrides,
then scores the trained critic with ``marl.credit.credit_fidelity`` (uniformly random episodes,
Spearman rank correlation of advantages with the env's ``true_credit``). Prints a markdown table
of means over seeds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
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
}
# Only the lazy-agent env has per-agent reward terms; elsewhere every agent's own reward is the team's.
INDIVIDUAL = {"lazy_agent": ["env.reward=individual", "env.kwargs.rewards=own"]}


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per fidelity score")
    parser.add_argument("--envs", nargs="+", choices=list(ENVS), default=list(ENVS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write raw results here")
    args = parser.parse_args(argv)

    jobs = []
    for env in args.envs:
        methods = dict(METHODS)
        if env in INDIVIDUAL:
            methods["GAE, central V, individual"] = INDIVIDUAL[env]
        for method, overrides in methods.items():
            for seed in args.seeds:
                jobs.append({"env": env, "method": method, "config": ENVS[env], "set": overrides,
                             "seed": seed, "steps": args.steps, "episodes": args.episodes})
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        results = []
        for r in pool.imap_unordered(_run, jobs):
            results.append(r)
            print(f"  {r['env']} / {r['method']} / seed {r['seed']}: overall {r['score']['overall']:.3f}",
                  file=sys.stderr, flush=True)
    print("| env | method | fidelity overall | fidelity per step | lowest-credit agent (share) | greedy team return |")
    print("|---|---|---|---|---|---|")
    for env in args.envs:
        for method in list(METHODS) + (["GAE, central V, individual"] if env in INDIVIDUAL else []):
            rs = [r for r in results if r["env"] == env and r["method"] == method]
            if not rs:
                continue
            agents = rs[0]["agents"]
            shares = {a: statistics.mean(r["score"][f"share/{a}"] for r in rs) for a in agents}
            low = min(shares, key=shares.get)

            def mean(key):
                vals = [r["score"][key] for r in rs if r["score"][key] == r["score"][key]]
                return f"{statistics.mean(vals):.2f}" if vals else "n/a"
            ret = statistics.mean(r["eval_return"] for r in rs)
            print(f"| {env} | {method} | {mean('overall')} | {mean('per_step')} | {low} ({shares[low]:.2f}) | "
                  f"{ret:.1f} |")
    print(f"\n{len(args.seeds)} seeds, {args.steps:,} env steps each, {args.episodes} scoring episodes")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
