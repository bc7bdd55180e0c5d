"""EnvRunner callback: every finished episode's per-agent returns, for the run's metrics."""
from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from marl.rllib.env import EPISODE

EPISODES_KEY = "marl_episodes"


class EpisodeReturns(RLlibCallback):
    """Logs each finished episode's record from ``env.py`` (``raw_return`` and ``return`` per agent,
    ``length``) as one item; they arrive in ``result["env_runners"]["marl_episodes"]``, all the
    episodes finished in the iteration, from every EnvRunner."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        last = episode.get_infos(-1)
        for info in last.values():
            if EPISODE in info:
                metrics_logger.log_value(EPISODES_KEY, info[EPISODE], reduce="item_series")
                return
