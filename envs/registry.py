"""Environment lookup: registered short names, registered prefixes, or any ``package.module:factory``.

Every factory must return a PettingZoo ``ParallelEnv`` or ``AECEnv``. An AEC env that declares
``is_parallelizable`` is converted with PettingZoo's own ``aec_to_parallel``; a turn-based one (it
does not) runs as it is, one player at a time (``marl.envs.turns.TurnBasedEnv``).
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from pettingzoo.utils.conversions import aec_to_parallel
from pettingzoo.utils.env import AECEnv, ParallelEnv

from marl.envs.errors import EnvError, error_summary
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
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvError(f"env.id {env_id!r}: cannot import module {module_name!r} ({exc}); "
                       f"install it or fix the module path") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise EnvError(f"env.id {env_id!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def make_parallel_env(env_id: str, kwargs: dict | None = None, render_mode: str | None = None) -> ParallelEnv:
    """Build the PettingZoo ParallelEnv named by ``env_id`` with ``kwargs``."""
    factory = resolve_factory(env_id)
    kwargs = dict(kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = factory(**kwargs)
    except EnvError:
        raise
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
