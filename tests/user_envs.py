"""Envs of the kinds users bring, each small enough to be *learned* in a test, with a known optimum:

- ``LateReward``: rewards only in the second half of an episode longer than the rollout;
- ``MaskedChoice``: per-step action masks (in a Dict observation or in the infos), and the env
  raises on an illegal action; ``LateMasks``: masks in the infos only from a later step on;
- ``Departures``: agents that leave at different times (by termination or truncation), and one that
  arrives late; ``Handover``: agents that leave, with a team score paid by one of three conventions
  and a departing agent's last action that pays the team after it has left;
- ``AnySpaces``: observations of every flattenable Gymnasium space;
- ``Unpicklable``: holds a lock, so its live state cannot be snapshot.

Every env follows the PettingZoo parallel API (``tests/test_env_features.py`` runs
``parallel_api_test`` on each).
"""
from __future__ import annotations

import threading

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class _TargetEnv(ParallelEnv):
    """Shared machinery: each present agent sees a random target (one-hot) and scores 1 for choosing it."""

    metadata = {"name": "target_env_v0", "render_modes": []}

    def __init__(self, n_agents: int, n_actions: int, render_mode=None):
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.n_actions = n_actions
        self.render_mode = render_mode
        self._rng = np.random.default_rng()
        self._act_spaces = {a: spaces.Discrete(n_actions) for a in self.possible_agents}

    def action_space(self, agent):
        return self._act_spaces[agent]

    def observation_space(self, agent):
        return self._obs_space

    def reset(self, seed=None, options=None):
        """Every agent present, step 0, fresh targets."""
        self._seed(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._draw_targets()
        return self._observe(), {a: {} for a in self.agents}

    def _draw_targets(self):
        self._targets = {a: int(self._rng.integers(self.n_actions)) for a in self.possible_agents}

    def _hits(self, actions) -> dict:
        return {a: float(int(actions[a]) == self._targets[a]) for a in self.agents}

    def _seed(self, seed):
        if seed is not None:
            self._rng = np.random.default_rng(seed)


class LateReward(_TargetEnv):
    """``length`` steps; an agent's choice scores only from step ``reward_from`` on, where each agent
    gets the team's mean hit rate. The observation is the target and the episode's progress.

    Optimum: ``n_agents * (length - reward_from)``; uniform random play: that over ``n_actions``;
    a trainer that cuts episodes at its rollout length (< ``reward_from``) sees no reward at all.
    """

    def __init__(self, n_agents: int = 2, n_actions: int = 3, length: int = 80, reward_from: int = 40,
                 render_mode=None):
        super().__init__(n_agents, n_actions, render_mode)
        self.length, self.reward_from = length, reward_from
        self._obs_space = spaces.Box(0.0, 1.0, (n_actions + 1,), np.float32)

    def _observe(self):
        progress = self._t / self.length
        return {a: np.append(np.eye(self.n_actions, dtype=np.float32)[self._targets[a]], np.float32(progress))
                for a in self.agents}

    def step(self, actions):
        hits = self._hits(actions)
        team = float(np.mean(list(hits.values()))) if self._t >= self.reward_from else 0.0
        self._t += 1
        self._draw_targets()
        done = self._t >= self.length
        out = (self._observe(), {a: team for a in self.agents}, {a: False for a in self.agents},
               {a: done for a in self.agents}, {a: {} for a in self.agents})
        if done:
            self.agents = []
        return out


class MaskedChoice(_TargetEnv):
    """Every step a random non-empty subset of the actions is legal; the observation marks the
    target, always a legal one. Choosing it scores 1; choosing an illegal action raises.

    ``mask_in="obs"``: the observation is ``{"observation": ..., "action_mask": ...}``;
    ``mask_in="info"``: a plain Box observation and ``infos[agent]["action_mask"]``.
    Optimum ``n_agents * length``; uniform random over the legal actions scores about
    ``E[1 / |legal|]`` of it.
    """

    def __init__(self, n_agents: int = 2, n_actions: int = 5, length: int = 10, mask_in: str = "obs",
                 render_mode=None):
        super().__init__(n_agents, n_actions, render_mode)
        if mask_in not in ("obs", "info"):
            raise ValueError(f"mask_in must be 'obs' or 'info', got {mask_in!r}")
        self.length, self.mask_in = length, mask_in
        box = spaces.Box(0.0, 1.0, (n_actions,), np.float32)
        self._obs_space = box if mask_in == "info" else spaces.Dict(
            {"observation": box, "action_mask": spaces.MultiBinary(n_actions)})

    def _draw(self):
        self._masks = {}
        for a in self.possible_agents:
            mask = self._rng.random(self.n_actions) < 0.5
            mask[self._rng.integers(self.n_actions)] = True
            self._masks[a] = mask.astype(np.int8)
        self._targets = {a: int(self._rng.choice(np.flatnonzero(self._masks[a]))) for a in self.possible_agents}

    def _observe(self):
        obs, infos = {}, {}
        for a in self.agents:
            target = np.eye(self.n_actions, dtype=np.float32)[self._targets[a]]
            if self.mask_in == "obs":
                obs[a], infos[a] = {"observation": target, "action_mask": self._masks[a].copy()}, {}
            else:
                obs[a], infos[a] = target, {"action_mask": self._masks[a].copy()}
        return obs, infos

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._draw()
        return self._observe()

    def step(self, actions):
        for a in self.agents:
            if not self._masks[a][int(actions[a])]:
                raise ValueError(f"illegal action {int(actions[a])} for {a} (mask {self._masks[a].tolist()})")
        hits = self._hits(actions)
        self._t += 1
        self._draw()
        done = self._t >= self.length
        obs, infos = self._observe()
        out = (obs, hits, {a: False for a in self.agents}, {a: done for a in self.agents}, infos)
        if done:
            self.agents = []
        return out


class LateMasks(MaskedChoice):
    """``MaskedChoice`` with masks in the infos that start late: before step ``masks_from`` every
    action is legal and the infos (the reset's included) carry no action_mask; from then on they
    carry each step's mask, and an illegal action raises."""

    def __init__(self, masks_from: int = 1, **kwargs):
        super().__init__(mask_in="info", **kwargs)
        self.masks_from = masks_from

    def _draw(self):
        super()._draw()
        if self._t < self.masks_from:
            self._masks = {a: np.ones(self.n_actions, np.int8) for a in self.possible_agents}

    def _observe(self):
        obs, infos = super()._observe()
        if self._t < self.masks_from:
            infos = {a: {} for a in infos}
        return obs, infos


class Departures(_TargetEnv):
    """Agent i is present from step ``arrive[i]`` and leaves after ``stay[i]`` steps: the ones in
    ``truncate`` by truncation, the others by termination. Each present agent scores its own hit
    (its raw reward); the episode ends when no agent is left.

    Optimum ``sum(stay)``; uniform random ``sum(stay) / n_actions``.
    """

    def __init__(self, stay=(3, 6, 9), arrive=(0, 0, 2), truncate=(1,), n_actions: int = 3, render_mode=None):
        super().__init__(len(stay), n_actions, render_mode)
        if len(arrive) != len(stay):
            raise ValueError("arrive and stay need one entry per agent")
        self.stay, self.arrive, self.truncate = list(stay), list(arrive), set(truncate)
        self._obs_space = spaces.Box(0.0, 1.0, (n_actions,), np.float32)

    def _present(self) -> list:
        return [a for i, a in enumerate(self.possible_agents)
                if self.arrive[i] <= self._t < self.arrive[i] + self.stay[i]]

    def _observe(self):
        return {a: np.eye(self.n_actions, dtype=np.float32)[self._targets[a]] for a in self.agents}

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self._t = 0
        self.agents = self._present()
        self._draw_targets()
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions):
        hits = self._hits(actions)
        acting = list(self.agents)
        self._t += 1
        self._draw_targets()
        leaving = {a for i, a in enumerate(self.possible_agents) if self._t == self.arrive[i] + self.stay[i]}
        terms = {a: a in leaving and self.possible_agents.index(a) not in self.truncate for a in acting}
        truncs = {a: a in leaving and self.possible_agents.index(a) in self.truncate for a in acting}
        self.agents = self._present()
        for a in self.agents:   # an agent that has just arrived starts with no reward
            hits.setdefault(a, 0.0)
            terms.setdefault(a, False)
            truncs.setdefault(a, False)
        seen = list(hits)
        obs = {a: np.eye(self.n_actions, dtype=np.float32)[self._targets[a]] for a in seen}
        return obs, hits, terms, truncs, {a: {} for a in seen}


