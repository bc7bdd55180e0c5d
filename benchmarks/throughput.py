"""Throughput benchmark: env steps/s of the raw env and of training, side by side: the local
backend in one process and with env worker processes, and the RLlib backend next to stock RLlib
PPO with 0, 1 and 2 EnvRunners.

    python benchmarks/throughput.py                   # all configurations, 3 repeats each
    python benchmarks/throughput.py --only raw local local_workers2
    python benchmarks/throughput.py --only raw local --set algo.minibatches=2   # config overrides

Each measurement runs in a fresh process (so peak RSS is its own, summed over the processes it
starts), after a warm-up, and the configurations are interleaved over the repeats. The table
shows the median env steps/s, the ratio to the raw env and, for workers and RLlib, the ratio to
their baselines (one process; stock RLlib PPO on RLlib's PettingZoo wrapper and on the project's
env). Ratios are paired: the median over repeats of the ratio within one repeat, since the host's
speed drifts. The machine may be shared, so compare ratios, not absolute numbers. Writes a PNG
bar chart with --plot.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ENV_KWARGS = {"N": 3, "max_cycles": 25, "local_ratio": 0.5, "continuous_actions": False}


class PeakRSS:
    """Peak resident memory of this process and all its descendants together (env workers, and
    for the RLlib rows the local Ray instance: GCS, raylet, EnvRunner and Learner workers),
    sampled every 0.2 s in a background thread."""

    def __init__(self):
        import psutil
        self._me, self._psutil = psutil.Process(), psutil
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _total_mb(self) -> float:
        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except self._psutil.Error:   # exited between listing and reading
                pass
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, self._total_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._total_mb())


def raw_env(steps: int, start_barrier=None) -> dict:
    """mpe2 simple_spread_v3 (its parallel API) with uniformly random actions, one process. Returns
    the rate and the timed window (``time.perf_counter``, one clock for all processes on Linux)."""
    import numpy as np
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(**ENV_KWARGS)
    rng = np.random.default_rng(0)
    done, seed, count = True, 0, 0
    if start_barrier is not None:
        start_barrier.wait()
    start = None
    while count < steps:
        if done:
            env.reset(seed=seed)
            seed += 1
        actions = {a: int(rng.integers(5)) for a in env.agents}
        env.step(actions)
        done = not env.agents
        count += 1
        if count == steps // 10:            # warm-up: the first 10% is not timed
            start, timed_from = time.perf_counter(), count
    end = time.perf_counter()
    return {"env_steps_per_s": (count - timed_from) / (end - start), "timed_steps": count - timed_from,
            "window": (start, end)}


def _raw_env_child(steps: int, barrier, queue) -> None:
    queue.put(raw_env(steps, barrier))


def raw_env_parallel(steps: int, processes: int = 2) -> dict:
    """``processes`` independent raw-env loops started together, ``steps`` each: all their timed
    steps over the wall time from the first start to the last end. That is what the machine's cores
    give to env stepping at best, the ceiling for env workers. (Summing each process's own rate
    would overstate it: a process that finishes early leaves the other one a free core.)"""
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(processes)
    procs = [ctx.Process(target=_raw_env_child, args=(steps, barrier, queue)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    span = max(r["window"][1] for r in results) - min(r["window"][0] for r in results)
    return {"env_steps_per_s": sum(r["timed_steps"] for r in results) / span}


def vector_env(steps: int, workers: int) -> dict:
    """The trainer's vector env for spread_mappo (32 envs) with uniformly random actions and no
    policy: in this process (``workers=0``) or in worker processes, where the learner process waits
    on every worker at every step."""
    import numpy as np

    from marl.envs import RewardSpec
    from marl.envs.vector import make_vector_env
    from marl.config import load_config

    cfg = load_config(MAPPO)
    e, T = cfg.env, cfg.algo.rollout_steps
    venv = make_vector_env(e.id, e.kwargs, e.num_envs, RewardSpec(e.reward, e.team_reward, e.alpha, e.shaping,
                                                                  cfg.algo.gamma), workers)
    try:
        rng = np.random.default_rng(0)
        actions = rng.integers(0, venv.n_actions, (T, e.num_envs, venv.n_agents))
        count, it, start = 0, 0, None
        while count < steps:
            venv.reset(np.arange(e.num_envs) + it * e.num_envs)
            for t in range(T):
                venv.step(actions[t], autoreset=t < T - 1)
            count += T * e.num_envs
            it += 1
            if start is None:                   # the first rollout is the warm-up
                start, count = time.perf_counter(), 0
        return {"env_steps_per_s": count / (time.perf_counter() - start)}
    finally:
        venv.close()


def twin_raw(steps: int, num_envs: int) -> dict:
    """The batched torch twin of simple_spread (``marl.envs.mpe_twin``), B envs stepped at once with
    uniformly random actions, one process and one thread."""
    import torch

    from marl.envs.mpe_twin import MPETwin

    torch.set_num_threads(1)
    env = MPETwin("simple_spread_v3", num_envs, seed=0, **{k: v for k, v in ENV_KWARGS.items()})
    gen = torch.Generator().manual_seed(0)
    count, start = 0, None
    while count < steps:
        env.step(torch.randint(0, 5, (num_envs, env.n_agents), generator=gen))
        count += num_envs
        if start is None:                       # the first step is the warm-up
            start, count = time.perf_counter(), 0
    return {"env_steps_per_s": count / (time.perf_counter() - start)}


def _update_share(r: dict) -> float:
    """The Learner update's share of wall time, from a ``rllib_scaling`` measurement."""
    return r["update_s"] * r["env_steps_per_s"] / r["steps_per_iteration"]


