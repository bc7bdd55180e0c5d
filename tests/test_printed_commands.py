"""Commands printed for the user (``marl train``'s TensorBoard and resume hints, ``marl sweep``'s
resume hint) work as printed from the project root, whether or not the venv is active."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _train(tmp_path, path_env: str) -> str:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(train={"total_env_steps": 200, "eval_episodes": 0, "progress": False})))
    env = {**os.environ, "PATH": path_env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "train", str(cfg), "--run-dir", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if line.startswith("TensorBoard: "))[len("TensorBoard: "):]


def test_printed_tensorboard_command_runs_without_an_active_venv(tmp_path):
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN) or "/usr/bin"
    printed = shlex.split(_train(tmp_path, path))
    assert printed[0] != "tensorboard" and printed[1:] == ["--logdir", str(tmp_path / "run")]
    proc = subprocess.run([printed[0], "--version_tb"], cwd=ROOT, env={**os.environ, "PATH": path},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_printed_commands_are_bare_names_when_the_venv_is_on_path(tmp_path, monkeypatch):
    from marl.cli import command

    monkeypatch.setenv("PATH", str(BIN) + os.pathsep + os.environ.get("PATH", ""))
    assert command("marl") == "marl" and command("tensorboard") == "tensorboard"
    monkeypatch.setenv("PATH", "/usr/bin")
    assert Path(ROOT, command("marl")).exists() or Path(command("marl")).exists()
