"""envs.mpe_twin against mpe2, step by step, the way JaxMARL validates its MPE port (Rutherford et
al. 2024): copy mpe2's world into the twin after each reset, step both with the same uniformly random
actions, and compare observations, state, rewards and episode ends after every step to 1e-4.

mpe2 runs its episodes one after another, each loaded into its own env of one twin, which then
steps all of them at once with the recorded actions.
"""
import importlib
import warnings

import numpy as np
import pytest
import torch

from marl.envs.mpe_twin import SUPPORTED_SCENARIOS, MPETwin

CYCLES = 25
TOLERANCE = 1e-4


def _mpe2_env(scenario, continuous, **kwargs):
    module = importlib.import_module(f"mpe2.{scenario}")
    return module.parallel_env(max_cycles=CYCLES, continuous_actions=continuous, **kwargs)


def _random_actions(twin, rng, episodes, low=0.0, high=1.0):
    """Uniform actions ``[T, E, N]`` (each agent's own Discrete n) or ``[T, E, N, A]`` (U(low, high),
    the padding dims included: the twin must ignore them)."""
    if twin.continuous:
        return rng.uniform(low, high, (CYCLES, episodes, twin.n_agents, twin.n_actions)).astype(np.float32)
    sizes = twin.action_mask.sum(dim=1).numpy()
    return (rng.random((CYCLES, episodes, twin.n_agents)) * sizes).astype(np.int64)


def _run_mpe2(env, twin, actions):
    """Play ``actions`` in mpe2, one episode per twin env, loading each episode's initial world
    into the twin. Returns mpe2's initial obs ``[E, N, O]`` and per step obs ``[T, E, N, O]``
    (zero-padded), rewards ``[T, E, N]``, truncated and terminated ``[T, E, N]``."""
    episodes, agents = actions.shape[1], twin.agents
    sizes = twin.action_mask.sum(dim=1).tolist()
    shape = (CYCLES, episodes, twin.n_agents)
    first_obs = np.zeros((episodes, twin.n_agents, twin.obs_dim), np.float32)
    obs = np.zeros((*shape, twin.obs_dim), np.float32)
    rewards, truncated, terminated = np.zeros(shape), np.zeros(shape, bool), np.zeros(shape, bool)
    for e in range(episodes):
        initial, _ = env.reset(seed=e)
        twin.load_package_env(e, env)
        for k, agent in enumerate(agents):
            first_obs[e, k, :len(initial[agent])] = initial[agent]
        for t in range(CYCLES):
            if twin.continuous:
                step_actions = {a: actions[t, e, k, :sizes[k]] for k, a in enumerate(agents)}
            else:
                step_actions = {a: int(actions[t, e, k]) for k, a in enumerate(agents)}
            out_obs, out_rew, out_term, out_trunc, _ = env.step(step_actions)
            for k, agent in enumerate(agents):
                obs[t, e, k, :len(out_obs[agent])] = out_obs[agent]
                rewards[t, e, k] = out_rew[agent]
                truncated[t, e, k], terminated[t, e, k] = out_trunc[agent], out_term[agent]
        assert not env.agents, "mpe2 episode did not end after max_cycles"
    return first_obs, obs, rewards, truncated, terminated


def _unpadded_concat(twin, obs):
    """``[..., N, O]`` -> ``[..., S]``: each agent's unpadded observation, in sorted-agent order."""
    return np.concatenate([obs[..., k, :size] for k, size in enumerate(twin.obs_sizes)], axis=-1)


