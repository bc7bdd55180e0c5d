"""The Ray RLlib backend (``backend: rllib``): the only package that imports ray.

Data flow (RLlib 2.60, new API stack)::

    envs/ TeamEnv + reward mode/shaping (EnvSlice)  ->  env.TeamMultiAgentEnv   (on EnvRunners)
        obs + one-hot agent id, learner rewards; global state and env flags in the infos
    module.CreditRLModule: our Actor (EnvRunners) / CreditLearner's networks (Learners), shared
    Learner pipeline: AddOneTs -> connectors.AddJointColumns -> RLlib batching ->
        connectors.CreditAdvantages: rows -> [T, B, N] -> CreditLearner.prepare -> rows
    learner.CreditPPOLearner: the project's loss, optimiser and gradient clipping
    trainer.RLlibTrainer: the local Trainer's loop, logging and checkpoints around Algorithm.train()

See docs/rllib.md. Importing ``marl.rllib`` itself does not import ray.
"""
from __future__ import annotations

__all__ = ["RLlibTrainer"]


def __getattr__(name):
    if name == "RLlibTrainer":
        from marl.rllib.trainer import RLlibTrainer
        return RLlibTrainer
    raise AttributeError(f"module 'marl.rllib' has no attribute {name!r}")
