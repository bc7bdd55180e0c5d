"""Temporal-credit benchmark: where a learned reward model puts an outcome's reward.

    python benchmarks/temporal_credit.py --seeds 11 12 13

Trains ``configs/diag_delayed_chain_long.yaml`` (the deciding joint action at step 0, the only
reward at step 50, an RRD reward model in training) on each seed, then plays greedy-policy
episodes and reports, over the successful ones, the fraction of the redistributed reward (the
model's rewards shifted to sum to the episode's outcome, ``RewardRedistributor.redistribute``)
that lands on the deciding step, and the greedy return (optimum 2.0: both agents get 1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

CONFIG = "configs/diag_delayed_chain_long.yaml"


def run(seed: int, episodes: int, overrides: list[str]) -> dict:
    from marl.config import load_config
    from marl.credit import episode_venv, play_episode
    from marl.evaluate import evaluate
    from marl.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(CONFIG, [f"seed={seed}", "train.progress=false", *overrides])
    trainer = Trainer(cfg)
    start = time.perf_counter()
    try:
        trainer.train(progress=False)
        wall = time.perf_counter() - start
        greedy = evaluate(trainer.actor, cfg.env.id, cfg.env.kwargs, episodes, seed=seed)["team_return_mean"]
        venv, fractions = episode_venv(trainer), []
        decision = cfg.env.kwargs.get("decision_step", 0)
        for k in range(episodes):
            b = play_episode(trainer, venv, 1_000_000 + seed * 1000 + k, torch.Generator().manual_seed(k))
            outcome = b["raw_reward"][:, 0].sum()
            if outcome <= 0:
                continue
            features = trainer.redistribution.features(b)[:, 0]
            valid = torch.ones(1, features.shape[0], dtype=torch.bool)
            red = trainer.redistribution.model.redistribute(features[None], valid, outcome[None])[0]
            fractions.append(float(red[decision].sum() / red.sum()))
        venv.close()
    finally:
        trainer.close()
    return {"seed": seed, "greedy_return": greedy, "successful_episodes": len(fractions),
            "mass_on_deciding_step": float(np.mean(fractions)) if fractions else None, "wall_s": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = [run(seed, args.episodes, args.set) for seed in args.seeds]
    print("| seed | greedy return | successful episodes | reward mass on the deciding step | train s |")
    print("|---|---|---|---|---|")
    for r in rows:
        mass = "n/a" if r["mass_on_deciding_step"] is None else f"{r['mass_on_deciding_step']:.2f}"
        print(f"| {r['seed']} | {r['greedy_return']:.2f} | {r['successful_episodes']} | {mass} | {r['wall_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
