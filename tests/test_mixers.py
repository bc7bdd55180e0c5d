"""VDN, QMIX and QPLEX mixers: hand-worked cases, QMIX's monotonicity, QPLEX's IGM, absent agents."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marl.algorithms.mixers import QMixer, QPLEXMixer, VDNMixer, build_mixer, mixer_credit


def set_linear(layer, weight=None, bias=None):
    """Overwrite a Linear's parameters (zeros where not given)."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        if weight is not None:
            layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def one_hot(actions, n_actions, dtype=torch.float32):
    return torch.nn.functional.one_hot(torch.as_tensor(actions), n_actions).to(dtype)


def qplex_inputs(tables, joint):
    """QPLEX's inputs for one joint action of per-agent tables ``[N, A]``: (qs, actions, max_qs)."""
    idx = torch.as_tensor(joint)
    qs = tables.gather(-1, idx[:, None])[:, 0]
    return qs, one_hot(joint, tables.shape[-1], tables.dtype), tables.max(dim=-1).values


# -- hand-worked cases --------------------------------------------------------------------------------
def test_vdn_is_the_sum_of_present_agents_exactly():
    qs = torch.tensor([[1.0, 2.0, 3.0]])
    assert VDNMixer()(qs, None).item() == 6.0
    assert VDNMixer()(qs, None, torch.tensor([[True, False, True]])).item() == 4.0
    g = torch.Generator().manual_seed(0)
    qs, alive = torch.randn(7, 5, 4, generator=g), torch.rand(7, 5, 4, generator=g) < 0.7
    out = VDNMixer()(qs, torch.zeros(7, 5, 2), alive)
    assert out.shape == (7, 5, 1)
    assert torch.equal(out[..., 0], (qs * alive).sum(-1))
    assert torch.equal(mixer_credit(VDNMixer(), qs, torch.zeros(7, 5, 2), alive), alive.float())


def test_qmix_hand_worked():
    mixer = QMixer(2, 1, embed_dim=2, hypernet_layers=1)
    set_linear(mixer.hyper_w1, bias=[1.0, -2.0, 0.5, 3.0])       # W_1 = [[1, -2], [0.5, 3]] (agent x embed)
    set_linear(mixer.hyper_b1, bias=[0.5, -4.0])
    set_linear(mixer.hyper_w2, bias=[-1.0, 2.0])
    set_linear(mixer.value[0])
    set_linear(mixer.value[2], bias=[0.25])
    state = torch.tensor([[0.7], [0.7]])
    out = mixer(torch.tensor([[1.0, 2.0], [-1.0, -1.0]]), state)
    # h = ELU(q |W_1| + b_1), Q_tot = h |w_2| + V: [2.5, 4] -> 2.5 + 8 + 0.25; [-1, -9] -> ELU below zero.
    expected = [10.75, (math.exp(-1) - 1) + 2 * (math.exp(-9) - 1) + 0.25]
    assert torch.allclose(out[:, 0], torch.tensor(expected), atol=1e-6)
    # ∂Q_tot/∂q_i = Σ_e ELU'(pre_e) |W_1[i, e]| |w_2[e]|; both pre-activations positive in row 0.
    credit = mixer_credit(mixer, torch.tensor([[1.0, 2.0]]), state[:1])
    assert torch.allclose(credit, torch.tensor([[1 * 1 + 2 * 2, 0.5 * 1 + 3 * 2]]))


def make_qplex_hand():
    """N=2, A=2, S=1, one head: w = [2, 0.5], b = [1, -1], |key| = 3, σ(agent) = 1/2, and
    σ(action)_0 = 3/4 when agent 0 plays action 1 (else 1/2), σ(action)_1 = 1/2."""
    mixer = QPLEXMixer(2, 1, 2, hypernet_embed=4, heads=1, adv_hypernet_layers=1)
    set_linear(mixer.weight[0])
    set_linear(mixer.weight[2], bias=[2.0, -0.5])
    set_linear(mixer.bias[0])
    set_linear(mixer.bias[2], bias=[1.0, -1.0])
    set_linear(mixer.keys[0], bias=[-3.0])
    set_linear(mixer.agents[0])
    weight = torch.zeros(2, 5)                                     # joint = [s, a0u0, a0u1, a1u0, a1u1]
    weight[0, 2] = math.log(3.0)
    set_linear(mixer.actions[0], weight=weight)
    return mixer


def test_qplex_hand_worked():
    mixer = make_qplex_hand()
    tables = torch.tensor([[1.0, 3.0], [2.0, -1.0]])              # V = [3, 2]
    state = torch.tensor([0.3])
    # Σ(w V + b) = (6 + 1) + (1 − 1) = 7; advantages w (Q − V).
    cases = {(0, 1): 7 + 0.75 * 2 * (1 - 3) + 0.75 * 0.5 * (-1 - 2),   # λ = [0.75, 0.75]: 2.875
             (1, 1): 7 + 1.125 * 0 + 0.75 * 0.5 * (-1 - 2),           # λ = [1.125, 0.75]: 5.875
             (1, 0): 7.0}                                             # the greedy joint: Σ V'
    for joint, expected in cases.items():
        qs, actions, max_qs = qplex_inputs(tables, joint)
        out = mixer(qs, state, actions=actions, max_qs=max_qs)
        assert out.shape == (1,)
        assert out.item() == pytest.approx(expected, abs=1e-6)
    qs, actions, max_qs = qplex_inputs(tables, (1, 1))
    credit = mixer_credit(mixer, qs, state, actions=actions, max_qs=max_qs)
    assert torch.allclose(credit, torch.tensor([2 * 1.125, 0.5 * 0.75]))   # w_i λ_i


