"""``marl sweep``: configs × seeds × ``--set`` grids as Ray Tune trials, each an ordinary run directory.

    marl sweep configs/spread_mappo.yaml configs/spread_coma.yaml --seeds 11 12 13 \\
        --set algo.lr=3e-4,1e-3 --out sweeps/lr

Layout of ``--out DIR``:
- ``DIR/<trial>/``: one run directory per trial (``marl eval``, ``credit``, ``compare`` and
  ``marl train --resume`` read it), named ``<config stem>[-<key>_<value>...]-s<seed>``;
- ``DIR/sweep.json``: the plan (each trial's resolved config), written before anything trains;
- ``DIR/trials/<trial>.json``: each trial's outcome, written as it ends (``done`` or ``failed``);
- ``DIR/summary.json`` and ``DIR/summary.md``: one entry per trial and the groups' IQM with 95%
  bootstrap CIs (``marl.compare``), with ``DIR/compare.png`` and ``DIR/compare.md``;
- ``DIR/.tune/``: Ray Tune's own experiment state.

Trials run locally on a private Ray instance (one trial per core, or ``--jobs``) or on a cluster
(``--address``, joined as the RLlib backend joins one, token auth included; ``DIR`` must then be on
a file system every node shares). A failed trial is recorded with its error and the others go on.
``marl sweep --resume DIR`` runs the trials without a ``done`` record: one stopped midway continues
from its last checkpoint (``marl.run.resume_run``), finished ones are kept.

Ray is imported only inside the functions that run the sweep, never at ``import marl`` time.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PLAN_NAME = "sweep.json"
TRIALS_DIR = "trials"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


class SweepError(ValueError):
    """A bad sweep request (config, override, directory, cluster address); the message is one line."""


@dataclass
class Trial:
    name: str
    config: str            # the config file as given (with its ``@key=value,...`` variant, if any)
    seed: int
    overrides: list[str]   # --set values of this trial (seed excluded), in the order applied
    resolved: str          # the resolved config as YAML (what the trial trains)


def split_values(text: str) -> list[str]:
    """``"1e-3,3e-4,[64,64]"`` -> ``["1e-3", "3e-4", "[64,64]"]``: commas inside brackets stay."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return [v.strip() for v in out if v.strip()]


