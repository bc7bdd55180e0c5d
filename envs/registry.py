"""Environment lookup: registered short names, registered prefixes, or any ``package.module:factory``.

Every factory must return a PettingZoo ``ParallelEnv`` or ``AECEnv``. An AEC env that declares
``is_parallelizable`` is converted with PettingZoo's own ``aec_to_parallel``; a turn-based one (it
does not) runs as it is, one player at a time (``marl.envs.turns.TurnBasedEnv``).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from typing import Any, Callable

from pettingzoo.utils.conversions import aec_to_parallel
from pettingzoo.utils.env import AECEnv, ParallelEnv

from marl.envs.errors import EnvError, error_summary, notice
from marl.envs.turns import TurnBasedEnv, is_turn_based

# Short name -> "module:factory". Kept as strings so that listing them imports nothing.
ENVS: dict[str, str] = {
    "mpe2:simple_spread_v3": "mpe2.simple_spread_v3:parallel_env",
    "mpe2:simple_speaker_listener_v4": "mpe2.simple_speaker_listener_v4:parallel_env",
    "mpe2:simple_reference_v3": "mpe2.simple_reference_v3:parallel_env",
    "diag:climbing": "marl.envs.diagnostic:climbing_game",
    "diag:penalty": "marl.envs.diagnostic:penalty_game",
    "diag:lazy_agent": "marl.envs.diagnostic:lazy_agent",
    "diag:delayed_chain": "marl.envs.diagnostic:delayed_chain",
}

# Prefix -> "module:factory" taking the rest of the id first: ``lbf:Foraging-8x8-2p-2f-coop-v3`` calls
# ``lbf_env("Foraging-8x8-2p-2f-coop-v3", **env.kwargs)``. Any id the package registers works.
PREFIXES: dict[str, str] = {
    "lbf": "marl.envs.gym_multiagent:lbf_env",
    "rware": "marl.envs.gym_multiagent:rware_env",
    "gym": "marl.envs.gym_multiagent:gym_env",
}

# Registered envs whose ``state()`` only concatenates every agent's observation (mpe2 recomputes them
# all for it). ``TeamEnv`` builds that state from the observations it already holds instead.
STATE_IS_OBSERVATIONS = frozenset({"mpe2:simple_spread_v3", "mpe2:simple_speaker_listener_v4",
                                   "mpe2:simple_reference_v3"})


def _import(env_id: str, module_name: str) -> Any:
    """The module ``module_name``, or the object that its last dotted parts name as attributes of
    an importable package: ``gymnasium_robotics.mamujoco_v1`` is a module that its package
    re-exports as an attribute, and PettingZoo's ``pettingzoo.butterfly.cooperative_pong_v5`` is a
    ``DeprecatedModule`` whose factories raise PettingZoo's own hint (use v6)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module_name and not module_name.startswith(missing + "."):
            # the module exists but imports one that does not: say which
            raise EnvError(f"env.id {env_id!r}: importing {module_name!r} failed: {exc}; install it") from None
        error = exc
    except ImportError as exc:
        raise EnvError(f"env.id {env_id!r}: importing {module_name!r} failed: {exc}") from None
    parts = module_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                found = getattr(found, part)
        except AttributeError:
            break
        return found
    raise EnvError(f"env.id {env_id!r}: cannot import module {module_name!r} ({error}); install it or fix the "
                   f"module path") from None


@contextlib.contextmanager
def _passing_on_deprecations(env_id: str):
    """Show the deprecation warnings that an env's package gives while it is imported or built
    (Python hides them outside ``__main__``, and PettingZoo's name the env version to use): each
    once per process, in one line. Other warnings go on to Python's filters as usual; those that
    the import machinery gives about itself (``<frozen ...>``) are dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            if not w.filename.startswith("<frozen"):
                notice(f"env.id {env_id!r}: {' '.join(str(w.message).split())}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def resolve_factory(env_id: str) -> Callable[..., Any]:
    """The callable behind ``env_id`` (a registered name, a registered prefix or
    ``package.module:factory``)."""
    prefix, sep, rest = env_id.partition(":")
    if env_id not in ENVS and sep and prefix in PREFIXES:
        if not rest:
            raise EnvError(f"env.id {env_id!r}: give the {prefix} env's name after '{prefix}:'")
        return functools.partial(resolve_factory(PREFIXES[prefix]), rest)
    target = ENVS.get(env_id, env_id)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise EnvError(
            f"env.id {env_id!r} is neither a registered env ({', '.join(sorted(ENVS))}), nor a registered "
            f"prefix ({', '.join(p + ':<name>' for p in PREFIXES)}), nor of the form 'package.module:factory'")
    with _passing_on_deprecations(env_id):
        module = _import(env_id, module_name)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise EnvError(f"env.id {env_id!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def make_parallel_env(env_id: str, kwargs: dict | None = None, render_mode: str | None = None) -> ParallelEnv:
    """Build the PettingZoo ParallelEnv named by ``env_id`` with ``kwargs``."""
    from marl.envs.batched import BATCHED_PREFIXES

    prefix, sep, _ = env_id.partition(":")
    if sep and prefix in BATCHED_PREFIXES and env_id not in ENVS:
        raise EnvError(f"env.id {env_id!r} is a batched simulator with no PettingZoo env: set env.batched: true "
                       f"(docs/batched_envs.md)")
    factory = resolve_factory(env_id)
    kwargs = dict(kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        with _passing_on_deprecations(env_id):
            env = factory(**kwargs)
    except EnvError:
        raise
    except ImportError as exc:   # e.g. PettingZoo's DeprecatedEnv: "..._v5 is now deprecated, use ..._v6 instead"
        raise EnvError(f"env.id {env_id!r}: {exc}") from None
    except TypeError as exc:
        raise EnvError(f"env.id {env_id!r}: factory rejected env.kwargs {kwargs}: {exc}") from None
    except Exception as exc:
        raise EnvError(f"env.id {env_id!r}: the factory raised {error_summary(exc)}") from exc
    if isinstance(env, AECEnv):
        env = TurnBasedEnv(env, env_id) if is_turn_based(env) else aec_to_parallel(env)
    if not isinstance(env, ParallelEnv):
        raise EnvError(
            f"env.id {env_id!r}: the factory returned {type(env).__name__}, not a PettingZoo "
            f"ParallelEnv or AECEnv; return one (a Gymnasium multi-agent env with Tuple spaces can be "
            f"wrapped in envs.gym_multiagent.GymMultiAgentEnv, or named as 'gym:<id>')")
    return env
