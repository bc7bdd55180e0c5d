"""Compare finished runs: group run directories by config, plot their return curves and credit
shares, and tabulate final returns with confidence intervals.

Runs whose resolved configs are equal except for ``seed`` (and ``train.progress``) form one group.
Final returns are summarised by the interquartile mean (IQM) with a 95% stratified-bootstrap
confidence interval from ``rliable``; curve bands and credit-share intervals are percentile
bootstrap intervals of the mean across seeds, also from ``rliable``. With a handful of seeds a
bootstrap interval is narrower than the truth (it cannot see variation the seeds did not show):
read it as a lower bound on the uncertainty.

``iqm_interval``, ``bootstrap_interval`` and ``seed_report`` are also used by ``benchmarks/``.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Keys ignored when grouping: the seed is what varies within a group; the others change what is
# reported about a run (progress bar, evaluation sizes, checkpoint cadence), not its training.
GROUP_IGNORE = ("seed", "train.progress", "train.eval_episodes", "train.eval_every_episodes",
                "train.checkpoint_every")
# The cumulative wall-clock key the trainer logs (carried across resumes).
WALL_CLOCK_KEYS = ("perf/wall_s",)
EVAL_KEY = "eval/team_return"
TRAIN_KEY = "team_return"
SHARE_PREFIX = "credit/share/"
FINAL_TRAIN_WINDOW = 5   # without any evaluation, the final return is the mean of the last 5 logged
DEFAULT_REPS = 2000      # bootstrap resamples (with 5 seeds there are only 126 distinct resamples)
_LABEL_PRIORITY = ("algo.advantage", "env.id", "algo.", "env.reward", "env.alpha", "env.shaping", "env.",
                   "model.", "train.", "log.")


class CompareError(ValueError):
    """Bad input to ``compare_runs``; the message is one line and names the directory."""


class NotARunDirectoryError(CompareError):
    """The path is not a run directory (no ``config.yaml``)."""


class NoMetricsError(CompareError):
    """The run directory has no usable ``metrics.jsonl`` records."""


# -- statistics (rliable) ----------------------------------------------------------------------------

def _rliable():
    try:
        from rliable import library, metrics
    except Exception as exc:   # ImportError, or arch failing on pandas 3 (TypeError at import)
        raise ImportError(f"confidence intervals need rliable ({type(exc).__name__}: {exc}); install it with "
                          "pip install 'rliable==1.2.0' 'pandas<3'") from exc
    return library, metrics


def bootstrap_interval(scores, statistic: str = "iqm", reps: int = DEFAULT_REPS, seed: int = 0,
                       confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Point estimate and percentile stratified-bootstrap CI of each column of ``scores``
    ``[runs, K]`` (or ``[runs]``), by ``rliable.library.get_interval_estimates``.

    ``statistic`` is ``"iqm"`` (``rliable.metrics.aggregate_iqm``) or ``"mean"``. Rows with a
    non-finite entry are dropped. Returns ``(point [K], low [K], high [K], runs used)``; with fewer
    than 2 runs the bounds are NaN. Deterministic for a given ``seed``: rliable draws its resamples
    from NumPy's global generator, which is seeded here and restored afterwards.
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    x = x[np.isfinite(x).all(axis=1)]
    k = x.shape[1]
    nan = np.full(k, np.nan)
    if len(x) == 0:
        return nan, nan.copy(), nan.copy(), 0
    library, metrics = _rliable()
    if statistic == "iqm":
        def func(s):
            return np.array([metrics.aggregate_iqm(s[:, j]) for j in range(s.shape[1])])
    elif statistic == "mean":
        def func(s):   # aggregate_mean of each column, vectorised
            return s.mean(axis=0)
    else:
        raise ValueError(f"statistic must be 'iqm' or 'mean', got {statistic!r}")
    if len(x) == 1:
        return func(x), nan, nan.copy(), 1
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        # No random_state: rliable 1.2.0 resamples from np.random's global generator whatever it is.
        point, interval = library.get_interval_estimates({"x": x}, func, reps=reps,
                                                         confidence_interval_size=confidence)
    finally:
        np.random.set_state(state)
    return point["x"], interval["x"][0], interval["x"][1], len(x)


def iqm_interval(values, reps: int = DEFAULT_REPS, seed: int = 0) -> dict:
    """IQM of ``values`` (one per seed; NaNs dropped) with its 95% stratified-bootstrap CI (rliable):
    ``{"iqm", "ci": [low, high] or None, "n"}``."""
    point, low, high, n = bootstrap_interval(values, "iqm", reps, seed)
    return {"iqm": _num(point[0]), "ci": None if n < 2 else [float(low[0]), float(high[0])], "n": n}


def format_interval(point, ci, digits: int = 1) -> str:
    """``-55.2 [-56.0, -54.4]``; ``n/a`` for a missing value; no bracket without a CI."""
    if point is None or not math.isfinite(point):
        return "n/a"
    if ci is None:
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


SEED_NOTE = ("Report on seeds the config was not tuned on: the configs were tuned on seeds {tuning}; "
             "these results use seeds {seeds}{overlap}.")


def seed_report(seeds: list[int], tuning_seeds: list[int]) -> dict:
    """Which seeds a benchmark used, which the configs were tuned on, and whether the two are
    disjoint (``held_out``), with a one-sentence ``seed_note`` for reports."""
    overlap = sorted(set(seeds) & set(tuning_seeds))
    note = SEED_NOTE.format(tuning=_seed_list(tuning_seeds), seeds=_seed_list(seeds),
                            overlap=f" (WARNING: {_seed_list(overlap)} overlap the tuning seeds, so these are "
                                    "not held-out results)" if overlap else ", none of them tuning seeds")
    return {"seeds": list(seeds), "tuning_seeds": list(tuning_seeds), "held_out": not overlap,
            "overlapping_seeds": overlap, "seed_note": note}


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in seeds) if seeds else "none"


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# -- reading run directories ------------------------------------------------------------------------

@dataclass
class RunData:
    """One run directory, read."""
    path: Path
    config: dict
    records: list[dict]
    eval_result: dict | None = None
    config_note: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def env_id(self) -> str:
        return str((self.config.get("env") or {}).get("id", "?"))

    @property
    def env_steps(self) -> int:
        return int(self.records[-1]["env_steps"])

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(env_steps, values)`` of the records where ``key`` is a finite number."""
        pts = [(r["env_steps"], r[key]) for r in self.records if _finite(r.get(key))]
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    def wall_clock(self) -> tuple[np.ndarray, np.ndarray, str]:
        """Knots ``(env_steps, seconds)`` of the run's cumulative wall-clock time, and its source.

        An explicit cumulative key (``WALL_CLOCK_KEYS``) is used when the trainer logged one.
        Otherwise the time is the sum over records of ``Δenv_steps / perf/env_steps_per_s``: the
        trainer logs the last iteration's rate (its collect + update time), so with ``log_every > 1``
        that rate stands for every iteration since the previous record. This leaves out what happens
        between iterations (logging, credit views, checkpoints) and any time before a resume.
        """
        for key in WALL_CLOCK_KEYS:
            steps, secs = self.curve(key)
            if len(steps):
                return np.concatenate([[0.0], steps]), np.concatenate([[0.0], secs]), key
        steps, secs, prev, total = [0.0], [0.0], 0, 0.0
        for r in self.records:
            sps = r.get("perf/env_steps_per_s")
            if _finite(sps) and sps > 0:
                total += (r["env_steps"] - prev) / sps
                prev = r["env_steps"]
                steps.append(float(prev))
                secs.append(total)
        return np.array(steps), np.array(secs), "Σ Δenv_steps / perf/env_steps_per_s"

    @property
    def wall_s(self) -> float:
        steps, secs, _ = self.wall_clock()
        return float(np.interp(self.env_steps, steps, secs)) if len(steps) > 1 else float("nan")

    def final_return(self) -> tuple[float, str]:
        """The final greedy return, and where it came from: ``eval.json`` (if written at the run's
        last env step), else the last ``eval/team_return``, else the mean of the last
        ``FINAL_TRAIN_WINDOW`` logged training ``team_return``s."""
        ev = self.eval_result
        if ev and _finite(ev.get("team_return_mean")) and ev.get("env_steps", self.env_steps) == self.env_steps:
            return float(ev["team_return_mean"]), "eval.json"
        _, y = self.curve(EVAL_KEY)
        if len(y):
            return float(y[-1]), EVAL_KEY
        _, y = self.curve(TRAIN_KEY)
        if len(y):
            return float(y[-FINAL_TRAIN_WINDOW:].mean()), f"training {TRAIN_KEY} (last {min(len(y), FINAL_TRAIN_WINDOW)})"
        return float("nan"), "none"

    def time_to(self, target: float, key: str) -> tuple[float, float] | None:
        """``(env_steps, seconds)`` at the first record whose ``key`` reaches ``target`` (≥), the
        seconds read off ``wall_clock`` at that step; None if the run never reached it."""
        steps, values = self.curve(key)
        reached = np.flatnonzero(values >= target)
        if not len(reached):
            return None
        at = float(steps[reached[0]])
        knots, secs, _ = self.wall_clock()
        return at, float(np.interp(at, knots, secs)) if len(knots) > 1 else float("nan")

    def credit_shares(self) -> dict[str, float]:
        """The last logged ``credit/share/<agent>`` of each agent (empty if none was logged)."""
        for r in reversed(self.records):
            shares = {k[len(SHARE_PREFIX):]: float(v) for k, v in r.items() if k.startswith(SHARE_PREFIX) and _finite(v)}
            if shares:
                return dict(sorted(shares.items()))
        return {}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_run(run_dir: str | Path) -> RunData:
    """Read ``config.yaml`` (resolved against the current defaults where it still loads),
    ``metrics.jsonl`` and, if present, ``eval.json``. Raises a ``CompareError`` subclass."""
    import yaml

    from marl.config import ConfigError, load_config
    from marl.logger import METRICS_NAME
    from marl.run import CONFIG_NAME, EVAL_NAME

    path = Path(run_dir)
    if not path.is_dir():
        raise NotARunDirectoryError(f"{str(path)!r} is not a run directory (not a directory)")
    if not (path / CONFIG_NAME).is_file():
        raise NotARunDirectoryError(f"{str(path)!r} is not a run directory (no {CONFIG_NAME})")
    note = ""
    try:
        config = load_config(path / CONFIG_NAME).to_dict()
    except ConfigError as exc:   # e.g. a run from another version: compare its raw YAML
        try:
            config = yaml.safe_load((path / CONFIG_NAME).read_text())
        except yaml.YAMLError:
            raise NotARunDirectoryError(f"{str(path)!r}: {CONFIG_NAME} is not valid YAML") from None
        if not isinstance(config, dict):
            raise NotARunDirectoryError(f"{str(path)!r}: {CONFIG_NAME} is not a mapping") from None
        note = f"config not resolved ({str(exc).splitlines()[0]})"
    metrics_path = path / METRICS_NAME
    if not metrics_path.is_file():
        raise NoMetricsError(f"{str(path)!r} has no {METRICS_NAME} (did the run log an iteration?)")
    lines = metrics_path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):   # a last line cut short by a crash
                continue
            raise CompareError(f"{str(path)!r}: {METRICS_NAME} line {i} is not JSON") from None
        if isinstance(rec, dict) and _finite(rec.get("env_steps")):
            records.append(rec)
    if not records:
        raise NoMetricsError(f"{str(path)!r}: {METRICS_NAME} has no records with env_steps")
    records.sort(key=lambda r: r["env_steps"])
    eval_result = None
    if (path / EVAL_NAME).is_file():
        try:
            eval_result = json.loads((path / EVAL_NAME).read_text())
        except json.JSONDecodeError:
            raise CompareError(f"{str(path)!r}: {EVAL_NAME} is not JSON") from None
    return RunData(path, config, records, eval_result, note)


