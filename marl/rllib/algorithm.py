"""The RLlib ``PPOConfig`` for a project ``Config``: how every setting maps.

=================================  ================================================================
project setting                    RLlib
=================================  ================================================================
env.* (id, kwargs, reward mode,    ``TeamMultiAgentEnv`` (env.py), registered as ``marl_team_env``
shaping)
rollout_steps * env.num_envs       env steps per iteration; RLlib counts agent steps
                                   (``count_steps_by="agent_steps"``, every agent acts every step), so
                                   ``train_batch_size`` = N * that and ``rollout_fragment_length``
                                   = N * ceil(that / (runners * envs per runner))
algo.epochs                        ``num_epochs``
algo.minibatches                   ``minibatch_size`` = N * train_batch_size / minibatches rows
                                   (one row per agent and step)
algo.lr, critic_lr                 the CreditLearner's Adam param groups (RLlib's ``lr`` unused)
algo.clip, entropy_coef,           our loss (learner.py); RLlib's ``clip_param``, ``entropy_coeff``,
value_coef, loss                   ``vf_loss_coeff`` are set to the same values for display only
algo.max_grad_norm                 global-norm clipping in ``postprocess_gradients_for_module``
                                   (RLlib's ``grad_clip`` is off)
algo.gamma, lam, advantage, ...    read by the advantage piece from the Config itself
seed                               ``debugging(seed=...)`` (EnvRunner env seeds, torch seeds)
rllib.num_env_runners,             ``env_runners(...)``; on a local Ray instance every actor asks for
num_envs_per_env_runner,           min(1, num_cpus / (runners + learners)) CPUs so that it fits
num_learners, num_cpus
rllib.restart_failed_env_runners,  ``fault_tolerance(...)``
max_env_runner_restarts
=================================  ================================================================

No equivalent, and not used: RLlib's KL penalty (``use_kl_loss=False``), value clipping
(``vf_clip_param``), lr/entropy schedules. ``env.workers`` does not apply (EnvRunners replace it).
"""
from __future__ import annotations

import functools
import math

ENV_NAME = "marl_team_env"


def shared_policy(agent_id, episode=None, **kwargs) -> str:
    """Parameter sharing: every agent maps to the one module."""
    from marl.rllib.module import MODULE_ID
    return MODULE_ID


def joint_columns_piece(input_observation_space=None, input_action_space=None, *, agents):
    from marl.rllib.connectors import AddJointColumns
    return AddJointColumns(agents=agents)


def register_env() -> None:
    from ray.tune.registry import register_env as ray_register_env

    from marl.rllib.env import make_team_env
    ray_register_env(ENV_NAME, make_team_env)


def actor_cpus(cfg) -> float:
    """CPUs each EnvRunner/Learner actor asks for (see the table in the module docstring)."""
    r = cfg.rllib
    actors = r.num_env_runners + r.num_learners
    if r.address or actors == 0:
        return 1.0
    return min(1.0, r.num_cpus / actors)


def env_spec(cfg) -> dict:
    """Agents and sizes of ``cfg``'s env, from one ``TeamEnv``: the keyword arguments of
    ``build_config`` after ``cfg``."""
    import dataclasses

    from marl.config import ConfigError
    from marl.envs import env_spec as probe

    spec = probe(cfg.env.id, cfg.env.kwargs)
    if spec.turn_based:
        raise ConfigError(f"config key 'backend': 'rllib' does not credit the rewards a player receives between its "
                          f"turns, and env {cfg.env.id!r} is turn-based; train it with backend 'local'")
    if spec.continuous and not spec.action_mask.all():
        raise ConfigError(f"config key 'backend': 'rllib' shares one RLModule (one Box action space) over the agents, "
                          f"and env {cfg.env.id!r} has continuous actions of different sizes per agent; train it "
                          f"with backend 'local'")
    # not build_config's: refused above (turns), or read flat by the RLModule (no image encoder)
    left_out = ("turn_based", "zero_sum", "obs_image", "state_image", "state_is_obs")
    return {k: v for k, v in dataclasses.asdict(spec).items() if k not in left_out}


def build_config(cfg, agents, obs_dim: int, state_dim: int, n_actions: int, action_mask,
                 dynamic_mask: bool = False, continuous: bool = False, fault_log: str | None = None):
    """The ``PPOConfig`` that trains ``cfg`` with the project's module, learner and pieces
    (``env_spec(cfg)`` gives the other arguments). ``config.build_algo()`` needs ``register_env()``
    first; ``config.build_learner(env=...)`` builds one Learner in this process."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from marl.rllib.callbacks import EpisodeReturns
    from marl.rllib.env import env_config
    from marl.rllib.learner import CreditPPOLearner
    from marl.rllib.module import MODULE_ID, CreditRLModule, model_config

    a, r = cfg.algo, cfg.rllib
    n = len(agents)
    batch = cfg.steps_per_iteration  # env steps
    fragment = n * math.ceil(batch / (max(r.num_env_runners, 1) * r.num_envs_per_env_runner))
    cpus = actor_cpus(cfg)
    config = (
        PPOConfig()
        # Continuous actions: the env clips them to its bounds, and the loss uses the log-prob of the
        # sampled action, so RLlib neither rescales nor clips (as in the local backend).
        .environment(ENV_NAME, env_config=env_config(cfg, fault_log), disable_env_checking=True,
                     normalize_actions=False, clip_actions=False)
        .framework("torch")
        .env_runners(num_env_runners=r.num_env_runners, num_envs_per_env_runner=r.num_envs_per_env_runner,
                     num_cpus_per_env_runner=cpus, rollout_fragment_length=fragment,
                     batch_mode="truncate_episodes", episodes_to_numpy=False)
        .learners(num_learners=r.num_learners, num_cpus_per_learner=cpus if r.num_learners else 1,
                  learner_class=CreditPPOLearner,
                  learner_connector=functools.partial(joint_columns_piece, agents=list(agents)))
        .multi_agent(policies={MODULE_ID}, policy_mapping_fn=shared_policy, count_steps_by="agent_steps")
        .rl_module(rl_module_spec=RLModuleSpec(
            module_class=CreditRLModule,
            model_config=model_config(cfg, agents, obs_dim, state_dim, n_actions, action_mask, dynamic_mask,
                                      continuous)))
        .training(train_batch_size=n * batch, minibatch_size=n * batch // a.minibatches,
                  num_epochs=a.epochs, shuffle_batch_per_epoch=True, lr=a.lr, gamma=a.gamma, lambda_=a.lam,
                  clip_param=a.clip, entropy_coeff=a.entropy_coef, vf_loss_coeff=a.value_coef,
                  use_kl_loss=False, kl_coeff=0.0, vf_clip_param=float("inf"), grad_clip=None)
        .callbacks(EpisodeReturns)
        .fault_tolerance(restart_failed_env_runners=r.restart_failed_env_runners,
                         max_num_env_runner_restarts=r.max_env_runner_restarts,
                         delay_between_env_runner_restarts_s=1.0,
                         restart_failed_sub_environments=False)
        .debugging(seed=cfg.seed, log_level="WARN")
    )
    return config
