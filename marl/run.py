"""Run directories: create, train, resume, evaluate. The CLI and notebooks call these.

One process writes a run directory at a time: ``new_run`` and ``resume_run`` take its ``RunLock``
(``fcntl.flock`` on ``.lock``, which names the holder) and the trainer holds it until ``close``.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from marl.checkpoint import (CHECKPOINT_NAME, SAFE_ON_RESUME, RunDirError, first_changed_setting, load_checkpoint_into,
                             settings_fingerprint)
from marl.config import Config, ConfigError, load_config
from marl.evaluate import evaluate_both
from marl.trainer import Trainer

CONFIG_NAME = "config.yaml"
EVAL_NAME = "eval.json"
LOCK_NAME = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``, which holds the holder's pid and host. The kernel
    drops it when its process dies, so a dead run's lock is simply taken over.

    Raises:
        RunDirError: when another process holds it (naming that process).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot open the lock file {self.path} ({exc.strerror})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise RunDirError(f"run directory {str(run_dir)!r} is in use by {holder}; wait for that run to end or "
                              f"stop it (one process writes a run directory at a time)") from None
        previous = os.pread(self._fd, 200, 0).decode(errors="replace").strip()
        if previous:   # written by a holder that never released it: it died
            print(f"[marl] taking over the lock of {str(run_dir)!r} from {previous}, which is no longer running",
                  file=sys.stderr)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)   # empty: released cleanly
        except OSError:
            pass
        os.close(self._fd)   # drops the flock
        self._fd = None


def default_run_dir(config_path: str | Path | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_trainer(cfg: Config, run_dir: str | Path | None):
    """The trainer of ``cfg.backend``: the local ``Trainer`` or the RLlib one (imports ray)."""
    if cfg.backend == "rllib":
        from marl.rllib import RLlibTrainer
        return RLlibTrainer(cfg, run_dir)
    return Trainer(cfg, run_dir)


def check_env(cfg: Config) -> None:
    """Build one env of ``cfg`` (as its backend will) and refuse what does not fit it: the env's own
    errors (``EnvError``: a factory that returns no env, a space that cannot be flattened, mixed
    action kinds) and the config checks that need its spaces (``ConfigError``)."""
    from marl.env_backend import EnvBackend
    from marl.learner import ImageInputs, refuse_unfit_env
    from marl.learners import LEARNERS

    if cfg.backend == "rllib":
        from marl.rllib.algorithm import env_spec as rllib_env_spec   # its own refusals too (no ray import)
        spec = rllib_env_spec(cfg)
        refuse_unfit_env(cfg, spec["continuous"], spec["n_actions"])
    else:
        spec = EnvBackend(cfg).spec()
        learner = LEARNERS[cfg.algo.learner]
        if learner.check_env is not None:
            learner.check_env(cfg, spec.continuous, spec.turn_based, ImageInputs.of(spec))
        refuse_unfit_env(cfg, spec.continuous, spec.n_actions, spec.turn_based, spec.zero_sum,
                         ImageInputs.of(spec))


def _refuse_used(run_dir: Path) -> None:
    if any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise ConfigError(f"run directory {str(run_dir)!r} already exists and is not empty; "
                          f"continue it with --resume {run_dir} or pick another --run-dir")


def new_run(cfg: Config, run_dir: str | Path) -> Trainer:
    """Create ``run_dir`` (it must be empty or absent), lock it, save the resolved config, build a
    trainer (which holds the lock). Race-free: two processes given one directory cannot both start.
    A config the env refuses (``check_env``) writes nothing; a trainer that fails to start takes
    the directory it was given back to how it found it (absent or empty)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        _refuse_used(run_dir)   # early, before the env is built; checked again under the lock
    check_env(cfg)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(run_dir)
        created = True
    except FileExistsError:
        created = False
        if not run_dir.is_dir():
            raise ConfigError(f"run directory {str(run_dir)!r} exists and is not a directory") from None
    lock = RunLock(run_dir)
    try:
        _refuse_used(run_dir)
    except BaseException:
        lock.release()
        raise
    try:
        (run_dir / CONFIG_NAME).write_text(cfg.to_yaml())
        trainer = make_trainer(cfg, run_dir)
    except BaseException:
        for path in run_dir.iterdir():
            if path.name != LOCK_NAME:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
        raise
    trainer.run_lock = lock
    return trainer


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_NAME})")
    return load_config(path, overrides)


