"""COMA: counterfactual baselines from a per-agent action-value critic.

Foerster et al., 2018, "Counterfactual Multi-Agent Policy Gradients" (arXiv:1705.08926).
The critic Q(s, u^{-a}, ·) sees the state, the other agents' actions and agent a's id, with a's own
action masked out, so one forward pass gives Q for every action agent a could have taken while the
others' actions stay fixed. The counterfactual baseline marginalises a's own action under its policy:

    A^a(s, u) = Q(s, u) − Σ_{u'_a} π^a(u'_a | τ^a) Q(s, (u^{-a}, u'_a)).

``coma_lambda_advantage`` keeps that counterfactual baseline but takes the taken joint action's
value from its TD(λ) return instead of from Q(s, u).

Shapes follow the package layout ``[T, B, N, ...]``; any leading dims in place of ``T, B`` work.
"""
from __future__ import annotations

import torch

from marl.algorithms.checks import check_avail, check_integer, check_state_lead

Tensor = torch.Tensor


def coma_baseline(q_all: Tensor, logits: Tensor, avail: Tensor | None = None) -> Tensor:
    """COMA's counterfactual baseline ``Σ_{u'} π(u' | τ^a) Q(s, (u^{-a}, u'))`` (Foerster et al., 2018, eq. 4).

    Intuition: what agent a's policy expects to get, holding the other agents' actions fixed.

    Args:
        q_all: ``[T, B, N, A]`` Q of each of agent a's actions, others' actions fixed.
        logits: ``[T, B, N, A]`` actor logits; π is their (masked) softmax.
        avail: optional bool, broadcastable to ``[T, B, N, A]``; False marks an unavailable action.
            Unavailable actions get probability exactly 0 and never contribute, even where their
            logit or Q is inf/nan. An agent with no available action gets baseline 0.

    Returns:
        ``[T, B, N]``, the policy-weighted mean of ``q_all`` over actions.
    """
    if q_all.shape != logits.shape or q_all.dim() < 2:
        raise ValueError(f"q_all has shape {tuple(q_all.shape)} and logits {tuple(logits.shape)}; "
                         f"expected the same [T, B, N, A]")
    avail = check_avail(avail, q_all)
    floor = torch.finfo(logits.dtype).min                # finite, so all-unavailable rows stay finite
    log_pi = torch.log_softmax(torch.where(avail, logits, floor), dim=-1)
    pi = torch.where(avail, log_pi.exp(), 0.0)
    q = torch.where(avail, q_all, 0.0)                   # where, not π·Q: 0 · nan would be nan
    return (pi * q).sum(-1)


def coma_advantage(q_all: Tensor, logits: Tensor, actions: Tensor, avail: Tensor | None = None) -> Tensor:
    """COMA counterfactual advantage ``Q(s, u) − coma_baseline`` (Foerster et al., 2018, eq. 4).

    Intuition: how much better agent a's taken action was than its policy's average, with every
    other agent's action held fixed, which isolates a's own contribution to the team reward.

    Args:
        q_all: ``[T, B, N, A]`` Q(s, (u^{-a}, u'_a)) for each action u'_a of agent a.
        logits: ``[T, B, N, A]`` actor logits.
        actions: ``[T, B, N]`` integer actions actually taken (must be available).
        avail: optional bool, broadcastable to ``[T, B, N, A]``; see ``coma_baseline``.

    Returns:
        ``[T, B, N]`` advantage. Detach it before using it in the actor loss.
    """
    check_integer(actions, "actions")
    if actions.shape != q_all.shape[:-1]:
        raise ValueError(f"actions has shape {tuple(actions.shape)}, expected {tuple(q_all.shape[:-1])} "
                         f"(q_all is {tuple(q_all.shape)})")
    q_taken = q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    return q_taken - coma_baseline(q_all, logits, avail)


def coma_lambda_advantage(returns: Tensor, q_all: Tensor, logits: Tensor, avail: Tensor | None = None) -> Tensor:
    """COMA's counterfactual baseline subtracted from the λ-return of the taken joint action:
    ``G^λ − Σ_{u'} π(u' | τ^a) Q(s, (u^{-a}, u'))``.

    Intuition: the return measures what the joint action actually led to; the baseline, which holds
    the other agents' actions fixed and averages over agent a's own, removes what a's action did not
    cause. The baseline does not depend on a's own action, so the policy gradient stays unbiased
    (exactly so for λ = 1), and unlike ``coma_advantage`` the taken action's value does not rest on
    the critic having learned Q for that particular joint action.

    Args:
        returns: ``[T, B, N]`` λ-returns of the taken joint action (e.g. the critic's TD(λ) targets).
        q_all: ``[T, B, N, A]`` Q(s, (u^{-a}, u'_a)) for each action u'_a of agent a.
        logits: ``[T, B, N, A]`` actor logits.
        avail: optional bool, broadcastable to ``[T, B, N, A]``; see ``coma_baseline``.

    Returns:
        ``[T, B, N]`` advantage. Detach it before using it in the actor loss.
    """
    if returns.shape != q_all.shape[:-1]:
        raise ValueError(f"returns has shape {tuple(returns.shape)}, expected {tuple(q_all.shape[:-1])} "
                         f"(q_all is {tuple(q_all.shape)})")
    return returns - coma_baseline(q_all, logits, avail)


def coma_critic_inputs(state: Tensor, actions_onehot: Tensor, obs: Tensor | None = None) -> Tensor:
    """Per-agent input of COMA's critic Q(s, u^{-a}, ·) (Foerster et al., 2018, sec. 4).

    For agent a the row is ``[state, u^1..u^N one-hot with a's own block zeroed, one-hot id a, (o^a)]``.
    Masking a's own action (via ``1 − eye(N)``) is what lets one forward pass return Q for all of
    a's actions.

    Args:
        state: ``[..., S]`` global state, shared by all agents.
        actions_onehot: ``[..., N, A]`` one-hot joint action (any numeric or bool dtype).
        obs: optional ``[..., N, O]`` each agent's own observation.

    Returns:
        ``[..., N, D]`` with ``D = S + N·A + N (+ O)``, in ``state``'s dtype.
    """
    if actions_onehot.dim() < 2:
        raise ValueError(f"actions_onehot has shape {tuple(actions_onehot.shape)}, expected [..., N, A]")
    *lead, N, A = actions_onehot.shape
    lead = tuple(lead)
    check_state_lead(state, lead, "actions_onehot", actions_onehot)
    dtype, device = state.dtype, state.device
    eye = torch.eye(N, dtype=dtype, device=device)
    joint = actions_onehot.to(dtype).reshape(*lead, 1, N * A).expand(*lead, N, N * A)
    others = (1.0 - eye).repeat_interleave(A, dim=-1)   # [N, N*A]: row a zero on a's own block
    parts = [state.unsqueeze(-2).expand(*lead, N, state.shape[-1]), joint * others, eye.expand(*lead, N, N)]
    if obs is not None:
        if tuple(obs.shape[:-1]) != lead + (N,):
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected {lead + (N, 'O')}")
        parts.append(obs.to(dtype))
    return torch.cat(parts, dim=-1)
