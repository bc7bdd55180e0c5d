"""Each agent's own turns in a turn-based rollout, as a contiguous time axis for the advantage modules.

In a turn-based env (``marl.envs.turns``) agent i acts at some rows of a ``[T, B, N]`` rollout and
waits at the others (``alive`` False). Its *turn* k runs from its k-th acting row up to the row
before its next one, or to the end of its episode. A turn is one step of agent i's own decision
process (a semi-MDP whose steps are its turns):

- its reward is the sum of the rewards agent i receives over the turn, waiting rows included, so
  what arrives between its moves is credited to its last move;
- it ends in a termination or truncation if agent i's episode ends inside it; otherwise its next
  state is agent i's next acting row, and it bootstraps from the value there;
- γ applies once per turn, and the λ-trace runs from turn to turn.

A turn whose end lies beyond the rollout (the agent has not moved again, and its episode goes on)
is *incomplete*: its reward is not all known yet. It is left out of every loss (``complete``
False), and the turn before it bootstraps from the value at its start, as at a rollout cut. Rows
before an agent's first move of an episode belong to no turn: what they pay is not credited.

``own_turns`` gathers the turns of every (env, agent) column to the front of the time axis, in
order; ``from_turns`` puts per-turn results back at the turns' acting rows.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class OwnTurns(NamedTuple):
    """Per-turn inputs of an advantage module, ``[T, B, N]`` with turn k of column (b, i) at row k
    (rows past the column's last turn are padding: terminated, zero); ``order`` maps each turn row
    back to its acting row (a permutation of each column)."""

    reward: Tensor
    value: Tensor
    next_value: Tensor
    terminated: Tensor
    truncated: Tensor
    complete: Tensor
    order: Tensor


def own_turns(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
              alive: Tensor, first: Tensor) -> OwnTurns:
    """Each agent's turns (module docstring) from per-row tensors ``[T, B, N]`` (``reward`` as paid at
    each row, ``value``/``next_value`` of each row's state and true next state, ``terminated``/
    ``truncated``/``alive`` bool) and ``first [T, B]`` (the row starts an episode)."""
    T = alive.shape[0]
    order = torch.argsort((~alive).to(torch.int8), dim=0, stable=True)   # acting rows first, in time order
    turn = alive.long().cumsum(0) - 1          # the turn each row belongs to (-1: none yet in this rollout)
    episode = first.long().cumsum(0).unsqueeze(-1).expand_as(alive)
    turn_episode = episode.gather(0, order)    # the episode of each turn's acting row
    k = turn.clamp(min=0)
    belongs = (turn >= 0) & (turn_episode.gather(0, k) == episode)
    ends = (terminated | truncated) & belongs

    def per_turn(x: Tensor) -> Tensor:   # the sum over each turn's rows
        return torch.zeros_like(x).scatter_add(0, k, torch.where(belongs, x, 0))

    turn_reward = per_turn(reward)
    turn_term = per_turn(terminated.long()) > 0
    turn_trunc = per_turn(truncated.long()) > 0
    end_value = torch.zeros_like(next_value).scatter_add(0, k, torch.where(ends, next_value, 0))
    ended = turn_term | turn_trunc
    turn_value = value.gather(0, order)
    rows = torch.arange(T, device=alive.device).view(T, *([1] * (alive.dim() - 1)))
    n_turns = alive.sum(0, keepdim=True)
    following = torch.cat([turn_value[1:], torch.zeros_like(turn_value[:1])])
    following_episode = torch.cat([turn_episode[1:], torch.full_like(turn_episode[:1], -1)])
    goes_on = (rows + 1 < n_turns) & (following_episode == turn_episode)
    complete = (rows < n_turns) & (ended | goes_on)
    next_complete = torch.cat([complete[1:], torch.zeros_like(complete[:1])])
    cut = complete & ~ended & ~next_complete   # the next turn is incomplete: bootstrap, stop the trace
    return OwnTurns(reward=turn_reward, value=turn_value, next_value=torch.where(ended, end_value, following),
                    terminated=turn_term | ~complete, truncated=turn_trunc | cut, complete=complete, order=order)


def from_turns(x: Tensor, order: Tensor) -> Tensor:
    """Per-turn ``x [T, B, N]`` (``OwnTurns`` layout) put back at each turn's acting row; the other
    rows get what the padding rows held."""
    return torch.zeros_like(x).scatter(0, order, x)
