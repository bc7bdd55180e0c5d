"""The step schema (``marl.envs.step_schema``) is the one list of a step's fields: every consumer's
field set, shapes and dtypes come from it (both env paths, the rollout, the credit views' episodes,
the q learner's replay, the RLlib connector), so a field cannot be added in one place only."""
import dataclasses

import numpy as np
import pytest
import torch

from marl.config import config_from_dict
from marl.credit import episode_venv, play_episode
from marl.envs import RewardSpec, make_vector_env
from marl.envs.batched import BatchedVectorEnv, TensorStep, make_batched_env
from marl.envs.step_schema import (BY_NAME, CURRENT, ENV_STEP, FIELDS, ROLLOUT, STEP_OUTCOME, SUCCESSOR, Sizes,
                                   layout, torch_dtype)
from marl.envs.team_env import TeamEnv
from marl.envs.vector import StepBatch, _step_layout
from marl.q_learner import q_fields
from marl.replay import NODES, Field, episode_fields
from marl.rollout import Rollout
from marl.trainer import Trainer
from tests.conftest import tiny_config

SPREAD = ("mpe2:simple_spread_v3", {"N": 3, "max_cycles": 5})


def shapes_of(arrays: dict) -> dict:
    """``{name: (shape, dtype)}`` of numpy arrays or tensors, dtypes as torch's."""
    return {k: (tuple(v.shape), v.dtype if torch.is_tensor(v) else torch_dtype(v.dtype)) for k, v in arrays.items()}


def as_torch(table: dict) -> dict:
    return {k: (shape, torch_dtype(dtype)) for k, (shape, dtype) in table.items()}


def test_the_schema_names_each_field_once_and_every_field_has_a_consumer():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names)) == len(BY_NAME)
    assert set(CURRENT) <= set(ENV_STEP) & set(ROLLOUT)
    assert set(STEP_OUTCOME) == (set(ENV_STEP) & set(ROLLOUT)) - set(CURRENT)
    assert all(f.current or f.env or f.rollout for f in FIELDS)
    assert all(f.doc and isinstance(f.per_agent, bool) for f in FIELDS)
    assert SUCCESSOR == {"obs": "next_obs", "state": "next_state", "avail": "next_avail"}
    for name, successor in SUCCESSOR.items():   # a successor is laid out as the field it follows
        assert (BY_NAME[name].per_agent, BY_NAME[name].trailing, BY_NAME[name].dtype) == \
            (BY_NAME[successor].per_agent, BY_NAME[successor].trailing, BY_NAME[successor].dtype)


def test_layout_writes_the_leading_dims_then_agents_then_the_env_sizes():
    sizes = Sizes(n_agents=3, obs_dim=4, state_dim=5, n_actions=6, hidden=7, obs_dtype=np.uint8)
    table = layout((2, 8), sizes)
    assert list(table) == list(ROLLOUT)
    assert table["obs"] == ((2, 8, 3, 4), np.uint8) and table["next_obs"] == ((2, 8, 3, 4), np.uint8)
    assert table["state"] == ((2, 8, 5), np.float32) and table["first"] == ((2, 8), bool)
    assert table["avail"] == ((2, 8, 3, 6), bool) and table["actor_h"] == ((2, 8, 3, 7), np.float32)
    assert table["actions"] == ((2, 8, 3), np.int64)
    assert layout((2,), dataclasses.replace(sizes, continuous=True), ("actions",)) == \
        {"actions": ((2, 3, 6), np.float32)}


def test_step_batch_and_tensor_step_hold_the_env_step_fields():
    assert [f.name for f in dataclasses.fields(StepBatch)] == list(ENV_STEP) + ["episodes"]
    assert TensorStep.__slots__ == ENV_STEP + ("episodes",)


@pytest.mark.parametrize("env_id, kwargs", [SPREAD, ("mpe2:simple_spread_v3", {"N": 2, "max_cycles": 5,
                                                                              "continuous_actions": True}),
                                            ("tests.image_envs:blob_quadrants", {})])
def test_both_pettingzoo_paths_fill_the_schema_layout(env_id, kwargs):
    """The shared arrays (``_step_layout``, in-process and in worker processes) and every
    ``StepBatch`` are the schema's ``ENV_STEP`` fields for ``[B]`` envs; obs follow the env's dtype
    (uint8 images) and actions its action space."""
    probe = TeamEnv(env_id, kwargs)
    sizes = Sizes.of(probe)
    probe.close()
    expected = layout((2,), sizes, ENV_STEP)
    probe = TeamEnv(env_id, kwargs)
    assert _step_layout(2, probe) == {**expected, **layout((2,), sizes, ("actions",))}
    probe.close()
    for workers in (0, 1):
        venv = make_vector_env(env_id, kwargs, 2, RewardSpec(), workers)
        assert Sizes.of(venv) == sizes
        current = venv.reset([0, 1])
        assert shapes_of(current) == as_torch(layout((2,), sizes, CURRENT))
        shape, dtype = layout((2,), sizes, ("actions",))["actions"]
        step = venv.step(np.zeros(shape, dtype))
        assert shapes_of({name: getattr(step, name) for name in ENV_STEP}) == as_torch(expected)
        venv.close()


