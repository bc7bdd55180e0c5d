"""Snapshots of live environments: bytes that restore an env mid-episode, RNG state included.

Plain ``pickle`` (and ``copy.deepcopy``) of most Gymnasium and PettingZoo envs silently gives a
*fresh* env: their classes derive from ``gymnasium.utils.EzPickle``, which pickles the constructor
arguments and re-runs ``__init__`` on load. A snapshot instead pickles such objects by their
``__dict__`` (the live state: positions, step counters, ``np_random``), and drops rendering handles
(pygame surfaces and fonts, pyglet windows), which cannot be pickled and are not part of the state.
An env restored from a snapshot continues exactly where the original was (tested on mpe2), but it
cannot render. A ``Box`` space with the same bound everywhere is pickled by its bounds and shape
(an image env's spaces are otherwise 4 arrays of the image's size each).
"""
from __future__ import annotations

import copyreg
import io
import pickle

import numpy as np
from gymnasium import spaces
from gymnasium.utils.ezpickle import EzPickle

from marl.envs.errors import EnvError

_RENDER_MODULES = frozenset({"pygame", "pyglet"})


def _restore_dict(obj, state: dict) -> None:
    obj.__dict__.update(state)


def _box(low, high, shape: tuple, dtype: str, np_random) -> spaces.Box:
    box = spaces.Box(low, high, shape, np.dtype(dtype))
    box._np_random = np_random
    return box


def _uniform(values: np.ndarray) -> bool:
    return values.size > 0 and bool((values == values.flat[0]).all())


class _StatePickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, type):
            return NotImplemented
        if type(obj) is spaces.Box and obj.low.size > 64 and _uniform(obj.low) and _uniform(obj.high):
            return _box, (obj.low.flat[0], obj.high.flat[0], obj.shape, obj.dtype.str, obj._np_random)
        if (type(obj).__module__ or "").partition(".")[0] in _RENDER_MODULES:
            return type(None), ()
        if isinstance(obj, EzPickle):
            return copyreg.__newobj__, (type(obj),), dict(obj.__dict__), None, None, _restore_dict
        return NotImplemented


def snapshot(obj) -> bytes:
    """The live state of ``obj`` (an env, or a structure holding envs) as bytes.

    Raises:
        EnvError: naming what could not be pickled.
    """
    buffer = io.BytesIO()
    try:
        _StatePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError) as exc:
        # ValueError: ctypes objects holding pointers (magent2's C engine)
        raise EnvError(f"cannot snapshot the env ({type(exc).__name__}: {exc})") from None
    return buffer.getvalue()


def restore(data: bytes):
    """The object a ``snapshot`` was taken of, as it was then. This unpickles ``data``, which runs
    whatever code it names: pass only bytes this process made, or that were authenticated (a
    checkpoint's env state is signed; see ``marl.checkpoint``)."""
    return pickle.loads(data)


def copy_env(obj):
    """A deep copy of a live env that continues exactly as ``obj`` would (``copy.deepcopy`` gives a
    fresh env for EzPickle envs; see the module docstring)."""
    return restore(snapshot(obj))
