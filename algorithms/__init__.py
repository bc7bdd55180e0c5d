"""Credit-assignment and advantage modules: pure tensor functions plus one visible registry."""
from marl.algorithms.coma import coma_advantage, coma_baseline, coma_critic_inputs, coma_lambda_advantage
from marl.algorithms.returns import broadcast_agents, gae, mc, n_step, td_lambda
from marl.algorithms.registry import ADVANTAGES, AdvantageSpec, get_advantage

__all__ = ["ADVANTAGES", "AdvantageSpec", "broadcast_agents", "coma_advantage", "coma_baseline",
           "coma_critic_inputs", "coma_lambda_advantage", "gae", "get_advantage", "mc", "n_step", "td_lambda"]