def _assert_matches_mpe2(scenario, continuous, episodes, low=0.0, high=1.0, **kwargs):
    env = _mpe2_env(scenario, continuous, **kwargs)
    twin = MPETwin(scenario, episodes, seed=1, max_cycles=CYCLES, continuous_actions=continuous, **kwargs)
    actions = _random_actions(twin, np.random.default_rng(0), episodes, low, high)
    first_obs, obs, rewards, truncated, terminated = _run_mpe2(env, twin, actions)
    twin_obs, twin_state = twin.observe()
    np.testing.assert_allclose(twin_obs.numpy(), first_obs, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(twin_state.numpy(), _unpadded_concat(twin, first_obs), atol=TOLERANCE, rtol=0)
    for t in range(CYCLES):
        out = twin.step(torch.as_tensor(actions[t]))
        where = f"{scenario} continuous={continuous} step {t + 1}"
        np.testing.assert_allclose(out["next_obs"].numpy(), obs[t], atol=TOLERANCE, rtol=0, err_msg=where)
        np.testing.assert_allclose(out["next_state"].numpy(), _unpadded_concat(twin, obs[t]),
                                   atol=TOLERANCE, rtol=0, err_msg=where)
        np.testing.assert_allclose(out["reward"].numpy(), rewards[t], atol=TOLERANCE, rtol=0, err_msg=where)
        np.testing.assert_array_equal(out["truncated"].numpy(), truncated[t], err_msg=where)
        np.testing.assert_array_equal(out["terminated"].numpy(), terminated[t], err_msg=where)
        np.testing.assert_array_equal(out["done"].numpy(), truncated[t].all(axis=1), err_msg=where)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("scenario", SUPPORTED_SCENARIOS)
def test_matches_mpe2_for_500_random_episodes(scenario, continuous):
    kwargs = {"N": 3, "local_ratio": 0.5} if scenario == "simple_spread_v3" else {}
    _assert_matches_mpe2(scenario, continuous, episodes=500, **kwargs)


@pytest.mark.parametrize("scenario, kwargs", [
    # N = 11: sorted ids put agent_10 before agent_2, while observations list others in world order.
    ("simple_spread_v3", {"N": 11, "local_ratio": 0.3}),
    ("simple_spread_v3", {"N": 1, "local_ratio": 1.0}),
    ("simple_reference_v3", {"local_ratio": 0.2}),   # 0.5 would hide swapped global/local weights
], ids=["spread-N11", "spread-N1", "reference-lr0.2"])
def test_matches_mpe2_with_other_kwargs(scenario, kwargs):
    _assert_matches_mpe2(scenario, False, episodes=12, **kwargs)
    _assert_matches_mpe2(scenario, True, episodes=12, **kwargs)


@pytest.mark.parametrize("scenario", SUPPORTED_SCENARIOS)
def test_out_of_bounds_continuous_actions_are_clipped_as_mpe2_does(scenario):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pettingzoo warns at every clipped action
        _assert_matches_mpe2(scenario, True, episodes=8, low=-0.5, high=1.5)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("scenario", SUPPORTED_SCENARIOS)
def test_layout_matches_mpe2_spaces(scenario, continuous):
    env = _mpe2_env(scenario, continuous)
    twin = MPETwin(scenario, 3, continuous_actions=continuous)
    assert twin.agents == sorted(env.possible_agents)
    assert twin.n_agents == len(twin.agents) and twin.num_envs == 3 and twin.continuous == continuous
    obs_sizes = [env.observation_space(a).shape[0] for a in twin.agents]
    spaces = [env.action_space(a) for a in twin.agents]
    act_sizes = [space.shape[0] if continuous else space.n for space in spaces]
    assert twin.obs_sizes == obs_sizes and twin.obs_dim == max(obs_sizes)
    assert twin.state_dim == sum(obs_sizes) == env.state_space.shape[0]
    assert twin.n_actions == max(act_sizes)
    expected_mask = np.arange(twin.n_actions)[None, :] < np.array(act_sizes)[:, None]
    assert twin.action_mask.dtype == torch.bool
    np.testing.assert_array_equal(twin.action_mask.numpy(), expected_mask)
    obs, state = twin.reset(seed=0)
    for k, size in enumerate(obs_sizes):   # padding is zero; the state is the unpadded concatenation
        assert (obs[:, k, size:] == 0).all()
    torch.testing.assert_close(state, torch.as_tensor(_unpadded_concat(twin, obs.numpy())), rtol=0, atol=0)


def test_state_is_mpe2_state_reordered_to_sorted_agents():
    """mpe2's state() concatenates in world order (speaker_0 first); the twin uses sorted order."""
    env = _mpe2_env("simple_speaker_listener_v4", False)
    twin = MPETwin("simple_speaker_listener_v4", 1)
    env.reset(seed=5)
    env.step({"speaker_0": 2, "listener_0": 3})
    twin.load_package_env(0, env)
    _, state = twin.observe()
    mpe2_state = env.state()   # [speaker (3), listener (11)]
    np.testing.assert_allclose(state[0].numpy(), np.concatenate([mpe2_state[3:], mpe2_state[:3]]), atol=1e-6)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("scenario", SUPPORTED_SCENARIOS)
def test_step_shapes_and_dtypes(scenario, continuous):
    b = 5
    twin = MPETwin(scenario, b, continuous_actions=continuous)
    n, o, s = twin.n_agents, twin.obs_dim, twin.state_dim
    obs, state = twin.reset()
    assert obs.shape == (b, n, o) and state.shape == (b, s)
    assert obs.dtype == state.dtype == torch.float32
    actions = torch.rand(b, n, twin.n_actions) if continuous else torch.zeros(b, n, dtype=torch.long)
    out = twin.step(actions)
    expected = {"obs": ((b, n, o), torch.float32), "next_obs": ((b, n, o), torch.float32),
                "state": ((b, s), torch.float32), "next_state": ((b, s), torch.float32),
                "reward": ((b, n), torch.float32), "terminated": ((b, n), torch.bool),
                "truncated": ((b, n), torch.bool), "done": ((b,), torch.bool)}
    assert {key: (tuple(value.shape), value.dtype) for key, value in out.items()} == expected
    assert out["reward"].is_contiguous() and out["obs"].is_contiguous()


def test_auto_reset_keeps_true_successor_in_next_obs():
    twin = MPETwin("simple_spread_v3", 3, seed=2)
    rng = np.random.default_rng(1)
    snapshot = twin.get_state()
    snapshot["steps"] = torch.tensor([CYCLES - 1, 0, 3])   # only env 0 ends at the next step
    twin.set_state(snapshot)
    out = twin.step(torch.as_tensor(rng.integers(0, 5, (3, 3))))
    np.testing.assert_array_equal(out["done"].numpy(), [True, False, False])
    np.testing.assert_array_equal(out["truncated"].numpy(), [[True] * 3, [False] * 3, [False] * 3])
    assert not out["terminated"].any()
    torch.testing.assert_close(out["obs"][1:], out["next_obs"][1:], rtol=0, atol=0)
    torch.testing.assert_close(out["state"][1:], out["next_state"][1:], rtol=0, atol=0)
    # env 0's obs is a fresh episode (zero velocity, positions from U(-1, 1)); next_obs is the
    # successor of the old one, which moved on from its world.
    assert (out["obs"][0, :, :2] == 0).all() and (out["obs"][0, :, 2:4].abs() <= 1).all()
    assert not torch.equal(out["obs"][0], out["next_obs"][0])
    torch.testing.assert_close(out["state"][0], out["obs"][0].reshape(-1), rtol=0, atol=0)
    np.testing.assert_array_equal(twin.get_state()["steps"].numpy(), [0, 1, 4])
    torch.testing.assert_close(twin.observe(), (out["obs"], out["state"]), rtol=0, atol=0)


def test_every_env_truncates_after_max_cycles_and_restarts():
    twin = MPETwin("simple_reference_v3", 4, max_cycles=7)
    for t in range(1, 15):
        out = twin.step(torch.zeros(4, 2, dtype=torch.long))
        assert out["done"].all() == (t % 7 == 0) and out["done"].any() == (t % 7 == 0)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("scenario", SUPPORTED_SCENARIOS)
def test_get_state_set_state_continues_identically(scenario, continuous):
    twin = MPETwin(scenario, 6, seed=3, max_cycles=5, continuous_actions=continuous)
    rng = np.random.default_rng(2)
    actions = [torch.as_tensor(a) for a in _random_actions(twin, rng, 6)[:12]]
    for a in actions[:3]:
        twin.step(a)
    snapshot = twin.get_state()
    assert snapshot["rng"].dtype == torch.uint8
    first = [twin.step(a) for a in actions[3:]]   # crosses two auto-resets: the generator matters
    other = MPETwin(scenario, 6, seed=99, max_cycles=5, continuous_actions=continuous)
    other.set_state(snapshot)
    for expected, a in zip(first, actions[3:], strict=True):
        got = other.step(a)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    twin.set_state(snapshot)   # restoring onto itself works too, and the snapshot was a copy
    torch.testing.assert_close(twin.step(actions[3])["next_obs"], first[0]["next_obs"], rtol=0, atol=0)


def test_seeded_resets_are_reproducible():
    a, b = MPETwin("simple_spread_v3", 8, seed=7), MPETwin("simple_spread_v3", 8, seed=0)
    torch.testing.assert_close(a.observe(), b.reset(seed=7), rtol=0, atol=0)   # construction = reset(seed)
    actions = torch.ones(8, 3, dtype=torch.long)
    for _ in range(2 * CYCLES):   # auto-resets draw from the same generator stream
        out_a, out_b = a.step(actions), b.step(actions)
        torch.testing.assert_close(out_a["obs"], out_b["obs"], rtol=0, atol=0)
    assert not torch.equal(a.reset(seed=1)[0], a.reset(seed=2)[0])
    assert not torch.equal(a.reset()[0], a.reset()[0])


@pytest.mark.parametrize("scenario", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_reset_distribution(scenario):
    """Positions from U(-1, 1)^2, zero velocity and comm, goal landmarks uniform over the three."""
    twin = MPETwin(scenario, 6000, seed=4)
    world = twin.get_state()
    for key in ("agent_pos", "landmark_pos"):
        assert world[key].abs().max() <= 1 and abs(world[key].mean()) < 0.02
        assert abs(world[key].var() - 1 / 3) < 0.02
    assert (world["agent_vel"] == 0).all() and (world["agent_comm"] == 0).all()
    counts = torch.bincount(world["goal"].flatten(), minlength=3).double() / world["goal"].numel()
    assert ((counts - 1 / 3).abs() < 0.02).all()


def test_speaker_listener_communication_semantics():
    """The speaker's discrete word is a one-hot comm state the listener sees; the listener is silent
    and its movement index is its action; continuous comm is the clipped vector itself."""
    twin = MPETwin("simple_speaker_listener_v4", 1)
    listener, speaker = twin.agents.index("listener_0"), twin.agents.index("speaker_0")
    actions = torch.zeros(1, 2, dtype=torch.long)
    actions[0, speaker], actions[0, listener] = 2, 4   # word 2; move +y
    out = twin.step(actions)
    np.testing.assert_array_equal(out["next_obs"][0, listener, 8:11].numpy(), [0, 0, 1])
    np.testing.assert_allclose(out["next_obs"][0, listener, :2].numpy(), [0, 0.5], atol=1e-6)   # 5 * dt
    cont = MPETwin("simple_speaker_listener_v4", 1, continuous_actions=True)
    actions = torch.zeros(1, 2, 5)
    actions[0, speaker] = torch.tensor([0.2, 1.7, -0.3, 9.0, 9.0])   # dims 3-4 are padding
    heard = cont.step(actions)["next_obs"][0, listener, 8:11]
    np.testing.assert_allclose(heard.numpy(), [0.2, 1, 0], atol=1e-6)


def test_unknown_scenario_and_kwargs_raise_value_error():
    with pytest.raises(ValueError, match="simple_reference_v3, simple_speaker_listener_v4, simple_spread_v3"):
        MPETwin("simple_tag_v3", 2)
    with pytest.raises(ValueError, match=r"unsupported keyword argument.*local_ratio"):
        MPETwin("simple_speaker_listener_v4", 2, local_ratio=0.5)
    with pytest.raises(ValueError, match="num_envs"):
        MPETwin("simple_spread_v3", 0)
    with pytest.raises(ValueError, match="local_ratio"):
        MPETwin("simple_spread_v3", 2, local_ratio=1.5)
    assert MPETwin("mpe2:simple_spread_v3", 1, dynamic_rescaling=False).scenario == "simple_spread_v3"


def test_bad_actions_raise_value_error():
    twin = MPETwin("simple_speaker_listener_v4", 2)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        twin.step(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        twin.step(torch.zeros(2, 2))
    speaker = twin.agents.index("speaker_0")
    too_big = torch.zeros(2, 2, dtype=torch.long)
    too_big[0, speaker] = 3   # the speaker has Discrete(3)
    with pytest.raises(ValueError, match="out of range"):
        twin.step(too_big)
    with pytest.raises(ValueError, match="out of range"):
        twin.step(-torch.ones(2, 2, dtype=torch.long))
    cont = MPETwin("simple_reference_v3", 2, continuous_actions=True)
    with pytest.raises(ValueError, match="float"):
        cont.step(torch.zeros(2, 2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 15\)"):
        cont.step(torch.zeros(2, 2, 5))


def test_load_package_env_accepts_raw_aec_and_parallel_envs():
    from mpe2 import simple_reference_v3

    envs = [simple_reference_v3.raw_env(), simple_reference_v3.env(), simple_reference_v3.parallel_env()]
    twin = MPETwin("simple_reference_v3", len(envs))
    for b, env in enumerate(envs):
        env.reset(seed=3)
        twin.load_package_env(b, env)
    obs, _ = twin.observe()
    raw = envs[0]
    expected = np.stack([raw.observe(agent) for agent in twin.agents])
    for b in range(len(envs)):
        np.testing.assert_allclose(obs[b].numpy(), expected, atol=1e-6)


def test_load_package_env_rejects_a_different_task():
    twin = MPETwin("simple_spread_v3", 2, local_ratio=0.3)
    with pytest.raises(ValueError, match="local_ratio"):
        twin.load_package_env(0, _mpe2_env("simple_spread_v3", False))
    with pytest.raises(ValueError, match="simple_reference_v3"):
        twin.load_package_env(0, _mpe2_env("simple_reference_v3", False))
    with pytest.raises(ValueError, match="out of range"):
        MPETwin("simple_spread_v3", 2).load_package_env(2, _mpe2_env("simple_spread_v3", False))
