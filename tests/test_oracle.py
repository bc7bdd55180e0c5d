"""The Monte-Carlo credit oracle (marl.oracle): exact on envs where Q is known in closed form, the
twin and PettingZoo backends agree, end to end through `marl credit --oracle`, and clear errors."""
import json

import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marl.cli import main
from marl.config import config_from_dict
from marl.envs import EnvError
from marl.envs.diagnostic import CLIMBING_PAYOFF
from marl.oracle import oracle_advantages, score_credit
from marl.run import new_run
from marl.trainer import Trainer
from tests.conftest import tiny_config

GAMMA = 0.9


class TwoStep(ParallelEnv):
    """Two agents, two actions, two steps, one team reward given to both. Step 0 pays
    ``1[u_0 == u_1]`` and remembers ``x = u_0``; step 1 pays ``3 x`` if agent_1 plays 1. Each agent
    observes the step (one-hot) and x. With a uniform policy and discount g:

    - t = 0: ``Q(u) = 1[u_0 == u_1] + 1.5 g u_0``, so ``A*_0 = 1[u_0 == u_1] - 0.5 + 1.5 g (u_0 - 0.5)``
      and ``A*_1 = 1[u_0 == u_1] - 0.5``;
    - t = 1: ``A*_0 = 0`` and ``A*_1 = 3 x (1[u_1 == 1] - 0.5)``.

    At t = 0 the continuation (agent_1's draw at t = 1) is random: Q there is a Monte-Carlo estimate.
    """

    metadata = {"name": "two_step_v0", "render_modes": []}

    def __init__(self, render_mode=None):
        self.possible_agents = ["agent_0", "agent_1"]
        self.render_mode = render_mode
        self._obs = spaces.Box(0.0, 1.0, (3,), np.float32)
        self._act = spaces.Discrete(2)

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act

    def _observe(self):
        o = np.array([self.t == 0, self.t == 1, self.x], np.float32)
        return {a: o.copy() for a in self.agents}

    def reset(self, seed=None, options=None):
        self.agents, self.t, self.x = list(self.possible_agents), 0, 0
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions):
        u0, u1 = int(actions["agent_0"]), int(actions["agent_1"])
        r = float(u0 == u1) if self.t == 0 else 3.0 * self.x * float(u1 == 1)
        if self.t == 0:
            self.x = u0
        self.t += 1
        done = self.t >= 2
        out = (self._observe(), {a: r for a in self.agents}, {a: done for a in self.agents},
               {a: False for a in self.agents}, {a: {} for a in self.agents})
        if done:
            self.agents = []
        return out


def two_step(**kwargs):
    return TwoStep(**kwargs)


