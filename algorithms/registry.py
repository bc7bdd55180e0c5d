"""The one registry of advantage modules. Built-ins are listed in a plain dict, not by decorators.

Each entry pairs a function with what the trainer must know to use it: the kind of critic it needs
(a ``CriticKind``: what the critic values, what it supports, how its targets are made) and which
algorithm-config fields it reads. There is one calling convention per kind of critic:

- ``V_CRITIC`` (a state-value critic V(s) or V(o_i)): the pure function
  ``fn(reward, value, next_value, terminated, truncated, **kw) -> (advantage, value_target)``;
- ``Q_CRITIC`` (COMA's per-agent critic Q(s, u^{-a}, ·)) and ``DOP_CRITIC`` (DOP's decomposed critic
  Q_tot = Σ_i k_i(s) Q_i(s, u_i) + b(s)): ``fn(inputs: CounterfactualInputs, **kw) -> advantage``;
  the critic learns the kind's ``targets`` (TD(λ) of the taken joint action);
- ``SIM_CRITIC`` (re-simulation on a batched twin, ``marl.resim``; a V critic placed by
  ``algo.critic``): ``fn(returns, probs, actions) -> advantage`` over the simulated returns
  ``[T, B, N, A, K]``; the critic learns the kind's ``targets`` of the rollout, and the spec's
  ``sim_params`` are the re-simulation's config fields.

The kinds are the only place that tells critics apart: callers read their properties, never their
names (``marl.networks.build_critic`` maps a kind to its network).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from marl.algorithms.coma import coma_advantage, coma_lambda_advantage
from marl.algorithms.dop import dop_advantage, dop_lambda_advantage
from marl.algorithms.resim import resim_advantage
from marl.algorithms.returns import gae, mc, n_step, td_lambda
from marl.algorithms.shapley import shapley_credit


@dataclass
class CounterfactualInputs:
    """What a module with a critic over actions reads of a rollout, ``[T, B, N, ...]``, in return units
    (except DOP's utilities ``q_all``, whose scale is carried by ``weights``).

    Attributes:
        returns: ``[T, B, N]`` the TD(λ) returns of the taken joint action (the critic's targets).
        q_all: ``[T, B, N, A]`` Q(s, (u^{-a}, ·)) for each of agent a's actions (COMA's critic), or
            DOP's per-agent utilities Q_a(s, ·) in the critic's (normalised) units.
        logits: ``[T, B, N, A]`` the actor's masked logits.
        actions: ``[T, B, N]`` the actions taken.
        avail: bool ``[..., N, A]`` the legal actions.
        state: ``[T, B, S]`` and ``obs`` (``[T, B, N, O]`` or None): what the critic reads.
        coalition_q: maps COMA critic inputs ``[..., M, N, D]`` to Q ``[..., M, N, A]`` (Shapley).
        weights: ``[T, B, N]`` DOP's mixing weights k_a(s) ≥ 0, in return units.
        q_taken: ``[T, B, N]`` the critic's value of the taken joint action, in return units: agent
            a's row Q(s, u) (COMA's critic), or Q_tot(s, u) (DOP's).
        generator: for the modules that sample.
    """

    returns: torch.Tensor
    q_all: torch.Tensor
    logits: torch.Tensor
    actions: torch.Tensor
    avail: torch.Tensor
    state: torch.Tensor
    obs: torch.Tensor | None = None
    coalition_q: Callable | None = None
    weights: torch.Tensor | None = None
    q_taken: torch.Tensor | None = None
    generator: torch.Generator | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class CriticKind:
    """What an advantage module asks of its critic. Compared by identity: the four kinds below.

    Attributes:
        name: shown by ``marl list``.
        over_actions: the critic values actions, Q per agent over its own actions ``[..., N, A]``,
            and reads the joint action (a counterfactual module over a discrete action set); else
            it values states, V ``[..., N]``, placed by ``algo.critic``.
        mixed: per-agent utilities mixed into one Q_tot of the team (DOP), so its loss reads every
            agent's row at once.
        recurrent: whether the critic may be recurrent (``model.recurrent``).
        reward_modes: the ``env.reward`` modes its targets are defined for (None: all).
        targets: for a critic over actions, its targets ``[T, B, N]`` from the taken joint action's
            value, ``targets(reward, q_taken, next_q, terminated, truncated, **spec.kwargs) ->
            (_, target)``; for a re-simulating module, its V critic's targets (same call, with V);
            None for a V critic, whose module returns its own targets.
        simulates: the advantage comes from re-simulating each step on copies of a batched twin
            (``marl.resim``), not from the critic.
        why: the reason behind ``recurrent``, ``reward_modes`` and ``simulates``, quoted by config errors.
    """

    name: str
    over_actions: bool
    mixed: bool = False
    recurrent: bool = True
    reward_modes: tuple[str, ...] | None = None
    targets: Callable | None = None
    why: str = ""
    simulates: bool = False


V_CRITIC = CriticKind("v", over_actions=False)
Q_CRITIC = CriticKind("q", over_actions=True, targets=td_lambda)
DOP_CRITIC = CriticKind("dop", over_actions=True, mixed=True, recurrent=False, reward_modes=("shared",),
                        targets=td_lambda, why="its decomposed critic is feed-forward, and its Q_tot learns the "
                        "team's return")
SIM_CRITIC = CriticKind("sim", over_actions=False, recurrent=False, targets=td_lambda, simulates=True,
                        why="it re-simulates each step on copies of the batched twin, from a feed-forward actor")


@dataclass(frozen=True)
class AdvantageSpec:
    """A registered advantage module.

    Attributes:
        fn: see the module docstring for its calling convention (by ``critic``).
        critic: the ``CriticKind`` it needs.
        params: ``(kwarg, config_field)`` pairs read from the ``algo`` config: for a V critic the
            keywords of ``fn`` (e.g. ``("n", "n_step")``); for a critic over actions the keywords
            of ``critic.targets``.
        description: one line shown by ``marl list``.
        fn_params: for a critic over actions, ``(kwarg, config_field)`` pairs of ``fn`` itself.
        sim_params: for a re-simulating module, the config fields the re-simulation reads.
    """

    fn: Callable
    critic: CriticKind
    params: tuple[tuple[str, str], ...]
    description: str
    fn_params: tuple[tuple[str, str], ...] = ()
    sim_params: tuple[str, ...] = ()

    @staticmethod
    def _read(pairs, algo_config, owner) -> dict:
        out = {}
        for kwarg, name in pairs:
            if not hasattr(algo_config, name):
                raise AttributeError(f"algo config has no field {name!r}, needed as keyword {kwarg!r} of {owner}")
            out[kwarg] = getattr(algo_config, name)
        return out

    def kwargs(self, algo_config) -> dict:
        """``{kwarg: algo_config.<config_field>}`` for every pair in ``params``."""
        return self._read(self.params, algo_config, getattr(self.fn, "__name__", self.fn))

    def fn_kwargs(self, algo_config) -> dict:
        """``{kwarg: algo_config.<config_field>}`` for every pair in ``fn_params``."""
        return self._read(self.fn_params, algo_config, getattr(self.fn, "__name__", self.fn))

    @property
    def fields(self) -> set[str]:
        """Every ``algo`` config field the module reads."""
        return {name for _, name in self.params + self.fn_params} | set(self.sim_params)


def coma(inputs: CounterfactualInputs) -> torch.Tensor:
    """COMA as in the paper: ``Q(s, u) − Σ_u' π(u') Q(s, (u^-a, u'))``."""
    return coma_advantage(inputs.q_all, inputs.logits, inputs.actions, inputs.avail)


def coma_lambda(inputs: CounterfactualInputs) -> torch.Tensor:
    """COMA's counterfactual baseline subtracted from the λ-return of the taken joint action."""
    return coma_lambda_advantage(inputs.returns, inputs.q_all, inputs.logits, inputs.avail)


def shapley(inputs: CounterfactualInputs, n_samples: int) -> torch.Tensor:
    """Shapley credit from M sampled orderings over COMA's critic (``algorithms.shapley``)."""
    return shapley_credit(inputs.coalition_q, inputs.state, inputs.logits, inputs.actions, inputs.avail, n_samples,
                          inputs.generator, inputs.obs)


def shapley_lambda(inputs: CounterfactualInputs, n_samples: int) -> torch.Tensor:
    """Shapley credit with the λ-return of the taken joint action in place of the critic's Q(s, u)."""
    return shapley_credit(inputs.coalition_q, inputs.state, inputs.logits, inputs.actions, inputs.avail, n_samples,
                          inputs.generator, inputs.obs, returns=inputs.returns, q_taken=inputs.q_taken)


def dop(inputs: CounterfactualInputs) -> torch.Tensor:
    """DOP's per-agent advantage ``k_a(s) (Q_a(u_a) − Σ_u π_a(u) Q_a(u))``."""
    return dop_advantage(inputs.weights, inputs.q_all, inputs.logits, inputs.actions, inputs.avail)


def dop_lambda(inputs: CounterfactualInputs) -> torch.Tensor:
    """DOP's counterfactual baseline subtracted from the λ-return of the taken joint action."""
    return dop_lambda_advantage(inputs.returns, inputs.q_taken, inputs.weights, inputs.q_all, inputs.logits,
                                inputs.actions, inputs.avail)


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    """``params`` whose keywords and config fields share their names."""
    return tuple((name, name) for name in names)


ADVANTAGES: dict[str, AdvantageSpec] = {
    "gae": AdvantageSpec(gae, V_CRITIC, _same("gamma", "lam"),
                         "generalised advantage estimation (MAPPO/MAA2C default)"),
    "td_lambda": AdvantageSpec(td_lambda, V_CRITIC, _same("gamma", "lam"),
                               "λ-return targets, advantage = G^λ − V (equals GAE with one critic)"),
    "n_step": AdvantageSpec(n_step, V_CRITIC, (("gamma", "gamma"), ("n", "n_step")),
                            "n-step bootstrapped returns, n = algo.n_step (A3C-style)"),
    "mc": AdvantageSpec(mc, V_CRITIC, _same("gamma"),
                        "Monte Carlo returns, bootstrapped only at truncation/rollout end"),
    "coma": AdvantageSpec(coma, Q_CRITIC, _same("gamma", "lam"),
                          "COMA counterfactual baseline from a Q(s, u^-a, ·) critic with TD(λ) targets"),
    "coma_lambda": AdvantageSpec(coma_lambda, Q_CRITIC, _same("gamma", "lam"),
                                 "COMA's counterfactual baseline subtracted from the TD(λ) return of the "
                                 "taken joint action"),
    "shapley": AdvantageSpec(shapley, Q_CRITIC, _same("gamma", "lam"),
                             "Shapley credit: COMA's counterfactual advantage averaged over M = algo.shapley_samples "
                             "random coalitions (Wang et al. 2020; Li et al. 2021)",
                             fn_params=(("n_samples", "shapley_samples"),)),
    "shapley_lambda": AdvantageSpec(shapley_lambda, Q_CRITIC, _same("gamma", "lam"),
                                    "Shapley credit with the TD(λ) return of the taken joint action in place of "
                                    "the critic's Q(s, u): G^λ − Q(s, u) + the Shapley advantage",
                                    fn_params=(("n_samples", "shapley_samples"),)),
    "dop": AdvantageSpec(dop, DOP_CRITIC, _same("gamma", "lam"),
                         "DOP's decomposed critic Q_tot = Σ k_i(s) Q_i(s, u_i) + b(s), advantage k_i (Q_i(u_i) − "
                         "E_π Q_i) (Wang et al. 2021)"),
    "dop_lambda": AdvantageSpec(dop_lambda, DOP_CRITIC, _same("gamma", "lam"),
                                "DOP's counterfactual baseline subtracted from the TD(λ) return of the taken "
                                "joint action: G^λ − Q_tot + k_i (Q_i(u_i) − E_π Q_i)"),
    "resim": AdvantageSpec(resim_advantage, SIM_CRITIC, _same("gamma", "lam"),
                           "COMA's counterfactual advantage from H-step re-simulations on the batched twin "
                           "(H = algo.resim_horizon, K = algo.resim_rollouts, common random numbers)",
                           sim_params=("resim_horizon", "resim_rollouts")),
}


def get_advantage(name: str) -> AdvantageSpec:
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise ValueError(f"unknown advantage module {name!r}; registered: {sorted(ADVANTAGES)}") from None
