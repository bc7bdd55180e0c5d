"""CreditLearner pieces not covered through the trainer."""
import torch

from marl.config import config_from_dict
from marl.learner import CreditLearner
from tests.conftest import tiny_config


def test_agent_specific_critic_reads_state_and_own_observation():
    """``critic: agent_state`` (MAPPO's agent-specific global state): agent i's critic input is
    ``[s, o_i]``, and its value differs between agents in the same state."""
    cfg = config_from_dict(tiny_config(algo={"critic": "agent_state"}))
    N, O, S = 3, 4, 7
    learner = CreditLearner(cfg, ["a", "b", "c"], O, S, 5, torch.ones(N, 5, dtype=torch.bool))
    state, obs = torch.randn(2, 6, S), torch.randn(2, 6, N, O)
    critic_in = learner.critic_input(state, obs)
    assert critic_in.shape == (2, 6, N, S + O)
    assert torch.equal(critic_in[..., 1, :S], state) and torch.equal(critic_in[..., 1, S:], obs[..., 1, :])
    values = learner.critic(critic_in)
    assert values.shape == (2, 6, N) and not torch.allclose(values[..., 0], values[..., 1])