def _trainer(env: dict, **sections) -> Trainer:
    cfg = {"env": {"num_envs": 1, **env}, "algo": {"rollout_steps": 2, "minibatches": 1, "gamma": GAMMA},
           "model": {"hidden": 16}, "train": {"progress": False, "eval_episodes": 0}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return Trainer(config_from_dict(cfg), None)


def _uniform(trainer: Trainer) -> None:
    """Zero the actor's weights: logits 0, so π is uniform over the legal actions."""
    with torch.no_grad():
        for p in trainer.actor.parameters():
            p.zero_()


def test_matrix_game_oracle_is_exact_and_matches_true_credit():
    """diag:climbing: one deterministic step, so Q(s, (u_-i, u')) is the payoff itself (K = 1 is
    exact) and A* = payoff[u] - Σ π_i(u') payoff[u_-i, u'] for the actor's π; with a uniform π it is
    the env's own true_credit."""
    trainer = _trainer({"id": "diag:climbing"})
    with torch.no_grad():   # a non-uniform, agent-specific policy
        for p in trainer.actor.parameters():
            p.copy_(torch.linspace(-1.0, 1.0, p.numel()).view_as(p))
    res = oracle_advantages(trainer, episodes=6, states=6, rollouts=1)
    assert res["backend"] == "pettingzoo" and res["oracle"].shape == (6, 2)
    with torch.no_grad():
        probs = torch.softmax(trainer.actor(torch.ones(1, 2, 1)).double(), -1)[0].numpy()   # [N, A]
    np.testing.assert_allclose(res["probs"], np.broadcast_to(probs, res["probs"].shape), atol=1e-6)
    for s, (u0, u1) in enumerate(res["actions"]):
        np.testing.assert_allclose(res["q"][s, 0], CLIMBING_PAYOFF[:, u1], atol=1e-9)
        np.testing.assert_allclose(res["q"][s, 1], CLIMBING_PAYOFF[u0, :], atol=1e-9)
        exact = [CLIMBING_PAYOFF[u0, u1] - probs[0] @ CLIMBING_PAYOFF[:, u1],
                 CLIMBING_PAYOFF[u0, u1] - probs[1] @ CLIMBING_PAYOFF[u0, :]]
        np.testing.assert_allclose(res["oracle"][s], exact, atol=1e-6)
    _uniform(trainer)
    res = oracle_advantages(trainer, episodes=6, states=6, rollouts=1, seed=1)
    true = trainer.venv.team_envs[0].env.unwrapped.true_credit
    for s, actions in enumerate(res["actions"]):
        np.testing.assert_allclose(res["oracle"][s], true(actions[None])[0], atol=1e-6)
    trainer.close()


def test_lazy_agent_oracle_is_exact_over_a_whole_episode():
    """diag:lazy_agent (10 steps): the reward is additive in the current efforts and the future does
    not depend on today's actions, so A*_i = w_i (e_i - E_π[e]) / (n_levels - 1) at every step.
    The counterfactual rollouts share their draws, so the future cancels exactly even with K = 2;
    with a uniform π, A* is the env's own true_credit."""
    trainer = _trainer({"id": "diag:lazy_agent", "kwargs": {"n_agents": 3, "episode_length": 10}})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():   # a random, step- and agent-dependent policy
        for p in trainer.actor.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=generator))
    res = oracle_advantages(trainer, episodes=3, states=12, rollouts=2)
    weights = np.array([1.0, 1.0, 0.0])
    expected_effort = (res["probs"] * np.arange(3)).sum(-1)
    assert np.ptp(expected_effort) > 0.2                   # π is far from uniform
    np.testing.assert_allclose(res["oracle"], weights * (res["actions"] - expected_effort) / 2, atol=1e-9)
    np.testing.assert_allclose(res["oracle_se"], 0.0, atol=1e-9)
    assert (res["oracle"][:, 2] == 0.0).all()              # the lazy agent: exactly no credit
    _uniform(trainer)
    res = oracle_advantages(trainer, episodes=2, states=20, rollouts=2)
    true = trainer.venv.team_envs[0].env.unwrapped.true_credit
    for e in range(2):
        rows = res["steps"][:, 0] == e
        full = np.zeros((10, 3), np.int64)
        full[res["steps"][rows, 1]] = res["actions"][rows]
        np.testing.assert_allclose(res["oracle"][rows], true(full)[res["steps"][rows, 1]], atol=1e-9)
    trainer.close()


