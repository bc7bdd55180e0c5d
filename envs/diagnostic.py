"""Diagnostic cooperative environments with known ground-truth credit.

Small, fully deterministic PettingZoo ``ParallelEnv`` tasks whose per-agent,
per-step credit can be computed exactly, so that learned credit-assignment
signals (difference rewards, COMA advantages, mixer gradients, Shapley
estimates, ...) can be compared against a known answer.

Common conventions
------------------
* Agents are named ``agent_0 .. agent_{N-1}``, the index zero-padded when
  ``N > 10`` (``agent_00 .. agent_11``) so that sorting the names never
  reorders them.  ``possible_agents`` lists them in that (sorted = index)
  order and column ``i`` of every ``[T, N]`` array here belongs to agent ``i``.
* Observations are flat ``float32`` ``Box`` vectors, actions are ``Discrete``.
  Agent identity is *not* part of the observation; frameworks that share
  parameters should append an agent id themselves.
* ``state()`` returns a flat ``float32`` vector contained in ``state_space``
  (an attribute, as in PettingZoo).  It always begins with a one-hot encoding
  of the current step index ``t`` of length ``episode_length + 1`` (the extra
  slot is the terminal step), so it is never constant or all-zero.
* Cooperative rewards: ``rewards[agent]`` is the same *team* reward for every
  agent.  Where the team reward is a sum of per-agent terms (``LazyAgent``),
  each agent's own term is also given as ``infos[agent]["contribution"]``, for
  individual-reward ablations.  Other infos are empty dicts.
* Every agent ends at the same step, by *termination*: each task is over after its fixed number
  of steps, and the step index is part of the state (and of the observations of every multi-step
  env), so there is no time limit to bootstrap past (a learner that bootstrapped there would add value the task can
  never pay). ``truncations`` are always False. Afterwards ``agents == []``.
* There is no rendering (``render_modes == []``); every constructor accepts
  ``render_mode=None`` for PettingZoo compatibility and rejects other values.
* ``reset(seed=s)`` (re)creates ``self.np_random`` (a ``numpy.random.Generator``)
  from ``s``.  The dynamics are deterministic, but the seeding pattern is kept
  so that stochastic variants can be added without changing the interface.
* ``episode_actions()`` returns the joint actions of the current episode as an
  ``int64`` array ``[t, N]``; ``team_rewards(actions)`` maps a full episode's
  actions ``[T, N]`` to the team reward received at each step ``[T]``.

Ground-truth credit
-------------------
``true_credit(actions)`` takes the int array ``actions`` of shape ``[T, N]``
(the joint actions of one complete episode, ``T == episode_length``) and
returns a float array ``[T, N]``::

    credit[t, i] = G(actions) - E_{u ~ Uniform(A_i)} [ G(actions with actions[t, i] := u) ]

where ``G`` is the (undiscounted) team return of the episode.  In words: the
return the team obtained minus the expected return had agent ``i`` instead
acted uniformly at random at step ``t``, with every other entry of the action
sequence (other agents at ``t``, and everyone at other steps) held fixed.
Because all dynamics are deterministic this is exact.  Credit is attributed
to the step at which the action was *taken*, not the step at which its reward
arrives (this matters for ``DelayedChain``, whose reward is delayed to the
last step).  For rewards that only depend on the current joint action it
equals the per-step counterfactual ``r_t(a_t) - E_u r_t(u, a_t^{-i})``.

Environments
------------
``ClimbingGame``  one-shot 2-agent climbing game (Claus & Boutilier, 1998).
``PenaltyGame``   one-shot 2-agent penalty game with miscoordination cost ``k``.
``MatrixGame``    the general one-shot N-agent common-payoff matrix game.
``LazyAgent``     additive effort game in which one agent's effort is worthless.
``DelayedChain``  temporal credit: only the joint action at one step matters,
                  rewarded at the last step.

Each has a factory (``climbing_game``, ``penalty_game``, ``lazy_agent``,
``delayed_chain``) and ``DIAGNOSTIC_ENVS`` maps short names to factories.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo.utils.env import ParallelEnv

__all__ = [
    "DiagnosticParallelEnv",
    "MatrixGame",
    "ClimbingGame",
    "PenaltyGame",
    "LazyAgent",
    "DelayedChain",
    "CLIMBING_PAYOFF",
    "climbing_game",
    "penalty_game",
    "lazy_agent",
    "delayed_chain",
    "DIAGNOSTIC_ENVS",
]

CLIMBING_PAYOFF = np.array(
    [[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]], dtype=np.float64
)


def _one_hot(index: int, size: int) -> np.ndarray:
    vec = np.zeros(size, dtype=np.float32)
    vec[index] = 1.0
    return vec


def _as_action(value: Any, n_actions: int, agent: str) -> int:
    """Convert one agent's action (int, numpy scalar, size-1 array) to an int."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"action for {agent} must be a single integer, got {value!r}")
    item = arr.reshape(()).item()
    if isinstance(item, bool) or not float(item).is_integer():
        raise ValueError(f"action for {agent} must be an integer, got {value!r}")
    action = int(item)
    if not 0 <= action < n_actions:
        raise ValueError(
            f"action {action} for {agent} outside Discrete({n_actions})"
        )
    return action


