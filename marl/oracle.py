"""Oracle credit: Monte-Carlo counterfactual advantages from copies of the live env, for any env
that can be copied mid-episode, scored against a run's advantages.

At sampled steps t of on-policy episodes (the run's sampling policy acting), the env is copied
and, for each present agent i and each of its legal actions u', K continuations are rolled out
from the state after the joint action ``(u_-i, u')`` with the same sampling policy, to the end of
the episode (or for ``horizon`` steps, step t included). Their discounted return of agent i's
reward column estimates ``Q_i(s_t, (u_-i, u'))``, and

    A*_i = Q_i(s, u) − Σ_u' π_i(u' | o_i) Q_i(s, (u_-i, u'))

is the counterfactual advantage that COMA's critic learns to approximate (Foerster et al. 2018,
"Counterfactual Multi-Agent Policy Gradients", AAAI), here estimated without a critic. π_i is the
run's actor at step t (its masked logits, renormalised over the legal actions).

The reward is **the learner's reward**: the env's raw reward after ``env.reward`` (shared /
individual / mixed / difference, with ``env.team_reward`` and ``env.alpha``) and potential shaping
(``env.shaping``), i.e. ``StepBatch.reward``, the quantity every advantage module sees, discounted
with ``algo.gamma``. The copies produce it with the framework's own reward pipeline:
``marl.envs.vector.EnvSlice.step`` for PettingZoo copies, ``marl.envs.batched.BatchedVectorEnv.step``
on a batched twin. No bootstrap: a continuation cut by ``horizon`` or by the env's time limit
counts only the rewards it saw.

Two backends:

- **twin** (envs in ``marl.envs.batched.TWINS``): each sampled mpe2 or LBF world is loaded into
  its twin (``load_package_env``) and replicated to its N·A·K rows; the rows of many states are
  stepped together as ``[R, N]`` tensors, with one batched actor forward per step;
- **pettingzoo** (any env that ``marl.envs.snapshot`` can copy): the ``EnvSlice`` of the episode is
  snapshot at every step and restored into a pool of one-env slices, stepped one by one with
  inference batched over all of a state's copies.

Common random numbers: the K-th rollouts of one agent's counterfactual actions draw the same
policy noise (``marl.branching.continue_rows``), so each Q estimate is unbiased and their differences, of which A* is
made, vary much less; A* and its standard error are computed from the paired differences.
Each PettingZoo copy's own numpy / ``random`` generators are reseeded per rollout index
(``env_noise="independent"``, the default), so the K rollouts also sample the env's randomness;
``"common"`` keeps the copied generators. The twins' dynamics are deterministic.

Cost: ``O(states × N × A × K × horizon)`` env steps (see ``docs/credit.md``).
"""
from __future__ import annotations

import random
import time
import types
from dataclasses import dataclass

import numpy as np
import torch

from marl.algorithms.resim import paired_differences
from marl.branching import TwinBranches, branch_rows, chunks, continue_rows
from marl.credit import episode_venv, play_episode, spearman
from marl.envs.errors import EnvError
from marl.envs.snapshot import restore, snapshot
from marl.seeding import (
    ORACLE_ACTIONS,
    ORACLE_NOISE,
    ORACLE_STATES,
    numpy_stream,
    path_seed,
    torch_stream,
    view_episode_seed,
)

ENV_NOISE = ("independent", "common")


@dataclass
class OracleState:
    """One sampled step: what the oracle branches from (N agents, A actions, H hidden)."""

    episode: int
    t: int
    blob: bytes                  # the episode's EnvSlice snapshot before step t
    actions: np.ndarray          # [N] int: the joint action taken at t
    alive: np.ndarray            # [N] bool: the agents that acted at t
    legal: np.ndarray            # [N, A] bool: their legal actions
    probs: np.ndarray            # [N, A] π_i(u' | o_i) over the legal actions
    hidden: torch.Tensor | None  # [N, H] a recurrent actor's hidden after step t (None: feed-forward)
    advantage: np.ndarray        # [N] the run's advantage at t (trainer.prepare)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


# -- on-policy episodes and sampled states --------------------------------------------------------

