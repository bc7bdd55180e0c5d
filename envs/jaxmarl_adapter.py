"""JaxMARL envs (SMAX, Hanabi, Overcooked) behind the project's batched-env protocol.

JaxMARL (Rutherford et al. 2024, https://github.com/FLAIROx/JaxMARL) writes multi-agent envs as pure
JAX functions, ``reset(key)`` and ``step(key, state, actions)`` on dicts keyed by agent. It is an
optional extra (``pip install -e ".[jaxmarl]"``); this module imports it only when an env is built.

``env.id: jaxmarl:<name>`` with ``<name>`` one of:

- ``smax:<map>`` (``smax:3m``, ``smax:2s3z``, ``smax:smacv2_5_units``, ...): SMAX, JaxMARL's SMAC
  without StarCraft, against its heuristic enemy (``HeuristicEnemySMAX``, as JaxMARL's own MAPPO
  and QMIX baselines train it); the critic's state is SMAX's ``world_state``;
- ``hanabi``: two-player Hanabi (one player acts per step; the others have only the no-op);
- ``overcooked``: Overcooked v1 (``env.kwargs.layout`` names one of JaxMARL's layouts, default
  ``cramped_room``); observations are its ``[H, W, C]`` grids flattened.

The B envs are one ``jax.vmap`` of the env's ``step_env`` and ``reset``, compiled with ``jax.jit``
into a single call per step; arrays cross to torch through DLPack (no copy where the device
allows: on CPU, and on a GPU that both jax and torch see). Each step keeps the true successor
(``next_obs``, ``next_state``, ``next_avail``) before resetting the envs whose episode ended.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys

import numpy as np
import torch
from marl.envs.errors import EnvError, error_summary

INSTALL_HINT = 'pip install -e ".[jaxmarl]"'
FAMILIES = ("smax:<map>", "hanabi", "overcooked")
_COMPILED: dict = {}   # (name, kwargs, jax device) -> the jitted (reset_all, step_all), see _compile


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what is printed inside to stderr, at the file-descriptor level too (jaxmarl's import
    prints a line about its optional submodules, and a library it imports resets ``sys.stdout``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _import_jax():
    """``(jax, jaxmarl)``, or an ``EnvError`` that says how to install them. Importing prints
    nothing to stdout, so that stdout stays the caller's (``marl eval --json``)."""
    try:
        with _stdout_to_stderr():
            return importlib.import_module("jax"), importlib.import_module("jaxmarl")
    except ImportError as exc:
        raise EnvError(f"jaxmarl: envs need the optional 'jaxmarl' package, which is not installed ({exc}); "
                       f"install the extra: {INSTALL_HINT}") from None


def _to_torch(x, device: torch.device) -> torch.Tensor:
    """A jax array as a torch tensor through DLPack (shares the buffer where jax and torch are on
    the same device), then on ``device``."""
    return torch.from_dlpack(x).to(device)


