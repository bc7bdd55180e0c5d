"""Vectorised envs: B copies of a ``TeamEnv`` stepped together, arrays shaped ``[B, N, ...]``.

``EnvSlice`` does the per-env work (stepping, auto-reset, reward mode, episode bookkeeping).
``SyncVectorEnv`` runs one slice in this process; ``ProcessVectorEnv`` splits the B envs into
slices that run in worker processes and write their results into shared memory, while the
learner process batches inference over all of them.
"""
from __future__ import annotations

import math

import multiprocessing as mp
import signal
from dataclasses import dataclass

import numpy as np
import torch

from marl.envs.errors import EnvError, EnvWorkerLost, error_summary
from marl.envs.rewards import resolve_potential, reward_pipeline, team_reward
from marl.envs.snapshot import restore, snapshot
from marl.envs.step_schema import CURRENT, ENV_STEP, Sizes, layout
from marl.envs.team_env import TeamEnv


@dataclass(frozen=True)
class RewardSpec:
    """How raw env rewards become learner rewards (see ``marl.envs.rewards``)."""

    mode: str = "shared"
    team: str = "mean"
    alpha: float = 0.5
    shaping: str = ""     # potential Φ: built-in name or "module:function"; "" for none
    gamma: float = 0.99   # discount used by the shaping term
    default_action: int = 0   # difference rewards: the counterfactual action c_i
    episodic: bool = False    # withhold every reward and pay the episode's sum at its last step


def difference_rewards_by_resimulation(env: TeamEnv, actions: np.ndarray, acting: np.ndarray, reward: RewardSpec
                                       ) -> np.ndarray:
    """Each agent's counterfactual team reward ``G(s, (u_-i, c_i))`` ``[N]`` (Wolpert & Tumer, 2002):
    ``env`` (not yet stepped) is copied once per acting agent and stepped with that agent's action
    replaced by its default ``c_i`` (``reward.default_action``, or its first legal action where that
    one is not legal). Costs one snapshot and N extra env steps.

    Raises:
        EnvError: when the env cannot be copied.
    """
    try:
        blob = snapshot(env)
    except EnvError as exc:
        raise EnvError(f"env {env.env_id!r}: env.reward 'difference' re-simulates every step on a copy of the env, "
                       f"and this env cannot be copied ({exc}); set env.difference: reward_model to learn the "
                       f"counterfactual from a reward model instead") from None
    avail = env._avail_now
    counterfactual = np.zeros(len(actions), np.float32)
    for i in np.flatnonzero(acting):
        default = reward.default_action if avail[i, reward.default_action] else int(np.flatnonzero(avail[i])[0])
        changed = np.array(actions, copy=True)
        changed[i] = default
        step = restore(blob).step(changed)
        counterfactual[i] = float(team_reward(torch.from_numpy(step.reward), reward.team, torch.from_numpy(acting))[0])
    return counterfactual


