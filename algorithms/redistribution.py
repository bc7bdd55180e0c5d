"""Reward redistribution: from one episodic return to a dense reward per step and agent.

With an episodic reward every step reward is withheld and the episode's sum ``R`` is paid at its
last step. A learned reward model ``r̂_{t,i}`` spreads ``R`` back over the steps and agents that
earned it. This module holds the pure tensor functions; the models and their trainer live in
``marl.reward_models``.

Episodes of different lengths are batched *episode-major* and padded:

- ``step_rewards``: float ``[E, T, N]`` (E episodes, T the longest one, N agents);
- ``valid``: bool ``[E, T]``, True on the episode's real steps (any pattern, usually a prefix);
- ``returns``: float ``[E]``, the episode return ``R`` (the team reward summed over steps).

Every episode must have at least one valid step. Padded steps never contribute to a loss and get a
zero reward. ``episode_segments`` cuts a time-major rollout ``[T, B]`` into this layout.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_episodes(step_rewards: Tensor, valid: Tensor, returns: Tensor) -> None:
    if step_rewards.dim() != 3:
        raise ValueError(f"step_rewards has shape {tuple(step_rewards.shape)}, expected [E, T, N]")
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor [E, T], got dtype {valid.dtype}")
    if valid.shape != step_rewards.shape[:2]:
        raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {tuple(step_rewards.shape[:2])} "
                         f"([E, T] of step_rewards {tuple(step_rewards.shape)})")
    if returns.shape != step_rewards.shape[:1]:
        raise ValueError(f"returns has shape {tuple(returns.shape)}, expected {tuple(step_rewards.shape[:1])} "
                         f"([E] of step_rewards {tuple(step_rewards.shape)})")
    empty = ~valid.any(dim=1)
    if empty.any():
        raise ValueError(f"episodes {empty.nonzero().flatten().tolist()} have no valid step; every episode "
                         f"needs at least one")


def predicted_returns(step_rewards: Tensor, valid: Tensor) -> Tensor:
    """The return a reward model predicts: ``Σ_{t valid} Σ_i r̂_{t,i}``, ``[E, T, N] -> [E]``."""
    return torch.where(valid.unsqueeze(-1), step_rewards, 0.0).sum(dim=(1, 2))


def return_decomposition_loss(step_rewards: Tensor, valid: Tensor, returns: Tensor) -> Tensor:
    """Return decomposition: ``mean_e (R_e − Σ_{t,i} r̂_{t,i})²`` over whole episodes.

    The loss of AREL (Xiao et al., 2022, "Agent-Temporal Attention for Reward Redistribution in
    Episodic Multi-Agent Reinforcement Learning", arXiv:2201.04612) and the ``L_RD`` of Ren et al.
    (2022). Intuition: the per-step rewards must add up to what the episode actually scored.

    Args: see the module docstring for shapes. Returns a scalar.
    """
    _check_episodes(step_rewards, valid, returns)
    return (returns - predicted_returns(step_rewards, valid)).square().mean()


def sample_subsets(valid: Tensor, subset_size: int, generator: torch.Generator) -> Tensor:
    """Draw, per episode, ``K_e = min(subset_size, T_e)`` of its valid steps uniformly without
    replacement. ``valid [E, T] -> chosen [E, T]`` bool, a subset of ``valid``.

    Raises:
        ValueError: if ``subset_size`` is not an int ≥ 1.
    """
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 1:
        raise ValueError(f"subset_size must be an int >= 1, got {subset_size!r}")
    keys = torch.rand(valid.shape, generator=generator, device=valid.device)
    keys = torch.where(valid, keys, 2.0)                   # padded steps sort after every valid one
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < subset_size) & valid


def rrd_return_estimate(step_rewards: Tensor, valid: Tensor, subset_size: int,
                        generator: torch.Generator) -> Tensor:
    """RRD's Monte Carlo estimate of the predicted return, ``(T_e / K_e) Σ_{t∈I_e} Σ_i r̂_{t,i}``.

    ``I_e`` is a uniform random subset of ``K_e = min(subset_size, T_e)`` valid steps of episode e
    (``sample_subsets``), so the estimate is unbiased for ``predicted_returns`` (Ren et al., 2022).
    Shapes: ``[E, T, N]``, ``[E, T]`` -> ``[E]``.
    """
    chosen = sample_subsets(valid, subset_size, generator)
    lengths = valid.sum(dim=1).to(step_rewards.dtype)
    k = chosen.sum(dim=1).to(step_rewards.dtype)
    return lengths / k * predicted_returns(step_rewards, chosen)


def rrd_loss(step_rewards: Tensor, valid: Tensor, returns: Tensor, subset_size: int,
             generator: torch.Generator) -> Tensor:
    """Randomized return decomposition (Ren et al., 2022, "Learning Long-Term Reward Redistribution
    via Randomized Return Decomposition", ICLR, arXiv:2111.13485), the surrogate loss ``L_Rand-RD``:

    ``mean_e (R_e − (T_e / K_e) Σ_{t∈I_e} Σ_i r̂_{t,i})²`` with ``I_e`` a uniform random subset of
    ``K_e = min(subset_size, T_e)`` valid steps of episode e, drawn from ``generator``.

    Intuition: a cheap, unbiased Monte Carlo estimate of the episode's predicted return from K steps.
    The expected loss is the return decomposition loss plus the estimator's variance, which acts as
    a regulariser pulling the step rewards of an episode towards their mean (for iid steps a linear
    model's rewards shrink by about ``K / T``); with ``K ≥ T_e`` it is exactly
    ``return_decomposition_loss``.

    Args: see the module docstring for shapes; ``subset_size`` is an int ≥ 1. Returns a scalar.
    """
    _check_episodes(step_rewards, valid, returns)
    estimate = rrd_return_estimate(step_rewards, valid, subset_size, generator)
    return (returns - estimate).square().mean()


def normalise_to_outcome(step_rewards: Tensor, valid: Tensor, returns: Tensor) -> Tensor:
    """Shift each episode's step rewards so they add up to its return: ``[E, T, N] -> [E, T, N]``.

    ``r'_{t,i} = r̂_{t,i} + (R_e − Σ_{valid} r̂) / (T_e · N)`` on valid steps, 0 on padded ones. This
    is the Euclidean projection of ``r̂`` onto ``{r : Σ r = R_e}``: the smallest change that makes
    the redistribution exact. A shift, not a scale: a scale is undefined when ``Σ r̂ ≈ 0`` and flips
    every sign when ``Σ r̂`` and ``R`` disagree in sign, while a shift keeps the differences between
    steps and agents (the model's credit) as they are. The correction is computed in float64, so the
    sums match ``returns`` to the output dtype's rounding.

    Args: see the module docstring for shapes.
    """
    _check_episodes(step_rewards, valid, returns)
    r = step_rewards.double()
    mask = valid.unsqueeze(-1)
    count = valid.sum(dim=1).double() * step_rewards.shape[-1]
    shift = (returns.double() - predicted_returns(r, valid)) / count
    return torch.where(mask, r + shift[:, None, None], 0.0).to(step_rewards.dtype)


def episode_segments(done: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cut a time-major rollout into its episode segments, padded episode-major.

    A segment starts at ``t = 0`` and after every ``done`` step; the last segment of an env column is
    cut by the rollout end unless its last step is done. Segments are ordered by env, then time.

    Args:
        done: bool ``[T, B]``, step t ends its episode (``(terminated | truncated).any(-1)``).

    Returns:
        ``(index, valid, finished)``: ``index`` long ``[E, Tmax]`` into the flattened ``[T * B]``
        rollout (``t * B + b``, 0 on padding), ``valid`` bool ``[E, Tmax]``, and ``finished`` bool
        ``[E]``, True where the segment's last step is done (a whole episode).
        Gather with ``x.reshape(T * B, ...)[index]``.
    """
    if done.dim() != 2 or done.dtype != torch.bool or done.numel() == 0:
        raise ValueError(f"done must be a non-empty bool tensor [T, B], got shape {tuple(done.shape)} "
                         f"dtype {done.dtype}")
    T, B = done.shape
    cols = done.t().reshape(-1)                           # env-major [B * T]: segments stay contiguous
    start = torch.ones_like(cols)
    start[1:] = cols[:-1]
    start[::T] = True                                      # every env column starts a segment
    segment = start.long().cumsum(0) - 1                   # segment id of each (b, t)
    order = torch.arange(T * B, device=done.device)
    first = order[start]                                   # where each segment starts
    position = order - first[segment]
    lengths = torch.bincount(segment)
    index = torch.zeros(len(first), int(lengths.max()), dtype=torch.long, device=done.device)
    valid = torch.zeros_like(index, dtype=torch.bool)
    index[segment, position] = (order % T) * B + order // T
    valid[segment, position] = True
    last = position == lengths[segment] - 1
    finished = torch.zeros(len(first), dtype=torch.bool, device=done.device)
    finished[segment[last]] = cols[last]
    return index, valid, finished
