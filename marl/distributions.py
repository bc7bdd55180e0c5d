"""Action distributions of the policy, batched over any leading dims ``[..., N]``.

- ``Categorical``: discrete actions from masked logits ``[..., A]`` (an illegal action has logit
  ``MASKED_LOGIT`` and probability exactly 0); sampling by Gumbel-max with an explicit generator.
- ``DiagGaussian``: continuous actions, a diagonal Gaussian with a state-independent log-std (as
  in the MAPPO and CleanRL continuous PPO). ``dims [..., A]`` marks the action dimensions an agent
  has; padded ones take no part in the log-probability or entropy. The env clips the actions to
  its bounds; the log-probability is that of the sampled (unclipped) action, so clipping does not
  bias the policy gradient.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
_LOG_2PI = math.log(2 * math.pi)


class Categorical:
    """π(u) = softmax(logits) over the last dim."""

    def __init__(self, logits: Tensor):
        self.logits = logits
        self.log_probs = torch.log_softmax(logits, -1)

    def sample(self, generator: torch.Generator | None) -> Tensor:
        """One action per row, long ``[...]`` (Gumbel-max, drawing ``logits.shape`` uniforms)."""
        u = torch.rand(self.logits.shape, generator=generator, device=self.logits.device).clamp_(1e-20, 1.0)
        return (self.logits - torch.log(-torch.log(u))).argmax(-1)

    def mode(self) -> Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, actions: Tensor) -> Tensor:
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)


class DiagGaussian:
    """N(mean, diag(exp(log_std)^2)) over the action dims ``dims`` marks (all when None)."""

    def __init__(self, mean: Tensor, log_std: Tensor, dims: Tensor | None = None):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)
        self.dims = None if dims is None else dims.to(mean.dtype).expand_as(mean)

    def _sum(self, x: Tensor) -> Tensor:
        return (x if self.dims is None else x * self.dims).sum(-1)

    def sample(self, generator: torch.Generator | None) -> Tensor:
        """One action vector per row, float ``[..., A]`` (padded dims hold the mean)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        if self.dims is not None:
            noise = noise * self.dims
        return self.mean + self.log_std.exp() * noise

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, actions: Tensor) -> Tensor:
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return self._sum(-0.5 * z ** 2 - self.log_std - 0.5 * _LOG_2PI)

    def entropy(self) -> Tensor:
        return self._sum(self.log_std + 0.5 * (1.0 + _LOG_2PI))
