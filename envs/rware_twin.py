"""A batched torch twin of the multi-robot warehouse (``rware`` 2.0): B envs stepped at once.

The twin is the same task as ``rware.warehouse.Warehouse`` with flattened observations and no
message bits (every ``rware-<size>-<n>ag[-easy|-hard]-v2`` id; ``tests/test_rware_twin.py``
checks it step by step). The layout (grid, highways, goals, shelf places) is read from the package
env itself. The rules, as ``Warehouse.step`` applies them:

- actions 0-4 (none, forward, left, right, toggle load); left/right turn the robot a quarter;
  forward moves it one cell ahead, clamped at the walls;
- a robot carrying a shelf cannot move into a cell with a standing shelf (the move is cancelled);
- collisions: each robot is an edge from its cell to its target cell (a robot that stays is a
  self-loop). In each weakly connected component, the robots on its cycle move, unless the cycle
  is a swap of two robots (then none does); a component without a cycle moves the robots on its
  longest path only. Ties between equally long paths are broken exactly as the package's
  ``networkx`` calls break them: the few envs where such a tie arises are resolved by those calls;
- toggle load picks up the shelf under a robot, or puts a carried shelf down off the highways;
- a requested shelf carried onto a goal is delivered: the robot on the goal earns 1 (individual
  reward; every robot with the global reward), and a new shelf, uniform among those not requested,
  is requested in its place;
- every episode ends by truncation, after ``max_steps`` (or ``max_inactivity_steps`` without a
  delivery), as ``marl.envs.gym_multiagent.rware_env`` reports it.

Resets and new requests draw from the twin's own ``torch.Generator`` with the package's
distributions (robots on distinct uniform cells facing uniform directions, a uniform set of
requested shelves); ``load_package_env`` copies a package env's state into one twin env, and the
test replays the package's request draws through ``_draw_request``.
"""
from __future__ import annotations

import numpy as np
import torch

from marl.envs.gym_multiagent import agent_names
from marl.envs.mpe_twin import _positive_int
from marl.envs.twin_state import TensorState

N_ACTIONS = 5
_NOOP, _FORWARD, _LEFT, _RIGHT, _TOGGLE = range(N_ACTIONS)
# Directions UP, DOWN, LEFT, RIGHT: the (dx, dy) ahead, and the direction after a left / right turn.
_AHEAD = ((0, -1), (0, 1), (-1, 0), (1, 0))
_TURN_LEFT = (2, 3, 1, 0)
_TURN_RIGHT = (3, 2, 0, 1)


def _package_env(env_name: str, kwargs: dict):
    """The raw ``Warehouse`` of a registered id, built with ``kwargs`` (``env.kwargs``)."""
    import gymnasium
    import rware  # noqa: F401  (registers the ids)

    try:
        env = gymnasium.make(env_name, disable_env_checker=True, **kwargs)
    except gymnasium.error.Error as exc:
        raise ValueError(f"rware has no env {env_name!r} ({exc})".splitlines()[0]) from None
    except TypeError as exc:
        raise ValueError(f"{env_name}: {exc}") from None
    return env.unwrapped


def _package_commits(starts: list[tuple[int, int]], targets: list[tuple[int, int]]) -> list[bool]:
    """Which robots move, by the package's own collision resolution (``Warehouse.step``): a
    ``networkx`` graph of start -> target edges, in robot order."""
    import networkx as nx

    graph = nx.DiGraph()
    for start, target in zip(starts, targets, strict=True):
        graph.add_edge(start, target)
    robot_at = {start: i for i, start in enumerate(starts)}
    committed = [False] * len(starts)
    for component in [graph.subgraph(c).copy() for c in nx.weakly_connected_components(graph)]:
        try:
            cycle = nx.algorithms.find_cycle(component)
            if len(cycle) == 2:
                continue
            nodes = [edge[0] for edge in cycle]
        except nx.NetworkXNoCycle:
            nodes = nx.algorithms.dag_longest_path(component)
        for node in nodes:
            if node in robot_at:
                committed[robot_at[node]] = True
    return committed


