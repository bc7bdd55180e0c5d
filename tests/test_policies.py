"""Policies users need: continuous actions (a diagonal Gaussian) and recurrent memory (a GRU after the
first layer, trained by truncated BPTT over chunks), on both kinds of critic; each learned on a
small env of our own (``tests/user_envs.py``) against its optimum."""
import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from marl.config import ConfigError, config_from_dict
from marl.distributions import Categorical, DiagGaussian
from marl.learner import actor_critic_loss
from marl.networks import unroll
from marl.rollout import policy_steps
from marl.trainer import Trainer
from tests.conftest import resumed_equals_uninterrupted, tiny_config, train_run

MEMORY = "tests.user_envs:cue_memory"
REACH = "tests.user_envs:reach_target"


_train = train_run


# -- distributions ------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 10_000))
def test_gaussian_log_prob_and_entropy_equal_torch_distributions(n_agents, dims, seed):
    gen = torch.Generator().manual_seed(seed)
    mean, log_std = torch.randn(7, n_agents, dims, generator=gen), torch.randn(n_agents, dims, generator=gen) * 0.5
    actions = torch.randn(7, n_agents, dims, generator=gen) * 3   # far outside any bounds too
    ours = DiagGaussian(mean, log_std)
    theirs = torch.distributions.Normal(mean, log_std.exp().expand_as(mean))
    torch.testing.assert_close(ours.log_prob(actions), theirs.log_prob(actions).sum(-1))
    torch.testing.assert_close(ours.entropy(), theirs.entropy().sum(-1))
    # padded action dims take no part
    used = torch.zeros(n_agents, dims, dtype=torch.bool)
    used[:, : max(1, dims - 1)] = True
    padded = DiagGaussian(mean, log_std, used)
    torch.testing.assert_close(padded.log_prob(actions), (theirs.log_prob(actions) * used).sum(-1))
    assert torch.equal(padded.sample(gen)[..., ~used[0]], mean[..., ~used[0]])


def test_categorical_matches_torch_and_sampling_follows_the_probabilities():
    logits = torch.tensor([[2.0, 0.0, -1e9], [0.0, 0.0, 0.0]])
    ours, theirs = Categorical(logits), torch.distributions.Categorical(logits=logits)
    actions = torch.tensor([0, 2])
    torch.testing.assert_close(ours.log_prob(actions), theirs.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), theirs.entropy())
    draws = torch.stack([ours.sample(torch.Generator().manual_seed(s)) for s in range(2000)])
    assert (draws[:, 0] != 2).all()   # a masked action is never drawn
    assert abs(float((draws[:, 0] == 0).float().mean()) - float(theirs.probs[0, 0])) < 0.03


def test_clipping_to_the_bounds_does_not_bias_the_log_prob():
    """The env gets the action clipped to its Box (it raises otherwise), while the rollout keeps the
    sampled action and its log-probability under the unclipped Gaussian."""
    cfg = config_from_dict(tiny_config(env={"id": REACH, "kwargs": {}, "num_envs": 4},
                                       model={"log_std_init": 0.5}, algo={"rollout_steps": 10}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        b = trainer.rollout.tensors()
        outside = (b["actions"] < 0) | (b["actions"] > 1)
        assert outside.float().mean() > 0.2   # many samples fall outside Box(0, 1)
        with torch.no_grad():
            mean = trainer.actor(b["obs"])
        expected = torch.distributions.Normal(mean, trainer.actor.log_std.exp()).log_prob(b["actions"]).sum(-1)
        torch.testing.assert_close(b["logp"], expected)
    finally:
        trainer.close()


# -- continuous actions, learned ----------------------------------------------------------------------

@pytest.mark.parametrize("advantage, loss, bar", [("gae", "ppo", -2.0), ("n_step", "a2c", -3.5)])
def test_continuous_actions_are_learned(tmp_path, advantage, loss, bar):
    """Reach a target point: optimum 0, the zero action about -7.7 (2 agents x 5 steps x -0.77).
    A2C's actor takes one pass per batch, so it gets closer more slowly."""
    cfg = tiny_config(env={"id": REACH, "kwargs": {}, "num_envs": 16},
                      algo={"advantage": advantage, "loss": loss, "rollout_steps": 5, "epochs": 4, "minibatches": 2,
                            "lr": 3e-3, "critic_lr": 3e-3},
                      train={"total_env_steps": 12000, "eval_episodes": 20})
    records, evaluation = _train(cfg, tmp_path / "run")
    assert records[0]["team_return"] < -5.0
    assert evaluation["team_return_mean"] > bar   # PPO: within ~0.2 of the target per agent and step


def test_coma_with_continuous_actions_is_refused_with_a_message():
    with pytest.raises(ConfigError, match=r"'algo.advantage': 'coma' is counterfactual over a discrete action set"):
        Trainer(config_from_dict(tiny_config(env={"id": REACH, "kwargs": {}}, algo={"advantage": "coma"})))


@pytest.mark.parametrize("advantage", ["coma", "coma_lambda", "shapley", "shapley_lambda", "dop", "dop_lambda"])
def test_counterfactual_modules_with_continuous_actions_are_refused_before_a_run_dir_is_made(tmp_path, capsys,
                                                                                          advantage):
    import yaml

    from marl.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(env={"id": REACH, "kwargs": {}, "workers": 1},
                                               algo={"advantage": advantage})))
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"marl train: error: config key 'algo.advantage': {advantage!r} is counterfactual over a "
                       f"discrete action set, and env {REACH!r} has continuous (Box) actions; use a V-critic module "
                       f"(gae, td_lambda, n_step, mc)")
    assert not run_dir.exists()   # so the same --run-dir takes the corrected config
    path.write_text(yaml.safe_dump(tiny_config(env={"id": REACH, "kwargs": {}}, train={"eval_episodes": 0})))
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 0


