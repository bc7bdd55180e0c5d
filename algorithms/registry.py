"""The one registry of advantage modules. Built-ins are listed in a plain dict, not by decorators.

Each entry pairs a pure function with what the trainer must know to use it: which critic it
needs (``"v"`` for a state-value critic, ``"q"`` for a per-agent action-value critic) and which
algorithm-config fields it reads as keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from algorithms.returns import gae


@dataclass(frozen=True)
class AdvantageSpec:
    """A registered advantage module.

    Attributes:
        fn: the pure function ``fn(reward, value, next_value, terminated, truncated, **kw)``.
        critic: ``"v"`` (V(s) or V(o_i)) or ``"q"`` (Q(s, u^{-a}, ·), see COMA).
        params: names of ``algo`` config fields passed to ``fn`` as keyword arguments.
        description: one line shown by ``marl list``.
    """

    fn: Callable
    critic: str
    params: tuple[str, ...]
    description: str

    def kwargs(self, algo_config) -> dict:
        return {name: getattr(algo_config, name) for name in self.params}


ADVANTAGES: dict[str, AdvantageSpec] = {
    "gae": AdvantageSpec(gae, "v", ("gamma", "lam"),
                         "generalised advantage estimation (MAPPO/MAA2C default)"),
}


def get_advantage(name: str) -> AdvantageSpec:
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise ValueError(f"unknown advantage module {name!r}; registered: {sorted(ADVANTAGES)}") from None
