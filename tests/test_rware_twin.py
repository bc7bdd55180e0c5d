"""envs.rware_twin against rware, step by step, as tests/test_mpe_twin.py checks the mpe2 twin: each
package episode (through the project's Gymnasium adapter, so the reward convention and the
truncation flags are the adapter's) is loaded into its own twin env after its reset, both are
stepped with the same random actions, and observations, state, rewards and episode ends are
compared exactly at every step.

The package draws a new requested shelf at each delivery (``np_random.choice``). The test records
those draws (a recorder around the env's own generator, which still draws them) and the twin
replays them through ``RwareTwin._draw_request``, in the same order.
"""
import numpy as np
import pytest
import torch

from marl.envs.batched import BatchedVectorEnv, make_batched_env
from marl.envs.gym_multiagent import rware_env
from marl.envs.rware_twin import RwareTwin, _package_commits
from marl.envs.vector import RewardSpec
from tests.conftest import assert_restored_twin_continues

TASKS = ["rware-tiny-2ag-v2", "rware-tiny-4ag-v2", "rware-small-4ag-v2"]


class _Recorder:
    """The package env's generator, recording what ``choice`` returns (the new requests)."""

    def __init__(self, rng):
        self.rng, self.draws = rng, []

    def choice(self, *args, **kwargs):
        out = self.rng.choice(*args, **kwargs)
        self.draws.append(out)
        return out

    def __getattr__(self, name):
        return getattr(self.rng, name)


class _ReplayTwin(RwareTwin):
    """The twin, its new requests taken from ``pending[e]`` (the package's draws for env e)."""

    pending: list[list[int]] = []

    def _draw_request(self, goal, rows, candidates):
        out = torch.zeros(self.num_envs, dtype=torch.long)
        for e in rows.nonzero().squeeze(1).tolist():
            out[e] = self.pending[e].pop(0)
            assert candidates[e, out[e]], "the package requested a shelf the twin thinks is requested"
        return out


def _assert_matches_package(env_name, episodes, seed=0, steps=None, toggle=0.2, **kwargs):
    env = rware_env(env_name, **kwargs)
    raw = env.env.unwrapped
    twin = _ReplayTwin(env_name, episodes, seed=seed + 1, **kwargs)
    T, n = steps or twin.max_steps, twin.n_agents
    rng = np.random.default_rng(seed)
    # Random actions with a chosen share of toggles (loads and unloads), the rest uniform.
    p = np.r_[[(1 - toggle) / 4] * 4, toggle]
    actions = rng.choice(5, size=(T, episodes, n), p=p)
    agents = env.possible_agents
    first = np.zeros((episodes, n, twin.obs_dim), np.float32)
    obs = np.zeros((T, episodes, n, twin.obs_dim), np.float32)
    reward = np.zeros((T, episodes, n))
    trunc, term = np.zeros((T, episodes), bool), np.zeros((T, episodes), bool)
    draws = [[[] for _ in range(episodes)] for _ in range(T)]
    for e in range(episodes):
        initial, _ = env.reset(seed=seed * 100_000 + e)
        twin.load_package_env(e, env)
        raw._np_random = recorder = _Recorder(raw.np_random)
        first[e] = np.stack([initial[a] for a in agents])
        for t in range(T):
            o, r, te, tr, _ = env.step({a: int(actions[t, e, k]) for k, a in enumerate(agents)})
            obs[t, e] = np.stack([o[a] for a in agents])
            reward[t, e] = [r[a] for a in agents]
            term[t, e], trunc[t, e] = te[agents[0]], tr[agents[0]]
            draws[t][e] = [shelf.id - 1 for shelf in recorder.draws]
            recorder.draws.clear()
    twin_obs, twin_state = twin.observe()
    np.testing.assert_array_equal(twin_obs.numpy(), first)
    np.testing.assert_array_equal(twin_state.numpy(), first.reshape(episodes, -1))
    for t in range(T):
        twin.pending = [list(d) for d in draws[t]]
        out = twin.step(torch.as_tensor(actions[t]))
        assert not any(twin.pending), f"step {t + 1}: the package drew more new requests than the twin"
        where = f"{env_name} step {t + 1}"
        np.testing.assert_array_equal(out["next_obs"].numpy(), obs[t], err_msg=where)
        np.testing.assert_array_equal(out["next_state"].numpy(), obs[t].reshape(episodes, -1), err_msg=where)
        np.testing.assert_array_equal(out["reward"].numpy(), reward[t], err_msg=where)
        np.testing.assert_array_equal(out["terminated"].numpy(), term[t, :, None].repeat(n, 1), err_msg=where)
        np.testing.assert_array_equal(out["truncated"].numpy(), trunc[t, :, None].repeat(n, 1), err_msg=where)
        np.testing.assert_array_equal(out["done"].numpy(), trunc[t], err_msg=where)
    return reward


@pytest.mark.parametrize("env_name", TASKS)
def test_matches_rware_for_20_random_episodes(env_name):
    _assert_matches_package(env_name, episodes=20)


