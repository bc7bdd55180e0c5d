"""Branches of a copied simulator: the rows of counterfactual continuations that the oracle
(``marl.oracle``) and the re-simulated advantage (``marl.resim``) both step.

A branch row starts from one state s (a step of an episode), with agent i's action replaced by one
of its legal actions u' and the others' actions as taken, and continues under the sampling policy
for up to H steps. The rows of one (state, agent, rollout k) group ("key") draw the same Gumbel
noise at every step: common random numbers, so that differences between agent i's counterfactual
actions vary much less than the returns themselves.
"""
from __future__ import annotations

import numpy as np
import torch


def branch_rows(actions: np.ndarray, legal: np.ndarray, alive: np.ndarray, rollouts: int) -> dict:
    """The branch rows of S states, grouped by state, then agent, then action, then rollout.

    Args:
        actions: ``[S, N]`` the joint action taken at each state.
        legal: bool ``[S, N, A]`` each agent's legal actions there.
        alive: bool ``[S, N]`` the agents that acted there (others get no rows).
        rollouts: K, the rows per (state, agent, legal action).

    Returns:
        ``state``, ``agent``, ``action``, ``rollout`` ``[R]`` int64, ``key [R]`` (the row's
        (state, agent, rollout) group: the rows of one key are the K-th rollouts of that agent's
        counterfactuals and share their random draws), ``first [R, N]`` (the first joint action: the
        taken one, the row's agent playing its counterfactual) and ``n_keys``.
    """
    N = alive.shape[1]
    entries = np.argwhere(alive[:, :, None] & legal)                          # [E, 3] in (s, i, u) order
    group = np.cumsum(alive.reshape(-1)) - 1                                  # (s, i) -> its index among alive
    K = rollouts
    state, agent, action = (np.repeat(entries[:, j].astype(np.int64), K) for j in range(3))
    rollout = np.tile(np.arange(K, dtype=np.int64), len(entries))
    key = group[state * N + agent] * K + rollout
    first = actions[state].astype(np.int64)
    first[np.arange(len(state)), agent] = action
    return {"state": state, "agent": agent, "action": action, "rollout": rollout, "key": key.astype(np.int64),
            "first": first, "n_keys": int(alive.sum()) * K}


def chunks(sizes: list[int], max_rows: int) -> list[list[int]]:
    """Consecutive groups of states whose rows add up to at most ``max_rows`` (at least one each)."""
    groups, current, total = [], [], 0
    for s, size in enumerate(sizes):
        if current and total + size > max_rows:
            groups.append(current)
            current, total = [], 0
        current.append(s)
        total += size
    return groups + ([current] if current else [])


class TwinBranches:
    """Rows on a batched twin (``marl.envs.batched.TWINS``), stepped through ``BatchedVectorEnv``,
    the run's reward pipeline on tensors. Every row is stepped every step (a finished one
    auto-resets and is ignored by ``continue_rows``)."""

    def __init__(self, cfg, rows: int, device, scratch=None):
        from marl.config import reward_spec
        from marl.envs.batched import BatchedVectorEnv, make_batched_env

        e = cfg.env
        self.rows = rows
        self.twin = make_batched_env(e.id, e.kwargs, rows, str(device), cfg.seed)
        self.venv = BatchedVectorEnv(self.twin, reward_spec(cfg))
        self.scratch = scratch   # a one-env EnvSlice to restore PettingZoo snapshots into (``load``)
        self.dynamic = False

    def load(self, blobs: list[bytes], row_state: np.ndarray) -> dict[str, torch.Tensor | None]:
        """Row r becomes state ``row_state[r]``'s world, from PettingZoo ``EnvSlice`` snapshots
        (``blobs`` indexed by state; mpe2 twins, through ``load_package_env``)."""
        for s, blob in enumerate(blobs):
            self.scratch.load_snapshot(blob)
            self.twin.load_package_env(s, self.scratch.envs[0].env)
        return self.load_states(self.twin.get_state(), row_state)

    def load_states(self, states: dict[str, torch.Tensor], row_state: np.ndarray) -> dict[str, torch.Tensor | None]:
        """Row r becomes ``states``' entry ``row_state[r]`` (a ``get_state`` dict of S twin envs; its
        ``rng`` is not read). Returns what the agents act on (``obs [R, N, O]``, ``avail``)."""
        index = torch.as_tensor(row_state, device=self.venv.device)
        rows = {k: v.to(self.venv.device).index_select(0, index) for k, v in states.items() if k != "rng"}
        self.twin.set_state({**rows, "rng": self.twin.get_state()["rng"]})
        return {"obs": self.twin.observe()[0], "avail": None}

    def step(self, actions: torch.Tensor, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
        """Step every row with ``actions [R, N]``: the learner's reward ``[R, N]`` (float64),
        ``done [R]``, the next ``current`` and the rows simulated."""
        out = self.venv.step(actions.to(self.venv.device))
        return out.reward.double(), out.done, {"obs": out.obs, "avail": None}, int(actions.shape[0])

    def close(self) -> None:
        self.venv.close()


def continue_rows(branches, current: dict, rows: dict, hidden: torch.Tensor | None, actor,
                  generator: torch.Generator, gamma: float, horizon: int | None) -> tuple[torch.Tensor, int, int]:
    """Step every row from its first joint action ``rows["first"] [R, N]`` on, then with actions
    sampled from ``actor`` (from ``hidden [R, N, H]`` if recurrent), until its episode ends or
    ``horizon`` steps (the first included) are taken. The rows of one ``rows["key"]`` draw the same
    Gumbel noise (common random numbers: each row's draw is still exactly π's). Returns each row's
    discounted return of its agent's reward column (float64 ``[R]``, CPU), the env steps of live
    rows and the rows simulated."""
    device = next(actor.parameters()).device
    R = len(rows["state"])
    index, cols, key = torch.arange(R), torch.as_tensor(rows["agent"]), torch.as_tensor(rows["key"], device=device)
    ret = torch.zeros(R, dtype=torch.float64)
    running = torch.ones(R, dtype=torch.bool)
    actions = torch.as_tensor(rows["first"])
    discount, taken, env_steps, simulated = 1.0, 0, 0, 0
    while True:
        reward, done, current, sim = branches.step(actions, running)
        reward, done = reward.cpu(), done.cpu()
        ret += torch.where(running, discount * reward[index, cols], 0.0)
        env_steps += int(running.sum())
        simulated += sim
        running &= ~done
        taken += 1
        if not running.any() or (horizon is not None and taken >= horizon):
            return ret, env_steps, simulated
        discount *= gamma
        with torch.no_grad():
            avail = current["avail"]
            avail = avail.to(device) if branches.dynamic and avail is not None else None
            logits, hidden = actor.step(current["obs"].to(device), avail, hidden)
            u = torch.rand((rows["n_keys"], *logits.shape[1:]), generator=generator, device=device)
            gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0)))   # as marl.distributions.Categorical.sample
            actions = (logits + gumbel.index_select(0, key)).argmax(-1)
