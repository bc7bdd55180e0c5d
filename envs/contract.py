"""The PettingZoo parallel API, checked where an env's output enters the framework (``TeamEnv``).

``Contract`` finds the first way in which one ``reset`` or ``step`` result breaks the API or the
env's own declared spaces, and raises it as one ``EnvError`` line naming the env, agent, step and
key:

- ``reset`` returns ``(observations, infos)`` and ``step`` ``(observations, rewards,
  terminations, truncations, infos)``, each a dict keyed by agent (always checked: it is cheap);
- every key and every agent in ``env.agents`` is in ``possible_agents``;
- each observation has the shape of its ``observation_space(agent)`` (each entry of a ``Dict``
  or ``Tuple`` space likewise), and a dtype that casts to the space's within its kind (a float
  observation for a ``uint8`` image space is refused); ``Discrete``, ``MultiBinary`` and
  ``MultiDiscrete`` observations must be in their space;
- rewards, terminations and truncations are scalars. A reward of size 1 (e.g. shape ``(1,)``)
  is read as the number it holds: that is unambiguous and common in Gymnasium-style envs;
- ``action_space(agent)`` does not change during an episode (declare the largest space and mask
  actions instead).

``TeamEnv`` runs these checks on every output of an env's first episode, or of every episode with
``env.check: always``. After that it converts outputs on its fast paths, and where a conversion
fails (a later episode breaks the contract) it calls the checks to name what broke. ``state()`` is
checked by ``TeamEnv`` itself (its length against the one seen at the first reset, always).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from gymnasium import spaces

from marl.envs.errors import EnvError

CHECKS = ("first", "always")
STEP_KEYS = ("observations", "rewards", "terminations", "truncations", "infos")


def _where(t: int) -> str:
    return "reset" if t == 0 else f"step {t} of its episode"


def space_problem(space: spaces.Space, value) -> tuple[str, str] | None:
    """``(key suffix, problem)`` where ``value`` does not fit ``space``, else None; the suffix
    names the entry of a ``Dict``/``Tuple`` space (``['pos']``, ``[1]``)."""
    if isinstance(space, spaces.Dict):
        if not isinstance(value, Mapping):
            return "", f"is a {type(value).__name__}, its space is a Dict with keys {sorted(space.spaces)}"
        missing = sorted(set(space.spaces) - set(value))
        if missing:
            return "", f"lacks the keys {missing} of its Dict space"
        for key, sub in space.spaces.items():
            found = space_problem(sub, value[key])
            if found:
                return f"[{key!r}]" + found[0], found[1]
        return None
    if isinstance(space, spaces.Tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(space.spaces):
            return "", f"is {type(value).__name__} {value!r:.60}, its space is a Tuple of {len(space.spaces)}"
        for i, (sub, item) in enumerate(zip(space.spaces, value)):
            found = space_problem(sub, item)
            if found:
                return f"[{i}]" + found[0], found[1]
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        return "", f"cannot be read as an array ({exc})"
    if array.dtype.kind not in "biuf":
        return "", f"is a {type(value).__name__} of dtype {array.dtype}, not numbers"
    if isinstance(space, spaces.Box):
        if array.shape != space.shape:
            return "", f"has shape {array.shape}, its observation_space says {space.shape}"
        if not np.can_cast(array.dtype, space.dtype, casting="same_kind"):
            return "", f"has dtype {array.dtype}, its observation_space says {space.dtype}"
        return None
    if not space.contains(array if array.ndim else array.item()):
        return "", f"is {value!r:.60}, outside its observation_space {space}"
    return None


def _scalar_problem(value) -> str | None:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "biuf":
        return f"is {value!r:.40} of type {type(value).__name__}, not a number"
    if array.size != 1:
        return f"has shape {array.shape}; expected one number per agent"
    return None


class Contract:
    """The checks of one env (see the module docstring); ``agents`` are ``possible_agents``."""

    def __init__(self, env_id: str, env, agents: list[str]):
        self.env_id, self.env, self.agents = env_id, env, list(agents)
        self._known = set(agents)
        self._obs_spaces = {a: env.observation_space(a) for a in agents}
        self._act_spaces = {a: env.action_space(a) for a in agents}

    def fail(self, agent: str | None, t: int, key: str, problem: str):
        who = f"agent {agent!r}, " if agent is not None else ""
        raise EnvError(f"env {self.env_id!r}: {who}{_where(t)}, {key}: {problem}")

    # -- the result tuples (always checked) ----------------------------------------------------
    def reset_result(self, result) -> tuple[dict, dict]:
        """``(observations, infos)`` of a ``reset`` result, or an ``EnvError``."""
        if not (isinstance(result, tuple) and len(result) == 2):
            kind = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"a {type(result).__name__}"
            self.fail(None, 0, "reset()", f"returned {kind}; PettingZoo's reset returns (observations, infos)")
        obs, infos = result
        if not isinstance(obs, Mapping) or not (infos is None or isinstance(infos, Mapping)):
            self.fail(None, 0, "reset()", f"returned ({type(obs).__name__}, {type(infos).__name__}); PettingZoo's "
                                          f"reset returns (observations, infos), two dicts keyed by agent")
        return obs, infos or {}

    def step_result(self, result, t: int) -> tuple:
        """The five dicts of a ``step`` result, or an ``EnvError``."""
        if not (isinstance(result, tuple) and len(result) == 5):
            kind = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"a {type(result).__name__}"
            self.fail(None, t, "step()", f"returned {kind}; PettingZoo's parallel step returns "
                                         f"({', '.join(STEP_KEYS)})")
        for key, value in zip(STEP_KEYS, result):
            if not (isinstance(value, Mapping) or (key == "infos" and value is None)):
                self.fail(None, t, f"step() {key}", f"is a {type(value).__name__}, not a dict keyed by agent")
        return result[:4] + (result[4] or {},)

    # -- the full checks -----------------------------------------------------------------------
    def check_reset(self, obs: Mapping, infos: Mapping) -> None:
        self._keys(0, observations=obs, infos=infos)
        try:
            self._observations(obs, 0)
        except EnvError:
            if self._swapped(obs, infos):
                self.fail(None, 0, "reset()", "returned (infos, observations); PettingZoo's order is "
                                              "(observations, infos)")
            raise

    def check_step(self, obs, rewards, terminations, truncations, infos, t: int) -> None:
        self._keys(t, observations=obs, rewards=rewards, terminations=terminations, truncations=truncations,
                   infos=infos)
        self._observations(obs, t)
        self.check_rewards(rewards, t)
        self._scalars("termination", terminations, t)
        self._scalars("truncation", truncations, t)
        for agent in self.env.agents:
            space = self.env.action_space(agent)
            if space != self._act_spaces[agent]:
                self.fail(agent, t, "action_space", f"changed during the episode from {self._act_spaces[agent]} to "
                                                    f"{space}; declare the largest space once and mask the actions "
                                                    f"that are not legal (an action_mask)")

    def check_rewards(self, rewards: Mapping, t: int) -> None:
        self._scalars("reward", rewards, t)

    def _scalars(self, key: str, values: Mapping, t: int) -> None:
        for agent, value in values.items():
            problem = _scalar_problem(value)
            if problem:
                self.fail(agent, t, key, problem)

    def _keys(self, t: int, **dicts) -> None:
        for key, values in (("env.agents", self.env.agents),) + tuple(dicts.items()):
            for agent in values:
                if agent not in self._known:
                    self.fail(agent, t, key, f"is not in possible_agents {self.agents}")

    def _observations(self, obs: Mapping, t: int) -> None:
        for agent, value in obs.items():
            found = space_problem(self._obs_spaces[agent], value)
            if found:
                self.fail(agent, t, "observation" + found[0], found[1])

    def _swapped(self, first: Mapping, second: Mapping) -> bool:
        return bool(second) and all(agent in self._known and not space_problem(self._obs_spaces[agent], value)
                                    for agent, value in second.items())
