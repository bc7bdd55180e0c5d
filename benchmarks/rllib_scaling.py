"""RLlib scaling: env steps/s of ``backend: rllib`` with 0, 1 and 2 EnvRunners, next to stock RLlib
PPO on the same env and batch, and the local backend on the same config for reference.

    python benchmarks/rllib_scaling.py                          # configs/spread_mappo.yaml
    python benchmarks/rllib_scaling.py --runners 0 2 --iterations 10 --set rllib.num_envs_per_env_runner=4
    python benchmarks/rllib_scaling.py --runners 0 1 --iterations 2 --no-stock   # our backend only

Each measurement runs in a fresh process with its own local Ray instance (``rllib.num_cpus``
CPUs, 2 by default), times ``--iterations`` training iterations after one warm-up iteration and
reports:

- env steps/s: env steps per wall-clock second of whole iterations (sampling, learning, weight sync);
- sampling env steps/s: env steps per second of the rest of the iteration (sampling and weight
  sync; the local backend: collection);
- update s/iteration: the Learner's share (connector pipeline, advantages, PPO epochs);
- startup s: ``ray.init`` plus building the Algorithm (EnvRunner actors, Learner).

Stock RLlib PPO is RLlib with none of the project's pieces: the raw PettingZoo env of ``env.id``
and ``env.kwargs`` in RLlib's own ``ParallelPettingZooEnv``, one module shared by all agents,
RLlib's default PPO RLModule (``model.layers`` x ``model.hidden`` layers of ``model.activation``,
separate value network), and RLlib's default PPO Learner and connectors. Its batch settings
(agent-step train batch, minibatch, epochs, fragment length, EnvRunners, envs per EnvRunner, CPUs)
and PPO settings (lr, gamma, lambda, clip, entropy and value coefficients, no KL loss, global-norm
gradient clip at ``algo.max_grad_norm``) are read off ``build_config``'s ``PPOConfig`` for the
same config, so both sample and learn on the same numbers of rows. "× stock" is ours / stock env
steps/s with the same EnvRunners. What stays different is ours by design: the global state and
team reward, the padded observation plus agent id, the joint-action columns, the centralised
critic on the state and the project's advantages.

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


def _time_training(train, update_time, iterations: int) -> dict:
    """Times ``iterations`` calls of ``train`` (one ``Algorithm.train()``) after one warm-up call;
    ``update_time()`` gives the seconds spent in the Learner update so far."""
    train()  # warm-up, not timed
    steps, update_start, start = 0, update_time(), time.perf_counter()
    for _ in range(iterations):
        steps += train()["env_runners"]["num_env_steps_sampled"]
    wall = time.perf_counter() - start
    update_s = update_time() - update_start
    return {"env_steps_per_s": steps / wall, "sampling_env_steps_per_s": steps / (wall - update_s),
            "update_s": update_s / iterations, "steps_per_iteration": steps / iterations}


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
    try:  # the trainer times the Learner update itself
        return {**_time_training(trainer._train_once, lambda: trainer._update_s, iterations), "startup_s": startup}
    finally:
        trainer.close()


STOCK_ENV = "stock_pettingzoo_env"


def stock_config(cfg, project_env: bool = False):
    """Stock RLlib PPO (see the module docstring) with the batch and PPO settings of ``build_config(cfg)``.
    With ``project_env`` it samples the project's own RLlib env instead of RLlib's PettingZoo wrapper."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from marl.rllib.algorithm import ENV_NAME, build_config, env_spec
    from marl.rllib.env import env_config

    ours = build_config(cfg, **env_spec(cfg))
    env = (ENV_NAME, env_config(cfg)) if project_env else (STOCK_ENV, {"id": cfg.env.id, "kwargs": dict(cfg.env.kwargs)})

    def same(*keys):
        return {k: getattr(ours, k) for k in keys}

    m = cfg.model
    return (
        PPOConfig()
        .environment(env[0], env_config=env[1], disable_env_checking=project_env)
        .env_runners(**same("num_env_runners", "num_envs_per_env_runner", "num_cpus_per_env_runner",
                            "rollout_fragment_length", "batch_mode"))
        .learners(**same("num_learners", "num_cpus_per_learner"))
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, *args, **kwargs: "shared",
                     count_steps_by=ours.count_steps_by)
        .rl_module(rl_module_spec=RLModuleSpec(model_config=DefaultModelConfig(
            fcnet_hiddens=[m.hidden] * m.layers, fcnet_activation=m.activation, vf_share_layers=False)))
        .training(**same("train_batch_size", "minibatch_size", "num_epochs", "shuffle_batch_per_epoch", "lr",
                         "gamma", "lambda_", "clip_param", "entropy_coeff", "vf_loss_coeff", "use_kl_loss",
                         "kl_coeff", "vf_clip_param"),
                  grad_clip=cfg.algo.max_grad_norm or None, grad_clip_by="global_norm")
        .debugging(seed=cfg.seed, log_level="WARN")
    )


