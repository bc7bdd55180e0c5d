"""Gymnasium multi-agent envs (the LBF and RWARE convention) as PettingZoo ParallelEnvs.

The convention: one ``gymnasium.Env`` whose observation and action spaces are ``Tuple``s with one
entry per agent; ``step`` takes a tuple of actions and returns a tuple of observations, a list of
rewards, and one ``terminated`` and one ``truncated`` flag for the whole team. ``GymMultiAgentEnv``
maps that onto the PettingZoo parallel API (``agent_0 .. agent_{N-1}``), so these envs take the
same ``TeamEnv`` path as every other env.

Both LBF (``lbforaging``) and RWARE (``rware``) report their time limit as ``terminated``. A time
limit is not a terminal state, so the factories here pass a ``time_limit`` test that turns such an
end into a truncation (which bootstraps): LBF's episode at ``max_episode_steps`` with food left,
and every RWARE end (its episodes only stop on a step or inactivity limit).
"""
from __future__ import annotations

import importlib
from typing import Callable

import gymnasium
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marl.envs.errors import EnvError


def agent_names(n: int) -> list[str]:
    """``agent_0 .. agent_{n-1}``, zero-padded so that sorting the names keeps index order."""
    width = len(str(n - 1))
    return [f"agent_{i:0{width}d}" for i in range(n)]


class GymMultiAgentEnv(ParallelEnv):
    """A Gymnasium env with per-agent ``Tuple`` spaces, a reward list and team flags, as a PettingZoo
    ``ParallelEnv`` (see the module docstring).

    Args:
        env: the Gymnasium env.
        time_limit: called with the env when it reports ``terminated``; True turns that end into a
            truncation (the env stopped on a time limit, not in a terminal state).
    """

    metadata = {"name": "gym_multiagent_v0", "render_modes": ["rgb_array"]}

    def __init__(self, env: gymnasium.Env, time_limit: Callable[[gymnasium.Env], bool] | None = None):
        obs_space, act_space = env.observation_space, env.action_space
        if not (isinstance(obs_space, spaces.Tuple) and isinstance(act_space, spaces.Tuple)
                and len(obs_space) == len(act_space) and len(obs_space) > 0):
            raise EnvError(f"Gymnasium env {env.spec.id if env.spec else type(env).__name__!r} does not follow the "
                           f"multi-agent convention (Tuple observation and action spaces with one entry per agent); "
                           f"got {obs_space} and {act_space}")
        self.env = env
        self.time_limit = time_limit
        self.possible_agents = agent_names(len(obs_space))
        self.agents: list[str] = []
        self.render_mode = getattr(env, "render_mode", None)
        self._obs_spaces = dict(zip(self.possible_agents, obs_space.spaces))
        self._act_spaces = dict(zip(self.possible_agents, act_space.spaces))

    def observation_space(self, agent):
        return self._obs_spaces[agent]

    def action_space(self, agent):
        return self._act_spaces[agent]

    def reset(self, seed=None, options=None):
        obs, _ = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return dict(zip(self.agents, obs)), {a: {} for a in self.agents}

    def step(self, actions):
        obs, rewards, terminated, truncated, _ = self.env.step(tuple(actions[a] for a in self.possible_agents))
        terminated, truncated = bool(terminated), bool(truncated)
        if terminated and self.time_limit is not None and self.time_limit(self.env):
            terminated, truncated = False, True
        agents = self.possible_agents
        out = (dict(zip(agents, obs)), {a: float(r) for a, r in zip(agents, rewards)},
               {a: terminated for a in agents}, {a: truncated for a in agents}, {a: {} for a in agents})
        if terminated or truncated:
            self.agents = []
        return out

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def _make(package: str | None, env_name: str, kwargs: dict) -> gymnasium.Env:
    if package is not None:
        try:
            importlib.import_module(package)   # registers the package's ids with Gymnasium
        except ImportError as exc:
            raise EnvError(f"env {env_name!r} needs the {package!r} package ({exc}); `make train` installs "
                           f"it") from None
    try:
        return gymnasium.make(env_name, disable_env_checker=True, **kwargs)
    except (gymnasium.error.Error, ModuleNotFoundError) as exc:
        where = f"{package} has" if package else "Gymnasium has"
        raise EnvError(f"{where} no env {env_name!r} ({exc})".splitlines()[0]) from None


def _lbf_time_limit(env: gymnasium.Env) -> bool:
    lbf = env.unwrapped
    return lbf.current_step >= lbf._max_episode_steps and lbf.field.sum() > 0


def lbf_env(env_name: str, **kwargs) -> GymMultiAgentEnv:
    """Level-Based Foraging (Papoudakis et al., 2021): ``env.id: lbf:Foraging-8x8-2p-2f-coop-v3``."""
    return GymMultiAgentEnv(_make("lbforaging", env_name, kwargs), time_limit=_lbf_time_limit)


def rware_env(env_name: str, **kwargs) -> GymMultiAgentEnv:
    """Multi-Robot Warehouse (Papoudakis et al., 2021): ``env.id: rware:rware-tiny-2ag-v2``."""
    return GymMultiAgentEnv(_make("rware", env_name, kwargs), time_limit=lambda env: True)


def gym_env(env_name: str, **kwargs) -> GymMultiAgentEnv:
    """Any Gymnasium env that follows the convention: ``env.id: gym:<id>``, where ``<id>`` may be
    ``package:EnvName-v0`` (Gymnasium's own syntax for importing the package that registers it)."""
    return GymMultiAgentEnv(_make(None, env_name, kwargs))
