"""The learner registry: every learner the training loop and both backends build, in one dict.

A learner is a family's networks and update rule (the on-policy actor-critic of ``CreditLearner``
today; the off-policy value-decomposition learner next). Nothing builds one but ``build_learner``,
from ``LEARNERS[cfg.algo.learner]``. What the loop and the backends call (``Learner``):

- ``actor``: the decentralised policy that acts (``marl.networks.Actor``);
- ``update(batch, generator) -> metrics``: learn from a batch of steps (``marl.rollout.Rollout``);
- ``credit_values() -> list[Tensor] | None``: per agent, the credit values of the last update
  (the advantage histograms of TensorBoard);
- ``state_dict()`` / ``load_state_dict(state)``: its part of a checkpoint;
- ``LearnerSpec.rollout_steps(cfg)``: how many steps each env takes between two updates (the loop
  collects that many, ``cfg.rollout_length``; every shipped learner reads ``algo.rollout_steps``);
- optionally ``prepare(batch, generator) -> dict`` with ``adv`` ``[T, B, N]``: per-step credit of a
  batch, for the credit views (heatmaps, credit fidelity, the oracle); without it they are skipped.

A ``LearnerSpec`` also says which config keys the learner owns: ``config``, a dataclass of its own
keys (flat under ``algo`` in YAML; ``cfg.algo.own`` holds it), ``reads``, the shared ``algo`` keys
it reads (None: all; any other one set away from its default is an error naming the key and the
learner), and ``validate(cfg)``/``check_env(cfg, continuous, turn_based, images)``, its cross-key
rules and its refusals of envs.

To add a learner: write its module, give it these members, and add one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Protocol

import torch

from marl.config import AlgoConfig, Config
from marl.learner import CreditLearner, ImageInputs
from marl.networks import Actor
from marl.q_learner import READS as Q_READS
from marl.q_learner import QConfig, QLearner
from marl.q_learner import check_env as q_check_env
from marl.q_learner import validate_config as q_validate


@dataclass(frozen=True)
class EnvShape:
    """What a learner is sized for: the env's agents, spaces and kind."""

    agents: list[str]
    obs_dim: int
    state_dim: int
    n_actions: int
    action_mask: torch.Tensor    # bool [N, A]: the actions each agent has at all
    dynamic_mask: bool = False   # per-step legal actions
    continuous: bool = False     # Box actions
    turn_based: bool = False     # one agent acts per step (an AEC env)
    images: ImageInputs | None = None

    @classmethod
    def of(cls, venv) -> EnvShape:
        """The shape of a vector env (``marl.envs.vector`` or ``marl.envs.batched``)."""
        return cls(list(venv.agents), venv.obs_dim, venv.state_dim, venv.n_actions,
                   torch.from_numpy(venv.action_mask), venv.dynamic_mask, venv.continuous, venv.turn_based,
                   ImageInputs.of(venv))


class Learner(Protocol):
    """What the training loop and both backends call on a learner (see the module docstring)."""

    actor: Actor

    def update(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict: ...

    def credit_values(self) -> list[torch.Tensor] | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class LearnerSpec:
    build: Callable[[Config, EnvShape, torch.device | str], Learner]
    summary: str
    config: Any = None                        # a dataclass of the learner's own algo keys, or None
    reads: frozenset[str] | None = None       # the shared AlgoConfig keys it reads (None: all)
    validate: Callable[[Config], None] | None = None
    check_env: Callable[..., None] | None = None
    method: Callable[[Config], str] = lambda cfg: cfg.algo.advantage   # how the credit views name it
    rollout_steps: Callable[[Config], int] = lambda cfg: cfg.algo.rollout_steps   # env steps per env between updates


def _actor_critic(cfg: Config, env: EnvShape, device: torch.device | str) -> CreditLearner:
    return CreditLearner(cfg, env.agents, env.obs_dim, env.state_dim, env.n_actions, env.action_mask,
                         env.dynamic_mask, device, env.continuous, env.turn_based, env.images)


_ALL_BUT_CLIP = frozenset(f.name for f in fields(AlgoConfig)) - {"clip"}   # A2C has no ratio to clip

LEARNERS: dict[str, LearnerSpec] = {
    "ppo": LearnerSpec(_actor_critic, "actor-critic with PPO's clipped surrogate (MAPPO, IPPO, COMA-PPO ...)"),
    "a2c": LearnerSpec(_actor_critic, "actor-critic with the plain policy gradient (MAA2C, COMA ...)",
                       reads=_ALL_BUT_CLIP),
    "q": LearnerSpec(QLearner, "off-policy value decomposition with episode replay (IQL, VDN, QMIX, QPLEX)",
                     config=QConfig, reads=Q_READS, validate=q_validate, check_env=q_check_env,
                     method=lambda cfg: f"q/{cfg.algo.own.mixer}"),
}


def credit_method(cfg: Config) -> str:
    """The credit method's name in the credit views: the advantage module, or ``q/<mixer>``."""
    return LEARNERS[cfg.algo.learner].method(cfg)


def build_learner(cfg: Config, env: EnvShape, device: torch.device | str = "cpu") -> Learner:
    """The learner ``cfg.algo.learner`` names, sized for ``env``, on ``device``."""
    return LEARNERS[cfg.algo.learner].build(cfg, env, device)