class Handover(Departures):
    """``Departures`` with a team score and a hand-over: each present agent scores ``hit`` for
    choosing its target and ``miss`` otherwise; at its last step (its observation says so) an agent
    that instead chooses the action after its target (mod ``n_actions``) scores ``miss`` but hands
    over: the team gets ``bonus`` at every later step of the episode. A departing agent's last
    action pays off only after it has left. ``payout`` says who is paid the team's step score R:
    ``split`` (R / n to each of the n agents present), ``team`` (R to each present agent) or
    ``leaver`` (each agent its own score, the bonus split among the agents present).

    With the defaults, handing over is worth it for both agents that leave early; the optimum is
    ``optimum()``, and never handing over scores 1.5 less under ``split`` and ``leaver``.
    """

    def __init__(self, payout: str = "split", hit: float = 0.1, miss: float = -0.5, bonus: float = 0.3,
                 stay=(3, 6, 9), arrive=(0, 0, 0), truncate=(), **kwargs):
        super().__init__(stay=stay, arrive=arrive, truncate=truncate, **kwargs)
        if payout not in ("split", "team", "leaver"):
            raise ValueError(f"payout must be split, team or leaver, got {payout!r}")
        self.payout, self.hit, self.miss, self.bonus = payout, hit, miss, bonus
        self._obs_space = spaces.Box(0.0, 1.0, (self.n_actions + 1,), np.float32)

    def _is_last(self, agent) -> bool:
        i = self.possible_agents.index(agent)
        return self._t + 1 == self.arrive[i] + self.stay[i]

    def _observe_all(self, agents):
        return {a: np.append(np.eye(self.n_actions, dtype=np.float32)[self._targets[a]],
                             np.float32(self._is_last(a))) for a in agents}

    def _observe(self):
        return self._observe_all(self.agents)

    def reset(self, seed=None, options=None):
        self._unlocked = 0
        return super().reset(seed, options)

    def handover_action(self, agent) -> int:
        return (self._targets[agent] + 1) % self.n_actions

    def step(self, actions):
        present = list(self.agents)
        handing = {a for a in present if self._is_last(a) and int(actions[a]) == self.handover_action(a)}
        _, hits, terms, truncs, infos = super().step(actions)
        score = {a: self.hit if hits[a] else self.miss for a in present}
        bonus = self.bonus * self._unlocked
        self._unlocked += len(handing)
        team = sum(score.values()) + bonus
        for a in hits:
            if a not in present:
                hits[a] = 0.0
            elif self.payout == "split":
                hits[a] = team / len(present)
            elif self.payout == "team":
                hits[a] = team
            else:
                hits[a] = score[a] + bonus / len(present)
        return self._observe_all(list(hits)), hits, terms, truncs, infos

    def optimum(self, episodes: int = 1, hand_over: bool = True) -> float:
        """The mean team return (rewards summed over agents and steps) of hitting every target and,
        with ``hand_over``, handing over at each agent's last step (agent_2's is worth nothing)."""
        total = 0.0
        for seed in range(episodes):
            self.reset(seed=seed)
            while self.agents:
                choice = {a: self.handover_action(a) if hand_over and self._is_last(a) and a != self.possible_agents[-1]
                          else self._targets[a] for a in self.agents}
                total += sum(self.step(choice)[1].values())
        return total / episodes