def test_two_step_oracle_matches_the_closed_form_within_monte_carlo_error():
    trainer = _trainer({"id": "tests.test_oracle:two_step"})
    _uniform(trainer)
    res = oracle_advantages(trainer, episodes=6, states=8, rollouts=128, seed=3)
    steps, actions = res["steps"], res["actions"]
    assert set(steps[:, 1]) == {0, 1}
    for s in range(len(steps)):
        u0, u1 = actions[s]
        if steps[s, 1] == 0:
            exact = [float(u0 == u1) - 0.5 + 1.5 * GAMMA * (u0 - 0.5), float(u0 == u1) - 0.5]
            se = res["oracle_se"][s]
            assert abs(res["oracle"][s, 0] - exact[0]) <= 5 * se[0] and se[0] > 0, (res["oracle"][s], exact, se)
            # agent_1's counterfactuals keep x and share the draws at t = 1 (common random numbers),
            # so their noise cancels in A*_1 exactly
            assert res["oracle"][s, 1] == pytest.approx(exact[1], abs=1e-9) and se[1] == pytest.approx(0.0, abs=1e-9)
        else:   # the last step: deterministic, so exact; x (unknown here) is 0 or 1
            assert res["oracle"][s, 0] == pytest.approx(0.0, abs=1e-9)
            assert res["oracle"][s, 1] in (pytest.approx(0.0, abs=1e-9), pytest.approx(3.0 * (u1 - 0.5)))
            np.testing.assert_allclose(res["oracle_se"][s], 0.0, atol=1e-9)
    # the horizon cuts the continuation: with H = 1 only the immediate reward counts
    short = oracle_advantages(trainer, episodes=8, states=8, rollouts=4, horizon=1, seed=3)
    first = short["steps"][:, 1] == 0
    u0, u1 = short["actions"][first].T
    np.testing.assert_allclose(short["oracle"][first], np.stack([(u0 == u1) - 0.5, (u0 == u1) - 0.5], -1), atol=1e-9)
    trainer.close()


def test_legal_actions_and_absent_agents():
    """Per-step masks (the env raises on an illegal action, so every continuation must respect them):
    counterfactuals exactly over the legal actions, π zero elsewhere. Agents that leave or arrive
    late get no entry."""
    trainer = _trainer({"id": "tests.user_envs:masked_choice", "kwargs": {"length": 4}})
    res = oracle_advantages(trainer, episodes=3, states=6, rollouts=2)
    legal = np.isfinite(res["q"])
    assert legal.any(-1).all() and not legal.all()
    np.testing.assert_array_equal(res["probs"] > 0, legal)
    np.testing.assert_allclose(res["probs"].sum(-1), 1.0)
    assert legal[np.arange(len(legal))[:, None], np.arange(2)[None], res["actions"]].all()   # u is legal
    trainer.close()
    trainer = _trainer({"id": "tests.user_envs:departures", "reward": "individual"})
    res = oracle_advantages(trainer, episodes=2, states=16, rollouts=2)
    assert not res["alive"].all()
    np.testing.assert_array_equal(np.isfinite(res["oracle"]), res["alive"])
    assert np.isnan(res["q"][~res["alive"]]).all()
    score = score_credit(res["advantage"], res["oracle"], res["oracle_se"], trainer.agents)
    assert score["entries"] == res["alive"].sum()
    assert [score[f"entries/{a}"] for a in trainer.agents] == res["alive"].sum(0).tolist()
    trainer.close()


COMA_RECURRENT = {"algo": {"advantage": "coma"}, "model": {"recurrent": True, "chunk_length": 5}}
LBF = {"env": {"id": "lbf:Foraging-8x8-2p-2f-coop-v3", "kwargs": {}, "reward": "shared", "team_reward": "sum"}}


@pytest.mark.parametrize("sections, states, seed", [({}, 3, 5), (COMA_RECURRENT, 3, 5), (LBF, 8, 4)],
                         ids=["gae", "coma-recurrent", "lbf"])
def test_twin_and_pettingzoo_copies_agree(sections, states, seed):
    """The same states, seed and draws on both backends (all rows in one chunk): mpe2's and LBF's
    dynamics are deterministic and the twins follow them, so the two estimates of Q agree far
    within their Monte-Carlo error (on LBF, where rewards are rare, exactly)."""
    trainer = Trainer(config_from_dict(tiny_config(**sections)), None)
    twin = oracle_advantages(trainer, episodes=2, states=states, rollouts=6, seed=seed, twin=True)
    copies = oracle_advantages(trainer, episodes=2, states=states, rollouts=6, seed=seed, twin=False)
    assert (twin["backend"], copies["backend"]) == ("twin", "pettingzoo")
    np.testing.assert_array_equal(twin["steps"], copies["steps"])
    np.testing.assert_allclose(twin["advantage"], copies["advantage"])
    assert twin["env_steps"] == copies["env_steps"]
    noise = np.sqrt(twin["q_se"] ** 2 + copies["q_se"] ** 2)
    assert np.all(np.abs(twin["q"] - copies["q"]) <= 4 * noise + 1e-3)
    assert np.median(np.abs(twin["q"] - copies["q"])) < 1e-4
    assert np.isfinite(twin["oracle"]).all() and (twin["oracle_se"] > 0).any()
    assert np.abs(twin["q"]).max() > 1e-3   # some continuation was rewarded
    trainer.close()


