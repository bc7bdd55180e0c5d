"""Shapley credit: exact values and the axioms, the ordering estimator, coalition sampling, and the
Shapley counterfactual advantage against hand-worked cases, COMA and brute-force marginalisation."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms.coma import coma_advantage, coma_critic_inputs, coma_lambda_advantage
from marl.algorithms.shapley import (all_coalitions, coalition_joint_actions, coalitions_from_permutations,
                                exact_shapley, permutation_shapley, sample_actions, sample_coalitions,
                                shapley_advantage, shapley_critic_inputs, shapley_credit,
                                shapley_lambda_advantage)

seeds = st.integers(0, 2**31 - 1)


def random_game(seed, N, batch=()):
    """A random characteristic function ``[*batch, 2**N]`` in float64."""
    return torch.randn(*batch, 2 ** N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mask(agents):
    return sum(1 << j for j in agents)


def shapley_loop(values, N):
    """Shapley values by enumerating, for each agent, every coalition of the others (pure Python)."""
    values = [float(v) for v in values]
    phi = []
    for i in range(N):
        others = [j for j in range(N) if j != i]
        total = 0.0
        for size in range(N):
            weight = math.factorial(size) * math.factorial(N - size - 1) / math.factorial(N)
            for coalition in itertools.combinations(others, size):
                total += weight * (values[mask(coalition) | 1 << i] - values[mask(coalition)])
        phi.append(total)
    return phi


def random_policy_case(seed, lead=(2, 2), M=3, N=3, A=4, p_unavail=0.3, dtype=torch.float64):
    """Random q_all ``[*lead, M, N, A]``, logits, avail (≥ 1 available per agent) and available actions."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, M, N, A, generator=g, dtype=dtype)
    logits = 2 * torch.randn(*lead, N, A, generator=g, dtype=dtype)
    avail = torch.rand(*lead, N, A, generator=g) >= p_unavail
    avail[..., 0] |= ~avail.any(-1)
    actions = (avail.to(dtype) * torch.rand(*lead, N, A, generator=g, dtype=dtype)).argmax(-1)
    return q, logits, avail, actions


# -- exact Shapley values -----------------------------------------------------------------------------
def test_exact_hand_worked_two_players():
    # v(∅)=0, v({0})=1, v({1})=2, v({0,1})=6: each player joins first or second with probability 1/2.
    values = torch.tensor([0.0, 1.0, 2.0, 6.0], dtype=torch.float64)
    np.testing.assert_allclose(exact_shapley(values), [0.5 * 1 + 0.5 * (6 - 2), 0.5 * 2 + 0.5 * (6 - 1)])


def test_exact_hand_worked_glove_game():
    # Player 0 holds a left glove, players 1 and 2 a right glove; a coalition is worth 1 if it has a pair.
    # Player 0 completes a pair unless it comes first (prob 2/3); player 1 only when it follows 0 and
    # precedes 2, i.e. in the single ordering (0, 1, 2): 1/6.
    values = torch.tensor([float(c & 1 and bool(c & 6)) for c in range(8)], dtype=torch.float64)
    np.testing.assert_allclose(exact_shapley(values), [2 / 3, 1 / 6, 1 / 6], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), seeds)
def test_exact_matches_enumeration(N, seed):
    values = random_game(seed, N, batch=(2, 3))
    phi = exact_shapley(values)
    assert phi.shape == (2, 3, N) and phi.dtype == torch.float64
    for index in itertools.product(range(2), range(3)):
        np.testing.assert_allclose(phi[index], shapley_loop(values[index], N), rtol=1e-10, atol=1e-12)


def test_exact_with_one_player_is_its_own_gain():
    np.testing.assert_allclose(exact_shapley(torch.tensor([2.0, 5.0])), [3.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), seeds)
def test_axiom_efficiency(N, seed):
    values = random_game(seed, N, batch=(4,))
    torch.testing.assert_close(exact_shapley(values).sum(-1), values[..., -1] - values[..., 0])


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 5), seeds, st.data())
def test_axiom_symmetry(N, seed, data):
    # Symmetrise a random game in players p and q: they become interchangeable, so they get the same value.
    p, q = data.draw(st.lists(st.integers(0, N - 1), min_size=2, max_size=2, unique=True))
    values = random_game(seed, N)
    swap = [c & ~(1 << p | 1 << q) | ((c >> p) & 1) << q | ((c >> q) & 1) << p for c in range(2 ** N)]
    symmetric = (values + values[swap]) / 2
    phi = exact_shapley(symmetric)
    assert phi[p].item() == pytest.approx(phi[q].item(), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), seeds, st.data())
