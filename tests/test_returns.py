"""td_lambda, n_step and mc against hand-worked cases, slow reference loops, GAE and their properties."""
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms import (ADVANTAGES, DOP_CRITIC, Q_CRITIC, SIM_CRITIC, V_CRITIC, gae, get_advantage, mc, n_step,
                             td_lambda)
from tests.reference import mc_loop, n_step_loop, rollout_batches, td_lambda_loop

# Every estimator under one calling convention: (r, v, nv, term, trunc, gamma, lam, n) -> (adv, target).
ESTIMATORS = {
    "td_lambda": lambda r, v, nv, te, tr, gamma, lam, n: td_lambda(r, v, nv, te, tr, gamma=gamma, lam=lam),
    "n_step": lambda r, v, nv, te, tr, gamma, lam, n: n_step(r, v, nv, te, tr, gamma=gamma, n=n),
    "mc": lambda r, v, nv, te, tr, gamma, lam, n: mc(r, v, nv, te, tr, gamma=gamma),
}
REFERENCES = {
    "td_lambda": lambda r, v, nv, te, tr, gamma, lam, n: td_lambda_loop(r, v, nv, te, tr, gamma, lam),
    "n_step": lambda r, v, nv, te, tr, gamma, lam, n: n_step_loop(r, v, nv, te, tr, gamma, n),
    "mc": lambda r, v, nv, te, tr, gamma, lam, n: mc_loop(r, v, nv, te, tr, gamma),
}
names = pytest.mark.parametrize("name", list(ESTIMATORS))


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype).reshape(len(x), 1, 1)


def flags(x):
    return t(x, torch.bool)


def random_batch(seed, T=9, B=3, N=2, p_term=0.15, p_trunc=0.15):
    g = torch.Generator().manual_seed(seed)
    r, v, nv = (torch.randn(T, B, N, generator=g) for _ in range(3))
    term = torch.rand(T, B, N, generator=g) < p_term
    trunc = (torch.rand(T, B, N, generator=g) < p_trunc) & ~term
    return r, v, nv, term, trunc


# -- hand-worked T=3 cases ----------------------------------------------------------------------------
# r = [1, 2, 3], V(s_t) = [0.5, 1.0, 1.5], γ = 0.9, λ = 0.8.
R, V = [1.0, 2.0, 3.0], [0.5, 1.0, 1.5]
# Terminated at t=2: V(s_3) = 9 must be ignored.
NV_TERM, TERM, TRUNC0 = [1.0, 1.5, 9.0], [0, 0, 1], [0, 0, 0]
# Truncated at t=1 (true next value 4), a new episode at t=2 runs into the rollout end (next value 2).
NV_TRUNC, TERM0, TRUNC = [1.0, 4.0, 2.0], [0, 0, 0], [0, 1, 0]


def run_hand(fn, nv, term, trunc, **kw):
    return fn(t(R), t(V), t(nv), flags(term), flags(trunc), gamma=0.9, **kw)


def test_td_lambda_hand_worked_terminated():
    g2 = 3.0
    g1 = 2 + 0.9 * (0.2 * 1.5 + 0.8 * g2)           # 4.43
    g0 = 1 + 0.9 * (0.2 * 1.0 + 0.8 * g1)           # 4.3696
    adv, target = run_hand(td_lambda, NV_TERM, TERM, TRUNC0, lam=0.8)
    np.testing.assert_allclose(target.flatten(), [g0, g1, g2], rtol=1e-6)
    np.testing.assert_allclose(adv.flatten(), [g0 - 0.5, g1 - 1.0, g2 - 1.5], rtol=1e-6)


def test_td_lambda_hand_worked_truncated():
    g2 = 3 + 0.9 * 2.0                               # rollout end bootstraps
    g1 = 2 + 0.9 * 4.0                               # truncation bootstraps, t=2 does not leak in
    g0 = 1 + 0.9 * (0.2 * 1.0 + 0.8 * g1)
    adv, target = run_hand(td_lambda, NV_TRUNC, TERM0, TRUNC, lam=0.8)
    np.testing.assert_allclose(target.flatten(), [g0, g1, g2], rtol=1e-6)
    np.testing.assert_allclose(adv.flatten(), [g0 - 0.5, g1 - 1.0, g2 - 1.5], rtol=1e-6)


def test_n_step_hand_worked_terminated():
    _, target = run_hand(n_step, NV_TERM, TERM, TRUNC0, n=2)
    np.testing.assert_allclose(target.flatten(), [1 + 0.9 * 2 + 0.81 * 1.5, 2 + 0.9 * 3, 3], rtol=1e-6)


