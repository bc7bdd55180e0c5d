"""Stepping envs with a policy: the one loop behind training rollouts (in the learner process, or in
env workers that act for their own envs, ``train.act_in_workers``), evaluation and credit analysis."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from marl.envs.vector import StepBatch, SyncVectorEnv
from marl.learner import sample_actions


@dataclass
class Rollout:
    """Time-major rollout storage, ``[T, B, N, ...]``, as numpy arrays preallocated once.

    ``alive[t]`` marks the agents that acted at step t (see ``marl.envs.team_env``); ``avail[t]`` and
    ``next_avail[t]`` are the legal actions at ``obs[t]`` and ``next_obs[t]``."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    alive: np.ndarray
    next_obs: np.ndarray
    next_state: np.ndarray
    next_avail: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    raw_reward: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    @classmethod
    def allocate(cls, T, B, N, obs_dim, state_dim, n_actions, device: torch.device | str | None = None):
        """Zeroed storage: numpy arrays, or with ``device`` torch tensors there (the batched-env path)."""
        shapes = {"obs": ((T, B, N, obs_dim), np.float32), "state": ((T, B, state_dim), np.float32),
                  "avail": ((T, B, N, n_actions), bool), "alive": ((T, B, N), bool),
                  "next_obs": ((T, B, N, obs_dim), np.float32), "next_state": ((T, B, state_dim), np.float32),
                  "next_avail": ((T, B, N, n_actions), bool), "actions": ((T, B, N), np.int64),
                  "logp": ((T, B, N), np.float32), "raw_reward": ((T, B, N), np.float32),
                  "reward": ((T, B, N), np.float32), "terminated": ((T, B, N), bool),
                  "truncated": ((T, B, N), bool)}
        if device is None:
            return cls(**{k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()})
        return cls(**{k: torch.zeros(shape, dtype=_TORCH_DTYPES[dtype], device=device)
                      for k, (shape, dtype) in shapes.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields as tensors (sharing the numpy arrays' memory)."""
        return {k: torch.as_tensor(v) for k, v in vars(self).items()}


_TORCH_DTYPES = {np.float32: torch.float32, bool: torch.bool, np.int64: torch.long}


def act(actor, current: dict[str, np.ndarray], generator: torch.Generator | None, greedy: bool = False,
        masked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Actions ``[B, N]`` and their log-probabilities (tensors) for ``current`` (``obs``, and
    ``avail`` when ``masked``; numpy arrays or tensors) from one batched forward over envs and
    agents: sampled from ``generator``, or the most likely ones when ``greedy``."""
    device = next(actor.parameters()).device
    with torch.no_grad():
        logits = actor(torch.as_tensor(current["obs"], device=device),
                       torch.as_tensor(current["avail"], device=device) if masked else None)
        actions = logits.argmax(-1) if greedy else sample_actions(logits, generator)
        logp = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return actions, logp


def policy_steps(venv, actor, generator: torch.Generator | None, greedy: bool = False,
                 autoreset: bool = True) -> Iterator[tuple[dict, np.ndarray, np.ndarray, StepBatch]]:
    """Step ``venv`` with ``actor`` from where its envs are now, one step per iteration, for as long
    as the caller pulls: yields ``(current, actions, logp, step)`` where ``current`` is what the
    agents acted on (``venv.current()`` layout) and ``step`` the ``StepBatch`` it led to. Arrays
    are numpy for PettingZoo vector envs and tensors for batched ones (``venv.on_tensors``)."""
    masked, on_tensors = venv.dynamic_mask, getattr(venv, "on_tensors", False)
    current = venv.current()
    while True:
        actions, logp = act(actor, current, generator, greedy, masked)
        if not on_tensors:
            actions, logp = actions.cpu().numpy(), logp.cpu().numpy()
        step = venv.step(actions, autoreset)
        yield current, actions, logp, step
        current = {"obs": step.obs, "state": step.state, "avail": step.avail, "alive": step.alive}


def collect_rollout(venv, buf: Rollout, actor, generator: torch.Generator) -> list[dict]:
    """Fill ``buf`` with ``T = len(buf.obs)`` steps of ``venv``, continuing its episodes where they
    are, acting with ``actor`` and drawing actions from ``generator``. Returns the episodes that
    finished. ``buf`` holds numpy arrays for a PettingZoo vector env, tensors on the env's device
    for a batched one."""
    T = buf.obs.shape[0]
    episodes = []
    for t, (current, actions, logp, step) in zip(range(T), policy_steps(venv, actor, generator)):
        buf.obs[t], buf.state[t], buf.avail[t], buf.alive[t] = (current["obs"], current["state"], current["avail"],
                                                                current["alive"])
        buf.actions[t], buf.logp[t] = actions, logp
        buf.next_obs[t], buf.next_state[t], buf.next_avail[t] = step.next_obs, step.next_state, step.next_avail
        buf.raw_reward[t], buf.reward[t] = step.raw_reward, step.reward
        buf.terminated[t], buf.truncated[t] = step.terminated, step.truncated
        episodes.extend(step.episodes)
    return episodes


def worker_seed(seed: int, iteration: int, worker: int) -> int:
    """Seed of the action draws of env worker ``worker`` in ``iteration`` (``train.act_in_workers``)."""
    return int(np.random.SeedSequence([seed, iteration, 2, worker]).generate_state(1, np.uint64)[0])


def act_in_worker(env_slice, pickled_actor: bytes, T: int, action_seed: int) -> tuple[dict, list]:
    """Run in an env worker process (see ``marl.envs.vector.ProcessVectorEnv.call``): collect ``T`` steps
    of the worker's own envs, continuing their episodes, with the actor in ``pickled_actor`` (plain
    pickle bytes, so its weights travel inline rather than through torch's shared-memory tensor
    sharing). Returns the rollout's arrays ``[T, n, ...]`` and the finished episodes (their ``env``
    is the row within the worker's slice)."""
    torch.set_num_threads(1)
    actor = pickle.loads(pickled_actor)
    buf = Rollout.allocate(T, env_slice.n, env_slice.n_agents, env_slice.obs_dim, env_slice.state_dim,
                           env_slice.n_actions)
    episodes = collect_rollout(SyncVectorEnv(env_slice), buf, actor, torch.Generator().manual_seed(action_seed))
    return vars(buf), episodes
