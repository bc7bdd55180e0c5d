"""VMAS scenarios behind the project's batched-env protocol (the one ``marl.envs.mpe_twin.MPETwin`` defines).

VMAS (the Vectorized Multi-Agent Simulator, Bettini et al. 2022, https://github.com/proroklab/
VectorizedMultiAgentSimulator) steps B copies of a scenario as batched torch tensors. It is GPL-3.0
and pins old ``gym`` and ``pyglet<=1.5.27``, so it is an optional extra: ``pip install -e ".[vmas]"``.
This module imports it only when an env is built.

What the adapter adds to ``vmas.make_env``: sorted agent ids; per-agent observations flattened and
zero-padded to ``[B, N, O]``; a state ``[B, S]``; a reward ``[B, N]``; VMAS's ``max_steps`` time limit
reported as truncation and the scenario's own ``done()`` as termination; auto-reset of finished envs
(``reset_at``) with the true successors kept as ``next_obs`` / ``next_state``; and snapshots
(``get_state`` / ``set_state``, see there for what they cannot capture).
"""
from __future__ import annotations

import ast
import contextlib
import enum
import importlib
import math
import os
import re
import types
import warnings
from typing import Any

import numpy as np
import torch

from marl.envs.errors import EnvError, error_summary
from marl.envs.twin_state import check_discrete_actions

INSTALL_HINT = 'pip install -e ".[vmas]"   (vmas==1.5.2, GPL-3.0; pins gym and pyglet<=1.5.27)'
DEFAULT_MAX_STEPS = 100
# make_env arguments the adapter sets itself: the protocol needs list outputs, flat Discrete actions,
# separate terminated / truncated flags, detached actions and its own clipping.
_RESERVED = ("wrapper", "wrapper_kwargs", "dict_spaces", "multidiscrete_actions", "terminated_truncated",
             "grad_enabled", "clamp_actions")
# Attributes of VMAS objects that are rendering state, not simulation state.
_SKIP_ATTRS = frozenset({"viewer", "headless", "visible_display", "text_lines", "action_space",
                         "observation_space"})
_ATTR_PATH = re.compile(r"^(.*)\.([A-Za-z_][A-Za-z0-9_]*)$")
_NO_KEY = object()


def _import_vmas():
    """The ``vmas`` module, or an ``EnvError`` that says how to install it."""
    try:
        return importlib.import_module("vmas")
    except ImportError as exc:
        raise EnvError(f"VMAS envs need the optional 'vmas' package, which is not installed ({exc}). "
                       f"Install the extra: {INSTALL_HINT}") from None


def _scenario_names(vmas) -> list[str]:
    root = os.path.join(os.path.dirname(vmas.__file__), "scenarios")   # what vmas.scenarios.load walks
    return sorted(name[:-3] for _, _, files in os.walk(root) for name in files
                  if name.endswith(".py") and not name.startswith("__"))