def _grid(sets: list[str]) -> tuple[list[list[str]], set[str]]:
    """``["a=1,2", "b=x"]`` -> ``([["a=1", "b=x"], ["a=2", "b=x"]], {"a"})``: the Cartesian product,
    and the keys given several values."""
    axes, varying = [], set()
    for item in sets:
        key, eq, values = item.partition("=")
        if not eq or not key.strip():
            raise SweepError(f"--set {item!r}: expected KEY=VALUE[,VALUE...]")
        vals = split_values(values)
        if not vals:
            raise SweepError(f"--set {item!r}: no value after '='")
        axes.append([f"{key.strip()}={v}" for v in vals])
        if len(vals) > 1:
            varying.add(key.strip())
    return [list(combo) for combo in itertools.product(*axes)], varying


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def plan_trials(configs: list[str], seeds: list[int], sets: list[str] = ()) -> list[Trial]:
    """Every config × ``--set`` combination × seed, each config resolved now so that a bad key or
    value stops the sweep before anything trains. ``configs`` may name a variant as
    ``path.yaml@key=value,key=value``. Raises ``SweepError`` (one line)."""
    from marl.config import ConfigError, load_config

    if not configs:
        raise SweepError("give at least one CONFIG")
    if not seeds:
        raise SweepError("give at least one seed (--seeds S...)")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds repeats a seed: {seeds}")
    trials, names = [], set()
    combos, varying = _grid(list(sets))
    for spec in configs:
        path, _, variant = spec.partition("@")
        fixed = split_values(variant) if variant else []
        for combo in combos:
            overrides = fixed + combo
            for seed in seeds:
                try:
                    cfg = load_config(path, overrides + [f"seed={seed}"])
                except ConfigError as exc:
                    raise SweepError(f"{spec}{' --set ' + ' '.join(combo) if combo else ''}: {exc}") from None
                named = fixed + [o for o in combo if o.partition("=")[0] in varying]   # what tells trials apart
                parts = [Path(path).stem] + [_slug(o.replace("=", "_")) for o in named] + [f"s{seed}"]
                name = "-".join(parts)
                if name in names:
                    raise SweepError(f"two trials would share the run directory {name!r}; give each config once")
                names.add(name)
                trials.append(Trial(name, spec, seed, overrides, cfg.to_yaml()))
    return trials


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")   # then renamed: a kill meanwhile leaves the old file whole
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def create_sweep(out: str | Path, trials: list[Trial]) -> Path:
    """Write the plan to a new (or empty) ``out``; refuses a used directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"--out {str(out)!r} is not empty (an earlier sweep? continue it with "
                         f"--resume {out}); pick a new directory")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / PLAN_NAME, {"trials": [asdict(t) for t in trials]})
    return out


def load_plan(out: str | Path) -> list[Trial]:
    path = Path(out) / PLAN_NAME
    try:
        data = json.loads(path.read_text())
        return [Trial(**t) for t in data["trials"]]
    except FileNotFoundError:
        raise SweepError(f"{str(out)!r} is not a sweep directory (no {PLAN_NAME})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"cannot read {path} ({exc})") from None


def record_trial(out: str | Path, record: dict) -> None:
    """Write one trial's outcome record (``run_trial``'s return) to ``out/trials/<trial>.json``."""
    (Path(out) / TRIALS_DIR).mkdir(exist_ok=True)
    _write_json(Path(out) / TRIALS_DIR / f"{record['trial']}.json", record)


def load_summary(out: str | Path) -> dict:
    """``out/summary.json`` of a sweep (see ``write_summary``)."""
    path = Path(out) / SUMMARY_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SweepError(f"cannot read {path} ({exc}); finish the sweep or run marl sweep --resume {out}") from None


def trial_records(out: str | Path) -> dict[str, dict]:
    """The outcome records written so far, by trial name."""
    records = {}
    for path in sorted((Path(out) / TRIALS_DIR).glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue   # unreadable: the trial runs again
    return records


# -- one trial (runs in a Ray worker) -------------------------------------------------------------------

def run_trial(trial: Trial, run_dir: str | Path) -> dict:
    """Train ``trial`` in ``run_dir`` (continuing it from its checkpoint when it has a config
    already) and evaluate it as ``marl train`` does. Returns the outcome record; an error is
    returned as ``{"status": "failed", "error": "<one line>"}``, never raised."""
    import yaml

    from marl.config import config_from_dict
    from marl.run import CONFIG_NAME, final_evaluation, new_run, resume_run

    run_dir = Path(run_dir)
    start = time.time()
    record = {"trial": trial.name, "config": trial.config, "seed": trial.seed, "overrides": trial.overrides,
              "run_dir": str(run_dir)}
    try:
        if (run_dir / CONFIG_NAME).is_file():
            trainer = resume_run(run_dir)
        else:
            trainer = new_run(config_from_dict(yaml.safe_load(trial.resolved)), run_dir)
        try:
            summary = trainer.train(progress=False)
            result = final_evaluation(trainer)
        finally:
            trainer.close()
    except Exception as exc:   # recorded for the summary; the others go on
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {**record, "status": "failed", "error": f"{type(exc).__name__}: {message}",
                "wall_s": time.time() - start}
    return {**record, "status": "done", "env_steps": summary["env_steps"], "wall_s": time.time() - start,
            "train_team_return": summary["team_return"],
            "greedy_return": None if result is None else result["team_return_mean"],
            "sampled_return": None if result is None else result["sampled"]["team_return_mean"],
            "win_rate": None if result is None else result.get("win_rate")}


def _trainable(params: dict) -> None:
    """The Tune function trainable: one trial, reported once."""
    from ray import tune

    spec = params["spec"]
    tune.report({"record": json.dumps(run_trial(Trial(**spec["trial"]), spec["run_dir"]))})


# -- Ray ----------------------------------------------------------------------------------------------

def _start_ray(address: str, jobs: int | None) -> None:
    """A private local Ray instance (``jobs`` CPUs, default all) or the cluster at ``address``, with
    the RLlib backend's settings (``marl.rllib.trainer.start_ray``): Ray's token auth comes from
    ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` (docs/rllib.md)."""
    import ray

    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              "runtime_env": {"env_vars": {"PYTHONPATH": path, "RAY_CHDIR_TO_TRIAL_DIR": "0"}}}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise SweepError(f"--address: no Ray cluster answers at {address!r} ({reason}); start one with "
                             f"`ray start --head`, set RAY_AUTH_MODE=token if it uses token authentication "
                             f"(see docs/rllib.md), or leave --address out for a local sweep") from None
    else:
        ray.init(num_cpus=jobs or os.cpu_count() or 1, **kwargs)


def _tune_name(tune_trial) -> str:
    return tune_trial.config["spec"]["trial"]["name"]


def _cpus_per_trial(trial: Trial) -> int:
    import yaml
    env = yaml.safe_load(trial.resolved).get("env", {})
    return 1 + int(env.get("workers", 0) or 0)


def run_sweep(out: str | Path, jobs: int | None = None, address: str = "", print_fn=print) -> dict:
    """Run the trials of the sweep in ``out`` that have no ``done`` record, then write the summary.
    Returns it (see ``write_summary``), with ``interrupted`` True when some trial did not end (a
    Ctrl-C: continue with ``--resume``)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # the quiet console reporter (verbose=0)
    out = Path(out).resolve()
    trials = load_plan(out)
    done = {name for name, r in trial_records(out).items() if r.get("status") == "done"}
    todo = [t for t in trials if t.name not in done]
    (out / TRIALS_DIR).mkdir(exist_ok=True)
    if done:
        print_fn(f"keeping {len(done)} finished trial(s); running {len(todo)}")
    if todo:
        _tune(out, todo, jobs, address, print_fn)
    summary = write_summary(out)
    summary["interrupted"] = any(e["status"] == "not run" for e in summary["trials"])
    return summary


def _tune(out: Path, todo: list[Trial], jobs: int | None, address: str, print_fn) -> None:
    import ray
    from ray import tune

    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)

    class Record(tune.Callback):
        """Writes each trial's outcome as it arrives (so a Ctrl-C keeps it) and prints one line."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = json.loads(result["record"])
            record_trial(out, record)
            if record["status"] == "done":
                ret = record["greedy_return"]
                ret = f"greedy return {ret:.2f}" if ret is not None else f"train return {record['train_team_return']}"
                print_fn(f"  {record['trial']}: {ret} ({record['wall_s']:.0f} s)")
            else:
                print_fn(f"  {record['trial']}: FAILED: {record['error']}")

        def on_trial_error(self, iteration, trials, trial, **info):   # the worker died (not an exception)
            params = trial.config["spec"]
            name = params["trial"]["name"]
            error = str(getattr(trial, "error_msg", None) or "the trial's worker died").strip().splitlines()[-1]
            record_trial(out, {"trial": name, "config": params["trial"]["config"], "seed": params["trial"]["seed"],
                               "overrides": params["trial"]["overrides"], "run_dir": params["run_dir"],
                               "status": "failed", "error": error})
            print_fn(f"  {name}: FAILED: {error}")

    started = not ray.is_initialized()
    if started:
        _start_ray(address, jobs)
    try:
        cpus = max(_cpus_per_trial(t) for t in todo)
        params = [{"trial": asdict(t), "run_dir": str(out / t.name)} for t in todo]
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": cpus}),
            param_space={"spec": tune.grid_search(params)},
            # reuse_actors: a trial runs in a worker left by an earlier one, not a new process (each new
            # one imports torch and marl again: ~5 s under load, more than a short trial's training)
            tune_config=tune.TuneConfig(max_concurrent_trials=jobs, trial_name_creator=_tune_name,
                                        trial_dirname_creator=_tune_name, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(out / ".tune"), name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
                                      verbose=0, callbacks=[Record()],
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        print_fn(f"{len(todo)} trial(s) on {'the Ray cluster at ' + address if address else 'a local Ray instance'}")
        tuner.fit()
    finally:
        if started:
            ray.shutdown()


# -- the summary --------------------------------------------------------------------------------------

def write_summary(out: str | Path, reps: int | None = None) -> dict:
    """``summary.json`` (one entry per planned trial: config, seed, overrides, status, final greedy
    and sampled return, run directory, error) with the groups of ``marl.compare.compare_runs`` (IQM
    and 95% bootstrap CI of the final return, per-agent credit shares), ``summary.md``, and the
    compare plots ``compare.png`` / ``compare.md`` of the finished trials. Returns the summary."""
    from marl.compare import DEFAULT_REPS, compare_runs

    out = Path(out)
    records = trial_records(out)
    entries = []
    for t in load_plan(out):
        r = records.get(t.name, {})
        entries.append({"trial": t.name, "config": t.config, "seed": t.seed, "overrides": t.overrides,
                        "status": r.get("status", "not run"), "greedy_return": r.get("greedy_return"),
                        "sampled_return": r.get("sampled_return"), "win_rate": r.get("win_rate"),
                        "env_steps": r.get("env_steps"),
                        "wall_s": r.get("wall_s"), "run_dir": str(out / t.name), "error": r.get("error")})
    finished = [Path(e["run_dir"]) for e in entries if e["status"] == "done"]
    groups, differing = [], []
    if finished:
        result = compare_runs(finished, out / "compare.png", out / "compare.md", reps=reps or DEFAULT_REPS)
        groups, differing = result["groups"], result["differing_keys"]
    summary = {"trials": entries, "groups": groups, "differing_keys": differing}
    _write_json(out / SUMMARY_JSON, summary)
    (out / SUMMARY_MD).write_text(summary_markdown(summary))
    return summary


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def summary_markdown(summary: dict) -> str:
    from marl.compare import format_interval

    lines = ["| group | seeds | final return: IQM [95% CI] | per seed |", "|---|---|---|---|"]
    for g in summary["groups"]:
        fr = g["final_return"]
        per_seed = ", ".join(f"s{s}: {_fmt(v)}" for s, v in zip(g["seeds"], fr["per_run"]))
        lines.append(f"| {g['label']} | {len(g['seeds'])} | **{format_interval(fr['iqm'], fr['ci'], 2)}** | "
                     f"{per_seed} |")
    lines += ["", ("IQM = interquartile mean over seeds of each run's final greedy evaluation return (see "
                   "compare.md for how a run without one is scored); 95% stratified-bootstrap CI from rliable."), "",
              "| trial | status | greedy return | sampled return | env steps | wall s | run directory |",
              "|---|---|---|---|---|---|---|"]
    for e in summary["trials"]:
        status = e["status"] if e["status"] != "failed" else f"failed: {e['error']}"
        wall = "" if e["wall_s"] is None else f"{e['wall_s']:.0f}"
        lines.append(f"| {e['trial']} | {status} | {_fmt(e['greedy_return'])} | {_fmt(e['sampled_return'])} | "
                     f"{e['env_steps'] or ''} | {wall} | {e['run_dir']} |")
    return "\n".join(lines) + "\n"
