"""Stepping envs with a policy: the one loop behind training rollouts (in the learner process, or in
env workers that act for their own envs, ``train.act_in_workers``), evaluation and credit analysis."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch

from marl.envs.step_schema import CURRENT, STEP_OUTCOME, Sizes, layout, torch_dtype
from marl.envs.vector import StepBatch, SyncVectorEnv
from marl.seeding import torch_stream


@dataclass
class Rollout:
    """Time-major rollout storage, ``[T, B, N, ...]``, as numpy arrays (or tensors) preallocated once:
    the ``ROLLOUT`` fields of ``marl.envs.step_schema`` (shapes, dtypes and docs there), row t
    for step t. ``alive[t]`` marks the agents that acted at step t (see ``marl.envs.team_env``)."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    alive: np.ndarray
    first: np.ndarray
    actor_h: np.ndarray
    next_obs: np.ndarray
    next_state: np.ndarray
    next_avail: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    raw_reward: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    @classmethod
    def allocate(cls, T, B, N, obs_dim, state_dim, n_actions, device: torch.device | str | None = None,
                 continuous: bool = False, hidden: int = 0, obs_dtype=np.float32, state_dtype=np.float32):
        """Zeroed storage: numpy arrays, or with ``device`` torch tensors there (the batched-env path).
        ``obs_dtype``/``state_dtype``: the env's (uint8 for uint8 images, converted by the networks)."""
        shapes = layout((T, B), Sizes(N, obs_dim, state_dim, n_actions, hidden, continuous, obs_dtype, state_dtype))
        if device is None:
            return cls(**{k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()})
        return cls(**{k: torch.zeros(shape, dtype=torch_dtype(dtype), device=device)
                      for k, (shape, dtype) in shapes.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields as tensors (sharing the numpy arrays' memory)."""
        return {k: torch.as_tensor(v) for k, v in vars(self).items()}


class PolicyStep(NamedTuple):
    """One step of ``policy_steps``: what the agents acted on (``venv.current()`` layout), their
    actions and log-probabilities, the ``StepBatch`` it led to, and a recurrent actor's hidden
    state before and after the step (None for a feed-forward actor)."""

    current: dict
    actions: np.ndarray | torch.Tensor
    logp: np.ndarray | torch.Tensor
    step: StepBatch
    hidden: torch.Tensor | None
    next_hidden: torch.Tensor | None


def policy_steps(venv, actor, generator: torch.Generator | None, greedy: bool = False,
                 autoreset: bool = True, hidden: torch.Tensor | None = None) -> Iterator[PolicyStep]:
    """Step ``venv`` with ``actor`` from where its envs are now, one step per iteration, for as long
    as the caller pulls (see ``PolicyStep``). Inference is one batched forward over envs and
    agents; actions are sampled from ``generator``, or the most likely (the Gaussian mean) when
    ``greedy``. A recurrent actor starts from ``hidden [B, N, H]`` (zeros if None), reset where an
    episode starts. Arrays are numpy for PettingZoo vector envs and tensors for batched ones
    (``venv.on_tensors``)."""
    masked, on_tensors = venv.dynamic_mask, getattr(venv, "on_tensors", False)
    static = None if on_tensors else np.asarray(venv.action_mask, dtype=bool)
    device = next(actor.parameters()).device
    current = venv.current()
    if hidden is None:
        hidden = actor.initial_hidden(venv.num_envs, device=device)
    while True:
        with torch.no_grad():
            if hidden is not None:
                starts = torch.as_tensor(current["first"], device=device)
                hidden = hidden * (~starts).to(hidden.dtype)[:, None, None]
            avail = current["avail"] if masked else None
            if avail is not None and static is not None and (avail == static).all():
                avail = None   # no per-step mask in this step: the actor's static mask gives the same logits
            out, next_hidden = actor.step(torch.as_tensor(current["obs"], device=device),
                                          None if avail is None else torch.as_tensor(avail, device=device), hidden)
            dist = actor.distribution(out)
            actions = dist.mode() if greedy else dist.sample(generator)
            logp = dist.log_prob(actions)
        if not on_tensors:
            actions, logp = actions.cpu().numpy(), logp.cpu().numpy()
        step = venv.step(actions, autoreset)
        yield PolicyStep(current, actions, logp, step, hidden, next_hidden)
        current = {k: getattr(step, k) for k in CURRENT}
        hidden = next_hidden


def collect_rollout(venv, buf: Rollout, actor, generator: torch.Generator,
                    hidden: torch.Tensor | None = None) -> tuple[list[dict], torch.Tensor | None]:
    """Fill ``buf`` with ``T = len(buf.obs)`` steps of ``venv``, continuing its episodes where they
    are, acting with ``actor`` (a recurrent one from ``hidden``) and drawing actions from
    ``generator``. Returns the episodes that finished and the actor's hidden state after the last
    step. ``buf`` holds numpy arrays for a PettingZoo vector env, tensors on the env's device for a
    batched one."""
    T = buf.obs.shape[0]
    episodes, last = [], hidden
    for t, ps in zip(range(T), policy_steps(venv, actor, generator, hidden=hidden)):
        current, step = ps.current, ps.step
        for k in CURRENT:
            getattr(buf, k)[t] = current[k]
        if ps.hidden is not None:
            buf.actor_h[t] = ps.hidden if torch.is_tensor(buf.actor_h) else ps.hidden.cpu().numpy()
        buf.actions[t], buf.logp[t] = ps.actions, ps.logp
        for k in STEP_OUTCOME:
            getattr(buf, k)[t] = getattr(step, k)
        episodes.extend(step.episodes)
        last = ps.next_hidden
    return episodes, last


def act_in_worker(env_slice, pickled_actor: bytes, T: int, action_seed: int,
                  hidden: np.ndarray | None = None) -> tuple[dict, list, np.ndarray | None]:
    """Run in an env worker process (see ``marl.envs.vector.ProcessVectorEnv.call``): collect ``T``
    steps of the worker's own envs, continuing their episodes, with the actor in ``pickled_actor``
    (plain pickle bytes, so its weights travel inline rather than through torch's shared-memory
    tensor sharing), a recurrent one from ``hidden [n, N, H]``. Returns the rollout's arrays
    ``[T, n, ...]``, the finished episodes (their ``env`` is the row within the worker's slice) and
    the actor's hidden state after the last step."""
    torch.set_num_threads(1)
    actor = pickle.loads(pickled_actor)
    buf = Rollout.allocate(T, env_slice.n, env_slice.n_agents, env_slice.obs_dim, env_slice.state_dim,
                           env_slice.n_actions, continuous=env_slice.continuous, hidden=actor.hidden_size,
                           obs_dtype=env_slice.obs_dtype, state_dtype=env_slice.state_dtype)
    episodes, last = collect_rollout(SyncVectorEnv(env_slice), buf, actor, torch_stream(action_seed),
                                     None if hidden is None else torch.from_numpy(hidden))
    return vars(buf), episodes, None if last is None else last.numpy()
