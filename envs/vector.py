"""Vectorised envs: B copies of a ``TeamEnv`` stepped together, arrays shaped ``[B, N, ...]``.

``EnvSlice`` does the per-env work (stepping, auto-reset, reward mode, episode bookkeeping).
``SyncVectorEnv`` runs one slice in this process; ``ProcessVectorEnv`` splits the B envs into
slices that run in worker processes, so the learner batches inference while workers step.
"""
from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from envs.errors import EnvError
from envs.rewards import apply_reward_mode, resolve_potential, shape_reward
from envs.team_env import TeamEnv


@dataclass(frozen=True)
class RewardSpec:
    """How raw env rewards become learner rewards (see ``envs.rewards``)."""

    mode: str = "shared"
    team: str = "mean"
    alpha: float = 0.5
    shaping: str = ""     # potential Φ: built-in name or "module:function"; "" for none
    gamma: float = 0.99   # discount used by the shaping term


@dataclass
class StepBatch:
    """One vectorised step. ``obs``/``state`` are the observations to act on next (already reset
    where an episode ended); ``next_obs``/``next_state`` are the true successors of the step,
    kept from before the auto-reset so that a truncation can bootstrap correctly."""

    obs: np.ndarray          # [B, N, O]
    state: np.ndarray        # [B, S]
    next_obs: np.ndarray     # [B, N, O]
    next_state: np.ndarray   # [B, S]
    raw_reward: np.ndarray   # [B, N] as the env gave it
    reward: np.ndarray       # [B, N] after the reward mode
    terminated: np.ndarray   # [B, N] bool
    truncated: np.ndarray    # [B, N] bool
    done: np.ndarray         # [B] bool: the episode ended at this step
    episodes: list           # finished episodes: dicts with raw_return [N], return [N], length


class EnvSlice:
    """A list of envs stepped in sequence, writing into preallocated arrays."""

    def __init__(self, env_id: str, kwargs: dict, n: int, reward: RewardSpec):
        self.envs = [TeamEnv(env_id, kwargs) for _ in range(n)]
        e = self.envs[0]
        self.reward = reward
        self.n, self.n_agents, self.obs_dim, self.state_dim = n, e.n_agents, e.obs_dim, e.state_dim
        shape = (n, self.n_agents)
        self.obs = np.zeros(shape + (self.obs_dim,), np.float32)
        self.state = np.zeros((n, self.state_dim), np.float32)
        self._raw_return = np.zeros(shape, np.float64)
        self._return = np.zeros(shape, np.float64)
        self._length = np.zeros(n, np.int64)
        self._potential = resolve_potential(reward.shaping) if reward.shaping else None
        self._phi = np.zeros((n, 1), np.float32)

    def _phi_of(self, i: int) -> float:
        return float(self._potential(self.envs[i].env))

    def reset(self, seeds) -> tuple[np.ndarray, np.ndarray]:
        for i, (env, seed) in enumerate(zip(self.envs, seeds)):
            self.obs[i], self.state[i] = env.reset(seed=int(seed))
            if self._potential is not None:
                self._phi[i] = self._phi_of(i)
        self._raw_return[:] = 0.0
        self._return[:] = 0.0
        self._length[:] = 0
        return self.obs.copy(), self.state.copy()

    def step(self, actions: np.ndarray) -> StepBatch:
        n, shape = self.n, (self.n, self.n_agents)
        next_obs = np.empty_like(self.obs)
        next_state = np.empty_like(self.state)
        raw = np.empty(shape, np.float32)
        term = np.empty(shape, bool)
        trunc = np.empty(shape, bool)
        done = np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            next_obs[i], next_state[i], raw[i], term[i], trunc[i], done[i] = env.step(actions[i])
        reward = apply_reward_mode(raw, self.reward.mode, self.reward.team, self.reward.alpha)
        if self._potential is not None:
            phi_next = np.array([[self._phi_of(i)] for i in range(n)], np.float32)
            reward = shape_reward(reward, self._phi, phi_next, term, self.reward.gamma)
            self._phi = phi_next
        self._raw_return += raw
        self._return += reward
        self._length += 1
        episodes = []
        self.obs[:], self.state[:] = next_obs, next_state
        for i in np.flatnonzero(done):
            episodes.append({"raw_return": self._raw_return[i].copy(), "return": self._return[i].copy(),
                             "length": int(self._length[i])})
            self._raw_return[i] = 0.0
            self._return[i] = 0.0
            self._length[i] = 0
            self.obs[i], self.state[i] = self.envs[i].reset()
            if self._potential is not None:
                self._phi[i] = self._phi_of(i)
        return StepBatch(self.obs.copy(), self.state.copy(), next_obs, next_state, raw, reward,
                         term, trunc, done, episodes)

    def close(self):
        for env in self.envs:
            env.close()