# -- grouping ---------------------------------------------------------------------------------------

def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"algo": {"lr": 1e-3}}`` -> ``{"algo.lr": 1e-3}``; lists become tuples."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = _hashable(value)
    return out


def _hashable(value):
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


_MISSING = "<unset>"


@dataclass
class RunGroup:
    """Runs whose configs are equal except for the ignored keys."""
    runs: list[RunData]
    config: dict[str, Any]            # flattened, without the ignored keys
    label: str = ""
    diff: dict[str, Any] = field(default_factory=dict)   # this group's values of the differing keys

    @property
    def env_id(self) -> str:
        return self.runs[0].env_id

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


def group_runs(runs: list[RunData], ignore=GROUP_IGNORE) -> tuple[list[RunGroup], list[str]]:
    """Group runs by their flattened config less ``ignore``; label each group by the keys whose
    values differ between groups (``_label_groups``). Returns
    the groups, in order of first appearance, and the differing keys."""
    groups: dict[tuple, RunGroup] = {}
    for run in runs:
        flat = {k: v for k, v in flatten_config(run.config).items() if k not in ignore}
        key = tuple(sorted(flat.items(), key=lambda kv: kv[0]))
        key = tuple((k, repr(v)) for k, v in key)
        groups.setdefault(key, RunGroup([], flat)).runs.append(run)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: (not isinstance(r.seed, int), r.seed if isinstance(r.seed, int) else 0, r.name))
    keys = []
    for g in out:
        keys.extend(k for k in g.config if k not in keys)
    differing = [k for k in keys if len({repr(g.config.get(k, _MISSING)) for g in out}) > 1]
    differing.sort(key=_label_rank)
    for g in out:
        g.diff = {k: g.config.get(k, _MISSING) for k in differing}
    _label_groups(out, differing)
    return out, differing


