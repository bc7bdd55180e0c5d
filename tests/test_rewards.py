"""The one reward pipeline (``marl.envs.rewards.reward_pipeline``): the PettingZoo path's numpy
boundary (``marl.envs.vector.numpy_rewards``) gives what the tensor path gives, bit for bit, in
every mode, and both give what the numpy pipeline they replaced gave (``numpy_reference``)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from marl.envs import RewardSpec
from marl.envs.rewards import reward_pipeline, team_reward
from marl.envs.vector import numpy_rewards


def numpy_reference(raw, spec, present, counterfactual, phi, phi_next, terminated, ends, held):
    """The numpy reward pipeline ``EnvSlice.step`` ran before the tensor one (``held`` updated in place)."""
    def team(mask):
        total = (raw if mask is None else np.where(mask, raw, 0.0)).sum(axis=-1, keepdims=True)
        return total if spec.team == "sum" else total / raw.shape[-1]

    if spec.mode == "difference":
        reward = team(present) - counterfactual
    elif spec.mode == "individual":
        reward = raw.astype(np.float32, copy=True)
    else:
        shared = np.broadcast_to(team(present), raw.shape)
        reward = (shared if spec.mode == "shared" else spec.alpha * raw + (1.0 - spec.alpha) * shared)
    reward = reward.astype(np.float32)
    if phi is not None:
        reward = (reward + spec.gamma * np.where(terminated, 0.0, phi_next) - phi).astype(np.float32)
    if present is not None:
        reward = np.where(present, reward, 0.0)
    if spec.episodic:
        held += np.asarray(reward, np.float64)
        reward = held * ends
        held *= ~ends
    return reward


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(["shared", "individual", "mixed", "difference"]), team=st.sampled_from(["sum", "mean"]),
       alpha=st.floats(0.0, 1.0), episodic=st.booleans(), shaped=st.booleans(), masked=st.booleans(),
       n=st.integers(1, 6), n_agents=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_the_numpy_boundary_equals_the_tensor_path_and_the_old_numpy_pipeline(
        mode, team, alpha, episodic, shaped, masked, n, n_agents, seed):
    rng = np.random.default_rng(seed)
    shape = (n, n_agents)
    floats = lambda *s, scale=1.0: (rng.normal(size=s) * scale).astype(np.float32)   # noqa: E731
    raw = floats(*shape, scale=10.0 ** rng.integers(-3, 4))
    arrays = {"present": rng.random(shape) < 0.6 if masked else None,
              "counterfactual": floats(*shape) if mode == "difference" else None,
              "phi": floats(n, 1, scale=50.0) if shaped else None,
              "phi_next": floats(n, 1, scale=50.0) if shaped else None,
              "terminated": rng.random(shape) < 0.3, "ends": rng.random(shape) < 0.3,
              "held": rng.normal(size=shape)}
    if masked:   # as EnvSlice.step: only an agent that acted can end its episode
        arrays["ends"] &= arrays["present"]
    spec = RewardSpec(mode, team, alpha, gamma=0.97, episodic=episodic)

    held_numpy, held_tensor, held_ref = arrays["held"], torch.tensor(arrays["held"]), arrays["held"].copy()
    got = numpy_rewards(raw.copy(), spec, **arrays)
    tensors = {k: None if v is None else torch.tensor(v) for k, v in arrays.items()}
    want = reward_pipeline(torch.tensor(raw), spec, **{**tensors, "held": held_tensor})
    ref = numpy_reference(raw, spec, **{**arrays, "held": held_ref})

    assert isinstance(got, np.ndarray) and got.shape == shape
    assert got.dtype == (np.float64 if episodic else np.float32) == ref.dtype
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(held_numpy, held_tensor.numpy())   # updated in place through the boundary
    if masked:
        assert not got[~arrays["present"]].any()
    # numpy and torch sum up to 4 agents in the same order (every shipped env); beyond, they may not
    if n_agents <= 4 or mode == "individual":
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(held_numpy, held_ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * (np.abs(raw).max() + 100.0))


def test_the_team_mean_divides_by_every_agent_present_or_not():
    raw, present = torch.tensor([[1.0, 2.0, 6.0]], dtype=torch.float64), torch.tensor([[True, False, True]])
    assert team_reward(raw, "mean", present).tolist() == [[7.0 / 3]]
    assert team_reward(raw, "sum", present).tolist() == [[7.0]]
    paid = reward_pipeline(raw, RewardSpec("shared", "mean"), present=present)
    assert paid.dtype == torch.float32 and paid[0].tolist() == pytest.approx([7.0 / 3, 0.0, 7.0 / 3])
