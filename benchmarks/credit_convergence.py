"""Oracle credit fidelity as the policy converges on simple_spread (issue 26): each method's advantage
scored against the oracle at several budgets of one run on the batched twin, up to the converged 15M.

    python benchmarks/suite.py --tasks spread --seeds 11 12 13 --out runs/suite   # spread_fast at 15M
    python benchmarks/credit_convergence.py --methods coma_lambda dop_lambda gae --seeds 11 \\
        --budgets 1000000 3000000 7000000 10000000 \\
        --existing runs/suite/spread_fast-s12 runs/suite/spread_fast-s13 --out runs/credit_convergence

Each method of ``--methods`` trains ``configs/spread_fast.yaml`` with ``--set algo.advantage=METHOD``
(``gae``: as shipped) for ``--steps`` env steps on each seed, ``--jobs`` runs at once, each single-
threaded and ``nice``-d, checkpointing every ``--checkpoint-every`` updates (default 10: 64,000 env
steps; the checkpoint interval does not change the run). The first checkpoint at or past each of
``--budgets`` is copied with the run's ``config.yaml`` and its ``metrics.jsonl`` up to that step into
``<method>_s<seed>_at_<steps>``, a run directory that ``marl credit`` and ``marl eval`` accept. The copies are snapshots of one run, so
their learning rate is still mid-way down the run's linear schedule, unlike a run trained for that
budget. ``--existing`` adds finished run directories (e.g. a suite's spread_fast runs) at their final
budget. ``--deadline HH:MM`` (UTC) stops the trainings then (each keeps its checkpoint; rerunning
resumes them) and scores what was copied.

Every copy and every finished run is then scored: ``marl credit DIR --oracle --states 256 --rollouts 64``
(the README's spread credit settings: 256 states of 32 on-policy episodes, K = 64 continuations per
(state, agent, action) to the episode's end), and, for copies, ``marl eval DIR --episodes 100`` on the
package env with the run's seed, as the end of training does. Prints markdown tables (per run and
budget; method x budget, IQM [95% CI] where several seeds) and writes them, with every score, to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/spread_fast.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _marl(*args: str) -> list[str]:
    return ["nice", "-n", "5", sys.executable, "-m", "marl.cli", *args]


def _last_env_steps(metrics: Path) -> int:
    """The env steps of ``metrics``'s last complete record (0 if none yet)."""
    if not metrics.is_file():
        return 0
    with open(metrics, "rb") as f:
        start = f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
        lines = f.read().split(b"\n")
    for line in reversed(lines[1:] if start > 0 else lines):   # past byte 0 the first line may be cut
        try:
            return int(json.loads(line)["env_steps"])
        except (ValueError, KeyError):
            continue
    return 0


def _env_steps(line: str) -> int | None:
    """A metrics line's env steps; None for a blank or half-written line (the run may be writing)."""
    try:
        return int(json.loads(line)["env_steps"])
    except (ValueError, KeyError):
        return None


def _run(cmd: list[str]) -> str:
    """Run a ``marl`` command; its stdout, or a one-line exit with its last stderr line."""
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{' '.join(cmd[3:])} failed (exit {proc.returncode}): {last}")
    return proc.stdout


