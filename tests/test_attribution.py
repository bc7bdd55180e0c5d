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


# -- attribution views of trained runs (marl.attribution.value_attribution / actor_attribution) ----------------
import json                                                        # noqa: E402

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator   # noqa: E402

from marl.attribution import actor_attribution, state_agent_weights, value_attribution   # noqa: E402
from marl.cli import main                                          # noqa: E402
from marl.credit import episode_venv, play_episode                 # noqa: E402
from marl.logger import read_metrics                               # noqa: E402
from marl.run import load_trainer                                  # noqa: E402
from tests.conftest import tiny_config, train_run                  # noqa: E402

QUIET = {"credit_image_every": 0, "fidelity_every": 0, "histogram_every": 0}


@pytest.fixture(scope="module")
def spread_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ig") / "spread"
    train_run(tiny_config(train={"total_env_steps": 400, "eval_episodes": 0}, log=QUIET), run)
    return run


@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ig") / "lazy"
    train_run(tiny_config(env={"id": "diag:lazy_agent", "kwargs": {}}, algo={"rollout_steps": 10},
                          train={"total_env_steps": 400, "eval_episodes": 0}, log=QUIET), run)
    return run


def episodes_of(trainer, n, behaviour="policy"):
    venv = episode_venv(trainer)
    try:
        return [play_episode(trainer, venv, k, torch.Generator().manual_seed(k), behaviour) for k in range(n)]
    finally:
        venv.close()


def test_state_agent_weights_blocks_shared_features_and_constants():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, 2, 3)).astype(np.float32)
    weights, grouping = state_agent_weights(obs.reshape(6, 6), obs)
    assert grouping == "observation blocks"
    np.testing.assert_array_equal(weights, np.kron(np.eye(2), np.ones((3, 1))))
    # A state of its own: column 0 is agent 1's obs[2], column 1 is seen by both agents, column 2 by
    # nobody, column 3 is constant.
    shared = rng.normal(size=6).astype(np.float32)
    obs[:, 0, 1] = obs[:, 1, 0] = shared
    state = np.stack([obs[:, 1, 2], shared, rng.normal(size=6).astype(np.float32), np.ones(6, np.float32)], 1)
    weights, grouping = state_agent_weights(state, obs)
    assert grouping == "observed features"
    np.testing.assert_array_equal(weights, [[0, 1], [0.5, 0.5], [0, 0], [0, 0]])
    assert state_agent_weights(state[:, 2:], obs)[1] == "none"


@pytest.mark.parametrize("baseline", ["mean", "zeros"])
def test_value_attribution_is_complete_on_a_trained_critic(spread_run, baseline):
    trainer = load_trainer(spread_run)
    try:
        episodes = episodes_of(trainer, 2)
        out = value_attribution(trainer, episodes, baseline, n_steps=256)
        state = torch.cat([b["state"][:, 0] for b in episodes])
        with torch.no_grad():   # the run's own float32 critic, in return units (one team head)
            v = trainer.learner._to_return_space(trainer.learner.critic(state))[:, 0].double()
            base = state.mean(0, keepdim=True) if baseline == "mean" else torch.zeros(1, state.shape[1])
            v_base = trainer.learner._to_return_space(trainer.learner.critic(base))[:, 0].double()
    finally:
        trainer.close()
    np.testing.assert_allclose(out["output"], v, atol=1e-4)
    np.testing.assert_allclose(out["gap"], v - v_base, atol=1e-4)
    total = out["attributions"].sum(1)
    # Completeness: Σ_j a_j = V(s) − V(baseline), up to captum's delta, which is small beside the gap.
    np.testing.assert_allclose(total - out["gap"], out["delta"], atol=1e-9)
    assert out["delta"].abs().max() < 0.02 * out["gap"].abs().mean()   # ReLU kinks: about 1/n_steps
    assert out["grouping"] == "observation blocks"     # simple_spread's state is the agents' observations
    np.testing.assert_allclose(out["agents"].sum(1) + out["unobserved"], total, atol=1e-9)
    assert out["unobserved"].abs().max() == 0