def test_axiom_null_player_the_lazy_agent_gets_zero(N, seed, data):
    # v(S) ignores whether the lazy agent d is in S: it never changes the outcome, so it gets 0.
    d = data.draw(st.integers(0, N - 1))
    values = random_game(seed, N)
    lazy = values[[c & ~(1 << d) for c in range(2 ** N)]]
    phi = exact_shapley(lazy)
    assert phi[d].item() == pytest.approx(0.0, abs=1e-12)
    # The others split everything, as in the game without d.
    assert phi.sum().item() == pytest.approx((lazy[-1] - lazy[0]).item(), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), seeds, st.data(), st.floats(-3, 3))
def test_axiom_dummy_player_gets_its_standalone_gain(N, seed, data, gain):
    # A dummy adds the same amount to every coalition; its value is exactly that amount.
    d = data.draw(st.integers(0, N - 1))
    values = random_game(seed, N)
    dummy = values[[c & ~(1 << d) for c in range(2 ** N)]] + gain * torch.tensor(
        [(c >> d) & 1 for c in range(2 ** N)], dtype=torch.float64)
    assert exact_shapley(dummy)[d].item() == pytest.approx(gain, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), seeds, st.floats(-5, 5), st.floats(-5, 5))
def test_axiom_linearity(N, seed, a, b):
    v, w = random_game(seed, N, batch=(2,))
    torch.testing.assert_close(exact_shapley(a * v + b * w), a * exact_shapley(v) + b * exact_shapley(w))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), seeds, st.randoms(use_true_random=False))
def test_exact_relabelling_agents_permutes_values(N, seed, rnd):
    # New agent k is old agent perm[k]: new coalition c holds old agents {perm[k] : bit k of c}.
    perm = list(range(N))
    rnd.shuffle(perm)
    values = random_game(seed, N)
    relabelled = values[[mask(perm[k] for k in range(N) if c >> k & 1) for c in range(2 ** N)]]
    torch.testing.assert_close(exact_shapley(relabelled), exact_shapley(values)[perm])


def test_exact_errors():
    with pytest.raises(ValueError, match=r"values has shape \(3, 6\), expected \[..., 2\*\*N\]"):
        exact_shapley(torch.zeros(3, 6))
    with pytest.raises(TypeError, match="floating-point"):
        exact_shapley(torch.zeros(4, dtype=torch.long))


# -- the ordering estimator ---------------------------------------------------------------------------
def test_coalitions_from_permutations_hand_worked():
    # Ordering (2, 0, 1): agent 2 joins ∅, agent 0 joins {2}, agent 1 joins {2, 0}.
    c = coalitions_from_permutations(torch.tensor([[2, 0, 1]]))
    expected = torch.tensor([[[False, False, True], [True, False, True], [False, False, False]]])
    assert c.dtype == torch.bool
    torch.testing.assert_close(c, expected)


def test_coalitions_from_permutations_rejects_non_permutations():
    with pytest.raises(ValueError, match="permutation of 0..2"):
        coalitions_from_permutations(torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match=r"perms has shape \(3,\)"):
        coalitions_from_permutations(torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        coalitions_from_permutations(torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5])
def test_all_coalitions_enumerates_every_ordering_once(N):
    c = all_coalitions(N)
    assert c.shape == (math.factorial(N), N, N)
    # An ordering is determined by each agent's coalition size (its position).
    positions = {tuple(row) for row in c.sum(-1).tolist()}
    assert len(positions) == math.factorial(N)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), seeds)
def test_estimator_over_all_orderings_is_exact(N, seed):
    values = random_game(seed, N, batch=(3,))
    torch.testing.assert_close(permutation_shapley(values, all_coalitions(N)), exact_shapley(values))


