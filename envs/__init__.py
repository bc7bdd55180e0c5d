"""Environment registry, the PettingZoo adapter, reward modes and vectorised envs."""
from envs.errors import EnvError
from envs.registry import ENVS, make_parallel_env, resolve_factory
from envs.rewards import REWARD_MODES, TEAM_REDUCTIONS, apply_reward_mode, team_reward
from envs.team_env import TeamEnv
from envs.vector import RewardSpec, StepBatch, make_vector_env


def make_env(env_id: str, kwargs: dict | None = None, render_mode: str | None = None) -> TeamEnv:
    """One env by ``env.id`` (registered short name or ``package.module:factory``) and ``env.kwargs``."""
    return TeamEnv(env_id, kwargs, render_mode)


__all__ = ["ENVS", "EnvError", "REWARD_MODES", "RewardSpec", "StepBatch", "TEAM_REDUCTIONS", "TeamEnv",
           "apply_reward_mode", "make_env", "make_parallel_env", "make_vector_env", "resolve_factory",
           "team_reward"]
