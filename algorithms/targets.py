"""Q-learning targets for replayed episodes, built on the estimators of ``algorithms/returns.py``.

Shapes are time-major over sampled replay slots: ``[T, B, R]`` with R = 1 for a team value
(``Q_tot``, a mixer) or R = N for independent utilities (IQL). ``next_value[t]`` is the bootstrap
value of the state after step t (the target network's value of s_{t+1}, for example
``mixer_target(double_q_value(...), state[t+1])``), ``terminated``/``truncated`` are bool
``[T, B, 1]`` or ``[T, B, R]``, and ``filled [T, B]`` marks real (not padded) steps.

The λ-target is the one PyMARL2 trains QMIX on (its ``build_td_lambda_targets``): the λ-return of
the greedy target values, with no cut of the trace at exploratory actions (Peng's Q(λ) without
off-policy correction; Peng & Williams, 1996).
"""
from __future__ import annotations

import torch

from marl.algorithms.returns import n_step, td_lambda

Tensor = torch.Tensor


def legal_argmax(q: Tensor, avail: Tensor) -> Tensor:
    """``argmax_u q[..., u]`` over the legal actions ``avail [..., A]`` (bool) -> ``[...]`` int64;
    0 where no action is legal (padding, absent agents)."""
    return torch.where(avail.bool(), q, -torch.inf).argmax(dim=-1)


def greedy_value(q: Tensor, avail: Tensor) -> Tensor:
    """``max_u q[..., u]`` over legal actions (DQN's target, Mnih et al., 2015) -> ``[...]``; 0 where
    no action is legal, so padded rows stay finite."""
    best = torch.where(avail.bool(), q, -torch.inf).amax(dim=-1)
    return torch.where(avail.bool().any(dim=-1), best, 0.0)


def double_q_value(q_online: Tensor, q_target: Tensor, avail: Tensor) -> Tensor:
    """Double Q (van Hasselt et al., 2016, arXiv:1509.06461): ``q_target`` at the online network's
    legal argmax -> ``[...]``; 0 where no action is legal. All inputs ``[..., A]``. Intuition: the
    online net picks, the target net evaluates, so one net's overestimate is not its own target."""
    picked = q_target.gather(-1, legal_argmax(q_online, avail).unsqueeze(-1)).squeeze(-1)
    return torch.where(avail.bool().any(dim=-1), picked, 0.0)


def q_targets(reward: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
              filled: Tensor | None = None, *, gamma: float, lam: float | None = None,
              n: int | None = None) -> Tensor:
    """TD(λ) (``lam``) or n-step (``n``) targets ``[T, B, R]`` for replayed slots: ``td_lambda`` and
    ``n_step`` of ``algorithms/returns.py``, given exactly one of ``lam`` and ``n``.

    A termination stops bootstrapping; a truncation bootstraps from ``next_value``. The last filled
    step of each slot bootstraps too unless it terminated (a slot that holds a chunk of a longer
    episode ends mid-episode), and padded steps (``~filled``) are zeroed, so they cannot leak into
    real ones; their targets are 0 and belong out of the loss. Intuition: λ=0 or n=1 is the
    one-step target ``r + γ Q_tot'(s')``; larger λ or n trusts more real rewards.

    Raises:
        ValueError: unless exactly one of ``lam`` and ``n`` is given, or ``filled`` is not ``[T, B]``.
    """
    if (lam is None) == (n is None):
        raise ValueError(f"q_targets: give exactly one of lam and n, got lam={lam!r}, n={n!r}")
    if filled is not None:
        if filled.shape != reward.shape[:2]:
            raise ValueError(f"filled has shape {tuple(filled.shape)}, expected {tuple(reward.shape[:2])}")
        filled = filled.bool()
        following = torch.cat([filled[1:], filled.new_zeros(1, *filled.shape[1:])])
        last = (filled & ~following)[..., None]
        truncated = truncated.bool() | (last & ~terminated.bool())
        reward = torch.where(filled[..., None], reward, 0.0)
        next_value = torch.where(filled[..., None], next_value, 0.0)
    zeros = torch.zeros_like(next_value)
    if lam is not None:
        return td_lambda(reward, zeros, next_value, terminated, truncated, gamma=gamma, lam=lam)[1]
    return n_step(reward, zeros, next_value, terminated, truncated, gamma=gamma, n=n)[1]
