"""The structural-credit modules in the trainer: difference rewards by re-simulation (PettingZoo
envs and batched envs), Shapley credit over COMA's critic and DOP's decomposed critic, and their
configs. The pure functions are tested in test_shapley.py, test_dop.py and test_difference.py."""
import numpy as np
import pytest
import torch

from marl.algorithms import ADVANTAGES
from marl.config import ConfigError, config_from_dict, load_config
from marl.envs import EnvError, RewardSpec, make_vector_env
from marl.envs.batched import BatchedVectorEnv, make_batched_env
from marl.envs.diagnostic import CLIMBING_PAYOFF
from marl.trainer import Trainer
from tests.conftest import tiny_config

LAZY = {"id": "diag:lazy_agent", "kwargs": {"n_agents": 3, "episode_length": 4, "n_levels": 3}, "num_envs": 4}


def test_difference_rewards_by_resimulation_on_the_climbing_game():
    """D_i = G(u) - G(u_-i, c_i) with c_i = 0, against the payoff table for every joint action."""
    venv = make_vector_env("diag:climbing", {}, 9, RewardSpec("difference", "mean", default_action=0))
    venv.reset(list(range(9)))
    joint = np.array([[a, b] for a in range(3) for b in range(3)])
    step = venv.step(joint)
    venv.close()
    for (a, b), reward in zip(joint, step.reward):
        expected = [CLIMBING_PAYOFF[a, b] - CLIMBING_PAYOFF[0, b], CLIMBING_PAYOFF[a, b] - CLIMBING_PAYOFF[a, 0]]
        np.testing.assert_allclose(reward, expected)
    np.testing.assert_allclose(step.raw_reward[:, 0], [CLIMBING_PAYOFF[a, b] for a, b in joint])   # raw is kept


def test_difference_rewards_give_the_lazy_agent_nothing():
    venv = make_vector_env("diag:lazy_agent", LAZY["kwargs"], 4, RewardSpec("difference", "sum"))
    venv.reset([0, 1, 2, 3])
    rng = np.random.default_rng(0)
    for _ in range(4):
        step = venv.step(rng.integers(0, 3, (4, 3)))
        assert (step.reward[:, 2] == 0).all() and (step.reward[:, :2] >= 0).all()
    venv.close()


def test_difference_rewards_on_a_batched_env_copy_its_tensors():
    """A batched env of our own whose agents score their own hits: D_i = hit_i - hit_i(default 0)."""
    venv = BatchedVectorEnv(make_batched_env("tests.user_envs:batched_match_target", {}, 6), RewardSpec("difference", "sum"))
    current = venv.reset(3)
    targets = current["obs"].argmax(-1)
    actions = torch.randint(0, 3, (6, 2), generator=torch.Generator().manual_seed(1))
    step = venv.step(actions)
    expected = (actions == targets).float() - (targets == 0).float()
    torch.testing.assert_close(step.reward, expected)
    # the counterfactual steps left the env where a plain step leaves it
    plain = BatchedVectorEnv(make_batched_env("tests.user_envs:batched_match_target", {}, 6), RewardSpec("shared"))
    plain.reset(3)
    torch.testing.assert_close(plain.step(actions).obs, step.obs)


def test_on_a_batched_env_an_agent_without_the_default_action_uses_its_first_legal_one():
    """agent_1 has actions 0 and 1 only; with c = 2 it is replaced by its first legal action (0),
    as on the PettingZoo path: D_0 = hit_0 − [target_0 = 2], D_1 = hit_1 − [target_1 = 0]."""
    env = make_batched_env("tests.user_envs:batched_match_target", {"legal": [3, 2]}, 64)
    venv = BatchedVectorEnv(env, RewardSpec("difference", "sum", default_action=2))
    targets = venv.reset(3)["obs"].argmax(-1)
    assert (targets[:, 1] < 2).all() and (targets[:, 0] == 2).any() and (targets[:, 1] == 0).any()
    actions = torch.randint(0, 2, (64, 2), generator=torch.Generator().manual_seed(1))
    step = venv.step(actions)
    hits = (actions == targets).float()
    expected = hits - torch.stack([(targets[:, 0] == 2).float(), (targets[:, 1] == 0).float()], -1)
    torch.testing.assert_close(step.reward, expected)


def test_a_default_action_no_agent_has_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'env.default_action'.*\[0, 3\), got 3"):
        Trainer(config_from_dict(tiny_config(env={**LAZY, "reward": "difference", "default_action": 3})))


def test_an_env_that_cannot_be_copied_has_no_exact_difference_rewards():
    venv = make_vector_env("tests.user_envs:unpicklable", {}, 1, RewardSpec("difference"))
    venv.reset([0])
    with pytest.raises(EnvError, match=r"'difference' re-simulates every step on a copy of the env, and this env "
                                       r"cannot be copied"):
        venv.step(np.zeros((1, 2), np.int64))
    venv.close()


