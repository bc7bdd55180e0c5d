"""Sweep speed: one ``marl sweep`` of configs × seeds against the same trials run one after another
as separate ``marl train`` processes, wall clock for wall clock, and the trials' metrics compared.

    nice -n 5 python benchmarks/sweep_speed.py --out /tmp/sweep_speed            # the measurement
    python benchmarks/sweep_speed.py --steps 2000 --seeds 11 --out /tmp/sweep_smoke   # a smoke test

(a) runs ``python -m marl.cli train CONFIG --set seed=S --set train.total_env_steps=N --run-dir ...``
for every config × seed, one process after another, as a user would; (b) runs one
``python -m marl.cli sweep CONFIG... --seeds S... --set train.total_env_steps=N --out ...`` with the
default jobs (one trial per core). Both wall clocks include process, torch, and (b) Ray start-up.
Each sweep trial's ``metrics.jsonl`` is then compared, record by record, with the single run's of
the same config and seed, ignoring the ``perf/*`` keys (timings), and likewise ``eval.json``'s
returns. A sampler thread records, every second, each training process's OS thread count and CPU
use, and the CPU seconds used (only the processes the two commands start,
so other tenants' jobs are not counted; they show in the load average). Torch runs one intra-op
thread per process on both sides (``marl.trainer.Trainer`` sets it; Ray also sets
``OMP_NUM_THREADS=1`` inside its workers). Prints markdown tables and
writes ``results.json`` to ``--out``; exits 1 if some trial's metrics differ.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import psutil
except ImportError:
    raise SystemExit("benchmarks/sweep_speed.py counts CPU time with psutil: pip install -e '.[benchmarks]'") from None

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["configs/spread_mappo.yaml", "configs/spread_coma.yaml"]


class Sampler(threading.Thread):
    """Every second: each training process under ``root`` (``marl.cli train`` or a Ray Tune trial
    worker) with its OS threads and CPU percent, every process's CPU seconds, and the 1-minute load
    average."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.loads, self.stop = [], [], threading.Event()
        self.root: psutil.Process | None = None   # the command's process: only it and its descendants count
        self.cpu_seen: dict[int, psutil.Process] = {}
        self.cpu_s: dict[int, tuple[bool, float]] = {}   # pid -> (a trainer?, user+sys CPU s at its last sample)

    def run(self):
        while not self.stop.wait(1.0):
            self.loads.append(os.getloadavg()[0])
            try:
                procs = [self.root, *self.root.children(recursive=True)] if self.root else []
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    cmd = " ".join(proc.cmdline())
                    if not cmd:   # a zombie: its last sample stands
                        continue
                    trainer = "marl.cli train" in cmd or cmd.startswith(("ray::_trainable", "ray::ImplicitFunc"))
                    times = proc.cpu_times()
                    self.cpu_s[proc.pid] = (trainer, times.user + times.system)
                    if not trainer:
                        continue
                    p = self.cpu_seen.setdefault(proc.pid, proc)
                    cpu = p.cpu_percent(None)   # since the last sample of this process (0.0 the first time)
                    self.samples.append({"kind": "train" if "marl.cli train" in cmd else "ray",
                                         "pid": proc.pid, "cmd": cmd[:120], "threads": p.num_threads(),
                                         "cpu_percent": cpu})
                except (psutil.Error, OSError):
                    continue

    def summary(self) -> dict:
        out = {}
        for kind in ("train", "ray"):
            rows = [s for s in self.samples if s["kind"] == kind]
            busy = [s["cpu_percent"] for s in rows if s["cpu_percent"] > 0]
            if rows:
                out[kind] = {"processes": len({s["pid"] for s in rows}),
                             "os_threads_max": max(s["threads"] for s in rows),
                             "cpu_percent_max": max(busy) if busy else None,
                             "cpu_percent_median": sorted(busy)[len(busy) // 2] if busy else None}
        out["cpu_s"] = {"trainers": sum(c for t, c in self.cpu_s.values() if t),
                        "all_processes": sum(c for _, c in self.cpu_s.values())}
        loads = self.loads or [os.getloadavg()[0]]
        out["load_1min"] = {"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads)}
        return out


def timed(command: list[str], log: Path) -> tuple[float, Sampler]:
    sampler = Sampler()
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        sampler.root = psutil.Process(proc.pid)
        sampler.start()
        if proc.wait() != 0:
            raise SystemExit(f"{' '.join(command)} failed; see {log}")
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return wall, sampler


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


def compare_runs(single: Path, swept: Path) -> dict:
    """Records and keys of the two runs' metrics.jsonl (perf/* ignored), and their eval.json returns."""
    a = [strip(json.loads(line)) for line in (single / "metrics.jsonl").read_text().splitlines() if line.strip()]
    b = [strip(json.loads(line)) for line in (swept / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = sum(len(r) for r in a)
    mismatched = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (single, swept))
    return {"records": len(a), "records_swept": len(b), "keys": keys, "mismatched_records": mismatched,
            "equal": len(a) == len(b) and not mismatched,
            "greedy_return": [ea["team_return_mean"], eb["team_return_mean"]],
            "eval_equal": ea["team_return_mean"] == eb["team_return_mean"]
                          and ea["sampled"]["team_return_mean"] == eb["sampled"]["team_return_mean"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--steps", type=int, default=150_000, help="train.total_env_steps of every trial "
                        "(default 150k: about 75 s per trial on one core)")
    parser.add_argument("--out", required=True, help="a new directory for the runs and results.json")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    if out.exists():
        parser.error(f"--out {out} exists; give a new directory")
    out.mkdir(parents=True)
    py = sys.executable
    env_set = ["--set", f"train.total_env_steps={args.steps}", "--set", "train.progress=false"]

    print(f"load before: {os.getloadavg()}, cores: {os.cpu_count()}", flush=True)
    seq_start = time.perf_counter()
    seq_sampler_all, seq_walls = [], {}
    for config in args.configs:
        for seed in args.seeds:
            name = f"{Path(config).stem}-s{seed}"
            wall, sampler = timed([py, "-m", "marl.cli", "train", config, "--set", f"seed={seed}", *env_set,
                                   "--run-dir", str(out / "single" / name)], out / f"single-{name}.log")
            seq_walls[name] = wall
            seq_sampler_all.append(sampler)
            print(f"  single {name}: {wall:.1f} s", flush=True)
    seq_wall = time.perf_counter() - seq_start

    sweep_wall, sweep_sampler = timed([py, "-m", "marl.cli", "sweep", *args.configs, "--seeds", *map(str, args.seeds),
                                       *env_set, "--out", str(out / "sweep")], out / "sweep.log")
    print(f"  sweep: {sweep_wall:.1f} s", flush=True)

    seq_stats = Sampler()
    for s in seq_sampler_all:
        seq_stats.samples += s.samples
        seq_stats.loads += s.loads
        seq_stats.cpu_s.update(s.cpu_s)
    threads = {"sequential": seq_stats.summary(), "sweep": sweep_sampler.summary()}
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    trial_wall = {e["trial"]: e["wall_s"] for e in summary["trials"]}
    checks = {name: compare_runs(out / "single" / name, out / "sweep" / name) for name in seq_walls}
    result = {"configs": args.configs, "seeds": args.seeds, "steps": args.steps, "cores": os.cpu_count(),
              "sequential_wall_s": seq_wall, "sweep_wall_s": sweep_wall, "speedup": seq_wall / sweep_wall,
              "single_wall_s": seq_walls, "sweep_trial_wall_s": trial_wall, "threads": threads,
              "metrics": checks, "all_equal": all(c["equal"] and c["eval_equal"] for c in checks.values())}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{len(seq_walls)} trials ({' + '.join(Path(c).stem for c in args.configs)} × seeds {args.seeds}, "
          f"{args.steps} env steps each), {os.cpu_count()} cores\n")
    print("| | wall clock s | load (1 min) mean [min, max] | processes: OS threads max, CPU % median |")
    print("|---|---|---|---|")
    for label, wall, key, kind in ((f"{len(seq_walls)} × `marl train`, one after another", seq_wall, "sequential", "train"),
                                   ("one `marl sweep` (default jobs)", sweep_wall, "sweep", "ray")):
        t = threads[key]
        load = t["load_1min"]
        p = t.get(kind, {})
        print(f"| {label} | {wall:.0f} | {load['mean']:.2f} [{load['min']:.2f}, {load['max']:.2f}] | "
              f"{p.get('processes')}: {p.get('os_threads_max')}, {p.get('cpu_percent_median')} |")
    print(f"\nspeed-up: {seq_wall / sweep_wall:.2f}×; CPU seconds (training processes / all the command's "
          f"processes): sequential {threads['sequential']['cpu_s']['trainers']:.0f} / "
          f"{threads['sequential']['cpu_s']['all_processes']:.0f}, sweep {threads['sweep']['cpu_s']['trainers']:.0f} / "
          f"{threads['sweep']['cpu_s']['all_processes']:.0f}\n")
    print("| trial | single s | in sweep s | metrics records (keys) equal, perf/* ignored | greedy return single / sweep |")
    print("|---|---|---|---|---|")
    for name, c in checks.items():
        eq = "yes" if c["equal"] else f"NO ({len(c['mismatched_records'])} differ; {c['records_swept']} vs {c['records']})"
        print(f"| {name} | {seq_walls[name]:.0f} | {trial_wall.get(name) or 0:.0f} | {eq}: {c['records']} ({c['keys']}) | "
              f"{c['greedy_return'][0]:.3f} / {c['greedy_return'][1]:.3f} |")
    print(f"\nresults: {out / 'results.json'}")
    return 0 if result["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