def per_ordering_std(values, N):
    """Exact per-agent standard deviation of a single ordering's marginal contribution."""
    c = all_coalitions(N)
    gains = torch.stack([permutation_shapley(values, c[m:m + 1]) for m in range(len(c))])
    return gains.std(0, unbiased=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimator_is_unbiased(seed):
    # The mean of many independent one-ordering estimates is within 5 standard errors of exact.
    N, K = 4, 4000
    values = random_game(seed, N)
    g = torch.Generator().manual_seed(seed)
    single = torch.stack([permutation_shapley(values, sample_coalitions(N, 1, g)) for _ in range(K)])
    error = (single.mean(0) - exact_shapley(values)).abs()
    assert (error <= 5 * per_ordering_std(values, N) / math.sqrt(K) + 1e-12).all()


def test_estimator_converges_to_exact_as_M_grows():
    N = 5
    errors = []
    for M in (10, 100, 1000, 10000):
        worst = 0.0
        for seed in range(5):
            values = random_game(seed, N)
            estimate = permutation_shapley(values, sample_coalitions(N, M, torch.Generator().manual_seed(seed)))
            error = (estimate - exact_shapley(values)).abs()
            assert (error <= 5 * per_ordering_std(values, N) / math.sqrt(M) + 1e-12).all()
            worst = max(worst, error.max().item())
        errors.append(worst)
    assert errors[-1] < errors[0] / 10


def test_estimator_errors():
    values = random_game(0, 3)
    with pytest.raises(ValueError, match=r"coalitions has shape \(2, 4, 4\), expected \('M', 3, 3\)"):
        permutation_shapley(values, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        permutation_shapley(values, torch.zeros(2, 3, 3))


# -- coalition sampling -------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 7), st.integers(1, 20), seeds)
def test_sampled_coalitions_are_prefixes_of_orderings(N, M, seed):
    c = sample_coalitions(N, M, torch.Generator().manual_seed(seed))
    assert c.shape == (M, N, N) and c.dtype == torch.bool
    eye = torch.eye(N, dtype=torch.bool)
    assert not c[:, eye].any()                                       # never in its own coalition
    # "j precedes i" is a strict total order: exactly one of (i, j), (j, i) off the diagonal...
    assert ((c ^ c.transpose(1, 2)) == ~eye).all()
    # ...and transitive: k precedes j and j precedes i imply k precedes i.
    implied = (c.unsqueeze(-1) & c.unsqueeze(1)).any(2)             # [m, i, k] = ∃j: j<i and k<j
    assert not (implied & ~c).any()
    # So it is the prefix structure of the ordering recovered from the coalition sizes.
    perms = torch.argsort(c.sum(-1), dim=1)
    torch.testing.assert_close(coalitions_from_permutations(perms), c)


def test_sampled_coalitions_are_reproducible():
    a = sample_coalitions(5, 8, torch.Generator().manual_seed(3))
    b = sample_coalitions(5, 8, torch.Generator().manual_seed(3))
    c = sample_coalitions(5, 8, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_sampled_orderings_are_uniform():
    # 6 orderings of 3 agents, 6000 draws: each within ±15% (≈ 5 standard deviations) of 1000.
    c = sample_coalitions(3, 6000, torch.Generator().manual_seed(0))
    _, counts = torch.unique(c.sum(-1), dim=0, return_counts=True)
    assert len(counts) == 6
    assert ((counts - 1000).abs() < 150).all()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_sample_coalitions_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="n_agents must be an int >= 1"):
        sample_coalitions(bad, 3)
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        sample_coalitions(3, bad)


# -- coalition joint actions and critic inputs --------------------------------------------------------
def test_coalition_joint_actions_hand_worked():
    actions = torch.tensor([[1, 2, 0]])                              # [T=1, N=3]
    resampled = torch.tensor([[[3, 4, 5], [6, 7, 8]]])               # [T=1, M=2, N=3]
    coalitions = coalitions_from_permutations(torch.tensor([[2, 0, 1], [0, 1, 2]]))
    joints = coalition_joint_actions(actions, resampled, coalitions)
    expected = torch.tensor([[
        # ordering (2, 0, 1)
        [[1, 4, 0],    # agent 0 joins {2}: own action, 1 resampled, 2 taken
         [1, 2, 0],    # agent 1 joins {2, 0}: all taken
         [3, 4, 0]],   # agent 2 joins ∅: the others resampled
        # ordering (0, 1, 2)
        [[1, 7, 8],
         [1, 2, 8],
         [1, 2, 0]],
    ]])
    assert joints.dtype == torch.long
    torch.testing.assert_close(joints, expected)


def test_coalition_joint_actions_errors():
    actions = torch.zeros(4, 3, dtype=torch.long)
    c = sample_coalitions(3, 2)
    with pytest.raises(ValueError, match=r"resampled has shape \(4, 3\), expected \(4, 2, 3\)"):
        coalition_joint_actions(actions, torch.zeros(4, 3, dtype=torch.long), c)
    with pytest.raises(ValueError, match=r"coalitions has shape \(2, 2, 2\), expected \('M', 3, 3\)"):
        coalition_joint_actions(actions, torch.zeros(4, 2, 3, dtype=torch.long), sample_coalitions(2, 2))
    with pytest.raises(TypeError, match="actions must be an integer"):
        coalition_joint_actions(actions.float(), torch.zeros(4, 2, 3, dtype=torch.long), c)
    with pytest.raises(TypeError, match="resampled must be an integer"):
        coalition_joint_actions(actions, torch.zeros(4, 2, 3), c)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.booleans(), seeds)
def test_critic_inputs_are_comas_rows_for_each_coalition_joint(N, A, M, use_obs, seed):
    g = torch.Generator().manual_seed(seed)
    T, B, S, O = 2, 2, 3, 2
    state = torch.randn(T, B, S, generator=g)
    obs = torch.randn(T, B, N, O, generator=g) if use_obs else None
    joints = torch.randint(0, A, (T, B, M, N, N), generator=g)
    x = shapley_critic_inputs(state, joints, A, obs)
    assert x.shape == (T, B, M, N, S + N * A + N + (O if use_obs else 0))
    for m in range(M):
        for i in range(N):
            coma = coma_critic_inputs(state, F.one_hot(joints[:, :, m, i], A), obs)
            torch.testing.assert_close(x[:, :, m, i], coma[:, :, i])


def test_critic_inputs_errors():
    joints = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"state has shape \(3, 5\)"):
        shapley_critic_inputs(torch.zeros(3, 5), joints, 2)
    with pytest.raises(ValueError, match=r"joints has shape \(2, 3, 4\)"):
        shapley_critic_inputs(torch.zeros(5), torch.zeros(2, 3, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="obs has shape"):
        shapley_critic_inputs(torch.zeros(2, 5), joints, 2, torch.zeros(2, 3, 1))


# -- resampling the agents outside a coalition --------------------------------------------------------
def test_sample_actions_follow_the_masked_policy():
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [math.log(3), math.nan, 0.0]])   # [N=2, A=3]
    avail = torch.tensor([[True, True, True], [True, False, True]])
    draws = sample_actions(logits, 20000, avail, torch.Generator().manual_seed(0))
    assert draws.shape == (20000, 2) and draws.dtype == torch.long
    assert not (draws[:, 1] == 1).any()
    freq = torch.stack([F.one_hot(draws[:, i], 3).double().mean(0) for i in range(2)])
    np.testing.assert_allclose(freq, [[0.25, 0.25, 0.5], [0.75, 0.0, 0.25]], atol=0.02)


