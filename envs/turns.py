"""Turn-based PettingZoo envs (an ``AECEnv`` whose turns cannot be parallelised) as a parallel env
in which, at every step, only ``agent_selection`` is present.

- **Who acts.** ``agents`` is ``[agent_selection]`` (or ``[]`` once the game is over): the step's
  observation and infos are that agent's alone, so ``marl.envs.team_env`` marks it ``alive`` and
  pads every waiting agent.
- **Rewards** are reported for every player of the episode at the step they arrive (the sum of
  ``env.rewards`` over the acting step and any dead steps it triggers), waiting players included.
  The learner credits what a player receives while it waits to its last action: see
  ``marl.algorithms.turns`` and ``docs/envs.md``.
- **Ends.** A player that terminates or truncates is reported once, at the step the flag appears
  (waiting or not); the AEC's dead steps (``step(None)`` for such a player) are taken here.
- **Global state:** the AEC's ``state()`` where it has one, else every player's observation
  (without its ``action_mask``), flattened and concatenated: a centralised critic sees every view.
- **Zero-sum games.** ``ZERO_SUM`` names the PettingZoo classic games whose rewards sum to 0 at
  every step; ``zero_sum`` says whether this env is one (a team reward would be 0 throughout).
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.env import AECEnv, ParallelEnv

from marl.envs.errors import EnvError

# PettingZoo classic games (metadata["name"]) in which one player's gain is another's loss.
ZERO_SUM = frozenset({"tictactoe_v3", "connect_four_v3", "chess_v6", "go_v5", "rps_v2", "leduc_holdem_v4",
                      "texas_holdem_v4", "texas_holdem_no_limit_v6", "gin_rummy_v4"})


def is_turn_based(env: AECEnv) -> bool:
    """The AEC env declares that its turns cannot be run in parallel (PettingZoo's
    ``metadata["is_parallelizable"]``, False when absent)."""
    return not env.metadata.get("is_parallelizable", False)


class TurnBasedEnv(ParallelEnv):
    """``aec`` as a parallel env where each step only ``agent_selection`` acts (module docstring)."""

    turn_based = True

    def __init__(self, aec: AECEnv, env_id: str = ""):
        self.aec = aec
        self.env_id = env_id or aec.metadata.get("name", type(aec).__name__)
        self.metadata = dict(aec.metadata)
        self.possible_agents = list(aec.possible_agents)
        self.render_mode = getattr(aec, "render_mode", None)
        self.zero_sum = aec.metadata.get("name") in ZERO_SUM
        self._views = {a: self._view_space(aec.observation_space(a)) for a in self.possible_agents}
        self._last_view: dict = {}
        self._in_play: set = set()
        self.agents: list = []

    @staticmethod
    def _view_space(space: spaces.Space) -> spaces.Space:
        if isinstance(space, spaces.Dict) and "action_mask" in space.spaces:
            rest = {k: s for k, s in space.spaces.items() if k != "action_mask"}
            return rest["observation"] if list(rest) == ["observation"] else spaces.Dict(rest)
        return space

    def observation_space(self, agent):
        return self.aec.observation_space(agent)

    def action_space(self, agent):
        return self.aec.action_space(agent)

    def _skip_dead(self, rewards: dict, terminated: dict, truncated: dict) -> None:
        """Record the players whose flags appeared, then take the dead steps of those selected."""
        for agent in list(self._in_play):
            term, trunc = bool(self.aec.terminations.get(agent)), bool(self.aec.truncations.get(agent))
            if term or trunc:
                terminated[agent], truncated[agent] = term, trunc
                self._in_play.discard(agent)
        while self.aec.agents and (self.aec.terminations[self.aec.agent_selection]
                                   or self.aec.truncations[self.aec.agent_selection]):
            self.aec.step(None)
            for agent, reward in self.aec.rewards.items():
                rewards[agent] = rewards.get(agent, 0.0) + float(reward)

    def _selected(self) -> tuple[dict, dict]:
        """The observation and infos of the player to act, or empty ones once the game is over."""
        self.agents = [self.aec.agent_selection] if self.aec.agents else []
        obs = {a: self.aec.observe(a) for a in self.agents}
        infos = {a: self.aec.infos.get(a, {}) for a in self.agents}
        return obs, infos

    def reset(self, seed=None, options=None):
        """A new game; ``seed`` is taken modulo 2^31, since OpenSpiel games (PettingZoo's Hanabi, through
        Shimmy) take it as a C++ int."""
        self.aec.reset(seed=None if seed is None else int(seed) % 2**31, options=options)
        self._in_play = set(self.aec.agents)
        self._last_view = {}
        self._skip_dead({}, {}, {})
        return self._selected()

    def step(self, actions: dict):
        """Step the selected player with ``actions[agent_selection]``; returns the parallel 5-tuple
        with rewards and flags for every player of the episode."""
        if not self.agents:
            raise EnvError(f"env {self.env_id!r}: step() after the game is over; reset it first")
        acting = self.agents[0]
        players = sorted(self._in_play)
        self.aec.step(actions[acting])
        rewards = {a: 0.0 for a in players}
        for agent, reward in self.aec.rewards.items():
            rewards[agent] = rewards.get(agent, 0.0) + float(reward)
        terminated = {a: False for a in players}
        truncated = {a: False for a in players}
        self._skip_dead(rewards, terminated, truncated)
        obs, infos = self._selected()
        return obs, rewards, terminated, truncated, infos

    def state(self) -> np.ndarray:
        """The AEC's ``state()``, else every player's view flattened and concatenated (a player no
        longer in the game keeps its last view)."""
        try:
            return np.asarray(self.aec.state(), dtype=np.float32)
        except (NotImplementedError, AttributeError):
            pass
        parts = []
        for agent, space in self._views.items():
            if agent in self.aec.agents:
                view = self.aec.observe(agent)
                if isinstance(view, dict) and "action_mask" in view:
                    rest = {k: v for k, v in view.items() if k != "action_mask"}
                    view = rest["observation"] if list(rest) == ["observation"] else rest
                self._last_view[agent] = np.asarray(spaces.flatten(space, view), dtype=np.float32)
            parts.append(self._last_view.get(agent, np.zeros(spaces.flatten_space(space).shape, np.float32)))
        return np.concatenate(parts)

    def render(self):
        return self.aec.render()

    def close(self):
        self.aec.close()
