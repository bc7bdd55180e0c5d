"""Credit-assignment and advantage modules: pure tensor functions plus one visible registry."""
from algorithms.returns import broadcast_agents, gae
from algorithms.registry import ADVANTAGES, AdvantageSpec, get_advantage

__all__ = ["ADVANTAGES", "AdvantageSpec", "broadcast_agents", "gae", "get_advantage"]
