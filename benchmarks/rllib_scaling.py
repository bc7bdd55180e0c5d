"""RLlib scaling: env steps/s of ``backend: rllib`` with 0, 1 and 2 EnvRunners, and the local
backend on the same config for reference.

    python benchmarks/rllib_scaling.py                          # configs/spread_mappo.yaml
    python benchmarks/rllib_scaling.py --runners 0 2 --iterations 10 --set rllib.num_envs_per_env_runner=4

Each measurement runs in a fresh process with its own local Ray instance (``rllib.num_cpus``
CPUs, 2 by default), times ``--iterations`` training iterations after one warm-up iteration and
reports:

- env steps/s: env steps per wall-clock second of whole iterations (sampling, learning, weight sync);
- sampling env steps/s: env steps per second of the rest of the iteration (sampling and weight
  sync; the local backend: collection);
- update s/iteration: the Learner's share (connector pipeline, advantages, PPO epochs);
- startup s: ``ray.init`` plus building the Algorithm (EnvRunner actors, Learner).

With 0 EnvRunners the driver samples and learns in turn; with K > 0 the K EnvRunners sample in
parallel while the driver waits, then the driver learns while they wait (PPO is synchronous).
The machine may be shared: compare rows measured in the same run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time

DEFAULT_CONFIG = "configs/spread_mappo.yaml"


def measure_rllib(config: str, runners: int, iterations: int, overrides: list[str]) -> dict:
    import torch

    from marl.config import load_config
    from marl.rllib.trainer import RLlibTrainer

    torch.set_num_threads(1)
    cfg = load_config(config, ["backend=rllib", f"rllib.num_env_runners={runners}", "train.progress=false",
                               *overrides])
    start = time.perf_counter()
    trainer = RLlibTrainer(cfg, None)
    startup = time.perf_counter() - start
    try:
        trainer._train_once()  # warm-up, not timed
        steps = sample_s = update_s = 0.0
        start = time.perf_counter()
        for _ in range(iterations):
            t0 = time.perf_counter()
            trainer._update_s = 0.0
            result = trainer._train_once()
            steps += result["env_runners"]["num_env_steps_sampled"]
            update_s += trainer._update_s  # the Learner update, timed by the trainer
            sample_s += time.perf_counter() - t0 - trainer._update_s
        wall = time.perf_counter() - start
    finally:
        trainer.close()
    return {"env_steps_per_s": steps / wall, "sampling_env_steps_per_s": steps / sample_s,
            "update_s": update_s / iterations, "startup_s": startup, "steps_per_iteration": steps / iterations}


def measure_local(config: str, iterations: int, overrides: list[str]) -> dict:
    import torch

    from marl.config import load_config
    from marl.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(config, ["train.progress=false", *overrides])
    start = time.perf_counter()
    trainer = Trainer(cfg, None)
    startup = time.perf_counter() - start
    try:
        trainer.collect()
        trainer.update()  # warm-up, not timed
        collect_s = update_s = 0.0
        start = time.perf_counter()
        for _ in range(iterations):
            t0 = time.perf_counter()
            trainer.collect()
            t1 = time.perf_counter()
            trainer.update()
            collect_s += t1 - t0
            update_s += time.perf_counter() - t1
        wall = time.perf_counter() - start
    finally:
        trainer.close()
    steps = iterations * trainer.steps_per_iteration
    return {"env_steps_per_s": steps / wall, "sampling_env_steps_per_s": steps / collect_s,
            "update_s": update_s / iterations, "startup_s": startup, "steps_per_iteration": trainer.steps_per_iteration}


def _child(kind, args, queue) -> None:
    try:
        queue.put(measure_local(*args) if kind == "local" else measure_rllib(*args))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_isolated(kind: str, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"{kind} {args}: {result['error']}")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    parser.add_argument("--runners", type=int, nargs="+", default=[0, 1, 2], help="EnvRunner counts to measure")
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per measurement")
    parser.add_argument("--no-local", action="store_true", help="skip the local-backend reference row")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)

    rows = []
    if not args.no_local:
        rows.append(("local backend (1 process)", run_isolated("local", args.config, args.iterations, args.set)))
        print(f"  local: {rows[-1][1]['env_steps_per_s']:.0f} env steps/s", file=sys.stderr, flush=True)
    for k in args.runners:
        rows.append((f"rllib, {k} EnvRunner{'s' if k != 1 else ''}",
                     run_isolated("rllib", args.config, k, args.iterations, args.set)))
        print(f"  rllib {k}: {rows[-1][1]['env_steps_per_s']:.0f} env steps/s", file=sys.stderr, flush=True)
    steps = int(rows[-1][1]["steps_per_iteration"])
    print(f"{args.config}, {steps} env steps per iteration, {args.iterations} timed iterations"
          + (f", overrides {' '.join(args.set)}" if args.set else ""))
    print()
    print("| backend | env steps/s | sampling env steps/s | update s/iteration | startup s |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['env_steps_per_s']:,.0f} | {r['sampling_env_steps_per_s']:,.0f} | "
              f"{r['update_s']:.2f} | {r['startup_s']:.1f} |")


if __name__ == "__main__":
    main()
