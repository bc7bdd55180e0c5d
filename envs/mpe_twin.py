"""A batched torch twin of three mpe2 tasks: B copies stepped at once as ``[B, N, ...]`` tensors.

The twin is the same task as mpe2 (observations, rewards, dynamics, discrete and continuous action
semantics, episode length); ``tests/test_mpe_twin.py`` checks it against mpe2 step by step. Only
the random draws differ: resets sample from a seeded ``torch.Generator`` with mpe2's distributions.

Internally the world of all B envs is one float64 matrix ``X [D, B]`` (a column per env, rows
listed in ``_WorldRows``). Every observation entry, displacement and action effect is linear in X
(or in the actions), so each is one matrix product with a constant matrix built here from mpe2's
formulas; only distances, contact forces and rewards need elementwise work. The physics is
float64 because in float32 it drifts from mpe2 within 25 steps wherever agents collide (the stiff
contact force amplifies rounding): up to 7e-5 at simple_spread N=3, 3e-3 at N=11. Outputs are
float32, as mpe2's observations are.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from marl.envs.twin_state import check_discrete_actions

SUPPORTED_SCENARIOS = ("simple_reference_v3", "simple_speaker_listener_v4", "simple_spread_v3")

# Each scenario's mpe2 keyword arguments and their defaults. dynamic_rescaling only affects rendering.
_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "simple_spread_v3": {"N": 3, "local_ratio": 0.5, "max_cycles": 25, "continuous_actions": False,
                         "dynamic_rescaling": True},
    "simple_speaker_listener_v4": {"max_cycles": 25, "continuous_actions": False,
                                   "dynamic_rescaling": True},
    "simple_reference_v3": {"local_ratio": 0.5, "max_cycles": 25, "continuous_actions": False,
                            "dynamic_rescaling": True},
}

# mpe2/_mpe_utils/core.py World.__init__ (every entity has mass 1 and no max_speed, u_noise or
# c_noise in these tasks).
_DT = 0.1
_DAMPING = 0.25
_CONTACT_FORCE = 100.0
_CONTACT_MARGIN = 1e-3
# mpe2/_mpe_utils/simple_env.py _set_action: sensitivity 5 (no agent here sets accel); a movable
# agent's movement part is [no_action, -x, +x, -y, +y] (dim_p * 2 + 1 entries).
_SENSITIVITY = 5.0
_MOVE_DIM = 5
_MOVES = ((0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))
# Landmark colours (reset_world), observed as the goal colour.
_LANDMARK_COLORS = {
    "simple_speaker_listener_v4": ((0.65, 0.15, 0.15), (0.15, 0.65, 0.15), (0.15, 0.15, 0.65)),
    "simple_reference_v3": ((0.75, 0.25, 0.25), (0.25, 0.75, 0.25), (0.25, 0.25, 0.75)),
}
_SPREAD_AGENT_SIZE = 0.15
_STATE_KEYS = ("agent_pos", "agent_vel", "agent_comm", "landmark_pos", "goal", "steps", "rng")

Feature = dict[int, float]   # one linear readout: world row -> coefficient
XY = tuple[int, int]         # the x row and the y row of a position or velocity


class _WorldRows:
    """Row numbers of the world matrix ``X [D, B]``: agent positions (every x, then every y),
    agent velocities (likewise), comm states (agent-major), landmark positions (every x, then every
    y), one-hot goal landmarks (goal-major)."""

    def __init__(self, n_agents: int, n_landmarks: int, dim_c: int, n_goals: int):
        self.n_agents, self.n_landmarks, self.dim_c, self.n_goals = n_agents, n_landmarks, dim_c, n_goals
        self.pos_block = slice(0, 2 * n_agents)
        self.vel_block = slice(self.pos_block.stop, self.pos_block.stop + 2 * n_agents)
        self.comm_block = slice(self.vel_block.stop, self.vel_block.stop + n_agents * dim_c)
        self.landmark_block = slice(self.comm_block.stop, self.comm_block.stop + 2 * n_landmarks)
        self.goal_block = slice(self.landmark_block.stop, self.landmark_block.stop + n_goals * n_landmarks)
        self.size = self.goal_block.stop

    def pos(self, agent: int) -> XY:
        return agent, self.n_agents + agent

    def vel(self, agent: int) -> XY:
        return self.vel_block.start + agent, self.vel_block.start + self.n_agents + agent

    def landmark(self, landmark: int) -> XY:
        start = self.landmark_block.start
        return start + landmark, start + self.n_landmarks + landmark

    def comm(self, agent: int) -> list[int]:
        return [self.comm_block.start + agent * self.dim_c + word for word in range(self.dim_c)]

    def goal(self, goal: int) -> list[int]:
        """The one-hot rows of goal ``goal``, one per landmark."""
        return [self.goal_block.start + goal * self.n_landmarks + lm for lm in range(self.n_landmarks)]


def _copy(xy: XY) -> list[Feature]:
    return [{xy[0]: 1.0}, {xy[1]: 1.0}]


def _minus(a: XY, b: XY) -> list[Feature]:
    """The two features of position a minus position b."""
    return [{a[0]: 1.0, b[0]: -1.0}, {a[1]: 1.0, b[1]: -1.0}]


def _matrix(features: list[Feature], n_rows: int) -> torch.Tensor:
    """``[n_rows, len(features)]`` float64: column j holds feature j's coefficients."""
    out = torch.zeros(n_rows, len(features), dtype=torch.float64)
    for j, feature in enumerate(features):
        for row, coef in feature.items():
            out[row, j] += coef
    return out


