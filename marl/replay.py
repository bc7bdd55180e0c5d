"""Replay: a generic tensor ring, and an episode replay for off-policy learners built on it.

``TensorRing`` keeps ``capacity`` slots of named tensors, overwriting the oldest first, with its
contents in ``state_dict`` so that a checkpoint resumes exactly. It is the one ring buffer of the
project: the episode replay below and the learned reward models' buffers
(``marl.reward_models``) are built on it.

``EpisodeReplay`` stores whole episodes (PyMARL's layout), so that a recurrent utility is unrolled
from each episode's start and no hidden state is ever stored. An episode longer than ``chunk``
steps is cut into chunks of ``chunk`` steps, one slot each. Every slot holds, per field:

- step fields ``[C, ...]`` (one row per step t: actions, reward, terminated, truncated);
- node fields ``[C + 1, ...]`` (one row per state s_t, t = 0..C: obs, state, avail, alive), so the
  state after a slot's last step is there to bootstrap from;
- ``filled [C]`` (real steps; padding is zero) and ``first [C]`` (the episode's first step: only row
  0 of an episode's first chunk).

A slot never holds two episodes, so an unroll over a sampled slot never crosses an episode
boundary. A chunk that starts mid-episode has ``first`` all False; an unroll starts it from a zero
hidden state (R2D2's "zero state" strategy, Kapturowski et al., 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from marl.envs.step_schema import Sizes, layout, torch_dtype
from marl.seeding import torch_stream

Tensor = torch.Tensor
_BOOKKEEPING = ("filled", "first")
NODES = ("obs", "state", "avail", "alive")   # step-schema fields stored per state s_t (C + 1 rows)


@dataclass(frozen=True)
class Field:
    """One stored quantity: its per-row ``shape`` and ``dtype``; ``nodes`` fields have one row per
    state (T + 1 per episode), step fields one row per step (T)."""
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    nodes: bool = False


def schema_fields(sizes: Sizes, names: tuple[str, ...]) -> dict[str, Field]:
    """Replay fields for the step-schema fields ``names`` (``marl.envs.step_schema``), with the
    schema's per-step shapes and dtypes; those in ``NODES`` have one row per state."""
    return {name: Field(shape, torch_dtype(dtype), nodes=name in NODES)
            for name, (shape, dtype) in layout((), sizes, names).items()}


