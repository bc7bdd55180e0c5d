"""Slow, obviously-correct reference implementations used only by the tests."""
from __future__ import annotations

import numpy as np


def gae_loop(reward, value, next_value, terminated, truncated, gamma, lam):
    """GAE by walking each (env, agent) trajectory element by element, splitting at episode ends."""
    reward, value, next_value = (np.asarray(x, np.float64) for x in (reward, value, next_value))
    T, B, N = value.shape
    reward = np.broadcast_to(reward, (T, B, N))
    terminated = np.broadcast_to(terminated, (T, B, N))
    truncated = np.broadcast_to(truncated, (T, B, N))
    adv = np.zeros((T, B, N))
    for b in range(B):
        for n in range(N):
            for t in range(T):
                # sum over k >= t of (γλ)^(k-t) δ_k, stopping after the first step that ends the episode
                total, weight = 0.0, 1.0
                for k in range(t, T):
                    bootstrap = 0.0 if terminated[k, b, n] else next_value[k, b, n]
                    delta = reward[k, b, n] + gamma * bootstrap - value[k, b, n]
                    total += weight * delta
                    if terminated[k, b, n] or truncated[k, b, n]:
                        break
                    weight *= gamma * lam
                adv[t, b, n] = total
    return adv, adv + value
