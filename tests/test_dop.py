"""DOP's linear mixer and decomposed counterfactual advantage against hand-worked cases, COMA on the
mixed Q_tot, and the identities a linear decomposition implies."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms.coma import coma_advantage, coma_lambda_advantage
from marl.algorithms.dop import dop_advantage, dop_lambda_advantage, dop_mix, positive_weights

seeds = st.integers(0, 2**31 - 1)


def random_case(seed, T=2, B=2, N=3, A=4, p_unavail=0.3, dtype=torch.float64):
    """Random k ≥ 0, per-agent Q, logits, avail (≥ 1 available per agent), available actions and b."""
    g = torch.Generator().manual_seed(seed)
    k = positive_weights(torch.randn(T, B, N, generator=g, dtype=dtype))
    q = torch.randn(T, B, N, A, generator=g, dtype=dtype)
    logits = 2 * torch.randn(T, B, N, A, generator=g, dtype=dtype)
    avail = torch.rand(T, B, N, A, generator=g) >= p_unavail
    avail[..., 0] |= ~avail.any(-1)
    actions = (avail.to(dtype) * torch.rand(T, B, N, A, generator=g, dtype=dtype)).argmax(-1)
    b = torch.randn(T, B, generator=g, dtype=dtype)
    return k, q, logits, avail, actions, b


def taken(q, actions):
    return q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def deviated_q_tot(k, q, actions, b):
    """``[..., N, A]``: Q_tot with agent i's action replaced by u, the others' as taken, by a loop."""
    q_taken = taken(q, actions)
    out = torch.empty_like(q)
    for i in range(q.shape[-2]):
        for u in range(q.shape[-1]):
            deviated = q_taken.clone()
            deviated[..., i] = q[..., i, u]
            out[..., i, u] = dop_mix(k, deviated, b)
    return out


def masked_pi(logits, avail):
    return torch.where(avail, torch.softmax(torch.where(avail, logits, torch.finfo(logits.dtype).min), -1), 0.0)


# -- hand-worked --------------------------------------------------------------------------------------
def hand_worked_case():
    """Two agents. Agent 0: k = 2, Q = [1, 2, 3], π = [1/4, 1/4, 1/2], took 2. Agent 1: k = 1/2,
    action 1 unavailable (Q = -inf, logit nan), Q = [4, ·, 0], π = [3/4, 0, 1/4], took 2."""
    k = torch.tensor([[2.0, 0.5]])
    q = torch.tensor([[[1.0, 2.0, 3.0], [4.0, -math.inf, 0.0]]])
    logits = torch.tensor([[[0.0, 0.0, math.log(2)], [math.log(3), math.nan, 0.0]]])
    avail = torch.tensor([[True, True, True], [True, False, True]])
    actions = torch.tensor([[2, 2]])
    return k, q, logits, avail, actions


def test_hand_worked_two_agents():
    # Agent 0: 2 · (3 − 2.25) = 1.5; agent 1: 0.5 · (0 − 3) = −1.5.
    k, q, logits, avail, actions = hand_worked_case()
    np.testing.assert_allclose(dop_advantage(k, q, logits, actions, avail).flatten(), [1.5, -1.5], rtol=1e-6)
    # Q_tot = 2 · 3 + 0.5 · 0 + b, with b = 1, given as [...] or as a team signal [..., 1].
    q_taken = torch.tensor([[3.0, 0.0]])
    np.testing.assert_allclose(dop_mix(k, q_taken, torch.tensor([1.0])), [7.0])
    np.testing.assert_allclose(dop_mix(k, q_taken, torch.tensor([[1.0]])), [7.0])


def test_hand_worked_dop_lambda():
    # The case above with b = 1: Q_tot(s, u) = 2 · 3 + 0.5 · 0 + 1 = 7, and a λ-return of 5.
    # Agent 0: 5 − 7 + 1.5 = −0.5; agent 1: 5 − 7 − 1.5 = −3.5. By hand from the definition, agent
    # 0's baseline Σ_u' π(u') Q_tot(u', u_1) = 1/4 (2 + 1) + 1/4 (4 + 1) + 1/2 (6 + 1) = 5.5, and
    # 5 − 5.5 = −0.5.
    k, q, logits, avail, actions = hand_worked_case()
    returns = torch.tensor([[5.0, 5.0]])
    for q_tot in (torch.tensor([[7.0, 7.0]]), torch.tensor([7.0])):   # per agent, or one team value
        np.testing.assert_allclose(dop_lambda_advantage(returns, q_tot, k, q, logits, actions, avail).flatten(),
                                   [-0.5, -3.5], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), seeds)
def test_dop_lambda_is_coma_lambda_on_the_mixed_q_tot(N, A, seed):
    # COMA-λ's baseline on Q_tot(s, (u_{-i}, u')) for every u' of agent i, by enumeration.
    k, q, logits, avail, actions, b = random_case(seed, N=N, A=A)
    returns = torch.randn(actions.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=q.dtype)
    q_taken, q_tot_all = taken(q, actions), deviated_q_tot(k, q, actions, b)
    q_tot = dop_mix(k, q_taken, b).unsqueeze(-1).expand_as(returns)
    torch.testing.assert_close(dop_lambda_advantage(returns, q_tot, k, q, logits, actions, avail),
                               coma_lambda_advantage(returns, torch.where(avail, q_tot_all, 0.0), logits, avail))


def test_dop_lambda_with_exact_returns_is_dop():
    # Where the return equals Q_tot(s, u), the shared term vanishes and DOP's advantage is left.
    k, q, logits, avail, actions, b = random_case(5)
    q_tot = dop_mix(k, taken(q, actions), b).unsqueeze(-1).expand_as(k)
    torch.testing.assert_close(dop_lambda_advantage(q_tot, q_tot, k, q, logits, actions, avail),
                               dop_advantage(k, q, logits, actions, avail))


def test_positive_weights_is_abs():
    raw = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(positive_weights(raw), torch.tensor([2.0, 0.0, 3.0]))


# -- relation to COMA ---------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), seeds)
def test_is_k_times_comas_advantage_of_the_agents_own_critic(N, A, seed):
    k, q, logits, avail, actions, _ = random_case(seed, N=N, A=A)
    torch.testing.assert_close(dop_advantage(k, q, logits, actions, avail),
                               k * coma_advantage(q, logits, actions, avail))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), seeds)
def test_is_comas_advantage_of_the_mixed_q_tot(N, A, seed):
    # COMA on Q_tot(s, (u_{-i}, u')) for every u' of agent i: the other agents' terms and b cancel.
    k, q, logits, avail, actions, b = random_case(seed, N=N, A=A)
    torch.testing.assert_close(dop_advantage(k, q, logits, actions, avail),
                               coma_advantage(deviated_q_tot(k, q, actions, b), logits, actions, avail))


# -- what the linear decomposition implies ------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), seeds)
def test_one_agent_deviation_changes_q_tot_by_k_times_its_own_q(N, A, seed):
    k, q, _, _, actions, b = random_case(seed, N=N, A=A)
    q_taken = taken(q, actions)
    q_tot = dop_mix(k, q_taken, b)
    for i in range(N):
        for u in range(A):
            deviated = q_taken.clone()
            deviated[..., i] = q[..., i, u]
            torch.testing.assert_close(q_tot - dop_mix(k, deviated, b), k[..., i] * (q_taken[..., i] - q[..., i, u]))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), seeds)
def test_advantages_sum_to_q_tot_minus_its_expectation_under_the_joint_policy(N, A, seed):
    # E_{u ~ π} Q_tot(u) = Σ_i k_i E_{π_i} Q_i + b, so Σ_i A_i = Q_tot(u) − E_π Q_tot; checked by
    # enumerating every joint action.
    k, q, logits, avail, actions, b = random_case(seed, N=N, A=A)
    pi = masked_pi(logits, avail)
    expected_q_tot = torch.zeros_like(b)
    for joint in itertools.product(range(A), repeat=N):
        u = torch.tensor(joint).expand_as(actions)
        weight = torch.stack([pi[..., i, joint[i]] for i in range(N)]).prod(0)
        expected_q_tot += weight * dop_mix(k, taken(q, u), b)
    adv = dop_advantage(k, q, logits, actions, avail)
    torch.testing.assert_close(adv.sum(-1), dop_mix(k, taken(q, actions), b) - expected_q_tot)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), seeds, st.floats(0.0, 3.0))
def test_q_tot_is_monotone_in_each_agents_q(N, A, seed, bump):
    k, q, _, _, actions, b = random_case(seed, N=N, A=A)
    q_taken = taken(q, actions)
    for i in range(N):
        raised = q_taken.clone()
        raised[..., i] += bump
        assert (dop_mix(k, raised, b) >= dop_mix(k, q_taken, b) - 1e-12).all()


# -- lazy agents --------------------------------------------------------------------------------------
def test_agent_with_zero_weight_gets_zero():
    k, q, logits, avail, actions, _ = random_case(0)
    k[..., 1] = 0.0
    adv = dop_advantage(k, q, logits, actions, avail)
    assert (adv[..., 1] == 0).all() and (adv[..., 0] != 0).any()


def test_agent_with_q_flat_over_its_actions_gets_zero():
    k, q, logits, _, actions, _ = random_case(1, p_unavail=0.0)
    q[..., 2, :] = q[..., 2, :1]
    adv = dop_advantage(k, q, logits, actions)
    torch.testing.assert_close(adv[..., 2], torch.zeros_like(adv[..., 2]), atol=1e-12, rtol=0)


# -- masking, permutation, errors ---------------------------------------------------------------------
@pytest.mark.parametrize("junk", [math.nan, math.inf, -math.inf])
def test_unavailable_actions_do_not_leak(junk):
    k, q, logits, avail, actions, _ = random_case(3, p_unavail=0.5)
    clean = dop_advantage(k, q, logits, actions, avail)
    q_junk = torch.where(avail, q, junk).requires_grad_()
    logits_junk = torch.where(avail, logits, junk).requires_grad_()
    adv = dop_advantage(k, q_junk, logits_junk, actions, avail)
    torch.testing.assert_close(adv, clean)
    adv.sum().backward()
    for grad in (q_junk.grad, logits_junk.grad):
        assert torch.isfinite(grad).all()
        assert (grad[~avail] == 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), seeds, st.randoms(use_true_random=False))
def test_permuting_agents_permutes_advantages_and_keeps_q_tot(N, A, seed, rnd):
    k, q, logits, avail, actions, b = random_case(seed, N=N, A=A)
    perm = list(range(N))
    rnd.shuffle(perm)
    adv = dop_advantage(k, q, logits, actions, avail)
    p_adv = dop_advantage(k[..., perm], q[..., perm, :], logits[..., perm, :], actions[..., perm], avail[..., perm, :])
    torch.testing.assert_close(p_adv, adv[..., perm])
    q_taken = taken(q, actions)
    torch.testing.assert_close(dop_mix(k[..., perm], q_taken[..., perm], b), dop_mix(k, q_taken, b))


def test_errors_name_the_shapes():
    k, q, logits, avail, actions, b = random_case(4)                 # k (2, 2, 3), q (2, 2, 3, 4)
    with pytest.raises(ValueError, match=r"k has shape \(2, 2, 2\) and q_taken \(2, 2, 3\)"):
        dop_mix(k[..., :2], taken(q, actions), b)
    with pytest.raises(ValueError, match=r"b has shape \(2, 3\), expected \(2, 2\) or \(2, 2, 1\)"):
        dop_mix(k, taken(q, actions), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"k has shape \(2, 2\), expected \(2, 2, 3\)"):
        dop_advantage(k[..., 0], q, logits, actions)
    with pytest.raises(ValueError, match=r"actions has shape \(2, 2\)"):
        dop_advantage(k, q, logits, actions[..., 0])
    with pytest.raises(TypeError, match="integer"):
        dop_advantage(k, q, logits, actions.double())
    with pytest.raises(ValueError, match=r"logits \(2, 2, 3, 3\)"):
        dop_advantage(k, q, logits[..., :3], actions)
