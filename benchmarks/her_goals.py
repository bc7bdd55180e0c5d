"""Hindsight relabelling on GridGoals (sparse team reward): ``algo.her`` against ``none`` at the same
budget and seeds, beside the scripted optimum, in one run.

    python benchmarks/her_goals.py                                   # seeds 11-13, configs/goals_qmix.yaml
    python benchmarks/her_goals.py --steps 30000 --set "env.kwargs={n_agents: 2, size: 4, max_steps: 10}" \
        --set algo.replay_chunk=10 --set algo.rollout_steps=10          # the slow test's small grid

Each seed trains ``configs/goals_qmix.yaml`` (plus ``--set`` overrides) once per ``--her`` value,
then evaluates the greedy policy on the evaluation episodes. The scripted optimum is each agent
walking straight to its goal (``GridGoals.scripted_actions``), on the same evaluation resets.
Prints a markdown table of the greedy team returns and their share of the optimum.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "goals_qmix.yaml"


def scripted_optimum(kwargs: dict, episodes: int, seed: int) -> float:
    """The mean team return (summed over agents) of the scripted optimum on the evaluation resets of
    ``marl.evaluate.evaluate(..., episodes, seed)``."""
    from marl.envs.goals import grid_goals
    from marl.evaluate import EVAL_SEED_OFFSET

    env = grid_goals(**kwargs)
    returns = []
    for i in range(episodes):
        env.reset(seed=EVAL_SEED_OFFSET + seed * 100_003 + i)
        returns.append(env.n_agents * env.optimal_return())
    return float(np.mean(returns))


def run(her: str, seed: int, steps: int, overrides: list[str], episodes: int) -> tuple[float, float]:
    """Train one config; returns (greedy team return, its scripted optimum)."""
    from marl.config import load_config
    from marl.evaluate import evaluate
    from marl.trainer import Trainer

    cfg = load_config(CONFIG, [f"seed={seed}", f"algo.her={her}", f"train.total_env_steps={steps}",
                               f"algo.epsilon_anneal_steps={steps // 2}", "train.progress=false", *overrides])
    trainer = Trainer(cfg)
    try:
        trainer.train(progress=False)
        out = evaluate(trainer.actor, cfg.env.id, cfg.env.kwargs, episodes, seed=seed)
    finally:
        trainer.close()
    return out["team_return_mean"], scripted_optimum(cfg.env.kwargs, episodes, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--her", nargs="+", default=["future", "none"])
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print(f"| her | seed | greedy team return | scripted optimum | share | seconds |  ({args.steps} env steps, "
          f"{' '.join(args.overrides) or 'no overrides'})")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        for her in args.her:
            start = time.time()
            ret, best = run(her, seed, args.steps, args.overrides, args.episodes)
            print(f"| {her} | {seed} | {ret:.2f} | {best:.2f} | {ret / best:.2f} | {time.time() - start:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
