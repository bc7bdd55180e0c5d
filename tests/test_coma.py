"""COMA's counterfactual advantage and critic inputs against hand-worked cases and brute force."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms import coma_advantage, coma_baseline, coma_critic_inputs, coma_lambda_advantage
from tests.reference import coma_critic_input_loop, coma_loop


def random_case(seed, T=2, B=2, N=3, A=4, p_unavail=0.3, dtype=torch.float64):
    """Random q_all, logits, avail (≥ 1 available action per agent) and available actions."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, B, N, A, generator=g, dtype=dtype)
    logits = 2 * torch.randn(T, B, N, A, generator=g, dtype=dtype)
    avail = torch.rand(T, B, N, A, generator=g) >= p_unavail
    avail[..., 0] |= ~avail.any(-1)
    weights = avail.to(dtype) * torch.rand(T, B, N, A, generator=g, dtype=dtype)
    actions = weights.argmax(-1)
    return q, logits, avail, actions


# -- hand-worked --------------------------------------------------------------------------------------
def test_hand_worked_two_agents():
    # Agent 0: π = softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2], Q = [1, 2, 3], took action 2.
    # Agent 1: action 1 unavailable (Q = -inf, logit nan), π = [3/4, 0, 1/4], Q = [4, ·, 0], took action 2.
    q = torch.tensor([[1.0, 2.0, 3.0], [4.0, -math.inf, 0.0]]).reshape(1, 1, 2, 3)
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [math.log(3), math.nan, 0.0]]).reshape(1, 1, 2, 3)
    avail = torch.tensor([[True, True, True], [True, False, True]])
    actions = torch.tensor([2, 2]).reshape(1, 1, 2)
    baseline = coma_baseline(q, logits, avail)
    np.testing.assert_allclose(baseline.flatten(), [0.25 * 1 + 0.25 * 2 + 0.5 * 3, 0.75 * 4], rtol=1e-6)
    adv = coma_advantage(q, logits, actions, avail)
    np.testing.assert_allclose(adv.flatten(), [3 - 2.25, 0 - 3.0], rtol=1e-6)


def test_lambda_variant_hand_worked_two_agents():
    # The same policies and Q as above (baselines 2.25 and 3.0), with λ-returns 5 and 1.
    q = torch.tensor([[1.0, 2.0, 3.0], [4.0, -math.inf, 0.0]]).reshape(1, 1, 2, 3)
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [math.log(3), math.nan, 0.0]]).reshape(1, 1, 2, 3)
    avail = torch.tensor([[True, True, True], [True, False, True]])
    returns = torch.tensor([5.0, 1.0]).reshape(1, 1, 2)
    adv = coma_lambda_advantage(returns, q, logits, avail)
    np.testing.assert_allclose(adv.flatten(), [5 - 2.25, 1 - 3.0], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_lambda_variant_equals_coma_when_the_return_is_q_of_the_taken_action(N, A, seed):
    q, logits, avail, actions = random_case(seed, N=N, A=A)
    q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(coma_lambda_advantage(q_taken, q, logits, avail),
                               coma_advantage(q, logits, actions, avail))


def test_lambda_variant_with_q_independent_of_own_action_is_return_minus_q():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 4, 1, generator=g).expand(3, 2, 4, 5)
    returns = torch.randn(3, 2, 4, generator=g)
    adv = coma_lambda_advantage(returns, q, torch.randn(3, 2, 4, 5, generator=g))
    torch.testing.assert_close(adv, returns - q[..., 0])


def test_lambda_variant_rejects_mismatched_returns():
    q, logits, avail, _ = random_case(0)
    with pytest.raises(ValueError, match=r"returns has shape \(2, 2\), expected \(2, 2, 3\)"):
        coma_lambda_advantage(torch.zeros(2, 2), q, logits, avail)


def test_q_independent_of_own_action_gives_zero_advantage():
    g = torch.Generator().manual_seed(0)
    T, B, N, A = 3, 2, 4, 5
    q = torch.randn(T, B, N, 1, generator=g).expand(T, B, N, A)
    actions = torch.randint(0, A, (T, B, N), generator=g)
    uniform = torch.zeros(T, B, N, A)
    torch.testing.assert_close(coma_advantage(q, uniform, actions), torch.zeros(T, B, N))
    # Any policy: the baseline of a constant is that constant.
    torch.testing.assert_close(coma_advantage(q, torch.randn(T, B, N, A, generator=g), actions),
                               torch.zeros(T, B, N), atol=1e-6, rtol=0)


