"""``benchmarks/credit_convergence.py``: a real spread_fast run copied mid-way and both points scored
against the oracle; and its refusal of budgets that the run itself covers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = [sys.executable, str(ROOT / "benchmarks" / "credit_convergence.py")]


def test_budgets_at_or_past_the_run_are_refused_in_one_line(tmp_path):
    proc = subprocess.run([*SCRIPT, "--steps", "12800", "--budgets", "12800", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--budgets must be below --steps (12,800)" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_run_is_copied_at_its_budget_and_each_point_scored_against_the_oracle(tmp_path):
    out = tmp_path / "conv"
    proc = subprocess.run([*SCRIPT, "--methods", "coma_lambda", "--steps", "25600", "--budgets", "12800",
                           "--checkpoint-every", "1", "--states", "4", "--rollouts", "2", "--eval-episodes", "2",
                           "--jobs", "1", "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    copy = out / "coma_lambda_s11_at_12800"
    copied = json.loads((copy / "copied.json").read_text())
    metrics = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert 12800 <= copied["env_steps"] <= 25600 and metrics[-1]["env_steps"] == copied["env_steps"]
    scores = json.loads((out / "report.json").read_text())["scores"]
    assert sorted(s["env_steps"] for s in scores) == sorted([copied["env_steps"], 25600])
    for s in scores:   # `marl credit --oracle` read both the copy and the finished run
        assert s["oracle"]["method"] == "coma_lambda" and s["oracle"]["states"] == 4
        assert s["eval"]["episodes"] == 2 or s["dir"] == str(out / "coma_lambda_s11")
    table = (out / "report.md").read_text()
    assert table.count("| coma_lambda | 11 |") == 2 and "| coma_lambda (11) |" in table