class RwareTwin(TensorState):
    """B copies of an RWARE task as torch tensors (see the module docstring for the rules).

    Shapes, with B = ``num_envs``, N robots, S shelves: observations ``[B, N, 8 + 7 (2r + 1)^2]``
    float32 (r the sensor range; 71 at r = 1), state ``[B, N * O]`` (the observations concatenated,
    as the PettingZoo path builds it), actions ``[B, N]`` integer in ``[0, 5)``, ``action_mask``
    ``[N, 5]`` all True. Agents are ``agent_0 .. agent_{N-1}``, robot k being agent k.
    """

    continuous = False

    STATE_KEYS = ("pos", "dir", "carry", "shelf_pos", "requested", "steps", "inactive")
    N_ACTIONS = N_ACTIONS

    def __init__(self, env_name: str, num_envs: int, *, device="cpu", seed: int = 0, **kwargs):
        from rware.warehouse import RewardType

        self.env_name = env_name.removeprefix("rware:")
        raw = _package_env(self.env_name, kwargs)
        if raw.msg_bits or not raw.fast_obs or raw.reward_type not in (RewardType.INDIVIDUAL, RewardType.GLOBAL):
            raise ValueError(f"{self.env_name}: the RWARE twin has flattened observations, no message bits and the "
                             f"individual or global reward only")
        self.num_envs = _positive_int("num_envs", num_envs)
        self.device = torch.device(device)
        self.global_reward = raw.reward_type == RewardType.GLOBAL
        self.n_agents = n = raw.n_agents
        self.rows, self.cols = raw.grid_size
        self.sensor_range = r = raw.sensor_range
        self.max_steps, self.max_inactivity = raw.max_steps, raw.max_inactivity_steps
        self.normalised = bool(raw.normalised_coordinates)
        self.queue_size = raw.request_queue_size
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), device=self.device)   # noqa: E731
        self._highway = as_tensor(raw.highways.reshape(-1)).bool()               # [rows * cols]
        self._goals = [int(y) * self.cols + int(x) for x, y in raw.goals]       # goal cells, in the package's order
        shelf_yx = [(y, x) for y in range(self.rows) for x in range(self.cols) if not raw.highways[y, x]]
        self._shelf_home = as_tensor([(x, y) for y, x in shelf_yx]).long()       # [S, 2] (x, y)
        self.n_shelves = len(shelf_yx)
        self.agents = agent_names(n)
        self.obs_dim = 8 + 7 * (2 * r + 1) ** 2
        self.state_dim = n * self.obs_dim
        self.n_actions = N_ACTIONS
        self.action_mask = torch.ones(n, N_ACTIONS, dtype=torch.bool, device=self.device)
        self._ahead = as_tensor(_AHEAD).long()
        self._turn = {_LEFT: as_tensor(_TURN_LEFT).long(), _RIGHT: as_tensor(_TURN_RIGHT).long()}
        window = torch.arange(-r, r + 1, device=self.device)
        pw = self.cols + 2 * r
        self._window = (window.view(-1, 1) * pw + window.view(1, -1)).view(-1)    # row-major offsets, padded grid
        self._eye = torch.eye(n, dtype=torch.bool, device=self.device)
        b = self.num_envs
        self._pos = torch.zeros(b, n, 2, dtype=torch.long, device=self.device)
        self._dir = torch.zeros(b, n, dtype=torch.long, device=self.device)
        self._carry = torch.full((b, n), -1, dtype=torch.long, device=self.device)
        self._shelf_pos = self._shelf_home.repeat(b, 1, 1)
        self._requested = torch.zeros(b, self.n_shelves, dtype=torch.bool, device=self.device)
        self._steps = torch.zeros(b, dtype=torch.long, device=self.device)
        self._inactive = torch.zeros(b, dtype=torch.long, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self.reset(seed=seed)

    # -- resets ----------------------------------------------------------------------------------
    def _fresh(self, envs: torch.Tensor) -> None:
        """New episodes in ``envs`` (long ``[b]``), drawn as ``Warehouse.reset`` draws them."""
        b, n, g = envs.numel(), self.n_agents, self._generator
        cells = torch.rand(b, self.rows * self.cols, generator=g, device=self.device).argsort(dim=1)[:, :n]
        self._pos[envs] = torch.stack([cells % self.cols, cells // self.cols], dim=-1)
        self._dir[envs] = torch.randint(0, 4, (b, n), generator=g, device=self.device)
        self._carry[envs] = -1
        self._shelf_pos[envs] = self._shelf_home
        chosen = torch.rand(b, self.n_shelves, generator=g, device=self.device).argsort(dim=1)[:, :self.queue_size]
        self._requested[envs] = torch.zeros(b, self.n_shelves, dtype=torch.bool, device=self.device).scatter_(
            1, chosen, True)
        self._steps[envs] = 0
        self._inactive[envs] = 0

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """New episodes in every env; ``(obs [B, N, O], state [B, S])``. A ``seed`` reseeds the generator."""
        if seed is not None:
            self._generator.manual_seed(int(seed))
        with torch.no_grad():
            self._fresh(torch.arange(self.num_envs, device=self.device))
            return self._observe()

    def _draw_request(self, goal: int, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The newly requested shelf ``[B]`` where ``rows [B]`` delivered at goal ``goal``: uniform
        among ``candidates [B, S]`` (the shelves not requested), as the package's ``choice``."""
        noise = torch.rand(candidates.shape, generator=self._generator, device=self.device)
        return noise.mul_(candidates).argmax(dim=1)

    # -- stepping --------------------------------------------------------------------------------
    def _grids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, rows * cols]`` long: the robot index + 1 and the shelf index + 1 in each cell (0: none)."""
        b, cells = self.num_envs, self.rows * self.cols
        robot = torch.zeros(b, cells, dtype=torch.long, device=self.device)
        robot.scatter_(1, self._pos[..., 1] * self.cols + self._pos[..., 0],
                       torch.arange(1, self.n_agents + 1, device=self.device).expand(b, -1))
        shelf = torch.zeros(b, cells, dtype=torch.long, device=self.device)
        shelf.scatter_(1, self._shelf_pos[..., 1] * self.cols + self._shelf_pos[..., 0],
                       torch.arange(1, self.n_shelves + 1, device=self.device).expand(b, -1))
        return robot, shelf

    def _moving(self, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Which robots' requests go through ``[B, N]`` bool, from start and target cells ``[B, N]``
        (see the module docstring). Robot i's edge leads to robot j when j stands on i's target."""
        n = self.n_agents
        edge = target.unsqueeze(2) == start.unsqueeze(1)                             # [B, i, j]
        reach = self._eye.expand_as(edge).clone()                                   # i reaches j in >= 0 steps
        hop = edge.float()
        for _ in range(n):
            reach |= torch.bmm(reach.float(), hop) > 0
        on_cycle = (torch.bmm(hop, reach.float()) > 0).diagonal(dim1=1, dim2=2)     # i reaches itself in >= 1
        mutual = reach & reach.transpose(1, 2)
        swap = on_cycle & (mutual.sum(dim=2) == 2)
        to_cycle = (reach & on_cycle.unsqueeze(1)).any(dim=2)
        # Chains into an empty cell: only the longest path into the same cell moves.
        last = reach & ~edge.any(dim=2).unsqueeze(1)                                # j: the end of i's chain
        sink = torch.where(to_cycle, -1, (last.long() * target.unsqueeze(1)).sum(dim=2))
        depth = reach.sum(dim=2)
        same = (sink.unsqueeze(2) == sink.unsqueeze(1)) & ~to_cycle.unsqueeze(2) & ~to_cycle.unsqueeze(1)
        longest = (depth.unsqueeze(1) * same).amax(dim=2)
        deepest = same & (depth.unsqueeze(1) == longest.unsqueeze(2))             # [B, i, L]: L deepest of i's sink
        on_path = (deepest & reach.transpose(1, 2)).any(dim=2)                      # a deepest L reaches i
        moving = torch.where(to_cycle, on_cycle & ~swap, on_path)
        tied = (deepest.sum(dim=2) > 1).any(dim=1)
        if tied.any():   # equally long paths into one cell: the package's own tie-break
            for b in tied.nonzero().squeeze(1).tolist():
                xy = lambda cell: (int(cell) % self.cols, int(cell) // self.cols)   # noqa: E731
                commits = _package_commits([xy(c) for c in start[b].tolist()], [xy(c) for c in target[b].tolist()])
                moving[b] = torch.tensor(commits, device=self.device)
        return moving

    def step(self, actions) -> dict[str, torch.Tensor]:
        """Step every env; auto-reset those whose episode ended. Returns ``obs``/``state`` (to act on
        next), ``next_obs``/``next_state`` (the true successors), ``reward [B, N]`` float32,
        ``terminated``/``truncated [B, N]`` and ``done [B]`` bool, as ``MPETwin.step``."""
        with torch.no_grad():
            actions = self._check_actions(actions)
            b, n, cols = self.num_envs, self.n_agents, self.cols
            robot_grid, shelf_grid = self._grids()
            pos, carrying = self._pos, self._carry >= 0
            ahead = (pos + self._ahead[self._dir]).clamp_(min=torch.zeros(2, dtype=torch.long, device=self.device),
                                                           max=torch.tensor([cols - 1, self.rows - 1], device=self.device))
            forward = actions == _FORWARD
            start = pos[..., 1] * cols + pos[..., 0]
            target = torch.where(forward, ahead[..., 1] * cols + ahead[..., 0], start)
            # A carried shelf cannot enter a standing shelf's cell.
            there = robot_grid.gather(1, target)
            there_carries = carrying.gather(1, (there - 1).clamp(min=0)) & (there > 0)
            blocked = carrying & (target != start) & (shelf_grid.gather(1, target) > 0) & ~there_carries
            target = torch.where(blocked, start, target)
            moves = forward & ~blocked & self._moving(start, target)
            new_pos = torch.stack([target % cols, target // cols], dim=-1)
            self._pos = pos = torch.where(moves.unsqueeze(-1), new_pos, pos)
            for turn, table in self._turn.items():
                self._dir = torch.where(actions == turn, table[self._dir], self._dir)
            toggle = actions == _TOGGLE
            under = shelf_grid.gather(1, start) - 1
            pick = toggle & ~carrying & (under >= 0)
            drop = toggle & carrying & ~self._highway[start]
            self._carry = torch.where(pick, under, torch.where(drop, -1, self._carry))
            held = self._carry >= 0   # a carried shelf is where its robot is
            env_index = torch.arange(b, device=self.device).unsqueeze(1).expand(-1, n)
            self._shelf_pos[env_index[held], self._carry[held]] = pos[held]
            # Deliveries, goal by goal: a requested shelf on a goal is replaced in the requests.
            robot_grid, shelf_grid = self._grids()
            reward = torch.zeros(b, n, device=self.device)
            delivered_any = torch.zeros(b, dtype=torch.bool, device=self.device)
            rows = torch.arange(b, device=self.device)
            for g, cell in enumerate(self._goals):
                shelf = shelf_grid[:, cell] - 1
                delivered = (shelf >= 0) & self._requested[rows, shelf.clamp(min=0)]
                if not delivered.any():
                    continue
                new = self._draw_request(g, delivered, ~self._requested)
                self._requested[rows[delivered], shelf[delivered]] = False
                self._requested[rows[delivered], new[delivered]] = True
                if self.global_reward:
                    reward += delivered.unsqueeze(1)
                else:
                    reward[rows[delivered], robot_grid[delivered, cell] - 1] += 1.0
                delivered_any |= delivered
            self._inactive = torch.where(delivered_any, 0, self._inactive + 1)
            self._steps += 1
            next_obs, next_state = self._observe()
            done = torch.zeros(b, dtype=torch.bool, device=self.device)
            if self.max_inactivity:
                done |= self._inactive >= self.max_inactivity
            if self.max_steps:
                done |= self._steps >= self.max_steps
            if done.any():
                self._fresh(done.nonzero().squeeze(1))
                obs, state = self._observe()
            else:
                obs, state = next_obs, next_state
            truncated = done.unsqueeze(1).expand(-1, n).clone()
            return {"obs": obs, "state": state, "next_obs": next_obs, "next_state": next_state, "reward": reward,
                    "terminated": torch.zeros_like(truncated), "truncated": truncated, "done": done}

    # -- observations ----------------------------------------------------------------------------
    def observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, N, O]`` and ``state [B, S]`` of the current envs (e.g. after ``set_state``)."""
        with torch.no_grad():
            return self._observe()

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, r, cols, rows = self.num_envs, self.n_agents, self.sensor_range, self.cols, self.rows
        robot_grid, shelf_grid = self._grids()
        pad = lambda grid: torch.nn.functional.pad(grid.view(b, rows, cols), (r, r, r, r)).view(b, -1)  # noqa: E731
        pos = self._pos
        centre = (pos[..., 1] + r) * (cols + 2 * r) + pos[..., 0] + r                     # [B, N]
        cells = (centre.unsqueeze(-1) + self._window).view(b, -1)                         # [B, N * K]
        robot = pad(robot_grid).gather(1, cells) - 1                                      # -1: none
        shelf = pad(shelf_grid).gather(1, cells) - 1
        seen_dir = torch.where(robot >= 0, self._dir.gather(1, robot.clamp(min=0)), 0)
        sensors = torch.cat([(robot >= 0).unsqueeze(-1), torch.nn.functional.one_hot(seen_dir, 4).bool(),
                             (shelf >= 0).unsqueeze(-1),
                             (self._requested.gather(1, shelf.clamp(min=0)) & (shelf >= 0)).unsqueeze(-1)], dim=-1)
        xy = pos.float()
        if self.normalised:
            xy = xy / torch.tensor([cols - 1, rows - 1], device=self.device)
        start = pos[..., 1] * cols + pos[..., 0]
        own = torch.cat([xy, (self._carry >= 0).unsqueeze(-1).float(),
                         torch.nn.functional.one_hot(self._dir, 4).float(),
                         self._highway[start].unsqueeze(-1).float()], dim=-1)
        obs = torch.cat([own, sensors.view(b, n, -1).float()], dim=-1)
        return obs, obs.view(b, -1)

    # -- snapshots -------------------------------------------------------------------------------
    def load_package_env(self, b: int, env) -> None:
        """Copy the state of an ``rware`` env (raw, Gymnasium-wrapped, or behind ``GymMultiAgentEnv``)
        into env ``b``: robots, shelves, requests and step counters."""
        if not 0 <= b < self.num_envs:
            raise ValueError(f"load_package_env: env index {b} out of range [0, {self.num_envs})")
        raw = getattr(env, "env", env).unwrapped
        if not hasattr(raw, "shelfs"):
            raise ValueError("load_package_env: reset the rware env first (it has no shelves yet)")
        found = {"n_agents": raw.n_agents, "grid_size": tuple(raw.grid_size), "n_shelves": len(raw.shelfs),
                 "max_steps": raw.max_steps, "request_queue_size": raw.request_queue_size}
        mine = {"n_agents": self.n_agents, "grid_size": (self.rows, self.cols), "n_shelves": self.n_shelves,
                "max_steps": self.max_steps, "request_queue_size": self.queue_size}
        mismatched = [k for k in mine if found[k] != mine[k]]
        if mismatched:
            raise ValueError(f"load_package_env: env has {({k: found[k] for k in mismatched})}, the twin "
                             f"{({k: mine[k] for k in mismatched})}")
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)   # noqa: E731
        self._pos[b] = as_tensor([(a.x, a.y) for a in raw.agents])
        self._dir[b] = as_tensor([a.dir.value for a in raw.agents])
        self._carry[b] = as_tensor([a.carrying_shelf.id - 1 if a.carrying_shelf else -1 for a in raw.agents])
        self._shelf_pos[b] = as_tensor([(s.x, s.y) for s in raw.shelfs])
        self._requested[b] = False
        self._requested[b, as_tensor([s.id - 1 for s in raw.request_queue])] = True
        self._steps[b] = int(raw._cur_steps)
        self._inactive[b] = int(raw._cur_inactive_steps)

