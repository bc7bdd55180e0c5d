"""Adapter from one PettingZoo ParallelEnv to fixed-shape numpy arrays over N sorted agents.

- **Observations** of any Gymnasium space are flattened with ``gymnasium.spaces.flatten``; agents
  with smaller observations are zero-padded to the largest.
- **Actions** are ``Discrete`` (agents with fewer actions get the extra ones masked out: the
  static ``action_mask``) or ``Box`` for every agent (``continuous``; flattened, padded to the
  largest, ``action_mask`` marking each agent's dims; actions are clipped to the space's bounds
  before they reach the env). An env that mixes the two is refused.
- **Action masks.** Per-step masks follow PettingZoo's conventions: an observation ``Dict`` with
  keys ``observation`` and ``action_mask`` (the mask is not part of what the network sees), or
  ``infos[agent]["action_mask"]``. Every step returns ``avail [N, A]``, the static mask and the
  step's mask combined.
- **Agents that come and go.** ``alive [N]`` marks the agents in ``env.agents``: the ones that act
  next. An agent that is absent (it terminated or truncated on its own, or has not arrived yet) has
  zero observations and reward and gets no action; the episode ends when no agent is left.
- **Images.** Where every agent observes the same image-shaped ``Box`` (``image_layout``), ``obs_image``
  describes it for the networks' image encoder; uint8 images stay uint8 (``obs_dtype``), 4× less
  memory than float32 in every buffer (the learner converts them). ``state_image``/``state_dtype``
  do the same for an image ``env.state()``.
- **Global state:** ``env.state()`` where the env implements it, else the concatenation of the
  agents' (unpadded) observations (``state_is_obs``); for the envs in ``marl.envs.registry.STATE_IS_OBSERVATIONS`` that
  concatenation is what ``state()`` computes anyway, so it is built directly.
  ``state()`` is probed at the first reset: its length there is the state's length (where it
  differs from the env's ``state_space``, that is said once; where it raises, the observations
  make the state, said once unless it raised ``NotImplementedError``); a later ``state()`` of
  another length is an error. Where ``state()`` raises at the last step of an episode that every agent
  terminated (multiwalker's does, once a walker has fallen), that state, never bootstrapped from,
  is zeros (said once).
- **Bad env output is an error** (``EnvError``) naming the env, agent, step and key: output that
  breaks the PettingZoo API or the env's declared spaces (``marl.envs.contract``; checked on the
  first episode, or on every one with ``check="always"``), a NaN or infinite observation, reward
  or global state (``env.state()``, named by index), no legal action for a live agent, an
  exception raised by the env (summarised in one line).
"""
from __future__ import annotations

import math

from typing import NamedTuple

import numpy as np
from gymnasium import spaces

from marl.envs.contract import CHECKS, Contract
from marl.envs.errors import EnvError, error_summary, notice
from marl.envs.registry import STATE_IS_OBSERVATIONS, make_parallel_env

MASK_KEY = "action_mask"
UNREADABLE = (KeyError, ValueError, TypeError, IndexError, AttributeError)   # what bad output raises in conversion