# -- recurrent policies ----------------------------------------------------------------------------------

def _memory_config(recurrent: bool, steps: int = 20000):
    return tiny_config(env={"id": MEMORY, "kwargs": {}, "num_envs": 16},
                       algo={"rollout_steps": 12, "epochs": 4, "minibatches": 2, "lr": 1e-3, "critic_lr": 1e-3},
                       model={"recurrent": recurrent, "hidden": 32, **({"chunk_length": 6} if recurrent else {})},
                       train={"total_env_steps": steps, "eval_episodes": 40})


def test_memory_is_learned_by_the_recurrent_policy_and_not_by_the_mlp(tmp_path):
    """The cue is seen at step 0 and must be acted on at step 5: optimum 2.0 (2 agents), memoryless
    best 2/3 (every memoryless policy scores 2/3 in expectation: the targets are uniform). The
    greedy MLP's 40-episode mean lies within 0.25 (about 2.4 standard errors) of 2/3: measured
    0.65 on this seed (0.65, 0.875, 0.65 on seeds 0-2)."""
    _, recurrent = _train(_memory_config(True), tmp_path / "gru")
    _, mlp = _train(_memory_config(False, steps=10000), tmp_path / "mlp")   # it cannot do better with more
    assert recurrent["team_return_mean"] >= 0.95 * 2.0
    assert mlp["team_return_mean"] == pytest.approx(2 / 3, abs=0.25)


def test_hidden_state_resets_where_an_episode_starts():
    """Across an episode boundary the recurrent actor carries nothing over: its hidden state is zero
    at the new episode's first step and its outputs equal a fresh unroll from zeros."""
    cfg = config_from_dict(_memory_config(True))
    trainer = Trainer(cfg)
    try:
        trainer.venv.reset(np.arange(cfg.env.num_envs))
        actor = trainer.actor
        steps = [ps for _, ps in zip(range(12), policy_steps(trainer.venv, actor, torch.Generator().manual_seed(0)))]
        firsts = torch.tensor(np.stack([ps.current["first"] for ps in steps]))
        assert firsts[0].all() and firsts[6].all() and not firsts[1:6].any()
        assert all((ps.hidden == 0).all() for ps in (steps[0], steps[6]))
        assert not (steps[5].next_hidden == 0).all()   # the first episode left a non-zero hidden behind
        obs = torch.tensor(np.stack([ps.current["obs"] for ps in steps[6:]]))
        fresh = actor.unroll(obs, None, actor.initial_hidden(cfg.env.num_envs), firsts[6:])
        with torch.no_grad():
            carried = torch.stack([actor.step(torch.tensor(ps.current["obs"]), None, ps.hidden)[0] for ps in steps[6:]])
        torch.testing.assert_close(carried, fresh.detach())
    finally:
        trainer.close()


