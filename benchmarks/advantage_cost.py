"""Cost of the advantage modules.

    python benchmarks/advantage_cost.py

Table 1: the share of a full update (``CreditLearner.update``: advantages + all PPO minibatch steps)
spent computing advantages and critic targets (``CreditLearner.prepare``), for every module on
mpe2 simple_spread with N = 3 agents, and for COMA also with N = 8.

Table 2: time of the pure functions ``gae``, ``td_lambda`` and ``coma_advantage`` on random
``[T = 25·k, B = 64, N]`` batches, to show the cost grows linearly in T·B·N (and in |A| for COMA):
the last column, microseconds per element, stays flat when the work is linear.
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
    cases = [(m, 3) for m in ("gae", "td_lambda", "n_step", "mc", "coma", "coma_lambda")] + [("coma", 8)]
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    update_share(args.repeats)
    scaling(args.repeats)


if __name__ == "__main__":
    main()
