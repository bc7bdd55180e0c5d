"""Run logging: scalars keyed by env steps to the trackers of ``log.trackers``.

- ``jsonl``: ``metrics.jsonl``, one JSON object per logged iteration (``marl compare``, resume);
- ``tensorboard``: event files in the run directory for team-level tags, and one subdirectory per
  agent (``<run>/<agent>/``) for the per-agent tags ``<family>/<agent>``, written there as
  ``<family>``. TensorBoard shows each subdirectory as a run named by the agent, so every agent
  gets its own colour and its name in the legend. The Custom Scalars layout groups the families by
  concern and lists only the families the run has logged (rewritten when a new one appears);
- ``mlflow`` and ``wandb`` (optional extras): the resolved config as parameters, the same scalars
  (per-agent ones as ``<family>/<agent>``), the credit figures and, at the end, ``eval.json`` as
  artifacts. MLflow logs to ``MLFLOW_TRACKING_URI``, else to ``sqlite:///<run>/mlflow.db`` with
  artifacts in ``<run>/mlartifacts``; W&B runs offline (files under ``<run>/wandb``) unless
  ``WANDB_MODE`` says otherwise. A resumed run continues the same MLflow / W&B run (their ids are
  kept in ``<run>/trackers.json``).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

from marl.checkpoint import RunDirError

METRICS_NAME = "metrics.jsonl"
TRACKERS_NAME = "trackers.json"
EVAL_ARTIFACT = "eval.json"
# log.trackers: name -> (module to import, the setup.cfg extra that installs it); None: built in.
TRACKERS = {"tensorboard": None, "jsonl": None, "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}

# Custom Scalars: (category, [(chart title, family)]); a family's tag "<family>/<agent>" is drawn
# from each agent's subdirectory, one coloured line per agent.
CHART_GROUPS = [
    ("returns per agent", [
        ("episode return (raw env reward)", "return"),
        ("episode return (after reward mode and shaping)", "reward_return"),
        ("greedy evaluation return (train.eval_every)", "eval/return")]),
    ("credit per agent", [
        ("advantage mean", "credit/adv_mean"),
        ("advantage std", "credit/adv_std"),
        ("mean |advantage|", "credit/abs_adv"),
        ("credit share mean|A_i| / sum_j mean|A_j|", "credit/share"),
        ("credit-fidelity share (diagnostic envs)", "credit_fidelity/share"),
        ("integrated-gradients share of V(s): the agent's part of the state", "credit/attribution")]),
    ("COMA counterfactual per agent", [
        ("COMA counterfactual gap: taken action's value (Q or lambda-return) - baseline", "coma/gap"),
        ("COMA baseline sum_u pi(u) Q(s, u^-a, u)", "coma/baseline")]),
    ("policy and critic per agent", [
        ("policy entropy", "entropy"),
        ("value / Q error (squared, return units)", "value_error")]),
]
PER_AGENT_FAMILIES = [family for _, charts in CHART_GROUPS for _, family in charts]


def check_trackers(trackers: list[str]) -> str | None:
    """``None`` if every tracker is known and installed, else a one-line reason naming the extra."""
    import importlib.util

    for name in trackers:
        if name not in TRACKERS:
            return f"unknown tracker {name!r}; expected some of {list(TRACKERS)}"
        need = TRACKERS[name]
        if need is not None and importlib.util.find_spec(need[0]) is None:
            return (f"tracker {name!r} needs the {need[1]!r} extra, which is not installed: "
                    f"pip install -e '.[{need[1]}]'")
    if len(set(trackers)) != len(trackers):
        return f"a tracker is listed twice: {trackers}"
    return None


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dir_name(agent: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", agent)


class RunLogger:
    """Writes scalars, histograms, figures and text to the ``trackers`` (see the module docstring)
    in ``run_dir``; ``config`` is the resolved config as a dict (parameters for MLflow and W&B).

    ``purge_step`` (on resume) drops TensorBoard events at or after that step, and the caller
    trims ``metrics.jsonl`` with ``truncate_metrics`` so that a resumed run has no duplicates.
    """

    def __init__(self, run_dir: str | Path, agents: list[str], purge_step: int | None = None,
                 trackers: list[str] = ("tensorboard", "jsonl"), config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.agents = agents
        self._purge_step = purge_step
        self._metrics = None
        if "jsonl" in trackers:
            try:
                self._metrics = open(self.run_dir / METRICS_NAME, "a")
            except OSError as exc:
                raise RunDirError(f"cannot write {self.run_dir / METRICS_NAME} ({exc.strerror})") from None
        self.writer = None
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self._agent_writers = {}
        # Families seen so far (a resumed run's from its metrics file): the Custom Scalars layout lists these.
        self._families: set[str] = set()
        if purge_step is not None:
            for record in read_metrics(self.run_dir):
                self._families.update(f for f in (self._split(k)[0] for k in record) if f in PER_AGENT_FAMILIES)
        self._external = []
        state = self._tracker_state()
        for name, cls in (("mlflow", MLflowTracker), ("wandb", WandbTracker)):
            if name in trackers:
                self._external.append(cls(self.run_dir, config or {}, state))
        if self._external:
            self._save_tracker_state(state)

    # -- helpers ------------------------------------------------------------------------------------
    def _split(self, key: str) -> tuple[str | None, str | None]:
        """``"credit/share/agent_1"`` -> ``("credit/share", "agent_1")``; ``(None, None)`` for a team tag."""
        family, _, agent = key.rpartition("/")
        return (family, agent) if family and agent in self.agents else (None, None)

    def _agent_writer(self, agent: str):
        if agent not in self._agent_writers:
            from torch.utils.tensorboard import SummaryWriter
            self._agent_writers[agent] = SummaryWriter(str(self.run_dir / _dir_name(agent)),
                                                       purge_step=self._purge_step)
        return self._agent_writers[agent]

    def _tracker_state(self) -> dict:
        path = self.run_dir / TRACKERS_NAME
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            return {}

    def _save_tracker_state(self, state: dict) -> None:
        try:
            (self.run_dir / TRACKERS_NAME).write_text(json.dumps(state) + "\n")
        except OSError as exc:
            raise RunDirError(f"cannot write {self.run_dir / TRACKERS_NAME} ({exc.strerror})") from None

    def _write_layout(self) -> None:
        """The Custom Scalars layout of the families seen so far, grouped by concern; TensorBoard reads
        the latest one written."""
        layout = {}
        for category, charts in CHART_GROUPS:
            shown = {title: ["Multiline", [rf"^{re.escape(family)}$"]] for title, family in charts
                     if family in self._families}
            if shown:
                layout[category] = shown
        if layout:
            self.writer.add_custom_scalars(layout)   # at step 0: later events of a tag at one step win

    # -- logging ------------------------------------------------------------------------------------
    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def log(self, metrics: dict, step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if _scalar(v)}
        if self.writer is not None:
            new = False
            for key, value in scalars.items():
                family, agent = self._split(key)
                if agent is None:
                    self.writer.add_scalar(key, value, step)
                    continue
                self._agent_writer(agent).add_scalar(family, value, step)
                if family in PER_AGENT_FAMILIES and family not in self._families:
                    self._families.add(family)
                    new = True
            if new:
                self._write_layout()
        for tracker in self._external:
            tracker.log(scalars, step)
        if self._metrics is not None:
            record = {k: _jsonable(v) for k, v in metrics.items()}
            try:
                self._metrics.write(json.dumps(record) + "\n")
                self._metrics.flush()
            except OSError as exc:   # e.g. a full disk; a resume cuts a half-written row back
                raise RunDirError(f"could not write {self.run_dir / METRICS_NAME} ({exc.strerror})") from None

    def log_histogram(self, tag: str, values, step: int) -> None:
        if self.writer is None:
            return
        family, agent = self._split(tag)
        if agent is None:
            self.writer.add_histogram(tag, values, step)
        else:
            self._agent_writer(agent).add_histogram(family, values, step)

    def log_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure: a TensorBoard image, and an image artifact for MLflow / W&B."""
        for tracker in self._external:
            tracker.log_figure(tag, figure, step)
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step)   # closes the figure

    def flush(self) -> None:
        for w in ([self.writer] if self.writer is not None else []) + list(self._agent_writers.values()):
            w.flush()
        if self._metrics is not None:
            self._metrics.flush()

    def close(self) -> None:
        """Close the writers; MLflow and W&B get ``eval.json`` (if the run has one) as an artifact."""
        for w in ([self.writer] if self.writer is not None else []) + list(self._agent_writers.values()):
            w.close()
        for tracker in self._external:
            tracker.finish(self.run_dir / EVAL_ARTIFACT)
        self._external = []
        if self._metrics is not None:
            try:
                self._metrics.close()
            except OSError:   # the buffer was already refused (a full disk), and said so
                pass


