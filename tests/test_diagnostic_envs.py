"""Tests for the diagnostic cooperative environments (envs/diagnostic.py)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pettingzoo.utils.conversions import parallel_to_aec
from pettingzoo.utils.env import ParallelEnv

with warnings.catch_warnings():
    # pettingzoo.test imports a classic env for its doctests, which emits a
    # DeprecationWarning unrelated to the code under test.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pettingzoo.test import (
        api_test,
        parallel_api_test,
        parallel_seed_test,
        state_test,
    )

from marl.envs.diagnostic import (
    CLIMBING_PAYOFF,
    DIAGNOSTIC_ENVS,
    ClimbingGame,
    DelayedChain,
    LazyAgent,
    MatrixGame,
    PenaltyGame,
    climbing_game,
    delayed_chain,
    lazy_agent,
    penalty_game,
)

HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# (id, factory, kwargs): the configurations every generic test runs on.
CONFIGS = [
    ("climbing", climbing_game, {}),
    ("penalty", penalty_game, {}),
    ("penalty_k50", penalty_game, {"k": -50.0}),
    ("lazy_default", lazy_agent, {}),
    (
        "lazy_custom",
        lazy_agent,
        {"n_agents": 5, "lazy_agent": 1, "n_levels": 4, "episode_length": 7},
    ),
    ("lazy_weights", lazy_agent, {"n_agents": 3, "weights": [2.0, 0.5, 0.0]}),
    ("chain_default", delayed_chain, {}),
    (
        "chain_mid_hidden",
        delayed_chain,
        {"n_agents": 3, "length": 6, "decision_step": 3, "observe_outcome": False},
    ),
    ("chain_last", delayed_chain, {"n_agents": 2, "length": 4, "decision_step": 3}),
]
CONFIG_IDS = [c[0] for c in CONFIGS]


def make_fn(factory, kwargs):
    return functools.partial(factory, **kwargs)


def rollout(env: ParallelEnv, actions: np.ndarray, seed: int = 0):
    """Play a full episode with the given joint actions [T, N]; return per-step data."""
    obs, infos = env.reset(seed=seed)
    steps = []
    for t, joint in enumerate(actions):
        assert env.agents == env.possible_agents, f"agent left early at step {t}"
        act = {agent: int(joint[i]) for i, agent in enumerate(env.possible_agents)}
        steps.append(env.step(act))
    assert env.agents == []
    return steps


def episode_return(env: ParallelEnv, actions: np.ndarray) -> float:
    steps = rollout(env, actions)
    return float(sum(step[1]["agent_0"] for step in steps))


def brute_force_credit(env: ParallelEnv, actions: np.ndarray) -> np.ndarray:
    """The documented credit definition, evaluated by actually stepping the env."""
    actions = np.asarray(actions)
    T, N = actions.shape
    obtained = episode_return(env, actions)
    credit = np.zeros((T, N))
    for t in range(T):
        for i in range(N):
            n = env.action_space(env.possible_agents[i]).n
            alternatives = []
            for u in range(n):
                changed = actions.copy()
                changed[t, i] = u
                alternatives.append(episode_return(env, changed))
            credit[t, i] = obtained - np.mean(alternatives)
    return credit


def random_actions(env, rng: np.random.Generator) -> np.ndarray:
    high = [env.action_space(a).n for a in env.possible_agents]
    return np.stack(
        [rng.integers(0, high) for _ in range(env.episode_length)]
    ).astype(np.int64)


# ---------------------------------------------------------------------------
# PettingZoo API conformance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_parallel_api(name, factory, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(factory(**kwargs), num_cycles=100)


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_parallel_seed(name, factory, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_seed_test(make_fn(factory, kwargs))


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_aec_api_and_state_via_conversion(name, factory, kwargs):
    # The AEC api_test checks more than parallel_api_test (obs in space, dtypes, ...).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The matrix games observe the constant [1.0] by design; the AEC test
        # flags one-element observations as suspicious.
        warnings.filterwarnings("ignore", message="Observation is a single number")
        api_test(parallel_to_aec(factory(**kwargs)), num_cycles=50)
        state_test(parallel_to_aec(factory(**kwargs)), factory(**kwargs))


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_conventions_over_random_episodes(name, factory, kwargs):
    env = factory(**kwargs)
    assert isinstance(env, ParallelEnv)
    assert env.metadata["render_modes"] == []
    assert env.metadata["name"]
    N = len(env.possible_agents)
    assert env.possible_agents == [f"agent_{i}" for i in range(N)]  # all N <= 10 here
    assert sorted(env.possible_agents) == env.possible_agents
    assert env.agents == []  # set in reset
    assert isinstance(env.state_space, spaces.Box)
    assert env.state_space.dtype == np.float32
    for agent in env.possible_agents:
        assert env.observation_space(agent) is env.observation_space(agent)
        assert env.action_space(agent) is env.action_space(agent)
        assert isinstance(env.observation_space(agent), spaces.Box)
        assert env.observation_space(agent).dtype == np.float32
        assert len(env.observation_space(agent).shape) == 1
        assert isinstance(env.action_space(agent), spaces.Discrete)

    def check_obs(obs):
        assert set(obs) == set(env.possible_agents)
        for agent, o in obs.items():
            assert isinstance(o, np.ndarray) and o.dtype == np.float32
            assert env.observation_space(agent).contains(o)

    def check_state():
        s = env.state()
        assert isinstance(s, np.ndarray) and s.dtype == np.float32 and s.ndim == 1
        assert env.state_space.contains(s)

    rng = np.random.default_rng(0)
    for episode in range(3):
        actions = random_actions(env, rng)
        obs, infos = env.reset(seed=episode)
        assert env.agents == env.possible_agents
        check_obs(obs)
        check_state()
        assert set(infos) == set(env.possible_agents)
        got_rewards = []
        for t, joint in enumerate(actions):
            act = {a: np.int64(joint[i]) for i, a in enumerate(env.agents)}
            obs, rew, term, trunc, info = env.step(act)
            check_obs(obs)
            check_state()
            for d in (rew, term, trunc, info):
                assert set(d) == set(env.possible_agents)
            # cooperative: every agent gets the identical team reward
            assert len(set(rew.values())) == 1
            assert all(isinstance(r, float) for r in rew.values())
            # all agents end together, and only at the last step
            last = t == env.episode_length - 1
            assert all(term[a] or trunc[a] for a in term) == last
            assert len(set(term.values())) == 1 and len(set(trunc.values())) == 1
            assert env.agents == ([] if last else env.possible_agents)
            got_rewards.append(rew["agent_0"])
            contributions = [info[a].get("contribution") for a in env.possible_agents]
            if contributions[0] is not None:
                assert np.isclose(sum(contributions), rew["agent_0"])
        np.testing.assert_array_equal(env.episode_actions(), actions)
        np.testing.assert_allclose(env.team_rewards(actions), got_rewards)
        with pytest.raises(RuntimeError):
            env.step({a: 0 for a in env.possible_agents})


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_reset_seed_makes_rng_deterministic(name, factory, kwargs):
    env1, env2 = factory(**kwargs), factory(**kwargs)
    env1.reset(seed=123)
    env2.reset(seed=123)
    first = env1.np_random.random()
    assert first == env2.np_random.random()
    # reset without a seed keeps the generator going rather than re-seeding
    env1.reset()
    assert env1.np_random.random() != first
    env1.reset(seed=123)
    env2.reset(seed=124)
    assert env1.np_random.random() != env2.np_random.random()
    # identical seeded rollouts give identical outputs
    actions = random_actions(env1, np.random.default_rng(7))
    for s1, s2 in zip(rollout(env1, actions, seed=5), rollout(env2, actions, seed=5)):
        for d1, d2 in zip(s1, s2):
            assert d1.keys() == d2.keys()
            for k in d1:
                np.testing.assert_array_equal(d1[k], d2[k])


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_invalid_actions_rejected(name, factory, kwargs):
    env = factory(**kwargs)
    env.reset(seed=0)
    n = env.action_space("agent_0").n
    good = {a: 0 for a in env.agents}
    with pytest.raises(ValueError):
        env.step({**good, "agent_0": n})  # out of range
    with pytest.raises(ValueError):
        env.step({**good, "agent_0": -1})
    with pytest.raises(ValueError):
        env.step({a: 0 for a in env.agents[1:]})  # missing agent
    with pytest.raises(ValueError):
        env.step({**good, "intruder": 0})
    with pytest.raises(ValueError):
        env.true_credit(np.zeros((env.episode_length + 1, env.n_agents), dtype=int))
    with pytest.raises(ValueError):
        env.true_credit(np.full((env.episode_length, env.n_agents), n))
    # the rejected steps did not advance the episode
    assert env.episode_actions().shape == (0, env.n_agents)


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_true_credit_matches_counterfactual_definition(name, factory, kwargs, seed):
    """true_credit equals the documented definition, computed by replaying the env."""
    env = factory(**kwargs)
    actions = random_actions(env, np.random.default_rng(seed))
    credit = env.true_credit(actions)
    assert credit.shape == actions.shape
    assert np.issubdtype(credit.dtype, np.floating)
    np.testing.assert_allclose(credit, brute_force_credit(env, actions), atol=1e-9)


def test_agent_ids_sort_in_index_order_beyond_ten_agents():
    env = lazy_agent(n_agents=12, episode_length=2)
    assert env.possible_agents[:3] == ["agent_00", "agent_01", "agent_02"]
    assert env.possible_agents[-1] == "agent_11"
    assert sorted(env.possible_agents) == env.possible_agents
    assert env.lazy_agent == 11 and env.weights[11] == 0.0
    env.reset(seed=0)
    _, rew, _, _, info = env.step({a: 2 for a in env.possible_agents})
    assert rew["agent_00"] == 11.0 and info["agent_11"]["contribution"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(delayed_chain(n_agents=11, length=3), num_cycles=10)


@pytest.mark.parametrize("factory", list(DIAGNOSTIC_ENVS.values()))
def test_render_mode_kwarg(factory):
    assert factory(render_mode=None).render_mode is None
    with pytest.raises(ValueError):
        factory(render_mode="human")


def test_registry():
    assert DIAGNOSTIC_ENVS == {
        "climbing": climbing_game,
        "penalty": penalty_game,
        "lazy_agent": lazy_agent,
        "delayed_chain": delayed_chain,
    }
    assert isinstance(DIAGNOSTIC_ENVS["climbing"](), ClimbingGame)
    assert isinstance(DIAGNOSTIC_ENVS["penalty"](k=-3.0), PenaltyGame)
    assert isinstance(DIAGNOSTIC_ENVS["lazy_agent"](n_agents=2), LazyAgent)
    assert isinstance(DIAGNOSTIC_ENVS["delayed_chain"](length=3), DelayedChain)


# ---------------------------------------------------------------------------
# Matrix games
# ---------------------------------------------------------------------------


def one_shot_reward(env, a0, a1):
    obs, infos = env.reset(seed=0)
    np.testing.assert_array_equal(obs["agent_0"], np.array([1.0], dtype=np.float32))
    obs, rew, term, trunc, info = env.step({"agent_0": a0, "agent_1": a1})
    assert term == {"agent_0": True, "agent_1": True}
    assert trunc == {"agent_0": False, "agent_1": False}
    assert env.agents == []
    np.testing.assert_array_equal(obs["agent_1"], np.array([1.0], dtype=np.float32))
    assert rew["agent_0"] == rew["agent_1"]
    return rew["agent_0"]


def test_climbing_payoffs():
    env = climbing_game()
    assert env.n_agents == 2 and env.n_actions == (3, 3)
    assert one_shot_reward(env, 0, 0) == 11.0
    assert one_shot_reward(env, 0, 1) == -30.0
    expected = [[11, -30, 0], [-30, 7, 6], [0, 0, 5]]
    for a0 in range(3):
        for a1 in range(3):
            assert one_shot_reward(env, a0, a1) == expected[a0][a1]
    np.testing.assert_array_equal(CLIMBING_PAYOFF, expected)


def test_penalty_payoffs():
    env = penalty_game(k=-50.0)
    assert one_shot_reward(env, 0, 2) == -50.0
    assert one_shot_reward(env, 2, 0) == -50.0
    assert one_shot_reward(env, 0, 0) == 10.0
    assert one_shot_reward(env, 2, 2) == 10.0
    assert one_shot_reward(env, 1, 1) == 2.0
    assert one_shot_reward(env, 1, 2) == 0.0
    assert one_shot_reward(penalty_game(), 2, 0) == -100.0


def test_matrix_state_marks_the_step():
    env = climbing_game()
    env.reset(seed=0)
    np.testing.assert_array_equal(env.state(), [1.0, 0.0])
    env.step({"agent_0": 1, "agent_1": 1})
    np.testing.assert_array_equal(env.state(), [0.0, 1.0])


def test_climbing_credit_hand_worked():
    env = climbing_game()
    # (0, 0): 11 - mean(11, -30, 0) = 11 + 19/3 for both agents (symmetric payoff)
    np.testing.assert_allclose(env.true_credit([[0, 0]]), [[11 + 19 / 3, 11 + 19 / 3]])
    # (0, 1): agent_0 varies down column 1 (-30, 7, 0); agent_1 along row 0 (11, -30, 0)
    np.testing.assert_allclose(
        env.true_credit([[0, 1]]), [[-30 + 23 / 3, -30 + 19 / 3]]
    )
    # (2, 2): agent_0 column 2 (0, 6, 5) mean 11/3; agent_1 row 2 (0, 0, 5) mean 5/3
    np.testing.assert_allclose(env.true_credit([[2, 2]]), [[5 - 11 / 3, 5 - 5 / 3]])


def test_general_matrix_game_three_agents():
    payoff = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
    env = MatrixGame(payoff)
    assert env.possible_agents == ["agent_0", "agent_1", "agent_2"]
    assert [env.action_space(a).n for a in env.possible_agents] == [2, 3, 2]
    env.reset(seed=0)
    _, rew, *_ = env.step({"agent_0": 1, "agent_1": 2, "agent_2": 0})
    assert rew["agent_2"] == payoff[1, 2, 0]
    credit = env.true_credit([[1, 2, 0]])
    np.testing.assert_allclose(
        credit,
        [[payoff[1, 2, 0] - payoff[:, 2, 0].mean(),
          payoff[1, 2, 0] - payoff[1, :, 0].mean(),
          payoff[1, 2, 0] - payoff[1, 2, :].mean()]],
    )


# ---------------------------------------------------------------------------
# Lazy agent
# ---------------------------------------------------------------------------


@st.composite
def lazy_cases(draw):
    n_agents = draw(st.integers(1, 5))
    n_levels = draw(st.integers(2, 5))
    episode_length = draw(st.integers(1, 8))
    lazy = draw(st.integers(0, n_agents - 1))
    actions = draw(
        st.lists(
            st.lists(st.integers(0, n_levels - 1), min_size=n_agents, max_size=n_agents),
            min_size=episode_length,
            max_size=episode_length,
        )
    )
    env = LazyAgent(
        n_agents=n_agents,
        lazy_agent=lazy,
        n_levels=n_levels,
        episode_length=episode_length,
    )
    return env, np.array(actions, dtype=np.int64)


@HYPOTHESIS
@given(case=lazy_cases())
def test_lazy_agent_credit_properties(case):
    env, actions = case
    credit = env.true_credit(actions)
    lazy = env.lazy_agent
    # the lazy agent's effort is worthless: its credit is exactly zero
    assert np.all(credit[:, lazy] == 0.0)
    # additive reward: credits sum to reward minus the all-uniform baseline
    steps = rollout(env, actions)
    rewards = np.array([s[1]["agent_0"] for s in steps])
    baseline = 0.5 * env.weights.sum()  # E[effort / (n_levels - 1)] = 1/2
    others = [i for i in range(env.n_agents) if i != lazy]
    np.testing.assert_allclose(
        credit[:, others].sum(axis=1), rewards - baseline, rtol=1e-9, atol=1e-12
    )
    # reported contributions are each agent's own term
    for t, step in enumerate(steps):
        info = step[4]
        assert info[f"agent_{lazy}"]["contribution"] == 0.0
        for i in others:
            assert np.isclose(
                info[f"agent_{i}"]["contribution"], actions[t, i] / (env.n_levels - 1)
            )


def test_lazy_agent_defaults_and_hand_worked_case():
    env = lazy_agent()
    assert env.n_agents == 3 and env.lazy_agent == 2 and env.episode_length == 10
    np.testing.assert_array_equal(env.weights, [1.0, 1.0, 0.0])
    assert all(env.action_space(a).n == 3 for a in env.possible_agents)

    env = lazy_agent(episode_length=2)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["agent_1"], [1, 0, 0])
    # efforts (2, 0, 1): reward = 2/2 + 0/2 + 0 * 1/2 = 1.0
    obs, rew, term, trunc, info = env.step({"agent_0": 2, "agent_1": 0, "agent_2": 1})
    assert rew == {"agent_0": 1.0, "agent_1": 1.0, "agent_2": 1.0}
    assert [info[a]["contribution"] for a in env.possible_agents] == [1.0, 0.0, 0.0]
    assert not any(term.values()) and not any(trunc.values())
    np.testing.assert_array_equal(obs["agent_0"], [0, 1, 0])
    np.testing.assert_array_equal(env.state(), [0, 1, 0])
    # efforts (1, 1, 2): reward = 1/2 + 1/2 = 1.0; the task's last step -> termination
    obs, rew, term, trunc, info = env.step({"agent_0": 1, "agent_1": 1, "agent_2": 2})
    assert rew["agent_2"] == 1.0
    assert all(term.values()) and not any(trunc.values())
    np.testing.assert_array_equal(obs["agent_2"], [0, 0, 1])
    assert env.agents == []
    # credit = w_i (e_i - 1) / 2
    np.testing.assert_allclose(
        env.true_credit(env.episode_actions()), [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]
    )


def test_lazy_agent_custom_weights_hand_worked():
    env = lazy_agent(n_agents=3, n_levels=5, episode_length=1, weights=[2.0, 0.5, 0.0])
    env.reset(seed=0)
    # efforts (4, 1, 3): reward = 2 * 4/4 + 0.5 * 1/4 + 0 = 2.125
    _, rew, term, trunc, info = env.step({"agent_0": 4, "agent_1": 1, "agent_2": 3})
    assert rew["agent_0"] == 2.125 and all(term.values()) and not any(trunc.values())
    assert [info[a]["contribution"] for a in env.possible_agents] == [2.0, 0.125, 0.0]
    # credit = w_i (e_i - 2) / 4
    np.testing.assert_allclose(env.true_credit([[4, 1, 3]]), [[1.0, -0.125, 0.0]])


def test_lazy_agent_index_choice():
    env = lazy_agent(n_agents=4, lazy_agent=0)
    np.testing.assert_array_equal(env.weights, [0.0, 1.0, 1.0, 1.0])
    actions = random_actions(env, np.random.default_rng(1))
    assert np.all(env.true_credit(actions)[:, 0] == 0.0)
    for bad in (
        dict(lazy_agent=3),
        dict(n_levels=1),
        dict(episode_length=0),
        dict(weights=[1.0, 1.0]),
    ):
        with pytest.raises(ValueError):
            lazy_agent(**bad)


# ---------------------------------------------------------------------------
# Delayed chain
# ---------------------------------------------------------------------------


@st.composite
def chain_cases(draw):
    n_agents = draw(st.integers(1, 4))
    length = draw(st.integers(1, 8))
    decision_step = draw(st.integers(0, length - 1))
    observe = draw(st.booleans())
    bits = st.lists(st.integers(0, 1), min_size=n_agents, max_size=n_agents)
    actions = np.array(
        draw(st.lists(bits, min_size=length, max_size=length)), dtype=np.int64
    )
    other = np.array(
        draw(st.lists(bits, min_size=length, max_size=length)), dtype=np.int64
    )
    env = DelayedChain(
        n_agents=n_agents,
        length=length,
        decision_step=decision_step,
        observe_outcome=observe,
    )
    return env, actions, other


@HYPOTHESIS
@given(case=chain_cases())
def test_delayed_chain_properties(case):
    env, actions, other = case
    d, L = env.decision_step, env.length
    steps = rollout(env, actions)
    rewards = np.array([s[1]["agent_0"] for s in steps])
    success = float(np.all(actions[d] == 1))
    # reward only at the last step, and only from the decision step's joint action
    np.testing.assert_array_equal(rewards[:-1], 0.0)
    assert rewards[-1] == success
    # terminates (not truncates) exactly at the last step
    assert all(steps[-1][2].values()) and not any(steps[-1][3].values())
    assert not any(any(s[2].values()) or any(s[3].values()) for s in steps[:-1])
    # changing actions at any other step leaves every reward unchanged
    mixed = other.copy()
    mixed[d] = actions[d]
    mixed_rewards = [s[1]["agent_0"] for s in rollout(env, mixed)]
    np.testing.assert_array_equal(mixed_rewards, rewards)
    # credit lives only on the decision row
    credit = env.true_credit(actions)
    np.testing.assert_array_equal(np.delete(credit, d, axis=0), 0.0)
    np.testing.assert_array_equal(env.true_credit(mixed), credit)
    # observations: one-hot time step (+ outcome flag once the decision has passed)
    for t, step in enumerate(steps):
        o = step[0]["agent_0"]
        np.testing.assert_array_equal(o[: L + 1], np.eye(L + 1)[t + 1])
        if env.observe_outcome:
            assert o.shape == (L + 2,)
            assert o[L + 1] == (success if t >= d else 0.0)
        else:
            assert o.shape == (L + 1,)
    # the state records the deciding joint action
    s = env.state()
    np.testing.assert_array_equal(s[L + 1 :], np.concatenate([[success], actions[d]]))


def test_delayed_chain_credit_hand_worked():
    env = delayed_chain(n_agents=2, length=3, decision_step=1)
    zeros = np.zeros(2)

    def credit_for(joint):
        actions = np.array([[0, 0], joint, [1, 0]])
        credit = env.true_credit(actions)
        np.testing.assert_array_equal(credit[0], zeros)
        np.testing.assert_array_equal(credit[2], zeros)
        return credit[1]

    np.testing.assert_allclose(credit_for([1, 1]), [0.5, 0.5])
    np.testing.assert_allclose(credit_for([0, 1]), [-0.5, 0.0])
    np.testing.assert_allclose(credit_for([1, 0]), [0.0, -0.5])
    np.testing.assert_allclose(credit_for([0, 0]), [0.0, 0.0])

    env3 = delayed_chain(n_agents=3, length=2, decision_step=0)
    np.testing.assert_allclose(
        env3.true_credit([[1, 1, 0], [0, 0, 0]]), [[0.0, 0.0, -0.5], [0.0, 0.0, 0.0]]
    )
    np.testing.assert_allclose(
        env3.true_credit([[1, 1, 1], [0, 0, 0]]), [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
    )


def test_delayed_chain_defaults_and_validation():
    env = delayed_chain()
    assert env.n_agents == 2 and env.length == 10 and env.decision_step == 0
    assert env.episode_length == 10
    assert all(env.action_space(a).n == 2 for a in env.possible_agents)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["agent_0"], np.eye(12)[0])  # 11 time slots + flag
    for bad in (dict(decision_step=10), dict(decision_step=-1), dict(length=0)):
        with pytest.raises(ValueError):
            delayed_chain(**bad)


def test_lazy_agent_own_rewards_sum_to_the_team_reward():
    team, own = lazy_agent(episode_length=1), lazy_agent(episode_length=1, rewards="own")
    team.reset(seed=0)
    own.reset(seed=0)
    joint = {"agent_0": 2, "agent_1": 1, "agent_2": 2}
    _, team_rew, _, _, _ = team.step(joint)
    _, own_rew, _, _, _ = own.step(joint)
    assert own_rew == {"agent_0": 1.0, "agent_1": 0.5, "agent_2": 0.0}
    assert sum(own_rew.values()) == team_rew["agent_0"] == 1.5
    with pytest.raises(ValueError, match="rewards must be"):
        lazy_agent(rewards="selfish")


@pytest.mark.parametrize("name,factory,kwargs", CONFIGS, ids=CONFIG_IDS)
def test_every_diagnostic_env_terminates_at_its_last_step_and_never_truncates(name, factory, kwargs):
    """Each task is over after ``episode_length`` steps and its clock is observed, so the end is a
    termination (nothing to bootstrap); a truncation would make learners add value past the end."""
    env = factory(**kwargs)
    steps = rollout(env, random_actions(env, np.random.default_rng(0)))
    flags = [(all(term.values()), any(term.values()), any(trunc.values())) for _, _, term, trunc, _ in steps]
    assert flags == [(False, False, False)] * (env.episode_length - 1) + [(True, True, False)]


def test_done_flags_hand_worked():
    """lazy_agent with 3 steps: terminated only on the 3rd step; climbing: on its one step; the
    delayed chain of 2 steps: on the 2nd, where its reward arrives."""
    env = lazy_agent(episode_length=3)
    env.reset(seed=0)
    joint = {"agent_0": 2, "agent_1": 2, "agent_2": 0}
    ends = [env.step(joint)[2:4] for _ in range(3)]
    assert [(t["agent_0"], u["agent_0"]) for t, u in ends] == [(False, False), (False, False), (True, False)]
    env = climbing_game()
    env.reset(seed=0)
    _, rew, term, trunc, _ = env.step({"agent_0": 0, "agent_1": 0})
    assert rew["agent_1"] == 11.0 and term == {"agent_0": True, "agent_1": True} and not any(trunc.values())
    env = delayed_chain(n_agents=2, length=2)
    env.reset(seed=0)
    first = env.step({"agent_0": 1, "agent_1": 1})
    last = env.step({"agent_0": 0, "agent_1": 0})
    assert first[1]["agent_0"] == 0.0 and not any(first[2].values()) and not any(first[3].values())
    assert last[1]["agent_0"] == 1.0 and all(last[2].values()) and not any(last[3].values())
