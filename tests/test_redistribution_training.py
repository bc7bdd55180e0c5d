"""Temporal credit in training: the episodic-reward mode and learned reward redistribution
(``algo.redistribution``) wired into the trainer, with exact resume."""
import numpy as np
import pytest
import torch

from marl.config import ConfigError, config_from_dict
from marl.envs import RewardSpec, make_vector_env
from marl.trainer import Trainer
from tests.conftest import resumed_equals_uninterrupted, spy_on_rewards, tiny_config

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


@pytest.mark.parametrize("method", ["rrd", "arel"])
def test_an_absent_agents_slot_does_not_reach_the_reward_model(method):
    """Agents arrive and leave (Departures): whatever action an absent agent's slot holds, the model's
    features, and so the redistributed rewards, are the same."""
    cfg = config_from_dict(tiny_config(env={"id": DEPARTURES, "kwargs": {}, "episodic_reward": True, "num_envs": 4},
                                       algo={"redistribution": method, "rollout_steps": 12}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        b = trainer.rollout.tensors()
        assert not b["alive"].all()
        junk = {**b, "actions": torch.where(b["alive"], b["actions"], (b["actions"] + 1) % 3)}
        redistribution = trainer.redistribution
        torch.testing.assert_close(redistribution.features(junk), redistribution.features(b))
    finally:
        trainer.close()


def test_the_learner_trains_on_the_redistributed_rewards():
    cfg = config_from_dict(tiny_config(env={"episodic_reward": True}, algo={"redistribution": "rrd"}))
    trainer = Trainer(cfg)
    seen = spy_on_rewards(trainer)
    try:
        trainer.collect()
        trainer.update()
        assert seen[-1][:-1].abs().sum() > 0   # dense: the model pays at every step
        assert torch.allclose(seen[-1][..., 0], seen[-1][..., 1])   # shared: the team's share
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


def test_arel_training_rewards_sum_to_each_episodes_outcome_across_rollouts():
    # Episodes of 30 steps, rollouts of 20: most episodes span two rollouts, and a segment in flight at a
    # rollout's end is paid before its outcome is known; the final segment settles the account.
    cfg = config_from_dict(tiny_config(env={"id": "tests.user_envs:late_reward", "num_envs": 2, "episodic_reward": True,
                                            "kwargs": {"length": 30, "reward_from": 5}},
                                       algo={"rollout_steps": 20, "redistribution": "arel", "redistribution_steps": 1}))
    trainer = Trainer(cfg)
    paid = spy_on_rewards(trainer)
    rewards, ends = [], []
    try:
        for _ in range(7):
            trainer.collect()
            b = trainer.rollout.tensors()
            rewards.append(b["reward"].clone())
            ends.append(trainer.redistribution.episode_ends(b).clone())
            trainer.update()
    finally:
        trainer.close()
    dense, reward, end = torch.cat(paid), torch.cat(rewards), torch.cat(ends)   # [7 * 20, B, N], [.., B]
    checked = spanning_paid_early = 0
    for env in range(2):
        start = 0
        for t in end[:, env].nonzero().flatten().tolist():
            outcome = reward[start:t + 1, env].sum()
            assert outcome > 0
            # shared reward, every agent present: each agent is paid the team's outcome, the total N times it
            torch.testing.assert_close(dense[start:t + 1, env].sum(0), outcome.expand(2) / 2, atol=1e-4, rtol=1e-5)
            cut = (start // 20 + 1) * 20                    # the end of the rollout the episode began in
            spanning_paid_early += bool(cut <= t and dense[start:cut, env].abs().sum() > 0)
            checked += 1
            start = t + 1
    assert checked >= 6 and spanning_paid_early >= 2


def test_arel_scores_a_segment_in_its_whole_episodes_context():
    from marl.redistribute import OnlineRedistribution, settle

    cfg = config_from_dict(tiny_config(env={"reward": "individual"}, algo={"redistribution": "arel"}))
    online = OnlineRedistribution(cfg, 2, 3, 4, 3, False, 1)
    g = torch.Generator().manual_seed(0)
    online.model.add_episodes(torch.randn(2, 5, 2, online.feature_dim, generator=g), torch.ones(2, 5, dtype=torch.bool),
                              torch.tensor([1.0, 2.0]))

    def rollout(end_at=None):
        b = {"obs": torch.randn(4, 1, 2, 3, generator=g), "state": torch.randn(4, 1, 4, generator=g),
             "actions": torch.randint(3, (4, 1, 2), generator=g), "alive": torch.ones(4, 1, 2, dtype=torch.bool),
             "terminated": torch.zeros(4, 1, 2, dtype=torch.bool), "truncated": torch.zeros(4, 1, 2, dtype=torch.bool),
             "reward": torch.zeros(4, 1, 2)}
        if end_at is not None:
            b["terminated"][end_at] = True
            b["reward"][end_at] = torch.tensor([3.0, -1.0])
        return b

    first, second = rollout(), rollout(end_at=1)      # one 6-step episode, then a new one in flight
    paid_first, _ = online.process(first)
    whole = torch.cat([online.features(first), online.features(second)])[:, 0]
    paid_second, _ = online.process(second)
    valid = torch.ones(1, 6, dtype=torch.bool)
    scores = online.model.score(whole[None, :6], valid)[0]
    expected = settle(scores[4:], torch.ones(2, 2, dtype=torch.bool), 2.0, float(paid_first.sum()))
    torch.testing.assert_close(paid_second[:2, 0], expected)   # positions 4, 5 of the episode, settled
    assert float(paid_first.sum() + paid_second[:2].sum()) == pytest.approx(2.0, abs=1e-5)
    fresh = online.model.score(whole[None, 6:], torch.ones(1, 2, dtype=torch.bool))[0]
    torch.testing.assert_close(paid_second[2:, 0], fresh)       # the next episode starts at position 0


def test_sparsity_capacity_and_joint_action_options():
    from marl.redistribute import OnlineRedistribution

    with pytest.raises(ConfigError, match="'algo.redistribution_sparsity': expected a finite float >= 0"):
        config_from_dict(tiny_config(algo={"redistribution": "rrd", "redistribution_sparsity": -1.0}))
    with pytest.raises(ConfigError, match="'algo.redistribution_capacity': expected an int >= 1"):
        config_from_dict(tiny_config(algo={"redistribution": "rrd", "redistribution_capacity": 0}))
    for key, value in [("redistribution_sparsity", 0.1), ("redistribution_capacity", 50),
                       ("redistribution_joint_action", True)]:
        with pytest.raises(ConfigError, match=f"'algo.{key}'.*algo.redistribution is 'none'"):
            config_from_dict(tiny_config(algo={key: value}))
    cfg = config_from_dict(tiny_config(algo={"redistribution": "rrd", "redistribution_sparsity": 0.1,
                                             "redistribution_capacity": 50, "redistribution_joint_action": True}))
    online = OnlineRedistribution(cfg, 2, 3, 4, 3, False, 1)    # N = 2, obs 3, state 4, A = 3
    assert online.model.sparsity == 0.1 and online.model.capacity == 50
    assert online.feature_dim == 4 + 3 + 3 + 2 + 2 * 3
    # The joint action follows [state, o_i, one_hot(u_i), one_hot(i)], the same for every agent; an
    # absent agent's action is zeros.
    b = {"obs": torch.zeros(2, 1, 2, 3), "state": torch.zeros(2, 1, 4), "actions": torch.tensor([[[2, 0]], [[1, 1]]]),
         "alive": torch.tensor([[[True, True]], [[True, False]]])}
    joint = online.features(b)[..., 12:]
    expected = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]).float()
    torch.testing.assert_close(joint[:, 0], expected[:, None].expand(2, 2, 6))
    torch.testing.assert_close(online.features(b)[..., 7:12][0, 0, 0], torch.tensor([0, 0, 1, 1, 0]).float())


def test_the_defaults_leave_the_reward_model_as_it_was():
    cfg = config_from_dict(tiny_config(env={"episodic_reward": True}, algo={"redistribution": "rrd"}))
    trainer = Trainer(cfg)
    try:
        model = trainer.redistribution.model
        assert model.sparsity == 0.0 and model.capacity == 1000 and not trainer.redistribution.joint
        trainer.collect()
        metrics = trainer.update()
        assert "redistribution/l1" not in metrics
    finally:
        trainer.close()