def _flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return out


class MLflowTracker:
    """One MLflow run per run directory (continued on resume), through ``mlflow.MlflowClient``."""

    def __init__(self, run_dir: Path, config: dict, state: dict):
        import logging

        from mlflow import MlflowClient
        from mlflow.entities import Param

        logging.getLogger("mlflow").setLevel(logging.WARNING)   # not its INFO lines about creating tables

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(uri)
        run_id = state.get("mlflow_run_id") if state.get("mlflow_uri") == uri else None
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "marl")
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            elif "MLFLOW_TRACKING_URI" in os.environ:   # the server decides where artifacts go
                experiment_id = self.client.create_experiment(name)
            else:
                experiment_id = self.client.create_experiment(name, (run_dir / "mlartifacts").resolve().as_uri())
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name,
                                            tags={"marl.run_dir": str(run_dir.resolve())}).info.run_id
            params = [Param(k, v[:6000]) for k, v in _flat_params(config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        state.update(mlflow_uri=uri, mlflow_run_id=run_id)
        self.run_id = run_id

    def log(self, scalars: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_figure(self, tag: str, figure, step: int) -> None:
        self.client.log_figure(self.run_id, figure, f"{tag}/{step:012d}.png")

    def finish(self, eval_file: Path) -> None:
        if eval_file.is_file():
            self.client.log_artifact(self.run_id, str(eval_file))
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """One W&B run per run directory (continued on resume), offline unless ``WANDB_MODE`` is set;
    x axis: ``env_steps``."""

    def __init__(self, run_dir: Path, config: dict, state: dict):
        import wandb

        self.wandb = wandb
        run_id = state.get("wandb_id")
        self.run = wandb.init(dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "marl"), name=run_dir.name,
                              id=run_id, resume="allow" if run_id else None, config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")
        state["wandb_id"] = self.run.id

    def log(self, scalars: dict, step: int) -> None:
        self.run.log({**scalars, "env_steps": step})

    def log_figure(self, tag: str, figure, step: int) -> None:
        self.run.log({tag: self.wandb.Image(figure), "env_steps": step})

    def finish(self, eval_file: Path) -> None:
        if eval_file.is_file():
            artifact = self.wandb.Artifact(f"eval-{self.run.id}", type="evaluation")
            artifact.add_file(str(eval_file))
            self.run.log_artifact(artifact)
        self.run.finish()


def _read_records(path: Path) -> tuple[list[dict], int]:
    """The records of a metrics file, and the size in bytes of a half-written last line (a run
    killed, or a disk filled, while writing it; 0 if none).

    Raises:
        RunDirError: when the file cannot be read, or a line before the last is not JSON.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise RunDirError(f"cannot read {path} ({reason})") from None
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:   # no newline after it: cut short while being written
                return records, len(line.encode())
            raise RunDirError(f"{path} line {i + 1} is not JSON (the file was edited or damaged); fix or remove "
                              f"that line") from None
    return records, 0


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The complete records of ``run_dir``'s metrics file (a half-written last line is left out)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return _read_records(path)[0]


def truncate_metrics(run_dir: str | Path, last_iteration: int) -> None:
    """Keep only records with ``iteration <= last_iteration`` (those covered by the checkpoint),
    cutting a half-written last line, with one line on stderr saying so."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return
    records, cut = _read_records(path)
    if cut:
        print(f"[marl] {path}: cut a half-written last line ({cut} bytes) back to the last complete row",
              file=sys.stderr)
    kept = [r for r in records if r.get("iteration", 0) <= last_iteration]
    tmp = path.with_name(path.name + ".tmp")   # then renamed: a kill meanwhile loses no row
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path} ({exc.strerror})") from None