class TeamObs(NamedTuple):
    """What the agents see: ``obs [N, O]``, ``state [S]``, ``avail [N, A]`` (bool, legal actions)
    and ``alive [N]`` (bool, the agent is in ``env.agents`` and acts next)."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    alive: np.ndarray


class TeamStep(NamedTuple):
    """One step: the true next ``obs``/``state``/``avail``/``alive`` (also at the episode's end),
    ``reward [N]``, ``terminated [N]``, ``truncated [N]`` and ``done`` (no agent is left)."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    alive: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    done: bool


class ImageLayout(NamedTuple):
    """An image-shaped array: ``shape`` as the env gives it (H×W×C or C×H×W), where its channels
    are (``channels_last``) and whether its pixels are uint8 (0–255)."""

    shape: tuple
    channels_last: bool
    uint8: bool


def image_layout(shape: tuple, dtype) -> ImageLayout | None:
    """The layout of an image-shaped array (3-d, 1–4 channels last or else first, both other sides
    at least 8 pixels), or None for any other shape."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3:
        return None
    uint8 = np.dtype(dtype) == np.uint8
    if shape[2] <= 4 and min(shape[:2]) >= 8:
        return ImageLayout(shape, True, uint8)
    if shape[0] <= 4 and min(shape[1:]) >= 8:
        return ImageLayout(shape, False, uint8)
    return None


def _write_image(row: np.ndarray, image) -> None:
    """Copy ``image`` (any strides) into the flat C-order ``row``. Where its channels are contiguous
    but the rest is not (a rotated or flipped screen, as PettingZoo's butterfly envs return) it
    moves whole pixels: 4-8× faster than numpy's element-by-element gather of such a view."""
    image = np.asarray(image)
    target = row.reshape(image.shape)
    if image.dtype == row.dtype and image.ndim == 3 and image.strides[-1] == image.itemsize:
        pixel = np.dtype((np.void, image.shape[-1] * image.itemsize))
        np.copyto(target.view(pixel), image.view(pixel))
    else:
        np.copyto(target, image, casting="unsafe")


def _network_space(env_id: str, agent: str, space: spaces.Space) -> tuple[spaces.Space, str | None]:
    """The part of an observation space the network sees, and how to take it out of an observation
    that carries an action mask: ``None`` (no mask), ``"observation"`` (the value under that key) or
    ``"dict"`` (every key but the mask)."""
    if isinstance(space, spaces.Dict) and MASK_KEY in space.spaces:
        rest = {k: s for k, s in space.spaces.items() if k != MASK_KEY}
        if not rest:
            raise EnvError(f"env {env_id!r}: agent {agent!r} observes only an action_mask")
        if list(rest) == ["observation"]:
            return rest["observation"], "observation"
        return spaces.Dict(rest), "dict"
    return space, None


def _flat_size(env_id: str, agent: str, space: spaces.Space) -> int:
    try:
        flat = spaces.flatten_space(space)
    except (NotImplementedError, TypeError, AttributeError, ValueError) as exc:
        flat = exc
    if not isinstance(flat, spaces.Box):
        raise EnvError(f"env {env_id!r}: agent {agent!r} has observation space {space}, which gymnasium cannot "
                       f"flatten to a fixed-size vector; wrap the env to give a Box, Dict, Tuple, Discrete, "
                       f"MultiBinary or MultiDiscrete observation")
    return int(np.prod(flat.shape))


class TeamEnv:
    """One env, arrays in and out. Not vectorised: see ``marl.envs.vector`` for that.

    Attributes:
        agents: sorted agent ids (length N).
        obs_dim, state_dim, n_actions: padded sizes.
        obs_image, state_image: the ``ImageLayout`` of every agent's observation (all the same
            image) and of ``env.state()``, or None; ``obs_dtype``, ``state_dtype``: uint8 for uint8
            images, else float32. ``state_is_obs``: the state is the agents' observations
            concatenated (no ``env.state()``).
        action_mask: bool ``[N, A]``, True where the action exists for that agent.
        dynamic_mask: the env has given per-step action masks so far (in a Dict observation, or in
            the infos of any reset or step it took). Vector envs do not wait for it: their policy
            reads ``avail`` at every step of every Discrete env (``marl.envs.vector._describe``).

    ``check``: ``"first"`` checks every output of the first episode against the API and the
    declared spaces (``marl.envs.contract``), ``"always"`` of every episode.
    """

    def __init__(self, env_id: str, kwargs: dict | None = None, render_mode: str | None = None,
                 check: str = "first"):
        if check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
        self.env_id = env_id
        self.check = check
        self._checking = True   # until the first episode ends, with check="first"
        self.env = make_parallel_env(env_id, kwargs, render_mode)
        self.agents = sorted(self.env.possible_agents)
        if not self.agents:
            raise EnvError(f"env {env_id!r} has no agents in possible_agents")
        self.n_agents = len(self.agents)
        self.turn_based = bool(getattr(self.env, "turn_based", False))
        self.zero_sum = bool(getattr(self.env, "zero_sum", False))
        self._index = {agent: i for i, agent in enumerate(self.agents)}
        obs_sizes, act_sizes, self._obs_spaces, self._mask_in_obs, self._action_start = [], [], [], [], []
        act_spaces = [self.env.action_space(agent) for agent in self.agents]
        kinds = {type(space).__name__ for space in act_spaces}
        for agent, space in zip(self.agents, act_spaces):
            if not isinstance(space, (spaces.Discrete, spaces.Box)):
                raise EnvError(f"env {env_id!r}: agent {agent!r} has action space {space}; Discrete and Box actions "
                               f"are supported")
        if len(kinds) > 1:
            listed = ", ".join(f"{agent}: {space}" for agent, space in zip(self.agents, act_spaces))
            raise EnvError(f"env {env_id!r} mixes action spaces ({listed}); every agent needs the same kind, all "
                           f"Discrete or all Box")
        self.continuous = isinstance(act_spaces[0], spaces.Box)
        self._act_spaces = act_spaces
        self._contract = Contract(env_id, self.env, self.agents)
        for agent, act_space in zip(self.agents, act_spaces):
            obs_space = self.env.observation_space(agent)
            space, in_obs = _network_space(env_id, agent, obs_space)
            if in_obs and self.continuous:
                raise EnvError(f"env {env_id!r}: agent {agent!r} has an action_mask with Box actions; masks need "
                               f"Discrete actions")
            obs_sizes.append(_flat_size(env_id, agent, space))
            self._obs_spaces.append(space)
            self._mask_in_obs.append(in_obs)
            act_sizes.append(int(np.prod(act_space.shape)) if self.continuous else int(act_space.n))
            self._action_start.append(0 if self.continuous else int(act_space.start))
        self._obs_sizes = obs_sizes
        self.obs_dim = max(obs_sizes)
        self.n_actions = max(act_sizes)
        self._act_sizes = act_sizes
        self.action_mask = np.arange(self.n_actions)[None, :] < np.array(act_sizes)[:, None]
        if self.continuous:   # each agent's bounds, padded (a padded dim is never sent)
            self.action_low = np.zeros((self.n_agents, self.n_actions), np.float32)
            self.action_high = np.zeros((self.n_agents, self.n_actions), np.float32)
            for i, space in enumerate(act_spaces):
                self.action_low[i, :act_sizes[i]] = np.broadcast_to(space.low, space.shape).reshape(-1)
                self.action_high[i, :act_sizes[i]] = np.broadcast_to(space.high, space.shape).reshape(-1)
        self._uniform_obs = len(set(obs_sizes)) == 1
        self._box_obs = all(isinstance(s, spaces.Box) for s in self._obs_spaces)
        self._any_mask_in_obs = any(self._mask_in_obs)
        self._offsets = any(self._action_start)
        self._has_state = env_id not in STATE_IS_OBSERVATIONS
        first_space = self._obs_spaces[0]
        self.obs_image = image_layout(first_space.shape, first_space.dtype) if self._box_obs and all(
            s.shape == first_space.shape and s.dtype == first_space.dtype for s in self._obs_spaces) else None
        self.obs_dtype = np.uint8 if self.obs_image and self.obs_image.uint8 else np.float32
        self.state_image, self.state_dtype = None, np.float32
        # read-only arrays returned on the fast paths of step (every agent present, no per-step mask)
        # False where the caller checks a whole batch of steps at once (marl.envs.vector.EnvSlice)
        # and asks check_step / check_state for the message only when that finds a NaN or inf
        self.check_values = True
        self._last_obs: dict = {}
        self._everyone = np.ones(self.n_agents, dtype=bool)
        self._everyone.setflags(write=False)
        self._static_avail = self.action_mask.copy()
        self._static_avail.setflags(write=False)
        self._t = 0
        self._info_masks = False
        self.state_dim: int | None = None   # set by the first reset
        first = self.reset(seed=0)
        self.state_dim = first.state.shape[0]
        self.state_is_obs = not self._has_state
        if self.state_is_obs:
            self.state_dtype = self.obs_dtype
        else:
            state = np.asarray(self.env.state())
            self.state_image = image_layout(state.shape, state.dtype)
            if self.state_image and self.state_image.uint8:
                self.state_dtype = np.uint8

    def __getstate__(self) -> dict:   # a snapshot (marl.envs.snapshot) holds no copy of the last observations
        return {**self.__dict__, "_last_obs": {}}

    @property
    def dynamic_mask(self) -> bool:
        return self._any_mask_in_obs or self._info_masks

    # -- conversion helpers ------------------------------------------------------------------
    def _flatten(self, i: int, value) -> np.ndarray:
        if self._mask_in_obs[i] == "observation":
            value = value["observation"]
        elif self._mask_in_obs[i] == "dict":
            value = {k: v for k, v in value.items() if k != MASK_KEY}
        if self._box_obs:
            return np.asarray(value, dtype=self.obs_dtype).reshape(-1)
        return np.asarray(spaces.flatten(self._obs_spaces[i], value), dtype=np.float32)

    def _obs_array(self, obs: dict) -> np.ndarray:
        if self.obs_image is not None and len(obs) == self.n_agents and not self._any_mask_in_obs:
            out = np.empty((self.n_agents, self.obs_dim), dtype=self.obs_dtype)
            for i, agent in enumerate(self.agents):
                _write_image(out[i], obs[agent])
            return out
        if self._uniform_obs and len(obs) == self.n_agents and not self._any_mask_in_obs and self._box_obs:
            out = np.stack([np.asarray(obs[a], dtype=self.obs_dtype).reshape(-1) for a in self.agents])
            if out.shape[1] != self.obs_dim:
                raise ValueError(f"observations of {out.shape[1]} values, {self.obs_dim} declared")
            return out
        out = np.zeros((self.n_agents, self.obs_dim), dtype=self.obs_dtype)
        for agent, value in obs.items():
            i = self._index[agent]
            out[i, : self._obs_sizes[i]] = self._flatten(i, value)
        return out

    def _state(self, obs_array: np.ndarray, terminal: bool = False) -> np.ndarray:
        """The global state ``[S]``; ``terminal``: the episode has just ended with every agent
        terminated (nothing bootstraps from this state)."""
        if self._has_state:
            try:
                if self.state_image is not None:
                    state = np.empty(self.state_dim, dtype=self.state_dtype)
                    _write_image(state, self.env.state())
                else:
                    state = np.asarray(self.env.state(), dtype=self.state_dtype).reshape(-1)
            except Exception as exc:
                if self.state_dim is None:   # no usable state() at the first reset: the observations make it
                    self._has_state = False
                    if not isinstance(exc, NotImplementedError):
                        notice(f"env {self.env_id!r}: state() raised {error_summary(exc)} at the first reset; the "
                               f"critic's global state is the agents' observations, concatenated")
                elif terminal:
                    notice(f"env {self.env_id!r}: state() raised {error_summary(exc)} at the last step of an "
                           f"episode that every agent terminated; that state is never bootstrapped from, so "
                           f"zeros stand for it")
                    return np.zeros(self.state_dim, self.state_dtype)
                else:
                    self._contract.fail(None, self._t, "state()", f"raised {error_summary(exc)}")
            else:
                if self.state_dim is None:
                    self._declared_state(state)
                elif state.shape[0] != self.state_dim:
                    self._contract.fail(None, self._t, "state()", f"returned {state.shape[0]} values, "
                                                                  f"{self.state_dim} at the first reset")
                if self.check_values or self._t == 0:   # a reset is always checked here
                    self.check_state(state)
                return state
        if self._uniform_obs:   # the unpadded observations, concatenated: the rows of obs_array
            return obs_array.reshape(-1)
        return np.concatenate([obs_array[i, :size] for i, size in enumerate(self._obs_sizes)])

    def _declared_state(self, state: np.ndarray) -> None:
        """Say once where ``state()`` disagrees with the env's ``state_space``: its actual length is used."""
        declared = getattr(self.env, "state_space", None)
        if isinstance(declared, spaces.Space) and declared.shape is not None \
                and int(np.prod(declared.shape)) != state.shape[0]:
            notice(f"env {self.env_id!r}: state() returns {state.shape[0]} values but its state_space says "
                   f"{declared.shape}; the critic takes the {state.shape[0]} that state() returns")

    def _unreadable(self, exc: Exception, check) -> None:
        """Raise what ``check()`` (the contract's full check of this output) finds wrong, else the
        conversion error ``exc`` in one line."""
        check()
        raise EnvError(f"env {self.env_id!r}: its output at {'reset' if self._t == 0 else f'step {self._t}'} could "
                       f"not be read: {error_summary(exc)}") from exc

    def _rewards(self, rew) -> np.ndarray:
        """``[N]`` float32; a reward of size 1 (e.g. shape ``(1,)``) counts as its number."""
        try:
            reward = np.array([rew.get(a, 0.0) for a in self.agents], dtype=np.float32)
        except (TypeError, ValueError):
            reward = None
        if reward is None or reward.shape != (self.n_agents,):
            self._contract.check_rewards(rew, self._t)
            reward = np.array([np.asarray(rew.get(a, 0.0), np.float32).reshape(-1)[0] for a in self.agents])
        return reward

    def _avail(self, obs: dict, infos: dict, alive: np.ndarray) -> np.ndarray:
        if not self._any_mask_in_obs:
            for info in infos.values():
                if isinstance(info, dict) and MASK_KEY in info:
                    break
            else:   # no per-step mask this step (the common case): the static mask, absent agents included
                self._avail_now = self._static_avail
                return self._static_avail
        avail = self.action_mask.copy()
        for agent in obs if self._any_mask_in_obs else ():
            i = self._index[agent]
            if self._mask_in_obs[i]:
                avail[i, : self._act_sizes[i]] &= np.asarray(obs[agent][MASK_KEY], dtype=bool).reshape(-1)
        for agent, info in infos.items():
            mask = info.get(MASK_KEY) if isinstance(info, dict) else None
            if mask is not None and agent in self._index:
                i = self._index[agent]
                avail[i, : self._act_sizes[i]] &= np.asarray(mask, dtype=bool).reshape(-1)
                self._info_masks = True
        self._avail_now = avail   # the legal actions of the obs the agents act on next
        stuck = alive & ~avail.any(-1)
        if stuck.any():
            agent = self.agents[int(np.flatnonzero(stuck)[0])]
            raise EnvError(f"env {self.env_id!r}: agent {agent!r} is live at step {self._t} of its episode but "
                           f"its action_mask marks no action legal")
        avail[~alive] = self.action_mask[~alive]   # absent agents: any action, it is never sent
        return avail

    def check_state(self, state: np.ndarray) -> None:
        """``EnvError`` naming the first non-finite entry of a global state, if any."""
        if not np.isfinite(state).all():
            index = int(np.flatnonzero(~np.isfinite(state))[0])
            raise EnvError(f"env {self.env_id!r}: its global state (env.state()) is non-finite (NaN or inf) "
                           f"at index {index} at step {self._t} of its episode")

    def check_step(self, obs_array: np.ndarray, reward: np.ndarray) -> None:
        """``EnvError`` naming the env, agent, step and key of the first non-finite observation or
        reward of the last step (its results as ``step`` returned them), if any."""
        self._check_finite(self._last_obs, obs_array, reward)

    def _check_finite(self, obs: dict, obs_array: np.ndarray, reward: np.ndarray) -> None:
        if math.isfinite(float(obs_array.sum()) + float(reward.sum())):   # one cheap test for the common case
            return
        for key, values in (("observation", np.isfinite(obs_array).all(-1)), ("reward", np.isfinite(reward))):
            bad = np.flatnonzero(~values)
            if len(bad):
                agent = self.agents[int(bad[0])]
                if key == "observation" and isinstance(obs.get(agent), dict):
                    key = next((f"observation[{k!r}]" for k, v in obs[agent].items()
                                if k != MASK_KEY and not np.isfinite(np.asarray(v, dtype=np.float64)).all()), key)
                raise EnvError(f"env {self.env_id!r}: agent {agent!r} got a non-finite {key} (NaN or inf) at step "
                               f"{self._t} of its episode")

    def _alive(self, keys) -> np.ndarray:
        if len(keys) == self.n_agents:   # every agent (ids are unique and known)
            return self._everyone
        alive = np.zeros(self.n_agents, dtype=bool)
        for agent in keys:
            alive[self._index[agent]] = True
        return alive

    # -- API -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> TeamObs:
        """A new episode (seeded with ``seed``); see ``TeamObs``."""
        try:
            result = self.env.reset(seed=seed)
        except Exception as exc:
            raise EnvError(f"env {self.env_id!r} raised in reset(seed={seed}): {error_summary(exc)}") from exc
        self._t = 0
        obs, infos = self._contract.reset_result(result)
        if self._checking:
            self._contract.check_reset(obs, infos)
        try:
            alive = self._alive(obs)
            obs_array = self._obs_array(obs)
            self._check_finite(obs, obs_array, np.zeros(1, np.float32))
            return TeamObs(obs_array, self._state(obs_array), self._avail(obs, infos, alive), alive)
        except EnvError:
            raise
        except UNREADABLE as exc:
            self._unreadable(exc, lambda: self._contract.check_reset(obs, infos))

    def _env_actions(self, actions: np.ndarray) -> list:
        """Per-agent actions as the env takes them: Discrete indices (with the space's ``start``), or
        Box vectors clipped to the space's bounds and shaped as it is."""
        if not self.continuous:
            if self._offsets:
                actions = np.asarray(actions) + np.asarray(self._action_start)
            return actions.tolist()
        clipped = np.clip(np.asarray(actions, dtype=np.float32), self.action_low, self.action_high)
        return [clipped[i, :self._act_sizes[i]].reshape(space.shape).astype(space.dtype)
                for i, space in enumerate(self._act_spaces)]

    def step(self, actions: np.ndarray) -> TeamStep:
        """Step with ``actions [N]`` (Discrete) or ``[N, A]`` (Box); only the agents in ``env.agents``
        are sent theirs. See ``TeamStep``."""
        acting = list(self.env.agents)
        values = self._env_actions(actions)
        if len(acting) == self.n_agents:
            action_dict = dict(zip(self.agents, values))
        else:
            unknown = [agent for agent in acting if agent not in self._index]
            if unknown:
                self._contract.fail(unknown[0], self._t, "env.agents", f"is not in possible_agents {self.agents}")
            action_dict = {agent: values[self._index[agent]] for agent in acting}
        self._t += 1
        try:
            result = self.env.step(action_dict)
        except Exception as exc:
            raise EnvError(f"env {self.env_id!r} raised in step {self._t} of its episode: "
                           f"{error_summary(exc)}") from exc
        obs, rew, term, trunc, infos = self._contract.step_result(result, self._t)
        if self._checking:
            self._contract.check_step(obs, rew, term, trunc, infos, self._t)
        try:
            remaining = self.env.agents
            reward = self._rewards(rew)
            terminated = np.array([bool(term.get(a, False)) for a in self.agents])
            truncated = np.array([bool(trunc.get(a, False)) for a in self.agents])
            alive = self._alive(remaining)
            if len(remaining) < self.n_agents and not self.turn_based:
                left = self._alive(acting) & ~alive & ~(terminated | truncated)
                truncated |= left   # an agent removed without flags was cut: treat it as a truncation
            obs_array = self._obs_array(obs)
            if self.check_values:
                self._check_finite(obs, obs_array, reward)
            else:
                self._last_obs = obs
            state = self._state(obs_array, terminal=not remaining and not truncated.any())
            avail = self._avail(obs, infos, alive)
        except EnvError:
            raise
        except UNREADABLE as exc:
            self._unreadable(exc, lambda: self._contract.check_step(obs, rew, term, trunc, infos, self._t))
        if not remaining and self.check == "first":
            self._checking = False
        return TeamStep(obs_array, state, avail, alive, reward, terminated, truncated, not remaining)

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()