def test_actor_attribution_is_complete_per_agent(lazy_run):
    trainer = load_trainer(lazy_run)
    try:
        out = actor_attribution(trainer, episodes_of(trainer, 2, "uniform"), n_steps=64)
    finally:
        trainer.close()
    total = out["obs"] + out["agent_id"]
    np.testing.assert_allclose(total - out["gap"], out["delta"], atol=1e-9)
    assert out["delta"].abs().max() < 0.02 * max(out["gap"].abs().mean().item(), 1e-3)
    assert out["agent_id"].abs().sum() > 0            # the mean-id baseline lets the id carry attribution


def test_credit_attribution_json_on_a_diagnostic_env(lazy_run, capsys):
    assert main(["credit", str(lazy_run), "--attribution", "ig", "--episodes", "4", "--json"]) == 0
    score = json.loads(capsys.readouterr().out)
    agents = ["agent_0", "agent_1", "agent_2"]
    assert score["method"] == "integrated_gradients" and score["behaviour"] == "uniform"
    assert score["value/grouping"] == "observed features"   # every agent observes the whole state (the step)
    for view in ("value", "actor"):
        keys = [f"{view}/{k}" for k in ("delta_max", "delta_mean_abs", "gap_mean_abs", "spearman")]
        keys += [f"{view}/{k}/{a}" for k in ("abs", "share") for a in agents]
        assert all(np.isfinite(score[k]) for k in keys), {k: score.get(k) for k in keys}
        assert sum(score[f"{view}/share/{a}"] for a in agents) == pytest.approx(1.0)
    assert sum(score[f"true_share/{a}"] for a in agents) == pytest.approx(1.0)
    assert score["true_share/agent_2"] == 0                  # the lazy agent
    # The table names both views and the correlations.
    assert main(["credit", str(lazy_run), "--attribution", "ig", "--episodes", "2"]) == 0
    table = capsys.readouterr().out
    assert "completeness |delta|" in table and "rank correlation" in table


@pytest.mark.parametrize("args, message", [
    (["--attribution", "ig", "--oracle"], "--attribution and --oracle"),
    (["--ig-steps", "8"], "need --attribution ig"),
    (["--baseline", "zeros"], "need --attribution ig"),
    (["--attribution", "ig", "--rollouts", "4"], "need --oracle"),
])
def test_credit_attribution_refuses_combinations(lazy_run, capsys, args, message):
    assert main(["credit", str(lazy_run), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "credit"])
@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_episodes_below_one_are_refused_in_one_line(lazy_run, capsys, command, episodes):
    with pytest.raises(SystemExit) as info:
        main([command, str(lazy_run), "--episodes", episodes])
    assert info.value.code == 2
    assert f"argument --episodes: expected an int >= 1, got '{episodes}'" in capsys.readouterr().err


def test_tensorboard_attribution_and_reward_model_views(tmp_path):
    run = tmp_path / "arel"
    records, _ = train_run(tiny_config(env={"id": "diag:lazy_agent", "kwargs": {}, "episodic_reward": True},
                                       algo={"rollout_steps": 10, "redistribution": "arel", "redistribution_steps": 1},
                                       train={"total_env_steps": 80, "eval_episodes": 0},
                                       log={**QUIET, "credit_image_every": 1}), run)
    agents = ["agent_0", "agent_1", "agent_2"]
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    images = events.Tags()["images"]
    for tag in ("credit/heatmap", "credit/redistributed_reward", "credit/arel_attention"):
        assert tag in images and len(events.Images(tag)) == len(records), tag
    for record in records:
        shares = [record[f"credit/attribution/{a}"] for a in agents]
        assert sum(shares) == pytest.approx(1.0)
    for agent in agents:   # per-agent scalars live in the agent's subdirectory (one TensorBoard run per agent)
        agent_events = EventAccumulator(str(run / agent), size_guidance={"scalars": 0})
        agent_events.Reload()
        logged = [e.value for e in agent_events.Scalars("credit/attribution")]
        assert logged == pytest.approx([r[f"credit/attribution/{agent}"] for r in read_metrics(run)])
