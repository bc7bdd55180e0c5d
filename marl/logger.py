"""Run logging: TensorBoard event files plus ``metrics.jsonl`` (one JSON object per logged
iteration), both keyed by env steps."""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

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
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self._metrics = open(self.run_dir / METRICS_NAME, "a")
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
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def log_histogram(self, tag: str, values, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def flush(self) -> None:
        self.writer.flush()
        self._metrics.flush()

    def close(self) -> None:
        self.writer.close()
        self._metrics.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, last_iteration: int) -> None:
    """Keep only records with ``iteration <= last_iteration`` (those covered by the checkpoint)."""
    path = Path(run_dir) / METRICS_NAME
    kept = [r for r in read_metrics(run_dir) if r.get("iteration", 0) <= last_iteration]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
