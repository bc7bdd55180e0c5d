"""The reward pipeline, over torch tensors: the one implementation both env paths call.

The batched envs (``marl.envs.batched``) pass their tensors; the PettingZoo slices
(``marl.envs.vector``) wrap their numpy arrays with ``torch.from_numpy`` (no copy) and read the
result back with ``.numpy()``, so their arrays keep their dtypes and shapes.

Shapes are ``[..., N]`` (any leading dims, agents last); team signals are ``[..., 1]``.
"""
from __future__ import annotations

import numpy as np
import torch

REWARD_MODES = ("shared", "individual", "mixed", "difference")
TEAM_REDUCTIONS = ("sum", "mean")
DIFFERENCE_COUNTERFACTUALS = ("resimulate", "reward_model")   # env.difference (see marl.config.EnvConfig)


def is_team_reward(mode: str) -> bool:
    """Whether reward mode ``mode`` pays every agent the one team reward (``shared``): one reward
    column, so a value critic learns one return for the team (one head), where the other modes pay
    each agent its own (one head per agent)."""
    return mode == "shared"


def team_reward(raw: torch.Tensor, team: str, present: torch.Tensor | None = None) -> torch.Tensor:
    """The team reward ``[..., 1]``: the sum, or the mean over all N agents (``sum / N``), of the
    agents' raw rewards ``[..., N]``; with ``present`` (bool ``[..., N]``) absent agents' rewards
    are left out. The mean always divides by N, present or not, so that ``mean`` and ``sum`` ask for
    the same policies: a mean over the agents present would weigh a step by how many agents are
    left, and so change the team's objective whenever one leaves (``docs/envs.md``)."""
    if team not in TEAM_REDUCTIONS:
        raise ValueError(f"env.team_reward must be one of {TEAM_REDUCTIONS}, got {team!r}")
    total = (raw if present is None else torch.where(present, raw, 0.0)).sum(-1, keepdim=True)
    return total if team == "sum" else total / raw.shape[-1]


def apply_reward_mode(raw: torch.Tensor, mode: str, team: str = "mean", alpha: float = 0.5,
                      present: torch.Tensor | None = None) -> torch.Tensor:
    """Map raw per-agent rewards ``[..., N]`` to the rewards the learner sees, float32 ``[..., N]``
    (``individual`` returns ``raw`` itself where it is float32 already).

    - ``shared``: every agent gets the team reward (``team``: sum or mean of the raw rewards);
    - ``individual``: each agent gets its own raw reward;
    - ``mixed``: ``alpha * own + (1 - alpha) * team``.

    (``difference`` needs counterfactual team rewards: see ``reward_pipeline``; with a learned
    counterfactual the env pays ``shared`` and the learner replaces it, see ``marl.config.reward_spec``.)

    ``present`` (bool ``[..., N]``, default all) marks the agents that acted; the team reward leaves
    the others out. Rewards of absent agents are the caller's to zero.
    """
    if mode == "individual":
        return raw.float()
    shared = team_reward(raw, team, present).expand_as(raw)
    if mode == "shared":
        return shared.float()
    if mode == "mixed":
        return (alpha * raw + (1.0 - alpha) * shared).float()
    raise ValueError(f"env.reward must be one of {REWARD_MODES}, got {mode!r}")


def difference_reward(team: torch.Tensor, counterfactual: torch.Tensor) -> torch.Tensor:
    """The ``difference`` reward mode: ``D_i = G(s, u) − G(s, (u_-i, c_i))`` ``[..., N]`` from the
    team reward ``[..., 1]`` and the re-simulated counterfactual team rewards ``[..., N]`` (Wolpert &
    Tumer, 2002; ``marl.algorithms.difference`` has the same formula for learners that predict the
    counterfactual)."""
    if team.shape[-1:] != (1,) or team.shape[:-1] != counterfactual.shape[:-1]:
        raise ValueError(f"team reward {tuple(team.shape)} and counterfactual rewards {tuple(counterfactual.shape)} "
                         "do not pair: expected [..., 1] and [..., N]")
    return team - counterfactual


