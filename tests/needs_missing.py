"""An env module whose dependency is not installed (for the registry's import message)."""
import no_such_dependency_xyz  # noqa: F401


def make():
    raise AssertionError("unreachable")
