"""Image observations: an image env's raw env steps/s against training env steps/s with the default
config (``configs/spread_mappo.yaml`` plus ``env.id``), measured in the same run, and the size of
the checkpoint training writes.

    python benchmarks/image_envs.py                                # cooperative_pong_v6, 4,000 steps
    python benchmarks/image_envs.py --env pettingzoo.butterfly.pistonball_v6:parallel_env --steps 1600

The raw env is PettingZoo's own parallel env stepped with random actions in this process (no
``state()`` call, no copies), timed before and after training; its mean is the reference. Training
is reported over the whole run (start-up, first touch of the rollout buffers and first-iteration
credit views included) and in steady state (the median of the iterations after the first). The
machine may be shared: compare the ratios, not the absolute numbers. Bar (issue 22): training at
0.3× the raw env or better, a checkpoint of 50 MB or less.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PONG = "pettingzoo.butterfly.cooperative_pong_v6:parallel_env"


def raw_steps_per_s(env_id: str, seconds: float, seed: int = 0) -> float:
    """Joint env steps/s of the PettingZoo env itself, random actions, resets included."""
    from marl.envs import make_parallel_env

    env = make_parallel_env(env_id, {})
    env.reset(seed=seed)
    for agent in env.possible_agents:
        env.action_space(agent).seed(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step({agent: env.action_space(agent).sample() for agent in env.agents})
        steps += 1
        if not env.agents:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def train(env_id: str, steps: int, run_dir: Path) -> dict:
    """Train the default config on ``env_id`` for ``steps`` env steps; its throughput and checkpoint size."""
    from marl.checkpoint import CHECKPOINT_NAME
    from marl.config import config_from_dict
    from marl.logger import read_metrics
    from marl.run import new_run

    data = yaml.safe_load((ROOT / "configs" / "spread_mappo.yaml").read_text())
    data["env"].update(id=env_id, kwargs={})
    data["train"].update(total_env_steps=steps, progress=False, eval_episodes=0)
    trainer = new_run(config_from_dict(data), run_dir)
    try:
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    finally:
        trainer.close()
    rates = [r["perf/env_steps_per_s"] for r in read_metrics(run_dir)]
    return {"train_steps_per_s": steps / wall, "steady_steps_per_s": statistics.median(rates[1:] or rates),
            "iterations": len(rates), "checkpoint_mb": (run_dir / CHECKPOINT_NAME).stat().st_size / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=PONG, help="an image env's module:factory (default cooperative_pong_v6)")
    parser.add_argument("--steps", type=int, default=4000, help="training env steps (800 per iteration)")
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="seconds of raw stepping, before and after")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*render method without specifying any render mode.*")

    before = raw_steps_per_s(args.env, args.raw_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(args.env, args.steps, Path(tmp) / "run")
    after = raw_steps_per_s(args.env, args.raw_seconds, seed=1)
    raw = (before + after) / 2
    result.update(env=args.env, steps=args.steps, raw_steps_per_s=raw, raw_before=before, raw_after=after,
                  ratio=result["train_steps_per_s"] / raw, steady_ratio=result["steady_steps_per_s"] / raw)
    print(f"env {args.env}, {args.steps} training steps ({result['iterations']} iterations)")
    print("| raw env steps/s | training steps/s (ratio) | steady state (ratio) | checkpoint | peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| {raw:.0f} ({before:.0f} before, {after:.0f} after) | {result['train_steps_per_s']:.0f} "
          f"({result['ratio']:.2f}×) | {result['steady_steps_per_s']:.0f} ({result['steady_ratio']:.2f}×) | "
          f"{result['checkpoint_mb']:.1f} MB | {result['peak_rss_mb']:.0f} MB |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