def test_sample_actions_shape_and_reproducibility():
    logits = torch.randn(4, 2, 3, 5, generator=torch.Generator().manual_seed(0))
    a = sample_actions(logits, 7, generator=torch.Generator().manual_seed(1))
    b = sample_actions(logits, 7, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 2, 7, 3)
    torch.testing.assert_close(a, b)


def test_sample_actions_errors():
    with pytest.raises(ValueError, match="no available action"):
        sample_actions(torch.zeros(2, 3), 4, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        sample_actions(torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match=r"logits has shape \(3,\)"):
        sample_actions(torch.zeros(3), 4)


# -- the Shapley counterfactual advantage -------------------------------------------------------------
def test_advantage_hand_worked():
    # Two orderings, two agents, two actions; agent 0 took 1 under π = [1/2, 1/2], agent 1 took 0
    # under π = [3/4, 1/4].
    q = torch.tensor([[[1.0, 3.0], [2.0, 0.0]],          # ordering 0: Q of agent 0, of agent 1
                      [[3.0, 5.0], [4.0, 4.0]]])         # ordering 1
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    adv = shapley_advantage(q.reshape(1, 2, 2, 2), logits.reshape(1, 2, 2), torch.tensor([[1, 0]]))
    # agent 0: (3 − 2) and (5 − 4) → 1; agent 1: (2 − 1.5) and (4 − 4) → 0.25
    np.testing.assert_allclose(adv.flatten(), [1.0, 0.25], rtol=1e-6)


def q_of_game(game, joints):
    """Critic stand-in that knows the payoff: Q[..., m, i, a] = G(joints[..., m, i, :] with i's action a)."""
    *lead, M, N, _ = joints.shape
    A = game.shape[0]
    idx = joints.unsqueeze(-2).expand(*lead, M, N, A, N).clone()
    own = torch.arange(A).expand(*lead, M, N, A)
    for i in range(N):
        idx[..., i, :, i] = own[..., i, :]
    return game[tuple(idx.unbind(-1))]


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), seeds)
def test_advantage_is_coma_when_every_coalition_is_all_others(N, A, M, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    T, B, S = 2, 2, 3
    state = torch.randn(T, B, S, generator=g, dtype=torch.float64)
    logits = torch.randn(T, B, N, A, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (T, B, N), generator=g)
    critic = torch.nn.Sequential(torch.nn.Linear(S + N * A + N, 16), torch.nn.Tanh(), torch.nn.Linear(16, A)).double()
    everyone = (~torch.eye(N, dtype=torch.bool)).expand(M, N, N)
    joints = coalition_joint_actions(actions, sample_actions(logits, M, generator=g), everyone)
    with torch.no_grad():
        adv = shapley_advantage(critic(shapley_critic_inputs(state, joints, A)), logits, actions)
        coma = coma_advantage(critic(coma_critic_inputs(state, F.one_hot(actions, A))), logits, actions)
    torch.testing.assert_close(adv, coma)


def test_lambda_advantage_hand_worked():
    # The case above, with Q(s, u) = 4 for agent 0's row and 2 for agent 1's, and a λ-return of 6:
    # agent 0: 6 − 4 + 1 = 3; agent 1: 6 − 2 + 0.25 = 4.25.
    q = torch.tensor([[[1.0, 3.0], [2.0, 0.0]], [[3.0, 5.0], [4.0, 4.0]]]).reshape(1, 2, 2, 2)
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]).reshape(1, 2, 2)
    adv = shapley_lambda_advantage(torch.tensor([[6.0, 6.0]]), torch.tensor([[4.0, 2.0]]), q, logits,
                                   torch.tensor([[1, 0]]))
    np.testing.assert_allclose(adv.flatten(), [3.0, 4.25], rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), seeds)