@pytest.mark.parametrize("advantage", ["shapley", "shapley_lambda", "dop", "dop_lambda"])
def test_shapley_and_dop_train_and_report_per_agent_credit(advantage):
    cfg = config_from_dict(tiny_config(env=LAZY, algo={"advantage": advantage, "rollout_steps": 4, "minibatches": 2}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        metrics = trainer.update()
        assert all(np.isfinite(metrics[f"credit/share/agent_{i}"]) for i in range(3))
        assert np.isfinite(metrics["losses/value"]) and np.isfinite(metrics["explained_variance"])
    finally:
        trainer.close()


def test_shapley_costs_m_times_n_critic_rows_per_step():
    cfg = config_from_dict(tiny_config(env=LAZY, algo={"advantage": "shapley", "rollout_steps": 4,
                                                       "shapley_samples": 5}))
    trainer = Trainer(cfg)
    rows = []
    handle = trainer.learner.critic.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        trainer.collect()
        trainer.learner.prepare(trainer.rollout.tensors(), torch.Generator().manual_seed(0))
    finally:
        handle.remove()
        trainer.close()
    T, B, N, M = 4, 4, 3, 5
    assert sorted(rows) == sorted([T * B * N, T * B * N, T * B * M * N])   # Q(s, u), the bootstrap, the coalitions


def test_dop_advantage_is_the_weighted_utility_gap_and_the_critic_learns_q_tot():
    cfg = config_from_dict(tiny_config(env=LAZY, algo={"advantage": "dop", "rollout_steps": 4}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        b = trainer.rollout.tensors()
        learner = trainer.learner
        prep = learner.prepare(b, torch.Generator().manual_seed(0))
        with torch.no_grad():
            x = prep["critic_in"]
            q = learner.critic(x)
            k, bias = learner.critic.mix(x)
            pi = torch.softmax(learner.actor(b["obs"]), -1)
            scale = learner._value_scale()
            expected = k * scale * (q.gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1) - (pi * q).sum(-1))
            q_tot = (k * q.gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)).sum(-1) + bias
        assert (k >= 0).all()
        torch.testing.assert_close(prep["adv"], expected)
        torch.testing.assert_close(prep["value"], learner._to_return_space(q_tot.unsqueeze(-1).expand_as(k)))
    finally:
        trainer.close()


def test_dop_lambda_adds_the_shared_td_lambda_error_of_q_tot_to_dops_advantage():
    # Same rollout, same critic: dop_lambda's advantage is dop's plus (G^λ − Q_tot), the same for
    # every agent, with G^λ the critic's own TD(λ) target.
    advantages = {}
    for advantage in ("dop", "dop_lambda"):
        trainer = Trainer(config_from_dict(tiny_config(env=LAZY, algo={"advantage": advantage, "rollout_steps": 4})))
        try:
            trainer.collect()
            advantages[advantage] = trainer.learner.prepare(trainer.rollout.tensors(), torch.Generator().manual_seed(0))
        finally:
            trainer.close()
    dop, dop_lambda = advantages["dop"], advantages["dop_lambda"]
    torch.testing.assert_close(dop_lambda["target"], dop["target"])
    torch.testing.assert_close(dop_lambda["adv"], dop["adv"] + dop["target"] - dop["value"])
    shared = dop_lambda["adv"] - dop["adv"]
    torch.testing.assert_close(shared, shared[..., :1].expand_as(shared))


@pytest.mark.parametrize("overrides, key", [
    ({"algo": {"advantage": "dop"}, "env": {"reward": "individual"}}, "env.reward"),
    ({"algo": {"advantage": "dop"}, "backend": "rllib"}, "algo.advantage"),
    ({"algo": {"advantage": "dop"}, "model": {"recurrent": True, "chunk_length": 5}}, "model.recurrent"),
    ({"algo": {"advantage": "dop_lambda"}, "env": {"reward": "individual"}}, "env.reward"),
    ({"algo": {"advantage": "dop_lambda"}, "backend": "rllib"}, "algo.advantage"),
    ({"algo": {"shapley_samples": 4}}, "algo.shapley_samples"),
    ({"env": {"default_action": 2}}, "env.default_action"),
])
def test_module_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(tiny_config(**overrides))


def test_the_new_modules_are_registered():
    assert {"shapley", "shapley_lambda", "dop", "dop_lambda"} <= set(ADVANTAGES)
    assert ADVANTAGES["shapley"].fields == {"gamma", "lam", "shapley_samples"}


def test_a_config_names_its_base_and_says_only_what_it_changes(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nalgo: {advantage: coma, lam: 0.8}\nenv: {num_envs: 4}\n")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\nalgo: {advantage: shapley}\n")
    cfg = load_config(tmp_path / "variant.yaml")
    assert (cfg.seed, cfg.algo.advantage, cfg.algo.lam, cfg.env.num_envs) == (3, "shapley", 0.8, 4)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="base chain loops"):
        load_config(tmp_path / "loop.yaml")
