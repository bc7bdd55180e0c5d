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


def test_update_diagnostics_are_the_means_of_per_minibatch_statistics():
    """The update reduces its loss diagnostics once after all minibatch steps; with equal-sized
    minibatches that equals averaging each step's own statistics (the per-step reference)."""
    cfg = config_from_dict(tiny_config())
    learner = CreditLearner(cfg, ["a", "b"], 4, 8, 5, torch.ones(2, 5, dtype=torch.bool))
    gen = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(6):
        log_ratio = 0.3 * torch.randn(10, 2, generator=gen)
        steps.append({"policy": torch.randn((), generator=gen), "value": torch.rand((), generator=gen),
                      "grad_norm": torch.rand((), generator=gen), "entropy": torch.rand(10, 2, generator=gen),
                      "ratio": log_ratio.exp(), "log_ratio": log_ratio})
    metrics = learner._minibatch_metrics(steps)

    def per_step_mean(fn):
        return torch.stack([fn(s) for s in steps]).mean(0)

    clip = cfg.algo.clip
    expected = {
        "losses/policy": per_step_mean(lambda s: s["policy"]),
        "losses/value": per_step_mean(lambda s: s["value"]),
        "losses/grad_norm": per_step_mean(lambda s: s["grad_norm"]),
        "losses/entropy": per_step_mean(lambda s: s["entropy"].mean()),
        "losses/approx_kl": per_step_mean(lambda s: ((s["ratio"] - 1) - s["log_ratio"]).mean()),
        "losses/clip_fraction": per_step_mean(lambda s: ((s["ratio"] - 1).abs() > clip).float().mean()),
        "entropy/a": per_step_mean(lambda s: s["entropy"][:, 0].mean()),
        "entropy/b": per_step_mean(lambda s: s["entropy"][:, 1].mean()),
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(metrics[key] - float(value)) < 1e-6, key
    assert 0 < metrics["losses/clip_fraction"] < 1   # the ratios straddle the clip range