class JaxMARLBatchedEnv:
    """B copies of a JaxMARL env stepped as one jitted, vmapped call (see the module docstring).

    Attributes (the batched-env protocol): ``agents`` (the env's agent ids, sorted), ``num_envs`` B,
    ``n_agents`` N, ``obs_dim`` O (the largest flattened observation), ``state_dim`` S, ``n_actions`` A
    (the largest ``Discrete`` n), ``action_mask`` ``[N, A]`` bool, ``continuous`` (False),
    ``dynamic_mask`` (True: legal actions change per step, from the env's ``get_avail_actions`` or
    Hanabi's ``get_legal_moves``), ``device``; and ``name``, ``family``, ``jax_env``.

    Shapes: ``obs [B, N, O]`` float32 zero-padded, ``state [B, S]`` float32 (SMAX's world state;
    elsewhere the unpadded observations concatenated), ``avail [B, N, A]`` bool, actions
    ``[B, N]`` integer. ``step`` also returns ``won [B]`` bool on SMAX: the episode ended with every
    enemy dead and an ally alive (JaxMARL's ``returned_won_episode``).

    Endings: SMAX terminates when a team is dead and truncates at its ``max_steps`` (100) otherwise;
    Hanabi's ends are terminations (the game is over); Overcooked's are truncations (its only end
    is ``max_steps``, 400). Dead SMAX units stay in the batch with only the stop action legal (their
    observation is zeros), as in JaxMARL, and every agent counts as alive.
    """

    continuous = False
    dynamic_mask = True

    def __init__(self, name: str, num_envs: int, *, device="cpu", seed: int = 0, **kwargs):
        jax, jaxmarl = _import_jax()
        self.jax, self.jnp = jax, importlib.import_module("jax.numpy")
        self.name = name
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise EnvError(f"jaxmarl:{name}: num_envs must be a positive int, got {num_envs!r}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.family, env = self._build(jaxmarl, name, dict(kwargs))
        self.jax_env = env
        self.agents = sorted(env.agents)
        self.n_agents = len(self.agents)
        obs, _ = jax.eval_shape(env.reset, jax.random.PRNGKey(0))   # shapes only, nothing compiled
        sizes = [math.prod(obs[a].shape) for a in self.agents]
        self.obs_dim = max(sizes)
        self.state_dim = math.prod(obs["world_state"].shape) if self.family == "smax" else sum(sizes)
        n = [int(env.action_spaces[a].n) for a in self.agents]
        self.n_actions = max(n)
        self.action_mask = torch.arange(self.n_actions, device=self.device)[None] < torch.tensor(n, device=self.device)[:, None]
        self._jax_device = self._pick_jax_device(jax)
        self._compile((name, repr(sorted(kwargs.items())), str(self._jax_device)))
        self.reset(seed)

    # -- building ---------------------------------------------------------------------------------
    @staticmethod
    def _build(jaxmarl, name: str, kwargs: dict):
        family, _, arg = name.partition(":")
        try:
            if family == "smax":
                from jaxmarl.environments.smax import HeuristicEnemySMAX
                from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO
                if arg not in MAP_NAME_TO_SCENARIO:
                    raise EnvError(f"jaxmarl:{name}: unknown SMAX map {arg!r}; jaxmarl has "
                                   f"{', '.join(MAP_NAME_TO_SCENARIO)}")
                return family, HeuristicEnemySMAX(scenario=MAP_NAME_TO_SCENARIO[arg], **kwargs)
            if family == "hanabi" and not arg:
                return family, jaxmarl.make("hanabi", **kwargs)
            if family == "overcooked" and not arg:
                from flax.core.frozen_dict import FrozenDict
                from jaxmarl.environments.overcooked import overcooked_layouts
                layout = kwargs.pop("layout", "cramped_room")
                if layout not in overcooked_layouts:
                    raise EnvError(f"jaxmarl:{name}: unknown Overcooked layout {layout!r}; jaxmarl has "
                                   f"{', '.join(overcooked_layouts)}")
                return family, jaxmarl.make("overcooked", layout=FrozenDict(overcooked_layouts[layout]), **kwargs)
        except EnvError:
            raise
        except TypeError as exc:
            raise EnvError(f"jaxmarl:{name}: env.kwargs {kwargs} rejected: {exc}") from None
        except Exception as exc:
            raise EnvError(f"jaxmarl:{name}: building the env raised {error_summary(exc)}") from exc
        raise EnvError(f"jaxmarl: unknown env {name!r}; the adapter runs {', '.join(FAMILIES)}")

    def _pick_jax_device(self, jax):
        """jax's device matching ``self.device`` where jax has one (then DLPack shares buffers), else its CPU."""
        if self.device.type == "cuda":
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if gpus:
                return gpus[self.device.index or 0]
        return jax.devices("cpu")[0]

    def _compile(self, cache_key) -> None:
        """The jitted ``_reset_all(keys [B, 2]) -> (states, obs, state, avail)`` and
        ``_step_all(key, states, actions [B, N]) -> (key, states, outputs)``, vmapped over B. They are
        shared by every env built with the same name and kwargs (jax then compiles once per B)."""
        if cache_key in _COMPILED:
            self._reset_all, self._step_all = _COMPILED[cache_key]
            return
        jax, jnp, env, agents = self.jax, self.jnp, self.jax_env, self.agents
        family, O, A = self.family, self.obs_dim, self.n_actions

        def pack(obs: dict):
            flat = [obs[a].reshape(-1).astype(jnp.float32) for a in agents]
            padded = jnp.stack([jnp.pad(f, (0, O - f.shape[0])) for f in flat])
            world = obs["world_state"].astype(jnp.float32) if family == "smax" else jnp.concatenate(flat)
            return padded, world

        def avail(st):
            moves = env.get_legal_moves(st) if family == "hanabi" else (
                env.get_avail_actions(st) if family == "smax" else None)
            if moves is None:
                return jnp.ones((len(agents), A), dtype=bool)
            return jnp.stack([jnp.pad(moves[a].astype(bool), (0, A - moves[a].shape[0])) for a in agents])

        def ending(st):
            """``(truncated, won)`` of an episode that ended in ``st``."""
            if family == "smax":
                inner, n = st.state, env.num_allies
                allies, enemies = inner.unit_alive[:n].any(), inner.unit_alive[n:].any()
                return allies & enemies, allies & ~enemies
            return jnp.bool_(family == "overcooked"), jnp.bool_(False)

        def reset_one(key):
            obs, st = env.reset(key)
            # strong types, as step_env returns them (a weak-typed leaf would compile step_all twice)
            st = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), st)
            return st, *pack(obs), avail(st)

        def step_one(key, st, actions):
            key_step, key_reset = jax.random.split(key)
            obs, nxt, rew, dones, _ = env.step_env(key_step, st, {a: actions[i] for i, a in enumerate(agents)})
            next_obs, next_world = pack(obs)
            next_avail = avail(nxt)
            done = dones["__all__"]
            truncated, won = ending(nxt)
            truncated = done & truncated
            fresh, fresh_obs, fresh_world, fresh_avail = reset_one(key_reset)
            keep = lambda new, old: jax.lax.select(done, new, old)
            out = {"obs": keep(fresh_obs, next_obs), "state": keep(fresh_world, next_world),
                   "avail": keep(fresh_avail, next_avail), "next_obs": next_obs, "next_state": next_world,
                   "next_avail": next_avail, "reward": jnp.stack([rew[a] for a in agents]).astype(jnp.float32),
                   "terminated": done & ~truncated, "truncated": truncated, "done": done, "won": done & won}
            return jax.tree.map(keep, fresh, nxt), out

        def step_all(key, states, actions):
            key, sub = jax.random.split(key)
            states, out = jax.vmap(step_one)(jax.random.split(sub, actions.shape[0]), states, actions)
            return key, states, out

        self._reset_all, self._step_all = _COMPILED[cache_key] = jax.jit(jax.vmap(reset_one)), jax.jit(step_all)

    # -- the protocol -----------------------------------------------------------------------------
    def _set_current(self, obs, world, avail) -> None:
        self._obs, self._state, self._avail = (_to_torch(x, self.device) for x in (obs, world, avail))

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A new episode in every env (``seed``: the env's key is ``PRNGKey(seed)`` first);
        returns ``obs [B, N, O]`` and ``state [B, S]``."""
        jax = self.jax
        if seed is not None:
            self._key = jax.device_put(jax.random.PRNGKey(int(seed)), self._jax_device)
        self._key, sub = jax.random.split(self._key)
        self._states, obs, world, avail = self._reset_all(jax.random.split(sub, self.num_envs))
        self._set_current(obs, world, avail)
        return self._obs, self._state

    def observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, N, O]`` and ``state [B, S]`` the agents act on next."""
        return self._obs, self._state

    def avail(self) -> torch.Tensor:
        """The legal actions ``[B, N, A]`` bool the agents act on next."""
        return self._avail

    def step(self, actions) -> dict[str, torch.Tensor]:
        """Step every env with ``actions [B, N]`` (integer, in ``[0, A)``; an action that is not
        legal under ``avail()`` does what JaxMARL makes of it, e.g. an SMAX attack out of range does
        nothing). The ended envs reset. Returns the protocol's dict plus ``avail``, ``next_avail``
        and ``won``."""
        actions = torch.as_tensor(actions, device=self.device)
        shape = (self.num_envs, self.n_agents)
        if actions.is_floating_point() or actions.dtype == torch.bool or tuple(actions.shape) != shape:
            raise ValueError(f"jaxmarl:{self.name}: actions must be an integer tensor of shape {shape}, got "
                             f"{actions.dtype} {tuple(actions.shape)}")
        if actions.lt(0).logical_or_(actions.ge(self.n_actions)).any():
            raise ValueError(f"jaxmarl:{self.name}: actions out of range; each agent takes 0 <= a < {self.n_actions}")
        actions = actions.to(torch.int32)
        if self._jax_device.platform == "cpu":
            actions = actions.cpu()   # jax steps on its CPU (no CUDA jax): the one copy
        actions = self.jax.dlpack.from_dlpack(actions.contiguous())
        self._key, self._states, out = self._step_all(self._key, self._states, actions)
        out = {k: _to_torch(v, self.device) for k, v in out.items()}
        n = self.n_agents
        for k in ("terminated", "truncated"):
            out[k] = out[k][:, None].expand(-1, n)
        self._obs, self._state, self._avail = out["obs"], out["state"], out["avail"]
        return out

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copies of the envs' JAX state (its leaves, in tree order), the key, and what the agents
        act on next."""
        leaves = self.jax.tree.leaves(self._states)
        state = {f"leaf_{i:03d}": _to_torch(x, self.device).clone() for i, x in enumerate(leaves)}
        state["key"] = _to_torch(self._key, self.device).clone()
        state.update(obs=self._obs.clone(), state=self._state.clone(), avail=self._avail.clone())
        return state

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a ``get_state`` snapshot of an env built with the same name, kwargs and B."""
        jax, jnp = self.jax, self.jnp
        leaves, tree = jax.tree.flatten(self._states)
        keys = {f"leaf_{i:03d}" for i in range(len(leaves))} | {"key", "obs", "state", "avail"}
        if set(state) != keys:
            raise ValueError(f"set_state: expected keys {sorted(keys)}, got {sorted(state)}")
        restored = []
        for i, leaf in enumerate(leaves):
            value = state[f"leaf_{i:03d}"].detach().cpu().numpy()
            if value.shape != leaf.shape or value.dtype != np.dtype(leaf.dtype):
                raise ValueError(f"set_state: leaf {i} must be {leaf.dtype} {tuple(leaf.shape)}, "
                                 f"got {value.dtype} {tuple(value.shape)}")
            restored.append(jax.device_put(jnp.asarray(value), self._jax_device))
        self._states = jax.tree.unflatten(tree, restored)
        self._key = jax.device_put(jnp.asarray(state["key"].detach().cpu().numpy()), self._jax_device)
        self._obs, self._state, self._avail = (state[k].to(self.device).clone() for k in ("obs", "state", "avail"))


def jaxmarl_env(name: str, num_envs: int, device="cpu", seed: int = 0, **kwargs) -> JaxMARLBatchedEnv:
    """The batched factory of ``env.id: jaxmarl:<name>`` (``marl.envs.batched.BATCHED_PREFIXES``)."""
    return JaxMARLBatchedEnv(name, num_envs, device=device, seed=seed, **kwargs)
