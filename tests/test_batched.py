"""The batched-env path (``env.batched: true``): the mpe2 twin and a batched env of our own behind
one protocol, training on tensors, exact resume, evaluation on the real env or the twin, and the
config errors."""
import json
import math

import pytest
import torch

from marl.envs import EnvError, RewardSpec
from marl.envs.batched import BatchedVectorEnv, make_batched_env
from marl.config import ConfigError, config_from_dict
from tests.conftest import resumed_equals_uninterrupted, tiny_config, train_run

OWN = "tests.user_envs:batched_match_target"


_train = train_run


def test_the_vector_env_keeps_episode_returns_and_applies_the_reward_mode():
    venv = BatchedVectorEnv(make_batched_env(OWN, {"length": 3}, 4), RewardSpec("shared", "sum"))
    current = venv.reset(1)
    total = torch.zeros(4, 2)
    for t in range(3):
        step = venv.step(current["obs"].argmax(-1))   # always right: reward 1 per agent and step
        total += step.raw_reward
        current = venv.current()
        assert torch.equal(step.reward, step.raw_reward.sum(-1, keepdim=True).expand(-1, 2))
    assert step.done.all() and len(step.episodes) == 4
    assert all(ep["length"] == 3 and ep["raw_return"].tolist() == [3.0, 3.0] for ep in step.episodes)
    assert sorted(ep["env"] for ep in step.episodes) == [0, 1, 2, 3]


def test_a_batched_env_of_our_own_is_learned(tmp_path):
    """The protocol, not the twin: optimum 10, random 3.3."""
    cfg = tiny_config(env={"id": OWN, "kwargs": {}, "batched": True, "num_envs": 32},
                      algo={"rollout_steps": 5, "epochs": 4, "minibatches": 1, "lr": 3e-3},
                      train={"total_env_steps": 8000, "eval_episodes": 20})
    records, evaluation = _train(cfg, tmp_path / "run")
    assert records[0]["team_return"] < 5.0 and evaluation["simulator"] == "batched"
    assert evaluation["team_return_mean"] >= 9.5


@pytest.mark.parametrize("env", [{"batched": True, "num_envs": 8},
                                 {"id": OWN, "kwargs": {"length": 7}, "batched": True, "num_envs": 8}])
def test_resume_of_a_batched_run_equals_an_uninterrupted_run(tmp_path, env):
    cfg = tiny_config(env=env, algo={"rollout_steps": 10},
                      train={"total_env_steps": 800, "checkpoint_every": 3, "eval_episodes": 0})
    assert resumed_equals_uninterrupted(tmp_path, cfg, 400, ("team_return", "episodes", "losses/policy",
                                                          "losses/value", "explained_variance"))


def test_a_twin_run_evaluates_on_mpe2_by_default_and_on_the_twin_when_asked(tmp_path):
    from marl.cli import main

    _train(tiny_config(env={"batched": True, "num_envs": 8}, train={"eval_episodes": 0}), tmp_path / "run")
    for args, batched in (([], False), (["--batched"], True)):
        out = tmp_path / f"eval-batched-{batched}.json"
        assert main(["eval", str(tmp_path / "run"), "--episodes", "6", "--out", str(out), *args]) == 0
        result = json.loads(out.read_text())
        assert result["simulator"] == ("batched" if batched else "package")
        assert math.isfinite(result["team_return_mean"])


def test_a_twin_run_says_which_simulator_each_evaluation_runs_on():
    from marl.trainer import Trainer

    for env, final in (({"batched": True, "num_envs": 4}, "the package env"),
                       ({"id": OWN, "kwargs": {}, "batched": True, "num_envs": 4}, "the batched simulator")):
        trainer = Trainer(config_from_dict(tiny_config(env=env)), None)
        try:
            assert trainer.envs.simulators == ("periodic evaluation on the batched simulator, "
                                                     f"final evaluation on {final}")
        finally:
            trainer.close()


def test_periodic_evaluation_of_a_batched_run_uses_the_batched_env(tmp_path):
    records, _ = _train(tiny_config(env={"batched": True, "num_envs": 4},
                                    train={"total_env_steps": 500, "eval_every": 2, "eval_every_episodes": 5,
                                           "eval_episodes": 0}),
                        tmp_path / "run")
    assert [r["iteration"] for r in records if "eval/team_return" in r] == [2, 4, 5]


@pytest.mark.parametrize("overrides, match", [
    ({"env": {"id": "diag:lazy_agent", "kwargs": {}, "batched": True}}, r"has no batched twin.*mpe2:simple_spread_v3"),
    ({"env": {"id": "lbf:Foraging-5x5-2p-1f-v3", "kwargs": {}, "batched": True}}, r"has no batched twin"),
    ({"env": {"batched": True, "kwargs": {"N": 3, "bogus": 1}}}, r"unsupported keyword argument"),
    ({"env": {"id": "tests.user_envs:late_reward", "kwargs": {}, "batched": True}}, r"batched factory rejected"),
])
def test_envs_without_a_batched_form_are_clear_errors(tmp_path, overrides, match):
    from marl.trainer import Trainer

    with pytest.raises(EnvError, match=match):
        Trainer(config_from_dict(tiny_config(**overrides)))


@pytest.mark.parametrize("overrides, key", [
    ({"env": {"batched": True, "workers": 2}}, "env.batched"),
    ({"env": {"batched": True, "shaping": "spread_coverage"}}, "env.batched"),
    ({"env": {"batched": True}, "backend": "rllib"}, "env.batched"),
    ({"train": {"device": "tpu"}}, "train.device"),
])
def test_batched_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(tiny_config(**overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"'train.device'.*torch.cuda.is_available\(\) is False"):
        config_from_dict(tiny_config(train={"device": "cuda"}))


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:abc", "cuda:-1", "CPU"])
def test_a_malformed_device_is_a_clear_config_error(device):
    with pytest.raises(ConfigError, match=r"'train.device'.*'cpu', 'cuda' or 'cuda:K'"):
        config_from_dict(tiny_config(train={"device": device}))