class AnySpaces(ParallelEnv):
    """One agent per kind of observation space; rewards 1 when agent i's action equals the parity of
    the first entry of its observation (just enough to be an env). 5-step episodes.

    ``bad`` breaks it on purpose at step 2 of every episode, or of its ``bad_episode``-th only
    (counting resets from 1), or in the reset: ``nan_obs``, ``inf_reward``, ``nan_state``, ``raise`` (in step 3);
    ``obs_shape`` (the box agent's observation has 4 values), ``obs_dtype`` (strings),
    ``obs_discrete`` (2.5 for a Discrete), ``unknown_agent`` (a reward for 'ghost'), ``unknown_live``
    ('ghost' in env.agents), ``reward_vector`` (a reward of shape (2,)), ``reward_size_one``
    (every reward of shape (1,), at every step: allowed), ``action_space`` (box's becomes
    Discrete(3)), ``state_length`` (state() of 3 values, 4 at step 2), ``state_space`` (a
    state_space of 5 values for a state() of 3: allowed), ``state_broken`` (state() always raises
    TypeError, as rps_v2's does: allowed), ``state_gone`` (state() raises once the
    episode has ended, by termination: allowed) and ``state_gone_truncated`` (the same at a
    truncation); in reset: ``reset_swapped`` ((infos, observations)), ``reset_obs_only``; in step:
    ``step_four`` (the pre-truncation 4-tuple)."""

    metadata = {"name": "any_spaces_v0", "render_modes": []}
    SPACES = {
        "box": spaces.Box(-1.0, 1.0, (2, 3), np.float32),
        "dict": spaces.Dict({"pos": spaces.Box(0.0, 1.0, (2,), np.float32), "mode": spaces.Discrete(3)}),
        "discrete": spaces.Discrete(4),
        "multibinary": spaces.MultiBinary(3),
        "multidiscrete": spaces.MultiDiscrete([2, 3]),
        "tuple": spaces.Tuple((spaces.Discrete(2), spaces.Box(0.0, 1.0, (1,), np.float32))),
    }

    def __init__(self, render_mode=None, bad: str = "", bad_episode: int = 0):
        self.possible_agents = sorted(self.SPACES)
        self.render_mode = render_mode
        self.bad = bad
        self.bad_episode, self._episode = bad_episode, 0
        if bad == "state_space":
            self.state_space = spaces.Box(0.0, 9.0, (5,), np.float32)
        self._spaces = {a: s for a, s in self.SPACES.items()}
        for s in self._spaces.values():
            s.seed(0)
        self._act_spaces = {a: spaces.Discrete(2) for a in self.possible_agents}

    def observation_space(self, agent):
        return self._spaces[agent]

    def action_space(self, agent):
        if self._broken("action_space") and agent == "box":
            return spaces.Discrete(3)
        return self._act_spaces[agent]

    def _broken(self, kind: str, t: int = 2) -> bool:
        return self.bad == kind and self.bad_episode in (0, self._episode) and getattr(self, "_t", -1) == t

    def _observe(self):
        obs = {a: self._spaces[a].sample() for a in self.agents}
        if self._broken("nan_obs"):
            obs["dict"]["pos"] = np.array([np.nan, 0.0], np.float32)
        if self._broken("obs_shape"):
            obs["box"] = np.zeros(4, np.float32)
        if self._broken("obs_dtype"):
            obs["box"] = np.full((2, 3), "x")
        if self._broken("obs_discrete"):
            obs["discrete"] = 2.5
        return obs

    def state(self):
        if self.bad == "state_broken":
            raise TypeError("'dict' object is not callable")
        if self.bad in ("state_gone", "state_gone_truncated") and not self.agents:
            raise AttributeError("'NoneType' object has no attribute 'position'")
        if self.bad not in ("nan_state", "state_length", "state_space", "state_gone", "state_gone_truncated"):
            raise NotImplementedError   # the adapter concatenates the observations
        state = np.full(4 if self._broken("state_length") else 3, float(self._t), np.float32)
        if self._broken("nan_state"):
            state[1] = np.nan
        return state

    def reset(self, seed=None, options=None):
        if seed is not None:
            for i, s in enumerate(self._spaces.values()):
                s.seed(seed + i)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._episode += 1
        obs, infos = self._observe(), {a: {} for a in self.agents}
        if self._broken("reset_swapped", 0):
            return infos, obs
        if self._broken("reset_obs_only", 0):
            return obs
        return obs, infos

    def step(self, actions):
        self._t += 1
        if self._broken("raise", 3):
            raise RuntimeError("the simulator lost its connection")
        rewards = {a: 1.0 for a in self.agents}
        if self._broken("inf_reward"):
            rewards["tuple"] = float("inf")
        if self._broken("unknown_agent"):
            rewards["ghost"] = 1.0
        if self._broken("reward_vector"):
            rewards["box"] = np.array([1.0, 0.0])
        if self.bad == "reward_size_one":
            rewards = {a: np.array([r]) for a, r in rewards.items()}
        done = self._t >= 5
        ends_by_termination = self.bad == "state_gone"
        out = (self._observe(), rewards, {a: done and ends_by_termination for a in self.agents},
               {a: done and not ends_by_termination for a in self.agents}, {a: {} for a in self.agents})
        if done:
            self.agents = []
        if self._broken("unknown_live"):
            self.agents = self.agents + ["ghost"]
        if self._broken("step_four"):
            return out[0], out[1], {a: out[2][a] or out[3][a] for a in out[2]}, out[4]
        return out


