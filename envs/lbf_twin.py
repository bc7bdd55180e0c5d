"""A batched torch twin of Level-Based Foraging (``lbforaging`` 2.0): B envs stepped at once.

The twin is the same task as ``lbforaging.foraging.ForagingEnv`` with vector observations (every
``Foraging[-2s]-SxS-Np-Ff[-coop]-v3`` id; ``tests/test_lbf_twin.py`` checks it step by step):

- actions 0-5 (none, north, south, west, east, load); an invalid one (off the grid, into food, or
  load with no food beside) becomes none, as the package does;
- moves: every player that moves or stays claims its target cell; a player moves only if no other
  player claims the same cell (so two players may swap, and one may enter a cell another leaves);
- loading: the loading players beside a food load it together when their level sum is at least
  the food's level; each then gets ``level * food / (level_sum * food_spawned)`` (normalised, so
  that all food sums to 1) or ``-penalty`` when the load fails;
- observations per agent: every visible food ``(row, col, level)`` in row-major order, then the
  agent itself and the other visible agents in index order ``(row, col, level)``, coordinates
  relative to the sight window, unfilled slots ``(-1, -1, 0)``;
- the episode ends when all food is eaten (terminated) or after ``max_episode_steps`` with food
  left (truncated, as ``marl.envs.gym_multiagent.lbf_env`` reports it).

Resets draw from the twin's own ``torch.Generator`` with the package's distributions: player
levels uniform in their range, each player at a uniform cell that no player of the new episode
holds and that no later player held at the end of the last episode (the package's
``_is_empty_location`` still sees their old positions); food levels (all the top level with
``force_coop``), each food at a uniform interior cell with no food within one cell or two cells in
line, and no player on it. A twin episode is therefore not the package episode of the same seed;
``load_package_env`` copies a package env's state (its draws included) into one twin env.

State: players ``pos [B, N, 2]`` (row, col) and ``level [B, N]``, foods ``food_cell [B, F]`` (flat
cell, sorted; -1 none) and ``food_level [B, F]`` (0 eaten), ``food_spawned [B]``, ``steps [B]``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from marl.envs.gym_multiagent import agent_names
from marl.envs.mpe_twin import _positive_int
from marl.envs.twin_state import TensorState

N_ACTIONS = 6
_NONE, _NORTH, _SOUTH, _WEST, _EAST, _LOAD = range(N_ACTIONS)
_MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
# ForagingEnv.__init__ keyword arguments the twin implements (grid_observation=False only). Not
# max_episode_steps: gymnasium.make takes that one itself (a TimeLimit wrapper), so env.kwargs cannot
# set the env's own limit on the PettingZoo path.
_KWARGS = ("players", "min_player_level", "max_player_level", "min_food_level", "max_food_level", "field_size",
           "max_num_food", "sight", "force_coop", "normalize_reward", "grid_observation", "observe_agent_levels",
           "penalty", "render_mode")


def lbf_kwargs(env_name: str, overrides: dict) -> dict[str, Any]:
    """The ``ForagingEnv`` keyword arguments of a registered id, with ``overrides`` (``env.kwargs``)."""
    import gymnasium
    import lbforaging  # noqa: F401  (registers the ids)

    try:
        spec = gymnasium.spec(env_name)
    except gymnasium.error.Error as exc:
        raise ValueError(f"lbforaging has no env {env_name!r} ({exc})".splitlines()[0]) from None
    if spec.entry_point != "lbforaging.foraging:ForagingEnv":
        raise ValueError(f"{env_name!r} is not a ForagingEnv")
    unknown = sorted(set(overrides) - set(_KWARGS))
    if unknown:
        raise ValueError(f"{env_name}: unsupported keyword argument(s) {unknown}; the LBF twin accepts {list(_KWARGS)}")
    return {"normalize_reward": True, "grid_observation": False, "observe_agent_levels": True, "penalty": 0.0,
            **spec.kwargs, **overrides}


def _per(value, count: int, name: str) -> np.ndarray:
    """A scalar or a list of ``count`` levels as an int array (the package's convention)."""
    array = np.asarray(value, dtype=np.int64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, count)
    if array.size != count:
        raise ValueError(f"{name} must be a scalar or a list of length {count}, got {value!r}")
    return array


class LBFTwin(TensorState):
    """B copies of an LBF task as torch tensors (see the module docstring for the rules).

    Shapes, with B = ``num_envs``, N players, F = ``max_num_food``: observations ``[B, N, 3F + 3N]``
    float32, state ``[B, N * (3F + 3N)]`` (the observations concatenated, as the PettingZoo path
    builds it), actions ``[B, N]`` integer in ``[0, 6)``, ``action_mask`` ``[N, 6]`` all True (the
    package has no action masks: an invalid action is a no-op). Agents are ``agent_0 .. agent_{N-1}``
    (``marl.envs.gym_multiagent.agent_names``), player k being agent k.
    """

    continuous = False

    STATE_KEYS = ("pos", "level", "food_cell", "food_level", "food_spawned", "steps", "placed")
    N_ACTIONS = N_ACTIONS

    def __init__(self, env_name: str, num_envs: int, *, device="cpu", seed: int = 0, **kwargs):
        self.env_name = env_name.removeprefix("lbf:")
        kw = lbf_kwargs(self.env_name, kwargs)
        if kw["grid_observation"] or not kw["observe_agent_levels"]:
            raise ValueError(f"{self.env_name}: the LBF twin has vector observations with agent levels only "
                             f"(grid_observation=False, observe_agent_levels=True)")
        self.kwargs = kw
        self.num_envs = _positive_int("num_envs", num_envs)
        self.device = torch.device(device)
        n = self.n_agents = _positive_int("players", kw["players"])
        self.n_food = _positive_int("max_num_food", kw["max_num_food"])
        rows, cols = (int(v) for v in kw["field_size"])
        if rows < 3 or cols < 3:
            raise ValueError(f"field_size must be at least 3x3, got {kw['field_size']!r}")
        self.rows, self.cols = rows, cols
        self.sight = _positive_int("sight", kw["sight"])
        self.max_steps = _positive_int("max_episode_steps", kw["max_episode_steps"])
        self.force_coop, self.normalize = bool(kw["force_coop"]), bool(kw["normalize_reward"])
        self.penalty = float(kw["penalty"])
        as_tensor = lambda a: torch.as_tensor(a, device=self.device)
        self._min_player = as_tensor(_per(kw["min_player_level"], n, "min_player_level"))
        self._max_player = as_tensor(_per(kw["max_player_level"], n, "max_player_level"))
        self._min_food = as_tensor(_per(kw["min_food_level"], self.n_food, "min_food_level"))
        self._max_food = (None if kw["max_food_level"] is None
                          else as_tensor(_per(kw["max_food_level"], self.n_food, "max_food_level")))
        self.agents = agent_names(n)
        self.obs_dim = 3 * self.n_food + 3 * n
        self.state_dim = n * self.obs_dim
        self.n_actions = N_ACTIONS
        self.action_mask = torch.ones(n, N_ACTIONS, dtype=torch.bool, device=self.device)
        # Constants: each agent's view order (itself, then the others by index), moves, spawn rules.
        self._view_order = as_tensor([[i] + [j for j in range(n) if j != i] for i in range(n)])
        self._moves = as_tensor(_MOVES)
        # _near[c]: the cells a food at c keeps free of food: neighborhood(row, col), the 3x3 block,
        # and neighborhood(row, col, 2, ignore_diag), the 5-cell cross.
        r, c = torch.arange(rows * cols) // cols, torch.arange(rows * cols) % cols
        dr, dc = (r[:, None] - r).abs(), (c[:, None] - c).abs()
        self._near = (((dr <= 1) & (dc <= 1)) | ((dr == 0) & (dc <= 2)) | ((dc == 0) & (dr <= 2))).to(self.device)
        interior = torch.zeros(rows, cols, dtype=torch.bool)
        interior[1:rows - 1, 1:cols - 1] = True
        self._interior = interior.view(-1).to(self.device)
        b = self.num_envs
        self._pos = torch.zeros(b, n, 2, dtype=torch.long, device=self.device)
        self._level = torch.zeros(b, n, dtype=torch.long, device=self.device)
        self._food_cell = torch.full((b, self.n_food), -1, dtype=torch.long, device=self.device)
        self._food_level = torch.zeros(b, self.n_food, dtype=torch.long, device=self.device)
        self._food_spawned = torch.zeros(b, dtype=torch.long, device=self.device)
        self._steps = torch.zeros(b, dtype=torch.long, device=self.device)
        self._placed = torch.zeros(b, dtype=torch.bool, device=self.device)   # players hold old positions
        self._generator = torch.Generator(device=self.device)
        self.reset(seed=seed)

    # -- resets ----------------------------------------------------------------------------------
    def _field(self, food_cell: torch.Tensor, food_level: torch.Tensor) -> torch.Tensor:
        """``[b, rows * cols]`` long: each cell's food level (0: none)."""
        field = torch.zeros(food_cell.shape[0], self.rows * self.cols + 1, dtype=torch.long, device=self.device)
        field.scatter_add_(1, food_cell.where(food_cell >= 0, self.rows * self.cols), food_level)
        return field[:, :-1]

    def _uniform_int(self, u: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Uniform integers in ``[low, high]`` from uniform floats ``u`` (elementwise, same shapes)."""
        return low + (u * (high - low + 1)).long().clamp_(max=high - low)

    def _fresh(self, envs: torch.Tensor) -> None:
        """New episodes in ``envs`` (long ``[b]``), drawn as ``ForagingEnv.reset`` draws them.

        Every env at once; the loops run over the N players and the F foods, each placed at a
        uniform allowed cell (the argmax of uniform noise over the allowed cells) as the package
        places them one after another."""
        b, n, nf, cols, cells = envs.numel(), self.n_agents, self.n_food, self.cols, self.rows * self.cols
        # All of this reset's random numbers in one draw: orders, cell noise and levels.
        u = torch.rand(b, 2 * (n + nf) + (n + nf) * cells, generator=self._generator, device=self.device)
        player_order, player_u, food_order, food_u, noise = u.split([n, n, nf, nf, (n + nf) * cells], dim=1)
        noise = noise.view(b, n + nf, cells)
        old = self._pos[envs]
        old_cell = old[..., 0] * cols + old[..., 1]
        # Player k may not take a cell that a player of this episode took, nor one that a player
        # k.. still holds from the last episode (the package's _is_empty_location sees those).
        held = F.one_hot(old_cell, cells).bool() & self._placed[envs].view(b, 1, 1)
        held = held.flip(1).cumsum(dim=1).flip(1) > 0                             # [b, N, cells]
        taken = torch.zeros(b, cells, dtype=torch.bool, device=self.device)
        new_cell = old_cell.clone()
        for k in range(n):
            allowed = ~(taken | held[:, k])
            cell = (noise[:, k] * allowed).argmax(dim=1)
            new_cell[:, k] = cell.where(allowed.any(dim=1), old_cell[:, k])   # no room: it stays
            taken.scatter_(1, new_cell[:, k:k + 1], True)
        order = player_order.argsort(dim=1)   # levels from a permutation of the per-player ranges
        level = self._uniform_int(player_u, self._min_player[order], self._max_player[order])
        # Foods: each at an interior cell clear of players and of the 3x3 block and the 5-cell
        # cross around every earlier food; the package stops at the first food with no such cell.
        if self._max_food is None:   # the lowest three player levels' sum
            max_food = level.sort(dim=1).values[:, :3].sum(dim=1, keepdim=True).expand(b, nf)
        else:
            max_food = self._max_food.expand(b, nf)
        min_food = max_food if self.force_coop else self._min_food.expand(b, nf)
        order = food_order.argsort(dim=1)
        min_food, max_food = min_food.gather(1, order), max_food.gather(1, order)
        allowed = self._interior & ~taken
        spawning = torch.ones(b, dtype=torch.bool, device=self.device)
        food_cell = torch.empty(b, nf, dtype=torch.long, device=self.device)
        for k in range(nf):
            cell = (noise[:, n + k] * allowed).argmax(dim=1)
            spawning &= allowed.any(dim=1)
            food_cell[:, k] = cell.where(spawning, -1)
            allowed &= ~(self._near[cell] & spawning.unsqueeze(1))
        food_level = self._uniform_int(food_u, min_food, max_food).where(food_cell >= 0, 0)
        sort = food_cell.where(food_cell >= 0, cells).argsort(dim=1)
        self._pos[envs] = torch.stack([new_cell // cols, new_cell % cols], dim=-1)
        self._level[envs] = level
        self._food_cell[envs] = food_cell.gather(1, sort)
        self._food_level[envs] = food_level.gather(1, sort)
        self._food_spawned[envs] = food_level.sum(dim=1)
        self._steps[envs] = 0
        self._placed[envs] = True

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """New episodes in every env; ``(obs [B, N, O], state [B, S])``. A ``seed`` reseeds the generator."""
        if seed is not None:
            self._generator.manual_seed(int(seed))
        with torch.no_grad():
            self._fresh(torch.arange(self.num_envs, device=self.device))
            return self._observe()

    # -- stepping --------------------------------------------------------------------------------
    def step(self, actions) -> dict[str, torch.Tensor]:
        """Step every env; auto-reset those whose episode ended. Returns ``obs``/``state`` (to act on
        next), ``next_obs``/``next_state`` (the true successors), ``reward [B, N]`` float32,
        ``terminated``/``truncated [B, N]`` and ``done [B]`` bool, as ``MPETwin.step``."""
        with torch.no_grad():
            actions = self._check_actions(actions)
            b, n, rows, cols = self.num_envs, self.n_agents, self.rows, self.cols
            field = self._field(self._food_cell, self._food_level)
            padded = F.pad(field.view(b, rows, cols), (1, 1, 1, 1)).view(b, -1)   # 0 outside the grid
            pos = self._pos
            # The four neighbours' food (north, south, west, east) of each player, 0 outside.
            centre = (pos[..., 0] + 1) * (cols + 2) + pos[..., 1] + 1
            offsets = torch.tensor([-(cols + 2), cols + 2, -1, 1], device=self.device)
            beside = padded.gather(1, (centre[..., None] + offsets).view(b, -1)).view(b, n, 4)
            target = pos + self._moves[actions]
            inside = ((target >= 0) & (target < torch.tensor([rows, cols], device=self.device))).all(dim=-1)
            move = (actions >= _NORTH) & (actions <= _EAST)
            food_ahead = beside.gather(2, (actions - 1).clamp(0, 3).unsqueeze(-1)).squeeze(-1) > 0
            valid = torch.where(move, inside & ~food_ahead, (actions == _NONE) | (beside.sum(dim=-1) > 0))
            actions = actions.where(valid, _NONE)
            target = pos + self._moves[actions]
            # Moves: a player reaches its target only if no other player claims the same cell.
            cell = target[..., 0] * cols + target[..., 1]
            alone = (cell.unsqueeze(2) == cell.unsqueeze(1)).sum(dim=2) == 1
            self._pos = pos = torch.where(alone.unsqueeze(-1), target, pos)
            # Loads: each loader's food is its first neighbour with food, north, south, west, east.
            loading = actions == _LOAD
            first = (beside > 0).to(torch.int8).argmax(dim=-1)
            food_at = ((pos[..., 0] * cols + pos[..., 1]) + torch.tensor([-cols, cols, -1, 1], device=self.device)[first])
            food_at = food_at.where(loading, -1)
            food_level = field.gather(1, food_at.clamp(min=0))
            group = (food_at.unsqueeze(2) == food_at.unsqueeze(1)) & loading.unsqueeze(1)   # [B, i, j]
            level_sum = (group.long() * self._level.unsqueeze(1)).sum(dim=2)
            loaded = loading & (level_sum >= food_level)
            if self.normalize:
                share = (self._level * food_level).double() / (level_sum * self._food_spawned.unsqueeze(1)).double()
            else:
                share = (self._level * food_level).double()
            reward = torch.where(loaded, share, torch.where(loading, -self.penalty, 0.0)).float()
            eaten = (self._food_cell.unsqueeze(2) == food_at.where(loaded, -2).unsqueeze(1)).any(dim=2)
            self._food_level.masked_fill_(eaten, 0)
            self._steps += 1
            next_obs, next_state = self._observe()
            cleared = self._food_level.sum(dim=1) == 0
            timeout = (self._steps >= self.max_steps) & ~cleared
            done = cleared | timeout
            if done.any():
                self._fresh(done.nonzero().squeeze(1))
                obs, state = self._observe()
            else:
                obs, state = next_obs, next_state
            return {"obs": obs, "state": state, "next_obs": next_obs, "next_state": next_state, "reward": reward,
                    "terminated": cleared.unsqueeze(1).expand(-1, n).clone(),
                    "truncated": timeout.unsqueeze(1).expand(-1, n).clone(), "done": done}

    # -- observations ----------------------------------------------------------------------------
    def observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, N, O]`` and ``state [B, S]`` of the current envs (e.g. after ``set_state``)."""
        with torch.no_grad():
            return self._observe()

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, nf, s, cols = self.num_envs, self.n_agents, self.n_food, self.sight, self.cols
        pos = self._pos                                                          # [B, N, 2]
        origin = pos - pos.clamp(max=s)                                         # the window's top-left
        # Foods: visible when within `sight` of the agent in both axes; in row-major order.
        food = torch.stack([self._food_cell // cols, self._food_cell % cols], dim=-1)   # [B, F, 2]
        rel = food.unsqueeze(1) - origin.unsqueeze(2)                          # [B, N, F, 2]
        seen = ((food.unsqueeze(1) - pos.unsqueeze(2)).abs() <= s).all(dim=-1) & (self._food_level > 0).unsqueeze(1)
        food_obs = self._compact(seen, torch.cat([rel, self._food_level.unsqueeze(1).expand(b, n, nf).unsqueeze(-1)],
                                                 dim=-1), nf)
        # Players: itself first, then the others by index; visible when the window coordinate is in [0, 2s].
        others = pos[:, self._view_order]                                       # [B, N, N, 2]
        rel = others - origin.unsqueeze(2)
        seen = ((rel >= 0) & (rel <= 2 * s)).all(dim=-1)
        player_obs = self._compact(seen, torch.cat([rel, self._level[:, self._view_order].unsqueeze(-1)], dim=-1), n)
        obs = torch.cat([food_obs.view(b, n, -1), player_obs.view(b, n, -1)], dim=-1).float()
        return obs, obs.view(b, -1)

    def _compact(self, seen: torch.Tensor, items: torch.Tensor, slots: int) -> torch.Tensor:
        """The ``seen`` rows of ``items [B, N, K, 3]`` moved to the front, in order; the rest
        ``(-1, -1, 0)``: ``[B, N, slots, 3]``."""
        b, n = seen.shape[:2]
        slot = (seen.long().cumsum(dim=-1) - 1).where(seen, slots)
        out = torch.tensor([-1, -1, 0], device=self.device).repeat(b, n, slots + 1, 1)
        out.scatter_(2, slot.unsqueeze(-1).expand(-1, -1, -1, 3), items)
        return out[:, :, :slots]

    # -- snapshots -------------------------------------------------------------------------------
    def load_package_env(self, b: int, env) -> None:
        """Copy the state of an ``lbforaging`` env (raw, Gymnasium-wrapped, or behind
        ``GymMultiAgentEnv``) into env ``b``: players, food (its levels and the spawned total), step."""
        if not 0 <= b < self.num_envs:
            raise ValueError(f"load_package_env: env index {b} out of range [0, {self.num_envs})")
        raw = getattr(env, "env", env).unwrapped
        found = {"players": len(raw.players), "field_size": tuple(raw.field.shape), "max_num_food": raw.max_num_food,
                 "sight": raw.sight, "max_episode_steps": raw._max_episode_steps, "force_coop": raw.force_coop,
                 "normalize_reward": raw._normalize_reward, "penalty": raw.penalty}
        mine = {"players": self.n_agents, "field_size": (self.rows, self.cols), "max_num_food": self.n_food,
                "sight": self.sight, "max_episode_steps": self.max_steps, "force_coop": self.force_coop,
                "normalize_reward": self.normalize, "penalty": self.penalty}
        mismatched = [k for k in mine if found[k] != mine[k]]
        if mismatched:
            raise ValueError(f"load_package_env: env has {({k: found[k] for k in mismatched})}, the twin "
                             f"{({k: mine[k] for k in mismatched})}")
        cells = np.flatnonzero(raw.field)   # row-major, as the observation lists them
        food_cell = np.full(self.n_food, -1)
        food_level = np.zeros(self.n_food, dtype=np.int64)
        food_cell[:cells.size], food_level[:cells.size] = cells, raw.field.reshape(-1)[cells]
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)
        self._pos[b] = as_tensor([p.position for p in raw.players])
        self._level[b] = as_tensor([p.level for p in raw.players])
        self._food_cell[b], self._food_level[b] = as_tensor(food_cell), as_tensor(food_level)
        self._food_spawned[b] = int(raw._food_spawned)
        self._steps[b] = int(raw.current_step)
        self._placed[b] = True
