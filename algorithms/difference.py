"""Difference rewards: the team reward minus the reward had one agent taken its default action.

Wolpert & Tumer, 2002, "Optimal Payoff Functions for Members of Collectives" (Advances in Complex
Systems 4(2–3)); Tumer & Agogino, 2007, "Distributed Agent-Based Air Traffic Flow Management":

    D_i = G(s, u) − G(s, (u_{−i}, c_i)),

with c_i agent i's default ("clamped") action. The counterfactual ``G(s, (u_{−i}, c_i))`` comes
from re-simulating the environment or from a learned reward model, evaluated on the joints of
``default_action_joints``.

Shapes follow the package layout ``[T, B, N, ...]``; any leading dims in place of ``T, B`` work.
"""
from __future__ import annotations

import torch

from marl.algorithms.checks import check_integer
from marl.algorithms.returns import broadcast_agents

Tensor = torch.Tensor


def default_action_joints(actions: Tensor, default: Tensor) -> Tensor:
    """The counterfactual joint actions of difference rewards: row i is ``(u_{−i}, c_i)``.

    Args:
        actions: ``[..., N]`` integer joint actions taken.
        default: ``[N]`` integer default action of each agent (or anything broadcastable to
            ``actions``, e.g. a per-state default).

    Returns:
        long ``[..., N, N]``: entry ``(..., i, j)`` is ``default[j]`` if i = j, else ``actions[..., j]``.
    """
    check_integer(actions, "actions")
    check_integer(default, "default")
    if actions.dim() < 1:
        raise ValueError(f"actions has shape {tuple(actions.shape)}, expected [..., N]")
    try:
        default = default.to(actions.device).long().expand(actions.shape)
    except RuntimeError:
        raise ValueError(f"default has shape {tuple(default.shape)}, expected ({actions.shape[-1]},) "
                         f"or broadcastable to actions {tuple(actions.shape)}") from None
    N = actions.shape[-1]
    eye = torch.eye(N, dtype=torch.bool, device=actions.device)
    return torch.where(eye, default.unsqueeze(-2), actions.long().unsqueeze(-2))


def difference_rewards(team_reward: Tensor, counterfactual_team_reward: Tensor) -> Tensor:
    """Difference rewards ``D_i = G(s, u) − G(s, (u_{−i}, c_i))`` (Wolpert & Tumer, 2002).

    Intuition: what the team gained because agent i took its action rather than its default;
    an agent whose action does not affect G gets 0, however large G is.

    Args:
        team_reward: ``[..., 1]`` or ``[...]`` G(s, u) of the taken joint action (``[..., N]``,
            already broadcast to agents, is accepted too).
        counterfactual_team_reward: ``[..., N]``; entry i is G evaluated on row i of
            ``default_action_joints``.

    Returns:
        ``[..., N]``.
    """
    cf = counterfactual_team_reward
    if cf.dim() < 1:
        raise ValueError(f"counterfactual_team_reward has shape {tuple(cf.shape)}, expected [..., N]")
    if team_reward.shape == cf.shape[:-1]:
        team_reward = team_reward.unsqueeze(-1)
    return broadcast_agents(team_reward, cf, "team_reward") - cf