def test_n_step_hand_worked_truncated():
    _, target = run_hand(n_step, NV_TRUNC, TERM0, TRUNC, n=2)
    np.testing.assert_allclose(target.flatten(), [1 + 0.9 * 2 + 0.81 * 4.0, 2 + 0.9 * 4.0, 3 + 0.9 * 2.0], rtol=1e-6)


def test_mc_hand_worked_terminated_and_truncated():
    _, target = run_hand(mc, NV_TERM, TERM, TRUNC0)
    np.testing.assert_allclose(target.flatten(), [1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3], rtol=1e-6)
    _, target = run_hand(mc, NV_TRUNC, TERM0, TRUNC)
    np.testing.assert_allclose(target.flatten(), [1 + 0.9 * 2 + 0.81 * 4.0, 2 + 0.9 * 4.0, 3 + 0.9 * 2.0], rtol=1e-6)


# -- limits and identities ----------------------------------------------------------------------------
def test_td_lambda_zero_is_one_step_td_error():
    r, v, nv, term, trunc = random_batch(0, T=6, N=3, p_term=0.2)
    adv, target = td_lambda(r, v, nv, term, trunc, gamma=0.9, lam=0.0)
    np.testing.assert_allclose(adv, r + 0.9 * (~term) * nv - v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target, r + 0.9 * (~term) * nv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [lambda *x: td_lambda(*x, gamma=0.5, lam=1.0), lambda *x: mc(*x, gamma=0.5)])
def test_lambda_one_zero_values_is_discounted_return(fn):
    r = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1)
    zero = torch.zeros_like(r)
    term = flags([0, 0, 0, 1])
    adv, target = fn(r, zero, zero, term, torch.zeros_like(term))
    expected = [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4]
    np.testing.assert_allclose(target.flatten(), expected, rtol=1e-6)
    np.testing.assert_allclose(adv.flatten(), expected, rtol=1e-6)


@pytest.mark.parametrize("n", [9, 10, 100])
def test_n_step_with_n_at_least_T_is_mc(n):
    r, v, nv, term, trunc = random_batch(1)
    for a, b in zip(n_step(r, v, nv, term, trunc, gamma=0.95, n=n), mc(r, v, nv, term, trunc, gamma=0.95)):
        torch.testing.assert_close(a, b)


def test_n_step_one_is_td_lambda_zero():
    r, v, nv, term, trunc = random_batch(2)
    for a, b in zip(n_step(r, v, nv, term, trunc, gamma=0.95, n=1),
                    td_lambda(r, v, nv, term, trunc, gamma=0.95, lam=0.0)):
        torch.testing.assert_close(a, b)


def test_mc_is_td_lambda_one():
    r, v, nv, term, trunc = random_batch(3)
    for a, b in zip(mc(r, v, nv, term, trunc, gamma=0.9), td_lambda(r, v, nv, term, trunc, gamma=0.9, lam=1.0)):
        torch.testing.assert_close(a, b)


def consistent_next_value(v, nv, term, trunc):
    """``next_value[t] = value[t+1]`` wherever step t+1 continues the same episode."""
    nv = nv.clone()
    inside = ~(term | trunc)[:-1]
    nv[:-1] = torch.where(inside, v[1:], nv[:-1])
    return nv


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_td_lambda_equals_gae_with_one_critic(lam):
    r, v, nv, term, trunc = random_batch(4)
    nv = consistent_next_value(v, nv, term, trunc)
    for a, b in zip(td_lambda(r, v, nv, term, trunc, gamma=0.97, lam=lam),
                    gae(r, v, nv, term, trunc, gamma=0.97, lam=lam)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_td_lambda_differs_from_gae_with_a_separate_bootstrap_value():
    # The identity needs next_value[t] == value[t+1]; a target network breaks it (λ > 0).
    r, v, nv, term, trunc = random_batch(5, p_term=0.0, p_trunc=0.0)
    assert not torch.allclose(td_lambda(r, v, nv, term, trunc, gamma=0.9, lam=0.9)[0],
                              gae(r, v, nv, term, trunc, gamma=0.9, lam=0.9)[0])


# -- slow reference loops over a grid ----------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_td_lambda_matches_reference_loop(gamma, lam):
    batch = random_batch(int(gamma * 100 + lam * 10))
    for a, b in zip(td_lambda(*batch, gamma=gamma, lam=lam), td_lambda_loop(*batch, gamma, lam)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 20])
def test_n_step_matches_reference_loop(gamma, n):
    batch = random_batch(int(gamma * 100 + n))
    for a, b in zip(n_step(*batch, gamma=gamma, n=n), n_step_loop(*batch, gamma, n)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99, 1.0])
