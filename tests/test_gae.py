"""GAE against hand-worked cases, a slow reference loop and its defining properties."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms import broadcast_agents, gae
from tests.reference import gae_loop, rollout_batches


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype).reshape(len(x), 1, 1)


def flags(x):
    return t(x, torch.bool)


def test_hand_worked_three_steps_terminated():
    # r = [1, 2, 3], V(s_t) = [0.5, 1.0, 1.5], V(s_{t+1}) = [1.0, 1.5, 9.0], episode terminates at t=2.
    gamma, lam = 0.9, 0.8
    r, v, nv = t([1, 2, 3]), t([0.5, 1.0, 1.5]), t([1.0, 1.5, 9.0])
    adv, target = gae(r, v, nv, flags([0, 0, 1]), flags([0, 0, 0]), gamma=gamma, lam=lam)
    d2 = 3 - 1.5                          # no bootstrap after a termination: V(terminal) is ignored
    d1 = 2 + 0.9 * 1.5 - 1.0
    d0 = 1 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    np.testing.assert_allclose(adv.flatten(), [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(target.flatten(), [a0 + 0.5, a1 + 1.0, a2 + 1.5], rtol=1e-6)


def test_truncation_bootstraps_and_termination_does_not():
    r, v, nv = t([1.0]), t([0.0]), t([10.0])
    adv_trunc, _ = gae(r, v, nv, flags([0]), flags([1]), gamma=0.5, lam=0.9)
    adv_term, _ = gae(r, v, nv, flags([1]), flags([0]), gamma=0.5, lam=0.9)
    assert adv_trunc.item() == pytest.approx(1.0 + 0.5 * 10.0)
    assert adv_term.item() == pytest.approx(1.0)


def test_trace_is_cut_at_truncation_but_value_bootstraps():
    # Episode 1 is truncated at t=0 (true next value 4); episode 2 starts at t=1.
    r, v, nv = t([1.0, 100.0]), t([0.0, 0.0]), t([4.0, 0.0])
    adv, _ = gae(r, v, nv, flags([0, 0]), flags([1, 0]), gamma=1.0, lam=1.0)
    assert adv[0].item() == pytest.approx(5.0)    # not 1 + 100: the next episode does not leak in


def test_lambda_zero_is_one_step_td_error():
    g = torch.Generator().manual_seed(0)
    r, v, nv = (torch.randn(6, 2, 3, generator=g) for _ in range(3))
    term = torch.rand(6, 2, 3, generator=g) < 0.2
    trunc = torch.zeros_like(term)
    adv, _ = gae(r, v, nv, term, trunc, gamma=0.9, lam=0.0)
    np.testing.assert_allclose(adv, r + 0.9 * (~term) * nv - v, rtol=1e-5, atol=1e-6)


def test_lambda_one_zero_values_is_discounted_return():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1)
    zero = torch.zeros_like(r)
    term = flags([0, 0, 0, 1])
    adv, target = gae(r, zero, zero, term, torch.zeros_like(term), gamma=0.5, lam=1.0)
    expected = [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4]
    np.testing.assert_allclose(target.flatten(), expected, rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_matches_reference_loop_over_grid(gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    T, B, N = 9, 3, 2
    r, v, nv = (torch.randn(T, B, N, generator=g) for _ in range(3))
    term = torch.rand(T, B, N, generator=g) < 0.15
    trunc = (torch.rand(T, B, N, generator=g) < 0.15) & ~term
    adv, target = gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)
    ref_adv, ref_target = gae_loop(r.numpy(), v.numpy(), nv.numpy(), term.numpy(), trunc.numpy(), gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(target, ref_target, rtol=1e-4, atol=1e-5)


def test_infinite_horizon_value_under_truncation():
    # A constant reward of 1 forever, cut by a time limit: with V = 1/(1-γ) everywhere the
    # advantage is 0 only if the truncation bootstraps. Treating it as termination is wrong by γV.
    gamma, T = 0.9, 5
    v_true = 1.0 / (1.0 - gamma)
    r, v = torch.ones(T, 1, 1), torch.full((T, 1, 1), v_true)
    end = torch.zeros(T, 1, 1, dtype=torch.bool)
    end[-1] = True
    adv, target = gae(r, v, v, torch.zeros_like(end), end, gamma=gamma, lam=0.95)
    np.testing.assert_allclose(target, v_true, rtol=1e-5)
    adv_wrong, _ = gae(r, v, v, end, torch.zeros_like(end), gamma=gamma, lam=0.95)
    assert adv_wrong[-1].item() == pytest.approx(-gamma * v_true, rel=1e-5)   # the negative control


def test_team_reward_and_flags_broadcast_to_agents():
    g = torch.Generator().manual_seed(1)
    T, B, N = 4, 2, 3
    r = torch.randn(T, B, 1, generator=g)
    v, nv = torch.randn(T, B, N, generator=g), torch.randn(T, B, N, generator=g)
    done = torch.rand(T, B, 1, generator=g) < 0.3
    adv, _ = gae(r, v, nv, done, torch.zeros_like(done), gamma=0.9, lam=0.9)
    adv_full, _ = gae(r.expand(T, B, N), v, nv, done.expand(T, B, N), torch.zeros(T, B, N, dtype=torch.bool),
                      gamma=0.9, lam=0.9)
    torch.testing.assert_close(adv, adv_full)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"reward has shape \(4, 2, 2\), expected \(4, 2, 3\)"):
        gae(torch.zeros(4, 2, 2), torch.zeros(4, 2, 3), torch.zeros(4, 2, 3),
            torch.zeros(4, 2, 3, dtype=torch.bool), torch.zeros(4, 2, 3, dtype=torch.bool), gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match="next_value"):
        broadcast_agents(torch.zeros(3, 1), torch.zeros(3, 1, 2), "next_value")


@settings(max_examples=60, deadline=None)
@given(rollout_batches())
def test_property_matches_reference(batch):
    r, v, nv, term, trunc, gamma, lam = batch
    adv, _ = gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)
    ref, _ = gae_loop(r.numpy(), v.numpy(), nv.numpy(), term.numpy(), trunc.numpy(), gamma, lam)
    np.testing.assert_allclose(adv, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(rollout_batches(), st.integers(0, 7))
def test_property_split_at_episode_boundary(batch, cut):
    # Computing the two halves separately equals one pass, when the first half ends an episode.
    r, v, nv, term, trunc, gamma, lam = batch
    T = r.shape[0]
    cut = min(cut, T - 1)
    trunc = trunc.clone()
    trunc[cut] |= ~term[cut]
    adv, _ = gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)
    head, _ = gae(r[:cut + 1], v[:cut + 1], nv[:cut + 1], term[:cut + 1], trunc[:cut + 1], gamma=gamma, lam=lam)
    tail, _ = gae(r[cut + 1:], v[cut + 1:], nv[cut + 1:], term[cut + 1:], trunc[cut + 1:], gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, torch.cat([head, tail]), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(rollout_batches(), st.randoms(use_true_random=False))
def test_property_agent_permutation_equivariance(batch, rnd):
    r, v, nv, term, trunc, gamma, lam = batch
    perm = list(range(r.shape[-1]))
    rnd.shuffle(perm)
    adv, target = gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)
    p_adv, p_target = gae(r[..., perm], v[..., perm], nv[..., perm], term[..., perm], trunc[..., perm],
                          gamma=gamma, lam=lam)
    torch.testing.assert_close(p_adv, adv[..., perm])
    torch.testing.assert_close(p_target, target[..., perm])


@settings(max_examples=30, deadline=None)
@given(rollout_batches())
def test_property_steps_after_an_end_do_not_leak_backwards(batch):
    # Changing rewards after the first step that ends an episode leaves every earlier advantage as is.
    r, v, nv, term, trunc, gamma, lam = batch
    ends = (term | trunc).any(-1).any(-1)
    if not ends.any():
        return
    first = int(ends.nonzero()[0])
    adv, _ = gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)
    r2 = r.clone()
    r2[first + 1:] += 100.0
    ended = (term | trunc)[first]
    adv2, _ = gae(r2, v, nv, term, trunc, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv2[first][ended], adv[first][ended])
