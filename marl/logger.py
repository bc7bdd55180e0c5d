"""Run logging: TensorBoard event files plus ``metrics.jsonl`` (one JSON object per logged
iteration), both keyed by env steps."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from marl.checkpoint import RunDirError

METRICS_NAME = "metrics.jsonl"

# (chart title, tag prefix): every tag "<prefix>/<agent>" is drawn in that chart, one line per agent.
PER_AGENT_CHARTS = [
    ("episode return (raw env reward)", "return"),
    ("episode return (after reward mode and shaping)", "reward_return"),
    ("greedy evaluation return (train.eval_every)", "eval/return"),
    ("advantage mean", "credit/adv_mean"),
    ("advantage std", "credit/adv_std"),
    ("mean |advantage|", "credit/abs_adv"),
    ("credit share mean|A_i| / sum_j mean|A_j|", "credit/share"),
    ("COMA counterfactual gap: taken action's value (Q or lambda-return) - baseline", "coma/gap"),
    ("COMA baseline sum_u pi(u) Q(s, u^-a, u)", "coma/baseline"),
    ("policy entropy", "entropy"),
    ("value / Q error (squared, return units)", "value_error"),
    ("credit-fidelity share (diagnostic envs)", "credit_fidelity/share"),
    ("integrated-gradients share of V(s): the agent's part of the state", "credit/attribution"),
]


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Writes scalars to TensorBoard and ``metrics.jsonl`` in ``run_dir``.

    ``purge_step`` (on resume) drops TensorBoard events at or after that step, and the caller
    trims ``metrics.jsonl`` with ``truncate_metrics`` so that a resumed run has no duplicates.
    """

    def __init__(self, run_dir: str | Path, agents: list[str], purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        try:
            self._metrics = open(self.run_dir / METRICS_NAME, "a")
        except OSError as exc:
            raise RunDirError(f"cannot write {self.run_dir / METRICS_NAME} ({exc.strerror})") from None
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self._layout_done = False
        self.agents = agents

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def log_custom_layout(self) -> None:
        """Overlay each per-agent metric in one chart (TensorBoard's Custom Scalars tab)."""
        charts = {title: ["Multiline", [rf"^{prefix}/"]] for title, prefix in PER_AGENT_CHARTS}
        self.writer.add_custom_scalars({"per agent": charts})

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        record = {k: _jsonable(v) for k, v in metrics.items()}
        try:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        except OSError as exc:   # e.g. a full disk; a resume cuts a half-written row back
            raise RunDirError(f"could not write {self.run_dir / METRICS_NAME} ({exc.strerror})") from None

    def log_histogram(self, tag: str, values, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def flush(self) -> None:
        self.writer.flush()
        self._metrics.flush()

    def close(self) -> None:
        self.writer.close()
        try:
            self._metrics.close()
        except OSError:   # the buffer was already refused (a full disk), and said so
            pass


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
