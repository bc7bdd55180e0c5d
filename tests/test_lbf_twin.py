"""envs.lbf_twin against lbforaging, step by step, as tests/test_mpe_twin.py checks the mpe2 twin:
each package episode (through the project's Gymnasium adapter, so the reward convention and the
termination/truncation split are the adapter's) is loaded into its own twin env after its reset,
both are stepped with the same uniformly random actions, and observations, state, rewards and
episode ends are compared at every step of the package episode: exactly, rewards to 1e-6. The
package's reset draws (player and food positions and levels) are copied into the twin; nothing is
drawn during an LBF episode.
"""
import numpy as np
import pytest
import torch
from marl.envs.batched import BatchedVectorEnv, make_batched_env
from marl.envs.gym_multiagent import lbf_env
from marl.envs.lbf_twin import LBFTwin
from marl.envs.vector import RewardSpec

from tests.conftest import assert_restored_twin_continues

# lbforaging 2.0 registers at most 4 foods: 15x15-4p-5f is its 4f id with max_num_food 5. The last
# task has partial observability (sight 2).
TASKS = {"8x8-2p-2f-coop": ("Foraging-8x8-2p-2f-coop-v3", {}), "10x10-3p-3f": ("Foraging-10x10-3p-3f-v3", {}),
         "15x15-4p-5f": ("Foraging-15x15-4p-4f-v3", {"max_num_food": 5}),
         "2s-8x8-3p-2f": ("Foraging-2s-8x8-3p-2f-v3", {})}


def _assert_matches_package(env_name, episodes, seed=0, **kwargs):
    env = lbf_env(env_name, **kwargs)
    twin = LBFTwin(env_name, episodes, seed=seed + 1, **kwargs)
    T, n = twin.max_steps, twin.n_agents
    rng = np.random.default_rng(seed)
    # Random actions, loading 40% of the time so that random players also load food together.
    actions = rng.choice(6, size=(T, episodes, n), p=[0.1, 0.125, 0.125, 0.125, 0.125, 0.4])
    agents = env.possible_agents
    first = np.zeros((episodes, n, twin.obs_dim), np.float32)
    obs = np.zeros((T, episodes, n, twin.obs_dim), np.float32)
    reward = np.zeros((T, episodes, n))
    term, trunc = np.zeros((T, episodes), bool), np.zeros((T, episodes), bool)
    length = np.zeros(episodes, int)
    for e in range(episodes):
        initial, _ = env.reset(seed=seed * 100_000 + e)
        twin.load_package_env(e, env)
        first[e] = np.stack([initial[a] for a in agents])
        for t in range(T):
            o, r, te, tr, _ = env.step({a: int(actions[t, e, k]) for k, a in enumerate(agents)})
            obs[t, e] = np.stack([o[a] for a in agents])
            reward[t, e] = [r[a] for a in agents]
            term[t, e], trunc[t, e] = te[agents[0]], tr[agents[0]]
            if not env.agents:
                length[e] = t + 1
                break
    twin_obs, twin_state = twin.observe()
    np.testing.assert_array_equal(twin_obs.numpy(), first)
    np.testing.assert_array_equal(twin_state.numpy(), first.reshape(episodes, -1))
    for t in range(T):
        out = twin.step(torch.as_tensor(actions[t]))
        live = length > t   # env e's package episode runs through step length[e]
        where = f"{env_name} step {t + 1}"
        np.testing.assert_array_equal(out["next_obs"].numpy()[live], obs[t, live], err_msg=where)
        np.testing.assert_array_equal(out["next_state"].numpy()[live], obs[t, live].reshape(live.sum(), -1),
                                      err_msg=where)
        np.testing.assert_allclose(out["reward"].numpy()[live], reward[t, live], atol=1e-6, rtol=0, err_msg=where)
        np.testing.assert_array_equal(out["terminated"].numpy()[live], term[t, live, None].repeat(n, 1), err_msg=where)
        np.testing.assert_array_equal(out["truncated"].numpy()[live], trunc[t, live, None].repeat(n, 1), err_msg=where)
        np.testing.assert_array_equal(out["done"].numpy()[live], (length == t + 1)[live], err_msg=where)
    assert trunc.any() and (reward > 0).any()   # time limits and loads were exercised
    return term