class Unpicklable(LateReward):
    """``LateReward`` holding a lock: its live state cannot be snapshot."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._lock = threading.Lock()


def late_reward(**kwargs):
    return LateReward(**kwargs)


def masked_choice(**kwargs):
    return MaskedChoice(**kwargs)


def late_masks(**kwargs):
    return LateMasks(**kwargs)


def departures(**kwargs):
    return Departures(**kwargs)


def handover(**kwargs):
    return Handover(**kwargs)


def any_spaces(**kwargs):
    return AnySpaces(**kwargs)


def unpicklable(**kwargs):
    return Unpicklable(**kwargs)


class NoLegalAction(MaskedChoice):
    """Broken on purpose: at step 3 agent_1's mask marks nothing legal."""

    def _draw(self):
        super()._draw()
        if getattr(self, "_t", 0) == 2:
            self._masks["agent_1"][:] = 0


def no_legal_action(**kwargs):
    return NoLegalAction(**kwargs)


class SequenceObservation(AnySpaces):
    """Broken on purpose: a variable-length observation that gymnasium cannot flatten."""

    def observation_space(self, agent):
        return spaces.Sequence(spaces.Discrete(2))


def sequence_observation(**kwargs):
    return SequenceObservation(**kwargs)


class FailsLater(LateReward):
    """Broken on purpose: raises in the step after ``fail_after`` steps of its life (episodes included)."""

    def __init__(self, fail_after: int, **kwargs):
        super().__init__(**kwargs)
        self.fail_after, self._life = fail_after, 0

    def step(self, actions):
        self._life += 1
        if self._life > self.fail_after:
            raise RuntimeError("the simulator lost its connection")
        return super().step(actions)