def measure_stock(config: str, runners: int, iterations: int, overrides: list[str], project_env: bool = False) -> dict:
    import shutil

    import ray
    import torch
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    from marl.envs.registry import make_parallel_env
    from marl.config import load_config
    from marl.rllib.algorithm import register_env as register_project_env
    from marl.rllib.trainer import start_ray

    torch.set_num_threads(1)
    cfg = load_config(config, ["backend=rllib", f"rllib.num_env_runners={runners}", "train.progress=false",
                               *overrides])
    start = time.perf_counter()
    start_ray(cfg)  # the same local Ray instance as our trainer's
    algo = None
    try:
        # A lambda: Ray pickles it by value (its workers cannot import this script).
        register_env(STOCK_ENV, lambda c: ParallelPettingZooEnv(make_parallel_env(c["id"], c["kwargs"])))
        register_project_env()
        algo = stock_config(cfg, project_env).build_algo()
        startup = time.perf_counter() - start
        update_s = 0.0
        update = algo.learner_group.update

        def timed_update(*args, **kwargs):
            nonlocal update_s
            t0 = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                update_s += time.perf_counter() - t0

        algo.learner_group.update = timed_update
        return {**_time_training(algo.train, lambda: update_s, iterations), "startup_s": startup}
    finally:
        if algo is not None:
            algo.stop()
            shutil.rmtree(algo.logdir, ignore_errors=True)
        ray.shutdown()


def measure_local(config: str, iterations: int, overrides: list[str]) -> dict:
    import torch

    from marl.config import load_config
    from marl.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(config, ["train.progress=false", *overrides])
    # Room for the warm-up iteration and, with train.async_collection, for the rollout collected
    # during the last timed update: every timed iteration then overlaps as in a long run.
    cfg = load_config(config, ["train.progress=false", *overrides,
                               f"train.total_env_steps={(iterations + 2) * cfg.steps_per_iteration}"])
    start = time.perf_counter()
    trainer = Trainer(cfg, None)
    startup = time.perf_counter() - start
    try:
        trainer.run_iteration()   # warm-up, not timed
        trainer.iteration += 1
        update_s = 0.0
        start = time.perf_counter()
        for _ in range(iterations):
            update_s += trainer.run_iteration()[3]
            trainer.iteration += 1   # the next rollout starts from new env seeds, as in training
        wall = time.perf_counter() - start
    finally:
        trainer.close()
    steps = iterations * trainer.steps_per_iteration
    # With train.async_collection the collection overlaps the update, and wall - update_s is only
    # the part of it that the update did not hide.
    return {"env_steps_per_s": steps / wall, "sampling_env_steps_per_s": steps / (wall - update_s),
            "update_s": update_s / iterations, "startup_s": startup, "steps_per_iteration": trainer.steps_per_iteration}


MEASURES = {"local": measure_local, "rllib": measure_rllib, "stock": measure_stock}


def _child(kind, args, queue) -> None:
    try:
        queue.put(MEASURES[kind](*args))
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
    parser.add_argument("--no-stock", action="store_true", help="skip the stock RLlib PPO baseline rows")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)

    rows = []  # (label, result, ours / stock env steps/s)
    if not args.no_local:
        rows.append(("local backend (1 process)", run_isolated("local", args.config, args.iterations, args.set), ""))
        print(f"  local: {rows[-1][1]['env_steps_per_s']:.0f} env steps/s", file=sys.stderr, flush=True)
    for k in args.runners:
        runners = f"{k} EnvRunner{'s' if k != 1 else ''}"
        ours = run_isolated("rllib", args.config, k, args.iterations, args.set)
        print(f"  rllib {k}: {ours['env_steps_per_s']:.0f} env steps/s", file=sys.stderr, flush=True)
        stock = None if args.no_stock else run_isolated("stock", args.config, k, args.iterations, args.set)
        rows.append((f"rllib, {runners}", ours,
                     f"{ours['env_steps_per_s'] / stock['env_steps_per_s']:.2f}" if stock else ""))
        if stock:
            rows.append((f"stock RLlib PPO, {runners}", stock, ""))
            print(f"  stock {k}: {stock['env_steps_per_s']:.0f} env steps/s", file=sys.stderr, flush=True)
    steps = int(rows[-1][1]["steps_per_iteration"])
    print(f"{args.config}, {steps} env steps per iteration, {args.iterations} timed iterations"
          + (f", overrides {' '.join(args.set)}" if args.set else ""))
    print()
    print("| backend | env steps/s | × stock | sampling env steps/s | update s/iteration | startup s |")
    print("|---|---|---|---|---|---|")
    for label, r, ratio in rows:
        print(f"| {label} | {r['env_steps_per_s']:,.0f} | {ratio} | {r['sampling_env_steps_per_s']:,.0f} | "
              f"{r['update_s']:.2f} | {r['startup_s']:.1f} |")


if __name__ == "__main__":
    main()
