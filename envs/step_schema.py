"""The step schema: every field of one env step, defined once.

A field is per env (leading dims only, ``[*lead]``) or per agent (``[*lead, N]``), followed by a
trailing shape written in the env's sizes (``obs_dim``, ``state_dim``, ``n_actions``, ``hidden``).
Its dtype is fixed, or follows the env (``obs``/``state``: e.g. uint8 images) or the action space
(``actions``: int64 indices ``[.., N]``, or float32 ``[.., N, A]`` for continuous actions).

Which consumer stores which fields is named here too, so each list derives from this table:

- ``CURRENT``: what the agents act on next (``venv.current()``, a snapshot's live arrays);
- ``ENV_STEP``: what a vector env's step returns (``marl.envs.vector.StepBatch``,
  ``marl.envs.batched.TensorStep``; the shared arrays add ``actions``);
- ``ROLLOUT``: what a rollout stores per step t (``marl.rollout.Rollout``, the credit views'
  episodes, the RLlib connector's batch, the replay's step fields).

``layout(lead, sizes, names)`` gives the ``(shape, dtype)`` of each field for given leading dims.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class StepField:
    """One field: ``name``; ``per_agent`` (an ``N`` dim after the leading dims); ``trailing``, the
    env sizes after those (names of ``Sizes`` attributes); ``dtype``, a numpy dtype, or ``"obs"``/
    ``"state"`` (the env's), or ``"action"`` (int64 without ``trailing``, or float32 with it for
    continuous actions); which lists hold it (``current``, ``env``, ``rollout``); a one-line doc."""

    name: str
    per_agent: bool
    trailing: tuple[str, ...]
    dtype: object
    current: bool
    env: bool
    rollout: bool
    doc: str


def _field(name, per_agent, trailing, dtype, stored: str, doc) -> StepField:
    stored = set(stored.split())
    return StepField(name, per_agent, trailing, dtype, "current" in stored, "env" in stored, "rollout" in stored, doc)


PER_AGENT, PER_ENV = True, False
# name, per agent or per env, trailing sizes, dtype rule, the lists that hold it (current: CURRENT,
# env: ENV_STEP, rollout: ROLLOUT, below), one-line doc
FIELDS = (
    _field("obs", PER_AGENT, ("obs_dim",), "obs", "current env rollout", "each agent's observation it acts on"),
    _field("state", PER_ENV, ("state_dim",), "state", "current env rollout", "the global state at obs"),
    _field("avail", PER_AGENT, ("n_actions",), bool, "current env rollout", "legal actions at obs"),
    _field("alive", PER_AGENT, (), bool, "current env rollout", "agents that act at obs"),
    _field("first", PER_ENV, (), bool, "current env rollout",
           "obs is the first of an episode (a recurrent policy resets there)"),
    _field("actor_h", PER_AGENT, ("hidden",), np.float32, "rollout",
           "the hidden state a recurrent actor acted on (H = 0 for a feed-forward one)"),
    _field("next_obs", PER_AGENT, ("obs_dim",), "obs", "env rollout",
           "the true successor of obs, kept from before an auto-reset"),
    _field("next_state", PER_ENV, ("state_dim",), "state", "env rollout", "the true successor of state"),
    _field("next_avail", PER_AGENT, ("n_actions",), bool, "env rollout", "legal actions at next_obs"),
    _field("acted", PER_AGENT, (), bool, "env", "agents that took this step (those alive before it)"),
    _field("actions", PER_AGENT, ("n_actions",), "action", "rollout",
           "action indices, or [.., A] floats for continuous actions"),
    _field("logp", PER_AGENT, (), np.float32, "rollout", "log-probability of the action under the behaviour policy"),
    _field("raw_reward", PER_AGENT, (), np.float32, "env rollout", "the reward as the env gave it"),
    _field("reward", PER_AGENT, (), np.float32, "env rollout",
           "the learner reward after the reward mode (0 for agents that did not act, but for waiting players)"),
    _field("terminated", PER_AGENT, (), bool, "env rollout", "the agent's episode truly ended (no bootstrap)"),
    _field("truncated", PER_AGENT, (), bool, "env rollout", "the agent's episode was cut (bootstraps)"),
    _field("done", PER_ENV, (), bool, "env", "the env's episode ended at this step"),
)
BY_NAME = {f.name: f for f in FIELDS}
CURRENT = tuple(f.name for f in FIELDS if f.current)
ENV_STEP = tuple(f.name for f in FIELDS if f.env)
ROLLOUT = tuple(f.name for f in FIELDS if f.rollout)
# the env step's fields that a rollout stores besides CURRENT (its successors, rewards and flags)
STEP_OUTCOME = tuple(name for name in ROLLOUT if BY_NAME[name].env and not BY_NAME[name].current)
# node field -> its successor's field ("obs" -> "next_obs")
SUCCESSOR = {f.name[len("next_"):]: f.name for f in FIELDS if f.name.startswith("next_")}


@dataclass(frozen=True)
class Sizes:
    """The env sizes and dtypes a layout is written in (``Sizes.of(env)`` reads them off a
    ``TeamEnv``, an ``EnvSlice`` or a vector env)."""

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    hidden: int = 0
    continuous: bool = False
    obs_dtype: object = np.float32
    state_dtype: object = np.float32

    @classmethod
    def of(cls, env, hidden: int = 0) -> Sizes:
        return cls(env.n_agents, env.obs_dim, env.state_dim, env.n_actions, hidden, env.continuous,
                   env.obs_dtype, env.state_dtype)


def layout(lead: tuple[int, ...], sizes: Sizes, names=ROLLOUT) -> dict[str, tuple[tuple[int, ...], object]]:
    """``{name: (shape, numpy dtype)}`` of the fields ``names`` (in that order) with leading dims
    ``lead`` (e.g. ``(B,)`` for one vector step, ``(T, B)`` for a rollout)."""
    out = {}
    for name in names:
        f = BY_NAME[name]
        shape = tuple(lead) + ((sizes.n_agents,) if f.per_agent else ())
        if f.dtype == "action":
            trailing, dtype = ((sizes.n_actions,), np.float32) if sizes.continuous else ((), np.int64)
        else:
            trailing = tuple(getattr(sizes, dim) for dim in f.trailing)
            dtype = {"obs": sizes.obs_dtype, "state": sizes.state_dtype}.get(f.dtype, f.dtype)
        out[name] = (shape + trailing, dtype)
    return out


def torch_dtype(dtype) -> torch.dtype:
    """The torch dtype of a numpy one (``bool`` -> ``torch.bool``, ``np.uint8`` -> ``torch.uint8``)."""
    return torch.from_numpy(np.empty(0, dtype)).dtype