class VMASBatchedEnv:
    """A VMAS scenario as a batched env: B = ``num_envs`` copies stepped at once.

    Attributes (the batched-env protocol): ``agents`` (sorted VMAS agent names), ``num_envs`` B,
    ``n_agents`` N, ``obs_dim`` O (the largest flattened per-agent observation), ``state_dim`` S (their
    sum), ``n_actions`` A (discrete: the largest ``Discrete`` n; continuous: the largest action size),
    ``action_mask`` ``[N, A]`` bool, ``continuous``, ``device``. Extras: ``obs_sizes`` and
    ``action_sizes`` (per agent), ``action_low`` / ``action_high`` ``[N, A]`` float32 (continuous: VMAS's
    bounds, ``[-u_range, u_range]`` for the physical dims and ``[0, 1]`` for communication; padding 0),
    ``max_steps``, ``scenario`` and ``simulator`` (the ``vmas`` Environment).

    Shapes: observations ``[B, N, O]`` float32, each agent's observation flattened (a dict observation:
    its tensors flattened in sorted-key order) and zero-padded at the end; state ``[B, S]`` float32, the
    unpadded observations concatenated in sorted-agent order; actions ``[B, N]`` integer (discrete,
    each agent's flat VMAS ``Discrete`` index) or ``[B, N, A]`` float (continuous; clipped to the
    bounds, dims past an agent's own size ignored).

    Episodes end by the scenario's ``done()`` (``terminated``) or at ``max_steps`` (``truncated``, only
    where the scenario did not terminate on that step); ``max_steps=None`` means no time limit.

    Random stream: VMAS keeps one for all its envs in a process (``Environment.vmas_random_state``:
    torch CPU, numpy and Python ``random`` states, swapped in around each VMAS call; CUDA draws use the
    device's global generator). The adapter swaps in a copy of its own around each of its calls (and,
    on CUDA, its own device generator state), so each adapter's episodes depend only on its seed and
    its own calls, and the caller's random state, VMAS's and the global generators, is left alone.
    """

    def __init__(self, scenario, num_envs: int, *, device="cpu", seed: int | None = 0,
                 continuous_actions: bool = False, max_steps: int | None = DEFAULT_MAX_STEPS,
                 **scenario_kwargs):
        vmas = _import_vmas()
        if isinstance(scenario, str):
            scenario = scenario.removeprefix("vmas:")
            scenario = scenario.removesuffix(".py")
            names = _scenario_names(vmas)
            if scenario not in names:
                raise EnvError(f"vmas: unknown scenario {scenario!r}; vmas {vmas.__version__} has "
                               f"{', '.join(names)}")
            self.scenario = scenario
        else:
            self.scenario = type(scenario).__name__
        reserved = sorted(set(scenario_kwargs) & set(_RESERVED))
        if reserved:
            raise EnvError(f"vmas:{self.scenario}: {reserved} are set by the adapter and cannot be passed")
        if not _positive_int(num_envs):
            raise EnvError(f"vmas:{self.scenario}: num_envs must be a positive int, got {num_envs!r}")
        if max_steps is not None and not _positive_int(max_steps):
            raise EnvError(f"vmas:{self.scenario}: max_steps must be a positive int or None, "
                           f"got {max_steps!r}")
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.continuous = bool(continuous_actions)
        self.max_steps = None if max_steps is None else int(max_steps)
        self._shared_stream = vmas.simulator.environment.Environment.vmas_random_state
        self._rng = list(self._shared_stream)   # this env's own stream, swapped in by _own_stream
        self._rng_cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        with warnings.catch_warnings(record=True) as caught, self._own_stream():
            warnings.simplefilter("always")
            try:
                env = vmas.make_env(scenario, num_envs=self.num_envs, device=self.device,
                                    continuous_actions=self.continuous, max_steps=self.max_steps,
                                    seed=seed, dict_spaces=False, multidiscrete_actions=False,
                                    terminated_truncated=True, grad_enabled=False, clamp_actions=False,
                                    **scenario_kwargs)
            except EnvError:
                raise
            except Exception as exc:
                raise EnvError(f"vmas:{self.scenario}: vmas.make_env raised {error_summary(exc)}") from exc
        for w in caught:   # VMAS only warns about scenario kwargs it did not use (a typo, usually)
            if "passed but not used by the scenario" in str(w.message):
                raise EnvError(f"vmas:{self.scenario}: {w.message}")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.simulator = env

        vmas_agents = list(env.agents)
        names = [agent.name for agent in vmas_agents]
        if len(set(names)) != len(names):
            raise EnvError(f"vmas:{self.scenario}: agent names are not unique: {names}")
        self.agents = sorted(names)
        self.n_agents = len(self.agents)
        self._order = [names.index(name) for name in self.agents]      # sorted slot -> VMAS index
        self._vmas_agents = [vmas_agents[i] for i in self._order]

        self.obs_sizes = [self._space_size(env.observation_space[i], self.agents[k])
                          for k, i in enumerate(self._order)]
        self.obs_dim, self.state_dim = max(self.obs_sizes), sum(self.obs_sizes)
        self._build_actions(env)

    # -- spaces -------------------------------------------------------------------------------------
    def _space_size(self, space, agent: str) -> int:
        """Flattened size of a VMAS observation space (``Box``, or a ``Dict`` of them)."""
        kind = type(space).__name__
        if kind == "Box":
            return int(math.prod(space.shape))
        if kind == "Dict":
            return sum(self._space_size(space[key], agent) for key in sorted(space.spaces))
        raise EnvError(f"vmas:{self.scenario}: agent {agent!r} has a {kind} observation space; the adapter "
                       f"supports Box tensors and (nested) dicts of them")

    def _build_actions(self, env) -> None:
        sizes, lows, highs = [], [], []
        for agent in self._vmas_agents:
            space = env.get_agent_action_space(agent)
            if self.continuous:
                sizes.append(int(space.shape[0]))
                lows.append(torch.as_tensor(space.low, dtype=torch.float32))
                highs.append(torch.as_tensor(space.high, dtype=torch.float32))
            else:
                sizes.append(int(space.n))
        self.action_sizes = sizes
        self.n_actions = a_max = max(sizes)
        self._action_sizes = torch.tensor(sizes, device=self.device)
        self.action_mask = torch.arange(a_max, device=self.device)[None, :] < self._action_sizes[:, None]
        if self.continuous:
            def padded(bounds):
                return torch.stack([torch.nn.functional.pad(b, (0, a_max - len(b))) for b in bounds])

            self.action_low, self.action_high = padded(lows).to(self.device), padded(highs).to(self.device)

    # -- observations -------------------------------------------------------------------------------
    def _flatten(self, value, agent: str) -> torch.Tensor:
        """One agent's VMAS observation -> ``[B, o]`` float32."""
        if isinstance(value, torch.Tensor):
            if value.dim() < 1 or value.shape[0] != self.num_envs:
                raise EnvError(f"vmas:{self.scenario}: agent {agent!r}'s observation has shape "
                               f"{tuple(value.shape)}; expected a batch dimension of {self.num_envs}")
            return value.reshape(self.num_envs, -1).to(torch.float32)
        if isinstance(value, dict):
            return torch.cat([self._flatten(value[key], agent) for key in sorted(value)], dim=1)
        raise EnvError(f"vmas:{self.scenario}: agent {agent!r}'s observation is a {type(value).__name__}; "
                       f"the adapter supports tensors and (nested) dicts of tensors")

    def _to_batch(self, raw_obs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """VMAS per-agent observations (VMAS order) -> ``obs [B, N, O]``, ``state [B, S]``."""
        flat = [self._flatten(raw_obs[i], name) for i, name in zip(self._order, self.agents)]
        for f, size, name in zip(flat, self.obs_sizes, self.agents):
            if f.shape[1] != size:
                raise EnvError(f"vmas:{self.scenario}: agent {name!r}'s observation has {f.shape[1]} "
                               f"entries, its space {size}")
        state = torch.cat(flat, dim=1)
        obs = state.new_zeros(self.num_envs, self.n_agents, self.obs_dim)
        for k, f in enumerate(flat):
            obs[:, k, :f.shape[1]] = f
        return obs, state

    @contextlib.contextmanager
    def _own_stream(self):
        """Run VMAS calls on this env's own random stream (see the class docstring)."""
        shared, outside = self._shared_stream, list(self._shared_stream)
        shared[:] = self._rng   # in place: VMAS's local_seed decorator holds this list
        if self._rng_cuda is not None:
            outside_cuda = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self._rng_cuda, self.device)
        try:
            yield
        finally:
            self._rng = list(shared)
            shared[:] = outside
            if self._rng_cuda is not None:
                self._rng_cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outside_cuda, self.device)

    def _raw_observations(self) -> list:
        return self.simulator.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                                get_dones=False, dict_agent_names=False)[0]

    def observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, N, O]`` and ``state [B, S]`` of the current world (e.g. after ``set_state``)."""
        with torch.no_grad(), self._own_stream():
            return self._to_batch(self._raw_observations())

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a new episode in every env; returns ``obs [B, N, O]`` and ``state [B, S]``.

        With ``seed``, this env's random stream is reseeded first (torch, numpy and Python ``random``,
        as ``vmas`` seeds them), so the same seed gives the same episodes.
        """
        with torch.no_grad(), self._own_stream():
            self.simulator.reset(seed=seed, return_observations=False)
            return self._to_batch(self._raw_observations())

    # -- stepping -----------------------------------------------------------------------------------
    def _vmas_actions(self, actions) -> list[torch.Tensor]:
        """Validated ``[B, N]`` / ``[B, N, A]`` actions -> VMAS's per-agent list (VMAS agent order)."""
        actions = torch.as_tensor(actions, device=self.device)
        b, n = self.num_envs, self.n_agents
        per_agent: list[torch.Tensor | None] = [None] * n
        if self.continuous:
            if not actions.is_floating_point() or tuple(actions.shape) != (b, n, self.n_actions):
                raise ValueError(f"vmas:{self.scenario} (continuous): actions must be a float tensor "
                                 f"of shape {(b, n, self.n_actions)}, got {actions.dtype} "
                                 f"{tuple(actions.shape)}")
            if actions.isnan().any():
                raise ValueError(f"vmas:{self.scenario}: actions contain NaN")
            clipped = torch.minimum(actions.to(torch.float32), self.action_high).maximum(self.action_low)
            for k, i in enumerate(self._order):
                per_agent[i] = clipped[:, k, :self.action_sizes[k]]
            return per_agent
        actions = check_discrete_actions(actions, (b, n), self._action_sizes, f"vmas:{self.scenario}",
                                         f"agents {self.agents} take actions 0 <= a < {self.action_sizes}", " (discrete)")
        for k, i in enumerate(self._order):
            per_agent[i] = actions[:, k:k + 1]
        return per_agent

    def step(self, actions) -> dict[str, torch.Tensor]:
        """Step every env with ``actions``; auto-reset the envs whose episode ended (``reset_at`` each,
        or one batched ``reset`` when all ended, as fixed-length episodes do).

        Returns obs ``[B, N, O]`` and state ``[B, S]`` to act on next (from the new episode where one
        ended, else equal to next_obs / next_state), next_obs / next_state (the true successors, before
        any reset), reward ``[B, N]`` float32, terminated / truncated ``[B, N]`` bool (the same for all
        agents of an env) and done ``[B]`` bool.
        """
        vmas_actions = self._vmas_actions(actions)
        with torch.no_grad(), self._own_stream():
            raw_obs, raw_rewards, terminated, truncated, _infos = self.simulator.step(vmas_actions)
            next_obs, next_state = self._to_batch(raw_obs)
            reward = torch.stack([raw_rewards[i].reshape(self.num_envs) for i in self._order],
                                 dim=1).to(torch.float32)
            terminated = terminated.to(torch.bool).reshape(self.num_envs)
            truncated = truncated.to(torch.bool).reshape(self.num_envs) & ~terminated
            done = terminated | truncated
            if done.all():   # one batched reset: B reset_at calls cost ~3 ms each (navigation)
                self.simulator.reset(return_observations=False)
            else:
                for index in done.nonzero().flatten().tolist():
                    self.simulator.reset_at(index, return_observations=False)
            if done.any():
                fresh_obs, fresh_state = self._to_batch(self._raw_observations())
                obs = torch.where(done[:, None, None], fresh_obs, next_obs)
                state = torch.where(done[:, None], fresh_state, next_state)
            else:
                obs, state = next_obs, next_state
            n = self.n_agents
            return {"obs": obs, "state": state, "next_obs": next_obs, "next_state": next_state,
                    "reward": reward, "terminated": terminated[:, None].expand(-1, n).clone(),
                    "truncated": truncated[:, None].expand(-1, n).clone(), "done": done}

    # -- snapshots ----------------------------------------------------------------------------------
    def _is_sim_object(self, value) -> bool:
        """Whether ``value`` is a VMAS (or scenario-defined) object whose attributes hold world state."""
        if isinstance(value, (type, types.FunctionType, types.MethodType, types.ModuleType, torch.device,
                              enum.Enum)):   # enum members are shared constants
            return False
        if isinstance(value, torch.distributions.Distribution):   # e.g. sampling's gaussians
            return True
        module = type(value).__module__ or ""
        if module.startswith("vmas.simulator.rendering"):
            return False
        scenario_module = type(self.simulator.scenario).__module__
        return hasattr(value, "__dict__") and (module.startswith("vmas.") or module == scenario_module)

    def _walk(self) -> _Graph:
        """Everything reachable from the VMAS Environment through VMAS (or scenario-defined) objects,
        ``torch.distributions`` objects, lists, tuples and dicts (keys: str / int, a sim object met
        before as ``@<path>``, a frozenset of names as a sorted tuple): tensors and bool / int / float
        as leaves, and as references every None and every sim object met again (or met away from its
        canonical path).

        Paths are attribute / index chains. The world and its entities have fixed canonical paths,
        ``world``, ``world._agents[i]`` and ``world._landmarks[j]``, so a state's paths do not depend on
        which entity a scenario currently points at (e.g. speaker_listener's ``goal_b``); such a pointer
        is a reference, ``...goal_b -> world._landmarks[2]``.
        """
        graph = _Graph()
        world = self.simulator.world
        entities = [(f"world.{group}[{i}]", entity) for group in ("_agents", "_landmarks")
                    for i, entity in enumerate(getattr(world, group))]
        canonical = {id(world): "world"}
        for path, entity in entities:
            canonical.setdefault(id(entity), path)
        first: dict[int, str] = {}

        def key_name(key) -> str | None:
            """A dict key as it appears in a path: a literal, ``@<path>`` for a sim object met before
            (football's per-agent dicts), or a sorted tuple for a frozenset of names (world._joints)."""
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                return repr(key)
            if isinstance(key, frozenset) and all(isinstance(k, str) for k in key):
                return repr(tuple(sorted(key)))
            home = canonical.get(id(key), first.get(id(key)))
            return None if home is None else f"@{home}"

        def visit(obj, path: str) -> None:
            graph.objects[path] = obj
            if isinstance(obj, (list, tuple)):
                items = [(i, f"{path}[{i}]", v) for i, v in enumerate(obj)]
            elif isinstance(obj, dict):
                items = [(k, f"{path}[{name}]", v) for k, v in obj.items()
                         if (name := key_name(k)) is not None]
            else:
                items = [(k, f"{path}.{k}" if path else k, v) for k, v in vars(obj).items()
                         if k not in _SKIP_ATTRS]
            settable = not isinstance(obj, tuple)
            for key, child, value in items:
                if isinstance(value, torch.Tensor):
                    graph.leaves[child] = (obj, key, value)
                elif type(value) in (bool, int, float):
                    if settable:
                        graph.leaves[child] = (obj, key, value)
                elif value is None:
                    if settable:
                        graph.refs[child] = (obj, key, None)
                elif isinstance(value, (list, tuple, dict)):
                    if id(value) not in first:
                        first[id(value)] = child
                        visit(value, child)
                elif self._is_sim_object(value):
                    home = canonical.get(id(value), first.get(id(value)))
                    if home is not None and home != child:
                        if settable:
                            graph.refs[child] = (obj, key, home)
                    elif id(value) not in first:
                        first[id(value)] = child
                        visit(value, child)

        for path, entity in entities:
            if canonical[id(entity)] == path:
                first[id(entity)] = path
                visit(entity, path)
        first[id(world)] = "world"
        visit(world, "world")
        first[id(self.simulator)] = ""
        visit(self.simulator, "")
        return graph

    def _meta(self) -> dict[str, torch.Tensor]:
        return {"meta/num_envs": torch.tensor(self.num_envs), "meta/n_agents": torch.tensor(self.n_agents),
                "meta/obs_dim": torch.tensor(self.obs_dim), "meta/n_actions": torch.tensor(self.n_actions),
                "meta/continuous": torch.tensor(self.continuous),
                "meta/max_steps": torch.tensor(-1 if self.max_steps is None else self.max_steps)}

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copies of what determines the continuation, as far as VMAS exposes it.

        Keys (paths as in ``_walk``, e.g. ``world._agents[0]._state._pos``):

        - ``sim/<path>``: every tensor held by the VMAS Environment, its scenario, world, entities,
          states, actions, sensors and dynamics, cloned: entity ``pos``/``vel``/``rot``/``ang_vel``,
          agent ``c``/``force``/``torque``, the step counter ``steps``, the scenario's own tensors (e.g.
          navigation's ``pos_shaping``). A tensor reachable by two paths is one tensor object under both
          keys, so ``set_state`` (and ``torch.save``) keep the aliasing.
        - ``py/<path>``: every bool / int / float attribute there, as a 0-d bool / int64 / float64 tensor.
        - ``ref/<path>``: which object an attribute points at (the UTF-8 bytes of its path, uint8), or
          ``[0]`` for None; e.g. the goal landmark of speaker_listener.
        - ``rng/*``: this env's random stream (torch CPU generator, numpy and Python ``random``
          states; on CUDA also its device generator state).
        - ``meta/*``: sizes checked by ``set_state``.

        Checked to continue bit-exactly (same env, and a fresh env built with another seed) on all 30
        scenarios of vmas 1.5.2, discrete and continuous, across auto-resets. Not captured, in general:
        numpy arrays, sets and other non-VMAS objects a scenario holds (bool / int / float aside); dict
        entries keyed by anything but a str / int, a VMAS object or a frozenset of names; list lengths
        (items appended since the snapshot stay; a list item, or a nested container, that the target
        env lacks is an error); storage shared between distinct tensor objects (views are restored as
        separate tensors).
        """
        graph = self._walk()
        clones: dict[int, torch.Tensor] = {}
        snapshot: dict[str, torch.Tensor] = {}
        for path, (_, _, value) in graph.leaves.items():
            if isinstance(value, torch.Tensor):
                if id(value) not in clones:
                    clones[id(value)] = value.detach().clone()
                snapshot["sim/" + path] = clones[id(value)]
            elif not (type(value) is int and not -2**63 <= value < 2**63):   # beyond int64: not kept
                dtype = {bool: torch.bool, int: torch.int64, float: torch.float64}[type(value)]
                snapshot["py/" + path] = torch.tensor(value, dtype=dtype)
        for path, (_, _, target) in graph.refs.items():
            data = b"\0" if target is None else target.encode()
            snapshot["ref/" + path] = torch.tensor(list(data), dtype=torch.uint8)
        torch_state, np_state, py_state = self._rng
        snapshot["rng/torch"] = torch_state.clone()
        snapshot["rng/numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy())
        # numpy: ("MT19937", keys, pos, has_gauss, cached_gaussian)
        snapshot["rng/numpy_extra"] = torch.tensor(np_state[2:5], dtype=torch.float64)
        snapshot["rng/python_state"] = torch.tensor(py_state[1], dtype=torch.int64)
        gauss = py_state[2]
        snapshot["rng/python_gauss"] = torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64)
        if self._rng_cuda is not None:
            snapshot["rng/cuda"] = self._rng_cuda.clone()
        snapshot.update(self._meta())
        return snapshot

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a ``get_state`` snapshot of an env built with the same scenario, kwargs and B.

        Everything is checked before anything is written. Call ``observe()`` afterwards for the
        observations to act on.
        """
        for key, expected in self._meta().items():
            if key not in state or int(state[key]) != int(expected):
                got = None if key not in state else int(state[key])
                raise ValueError(f"set_state: snapshot {key} is {got}, this env has {int(expected)}")
        needed = {"rng/torch", "rng/numpy_keys", "rng/numpy_extra", "rng/python_state", "rng/python_gauss"}
        if self.device.type == "cuda":
            needed.add("rng/cuda")
        if needed - set(state):
            raise ValueError(f"set_state: snapshot lacks {sorted(needed - set(state))}")
        graph = self._walk()
        plan = []   # (container, key, current value, kind, snapshot value)
        for key, value in state.items():
            kind, _, path = key.partition("/")
            if kind not in ("sim", "py", "ref"):
                continue
            value = torch.as_tensor(value)
            container, attr, current = self._locate(graph, path)
            if kind == "sim" and isinstance(current, torch.Tensor) and (current.shape != value.shape or (
                    isinstance(container, tuple) and current.dtype != value.dtype)):
                # a tensor in a tuple is copied in place; elsewhere the attribute is replaced, and may
                # change dtype (discovery's covered_targets does)
                raise ValueError(f"set_state: {path!r} must be {current.dtype} {tuple(current.shape)}, got "
                                 f"{value.dtype} {tuple(value.shape)}")
            if kind == "ref":
                data = bytes(value.tolist())
                if data == b"\0":
                    value = None
                elif data.decode() in graph.objects:
                    value = graph.objects[data.decode()]
                else:
                    raise ValueError(f"set_state: {path!r} points at {data.decode()!r}, which this env lacks")
            plan.append((container, attr, current, kind, value))
        for holder, attr, new_dict in graph.pending:
            vars(holder)[attr] = new_dict
        restored: dict[int, torch.Tensor] = {}
        for container, attr, current, kind, value in plan:
            if kind == "ref":
                new = value
            elif kind == "py":
                new = type(current)(value.item()) if type(current) in (bool, int, float) else value.item()
            else:
                if id(value) not in restored:
                    device = current.device if isinstance(current, torch.Tensor) else self.device
                    restored[id(value)] = value.detach().to(device).clone()
                new = restored[id(value)]
            if isinstance(container, tuple):   # only tensors live here (see _walk): copy in place
                current.copy_(new)
            elif isinstance(container, (list, dict)):
                container[attr] = new
            else:
                vars(container)[attr] = new
        extra = torch.as_tensor(state["rng/numpy_extra"]).tolist()
        keys = torch.as_tensor(state["rng/numpy_keys"]).cpu().numpy().astype(np.uint32)
        has_gauss, gauss = torch.as_tensor(state["rng/python_gauss"]).tolist()
        self._rng = [torch.as_tensor(state["rng/torch"], dtype=torch.uint8).cpu().clone(),
                     ("MT19937", keys, int(extra[0]), int(extra[1]), float(extra[2])),
                     (3, tuple(int(v) for v in torch.as_tensor(state["rng/python_state"]).tolist()),
                      gauss if has_gauss else None)]
        if self._rng_cuda is not None:
            self._rng_cuda = torch.as_tensor(state["rng/cuda"], dtype=torch.uint8).cpu().clone()

    def _locate(self, graph: _Graph, path: str) -> tuple[Any, Any, Any]:
        """``(container, key, current value)`` of ``path`` in this env. An attribute or dict entry not
        set here yet (e.g. one a scenario sets on its first step) is located on its parent object, and
        a missing dict attribute is made (see ``_Graph.pending``)."""
        if path in graph.leaves:
            return graph.leaves[path]
        if path in graph.refs:
            container, key, target = graph.refs[path]
            return container, key, None if target is None else graph.objects.get(target)
        missing = ValueError(f"set_state: {path!r} does not exist in this env (vmas:{self.scenario}); "
                             f"is the snapshot from another scenario or configuration?")
        match = _ATTR_PATH.match(path)
        if match:
            parent = graph.objects.get(match.group(1))
            if parent is None or isinstance(parent, (list, tuple, dict)):
                raise missing
            return parent, match.group(2), None
        for i, char in enumerate(path):   # a dict entry added since, e.g. joint_passage's info_stored
            if char != "[" or not path.endswith("]"):
                continue
            key = _decode_key(path[i + 1:-1], graph)
            if key is _NO_KEY:
                continue
            parent = graph.objects.get(path[:i])
            if isinstance(parent, dict):
                return parent, key, None
            owner = _ATTR_PATH.match(path[:i])
            holder = graph.objects.get(owner.group(1)) if owner and not isinstance(key, int) else None
            if parent is None and holder is not None and not isinstance(holder, (list, tuple, dict)):
                # a dict attribute this env has not made yet (e.g. World.forces_dict, made per step):
                # made here, attached in the write phase
                parent = graph.objects[path[:i]] = {}
                graph.pending.append((holder, owner.group(2), parent))
                return parent, key, None
        raise missing


class _Graph:
    """What ``VMASBatchedEnv._walk`` found: ``leaves`` and ``refs`` as ``{path: (container, key,
    value)}`` (a ref's value is its target's path, or None), and ``objects`` ``{path: object}``."""

    def __init__(self):
        self.leaves: dict[str, tuple[Any, Any, Any]] = {}
        self.refs: dict[str, tuple[Any, Any, str | None]] = {}
        self.objects: dict[str, Any] = {}
        self.pending: list[tuple[Any, str, dict]] = []   # (object, attribute, new dict) for set_state


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _decode_key(text: str, graph: _Graph):
    """The dict key that ``_walk``'s ``key_name`` wrote as ``text`` (``_NO_KEY`` if none)."""
    if text.startswith("@"):
        return graph.objects.get(text[1:], _NO_KEY)
    try:
        key = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _NO_KEY
    if isinstance(key, tuple) and all(isinstance(k, str) for k in key):
        return frozenset(key)
    return key if isinstance(key, (str, int)) and not isinstance(key, bool) else _NO_KEY


def vmas_env(scenario: str, num_envs: int, device="cpu", seed: int | None = 0, **kwargs) -> VMASBatchedEnv:
    """Factory for ``env.id: vmas:<scenario>`` with ``env.batched: true``: ``VMASBatchedEnv(scenario,
    num_envs, device=device, seed=seed, **env.kwargs)``. ``env.kwargs`` may hold ``continuous_actions``
    (default False), ``max_steps`` (default 100; None for no time limit) and the scenario's own keyword
    arguments (an unused one is an error)."""
    return VMASBatchedEnv(scenario, num_envs, device=device, seed=seed, **kwargs)


__all__ = ["DEFAULT_MAX_STEPS", "INSTALL_HINT", "VMASBatchedEnv", "vmas_env"]