def refuse_state_changes(before: Config, after: Config, what: str) -> None:
    """Raise ``ConfigError`` naming the first setting that shapes the run's state and differs
    between ``before`` (the run's) and ``after`` (asked for by ``what``)."""
    old, new = settings_fingerprint(before), settings_fingerprint(after)
    key = first_changed_setting(old, new)
    if key is not None:
        raise ConfigError(f"{what} changes {key} ({old[key]} in the run, {new[key]} now), which shapes the run's "
                          f"state, so the resumed run could not continue it; a resume may change only "
                          f"{', '.join(SAFE_ON_RESUME)} (start a new run to change the rest)")


def resume_run(run_dir: str | Path, overrides: list[str] = (), trust_env_state: bool = False) -> Trainer:
    """Rebuild the trainer of ``run_dir`` from its config and checkpoint (a run stopped before its
    first checkpoint starts from the beginning), holding the run's lock. ``overrides`` may change
    only ``SAFE_ON_RESUME`` keys; the checkpoint's env state is unpickled only if this user's key
    signed it, or with ``trust_env_state``."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    if overrides:
        refuse_state_changes(load_run_config(run_dir), cfg, "--set " + " --set ".join(overrides))
    lock = RunLock(run_dir)
    try:
        for stale in run_dir.glob("*.tmp"):   # a checkpoint write cut short by a kill
            stale.unlink(missing_ok=True)
        trainer = make_trainer(cfg, run_dir)
    except BaseException:
        lock.release()
        raise
    trainer.run_lock = lock
    try:
        trainer.restore(trust_env_state=trust_env_state)
    except BaseException:
        trainer.close()
        raise
    if overrides:   # only once the checkpoint fits the overridden config
        (run_dir / CONFIG_NAME).write_text(cfg.to_yaml())
    return trainer


def final_evaluation(trainer: Trainer) -> dict | None:
    """Greedy and sampled evaluation (``marl.evaluate.evaluate_both``) written to ``eval.json`` at the
    end of training (``marl eval`` writes its own files beside it)."""
    cfg = trainer.cfg
    if cfg.train.eval_episodes == 0:
        return None
    result = evaluate_both(trainer.envs.evaluator("final"), trainer.actor, cfg.env.id, cfg.env.kwargs,
                           cfg.train.eval_episodes, seed=cfg.seed)
    result["env_steps"] = trainer.env_steps
    if trainer.run_dir is not None:
        (trainer.run_dir / EVAL_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_actor(run_dir: str | Path):
    """The trained actor of ``run_dir`` and its config (weights loaded with ``weights_only=True``)."""
    import torch

    from marl.env_backend import EnvBackend
    from marl.learner import ImageInputs, build_actor

    cfg = load_run_config(run_dir)
    spec = EnvBackend(cfg).spec(trained_on=False)   # the package env, wherever there is one
    actor = build_actor(cfg, len(spec.agents), spec.obs_dim, spec.n_actions, torch.from_numpy(spec.action_mask),
                        spec.continuous, ImageInputs.of(spec))
    load_checkpoint_into(lambda state: actor.load_state_dict(state["actor"]), Path(run_dir) / CHECKPOINT_NAME)
    actor.eval()
    return actor, cfg


def load_trainer(run_dir: str | Path) -> Trainer:
    """A trainer with the networks of ``run_dir``'s checkpoint, for analysis (writes nothing; the
    checkpoint's env state is never unpickled)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no {CHECKPOINT_NAME}")
    trainer = Trainer(cfg, None)
    try:
        load_checkpoint_into(lambda state: trainer.load_state_dict(state, env_state="skip"), run_dir / CHECKPOINT_NAME)
    except BaseException:
        trainer.close()
        raise
    return trainer