def test_lambda_advantage_is_coma_lambda_when_every_coalition_is_all_others(N, A, M, seed):
    g = torch.Generator().manual_seed(seed)
    T, B, S = 2, 2, 3
    state = torch.randn(T, B, S, generator=g, dtype=torch.float64)
    logits = torch.randn(T, B, N, A, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (T, B, N), generator=g)
    returns = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    critic = torch.nn.Sequential(torch.nn.Linear(S + N * A + N, 16), torch.nn.Tanh(), torch.nn.Linear(16, A)).double()
    everyone = (~torch.eye(N, dtype=torch.bool)).expand(M, N, N)
    joints = coalition_joint_actions(actions, sample_actions(logits, M, generator=g), everyone)
    with torch.no_grad():
        q_coma = critic(coma_critic_inputs(state, F.one_hot(actions, A)))
        q_taken = q_coma.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        adv = shapley_lambda_advantage(returns, q_taken, critic(shapley_critic_inputs(state, joints, A)), logits,
                                       actions)
    torch.testing.assert_close(adv, coma_lambda_advantage(returns, q_coma, logits))


def test_credit_pipeline_with_returns_adds_the_shared_return_error():
    g = torch.Generator().manual_seed(0)
    T, B, N, A, S, M = 3, 2, 3, 4, 5, 6
    state = torch.randn(T, B, S, generator=g, dtype=torch.float64)
    logits = torch.randn(T, B, N, A, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (T, B, N), generator=g)
    returns, q_taken = torch.randn(2, T, B, N, generator=g, dtype=torch.float64)
    critic = torch.nn.Sequential(torch.nn.Linear(S + N * A + N, 16), torch.nn.Tanh(), torch.nn.Linear(16, A)).double()
    with torch.no_grad():
        plain = shapley_credit(critic, state, logits, actions, None, M, torch.Generator().manual_seed(1))
        with_returns = shapley_credit(critic, state, logits, actions, None, M, torch.Generator().manual_seed(1),
                                      returns=returns, q_taken=q_taken)
    torch.testing.assert_close(with_returns, plain + returns - q_taken)


