"""Errors raised for environments that cannot be used as given."""
from __future__ import annotations

import sys
import traceback


class EnvError(ValueError):
    """An environment id, factory or API behaviour that the framework cannot use.

    The message names the env and says what to do.
    """


class EnvWorkerLost(EnvError):
    """An env worker process that died or stopped answering: the run's envs are gone, which no
    fallback (such as a checkpoint without the env state) may hide."""


def error_summary(exc: BaseException) -> str:
    """``Type: first line of the message (at file:line in function)``, the innermost frame that raised:
    an env's own exception in one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}{where}"


_noticed: set[str] = set()


def notice(message: str) -> None:
    """Tell the user ``message`` once per process, in one line on stderr (prefixed ``[marl]``)."""
    if message not in _noticed:
        _noticed.add(message)
        print(f"[marl] {message}", file=sys.stderr)
