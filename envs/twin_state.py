"""What the batched twins of package envs share: snapshots of their tensors and generator, and the
check of a discrete joint action."""
from __future__ import annotations

import torch


def check_discrete_actions(actions: torch.Tensor, shape: tuple[int, int], high, name: str, high_text: str,
                           kind: str = "") -> torch.Tensor:
    """``actions`` as a long tensor of ``shape`` ``(B, N)`` with each entry in ``[0, high)`` (``high``
    an int, or a tensor broadcasting to ``[B, N]``), or a ``ValueError`` naming the env ``name``
    (and its action ``kind``) and stating the range as ``high_text``."""
    if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool \
            or tuple(actions.shape) != shape:
        raise ValueError(f"{name}{kind}: actions must be an integer tensor of shape {shape}, got "
                         f"{actions.dtype} {tuple(actions.shape)}")
    actions = actions.long()
    if actions.lt(0).logical_or_(actions.ge(high)).any():
        raise ValueError(f"{name}: actions out of range; {high_text}")
    return actions


class TensorState:
    """``get_state``/``set_state`` for a twin whose whole continuation is its tensors ``_<key>``
    for each key in ``STATE_KEYS`` and its ``_generator`` (saved as ``rng``), and the check of its
    discrete actions (``N_ACTIONS`` per agent)."""

    STATE_KEYS: tuple[str, ...] = ()
    N_ACTIONS: int = 0

    def _check_actions(self, actions) -> torch.Tensor:
        """``actions`` as a long tensor ``[B, N]`` in ``[0, N_ACTIONS)``, or a ``ValueError``."""
        return check_discrete_actions(torch.as_tensor(actions, device=self.device), (self.num_envs, self.n_agents),
                                      self.N_ACTIONS, self.env_name, f"each agent takes 0 <= a < {self.N_ACTIONS}")

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copies of everything the continuation depends on (batch-first tensors, and ``rng``)."""
        return {**{key: getattr(self, f"_{key}").clone() for key in self.STATE_KEYS},
                "rng": self._generator.get_state()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a ``get_state`` snapshot of a twin of the same task and B."""
        keys = (*self.STATE_KEYS, "rng")
        if set(state) != set(keys):
            raise ValueError(f"set_state: expected keys {sorted(keys)}, got {sorted(state)}")
        for key in self.STATE_KEYS:
            current, value = getattr(self, f"_{key}"), torch.as_tensor(state[key])
            if value.shape != current.shape or value.dtype != current.dtype:
                raise ValueError(f"set_state: {key!r} must be {current.dtype} {tuple(current.shape)}, "
                                 f"got {value.dtype} {tuple(value.shape)}")
        for key in self.STATE_KEYS:
            getattr(self, f"_{key}").copy_(torch.as_tensor(state[key]))
        self._generator.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8).cpu())