def train(steps: int, config: str, overrides: list[str] = (), min_iterations: int = 1) -> dict:
    """Env steps/s of the local trainer (collection + updates) over the iterations that cover
    ``steps``, at least ``min_iterations`` of them, after one warm-up iteration; see
    ``rllib_scaling.measure_local``."""
    from rllib_scaling import measure_local

    from marl.config import load_config

    overrides = [f"train.total_env_steps={steps}", *overrides]
    iterations = max(load_config(config, overrides).total_iterations, min_iterations)
    r = measure_local(config, iterations, overrides)
    return {"env_steps_per_s": r["env_steps_per_s"], "update_share": _update_share(r)}


def train_in_tree(steps: int, tree: str | None) -> dict:
    """The ``local`` row (spread_mappo, one process) measured by the code of another checkout of this
    repository, e.g. a ``git worktree`` of the commit before a change: its own
    ``benchmarks/throughput.py`` runs there with that tree first on ``sys.path``, so its ``marl``
    (and its ``envs`` and ``algorithms``) are the ones imported."""
    import subprocess
    import tempfile

    if not tree:
        raise ValueError("the local_before row needs --baseline-tree PATH")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        subprocess.run([sys.executable, "benchmarks/throughput.py", "--only", "local", "--steps", str(steps),
                        "--repeats", "1", "--json", str(out)], cwd=tree, check=True, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())})
        row = json.loads(out.read_text())[0]
    return {"env_steps_per_s": row["env_steps_per_s"], "update_share": row["update_share"]}


