"""An image-observation env small enough to be *learned* in a test, with a known optimum.

``BlobQuadrants``: two agents see one 16×16×3 uint8 picture with a red blob (agent_0's) and a green
blob (agent_1's), each 3×3 pixels at a random place in a random quadrant. Each agent names the
quadrant of its own blob (4 actions); the team reward of a step is the fraction of agents right, a
new picture is drawn every step, and an episode lasts ``length`` steps. Optimum: ``length``; random
play: ``length / 4``. ``state()`` returns the picture (an image state), or, with
``with_state=False``, does not exist (the critic then reads the agents' observations).

It follows the PettingZoo parallel API (``tests/test_images.py`` runs ``parallel_api_test``).
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from tests.custom_env import timed_step

SIZE = 16


class BlobQuadrants(ParallelEnv):
    metadata = {"name": "blob_quadrants_v0", "render_modes": []}

    def __init__(self, length: int = 5, with_state: bool = True, render_mode=None):
        self.possible_agents = ["agent_0", "agent_1"]
        self.length, self.with_state = length, with_state
        self.render_mode = render_mode
        self._obs_space = spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self._act_space = spaces.Discrete(4)
        if with_state:
            self.state_space = self._obs_space
        self._rng = np.random.default_rng()

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _draw(self) -> None:
        """A new picture: agent i's blob (channel i) in quadrant ``self._quadrant[i]``."""
        self._image = np.zeros((SIZE, SIZE, 3), np.uint8)
        self._quadrant = self._rng.integers(4, size=2)
        half = SIZE // 2
        for i, q in enumerate(self._quadrant):
            y = half * (q // 2) + int(self._rng.integers(1, half - 3))
            x = half * (q % 2) + int(self._rng.integers(1, half - 3))
            self._image[y:y + 3, x:x + 3, i] = 255

    def _observe(self) -> dict:
        return {a: self._image.copy() for a in self.agents}

    def state(self) -> np.ndarray:
        if not self.with_state:
            return super().state()   # PettingZoo's: NotImplementedError
        return self._image.copy()

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._draw()
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions):
        reward = float(np.mean([actions[a] == self._quadrant[i] for i, a in enumerate(self.possible_agents)]))
        self._t += 1
        self._draw()
        return timed_step(self, self._observe(), reward)


def blob_quadrants(**kwargs):
    return BlobQuadrants(**kwargs)
