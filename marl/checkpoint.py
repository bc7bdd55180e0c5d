"""Atomic checkpoints that load with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the networks built from its run's config."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, then rename.

    A run killed mid-write keeps its previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with the safe unpickler (tensors, numbers, strings, containers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def load_checkpoint_into(load_state_dict, path: str | Path) -> None:
    """Load the checkpoint at ``path`` and pass it to ``load_state_dict``.

    Raises:
        CheckpointError: when it cannot be read, or its tensors or keys do not fit (for instance a
            checkpoint written by an older version whose networks stored their weights differently).
    """
    try:
        state = load_checkpoint(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path} could not be read ({_last_line(exc)})") from None
    try:
        load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not fit the networks built from the run's config ({_last_line(exc)}): "
                              f"a --set that changes the networks or the collection mode, or a checkpoint "
                              f"written by another version of marl") from None


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__
