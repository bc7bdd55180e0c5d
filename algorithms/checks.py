"""Argument checks shared by the credit functions: one message per mistake, quoting dtypes and shapes."""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def check_integer(x: Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is an integer tensor (actions, indices, permutations)."""
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")


def check_state_lead(state: Tensor, lead: tuple, name: str, other: Tensor) -> None:
    """Raise ``ValueError`` unless ``state`` is ``[*lead, S]``, ``lead`` the leading dims of ``other``
    (the argument ``name``)."""
    if tuple(state.shape[:-1]) != lead or state.dim() < 1:
        raise ValueError(f"state has shape {tuple(state.shape)}, expected {lead + ('S',)} "
                         f"to match {name} {tuple(other.shape)}")


def check_avail(avail: Tensor | None, like: Tensor) -> Tensor:
    """``avail`` as a bool tensor broadcast to ``like``'s ``[..., N, A]`` (all True if None)."""
    if avail is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    if avail.dtype != torch.bool:
        raise TypeError(f"avail must be a bool tensor (True = available), got dtype {avail.dtype}")
    try:
        return avail.expand(like.shape)
    except RuntimeError:
        raise ValueError(f"avail has shape {tuple(avail.shape)}, which does not broadcast to "
                         f"{tuple(like.shape)} ([..., N, A])") from None
