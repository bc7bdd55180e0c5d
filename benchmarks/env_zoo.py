"""Env zoo: the default config, briefly, on every env family that installs here.

    python benchmarks/env_zoo.py                      # every env, table into docs/envs.md
    python benchmarks/env_zoo.py --only mpe2 sisl     # families or env names
    python benchmarks/env_zoo.py --steps 2000 --timeout 180 --no-write

Each env runs ``configs/spread_mappo.yaml`` with only ``env.id``/``env.kwargs`` changed, plus a short
budget (``train.total_env_steps``, ``env.num_envs``, ``train.eval_episodes``), as ``marl train`` in a
child process with a timeout. Per env it reports:

- **outcome**: ``trains``; ``refused`` with the one-line reason ``marl train`` gave (exit status 2);
  ``TRACEBACK`` (a bug: anything else the child printed); ``timeout`` (with the steps it reached);
- **train steps/s**: env steps over the training wall time, from the run's metrics (start-up and
  the final evaluation excluded);
- **raw steps/s**: the env's own random-action steps/s (legal actions where it masks), measured in
  another child of the same sweep: joint steps of a ParallelEnv, single turns of an AEC env;
- **checkpoint** size and **peak memory** (the training child's maximum resident set size,
  from ``os.wait4``).

The Markdown table replaces the "Env zoo" section of docs/envs.md (``--no-write`` only prints it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "spread_mappo.yaml"
DOC = ROOT / "docs" / "envs.md"
SECTION = "## Env zoo"

MPE2 = ["simple_v3", "simple_adversary_v3", "simple_crypto_v3", "simple_push_v3", "simple_reference_v3",
        "simple_speaker_listener_v4", "simple_spread_v3", "simple_tag_v3", "simple_world_comm_v3",
        "collect_treasure_v1", "simple_formation_v1", "simple_line_v1"]
CLASSIC = ["tictactoe_v3", "connect_four_v3", "rps_v2", "leduc_holdem_v4", "texas_holdem_v4",
           "texas_holdem_no_limit_v6", "chess_v6", "go_v5", "hanabi_v5"]

# (family, name, env.id, env.kwargs)
ZOO: list[tuple[str, str, str, dict]] = (
    [("mpe2", name, f"mpe2.{name}:parallel_env", {}) for name in MPE2]
    + [("butterfly", name, f"pettingzoo.butterfly.{name}:parallel_env", {})
       for name in ["cooperative_pong_v6", "knights_archers_zombies_v11", "pistonball_v6"]]
    + [("sisl", name, f"pettingzoo.sisl.{name}:parallel_env", {}) for name in ["multiwalker_v9", "pursuit_v5"]]
    + [("classic", name, f"pettingzoo.classic.{name}:env", {}) for name in CLASSIC]
    + [("lbf", name, f"lbf:{name}", {}) for name in
       ["Foraging-8x8-2p-2f-coop-v3", "Foraging-2s-8x8-2p-2f-coop-v3", "Foraging-10x10-3p-3f-v3",
        "Foraging-15x15-4p-4f-v3"]]
    + [("rware", name, f"rware:{name}", {}) for name in
       ["rware-tiny-2ag-v2", "rware-tiny-4ag-v2", "rware-small-4ag-v2"]]
    + [("mamujoco", f"{scenario} {conf}", "gymnasium_robotics.mamujoco_v1:parallel_env",
        {"scenario": scenario, "agent_conf": conf})
       for scenario, conf in [("HalfCheetah", "2x3"), ("Ant", "2x4"), ("Walker2d", "2x3"), ("Hopper", "3x1")]]
    + [("magent2", f"{name} map_size=12", f"magent2.environments.{name}:parallel_env", {"map_size": 12})
       for name in ["battle_v4", "adversarial_pursuit_v4", "tiger_deer_v4"]]
)


@dataclass
class Result:
    family: str
    name: str
    outcome: str            # trains | refused | TRACEBACK | timeout
    reason: str = ""        # the refusal, the traceback's last line, or what the timeout reached
    train_sps: float | None = None
    raw_sps: float | None = None
    checkpoint_mb: float | None = None
    peak_mb: float | None = None
    wall_s: float = 0.0


def _run_child(args: list[str], timeout: float, log: Path) -> tuple[int | None, float, float]:
    """Run ``python args`` with its output in ``log``; returns (exit status or None on timeout,
    its peak resident set in MB, wall seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
                                env=env, start_new_session=True)   # cwd: MuJoCo writes its log there
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, 9))
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped above: tell Popen
    code = None if proc.returncode == -9 else proc.returncode
    return code, usage.ru_maxrss / 1024.0, time.perf_counter() - start


