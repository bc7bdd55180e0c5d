"""Shapley credit: COMA's counterfactual baseline averaged over random coalitions.

Wang et al., 2020, "Shapley Q-value: A Local Reward Approach to Solve Global Reward Games"
(AAAI, arXiv:1907.05707); Li et al., 2021, "Shapley Counterfactual Credits for Multi-Agent
Reinforcement Learning" (KDD, arXiv:2106.00285). The Shapley value of agent i is its marginal
contribution ``v(C ∪ {i}) − v(C)`` averaged over the coalitions C of agents that precede i in a
uniformly random ordering of the team (Shapley, 1953).

Here the characteristic function is read from the COMA critic (``marl.algorithms.coma``): agent i's row
is fed the taken actions of the agents in C and, for the agents outside ``C ∪ {i}``, actions
re-sampled from their own policies, which marginalises them out by Monte Carlo. The critic returns
Q for every action of agent i, so ``Q_m(s, u_i)`` is ``v(C ∪ {i})`` and ``Σ_u' π_i(u') Q_m(s, u')``
(i's own action marginalised by its policy) is ``v(C)``. With M sampled orderings the cost is
``M·N`` critic rows, never ``2^N``. COMA is the special case C = all other agents.

Pipeline (``[..., ]`` is any leading dims, e.g. ``[T, B]``)::

    coalitions = sample_coalitions(N, M, generator)                     # [M, N, N]
    resampled = sample_actions(logits, M, avail, generator)             # [..., M, N]
    joints = coalition_joint_actions(actions, resampled, coalitions)    # [..., M, N, N]
    q_all = critic(shapley_critic_inputs(state, joints, A, obs))        # [..., M, N, A]
    advantage = shapley_advantage(q_all, logits, actions, avail)        # [..., N]

Coalitions are bool ``[M, N, N]``: entry ``(m, i, j)`` is True when agent j precedes agent i in
ordering m. Characteristic functions are ``[..., 2**N]`` indexed by bitmask (bit j set = agent j
in the coalition).
"""
from __future__ import annotations

import itertools
import math

import torch

from marl.algorithms.checks import check_avail, check_integer, check_state_lead
from marl.algorithms.coma import coma_advantage

Tensor = torch.Tensor


