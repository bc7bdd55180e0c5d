"""The LBF and RWARE twins: training throughput against the PettingZoo path, and fidelity.

    python benchmarks/twins.py throughput                 # every task, 2 interleaved repeats
    python benchmarks/twins.py throughput --tasks lbf-8x8-2p-2f-coop --iterations 4
    python benchmarks/twins.py throughput --tasks lbf-8x8-2p-2f-coop --twin-set algo.minibatches=4
    python benchmarks/twins.py fidelity RUN_DIR --episodes 2000

``throughput`` trains each task on the PettingZoo path (``configs/lbf_mappo.yaml`` /
``rware_mappo.yaml``, B=32 Gymnasium envs through the adapter) and on its twin
(``configs/lbf_fast.yaml`` / ``rware_fast.yaml``, B=256), one process each, one torch thread,
after a warm-up iteration; the two are interleaved within each repeat and the ratio is the median
of the per-repeat ratios (the machine is shared: compare ratios, not absolute numbers).

``fidelity`` plays one trained policy greedily for ``--episodes`` episodes on the package env
(``marl.evaluate.evaluate``) and on the twin (``evaluate_batched``) and reports both means, their
standard errors and the difference in units of its standard error.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys

# task -> (env.id, env.kwargs, PettingZoo-path config, twin config)
TASKS = {
    "lbf-8x8-2p-2f-coop": ("lbf:Foraging-8x8-2p-2f-coop-v3", {}, "configs/lbf_mappo.yaml", "configs/lbf_fast.yaml"),
    "lbf-10x10-3p-3f": ("lbf:Foraging-10x10-3p-3f-v3", {}, "configs/lbf_mappo.yaml", "configs/lbf_fast.yaml"),
    "lbf-15x15-4p-5f": ("lbf:Foraging-15x15-4p-4f-v3", {"max_num_food": 5}, "configs/lbf_mappo.yaml",
                        "configs/lbf_fast.yaml"),
    "rware-tiny-2ag": ("rware:rware-tiny-2ag-v2", {}, "configs/rware_mappo.yaml", "configs/rware_fast.yaml"),
    "rware-tiny-4ag": ("rware:rware-tiny-4ag-v2", {}, "configs/rware_mappo.yaml", "configs/rware_fast.yaml"),
    "rware-small-4ag": ("rware:rware-small-4ag-v2", {}, "configs/rware_mappo.yaml", "configs/rware_fast.yaml"),
}


def _child(config: str, overrides: list[str], iterations: int, queue) -> None:
    try:
        from rllib_scaling import measure_local
        queue.put(measure_local(config, iterations, overrides))
    except BaseException as exc:   # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def train_rate(config: str, env_id: str, kwargs: dict, iterations: int, extra: tuple[str, ...] = ()) -> float:
    """Training env steps/s (collection + updates) of ``config`` on ``env_id`` with ``extra``
    ``key=value`` overrides, in a fresh process."""
    overrides = [f"env.id={env_id}", f"env.kwargs={json.dumps(kwargs)}", *extra]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(config, overrides, iterations, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        sys.exit(f"measuring {config} on {env_id} failed: {result['error']}")
    return result["env_steps_per_s"]


def throughput(tasks: list[str], repeats: int, iterations: int, pz_iterations: int,
               twin_set: tuple[str, ...] = ()) -> list[dict]:
    rows = []
    for task in tasks:
        env_id, kwargs, slow, fast = TASKS[task]
        pairs = []
        for _ in range(repeats):
            pz = train_rate(slow, env_id, kwargs, pz_iterations)
            twin = train_rate(fast, env_id, kwargs, iterations, twin_set)
            pairs.append((pz, twin))
            print(f"  {task}: PettingZoo {pz:,.0f}, twin {twin:,.0f} env steps/s", flush=True)
        rows.append({"task": task, "pettingzoo": statistics.median(p for p, _ in pairs),
                     "twin": statistics.median(t for _, t in pairs),
                     "ratio": statistics.median(t / p for p, t in pairs)})
    print("\n| task | PettingZoo path (env steps/s) | twin (env steps/s) | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['pettingzoo']:,.0f} | {r['twin']:,.0f} | {r['ratio']:.1f}x |")
    return rows


def fidelity(run_dir: str, episodes: int, seed: int) -> dict:
    from marl.evaluate import evaluate, evaluate_batched
    from marl.run import load_actor

    actor, cfg = load_actor(run_dir)
    out = {}
    for name, run in (("package", evaluate), ("twin", evaluate_batched)):
        r = run(actor, cfg.env.id, cfg.env.kwargs, episodes, seed=seed)
        out[name] = {"mean": r["team_return_mean"], "se": r["team_return_std"] / math.sqrt(episodes)}
    diff = out["twin"]["mean"] - out["package"]["mean"]
    out["z"] = diff / math.hypot(out["twin"]["se"], out["package"]["se"])
    print(f"{cfg.env.id}, {episodes} greedy episodes each: package {out['package']['mean']:.4f} "
          f"± {out['package']['se']:.4f}, twin {out['twin']['mean']:.4f} ± {out['twin']['se']:.4f} (SE); "
          f"difference {diff:+.4f} = {out['z']:+.2f} SE")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    t.add_argument("--repeats", type=int, default=2)
    t.add_argument("--iterations", type=int, default=8, help="timed twin iterations (B x rollout_steps env steps each: 6,400 LBF, 12,800 RWARE)")
    t.add_argument("--pz-iterations", type=int, default=30, help="timed PettingZoo-path iterations (800 each)")
    t.add_argument("--twin-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the twin config (e.g. algo.minibatches=4)")
    f = sub.add_parser("fidelity")
    f.add_argument("run_dir")
    f.add_argument("--episodes", type=int, default=2000)
    f.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "throughput":
        throughput(args.tasks, args.repeats, args.iterations, args.pz_iterations, tuple(args.twin_set))
    else:
        fidelity(args.run_dir, args.episodes, args.seed)


if __name__ == "__main__":
    main()