def fails_later(**kwargs):
    return FailsLater(**kwargs)


class BatchedMatchTarget:
    """A batched env of our own (the protocol of ``docs/batched_envs.md``, not an mpe2 twin): each
    of N agents sees a one-hot target and scores 1 for choosing it; episodes of ``length`` steps.
    ``legal`` gives each agent's own number of actions (its targets among them; default all
    ``n_actions``). Optimum ``N * length``; uniform random play ``Σ_i length / legal_i``."""

    def __init__(self, num_envs: int, device="cpu", seed: int = 0, n_agents: int = 2, n_actions: int = 3,
                 length: int = 5, legal=None):
        import torch

        self.torch = torch
        self.num_envs, self.n_agents, self.n_actions, self.length = num_envs, n_agents, n_actions, length
        self.agents = [f"agent_{i}" for i in range(n_agents)]
        self.obs_dim, self.state_dim = n_actions, n_agents * n_actions
        self._legal = torch.tensor(legal if legal is not None else [n_actions] * n_agents)
        self.action_mask = torch.arange(n_actions) < self._legal[:, None]
        self.continuous = False
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(seed)
        self.reset(seed)

    def _draw(self, rows=None):
        t = self.torch
        fresh = t.randint(self.n_actions, (self.num_envs, self.n_agents), generator=self._generator) % self._legal
        self._targets = fresh if rows is None else t.where(rows[:, None], fresh, self._targets)

    def observe(self):
        obs = self.torch.nn.functional.one_hot(self._targets, self.n_actions).float()
        return obs, obs.reshape(self.num_envs, -1)

    def reset(self, seed=None):
        if seed is not None:
            self._generator.manual_seed(int(seed))
        self._steps = self.torch.zeros(self.num_envs, dtype=self.torch.long)
        self._draw()
        return self.observe()

    def step(self, actions):
        t = self.torch
        reward = (actions == self._targets).float()
        self._steps += 1
        self._draw()
        next_obs, next_state = self.observe()
        done = self._steps >= self.length
        self._steps[done] = 0
        obs, state = self.observe()   # a fresh target is a fresh episode: nothing else to reset
        truncated = done[:, None].expand(-1, self.n_agents).clone()
        return {"obs": obs, "state": state, "next_obs": next_obs, "next_state": next_state, "reward": reward,
                "terminated": t.zeros_like(truncated), "truncated": truncated, "done": done}

    def get_state(self):
        return {"targets": self._targets.clone(), "steps": self._steps.clone(), "rng": self._generator.get_state()}

    def set_state(self, state):
        self._targets, self._steps = state["targets"].clone(), state["steps"].clone()
        self._generator.set_state(state["rng"])


