"""Re-simulated counterfactual advantages (algo.advantage: resim): the pure paired-difference
formula (by hand and against a plain loop), the config's refusals, and a short run on the twin
whose advantage equals the oracle's A* with the same states, draws, H and K."""
import numpy as np
import pytest
import torch
from marl.algorithms import paired_differences, resim_advantage

from marl.config import ConfigError, config_from_dict
from marl.credit import episode_venv, play_episode
from marl.oracle import oracle_advantages
from marl.seeding import ORACLE_ACTIONS, path_seed, torch_stream, view_episode_seed
from marl.trainer import Trainer
from tests.conftest import tiny_config

NAN = float("nan")


def test_hand_worked_case():
    """Agent 0 plays u=1 under π (0.5, 0.25, 0.25): rollout 0 gives
    0.5 (2 - 1) + 0.25 (2 - 0) = 1, rollout 1 gives 0.5 (2 - 3) + 0.25 (2 - 4) = -1; mean 0.
    Agent 1's action 1 is illegal (π = 0, its NaN returns never read); it plays u=0 under (0.75, 0, 0.25):
    0.25 (5 - 1) = 1 and 0.25 (5 - 3) = 0.5, mean 0.75 = Q̂(u) - Σ π Q̂ = 5 - (0.75·5 + 0.25·2)."""
    returns = torch.tensor([[[[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]],
                             [[5.0, 5.0], [NAN, NAN], [1.0, 3.0]]]])            # [1, N=2, A=3, K=2]
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.75, 0.0, 0.25]]])
    actions = torch.tensor([[1, 0]])
    torch.testing.assert_close(paired_differences(returns, probs, actions), torch.tensor([[[1.0, -1.0], [1.0, 0.5]]]))
    torch.testing.assert_close(resim_advantage(returns, probs, actions), torch.tensor([[0.0, 0.75]]))


def _reference(returns, probs, actions):
    """The formula as plain loops: mean_k Σ_u' π(u') (G_k(u) - G_k(u'))."""
    T, B, N, A, K = returns.shape
    out = np.zeros((T, B, N))
    for t in range(T):
        for b in range(B):
            for i in range(N):
                u = actions[t, b, i]
                for k in range(K):
                    out[t, b, i] += sum(probs[t, b, i, v] * (returns[t, b, i, u, k] - returns[t, b, i, v, k])
                                        for v in range(A) if probs[t, b, i, v] > 0) / K
    return out


@pytest.mark.parametrize("seed", range(3))
def test_matches_a_reference_loop_and_ignores_illegal_actions(seed):
    g = torch.Generator().manual_seed(seed)
    T, B, N, A, K = 3, 2, 3, 4, 5
    legal = torch.rand(T, B, N, A, generator=g) > 0.3
    legal[..., 0] = True
    logits = torch.randn(T, B, N, A, generator=g).masked_fill(~legal, float("-inf"))
    probs = torch.softmax(logits.double(), -1)
    actions = torch.distributions.Categorical(probs=probs).sample()
    returns = torch.randn(T, B, N, A, K, generator=g, dtype=torch.float64).masked_fill(~legal[..., None], NAN)
    got = resim_advantage(returns, probs, actions)
    np.testing.assert_allclose(got.numpy(), _reference(returns.numpy(), probs.numpy(), actions.numpy()), atol=1e-12)
    # an action without effect: every counterfactual return equal -> exactly 0
    flat = returns[..., :1, :].expand_as(returns).clone()
    assert (resim_advantage(flat, probs, actions) == 0).all()
    with pytest.raises(ValueError, match="must be"):
        resim_advantage(returns[..., 0], probs, actions)


def _resim(**sections):
    base = {"env": {"batched": True, "num_envs": 4}, "algo": {"advantage": "resim"}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return tiny_config(**base)


@pytest.mark.parametrize("sections, key", [
    ({"env": {"batched": False}}, "env.batched"),
    ({"env": {"id": "diag:climbing", "kwargs": {}}}, "env.batched"),
    ({"model": {"recurrent": True, "chunk_length": 5}}, "model.recurrent"),
    ({"env": {"episodic_reward": True}}, "env.episodic_reward"),
    ({"algo": {"resim_horizon": 0}}, "algo.resim_horizon"),
    ({"algo": {"resim_rollouts": 2000}}, "algo.resim_rollouts"),
    ({"algo": {"advantage": "gae", "resim_rollouts": 4}}, "algo.resim_rollouts"),
])
def test_config_refusals_name_the_key(sections, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        config_from_dict(_resim(**sections))
    assert "\n" not in str(err.value)


LBF = {"id": "lbf:Foraging-8x8-2p-2f-coop-v3", "kwargs": {}, "reward": "shared", "team_reward": "sum"}


@pytest.mark.parametrize("env, horizon, seed", [({}, 3, 5), (LBF, 10, 3)], ids=["spread", "lbf"])
def test_training_on_the_twin_matches_the_oracle_with_the_same_draws(env, horizon, seed):
    """A short run on the twin gives finite advantages of the rollout's shape; then on one on-policy
    episode the training-time estimate (trainer.prepare, drawing from the oracle's action stream)
    equals the oracle's A* at every step: same twin states, rows, draws, H and K. On spread's twin
    and on LBF's (sparse reward: a longer horizon, so that some action changes a return)."""
    rollouts = 4
    trainer = Trainer(config_from_dict(_resim(env=env, algo={"resim_horizon": horizon, "resim_rollouts": rollouts},
                                              train={"total_env_steps": 400})), None)
    trainer.train()
    trainer.collect()
    b = {**trainer.rollout.tensors(), **trainer.venv.take()}
    adv = trainer.prepare(b)["adv"]
    assert adv.shape == b["reward"].shape == (25, 4, trainer.venv.n_agents) and torch.isfinite(adv).all()
    assert trainer.learner.simulator.last["simulated_steps"] > 0

    oracle = oracle_advantages(trainer, episodes=1, states=50, rollouts=rollouts, horizon=horizon, seed=seed,
                               twin=True)
    venv = episode_venv(trainer)
    venv.reset([seed])
    episode = view_episode_seed(seed, 0)
    batch = play_episode(trainer, venv, episode, torch_stream(episode, trainer.device))
    venv.close()
    assert oracle["steps"][:, 1].tolist() == list(range(batch["actions"].shape[0]))
    draws = torch_stream(path_seed(seed, ORACLE_ACTIONS), trainer.device)
    ours = trainer.prepare(batch, generator=draws)["adv"][:, 0].double().numpy()
    np.testing.assert_allclose(ours, oracle["oracle"], rtol=1e-5, atol=1e-6)
    assert np.abs(oracle["oracle"]).max() > 1e-3   # not trivially equal
    trainer.close()
