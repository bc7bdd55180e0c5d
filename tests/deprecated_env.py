"""An env module that warns of its own deprecation, on import and on every build, as PettingZoo's do."""
import warnings

from tests.user_envs import AnySpaces

warnings.warn("deprecated_env is deprecated, use any_spaces", DeprecationWarning, stacklevel=2)


def make():
    warnings.warn("make() will be removed in v2", DeprecationWarning, stacklevel=2)
    return AnySpaces()
