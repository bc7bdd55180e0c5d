"""The run's env backend (``marl.env_backend.EnvBackend``): what it says about the run's envs, and
its reset, snapshot and restore of them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from marl.config import config_from_dict
from marl.env_backend import EnvBackend
from marl.evaluate import evaluate, evaluate_batched
from tests.conftest import tiny_config

OWN_BATCHED = "tests.user_envs:batched_match_target"   # a batched simulator with no package env


@pytest.mark.parametrize("env, periodic, final, final_batched", [
    ({}, evaluate, evaluate, evaluate_batched),
    ({"batched": True}, evaluate_batched, evaluate, evaluate_batched),
    ({"id": OWN_BATCHED, "kwargs": {}, "batched": True}, evaluate_batched, evaluate_batched, evaluate_batched),
])
def test_each_evaluation_runs_on_the_simulator_it_names(env, periodic, final, final_batched):
    envs = EnvBackend(config_from_dict(tiny_config(env=env)))
    assert envs.evaluator("periodic") is periodic
    assert envs.evaluator("final") is final
    assert envs.evaluator("final", batched=True) is final_batched
    assert envs.has_package_env == (final is evaluate)
    assert envs.simulators == (f"periodic evaluation on {_words(periodic)}, final evaluation on {_words(final)}")
    with pytest.raises(ValueError, match="kind must be 'periodic' or 'final'"):
        envs.evaluator("midway")


def _words(run) -> str:
    return "the batched simulator" if run is evaluate_batched else "the package env"


def test_the_spec_is_probed_on_the_simulator_asked_for():
    twin = EnvBackend(config_from_dict(tiny_config(env={"batched": True})))
    assert twin.device == torch.device("cpu")
    assert twin.spec().agents == twin.spec(trained_on=False).agents == ["agent_0", "agent_1", "agent_2"]
    package = EnvBackend(config_from_dict(tiny_config()))
    assert package.device is None   # PettingZoo envs step on numpy arrays
    assert package.spec().obs_dim == twin.spec().obs_dim == 18


@pytest.mark.parametrize("env", [{}, {"batched": True}])
def test_a_restored_snapshot_steps_on_as_the_envs_it_was_taken_from(env):
    cfg = config_from_dict(tiny_config(env={**env, "num_envs": 3}))
    first, second = EnvBackend(cfg), EnvBackend(cfg)
    try:
        venv = first.open()
        assert first.snapshot() is None   # no episodes yet
        first.start(iteration=0)
        for a in _actions(first, 7, seed=1):
            venv.step(a)
        state = first.snapshot()
        second.open()
        second.restore(state)
        assert second.started
        second.start(iteration=5)   # holds episodes: no reset
        for a in _actions(first, 30, seed=2):   # across the 25-step episodes' ends
            ours, theirs = first.venv.step(a), second.venv.step(a)
            for name in ("obs", "state", "reward", "done"):
                np.testing.assert_array_equal(_np(getattr(ours, name)), _np(getattr(theirs, name)))
        with pytest.raises(RuntimeError, match="already open"):
            first.open()
    finally:
        first.close()
        second.close()


def _actions(envs: EnvBackend, steps: int, seed: int) -> list:
    """Random joint actions, as tensors for a batched simulator."""
    venv = envs.venv
    draws = np.random.default_rng(seed).integers(0, venv.n_actions, (steps, venv.num_envs, venv.n_agents))
    return [torch.as_tensor(d) if envs.batched else d for d in draws]


def _np(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