def episode_fields(n_agents: int, obs_dim: int, state_dim: int, n_actions: int, *,
                   reward_dim: int = 1) -> dict[str, Field]:
    """The schema's ``obs [N, O]``, ``state [S]``, ``avail [N, A]`` (legal actions) and ``alive [N]``
    per state and ``actions [N]`` per step; then a team's ``reward [R]`` (1 for a team reward, N for
    individual ones), ``terminated [1]`` and ``truncated [1]`` per step."""
    return {**schema_fields(Sizes(n_agents, obs_dim, state_dim, n_actions), NODES + ("actions",)),
            "reward": Field((reward_dim,), torch.float32),
            "terminated": Field((1,), torch.bool),
            "truncated": Field((1,), torch.bool)}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class TensorRing:
    """``capacity`` slots of named tensors ``{name: [capacity, *shape]}`` on ``device``; writes
    overwrite the oldest slots first.

    Args:
        capacity: the number of slots.
        shapes: ``{name: (shape, dtype)}``, the per-slot shape of each tensor.
        device: where the storage lives.
    """

    def __init__(self, capacity: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device | str = "cpu"):
        self.capacity = _positive_int("capacity", capacity)
        self.device = torch.device(device)
        self.shapes = {name: (tuple(shape), dtype) for name, (shape, dtype) in shapes.items()}
        self.storage = {name: torch.zeros(capacity, *shape, dtype=dtype, device=self.device)
                        for name, (shape, dtype) in self.shapes.items()}
        self.position = 0       # the next slot to write
        self.size = 0           # slots held

    def __len__(self) -> int:
        return self.size

    def write(self, rows: dict[str, Tensor]) -> Tensor:
        """Store ``rows {name: [K, *shape]}`` (every name, cast to its dtype) in K slots; past
        ``capacity`` only the last ``capacity`` rows are kept. Returns the slots written ``[K']``."""
        if set(rows) != set(self.shapes):
            raise ValueError(f"rows has tensors {sorted(rows)}, expected {sorted(self.shapes)}")
        counts = {len(x) for x in rows.values()}
        if len(counts) != 1:
            raise ValueError(f"rows disagree on their count: {({k: len(v) for k, v in rows.items()})}")
        for name, x in rows.items():
            if tuple(x.shape[1:]) != self.shapes[name][0]:
                raise ValueError(f"{name} has rows of shape {tuple(x.shape[1:])}, expected {self.shapes[name][0]}")
        count = min(counts.pop(), self.capacity)
        slots = (self.position + torch.arange(count, device=self.device)) % self.capacity
        for name, x in rows.items():
            self.storage[name][slots] = x[len(x) - count:].detach().to(self.device, self.shapes[name][1])
        self.position = (self.position + count) % self.capacity
        self.size = min(self.size + count, self.capacity)
        return slots

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``batch_size`` slots drawn uniformly with replacement from those held, ``[B]`` int64 on the
        CPU (``generator``'s device)."""
        return torch.randint(self.size, (batch_size,), generator=generator)

    def widen(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Grow the per-slot shapes of the tensors named in ``shapes`` (same rank, no dim smaller):
        what is held stays at the start of each dim, the new room is zeros."""
        for name, shape in shapes.items():
            old, dtype = self.shapes[name]
            shape = tuple(shape)
            if len(shape) != len(old) or any(n < o for n, o in zip(shape, old)):
                raise ValueError(f"{name} can only grow from {old}, got {shape}")
            grown = torch.zeros(self.capacity, *shape, dtype=dtype, device=self.device)
            grown[(slice(None), *map(slice, old))] = self.storage[name]
            self.storage[name], self.shapes[name] = grown, (shape, dtype)

    def read(self, index: Tensor) -> dict[str, Tensor]:
        """The slots ``index [B]``: ``{name: [B, *shape]}`` (copies)."""
        index = index.to(self.device)
        return {name: x[index] for name, x in self.storage.items()}

    def nbytes(self) -> int:
        """Bytes of the allocated storage."""
        return sum(x.numel() * x.element_size() for x in self.storage.values())

    def state_dict(self) -> dict:
        """The slots held, copied, and the write position (loads with ``weights_only=True``)."""
        return {"storage": {k: v[: self.size].clone() for k, v in self.storage.items()},
                "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output, so later writes land where they would have.

        Raises:
            ValueError: if the state holds other tensors, other shapes, or more slots than ``capacity``.
        """
        size = int(state["size"])
        stored = state["storage"]
        if set(stored) != set(self.shapes) or size > self.capacity or any(
                tuple(stored[k].shape) != (size, *self.shapes[k][0]) for k in self.shapes):
            raise ValueError(f"state holds {size} slots of {({k: tuple(v.shape[1:]) for k, v in stored.items()})}, "
                             f"this ring keeps {self.capacity} of {({k: s for k, (s, _) in self.shapes.items()})}")
        for name, x in self.storage.items():
            x.zero_()
            x[:size] = stored[name].to(self.device, x.dtype)
        self.position, self.size = int(state["position"]), size


class Sample(NamedTuple):
    """A batch of B slots, time-major and trimmed to the longest: step fields ``[T, B, ...]``, node
    fields ``[T + 1, B, ...]``; ``filled`` and ``first`` ``[T, B]``; the slots ``index [B]`` and the
    importance weights ``weight [B]`` (ones under uniform sampling)."""
    data: dict[str, Tensor]
    filled: Tensor
    first: Tensor
    index: Tensor
    weight: Tensor


class EpisodeReplay:
    """Episodes (or ``chunk``-step chunks of longer ones) in a ``TensorRing``, sampled uniformly or
    in proportion to their TD error (prioritised replay, Schaul et al., 2016, arXiv:1511.05952).

    Args:
        fields: ``{name: Field}``, e.g. ``episode_fields(...)``; ``filled``/``first`` are added.
        capacity: slots, i.e. episodes when they fit in one chunk.
        chunk: C, the steps a slot holds (the episode limit, or ``algo.replay_chunk`` if shorter).
        device: where the storage lives (the learner's device).
        seed: seeds the generator that draws samples (its state is in ``state_dict``).
        alpha: prioritisation exponent; 0 samples uniformly, 1 in proportion to the priority.
    """

    def __init__(self, fields: dict[str, Field], *, capacity: int, chunk: int, device: torch.device | str = "cpu",
                 seed: int = 0, alpha: float = 0.0):
        clash = set(fields) & set(_BOOKKEEPING)
        if clash:
            raise ValueError(f"fields {sorted(clash)} are kept by the replay itself; rename them")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.fields, self.chunk, self.alpha = dict(fields), _positive_int("chunk", chunk), float(alpha)
        shapes = {name: ((chunk + f.nodes, *f.shape), f.dtype) for name, f in self.fields.items()}
        shapes.update({name: ((chunk,), torch.bool) for name in _BOOKKEEPING})
        self.ring = TensorRing(capacity, shapes, device)
        self.generator = torch_stream(seed)
        self.priorities = torch.zeros(capacity, dtype=torch.float64)
        self.max_priority = 1.0

    def __len__(self) -> int:
        return len(self.ring)

    def add(self, episodes: dict[str, Tensor], lengths: Tensor) -> int:
        """Store E finished episodes, time-major from their first step: step fields ``[L, E, ...]``,
        node fields ``[L + 1, E, ...]`` and ``lengths [E]`` (1 ≤ length ≤ L; rows past an episode's
        length are ignored). Returns the number of slots written.
        """
        if set(episodes) != set(self.fields):
            raise ValueError(f"episodes has fields {sorted(episodes)}, expected {sorted(self.fields)}")
        lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
        steps = {len(x) - self.fields[k].nodes for k, x in episodes.items()}
        if len(steps) != 1:
            raise ValueError("episodes disagree on their length L: step fields need L rows, node fields L + 1")
        L = steps.pop()
        if lengths.dim() != 1 or not ((lengths >= 1) & (lengths <= L)).all():
            raise ValueError(f"lengths must be [E] ints in [1, {L}], got {lengths.tolist()}")
        for name, x in episodes.items():
            if tuple(x.shape[1:]) != (len(lengths), *self.fields[name].shape):
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected "
                                 f"{(L + self.fields[name].nodes, len(lengths), *self.fields[name].shape)}")
        C, written = self.chunk, 0
        for j in range(math.ceil(int(lengths.max()) / C)):
            rows = (lengths > j * C).nonzero()[:, 0]
            size = (lengths[rows] - j * C).clamp(max=C)                         # steps in this chunk [K]
            filled = torch.arange(C)[:, None] < size                            # [C, K] real steps
            masks = {False: filled, True: torch.arange(C + 1)[:, None] <= size}  # and their states
            chunk = {"filled": filled.T, "first": torch.zeros(len(rows), C, dtype=torch.bool)}
            if j == 0:
                chunk["first"][:, 0] = True
            for name, x in episodes.items():
                field = self.fields[name]
                part = x[j * C: (j + 1) * C + field.nodes, rows.to(x.device)]
                padded = part.new_zeros(C + field.nodes, *part.shape[1:])
                padded[: len(part)] = part
                keep = masks[field.nodes].to(x.device).reshape(*padded.shape[:2], *[1] * len(field.shape))
                chunk[name] = padded.masked_fill(~keep, 0).movedim(1, 0)
            slots = self.ring.write(chunk)
            self.priorities[slots.cpu()] = self.max_priority
            written += len(slots)
        return written

    def sample(self, batch_size: int, *, beta: float = 1.0) -> Sample:
        """B slots drawn with replacement: uniformly (``alpha == 0``), or with probability
        ``P ∝ p^α`` and importance weights ``(n P)^(−β)`` divided by their batch maximum.

        Raises:
            ValueError: if the replay is empty.
        """
        _positive_int("batch_size", batch_size)
        n = len(self.ring)
        if not n:
            raise ValueError("EpisodeReplay.sample: the replay is empty; add episodes first")
        if self.alpha == 0.0:
            index = self.ring.sample_indices(batch_size, self.generator)
            weight = torch.ones(batch_size)
        else:
            probs = self.priorities[:n] ** self.alpha
            probs = probs / probs.sum()
            index = torch.multinomial(probs, batch_size, replacement=True, generator=self.generator)
            weight = (n * probs[index]) ** (-beta)
            weight = (weight / weight.max()).float()
        slots = self.ring.read(index)
        T = int(slots["filled"].sum(dim=1).max())
        data = {name: slots[name][:, : T + f.nodes].movedim(1, 0) for name, f in self.fields.items()}
        return Sample(data, slots["filled"][:, :T].T, slots["first"][:, :T].T, index,
                      weight.to(self.ring.device))

    def update_priorities(self, index: Tensor, priority: Tensor) -> None:
        """Set the priorities of slots ``index [B]`` to ``|priority| + 1e-6`` (e.g. each slot's mean
        absolute TD error over its filled steps); new slots get the largest priority seen."""
        p = priority.detach().abs().double().cpu() + 1e-6
        self.priorities[index.cpu()] = p
        self.max_priority = max(self.max_priority, float(p.max()))

    def nbytes(self) -> int:
        """Bytes of the allocated storage (what a full replay's checkpoint holds, about)."""
        return self.ring.nbytes() + self.priorities.numel() * self.priorities.element_size()

    def state_dict(self) -> dict:
        """Slots, priorities and the sampling generator (loads with ``weights_only=True``)."""
        n = len(self.ring)
        return {"ring": self.ring.state_dict(), "chunk": self.chunk, "priorities": self.priorities[:n].clone(),
                "max_priority": self.max_priority, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output: later adds and samples are those of an uninterrupted run.

        Raises:
            ValueError: if the state was written with another chunk, other fields or a larger capacity.
        """
        if int(state["chunk"]) != self.chunk:
            raise ValueError(f"state holds chunks of {state['chunk']} steps, this replay's chunk is {self.chunk}")
        self.ring.load_state_dict(state["ring"])
        self.priorities.zero_()
        self.priorities[: len(self.ring)] = state["priorities"]
        self.max_priority = float(state["max_priority"])
        self.generator.set_state(state["generator"])
