"""Env lookup, API checks with clear errors, state, reward modes and vectorised stepping."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from marl.envs import EnvError, RewardSpec, apply_reward_mode, make_env, make_parallel_env, make_vector_env
from marl.envs.registry import STATE_IS_OBSERVATIONS


def test_registered_short_name_and_sorted_agents():
    env = make_env("mpe2:simple_spread_v3", {"N": 3})
    assert env.agents == ["agent_0", "agent_1", "agent_2"]
    assert (env.obs_dim, env.n_actions, env.state_dim) == (18, 5, 54)
    assert env.action_mask.all()


def test_module_factory_string_and_unsorted_ids_are_sorted():
    env = make_env("tests.custom_env:make_match_target", {"n_agents": 3})
    assert env.agents == ["player_0", "player_1", "player_2"]
    obs, state, avail, alive = env.reset(seed=3)
    assert avail.all() and alive.all()
    # No state() implemented: the state is the concatenation of the observations in sorted order.
    np.testing.assert_array_equal(state, obs.reshape(-1))


@pytest.mark.parametrize("env_id", sorted(STATE_IS_OBSERVATIONS))
def test_envs_whose_state_is_their_observations(env_id):
    """The claim behind STATE_IS_OBSERVATIONS: env.state() is the concatenation of every agent's
    observation, so TeamEnv may build it from the observations instead of calling state()."""
    raw = make_parallel_env(env_id, {})
    obs, _ = raw.reset(seed=4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        joined = np.concatenate([obs[a] for a in raw.possible_agents])
        np.testing.assert_allclose(raw.state(), joined, rtol=1e-6)
        obs, *_ = raw.step({a: int(rng.integers(raw.action_space(a).n)) for a in raw.agents})
    team = make_env(env_id, {})
    state = team.reset(seed=4).state
    assert state.shape == (sum(raw.observation_space(a).shape[0] for a in raw.possible_agents),)


def test_aec_env_is_converted():
    env = make_env("mpe2.simple_spread_v3:env", {"N": 2})
    obs, state, _, _ = env.reset(seed=0)
    assert obs.shape == (2, env.obs_dim) and state.shape == (env.state_dim,)
    step = env.step(np.zeros(2, np.int64))
    assert step.reward.shape == (2,) and not step.done


def test_heterogeneous_agents_are_padded_and_masked():
    env = make_env("mpe2:simple_speaker_listener_v4")
    assert env.agents == ["listener_0", "speaker_0"]
    assert env.obs_dim == 11 and env.n_actions == 5
    np.testing.assert_array_equal(env.action_mask, [[True] * 5, [True] * 3 + [False] * 2])
    obs = env.reset(seed=0).obs
    assert np.all(obs[1, 3:] == 0.0)       # the speaker's 3-dim observation is zero-padded


@pytest.mark.parametrize("env_id, match", [
    ("tests.custom_env:make_not_an_env", r"returned dict, not a PettingZoo ParallelEnv or AECEnv"),
    ("tests.custom_env:make_mixed_actions", r"mixes action spaces .*every agent needs the same kind"),
    ("tests.custom_env:nope", r"module 'tests.custom_env' has no callable 'nope'"),
    ("no_such_package.mod:make", r"cannot import module 'no_such_package.mod'"),
    ("simple_spread", r"neither a registered env"),
])
def test_bad_envs_have_clear_errors(env_id, match):
    with pytest.raises(EnvError, match=match) as info:
        make_env(env_id)
    assert repr(env_id) in str(info.value)


def test_continuous_actions_are_padded_clipped_and_sent_in_the_spaces_shape():
    env = make_env("mpe2:simple_speaker_listener_v4", {"continuous_actions": True})
    assert env.continuous and env.n_actions == 5
    np.testing.assert_array_equal(env.action_mask, [[True] * 5, [True] * 3 + [False] * 2])
    env.reset(seed=0)
    sent = env._env_actions(np.array([[-3.0, 0.5, 2.0, 0.2, 0.9], [0.1, 7.0, 0.3, 9.0, 9.0]], np.float32))
    np.testing.assert_allclose(sent[0], [0.0, 0.5, 1.0, 0.2, 0.9])   # clipped to Box(0, 1)
    np.testing.assert_allclose(sent[1], [0.1, 1.0, 0.3])             # the speaker's own 3 dims
    assert sent[1].dtype == np.float32 and env.step(np.zeros((2, 5), np.float32)).reward.shape == (2,)


def test_bad_kwargs_name_the_env():
    with pytest.raises(EnvError, match="factory rejected env.kwargs"):
        make_env("tests.custom_env:make_match_target", {"bogus": 1})


def test_reward_modes():
    raw = torch.tensor([[1.0, 2.0, 6.0]])
    np.testing.assert_allclose(apply_reward_mode(raw, "individual"), raw)
    np.testing.assert_allclose(apply_reward_mode(raw, "shared", "sum"), [[9.0, 9.0, 9.0]])
    np.testing.assert_allclose(apply_reward_mode(raw, "shared", "mean"), [[3.0, 3.0, 3.0]])
    np.testing.assert_allclose(apply_reward_mode(raw, "mixed", "mean", alpha=0.25),
                               [[0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 3, 0.25 * 6 + 0.75 * 3]])


def test_vector_env_keeps_final_observation_at_truncation():
    venv = make_vector_env("tests.custom_env:make_match_target", {"length": 3}, 2, RewardSpec("individual"))
    venv.reset([1, 2])
    for t in range(3):
        step = venv.step(np.zeros((2, 2), np.int64))
    assert step.done.all() and step.truncated.all() and not step.terminated.any()
    assert len(step.episodes) == 2 and step.episodes[0]["length"] == 3
    # the env was reset: obs is the first obs of a new episode, next_obs the true final obs
    assert not np.array_equal(step.obs, step.next_obs)
    np.testing.assert_array_equal(step.next_state, step.next_obs.reshape(2, -1))
    venv.close()


def test_vector_env_applies_reward_mode_and_keeps_raw():
    venv = make_vector_env("mpe2:simple_spread_v3", {"N": 3, "local_ratio": 0.5}, 2, RewardSpec("shared", "sum"))
    venv.reset([0, 1])
    step = venv.step(np.zeros((2, 3), np.int64))
    np.testing.assert_allclose(step.reward, np.repeat(step.raw_reward.sum(1, keepdims=True), 3, 1), rtol=1e-6)
    venv.close()


def test_process_vector_env_matches_in_process():
    spec = ("mpe2:simple_spread_v3", {"N": 3, "max_cycles": 5}, 3, RewardSpec("mixed", "mean", 0.3))
    sync, procs = make_vector_env(*spec), make_vector_env(*spec, workers=2)
    rng = np.random.default_rng(0)
    try:
        first_sync, first_procs = sync.reset([5, 6, 7]), procs.reset([5, 6, 7])
        for key, value in first_sync.items():
            np.testing.assert_array_equal(value, first_procs[key], err_msg=key)
        for _ in range(7):
            actions = rng.integers(0, 5, size=(3, 3))
            s, p = sync.step(actions), procs.step(actions)
            for name in ("obs", "state", "avail", "alive", "next_obs", "raw_reward", "reward", "terminated",
                         "truncated", "done"):
                np.testing.assert_array_equal(getattr(s, name), getattr(p, name), err_msg=name)
            assert len(s.episodes) == len(p.episodes)
    finally:
        sync.close()
        procs.close()


def test_worker_errors_surface_with_the_env_name():
    with pytest.raises(EnvError, match="make_mixed_actions.*mixes action spaces"):
        make_vector_env("tests.custom_env:make_mixed_actions", {}, 2, RewardSpec(), workers=1)
    venv = make_vector_env("tests.custom_env:make_fails_on_seed", {"fail_on_seed": 1}, 2, RewardSpec(), workers=1)
    try:
        with pytest.raises(EnvError, match="env worker failed: .*make_fails_on_seed.*reset with seed 1 failed"):
            venv.reset([0, 1])
    finally:
        venv.close()


def test_rollout_end_skips_the_reset_but_keeps_the_successor():
    venv = make_vector_env("mpe2:simple_spread_v3", {"N": 3, "max_cycles": 2}, 2, RewardSpec())
    try:
        venv.reset([0, 1])
        venv.step(np.zeros((2, 3), np.int64))
        kept = venv.step(np.zeros((2, 3), np.int64), autoreset=False)
        assert kept.done.all() and len(kept.episodes) == 2
        np.testing.assert_array_equal(kept.obs, kept.next_obs)     # not reset: still the final observation
        venv.reset([0, 1])
        venv.step(np.zeros((2, 3), np.int64))
        reset = venv.step(np.zeros((2, 3), np.int64))
        np.testing.assert_array_equal(reset.next_obs, kept.next_obs)
        assert not np.array_equal(reset.obs, reset.next_obs)
    finally:
        venv.close()


def test_envs_import_neither_the_trainer_nor_the_credit_maths():
    """``envs/`` stands alone: only ``marl.envs`` and third-party packages, so an env works without
    the trainer and the credit maths (issue 24's layering)."""
    root = Path(__file__).resolve().parent.parent / "envs"
    leaks = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            leaks += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "marl" and not n.startswith("marl.envs")]
    assert leaks == []
