"""Hindsight relabelling over replayed GridGoals episodes: goals from the same episode, rewards equal to
compute_reward, the strategies, joint vs agent, and the refusals."""
import numpy as np
import pytest
import torch
from gymnasium import spaces

from marl.algorithms.her import her_plan, hindsight, relabel_rewards
from marl.envs.goals import goal_slices, grid_goals
from marl.replay import EpisodeReplay, episode_fields


def collect(env, episodes, seed=0, limit=None):
    """Random-play episodes of ``env`` as an EpisodeReplay holds them (flat obs, raw rewards [N])."""
    agents, rng = env.possible_agents, np.random.default_rng(seed)
    space = env.observation_space(agents[0])
    L = env.max_steps
    N, O = len(agents), spaces.flatdim(space)
    replay = EpisodeReplay(episode_fields(N, O, env.state_space.shape[0], 5, reward_dim=N),
                           capacity=episodes, chunk=limit or L, seed=seed)
    for e in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + e)
        rows = {"obs": [], "state": [], "actions": [], "reward": []}
        while True:
            rows["obs"].append([spaces.flatten(space, obs[a]) for a in agents])
            rows["state"].append(env.state())
            if not env.agents:
                break
            actions = {a: int(rng.integers(5)) for a in agents}
            obs, rewards, _, _, _ = env.step(actions)
            rows["actions"].append([actions[a] for a in agents])
            rows["reward"].append([rewards[a] for a in agents])
        T = len(rows["actions"])
        ends = torch.zeros(T, 1, 1, dtype=torch.bool)
        ends[-1] = True
        replay.add({"obs": torch.tensor(np.array(rows["obs"]))[:, None],
                    "state": torch.tensor(np.array(rows["state"]))[:, None],
                    "avail": torch.ones(T + 1, 1, N, 5, dtype=torch.bool),
                    "alive": torch.ones(T + 1, 1, N, dtype=torch.bool),
                    "actions": torch.tensor(rows["actions"])[:, None], "reward": torch.tensor(rows["reward"])[:, None],
                    "terminated": torch.zeros_like(ends), "truncated": ends}, torch.tensor([T]))
    return replay


@pytest.fixture(scope="module")
def batch():
    env = grid_goals(n_agents=2, size=4, max_steps=10)
    replay = collect(env, 40, limit=6)                   # 10-step episodes in chunks of 6 and 4
    return env, replay.sample(64)


def relabel(env, sample, **kw):
    achieved, desired = goal_slices(env.observation_space(env.possible_agents[0]))
    g = torch.Generator().manual_seed(kw.pop("seed", 0))
    out = hindsight(sample.data["obs"], sample.filled, env.compute_reward, env.possible_agents,
                    achieved=achieved, desired=desired, generator=g, **kw)
    return (*out, achieved, desired)


@pytest.mark.parametrize("strategy", ["final", "future", "episode"])
@pytest.mark.parametrize("mode", ["joint", "agent"])
def test_relabelled_goals_are_achieved_in_the_same_slot_and_rewards_equal_compute_reward(batch, strategy, mode):
    env, sample = batch
    obs, reward, mask, achieved, desired = relabel(env, sample, strategy=strategy, ratio=0.6, mode=mode)
    old, new = sample.data["obs"][..., desired], obs[..., desired]
    lengths = sample.filled.sum(0)
    changed = (old != new).any(-1).any(0)                                  # [B, N]
    assert changed.any() and not changed.all()
    if mode == "agent":
        assert (changed.sum(-1) <= 1).all()
    for b, n in changed.nonzero().tolist():
        goal = new[0, b, n]
        assert (new[:, b, n] == goal).all()                                # one goal for the whole slot
        steps = [t for t in range(int(lengths[b]) + 1) if torch.equal(obs[t, b, n, achieved], goal)]
        assert steps, "the goal was achieved in this slot"
        if strategy == "final":
            assert int(lengths[b]) in steps
        if strategy == "future":                                           # achieved after every kept step
            kept = mask[:, b].nonzero()[:, 0]
            assert len(kept) and max(steps) > int(kept.max())
        else:
            assert torch.equal(mask[:, b], sample.filled[:, b])
    # every reward is compute_reward of that step's goals, one call per (step, slot)
    for t, b in sample.filled.nonzero().tolist():
        one = env.compute_reward({a: obs[t + 1, b, i, achieved].numpy() for i, a in enumerate(env.possible_agents)},
                                 {a: obs[t + 1, b, i, desired].numpy() for i, a in enumerate(env.possible_agents)}, {})
        assert reward[t, b].tolist() == [float(one[a]) for a in env.possible_agents]
    assert (reward[~sample.filled] == 0).all()
    # slots left alone get back exactly what step() paid
    untouched = ~changed.any(-1)
    assert torch.equal(reward[:, untouched], sample.data["reward"][:, untouched])


def test_joint_final_relabelling_makes_every_slot_a_team_success(batch):
    env, sample = batch
    _, reward, _, _, _ = relabel(env, sample, strategy="final", ratio=1.0, mode="joint")
    last = sample.filled.sum(0) - 1
    assert (reward[last, torch.arange(reward.shape[1])] == 1).all()
    assert sample.data["reward"][last, torch.arange(reward.shape[1])].mean() < 0.5   # random play rarely succeeds
    _, reward, _, _, _ = relabel(env, sample, strategy="final", ratio=0.0, mode="joint")
    assert torch.equal(reward, sample.data["reward"])


def test_plan_strategies_and_ratio():
    filled = torch.arange(8)[:, None] < torch.randint(1, 9, (4000,), generator=torch.Generator().manual_seed(0))
    lengths = filled.sum(0)
    g = torch.Generator().manual_seed(1)
    plan = her_plan(filled, 3, strategy="episode", ratio=0.25, mode="joint", generator=g)
    rows = plan.relabel[:, 0]
    assert abs(rows.float().mean().item() - 0.25) < 0.03 and (plan.relabel == rows[:, None]).all()
    assert ((plan.goal_step >= 0) & (plan.goal_step <= lengths)).all() and (plan.goal_step == 0).any()
    plan = her_plan(filled, 3, strategy="future", ratio=1.0, mode="agent", generator=g)
    assert ((plan.goal_step >= 1) & (plan.goal_step <= lengths)).all() and (plan.relabel.sum(-1) == 1).all()
    assert torch.equal(plan.step_mask, filled & (torch.arange(8)[:, None] < plan.goal_step))
    plan = her_plan(filled, 3, strategy="final", ratio=1.0, mode="joint", generator=g)
    assert torch.equal(plan.goal_step, lengths)


def test_refusals_are_one_line():
    filled = torch.ones(3, 2, dtype=torch.bool)
    for kw, message in [({"strategy": "random"}, "her strategy must be one of"),
                        ({"mode": "team"}, "her relabel mode must be one of"),
                        ({"ratio": 1.5}, r"her ratio must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            her_plan(filled, 2, **{"strategy": "final", "ratio": 0.5, "mode": "joint", **kw})
    goals = torch.zeros(3, 2, 2, 2)
    with pytest.raises(ValueError, match=r"compute_reward must return a dict of 6 rewards for each of \['a', 'b'\]"):
        relabel_rewards(lambda ach, des, info: {"a": np.zeros(6)}, ["a", "b"], goals, goals, filled)
