"""Re-simulated counterfactual advantages at training time (``algo.advantage: resim``).

At every step t of a rollout on a batched twin (``env.batched: true``, ``marl.envs.batched.TWINS``),
for each agent i and each of its legal actions u', the twin's state before step t is copied into
K rows, stepped with ``(u_-i, u')`` and continued ``algo.resim_horizon`` steps (step t included)
under the current policy, with common random numbers across agent i's actions
(``marl.branching``, the machinery the oracle steps). The discounted returns of agent i's reward
column estimate ``Q_i^H(s_t, (u_-i, u'))``, and ``marl.algorithms.resim.resim_advantage`` turns
them into COMA's counterfactual advantage. No bootstrap: a continuation counts only the rewards
it saw (the oracle's ``--horizon H``), so with the same draws the two estimates are equal.

The twin's state at each step comes with the batch, under ``sim/<key>`` (``[T, B, ...]``, the
twin's ``get_state`` keys without ``rng``): ``StateRecorder`` records it during collection on the
twin, ``PackageStates`` from the PettingZoo env of an episode (``marl.credit.play_episode``).

Cost per rollout step: ``N × A × K × H`` env steps on the twin (spread: 15 K H), all rows of
``max_rows`` at a time stepped as one ``[R, N]`` batch with one actor forward per step.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from marl.branching import TwinBranches, branch_rows, chunks, continue_rows

SIM_PREFIX = "sim/"
MAX_ROWS = 32768   # branch rows stepped at once: ~1 MB of world per 1,000 rows on spread


def needs_sim_states(cfg) -> bool:
    """Whether ``cfg``'s advantage module re-simulates (its batches need ``sim/`` states)."""
    from marl.algorithms import get_advantage
    return get_advantage(cfg.algo.advantage).critic.simulates


def _world(twin) -> dict[str, torch.Tensor]:
    """A twin's ``get_state()`` without its ``rng`` (a branch row keeps its own generator)."""
    return {k: v for k, v in twin.get_state().items() if k != "rng"}


def _stacked(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"sim/<key>": [T, ...]}`` from T ``_world`` dicts, one per step."""
    return {SIM_PREFIX + k: torch.stack([s[k] for s in states]) for k in states[0]}


class StateRecorder:
    """A batched vector env (``marl.envs.batched.BatchedVectorEnv``) that records its twin's state
    before every step; ``take()`` returns the states of the steps since the last call."""

    def __init__(self, venv):
        self._venv = venv
        self._states: list[dict[str, torch.Tensor]] = []

    def __getattr__(self, name):
        return getattr(self._venv, name)

    def step(self, actions, autoreset: bool = True):
        self._states.append(_world(self._venv.env))
        return self._venv.step(actions, autoreset)

    def take(self) -> dict[str, torch.Tensor]:
        """``{"sim/<key>": [T, B, ...]}`` for the T steps recorded since the last call."""
        states, self._states = self._states, []
        return _stacked(states)


class PackageStates:
    """Twin states of a PettingZoo mpe2 env, one step at a time (``record``), through a one-env twin's
    ``load_package_env``; ``take()`` returns them as ``{"sim/<key>": [T, 1, ...]}``."""

    def __init__(self, cfg):
        from marl.envs.batched import make_batched_env
        e = cfg.env
        self.twin = make_batched_env(e.id, e.kwargs, 1, cfg.train.device, cfg.seed)
        self._states: list[dict[str, torch.Tensor]] = []

    def record(self, env) -> None:
        self.twin.load_package_env(0, env)
        self._states.append(_world(self.twin))

    def take(self) -> dict[str, torch.Tensor]:
        states, self._states = self._states, []
        return _stacked(states)


class Resimulator:
    """The re-simulated returns of every (step, agent, legal action, rollout) of a batch.

    Args:
        cfg: the run's config (its env, reward pipeline, ``algo.gamma``, ``algo.resim_horizon`` H and
            ``algo.resim_rollouts`` K).
        device: where the twin's rows live (the actor's device).
        max_rows: rows stepped at once (bounds memory).
    """

    def __init__(self, cfg, device, max_rows: int = MAX_ROWS):
        self.cfg, self.device, self.max_rows = cfg, torch.device(device), max_rows
        self.horizon, self.rollouts = cfg.algo.resim_horizon, cfg.algo.resim_rollouts
        self._branches: TwinBranches | None = None   # the last one built, reused for the same row count
        self.last: dict[str, float] = {}

    def _twin(self, rows: int) -> TwinBranches:
        """Rows for ``rows`` branches. One is kept (building costs ~ms; with per-step masks the row
        count varies from chunk to chunk, and a cache by count would grow without bound)."""
        if self._branches is None or self._branches.rows != rows:
            self._branches = TwinBranches(self.cfg, rows, self.device)
        return self._branches

    def returns(self, b: dict[str, torch.Tensor], actor, generator: torch.Generator) -> torch.Tensor:
        """``G [T, B, N, A, K]`` float64 (NaN at illegal actions): the discounted H-step return of
        agent i's reward column after ``(u_-i, u')`` at each step of ``b``, K rollouts with shared
        draws per (step, agent). ``b`` holds ``sim/`` states, ``actions [T, B, N]`` and ``avail``.
        Sets ``last`` to this call's cost (``env_steps``, ``simulated_steps``, ``seconds``).

        Raises:
            ValueError: when ``b`` has no ``sim/`` states (names what is missing).
        """
        t0 = time.perf_counter()
        states = {k[len(SIM_PREFIX):]: v.flatten(0, 1) for k, v in b.items() if k.startswith(SIM_PREFIX)}
        if not states:
            raise ValueError(f"algo.advantage {self.cfg.algo.advantage!r} re-simulates from the twin's state at "
                             f"every step, and this batch has none (keys '{SIM_PREFIX}*'); batches come with them "
                             f"from training on the twin and from marl.credit.play_episode")
        T, B, N = b["actions"].shape
        actions = b["actions"].flatten(0, 1).cpu().numpy()
        legal = b["avail"].flatten(0, 1).cpu().numpy().astype(bool)
        alive = b["alive"].flatten(0, 1).cpu().numpy().astype(bool) if "alive" in b else np.ones((T * B, N), bool)
        A, K = legal.shape[-1], self.rollouts
        sizes = ((alive[:, :, None] & legal).sum((1, 2)) * K).tolist()
        out = torch.full((T * B, N, A, K), float("nan"), dtype=torch.float64)
        env_steps = simulated = 0
        for group in chunks(sizes, self.max_rows):
            part = slice(group[0], group[-1] + 1)
            rows = branch_rows(actions[part], legal[part], alive[part], K)
            branches = self._twin(len(rows["state"]))
            current = branches.load_states({k: v[part] for k, v in states.items()}, rows["state"])
            ret, steps, sim = continue_rows(branches, current, rows, None, actor, generator, self.cfg.algo.gamma,
                                            self.horizon)
            out[part][rows["state"], rows["agent"], rows["action"], rows["rollout"]] = ret
            env_steps, simulated = env_steps + steps, simulated + sim
        self.last = {"env_steps": env_steps, "simulated_steps": simulated, "seconds": time.perf_counter() - t0}
        return out.reshape(T, B, N, A, K)
