"""The local backend: centralised training with decentralised execution in one process (plus
optional env worker processes).

One iteration = collect ``T = cfg.rollout_length`` steps (the learner's ask: ``algo.rollout_steps``)
from each of ``B = env.num_envs`` envs (batched policy inference over envs and agents), then hand
the batch to the learner (``marl.learners``), which computes its credit and updates.

Episodes outlive the rollout: the envs keep running across iterations (each resets itself when
its episode ends), so ``T`` only sets how often the learner updates; the last step of a rollout
bootstraps from its successor. The envs are the run's ``marl.env_backend.EnvBackend``: the first
iteration resets them with seeds derived from ``(seed, iteration)``, and a checkpoint holds their
live state, so resuming reproduces an uninterrupted run exactly; for an env that cannot be
snapshot, the first checkpoint says so and a resumed run starts fresh episodes.

With ``train.async_collection`` (env workers only) the rollout of iteration k+1 is collected in a
background thread, by a copy of the actor taken before update k, while update k runs; its action
draws come from a generator seeded by ``(seed, iteration)``, so a checkpoint holds that copy and
resuming collects the same rollout again.

With ``train.act_in_workers`` each env worker collects its own envs' part of the rollout with a
copy of the actor (inference batched over its own envs and agents, action draws seeded by
``(seed, iteration, worker)``), so the workers need not meet the learner at every step.
"""
from __future__ import annotations

import copy
import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import torch

from marl import seeding
from marl.config import Config
from marl.envs import EnvError, EnvWorkerLost
from marl.learners import EnvShape, build_learner
from marl.loop import TrainingInterrupted, TrainingLoop, _array_episode, _plain_episode
from marl.resim import StateRecorder
from marl.rollout import Rollout, act_in_worker, collect_rollout

__all__ = ["Trainer", "TrainingInterrupted"]


