"""Gradient attribution of a scalar model output to its input features, with captum.

Integrated gradients (Sundararajan et al., 2017, "Axiomatic Attribution for Deep Networks",
arXiv:1703.01365): ``a_j = (x_j − x'_j) ∫_0^1 ∂f(x' + α (x − x'))/∂x_j dα`` for input x and
baseline x'. Completeness: ``Σ_j a_j = f(x) − f(x')``, up to the quadrature error that captum
reports as the convergence delta. Typical use: which part of a reward model's input (the state,
each agent's slice of it, the agent's own action) a redistributed reward ``r̂_{t,i}`` comes from.
"""
from __future__ import annotations

from typing import Callable

import torch
from captum.attr import IntegratedGradients

Tensor = torch.Tensor


def contiguous_groups(sizes: dict[str, int]) -> dict[str, slice]:
    """Consecutive feature blocks as slices, in order: ``{"state": 4, "obs": 3}`` ->
    ``{"state": slice(0, 4), "obs": slice(4, 7)}``."""
    groups, start = {}, 0
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"group {name!r} has size {size!r}, expected an int >= 0")
        groups[name] = slice(start, start + size)
        start += size
    return groups


def integrated_gradients(forward_fn: Callable[[Tensor], Tensor], inputs: Tensor, baseline: Tensor | None = None,
                         groups: dict[str, list[int] | slice] | None = None, n_steps: int = 50,
                         internal_batch_size: int | None = None) -> dict:
    """Integrated gradients of ``forward_fn`` per row, by captum's ``IntegratedGradients``.

    Args:
        forward_fn: maps rows ``[R, D]`` to one scalar per row ``[R]`` (differentiable).
        inputs: float ``[R, D]``.
        baseline: float ``[R, D]``, the reference input x'; None for zeros.
        groups: named feature sets (column lists or slices of D; they may overlap) whose
            attributions are summed per row.
        n_steps: quadrature points of the path integral (Gauss-Legendre).
        internal_batch_size: rows per forward pass inside captum (None: all ``R · n_steps`` at once).

    Returns:
        ``{"attributions": [R, D], "groups": {name: [R]}, "delta": [R], "output": [R]}``, where
        ``delta = Σ_j a_j − (f(x) − f(x'))`` is captum's convergence delta and ``output = f(x)``.

    Raises:
        ValueError: on shapes that do not fit, a group index outside ``[0, D)``, or ``n_steps < 1``.
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs has shape {tuple(inputs.shape)}, expected [R, D]")
    if baseline is None:
        baseline = torch.zeros_like(inputs)
    elif baseline.shape != inputs.shape:
        raise ValueError(f"baseline has shape {tuple(baseline.shape)}, expected {tuple(inputs.shape)} (inputs)")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    D = inputs.shape[1]
    columns = {}
    for name, cols in (groups or {}).items():
        index = torch.arange(D)[cols] if isinstance(cols, slice) else torch.as_tensor(cols, dtype=torch.long)
        if index.dim() != 1 or (index.numel() and (index.min() < 0 or index.max() >= D)):
            raise ValueError(f"group {name!r} has columns {cols!r}, expected indices in [0, {D})")
        columns[name] = index
    with torch.no_grad():
        output = forward_fn(inputs)
    if output.shape != inputs.shape[:1]:
        raise ValueError(f"forward_fn returned shape {tuple(output.shape)}, expected one scalar per row "
                         f"{tuple(inputs.shape[:1])}")
    ig = IntegratedGradients(forward_fn)
    attributions, delta = ig.attribute(inputs, baselines=baseline, n_steps=n_steps,
                                       internal_batch_size=internal_batch_size,
                                       return_convergence_delta=True)
    attributions = attributions.detach()
    return {"attributions": attributions,
            "groups": {name: attributions[:, index].sum(dim=1) for name, index in columns.items()},
            "delta": delta.detach().to(attributions.dtype), "output": output}
