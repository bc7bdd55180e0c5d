"""Environment registry, the PettingZoo adapter, reward modes and vectorised envs."""
from dataclasses import dataclass

import numpy as np

from marl.envs.errors import EnvError, EnvWorkerLost
from marl.envs.registry import ENVS, make_parallel_env, resolve_factory
from marl.envs.rewards import REWARD_MODES, TEAM_REDUCTIONS, apply_reward_mode, team_reward
from marl.envs.team_env import TeamEnv
from marl.envs.vector import RewardSpec, StepBatch, make_vector_env


def make_env(env_id: str, kwargs: dict | None = None, render_mode: str | None = None) -> TeamEnv:
    """One env by ``env.id`` (registered short name or ``package.module:factory``) and ``env.kwargs``."""
    return TeamEnv(env_id, kwargs, render_mode)


@dataclass(frozen=True)
class EnvSpec:
    """What the networks need to know of an env: its sorted agents and padded sizes."""

    agents: list
    obs_dim: int
    state_dim: int
    n_actions: int
    action_mask: np.ndarray   # bool [N, A]: the actions (or, continuous, the action dims) each agent has
    dynamic_mask: bool
    continuous: bool
    turn_based: bool = False   # one player acts per step (marl.envs.turns)
    zero_sum: bool = False     # a zero-sum game (marl.envs.turns.ZERO_SUM)
    obs_image: object = None     # the ImageLayout of image observations (marl.envs.team_env), or None
    state_image: object = None   # the ImageLayout of an image env.state(), or None
    state_is_obs: bool = False   # the state is the agents' observations side by side


def env_spec(env_id: str, kwargs: dict | None = None, batched: bool = False) -> EnvSpec:
    """Probe one env (``batched``: a batched env of one) for its ``EnvSpec``."""
    if batched:
        from marl.envs.batched import make_batched_env
        env = make_batched_env(env_id, dict(kwargs or {}), 1)
        spec = EnvSpec(list(env.agents), env.obs_dim, env.state_dim, env.n_actions,
                       env.action_mask.cpu().numpy().astype(bool), bool(getattr(env, "dynamic_mask", False)),
                       bool(getattr(env, "continuous", False)))
    else:
        env = TeamEnv(env_id, kwargs)
        spec = EnvSpec(list(env.agents), env.obs_dim, env.state_dim, env.n_actions, env.action_mask, env.dynamic_mask,
                       env.continuous, env.turn_based, env.zero_sum, env.obs_image, env.state_image,
                       env.state_is_obs)
    close = getattr(env, "close", None)
    if close is not None:
        close()
    return spec


__all__ = ["ENVS", "EnvError", "EnvWorkerLost", "EnvSpec", "REWARD_MODES", "RewardSpec", "StepBatch", "TEAM_REDUCTIONS", "TeamEnv",
           "apply_reward_mode", "env_spec", "make_env", "make_parallel_env", "make_vector_env", "resolve_factory",
           "team_reward"]
