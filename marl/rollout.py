"""Rollout storage and the collection loop, shared by the learner process and by env workers that
act for their own envs (``train.act_in_workers``)."""
from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import torch

from envs.vector import SyncVectorEnv
from marl.learner import sample_actions


@dataclass
class Rollout:
    """Time-major rollout storage, ``[T, B, N, ...]``, as numpy arrays preallocated once."""

    obs: np.ndarray
    state: np.ndarray
    next_obs: np.ndarray
    next_state: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    raw_reward: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    @classmethod
    def allocate(cls, T, B, N, obs_dim, state_dim):
        f32 = np.float32
        return cls(obs=np.zeros((T, B, N, obs_dim), f32), state=np.zeros((T, B, state_dim), f32),
                   next_obs=np.zeros((T, B, N, obs_dim), f32), next_state=np.zeros((T, B, state_dim), f32),
                   actions=np.zeros((T, B, N), np.int64), logp=np.zeros((T, B, N), f32),
                   raw_reward=np.zeros((T, B, N), f32), reward=np.zeros((T, B, N), f32),
                   terminated=np.zeros((T, B, N), bool), truncated=np.zeros((T, B, N), bool))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in vars(self).items()}


def collect_rollout(venv, buf: Rollout, actor, generator: torch.Generator, seeds) -> list[dict]:
    """Reset env b of ``venv`` with ``seeds[b]``, then fill ``buf`` with ``T = len(buf.obs)`` steps,
    acting with ``actor`` (one batched forward over envs and agents per step) and drawing actions
    from ``generator``. Returns the finished episodes."""
    T = buf.obs.shape[0]
    obs, state = venv.reset(seeds)
    episodes = []
    for t in range(T):
        buf.obs[t], buf.state[t] = obs, state
        with torch.no_grad():
            logits = actor(torch.from_numpy(obs))
            actions = sample_actions(logits, generator)
            logp = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        # Every iteration starts with fresh episodes, so envs that end at the last step need no reset.
        step = venv.step(actions.numpy(), autoreset=t < T - 1)
        buf.actions[t], buf.logp[t] = actions.numpy(), logp.numpy()
        buf.next_obs[t], buf.next_state[t] = step.next_obs, step.next_state
        buf.raw_reward[t], buf.reward[t] = step.raw_reward, step.reward
        buf.terminated[t], buf.truncated[t] = step.terminated, step.truncated
        episodes.extend(step.episodes)
        obs, state = step.obs, step.state
    return episodes


def worker_seed(seed: int, iteration: int, worker: int) -> int:
    """Seed of the action draws of env worker ``worker`` in ``iteration`` (``train.act_in_workers``)."""
    return int(np.random.SeedSequence([seed, iteration, 2, worker]).generate_state(1, np.uint64)[0])


def act_in_worker(env_slice, pickled_actor: bytes, T: int, seeds, action_seed: int) -> tuple[dict, list]:
    """Run in an env worker process (see ``envs.vector.ProcessVectorEnv.call``): collect ``T`` steps
    of the worker's own envs with the actor in ``pickled_actor`` (plain pickle bytes, so its weights
    travel inline rather than through torch's shared-memory tensor sharing). Returns the rollout's
    arrays ``[T, n, ...]`` and the finished episodes."""
    torch.set_num_threads(1)
    actor = pickle.loads(pickled_actor)
    buf = Rollout.allocate(T, env_slice.n, env_slice.n_agents, env_slice.obs_dim, env_slice.state_dim)
    episodes = collect_rollout(SyncVectorEnv(env_slice), buf, actor,
                               torch.Generator().manual_seed(action_seed), seeds)
    return vars(buf), episodes