class Trainer(TrainingLoop):
    """The local backend of the training loop: builds envs and networks from a ``Config`` and
    collects and updates in this process (see the module docstring and ``marl.loop``)."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        torch.set_num_threads(1)
        super().__init__(cfg, run_dir)
        seeding.seed_init(cfg.seed)
        self.device = torch.device(cfg.train.device)
        self.generator = seeding.torch_stream(cfg.seed, self.device)   # the learner stream
        e, a = cfg.env, cfg.algo
        v = self.envs.open()
        self.agents, N = list(v.agents), v.n_agents
        self.learner = build_learner(cfg, EnvShape.of(v), self.device)
        self.actor = self.learner.actor
        sizes = (cfg.rollout_length, e.num_envs, N, v.obs_dim, v.state_dim, v.n_actions,
                 self.envs.device, v.continuous, self.actor.hidden_size, v.obs_dtype, v.state_dtype)
        self.rollout = Rollout.allocate(*sizes)
        if cfg.train.async_collection:
            # The actor that collects the next rollout (the policy before the last update), and the
            # buffer it fills while the learner reads ``self.rollout``.
            self.behaviour_actor = copy.deepcopy(self.actor).requires_grad_(False)
            self._spare_rollout = Rollout.allocate(*sizes)
            self._prefetched: list[dict] | None = None   # episodes of the rollout already in self.rollout
            self._collector = ThreadPoolExecutor(1, thread_name_prefix="rollout-collector")
        self._snapshot_warned = False
        self.redistribution = None
        if a.redistribution != "none":
            from marl.redistribute import OnlineRedistribution
            self.redistribution = OnlineRedistribution(cfg, N, v.obs_dim, v.state_dim, v.n_actions, v.continuous,
                                                       e.num_envs)
        self.difference = None   # env.difference: reward_model (the env then pays the shared team reward)
        if e.reward == "difference" and e.difference == "reward_model":
            from marl.redistribute import OnlineDifference
            self.difference = OnlineDifference(cfg, N, v.state_dim, v.n_actions, v.continuous, self.device)
        # A recurrent actor's hidden state where the envs are now ([B, N, H]; the learner keeps its critic's).
        self.actor_hidden: torch.Tensor | None = self.actor.initial_hidden(e.num_envs, device=self.device)

    @property
    def venv(self):
        """The vector env the rollouts are collected from (``self.envs.open()``'s)."""
        return self.envs.venv

    # -- persistence ------------------------------------------------------------------------------
    def backend_state(self) -> dict:
        """The learner, the generators, the envs' live state and, where used, the hidden states and
        the asynchronously collected rollout (``marl.loop`` adds the counters)."""
        state = {**self.learner.state_dict(), "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if self.actor.recurrent:
            state["actor_hidden"] = self.actor_hidden.cpu()
        if self.redistribution is not None:
            state["redistribution"] = self.redistribution.state_dict()
        if self.difference is not None:
            state["difference_model"] = self.difference.state_dict()
        envs = self._env_snapshot()
        if envs is not None:
            state["env_state"] = envs
        if self.cfg.train.async_collection:
            state["behaviour_actor"] = self.behaviour_actor.state_dict()
            if envs is not None and self._prefetched is not None:   # the rollout collected ahead
                state["prefetched_rollout"] = {k: v.clone() for k, v in self.rollout.tensors().items()}
                state["prefetched_episodes"] = [_plain_episode(ep) for ep in self._prefetched]
        return state

    def _env_snapshot(self) -> list[torch.Tensor] | dict[str, torch.Tensor] | None:
        """``EnvBackend.snapshot``, or None (with a one-time message) for envs whose state cannot be
        saved; a lost env worker fails the save."""
        try:
            return self.envs.snapshot()
        except EnvWorkerLost:   # not an env that cannot be snapshot: the save fails, the last checkpoint stands
            raise
        except EnvError as exc:
            if not self._snapshot_warned:
                self._snapshot_warned = True
                message = (f"env {self.cfg.env.id!r}: its live state cannot be saved in checkpoints ({exc}); a run "
                           f"resumed from a checkpoint starts fresh episodes there, so it will not reproduce an "
                           f"uninterrupted run exactly")
                print(f"[marl] {message}", file=sys.stderr)
                if self.logger is not None:
                    self.logger.log_text("warnings", message, self.env_steps)
            return None

    def load_backend_state(self, state: dict) -> None:
        self.learner.load_state_dict(state)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.redistribution is not None:
            self.redistribution.load_state_dict(state["redistribution"])
        if self.difference is not None:
            self.difference.load_state_dict(state["difference_model"])
        if self.actor.recurrent:
            self.actor_hidden = state["actor_hidden"].to(self.device)
        self.envs.started = False
        if "env_state" in state:
            try:
                self.envs.restore(state["env_state"])
            except EnvWorkerLost:
                raise
            except EnvError as exc:
                print(f"[marl] the checkpoint's env state does not fit this run ({exc}); starting fresh episodes",
                      file=sys.stderr)
        if self.cfg.train.async_collection:
            self.behaviour_actor.load_state_dict(state["behaviour_actor"])
            # Without the envs' state the next rollout is collected again, by the saved behaviour actor.
            self._prefetched = None
            if self.envs.started and "prefetched_rollout" in state:
                for name, value in state["prefetched_rollout"].items():
                    getattr(self.rollout, name)[:] = value.numpy()
                self._prefetched = [_array_episode(ep) for ep in state["prefetched_episodes"]]

    # -- collection -------------------------------------------------------------------------------
    def collect(self) -> list[dict]:
        """Fill ``self.rollout`` with T steps from each env; returns the finished episodes."""
        return self._collect(self.rollout, self.actor, self.generator, self.iteration)

    def _collect(self, buf: Rollout, actor, generator: torch.Generator, iteration: int) -> list[dict]:
        """T steps from each env into ``buf``, acting with ``actor`` and continuing the envs' episodes
        (reset with the seeds of ``iteration`` if they hold none yet). With ``train.act_in_workers``
        each env worker collects its own envs' part with a copy of ``actor`` and its own action
        draws (``generator`` is then unused)."""
        self.envs.start(iteration)
        if not self.cfg.train.act_in_workers:
            episodes, self.actor_hidden = collect_rollout(self.venv, buf, actor, generator, self.actor_hidden)
            return episodes
        pickled, T = pickle.dumps(actor), self.cfg.rollout_length
        rows = self.venv.worker_rows
        hidden = None if self.actor_hidden is None else self.actor_hidden.numpy()
        parts = self.venv.call(act_in_worker, [(pickled, T, seeding.worker_actions_seed(self.cfg.seed, iteration, w),
                                                None if hidden is None else hidden[r])
                                               for w, r in enumerate(rows)])
        episodes = []
        for r, (arrays, worker_episodes, last_hidden) in zip(rows, parts):
            for name, part in arrays.items():
                getattr(buf, name)[:, r] = part
            episodes.extend({**ep, "env": ep["env"] + r.start} for ep in worker_episodes)
            if last_hidden is not None:
                self.actor_hidden[r] = torch.from_numpy(last_hidden)
        return episodes

    def update(self) -> dict:
        # On the learner's device: a PettingZoo rollout is stored on the CPU whatever train.device is.
        b = {k: v.to(self.device) for k, v in self.rollout.tensors().items()}
        if isinstance(self.venv, StateRecorder):
            b.update(self.venv.take())
        extra = {}
        # a learned reward the learner trains on: redistributed dense rewards, or learned difference rewards
        learned = self.redistribution if self.redistribution is not None else self.difference
        if learned is not None:
            reward, extra = learned.process(b)
            b["reward"] = reward.to(self.device)
        metrics = self.learner.update(b, self.generator)
        metrics.update(extra)
        return metrics

    def run_iteration(self) -> tuple[int, list[dict], dict, float] | None:
        """One iteration: ``(env steps, finished episodes, metrics, update seconds)``, or None when
        nothing was learned and the iteration should be retried (a backend hook)."""
        if self.cfg.train.async_collection:
            return self._run_iteration_async()
        episodes = self.collect()
        t0 = time.perf_counter()
        metrics = self.update()
        return self.steps_per_iteration, episodes, metrics, time.perf_counter() - t0

    def _collection_generator(self, iteration: int) -> torch.Generator:
        """The action-sampling generator of an asynchronously collected rollout."""
        return seeding.torch_stream(seeding.async_actions_seed(self.cfg.seed, iteration))

    def _run_iteration_async(self) -> tuple[int, list[dict], dict, float]:
        """Update on this iteration's rollout while a background thread collects the next one with
        the actor as it is before this update (see the module docstring)."""
        if self._prefetched is None:   # the first iteration, or just resumed
            self._prefetched = self._collect(self.rollout, self.behaviour_actor,
                                             self._collection_generator(self.iteration), self.iteration)
        episodes, self._prefetched = self._prefetched, None
        self.behaviour_actor.load_state_dict(self.actor.state_dict())
        following = self.iteration + 1
        collecting = None
        if following < self.total_iterations:
            collecting = self._collector.submit(self._collect, self._spare_rollout, self.behaviour_actor,
                                                self._collection_generator(following), following)
        t0 = time.perf_counter()
        try:
            metrics = self.update()
            update_s = time.perf_counter() - t0   # the update alone, not the wait for the collector
        finally:
            if collecting is not None:   # never leave the collection running, not even on an error
                wait([collecting])
        if collecting is not None:
            self._prefetched = collecting.result()   # re-raises an error of the collection
            self.rollout, self._spare_rollout = self._spare_rollout, self.rollout
        return self.steps_per_iteration, episodes, metrics, update_s

    def prepare(self, b: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        """``CreditLearner.prepare`` on ``b`` (moved to the learner's device), e.g. for credit views;
        with learned difference rewards, on the model's ``D̂`` rather than the env's shared reward."""
        b = {k: v.to(self.device) for k, v in b.items()}
        if self.difference is not None:
            b["reward"] = self.difference.rewards(b)
        return self.learner.prepare(b, generator or self.generator)

    def close(self) -> None:
        if self.cfg.train.async_collection:
            self._collector.shutdown()
        self.envs.close()
        super().close()