# -- properties ---------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), layers=st.sampled_from([1, 2, 3]),
       scale=st.floats(0.1, 30.0))
def test_qmix_is_monotonic(seed, n, layers, scale):
    torch.manual_seed(seed)
    mixer = QMixer(n, 6, embed_dim=8, hypernet_layers=layers, hypernet_embed=16)
    qs, state = scale * torch.randn(4, 16, n), scale * torch.randn(4, 16, 6)
    alive = torch.rand(4, 16, n) < 0.8
    assert (mixer_credit(mixer, qs, state) >= 0).all()
    credit = mixer_credit(mixer, qs, state, alive)
    assert (credit >= 0).all() and (credit[~alive] == 0).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 3), a=st.integers(2, 4), absent=st.booleans())
def test_qplex_igm_by_enumeration(seed, n, a, absent):
    """argmax of Q_tot over all joint actions = the joint of per-agent argmaxes (over present agents)."""
    torch.manual_seed(seed)
    mixer = QPLEXMixer(n, 5, a, hypernet_embed=16, heads=3).double()      # float64: no rounding ties
    tables, state = 3 * torch.randn(n, a, dtype=torch.float64), 2 * torch.randn(5, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    if absent:
        alive[-1] = False
    joints = list(itertools.product(range(a), repeat=n))
    values = []
    for joint in joints:
        qs, actions, max_qs = qplex_inputs(tables, joint)
        values.append(mixer(qs, state, alive, actions=actions, max_qs=max_qs).item())
    values = torch.tensor(values, dtype=torch.float64)
    greedy = tables.argmax(dim=-1)
    best = {joints[i] for i in torch.nonzero(values >= values.max() - 1e-9)[:, 0].tolist()}
    present = alive.nonzero()[:, 0].tolist()
    assert {tuple(j[i] for i in present) for j in best} == {tuple(greedy[present].tolist())}
    if absent:       # every action of the absent agent ties at the optimum
        assert len(best) == a


def test_qplex_lambda_depends_on_the_joint_action():
    torch.manual_seed(0)
    mixer = QPLEXMixer(2, 3, 3)
    state = torch.randn(3)
    lams = [mixer.lambdas(state, one_hot(j, 3)) for j in [(0, 0), (0, 1), (2, 1)]]
    assert (torch.stack(lams) > 0).all()
    assert not torch.allclose(lams[0], lams[1]) and not torch.allclose(lams[1], lams[2])


def mixer_cases(n=3, s=4, a=3):
    torch.manual_seed(1)
    return {"vdn": (VDNMixer(), {}), "qmix": (QMixer(n, s, embed_dim=8), {}),
            "qplex": (QPLEXMixer(n, s, a, heads=2), {"actions": one_hot([[0, 2, 1]] * 5, a),
                                                     "max_qs": torch.full((5, n), 2.0)})}


@pytest.mark.parametrize("kind", ["vdn", "qmix", "qplex"])
def test_absent_agents_do_not_change_present_agents_dependence(kind):
    mixer, joint = mixer_cases()[kind]
    g = torch.Generator().manual_seed(2)
    qs, state = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
    alive = torch.tensor([True, False, True]).expand(5, 3)
    moved = qs.clone()
    moved[:, 1] += 10 * torch.randn(5, generator=g)
    joint_moved = dict(joint)
    if "actions" in joint:          # the absent agent's action and V do not matter either
        joint_moved["actions"] = one_hot([[0, 0, 1]] * 5, 3)
        joint_moved["max_qs"] = joint["max_qs"].clone()
        joint_moved["max_qs"][:, 1] = -7.0
    out, out_moved = mixer(qs, state, alive, **joint), mixer(moved, state, alive, **joint_moved)
    assert torch.allclose(out, out_moved)
    credit, credit_moved = mixer_credit(mixer, qs, state, alive, **joint), mixer_credit(mixer, moved, state, alive,
                                                                                         **joint_moved)
    assert torch.allclose(credit, credit_moved)
    assert (credit[:, 1] == 0).all() and (credit[:, [0, 2]] > 0).all()
    # with everyone present the middle agent's utility does move Q_tot
    assert not torch.allclose(mixer(qs, state, None, **joint), mixer(moved, state, None, **joint_moved))


def test_mixers_keep_leading_dims_and_build_by_name():
    for kind in ["vdn", "qmix", "qplex"]:
        mixer = build_mixer(kind, n_agents=3, state_dim=4, n_actions=2)
        joint = ({"actions": one_hot(torch.zeros(6, 2, 3, dtype=torch.long), 2), "max_qs": torch.ones(6, 2, 3)}
                 if mixer.needs_joint_action else {})
        assert mixer(torch.randn(6, 2, 3), torch.randn(6, 2, 4), **joint).shape == (6, 2, 1)
    assert build_mixer("none", n_agents=3, state_dim=4, n_actions=2) is None
    with pytest.raises(ValueError, match="mixer 'qtran' is not one of none, vdn, qmix, qplex"):
        build_mixer("qtran", n_agents=3, state_dim=4, n_actions=2)
