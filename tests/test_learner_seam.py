"""The learner seam: a new learner is its own module plus one registry entry, and the training
loop trains, logs, checkpoints and resumes it with no other change.

``RandomLearner`` below is such a learner, written only here: it acts uniformly at random over
each agent's legal actions and learns nothing. The test registers it (one entry of
``marl.learners.LEARNERS``) and runs it through ``marl.run``, the loop and the checkpoint code.
"""
from __future__ import annotations

import torch

from marl.learners import LEARNERS, EnvShape, LearnerSpec
from marl.networks import Actor
from tests.conftest import tiny_config, train_run


class RandomLearner:
    """Uniform random play: an actor whose logits are all zero (masked where illegal), never trained."""

    def __init__(self, cfg, env: EnvShape, device="cpu"):
        n = len(env.agents)
        self.actor = Actor(n, env.obs_dim, env.n_actions, env.action_mask, hidden=8, layers=1, activation="relu",
                           shared=True).to(device)
        for p in self.actor.parameters():
            torch.nn.init.zeros_(p)
        self.updates = 0

    def update(self, batch: dict, generator: torch.Generator) -> dict:
        self.updates += 1
        return {"random/updates": float(self.updates), "random/batch_steps": float(batch["actions"].shape[0])}

    def credit_values(self):
        return None

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.updates = int(state["updates"])


def test_a_learner_added_by_one_registry_entry_trains_checkpoints_and_resumes(tmp_path, monkeypatch):
    from marl.checkpoint import CHECKPOINT_NAME
    from marl.run import resume_run

    # It asks for 10 steps of each env between updates, whatever algo.rollout_steps says (25 here).
    monkeypatch.setitem(LEARNERS, "random", LearnerSpec(RandomLearner, "uniform random play (a test learner)",
                                                        rollout_steps=lambda cfg: 10))
    cfg = tiny_config(algo={"learner": "random"}, train={"total_env_steps": 400, "checkpoint_every": 2,
                                                         "eval_episodes": 2})
    records, evaluation = train_run(cfg, tmp_path / "run")
    assert [r["random/updates"] for r in records] == [float(k) for k in range(1, 11)]   # 400 / (10 x 4 envs)
    assert [r["env_steps"] for r in records] == [40 * k for k in range(1, 11)]
    assert all(r["random/batch_steps"] == 10.0 for r in records)
    assert -120 < evaluation["team_return_mean"] < -40   # random play on simple_spread scores about -78
    assert (tmp_path / "run" / CHECKPOINT_NAME).is_file()

    trainer = resume_run(tmp_path / "run", ["train.total_env_steps=600"])
    try:
        assert trainer.learner.updates == 10
        trainer.train()
        assert trainer.learner.updates == 15
    finally:
        trainer.close()


def test_an_unknown_learner_is_a_one_line_config_error():
    import pytest

    from marl.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"config key 'algo.learner': expected one of \['a2c', 'ppo', 'q'\], got 'sac'"):
        config_from_dict({"algo": {"learner": "sac"}})
    assert config_from_dict({"algo": {"loss": "a2c"}}).algo.learner == "a2c"   # the old name still reads
    with pytest.raises(ConfigError, match="'algo.loss' .* keep one"):
        config_from_dict({"algo": {"loss": "a2c", "learner": "ppo"}})


def test_the_old_name_overrides_a_base_that_uses_the_new_one(tmp_path):
    """A user's variant or --set written with algo.loss still overrides a shipped config that now
    says algo.learner: the old name is read as the new one in each layer before they merge."""
    from pathlib import Path

    from marl.config import load_config

    default = Path(__file__).parent.parent / "configs" / "spread_mappo.yaml"
    variant = tmp_path / "v.yaml"
    variant.write_text(f"base: {default}\nalgo: {{loss: a2c}}\n")
    assert load_config(variant).algo.learner == "a2c"
    assert load_config(default, ["algo.loss=a2c"]).algo.learner == "a2c"
