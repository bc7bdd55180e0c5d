"""The local backend: centralised training with decentralised execution in one process (plus
optional env worker processes).

One iteration = collect ``T = algo.rollout_steps`` steps from each of ``B = env.num_envs`` envs
(batched policy inference over envs and agents), compute advantages with the configured module
from ``algorithms/``, then update actor and critic with PPO-clip or A2C.

Episodes outlive the rollout: the envs keep running across iterations (each resets itself when
its episode ends), so ``algo.rollout_steps`` only sets how often the learner updates; the last
step of a rollout bootstraps from V of its successor. The first iteration resets every env with
seeds derived from ``(seed, iteration)``. A checkpoint holds the envs' live state (see
``marl.envs.snapshot``), so resuming reproduces an uninterrupted run exactly; for an env that cannot be
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
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from marl.envs import EnvError, RewardSpec, make_vector_env
from marl.envs.batched import BatchedVectorEnv, make_batched_env
from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint_into, save_checkpoint
from marl.config import Config
from marl.logger import RunLogger, truncate_metrics
from marl.learner import CreditLearner
from marl.rollout import Rollout, act_in_worker, collect_rollout, worker_seed


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was written at the last iteration boundary."""


class Trainer:
    """Builds envs and networks from a ``Config`` and trains them; see the module docstring."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        torch.set_num_threads(1)
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.train.device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        e, a = cfg.env, cfg.algo
        reward = RewardSpec(e.reward, e.team_reward, e.alpha, e.shaping, a.gamma)
        if e.batched:
            self.venv = BatchedVectorEnv(make_batched_env(e.id, e.kwargs, e.num_envs, cfg.train.device, cfg.seed), reward)
        else:
            self.venv = make_vector_env(e.id, e.kwargs, e.num_envs, reward, e.workers)
        v = self.venv
        self.agents, N = list(v.agents), v.n_agents
        self.learner = CreditLearner(cfg, self.agents, v.obs_dim, v.state_dim, v.n_actions,
                                     torch.from_numpy(v.action_mask), v.dynamic_mask, self.device, v.continuous)
        self.actor = self.learner.actor
        sizes = (a.rollout_steps, e.num_envs, N, v.obs_dim, v.state_dim, v.n_actions,
                 self.device if e.batched else None, v.continuous, self.actor.hidden_size)
        self.rollout = Rollout.allocate(*sizes)
        if cfg.train.async_collection:
            # The actor that collects the next rollout (the policy before the last update), and the
            # buffer it fills while the learner reads ``self.rollout``.
            self.behaviour_actor = copy.deepcopy(self.actor).requires_grad_(False)
            self._spare_rollout = Rollout.allocate(*sizes)
            self._prefetched: list[dict] | None = None   # episodes of the rollout already in self.rollout
            self._collector = ThreadPoolExecutor(1, thread_name_prefix="rollout-collector")
        self.iteration = 0
        self.env_steps = 0
        self.logger: RunLogger | None = None
        self._stop_requested = False
        self._has_true_credit: bool | None = None
        self._envs_started = False       # the envs hold live episodes (else the next collection resets them)
        self._snapshot_warned = False
        self._pending: list[dict] = []   # finished episodes not yet logged
        self.wall_s = 0.0                # training wall-clock time so far, across resumes
        # A recurrent actor's and critic's hidden states where the envs are now ([B, N, H], [B, rows, H]).
        self.actor_hidden: torch.Tensor | None = self.actor.initial_hidden(e.num_envs, device=self.device)
        self.critic_hidden: torch.Tensor | None = self.learner.critic.initial_hidden(e.num_envs, device=self.device)
        self.last_team_return: float | None = None   # of the last logged episodes

    # -- persistence ------------------------------------------------------------------------------
    @property
    def steps_per_iteration(self) -> int:
        return self.cfg.steps_per_iteration

    @property
    def total_iterations(self) -> int:
        return self.cfg.total_iterations

    def state_dict(self) -> dict:
        state = {**self.learner.state_dict(), "iteration": self.iteration, "env_steps": self.env_steps,
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "agents": self.agents, "pending_episodes": [_plain_episode(ep) for ep in self._pending],
                 "last_team_return": self.last_team_return, "wall_s": self.wall_s}
        if self.actor.recurrent:
            state["actor_hidden"], state["critic_hidden"] = self.actor_hidden.cpu(), self.critic_hidden.cpu()
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
        """The envs' live state: uint8 tensors (one per slice) of PettingZoo envs, a batched env's
        own tensors, or None (with a one-time message) when they hold no episode yet or cannot be
        snapshot."""
        if not self._envs_started:
            return None
        if self.cfg.env.batched:
            return self.venv.snapshot()
        try:
            parts = self.venv.snapshot()
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
        return [torch.frombuffer(bytearray(part), dtype=torch.uint8) for part in parts]

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self._pending = [_array_episode(ep) for ep in state.get("pending_episodes", [])]
        self.last_team_return = state.get("last_team_return")
        self.wall_s = float(state.get("wall_s", 0.0))
        if self.actor.recurrent:
            self.actor_hidden = state["actor_hidden"].to(self.device)
            self.critic_hidden = state["critic_hidden"].to(self.device)
        self._envs_started = False
        if "env_state" in state:
            envs = state["env_state"]
            try:
                self.venv.load_snapshot(envs if isinstance(envs, dict) else [part.numpy().tobytes() for part in envs])
                self._envs_started = True
            except EnvError as exc:
                print(f"[marl] the checkpoint's env state does not fit this run ({exc}); starting fresh episodes",
                      file=sys.stderr)
        if self.cfg.train.async_collection:
            self.behaviour_actor.load_state_dict(state["behaviour_actor"])
            # Without the envs' state the next rollout is collected again, by the saved behaviour actor.
            self._prefetched = None
            if self._envs_started and "prefetched_rollout" in state:
                for name, value in state["prefetched_rollout"].items():
                    getattr(self.rollout, name)[:] = value.numpy()
                self._prefetched = [_array_episode(ep) for ep in state["prefetched_episodes"]]

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        return save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())

    def restore(self) -> None:
        """Load the run directory's checkpoint and trim logs written after it."""
        load_checkpoint_into(self.load_state_dict, self.run_dir / CHECKPOINT_NAME)
        truncate_metrics(self.run_dir, self.iteration)

    # -- collection -------------------------------------------------------------------------------
    def collect(self) -> list[dict]:
        """Fill ``self.rollout`` with T steps from each env; returns the finished episodes."""
        return self._collect(self.rollout, self.actor, self.generator, self.iteration)

    def _collect(self, buf: Rollout, actor, generator: torch.Generator, iteration: int) -> list[dict]:
        """T steps from each env into ``buf``, acting with ``actor`` and continuing the envs' episodes
        (reset with the seeds of ``iteration`` if they hold none yet). With ``train.act_in_workers``
        each env worker collects its own envs' part with a copy of ``actor`` and its own action
        draws (``generator`` is then unused)."""
        if not self._envs_started:
            seeds = np.random.SeedSequence([self.cfg.seed, iteration]).generate_state(self.cfg.env.num_envs)
            self.venv.reset(int(seeds[0]) if self.cfg.env.batched else seeds)
            self._envs_started = True
        if not self.cfg.train.act_in_workers:
            episodes, self.actor_hidden = collect_rollout(self.venv, buf, actor, generator, self.actor_hidden)
            return episodes
        pickled, T = pickle.dumps(actor), self.cfg.algo.rollout_steps
        rows = self.venv.worker_rows
        hidden = None if self.actor_hidden is None else self.actor_hidden.numpy()
        parts = self.venv.call(act_in_worker, [(pickled, T, worker_seed(self.cfg.seed, iteration, w),
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
        b = self.rollout.tensors()
        if self.critic_hidden is not None:
            b["critic_h0"] = self.critic_hidden
        metrics = self.learner.update(b, self.generator)
        if self.critic_hidden is not None:
            self.critic_hidden = self.learner.critic_h_final   # where the next rollout's critic starts
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
        seed = np.random.SeedSequence([self.cfg.seed, iteration, 1]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))

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
        """``CreditLearner.prepare`` on ``b`` (moved to the learner's device), e.g. for credit views."""
        b = {k: v.to(self.device) for k, v in b.items()}
        return self.learner.prepare(b, generator or self.generator)

    # -- the loop ---------------------------------------------------------------------------------
    def _episode_metrics(self, episodes: list[dict]) -> dict:
        """Means over the episodes that finished since the last log; only ``episodes: 0`` when none did."""
        if not episodes:
            return {"episodes": 0}
        raw = np.stack([ep["raw_return"] for ep in episodes])
        moded = np.stack([ep["return"] for ep in episodes])
        out = {"team_return": float(raw.sum(1).mean()), "episodes": len(episodes),
               "episode_length": float(np.mean([ep["length"] for ep in episodes]))}
        for i, ag in enumerate(self.agents):
            out[f"return/{ag}"] = float(raw[:, i].mean())
            out[f"reward_return/{ag}"] = float(moded[:, i].mean())
        return out

    def _credit_views(self) -> dict:
        """Histograms and heatmaps go straight to TensorBoard; returns the fidelity scalars (on
        envs with ``true_credit``) for the metrics record."""
        from marl.credit import credit_fidelity, credit_heatmap, episode_credit
        from marl.evaluate import EVAL_SEED_OFFSET

        log, it, step = self.cfg.log, self.iteration, self.env_steps
        if log.histogram_every and it % log.histogram_every == 0 and self.learner.last_advantage is not None:
            for agent, values in zip(self.agents, self.learner.last_advantage):
                if values.numel():
                    self.logger.log_histogram(f"credit/adv_hist/{agent}", values, step)
        if log.credit_image_every and (it % log.credit_image_every == 0 or it == 1) and self.has_pettingzoo_env:
            ep = episode_credit(self, seed=EVAL_SEED_OFFSET + it)
            title = f"{self.cfg.algo.advantage} credit at {step:,} env steps"
            self.logger.writer.add_figure("credit/heatmap", credit_heatmap(ep["advantage"], ep["raw_reward"],
                                                                           self.agents, title), step)
        out = {}
        if log.fidelity_every and it % log.fidelity_every == 0 and self.has_true_credit:
            score = credit_fidelity(self, log.fidelity_episodes, seed=it)
            out = {f"credit_fidelity/{k}": v for k, v in score.items() if k not in ("episodes", "behaviour")}
        return out

    def _periodic_evaluation(self) -> dict:
        """``eval/team_return`` (and its std and per-agent returns) every ``train.eval_every``
        iterations and at the last, from greedy episodes on the same seeds each time."""
        t = self.cfg.train
        if not t.eval_every or (self.iteration % t.eval_every and self.iteration != self.total_iterations):
            return {}
        from marl.evaluate import evaluate_batched, evaluator

        # batched runs evaluate on their batched env (fast), others on the PettingZoo env
        run = evaluate_batched if self.cfg.env.batched else evaluator(self.cfg)
        result = run(self.actor, self.cfg.env.id, self.cfg.env.kwargs, t.eval_every_episodes, seed=self.cfg.seed)
        out = {"eval/team_return": result["team_return_mean"], "eval/team_return_std": result["team_return_std"]}
        out.update({f"eval/{k}": v for k, v in result.items() if k.startswith("return/")})
        return out

    @property
    def has_pettingzoo_env(self) -> bool:
        """The credit views play single episodes on the PettingZoo env: every run has one but a run on
        a batched simulator without a PettingZoo twin."""
        from marl.envs.batched import TWINS
        return not self.cfg.env.batched or self.cfg.env.id in TWINS

    @property
    def has_true_credit(self) -> bool:
        if not self.has_pettingzoo_env:
            return False
        if self._has_true_credit is None:
            from marl.envs import make_parallel_env
            env = make_parallel_env(self.cfg.env.id, self.cfg.env.kwargs)
            self._has_true_credit = hasattr(env.unwrapped, "true_credit")
            env.close()
        return self._has_true_credit

    def _request_stop(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True

    def train(self, progress: bool | None = None) -> dict:
        """Run to ``train.total_env_steps``. Returns a summary dict.

        Ctrl-C finishes the current iteration, writes a checkpoint and raises
        ``TrainingInterrupted``; a second Ctrl-C stops at once.
        """
        cfg = self.cfg
        progress = cfg.train.progress if progress is None else progress
        if self.run_dir is not None and self.logger is None:
            self.logger = RunLogger(self.run_dir, self.agents, purge_step=self.env_steps + 1 if self.iteration else None)
            if self.iteration == 0:
                self.logger.log_text("config", "```\n" + cfg.to_yaml() + "\n```")
                self.logger.log_custom_layout()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_iterations * self.steps_per_iteration, initial=self.env_steps,
                       unit="step", dynamic_ncols=True, desc="train")
        previous = signal.signal(signal.SIGINT, self._request_stop) if _main_thread() else None
        start, start_steps = time.perf_counter(), self.env_steps
        try:
            while self.iteration < self.total_iterations:
                if self._stop_requested:
                    self.save()
                    raise TrainingInterrupted(f"interrupted at {self.env_steps} env steps")
                t0 = time.perf_counter()
                outcome = self.run_iteration()
                if outcome is None:
                    continue
                steps, episodes, metrics, update_s = outcome
                wall = time.perf_counter() - t0
                self.wall_s += wall
                self.iteration += 1
                self.env_steps += steps
                self._pending.extend(episodes)
                if self.iteration % cfg.train.log_every == 0 or self.iteration == self.total_iterations:
                    metrics.update(self._episode_metrics(self._pending))
                    self._pending = []
                    if "team_return" in metrics:
                        self.last_team_return = metrics["team_return"]
                    metrics.update({"iteration": self.iteration, "env_steps": self.env_steps,
                                    "perf/env_steps_per_s": steps / wall, "perf/collect_s": wall - update_s,
                                    "perf/update_s": update_s, "perf/wall_s": self.wall_s})
                    metrics.update(self._periodic_evaluation())
                    if self.logger is not None:
                        metrics.update(self._credit_views())
                        self.logger.log(metrics, self.env_steps)
                if self.iteration % cfg.train.checkpoint_every == 0:
                    self.save()
                if bar is not None:
                    bar.update(steps)
                    postfix = {"sps": f"{(self.env_steps - start_steps) / (time.perf_counter() - start):.0f}"}
                    if self.last_team_return is not None:
                        postfix["ret"] = f"{self.last_team_return:.2f}"
                    bar.set_postfix(postfix)
            self.save()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
            if self.logger is not None:
                self.logger.flush()
        wall = time.perf_counter() - start
        return {"env_steps": self.env_steps, "wall_s": wall,
                "env_steps_per_s": (self.env_steps - start_steps) / max(wall, 1e-9),
                "team_return": self.last_team_return, "run_dir": str(self.run_dir) if self.run_dir else None}

    def close(self) -> None:
        if self.cfg.train.async_collection:
            self._collector.shutdown()
        self.venv.close()
        if self.logger is not None:
            self.logger.close()
            self.logger = None


def _plain_episode(ep: dict) -> dict:
    """A finished-episode record with lists instead of arrays (checkpoints load with weights_only)."""
    return {**ep, "raw_return": np.asarray(ep["raw_return"]).tolist(), "return": np.asarray(ep["return"]).tolist()}


def _array_episode(ep: dict) -> dict:
    return {**ep, "raw_return": np.asarray(ep["raw_return"]), "return": np.asarray(ep["return"])}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
