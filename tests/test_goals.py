"""The goal-conditioned grid env: PettingZoo API, compute_reward, its scripted optimum, and the goal-env check."""
import functools
import itertools
import warnings

import numpy as np
import pytest
from gymnasium import spaces

from marl.envs import EnvError, make_parallel_env
from marl.envs.goals import GOAL_KEYS, GridGoals, check_goal_env, grid_goals


def test_grid_goals_passes_the_pettingzoo_tests():
    from pettingzoo.test import parallel_api_test, parallel_seed_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(grid_goals(), num_cycles=100)
        parallel_api_test(grid_goals(n_agents=3, size=4, max_steps=7), num_cycles=100)
        parallel_seed_test(functools.partial(grid_goals, n_agents=3))


def test_loaded_by_module_id_and_checked_as_a_goal_env():
    env = make_parallel_env("marl.envs.goals:grid_goals", {"n_agents": 3, "size": 6})
    assert isinstance(env, GridGoals) and env.n_agents == 3 and env.size == 6
    assert check_goal_env(env) == (2,)
    obs, _ = env.reset(seed=0)
    assert env.state().shape == env.state_space.shape == (18,)
    flat = [spaces.flatten(env.observation_space(a), obs[a]) for a in env.agents]
    assert np.array_equal(env.state(), np.concatenate(flat))


def test_compute_reward_of_k_goals_equals_what_step_paid():
    env = grid_goals(n_agents=2, size=3, max_steps=30)
    achieved, desired, paid = {a: [] for a in env.possible_agents}, {a: [] for a in env.possible_agents}, []
    rng = np.random.default_rng(0)
    for seed in range(20):
        env.reset(seed=seed)
        while env.agents:
            obs, rewards, _, _, _ = env.step({a: int(rng.integers(5)) for a in env.agents})
            for a in env.possible_agents:
                achieved[a].append(obs[a]["achieved_goal"])
                desired[a].append(obs[a]["desired_goal"])
            assert len(set(rewards.values())) == 1
            paid.append(rewards[env.possible_agents[0]])
    batch = env.compute_reward({a: np.stack(v) for a, v in achieved.items()},
                               {a: np.stack(v) for a, v in desired.items()}, {a: {} for a in env.possible_agents})
    assert 0 < sum(paid) < len(paid)                       # both outcomes occur on a 3x3 grid
    for a in env.possible_agents:
        assert batch[a].shape == (len(paid),) and np.array_equal(batch[a], np.array(paid, np.float32))
    one = env.compute_reward({a: v[0] for a, v in achieved.items()}, {a: v[0] for a, v in desired.items()}, {})
    assert one[env.possible_agents[0]].shape == () and one[env.possible_agents[0]] == paid[0]


def best_return(env, start):
    """The optimal team return by dynamic programming over joint positions, stepping the env itself."""
    cells = list(itertools.product(range(env.size), repeat=2))
    joints = list(itertools.product(cells, repeat=env.n_agents))
    value = {p: 0.0 for p in joints}
    for _ in range(env.max_steps):
        new = {}
        for p in joints:
            best = -np.inf
            for u in itertools.product(range(5), repeat=env.n_agents):
                env.agents, env._t, env.positions = list(env.possible_agents), 0, np.array(p)
                _, rewards, _, _, _ = env.step(dict(zip(env.possible_agents, u)))
                best = max(best, rewards[env.possible_agents[0]] + value[tuple(map(tuple, env.positions))])
            new[p] = best
        value = new
    return value[tuple(map(tuple, start))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scripted_policy_reaches_the_optimum(seed):
    env = grid_goals(n_agents=2, size=3, max_steps=4)
    env.reset(seed=seed)
    start, optimum = env.positions.copy(), env.optimal_return()
    total = 0.0
    while env.agents:
        total += env.step(env.scripted_actions())[1][env.possible_agents[0]]
    assert total == optimum
    goals = env.goals.copy()
    env.reset(seed=seed)
    assert np.array_equal(env.goals, goals) and best_return(env, start) == optimum


def test_scripted_optimum_on_the_default_grid():
    env = grid_goals()
    returns = []
    for seed in range(50):
        env.reset(seed=seed)
        optimum, total = env.optimal_return(), 0.0
        while env.agents:
            total += env.step(env.scripted_actions())[1][env.possible_agents[0]]
        assert total == optimum
        returns.append(total)
    assert 17 <= np.mean(returns) <= 25


class BoxObservations(GridGoals):
    """The grid with plain Box observations: goal-less to a relabeller."""

    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (6,), np.float32)


def test_check_goal_env_refuses_in_one_line():
    with pytest.raises(EnvError, match="has no compute_reward") as info:
        check_goal_env(make_parallel_env("mpe2:simple_spread_v3"), "mpe2:simple_spread_v3")
    assert "\n" not in str(info.value) and "mpe2:simple_spread_v3" in str(info.value)
    with pytest.raises(EnvError, match=r"observation space is Box, expected a Dict with keys") as info:
        check_goal_env(BoxObservations())
    assert "\n" not in str(info.value) and all(k in str(info.value) for k in GOAL_KEYS)