class DiagnosticParallelEnv(ParallelEnv):
    """Shared machinery of the diagnostic environments.

    Subclasses call ``super().__init__`` with the sizes, and implement
    ``_reward_at``, ``_observation``, ``_state`` and ``true_credit``.
    The episode always lasts exactly ``episode_length`` steps and ends by termination.
    """

    metadata = {"name": "diagnostic_v0", "render_modes": []}
    _own_rewards = False  # give each agent its own contribution instead of the team reward

    def __init__(
        self,
        n_actions: Sequence[int],
        obs_dim: int,
        state_dim: int,
        episode_length: int,
        render_mode: str | None = None,
    ):
        if render_mode is not None:
            raise ValueError(
                f"render_mode {render_mode!r} not supported: render_modes is "
                f"{self.metadata['render_modes']}"
            )
        n_actions = [int(n) for n in n_actions]
        if len(n_actions) < 1:
            raise ValueError("need at least one agent")
        if any(n < 1 for n in n_actions):
            raise ValueError(f"every agent needs at least one action, got {n_actions}")
        if int(episode_length) < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.n_agents = len(n_actions)
        self.n_actions = tuple(n_actions)
        self.episode_length = int(episode_length)
        width = len(str(self.n_agents - 1))
        self.possible_agents = [f"agent_{i:0{width}d}" for i in range(self.n_agents)]
        self.agents: list[str] = []
        self.render_mode = None
        self.observation_spaces = {
            agent: spaces.Box(0.0, 1.0, shape=(obs_dim,), dtype=np.float32)
            for agent in self.possible_agents
        }
        self.action_spaces = {
            agent: spaces.Discrete(n)
            for agent, n in zip(self.possible_agents, self.n_actions)
        }
        self.state_space = spaces.Box(0.0, 1.0, shape=(state_dim,), dtype=np.float32)
        self.np_random, self.np_random_seed = seeding.np_random(None)
        self._t = 0
        self._history: list[np.ndarray] = []

    # ------------------------------------------------------------------ spaces
    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self.action_spaces[agent]

    # ------------------------------------------------------------- subclasses
    def _reward_at(self, t: int, actions: np.ndarray) -> float:
        """Team reward of step ``t`` given the joint actions ``actions[:t+1]``."""
        raise NotImplementedError

    def _contributions(self, t: int, joint: np.ndarray) -> np.ndarray | None:
        """Per-agent additive terms of the step-``t`` reward, or None."""
        return None

    def _observation(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> np.ndarray:
        raise NotImplementedError

    def true_credit(self, actions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------- API
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.np_random, self.np_random_seed = seeding.np_random(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._history = []
        observations = {
            agent: self._observation(i) for i, agent in enumerate(self.agents)
        }
        infos = {agent: {} for agent in self.agents}
        return observations, infos

    def step(self, actions: dict):
        if not self.agents:
            raise RuntimeError("episode is over (or not started): call reset() first")
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions given for agents that are not live: {sorted(unknown)}")
        missing = [agent for agent in self.agents if agent not in actions]
        if missing:
            raise ValueError(f"missing actions for agents: {missing}")
        joint = np.array(
            [
                _as_action(actions[agent], n, agent)
                for agent, n in zip(self.possible_agents, self.n_actions)
            ],
            dtype=np.int64,
        )
        self._history.append(joint)
        t = self._t
        reward = float(self._reward_at(t, np.stack(self._history)))
        contributions = self._contributions(t, joint)
        self._t += 1

        done = self._t >= self.episode_length
        live = list(self.agents)
        observations = {agent: self._observation(i) for i, agent in enumerate(live)}
        if self._own_rewards and contributions is not None:
            rewards = {agent: float(contributions[i]) for i, agent in enumerate(live)}
        else:
            rewards = {agent: reward for agent in live}
        terminations = {agent: done for agent in live}
        truncations = {agent: False for agent in live}
        if contributions is None:
            infos = {agent: {} for agent in live}
        else:
            infos = {
                agent: {"contribution": float(contributions[i])}
                for i, agent in enumerate(live)
            }
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        return self._state()

    def render(self) -> None:
        return None

    # --------------------------------------------------------------- helpers
    def episode_actions(self) -> np.ndarray:
        """Joint actions taken so far this episode, int64 ``[t, N]``."""
        if not self._history:
            return np.zeros((0, self.n_agents), dtype=np.int64)
        return np.stack(self._history).astype(np.int64)

    def _check_actions(self, actions: Any) -> np.ndarray:
        """Validate a full episode of joint actions; returns int64 ``[T, N]``."""
        arr = np.asarray(actions)
        expected = (self.episode_length, self.n_agents)
        if arr.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {arr.shape}")
        if arr.dtype == bool or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError("actions must be integers")
        arr = arr.astype(np.int64)
        high = np.asarray(self.n_actions)[None, :]
        if np.any(arr < 0) or np.any(arr >= high):
            raise ValueError(f"actions outside action spaces {self.n_actions}")
        return arr

    def team_rewards(self, actions: np.ndarray) -> np.ndarray:
        """Team reward at every step, float64 ``[T]``, for a full episode ``[T, N]``."""
        arr = self._check_actions(actions)
        return np.array(
            [self._reward_at(t, arr[: t + 1]) for t in range(self.episode_length)],
            dtype=np.float64,
        )

    def _time_one_hot(self) -> np.ndarray:
        return _one_hot(self._t, self.episode_length + 1)


# ---------------------------------------------------------------------------
# One-shot matrix games
# ---------------------------------------------------------------------------


class MatrixGame(DiagnosticParallelEnv):
    """One-shot common-payoff matrix game.

    ``payoff`` has one axis per agent (``payoff.ndim`` agents; agent ``i`` has
    ``payoff.shape[i]`` actions).  Each agent observes the constant vector
    ``[1.0]``.  One step; the team reward is ``payoff[a_0, ..., a_{N-1}]``; the
    episode then terminates.  ``state()`` is the one-hot step index
    (``[1, 0]`` before the step, ``[0, 1]`` after).

    ``true_credit(actions)`` with ``actions`` ``[1, N]`` returns ``[1, N]``::

        credit[0, i] = payoff[a] - mean_u payoff[a with a_i := u]
    """

    metadata = {"name": "matrix_game_v0", "render_modes": []}

    def __init__(self, payoff: Any, render_mode: str | None = None):
        payoff = np.array(payoff, dtype=np.float64)
        if payoff.ndim < 1:
            raise ValueError("payoff must have one axis per agent")
        if not np.all(np.isfinite(payoff)):
            raise ValueError("payoff entries must be finite")
        self.payoff = payoff
        self.payoff.setflags(write=False)
        super().__init__(
            n_actions=payoff.shape,
            obs_dim=1,
            state_dim=2,
            episode_length=1,
            render_mode=render_mode,
        )

    def _reward_at(self, t: int, actions: np.ndarray) -> float:
        return float(self.payoff[tuple(actions[t])])

    def _observation(self, index: int) -> np.ndarray:
        return np.ones(1, dtype=np.float32)

    def _state(self) -> np.ndarray:
        return self._time_one_hot()

    def true_credit(self, actions: np.ndarray) -> np.ndarray:
        """Counterfactual credit w.r.t. a uniform default action, ``[1, N]``.

        ``credit[0, i] = payoff[a] - mean_u payoff[a_0..u..a_{N-1}]``.
        """
        arr = self._check_actions(actions)
        joint = tuple(int(a) for a in arr[0])
        obtained = self.payoff[joint]
        credit = np.zeros((1, self.n_agents), dtype=np.float64)
        for i in range(self.n_agents):
            index: list[Any] = list(joint)
            index[i] = slice(None)
            credit[0, i] = obtained - self.payoff[tuple(index)].mean()
        return credit


class ClimbingGame(MatrixGame):
    """Climbing game (Claus & Boutilier, 1998): 2 agents, 3 actions, one step.

    Payoff (rows: ``agent_0``, columns: ``agent_1``)::

        [[ 11, -30,  0],
         [-30,   7,  6],
         [  0,   0,  5]]

    The optimum (0, 0) is surrounded by heavy miscoordination penalties, so
    independent learners tend to settle on (1, 1) or (2, 2).
    """

    metadata = {"name": "climbing_game_v0", "render_modes": []}

    def __init__(self, render_mode: str | None = None):
        super().__init__(CLIMBING_PAYOFF, render_mode=render_mode)


class PenaltyGame(MatrixGame):
    """Penalty game: 2 agents, 3 actions, one step, miscoordination cost ``k``.

    Payoff::

        [[10, 0,  k],
         [ 0, 2,  0],
         [ k, 0, 10]]

    Two optimal equilibria (0, 0) and (2, 2); mixing them up costs ``k``.
    """

    metadata = {"name": "penalty_game_v0", "render_modes": []}

    def __init__(self, k: float = -100.0, render_mode: str | None = None):
        self.k = float(k)
        super().__init__(
            [[10.0, 0.0, self.k], [0.0, 2.0, 0.0], [self.k, 0.0, 10.0]],
            render_mode=render_mode,
        )


# ---------------------------------------------------------------------------
# Lazy agent
# ---------------------------------------------------------------------------


class LazyAgent(DiagnosticParallelEnv):
    """Additive effort game in which one agent's effort does not count.

    Each step every agent picks an effort level ``e_i`` in ``{0..n_levels-1}``.
    Team reward: ``sum_i w_i * e_i / (n_levels - 1)``.  By default
    ``w_i = 1`` for every agent except ``lazy_agent`` (default: the last
    agent), whose weight is 0.  If ``weights`` is given it is used as is
    (length ``n_agents``) and ``lazy_agent`` is only recorded.  The episode
    lasts ``episode_length`` steps and then *terminates*: the task is over, so
    the value of the final state is 0 (the clock is observed, so this is Markov).

    Observation (and state): one-hot of the step index ``t``, length
    ``episode_length + 1`` (index ``episode_length`` is the final observation
    returned with the termination).

    ``infos[agent]["contribution"]`` is the agent's own term
    ``w_i * e_i / (n_levels - 1)``; the terms sum to the team reward. With
    ``rewards="own"`` each agent is rewarded with its own term instead of the
    team reward (for individual-reward ablations; the team reward is then the
    sum over agents, i.e. ``env.team_reward: sum``).

    ``true_credit(actions)``: ``w_i * (e_i - (n_levels - 1) / 2) / (n_levels - 1)``
    at every step (the uniform default effort has mean ``(n_levels - 1) / 2``),
    so the lazy agent's credit is exactly 0.
    """

    metadata = {"name": "lazy_agent_v0", "render_modes": []}

    def __init__(
        self,
        n_agents: int = 3,
        lazy_agent: int | None = None,
        n_levels: int = 3,
        episode_length: int = 10,
        weights: Sequence[float] | None = None,
        rewards: str = "team",
        render_mode: str | None = None,
    ):
        if rewards not in ("team", "own"):
            raise ValueError(f"rewards must be 'team' or 'own', got {rewards!r}")
        self._own_rewards = rewards == "own"
        n_agents = int(n_agents)
        if n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}")
        if int(n_levels) < 2:
            raise ValueError(f"n_levels must be >= 2, got {n_levels}")
        lazy = n_agents - 1 if lazy_agent is None else int(lazy_agent)
        if not 0 <= lazy < n_agents:
            raise ValueError(f"lazy_agent must be in [0, {n_agents}), got {lazy_agent}")
        if weights is None:
            w = np.ones(n_agents, dtype=np.float64)
            w[lazy] = 0.0
        else:
            w = np.array(weights, dtype=np.float64)
            if w.shape != (n_agents,):
                raise ValueError(f"weights must have length {n_agents}, got shape {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError("weights must be finite")
        w.setflags(write=False)
        self.lazy_agent = lazy
        self.n_levels = int(n_levels)
        self.weights = w
        super().__init__(
            n_actions=[self.n_levels] * n_agents,
            obs_dim=int(episode_length) + 1,
            state_dim=int(episode_length) + 1,
            episode_length=episode_length,
            render_mode=render_mode,
        )

    def _contributions(self, t: int, joint: np.ndarray) -> np.ndarray:
        return self.weights * joint / (self.n_levels - 1)

    def _reward_at(self, t: int, actions: np.ndarray) -> float:
        return float(np.sum(self._contributions(t, actions[t])))

    def _observation(self, index: int) -> np.ndarray:
        return self._time_one_hot()

    def _state(self) -> np.ndarray:
        return self._time_one_hot()

    def true_credit(self, actions: np.ndarray) -> np.ndarray:
        """Counterfactual credit ``[T, N]``: ``w_i (e_i - mean effort) / (n_levels - 1)``."""
        arr = self._check_actions(actions).astype(np.float64)
        mean_effort = (self.n_levels - 1) / 2.0
        return self.weights[None, :] * (arr - mean_effort) / (self.n_levels - 1)


# ---------------------------------------------------------------------------
# Delayed chain
# ---------------------------------------------------------------------------


class DelayedChain(DiagnosticParallelEnv):
    """Temporal credit: only the joint action at ``decision_step`` matters.

    Each of ``length`` steps every agent picks an action in ``{0, 1}``.  The
    team reward is 0 at every step except the last (step ``length - 1``), where
    it is 1.0 if *all* agents chose action 1 at ``decision_step`` and 0
    otherwise.  The episode terminates after ``length`` steps.  Actions at
    every other step are irrelevant distractions.

    Observation: one-hot step index ``t`` (length ``length + 1``), followed,
    when ``observe_outcome`` is True (default), by one flag that is 1 once the
    decision step has passed with all agents choosing 1 (0 before that).  With
    the flag the task is Markov for every agent and isolates *temporal* credit
    assignment; with ``observe_outcome=False`` it is also partially observable.

    State: one-hot step index (``length + 1``), the outcome flag, then the
    action each agent took at ``decision_step`` (0 until it has been taken).

    ``true_credit(actions)`` ``[length, N]`` is zero everywhere except row
    ``decision_step`` — although the reward arrives at the last step, the
    credit is attributed to the step where the deciding action was taken.
    There, with ``R = 1[all agents chose 1]``::

        credit[d, i] = R - 0.5 * 1[all *other* agents chose 1]

    i.e. +0.5 to each agent on success, -0.5 to an agent that alone broke a
    success, and 0 when the team failed regardless of that agent.
    """

    metadata = {"name": "delayed_chain_v0", "render_modes": []}

    def __init__(
        self,
        n_agents: int = 2,
        length: int = 10,
        decision_step: int = 0,
        observe_outcome: bool = True,
        render_mode: str | None = None,
    ):
        n_agents = int(n_agents)
        length = int(length)
        if n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {n_agents}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0 <= int(decision_step) < length:
            raise ValueError(f"decision_step must be in [0, {length}), got {decision_step}")
        self.length = length
        self.decision_step = int(decision_step)
        self.observe_outcome = bool(observe_outcome)
        super().__init__(
            n_actions=[2] * n_agents,
            obs_dim=length + 1 + int(self.observe_outcome),
            state_dim=length + 2 + n_agents,
            episode_length=length,
            render_mode=render_mode,
        )

    def _decision(self) -> np.ndarray | None:
        if len(self._history) > self.decision_step:
            return self._history[self.decision_step]
        return None

    def _success_flag(self) -> float:
        decision = self._decision()
        return float(decision is not None and bool(np.all(decision == 1)))

    def _reward_at(self, t: int, actions: np.ndarray) -> float:
        if t != self.length - 1:
            return 0.0
        return float(np.all(actions[self.decision_step] == 1))

    def _observation(self, index: int) -> np.ndarray:
        parts = [self._time_one_hot()]
        if self.observe_outcome:
            parts.append(np.array([self._success_flag()], dtype=np.float32))
        return np.concatenate(parts).astype(np.float32)

    def _state(self) -> np.ndarray:
        decision = self._decision()
        taken = (
            np.zeros(self.n_agents, dtype=np.float32)
            if decision is None
            else decision.astype(np.float32)
        )
        flag = np.array([self._success_flag()], dtype=np.float32)
        return np.concatenate([self._time_one_hot(), flag, taken]).astype(np.float32)

    def true_credit(self, actions: np.ndarray) -> np.ndarray:
        """Counterfactual credit ``[length, N]``, nonzero only at ``decision_step``."""
        arr = self._check_actions(actions)
        credit = np.zeros(arr.shape, dtype=np.float64)
        chose_one = arr[self.decision_step] == 1
        success = float(np.all(chose_one))
        for i in range(self.n_agents):
            others_ok = bool(np.all(np.delete(chose_one, i)))
            # Uniform over {0, 1}: success with probability 1/2 iff others chose 1.
            credit[self.decision_step, i] = success - 0.5 * float(others_ok)
        return credit


# ---------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------


def climbing_game(**kwargs: Any) -> ClimbingGame:
    """Create a :class:`ClimbingGame` (no options besides ``render_mode=None``)."""
    return ClimbingGame(**kwargs)


def penalty_game(**kwargs: Any) -> PenaltyGame:
    """Create a :class:`PenaltyGame`; kwargs: ``k=-100.0``."""
    return PenaltyGame(**kwargs)


def lazy_agent(**kwargs: Any) -> LazyAgent:
    """Create a :class:`LazyAgent`; kwargs: ``n_agents=3, lazy_agent=None,
    n_levels=3, episode_length=10, weights=None``."""
    return LazyAgent(**kwargs)


def delayed_chain(**kwargs: Any) -> DelayedChain:
    """Create a :class:`DelayedChain`; kwargs: ``n_agents=2, length=10,
    decision_step=0, observe_outcome=True``."""
    return DelayedChain(**kwargs)


DIAGNOSTIC_ENVS: dict[str, Callable[..., DiagnosticParallelEnv]] = {
    "climbing": climbing_game,
    "penalty": penalty_game,
    "lazy_agent": lazy_agent,
    "delayed_chain": delayed_chain,
}
