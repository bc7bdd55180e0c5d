"""marl: centralised training with decentralised execution, with pluggable credit assignment."""
from marl.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
