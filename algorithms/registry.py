"""The one registry of advantage modules. Built-ins are listed in a plain dict, not by decorators.

Each entry pairs a pure function with what the trainer must know to use it: which critic it
needs (``"v"`` for a state-value critic, ``"q"`` for a per-agent action-value critic) and which
algorithm-config fields it reads as keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from marl.algorithms.coma import coma_advantage, coma_lambda_advantage
from marl.algorithms.returns import gae, mc, n_step, td_lambda


@dataclass(frozen=True)
class AdvantageSpec:
    """A registered advantage module.

    Attributes:
        fn: for ``critic="v"``, the pure function
            ``fn(reward, value, next_value, terminated, truncated, **kw) -> (advantage, value_target)``;
            for ``critic="q"``, ``fn(q_all, logits, actions, avail=None) -> advantage`` (COMA), or
            with ``uses_returns``, ``fn(returns, q_all, logits, avail=None) -> advantage``, where
            ``returns`` are the TD(λ) targets the critic learns.
        critic: ``"v"`` (V(s) or V(o_i)) or ``"q"`` (Q(s, u^{-a}, ·), see COMA).
        params: ``(kwarg, config_field)`` pairs: ``fn``'s keyword ``kwarg`` is read from the ``algo``
            config field ``config_field`` (e.g. ``("n", "n_step")``). For ``critic="q"`` they are
            the keywords of ``td_lambda`` that builds the critic's targets.
        description: one line shown by ``marl list``.
        uses_returns: for ``critic="q"``: ``fn`` takes the λ-returns first (see ``fn``).
    """

    fn: Callable
    critic: str
    params: tuple[tuple[str, str], ...]
    description: str
    uses_returns: bool = False

    def kwargs(self, algo_config) -> dict:
        """``{kwarg: algo_config.<config_field>}`` for every pair in ``params``."""
        out = {}
        for kwarg, field in self.params:
            if not hasattr(algo_config, field):
                raise AttributeError(f"algo config has no field {field!r}, needed as keyword {kwarg!r} "
                                     f"of {getattr(self.fn, '__name__', self.fn)}")
            out[kwarg] = getattr(algo_config, field)
        return out


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    """``params`` whose keywords and config fields share their names."""
    return tuple((name, name) for name in names)


ADVANTAGES: dict[str, AdvantageSpec] = {
    "gae": AdvantageSpec(gae, "v", _same("gamma", "lam"),
                         "generalised advantage estimation (MAPPO/MAA2C default)"),
    "td_lambda": AdvantageSpec(td_lambda, "v", _same("gamma", "lam"),
                               "λ-return targets, advantage = G^λ − V (equals GAE with one critic)"),
    "n_step": AdvantageSpec(n_step, "v", (("gamma", "gamma"), ("n", "n_step")),
                            "n-step bootstrapped returns, n = algo.n_step (A3C-style)"),
    "mc": AdvantageSpec(mc, "v", _same("gamma"),
                        "Monte Carlo returns, bootstrapped only at truncation/rollout end"),
    "coma": AdvantageSpec(coma_advantage, "q", _same("gamma", "lam"),
                          "COMA counterfactual baseline from a Q(s, u^-a, ·) critic with TD(λ) targets"),
    "coma_lambda": AdvantageSpec(coma_lambda_advantage, "q", _same("gamma", "lam"),
                                 "COMA's counterfactual baseline subtracted from the TD(λ) return of the "
                                 "taken joint action", uses_returns=True),
}


def get_advantage(name: str) -> AdvantageSpec:
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise ValueError(f"unknown advantage module {name!r}; registered: {sorted(ADVANTAGES)}") from None
