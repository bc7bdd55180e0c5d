"""Q-learning targets for replayed slots: against the reference loops, padding, chunk ends, double Q."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from marl.algorithms.targets import double_q_value, greedy_value, legal_argmax, q_targets
from tests.reference import n_step_loop, rollout_batches, td_lambda_loop


@settings(max_examples=60, deadline=None)
@given(batch=rollout_batches(with_n=True))
def test_q_targets_match_the_reference_loops(batch):
    r, v, nv, term, trunc, gamma, lam, n = batch
    np.testing.assert_allclose(q_targets(r, nv, term, trunc, gamma=gamma, lam=lam).numpy(),
                               td_lambda_loop(r, v, nv, term, trunc, gamma, lam)[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(q_targets(r, nv, term, trunc, gamma=gamma, n=n).numpy(),
                               n_step_loop(r, v, nv, term, trunc, gamma, n)[1], rtol=1e-4, atol=1e-4)


def col(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype).reshape(len(x), 1, 1)


def test_termination_stops_bootstrapping_and_truncation_bootstraps():
    r, nv = col([1.0, 2.0, 3.0]), col([10.0, 20.0, 30.0])
    term, trunc, none = col([0, 0, 1], torch.bool), col([0, 0, 1], torch.bool), col([0, 0, 0], torch.bool)
    # one-step: r + γ V' except where terminated
    assert q_targets(r, nv, term, none, gamma=0.5, n=1)[:, 0, 0].tolist() == [6.0, 12.0, 3.0]
    assert q_targets(r, nv, none, trunc, gamma=0.5, n=1)[:, 0, 0].tolist() == [6.0, 12.0, 18.0]
    # λ = 1 is the discounted return to the end: 1 + .5·2 + .25·3 (+ .125·30 when truncated)
    assert q_targets(r, nv, term, none, gamma=0.5, lam=1.0)[0, 0, 0].item() == 2.75
    assert q_targets(r, nv, none, trunc, gamma=0.5, lam=1.0)[0, 0, 0].item() == 2.75 + 3.75


@pytest.mark.parametrize("kw", [{"lam": 0.6}, {"lam": 1.0}, {"n": 3}])
def test_padding_does_not_leak_and_chunk_ends_bootstrap(kw):
    """Column 0: an episode of 3 steps (terminated) padded to 6 with junk; column 1: a chunk of a
    longer episode that fills 4 steps with no end flag, which must bootstrap from next_value[3]."""
    g = torch.Generator().manual_seed(0)
    r, nv = torch.randn(6, 2, 1, generator=g), torch.randn(6, 2, 1, generator=g)
    term, trunc = torch.zeros(6, 2, 1, dtype=torch.bool), torch.zeros(6, 2, 1, dtype=torch.bool)
    term[2, 0] = True
    filled = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1], [0, 0], [0, 0]], dtype=torch.bool)
    junk_r, junk_nv = r.clone(), nv.clone()
    junk_r[~filled], junk_nv[~filled] = torch.nan, 1e9
    out = q_targets(junk_r, junk_nv, term, trunc, filled, gamma=0.9, **kw)
    alone0 = q_targets(r[:3, :1], nv[:3, :1], term[:3, :1], trunc[:3, :1], gamma=0.9, **kw)
    chunk_end = trunc[:4, 1:].clone()
    chunk_end[3] = True
    alone1 = q_targets(r[:4, 1:], nv[:4, 1:], term[:4, 1:], chunk_end, gamma=0.9, **kw)
    assert torch.allclose(out[:3, 0], alone0[:, 0]) and torch.allclose(out[:4, 1], alone1[:, 0])
    assert (out[~filled] == 0).all()


def test_agent_targets_and_team_flags_broadcast():
    g = torch.Generator().manual_seed(1)
    r, nv = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    term = torch.zeros(5, 2, 1, dtype=torch.bool)
    term[2] = True
    out = q_targets(r, nv, term, torch.zeros_like(term), gamma=0.9, lam=0.5)
    assert out.shape == (5, 2, 3)
    per_agent = [q_targets(r[..., i:i + 1], nv[..., i:i + 1], term, torch.zeros_like(term), gamma=0.9, lam=0.5)
                 for i in range(3)]
    assert torch.allclose(out, torch.cat(per_agent, dim=-1))


def test_q_targets_refuses_ambiguous_arguments():
    x, f = torch.zeros(2, 1, 1), torch.zeros(2, 1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="exactly one of lam and n"):
        q_targets(x, x, f, f, gamma=0.9)
    with pytest.raises(ValueError, match="exactly one of lam and n"):
        q_targets(x, x, f, f, gamma=0.9, lam=0.5, n=2)
    with pytest.raises(ValueError, match=r"filled has shape \(3,\), expected \(2, 1\)"):
        q_targets(x, x, f, f, torch.ones(3, dtype=torch.bool), gamma=0.9, n=1)


def test_greedy_and_double_q_respect_legal_actions():
    online = torch.tensor([[1.0, 5.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[10.0, 20.0, 5.0], [7.0, 8.0, 9.0]])
    avail = torch.tensor([[True, False, True], [False, False, False]])
    assert legal_argmax(online, avail).tolist() == [2, 0]
    assert greedy_value(target, avail).tolist() == [10.0, 0.0]            # 20 is illegal; no legal: 0
    assert double_q_value(online, target, avail).tolist() == [5.0, 0.0]   # online picks 2, target says 5
