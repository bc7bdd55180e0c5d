"""The installed import names survive a user's own project: a directory with its own ``envs`` and
``algorithms`` packages (common in RL code) on ``sys.path`` does not shadow ``marl.envs`` and
``marl.algorithms``."""
import subprocess
import sys

import yaml

from tests.conftest import tiny_config


def test_a_users_own_envs_and_algorithms_packages_do_not_break_marl(tmp_path):
    for name in ("envs", "algorithms"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("WHOSE = 'the user project'\n")
    check = ("import envs, algorithms, marl.envs, marl.algorithms, marl.trainer; "
             "assert envs.WHOSE == algorithms.WHOSE == 'the user project'; "
             "assert marl.envs.make_env and marl.algorithms.ADVANTAGES")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the CLI puts the working directory first on sys.path (so env ids can name modules there)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(train={"total_env_steps": 100, "eval_episodes": 1})))
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "train", "tiny.yaml", "--run-dir", "run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "eval greedy" in proc.stdout