def test_baseline_is_policy_weighted_mean_by_explicit_loop():
    q, logits, avail, _ = random_case(1)
    baseline = coma_baseline(q, logits, avail)
    T, B, N, A = q.shape
    for t in range(T):
        for b in range(B):
            for a in range(N):
                w = [math.exp(logits[t, b, a, u]) if avail[t, b, a, u] else 0.0 for u in range(A)]
                expected = sum(w[u] * q[t, b, a, u].item() for u in range(A) if avail[t, b, a, u]) / sum(w)
                assert baseline[t, b, a].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_no_avail_means_all_actions_available():
    q, logits, _, actions = random_case(2, p_unavail=0.0)
    expected = q.gather(-1, actions[..., None]).squeeze(-1) - (torch.softmax(logits, -1) * q).sum(-1)
    torch.testing.assert_close(coma_advantage(q, logits, actions), expected)
    torch.testing.assert_close(coma_advantage(q, logits, actions, torch.ones(4, dtype=torch.bool)), expected)


# -- masking ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("junk", [math.nan, math.inf, -math.inf])
def test_unavailable_actions_do_not_leak(junk):
    q, logits, avail, actions = random_case(3, p_unavail=0.5)
    clean = coma_advantage(q, logits, actions, avail)
    q_junk = torch.where(avail, q, junk).requires_grad_()
    logits_junk = torch.where(avail, logits, junk).requires_grad_()
    adv = coma_advantage(q_junk, logits_junk, actions, avail)
    torch.testing.assert_close(adv, clean)
    adv.sum().backward()
    for grad in (q_junk.grad, logits_junk.grad):
        assert torch.isfinite(grad).all()
        assert (grad[~avail] == 0).all()


def test_avail_broadcasts_from_a_static_per_agent_mask():
    q, logits, _, _ = random_case(4, N=2, A=3, p_unavail=0.0)
    mask = torch.tensor([[True, True, False], [True, True, True]])        # [N, A], like env.action_mask
    actions = torch.zeros(q.shape[:-1], dtype=torch.long)
    torch.testing.assert_close(coma_advantage(q, logits, actions, mask),
                               coma_advantage(q, logits, actions, mask.expand_as(q).clone()))
    assert coma_baseline(q, logits, mask)[..., 0].sub(
        (torch.softmax(logits[..., 0, :2], -1) * q[..., 0, :2]).sum(-1)).abs().max() < 1e-12


def test_agent_without_available_actions_gets_zero_baseline():
    q, logits, avail, actions = random_case(5)
    avail[0, 0, 1] = False
    q = torch.where(avail, q, math.nan).requires_grad_()
    baseline = coma_baseline(q, logits, avail)
    assert baseline[0, 0, 1].item() == 0.0
    baseline.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_errors_name_the_shapes():
    q, logits, avail, actions = random_case(6)
    with pytest.raises(ValueError, match=r"logits \(2, 2, 3, 3\)"):
        coma_baseline(q, logits[..., :3])
    with pytest.raises(ValueError, match=r"actions has shape \(2, 2\)"):
        coma_advantage(q, logits, actions[..., 0])
    with pytest.raises(TypeError, match="integer"):
        coma_advantage(q, logits, actions.double())
    with pytest.raises(ValueError, match=r"avail has shape \(3, 3\)"):
        coma_baseline(q, logits, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        coma_baseline(q, logits, avail.float())


# -- critic inputs ------------------------------------------------------------------------------------
def test_critic_inputs_layout():
    S, N, A, O = 2, 3, 2, 1
    state = torch.tensor([[7.0, 8.0]])                              # one step: [1, S]
    actions = torch.tensor([[1, 0, 1]])
    onehot = F.one_hot(actions, A)                                   # int64 one-hot is accepted
    obs = torch.tensor([[[10.0], [11.0], [12.0]]])
    x = coma_critic_inputs(state, onehot, obs)
    assert x.shape == (1, N, S + N * A + N + O) and x.dtype == torch.float32
    expected = torch.tensor([
        # state    agent 0  agent 1  agent 2  id         obs
        [7, 8,     0, 0,    1, 0,    0, 1,    1, 0, 0,   10],
        [7, 8,     0, 1,    0, 0,    0, 1,    0, 1, 0,   11],
        [7, 8,     0, 1,    1, 0,    0, 0,    0, 0, 1,   12],
    ], dtype=torch.float32)
    torch.testing.assert_close(x[0], expected)
    assert coma_critic_inputs(state, onehot).shape == (1, N, S + N * A + N)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_critic_inputs_zero_exactly_own_block_and_ignore_own_action(B, N, A, seed):
    g = torch.Generator().manual_seed(seed)
    S = 3
    state = torch.randn(2, B, S, generator=g)
    actions = torch.randint(0, A, (2, B, N), generator=g)
    x = coma_critic_inputs(state, F.one_hot(actions, A))
    blocks = x[..., S:S + N * A].reshape(2, B, N, N, A)              # [..., agent a, agent j, A]
    eye = torch.eye(N, dtype=torch.bool)
    assert (blocks[..., eye, :] == 0).all()                          # a's own block is zero...
    torch.testing.assert_close(blocks[..., ~eye, :],                 # ...every other block is u^j
                               F.one_hot(actions, A).float()[..., None, :, :].expand(2, B, N, N, A)[..., ~eye, :])
    torch.testing.assert_close(x[..., S + N * A:], torch.eye(N).expand(2, B, N, N))
    torch.testing.assert_close(x[..., :S], state[..., None, :].expand(2, B, N, S))
    # Changing agent a's action leaves its own row unchanged, so one forward serves every u'_a.
    a = int(torch.randint(0, N, (1,), generator=g))
    changed = actions.clone()
    changed[..., a] = (changed[..., a] + 1) % A
    y = coma_critic_inputs(state, F.one_hot(changed, A))
    torch.testing.assert_close(y[..., a, :], x[..., a, :])


def test_critic_inputs_errors():
    with pytest.raises(ValueError, match="state has shape"):
        coma_critic_inputs(torch.zeros(2, 3, 5), torch.zeros(2, 4, 3, 2))
    with pytest.raises(ValueError, match="obs has shape"):
        coma_critic_inputs(torch.zeros(2, 5), torch.zeros(2, 3, 2), torch.zeros(2, 4, 1))


# -- brute force with a real critic -------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_one_critic_pass_matches_one_query_per_counterfactual_action(T, B, N, A, use_obs, seed):
    torch.manual_seed(seed)
    S, O = 3, 2
    q_real, logits, avail, actions = random_case(seed, T, B, N, A)
    state = torch.randn(T, B, S, dtype=torch.float64)
    obs = torch.randn(T, B, N, O, dtype=torch.float64) if use_obs else None
    D = S + N * A + N + (O if use_obs else 0)
    critic = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.Tanh(), torch.nn.Linear(16, A)).double()

    with torch.no_grad():
        q_all = critic(coma_critic_inputs(state, F.one_hot(actions, A), obs))        # one forward pass
        adv = coma_advantage(q_all, logits, actions, avail)
        baseline = coma_baseline(q_all, logits, avail)
        for t in range(T):
            for b in range(B):
                for a in range(N):
                    def q_joint(joint, t=t, b=b, a=a):
                        # Q_a of a full joint action: one critic call, then read a's own action's output.
                        x = coma_critic_input_loop(state[t, b].numpy(), joint, A, a,
                                                   obs[t, b, a].numpy() if use_obs else None)
                        return critic(torch.from_numpy(x))[joint[a]].item()

                    ref_adv, ref_base = coma_loop(q_joint, logits[t, b, a].numpy(), actions[t, b].tolist(),
                                                  avail[t, b, a].numpy(), a)
                    assert adv[t, b, a].item() == pytest.approx(ref_adv, rel=1e-9, abs=1e-9)
                    assert baseline[t, b, a].item() == pytest.approx(ref_base, rel=1e-9, abs=1e-9)