def _policy_at(actor, batch: dict, dynamic: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """π ``[T, N, A]`` at every step of a ``[T, 1, ...]`` episode batch and, for a recurrent actor,
    the hidden after each step ``[T, N, H]`` (independent of the action taken: the GRU reads obs)."""
    device = next(actor.parameters()).device
    obs, avail = batch["obs"][:, 0].to(device), batch["avail"][:, 0].to(device)
    hidden = batch["actor_h"][:, 0].to(device) if actor.recurrent else None
    with torch.no_grad():
        out, after = actor.step(obs, avail if dynamic else None, hidden)
    logits = out.masked_fill(~avail, float("-inf"))   # exactly 0 off the legal actions
    return torch.softmax(logits.double(), -1).cpu(), None if after is None else after.cpu()


def sample_states(trainer, episodes: int, states: int, seed: int = 0) -> tuple[list[OracleState], dict]:
    """Play ``episodes`` on-policy episodes (seeds as in ``marl.credit.credit_fidelity``), compute the
    run's advantages on each (``trainer.prepare``, as ``marl.credit.episode_credit``), and sample
    ``states`` of their steps uniformly without replacement (all of them if there are fewer).

    Returns the states (sorted by episode and step) and ``{"episode_steps", "episode_seconds"}``.

    Raises:
        EnvError: when the env cannot be snapshot (names the env).
    """
    t0 = time.perf_counter()
    venv = episode_venv(trainer)
    dynamic = bool(venv.dynamic_mask)
    played = []
    try:
        venv.reset([seed])
        try:
            venv.snapshot()
        except EnvError as exc:
            raise EnvError(f"env {trainer.cfg.env.id!r} cannot be copied mid-episode, so the oracle cannot branch "
                           f"from its states: {exc}") from None
        for k in range(episodes):
            ep_seed = view_episode_seed(seed, k)
            generator = torch_stream(ep_seed, trainer.device)
            blobs: list[bytes] = []
            batch = play_episode(trainer, venv, ep_seed, generator, "policy", snapshots=blobs)
            adv = trainer.prepare(batch, generator=generator)["adv"][:, 0].cpu().numpy()
            played.append((batch, blobs, adv))
    finally:
        venv.close()
    steps = [(e, t) for e, (batch, _, _) in enumerate(played) for t in range(batch["actions"].shape[0])]
    rng = numpy_stream(seed, ORACLE_STATES)
    chosen = sorted(rng.choice(len(steps), size=min(states, len(steps)), replace=False).tolist())
    out = []
    for e in sorted({steps[c][0] for c in chosen}):
        batch, blobs, adv = played[e]
        probs, after = _policy_at(trainer.actor, batch, dynamic)
        for c in chosen:
            if steps[c][0] != e:
                continue
            t = steps[c][1]
            out.append(OracleState(e, t, blobs[t], batch["actions"][t, 0].numpy().astype(np.int64),
                                   batch["alive"][t, 0].numpy().astype(bool), batch["avail"][t, 0].numpy().astype(bool),
                                   probs[t].numpy(), None if after is None else after[t], adv[t]))
    return out, {"episode_steps": len(steps), "episode_seconds": time.perf_counter() - t0}


# -- branches: the rows of copies -----------------------------------------------------------------

def _reseed(root, rng: np.random.Generator) -> None:
    """Reseed every numpy ``Generator``/``RandomState`` and ``random.Random`` reachable from ``root``
    (attributes, dicts, lists, tuples), so a copy draws its own env randomness."""
    seen, stack = set(), [root]
    leaves = (int, float, complex, str, bytes, bool, type(None), np.ndarray, np.generic, type, types.ModuleType,
              types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    while stack:
        obj = stack.pop()
        if isinstance(obj, leaves) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.random.Generator):
            obj.bit_generator.state = type(obj.bit_generator)(int(rng.integers(2 ** 63))).state
        elif isinstance(obj, np.random.RandomState):
            obj.seed(int(rng.integers(2 ** 32)))
        elif isinstance(obj, random.Random):
            obj.seed(int(rng.integers(2 ** 63)))
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def _slice_maker(trainer):
    """A function returning fresh one-env ``EnvSlice`` s of the run's env and reward pipeline
    (clones of one built slice: cloning is ~50x cheaper than building)."""
    from marl.config import reward_spec
    from marl.envs.vector import EnvSlice

    e = trainer.cfg.env
    base = EnvSlice(e.id, e.kwargs, 1, reward_spec(trainer.cfg))
    template = snapshot(base)
    base.close()
    return lambda: restore(template)


class _SliceBranches:
    """Rows of PettingZoo copies: a pool of one-env ``EnvSlice`` s, each loaded from a state's slice
    snapshot (``EnvSlice.load_snapshot``) and stepped with ``autoreset=False``, so the learner's
    reward is the slice's own (``EnvSlice.step``)."""

    def __init__(self, make):
        self._make = make   # see _slice_maker
        self.pool: list = []
        self.rows: list = []
        self.dynamic = False

    def load(self, blobs: list[bytes], seeds: np.ndarray | None) -> dict[str, torch.Tensor | None]:
        """Row r becomes a copy of ``blobs[r]``, its generators reseeded from ``seeds[r]`` (None: kept);
        returns what the agents act on (``obs [R, N, O]``, ``avail [R, N, A]``), as ``step`` does."""
        while len(self.pool) < len(blobs):
            self.pool.append(self._make())
        self.rows = self.pool[:len(blobs)]
        for r, (piece, blob) in enumerate(zip(self.rows, blobs)):
            piece.load_snapshot(blob)
            if seeds is not None:
                _reseed(piece.envs, np.random.default_rng(int(seeds[r])))
        self.dynamic = bool(self.rows[0].envs[0].dynamic_mask)
        return self._current()

    def _current(self) -> dict[str, torch.Tensor | None]:
        return {k: torch.from_numpy(np.stack([piece.out[k][0] for piece in self.rows])) for k in ("obs", "avail")}

    def step(self, actions: torch.Tensor, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
        """Step the ``running [R]`` rows with ``actions [R, N]``: the learner's reward ``[R, N]``
        (float64), ``done [R]``, the next ``current`` and the env steps simulated."""
        actions = actions.cpu().numpy()
        R, N = actions.shape
        reward, done = np.zeros((R, N), np.float64), np.zeros(R, bool)
        for r in np.flatnonzero(running.cpu().numpy()):
            piece = self.rows[r]
            piece.step(actions[r:r + 1], autoreset=False)
            reward[r], done[r] = piece.out["reward"][0], piece.out["done"][0]
        return torch.from_numpy(reward), torch.from_numpy(done), self._current(), int(running.sum())

    def close(self) -> None:
        for piece in self.pool:
            piece.close()


def _choose_backend(trainer, twin: bool | None, probe: OracleState, scratch) -> tuple[str, str]:
    """``("twin" | "pettingzoo", note)``: the twin when the env has one that fits (``twin=None``),
    or as ``twin`` demands (``EnvError`` when it demands a twin that does not fit)."""
    from marl.envs.batched import TWINS

    e = trainer.cfg.env
    if twin is False:
        return "pettingzoo", "twin not requested"
    reason = None
    if e.id not in TWINS:
        reason = f"env {e.id!r} has no batched twin (twins: {', '.join(TWINS)})"
    elif e.shaping:
        reason = "env.shaping reads the PettingZoo env object, which a twin does not have"
    else:
        try:
            branches = TwinBranches(trainer.cfg, 1, trainer.device, scratch)
            branches.load([probe.blob], np.zeros(1, np.int64))
            branches.close()
        except (EnvError, ValueError) as exc:
            reason = f"the twin cannot hold this env's state ({exc})"
    if reason is None:
        return "twin", ""
    if twin:
        raise EnvError(f"oracle: no usable batched twin for env {e.id!r}: {reason}")
    return "pettingzoo", reason


def oracle_advantages(trainer, episodes: int = 32, states: int = 64, rollouts: int = 8, horizon: int | None = None,
                      seed: int = 0, twin: bool | None = None, env_noise: str = "independent",
                      max_rows: int | None = None) -> dict:
    """Monte-Carlo counterfactual advantages A* at sampled on-policy steps (see the module docstring).

    Args:
        trainer: a ``marl.trainer.Trainer`` (e.g. ``marl.run.load_trainer(run_dir)``).
        episodes: on-policy episodes played; ``states`` of their steps are sampled (S ≤ states).
        rollouts: K continuations per (state, agent, legal action).
        horizon: steps per continuation, step t included (None: to the episode's end).
        twin: None: the batched twin when the env has one that can hold its state, else PettingZoo
            copies; True: the twin or an ``EnvError``; False: PettingZoo copies.
        env_noise: ``"independent"`` reseeds each PettingZoo copy's generators, ``"common"`` keeps them.
        max_rows: rows (copies) stepped at once (default 8192 on the twin, 1024 PettingZoo).

    Returns:
        ``q``/``q_se`` ``[S, N, A]`` (mean and standard error of the K returns; NaN where no row),
        ``probs [S, N, A]`` (π over the legal actions), ``actions``/``alive`` ``[S, N]``,
        ``oracle``/``oracle_se`` ``[S, N]`` (A* and its standard error; NaN for absent agents; the SE
        is NaN when K = 1), ``oracle_halves [2, S, N]`` (A* from the first and the last K // 2
        rollouts, for ``score_credit``'s reliability), ``advantage [S, N]`` (the run's advantage
        module on the same steps), ``steps [S, 2]`` (episode, t), ``backend`` and ``backend_note``, and the cost:
        ``env_steps`` (steps of live continuations), ``simulated_steps`` (rows stepped, including a
        twin's finished rows), ``episode_steps`` (the on-policy episodes), ``oracle_seconds`` and
        ``seconds`` (everything).

    Raises:
        ValueError: for continuous actions or bad arguments; ``EnvError`` (a ValueError) when the
        env cannot be copied.
    """
    e = trainer.cfg.env
    for name, value in (("episodes", episodes), ("states", states), ("rollouts", rollouts)):
        _check(isinstance(value, int) and value >= 1, f"{name} must be an int >= 1, got {value!r}")
    _check(isinstance(seed, int) and seed >= 0, f"seed must be an int >= 0, got {seed!r}")
    _check(horizon is None or (isinstance(horizon, int) and horizon >= 1),
           f"horizon must be an int >= 1 or None (to the episode's end), got {horizon!r}")
    _check(env_noise in ENV_NOISE, f"env_noise must be one of {ENV_NOISE}, got {env_noise!r}")
    if trainer.actor.continuous:
        raise ValueError(f"the oracle enumerates each agent's actions, and env {e.id!r} has continuous (Box) "
                         f"actions; it needs discrete ones")
    if not trainer.envs.has_package_env:
        raise EnvError(f"env {e.id!r} is a batched simulator with no PettingZoo version; the oracle branches from "
                       f"PettingZoo envs (copied, or loaded into their twin)")
    t0 = time.perf_counter()
    sampled, info = sample_states(trainer, episodes, states, seed)
    t1 = time.perf_counter()
    S, N, A = len(sampled), trainer.actor.n_agents, trainer.actor.action_mask.shape[-1]
    make_slice = _slice_maker(trainer)
    scratch = make_slice()
    backend, note = _choose_backend(trainer, twin, sampled[0], scratch)
    if max_rows is None:
        max_rows = 8192 if backend == "twin" else 1024
    device = next(trainer.actor.parameters()).device
    generator = torch_stream(path_seed(seed, ORACLE_ACTIONS), device)
    noise_rng = numpy_stream(seed, ORACLE_NOISE) if env_noise == "independent" else None
    probs = np.stack([st.probs for st in sampled])
    actions = np.stack([st.actions for st in sampled])
    alive = np.stack([st.alive for st in sampled])
    legal = np.stack([st.legal for st in sampled])
    q_sum, q_sq, count = np.zeros((S, N, A)), np.zeros((S, N, A)), np.zeros((S, N, A))
    paired = np.zeros((S, N, rollouts))               # A* of each rollout index k (its rows share draws)
    env_steps = simulated = 0
    sizes = [int(sum(st.legal[i].sum() for i in np.flatnonzero(st.alive))) * rollouts for st in sampled]
    slices = _SliceBranches(make_slice) if backend == "pettingzoo" else None
    try:
        for group in chunks(sizes, max_rows):
            chunk = [sampled[s] for s in group]
            rows = branch_rows(actions[group], legal[group], alive[group], rollouts)
            if backend == "twin":
                branches = TwinBranches(trainer.cfg, len(rows["state"]), trainer.device, scratch)
                current = branches.load([st.blob for st in chunk], rows["state"])
            else:
                branches = slices
                seeds = None if noise_rng is None else noise_rng.integers(2 ** 63, size=rows["n_keys"])[rows["key"]]
                current = branches.load([chunk[s].blob for s in rows["state"]], seeds)
            hidden = None
            if trainer.actor.recurrent:
                hidden = torch.stack([chunk[s].hidden for s in rows["state"]]).to(device)
            returns, steps, sim = continue_rows(branches, current, rows, hidden, trainer.actor, generator,
                                                trainer.cfg.algo.gamma, horizon)
            returns = returns.numpy()
            if backend == "twin":
                branches.close()
            env_steps, simulated = env_steps + steps, simulated + sim
            state = np.asarray(group)[rows["state"]]
            index = (state, rows["agent"], rows["action"])
            np.add.at(q_sum, index, returns)
            np.add.at(q_sq, index, returns ** 2)
            np.add.at(count, index, 1.0)
            # A*_k = Σ_u' π(u') (G_k(u) − G_k(u')), the same paired differences as the training-time
            # re-simulated advantage (marl.algorithms.resim)
            g = np.full((len(group), N, A, rollouts), np.nan)
            g[rows["state"], rows["agent"], rows["action"], rows["rollout"]] = returns
            weights = torch.from_numpy(probs[group] * alive[group, :, None])
            paired[group] = paired_differences(torch.from_numpy(g), weights, torch.from_numpy(actions[group])).numpy()
    finally:
        if slices is not None:
            slices.close()
        scratch.close()
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(count > 0, q_sum / count, np.nan)
        var = np.where(count > 1, np.maximum(q_sq - count * q ** 2, 0.0) / (count - 1), np.nan)
        q_se = np.sqrt(var / count)
    oracle = np.where(alive, paired.mean(-1), np.nan)
    half = rollouts // 2   # split-half estimates: how reproducible A* itself is (needs K >= 2)
    halves = np.full((2, S, N), np.nan)
    if half:
        halves = np.stack([paired[..., :half].mean(-1), paired[..., half:].mean(-1)])
    halves[:, ~alive] = np.nan
    oracle_se = np.where(alive & (rollouts > 1), paired.std(-1, ddof=min(1, rollouts - 1)) / np.sqrt(rollouts), np.nan)
    return {"q": q, "q_se": q_se, "probs": probs, "actions": actions, "alive": alive, "oracle": oracle,
            "oracle_se": oracle_se, "oracle_halves": halves, "advantage": np.stack([st.advantage for st in sampled]),
            "steps": np.array([[st.episode, st.t] for st in sampled], np.int64).reshape(-1, 2),
            "backend": backend, "backend_note": note, "env_steps": env_steps, "simulated_steps": simulated,
            "episode_steps": info["episode_steps"], "oracle_seconds": time.perf_counter() - t1,
            "seconds": time.perf_counter() - t0}


# -- scores -----------------------------------------------------------------------------------------

def _sign_agreement(adv: np.ndarray, oracle: np.ndarray, decided: np.ndarray) -> float:
    return float(np.mean(np.sign(adv[decided]) == np.sign(oracle[decided]))) if decided.any() else float("nan")


def score_credit(advantage: np.ndarray, oracle: np.ndarray, oracle_se: np.ndarray, agents: list[str],
                 sign_atol: float = 1e-6, sign_z: float = 2.0, halves: np.ndarray | None = None) -> dict:
    """Score advantages ``[S, N]`` against the oracle's A* ``[S, N]`` (NaN: no entry).

    ``spearman``: rank correlation over the entries (``marl.credit.spearman``); ``sign_agreement``:
    the fraction of entries with ``sign(A) == sign(A*)`` among those where the oracle decides the
    sign, ``|A*| > max(sign_atol, sign_z * SE(A*))`` (the SE counts as 0 when unknown, K = 1);
    both overall and ``/<agent>``, with ``entries``, ``sign_entries``, ``abs_adv``, ``abs_oracle``
    and ``oracle_se`` (mean) per agent. With ``halves [2, S, N]`` (two independent estimates of A*),
    ``oracle_reliability``: their Spearman correlation, the split-half reliability of the oracle's
    ranking (near 1: A* is estimated well enough to rank entries; near 0: add rollouts).
    """
    valid = np.isfinite(oracle)
    se = np.nan_to_num(oracle_se, nan=0.0)
    decided = valid & (np.abs(np.nan_to_num(oracle)) > np.maximum(sign_atol, sign_z * se))
    out = {"spearman": spearman(advantage[valid], oracle[valid]) if valid.sum() > 1 else float("nan"),
           "sign_agreement": _sign_agreement(advantage, oracle, decided), "entries": int(valid.sum()),
           "sign_entries": int(decided.sum()), "sign_atol": sign_atol, "sign_z": sign_z}
    if halves is not None:
        both = valid & np.isfinite(halves).all(0)
        out["oracle_reliability"] = spearman(halves[0][both], halves[1][both]) if both.sum() > 1 else float("nan")
    for i, agent in enumerate(agents):
        v = valid[:, i]
        out[f"spearman/{agent}"] = spearman(advantage[v, i], oracle[v, i]) if v.sum() > 1 else float("nan")
        out[f"sign_agreement/{agent}"] = _sign_agreement(advantage[:, i], oracle[:, i], decided[:, i])
        out[f"entries/{agent}"] = int(v.sum())
        out[f"sign_entries/{agent}"] = int(decided[:, i].sum())
        out[f"abs_adv/{agent}"] = float(np.abs(advantage[v, i]).mean()) if v.any() else float("nan")
        out[f"abs_oracle/{agent}"] = float(np.abs(oracle[v, i]).mean()) if v.any() else float("nan")
        out[f"oracle_se/{agent}"] = float(np.nanmean(oracle_se[v, i])) if np.isfinite(oracle_se[v, i]).any() \
            else float("nan")
    return out


def oracle_fidelity(trainer, episodes: int = 32, states: int = 64, rollouts: int = 8, horizon: int | None = None,
                    seed: int = 0, twin: bool | None = None, env_noise: str = "independent",
                    sign_atol: float = 1e-6, sign_z: float = 2.0) -> dict:
    """``oracle_advantages`` scored with ``score_credit``, as one JSON-ready dict: the scores, the run
    (``method``, ``env``, ``reward``, ``gamma``), the settings (``states`` sampled, ``episodes``,
    ``rollouts``, ``horizon``) and the cost (``backend``, ``env_steps``, ``simulated_steps``,
    ``episode_steps``, ``oracle_seconds``, ``seconds``)."""
    from marl.learners import credit_method
    res = oracle_advantages(trainer, episodes, states, rollouts, horizon, seed, twin, env_noise)
    e = trainer.cfg.env
    out = {"method": credit_method(trainer.cfg), "env": e.id, "reward": e.reward, "team_reward": e.team_reward,
           "gamma": trainer.cfg.algo.gamma, "episodes": episodes, "states": int(res["oracle"].shape[0]),
           "rollouts": rollouts, "horizon": horizon, "env_noise": env_noise, "seed": seed,
           **score_credit(res["advantage"], res["oracle"], res["oracle_se"], list(trainer.agents), sign_atol, sign_z,
                          res["oracle_halves"])}
    out.update({k: res[k] for k in ("backend", "backend_note", "env_steps", "simulated_steps", "episode_steps")})
    out.update({k: round(float(res[k]), 4) for k in ("oracle_seconds", "seconds")})
    return out
