"""Every random stream of a run, named in one place.

Each stream derives from one seed (``cfg.seed``, or an evaluation's or a credit view's own seed)
by a fixed path, through ``numpy.random.SeedSequence`` where one seed feeds several streams, so two
streams never share draws and one stream's numbers do not depend on how much another drew.

| stream | what draws from it | seeded with |
|---|---|---|
| init | network initialisation (torch's global generator) | ``seed`` |
| learner | the update's draws (minibatch order, sampled coalitions, ...) | ``seed`` |
| env resets | first reset of each env when collection starts at iteration ``i`` | ``[seed, i]``, one per env |
| episodes | later resets of an env first reset with ``b`` (``episode_seed``, in ``marl.envs``) | ``[b, k]`` |
| async actions | action draws of a rollout collected in the background at iteration ``i`` | ``[seed, i, 1]`` |
| worker actions | action draws of env worker ``w`` at iteration ``i`` (``train.act_in_workers``) | ``[seed, i, 2, w]`` |
| evaluation | action draws of an evaluation or a credit view's episode | its ``seed`` |
| view episodes | the ``k``-th episode of a fidelity or oracle view | ``seed * 1_000_003 + k`` |
| oracle | chosen states, branch actions, independent env noise | ``[seed, 0x0AC1E]``, ``[seed, 1]``, ``[seed, 2]`` |
| reward model | a reward model's initialisation and batch draws | ``seed`` |
| replay | which chunks a replay samples | ``seed`` |

Episode seeds ``[b, k]`` share their path's shape with the oracle's ``[seed, tag]``: they meet only
where an env's reset seed equals a view's seed (kept, so that runs keep their numbers).

A twin env's own generator is seeded by its reset seed (``marl.envs``); ``marl.compare`` seeds
numpy's global generator around rliable's bootstrap, which reads no other.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from marl.envs.vector import episode_seed

__all__ = [
    "ORACLE_ACTIONS",
    "ORACLE_NOISE",
    "ORACLE_STATES",
    "async_actions_seed",
    "env_reset_seeds",
    "episode_seed",
    "init_scope",
    "numpy_stream",
    "path_seed",
    "seed_init",
    "torch_stream",
    "view_episode_seed",
    "worker_actions_seed",
]

# the last step of the oracle's paths [seed, tag]
ORACLE_STATES, ORACLE_ACTIONS, ORACLE_NOISE = 0x0AC1E, 1, 2
_ASYNC_ACTIONS, _WORKER_ACTIONS = 1, 2   # [seed, iteration, tag, ...]


def seed_init(seed: int) -> None:
    """Seed torch's global generator, from which networks initialise (the init stream)."""
    torch.manual_seed(seed)


@contextmanager
def init_scope(seed: int):
    """Initialise inside with ``seed``, leaving torch's global generator as it was (a reward model
    built mid-run must not shift the run's other draws)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def torch_stream(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def numpy_stream(*path: int) -> np.random.Generator:
    """A numpy ``Generator`` seeded with the path ``[seed, tag, ...]``."""
    return np.random.default_rng(list(path))


def path_seed(*path: int, bits: int = 32) -> int:
    """One ``bits``-bit seed (32 or 64) drawn from the path ``[seed, tag, ...]``."""
    return int(np.random.SeedSequence(list(path)).generate_state(1, np.uint64 if bits == 64 else np.uint32)[0])


def env_reset_seeds(seed: int, iteration: int, n: int) -> np.ndarray:
    """``[n]`` uint32 seeds of the envs' first reset when collection starts at ``iteration``."""
    return np.random.SeedSequence([seed, iteration]).generate_state(n)


def async_actions_seed(seed: int, iteration: int) -> int:
    """Seed of the action draws of the rollout collected in the background at ``iteration``."""
    return path_seed(seed, iteration, _ASYNC_ACTIONS, bits=64)


def worker_actions_seed(seed: int, iteration: int, worker: int) -> int:
    """Seed of env worker ``worker``'s action draws at ``iteration`` (``train.act_in_workers``)."""
    return path_seed(seed, iteration, _WORKER_ACTIONS, worker, bits=64)


def view_episode_seed(seed: int, k: int) -> int:
    """Seed of the ``k``-th episode (env reset and action draws) of a fidelity or oracle view."""
    return seed * 1_000_003 + k