@dataclass
class StepBatch:
    """One vectorised step: the ``ENV_STEP`` fields of ``marl.envs.step_schema`` (shapes
    ``layout((B,), ...)``, docs there), plus the finished ``episodes``. ``obs``/``state``/``avail``/
    ``alive``/``first`` are already reset where an episode ended, unless the step was taken with
    ``autoreset=False``."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    alive: np.ndarray
    first: np.ndarray
    next_obs: np.ndarray
    next_state: np.ndarray
    next_avail: np.ndarray
    acted: np.ndarray
    raw_reward: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    done: np.ndarray
    episodes: list           # finished episodes: dicts with raw_return [N], return [N], length, env (row b)

    @classmethod
    def copied_from(cls, arrays: dict[str, np.ndarray], episodes: list) -> StepBatch:
        """A batch holding copies of the step arrays in ``arrays`` (which the next step overwrites)."""
        return cls(**{name: arrays[name].copy() for name in ENV_STEP}, episodes=episodes)


def _step_layout(n: int, env: TeamEnv) -> dict[str, tuple[tuple, type]]:
    """Shapes and dtypes of the arrays a vectorised step of ``n`` copies of ``env`` fills: the
    ``ENV_STEP`` fields plus ``actions`` (``marl.envs.step_schema.layout``)."""
    return layout((n,), Sizes.of(env), ENV_STEP + ("actions",))


def numpy_rewards(raw: np.ndarray, spec: RewardSpec, **arrays: np.ndarray | None) -> np.ndarray:
    """``marl.envs.rewards.reward_pipeline`` on numpy arrays (``raw [n, N]`` and its keyword arrays):
    each is wrapped with ``torch.from_numpy`` (no copy, so ``held`` is updated in place) and the
    result read back with ``.numpy()``: float32 ``[n, N]``, float64 with ``spec.episodic``."""
    tensors = {k: None if v is None else torch.from_numpy(v) for k, v in arrays.items()}
    return reward_pipeline(torch.from_numpy(raw), spec, **tensors).numpy()


def episode_seed(base: int, episode: int) -> int:
    """Reset seed of the ``episode``-th episode (counting from 0) of an env first reset with ``base``."""
    if episode == 0:
        return int(base)
    return int(np.random.SeedSequence([int(base), episode]).generate_state(1)[0])


class EnvSlice:
    """A list of envs stepped in sequence, writing their results into the arrays of ``out``
    (private arrays by default, or views of shared memory in a worker process).

    Episodes run on across calls: an env that ends is reset at once (auto-reset) with the next seed
    of its own sequence (``episode_seed``), so ``step`` can be called for as long as needed and a
    rollout may end in the middle of an episode. ``snapshot``/``load_snapshot`` save and restore all
    of it (the envs' live state included, see ``marl.envs.snapshot``) for exact resume.
    """

    def __init__(self, env_id: str, kwargs: dict, n: int, reward: RewardSpec,
                 out: dict[str, np.ndarray] | None = None, render_mode: str | None = None, check: str = "first"):
        self.envs = [TeamEnv(env_id, kwargs, render_mode, check) for _ in range(n)]
        for env in self.envs:   # step checks its whole batch for NaN/inf at once (_check_values)
            env.check_values = False
        e = self.envs[0]
        self.env_id = env_id
        self.reward = reward
        self.n, self.n_agents, self.obs_dim, self.state_dim = n, e.n_agents, e.obs_dim, e.state_dim
        self.n_actions, self.continuous = e.n_actions, e.continuous
        self.obs_dtype, self.state_dtype = e.obs_dtype, e.state_dtype
        if out is None:
            out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in _step_layout(n, e).items()}
        self.out = out
        shape = (n, self.n_agents)
        self._raw_return = np.zeros(shape, np.float64)
        self._return = np.zeros(shape, np.float64)
        self._length = np.zeros(n, np.int64)
        self._seeds = np.zeros(n, np.int64)      # each env's first reset seed
        self._episode = np.zeros(n, np.int64)    # episodes each env has started since then
        self._potential = resolve_potential(reward.shaping) if reward.shaping else None
        self._phi = np.zeros((n, 1), np.float32)
        self._held = np.zeros((n, self.n_agents), np.float64)   # the episodic mode's withheld rewards
        self.turn_based = e.turn_based
        self._restorable = False   # a restored copy of these envs has been seen to step

    def _phi_of(self, i: int) -> float:
        return float(self._potential(self.envs[i].env))

    def _reset_env(self, i: int) -> None:
        o = self.out
        o["obs"][i], o["state"][i], o["avail"][i], o["alive"][i] = \
            self.envs[i].reset(seed=episode_seed(self._seeds[i], int(self._episode[i])))
        if self._potential is not None:
            self._phi[i] = self._phi_of(i)

    def reset(self, seeds) -> None:
        """Start a fresh episode in every env, env i with ``seeds[i]`` (and its later episodes with
        seeds derived from it); the observations land in ``out["obs"]`` etc."""
        self._seeds[:] = np.asarray(seeds, dtype=np.int64)
        self._episode[:] = 0
        for i in range(self.n):
            self._reset_env(i)
        self.out["first"][:] = True
        self._raw_return[:] = 0.0
        self._return[:] = 0.0
        self._length[:] = 0
        self._held[:] = 0.0

    def step(self, actions: np.ndarray, autoreset: bool = True) -> list[dict]:
        """Step every env with ``actions [n, N]`` into ``out``; returns the finished episodes. With
        ``autoreset=False`` finished envs are left as they are (the caller resets them)."""
        o = self.out
        o["acted"][:] = o["alive"]
        counterfactual = None
        if self.reward.mode == "difference":   # before the envs move on
            counterfactual = np.stack([difference_rewards_by_resimulation(env, actions[i], o["alive"][i], self.reward)
                                       for i, env in enumerate(self.envs)])
        for i, env in enumerate(self.envs):
            (o["next_obs"][i], o["next_state"][i], o["next_avail"][i], o["alive"][i], o["raw_reward"][i],
             o["terminated"][i], o["truncated"][i], o["done"][i]) = env.step(actions[i])
        raw, term, acted = o["raw_reward"], o["terminated"], o["acted"]
        self._check_values()
        if self.turn_based:   # every player is paid, waiting or not (marl.envs.turns)
            acted = np.ones_like(acted)
        phi_next = None if self._potential is None else np.array([[self._phi_of(i)] for i in range(self.n)], np.float32)
        shaping = {} if phi_next is None else {"phi": self._phi, "phi_next": phi_next, "terminated": term}
        episodic = ({"ends": acted & (term | o["truncated"] | o["done"][:, None]), "held": self._held}
                    if self.reward.episodic else {})
        reward = numpy_rewards(raw, self.reward, present=None if acted.all() else acted, counterfactual=counterfactual,
                               **shaping, **episodic)
        if phi_next is not None:
            self._phi = phi_next
        o["reward"][:] = reward
        self._raw_return += raw
        self._return += reward
        self._length += 1
        episodes = []
        o["obs"][:], o["state"][:], o["avail"][:] = o["next_obs"], o["next_state"], o["next_avail"]
        o["first"][:] = o["done"]
        for i in np.flatnonzero(o["done"]):
            episodes.append({"raw_return": self._raw_return[i].copy(), "return": self._return[i].copy(),
                             "length": int(self._length[i]), "env": int(i)})
            self._raw_return[i] = 0.0
            self._return[i] = 0.0
            self._length[i] = 0
            self._episode[i] += 1
            if autoreset:
                self._reset_env(i)
        return episodes

    def _check_values(self) -> None:
        """One test for a NaN or inf anywhere in this step's observations, states and rewards (they
        sum to a finite number); where it fails, the env that caused it raises its ``EnvError``."""
        o = self.out
        floats = [o[k] for k in ("next_obs", "next_state", "raw_reward") if o[k].dtype.kind == "f"]   # not uint8 images
        if math.isfinite(sum(float(x.sum()) for x in floats)):
            return
        for i, env in enumerate(self.envs):
            env.check_step(o["next_obs"][i], o["raw_reward"][i])
            env.check_state(o["next_state"][i])

    def snapshot(self) -> bytes:
        """Everything ``load_snapshot`` needs to continue exactly: the envs' live state, the episode
        bookkeeping and the current observations (``EnvError`` if an env cannot be snapshot, or its
        restored copy cannot step, see ``_check_restorable``)."""
        if not self._restorable:
            self._check_restorable()
        current = {k: self.out[k].copy() for k in CURRENT}
        return snapshot({"envs": self.envs, "raw_return": self._raw_return, "return": self._return,
                         "length": self._length, "seeds": self._seeds, "episode": self._episode, "phi": self._phi,
                         "held": self._held, "current": current})

    def _check_restorable(self) -> None:
        """Restore a copy of the first env from its snapshot and step it once (the original does not
        move): ``EnvError`` where that fails. A snapshot drops pygame objects, and an env that draws
        its observations on a pygame surface (PettingZoo's butterfly envs) cannot step without it."""
        env = self.envs[0]
        actions = (np.zeros((env.n_agents, env.n_actions), np.float32) if env.continuous
                   else env._avail_now.argmax(-1))
        blob = snapshot(env)
        try:
            restore(blob).step(actions)
        except EnvError as exc:
            raise EnvError(f"a copy restored from its snapshot cannot step ({exc})") from None
        self._restorable = True

    def load_snapshot(self, data: bytes) -> None:
        state = restore(data)
        for env in self.envs:
            env.close()
        self.envs = state["envs"]
        self._raw_return, self._return, self._length = state["raw_return"], state["return"], state["length"]
        self._seeds, self._episode, self._phi, self._held = state["seeds"], state["episode"], state["phi"], state["held"]
        for k, value in state["current"].items():
            self.out[k][:] = value

    def close(self):
        for env in self.envs:
            env.close()


def _describe(venv, probe: TeamEnv, num_envs: int) -> None:
    """Give a vector env the sizes it exposes (agents, dims, actions, action mask), from ``probe``.

    ``dynamic_mask`` (the policy acts on each step's ``avail``) holds for every Discrete env, not
    only for those whose first reset carried a mask: a PettingZoo env may put an action_mask in the
    infos of any step, so whether it masks is decided per step. Where no step masks, ``avail`` is
    the static ``action_mask`` and the policy acts and learns exactly as without it."""
    venv.num_envs = num_envs
    venv.agents, venv.n_agents = probe.agents, probe.n_agents
    venv.obs_dim, venv.state_dim, venv.n_actions = probe.obs_dim, probe.state_dim, probe.n_actions
    venv.action_mask = probe.action_mask
    venv.obs_image, venv.state_image, venv.state_is_obs = probe.obs_image, probe.state_image, probe.state_is_obs
    venv.obs_dtype, venv.state_dtype = probe.obs_dtype, probe.state_dtype
    venv.dynamic_mask = not probe.continuous
    venv.continuous = probe.continuous
    venv.turn_based = probe.turn_based


class SyncVectorEnv:
    """The envs of one slice, stepped in this process (all B envs, or a worker process's own)."""

    def __init__(self, env_slice: EnvSlice):
        self._slice = env_slice
        _describe(self, env_slice.envs[0], env_slice.n)

    @property
    def team_envs(self) -> list[TeamEnv]:
        """The envs themselves (e.g. to read a diagnostic env's ``true_credit``)."""
        return self._slice.envs

    def reset(self, seeds) -> dict[str, np.ndarray]:
        """Fresh episodes, env b seeded with ``seeds[b]``; returns ``current()``."""
        self._slice.reset(seeds)
        return self.current()

    def current(self) -> dict[str, np.ndarray]:
        """Copies of what the agents act on next: ``obs [B, N, O]``, ``state [B, S]``, ``avail
        [B, N, A]`` and ``alive [B, N]``."""
        return {k: self._slice.out[k].copy() for k in CURRENT}

    def step(self, actions: np.ndarray, autoreset: bool = True) -> StepBatch:
        """Step with ``actions [B, N]``; see ``EnvSlice.step`` for ``autoreset``."""
        episodes = self._slice.step(actions, autoreset)
        return StepBatch.copied_from(self._slice.out, episodes)

    def snapshot(self) -> list[bytes]:
        """The envs' state, one entry per slice (here one); see ``EnvSlice.snapshot``."""
        return [self._slice.snapshot()]

    def load_snapshot(self, parts: list[bytes]) -> None:
        if len(parts) != 1:
            raise EnvError(f"the env snapshot has {len(parts)} parts, from {len(parts)} env workers; this run "
                           f"steps its envs in-process")
        self._slice.load_snapshot(parts[0])

    def close(self):
        self._slice.close()


def _snapshot_slice(env_slice: EnvSlice) -> bytes:
    return env_slice.snapshot()


def _load_slice(env_slice: EnvSlice, data: bytes) -> None:
    env_slice.load_snapshot(data)


def _shared_views(buffers: dict, layout: dict, rows: slice) -> dict[str, np.ndarray]:
    """Numpy views of rows ``rows`` of each shared buffer."""
    return {k: np.frombuffer(buffers[k], dtype=dtype).reshape(shape)[rows] for k, (shape, dtype) in layout.items()}


def _worker(conn, env_id, kwargs, rows, reward, buffers, layout, check):
    # A terminal's Ctrl-C (and Slurm's SIGTERM, a closed terminal's SIGHUP) reaches the whole process
    # group: the learner decides when to stop (it finishes the iteration and saves a checkpoint) and
    # then closes its workers. A worker whose learner died sees its pipe close and exits.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        env_slice = EnvSlice(env_id, kwargs, rows.stop - rows.start, reward, _shared_views(buffers, layout, rows),
                             check=check)
    except Exception as exc:   # nothing to serve: report and exit
        conn.send(("error", _worker_error(exc)))
        return
    conn.send(("ok", None))
    while True:
        try:
            cmd, arg = conn.recv()
        except (EOFError, OSError):   # the learner is gone
            return
        if cmd == "close":
            try:
                env_slice.close()
                conn.send(("ok", None))
            except Exception as exc:
                conn.send(("error", _worker_error(exc)))
            return
        # A failed command is answered with its error (the learner raises it with context) and the
        # worker keeps serving: the learner may carry on, e.g. after a snapshot an env refused.
        try:
            if cmd == "step":
                reply = env_slice.step(env_slice.out["actions"], arg)
            elif cmd == "reset":
                reply = env_slice.reset(arg)
            elif cmd == "call":
                fn, args = arg
                reply = fn(env_slice, *args)
            else:
                raise ValueError(f"unknown env worker command {cmd!r}")
            conn.send(("ok", reply))   # pickles the reply before it sends a byte
        except Exception as exc:
            conn.send(("error", _worker_error(exc)))