class MPETwin:
    """B copies of an mpe2 task as torch tensors, stepped together with no per-env Python loop.

    Supports ``simple_spread_v3`` (kwargs N, local_ratio, max_cycles, continuous_actions),
    ``simple_speaker_listener_v4`` (max_cycles, continuous_actions) and ``simple_reference_v3``
    (local_ratio, max_cycles, continuous_actions); ``dynamic_rescaling`` is accepted and ignored.
    Agents are in sorted-id order everywhere (``agents``). Shapes, with B = ``num_envs``,
    N = ``n_agents``, O = ``obs_dim``, S = ``state_dim``, A = ``n_actions``:

    - observations ``[B, N, O]`` float32, each agent's mpe2 observation zero-padded at the end;
    - state ``[B, S]`` float32, the unpadded observations concatenated in sorted-agent order;
    - actions ``[B, N]`` integer (discrete) or ``[B, N, A]`` float (continuous, each agent's Box(0, 1)
      vector, clipped here; dims past an agent's own size are ignored);
    - ``action_mask`` ``[N, A]`` bool, True where the action (or action dim) exists for the agent.

    Episodes end by truncation after ``max_cycles`` steps (never termination), and ``step``
    auto-resets the envs that ended. Returned tensors may share storage with each other (``obs``
    is ``next_obs`` where nothing reset; ``state`` may be a view of ``obs``): treat them as read-only.
    ``observe()`` gives the current obs and state, e.g. after ``set_state`` or ``load_package_env``.

    The tasks are those of the multi-agent particle environments of Lowe et al. (2017),
    "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive Environments", NeurIPS, as
    maintained by the Farama Foundation in mpe2 (https://github.com/Farama-Foundation/MPE2),
    whose source this follows.
    """

    def __init__(self, scenario: str, num_envs: int, *, device="cpu", seed: int = 0, **mpe2_kwargs):
        scenario = scenario.removeprefix("mpe2:")
        if scenario not in _DEFAULT_KWARGS:
            raise ValueError(f"unknown scenario {scenario!r}; MPETwin supports "
                             f"{', '.join(SUPPORTED_SCENARIOS)}")
        unknown = sorted(set(mpe2_kwargs) - set(_DEFAULT_KWARGS[scenario]))
        if unknown:
            raise ValueError(f"{scenario}: unsupported keyword argument(s) {unknown}; MPETwin accepts "
                             f"{sorted(_DEFAULT_KWARGS[scenario])}")
        kwargs = {**_DEFAULT_KWARGS[scenario], **mpe2_kwargs}
        self.scenario = scenario
        self.num_envs = _positive_int("num_envs", num_envs)
        self.device = torch.device(device)
        self.max_cycles = _positive_int("max_cycles", kwargs["max_cycles"])
        self.continuous = bool(kwargs["continuous_actions"])
        self.local_ratio = kwargs.get("local_ratio")
        if self.local_ratio is not None:
            if isinstance(self.local_ratio, bool) or not isinstance(self.local_ratio, numbers.Real) \
                    or not 0.0 <= self.local_ratio <= 1.0:
                raise ValueError(f"local_ratio must be a number in [0, 1], got {self.local_ratio!r}")
            self.local_ratio = float(self.local_ratio)
        self._dtype = torch.float64

        # (name, movable, silent) in mpe2's world order (make_world).
        if scenario == "simple_spread_v3":
            n = _positive_int("N", kwargs["N"])
            world_agents = [(f"agent_{i}", True, True) for i in range(n)]
            n_landmarks, dim_c, n_goals = n, 2, 0
        elif scenario == "simple_speaker_listener_v4":
            world_agents = [("speaker_0", False, False), ("listener_0", True, True)]
            n_landmarks, dim_c, n_goals = 3, 3, 1
        else:
            world_agents = [("agent_0", True, False), ("agent_1", True, False)]
            n_landmarks, dim_c, n_goals = 3, 10, 2
        world_order = [name for name, _, _ in world_agents]
        world_agents.sort(key=lambda spec: spec[0])
        self.agents = [name for name, _, _ in world_agents]
        self.n_agents = len(self.agents)
        self.n_landmarks, self.dim_c = n_landmarks, dim_c
        self._rows = _WorldRows(self.n_agents, n_landmarks, dim_c, n_goals)
        # others[k]: the other agents' slots in mpe2's world order (agent_2 before agent_10).
        by_world = [self.agents.index(name) for name in world_order]
        self._others = [[j for j in by_world if j != k] for k in range(self.n_agents)]
        movable = [mov for _, mov, _ in world_agents]
        silent = [sil for _, _, sil in world_agents]
        self._any_talker = not all(silent)
        self._build_action_effects(movable, silent)
        self._build_readouts()
        rows = self._rows
        self._world = torch.zeros(rows.size, self.num_envs, dtype=self._dtype, device=self.device)
        self._world_t = self._world.t()
        self._pos, self._vel = self._world[rows.pos_block], self._world[rows.vel_block]
        self._comm = self._world[rows.comm_block]
        self._geometry: dict[str, torch.Tensor] = {}   # displacements / distances of the world
        self._steps = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self.reset(seed=seed)

    # -- constant matrices -----------------------------------------------------------------------
    def _build_action_effects(self, movable: list[bool], silent: list[bool]) -> None:
        """Per-(agent, action) effects on the world, following mpe2's SimpleEnv.

        Effects are E = 2N force rows (as X's velocity rows) and, if any agent talks, N * C comm rows
        (as X's comm rows). Discrete Discrete(n): a movable agent's index is ``move + 5 * word``, an
        immovable one's is the word; continuous Box(0, 1, (d,)): a movable agent's dims 0-4 give the
        force (dim2 - dim1, dim4 - dim3) and its next C dims (a speaker's first C) the comm state.
        Silent agents keep comm 0; forces are scaled by sensitivity 5.
        """
        rows, n, c = self._rows, self.n_agents, self.dim_c
        sizes = []
        for mov, sil in zip(movable, silent, strict=True):
            if self.continuous:
                sizes.append((_MOVE_DIM if mov else 0) + (0 if sil else c))
            else:
                sizes.append((_MOVE_DIM if mov else 1) * (1 if sil else c))
        self.n_actions = a_max = max(sizes)
        self._action_sizes = torch.tensor(sizes, device=self.device)
        self.action_mask = torch.arange(a_max, device=self.device)[None, :] < self._action_sizes[:, None]

        def force(agent: int, x: float, y: float) -> Feature:
            fx, fy = (row - rows.vel_block.start for row in rows.vel(agent))
            return {fx: x * _SENSITIVITY, fy: y * _SENSITIVITY}

        def says(agent: int, word: int) -> Feature:
            return {2 * n + rows.comm(agent)[word] - rows.comm_block.start: 1.0}

        effects: list[Feature] = []   # one per (agent, action or action dim), agent-major
        for k, (mov, sil) in enumerate(zip(movable, silent, strict=True)):
            for a in range(a_max):
                effect: Feature = {}   # actions past the agent's own size have none
                if a < sizes[k] and self.continuous:
                    if mov and 1 <= a <= 4:   # u[0] = a[2] - a[1], u[1] = a[4] - a[3]
                        sign = 1.0 if a % 2 == 0 else -1.0
                        effect = force(k, sign, 0.0) if a <= 2 else force(k, 0.0, sign)
                    word = a - (_MOVE_DIM if mov else 0)
                    if not sil and word >= 0:
                        effect = says(k, word)
                elif a < sizes[k]:
                    move, word = (a % _MOVE_DIM, a // _MOVE_DIM) if mov else (0, a)
                    effect = {**force(k, *_MOVES[move]), **({} if sil else says(k, word))}
                effects.append(effect)
        n_effects = 2 * n + (n * c if self._any_talker else 0)
        table = _matrix(effects, n_effects)                            # [E, N * A]
        if self.continuous:
            self._action_weights = table.to(self.device)               # effects = W @ actions
        else:
            # Each effect row depends on one agent's action only: lookup[r, a] = table[r, (k, a)].
            agent_of_row = ([k for _axis in range(2) for k in range(n)]
                            + [k for k in range(n) for _word in range(c)])[:n_effects]
            self._effect_agent = torch.tensor(agent_of_row, device=self.device)
            self._effect_lookup = torch.stack([table[r, k * a_max:(k + 1) * a_max]
                                               for r, k in enumerate(agent_of_row)]).to(self.device)

    def _build_readouts(self) -> None:
        """Observation, state and displacement matrices from mpe2's scenario formulas."""
        rows, n, n_lm = self._rows, self.n_agents, self.n_landmarks

        def to_landmarks(k: int) -> list[Feature]:
            return [f for lm in range(n_lm) for f in _minus(rows.landmark(lm), rows.pos(k))]

        def comm(k: int) -> list[Feature]:
            return [{row: 1.0} for row in rows.comm(k)]

        def goal_color(goal: int) -> list[Feature]:
            colors = _LANDMARK_COLORS[self.scenario]
            return [{row: colors[lm][ch] for lm, row in enumerate(rows.goal(goal))} for ch in range(3)]

        # Each agent's observation, in the order of its scenario's observation().
        per_agent: list[list[Feature]] = []
        displacements: list[tuple[XY, XY]] = []   # (a, b): position a minus position b
        if self.scenario == "simple_spread_v3":
            for k in range(n):
                others = self._others[k]
                per_agent.append(_copy(rows.vel(k)) + _copy(rows.pos(k)) + to_landmarks(k)
                                 + [f for o in others for f in _minus(rows.pos(o), rows.pos(k))]
                                 + [f for o in others for f in comm(o)])
            pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
            self._n_pairs = len(pairs)
            displacements += [(rows.pos(i), rows.pos(j)) for i, j in pairs]
            # pair p pushes its first agent along +(pos_i - pos_j), its second the opposite way.
            signs = torch.zeros(n, len(pairs), dtype=self._dtype)
            for p, (i, j) in enumerate(pairs):
                signs[i, p], signs[j, p] = 1.0, -1.0
            # [2N, 2P] per axis, times contact_force; [P, N] pair membership, times -local_ratio.
            self._pair_push = (torch.block_diag(signs, signs) * _CONTACT_FORCE).to(self.device)
            self._pair_penalty = (signs.abs().t() * -self.local_ratio).to(self.device)
        elif self.scenario == "simple_speaker_listener_v4":
            listener, speaker = self.agents.index("listener_0"), self.agents.index("speaker_0")
            per_agent = [[], []]
            per_agent[listener] = _copy(rows.vel(listener)) + to_landmarks(listener) + comm(speaker)
            per_agent[speaker] = goal_color(0)
        else:
            for k in range(n):
                per_agent.append(_copy(rows.vel(k)) + to_landmarks(k) + goal_color(k)
                                 + comm(self._others[k][0]))
        # Landmark minus agent position for every agent that moves (agent-major).
        movers = [k for k in range(n) if self.agents[k] != "speaker_0"]
        displacements += [(rows.landmark(lm), rows.pos(k)) for k in movers for lm in range(n_lm)]

        self.obs_sizes = [len(features) for features in per_agent]
        self.obs_dim = max(self.obs_sizes)
        self.state_dim = sum(self.obs_sizes)
        padded = [f for features in per_agent for f in features + [{}] * (self.obs_dim - len(features))]
        # Read out in float32 (3x faster than float64 here): positions are rounded to float32
        # before they are differenced, an error of at most ~4e-7, the size of mpe2's own cast.
        self._obs_readout = _matrix(padded, rows.size).float().to(self.device)             # [D, N * O]
        self._uniform_obs = len(set(self.obs_sizes)) == 1
        if not self._uniform_obs:
            state = [f for features in per_agent for f in features]
            self._state_readout = _matrix(state, rows.size).float().to(self.device)        # [D, S]
        # [2K, D]: every x difference, then every y difference.
        self._n_displacements = len(displacements)
        xy = [_minus(a, b) for a, b in displacements]
        self._displacement_readout = _matrix([x for x, _ in xy] + [y for _, y in xy],
                                             rows.size).t().contiguous().to(self.device)

    # -- world state -----------------------------------------------------------------------------
    def _uniform(self, *shape: int) -> torch.Tensor:
        """U(-1, 1) draws, as mpe2's ``np_random.uniform(-1, +1, dim_p)``."""
        return torch.rand(shape, generator=self._generator, dtype=self._dtype,
                          device=self.device).mul_(2.0).sub_(1.0)

    def _fresh_world(self, count: int) -> torch.Tensor:
        """``X [D, count]`` of new episodes, drawn as mpe2's ``reset_world`` does: goal landmarks
        uniformly, agent and landmark positions from U(-1, 1)^2, velocities and comm 0."""
        rows = self._rows
        world = torch.zeros(rows.size, count, dtype=self._dtype, device=self.device)
        goals = torch.randint(rows.n_landmarks, (rows.n_goals, 1, count), generator=self._generator,
                              device=self.device)
        world[rows.goal_block].view(rows.n_goals, rows.n_landmarks, count).scatter_(1, goals, 1.0)
        world[rows.pos_block] = self._uniform(2 * rows.n_agents, count)
        world[rows.landmark_block] = self._uniform(2 * rows.n_landmarks, count)
        return world

    def _set_world(self, world: torch.Tensor) -> None:
        """Copy ``X [D, B]`` into the world."""
        self._world.copy_(world)
        self._geometry = {}

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a new episode in every env; returns ``obs [B, N, O]`` and ``state [B, S]``.

        With ``seed`` the generator is reseeded first, so the same seed gives the same episodes.
        """
        if seed is not None:
            self._generator.manual_seed(int(seed))
        self._set_world(self._fresh_world(self.num_envs))
        self._steps.zero_()
        return self._observe()

    def _reset_envs(self, envs: torch.Tensor) -> None:
        """Start a new episode in the envs indexed by ``envs`` (long ``[k]``)."""
        self._world.index_copy_(1, envs, self._fresh_world(envs.numel()))
        self._steps.index_fill_(0, envs, 0)
        self._geometry = {}

    # -- geometry ----------------------------------------------------------------------------------
    def _displacements(self) -> torch.Tensor:
        """``[2, K, B]``: x and y of the K displacements of ``_build_readouts``, cached per world."""
        if "disp" not in self._geometry:
            self._geometry["disp"] = torch.mm(self._displacement_readout, self._world).view(
                2, self._n_displacements, self.num_envs)
        return self._geometry["disp"]

    def _distances(self) -> torch.Tensor:
        """``[K, B]``: the displacements' lengths, cached per world."""
        if "dist" not in self._geometry:
            disp = self._displacements()
            self._geometry["dist"] = torch.hypot(disp[0], disp[1])
        return self._geometry["dist"]

    # -- stepping --------------------------------------------------------------------------------
    def _action_effects(self, actions) -> torch.Tensor:
        """Validated actions -> effects ``[E, B]`` (force rows, then comm rows if any agent talks)."""
        actions = torch.as_tensor(actions, device=self.device)
        b, n = self.num_envs, self.n_agents
        if self.continuous:
            if not actions.is_floating_point() or tuple(actions.shape) != (b, n, self.n_actions):
                raise ValueError(f"{self.scenario} (continuous): actions must be a float tensor of "
                                 f"shape {(b, n, self.n_actions)}, got {actions.dtype} "
                                 f"{tuple(actions.shape)}")
            clipped = actions.to(self._dtype).clamp(0.0, 1.0)   # pettingzoo's ClipOutOfBoundsWrapper
            return torch.mm(self._action_weights, clipped.view(b, -1).t())
        actions = check_discrete_actions(actions, (b, n), self._action_sizes, self.scenario, f"agents {self.agents} "
                                         f"take actions 0 <= a < {self._action_sizes.tolist()}", " (discrete)")
        return self._effect_lookup.gather(1, actions.t().index_select(0, self._effect_agent))

    def _contact_forces(self) -> torch.Tensor:
        """Soft contact forces between simple_spread's agents (the only colliders): ``[2N, B]``.

        mpe2 World.get_collision_force: penetration = k * log(1 + exp((dist_min - dist) / k)) and
        the force on a is contact_force * (pos_a - pos_b) / dist * penetration, on b its opposite.
        """
        n_pairs = self._n_pairs
        pair_disp, pair_dist = self._displacements()[:, :n_pairs], self._distances()[:n_pairs]
        penetration = F.softplus(2 * _SPREAD_AGENT_SIZE - pair_dist, beta=1.0 / _CONTACT_MARGIN)
        pair_forces = (pair_disp * penetration.div_(pair_dist)).view(2 * n_pairs, self.num_envs)
        return torch.mm(self._pair_push, pair_forces)

    def step(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step every env with ``actions``; auto-reset the envs whose episode ended.

        Returns obs ``[B, N, O]`` and state ``[B, S]`` to act on next (from the new episode where one
        ended), next_obs / next_state (the true successors, before any reset), reward ``[B, N]``
        float32, terminated / truncated ``[B, N]`` bool and done ``[B]`` bool.
        """
        with torch.no_grad():
            effects = self._action_effects(actions)
            n = self.n_agents
            contact = self._contact_forces() if self.scenario == "simple_spread_v3" else None
            # mpe2 World.integrate_state: the position moves with the old velocity, then the velocity
            # is damped and accelerated. The immovable speaker has velocity 0 and no force: it stays.
            self._pos.add_(self._vel, alpha=_DT)
            self._vel.mul_(1.0 - _DAMPING).add_(effects[:2 * n], alpha=_DT)
            if contact is not None:
                self._vel.add_(contact, alpha=_DT)
            if self._any_talker:   # World.update_agent_state: comm state = comm action (silent: 0)
                self._comm.copy_(effects[2 * n:])
            self._geometry = {}
            self._steps += 1
            next_obs, next_state = self._observe()
            reward = self._reward()
            done = self._steps >= self.max_cycles
            if done.any():
                self._reset_envs(done.nonzero().squeeze(1))
                obs, state = self._observe()
            else:
                obs, state = next_obs, next_state
            truncated = done.unsqueeze(1).expand(-1, n).clone()
            return {"obs": obs, "state": state, "next_obs": next_obs, "next_state": next_state,
                    "reward": reward, "terminated": torch.zeros_like(truncated),
                    "truncated": truncated, "done": done}

    # -- observations and rewards ----------------------------------------------------------------
    def observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, N, O]`` and ``state [B, S]`` of the current world (e.g. after ``set_state``)."""
        with torch.no_grad():
            return self._observe()

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, N, O]`` and ``state [B, S]`` (float32) of the current world."""
        world_t = self._world_t.float()
        obs = torch.mm(world_t, self._obs_readout)
        state = obs if self._uniform_obs else torch.mm(world_t, self._state_readout)
        return obs.view(self.num_envs, self.n_agents, self.obs_dim), state

    def _reward(self) -> torch.Tensor:
        """mpe2's per-agent reward ``[B, N]`` float32 of the current world."""
        rows, n, n_lm, b = self._rows, self.n_agents, self.n_landmarks, self.num_envs
        if self.scenario == "simple_spread_v3":
            # global: -sum over landmarks of the nearest agent's distance; agent: -(number of
            # other agents within size_a + size_b, Scenario.is_collision).
            n_pairs = self._n_pairs
            dist = self._distances()
            uncovered = dist[n_pairs:].view(n, n_lm, b).amin(dim=0).sum(dim=0)
            touching = dist[:n_pairs].t().lt(2 * _SPREAD_AGENT_SIZE).to(self._dtype)
            reward = torch.mm(touching, self._pair_penalty)
            return reward.sub_(uncovered.unsqueeze(1), alpha=1.0 - self.local_ratio).float()
        goals = self._world[rows.goal_block].view(rows.n_goals, n_lm, b)
        if self.scenario == "simple_speaker_listener_v4":
            # both: -(squared distance from the listener to the speaker's goal landmark)
            disp = self._displacements()
            to_goal = (disp[0].square() + disp[1].square()).mul_(goals[0]).sum(dim=0)
            return to_goal.neg().float().unsqueeze(1).expand(-1, n).contiguous()
        # agent k: -(distance from the OTHER agent to k's goal landmark); mixed with their mean.
        other = [others[0] for others in self._others]
        agent_reward = self._distances().view(n, n_lm, b)[other].mul_(goals).sum(dim=1).neg_()
        global_reward = agent_reward.mean(dim=0, keepdim=True)
        reward = global_reward * (1.0 - self.local_ratio) + agent_reward * self.local_ratio
        return reward.t().to(torch.float32, memory_format=torch.contiguous_format)

    # -- snapshots -------------------------------------------------------------------------------
    def _world_tensors(self) -> dict[str, torch.Tensor]:
        """The world as readable tensors: agent_pos / agent_vel ``[B, N, 2]``, agent_comm
        ``[B, N, C]``, landmark_pos ``[B, L, 2]`` (float64), goal ``[B, G]`` long."""
        rows, n, n_lm, b, x = self._rows, self.n_agents, self.n_landmarks, self.num_envs, self._world
        return {
            "agent_pos": x[rows.pos_block].view(2, n, b).permute(2, 1, 0).contiguous(),
            "agent_vel": x[rows.vel_block].view(2, n, b).permute(2, 1, 0).contiguous(),
            "agent_comm": x[rows.comm_block].view(n, self.dim_c, b).permute(2, 0, 1).contiguous(),
            "landmark_pos": x[rows.landmark_block].view(2, n_lm, b).permute(2, 1, 0).contiguous(),
            "goal": x[rows.goal_block].view(rows.n_goals, n_lm, b).argmax(dim=1).t().contiguous(),
        }

    def _assemble_world(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of ``_world_tensors`` for ``b`` envs: ``X [D, b]``."""
        rows, b = self._rows, parts["goal"].shape[0]
        world = torch.zeros(rows.size, b, dtype=self._dtype, device=self.device)
        world[rows.pos_block] = parts["agent_pos"].permute(2, 1, 0).reshape(-1, b)
        world[rows.vel_block] = parts["agent_vel"].permute(2, 1, 0).reshape(-1, b)
        world[rows.comm_block] = parts["agent_comm"].permute(1, 2, 0).reshape(-1, b)
        world[rows.landmark_block] = parts["landmark_pos"].permute(2, 1, 0).reshape(-1, b)
        goals = parts["goal"].t().unsqueeze(1)
        world[rows.goal_block].view(rows.n_goals, rows.n_landmarks, b).scatter_(1, goals, 1.0)
        return world

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copies of everything that determines the continuation: the world tensors (see
        ``_world_tensors``), steps ``[B]`` long and the generator state (uint8)."""
        snapshot = self._world_tensors()
        snapshot["steps"] = self._steps.clone()
        snapshot["rng"] = self._generator.get_state()
        return snapshot

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a ``get_state`` snapshot (of a twin with the same scenario, kwargs and B)."""
        if set(state) != set(_STATE_KEYS):
            raise ValueError(f"set_state: expected keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        current = self.get_state()
        restored = {}
        for key in _STATE_KEYS:
            if key == "rng":
                continue
            value = torch.as_tensor(state[key])
            if value.shape != current[key].shape or value.dtype != current[key].dtype:
                raise ValueError(f"set_state: {key!r} must be {current[key].dtype} "
                                 f"{tuple(current[key].shape)}, got {value.dtype} {tuple(value.shape)}")
            restored[key] = value.to(self.device)
        if ((restored["goal"] < 0) | (restored["goal"] >= self.n_landmarks)).any():
            raise ValueError(f"set_state: goals must be landmark indices in [0, {self.n_landmarks})")
        self._generator.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8).cpu())
        self._set_world(self._assemble_world(restored))
        self._steps.copy_(restored["steps"])

    def load_package_env(self, b: int, env) -> None:
        """Copy the current world of an mpe2 env (raw, AEC-wrapped or parallel) into env ``b``."""
        if not 0 <= b < self.num_envs:
            raise ValueError(f"load_package_env: env index {b} out of range [0, {self.num_envs})")
        raw = getattr(env, "unwrapped", env)
        name = getattr(raw, "metadata", {}).get("name")
        if name != self.scenario:
            raise ValueError(f"load_package_env: env is {name!r}, this twin is {self.scenario!r}")
        expected = {"agents": self.agents, "max_cycles": self.max_cycles,
                    "continuous_actions": self.continuous, "local_ratio": self.local_ratio}
        found = {"agents": sorted(raw.possible_agents), "max_cycles": raw.max_cycles,
                 "continuous_actions": raw.continuous_actions, "local_ratio": raw.local_ratio}
        if self.scenario == "simple_spread_v3":   # scenario options the twin does not implement
            options = {"curriculum": False, "terminate_on_success": False,
                       "num_agent_neighbors": None, "num_landmark_neighbors": None}
            expected.update(options)
            found.update({key: getattr(raw.scenario, key) for key in options})
        mismatched = [key for key in expected if found[key] != expected[key]]
        if mismatched:
            raise ValueError(f"load_package_env: env has {({k: found[k] for k in mismatched})}, the twin "
                             f"{({k: expected[k] for k in mismatched})}")
        world = raw.world
        parts = {"agent_pos": np.zeros((1, self.n_agents, 2)), "agent_vel": np.zeros((1, self.n_agents, 2)),
                 "agent_comm": np.zeros((1, self.n_agents, self.dim_c)),
                 "landmark_pos": np.stack([lm.state.p_pos for lm in world.landmarks])[None],
                 "goal": np.zeros((1, self._rows.n_goals), dtype=np.int64)}
        for agent in world.agents:
            k = self.agents.index(agent.name)
            parts["agent_pos"][0, k], parts["agent_vel"][0, k] = agent.state.p_pos, agent.state.p_vel
            parts["agent_comm"][0, k] = agent.state.c
            if getattr(agent, "_goal_b", None) is not None:   # the speaker's goal / each agent's own
                column = 0 if self.scenario == "simple_speaker_listener_v4" else k
                parts["goal"][0, column] = next(i for i, lm in enumerate(world.landmarks)
                                                if lm is agent.goal_b)
        column = self._assemble_world({key: torch.as_tensor(value, device=self.device)
                                       for key, value in parts.items()})
        self._world[:, b] = column[:, 0]
        self._steps[b] = int(raw.steps)
        self._geometry = {}


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