def rllib(steps: int, runners: int, stock: bool = False, project_env: bool = False) -> dict:
    """``backend: rllib`` (or stock RLlib PPO, on RLlib's PettingZoo wrapper or on the project's
    env) on spread_mappo with ``runners`` EnvRunners; see ``rllib_scaling.py`` for what is timed."""
    from rllib_scaling import measure_rllib, measure_stock

    from marl.config import load_config

    iterations = max(2, steps // load_config(MAPPO).steps_per_iteration)
    if stock:
        r = measure_stock(MAPPO, runners, iterations, [], project_env)
    else:
        r = measure_rllib(MAPPO, runners, iterations, [])
    r["update_share"] = _update_share(r)
    return r


MAPPO, COMA, FAST = "configs/spread_mappo.yaml", "configs/spread_coma.yaml", "configs/spread_fast.yaml"
WORKER_COUNTS = (2, 4, 8)
TWIN_SIZES = (1, 16, 256, 1024, 4096)
TWIN_TRAIN_SIZES = (32, 128, 256, 1024)
CONFIGS = {
    "raw": ("raw mpe2 simple_spread_v3, random actions, 1 process", raw_env, {}),
    **{f"raw{k}": (f"raw env in {k} processes at once (ceiling for {k} workers)", raw_env_parallel,
                   {"processes": k}) for k in WORKER_COUNTS},
    "vec": ("spread_mappo's 32 envs, random actions, 1 process", vector_env, {"workers": 0}),
    **{f"vec_workers{k}": (f"spread_mappo's 32 envs, random actions, {k} worker processes", vector_env,
                           {"workers": k}) for k in WORKER_COUNTS},
    "local": ("local spread_mappo, 1 process", train, {"config": MAPPO}),
    "local_coma": ("local spread_coma, 1 process", train, {"config": COMA}),
    **{f"local_workers{k}": (f"local spread_mappo, envs in {k} worker processes", train,
                             {"config": MAPPO, "overrides": [f"env.workers={k}"]}) for k in WORKER_COUNTS},
    **{f"local_async{k}": (f"local spread_mappo, {k} worker processes, collection overlapping the update", train,
                           {"config": MAPPO, "overrides": [f"env.workers={k}", "train.async_collection=true"]})
       for k in WORKER_COUNTS},
    **{f"local_acting{k}": (f"local spread_mappo, {k} worker processes acting for their own envs", train,
                            {"config": MAPPO, "overrides": [f"env.workers={k}", "train.act_in_workers=true"]})
       for k in WORKER_COUNTS},
    **{f"local_acting_async{k}": (f"local spread_mappo, {k} worker processes acting, overlapping the update",
                                  train, {"config": MAPPO, "overrides": [f"env.workers={k}", "train.act_in_workers=true",
                                                                         "train.async_collection=true"]})
       for k in WORKER_COUNTS},
    **{f"twin_raw{b}": (f"batched twin of simple_spread, B={b}, random actions", twin_raw, {"num_envs": b})
       for b in TWIN_SIZES},
    "local_before": ("local spread_mappo, 1 process, the code of --baseline-tree", train_in_tree, {"tree": None}),
    # The twin's rows take at least 20 updates, however small --steps is (one update is 6,400 env steps).
    "fast": ("spread_fast on the twin, as shipped, 1 process", train, {"config": FAST, "min_iterations": 20}),
    **{f"twin_train{b}": (f"spread_fast on the twin, B={b}", train,
                          {"config": FAST, "overrides": [f"env.num_envs={b}"], "min_iterations": 20})
       for b in TWIN_TRAIN_SIZES},
    **{f"rllib{k}": (f"rllib spread_mappo, {k} EnvRunner{'s' * (k != 1)}", rllib, {"runners": k}) for k in (0, 1, 2)},
    **{f"stock{k}": (f"stock RLlib PPO, {k} EnvRunner{'s' * (k != 1)}", rllib, {"runners": k, "stock": True})
       for k in (0, 1, 2)},
    **{f"stock_env{k}": (f"stock RLlib PPO on the project's env, {k} EnvRunner{'s' * (k != 1)}", rllib,
                         {"runners": k, "stock": True, "project_env": True}) for k in (0, 1, 2)},
}

# Rows that run several env processes at once: how many.
PROCESSES = {f"{kind}{k}": k for kind in ("raw", "vec_workers", "local_workers", "local_async", "local_acting",
                                                  "local_acting_async") for k in WORKER_COUNTS}

# What each row is compared with besides the raw env: workers against one process, our RLlib
# backend against stock RLlib PPO with the same EnvRunners, on RLlib's PettingZoo wrapper (end to
# end) and on the project's env (only the learner, connector and module pieces differ).
BASELINE = {**{f"raw{k}": ["raw"] for k in WORKER_COUNTS}, **{f"vec_workers{k}": ["vec"] for k in WORKER_COUNTS},
            **{f"local_workers{k}": ["local"] for k in WORKER_COUNTS},
            **{f"local_async{k}": ["local", f"local_workers{k}"] for k in WORKER_COUNTS},
            **{f"local_acting{k}": ["local", f"local_workers{k}"] for k in WORKER_COUNTS},
            **{f"local_acting_async{k}": ["local", f"local_async{k}"] for k in WORKER_COUNTS},
            **{f"rllib{k}": [f"stock{k}", f"stock_env{k}"] for k in (0, 1, 2)},
            **{f"stock_env{k}": [f"stock{k}"] for k in (0, 1, 2)},
            "fast": ["local"], **{f"twin_train{b}": ["local"] for b in TWIN_TRAIN_SIZES},
            "local": ["local_before"]}


def _measure(name: str, steps: int, queue, overrides: list[str], baseline_tree: str | None) -> None:
    _, fn, kwargs = CONFIGS[name]
    if fn is train_in_tree:
        kwargs = {"tree": baseline_tree}
    if fn is train:
        kwargs = {**kwargs, "overrides": [*kwargs.get("overrides", []), *overrides]}
    try:
        with PeakRSS() as rss:
            result = fn(steps, **kwargs)
        result["peak_rss_mb"] = rss.peak_mb
    except Exception as exc:   # report it, so that the parent does not wait forever
        result = {"error": f"{type(exc).__name__}: {exc}"}
    queue.put(result)


def measure(name: str, steps: int, overrides: list[str] = (), baseline_tree: str | None = None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(name, steps, queue, list(overrides), baseline_tree))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        sys.exit(f"measuring {name} failed: {result['error']}")
    return result


def default_configs() -> list[str]:
    """Every configuration, except rows that would run more env processes than this process may use
    cores (``taskset`` limits count): they would only measure contention."""
    cores = len(os.sched_getaffinity(0))
    return [name for name in CONFIGS if PROCESSES.get(name, 0) <= cores and name != "local_before"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=default_configs(),
                        help="configurations to run (default: all, except worker counts above the cores "
                             "this process may use)")
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", help="write a PNG bar chart here")
    parser.add_argument("--plot-batch", help="write env steps/s against the batch size B here (the twin's rows "
                                             "against the raw env and the PettingZoo path)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--baseline-tree", metavar="PATH",
                        help="a checkout of an earlier commit (git worktree add PATH REV) whose own code measures "
                             "the local_before row, the baseline of the local row")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for the local trainer rows, e.g. algo.minibatches=2")
    args = parser.parse_args(argv)
    if "local_before" in args.only and not args.baseline_tree:
        parser.error("local_before needs --baseline-tree PATH")
    if args.set:
        from marl.config import ConfigError, load_config
        try:
            load_config(MAPPO, args.set)
        except ConfigError as exc:
            parser.error(f"--set: {exc}")

    results = {name: [] for name in args.only}
    for r in range(args.repeats):              # interleave configurations so load drifts hit all alike
        for name in args.only:
            results[name].append(measure(name, args.steps, args.set, args.baseline_tree))
            print(f"  repeat {r + 1}: {name}: {results[name][-1]['env_steps_per_s']:.0f} env steps/s",
                  file=sys.stderr, flush=True)
    def paired_ratio(name: str, base: str) -> float:
        """Median over repeats of ``name / base`` within the same repeat (the host's speed drifts
        between repeats more than between neighbouring measurements)."""
        return statistics.median(x["env_steps_per_s"] / y["env_steps_per_s"] for x, y in zip(results[name], results[base]))

    rows = []
    for name, runs in results.items():
        rows.append({"name": name, "label": CONFIGS[name][0],
                     "env_steps_per_s": statistics.median(x["env_steps_per_s"] for x in runs),
                     "ratio_to_raw": paired_ratio(name, "raw") if "raw" in results else None,
                     "ratio_to_baseline": {base: paired_ratio(name, base) for base in BASELINE.get(name, [])
                                           if base in results},
                     "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
                     "update_share": (statistics.median(x["update_share"] for x in runs)
                                      if "update_share" in runs[0] else None),
                     "all": [x["env_steps_per_s"] for x in runs]})
    print(f"Ratios are medians over the {args.repeats} repeats of the ratio within a repeat.")
    print(f"| configuration | env steps/s (median of {args.repeats}) | × raw env | × its baseline | update share | "
          f"peak RSS, all processes (MB) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['ratio_to_raw']:.2f}" if row["ratio_to_raw"] is not None else "n/a"
        vs = ", ".join(f"{r:.2f} (vs {base})" for base, r in row["ratio_to_baseline"].items()) or "-"
        share = f"{row['update_share']:.0%}" if row["update_share"] is not None else "-"
        print(f"| {row['label']} | {row['env_steps_per_s']:,.0f} | {ratio} | {vs} | {share} | {row['peak_rss_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, args.plot)
    if args.plot_batch:
        plot_batch(rows, args.plot_batch)


def plot(rows: list[dict], path: str) -> None:
    """Horizontal bars of the median env steps/s per configuration, each repeat as a dot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 0.5 * len(rows) + 1.2))
    ax = fig.subplots()
    y = range(len(rows))[::-1]
    ax.barh(list(y), [r["env_steps_per_s"] for r in rows], color="tab:blue", alpha=0.8)
    for yi, r in zip(y, rows):
        ax.plot(r["all"], [yi] * len(r["all"]), "k.", markersize=4)
        ax.text(max(r["all"]) * 1.01, yi, f" {r['env_steps_per_s']:,.0f}", va="center", fontsize=8)
    ax.set_yticks(list(y), [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel("env steps/s (bars: median; dots: repeats)")
    ax.set_xlim(0, max(max(r["all"]) for r in rows) * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_batch(rows: list[dict], path: str) -> None:
    """Env steps/s against the batch size B (log-log): the twin raw and training, with the raw mpe2
    env and the PettingZoo path (spread_mappo, B = 32) as reference lines."""
    from matplotlib.figure import Figure

    by_name = {r["name"]: r for r in rows}
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for prefix, label, sizes, style in (("twin_raw", "twin, random actions (raw)", TWIN_SIZES, "o-"),
                                        ("twin_train", "twin, training (spread_fast)", TWIN_TRAIN_SIZES, "s-")):
        points = [(b, by_name[f"{prefix}{b}"]["env_steps_per_s"]) for b in sizes if f"{prefix}{b}" in by_name]
        if points:
            ax.plot(*zip(*points), style, label=label)
    for name, label, color in (("raw", "raw mpe2, 1 process", "0.3"), ("local", "PettingZoo path, spread_mappo", "tab:red")):
        if name in by_name:
            ax.axhline(by_name[name]["env_steps_per_s"], color=color, linestyle="--", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B (envs stepped at once)")
    ax.set_ylabel("env steps/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
