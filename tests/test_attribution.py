"""Integrated gradients through captum: completeness, grouping, ignored features, and a reward model."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from marl.attribution import contiguous_groups, integrated_gradients
from marl.reward_models import RewardRedistributor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def mlp(D, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)


def test_linear_model_hand_worked():
    # f(x) = w·x + 3: the attribution is (x − x') ⊙ w, whatever the quadrature.
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, -4.0]], dtype=torch.float64)
    base = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out = integrated_gradients(lambda z: z @ w + 3.0, x, base, n_steps=4)
    expected = torch.tensor([[1.0, -2.0, 0.5], [1.0, 2.0, -2.5]], dtype=torch.float64)
    # captum keeps the quadrature weights in float32 (their sum is 1 to ~1e-8): the one error left here.
    np.testing.assert_allclose(out["attributions"], expected, rtol=1e-7)
    np.testing.assert_allclose(out["delta"], 0.0, atol=1e-7)
    np.testing.assert_allclose(out["output"], [2.5, 3.0])


@settings(max_examples=20, deadline=None)
@given(R=st.integers(1, 6), D=st.integers(1, 8), seed=st.integers(0, 2**31), zero_baseline=st.booleans())
def test_completeness_on_a_small_mlp(R, D, seed, zero_baseline):
    g = gen(seed)
    net = mlp(D, seed % 1000)
    f = lambda z: net(z).squeeze(-1)            # noqa: E731
    x = 2 * torch.randn(R, D, generator=g, dtype=torch.float64)
    base = None if zero_baseline else torch.randn(R, D, generator=g, dtype=torch.float64)
    out = integrated_gradients(f, x, base, n_steps=64)
    gap = f(x) - f(torch.zeros_like(x) if base is None else base)
    np.testing.assert_allclose(out["attributions"].sum(1), gap.detach(), atol=1e-5)
    # captum's delta is exactly that residual.
    np.testing.assert_allclose(out["delta"], out["attributions"].sum(1) - gap.detach(), atol=1e-10)


def test_fewer_steps_leave_a_larger_delta():
    net = mlp(5, 1)
    x = 3 * torch.randn(4, 5, generator=gen(1), dtype=torch.float64)
    deltas = [integrated_gradients(lambda z: net(z).squeeze(-1), x, n_steps=n)["delta"].abs().max().item()
              for n in (2, 64)]
    assert deltas[1] < deltas[0] and deltas[1] < 1e-6


def test_groups_sum_their_columns():
    net = mlp(7, 2)
    x = torch.randn(3, 7, generator=gen(2), dtype=torch.float64)
    groups = {**contiguous_groups({"state": 4, "obs": 2, "id": 1}), "agent_1": [2, 3], "picked": [6, 0]}
    assert groups["state"] == slice(0, 4) and groups["obs"] == slice(4, 6) and groups["id"] == slice(6, 7)
    out = integrated_gradients(lambda z: net(z).squeeze(-1), x, groups=groups, n_steps=16)
    a = out["attributions"]
    torch.testing.assert_close(out["groups"]["state"], a[:, :4].sum(1))
    torch.testing.assert_close(out["groups"]["agent_1"], a[:, 2] + a[:, 3])
    torch.testing.assert_close(out["groups"]["picked"], a[:, 6] + a[:, 0])
    # Disjoint groups covering every column add up to the total attribution.
    torch.testing.assert_close(sum(out["groups"][k] for k in ("state", "obs", "id")), a.sum(1))


def test_ignored_features_get_zero_attribution():
    net = mlp(3, 3)
    f = lambda z: net(z[:, [0, 2, 5]]).squeeze(-1)        # noqa: E731  (columns 1, 3, 4 are ignored)
    x = torch.randn(5, 6, generator=gen(3), dtype=torch.float64)
    base = torch.randn(5, 6, generator=gen(4), dtype=torch.float64)
    a = integrated_gradients(f, x, base, n_steps=8)["attributions"]
    assert (a[:, [1, 3, 4]] == 0).all()
    assert (a[:, [0, 2, 5]] != 0).all()


def test_reward_model_attribution_is_complete():
    # Which features of (step, agent) rows a learned RRD reward comes from.
    rd = RewardRedistributor("rrd", 6, 3, hidden=16, layers=2, seed=0)
    rows = torch.randn(10, 6, generator=gen(5))
    reward = lambda z: rd.model(z.unsqueeze(-2)).squeeze(-1)   # noqa: E731  (rows as N = 1 agents)
    out = integrated_gradients(reward, rows, groups=contiguous_groups({"state": 4, "action": 2}), n_steps=64)
    with torch.no_grad():
        gap = reward(rows) - reward(torch.zeros_like(rows))
    torch.testing.assert_close(out["output"], rd.model(rows.unsqueeze(-2)).squeeze(-1).detach())
    torch.testing.assert_close(out["groups"]["state"] + out["groups"]["action"], gap, atol=1e-3, rtol=1e-3)
    assert all(p.grad is None for p in rd.model.parameters())   # attribution leaves the model's grads alone


def test_errors():
    f = lambda z: z.sum(-1)                        # noqa: E731
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"inputs has shape \(3,\)"):
        integrated_gradients(f, torch.zeros(3))
    with pytest.raises(ValueError, match=r"baseline has shape \(2, 4\)"):
        integrated_gradients(f, x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one scalar per row"):
        integrated_gradients(lambda z: z, x)
    with pytest.raises(ValueError, match="group 'bad'"):
        integrated_gradients(f, x, groups={"bad": [0, 3]})
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(f, x, n_steps=0)
    with pytest.raises(ValueError, match="group 'obs' has size -1"):
        contiguous_groups({"obs": -1})