def batched_match_target(num_envs, device="cpu", seed=0, **kwargs):
    return BatchedMatchTarget(num_envs, device, seed, **kwargs)


class CueMemory(_TargetEnv):
    """Each agent sees a cue (one-hot) only at step 0 and must choose it at step ``delay``, the
    episode's last; the observation also carries the step (one-hot). Only that choice scores 1.

    Optimum ``n_agents``; the best a memoryless policy can do is ``n_agents / n_actions``.
    """

    def __init__(self, n_agents: int = 2, n_actions: int = 3, delay: int = 5, render_mode=None):
        super().__init__(n_agents, n_actions, render_mode)
        self.delay = delay
        self._obs_space = spaces.Box(0.0, 1.0, (n_actions + delay + 1,), np.float32)

    def _observe(self):
        step = np.eye(self.delay + 1, dtype=np.float32)[self._t]
        return {a: np.concatenate([np.eye(self.n_actions, dtype=np.float32)[self._targets[a]] * (self._t == 0), step])
                for a in self.agents}

    def step(self, actions):
        last = self._t == self.delay
        rewards = {a: float(last and int(actions[a]) == self._targets[a]) for a in self.agents}
        self._t += 1
        obs = self._observe() if not last else {a: np.zeros(self._obs_space.shape, np.float32) for a in self.agents}
        agents = self.agents
        out = (obs, rewards, {a: last for a in agents}, {a: False for a in agents}, {a: {} for a in agents})
        if last:
            self.agents = []
        return out


class ReachTarget(ParallelEnv):
    """Continuous actions: each agent sees a target in [0, 1]^2 and is rewarded minus the distance
    of its action (a Box(0, 1, (2,)) point) to it, for ``length`` steps. Optimum 0; the zero action
    scores about ``-0.77`` per agent and step."""

    metadata = {"name": "reach_target_v0", "render_modes": []}

    def __init__(self, n_agents: int = 2, length: int = 5, render_mode=None):
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.length, self.render_mode = length, render_mode
        self._obs_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self._act_spaces = {a: spaces.Box(0.0, 1.0, (2,), np.float32) for a in self.possible_agents}
        self._rng = np.random.default_rng()

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_spaces[agent]

    def _draw(self):
        self._targets = {a: self._rng.random(2).astype(np.float32) for a in self.possible_agents}
        return {a: self._targets[a].copy() for a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        return self._draw(), {a: {} for a in self.agents}

    def step(self, actions):
        for a in self.agents:
            if not self._act_spaces[a].contains(np.asarray(actions[a], np.float32)):
                raise ValueError(f"action {actions[a]} of {a} is outside Box(0, 1): it was not clipped")
        rewards = {a: -float(np.linalg.norm(np.asarray(actions[a]) - self._targets[a])) for a in self.agents}
        self._t += 1
        done = self._t >= self.length
        obs = self._draw()
        agents = self.agents
        out = (obs, rewards, {a: False for a in agents}, {a: done for a in agents}, {a: {} for a in agents})
        if done:
            self.agents = []
        return out


def cue_memory(**kwargs):
    return CueMemory(**kwargs)


def reach_target(**kwargs):
    return ReachTarget(**kwargs)


class LateRewardArrays(LateReward):
    """``LateReward`` paying each reward as an array of shape (1,), as Gymnasium-style envs often do."""

    def step(self, actions):
        obs, rewards, terms, truncs, infos = super().step(actions)
        return obs, {a: np.array([r], np.float32) for a, r in rewards.items()}, terms, truncs, infos


def late_reward_arrays(**kwargs):
    return LateRewardArrays(**kwargs)