def pay_at_episode_end(reward: torch.Tensor, held: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The episodic-reward mode: every reward ``[..., N]`` is withheld in ``held`` (updated in place)
    and an agent's sum is paid at its last step (``ends``, bool ``[..., N]``); returns what is paid
    now, in ``held``'s dtype."""
    held += reward
    paid = held * ends
    held *= ~ends
    return paid


# -- potential-based shaping (Ng, Harada & Russell, 1999) ------------------------------------------

def shape_reward(reward: torch.Tensor, phi: torch.Tensor, phi_next: torch.Tensor, terminated: torch.Tensor,
                 gamma: float) -> torch.Tensor:
    """``r' = r + γ Φ(s') − Φ(s)`` with Φ(s') = 0 where s' is terminal, so optimal policies are
    unchanged. ``reward``/``terminated`` are ``[..., N]``; ``phi``/``phi_next`` broadcast (``[..., 1]``)."""
    phi_next = torch.where(terminated, 0.0, phi_next)
    return (reward + gamma * phi_next - phi).float()


def reward_pipeline(raw: torch.Tensor, spec, present: torch.Tensor | None = None,
                    counterfactual: torch.Tensor | None = None, phi: torch.Tensor | None = None,
                    phi_next: torch.Tensor | None = None, terminated: torch.Tensor | None = None,
                    ends: torch.Tensor | None = None, held: torch.Tensor | None = None) -> torch.Tensor:
    """The rewards the learner sees ``[..., N]`` from the env's raw rewards ``raw [..., N]``, as
    ``spec`` (a ``marl.envs.vector.RewardSpec``) asks, in this order:

    1. ``difference`` (given ``counterfactual``, the re-simulated team rewards ``[..., N]``):
       ``difference_reward``; any other mode: ``apply_reward_mode``; both over the agents
       ``present`` (bool ``[..., N]``; None: all);
    2. with ``phi``/``phi_next`` (``Φ(s)``/``Φ(s')`` ``[..., 1]``): ``shape_reward``, Φ(s') zeroed
       where ``terminated`` (bool ``[..., N]``);
    3. absent agents' rewards set to 0;
    4. ``spec.episodic``: ``pay_at_episode_end`` into ``held`` (float64 ``[..., N]``, updated in
       place) at ``ends`` (bool ``[..., N]``), so the result is float64; otherwise float32.
    """
    if spec.mode == "difference":
        reward = difference_reward(team_reward(raw, spec.team, present), counterfactual)
    else:
        reward = apply_reward_mode(raw, spec.mode, spec.team, spec.alpha, present)
    if phi is not None:
        reward = shape_reward(reward, phi, phi_next, terminated, spec.gamma)
    if present is not None:
        reward = torch.where(present, reward, 0.0)
    if spec.episodic:
        reward = pay_at_episode_end(reward.double(), held, ends)
    return reward


def spread_coverage_potential(env) -> float:
    """Built-in Φ for mpe2 simple_spread: minus the sum over landmarks of the distance to the
    nearest agent (the quantity the team reward penalises)."""
    world = env.unwrapped.world
    agents = np.array([a.state.p_pos for a in world.agents])
    landmarks = np.array([lm.state.p_pos for lm in world.landmarks])
    dists = np.linalg.norm(landmarks[:, None, :] - agents[None, :, :], axis=-1)
    return -float(dists.min(axis=1).sum())


POTENTIALS = {"spread_coverage": "marl.envs.rewards:spread_coverage_potential"}


def resolve_potential(name: str):
    """A potential Φ(env) -> float from a built-in name (``POTENTIALS``) or ``package.module:function``."""
    import importlib

    from marl.envs.errors import EnvError

    target = POTENTIALS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise EnvError(f"env.shaping {name!r} is neither a built-in potential ({', '.join(POTENTIALS)}) "
                       f"nor of the form 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EnvError(f"env.shaping {name!r}: cannot load {target!r} ({exc})") from None
    if not callable(fn):
        raise EnvError(f"env.shaping {name!r}: {target!r} is not callable")
    return fn
