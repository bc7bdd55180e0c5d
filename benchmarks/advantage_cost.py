"""Cost of the advantage modules.

    python benchmarks/advantage_cost.py

Table 1: the share of a full update (``CreditLearner.update``: advantages + all PPO minibatch steps)
spent computing advantages and critic targets (``CreditLearner.prepare``), for every module on
mpe2 simple_spread with N = 3 agents, and for COMA also with N = 8.

Table 2: time of the pure functions ``gae``, ``td_lambda`` and ``coma_advantage`` on random
``[T = 25·k, B = 64, N]`` batches, to show the cost grows linearly in T·B·N (and in |A| for COMA):
the last column, microseconds per element, stays flat when the work is linear.

Table 3: Shapley credit (``shapley_credit`` with a small MLP as the coalition critic) for M sampled
orderings and N agents: M·N critic rows per step, never 2^N coalitions. The time per critic row
grows only with the row's width (S + N·A + N inputs), where an exact Shapley value would double its
number of critic evaluations with every agent.

Table 4: difference rewards by re-simulation (``env.reward: difference``) against shared rewards:
collection time of one rollout on the PettingZoo path and on the batched twin. The counterfactual
costs one env copy and N extra env steps per step, so on the PettingZoo path collection slows by
roughly (1 + N)× plus the copies; on the twin the N extra steps are batched tensor ops.
"""
from __future__ import annotations

import argparse
import time

import torch


def _best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def update_share(repeats: int) -> None:
    from marl.config import load_config
    from marl.trainer import Trainer

    print("| module | N agents | advantage + targets (ms) | full update (ms) | advantage share |")
    print("|---|---|---|---|---|")
    cases = [(m, 3) for m in ("gae", "td_lambda", "n_step", "mc", "coma", "coma_lambda", "shapley", "dop")] + \
        [("coma", 8), ("shapley", 8), ("dop", 8)]
    for module, n in cases:
        cfg = load_config("configs/spread_mappo.yaml", [f"algo.advantage={module}", f"env.kwargs.N={n}",
                                                        "train.progress=false"])
        trainer = Trainer(cfg, None)
        trainer.collect()
        batch = trainer.rollout.tensors()
        prep = _best_of(lambda: trainer.learner.prepare(batch, trainer.generator), repeats)
        full = _best_of(lambda: trainer.learner.update(batch, trainer.generator), max(2, repeats // 3))
        trainer.close()
        print(f"| {module} | {n} | {prep * 1e3:.1f} | {full * 1e3:.1f} | {prep / full:.1%} |")


def scaling(repeats: int) -> None:
    from marl.algorithms import coma_advantage, gae, td_lambda

    print("\n| function | T | B | N | A | time (ms) | µs per T·B·N(·A) element |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for name in ("gae", "td_lambda", "coma"):
        for k, n, a in [(1, 3, 5), (4, 3, 5), (4, 8, 5), (4, 16, 5), (16, 16, 5)] + \
                       ([(4, 8, 10), (4, 8, 20)] if name == "coma" else []):
            T, B = 25 * k, 64
            if name == "coma":
                q, logits = torch.randn(T, B, n, a, generator=g), torch.randn(T, B, n, a, generator=g)
                actions = torch.randint(0, a, (T, B, n), generator=g)
                fn = lambda: coma_advantage(q, logits, actions)  # noqa: E731
                elements = T * B * n * a
            else:
                r, v, nv = (torch.randn(T, B, n, generator=g) for _ in range(3))
                done = torch.rand(T, B, n, generator=g) < 0.04
                f = gae if name == "gae" else td_lambda
                fn = lambda: f(r, v, nv, done, torch.zeros_like(done), gamma=0.99, lam=0.95)  # noqa: E731
                elements = T * B * n
            t = _best_of(fn, repeats)
            print(f"| {name} | {T} | {B} | {n} | {a if name == 'coma' else '-'} | {t * 1e3:.2f} | "
                  f"{t / elements * 1e6:.3f} |")


def shapley_scaling(repeats: int) -> None:
    from marl.algorithms.shapley import shapley_credit

    print("\n| Shapley: M orderings | N agents | critic rows per step (M·N) | coalitions of exact Shapley (2^N) | "
          "time per step batch (ms) | µs per critic row |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    A, rows, S = 5, 1600, 32              # 1,600 (t, b) steps per call: a 25 x 64 rollout
    for n in (3, 8, 16):
        critic = torch.nn.Sequential(torch.nn.Linear(S + n * A + n, 64), torch.nn.ReLU(), torch.nn.Linear(64, A))
        state, logits = torch.randn(rows, S, generator=g), torch.randn(rows, n, A, generator=g)
        actions = torch.randint(0, A, (rows, n), generator=g)
        for m in (1, 4, 8, 16):
            with torch.no_grad():
                t = _best_of(lambda: shapley_credit(critic, state, logits, actions, None, m, g), repeats)  # noqa: B023
            print(f"| {m} | {n} | {m * n} | {2 ** n:,} | {t * 1e3:.1f} | {t / (rows * m * n) * 1e6:.3f} |")


def difference_cost(repeats: int) -> None:
    from marl.config import load_config
    from marl.trainer import Trainer

    print("\n| path | reward mode | env steps per rollout | collection (ms) | × shared |")
    print("|---|---|---|---|---|")
    for path, config, extra in (("PettingZoo (32 envs)", "configs/spread_mappo.yaml", []),
                                ("batched twin (256 envs)", "configs/spread_fast.yaml", [])):
        times = {}
        for mode in ("shared", "difference"):
            cfg = load_config(config, [f"env.reward={mode}", "env.team_reward=sum", "train.progress=false", *extra])
            trainer = Trainer(cfg, None)
            times[mode] = _best_of(trainer.collect, max(2, repeats // 3))
            steps = trainer.steps_per_iteration
            trainer.close()
            print(f"| {path} | {mode} | {steps:,} | {times[mode] * 1e3:.0f} | {times[mode] / times['shared']:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    update_share(args.repeats)
    scaling(args.repeats)
    shapley_scaling(args.repeats)
    difference_cost(args.repeats)


if __name__ == "__main__":
    main()
