"""PettingZoo envs defined only here, to show that any ``package.module:factory`` plugs in."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


def timed_step(env: ParallelEnv, obs: dict, reward: float) -> tuple:
    """The step result of an env that pays every agent ``reward`` and truncates the episode once
    ``env._t`` reaches ``env.length`` (then ``env.agents`` empties)."""
    done = env._t >= env.length
    out = (obs, {a: reward for a in env.agents}, {a: False for a in env.agents}, {a: done for a in env.agents},
           {a: {} for a in env.agents})
    if done:
        env.agents = []
    return out


class MatchTarget(ParallelEnv):
    """Each agent sees a target index (one-hot) and is rewarded 1 for choosing it; team reward is
    shared. Episodes are cut by a time limit. Learnable in a few thousand steps."""

    metadata = {"name": "match_target_v0", "render_modes": []}

    def __init__(self, n_agents: int = 2, n_actions: int = 3, length: int = 5, render_mode=None):
        self.possible_agents = [f"player_{i}" for i in reversed(range(n_agents))]  # unsorted on purpose
        self.n_actions, self.length = n_actions, length
        self._obs_space = spaces.Box(0.0, 1.0, (n_actions,), np.float32)
        self._act_space = spaces.Discrete(n_actions)
        self.render_mode = render_mode
        self._rng = np.random.default_rng()

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _observe(self):
        return {a: np.eye(self.n_actions, dtype=np.float32)[self._targets[a]] for a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._targets = {a: int(self._rng.integers(self.n_actions)) for a in self.agents}
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions):
        hits = sum(int(actions[a] == self._targets[a]) for a in self.agents)
        reward = hits / len(self.agents)
        self._t += 1
        self._targets = {a: int(self._rng.integers(self.n_actions)) for a in self.agents}
        return timed_step(self, self._observe(), reward)


class LeavingAgents(MatchTarget):
    """Broken on purpose: one agent leaves after the first step while the other stays."""

    def step(self, actions):
        out = super().step(actions)
        self.agents = self.possible_agents[:1]
        return out


class FailsOnSeed(MatchTarget):
    """Broken on purpose: a reset with ``fail_on_seed`` raises."""

    def __init__(self, fail_on_seed: int, **kwargs):
        super().__init__(**kwargs)
        self.fail_on_seed = fail_on_seed

    def reset(self, seed=None, options=None):
        if seed == self.fail_on_seed:
            raise RuntimeError(f"reset with seed {seed} failed")
        return super().reset(seed, options)


class ContinuousActions(MatchTarget):
    def action_space(self, agent):
        return spaces.Box(-1.0, 1.0, (2,), np.float32)


class MixedActions(MatchTarget):
    """Broken on purpose: one agent with Discrete actions, the other with Box actions."""

    def action_space(self, agent):
        return spaces.Box(-1.0, 1.0, (2,), np.float32) if agent == self.possible_agents[0] else self._act_space


def make_match_target(**kwargs):
    return MatchTarget(**kwargs)


def make_leaving_agents(**kwargs):
    return LeavingAgents(**kwargs)


def make_fails_on_seed(**kwargs):
    return FailsOnSeed(**kwargs)


def make_continuous(**kwargs):
    return ContinuousActions(**kwargs)


def make_mixed_actions(**kwargs):
    return MixedActions(**kwargs)


def make_not_an_env(**kwargs):
    return {"this": "is not an env"}


def step_count_potential(env) -> float:
    """A shaping potential for ``MatchTarget``: the number of steps taken so far."""
    return float(env.unwrapped._t)