def _worker_error(exc: Exception) -> str:
    return str(exc) if isinstance(exc, EnvError) else error_summary(exc)


class ProcessVectorEnv:
    """B envs split over ``workers`` processes; same interface as ``SyncVectorEnv``.

    Observations, rewards, flags and actions travel through shared memory (each worker owns a block
    of rows); the pipes carry only commands and finished-episode summaries.
    """

    def __init__(self, env_id: str, kwargs: dict, num_envs: int, reward: RewardSpec, workers: int,
                 check: str = "first"):
        if not 1 <= workers <= num_envs:
            raise EnvError(f"env.workers must be in [1, env.num_envs={num_envs}], got {workers}")
        probe = TeamEnv(env_id, kwargs)   # sizes the shared arrays before any worker starts
        probe.close()
        _describe(self, probe, num_envs)
        ctx = mp.get_context("spawn")
        layout = _step_layout(num_envs, probe)
        buffers = {k: ctx.RawArray("b", max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
                   for k, (shape, dtype) in layout.items()}
        self._arrays = _shared_views(buffers, layout, slice(None))
        sizes = [num_envs // workers + (i < num_envs % workers) for i in range(workers)]
        bounds = np.cumsum([0] + sizes)
        self._rows = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._env_id, self._started = env_id, False
        self._conns, self._procs = [], []
        for rows in self._rows:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, env_id, kwargs, rows, reward, buffers, layout, check),
                               daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._recv_all()
        self._started = True

    def _recv_all(self) -> list:
        """One reply from every worker, in worker order; all are read before an error is raised, so
        no reply is left behind in a pipe."""
        replies, error = [], None
        for w in range(len(self._conns)):
            try:
                replies.append(self._recv(w))
            except EnvError as exc:   # a lost worker outranks another's error: no fallback may hide it
                if error is None or (isinstance(exc, EnvWorkerLost) and not isinstance(error, EnvWorkerLost)):
                    error = exc
        if error is not None:
            raise error
        return replies

    def _recv(self, w: int):
        try:
            status, payload = self._conns[w].recv()
        except (EOFError, OSError):
            raise self._dead(w) from None
        if status == "error":
            raise EnvError(f"env worker failed: {payload}")
        return payload

    def _send(self, w: int, message) -> None:
        try:
            self._conns[w].send(message)
        except OSError:   # BrokenPipeError, ConnectionResetError: the worker is gone
            raise self._dead(w) from None

    def _dead(self, w: int) -> EnvWorkerLost:
        """The error for worker ``w``, which is gone: how it ended, and which envs it stepped."""
        proc, rows = self._procs[w], self._rows[w]
        proc.join(timeout=2)
        code = proc.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name} (exit code {code})"
        else:
            how = f"exited with code {code}"
        message = (f"env worker {w} of {len(self._procs)} (envs {rows.start}-{rows.stop - 1} of "
                   f"{self._env_id!r}) {how}")
        if not self._started:
            message += (" while starting (when starting workers from a script, guard its entry point with "
                        "`if __name__ == '__main__':`)")
        return EnvWorkerLost(message)

    def reset(self, seeds) -> dict[str, np.ndarray]:
        seeds = np.asarray(seeds)
        for w, rows in enumerate(self._rows):
            self._send(w, ("reset", seeds[rows]))
        self._recv_all()
        return self.current()

    def current(self) -> dict[str, np.ndarray]:
        return {k: self._arrays[k].copy() for k in CURRENT}

    def snapshot(self) -> list[bytes]:
        """The envs' state, one entry per worker; see ``EnvSlice.snapshot``."""
        return self.call(_snapshot_slice, [()] * len(self._conns))

    def load_snapshot(self, parts: list[bytes]) -> None:
        if len(parts) != len(self._conns):
            raise EnvError(f"the env snapshot has {len(parts)} parts, but this run has {len(self._conns)} env "
                           f"workers")
        self.call(_load_slice, [(part,) for part in parts])

    @property
    def worker_rows(self) -> list[slice]:
        """Which envs (rows of the ``[B, ...]`` arrays) each worker steps."""
        return list(self._rows)

    def call(self, fn, args_per_worker: list[tuple]) -> list:
        """Run ``fn(env_slice, *args)`` in every worker on its own envs (an ``EnvSlice``), with that
        worker's ``args``, and return the results in worker order. ``fn`` must be a module-level
        function, since it travels to the workers by name."""
        if len(args_per_worker) != len(self._conns):
            raise ValueError(f"{len(self._conns)} workers, but arguments for {len(args_per_worker)}")
        for w, args in enumerate(args_per_worker):
            self._send(w, ("call", (fn, args)))
        return self._recv_all()

    def step(self, actions: np.ndarray, autoreset: bool = True) -> StepBatch:
        self._arrays["actions"][:] = actions
        for w in range(len(self._conns)):
            self._send(w, ("step", autoreset))
        episodes = [ep for worker_episodes in self._recv_all() for ep in worker_episodes]
        return StepBatch.copied_from(self._arrays, episodes)

    def close(self):
        for conn in self._conns:
            try:
                conn.send(("close", None))
                conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()   # it ignores SIGTERM (see _worker)


def make_vector_env(env_id: str, kwargs: dict, num_envs: int, reward: RewardSpec, workers: int = 0,
                    check: str = "first"):
    """``workers == 0`` steps envs in this process; otherwise in that many worker processes.
    ``check``: which episodes of each env are checked against the API (``TeamEnv``)."""
    if workers:
        return ProcessVectorEnv(env_id, kwargs, num_envs, reward, workers, check)
    return SyncVectorEnv(EnvSlice(env_id, kwargs, num_envs, reward, check=check))
