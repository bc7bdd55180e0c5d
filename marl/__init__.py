"""marl: centralised training with decentralised execution, with pluggable credit assignment.

The repository keeps ``envs/`` and ``algorithms/`` at its top level; they are installed and
imported as ``marl.envs`` and ``marl.algorithms`` (``setup.cfg``'s ``package_dir``), so a user's
own ``envs`` or ``algorithms`` package on ``sys.path`` (common in RL projects) cannot shadow
them. When ``marl`` is imported from a source checkout, its ``__path__`` also covers the
checkout's top level, which resolves the same two names there.
"""
import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "envs")) and _root not in __path__ and all(
        _os.path.isfile(_os.path.join(_root, name, "__init__.py")) for name in ("envs", "algorithms")):
    __path__.append(_root)   # a source checkout: marl.envs is <root>/envs

from marl.config import Config, ConfigError, load_config  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
