"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the key that signs the
one part of a checkpoint that is code: the envs' pickled live state.

``weights_only=True`` makes the tensors, numbers and strings of a checkpoint safe to load, but the
env state (``marl.envs.snapshot``) is a pickle, and unpickling runs code. So it is signed with an
HMAC-SHA256 under a key private to the user (``$MARL_CREDIT_KEY_FILE``, else
``$XDG_CONFIG_HOME/marl-credit/key``, else ``~/.config/marl-credit/key``; created on first use,
mode 0600), and only ``marl train --resume`` unpickles it, once the signature checks out (or the
user says ``--trust-env-state``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"
KEY_ENV = "MARL_CREDIT_KEY_FILE"
TRUST_FLAG = "--trust-env-state"


class RunDirError(ValueError):
    """A run directory that cannot be used: in use by another process, unwritable, unreadable."""


class CheckpointError(RunDirError):
    """A checkpoint that cannot be read, does not fit the run's config, or holds env state that is
    not signed by this user's key."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, then rename.

    A run killed mid-write keeps its previous checkpoint intact.

    Raises:
        RunDirError: when the file cannot be written (a full disk); the previous checkpoint stays.
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
    except (OSError, RuntimeError) as exc:   # torch's zip writer reports a failed write as RuntimeError
        _unlink(tmp)
        raise RunDirError(f"could not write {path} ({_last_line(exc)})") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with the safe unpickler (tensors, numbers, strings, containers only).

    Raises:
        CheckpointError: when it cannot be read (truncated, corrupt, not a checkpoint).
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read ({exc.strerror or exc})") from None
    except Exception as exc:   # corrupt bytes surface as any of a dozen types (zip, pickle, unicode, ...)
        raise CheckpointError(f"{path} is corrupt or not a checkpoint ({type(exc).__name__}: "
                              f"{_last_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(state).__name__})")
    return state


def load_checkpoint_into(load_state_dict, path: str | Path) -> None:
    """Load the checkpoint at ``path`` and pass it to ``load_state_dict``.

    Raises:
        CheckpointError: when it cannot be read, or its tensors or keys do not fit (for instance a
            checkpoint written by an older version whose networks stored their weights differently).
    """
    state = load_checkpoint(path)
    try:
        load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path} does not fit the networks built from the run's config ({_last_line(exc)}): "
                              f"a --set that changes the networks or the collection mode, or a checkpoint "
                              f"written by another version of marl") from None


# -- what a resume may change -----------------------------------------------------------------------

# Config keys a resume may change: how long to train, what is reported and how often it is saved.
# Every other key shapes the run's state (the envs, the networks, the collection, the updates),
# and a resume refuses to change it (docs: README, "Resuming a run").
SAFE_ON_RESUME = ("train.total_env_steps", "train.log_every", "train.checkpoint_every", "train.progress",
                  "train.eval_episodes", "train.eval_every", "train.eval_every_episodes", "log.histogram_every",
                  "log.credit_image_every", "log.fidelity_every", "log.fidelity_episodes", "log.trackers",
                  "env.check", "rllib.address", "rllib.num_cpus")


def settings_fingerprint(cfg) -> dict[str, str]:
    """The settings of ``cfg`` (a ``Config``) that shape a run's state: ``{dotted key: repr(value)}``,
    every key but ``SAFE_ON_RESUME``."""
    out = {}

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value, name = getattr(obj, f.name), prefix + f.name
            if dataclasses.is_dataclass(value):
                # a learner's own keys sit flat under ``algo`` in the user's YAML and --set
                walk(value, prefix if f.name == "own" else name + ".")
            elif name not in SAFE_ON_RESUME:
                out[name] = repr(value)
    walk(cfg, "")
    return out


def first_changed_setting(before: dict[str, str], after: dict[str, str]) -> str | None:
    """The first state-shaping key whose value differs between two fingerprints, or None (keys on
    one side only, from another version of marl, are left out)."""
    return next((k for k in before if k in after and before[k] != after[k]), None)


# -- the user's key and the env state's signature ---------------------------------------------------

def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "marl-credit" / "key"


def user_key() -> bytes:
    """This user's signing key, created (32 random bytes, mode 0600) on first use. Two processes
    creating it at once agree on one key: it is written to a temp file and linked into place."""
    path = key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".key.", dir=path.parent)   # mode 0600
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
            os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            _unlink(tmp)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise RunDirError(f"cannot read the checkpoint signing key {path} ({exc.strerror})") from None
    if len(key) < 16:
        raise RunDirError(f"the checkpoint signing key {path} is too short ({len(key)} bytes); delete it to make "
                          f"a new one (the env state of checkpoints signed with it will then need {TRUST_FLAG})")
    return key


def sign_parts(parts: list[bytes]) -> str:
    """The HMAC-SHA256 (hex) of a list of byte strings, each length-prefixed, under ``user_key()``."""
    mac = hmac.new(user_key(), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    return mac.hexdigest()


def signature_ok(parts: list[bytes], signature) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign_parts(parts), signature)


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__