def test_the_batched_path_steps_the_schema_fields_as_tensors():
    venv = BatchedVectorEnv(make_batched_env(*SPREAD, 4), RewardSpec())
    sizes = Sizes.of(venv)
    assert shapes_of(venv.reset(0)) == as_torch(layout((4,), sizes, CURRENT))
    step = venv.step(torch.zeros(layout((4,), sizes, ("actions",))["actions"][0], dtype=torch.long))
    assert shapes_of({name: getattr(step, name) for name in ENV_STEP}) == as_torch(layout((4,), sizes, ENV_STEP))
    venv.close()


@pytest.mark.parametrize("device", [None, "cpu"])
def test_rollout_storage_is_the_schema_rollout_layout(device):
    assert [f.name for f in dataclasses.fields(Rollout)] == list(ROLLOUT)
    sizes = Sizes(3, 4, 5, 6, hidden=7, continuous=True, obs_dtype=np.uint8)
    buf = Rollout.allocate(2, 8, 3, 4, 5, 6, device=device, continuous=True, hidden=7, obs_dtype=np.uint8)
    assert shapes_of(vars(buf)) == as_torch(layout((2, 8), sizes))


def test_a_trainers_rollout_and_a_credit_episode_are_the_schema_rollout_layout():
    cfg = config_from_dict(tiny_config(env={"kwargs": {"N": 3, "max_cycles": 5}}, algo={"rollout_steps": 5}))
    trainer = Trainer(cfg)
    sizes = Sizes.of(trainer.venv, trainer.actor.hidden_size)
    trainer.collect()
    assert shapes_of(trainer.rollout.tensors()) == as_torch(layout((5, cfg.env.num_envs), sizes))
    venv = episode_venv(trainer)
    batch = play_episode(trainer, venv, seed=3, generator=torch.Generator().manual_seed(3))
    venv.close()
    trainer.close()
    assert shapes_of(batch) == as_torch(layout((5, 1), sizes))


def test_the_replays_step_fields_are_the_schemas():
    """The q learner stores schema fields with their schema shapes; the generic episode replay
    differs only in its team reward and flags."""
    sizes = Sizes(3, 4, 5, 6)
    fields = q_fields(3, 4, 5, 6)
    assert set(fields) <= set(ROLLOUT)
    assert {k: (f.shape, f.dtype) for k, f in fields.items()} == as_torch(layout((), sizes, tuple(fields)))
    assert {k for k, f in fields.items() if f.nodes} == set(NODES) <= set(CURRENT)
    # the shapes the replay stored before the schema, written out (3 agents, obs 4, state 5, 6 actions)
    assert fields["obs"] == Field((3, 4), torch.float32, True) and fields["state"] == Field((5,), torch.float32, True)
    assert fields["avail"] == Field((3, 6), torch.bool, True) and fields["actions"] == Field((3,), torch.int64)
    generic = episode_fields(3, 4, 5, 6, reward_dim=3)
    assert set(generic) <= set(ROLLOUT)
    own = {k: (f.shape, f.dtype) for k, f in generic.items() if k not in ("reward", "terminated", "truncated")}
    assert own == as_torch(layout((), sizes, tuple(own)))


def test_the_rllib_connector_builds_schema_fields():
    """``to_time_major`` turns RLlib module rows back into rollout fields, with the schema's shapes
    and dtypes; the env's info keys name schema fields."""
    pytest.importorskip("ray")
    from ray.rllib.core.columns import Columns

    from marl.rllib import env as rllib_env
    from marl.rllib.connectors import to_time_major
    from marl.rllib.module import ALIVE, ENV_FLAGS, INDEX, STATE

    assert {rllib_env.STATE, rllib_env.ALIVE, rllib_env.TERMINATED, rllib_env.TRUNCATED} == \
        {f"marl_{name}" for name in ("state", "alive", "terminated", "truncated")}
    N, O, S, A, B, L = 2, 4, 5, 3, 2, 4   # L rows per chunk and agent, the last one the bootstrap row
    index = torch.tensor([(b, t, i) for b in range(B) for i in range(N) for t in range(L)])
    rows = len(index)
    avail = torch.ones(rows, A)
    mb = {INDEX: index, Columns.LOSS_MASK: index[:, 1] < L - 1,
          Columns.OBS: torch.cat([torch.randn(rows, O), torch.nn.functional.one_hot(index[:, 2], N).float(), avail], -1),
          STATE: torch.randn(rows, S), ENV_FLAGS: torch.zeros(rows, 2, dtype=torch.bool),
          ALIVE: torch.ones(rows, dtype=torch.bool), Columns.ACTIONS: torch.randint(A, (rows,)),
          Columns.ACTION_LOGP: torch.randn(rows), Columns.REWARDS: torch.randn(rows)}
    batch, _ = to_time_major(mb, O, N, dynamic_mask=True)
    assert set(batch) <= set(ROLLOUT)
    assert shapes_of(batch) == as_torch(layout((L - 1, B), Sizes(N, O, S, A), tuple(batch)))