@pytest.fixture(scope="module")
def spread_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("oracle") / "run"
    trainer = new_run(config_from_dict(tiny_config()), run_dir)
    trainer.train()
    trainer.close()
    return str(run_dir)


def test_marl_credit_oracle_end_to_end(spread_run, capsys):
    assert main(["credit", spread_run, "--oracle", "--json", "--episodes", "2", "--states", "8",
                 "--rollouts", "4"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["backend"] == "twin" and score["method"] == "gae" and score["states"] == 8
    assert score["entries"] == 24 and 0 <= score["sign_entries"] <= 24
    assert -1.0 <= score["spearman"] <= 1.0 and score["env_steps"] > 0 and score["seconds"] > 0
    for agent in ("agent_0", "agent_1", "agent_2"):
        assert score[f"entries/{agent}"] == 8 and np.isfinite(score[f"abs_oracle/{agent}"])
    assert main(["credit", spread_run, "--oracle", "--no-twin", "--episodes", "1", "--states", "2",
                 "--rollouts", "2", "--horizon", "3"]) == 0
    out = capsys.readouterr().out
    assert "oracle credit of gae on mpe2:simple_spread_v3" in out and "pettingzoo backend" in out
    assert "cost:" in out and "agent_2" in out and "to 3 steps" in out
    assert main(["credit", spread_run, "--rollouts", "4"]) == 2
    assert "need --oracle" in capsys.readouterr().err
    assert main(["credit", spread_run, "--oracle", "--behaviour", "uniform"]) == 2
    assert "on-policy" in capsys.readouterr().err


def test_errors_are_clear():
    trainer = _trainer({"id": "mpe2:simple_spread_v3", "kwargs": {"continuous_actions": True}})
    with pytest.raises(ValueError, match="continuous"):
        oracle_advantages(trainer, episodes=1, states=1, rollouts=1)
    trainer.close()
    trainer = _trainer({"id": "tests.user_envs:unpicklable", "kwargs": {"length": 4, "reward_from": 0}})
    with pytest.raises(EnvError, match="'tests.user_envs:unpicklable' cannot be copied mid-episode"):
        oracle_advantages(trainer, episodes=1, states=1, rollouts=1)
    trainer.close()
    trainer = _trainer({"id": "tests.test_oracle:two_step"})
    with pytest.raises(EnvError, match="no usable batched twin"):
        oracle_advantages(trainer, episodes=1, states=1, rollouts=1, twin=True)
    for bad in ({"rollouts": 0}, {"states": -1}, {"horizon": 0}, {"env_noise": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            oracle_advantages(trainer, **{"episodes": 1, **bad})
    trainer.close()


def test_reseeding_reaches_nested_generators_and_shaping_uses_pettingzoo_copies():
    import random

    from marl.oracle import _reseed

    def world():
        return {"env": [np.random.default_rng(1), (np.random.RandomState(2),)], "py": random.Random(3)}

    a, b, c = world(), world(), world()
    _reseed(a, np.random.default_rng(7))
    _reseed(b, np.random.default_rng(7))
    draws = [[w["env"][0].random(), w["env"][1][0].rand(), w["py"].random()] for w in (a, b, c)]
    assert draws[0] == draws[1] and all(x != y for x, y in zip(draws[0], draws[2]))
    trainer = Trainer(config_from_dict(tiny_config(env={"shaping": "spread_coverage"})), None)
    res = oracle_advantages(trainer, episodes=1, states=1, rollouts=1, horizon=2)
    assert res["backend"] == "pettingzoo" and "shaping" in res["backend_note"]
    trainer.close()
