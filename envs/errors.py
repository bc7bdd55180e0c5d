"""Errors raised for environments that cannot be used as given."""


class EnvError(ValueError):
    """An environment id, factory or API behaviour that the framework cannot use.

    The message names the env and says what to do.
    """