def _label_rank(key: str) -> tuple[int, str]:
    for i, prefix in enumerate(_LABEL_PRIORITY):
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return i, key
    return len(_LABEL_PRIORITY), key


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def _stem(names: list[str]) -> str:
    """The run directories' common name less seeds and ``marl train``'s default time stamp."""
    stripped = [re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", n) for n in names]
    stripped = [re.sub(r"[-_.]?(s|seed)?[-_]?\d+$", "", n) or n for n in stripped]
    if len(set(stripped)) == 1:
        return stripped[0]
    common = os.path.commonprefix(stripped).rstrip("-_.")
    return common or stripped[0]


def _label_groups(groups: list[RunGroup], differing: list[str]) -> None:
    """Label each group by the fewest leading differing keys (in ``_LABEL_PRIORITY`` order) that tell
    the groups apart, ``algo.advantage=coma (+3 more)``; by the run directories' stem when no key
    differs."""
    if not differing:
        for g in groups:
            g.label = _stem([r.name for r in g.runs])
        return
    n = 1
    while True:
        labels = [", ".join(f"{k}={_fmt_value(g.diff[k])}" for k in differing[:n]) for g in groups]
        if len(set(labels)) == len(labels) or n == len(differing):
            break
        n += 1
    more = len(differing) - n
    for g, label in zip(groups, labels):
        g.label = label + (f" (+{more} more)" if more else "")


# -- curves -------------------------------------------------------------------------------------------

def _band(curves: list[tuple[np.ndarray, np.ndarray]], reps: int, seed: int, max_points: int = 200):
    """Mean curve across runs on a common grid (the x range every run covers), with a pointwise 95%
    bootstrap band (None for a single run or no overlap). Returns ``(x, mean, low, high)``."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return None
    if len(curves) == 1:
        return curves[0][0], curves[0][1], None, None
    lo, hi = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    if lo > hi:
        return None
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x, _ in curves]))
    if len(grid) > max_points:
        grid = np.linspace(lo, hi, max_points)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    mean, low, high, _ = bootstrap_interval(ys, "mean", reps, seed)
    return grid, mean, low, high


def _curve_source(group: RunGroup) -> str:
    return EVAL_KEY if all(len(r.curve(EVAL_KEY)[0]) for r in group.runs) else TRAIN_KEY


# -- the comparison -------------------------------------------------------------------------------

def _time_to_targets(g: RunGroup, targets: list[float]) -> dict:
    """Per target: each run's ``(env_steps, seconds)`` to first reach it on the group's curve (None
    where it never did), and the median over runs of those that did."""
    key = _curve_source(g)
    out = {}
    for target in targets:
        hits = [r.time_to(target, key) for r in g.runs]
        done = [h for h in hits if h is not None]
        out[_fmt_value(target)] = {
            "per_run": [None if h is None else {"env_steps": h[0], "seconds": _num(h[1])} for h in hits],
            "reached": len(done), "runs": len(hits), "curve": key,
            "median_seconds": _num(float(np.median([h[1] for h in done]))) if done else None,
            "median_env_steps": float(np.median([h[0] for h in done])) if done else None}
    return out


def _group_summary(g: RunGroup, reps: int, seed: int, targets: list[float] = ()) -> dict:
    finals = [r.final_return() for r in g.runs]
    walls = [r.wall_s for r in g.runs]
    steps = [r.env_steps for r in g.runs]
    agents: list[str] = []
    for r in g.runs:
        agents.extend(a for a in r.credit_shares() if a not in agents)
    shares = {}
    share_rows = [r.credit_shares() for r in g.runs]
    if agents:
        matrix = np.array([[s.get(a, np.nan) for a in agents] for s in share_rows])
        mean, low, high, n = bootstrap_interval(matrix, "mean", reps, seed)
        for j, a in enumerate(agents):
            shares[a] = {"mean": _num(mean[j]), "ci": None if n < 2 else [float(low[j]), float(high[j])],
                         "per_run": [_num(v) for v in matrix[:, j]]}
    return {
        "label": g.label, "env": g.env_id, "runs": [str(r.path) for r in g.runs], "seeds": g.seeds,
        "final_return": {**iqm_interval([f for f, _ in finals], reps, seed),
                         "per_run": [_num(f) for f, _ in finals], "sources": [s for _, s in finals]},
        "curve_source": _curve_source(g),
        "env_steps": steps, "wall_s": [_num(w) for w in walls],
        "wall_source": sorted({r.wall_clock()[2] for r in g.runs}),
        "env_steps_per_s": [_num(s / w) if w and math.isfinite(w) and w > 0 else None for s, w in zip(steps, walls)],
        "credit_share": shares, "config_diff": {k: _fmt_value(v) for k, v in g.diff.items()},
        "notes": [f"{r.name}: {r.config_note}" for r in g.runs if r.config_note],
        "time_to": _time_to_targets(g, list(targets)),
    }


def compare_runs(run_dirs: list[Path], out_png: Path, out_md: Path, reps: int = DEFAULT_REPS,
                 seed: int = 0, ignore=GROUP_IGNORE, targets: list[float] = ()) -> dict:
    """Read ``run_dirs``, group them by config (all keys but ``ignore``), write a figure to
    ``out_png`` and a markdown report to ``out_md``, and return the summary as a dict
    (``groups``: one dict per group; ``differing_keys``; ``png``; ``md``).

    The figure's panels: the return against env steps and against wall-clock time (group mean
    across seeds, thin lines per run, and a pointwise 95% percentile-bootstrap band of the mean,
    computed with rliable's ``get_interval_estimates``); and each group's final per-agent credit
    shares (mean across seeds, 95% bootstrap CI as error bars). The return curve is
    ``eval/team_return`` (periodic greedy evaluation) where every run of the group logged it, else
    the training episodes' ``team_return``. A group of one run gets no band and no CI.

    Runs on different envs are allowed; they always form separate groups. Raises
    ``NotARunDirectoryError`` / ``NoMetricsError`` / ``CompareError`` (all ``ValueError``s) with a
    one-line message naming the directory.

    ``targets``: returns R for a "time to reach R" table: per group, the median over seeds of the
    wall-clock seconds (and env steps) at the first point of the return curve at or above R, and
    how many seeds got there.
    """
    if not run_dirs:
        raise CompareError("no run directories given")
    seen, runs = {}, []
    for d in run_dirs:
        resolved = Path(d).resolve()
        if resolved in seen:
            raise CompareError(f"{str(d)!r} is given twice")
        seen[resolved] = d
        runs.append(load_run(d))
    groups, differing = group_runs(runs, ignore)
    summaries = [_group_summary(g, reps, seed, targets) for g in groups]
    out_png, out_md = Path(out_png), Path(out_md)
    fig = comparison_figure(groups, summaries, reps, seed)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(comparison_markdown(summaries, differing, reps, out_png))
    return {"groups": summaries, "differing_keys": differing, "png": str(out_png), "md": str(out_md)}


def comparison_figure_of(run_dirs: list[str | Path], reps: int = DEFAULT_REPS, seed: int = 0,
                         ignore=GROUP_IGNORE):
    """The figure of ``compare_runs`` for ``run_dirs``, writing nothing (for notebooks)."""
    groups, _ = group_runs([load_run(d) for d in run_dirs], ignore)
    return comparison_figure(groups, [_group_summary(g, reps, seed) for g in groups], reps, seed)


def comparison_figure(groups: list[RunGroup], summaries: list[dict], reps: int = DEFAULT_REPS, seed: int = 0):
    """The three-panel ``matplotlib.figure.Figure`` described in ``compare_runs``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.6))
    ax_steps, ax_time, ax_share = fig.subplots(1, 3)
    sources = set()
    for i, g in enumerate(groups):
        color = f"C{i % 10}"
        key = _curve_source(g)
        sources.add(key)
        by_steps = [r.curve(key) for r in g.runs]
        by_time = []
        for (x, y), r in zip(by_steps, g.runs):
            ks, kt, _ = r.wall_clock()
            by_time.append((np.interp(x, ks, kt) if len(ks) > 1 else np.array([]), y))
        for ax, curves in ((ax_steps, by_steps), (ax_time, by_time)):
            if len(g.runs) > 1:
                for x, y in curves:
                    if len(x):
                        ax.plot(x, y, color=color, alpha=0.25, lw=0.7)
            band = _band(curves, reps, seed)
            if band is None:
                continue
            x, mean, low, high = band
            ax.plot(x, mean, color=color, lw=1.8, label=f"{g.label} (n={len(g.runs)})")
            if low is not None:
                ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    names = {EVAL_KEY: "greedy eval team return", TRAIN_KEY: "training team return"}
    ylabel = " / ".join(names[k] for k in sorted(sources)) or "team return"
    from matplotlib.ticker import EngFormatter

    ax_steps.xaxis.set_major_formatter(EngFormatter(sep=""))   # 200k, not 200000: tick labels never collide
    for ax, xlabel in ((ax_steps, "env steps"), (ax_time, "wall-clock time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ends = [line.get_xdata()[-1] for line in ax.get_lines() if len(line.get_xdata())]
        if ends and min(ends) > 0 and max(ends) / min(ends) >= 10:   # runs 10x apart: a log axis shows both
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + " (log scale: runs differ 10x in length)")
    ax_steps.set_title("return vs env steps (mean, 95% bootstrap band)")
    ax_time.set_title("return vs wall-clock time")
    handles, labels = ax_steps.get_legend_handles_labels()
    _share_panel(ax_share, summaries)
    if handles:
        # Below the panels, so a long label never covers a curve.
        ncol = min(len(handles), 3)
        rows = -(-len(handles) // ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
        fig.tight_layout(rect=(0, 0.05 * rows + 0.02, 1, 1))
    else:
        fig.tight_layout()
    return fig


def _share_panel(ax, summaries: list[dict]) -> None:
    import textwrap

    from matplotlib import colormaps

    agents: list[str] = []
    for s in summaries:
        agents.extend(a for a in s["credit_share"] if a not in agents)
    ax.set_title("final credit share per agent (mean, 95% CI)")
    if not agents:
        ax.text(0.5, 0.5, "no credit/share metrics", ha="center", va="center", transform=ax.transAxes)
        return
    cmap = colormaps["Set2"]
    width = 0.8 / len(agents)
    for j, agent in enumerate(agents):
        xs, hs, err = [], [], [[], []]
        for i, s in enumerate(summaries):
            share = s["credit_share"].get(agent)
            if share is None or share["mean"] is None:
                continue
            xs.append(i + (j - (len(agents) - 1) / 2) * width)
            hs.append(share["mean"])
            lo, hi = share["ci"] if share["ci"] else (share["mean"], share["mean"])
            err[0].append(share["mean"] - lo)
            err[1].append(hi - share["mean"])
        ax.bar(xs, hs, width, yerr=err, capsize=3, color=cmap(j % cmap.N), label=agent)
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels([textwrap.fill(s["label"], 22) for s in summaries], fontsize="small")
    ax.set_ylabel("credit share mean|A_i| / Σ_j mean|A_j|")
    ax.legend(fontsize="small", loc="best")
    ax.grid(axis="y", alpha=0.3)


def _fmt_wall(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _mean(values) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _fmt_steps(steps: list[int]) -> str:
    return f"{min(steps):,}" if min(steps) == max(steps) else f"{min(steps):,}–{max(steps):,}"


def _fmt_shares(shares: dict) -> str:
    if not shares:
        return "n/a"
    return "; ".join(f"{a} {format_interval(s['mean'], s['ci'], 2)}" for a, s in shares.items())


def comparison_markdown(summaries: list[dict], differing: list[str], reps: int = DEFAULT_REPS,
                        png: Path | None = None) -> str:
    """The markdown report of ``compare_runs``: one row per group, one per run, and the config keys
    that differ between groups."""
    lines = ["# Run comparison", ""]
    if png is not None:
        lines += [f"![comparison]({Path(png).name})", ""]
    lines += ["| group | env | seeds | final return: IQM [95% CI] | env steps | wall time | env steps/s | "
              "credit share per agent: mean [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        fr = s["final_return"]
        seeds = ", ".join(str(x) for x in s["seeds"])
        lines.append(f"| {s['label']} | {s['env']} | {seeds} | {format_interval(fr['iqm'], fr['ci'], 2)} | "
                     f"{_fmt_steps(s['env_steps'])} | {_fmt_wall(_mean(s['wall_s']))} | "
                     f"{_mean(s['env_steps_per_s']):.0f} | {_fmt_shares(s['credit_share'])} |")
    targets = list(summaries[0]["time_to"]) if summaries else []
    if targets:
        lines += ["", "## Time to reach a return", "",
                  "| group | " + " | ".join(f"to {t}: median time (env steps), seeds reached" for t in targets) + " |",
                  "|---|" + "---|" * len(targets)]
        for s in summaries:
            cells = []
            for t in targets:
                hit = s["time_to"][t]
                cells.append("not reached" if not hit["reached"] else
                             f"{_fmt_wall(hit['median_seconds'])} ({hit['median_env_steps']:,.0f}), "
                             f"{hit['reached']} of {hit['runs']}")
            lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
        lines += ["", "The first point of each run's return curve (the group's curve source) at or above the "
                      "target; its wall time read off the run's cumulative wall clock; the median over the seeds "
                      "that reached it."]
    sources = sorted({src for s in summaries for src in s["final_return"]["sources"]})
    walls = sorted({w for s in summaries for w in s["wall_source"]})
    lines += ["", f"Final return: IQM over seeds with a 95% stratified-bootstrap CI (rliable, {reps:,} resamples; "
              f"no CI for one seed), from {', '.join(sources)}. Credit shares: the last logged "
              f"`credit/share/<agent>`, mean over seeds with a 95% bootstrap CI. Wall time (mean over seeds) "
              f"from {', '.join(walls)}; env steps/s = env steps / wall time.", "",
              "## Per run", "",
              "| group | run | seed | final return | source | env steps | wall time | env steps/s | credit shares |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        fr = s["final_return"]
        for i, run in enumerate(s["runs"]):
            shares = ", ".join(f"{a} {v['per_run'][i]:.2f}" for a, v in s["credit_share"].items()
                               if v["per_run"][i] is not None) or "n/a"
            ret = fr["per_run"][i]
            sps = s["env_steps_per_s"][i]
            lines.append(f"| {s['label']} | {Path(run).name} | {s['seeds'][i]} | "
                         f"{'n/a' if ret is None else f'{ret:.2f}'} | {fr['sources'][i]} | {s['env_steps'][i]:,} | "
                         f"{_fmt_wall(s['wall_s'][i])} | {'n/a' if sps is None else f'{sps:.0f}'} | {shares} |")
    if differing:
        lines += ["", "## Config keys that differ between groups", "",
                  "| key | " + " | ".join(s["label"] for s in summaries) + " |",
                  "|---|" + "---|" * len(summaries)]
        for k in differing:
            lines.append(f"| {k} | " + " | ".join(s["config_diff"][k] for s in summaries) + " |")
    notes = [n for s in summaries for n in s["notes"]]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- command line (for `marl compare`) ----------------------------------------------------------------

def add_arguments(parser) -> None:
    """The ``marl compare`` arguments (cheap: imports nothing heavy)."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to compare")
    parser.add_argument("--out", metavar="DIR", help="a new (or empty) directory for compare.png and compare.md "
                                                      "(default: a new compare-<time> directory here); an earlier "
                                                      "comparison is never overwritten")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="bootstrap resamples")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--target", type=float, action="append", default=[], metavar="R",
                        help="also tabulate the wall-clock time (and env steps) each group took to first reach "
                             "return R (repeatable)")


def run_from_args(args, print_fn: Callable[[str], None] = print) -> int:
    """Run ``compare_runs`` for parsed ``add_arguments`` args; prints the report (or JSON)."""
    out = _output_dir(args.out)
    try:
        result = compare_runs([Path(d) for d in args.run_dirs], out / "compare.png", out / "compare.md",
                              reps=args.reps, targets=args.target)
    except BaseException:
        if not any(out.iterdir()):
            out.rmdir()
        raise
    if args.json:
        print_fn(json.dumps(result))
    else:
        print_fn(Path(result["md"]).read_text() + f"\nwrote {result['png']} and {result['md']}")
    return 0


def _output_dir(out: str | None) -> Path:
    """``out`` (created; it must be absent or empty), or a new ``compare-<time>[-k]`` directory here:
    ``os.mkdir`` makes it, so two comparisons never share one."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise CompareError(f"--out {str(path)!r} is not empty (an earlier comparison?); pick a new directory")
        return path
    stem = time.strftime("compare-%Y%m%d-%H%M%S")
    for k in range(1000):
        path = Path(stem if k == 0 else f"{stem}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CompareError(f"could not create a new {stem}-* directory here; name one with --out")


if __name__ == "__main__":
    import argparse
    import sys

    _parser = argparse.ArgumentParser(prog="python -m marl.compare", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    try:
        sys.exit(run_from_args(_parser.parse_args()))
    except CompareError as _exc:
        sys.exit(f"marl compare: error: {_exc}")