def copy_at(run_dir: Path, dest: Path, budget: int) -> int | None:
    """Copy ``run_dir``'s checkpoint into the run directory ``dest`` if it is at or past ``budget``
    env steps, with the config and the metrics up to it; returns its env steps (None: not yet)."""
    from marl.checkpoint import load_checkpoint

    part = dest.with_name(dest.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    shutil.copy2(run_dir / "checkpoint.pt", part / "checkpoint.pt")   # written atomically by the run
    steps = int(load_checkpoint(part / "checkpoint.pt")["env_steps"])
    if steps < budget:
        shutil.rmtree(part)
        return None
    shutil.copy2(run_dir / "config.yaml", part / "config.yaml")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if _env_steps(line) is not None and _env_steps(line) <= steps]
    (part / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    (part / "copied.json").write_text(json.dumps({"from": str(run_dir), "budget": budget, "env_steps": steps}) + "\n")
    part.rename(dest)
    return steps


def train(method: str, seed: int, args) -> dict:
    """Train ``method`` on ``seed`` (resuming a stopped run), copying the run at each budget."""
    run_dir = args.out / f"{method}_s{seed}"
    dests = {b: args.out / f"{method}_s{seed}_at_{b}" for b in args.budgets}
    info = {"method": method, "seed": seed, "run": str(run_dir), "copies": {}}
    if not (run_dir / "eval.json").is_file():
        sets = [f"train.checkpoint_every={args.checkpoint_every}", "train.progress=false"]
        if (run_dir / "config.yaml").is_file():
            cmd = _marl("train", "--resume", str(run_dir))
        else:
            sets += [f"seed={seed}", f"train.total_env_steps={args.steps}"]
            if method != "gae":
                sets.append(f"algo.advantage={method}")
            cmd = _marl("train", CONFIG, "--run-dir", str(run_dir))
        cmd += [arg for kv in sets for arg in ("--set", kv)]
        t0 = time.time()
        with open(args.out / f"{method}_s{seed}.log", "a") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
            seen, stopped = None, False
            while proc.poll() is None:
                time.sleep(0.25)
                if args.deadline and not stopped and time.time() >= args.deadline:
                    proc.send_signal(signal.SIGINT)   # finishes the update, checkpoints, exits 130
                    stopped = True
                ckpt = run_dir / "checkpoint.pt"
                todo = [b for b, d in dests.items() if not d.is_dir()]
                if not todo or not ckpt.is_file() or _last_env_steps(run_dir / "metrics.jsonl") < min(todo):
                    continue
                mtime = ckpt.stat().st_mtime_ns
                if mtime != seen:
                    seen = mtime
                    steps = copy_at(run_dir, dests[min(todo)], min(todo))
                    if steps is not None:
                        print(f"{method} s{seed}: copied at {steps:,} env steps ({time.time() - t0:.0f} s)", flush=True)
        info["stopped_at_deadline"] = stopped
        info["returncode"] = proc.returncode
        if proc.returncode != 0 and not stopped:
            raise SystemExit(f"training {run_dir} failed (exit {proc.returncode}); see {log.name}")
        if stopped and not (run_dir / "eval.json").is_file() and (run_dir / "checkpoint.pt").is_file():
            steps = _last_env_steps(run_dir / "metrics.jsonl")   # the largest budget reached, scored as a copy
            dests[steps] = args.out / f"{method}_s{seed}_at_{steps}"
            if not dests[steps].is_dir():
                copy_at(run_dir, dests[steps], 0)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    info.update(env_steps=records[-1]["env_steps"], wall_s=records[-1]["perf/wall_s"],
                complete=(run_dir / "eval.json").is_file())
    info["copies"] = {b: str(d) for b, d in dests.items() if d.is_dir()}
    return info


def score(run_dir: Path, args) -> dict:
    """Oracle scores (cached in ``--out``/oracle/) and greedy evaluation (``eval.json``) of ``run_dir``."""
    oracle = args.out / "oracle" / f"{run_dir.name}.json"
    oracle.parent.mkdir(exist_ok=True)
    if not oracle.is_file():
        oracle.write_text(_run(_marl("credit", str(run_dir), "--oracle", "--states", str(args.states), "--rollouts",
                                     str(args.rollouts), "--json")))
    if not (run_dir / "eval.json").is_file():
        from marl.run import load_run_config
        seed = load_run_config(run_dir).seed
        _run(_marl("eval", str(run_dir), "--episodes", str(args.eval_episodes), "--seed", str(seed), "--out",
                   str(run_dir / "eval.json")))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"dir": str(run_dir), "oracle": json.loads(oracle.read_text()),
            "eval": json.loads((run_dir / "eval.json").read_text()),
            "env_steps": records[-1]["env_steps"], "wall_s": records[-1]["perf/wall_s"]}


def _row(run_dir: Path, budget: int | None) -> dict:
    from marl.run import load_run_config
    cfg = load_run_config(run_dir)
    return {"dir": run_dir, "method": cfg.algo.advantage, "seed": cfg.seed,
            "budget": budget or cfg.train.total_env_steps}