@pytest.mark.parametrize("task", TASKS)
def test_matches_lbforaging_for_100_random_episodes(task):
    env_name, kwargs = TASKS[task]
    _assert_matches_package(env_name, episodes=100, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_matches_lbforaging_for_500_random_episodes(task):
    env_name, kwargs = TASKS[task]
    _assert_matches_package(env_name, episodes=500, seed=1, **kwargs)


def test_matches_lbforaging_with_penalty_and_levels():
    term = _assert_matches_package("Foraging-6x6-2p-2f-v3", episodes=60, penalty=0.1, max_player_level=3)
    assert term.any()   # some episodes end with all food eaten


def test_spaces_and_ids_match_the_adapter():
    env = lbf_env("Foraging-10x10-3p-3f-v3")
    twin = LBFTwin("lbf:Foraging-10x10-3p-3f-v3", 2)
    assert twin.agents == env.possible_agents == ["agent_0", "agent_1", "agent_2"]
    assert twin.obs_dim == env.observation_space("agent_0").shape[0] == 18
    assert twin.n_actions == env.action_space("agent_0").n == 6
    assert twin.action_mask.all() and twin.action_mask.shape == (3, 6)


def test_reset_distribution():
    """Players anywhere and apart, levels 1-2; coop foods at the lowest levels' sum, inside the
    border, none next to another or two cells in line, none under a player."""
    twin = LBFTwin("Foraging-8x8-2p-2f-coop-v3", 4000, seed=3)
    state = twin.get_state()
    pos, level = state["pos"], state["level"]
    assert (pos[:, 0] != pos[:, 1]).any(dim=-1).all()
    assert set(level.unique().tolist()) == {1, 2} and abs(level.float().mean() - 1.5) < 0.02
    counts = torch.bincount(pos[..., 0].flatten() * 8 + pos[..., 1].flatten(), minlength=64).float()
    assert counts.min() > 0.7 * counts.mean()
    cells, food_level = state["food_cell"], state["food_level"]
    assert (cells >= 0).all() and (food_level == level.sum(dim=1, keepdim=True)).all()
    rows, cols = cells // 8, cells % 8
    assert ((rows >= 1) & (rows <= 6) & (cols >= 1) & (cols <= 6)).all()
    dr, dc = (rows[:, 0] - rows[:, 1]).abs(), (cols[:, 0] - cols[:, 1]).abs()
    assert not ((dr <= 1) & (dc <= 1)).any() and not (((dr == 0) & (dc <= 2)) | ((dc == 0) & (dr <= 2))).any()
    player_cells = pos[..., 0] * 8 + pos[..., 1]
    assert not (cells.unsqueeze(2) == player_cells.unsqueeze(1)).any()
    assert (state["food_spawned"] == food_level.sum(dim=1)).all()


def test_get_state_set_state_continues_identically():
    twin = LBFTwin("Foraging-6x6-2p-1f-v3", 16, seed=5)
    actions = torch.randint(0, 6, (80, 16, 2), generator=torch.Generator().manual_seed(0))
    first = assert_restored_twin_continues(twin, LBFTwin("Foraging-6x6-2p-1f-v3", 16, seed=9), actions, 20)
    assert sum(int(out["done"].sum()) for out in first) > 16


def test_selected_by_batched_true_with_the_reward_convention():
    """``env.batched: true`` with an lbf id builds the twin; the shared team reward sums agents."""
    from marl.envs.batched import TWINS

    assert "lbf:Foraging-8x8-2p-2f-coop-v3" in TWINS
    twin = make_batched_env("lbf:Foraging-8x8-2p-3f-v3", {}, 64, seed=0)
    assert isinstance(twin, LBFTwin)
    venv = BatchedVectorEnv(twin, RewardSpec(mode="shared", team="sum"))
    venv.reset(seed=0)
    total = 0.0
    for _ in range(100):
        out = venv.step(torch.randint(0, 6, (64, 2)))
        torch.testing.assert_close(out.reward, out.raw_reward.sum(dim=1, keepdim=True).expand(-1, 2))
        total += sum(float(ep["raw_return"].sum()) for ep in out.episodes)
    assert total > 0


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="no env"):
        LBFTwin("Foraging-8x8-2p-2f-nope-v3", 2)
    with pytest.raises(ValueError, match="unsupported keyword"):
        LBFTwin("Foraging-8x8-2p-2f-v3", 2, max_episode_steps=20)
    with pytest.raises(ValueError, match="vector observations"):
        LBFTwin("Foraging-8x8-2p-2f-v3", 2, grid_observation=True)
    twin = LBFTwin("Foraging-8x8-2p-2f-v3", 2)
    with pytest.raises(ValueError, match="out of range"):
        twin.step(torch.full((2, 2), 6))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        twin.step(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="players"):
        twin.load_package_env(0, lbf_env("Foraging-8x8-3p-2f-v3"))


def test_reset_on_a_crowded_field_places_what_fits():
    """On a 4x4 field the 2x2 interior fits one food (each food keeps its 3x3 block free), and a
    food never lands on a player; the rest of the slots stay empty, as the package stops spawning
    once a food finds no cell."""
    twin = LBFTwin("Foraging-8x8-2p-3f-v3", 2000, seed=4, field_size=(4, 4))
    state = twin.get_state()
    cells, food_level = state["food_cell"], state["food_level"]
    assert ((cells >= 0).sum(dim=1) == 1).all() and ((cells >= 0) == (food_level > 0)).all()
    first = cells[:, 0]
    assert set(first.unique().tolist()) == {5, 6, 9, 10}   # the interior
    player_cells = state["pos"][..., 0] * 4 + state["pos"][..., 1]
    assert not (player_cells == first.unsqueeze(1)).any()
    assert (player_cells[:, 0] != player_cells[:, 1]).all()
    assert (state["food_spawned"] == food_level.sum(dim=1)).all()
