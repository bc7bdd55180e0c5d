"""Credit-assignment and advantage modules: pure tensor functions plus one visible registry."""
from marl.algorithms.coma import coma_advantage, coma_baseline, coma_critic_inputs, coma_lambda_advantage
from marl.algorithms.difference import default_action_joints, difference_rewards
from marl.algorithms.dop import dop_advantage, dop_mix, positive_weights
from marl.algorithms.resim import paired_differences, resim_advantage
from marl.algorithms.returns import broadcast_agents, gae, mc, n_step, td_lambda
from marl.algorithms.registry import (ADVANTAGES, DOP_CRITIC, Q_CRITIC, SIM_CRITIC, V_CRITIC, AdvantageSpec, CounterfactualInputs,
                                     CriticKind, get_advantage)
from marl.algorithms.shapley import shapley_advantage, shapley_credit

__all__ = ["ADVANTAGES", "DOP_CRITIC", "Q_CRITIC", "SIM_CRITIC", "V_CRITIC", "AdvantageSpec", "CounterfactualInputs",
           "CriticKind", "broadcast_agents", "coma_advantage", "coma_baseline", "coma_critic_inputs",
           "coma_lambda_advantage", "default_action_joints", "difference_rewards", "dop_advantage", "dop_mix",
           "gae", "get_advantage", "mc", "n_step", "paired_differences", "positive_weights", "resim_advantage",
           "shapley_advantage", "shapley_credit", "td_lambda"]
