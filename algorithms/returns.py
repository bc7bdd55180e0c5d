"""Advantage and return estimators over time-major ``[T, B, N]`` tensors.

Every function here is pure: tensors in, tensors out, no hidden state. Conventions shared by all:

- ``reward``, ``value``, ``next_value``: float ``[T, B, N]``; a team signal ``[T, B, 1]`` broadcasts.
- ``next_value[t]`` is V(s_{t+1}) of the *true* next state, also at a truncation.
- ``terminated[t]``: s_{t+1} is terminal, so nothing is bootstrapped from it.
- ``truncated[t]``: the trajectory was cut after step t (time limit, rollout end); the return
  bootstraps from ``next_value[t]`` but the recursion does not continue into step t+1, which
  belongs to another episode.
- Flags are bool ``[T, B, N]`` (agents may end individually) or ``[T, B, 1]``.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def broadcast_agents(x: Tensor, like: Tensor, name: str) -> Tensor:
    """Expand a team signal ``[T, B, 1]`` to ``like``'s ``[T, B, N]``; check shapes otherwise.

    Raises:
        ValueError: quoting both shapes when ``x`` cannot be broadcast to ``like``.
    """
    if x.shape == like.shape:
        return x
    if x.dim() == like.dim() and x.shape[:-1] == like.shape[:-1] and x.shape[-1] == 1:
        return x.expand_as(like)
    raise ValueError(
        f"{name} has shape {tuple(x.shape)}, expected {tuple(like.shape)} or "
        f"{tuple(like.shape[:-1]) + (1,)} (time-major [T, B, N])"
    )


def _prepare(reward, value, next_value, terminated, truncated):
    if value.dim() != 3:
        raise ValueError(f"value has shape {tuple(value.shape)}, expected [T, B, N]")
    reward = broadcast_agents(reward, value, "reward").to(value.dtype)
    next_value = broadcast_agents(next_value, value, "next_value")
    terminated = broadcast_agents(terminated, value, "terminated").bool()
    truncated = broadcast_agents(truncated, value, "truncated").bool()
    return reward, next_value, terminated, truncated


def gae(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
        *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016, arXiv:1506.02438).

    ``A_t = δ_t + γλ (1 − done_t) A_{t+1}`` with ``δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)``
    and ``done = terminated | truncated``. Intuition: an exponentially weighted sum of TD errors,
    λ trading bias (λ=0, one-step TD) against variance (λ=1, Monte Carlo).

    Args: see the module docstring for shapes. Returns ``(advantage, value_target)``, both
    ``[T, B, N]``, with ``value_target = advantage + value``.
    """
    reward, next_value, terminated, truncated = _prepare(reward, value, next_value, terminated, truncated)
    not_term = (~terminated).to(value.dtype)
    carry = gamma * lam * (~(terminated | truncated)).to(value.dtype)
    delta = reward + gamma * not_term * next_value - value
    advantage = torch.empty_like(value)
    running = value.new_zeros(value.shape[1:])
    for t in range(value.shape[0] - 1, -1, -1):
        running = delta[t] + carry[t] * running
        advantage[t] = running
    return advantage, advantage + value