def test_bptt_over_one_chunk_covering_the_rollout_equals_the_full_sequence_gradient():
    cfg = config_from_dict(tiny_config(env={"id": MEMORY, "kwargs": {}, "num_envs": 4},
                                       algo={"rollout_steps": 12, "epochs": 1, "minibatches": 1, "max_grad_norm": 0.0},
                                       model={"recurrent": True, "hidden": 16, "chunk_length": 12}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        b = trainer.rollout.tensors()
        b["critic_h0"] = trainer.learner.critic.initial_hidden(cfg.env.num_envs)
        learner = trainer.learner
        reference = copy.deepcopy(learner)
        prep = learner.prepare(b, torch.Generator().manual_seed(0))
        adv, target, _ = learner.finalise(prep, None)
        learner.optimise(b, prep, adv, target, torch.Generator().manual_seed(0))
        # the same step by hand: the whole rollout unrolled from the stored first hiddens
        r = reference
        r.update_value_norm(prep["target"])
        dist = r.actor.distribution(r.actor.unroll(b["obs"], None, b["actor_h"][0], b["first"]))
        values = r.critic.unroll(prep["critic_in"], b["critic_h0"], b["first"])[0]
        out = actor_critic_loss(dist, b["actions"], b["logp"], adv, values, target, cfg.algo, True, 1)
        r.optimizer.zero_grad()
        out["loss"].backward()
        r.optimizer.step()
        for (name, ours), theirs in zip(learner.actor.named_parameters(), r.actor.parameters()):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5, msg=name)
        for ours, theirs in zip(learner.critic.parameters(), r.critic.parameters()):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    finally:
        trainer.close()


@pytest.mark.parametrize("shared", [True, False])
def test_unroll_equals_stepping_and_resets_at_first_steps(shared):
    """The batched unroll (a fused GRU over the stretches between resets, when shared) against
    stepping the cell one step at a time: outputs, hiddens and gradients."""
    from marl.networks import RecurrentAgentMLP

    net = RecurrentAgentMLP(3, 4, 2, 8, 2, shared=shared).double()
    x, h0 = torch.randn(5, 2, 3, 4, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 8).double()
    first = torch.tensor([[False, False], [False, True], [False, False], [True, False], [False, False]])
    out, starts, ends = unroll(net, x, h0, first)
    h, outs = h0, []
    for t in range(5):
        h = torch.where(first[t][:, None, None], torch.zeros_like(h), h)
        torch.testing.assert_close(starts[t], h)
        o, h = net.step(x[t], h)
        outs.append(o)
        torch.testing.assert_close(out[t], o)
        torch.testing.assert_close(ends[t], h)
    weights = torch.randn_like(out)
    grad, = torch.autograd.grad((out * weights).sum(), x)
    reference, = torch.autograd.grad((torch.stack(outs) * weights).sum(), x)
    torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize("overrides", [
    {"model": {"share_actor": False}},
    {"algo": {"critic": "local"}},
    {"algo": {"critic": "agent_state"}},
    {"algo": {"advantage": "td_lambda"}},
    {"algo": {"advantage": "n_step"}},
    {"algo": {"advantage": "mc"}},
    {"algo": {"advantage": "coma_lambda", "learner": "a2c"}},
    {"algo": {"advantage": "shapley", "learner": "a2c", "shapley_samples": 2}},
    {"env": {"id": REACH, "kwargs": {}}},
], ids=["separate_actors", "local_critic", "agent_state_critic", "td_lambda", "n_step", "mc", "coma_lambda",
        "shapley", "continuous"])
def test_recurrent_policies_train_in_every_setup(tmp_path, overrides):
    """Two iterations of model.recurrent with each setup; every loss is finite."""
    cfg = tiny_config(**{**overrides, "model": {"hidden": 16, "recurrent": True, "chunk_length": 5,
                                                **overrides.get("model", {})},
                         "algo": {"rollout_steps": 25, "epochs": 2, "minibatches": 2, **overrides.get("algo", {})},
                         "train": {"total_env_steps": 200, "checkpoint_every": 1, "eval_episodes": 2,
                                   "progress": False}})
    records, evaluation = _train(cfg, tmp_path / "run")
    assert [r["iteration"] for r in records] == [1, 2]
    for record in records:
        for key in ("losses/policy", "losses/value", "losses/entropy", "losses/grad_norm"):
            assert np.isfinite(record[key]), (key, record[key])
    assert np.isfinite(evaluation["team_return_mean"])


def test_recurrent_shapley_steps_each_coalition_row_from_the_rollouts_hidden_state():
    """Shapley's coalition rows go through the recurrent critic from the hidden state its own
    inputs left at that step: fed the rollout's own joint action (the COMA coalition), it gives
    the critic's unrolled Q back."""
    cfg = config_from_dict(tiny_config(algo={"advantage": "shapley", "learner": "a2c"},
                                       model={"recurrent": True, "hidden": 16, "chunk_length": 5}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        b = trainer.rollout.tensors()
        learner = trainer.learner
        with torch.no_grad():
            critic_in = learner.critic_input(b["state"], b["obs"], b["actions"])
            out, _, prep = learner._critic_pass(learner.critic, critic_in, b)
            rows = learner._coalition_q(b["state"].shape[-1], None, prep)(critic_in.unsqueeze(2))   # M = 1
            from_zeros = learner.critic.step(critic_in, torch.zeros_like(prep["critic_starts"]))[0]
            assert not torch.allclose(out[1:], from_zeros[1:])   # the hidden state matters
        torch.testing.assert_close(rows[:, :, 0], learner._to_return_space(out, per_action=True))
    finally:
        trainer.close()


@pytest.mark.parametrize("workers, async_collection, act_in_workers, advantage",
                         [(0, False, False, "gae"), (0, False, False, "coma"),
                          pytest.param(2, True, False, "gae", marks=pytest.mark.slow), (2, False, True, "gae")])
def test_resume_with_recurrent_state_equals_an_uninterrupted_run(tmp_path, workers, async_collection, act_in_workers,
                                                                 advantage):
    cfg = tiny_config(env={"id": MEMORY, "kwargs": {"delay": 7}, "num_envs": 4, "workers": workers},
                      algo={"advantage": advantage, "rollout_steps": 6, "minibatches": 2},
                      model={"recurrent": True, "hidden": 16, "chunk_length": 3},
                      train={"total_env_steps": 480, "checkpoint_every": 3, "eval_episodes": 0,
                             "async_collection": async_collection, "act_in_workers": act_in_workers})
    # 8-step episodes, cut mid-episode
    assert resumed_equals_uninterrupted(tmp_path, cfg, 240, ("team_return", "episodes", "losses/policy",
                                                          "losses/value", "explained_variance"))


def test_a_recurrent_run_evaluates_from_its_checkpoint(tmp_path):
    from marl.cli import main

    _train(_memory_config(True, steps=400), tmp_path / "run")
    assert main(["eval", str(tmp_path / "run"), "--episodes", "4", "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["sampled"]["episodes"] == 4


# -- config ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    ({"model": {"recurrent": True, "chunk_length": 7}}, "model.chunk_length"),
    ({"model": {"recurrent": True, "chunk_length": 5}, "backend": "rllib"}, "model.recurrent"),
    ({"model": {"chunk_length": 5}}, "model.chunk_length"),
    ({"algo": {"advantage": "coma", "critic": "local"}}, "algo.critic"),
    ({"algo": {"critic_obs": True}}, "algo.critic_obs"),
    ({"algo": {"target_update_every": 5}}, "algo.target_update_every"),
    ({"algo": {"n_step": 3}}, "algo.n_step"),
    ({"algo": {"advantage": "mc", "lam": 0.8}}, "algo.lam"),
    ({"env": {"alpha": 0.3}}, "env.alpha"),
    ({"algo": {"learner": "a2c", "clip": 0.1}}, "algo.clip"),
    ({"algo": {"redistribution_steps": 4}}, "algo.redistribution_steps"),
    ({"algo": {"redistribution_state": False}}, "algo.redistribution_state"),
    ({"algo": {"redistribution_lr": 1e-4}}, "algo.redistribution_lr"),
    ({"algo": {"redistribution_subset": 4}}, "algo.redistribution_subset"),
    ({"algo": {"redistribution": "arel", "redistribution_subset": 4}}, "algo.redistribution_subset"),
    ({"env": {"reward": "individual", "team_reward": "sum"}}, "env.team_reward"),
    ({"train": {"eval_every_episodes": 5}}, "train.eval_every_episodes"),
])
def test_options_that_do_not_fit_or_are_ignored_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(tiny_config(**overrides))


@pytest.mark.parametrize("overrides", [
    {"algo": {"clip": 0.1}},
    {"algo": {"redistribution": "rrd", "redistribution_steps": 4, "redistribution_state": False,
              "redistribution_lr": 1e-4, "redistribution_subset": 4}},
    {"algo": {"redistribution": "arel", "redistribution_steps": 4}},
    {"env": {"reward": "mixed", "team_reward": "sum"}},
    {"env": {"reward": "difference", "team_reward": "sum"}},
    {"train": {"eval_every": 2, "eval_every_episodes": 5}},
])
def test_the_same_options_are_accepted_where_they_are_read(overrides):
    config_from_dict(tiny_config(**overrides))
