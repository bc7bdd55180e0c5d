"""The kinds of env users bring, each plugged into the default config by ``env.id`` (plus only the
switch its kind needs), trained and scored against its optimum on the better of greedy and sampled
evaluation (issue "Envs nobody tuned for": the bar is 80% of the optimum).

    python benchmarks/user_kinds.py --seeds 11 12 13 --jobs 2 [--kinds leave memory ...]

The envs live in ``tests/`` (``user_envs.py``, ``turn_envs.py``, ``image_envs.py``); nothing was tuned for them: every
run is ``configs/spread_mappo.yaml`` as shipped, with ``env.id``, ``env.kwargs``, the seed, the
budget and the kind's switch. Prints a markdown table (one row per kind, each seed's score as a
fraction of the optimum) and writes the raw results to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "spread_mappo.yaml"

# name -> (env.id, env.kwargs, extra overrides, optimum team return, env steps, what it tests)
KINDS = {
    "leave": ("tests.user_envs:handover", {"payout": "split"}, [], 3.3, 100_000,
              "three agents leave at 3, 6, 9 steps; team score split among those present; a hand-over "
              "that pays after the agent left"),
    "leave_team": ("tests.user_envs:handover", {"payout": "team"}, [], 4.8, 100_000,
                   "as leave, the team's score paid in full to each present agent"),
    "memory": ("tests.user_envs:cue_memory", {}, ["model.recurrent=true"], 2.0, 50_000,
               "a cue seen at step 0, acted on at step 5 (memoryless best 0.67)"),
    "late": ("tests.user_envs:late_reward", {}, [], 80.0, 200_000,
             "80-step episodes, rewards only from step 40, longer than the 25-step rollout"),
    "turns": ("tests.turn_envs:relay", {}, [], 8.0, 50_000,
              "a cooperative turn-based AEC game with per-step masks"),
    "image": ("tests.image_envs:blob_quadrants", {}, [], 10.0, 50_000,
              "16x16x3 uint8 image observations (the CNN encoder by default)"),
}


def run_one(kind: str, seed: int, out_dir: Path) -> dict:
    env_id, kwargs, extra, optimum, steps, _ = KINDS[kind]
    run_dir = out_dir / f"{kind}-s{seed}"
    cmd = [sys.executable, "-m", "marl.cli", "train", str(DEFAULT_CONFIG), "--run-dir", str(run_dir),
           "--set", f"env.id={env_id}", "--set", f"env.kwargs={json.dumps(kwargs)}", "--set", f"seed={seed}",
           "--set", f"train.total_env_steps={steps}", "--set", "train.progress=false", *sum(
               (["--set", o] for o in extra), [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"kind": kind, "seed": seed, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads((run_dir / "eval.json").read_text())
    greedy, sampled = result["team_return_mean"], result["sampled"]["team_return_mean"]
    return {"kind": kind, "seed": seed, "greedy": greedy, "sampled": sampled, "optimum": optimum,
            "score": max(greedy, sampled) / optimum, "note": result.get("note")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    p.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=list(KINDS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    out_dir = Path(tempfile.mkdtemp(prefix="user_kinds-"))
    jobs = [(k, s) for k in args.kinds for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, out_dir), jobs))
    print("| kind | what | optimum | better of greedy/sampled, per seed (fraction of optimum) | ≥ 0.8 |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        rows = [r for r in results if r["kind"] == kind]
        cells = ", ".join(f"{r['score']:.2f}" if "score" in r else f"error: {r['error']}" for r in rows)
        ok = all(r.get("score", 0.0) >= 0.8 for r in rows)
        print(f"| {kind} | {KINDS[kind][5]} | {KINDS[kind][3]} | {cells} | {'yes' if ok else 'no'} |")
    path = args.json or out_dir / "user_kinds.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nraw results: {path}; runs in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
