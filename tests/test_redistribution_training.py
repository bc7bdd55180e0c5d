"""Temporal credit in training: the episodic-reward mode and learned reward redistribution
(``algo.redistribution``) wired into the trainer, with exact resume."""
import numpy as np
import pytest
import torch

from marl.config import ConfigError, config_from_dict
from marl.envs import RewardSpec, make_vector_env
from marl.trainer import Trainer
from tests.conftest import resumed_equals_uninterrupted, tiny_config

DEPARTURES = "tests.user_envs:departures"


def test_episodic_rewards_are_withheld_and_paid_at_each_agents_last_step():
    dense = make_vector_env(DEPARTURES, {}, 2, RewardSpec("individual"))
    episodic = make_vector_env(DEPARTURES, {}, 2, RewardSpec("individual", episodic=True))
    rewards, paid, raw = [], [], []
    for venv in (dense, episodic):
        venv.reset([3, 4])
    rng = np.random.default_rng(0)
    for _ in range(11):
        actions = rng.integers(0, 3, (2, 3))
        d, e = dense.step(actions), episodic.step(actions)
        rewards.append(d.reward)
        paid.append(e.reward)
        raw.append(e.raw_reward)
        ends = e.acted & (e.terminated | e.truncated)
        assert not e.reward[~ends].any()   # nothing is paid before an agent's last step
    np.testing.assert_allclose(np.sum(paid, 0), np.sum(rewards, 0))   # each agent gets its own sum
    np.testing.assert_array_equal(np.array(raw), np.array(rewards))  # raw rewards are unchanged


@pytest.mark.parametrize("advantage", ["gae", "coma", "shapley", "dop"])
@pytest.mark.parametrize("method", ["rrd", "arel"])
def test_redistribution_trains_with_every_kind_of_module(method, advantage):
    cfg = config_from_dict(tiny_config(env={"episodic_reward": True},
                                       algo={"redistribution": method, "advantage": advantage,
                                             "redistribution_steps": 2}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        dense_rewards = trainer.rollout.reward.copy()
        metrics = trainer.update()
        assert np.isfinite(metrics["redistribution/loss"]) and np.isfinite(metrics["redistribution/return_error"])
        assert dense_rewards[:-1].sum() == 0   # episodic: only the last step pays
    finally:
        trainer.close()


def test_the_learner_trains_on_the_redistributed_rewards():
    cfg = config_from_dict(tiny_config(env={"episodic_reward": True}, algo={"redistribution": "rrd"}))
    trainer = Trainer(cfg)
    seen = {}
    original = trainer.learner.prepare

    def spy(b, generator):
        seen["reward"] = b["reward"].clone()
        return original(b, generator)

    trainer.learner.prepare = spy
    try:
        trainer.collect()
        trainer.update()
        assert seen["reward"][:-1].abs().sum() > 0   # dense: the model pays at every step
        assert torch.allclose(seen["reward"][..., 0], seen["reward"][..., 1])   # shared: the team's share
    finally:
        trainer.close()


@pytest.mark.parametrize("method", ["rrd", "arel"])
def test_resume_with_a_reward_model_in_training_equals_an_uninterrupted_run(tmp_path, method):
    cfg = tiny_config(env={"id": "tests.user_envs:late_reward", "kwargs": {"length": 30, "reward_from": 5},
                           "num_envs": 4, "episodic_reward": True},
                      algo={"rollout_steps": 20, "redistribution": method, "redistribution_steps": 2},
                      train={"total_env_steps": 800, "checkpoint_every": 3, "eval_episodes": 0})
    assert resumed_equals_uninterrupted(tmp_path, cfg, 400, ("team_return", "losses/policy", "redistribution/loss",
                                                          "redistribution/return_error"))


def test_redistribution_config_errors():
    with pytest.raises(ConfigError, match="'algo.redistribution'"):
        config_from_dict(tiny_config(algo={"redistribution": "rudder"}))
    with pytest.raises(ConfigError, match="'algo.redistribution'"):
        config_from_dict(tiny_config(algo={"redistribution": "rrd"}, backend="rllib"))
