"""The project's env stack as an RLlib ``MultiAgentEnv``.

One ``TeamMultiAgentEnv`` wraps one ``marl.envs.vector.EnvSlice`` of a single ``TeamEnv``, so RLlib sees
exactly what the local backend sees: the same registry and PettingZoo adapter (sorted agent ids,
flattened and zero-padded observations, masked actions, global state), and the same reward mode
and shaping, applied by the same code. What RLlib gets per agent:

- observation: the agent's padded observation followed by a one-hot agent id, ``[O + N]``, and,
  for envs with per-step action masks, the legal actions as 0/1, ``[O + N + A]``; the id lets one
  shared RLlib module run per-agent rows through our ``Actor`` (see ``module.py``), which masks
  the logits with the legal actions;
- reward: the learner reward (after ``env.reward`` mode and ``env.shaping``);
- terminated/truncated: the env's own flags.

Agents that leave the env early stay in RLlib's episode until it ends: their observations are
zeros, their rewards 0 and their actions are never sent to the env; the learner leaves those
steps out (``marl_alive``).

The learner needs more than RLlib keeps per agent, so the first agent's info carries it:
``marl_state`` and ``marl_alive`` (the global state of the observation it comes with, and which
agents act on it, ``[N]``) and, after a step, ``marl_terminated``/``marl_truncated`` (the env's
per-agent flags, ``[N]``) and, at the end of an episode, ``marl_episode`` (raw and learner
returns per agent, and the length) for logging.

An exception in ``reset``/``step`` is recorded with its traceback (in the EnvRunner's log and, if
``fault_log`` is set, as one JSON line in that file) before it propagates, so that the trainer can
report why an EnvRunner died even when Ray only says that the actor is gone.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback

import numpy as np
from gymnasium import spaces
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from marl.envs import EnvError, RewardSpec
from marl.envs.vector import EnvSlice

STATE = "marl_state"
ALIVE = "marl_alive"
TERMINATED = "marl_terminated"
TRUNCATED = "marl_truncated"
EPISODE = "marl_episode"

logger = logging.getLogger(__name__)


def env_config(cfg, fault_log: str | None = None) -> dict:
    """The ``env_config`` dict for ``TeamMultiAgentEnv`` from a project ``Config``."""
    import dataclasses

    from marl.config import reward_spec

    e = cfg.env
    return {"env_id": e.id, "env_kwargs": dict(e.kwargs), "reward": dataclasses.asdict(reward_spec(cfg)),
            "check": e.check, "fault_log": fault_log}


class TeamMultiAgentEnv(MultiAgentEnv):
    """See the module docstring. ``config`` is ``env_config(cfg)`` (an RLlib ``EnvContext``)."""

    def __init__(self, config: dict):
        super().__init__()
        self._slice = EnvSlice(config["env_id"], config["env_kwargs"], 1, RewardSpec(**config["reward"]),
                               check=config.get("check", "first"))
        team = self._slice.envs[0]
        self.agents = list(team.agents)
        self.possible_agents = list(team.agents)
        self.n_agents, self.obs_dim, self.n_actions = team.n_agents, team.obs_dim, team.n_actions
        self.dynamic_mask = team.dynamic_mask
        self._ids = np.eye(self.n_agents, dtype=np.float32)
        width = self.obs_dim + self.n_agents + (self.n_actions if self.dynamic_mask else 0)
        obs_space = spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self.observation_spaces = {a: obs_space for a in self.agents}
        if team.continuous:   # one Box for the shared module (homogeneous agents; see algorithm.build_config)
            box = spaces.Box(team.action_low[0], team.action_high[0], dtype=np.float32)
            self.action_spaces = {a: box for a in self.agents}
        else:
            self.action_spaces = {a: spaces.Discrete(team.n_actions) for a in self.agents}
        self.continuous = team.continuous
        self._fault_log = config.get("fault_log")
        self._worker_index = int(getattr(config, "worker_index", 0) or 0)
        self._rng = np.random.default_rng()
        self._steps = 0

    def _obs(self, obs: np.ndarray, avail: np.ndarray) -> dict:
        """``obs [N, O]`` as fresh per-agent rows ``[O + N (+ A)]`` (observation, one-hot id, legal
        actions)."""
        rows = np.empty((self.n_agents, self.observation_spaces[self.agents[0]].shape[0]), np.float32)
        rows[:, :self.obs_dim] = obs
        rows[:, self.obs_dim:self.obs_dim + self.n_agents] = self._ids
        if self.dynamic_mask:
            rows[:, self.obs_dim + self.n_agents:] = avail
        return dict(zip(self.agents, rows))

    def reset(self, *, seed=None, options=None):
        """A new episode. ``seed`` seeds it and the seeds of the episodes after it (RLlib seeds only
        the first reset of each env)."""
        try:
            if seed is not None:
                self._rng = np.random.default_rng(seed)
            else:
                seed = int(self._rng.integers(2**31 - 1))
            self._slice.reset([seed])
        except Exception as exc:
            self._record_fault(exc, "reset")
            raise
        out = self._slice.out
        infos = {a: {} for a in self.agents}
        infos[self.agents[0]].update({STATE: out["state"][0].copy(), ALIVE: out["alive"][0].copy()})
        return self._obs(out["obs"][0], out["avail"][0]), infos

    def step(self, action_dict: dict):
        try:
            self._steps += 1
            actions = np.array([[action_dict[a] for a in self.agents]],
                               dtype=np.float32 if self.continuous else np.int64)
            episodes = self._slice.step(actions, autoreset=False)   # RLlib calls reset() itself
        except Exception as exc:
            self._record_fault(exc, "step")
            raise
        out = self._slice.out
        term, trunc, done = out["terminated"][0].copy(), out["truncated"][0].copy(), bool(out["done"][0])
        info = {STATE: out["next_state"][0].copy(), ALIVE: out["alive"][0].copy(), TERMINATED: term,
                TRUNCATED: trunc}
        if episodes:
            ep = episodes[0]
            info[EPISODE] = {"raw_return": ep["raw_return"].tolist(), "return": ep["return"].tolist(),
                             "length": ep["length"]}
        infos = {a: {} for a in self.agents}
        infos[self.agents[0]] = info
        # RLlib keeps every agent in the episode until it ends (an agent that left acts on zeros, see
        # the module docstring); the env's own per-agent flags travel in the info.
        gone = term | ~out["acted"][0]   # at the end, agents that left earlier count as terminated
        everyone_terminated = bool(gone.all())
        terminateds = {a: done and bool(gone[i]) for i, a in enumerate(self.agents)}
        truncateds = {a: done and not gone[i] for i, a in enumerate(self.agents)}
        terminateds["__all__"] = done and everyone_terminated
        truncateds["__all__"] = done and not everyone_terminated
        rewards = {a: float(r) for a, r in zip(self.agents, out["reward"][0])}
        return self._obs(out["next_obs"][0], out["next_avail"][0]), rewards, terminateds, truncateds, infos

    def _record_fault(self, exc: BaseException, where: str) -> None:
        record = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                  "worker_index": self._worker_index, "where": where, "env_step": self._steps,
                  "error": str(exc) if isinstance(exc, EnvError) else f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
        logger.error("env %s failed in EnvRunner %d (pid %d) at step %d: %s", where, self._worker_index,
                     os.getpid(), self._steps, record["error"])
        if self._fault_log:
            try:
                with open(self._fault_log, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError:  # e.g. a cluster node without the run directory: the worker log has it
                pass

    def close(self):
        self._slice.close()


def make_team_env(config) -> TeamMultiAgentEnv:
    """The env creator registered with RLlib (``ray.tune.registry.register_env``)."""
    return TeamMultiAgentEnv(config)
