"""Adapter from one PettingZoo ParallelEnv to fixed-shape numpy arrays over N sorted agents.

Agents with smaller observations are zero-padded to the largest; agents with fewer actions get
the extra actions masked out in ``action_mask``. The global state is ``env.state()`` where the
env implements it, else the concatenation of the agents' (unpadded) observations; for the envs in
``envs.registry.STATE_IS_OBSERVATIONS`` that concatenation is what ``state()`` computes anyway, so
it is built directly.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs.errors import EnvError
from envs.registry import STATE_IS_OBSERVATIONS, make_parallel_env


class TeamEnv:
    """One env, arrays in and out. Not vectorised: see ``envs.vector`` for that.

    Attributes:
        agents: sorted agent ids (length N).
        obs_dim, state_dim, n_actions: padded sizes.
        action_mask: bool ``[N, A]``, True where the action exists for that agent.
    """

    def __init__(self, env_id: str, kwargs: dict | None = None, render_mode: str | None = None):
        self.env_id = env_id
        self.env = make_parallel_env(env_id, kwargs, render_mode)
        self.agents = sorted(self.env.possible_agents)
        if not self.agents:
            raise EnvError(f"env {env_id!r} has no agents in possible_agents")
        obs_sizes, act_sizes = [], []
        for agent in self.agents:
            obs_space, act_space = self.env.observation_space(agent), self.env.action_space(agent)
            if not isinstance(act_space, spaces.Discrete):
                raise EnvError(
                    f"env {env_id!r}: agent {agent!r} has action space {act_space}; only Discrete "
                    f"actions are supported (for mpe2 envs pass env.kwargs.continuous_actions: false)")
            if not isinstance(obs_space, spaces.Box):
                raise EnvError(
                    f"env {env_id!r}: agent {agent!r} has observation space {type(obs_space).__name__}; "
                    f"only Box observations are supported (flatten them in a wrapper)")
            obs_sizes.append(int(np.prod(obs_space.shape)))
            act_sizes.append(int(act_space.n))
        self._obs_sizes = obs_sizes
        self.n_agents = len(self.agents)
        self.obs_dim = max(obs_sizes)
        self.n_actions = max(act_sizes)
        self.action_mask = np.arange(self.n_actions)[None, :] < np.array(act_sizes)[:, None]
        self._uniform_obs = len(set(obs_sizes)) == 1
        self._has_state = env_id not in STATE_IS_OBSERVATIONS
        obs, state = self.reset(seed=0)
        self.state_dim = state.shape[0]

    # -- conversion helpers ------------------------------------------------------------------
    def _obs_array(self, obs: dict) -> np.ndarray:
        if self._uniform_obs:
            return np.stack([np.asarray(obs[a], dtype=np.float32).reshape(-1) for a in self.agents])
        out = np.zeros((self.n_agents, self.obs_dim), dtype=np.float32)
        for i, agent in enumerate(self.agents):
            out[i, : self._obs_sizes[i]] = np.asarray(obs[agent], dtype=np.float32).reshape(-1)
        return out

    def _state(self, obs: dict, obs_array: np.ndarray) -> np.ndarray:
        if self._has_state:
            try:
                return np.asarray(self.env.state(), dtype=np.float32).reshape(-1)
            except (NotImplementedError, AttributeError):
                self._has_state = False
        if self._uniform_obs:   # the unpadded observations, concatenated: the rows of obs_array
            return obs_array.reshape(-1)
        return np.concatenate([np.asarray(obs[a], dtype=np.float32).reshape(-1) for a in self.agents])

    # -- API -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``obs [N, O]`` and ``state [S]``."""
        obs, _ = self.env.reset(seed=seed)
        if sorted(obs) != self.agents:
            raise EnvError(
                f"env {self.env_id!r}: reset returned observations for {sorted(obs)}, expected all of "
                f"possible_agents {self.agents}; envs whose agents come and go are not supported")
        obs_array = self._obs_array(obs)
        return obs_array, self._state(obs, obs_array)

    def step(self, actions: np.ndarray):
        """Step with ``actions [N]``.

        Returns ``(obs [N, O], state [S], reward [N], terminated [N], truncated [N], done)``, where
        ``obs``/``state`` are the true next observation, also at the end of an episode.
        """
        obs, rew, term, trunc, _ = self.env.step(dict(zip(self.agents, actions.tolist())))
        remaining = self.env.agents
        if remaining and len(remaining) != self.n_agents:
            gone = sorted(set(self.agents) - set(remaining))
            raise EnvError(
                f"env {self.env_id!r}: agents {gone} left mid-episode while others continue; envs "
                f"whose agents come and go are not supported")
        reward = np.array([rew.get(a, 0.0) for a in self.agents], dtype=np.float32)
        terminated = np.array([bool(term.get(a, False)) for a in self.agents])
        truncated = np.array([bool(trunc.get(a, False)) for a in self.agents])
        done = not remaining
        if done and not (terminated | truncated).all():
            # The env removed every agent without flags: treat the cut as a truncation.
            truncated |= ~terminated
        obs_array = self._obs_array(obs)
        return obs_array, self._state(obs, obs_array), reward, terminated, truncated, done

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()