# -- permutation --------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1), st.randoms(use_true_random=False))
def test_permuting_agents_permutes_advantages(N, A, seed, rnd):
    q, logits, avail, actions = random_case(seed, N=N, A=A)
    perm = list(range(N))
    rnd.shuffle(perm)
    adv = coma_advantage(q, logits, actions, avail)
    p_adv = coma_advantage(q[..., perm, :], logits[..., perm, :], actions[..., perm], avail[..., perm, :])
    torch.testing.assert_close(p_adv, adv[..., perm])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1), st.randoms(use_true_random=False))
def test_permuting_agents_permutes_lambda_advantages(N, A, seed, rnd):
    q, logits, avail, _ = random_case(seed, N=N, A=A)
    returns = torch.randn(q.shape[:-1], generator=torch.Generator().manual_seed(seed), dtype=q.dtype)
    perm = list(range(N))
    rnd.shuffle(perm)
    adv = coma_lambda_advantage(returns, q, logits, avail)
    p_adv = coma_lambda_advantage(returns[..., perm], q[..., perm, :], logits[..., perm, :], avail[..., perm, :])
    torch.testing.assert_close(p_adv, adv[..., perm])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1), st.randoms(use_true_random=False))
def test_permuting_agents_permutes_critic_inputs_consistently(N, A, seed, rnd):
    # Agent i of the permuted team is agent perm[i]: its row is the original row with the
    # other-action blocks and the id columns reordered by perm.
    g = torch.Generator().manual_seed(seed)
    S, O = 2, 2
    state = torch.randn(3, S, generator=g)
    actions = torch.randint(0, A, (3, N), generator=g)
    obs = torch.randn(3, N, O, generator=g)
    perm = list(range(N))
    rnd.shuffle(perm)
    x = coma_critic_inputs(state, F.one_hot(actions, A), obs)
    x_p = coma_critic_inputs(state, F.one_hot(actions[..., perm], A), obs[..., perm, :])
    cols = (list(range(S)) + [S + j * A + u for j in perm for u in range(A)]
            + [S + N * A + j for j in perm] + list(range(S + N * A + N, S + N * A + N + O)))
    torch.testing.assert_close(x_p, x[..., perm, :][..., cols])