class SyncVectorEnv:
    """All B envs in this process."""

    def __init__(self, env_id: str, kwargs: dict, num_envs: int, reward: RewardSpec):
        self._slice = EnvSlice(env_id, kwargs, num_envs, reward)
        probe = self._slice.envs[0]
        self.num_envs = num_envs
        self.agents, self.n_agents = probe.agents, probe.n_agents
        self.obs_dim, self.state_dim, self.n_actions = probe.obs_dim, probe.state_dim, probe.n_actions
        self.action_mask = probe.action_mask

    @property
    def team_envs(self) -> list[TeamEnv]:
        """The envs themselves (e.g. to read a diagnostic env's ``true_credit``)."""
        return self._slice.envs

    def reset(self, seeds):
        return self._slice.reset(seeds)

    def step(self, actions: np.ndarray) -> StepBatch:
        return self._slice.step(actions)

    def close(self):
        self._slice.close()


def _worker(conn, env_id, kwargs, n, reward):
    try:
        env_slice = EnvSlice(env_id, kwargs, n, reward)
        e = env_slice.envs[0]
        conn.send(("ok", (e.agents, e.obs_dim, e.state_dim, e.n_actions, e.action_mask)))
        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                conn.send(("ok", env_slice.step(arg)))
            elif cmd == "reset":
                conn.send(("ok", env_slice.reset(arg)))
            elif cmd == "close":
                env_slice.close()
                conn.send(("ok", None))
                return
    except KeyboardInterrupt:
        return
    except Exception as exc:  # report to the learner, which raises it with context
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessVectorEnv:
    """B envs split over ``workers`` processes; same interface as ``SyncVectorEnv``."""

    def __init__(self, env_id: str, kwargs: dict, num_envs: int, reward: RewardSpec, workers: int):
        if not 1 <= workers <= num_envs:
            raise EnvError(f"env.workers must be in [1, env.num_envs={num_envs}], got {workers}")
        ctx = mp.get_context("spawn")
        sizes = [num_envs // workers + (i < num_envs % workers) for i in range(workers)]
        self._bounds = np.cumsum([0] + sizes)
        self._conns, self._procs = [], []
        for size in sizes:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, env_id, kwargs, size, reward), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        info = [self._recv(c) for c in self._conns][0]
        self.agents, self.obs_dim, self.state_dim, self.n_actions, self.action_mask = info
        self.n_agents, self.num_envs = len(self.agents), num_envs

    @staticmethod
    def _recv(conn):
        status, payload = conn.recv()
        if status == "error":
            raise EnvError(f"env worker failed: {payload}")
        return payload

    def _chunks(self, array):
        return [array[a:b] for a, b in zip(self._bounds[:-1], self._bounds[1:])]

    def reset(self, seeds):
        for conn, chunk in zip(self._conns, self._chunks(np.asarray(seeds))):
            conn.send(("reset", chunk))
        parts = [self._recv(c) for c in self._conns]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def step(self, actions: np.ndarray) -> StepBatch:
        for conn, chunk in zip(self._conns, self._chunks(actions)):
            conn.send(("step", chunk))
        parts = [self._recv(c) for c in self._conns]
        fields = {name: np.concatenate([getattr(p, name) for p in parts])
                  for name in ("obs", "state", "next_obs", "next_state", "raw_reward", "reward",
                               "terminated", "truncated", "done")}
        return StepBatch(**fields, episodes=[ep for p in parts for ep in p.episodes])

    def close(self):
        for conn in self._conns:
            try:
                conn.send(("close", None))
                conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def make_vector_env(env_id: str, kwargs: dict, num_envs: int, reward: RewardSpec, workers: int = 0):
    """``workers == 0`` steps envs in this process; otherwise in that many worker processes."""
    if workers:
        return ProcessVectorEnv(env_id, kwargs, num_envs, reward, workers)
    return SyncVectorEnv(env_id, kwargs, num_envs, reward)