def run_one(family: str, name: str, env_id: str, kwargs: dict, steps: int = 2000, num_envs: int = 4,
            timeout: float = 180.0, raw_seconds: float = 3.0, workdir: Path | None = None) -> Result:
    """Train the default config on one env in a child process, and time the raw env in another."""
    import yaml

    workdir = Path(workdir or tempfile.mkdtemp(prefix="zoo-"))
    slug = "".join(c if c.isalnum() else "_" for c in f"{family}_{name}")
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["env"]["id"], cfg["env"]["kwargs"] = env_id, kwargs
    cfg_path, run_dir, log = workdir / f"{slug}.yaml", workdir / slug, workdir / f"{slug}.log"
    cfg_path.write_text(yaml.safe_dump(cfg))
    code, peak_mb, wall = _run_child(
        ["-m", "marl.cli", "train", str(cfg_path), "--run-dir", str(run_dir),
         "--set", f"train.total_env_steps={steps}", "--set", f"env.num_envs={num_envs}",
         "--set", "train.eval_episodes=2", "--set", "train.progress=false"], timeout, log)
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    result = Result(family, name, "trains", peak_mb=round(peak_mb), wall_s=round(wall, 1))
    records = _metrics(run_dir)
    if records:
        last = records[-1]
        result.train_sps = round(last["env_steps"] / max(last["perf/wall_s"], 1e-9))
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.is_file():
        result.checkpoint_mb = round(checkpoint.stat().st_size / 2**20, 2)
    if "Traceback (most recent call last)" in text:
        result.outcome, result.reason = "TRACEBACK", lines[-1] if lines else ""
    elif code is None:
        reached = records[-1]["env_steps"] if records else 0
        result.outcome, result.reason = "timeout", f"{reached} of {steps} env steps in {timeout:.0f} s"
    elif code != 0:
        result.outcome, result.reason = "refused", lines[-1] if lines else f"exit status {code}"
        result.reason = result.reason.removeprefix("marl train: error: ")
    result.raw_sps = _raw_sps(env_id, kwargs, raw_seconds, workdir / f"{slug}.raw.log", timeout)
    return result


def _metrics(run_dir: Path) -> list[dict]:
    from marl.logger import read_metrics

    return [r for r in read_metrics(run_dir) if "perf/wall_s" in r] if run_dir.is_dir() else []


def _raw_sps(env_id: str, kwargs: dict, seconds: float, log: Path, timeout: float) -> float | None:
    code, _, _ = _run_child([str(Path(__file__).resolve()), "--raw", env_id, "--kwargs", json.dumps(kwargs),
                             "--seconds", str(seconds)], timeout, log)
    lines = log.read_text(errors="replace").splitlines()
    if code != 0 or not lines:
        return None
    try:
        return json.loads(lines[-1])["steps_per_s"]
    except (ValueError, KeyError):
        return None


