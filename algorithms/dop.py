"""DOP: credit from a linearly decomposed critic.

Wang et al., 2021, "DOP: Off-Policy Multi-Agent Decomposed Policy Gradients" (ICLR,
arXiv:2007.12322). The centralised critic is a non-negative weighted sum of per-agent critics,

    Q_tot(s, u) = Σ_i k_i(s) Q_i(s, u_i) + b(s),    k_i(s) ≥ 0,

so COMA's counterfactual advantage of Q_tot collapses to one agent's own critic: every other
agent's term and b(s) cancel, leaving ``k_i(s) (Q_i(s, u_i) − Σ_u' π_i(u') Q_i(s, u'))``.

Shapes follow the package layout ``[T, B, N, ...]``; any leading dims in place of ``T, B`` work.
"""
from __future__ import annotations

import torch

from marl.algorithms.coma import coma_advantage

Tensor = torch.Tensor


def positive_weights(raw: Tensor) -> Tensor:
    """Mixing weights ``k = |raw|`` from an unconstrained (e.g. hypernetwork) output, as DOP and QMIX do.

    Intuition: k ≥ 0 keeps Q_tot monotonic in every Q_i, so improving an agent's own Q never
    lowers the team's.
    """
    return raw.abs()


def dop_mix(k: Tensor, q_taken: Tensor, b: Tensor) -> Tensor:
    """DOP's linear mixer ``Q_tot = Σ_i k_i(s) Q_i(s, u_i) + b(s)`` (Wang et al., 2021).

    Intuition: the team's value is each agent's own value scaled by how much that agent matters
    in this state, plus a state-only offset.

    Args:
        k: ``[..., N]`` mixing weights; must be ≥ 0 (use ``positive_weights``; not checked here).
        q_taken: ``[..., N]`` Q_i(s, u_i) of each agent's taken action.
        b: ``[...]`` or ``[..., 1]`` state bias.

    Returns:
        ``[...]`` Q_tot.
    """
    if k.shape != q_taken.shape or k.dim() < 1:
        raise ValueError(f"k has shape {tuple(k.shape)} and q_taken {tuple(q_taken.shape)}; "
                         f"expected the same [..., N]")
    lead = tuple(k.shape[:-1])
    if tuple(b.shape) == lead + (1,):
        b = b.squeeze(-1)
    elif tuple(b.shape) != lead:
        raise ValueError(f"b has shape {tuple(b.shape)}, expected {lead} or {lead + (1,)} "
                         f"(k is {tuple(k.shape)})")
    return (k * q_taken).sum(-1) + b


def dop_advantage(k: Tensor, q_agents: Tensor, logits: Tensor, actions: Tensor,
                  avail: Tensor | None = None) -> Tensor:
    """DOP's counterfactual advantage ``k_i(s) (Q_i(s, u_i) − Σ_u' π_i(u') Q_i(s, u'))`` (Wang et al., 2021).

    Intuition: COMA's advantage of the mixed Q_tot, which for a linear mixer needs only agent i's
    own critic; an agent with k_i = 0 or a Q_i flat over its actions gets no credit.

    Args:
        k: ``[..., N]`` mixing weights (≥ 0).
        q_agents: ``[..., N, A]`` Q_i(s, u') for each of agent i's actions.
        logits: ``[..., N, A]`` actor logits.
        actions: ``[..., N]`` integer actions taken (must be available).
        avail: optional bool, broadcastable to ``[..., N, A]``; see ``coma_baseline``.

    Returns:
        ``[..., N]`` advantage. Detach it before using it in the actor loss.
    """
    if k.shape != q_agents.shape[:-1] or q_agents.dim() < 2:
        raise ValueError(f"k has shape {tuple(k.shape)}, expected {tuple(q_agents.shape[:-1])} "
                         f"(q_agents is {tuple(q_agents.shape)}, [..., N, A])")
    return k * coma_advantage(q_agents, logits, actions, avail)


def dop_lambda_advantage(returns: Tensor, q_tot: Tensor, k: Tensor, q_agents: Tensor, logits: Tensor,
                         actions: Tensor, avail: Tensor | None = None) -> Tensor:
    """DOP's counterfactual baseline subtracted from the λ-return of the taken joint action:
    ``G^λ − Σ_u' π_i(u') Q_tot(s, (u^-i, u'))``, which for DOP's linear mixer is
    ``G^λ − Q_tot(s, u) + k_i(s) (Q_i(s, u_i) − Σ_u π_i(u) Q_i(s, u))``.

    Intuition: COMA-λ on DOP's critic. DOP's own advantage rests on the critic alone; this one
    keeps the real return of the taken joint action and takes from the critic only the part that
    no action of agent i changes, so the actor learns before Q_i does. The shared term
    ``G^λ − Q_tot`` is the same for every agent; the per-agent credit is DOP's term.

    Args:
        returns: ``[..., N]`` TD(λ) returns of the taken joint action (Q_tot's targets).
        q_tot: ``[..., N]`` (or ``[...]``) Q_tot(s, u) of the taken joint action.
        k, q_agents, logits, actions, avail: as in ``dop_advantage``.

    Returns:
        ``[..., N]`` advantage. Detach it before using it in the actor loss.
    """
    if q_tot.shape == returns.shape[:-1]:
        q_tot = q_tot.unsqueeze(-1)
    return returns - q_tot + dop_advantage(k, q_agents, logits, actions, avail)
