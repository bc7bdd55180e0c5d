"""``RLlibTrainer``: the same run directory, metrics, progress bar, checkpoints and Ctrl-C handling
as the local ``Trainer``, with sampling and learning done by RLlib (see ``marl/rllib/__init__.py``).

The driver keeps a ``CreditLearner`` mirror of the RLlib Learner's state: ``actor`` (used by the
final evaluation), the critic and value normaliser (used by the credit heatmaps and fidelity
scores), and the optimiser state. It is refreshed from the Learner before every checkpoint and
credit view, so ``checkpoint.pt`` has exactly the local backend's format and ``marl eval``,
``marl credit``, ``marl.run.load_actor`` and ``load_trainer`` work on RLlib runs unchanged.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from marl import seeding
from marl.config import Config, ConfigError
from marl.learner import TrainingDiverged
from marl.learners import EnvShape, build_learner
from marl.loop import TrainingLoop

FAULTS_NAME = "env_faults.jsonl"
MAX_EMPTY_ITERATIONS = 20
NOT_REPRODUCIBLE = ("rllib backend: runs are not reproducible from a seed (EnvRunners sample with RNGs no "
                    "checkpoint holds and finish in varying order); for exact, seeded runs use backend: local")
INEXACT_RESUME = ("rllib backend: checkpoints hold the networks, the optimiser, the value normaliser and the "
                  "counters, but not the episodes in flight on RLlib's EnvRunners; a run resumed from a checkpoint "
                  "starts fresh episodes there, so it does not reproduce an uninterrupted run exactly (the local "
                  "backend does)")


def start_ray(cfg: Config) -> bool:
    """Start a local Ray instance (``rllib.num_cpus`` CPUs) or join ``rllib.address``; returns
    False when Ray is already initialised in this process (then the caller must not shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    r = cfg.rllib
    # Workers import the project from the installed package; the working directory is added so
    # that env ids naming modules there (``tests.custom_env:make``) import in workers too.
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    if r.address:
        try:
            ray.init(address=r.address, **kwargs)
        except ConnectionError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(f"config key 'rllib.address': no Ray cluster answers at {r.address!r} ({reason}); "
                              f"start one with `ray start --head`, set RAY_AUTH_MODE=token if it uses token "
                              f"authentication (see docs/rllib.md), or leave rllib.address empty for a local "
                              f"instance") from None
    else:
        ray.init(num_cpus=r.num_cpus, **kwargs)
    return True


def _results(call_results) -> list:
    """Values of a ``foreach_learner`` call; re-raises a Learner's error."""
    out = []
    for res in call_results:
        if not res.ok:
            raise res.get()
        out.append(res.get())
    return out


class RLlibTrainer(TrainingLoop):
    """The RLlib backend of the training loop (``marl.loop``): one iteration is one
    ``Algorithm.train()`` call; ``learner`` is the driver's mirror of the RLlib Learner."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        torch.set_num_threads(1)
        super().__init__(cfg, run_dir)
        seeding.seed_init(cfg.seed)
        self.device = torch.device("cpu")
        self.generator = seeding.torch_stream(cfg.seed)   # the learner stream
        from marl.rllib.algorithm import env_spec

        self._spec = env_spec(cfg)
        self.agents = self._spec["agents"]
        # Built like the local trainer's, so both backends start from the same weights.
        spec = self._spec
        self.learner = build_learner(cfg, EnvShape(self.agents, spec["obs_dim"], spec["state_dim"], spec["n_actions"],
                                                   torch.from_numpy(spec["action_mask"]), spec["dynamic_mask"],
                                                   spec["continuous"]))
        self.actor = self.learner.actor
        self._learner_generator: torch.Tensor | None = None
        self.fault_log = (self.run_dir.resolve() / FAULTS_NAME) if self.run_dir is not None else None
        self._faults_seen = len(self._fault_records())  # a resumed run reports only new ones
        self._restarts_seen = 0
        self._update_s = 0.0
        self._empty_iterations = 0
        self.algo = None
        self._algo_logdir: str | None = None
        self._results_root_existed = True
        self._resume_noted = False   # INEXACT_RESUME is said once per run (at its first checkpoint or its resume)
        if cfg.train.progress:
            r = cfg.rllib
            where = f"the Ray cluster at {r.address}" if r.address else f"a local Ray instance ({r.num_cpus} CPUs)"
            print(f"rllib backend: {where}, {r.num_env_runners} EnvRunners x {r.num_envs_per_env_runner} envs, "
                  f"{r.num_learners} Learner workers", file=sys.stderr)
        print(f"[marl] {NOT_REPRODUCIBLE}", file=sys.stderr)
        self._owns_ray = start_ray(cfg)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        from ray.train.constants import DEFAULT_STORAGE_PATH

        from marl.rllib.algorithm import build_config, register_env

        register_env()
        config = build_config(self.cfg, **self._spec, fault_log=str(self.fault_log) if self.fault_log else None)
        self._results_root_existed = os.path.isdir(DEFAULT_STORAGE_PATH)
        self.algo = config.build_algo()
        self._algo_logdir = self.algo.logdir  # RLlib's Trainable makes one under ~/ray_results
        self._push_state(self.learner.state_dict())
        # RLlib's own timers are smoothed over iterations; time the Learner update exactly.
        update = self.algo.learner_group.update

        def timed_update(*args, **kwargs):
            start = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                self._update_s += time.perf_counter() - start

        self.algo.learner_group.update = timed_update

    # -- state between the driver's mirror and the RLlib Learner(s) ----------------------------------
    def _pull_state(self) -> None:
        """Refresh the driver's ``CreditLearner`` (and so ``actor``) from the Learner."""
        state = _results(self.algo.learner_group.foreach_learner(lambda learner: learner.marl_state()))[0]
        state = copy.deepcopy(state)  # a local Learner hands out its live tensors
        self._learner_generator = state.pop("learner_generator")
        self.learner.load_state_dict(state)

    def _push_state(self, state: dict) -> None:
        """Load a local-format state into every Learner and the actor into every EnvRunner."""
        from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE

        from marl.rllib.module import MODULE_ID

        _results(self.algo.learner_group.foreach_learner(lambda learner, s=state: learner.marl_load_state(s)))
        weights = self.algo.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{MODULE_ID}",
            inference_only=True)[COMPONENT_LEARNER][COMPONENT_RL_MODULE]
        # EnvRunners only take weights newer than theirs from a regular sync; set them directly.
        self.algo.env_runner_group.foreach_env_runner(
            lambda runner, w=weights: runner.set_state({COMPONENT_RL_MODULE: w}), local_env_runner=True)

    def sync_learner(self) -> None:
        """Checkpoints and credit views read the driver's copy of the Learner's state."""
        self._pull_state()

    def backend_state(self) -> dict:
        """The local backend's format (``marl.trainer.Trainer.backend_state`` without envs: RLlib's
        EnvRunners hold the episodes, so a resumed run starts fresh ones), plus the Learner's
        generator."""
        self._note_inexact_resume()
        state = {**self.learner.state_dict(), "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if self._learner_generator is not None:
            state["learner_generator"] = self._learner_generator
        return state

    def load_backend_state(self, state: dict) -> None:
        self._note_inexact_resume()
        self.learner.load_state_dict(state)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self._push_state(state)

    def _note_inexact_resume(self) -> None:
        """Say once per run, at its first checkpoint or at its resume, what resuming does here."""
        if self._resume_noted:
            return
        self._resume_noted = True
        print(f"[marl] {INEXACT_RESUME}", file=sys.stderr)
        if self.logger is not None:
            self.logger.log_text("warnings", INEXACT_RESUME, self.env_steps)

    def prepare(self, b: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        """``CreditLearner.prepare`` with the driver's copy of the networks (the credit views)."""
        return self.learner.prepare(b, generator or self.generator)

    # -- one iteration ---------------------------------------------------------------------------
    def _train_once(self) -> dict:
        try:
            return self.algo.train()
        except Exception as exc:
            # A remote Learner's error arrives as a RayTaskError (a subclass of the original type
            # whose message starts with Ray's task header); raise our own error with our message.
            if isinstance(exc, TrainingDiverged) or isinstance(getattr(exc, "cause", None), TrainingDiverged):
                if type(exc) is TrainingDiverged:
                    raise
                cause = getattr(exc, "cause", None)
                message = str(cause) if isinstance(cause, TrainingDiverged) else str(exc).strip().splitlines()[-1]
                raise TrainingDiverged(message) from None
            raise

    def _learner_metrics(self, result: dict) -> tuple[dict, bool]:
        from marl.rllib.learner import STATS_KEY
        from marl.rllib.module import MODULE_ID

        records = result.get("learners", {}).get(MODULE_ID, {}).get(STATS_KEY)
        if isinstance(records, dict):  # one Learner: RLlib unwraps the single item
            records = [records]
        if not isinstance(records, list) or not records:
            return {}, False
        hist = [r.pop("credit/adv_hist") for r in records if "credit/adv_hist" in r]
        metrics = {k: float(np.mean([r[k] for r in records if k in r])) for k in records[0] if k != "updates"}
        self.learner.last_advantage = [torch.from_numpy(np.concatenate([h[agent] for h in hist])) for agent in self.agents] \
            if hist else None
        return metrics, True

    @staticmethod
    def _episodes(result: dict) -> list[dict]:
        from marl.rllib.callbacks import EPISODES_KEY

        records = result.get("env_runners", {}).get(EPISODES_KEY)
        if not isinstance(records, list):
            return []
        return [{"raw_return": np.asarray(r["raw_return"]), "return": np.asarray(r["return"]), "length": r["length"]}
                for r in records]

    def _fault_records(self) -> list[dict]:
        if self.fault_log is None or not self.fault_log.exists():
            return []
        return [json.loads(line) for line in self.fault_log.read_text().splitlines() if line.strip()]

    def _faults(self) -> dict:
        """Report EnvRunner crashes (cause from ``env_faults.jsonl``) and restarts, once each."""
        group = self.algo.env_runner_group
        restarts = group.num_remote_worker_restarts()
        records = self._fault_records()
        new = records[self._faults_seen:]
        if new or restarts > self._restarts_seen:
            lines = [f"EnvRunner {r['worker_index']} (pid {r['pid']} on {r['host']}) failed in env.{r['where']} at "
                     f"its step {r['env_step']}: {r['error']}" for r in new]
            lines.append(f"EnvRunner restarts so far: {restarts}; healthy EnvRunners: "
                         f"{group.num_healthy_remote_workers()}/{self.cfg.rllib.num_env_runners}")
            text = "\n".join(lines)
            print(f"\n[marl] {text}", file=sys.stderr)
            if self.logger is not None:
                self.logger.log_text("faults", "\n\n".join(lines + [f"```\n{r['traceback']}```" for r in new]),
                                     self.env_steps)
        self._faults_seen, self._restarts_seen = len(records), restarts
        if not self.cfg.rllib.num_env_runners:
            return {}
        return {"faults/env_failures": len(records), "faults/env_runner_restarts": restarts,
                "faults/healthy_env_runners": group.num_healthy_remote_workers()}

    # -- the loop (Trainer.train drives it) -------------------------------------------------------
    def run_iteration(self) -> tuple[int, list[dict], dict, float] | None:
        """One ``Algorithm.train()``; None (retry, not counted) when no EnvRunner delivered data."""
        self._update_s = 0.0
        result = self._train_once()
        metrics, updated = self._learner_metrics(result)
        steps = int(result.get("env_runners", {}).get("num_env_steps_sampled", 0) or 0)
        faults = self._faults()
        if not updated or not steps:
            self._empty_iterations += 1
            if self._empty_iterations >= MAX_EMPTY_ITERATIONS:
                raise RuntimeError(f"no EnvRunner delivered samples in {self._empty_iterations} attempts; see "
                                   f"{self.fault_log or 'the Ray worker logs'}")
            return None
        self._empty_iterations = 0
        metrics.update(faults)
        return steps, self._episodes(result), metrics, self._update_s

    def close(self) -> None:
        if self.algo is not None:
            self.algo.stop()
            self.algo = None
        if self._owns_ray:
            import ray
            ray.shutdown()
            self._owns_ray = False
        if self._algo_logdir:
            shutil.rmtree(self._algo_logdir, ignore_errors=True)
            if not self._results_root_existed:
                try:
                    os.rmdir(os.path.dirname(self._algo_logdir))
                except OSError:
                    pass
            self._algo_logdir = None
        super().close()
