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
