"""``marl sweep``: the plan (grid, names, one-line errors) without Ray, and real local Ray Tune
sweeps: a failing trial beside finished ones, metrics equal to ``marl train`` with the same seed,
and a sweep stopped by Ctrl-C and resumed with its finished trials kept."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from marl.cli import main
from marl.logger import read_metrics
from marl.sweep import SweepError, plan_trials, split_values
from tests.conftest import tiny_config, train_run

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path, name="tiny", **sections) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    return str(path)


def _strip(records):
    """Metrics records without the timing keys (which differ from run to run)."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def test_split_values_keeps_brackets():
    assert split_values("1e-3, 3e-4,[64,64]") == ["1e-3", "3e-4", "[64,64]"]


def test_plan_is_configs_x_grid_x_seeds_named_by_what_varies(tmp_path):
    a, b = _config(tmp_path, "a"), _config(tmp_path, "b")
    trials = plan_trials([a, b + "@algo.epochs=1"], [3, 4], ["algo.lr=1e-3,3e-4", "model.hidden=16"])
    assert len(trials) == 2 * 2 * 2
    names = [t.name for t in trials]
    assert names[:4] == ["a-algo.lr_1e-3-s3", "a-algo.lr_1e-3-s4", "a-algo.lr_3e-4-s3", "a-algo.lr_3e-4-s4"]
    assert names[4] == "b-algo.epochs_1-algo.lr_1e-3-s3"
    t = trials[4]
    assert t.overrides == ["algo.epochs=1", "algo.lr=1e-3", "model.hidden=16"] and t.seed == 3
    resolved = yaml.safe_load(t.resolved)
    assert (resolved["seed"], resolved["algo"]["epochs"], resolved["algo"]["lr"], resolved["model"]["hidden"]) == \
        (3, 1, 1e-3, 16)


def test_bad_override_is_one_line_before_anything_runs(tmp_path, capsys):
    cfg = _config(tmp_path)
    with pytest.raises(SweepError, match="algo.lrr"):
        plan_trials([cfg], [0], ["algo.lrr=1,2"])
    assert main(["sweep", cfg, "--seeds", "0", "--set", "algo.gamma=0.9,7", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "algo.gamma" in err
    assert not (tmp_path / "s").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    assert main(["sweep", cfg, "--seeds", "0", "--out", str(tmp_path / "used")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def _sweep(*args, **kwargs):
    """``marl sweep`` in a fresh process from the project root (as a user runs it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "marl.cli", "sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_runs_trials_reports_a_failure_and_matches_marl_train(tmp_path):
    cfg = _config(tmp_path)
    failing = cfg + "@env.id=tests.user_envs:fails_later,env.kwargs={fail_after: 20}"
    out = tmp_path / "sweep"
    proc = _sweep(cfg, failing, "--seeds", "1", "2", "--set", "algo.epochs=1,2", "--out", str(out))
    stdout, stderr = proc.communicate(timeout=560)
    assert proc.returncode == 1, stderr   # some trials failed; the others finished
    summary = json.loads((out / "summary.json").read_text())
    by_status = {}
    for e in summary["trials"]:
        by_status.setdefault(e["status"], []).append(e)
    assert len(by_status["done"]) == 4 and len(by_status["failed"]) == 4, summary["trials"]
    for e in by_status["failed"]:
        assert "lost its connection" in e["error"] and "\n" not in e["error"]
    for e in by_status["done"]:
        evaluation = json.loads((Path(e["run_dir"]) / "eval.json").read_text())
        assert e["greedy_return"] == evaluation["team_return_mean"]
        assert e["sampled_return"] == evaluation["sampled"]["team_return_mean"]
    assert [g["label"] for g in summary["groups"]] == ["algo.epochs=1", "algo.epochs=2"]
    assert all(g["seeds"] == [1, 2] and g["final_return"]["ci"] is not None for g in summary["groups"])
    assert (out / "compare.png").stat().st_size > 10_000
    md = (out / "summary.md").read_text()
    assert "algo.epochs=2" in md and "lost its connection" in md
    assert "lost its connection" in stderr and "summary.md" in stdout

    # A trial is an ordinary run: the same seed under `marl train` logs the same metrics.
    trial = by_status["done"][-1]
    run_cfg = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())
    single, evaluation = train_run(run_cfg, tmp_path / "single")
    assert _strip(read_metrics(trial["run_dir"])) == _strip(single)
    assert evaluation["team_return_mean"] == trial["greedy_return"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_stopped_by_ctrl_c_resumes_keeping_finished_trials(tmp_path):
    cfg = _config(tmp_path, train={"total_env_steps": 2000, "checkpoint_every": 4, "eval_episodes": 2,
                                   "progress": False})
    out = tmp_path / "sweep"
    proc = _sweep(cfg, "--seeds", "0", "1", "2", "--jobs", "1", "--out", str(out))
    deadline = time.time() + 400
    while not list((out / "trials").glob("*.json")):   # the first trial finished
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "sweep --resume" in stderr
    first = json.loads(next((out / "trials").glob("*.json")).read_text())
    eval_file = Path(first["run_dir"]) / "eval.json"
    kept = eval_file.stat().st_mtime_ns
    summary = json.loads((out / "summary.json").read_text())
    assert any(e["status"] == "not run" for e in summary["trials"])

    proc = _sweep("--resume", str(out))
    _, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr
    assert "keeping 1 finished trial" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [e["status"] for e in summary["trials"]] == ["done"] * 3
    assert eval_file.stat().st_mtime_ns == kept
    for e in summary["trials"]:   # every run complete: one record per iteration, none twice
        its = [r["iteration"] for r in read_metrics(e["run_dir"])]
        assert its == sorted(set(its)) and read_metrics(e["run_dir"])[-1]["env_steps"] == 2000


@pytest.mark.slow
def test_the_suite_benchmark_tabulates_each_task_from_a_real_sweep(tmp_path):
    """``benchmarks/suite.py`` on two tasks at a smoke budget: one row per task, each with its seeds'
    greedy returns as the trials recorded them, and the budget flagged as not the shipped one."""
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--tasks", "spread", "lbf",
                           "--seeds", "11", "12", "--set", "train.total_env_steps=2000", "--set",
                           "train.eval_episodes=2", "--jobs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    table = (out / "suite.md").read_text().splitlines()
    rows = [line for line in table if line.startswith(("| MPE", "| LBF"))]
    assert len(rows) == 2 and all("(not shipped)" in r and "(2 seeds)" in r for r in rows)
    for name, row in zip(["spread_fast", "lbf_fast"], rows):
        returns = [t["greedy_return"] for t in summary["trials"] if Path(t["config"]).stem == name]
        assert len(returns) == 2 and ", ".join(f"{v:.2f}" for v in returns) in row