def test_mc_matches_reference_loop(gamma):
    batch = random_batch(int(gamma * 1000))
    for a, b in zip(mc(*batch, gamma=gamma), mc_loop(*batch, gamma)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- truncation, padding, broadcasting and errors -----------------------------------------------------
@names
def test_infinite_horizon_value_under_truncation(name):
    # Reward 1 forever, cut by a time limit: with V = 1/(1-γ) the target is V only if truncation bootstraps.
    fn = ESTIMATORS[name]
    gamma, T = 0.9, 5
    v_true = 1.0 / (1.0 - gamma)
    r, v = torch.ones(T, 1, 1), torch.full((T, 1, 1), v_true)
    end = torch.zeros(T, 1, 1, dtype=torch.bool)
    end[-1] = True
    _, target = fn(r, v, v, torch.zeros_like(end), end, gamma, 0.95, 3)
    np.testing.assert_allclose(target, v_true, rtol=1e-5)
    adv_wrong, _ = fn(r, v, v, end, torch.zeros_like(end), gamma, 0.95, 3)
    assert adv_wrong[-1].item() == pytest.approx(-gamma * v_true, rel=1e-5)   # the negative control


@names
def test_junk_value_after_termination_does_not_leak(name):
    fn = ESTIMATORS[name]
    r, v, nv, term, trunc = random_batch(6, p_term=0.3)
    junk = nv.clone()
    junk[term] = float("nan")
    adv, target = fn(r, v, junk, term, trunc, 0.9, 0.8, 3)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv, fn(r, v, nv, term, trunc, 0.9, 0.8, 3)[0])


@names
def test_team_reward_and_flags_broadcast_to_agents(name):
    fn = ESTIMATORS[name]
    g = torch.Generator().manual_seed(7)
    T, B, N = 4, 2, 3
    r = torch.randn(T, B, 1, generator=g)
    v, nv = torch.randn(T, B, N, generator=g), torch.randn(T, B, N, generator=g)
    term = torch.rand(T, B, 1, generator=g) < 0.3
    trunc = (torch.rand(T, B, 1, generator=g) < 0.3) & ~term
    adv, target = fn(r, v, nv, term, trunc, 0.9, 0.9, 2)
    adv_full, target_full = fn(r.expand(T, B, N), v, nv, term.expand(T, B, N), trunc.expand(T, B, N), 0.9, 0.9, 2)
    assert adv.shape == (T, B, N)
    torch.testing.assert_close(adv, adv_full)
    torch.testing.assert_close(target, target_full)


@names
def test_empty_rollout(name):
    z = torch.zeros(0, 2, 3)
    f = torch.zeros(0, 2, 3, dtype=torch.bool)
    adv, target = ESTIMATORS[name](torch.zeros(0, 2, 1), z, z, f, f, 0.9, 0.9, 3)
    assert adv.shape == target.shape == (0, 2, 3)


