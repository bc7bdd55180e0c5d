"""Hindsight experience replay for cooperative goal-conditioned teams (Andrychowicz et al., 2017,
arXiv:1707.01495), over replayed slots.

A sampled slot is one episode (or chunk), time-major, with per-state goals ``achieved [T+1, B, N, G]``
and ``desired [T+1, B, N, G]`` and ``filled [T, B]``. Relabelling replaces the desired goal of a
slot with a goal achieved at one of its states ``t'``, the same goal for every step, so a relabelled
slot is still a whole valid episode (the env must not terminate on its goal): TD(λ), n-step targets
and recurrent unrolls from the slot's start all stay correct. Strategies pick ``t'``:

- ``final``: the last state, ``t' = len``;
- ``episode``: any state, ``t'`` uniform in ``{0, ..., len}``;
- ``future``: ``t'`` uniform in ``{1, ..., len}``, and only the steps ``t < t'`` stay in the loss,
  so that every trained step is paired with a goal achieved after it, as in HER's ``future``.

A fraction ``ratio`` of the slots is relabelled. ``joint`` relabels every agent with its own goal
achieved at the same ``t'`` (the team's success at ``t'`` becomes a rewarded one); ``agent``
relabels one agent per slot and leaves the others' goals as they were, which asks whether the team
reward credits one agent's hindsight success. Rewards are recomputed with the env's
``compute_reward`` (``envs/goals.py``); the env is never stepped.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

Tensor = torch.Tensor
STRATEGIES = ("final", "future", "episode")
MODES = ("joint", "agent")


class HerPlan(NamedTuple):
    """Which goals a batch of B slots gets: ``relabel [B, N]`` bool (the (slot, agent) goals replaced),
    ``goal_step [B]`` (the state t' whose achieved goal replaces them) and ``step_mask [T, B]`` (the
    real steps the loss keeps)."""
    relabel: Tensor
    goal_step: Tensor
    step_mask: Tensor


def her_plan(filled: Tensor, n_agents: int, *, strategy: str, ratio: float, mode: str,
             generator: torch.Generator | None = None) -> HerPlan:
    """Draw the relabelling of slots with real steps ``filled [T, B]`` (each slot's steps first).

    Raises:
        ValueError: for an unknown ``strategy`` or ``mode``, or ``ratio`` outside [0, 1].
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"her strategy must be one of {STRATEGIES}, got {strategy!r}")
    if mode not in MODES:
        raise ValueError(f"her relabel mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"her ratio must be in [0, 1], got {ratio!r}")
    T, B = filled.shape
    lengths = filled.sum(dim=0).cpu()
    rows = torch.rand(B, generator=generator) < ratio
    draw = torch.rand(B, generator=generator)
    if strategy == "final":
        goal_step = lengths
    elif strategy == "episode":
        goal_step = (draw * (lengths + 1)).long().clamp(max=lengths)
    else:
        goal_step = 1 + (draw * lengths).long().clamp(max=lengths - 1)
    if mode == "joint":
        relabel = rows[:, None].expand(B, n_agents)
    else:
        chosen = torch.randint(n_agents, (B,), generator=generator)
        relabel = rows[:, None] & (torch.arange(n_agents) == chosen[:, None])
    step_mask = filled.bool().cpu()
    if strategy == "future":
        step_mask = step_mask & (~rows | (torch.arange(T)[:, None] < goal_step))
    device = filled.device
    return HerPlan(relabel.to(device), goal_step.to(device), step_mask.to(device))


def relabel_goals(desired: Tensor, achieved: Tensor, plan: HerPlan) -> Tensor:
    """``desired [T+1, B, N, G]`` with each relabelled (slot, agent) goal replaced, at every state,
    by its ``achieved`` goal at ``plan.goal_step``."""
    B = desired.shape[1]
    goal = achieved[plan.goal_step, torch.arange(B, device=achieved.device)]          # [B, N, G]
    return torch.where(plan.relabel[None, ..., None], goal[None], desired)


def relabel_rewards(compute_reward: Callable, agents: Sequence[str], achieved: Tensor, desired: Tensor,
                    filled: Tensor, info: dict | None = None) -> Tensor:
    """Each agent's reward ``[T, B, N]`` for step t, ``compute_reward`` of the goals in the state
    it led to: ``achieved [T, B, N, G]`` and ``desired [T, B, N, G]`` (rows 1.. of the per-state
    goals), called once with K = T·B goals per agent; ``info`` defaults to empty dicts (the replay
    keeps no infos). These are the env's raw rewards: apply the reward mode after. Padded steps get 0.

    Raises:
        ValueError: in one line, if ``compute_reward`` does not return K rewards for every agent.
    """
    T, B, N, G = achieved.shape
    flat = {"achieved": achieved.detach().reshape(T * B, N, G).cpu().numpy(),
            "desired": desired.detach().reshape(T * B, N, G).cpu().numpy()}
    out = compute_reward({a: flat["achieved"][:, i] for i, a in enumerate(agents)},
                         {a: flat["desired"][:, i] for i, a in enumerate(agents)},
                         info if info is not None else {a: {} for a in agents})
    try:
        rewards = np.stack([np.asarray(out[a], dtype=np.float32).reshape(T * B) for a in agents], axis=-1)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"compute_reward must return a dict of {T * B} rewards for each of {list(agents)}, got "
                         f"{ {k: np.shape(v) for k, v in out.items()} if isinstance(out, dict) else type(out).__name__}"
                         ) from None
    rewards = torch.from_numpy(rewards).to(achieved.device).reshape(T, B, N)
    return torch.where(filled.bool()[..., None], rewards, 0.0)


def hindsight(obs: Tensor, filled: Tensor, compute_reward: Callable, agents: Sequence[str], *,
              achieved: slice, desired: slice, strategy: str, ratio: float, mode: str,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Relabel sampled slots whose flat observations ``obs [T+1, B, N, O]`` hold each agent's goals
    at ``achieved`` and ``desired`` (``envs.goals.goal_slices``).

    Returns ``(obs, reward, step_mask)``: the observations with the new desired goals, every agent's
    raw reward ``[T, B, N]`` recomputed for them, and the steps the loss keeps ``[T, B]``.
    """
    plan = her_plan(filled, len(agents), strategy=strategy, ratio=ratio, mode=mode, generator=generator)
    goals = relabel_goals(obs[..., desired], obs[..., achieved], plan)
    obs = obs.clone()
    obs[..., desired] = goals
    reward = relabel_rewards(compute_reward, agents, obs[1:, ..., achieved], goals[1:], filled)
    return obs, reward, plan.step_mask
