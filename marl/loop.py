"""The training loop both backends share: signals, progress bar, logging, checkpoints, periodic
evaluation, the credit-view schedule and the run's counters.

``TrainingLoop`` is a base class with a small protocol for backends (the template-method pattern
of SB3's ``OnPolicyAlgorithm``): a backend sets ``agents``, ``actor``, ``learner`` (a
``CreditLearner``, or a mirror of one, for the credit views and checkpoints) and ``device``, then
implements

- ``run_iteration() -> (env steps, finished episodes, metrics, update seconds) | None`` (None: no
  data this time, retry),
- ``backend_state() -> dict`` and ``load_backend_state(state)``: its part of a checkpoint,
- ``prepare(batch, generator)``: advantages for the credit views,
- ``close()`` (calling ``super().close()``),

and may override ``sync_learner()``, called before a checkpoint or a credit view reads
``learner`` (the RLlib backend pulls the Learner's state there). ``marl.trainer.Trainer`` is the
local backend, ``marl.rllib.trainer.RLlibTrainer`` the RLlib one.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from marl.checkpoint import (CHECKPOINT_NAME, TRUST_FLAG, CheckpointError, first_changed_setting, load_checkpoint_into,
                             save_checkpoint, settings_fingerprint, sign_parts, signature_ok)
from marl.config import Config
from marl.env_backend import EnvBackend
from marl.logger import RunLogger, truncate_metrics

# Ctrl-C, and what Slurm pre-emption, `docker stop`, `timeout` (SIGTERM) and a closed terminal (SIGHUP) send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What a checkpoint's pickled env state may do on load: "verify" its signature first, "trust" it, or
# "skip" it (the networks and counters only; the envs start fresh episodes).
ENV_STATE_POLICIES = ("verify", "trust", "skip")


class TrainingInterrupted(RuntimeError):
    """A stop signal: the run saved a checkpoint at an iteration boundary (``saved``), or a second
    signal abandoned the iteration and the last checkpoint on disk stands."""

    def __init__(self, message: str, saved: bool = True):
        super().__init__(message)
        self.saved = saved


class TrainingLoop:
    """Runs a backend to ``train.total_env_steps``; see the module docstring."""

    agents: list[str]

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.envs = EnvBackend(cfg)      # the local backend opens its envs; RLlib's EnvRunners step their own
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.iteration = 0
        self.env_steps = 0
        self.logger: RunLogger | None = None
        self.wall_s = 0.0                # training wall-clock time so far, across resumes
        self.last_team_return: float | None = None   # of the last logged episodes
        self._pending: list[dict] = []   # finished episodes not yet logged
        self._stop_requested = False
        self._held_handlers: dict = {}   # signal handlers to restore in close() after a stop
        self._stop_signal = signal.SIGINT
        self._saving = False
        self.saved_iteration: int | None = None   # the iteration of the checkpoint on disk
        self.resumed = False             # restored from the run directory (its checkpoint, or none yet)
        self.run_lock = None             # the run directory's lock (``marl.run``), released by ``close``
        self._has_true_credit: bool | None = None

    # -- the backend protocol -------------------------------------------------------------------
    def run_iteration(self) -> tuple[int, list[dict], dict, float] | None:
        raise NotImplementedError

    def backend_state(self) -> dict:
        raise NotImplementedError

    def load_backend_state(self, state: dict) -> None:
        raise NotImplementedError

    def prepare(self, b: dict, generator=None) -> dict:
        raise NotImplementedError

    def sync_learner(self) -> None:
        """Bring ``learner`` up to date before it is read (a no-op where it is the live learner)."""

    # -- persistence ------------------------------------------------------------------------------
    @property
    def steps_per_iteration(self) -> int:
        return self.cfg.steps_per_iteration

    @property
    def total_iterations(self) -> int:
        return self.cfg.total_iterations

    def state_dict(self) -> dict:
        """The checkpoint: the loop's counters and episode bookkeeping, the backend's state, the
        fingerprint of the settings that shape it, and the signature of pickled env state."""
        state = {**self.backend_state(), "iteration": self.iteration, "env_steps": self.env_steps,
                 "agents": self.agents, "pending_episodes": [_plain_episode(ep) for ep in self._pending],
                 "last_team_return": self.last_team_return, "wall_s": self.wall_s,
                 "settings": settings_fingerprint(self.cfg)}
        if isinstance(state.get("env_state"), list):   # pickles (a batched env's state is plain tensors)
            state["env_state_hmac"] = sign_parts(_env_parts(state["env_state"]))
        return state

    def load_state_dict(self, state: dict, env_state: str = "skip") -> None:
        """Load a checkpoint; ``env_state`` (one of ``ENV_STATE_POLICIES``) says what may happen to
        its pickled env state. Only a resume restores it: anything else reads networks and counters.

        Raises:
            CheckpointError: under "verify", for env state this user's key did not sign.
        """
        state = dict(state)
        if env_state == "skip":
            for key in ("env_state", "prefetched_rollout", "prefetched_episodes"):
                state.pop(key, None)
        elif env_state == "verify" and isinstance(state.get("env_state"), list) and not signature_ok(
                _env_parts(state["env_state"]), state.get("env_state_hmac")):
            where = self.run_dir / CHECKPOINT_NAME if self.run_dir else "the checkpoint"
            raise CheckpointError(f"the env state in {where} is not signed by this user's key (a checkpoint from "
                                  f"another user or machine, or tampered with) and unpickling it could run code; "
                                  f"resume with {TRUST_FLAG} only if you trust where it came from")
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self._pending = [_array_episode(ep) for ep in state.get("pending_episodes", [])]
        self.last_team_return = state.get("last_team_return")
        self.wall_s = float(state.get("wall_s", 0.0))
        self.load_backend_state(state)

    def save(self) -> Path | None:
        """Write the checkpoint; a stop signal meanwhile waits for it (see ``_request_stop``)."""
        if self.run_dir is None:
            return None
        self._saving = True
        try:
            self.sync_learner()
            path = save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())
        finally:
            self._saving = False
        self.saved_iteration = self.iteration
        return path

    def restore(self, trust_env_state: bool = False) -> None:
        """Load the run directory's checkpoint (its env state only if signed by this user's key, or
        ``trust_env_state``) and trim logs written after it. A run stopped before its first
        checkpoint starts again from the beginning."""
        path = self.run_dir / CHECKPOINT_NAME
        if path.is_file():
            policy = "trust" if trust_env_state else "verify"
            load_checkpoint_into(lambda state: self._load_resumed(state, policy), path)
            self.saved_iteration = self.iteration
        else:
            print(f"[marl] {self.run_dir} has no checkpoint yet (stopped before the first one): starting it from "
                  f"the beginning", file=sys.stderr)
        self.resumed = True
        truncate_metrics(self.run_dir, self.iteration)

    def _load_resumed(self, state: dict, policy: str) -> None:
        """Refuse a checkpoint written under other state-shaping settings than the run's config now
        names (e.g. ``config.yaml`` edited by hand), then load it."""
        saved, now = state.get("settings") or {}, settings_fingerprint(self.cfg)
        key = first_changed_setting(saved, now)
        if key is not None:
            raise CheckpointError(f"{self.run_dir / CHECKPOINT_NAME} was written with {key}={saved[key]}, but the "
                                  f"run's config now says {now[key]}; that setting shapes the run's state, so "
                                  f"resuming cannot honour the change (put it back, or start a new run)")
        self.load_state_dict(state, env_state=policy)

    # -- what gets logged -------------------------------------------------------------------------
    def _episode_metrics(self, episodes: list[dict]) -> dict:
        """Means over the episodes that finished since the last log (``win_rate`` where the env reports
        wins, e.g. SMAX); only ``episodes: 0`` when none did."""
        if not episodes:
            return {"episodes": 0}
        raw = np.stack([ep["raw_return"] for ep in episodes])
        moded = np.stack([ep["return"] for ep in episodes])
        out = {"team_return": float(raw.sum(1).mean()), "episodes": len(episodes),
               "episode_length": float(np.mean([ep["length"] for ep in episodes]))}
        if "won" in episodes[0]:
            out["win_rate"] = float(np.mean([ep["won"] for ep in episodes]))
        for i, ag in enumerate(self.agents):
            out[f"return/{ag}"] = float(raw[:, i].mean())
            out[f"reward_return/{ag}"] = float(moded[:, i].mean())
        return out

    def _credit_views_due(self) -> bool:
        """Whether this iteration draws the episode views or scores credit fidelity (both read the
        learner's ``prepare``, which a learner without per-step credit does not have)."""
        log, it = self.cfg.log, self.iteration
        if not callable(getattr(self.learner, "prepare", None)):
            return False
        image = log.credit_image_every and (it % log.credit_image_every == 0 or it == 1) and self.envs.has_package_env
        return bool(image or (log.fidelity_every and it % log.fidelity_every == 0 and self.has_true_credit))

    def _credit_views(self) -> dict:
        """Histograms and images go straight to TensorBoard; returns the scalars for the metrics
        record: ``credit/attribution/<agent>`` with the images, and the fidelity scores (on envs
        with ``true_credit``)."""
        from marl.credit import credit_fidelity
        from marl.evaluate import EVAL_SEED_OFFSET

        log, it, step = self.cfg.log, self.iteration, self.env_steps
        credit = self.learner.credit_values() if log.histogram_every and it % log.histogram_every == 0 else None
        if credit is not None:
            for agent, values in zip(self.agents, credit):
                if values.numel():
                    self.logger.log_histogram(f"credit/adv_hist/{agent}", values, step)
        if not self._credit_views_due():
            return {}
        self.sync_learner()   # the views read the learner's networks
        out = {}
        if log.credit_image_every and (it % log.credit_image_every == 0 or it == 1) and self.envs.has_package_env:
            out.update(self._episode_views(EVAL_SEED_OFFSET + it))
        if log.fidelity_every and it % log.fidelity_every == 0 and self.has_true_credit:
            score = credit_fidelity(self, log.fidelity_episodes, seed=it)
            out.update({f"credit_fidelity/{k}": v for k, v in score.items() if k not in ("episodes", "behaviour")})
        return out

    def _episode_views(self, seed: int) -> dict:
        """The views of one fresh on-policy episode: the advantage heatmap; the integrated-gradients
        share of V(s) per agent (returned as ``credit/attribution/<agent>`` scalars, central V
        critics only); with a reward model, the redistributed-reward heatmap and (arel) its
        attention. See docs/credit.md for what each view means."""
        from marl.attribution import value_shares
        from marl.credit import attention_figure, credit_heatmap, episode_credit
        from marl.learners import credit_method

        step, logger = self.env_steps, self.logger
        ep = episode_credit(self, seed=seed, keep_batch=True)
        batch = ep["batch"]
        title = f"{credit_method(self.cfg)} credit at {step:,} env steps"
        logger.log_figure("credit/heatmap", credit_heatmap(ep["advantage"], ep["raw_reward"], self.agents, title), step)
        shares = value_shares(self, batch)
        out = {} if shares is None else {f"credit/attribution/{agent}": v for agent, v in shares.items()}
        redistribution = getattr(self, "redistribution", None)
        if redistribution is not None:
            method = redistribution.model.method
            rewards = redistribution.episode_rewards(batch).numpy()
            logger.log_figure("credit/redistributed_reward", credit_heatmap(
                rewards, ep["raw_reward"], self.agents, f"{method} redistributed reward at {step:,} env steps",
                label="redistributed reward"), step)
            if method == "arel":
                temporal, agent = redistribution.episode_attention(batch)
                logger.log_figure("credit/arel_attention", attention_figure(
                    temporal[-1].numpy(), agent[-1].numpy(), self.agents,
                    f"arel attention (last block) at {step:,} env steps"), step)
        return out

    def _periodic_evaluation(self) -> dict:
        """``eval/team_return`` (and its std, per-agent returns and, where reported, ``win_rate``) every
        ``train.eval_every`` iterations and at the last, from greedy episodes on the same seeds each time."""
        t = self.cfg.train
        if not t.eval_every or (self.iteration % t.eval_every and self.iteration != self.total_iterations):
            return {}
        run = self.envs.evaluator("periodic")
        result = run(self.actor, self.cfg.env.id, self.cfg.env.kwargs, t.eval_every_episodes, seed=self.cfg.seed)
        out = {"eval/team_return": result["team_return_mean"], "eval/team_return_std": result["team_return_std"]}
        out.update({f"eval/{k}": v for k, v in result.items() if k.startswith("return/") or k == "win_rate"})
        return out

    @property
    def has_true_credit(self) -> bool:
        if not self.envs.has_package_env:
            return False
        if self._has_true_credit is None:
            from marl.envs import make_parallel_env
            env = make_parallel_env(self.cfg.env.id, self.cfg.env.kwargs)
            self._has_true_credit = hasattr(env.unwrapped, "true_credit")
            env.close()
        return self._has_true_credit

    # -- the loop -----------------------------------------------------------------------------------
    def _request_stop(self, signum, frame):
        """The first stop signal ends the run at the next iteration boundary, with a checkpoint; a
        second one abandons the iteration, unless a checkpoint is being written: that one is finished."""
        if self._stop_requested and not self._saving:
            raise KeyboardInterrupt
        if not self._stop_requested:
            self._stop_signal = signum
        self._stop_requested = True

    def train(self, progress: bool | None = None) -> dict:
        """Run to ``train.total_env_steps``. Returns a summary dict.

        Ctrl-C, SIGTERM or SIGHUP finishes the current iteration, writes a checkpoint and raises
        ``TrainingInterrupted``; a second one abandons the iteration (the checkpoint on disk stands),
        but never a checkpoint being written.
        """
        cfg = self.cfg
        progress = cfg.train.progress if progress is None else progress
        if self.run_dir is not None and self.logger is None:
            purge = self.env_steps + 1 if self.resumed else None   # a resumed run drops later events
            self.logger = RunLogger(self.run_dir, self.agents, purge_step=purge, trackers=cfg.log.trackers,
                                    config=cfg.to_dict())
            if self.iteration == 0:
                self.logger.log_text("config", "```\n" + cfg.to_yaml() + "\n```")
                self.logger.log_text("evaluation", self.envs.simulators)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_iterations * self.steps_per_iteration, initial=self.env_steps,
                       unit="step", dynamic_ncols=True, desc="train")
        previous = {s: signal.signal(s, self._request_stop) for s in STOP_SIGNALS} if _main_thread() else {}
        start, start_steps = time.perf_counter(), self.env_steps
        try:
            while self.iteration < self.total_iterations:
                if self._stop_requested:
                    self._stop_and_save()
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
                    self._log_iteration(metrics, steps, wall, update_s)
                if self.iteration % cfg.train.checkpoint_every == 0:
                    self.save()
                if bar is not None:
                    bar.update(steps)
                    postfix = {"sps": f"{(self.env_steps - start_steps) / (time.perf_counter() - start):.0f}"}
                    if self.last_team_return is not None:
                        postfix["ret"] = f"{self.last_team_return:.2f}"
                    bar.set_postfix(postfix)
            if self.saved_iteration != self.iteration:
                self.save()
            if self._stop_requested:   # the run is complete; a resume runs its final evaluation
                self._stop_and_save()
        except KeyboardInterrupt:
            kept = ("no checkpoint yet: a resume starts from the beginning" if self.saved_iteration is None else
                    f"the checkpoint of iteration {self.saved_iteration} is kept")
            raise TrainingInterrupted(f"stopped by a second {signal.Signals(self._stop_signal).name} during iteration "
                                      f"{self.iteration + 1}, which was abandoned; {kept}", saved=False) from None
        finally:
            if self._stop_requested:   # stopping: a later signal must not cut the wind-down; close() restores
                self._held_handlers = previous
                for signum in previous:
                    signal.signal(signum, signal.SIG_IGN)
            else:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            if bar is not None:
                bar.close()
            if self.logger is not None:
                self.logger.flush()
        wall = time.perf_counter() - start
        return {"env_steps": self.env_steps, "wall_s": wall,
                "env_steps_per_s": (self.env_steps - start_steps) / max(wall, 1e-9),
                "team_return": self.last_team_return, "run_dir": str(self.run_dir) if self.run_dir else None}

    def _stop_and_save(self) -> None:
        if self.saved_iteration != self.iteration:
            self.save()
        kept = "checkpoint saved" if self.run_dir is not None else "no run directory, so nothing was saved"
        raise TrainingInterrupted(f"stopped by {signal.Signals(self._stop_signal).name} at {self.env_steps} env steps "
                                  f"(iteration {self.iteration}); {kept}")

    def _log_iteration(self, metrics: dict, steps: int, wall: float, update_s: float) -> None:
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

    def ignore_stop_signals_until_exit(self) -> None:
        """For a process that ends once this stopped run is closed (the CLI): the stop signals held
        as ignored during the wind-down stay ignored, so a late Ctrl-C cannot kill the exit."""
        self._held_handlers = {}

    def close(self) -> None:
        for signum, handler in self._held_handlers.items():   # see train(): held while a stopped run winds down
            signal.signal(signum, handler)
        self._held_handlers = {}
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None


def _plain_episode(ep: dict) -> dict:
    """A finished-episode record with lists instead of arrays (checkpoints load with weights_only)."""
    return {**ep, "raw_return": np.asarray(ep["raw_return"]).tolist(), "return": np.asarray(ep["return"]).tolist()}


def _array_episode(ep: dict) -> dict:
    return {**ep, "raw_return": np.asarray(ep["raw_return"]), "return": np.asarray(ep["return"])}


def _env_parts(parts: list) -> list[bytes]:
    """The pickled env state's bytes, from a checkpoint's uint8 tensors."""
    return [part.numpy().tobytes() for part in parts]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
