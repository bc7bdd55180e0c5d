"""A module that re-exports another as an attribute, as ``gymnasium_robotics`` does ``mamujoco_v1``."""
from tests import user_envs as envs_v1  # noqa: F401
