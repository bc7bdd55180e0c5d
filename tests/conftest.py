from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def tiny_config(**sections):
    """A config dict small enough to train in a second or two on simple_spread."""
    cfg = {
        "seed": 0,
        "env": {"id": "mpe2:simple_spread_v3", "kwargs": {"N": 3, "max_cycles": 25}, "num_envs": 4},
        "algo": {"rollout_steps": 25, "epochs": 2, "minibatches": 2},
        "model": {"hidden": 32},
        "train": {"total_env_steps": 400, "checkpoint_every": 2, "eval_episodes": 2, "progress": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    return cfg


@pytest.fixture
def tiny():
    return tiny_config


def default_config(env_id: str, steps: int, kwargs: dict | None = None, env: dict | None = None,
                   train: dict | None = None) -> dict:
    """``configs/spread_mappo.yaml`` (the default config) as a dict, with only ``env.id`` and
    ``env.kwargs``, the budget ``steps`` and the ``env``/``train`` keys given changed (no progress
    bar): how a user plugs an env into the default config."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "spread_mappo.yaml").read_text())
    data["env"].update(id=env_id, kwargs=kwargs or {}, **(env or {}))
    data["train"].update(total_env_steps=steps, progress=False, **(train or {}))
    return data


def train_run(cfg_dict, run_dir):
    """Train a config dict in a new run directory; returns its metrics records and final evaluation."""
    from marl.config import config_from_dict
    from marl.logger import read_metrics
    from marl.run import final_evaluation, new_run

    trainer = new_run(config_from_dict(cfg_dict), run_dir)
    try:
        trainer.train()
        evaluation = final_evaluation(trainer)
    finally:
        trainer.close()
    return read_metrics(run_dir), evaluation


def resumed_equals_uninterrupted(tmp_path, cfg_dict, cut_steps: int, keys) -> bool:
    """Train ``cfg_dict`` whole, and again stopped at ``cut_steps`` then resumed: equal ``keys`` in
    every metrics record (the resume-exactness check of several test files)."""
    from marl.logger import read_metrics
    from marl.run import resume_run

    total = cfg_dict["train"]["total_env_steps"]
    full, _ = train_run(cfg_dict, tmp_path / "full")
    train_run({**cfg_dict, "train": {**cfg_dict["train"], "total_env_steps": cut_steps}}, tmp_path / "cut")
    resumed = resume_run(tmp_path / "cut", [f"train.total_env_steps={total}"])
    try:
        resumed.train()
    finally:
        resumed.close()

    def strip(records):
        return [{k: r.get(k) for k in keys} for r in records]

    return strip(read_metrics(tmp_path / "cut")) == strip(full)
