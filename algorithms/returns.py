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


def td_lambda(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
              *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """λ-returns as value targets (Sutton, 1988; Sutton & Barto, 2018, ch. 12, eq. 12.18).

    ``G^λ_t = r_t + γ (1 − term_t) [(1 − λ) V(s_{t+1}) + λ G^λ_{t+1}]``, where ``G^λ_{t+1}`` is
    replaced by ``next_value[t]`` when step t ends the trajectory (terminated or truncated) and at
    the rollout's last row ``t = T − 1``: a truncation or the rollout end bootstraps, a termination
    gives just ``r_t``. Intuition: an exponentially weighted mix of all n-step returns, λ=0 giving
    the one-step TD target and λ=1 the Monte Carlo return.

    When ``next_value[t] == value[t+1]`` inside episodes (one critic evaluated on consecutive
    states), ``G^λ − value`` equals ``gae(..., lam=lam)`` exactly; with a separate bootstrap value
    (e.g. a target network or a Q critic) the two differ.

    Args: see the module docstring for shapes. Returns ``(advantage, value_target)``, both
    ``[T, B, N]``, with ``value_target = G^λ`` and ``advantage = G^λ − value``.
    """
    reward, next_value, terminated, truncated = _prepare(reward, value, next_value, terminated, truncated)
    # G_t = a_t + c_t G_{t+1}: everything that does not depend on G_{t+1} is computed up front.
    # torch.where, not a (1 − term) product, so a junk V(terminal) (inf/nan) cannot leak in.
    boot = torch.where(terminated, 0.0, next_value)
    cut = terminated | truncated
    if value.shape[0]:
        cut = cut.clone()
        cut[-1] = True                                   # the rollout end bootstraps too
    cut_f = cut.to(value.dtype)
    base = reward + gamma * (1.0 - lam) * boot + gamma * lam * cut_f * boot
    carry = gamma * lam * (1.0 - cut_f)
    target = torch.empty_like(value)
    following = value.new_zeros(value.shape[1:])         # G^λ_{t+1}
    for t in range(value.shape[0] - 1, -1, -1):
        following = base[t] + carry[t] * following
        target[t] = following
    return target - value, target


def n_step(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
           *, gamma: float, n: int) -> tuple[Tensor, Tensor]:
    """n-step bootstrapped returns (Sutton & Barto, 2018, ch. 7, eq. 7.1; Mnih et al., 2016, A3C).

    ``G_t = Σ_{k<m} γ^k r_{t+k} + γ^m V_boot`` with ``m = min(n, steps until the trajectory ends
    (the ending step included) or the rollout ends)`` and ``V_boot = next_value[t+m−1]``, or 0 if
    step ``t+m−1`` terminated. Intuition: n real rewards, then trust the critic; n=1 is the
    one-step TD target, n ≥ T the Monte Carlo return.

    Args: see the module docstring for shapes; ``n`` is an int ≥ 1. Returns
    ``(advantage, value_target)``, both ``[T, B, N]``, with ``advantage = G − value``.

    Raises:
        ValueError: if ``n`` is not an int ≥ 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_step: n must be an int >= 1, got {n!r}")
    reward, next_value, terminated, truncated = _prepare(reward, value, next_value, terminated, truncated)
    T = value.shape[0]
    # Force an end at the last row so that every window stops at the rollout end.
    ends = terminated | truncated
    if T > 0:
        ends = ends.clone()
        ends[-1] = True
    target = torch.zeros_like(value)
    alive = torch.ones_like(ends)                           # window of row t still open at step t+k
    discount = 1.0
    for k in range(min(n, T)):
        # Row t looks at step t+k; rows t ≥ T−k have already closed at the rollout end.
        rows = T - k
        r_k, nv_k = reward[k:], next_value[k:]
        term_k, end_k = terminated[k:], ends[k:] | (k == n - 1)
        open_k = alive[:rows]
        target[:rows] += torch.where(open_k, discount * r_k, 0.0)
        closes = open_k & end_k
        boot = torch.where(closes & ~term_k, (discount * gamma) * nv_k, 0.0)
        target[:rows] += boot
        alive[:rows] = open_k & ~end_k
        discount *= gamma
    return target - value, target


def mc(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
       *, gamma: float) -> tuple[Tensor, Tensor]:
    """Monte Carlo return within the rollout (Sutton & Barto, 2018, ch. 5): ``td_lambda`` with λ=1.

    ``G_t = Σ_k γ^k r_{t+k}`` to the end of the trajectory, plus ``γ^m next_value`` where the
    trajectory was truncated or the rollout ended (0 after a termination). Intuition: unbiased
    (given the bootstrap at cuts) but high variance; the value only enters as the baseline.

    Args: see the module docstring for shapes. Returns ``(advantage, value_target)``, both
    ``[T, B, N]``, with ``advantage = G − value``.
    """
    return td_lambda(reward, value, next_value, terminated, truncated, gamma=gamma, lam=1.0)
