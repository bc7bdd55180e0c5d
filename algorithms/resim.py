"""Counterfactual advantages from re-simulated returns: COMA's advantage with the critic replaced by
Monte-Carlo continuations of a copied simulator.

Foerster et al., 2018, "Counterfactual Multi-Agent Policy Gradients" (arXiv:1705.08926), eq. 4,
with ``Q(s, (u^{-a}, u'))`` estimated by K continuations that share their random draws across
agent a's actions (common random numbers). For rollout k,

    D_k^a = Σ_{u'} π^a(u' | τ^a) (G_k(s, u) − G_k(s, (u^{-a}, u'))),   A^a = mean_k D_k^a,

which equals ``Q̂(s, u) − Σ_{u'} π^a(u') Q̂(s, (u^{-a}, u'))`` (Σ π = 1), written as paired
differences so that an action without effect gets exactly 0. Shapes: any leading dims ``[...]``
(``[T, B]`` in training, ``[S]`` in the oracle), then agents N, actions A and rollouts K.
"""
from __future__ import annotations

import torch
from marl.algorithms.checks import check_integer

Tensor = torch.Tensor


def paired_differences(returns: Tensor, probs: Tensor, actions: Tensor) -> Tensor:
    """``D_k [..., N, K]``: rollout k's counterfactual advantage of each agent's taken action.

    Intuition: how much better agent a's action did than its policy's average action, in the same
    draw of the future.

    Args:
        returns: ``[..., N, A, K]`` G_k of each of agent a's actions u' (others' actions as taken).
            Entries where ``probs`` is 0 (illegal actions) are never read, even if NaN.
        probs: ``[..., N, A]`` π^a over the legal actions (0 elsewhere).
        actions: ``[..., N]`` the actions taken (integers).

    Returns:
        ``[..., N, K]`` in ``returns``' dtype.
    """
    if returns.dim() < 3 or returns.shape[:-1] != probs.shape or probs.shape[:-1] != actions.shape:
        raise ValueError(f"returns {tuple(returns.shape)} must be [..., N, A, K], probs {tuple(probs.shape)} "
                         f"[..., N, A] and actions {tuple(actions.shape)} [..., N]")
    check_integer(actions, "actions")
    K = returns.shape[-1]
    index = actions.long()[..., None, None].expand(*actions.shape, 1, K)
    taken = returns.gather(-2, index)                                        # [..., N, 1, K]
    weight = probs.to(returns.dtype).unsqueeze(-1)
    gap = torch.where(weight > 0, taken - returns, 0.0)                      # illegal entries never read
    return (weight * gap).sum(-2)


def resim_advantage(returns: Tensor, probs: Tensor, actions: Tensor) -> Tensor:
    """COMA's counterfactual advantage from re-simulated returns, ``[..., N]``: the mean over the K
    rollouts of ``paired_differences`` (see the module docstring for the formula and shapes)."""
    return paired_differences(returns, probs, actions).mean(-1)