@pytest.mark.slow
@pytest.mark.parametrize("env_name", TASKS)
def test_matches_rware_for_500_random_episodes(env_name):
    _assert_matches_package(env_name, episodes=500, seed=1)


@pytest.mark.parametrize("episodes", [pytest.param(20, id="20"), pytest.param(200, id="200", marks=pytest.mark.slow)])
def test_matches_rware_with_deliveries(episodes):
    """28 of 32 shelves requested: random robots deliver, and the package's new draws are replayed."""
    reward = _assert_matches_package("rware-tiny-4ag-v2", episodes=episodes, toggle=0.1, request_queue_size=28)
    assert (reward > 0).sum() >= episodes // 4


def test_collision_resolution_matches_networkx_on_crowded_random_moves():
    """Four robots on a 3x3 corner, each staying or stepping to a random neighbour: the twin's
    vectorised resolution agrees with the package's networkx calls (cycles, swaps, chains, ties)."""
    twin = RwareTwin("rware-tiny-4ag-v2", 4000)
    g = torch.Generator().manual_seed(0)
    corner = torch.tensor([y * 10 + x for y in range(3) for x in range(3)])
    start = corner[torch.rand(4000, 9, generator=g).argsort(dim=1)[:, :4]]
    step = torch.tensor([0, -10, 10, -1, 1])[torch.randint(0, 5, (4000, 4), generator=g)]
    target = start + step
    x, y = target % 10, target // 10
    target = torch.where((x >= 0) & (x < 3) & (y >= 0) & (y < 3) & ((start % 10 - x).abs() <= 1), target, start)
    moving = twin._moving(start, target)
    xy = lambda cell: (int(cell) % 10, int(cell) // 10)   # noqa: E731
    for b in range(4000):
        expected = _package_commits([xy(c) for c in start[b]], [xy(c) for c in target[b]])
        assert moving[b].tolist() == expected, (start[b].tolist(), target[b].tolist())


def test_spaces_and_ids_match_the_adapter():
    env = rware_env("rware-small-4ag-v2")
    twin = RwareTwin("rware:rware-small-4ag-v2", 2)
    assert twin.agents == env.possible_agents == [f"agent_{i}" for i in range(4)]
    assert twin.obs_dim == env.observation_space("agent_0").shape[0] == 71
    assert twin.n_actions == env.action_space("agent_0").n == 5 and twin.action_mask.all()


def test_reset_distribution():
    """Robots on distinct uniform cells facing uniform directions, queue-size distinct requests."""
    twin = RwareTwin("rware-tiny-2ag-v2", 4000, seed=1)
    state = twin.get_state()
    assert (state["pos"][:, 0] != state["pos"][:, 1]).any(dim=-1).all()
    counts = torch.bincount(state["dir"].flatten(), minlength=4).float() / state["dir"].numel()
    assert ((counts - 0.25).abs() < 0.02).all()
    assert (state["requested"].sum(dim=1) == 2).all() and (state["carry"] == -1).all()
    per_shelf = state["requested"].float().mean(dim=0)
    assert ((per_shelf - 2 / twin.n_shelves).abs() < 0.02).all()


def test_get_state_set_state_continues_identically():
    twin = RwareTwin("rware-tiny-4ag-v2", 8, seed=5, max_steps=10, request_queue_size=28)
    actions = torch.randint(0, 5, (40, 8, 4), generator=torch.Generator().manual_seed(0))
    other = RwareTwin("rware-tiny-4ag-v2", 8, seed=9, max_steps=10, request_queue_size=28)
    assert_restored_twin_continues(twin, other, actions, 5)


def test_selected_by_batched_true_and_trains_through_the_vector_env():
    from marl.envs.batched import TWINS

    assert "rware:rware-tiny-2ag-v2" in TWINS
    twin = make_batched_env("rware:rware-tiny-2ag-v2", {"max_steps": 20}, 8, seed=0)
    assert isinstance(twin, RwareTwin)
    venv = BatchedVectorEnv(twin, RewardSpec(mode="shared", team="sum"))
    venv.reset(seed=0)
    ends = 0
    for _ in range(40):
        out = venv.step(torch.randint(0, 5, (8, 2)))
        assert not out.terminated.any()
        ends += len(out.episodes)
    assert ends == 16 and all(ep["length"] == 20 for ep in out.episodes)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="no env"):
        RwareTwin("rware-huge-2ag-v2", 2)
    with pytest.raises(ValueError, match="message bits"):
        RwareTwin("rware-tiny-2ag-v2", 2, msg_bits=1)
    twin = RwareTwin("rware-tiny-2ag-v2", 2)
    with pytest.raises(ValueError, match="out of range"):
        twin.step(torch.full((2, 2), 5))
    other = rware_env("rware-tiny-4ag-v2")
    with pytest.raises(ValueError, match="reset the rware env first"):
        twin.load_package_env(0, other)
    other.reset(seed=0)
    with pytest.raises(ValueError, match="n_agents"):
        twin.load_package_env(0, other)