@names
def test_shape_mismatch_names_both_shapes(name):
    fn = ESTIMATORS[name]
    good = torch.zeros(4, 2, 3)
    f = torch.zeros(4, 2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"reward has shape \(4, 2, 2\), expected \(4, 2, 3\)"):
        fn(torch.zeros(4, 2, 2), good, good, f, f, 0.9, 0.9, 2)
    with pytest.raises(ValueError, match=r"truncated has shape \(4, 3\)"):
        fn(good, good, good, f, torch.zeros(4, 3, dtype=torch.bool), 0.9, 0.9, 2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_n_step_rejects_bad_n(bad):
    z = torch.zeros(3, 1, 1)
    f = torch.zeros(3, 1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        n_step(z, z, z, f, f, gamma=0.9, n=bad)


# -- registry -----------------------------------------------------------------------------------------
ALGO = SimpleNamespace(gamma=0.9, lam=0.8, n_step=3)


@pytest.mark.parametrize("name", list(ADVANTAGES))
def test_registry_entries_resolve_their_config_fields(name):
    spec = get_advantage(name)
    assert spec.critic in (V_CRITIC, Q_CRITIC, DOP_CRITIC, SIM_CRITIC)
    assert spec.description and "\n" not in spec.description
    kw = spec.kwargs(ALGO)
    assert set(kw) == {k for k, _ in spec.params}
    if not (spec.critic.over_actions or spec.critic.simulates):
        sig = inspect.signature(spec.fn)
        assert set(kw) == {p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY}
        adv, target = spec.fn(*random_batch(8, T=5), **kw)
        assert adv.shape == target.shape == (5, 3, 2)
    else:   # a Q, DOP or re-simulating module: the params are the keywords of its targets' rule (td_lambda)
        assert spec.critic.targets is td_lambda
        assert set(kw) == {"gamma", "lam"}


def test_registry_maps_n_to_the_n_step_field():
    spec = get_advantage("n_step")
    assert spec.kwargs(ALGO) == {"gamma": 0.9, "n": 3}
    with pytest.raises(AttributeError, match="'n_step'"):
        spec.kwargs(SimpleNamespace(gamma=0.9, lam=0.8))
    assert get_advantage("coma").fn.__name__ == "coma"
    assert get_advantage("coma_lambda").fn.__name__ == "coma_lambda"
    assert get_advantage("shapley").fn_kwargs(SimpleNamespace(shapley_samples=8)) == {"n_samples": 8}
    assert get_advantage("shapley").fields == {"gamma", "lam", "shapley_samples"}


# -- properties ---------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(ESTIMATORS)), rollout_batches(7, 2, 3, with_n=True))
def test_property_matches_reference(name, batch):
    for a, b in zip(ESTIMATORS[name](*batch), REFERENCES[name](*batch)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(rollout_batches(7, 2, 3, with_n=True))
def test_property_td_lambda_equals_gae_with_one_critic(batch):
    r, v, nv, term, trunc, gamma, lam, _ = batch
    nv = consistent_next_value(v, nv, term, trunc)
    for a, b in zip(td_lambda(r, v, nv, term, trunc, gamma=gamma, lam=lam),
                    gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(list(ESTIMATORS)), rollout_batches(7, 2, 3, with_n=True), st.integers(0, 6))
def test_property_split_at_episode_boundary(name, batch, cut):
    # Two halves computed separately equal one pass, when the first half ends an episode.
    fn = ESTIMATORS[name]
    r, v, nv, term, trunc, *knobs = batch
    cut = min(cut, r.shape[0] - 1)
    trunc = trunc.clone()
    trunc[cut] |= ~term[cut]
    whole = fn(r, v, nv, term, trunc, *knobs)
    head = fn(*(x[:cut + 1] for x in (r, v, nv, term, trunc)), *knobs)
    tail = fn(*(x[cut + 1:] for x in (r, v, nv, term, trunc)), *knobs)
    for w, h, tl in zip(whole, head, tail):
        torch.testing.assert_close(w, torch.cat([h, tl]), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(ESTIMATORS)), rollout_batches(7, 2, 3, with_n=True), st.randoms(use_true_random=False))
def test_property_agent_permutation_equivariance(name, batch, rnd):
    fn = ESTIMATORS[name]
    r, v, nv, term, trunc, *knobs = batch
    perm = list(range(r.shape[-1]))
    rnd.shuffle(perm)
    out = fn(r, v, nv, term, trunc, *knobs)
    p_out = fn(*(x[..., perm] for x in (r, v, nv, term, trunc)), *knobs)
    for o, p in zip(out, p_out):
        torch.testing.assert_close(p, o[..., perm])


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(ESTIMATORS)), rollout_batches(7, 2, 3, with_n=True))
def test_property_truncation_bootstraps_termination_does_not(name, batch):
    # Relabelling terminations as truncations adds exactly γ·V(s_{t+1}) to the target at those steps.
    fn = ESTIMATORS[name]
    r, v, nv, term, trunc, gamma, lam, n = batch
    _, target_term = fn(r, v, nv, term, trunc, gamma, lam, n)
    _, target_trunc = fn(r, v, nv, torch.zeros_like(term), trunc | term, gamma, lam, n)
    torch.testing.assert_close(target_trunc[term], target_term[term] + gamma * nv[term], rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(ESTIMATORS)), rollout_batches(7, 2, 3, with_n=True))
def test_property_steps_after_an_end_do_not_leak_backwards(name, batch):
    fn = ESTIMATORS[name]
    r, v, nv, term, trunc, *knobs = batch
    ends = (term | trunc).any(-1).any(-1)
    if not ends.any():
        return
    first = int(ends.nonzero()[0])
    adv, _ = fn(r, v, nv, term, trunc, *knobs)
    r2, v2, nv2 = r.clone(), v.clone(), nv.clone()
    r2[first + 1:] += 100.0
    v2[first + 1:] -= 50.0
    nv2[first + 1:] += 25.0
    ended = (term | trunc)[first]
    adv2, _ = fn(r2, v2, nv2, term, trunc, *knobs)
    torch.testing.assert_close(adv2[first][ended], adv[first][ended])
