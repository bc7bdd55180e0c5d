"""Reward modes, applied in exactly one place: the vectorised env slice.

Shapes are ``[..., N]`` (any leading dims, agents last).
"""
from __future__ import annotations

import numpy as np

REWARD_MODES = ("shared", "individual", "mixed")
TEAM_REDUCTIONS = ("sum", "mean")


def team_reward(raw: np.ndarray, team: str) -> np.ndarray:
    """The team reward ``[..., 1]``: the sum or mean of the agents' raw rewards."""
    if team == "sum":
        return raw.sum(axis=-1, keepdims=True)
    if team == "mean":
        return raw.mean(axis=-1, keepdims=True)
    raise ValueError(f"env.team_reward must be one of {TEAM_REDUCTIONS}, got {team!r}")


def apply_reward_mode(raw: np.ndarray, mode: str, team: str = "mean", alpha: float = 0.5) -> np.ndarray:
    """Map raw per-agent rewards ``[..., N]`` to the rewards the learner sees, ``[..., N]``.

    - ``shared``: every agent gets the team reward (``team``: sum or mean of the raw rewards);
    - ``individual``: each agent gets its own raw reward;
    - ``mixed``: ``alpha * own + (1 - alpha) * team``.
    """
    if mode == "individual":
        return raw.astype(np.float32, copy=True)
    shared = np.broadcast_to(team_reward(raw, team), raw.shape)
    if mode == "shared":
        return shared.astype(np.float32)
    if mode == "mixed":
        return (alpha * raw + (1.0 - alpha) * shared).astype(np.float32)
    raise ValueError(f"env.reward must be one of {REWARD_MODES}, got {mode!r}")
