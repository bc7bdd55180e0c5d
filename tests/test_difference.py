"""Difference rewards on matrix games worked out by hand, additive games and lazy agents."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms.difference import default_action_joints, difference_rewards

seeds = st.integers(0, 2**31 - 1)

CLIMBING = torch.tensor([[11.0, -30.0, 0.0],
                         [-30.0, 7.0, 6.0],
                         [0.0, 0.0, 5.0]])


def all_joints(sizes):
    return torch.tensor(list(itertools.product(*(range(n) for n in sizes))))


def d_of_game(game, joints, default):
    """Difference rewards of every joint in ``joints`` ``[K, N]`` under payoff tensor ``game``."""
    counterfactual = default_action_joints(joints, default)                  # [K, N, N]
    team = game[tuple(joints.unbind(-1))]                                    # [K]
    return difference_rewards(team, game[tuple(counterfactual.unbind(-1))])  # [K, N]


# -- default action joints ----------------------------------------------------------------------------
def test_default_action_joints_hand_worked():
    joints = default_action_joints(torch.tensor([[1, 2, 0]]), torch.tensor([5, 6, 7]))
    assert joints.dtype == torch.long
    torch.testing.assert_close(joints, torch.tensor([[[5, 2, 0], [1, 6, 0], [1, 2, 7]]]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), seeds)
def test_row_i_differs_from_the_taken_joint_only_at_agent_i(N, A, seed):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, A, (3, 2, N), generator=g)
    default = torch.randint(0, A, (N,), generator=g)
    joints = default_action_joints(actions, default)
    assert joints.shape == (3, 2, N, N)
    eye = torch.eye(N, dtype=torch.bool)
    torch.testing.assert_close(joints[..., eye], default.expand(3, 2, N))
    torch.testing.assert_close(joints[..., ~eye], actions.unsqueeze(-2).expand(3, 2, N, N)[..., ~eye])


def test_default_may_vary_per_state():
    actions = torch.tensor([[0, 0], [1, 1]])
    default = torch.tensor([[2, 3], [4, 5]])                                 # one default per row
    torch.testing.assert_close(default_action_joints(actions, default),
                               torch.tensor([[[2, 0], [0, 3]], [[4, 1], [1, 5]]]))


# -- matrix games by hand -----------------------------------------------------------------------------
@pytest.mark.parametrize("default, d0, d1", [
    # c = (0, 0): D_0 = G − G[0, u1], D_1 = G − G[u0, 0].
    ((0, 0), [[0, 0, 0], [-41, 37, 6], [-11, 30, 5]],
             [[0, -41, -11], [0, 37, 36], [0, 0, 5]]),
    # c = (2, 1): D_0 = G − G[2, u1] with G[2, :] = [0, 0, 5]; D_1 = G − G[u0, 1] with G[:, 1] = [-30, 7, 0].
    ((2, 1), [[11, -30, -5], [-30, 7, 1], [0, 0, 0]],
             [[41, 0, 30], [-37, 0, -1], [0, 0, 5]]),
])
def test_climbing_game_by_hand(default, d0, d1):
    joints = all_joints((3, 3))                                              # row-major (u0, u1)
    d = d_of_game(CLIMBING, joints, torch.tensor(default))
    np.testing.assert_allclose(d[:, 0].reshape(3, 3), d0)
    np.testing.assert_allclose(d[:, 1].reshape(3, 3), d1)


def test_additive_game_with_a_lazy_agent_by_hand():
    # G(u) = f0[u0] + f1[u1]; agent 2 does nothing. Defaults c = (0, 1, 1).
    f0, f1 = torch.tensor([1.0, 4.0]), torch.tensor([0.0, -2.0, 3.0])
    game = (f0[:, None, None] + f1[None, :, None]).expand(2, 3, 2)
    joints = all_joints((2, 3, 2))
    d = d_of_game(game, joints, torch.tensor([0, 1, 1]))
    np.testing.assert_allclose(d[:, 0], [[0.0, 3.0][u0] for u0, _, _ in joints.tolist()])
    np.testing.assert_allclose(d[:, 1], [[2.0, 0.0, 5.0][u1] for _, u1, _ in joints.tolist()])
    np.testing.assert_allclose(d[:, 2], 0.0)


# -- properties ---------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_additive_game_gives_own_term_minus_its_default(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    N = len(sizes)
    terms = [torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
    game = sum(t.reshape([-1 if j == i else 1 for j in range(N)]) for i, t in enumerate(terms)).expand(*sizes)
    default = torch.tensor([int(torch.randint(0, n, (), generator=g)) for n in sizes])
    joints = all_joints(sizes)
    d = d_of_game(game, joints, default)
    for i in range(N):
        torch.testing.assert_close(d[:, i], terms[i][joints[:, i]] - terms[i][default[i]])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds, st.data())
def test_lazy_agent_gets_zero_everywhere(sizes, seed, data):
    g = torch.Generator().manual_seed(seed)
    lazy = data.draw(st.integers(0, len(sizes) - 1))
    shape = [1 if j == lazy else n for j, n in enumerate(sizes)]
    game = torch.randn(*shape, generator=g, dtype=torch.float64).expand(*sizes)   # G ignores the lazy agent
    default = torch.tensor([int(torch.randint(0, n, (), generator=g)) for n in sizes])
    d = d_of_game(game, all_joints(sizes), default)
    assert (d[:, lazy] == 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), seeds)
def test_agent_that_took_its_default_gets_zero(N, seed):
    g = torch.Generator().manual_seed(seed)
    game = torch.randn(*(3,) * N, generator=g)
    joints = all_joints((3,) * N)
    default = torch.randint(0, 3, (N,), generator=g)
    d = d_of_game(game, joints, default)
    assert (d[joints == default] == 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), seeds, st.randoms(use_true_random=False))
def test_permuting_agents_permutes_joints_and_rewards(N, seed, rnd):
    g = torch.Generator().manual_seed(seed)
    perm = list(range(N))
    rnd.shuffle(perm)
    actions = torch.randint(0, 4, (3, N), generator=g)
    default = torch.randint(0, 4, (N,), generator=g)
    joints = default_action_joints(actions, default)
    torch.testing.assert_close(default_action_joints(actions[..., perm], default[perm]),
                               joints[..., perm, :][..., perm])
    team, cf = torch.randn(3, 1, generator=g), torch.randn(3, N, generator=g)
    torch.testing.assert_close(difference_rewards(team, cf[..., perm]), difference_rewards(team, cf)[..., perm])


# -- shapes and errors --------------------------------------------------------------------------------
def test_team_reward_as_team_signal_or_without_agent_axis():
    g = torch.Generator().manual_seed(0)
    team, cf = torch.randn(4, 2, 1, generator=g), torch.randn(4, 2, 3, generator=g)
    d = difference_rewards(team, cf)
    assert d.shape == (4, 2, 3)
    torch.testing.assert_close(d, team - cf)
    torch.testing.assert_close(difference_rewards(team[..., 0], cf), d)
    torch.testing.assert_close(difference_rewards(team.expand(4, 2, 3), cf), d)


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"team_reward has shape \(4, 3\), expected \(4, 2, 3\) or \(4, 2, 1\)"):
        difference_rewards(torch.zeros(4, 3), torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match=r"counterfactual_team_reward has shape \(\)"):
        difference_rewards(torch.zeros(()), torch.zeros(()))
    with pytest.raises(ValueError, match=r"default has shape \(2,\), expected \(3,\)"):
        default_action_joints(torch.zeros(4, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="actions must be an integer"):
        default_action_joints(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="default must be an integer"):
        default_action_joints(torch.zeros(4, 3, dtype=torch.long), torch.zeros(3, dtype=torch.bool))
