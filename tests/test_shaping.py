"""Potential-based shaping keeps the optimal policy (Ng et al., 1999) and telescopes as expected."""
import numpy as np
import pytest
import torch

from marl.envs import RewardSpec, make_vector_env
from marl.envs.rewards import resolve_potential, shape_reward, spread_coverage_potential

# A small deterministic MDP. States 0..3 are live; from state s:
#   action 0 ("quit")    -> terminal, reward 0
#   action 1 ("advance") -> s+1 with reward -0.1, or from state 3 -> terminal with reward +1.
N_STATES, GAMMA = 4, 0.9


def transition(s, a):
    """Returns (next_state or None when terminal, reward)."""
    if a == 0:
        return None, 0.0
    if s == N_STATES - 1:
        return None, 1.0
    return s + 1, -0.1


def optimal_policy(phi, terminal_phi, zero_terminal=True):
    """Value iteration on rewards shaped with potentials ``phi`` (live states) and ``terminal_phi``."""
    q = np.zeros((N_STATES, 2))
    for _ in range(200):
        v = q.max(1)
        new_q = np.zeros_like(q)
        for s in range(N_STATES):
            for a in range(2):
                nxt, r = transition(s, a)
                terminated = nxt is None
                phi_next = terminal_phi if terminated else phi[nxt]
                shaped = shape_reward(torch.tensor([r], dtype=torch.float64), torch.tensor([phi[s]]),
                                      torch.tensor([phi_next]), torch.tensor([terminated and zero_terminal]), GAMMA)[0]
                new_q[s, a] = shaped + (0.0 if terminated else GAMMA * v[nxt])
        q = new_q
    return q.argmax(1), q


def test_unshaped_optimum_is_to_advance():
    policy, _ = optimal_policy(np.zeros(N_STATES), 0.0)
    np.testing.assert_array_equal(policy, [1, 1, 1, 1])


@pytest.mark.parametrize("seed", range(20))
def test_shaping_with_any_potential_keeps_the_optimal_policy(seed):
    rng = np.random.default_rng(seed)
    phi = rng.normal(scale=50.0, size=N_STATES)
    terminal_phi = rng.normal(scale=50.0)
    base, _ = optimal_policy(np.zeros(N_STATES), 0.0)
    shaped, _ = optimal_policy(phi, terminal_phi)
    np.testing.assert_array_equal(shaped, base)


def test_negative_control_nonzero_terminal_potential_changes_the_optimum():
    # Without Φ(terminal) = 0 a large terminal potential makes quitting look optimal.
    shaped, _ = optimal_policy(np.zeros(N_STATES), 100.0, zero_terminal=False)
    np.testing.assert_array_equal(shaped[:3], [0, 0, 0])   # state 3 ends the episode either way


def test_shaped_episode_return_telescopes():
    gamma = 1.0
    plain = make_vector_env("tests.custom_env:make_match_target", {"length": 4}, 2, RewardSpec("individual"))
    shaped = make_vector_env("tests.custom_env:make_match_target", {"length": 4}, 2,
                             RewardSpec("individual", shaping="tests.custom_env:step_count_potential",
                                        gamma=gamma))
    plain.reset([3, 4])
    shaped.reset([3, 4])
    for _ in range(4):
        actions = np.zeros((2, 2), np.int64)
        p, s = plain.step(actions), shaped.step(actions)
        # one step: r' = r + γ(t+1) − t = r + 1 (the final step is a truncation, so Φ(s') is kept)
        np.testing.assert_allclose(s.reward, p.reward + 1.0)
    assert s.done.all()
    np.testing.assert_allclose(s.episodes[0]["return"], p.episodes[0]["return"] + 4.0)


def test_builtin_spread_potential_matches_the_coverage_reward():
    venv = make_vector_env("mpe2:simple_spread_v3", {"N": 3, "local_ratio": 0.0}, 1,
                           RewardSpec("individual", shaping="spread_coverage"))
    venv.reset([0])
    env = venv._slice.envs[0].env
    # with local_ratio 0 the env's reward is exactly the (global) coverage term: minus summed min distances
    env.reset(seed=0)
    rewards = env.step({a: 0 for a in env.agents})[1]
    assert spread_coverage_potential(env) == pytest.approx(rewards["agent_0"], rel=1e-5)
    venv.close()


def test_unknown_potential_is_a_clear_error():
    from marl.envs import EnvError
    with pytest.raises(EnvError, match="neither a built-in potential"):
        resolve_potential("magic")
