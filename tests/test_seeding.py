"""The named seed streams of ``marl.seeding``: fixed numbers (a changed path would silently change
every run's draws) and no two streams alike."""
import torch

from marl import seeding


def test_each_stream_keeps_its_numbers():
    # pinned from the code before the streams were named (marl/trainer.py, marl/rollout.py, marl/oracle.py)
    assert seeding.env_reset_seeds(7, 3, 2).tolist() == [3466196061, 1178487100]
    assert seeding.async_actions_seed(7, 3) == 13330671360687115049
    assert seeding.worker_actions_seed(7, 3, 1) == 2676234640480665603
    assert seeding.path_seed(7, seeding.ORACLE_ACTIONS) == 369571992
    assert seeding.view_episode_seed(7, 2) == 7 * 1_000_003 + 2
    assert seeding.episode_seed(5, 0) == 5


def test_streams_drawn_from_one_seed_differ():
    seeds = [int(seeding.env_reset_seeds(7, 3, 1)[0]), seeding.async_actions_seed(7, 3),
             seeding.worker_actions_seed(7, 3, 0), seeding.worker_actions_seed(7, 3, 1),
             seeding.path_seed(7, seeding.ORACLE_ACTIONS)]
    assert len(set(seeds)) == len(seeds)
    a, b = seeding.numpy_stream(7, seeding.ORACLE_STATES), seeding.numpy_stream(7, seeding.ORACLE_NOISE)
    assert a.integers(2**31) != b.integers(2**31)


def test_init_scope_leaves_the_global_stream_where_it_was():
    seeding.seed_init(0)
    expected = torch.rand(3)
    seeding.seed_init(0)
    with seeding.init_scope(123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(inside, torch.rand(3, generator=seeding.torch_stream(123)))
