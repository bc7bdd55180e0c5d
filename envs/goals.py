"""Goal-conditioned cooperative envs: the convention, its check, and a small grid task of our own.

The convention is Gymnasium-Robotics' ``GoalEnv``, per agent:

- each agent's observation is a ``Dict`` with ``observation``, ``achieved_goal`` and
  ``desired_goal``;
- the env has ``compute_reward(achieved_goal, desired_goal, info)``, whose first two arguments are
  dicts keyed by agent of arrays ``[G]`` (one goal) or ``[K, G]`` (K goals) and whose ``info`` is
  the step's infos keyed by agent. It returns a dict, keyed by agent, of the rewards (``[]`` or
  ``[K]``) that ``step()`` would have paid with those goals.

Hindsight relabelling (``algorithms/her.py``) needs nothing else: it never calls ``step``.

``GridGoals`` (``env.id: marl.envs.goals:grid_goals``): N agents on a ``size × size`` grid, each
with its own goal cell, drawn anew at every reset. Actions: 0 stay, 1 up, 2 down, 3 left, 4 right
(moves off the grid stay put; agents may share a cell). After each step every agent is paid the
sparse team reward 1 while all agents stand on their goals, else 0. Episodes are truncated after
``max_steps`` steps and never terminate, so a relabelled episode is a whole valid episode.
Observations, normalised to [0, 1]: ``observation`` and ``achieved_goal`` are the agent's own cell,
``desired_goal`` its goal cell. ``state()`` concatenates every agent's flattened observation, so a
relabelled state is the concatenation of the relabelled observations.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo.utils.env import ParallelEnv

from marl.envs.errors import EnvError
from marl.envs.team_env import MASK_KEY

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")
MOVES = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]])    # (x, y) per action: stay, up, down, left, right


def check_goal_env(env: Any, name: str = "env") -> tuple[int, ...]:
    """The goal shape ``(G,)`` of a goal-conditioned ParallelEnv (see the module docstring).

    Raises:
        EnvError: in one line, if ``env`` has no ``compute_reward`` or an agent's observation space
            is not a Dict with the three keys and achieved/desired goals of one shape.
    """
    if not callable(getattr(env, "compute_reward", None)):
        raise EnvError(f"{name} is not goal-conditioned: it has no compute_reward(achieved_goal, desired_goal, "
                       f"info) (Gymnasium-Robotics' GoalEnv convention, per agent), which hindsight relabelling needs")
    shapes = set()
    for agent in env.possible_agents:
        space = env.observation_space(agent)
        keys = set(space.spaces) if isinstance(space, spaces.Dict) else set()
        if not set(GOAL_KEYS) <= keys:
            raise EnvError(f"{name} is not goal-conditioned: agent {agent!r}'s observation space is "
                           f"{type(space).__name__}{sorted(keys) if keys else ''}, expected a Dict with keys "
                           f"{list(GOAL_KEYS)}")
        shapes |= {space["achieved_goal"].shape, space["desired_goal"].shape}
    if len(shapes) != 1:
        raise EnvError(f"{name}: achieved_goal and desired_goal need one shape for every agent, got {sorted(shapes)}")
    return shapes.pop()


def goal_slices(space: spaces.Dict) -> tuple[slice, slice]:
    """Where ``achieved_goal`` and ``desired_goal`` lie in the flat observation ``TeamEnv`` gives the
    learner (``gymnasium.spaces.flatten`` of the Dict, less an ``action_mask`` key, which ``TeamEnv``
    takes out), as ``(achieved, desired)`` slices."""
    if MASK_KEY in space.spaces:
        space = spaces.Dict({k: s for k, s in space.spaces.items() if k != MASK_KEY})
    found, offset = {}, 0
    for key, sub in space.spaces.items():
        found[key] = slice(offset, offset + spaces.flatdim(sub))
        offset = found[key].stop
    return found["achieved_goal"], found["desired_goal"]


class GridGoals(ParallelEnv):
    """N agents, each to its own goal cell; a sparse team reward while all stand on theirs.

    Args:
        n_agents: N ≥ 1.
        size: the grid's side, ≥ 2; goals are distinct cells, so ``n_agents ≤ size²``.
        max_steps: the episode limit (truncation).
    """

    metadata = {"name": "grid_goals_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, n_agents: int = 2, size: int = 5, max_steps: int = 25, render_mode: str | None = None):
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} not supported: render_modes is []")
        if not (n_agents >= 1 and size >= 2 and max_steps >= 1 and n_agents <= size * size):
            raise ValueError(f"need n_agents >= 1, size >= 2, max_steps >= 1 and n_agents <= size**2, got "
                             f"n_agents={n_agents}, size={size}, max_steps={max_steps}")
        self.n_agents, self.size, self.max_steps = int(n_agents), int(size), int(max_steps)
        width = len(str(self.n_agents - 1))
        self.possible_agents = [f"agent_{i:0{width}d}" for i in range(self.n_agents)]
        self.agents: list[str] = []
        self.render_mode = None
        cell = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_spaces = {a: spaces.Dict({k: cell for k in GOAL_KEYS}) for a in self.possible_agents}
        self.action_spaces = {a: spaces.Discrete(len(MOVES)) for a in self.possible_agents}
        flat = spaces.flatdim(self.observation_spaces[self.possible_agents[0]])
        self.state_space = spaces.Box(0.0, 1.0, shape=(self.n_agents * flat,), dtype=np.float32)
        self.np_random, self.np_random_seed = seeding.np_random(None)
        self.positions = np.zeros((self.n_agents, 2), dtype=np.int64)    # (x, y) cells
        self.goals = np.zeros((self.n_agents, 2), dtype=np.int64)
        self._t = 0

    def observation_space(self, agent: str) -> spaces.Dict:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self.action_spaces[agent]

    def _cells(self, cells: np.ndarray) -> np.ndarray:
        return (cells / (self.size - 1)).astype(np.float32)

    def _observation(self, i: int) -> dict[str, np.ndarray]:
        here = self._cells(self.positions[i])
        return {"observation": here, "achieved_goal": here.copy(), "desired_goal": self._cells(self.goals[i])}

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.np_random, self.np_random_seed = seeding.np_random(seed)
        cells = self.size * self.size
        self.positions = np.stack(np.divmod(self.np_random.integers(cells, size=self.n_agents), self.size), -1)
        self.goals = np.stack(np.divmod(self.np_random.choice(cells, self.n_agents, replace=False), self.size), -1)
        self._t = 0
        self.agents = list(self.possible_agents)
        return {a: self._observation(i) for i, a in enumerate(self.agents)}, {a: {} for a in self.agents}

    def step(self, actions: dict):
        if not self.agents:
            raise RuntimeError("episode is over (or not started): call reset() first")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"missing actions for agents: {missing}")
        moves = np.array([MOVES[int(actions[a])] for a in self.possible_agents])
        self.positions = np.clip(self.positions + moves, 0, self.size - 1)
        self._t += 1
        observations = {a: self._observation(i) for i, a in enumerate(self.agents)}
        infos = {a: {} for a in self.agents}
        rewards = self.compute_reward({a: o["achieved_goal"] for a, o in observations.items()},
                                      {a: o["desired_goal"] for a, o in observations.items()}, infos)
        rewards = {a: float(r) for a, r in rewards.items()}
        done = self._t >= self.max_steps
        terminations = {a: False for a in self.agents}
        truncations = {a: done for a in self.agents}
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def compute_reward(self, achieved_goal: dict, desired_goal: dict, info: dict) -> dict[str, np.ndarray]:
        """The team reward, 1 where every agent's achieved goal is its desired goal (within half a
        cell), for goals ``[2]`` or ``[K, 2]`` per agent -> ``{agent: [] or [K]}`` float32."""
        missing = [a for a in self.possible_agents if a not in achieved_goal or a not in desired_goal]
        if missing:
            raise ValueError(f"compute_reward needs every agent's achieved and desired goals; missing {missing}")
        tolerance = 0.5 / (self.size - 1)
        on_goal = [np.all(np.abs(np.asarray(achieved_goal[a]) - np.asarray(desired_goal[a])) < tolerance, axis=-1)
                   for a in self.possible_agents]
        team = np.logical_and.reduce(on_goal).astype(np.float32)
        return {a: team.copy() for a in self.possible_agents}

    def state(self) -> np.ndarray:
        space = self.observation_spaces[self.possible_agents[0]]
        return np.concatenate([spaces.flatten(space, self._observation(i)) for i in range(self.n_agents)])

    def render(self) -> None:
        return None

    # -- the scripted optimum -------------------------------------------------------------------------
    def scripted_actions(self) -> dict[str, int]:
        """The optimal joint action: each agent steps along x, then y, toward its goal, then stays."""
        actions = {}
        for i, agent in enumerate(self.possible_agents):
            dx, dy = self.goals[i] - self.positions[i]
            actions[agent] = 4 if dx > 0 else 3 if dx < 0 else 2 if dy > 0 else 1 if dy < 0 else 0
        return actions

    def optimal_return(self) -> float:
        """The best team return (one agent's) from the current position at step 0: the reward is
        paid from the step at which the farthest agent (D moves away) arrives to the limit."""
        farthest = int(np.abs(self.goals - self.positions).sum(axis=1).max())
        return float(max(self.max_steps - max(farthest - 1, 0), 0))


def grid_goals(n_agents: int = 2, size: int = 5, max_steps: int = 25, render_mode: str | None = None) -> GridGoals:
    """``GridGoals`` by ``env.id: marl.envs.goals:grid_goals`` (kwargs: n_agents, size, max_steps)."""
    return GridGoals(n_agents, size, max_steps, render_mode)