def _check_count(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_coalitions(coalitions: Tensor, n_agents: int) -> None:
    if coalitions.dtype != torch.bool:
        raise TypeError(f"coalitions must be a bool tensor, got dtype {coalitions.dtype}")
    if coalitions.dim() != 3 or tuple(coalitions.shape[1:]) != (n_agents, n_agents):
        raise ValueError(f"coalitions has shape {tuple(coalitions.shape)}, expected ('M', {n_agents}, {n_agents})")


def coalitions_from_permutations(perms: Tensor) -> Tensor:
    """The coalition each agent joins in each ordering: ``[M, N]`` long orderings -> bool ``[M, N, N]``.

    Row m of ``perms`` lists the agents in the order they join; entry ``(m, i, j)`` of the result
    is True when agent j comes before agent i in that order (never for j = i).
    """
    check_integer(perms, "perms")
    if perms.dim() != 2:
        raise ValueError(f"perms has shape {tuple(perms.shape)}, expected [M, N]")
    M, N = perms.shape
    perms = perms.long()
    order = torch.arange(N, device=perms.device).expand(M, N)
    if not (torch.sort(perms, dim=1).values == order).all():
        raise ValueError(f"each row of perms (shape {(M, N)}) must be a permutation of 0..{N - 1}")
    position = torch.empty_like(perms).scatter_(1, perms, order)           # position[m, j] of agent j
    return position.unsqueeze(-1) > position.unsqueeze(-2)                  # j precedes i


def sample_coalitions(n_agents: int, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """M uniformly random orderings of the team as coalitions, bool ``[M, N, N]`` (Wang et al., 2020).

    Intuition: in a random ordering, the agents before i form a coalition drawn with exactly the
    Shapley weights ``|C|! (N − |C| − 1)! / N!``, so averaging over orderings is unbiased.

    Args:
        n_agents: N ≥ 1.
        n_samples: M ≥ 1 orderings, independent and uniform over the N! orderings.
        generator: optional ``torch.Generator`` for reproducible draws, on any device.

    Returns:
        bool ``[M, N, N]`` on the generator's device (the CPU without one); ``(m, i, j)`` is True
        when j precedes i in ordering m.
    """
    _check_count(n_agents, "n_agents", 1)
    _check_count(n_samples, "n_samples", 1)
    device = None if generator is None else generator.device
    perms = torch.argsort(torch.rand(n_samples, n_agents, generator=generator, dtype=torch.float64, device=device),
                          dim=1)
    return coalitions_from_permutations(perms)


def all_coalitions(n_agents: int) -> Tensor:
    """Every one of the N! orderings as coalitions, bool ``[N!, N, N]``.

    With these, ``permutation_shapley`` is exactly ``exact_shapley`` and ``shapley_advantage`` has
    no sampling error in the coalitions (practical up to N ≈ 8).
    """
    _check_count(n_agents, "n_agents", 1)
    perms = torch.tensor(list(itertools.permutations(range(n_agents))), dtype=torch.long)
    return coalitions_from_permutations(perms)


def sample_actions(logits: Tensor, n_samples: int, avail: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """M independent joint actions from the agents' (masked) policies: ``[..., N, A]`` -> long ``[..., M, N]``.

    These are the re-sampled actions of the agents outside a coalition (Li et al., 2021).
    Unavailable actions are never drawn; every agent needs at least one available action.

    Args:
        logits: ``[..., N, A]`` actor logits; π is their masked softmax.
        n_samples: M ≥ 1.
        avail: optional bool, broadcastable to ``[..., N, A]``; False marks an unavailable action.
        generator: optional ``torch.Generator`` on ``logits``' device.
    """
    _check_count(n_samples, "n_samples", 1)
    if logits.dim() < 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}, expected [..., N, A]")
    avail = check_avail(avail, logits)
    if not avail.any(-1).all():
        raise ValueError("sample_actions: some agent has no available action (avail is all False on a row)")
    probs = torch.softmax(torch.where(avail, logits.detach(), -math.inf), dim=-1)
    probs = torch.where(avail, probs, 0.0)                   # a nan logit on an unavailable action
    A = logits.shape[-1]
    draws = torch.multinomial(probs.reshape(-1, A), n_samples, replacement=True, generator=generator)
    return draws.reshape(*logits.shape[:-1], n_samples).movedim(-1, -2)


def coalition_joint_actions(actions: Tensor, resampled: Tensor, coalitions: Tensor) -> Tensor:
    """The joint action agent i's critic row sees in ordering m (Li et al., 2021).

    Entry ``(..., m, i, j)`` is agent j's taken action if j is in ``C_{m,i}`` or j = i, and
    ``resampled[..., m, j]`` otherwise. Agent i's own entry is zeroed by the critic input anyway;
    it is kept as the taken action so that ``C = all others`` reproduces COMA's input exactly.
    The resampled actions of ordering m are shared by all agents' rows of that ordering.

    Args:
        actions: ``[..., N]`` integer actions taken.
        resampled: ``[..., M, N]`` integer actions drawn from the agents' policies.
        coalitions: bool ``[M, N, N]``, e.g. from ``sample_coalitions``.

    Returns:
        long ``[..., M, N, N]`` (ordering, agent whose row it is, agent whose action it is).
    """
    check_integer(actions, "actions")
    check_integer(resampled, "resampled")
    if actions.dim() < 1:
        raise ValueError(f"actions has shape {tuple(actions.shape)}, expected [..., N]")
    N = actions.shape[-1]
    _check_coalitions(coalitions, N)
    M = coalitions.shape[0]
    expected = tuple(actions.shape[:-1]) + (M, N)
    if tuple(resampled.shape) != expected:
        raise ValueError(f"resampled has shape {tuple(resampled.shape)}, expected {expected} "
                         f"([..., M, N] with actions {tuple(actions.shape)}, coalitions {tuple(coalitions.shape)})")
    keep = coalitions.to(actions.device) | torch.eye(N, dtype=torch.bool, device=actions.device)
    taken = actions.long()[..., None, None, :]                # [..., 1, 1, N]
    return torch.where(keep, taken, resampled.long().unsqueeze(-2))


def shapley_critic_inputs(state: Tensor, joints: Tensor, n_actions: int, obs: Tensor | None = None) -> Tensor:
    """COMA critic rows for the coalition joint actions: row ``(m, i)`` is agent i's row of
    ``coma_critic_inputs(state, one_hot(joints[..., m, i, :]), obs)``.

    Building only those rows keeps the cost at ``M·N`` rows (not ``M·N²``).

    Args:
        state: ``[..., S]`` global state.
        joints: long ``[..., M, N, N]`` from ``coalition_joint_actions``.
        n_actions: A, the size of each agent's action space.
        obs: optional ``[..., N, O]`` each agent's own observation.

    Returns:
        ``[..., M, N, D]`` with ``D = S + N·A + N (+ O)``, in ``state``'s dtype.
    """
    check_integer(joints, "joints")
    _check_count(n_actions, "n_actions", 1)
    if joints.dim() < 3 or joints.shape[-1] != joints.shape[-2]:
        raise ValueError(f"joints has shape {tuple(joints.shape)}, expected [..., M, N, N]")
    *lead, M, N, _ = joints.shape
    lead = tuple(lead)
    check_state_lead(state, lead, "joints", joints)
    dtype, device = state.dtype, state.device
    eye = torch.eye(N, dtype=dtype, device=device)
    onehot = torch.nn.functional.one_hot(joints.long(), n_actions).to(dtype)      # [..., M, N, N, A]
    others = (1.0 - eye).unsqueeze(-1)                                              # row i: i's block zeroed
    parts = [state[..., None, None, :].expand(*lead, M, N, state.shape[-1]),
             (onehot * others).flatten(-2), eye.expand(*lead, M, N, N)]
    if obs is not None:
        if tuple(obs.shape[:-1]) != lead + (N,):
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected {lead + (N, 'O')}")
        parts.append(obs.to(dtype).unsqueeze(-3).expand(*lead, M, N, obs.shape[-1]))
    return torch.cat(parts, dim=-1)


def shapley_advantage(q_all: Tensor, logits: Tensor, actions: Tensor, avail: Tensor | None = None) -> Tensor:
    """Monte Carlo Shapley counterfactual advantage (Li et al., 2021; Wang et al., 2020):
    ``A_i = (1/M) Σ_m [Q_m(s, u_i) − Σ_u' π_i(u') Q_m(s, u')]``.

    Intuition: agent i's marginal contribution to the coalition it joins in a random ordering,
    averaged over orderings; zero-mean under π_i, so it is the Shapley value minus its expectation
    under i's own policy. Averaging is linear, so this is ``coma_advantage`` on the
    ordering-averaged Q, with unavailable actions handled exactly as in ``coma_baseline``.

    Args:
        q_all: ``[..., M, N, A]`` critic output for agent i's row in ordering m, for each of i's actions.
        logits: ``[..., N, A]`` actor logits.
        actions: ``[..., N]`` integer actions taken (must be available).
        avail: optional bool, broadcastable to ``[..., N, A]``; see ``coma_baseline``.

    Returns:
        ``[..., N]`` advantage. Detach it before using it in the actor loss.
    """
    check_integer(actions, "actions")
    if q_all.dim() < 3 or q_all.shape[-3] == 0 or q_all.shape[:-3] + q_all.shape[-2:] != logits.shape:
        raise ValueError(f"q_all has shape {tuple(q_all.shape)} and logits {tuple(logits.shape)}; "
                         f"expected [..., M, N, A] (M >= 1) and [..., N, A]")
    return coma_advantage(q_all.mean(-3), logits, actions, avail)


def shapley_lambda_advantage(returns: Tensor, q_taken: Tensor, q_all: Tensor, logits: Tensor, actions: Tensor,
                             avail: Tensor | None = None) -> Tensor:
    """``shapley_advantage`` with the critic's value of the taken joint action replaced by its
    λ-return: ``A_i = G^λ − Q(s, u) + (1/M) Σ_m [Q_m(s, u_i) − Σ_u' π_i(u') Q_m(s, u')]``.

    Intuition: as COMA-λ is to COMA. The return says what the joint action led to; the Shapley
    term says how much of it agent i's action earned, and the critic's error on the taken joint
    action, ``G^λ − Q(s, u)``, is shared by every agent instead of being trusted. With the one
    "ordering" in which every other agent precedes i, this is ``coma_lambda_advantage``.

    Args:
        returns: ``[..., N]`` λ-returns of the taken joint action (the critic's targets).
        q_taken: ``[..., N]`` the critic's Q(s, u) of the taken joint action (agent i's row).
        q_all, logits, actions, avail: as in ``shapley_advantage``.

    Returns:
        ``[..., N]`` advantage. Detach it before using it in the actor loss.
    """
    return returns - q_taken + shapley_advantage(q_all, logits, actions, avail)


def _subset_weights(n_agents: int, dtype: torch.dtype, device) -> Tensor:
    """``W [2**N, N]`` with ``exact_shapley(v) = v @ W``: ``+w(|S|)`` at ``S ∪ {i}``, ``−w(|S|)`` at S."""
    masks = torch.arange(2 ** n_agents, device=device)
    bits = (masks.unsqueeze(-1) >> torch.arange(n_agents, device=device)) & 1         # [2**N, N]
    size = bits.sum(-1, keepdim=True)                                                 # |S| (with i if set)
    # w(k) = k! (N − k − 1)! / N! for the coalition S of size k that i joins.
    k = torch.where(bits.bool(), size - 1, size).to(torch.float64)
    log_w = torch.lgamma(k + 1) + torch.lgamma(n_agents - k) - math.lgamma(n_agents + 1)
    sign = torch.where(bits.bool(), 1.0, -1.0).to(torch.float64)
    return (sign * log_w.exp()).to(dtype)


def _n_agents_of(values: Tensor) -> int:
    if not values.dtype.is_floating_point:
        raise TypeError(f"values must be a floating-point tensor, got dtype {values.dtype}")
    size = values.shape[-1] if values.dim() else 0
    if size < 1 or size & (size - 1):
        raise ValueError(f"values has shape {tuple(values.shape)}, expected [..., 2**N] "
                         f"(one value per coalition bitmask)")
    return size.bit_length() - 1


def exact_shapley(values: Tensor) -> Tensor:
    """Exact Shapley values of a characteristic function (Shapley, 1953): ``[..., 2**N]`` -> ``[..., N]``.

    ``φ_i = Σ_{S ⊆ N∖{i}} |S|! (N − |S| − 1)! / N! · (v(S ∪ {i}) − v(S))``. Intuition: i's marginal
    contribution averaged over every order in which the team could assemble. Cost ``O(2^N · N)``;
    this is the reference the estimators are tested against.

    Args:
        values: float ``[..., 2**N]``; ``values[..., c]`` is v of the coalition with bitmask c.
    """
    N = _n_agents_of(values)
    return values @ _subset_weights(N, values.dtype, values.device)


def permutation_shapley(values: Tensor, coalitions: Tensor) -> Tensor:
    """The M-ordering Shapley estimator on an explicit characteristic function (Castro et al., 2009):
    ``φ̂_i = (1/M) Σ_m v(C_{m,i} ∪ {i}) − v(C_{m,i})``.

    Intuition: what ``shapley_advantage`` does with a critic, done on a known game so it can be
    checked against ``exact_shapley``; unbiased, and exact with ``all_coalitions(N)``.

    Args:
        values: float ``[..., 2**N]`` indexed by coalition bitmask.
        coalitions: bool ``[M, N, N]``, e.g. from ``sample_coalitions``.

    Returns:
        ``[..., N]``.
    """
    N = _n_agents_of(values)
    _check_coalitions(coalitions, N)
    powers = 2 ** torch.arange(N, device=values.device)
    without = (coalitions.to(values.device).long() * powers).sum(-1)               # [M, N] bitmask of C
    with_i = without + powers                                                     # i is never in C
    M = coalitions.shape[0]
    gain = values[..., with_i.flatten()] - values[..., without.flatten()]
    return gain.reshape(*values.shape[:-1], M, N).mean(-2)


def shapley_credit(coalition_q, state: Tensor, logits: Tensor, actions: Tensor, avail: Tensor | None,
                   n_samples: int, generator: torch.Generator | None = None, obs: Tensor | None = None,
                   returns: Tensor | None = None, q_taken: Tensor | None = None) -> Tensor:
    """The whole Shapley pipeline of the module docstring for a rollout: M sampled orderings, the
    outside agents' actions re-sampled from their policies, the COMA critic on every (ordering,
    agent) row, and ``shapley_advantage`` (or, given ``returns`` and ``q_taken``,
    ``shapley_lambda_advantage``). ``coalition_q`` maps critic inputs ``[..., M, N, D]`` to
    Q ``[..., M, N, A]`` (in return units). Returns ``[..., N]``; ``M·N`` critic rows per step."""
    N, A = logits.shape[-2], logits.shape[-1]
    coalitions = sample_coalitions(N, n_samples, generator)
    resampled = sample_actions(logits, n_samples, avail, generator)
    joints = coalition_joint_actions(actions, resampled, coalitions)
    q_all = coalition_q(shapley_critic_inputs(state, joints, A, obs))
    if returns is not None:
        return shapley_lambda_advantage(returns, q_taken, q_all, logits, actions, avail)
    return shapley_advantage(q_all, logits, actions, avail)
