"""A fast subset of the env zoo (``benchmarks/env_zoo.py``): the default config, with only the env
changed and a tiny budget, trains on third-party envs of several families in a child process
(``marl train`` as a user runs it): no traceback, a checkpoint, and both throughput figures."""
import importlib.util

import pytest

from benchmarks.env_zoo import ZOO, run_one

FAST = {"simple_v3", "Foraging-8x8-2p-2f-coop-v3", "multiwalker_v9"}
NEEDS = {"multiwalker_v9": "Box2D", "HalfCheetah 2x3": "gymnasium_robotics"}


def _zoo(name):
    (entry,) = [z for z in ZOO if z[1] == name]
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{NEEDS[name]} is not installed (the zoo/mamujoco extras)")
    return entry


def _trains(entry, tmp_path):
    result = run_one(*entry, steps=400, num_envs=4, timeout=150, raw_seconds=0.5, workdir=tmp_path)
    assert result.outcome == "trains", (result.outcome, result.reason)
    assert result.train_sps > 0 and result.raw_sps > 0 and result.checkpoint_mb > 0 and result.peak_mb > 0


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_default_config_trains_on_zoo_envs_without_a_traceback(name, tmp_path):
    _trains(_zoo(name), tmp_path)


def test_mamujoco_by_the_name_its_docs_use(tmp_path):
    """``gymnasium_robotics.mamujoco_v1:parallel_env``: mamujoco_v1 is a module re-exported as an
    attribute of gymnasium_robotics (Box actions, a state(), one team reward)."""
    _trains(_zoo("HalfCheetah 2x3"), tmp_path)