def raw_steps_per_s(env_id: str, kwargs: dict, seconds: float) -> float:
    """Random-action steps/s of the env itself, as its factory returns it (legal actions where an
    action_mask says which): joint steps of a ParallelEnv, single turns of an AECEnv."""
    import numpy as np
    from pettingzoo.utils.env import AECEnv

    from marl.envs.registry import resolve_factory

    env = resolve_factory(env_id)(**kwargs)
    rng = np.random.default_rng(0)

    def sample(agent, obs, info):
        space = env.action_space(agent)
        mask = obs.get("action_mask") if isinstance(obs, dict) else None
        mask = info.get("action_mask", mask) if isinstance(info, dict) else mask
        if mask is not None:
            return int(rng.choice(np.flatnonzero(mask)))
        return space.sample()

    steps, start, episode = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        if isinstance(env, AECEnv):
            env.reset(seed=episode)
            for agent in env.agent_iter():
                obs, _, term, trunc, info = env.last()
                env.step(None if term or trunc else sample(agent, obs, info))
                steps += 1
                if time.perf_counter() - start >= seconds:
                    break
        else:
            obs, infos = env.reset(seed=episode)
            while env.agents and time.perf_counter() - start < seconds:
                obs, _, _, _, infos = env.step({a: sample(a, obs.get(a), infos.get(a)) for a in env.agents})
                steps += 1
        episode += 1
    return steps / (time.perf_counter() - start)


def table(results: list[Result], steps: int, num_envs: int) -> str:
    rows = [f"Each env: `configs/spread_mappo.yaml` with only `env.id`/`env.kwargs` changed, "
            f"`--set train.total_env_steps={steps} env.num_envs={num_envs} train.eval_episodes=2`, in a child "
            f"process (`python benchmarks/env_zoo.py`, {time.strftime('%Y-%m-%d')}, 2 shared cores). "
            "Train steps/s excludes start-up and the final evaluation; raw is the env's own random-action "
            "steps/s in the same sweep (joint steps; single turns for an AEC env); peak memory is the "
            "training process's.", "",
            "| family | env | outcome | train steps/s | raw steps/s | checkpoint MB | peak MB | reason |",
            "|---|---|---|---|---|---|---|---|"]

    def fmt(x):
        return "—" if x is None else f"{x:g}"

    for r in results:
        reason = (r.reason if len(r.reason) <= 200 else r.reason[:199] + "…").replace("|", "\\|")
        rows.append(f"| {r.family} | {r.name} | {r.outcome} | {fmt(r.train_sps)} | {fmt(r.raw_sps)} | "
                    f"{fmt(r.checkpoint_mb)} | {fmt(r.peak_mb)} | {reason} |")
    return "\n".join(rows) + "\n"


def write_section(markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the "Env zoo" section of ``doc`` with ``markdown``, keeping its intro."""
    text = doc.read_text()
    intro = ("The default config run briefly on every env family that installs here, by "
             "`benchmarks/env_zoo.py`; a fast subset runs in `tests/test_env_zoo.py`. `refused` is a "
             "one-line error that names what the env lacks; `TRACEBACK` is a bug.\n\n")
    body = f"{SECTION}\n\n{intro}{markdown}"
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="families or env names (default: all)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--timeout", type=float, default=150.0, help="seconds per child process")
    p.add_argument("--raw-seconds", type=float, default=3.0)
    p.add_argument("--no-write", action="store_true", help="print the table; leave docs/envs.md as it is")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--raw", help=argparse.SUPPRESS)
    p.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw:   # a child: time the raw env
        print(json.dumps({"steps_per_s": round(raw_steps_per_s(args.raw, json.loads(args.kwargs), args.seconds))}))
        return 0
    chosen = [z for z in ZOO if not args.only or z[0] in args.only or z[1] in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-") as workdir:
        for family, name, env_id, kwargs in chosen:
            r = run_one(family, name, env_id, kwargs, args.steps, args.num_envs, args.timeout, args.raw_seconds,
                        Path(workdir))
            print(f"{family:10s} {name:32s} {r.outcome:9s} train {r.train_sps} raw {r.raw_sps} "
                  f"ckpt {r.checkpoint_mb} MB peak {r.peak_mb} MB  {r.reason}", flush=True)
            results.append(r)
    markdown = table(results, args.steps, args.num_envs)
    print(markdown)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    if not args.no_write:
        write_section(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