def marginalised_q(game, pi, actions, coalitions):
    """Q[m, i, a] = E_{u_j ~ π_j, j ∉ C_{m,i} ∪ {i}} G(u_C taken, u_i = a, u_outside), by enumeration."""
    M, N, _ = coalitions.shape
    A = game.shape[0]
    q = np.zeros((M, N, A))
    for m in range(M):
        for i in range(N):
            outside = [j for j in range(N) if j != i and not coalitions[m, i, j]]
            for a in range(A):
                for draw in itertools.product(range(A), repeat=len(outside)):
                    joint = list(actions)
                    joint[i] = a
                    weight = 1.0
                    for j, u in zip(outside, draw):
                        joint[j] = u
                        weight *= pi[j][u]
                    q[m, i, a] += weight * game[tuple(joint)]
    return q


def policy_game_values(game, pi, actions):
    """v(C) = E_{u_j ~ π_j, j ∉ C} G(u_C taken, u_rest), for every coalition bitmask C."""
    N, A = len(actions), game.shape[0]
    values = np.zeros(2 ** N)
    for c in range(2 ** N):
        for joint in itertools.product(range(A), repeat=N):
            if all(joint[j] == actions[j] for j in range(N) if c >> j & 1):
                weight = math.prod(pi[j][joint[j]] for j in range(N) if not c >> j & 1)
                values[c] += weight * game[joint]
    return values


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), seeds)
def test_advantage_is_the_shapley_value_of_the_policy_game(N, A, seed):
    # With exact marginalisation and every ordering, the advantage is exactly the Shapley value of
    # v(C) = E_π[G | the agents in C took their actions]: its values sum to G(u) − E_π G.
    g = torch.Generator().manual_seed(seed)
    game = torch.randn(*(A,) * N, generator=g, dtype=torch.float64).numpy()
    logits = torch.randn(N, A, generator=g, dtype=torch.float64)
    pi = torch.softmax(logits, -1).numpy()
    actions = torch.randint(0, A, (N,), generator=g)
    coalitions = all_coalitions(N)
    q = torch.from_numpy(marginalised_q(game, pi, actions.tolist(), coalitions.numpy()))
    adv = shapley_advantage(q, logits, actions)
    values = torch.from_numpy(policy_game_values(game, pi, actions.tolist()))
    np.testing.assert_allclose(adv, exact_shapley(values), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(adv.sum().item(), values[-1] - values[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_pipeline_converges_to_the_shapley_value(seed):
    # Sampled orderings and resampled actions fed to a payoff-reading critic: within 5 standard
    # errors of the exact Shapley value of the policy game. Agent 2 is lazy (G ignores it): exactly 0.
    N, A, M = 3, 3, 20000
    g = torch.Generator().manual_seed(seed)
    game = torch.randn(A, A, 1, generator=g, dtype=torch.float64).expand(A, A, A)
    logits = torch.randn(N, A, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (N,), generator=g)
    joints = coalition_joint_actions(actions, sample_actions(logits, M, generator=g), sample_coalitions(N, M, g))
    q = q_of_game(game, joints)                                       # [M, N, A]
    adv = shapley_advantage(q, logits, actions)
    per_sample = q.gather(-1, actions.expand(M, N).unsqueeze(-1)).squeeze(-1) - (torch.softmax(logits, -1) * q).sum(-1)
    values = torch.from_numpy(policy_game_values(game.numpy(), torch.softmax(logits, -1).numpy(), actions.tolist()))
    exact = exact_shapley(values)
    assert ((adv - exact).abs() <= 5 * per_sample.std(0) / math.sqrt(M) + 1e-12).all()
    assert adv[2].item() == pytest.approx(0.0, abs=1e-12) and exact[2].item() == pytest.approx(0.0, abs=1e-12)


def test_agent_whose_q_ignores_its_action_gets_zero():
    q, logits, avail, actions = random_policy_case(0, M=4, N=3, A=5, p_unavail=0.0)
    q[..., 1, :] = q[..., 1, :1]                                      # varies over orderings, not actions
    adv = shapley_advantage(q, logits, actions)
    torch.testing.assert_close(adv[..., 1], torch.zeros_like(adv[..., 1]), atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), seeds)
def test_zero_mean_under_the_agents_own_policy(N, A, M, seed):
    # Q of agent i's row does not depend on i's own action, so Σ_u π_i(u) A_i(u) = 0.
    q, logits, avail, _ = random_policy_case(seed, M=M, N=N, A=A)
    floor = torch.finfo(logits.dtype).min
    pi = torch.where(avail, torch.softmax(torch.where(avail, logits, floor), -1), 0.0)
    expected = torch.zeros(q.shape[:-3] + (N,), dtype=q.dtype)
    for u in range(A):
        adv = shapley_advantage(q, logits, torch.full(q.shape[:-3] + (N,), u), avail)
        expected += torch.where(avail[..., u], pi[..., u] * adv, 0.0)
    torch.testing.assert_close(expected, torch.zeros_like(expected), atol=1e-9, rtol=0)


@pytest.mark.parametrize("junk", [math.nan, math.inf, -math.inf])
def test_unavailable_actions_do_not_leak(junk):
    q, logits, avail, actions = random_policy_case(3, p_unavail=0.5)
    clean = shapley_advantage(q, logits, actions, avail)
    q_junk = torch.where(avail.unsqueeze(-3), q, junk).requires_grad_()
    logits_junk = torch.where(avail, logits, junk).requires_grad_()
    adv = shapley_advantage(q_junk, logits_junk, actions, avail)
    torch.testing.assert_close(adv, clean)
    adv.sum().backward()
    assert torch.isfinite(q_junk.grad).all() and torch.isfinite(logits_junk.grad).all()
    assert (q_junk.grad[~avail.unsqueeze(-3).expand_as(q)] == 0).all()
    assert (logits_junk.grad[~avail] == 0).all()


def test_avail_broadcasts_from_a_static_per_agent_mask():
    q, logits, _, _ = random_policy_case(4, N=2, A=3, p_unavail=0.0)
    static = torch.tensor([[True, True, False], [True, True, True]])        # [N, A]
    actions = torch.zeros(q.shape[:-3] + (2,), dtype=torch.long)
    torch.testing.assert_close(shapley_advantage(q, logits, actions, static),
                               shapley_advantage(q, logits, actions, static.expand_as(logits).clone()))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), seeds, st.randoms(use_true_random=False))
