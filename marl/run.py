"""Run directories: create, train, resume, evaluate. The CLI and notebooks call these."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint_into
from marl.config import Config, ConfigError, load_config
from marl.evaluate import evaluator
from marl.trainer import Trainer

CONFIG_NAME = "config.yaml"
EVAL_NAME = "eval.json"


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
    from marl.envs import env_spec
    from marl.learner import refuse_unfit_env

    if cfg.backend == "rllib":
        from marl.rllib.algorithm import env_spec as rllib_env_spec   # its own refusals too (no ray import)
        spec = rllib_env_spec(cfg)
        refuse_unfit_env(cfg, spec["continuous"], spec["n_actions"])
    else:
        spec = env_spec(cfg.env.id, cfg.env.kwargs, batched=cfg.env.batched)
        refuse_unfit_env(cfg, spec.continuous, spec.n_actions, spec.turn_based, spec.zero_sum)


def new_run(cfg: Config, run_dir: str | Path) -> Trainer:
    """Create ``run_dir`` (it must be empty or absent), save the resolved config, build a trainer.
    A config the env refuses (``check_env``) writes nothing; a trainer that fails to start takes
    the directory it was given back to how it found it (absent or empty)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {str(run_dir)!r} already exists and is not empty; "
                          f"continue it with --resume {run_dir} or pick another --run-dir")
    check_env(cfg)
    existed = run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        (run_dir / CONFIG_NAME).write_text(cfg.to_yaml())
        return make_trainer(cfg, run_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        if existed:
            run_dir.mkdir(exist_ok=True)
        raise


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_NAME})")
    return load_config(path, overrides)


def resume_run(run_dir: str | Path, overrides: list[str] = ()) -> Trainer:
    """Rebuild the trainer of ``run_dir`` from its config and checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no {CHECKPOINT_NAME} to resume from")
    trainer = make_trainer(cfg, run_dir)
    try:
        trainer.restore()
    except BaseException:
        trainer.close()
        raise
    if overrides:   # only once the checkpoint fits the overridden config
        (run_dir / CONFIG_NAME).write_text(cfg.to_yaml())
    return trainer


def final_evaluation(trainer: Trainer) -> dict | None:
    """Greedy evaluation written to ``eval.json`` at the end of training."""
    cfg = trainer.cfg
    if cfg.train.eval_episodes == 0:
        return None
    result = evaluator(cfg)(trainer.actor, cfg.env.id, cfg.env.kwargs, cfg.train.eval_episodes, seed=cfg.seed)
    result["env_steps"] = trainer.env_steps
    if trainer.run_dir is not None:
        (trainer.run_dir / EVAL_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_actor(run_dir: str | Path):
    """The trained actor of ``run_dir`` and its config (weights loaded with ``weights_only=True``)."""
    import torch

    from marl.envs import env_spec
    from marl.envs.batched import TWINS
    from marl.learner import build_actor

    cfg = load_run_config(run_dir)
    # A run on a batched simulator without a PettingZoo twin has only the batched env to probe.
    spec = env_spec(cfg.env.id, cfg.env.kwargs, batched=cfg.env.batched and cfg.env.id not in TWINS)
    actor = build_actor(cfg, len(spec.agents), spec.obs_dim, spec.n_actions, torch.from_numpy(spec.action_mask),
                        spec.continuous)
    load_checkpoint_into(lambda state: actor.load_state_dict(state["actor"]), Path(run_dir) / CHECKPOINT_NAME)
    actor.eval()
    return actor, cfg


def load_trainer(run_dir: str | Path) -> Trainer:
    """A trainer with the networks of ``run_dir``'s checkpoint, for analysis (writes nothing)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no {CHECKPOINT_NAME}")
    trainer = Trainer(cfg, None)
    load_checkpoint_into(trainer.load_state_dict, run_dir / CHECKPOINT_NAME)
    return trainer
