"""Slow, obviously-correct reference implementations used only by the tests."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st


@st.composite
def rollout_batches(draw, max_t=8, max_b=3, max_n=4, with_n=False):
    """Random ``(reward, value, next_value, terminated, truncated, gamma, lam[, n])`` rollouts,
    ``[T, B, N]``, with episode ends scattered through them (a hypothesis strategy)."""
    T, B, N = draw(st.integers(1, max_t)), draw(st.integers(1, max_b)), draw(st.integers(1, max_n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    r, v, nv = (torch.randn(T, B, N, generator=g) for _ in range(3))
    term = torch.rand(T, B, N, generator=g) < draw(st.floats(0.0, 0.5))
    trunc = (torch.rand(T, B, N, generator=g) < draw(st.floats(0.0, 0.5))) & ~term
    batch = (r, v, nv, term, trunc, draw(st.floats(0.1, 1.0)), draw(st.floats(0.0, 1.0)))
    return batch + (draw(st.integers(1, 8)),) if with_n else batch


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


def _trajectories(reward, value, next_value, terminated, truncated):
    reward, value, next_value = (np.asarray(x, np.float64) for x in (reward, value, next_value))
    shape = value.shape
    return (np.broadcast_to(reward, shape), value, np.broadcast_to(next_value, shape),
            np.broadcast_to(terminated, shape), np.broadcast_to(truncated, shape))


def n_step_loop(reward, value, next_value, terminated, truncated, gamma, n):
    """n-step returns element by element: up to n rewards, stopping after the step that ends the
    trajectory or at the rollout end, then bootstrap from that step's next value unless it terminated."""
    reward, value, next_value, terminated, truncated = _trajectories(reward, value, next_value, terminated, truncated)
    T, B, N = value.shape
    target = np.zeros((T, B, N))
    for b in range(B):
        for a in range(N):
            for t in range(T):
                total, k = 0.0, t
                while True:
                    total += gamma ** (k - t) * reward[k, b, a]
                    if terminated[k, b, a]:
                        break
                    if truncated[k, b, a] or k == T - 1 or k - t + 1 == n:
                        total += gamma ** (k - t + 1) * next_value[k, b, a]
                        break
                    k += 1
                target[t, b, a] = total
    return target - value, target


def mc_loop(reward, value, next_value, terminated, truncated, gamma):
    """Monte Carlo return within the rollout: the n-step return with n unbounded."""
    return n_step_loop(reward, value, next_value, terminated, truncated, gamma, n=np.inf)


def td_lambda_loop(reward, value, next_value, terminated, truncated, gamma, lam):
    """λ-return by its forward view (Sutton & Barto eq. 12.3, episodic form): with M the number of
    steps left in the trajectory (rollout end included), ``G^λ = (1−λ) Σ_{n<M} λ^(n−1) G^(n) + λ^(M−1) G^(M)``,
    each n-step return G^(n) computed by ``n_step_loop``."""
    reward, value, next_value, terminated, truncated = _trajectories(reward, value, next_value, terminated, truncated)
    T, B, N = value.shape
    returns = [n_step_loop(reward, value, next_value, terminated, truncated, gamma, n)[1] for n in range(1, T + 1)]
    target = np.zeros((T, B, N))
    for b in range(B):
        for a in range(N):
            for t in range(T):
                M = 1
                while not (terminated[t + M - 1, b, a] or truncated[t + M - 1, b, a]) and t + M < T:
                    M += 1
                total = sum((1 - lam) * lam ** (n - 1) * returns[n - 1][t, b, a] for n in range(1, M))
                target[t, b, a] = total + lam ** (M - 1) * returns[M - 1][t, b, a]
    return target - value, target


def coma_critic_input_loop(state, actions, n_actions, agent, obs=None):
    """COMA critic input of one agent, built by hand for one (state, joint action): the state,
    each other agent's one-hot action (zeros in ``agent``'s own slot), ``agent``'s one-hot id, its obs."""
    state = np.asarray(state, np.float64)
    N = len(actions)
    blocks = []
    for j in range(N):
        block = np.zeros(n_actions)
        if j != agent:
            block[actions[j]] = 1.0
        blocks.append(block)
    ident = np.zeros(N)
    ident[agent] = 1.0
    parts = [state, *blocks, ident] + ([np.asarray(obs, np.float64)] if obs is not None else [])
    return np.concatenate(parts)


def coma_loop(q_of, logits, actions, avail, agent):
    """COMA advantage of ``agent`` at one step: ``q_of(joint_action)`` gives agent's Q of a joint action.

    Loops over agent's actions u', replacing its action in the joint action, and weights Q by the
    masked softmax of ``logits`` (``[A]``); returns ``(advantage, baseline)``."""
    logits, avail = np.asarray(logits, np.float64), np.asarray(avail, bool)
    weights = np.where(avail, np.exp(np.where(avail, logits, -np.inf) - logits[avail].max()), 0.0)
    pi = weights / weights.sum()
    baseline = 0.0
    for u in range(len(logits)):
        if avail[u]:
            joint = list(actions)
            joint[agent] = u
            baseline += pi[u] * q_of(joint)
    q_taken = q_of(list(actions))
    return q_taken - baseline, baseline
