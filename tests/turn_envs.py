"""A cooperative turn-based game of our own, small enough to be *learned* in a test, with a known
optimum (``tests/test_turns.py`` also runs PettingZoo's ``api_test`` on it).

``Relay``: players move in turn (``player_0``, ``player_1``, ...). The first mover sees a cue and
must play it; every later mover sees the action the previous player just played and must play the
next one, ``(previous + 1) % n_actions``. Each move has a per-step action mask (PettingZoo's classic
convention: an observation ``Dict`` with ``observation`` and ``action_mask``): a random subset of the
actions, always holding the right one; an illegal action raises. A right move earns the team 1,
split evenly among the players, and paid *later*: on the step just before the mover's next turn
(the next step with 2 players, two steps later with 3), or at the game's end. A player's reward
thus arrives while it waits, as late as it can.

Team return (summed over players): optimum ``length``; uniform random play over the legal actions
about ``0.47 * length`` (4 actions).
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv


class Relay(AECEnv):
    metadata = {"name": "relay_v0", "render_modes": [], "is_parallelizable": False}

    def __init__(self, n_players: int = 2, n_actions: int = 4, length: int = 8, render_mode=None):
        super().__init__()
        self.possible_agents = [f"player_{i}" for i in range(n_players)]
        self.n_actions, self.length, self.render_mode = n_actions, length, render_mode
        self._obs_space = spaces.Dict({"observation": spaces.Box(0.0, 1.0, (n_actions + 1,), np.float32),
                                       "action_mask": spaces.Box(0, 1, (n_actions,), np.int8)})
        self._act_space = spaces.Discrete(n_actions)
        self._rng = np.random.default_rng()

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _target(self) -> int:
        return self._shown if self._t == 0 else (self._shown + 1) % self.n_actions

    def _draw_mask(self) -> None:
        mask = self._rng.random(self.n_actions) < 0.5
        mask[self._target()] = True
        self._mask = mask.astype(np.int8)

    def observe(self, agent):
        """The cue or the last action played (one-hot), a first-move flag, and the legal actions
        (none for a player that is waiting)."""
        seen = np.zeros(self.n_actions + 1, np.float32)
        seen[self._shown] = 1.0
        seen[-1] = float(self._t == 0)
        mask = self._mask.copy() if agent == self.agent_selection else np.zeros(self.n_actions, np.int8)
        return {"observation": seen, "action_mask": mask}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: {} for a in self.agents}
        self._t = 0
        self._owed = [0.0] * (len(self.agents) - 1)   # the rewards of the last n - 1 moves, oldest first
        self._shown = int(self._rng.integers(self.n_actions))
        self.agent_selection = self.agents[0]
        self._draw_mask()

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        if not self._mask[int(action)]:
            raise ValueError(f"illegal action {int(action)} for {agent} (mask {self._mask.tolist()})")
        self._cumulative_rewards[agent] = 0.0
        share = 1.0 / len(self.possible_agents)
        self._owed.append(share if int(action) == self._target() else 0.0)
        paid = self._owed.pop(0)   # the reward of the move n - 1 steps ago arrives now
        self.rewards = {a: paid for a in self.agents}
        self._shown = int(action)
        self._t += 1
        if self._t >= self.length:
            for a in self.agents:
                self.rewards[a] += sum(self._owed)
                self.terminations[a] = True
        else:
            self.agent_selection = self.agents[(self.agents.index(agent) + 1) % len(self.agents)]
            self._draw_mask()
        self._accumulate_rewards()

    def render(self):
        pass

    def close(self):
        pass


def relay(**kwargs):
    return Relay(**kwargs)
