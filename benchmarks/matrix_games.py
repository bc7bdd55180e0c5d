"""Which joint action each mixer of the q learner converges to on the one-shot matrix games
(``diag:climbing``, ``diag:penalty``), over seeds, with the data coverage behind it.

    python benchmarks/matrix_games.py                     # 5 seeds, 3,000 env steps each
    python benchmarks/matrix_games.py --seeds 11 12 --steps 6000

For each game × mixer × seed: train ``algo.learner: q`` (8 envs, ε annealed 1 → 0.05 over half the
budget), then read the greedy joint action (the argmax of each agent's utility: the observation is
constant) and its payoff. Coverage is the share of the replay's joint actions that are optimal
(uniform play gives 1/9 on climbing, 2/9 on penalty). Prints a markdown table.
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch

GAMES = {"climbing": ("diag:climbing", {}, 11.0), "penalty": ("diag:penalty", {"k": -100.0}, 10.0)}
MIXERS = ("none", "vdn", "qmix", "qplex")


def config(env_id: str, kwargs: dict, mixer: str, steps: int, seed: int) -> dict:
    return {"seed": seed, "env": {"id": env_id, "kwargs": kwargs, "num_envs": 8},
            "algo": {"learner": "q", "mixer": mixer, "rollout_steps": 1, "lr": 0.001, "lam": 0.6,
                     "epsilon_anneal_steps": steps // 2, "replay_chunk": 1, "buffer_size": 500, "batch_size": 32,
                     "target_every": 25, "updates_per_rollout": 4},
            "model": {"hidden": 32},
            "train": {"total_env_steps": steps, "eval_episodes": 0, "checkpoint_every": 10_000, "progress": False},
            "log": {"fidelity_every": 0, "credit_image_every": 0, "histogram_every": 0}}


def run(game: str, mixer: str, steps: int, seed: int) -> tuple[tuple[int, ...], float, float]:
    """The greedy joint action, its payoff and the replay's share of optimal joint actions."""
    from marl.config import config_from_dict
    from marl.trainer import Trainer

    env_id, kwargs, _ = GAMES[game]
    trainer = Trainer(config_from_dict(config(env_id, kwargs, mixer, steps, seed)))
    try:
        trainer.train(progress=False)
        obs = torch.ones(1, len(trainer.agents), trainer.venv.obs_dim)
        with torch.no_grad():
            joint = tuple(int(a) for a in trainer.actor.utilities(obs)[0].argmax(-1))
        replay = trainer.learner.replay
        actions = replay.ring.read(torch.arange(len(replay)))["actions"][:, 0].numpy()   # [slots, N]
        payoff = _payoff(game)
        coverage = float((payoff[actions[:, 0], actions[:, 1]] == payoff.max()).mean())
    finally:
        trainer.close()
    return joint, float(payoff[joint]), coverage


def _payoff(game: str):
    from marl.envs.diagnostic import ClimbingGame, PenaltyGame
    return ClimbingGame().payoff if game == "climbing" else PenaltyGame(k=-100.0).payoff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| game (optimum) | mixer | greedy joint actions over seeds {args.seeds} | mean payoff | optimum share of replay |")
    print("|---|---|---|---|---|")
    for game, (_, _, best) in GAMES.items():
        for mixer in MIXERS:
            results = [run(game, mixer, args.steps, seed) for seed in args.seeds]
            counts = Counter(joint for joint, _, _ in results)
            joints = ", ".join(f"{j} ×{n}" for j, n in counts.most_common())
            mean = sum(p for _, p, _ in results) / len(results)
            cover = sum(c for _, _, c in results) / len(results)
            print(f"| {game} ({best:g}) | {mixer} | {joints} | {mean:.1f} | {cover:.2f} |", flush=True)


if __name__ == "__main__":
    main()