def _steps(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def tables(rows: list[dict]) -> str:
    """One row per (method, seed, budget), then method x budget: oracle Spearman (IQM [95% CI] over
    seeds where there are several)."""
    from marl.compare import format_interval, iqm_interval

    def mean_over_agents(o, key):
        values = [v for k, v in o.items() if k.startswith(key + "/")]
        return sum(values) / len(values)

    lines = [(r"| method | seed | env steps | oracle Spearman | sign agreement | mean \|A\| | mean \|A*\| | "
              "oracle reliability | greedy return (sampled) | train wall s |"), "|" + "---|" * 10]
    rows = sorted(rows, key=lambda r: (r["method"], r["seed"], r["env_steps"]))
    for r in rows:
        o, e = r["oracle"], r["eval"]
        lines.append(f"| {r['method']} | {r['seed']} | {r['env_steps']:,} | {o['spearman']:.2f} | "
                     f"{o['sign_agreement']:.2f} | {mean_over_agents(o, 'abs_adv'):.3g} | "
                     f"{mean_over_agents(o, 'abs_oracle'):.3g} | {o['oracle_reliability']:.2f} | "
                     f"{e['team_return_mean']:.1f} ({e['sampled']['team_return_mean']:.1f}) | {r['wall_s']:.0f} |")
    budgets = sorted({r["budget"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    lines += ["", "| method (seeds) | " + " | ".join(_steps(b) for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for m in methods:
        cells, seeds = [], sorted({r["seed"] for r in rows if r["method"] == m})
        for b in budgets:
            at = [r for r in rows if r["method"] == m and r["budget"] == b]
            sp = [r["oracle"]["spearman"] for r in at]
            if not sp:
                cells.append("–")
            elif len(sp) == 1:
                cells.append(f"{sp[0]:.2f}" + (f" (seed {at[0]['seed']})" if len(seeds) > 1 else ""))
            else:
                i = iqm_interval(sp)
                cells.append(f"{format_interval(i['iqm'], i['ci'], 2)} ({len(sp)} seeds)")
        lines.append(f"| {m} ({', '.join(map(str, seeds))}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _deadline(text: str) -> float:
    """Seconds since the epoch of the next ``HH:MM`` UTC."""
    try:
        hour, minute = (int(x) for x in text.split(":"))
        now = datetime.now(UTC)
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        raise SystemExit(f"--deadline {text!r} is not HH:MM (UTC)") from None
    return at.timestamp() + (86400 if at < now else 0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=["coma_lambda", "dop_lambda"],
                        help="algo.advantage entries to train on spread_fast (gae: as shipped)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    parser.add_argument("--steps", type=int, default=15_000_000, help="each run's total env steps")
    parser.add_argument("--budgets", type=int, nargs="*", default=[1_000_000, 3_000_000, 7_000_000],
                        help="env steps at which each run is copied and scored")
    parser.add_argument("--existing", type=Path, nargs="*", default=[], help="finished run directories to score too")
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=10, help="updates between checkpoints (6,400 env "
                        "steps each on spread_fast): the copies' granularity")
    parser.add_argument("--eval-episodes", type=int, default=100, help="greedy evaluation of each copy")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: stop the trainings then and score the copies")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if any(b >= args.steps for b in args.budgets):
        parser.error(f"--budgets must be below --steps ({args.steps:,}): the final budget is the run itself")
    for d in args.existing:
        if not (d / "checkpoint.pt").is_file() or not (d / "eval.json").is_file():
            parser.error(f"--existing {d} is not a finished run directory (no checkpoint.pt or eval.json)")
    args.deadline = _deadline(args.deadline) if args.deadline else None
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for m in args.methods for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda ms: train(*ms, args), jobs))
    todo = [_row(Path(d), None) for d in args.existing]
    for run in runs:
        todo += [_row(Path(d), b) for b, d in run["copies"].items()]
        if run["complete"]:
            todo.append(_row(Path(run["run"]), None))
    with ThreadPoolExecutor(args.jobs) as pool:
        scored = list(pool.map(lambda r: {**r, **score(r["dir"], args)}, todo))
    table = tables(scored)
    print(table)
    (args.out / "report.md").write_text(table + "\n")
    (args.out / "report.json").write_text(json.dumps({"runs": runs, "scores": scored}, indent=1, default=str))
    print(f"results: {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