def test_permuting_agents_permutes_advantages(N, A, seed, rnd):
    q, logits, avail, actions = random_policy_case(seed, N=N, A=A)
    perm = list(range(N))
    rnd.shuffle(perm)
    adv = shapley_advantage(q, logits, actions, avail)
    p_adv = shapley_advantage(q[..., perm, :], logits[..., perm, :], actions[..., perm], avail[..., perm, :])
    torch.testing.assert_close(p_adv, adv[..., perm])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), seeds, st.randoms(use_true_random=False))
def test_permuting_agents_permutes_coalition_joints(N, M, seed, rnd):
    # Relabel agents: new agent k is old agent perm[k], in actions, resampled and both coalition axes.
    g = torch.Generator().manual_seed(seed)
    perm = list(range(N))
    rnd.shuffle(perm)
    actions = torch.randint(0, 5, (2, N), generator=g)
    resampled = torch.randint(0, 5, (2, M, N), generator=g)
    c = sample_coalitions(N, M, g)
    joints = coalition_joint_actions(actions, resampled, c)
    p_joints = coalition_joint_actions(actions[..., perm], resampled[..., perm], c[:, perm][:, :, perm])
    torch.testing.assert_close(p_joints, joints[..., perm, :][..., perm])


def test_advantage_errors_name_the_shapes():
    q, logits, avail, actions = random_policy_case(5)                 # q (2, 2, 3, 3, 4)
    with pytest.raises(ValueError, match=r"q_all has shape \(2, 2, 3, 3, 3\) and logits \(2, 2, 3, 4\)"):
        shapley_advantage(q[..., :3], logits, actions)
    with pytest.raises(ValueError, match=r"q_all has shape \(3, 4\)"):
        shapley_advantage(q[0, 0, 0], logits, actions)
    with pytest.raises(ValueError, match="M >= 1"):
        shapley_advantage(q[..., :0, :, :], logits, actions)
    with pytest.raises(ValueError, match=r"actions has shape \(2, 2\)"):
        shapley_advantage(q, logits, actions[..., 0])
    with pytest.raises(TypeError, match="integer"):
        shapley_advantage(q, logits, actions.double())
    with pytest.raises(ValueError, match=r"avail has shape \(5, 5\)"):
        shapley_advantage(q, logits, actions, torch.ones(5, 5, dtype=torch.bool))
