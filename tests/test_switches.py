"""Every documented switch, flipped alone on every shipped config, trains for an iteration or is
refused in one line that concerns that switch (issue: "switches that compose").

A switch is refused for a reason of its own when the one-line error names its key, its value or a
word of its name ("continuous" for ``env.kwargs.continuous_actions``);
an error about a key the user never set (as ``model.chunk_length`` was for ``model.recurrent``) fails
the test. Each case trains one iteration, so the matrix runs with the slow tests; a fast subset
(the default config) runs in ``make test``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from marl.algorithms import ADVANTAGES
from marl.config import ConfigError, _read_yaml, apply_overrides
from marl.envs import REWARD_MODES, EnvError
from marl.envs.batched import TWINS
from tests.conftest import shipped_config_param, train_run

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
DEFAULT = "spread_mappo.yaml"


def _switches(config: Path) -> list[str]:
    """The switches that apply to ``config``'s env: recurrence, workers, the image encoder, the env
    contract check, every advantage module, reward mode and reward model; continuous actions and the batched twin where the env has them."""
    env_id = (_read_yaml(config).get("env") or {}).get("id", "mpe2:simple_spread_v3")
    out = ["model.recurrent=true", "env.workers=2", "model.encoder=cnn", "env.check=always"]
    out += [f"algo.advantage={name}" for name in sorted(ADVANTAGES)]
    out += [f"env.reward={mode}" for mode in REWARD_MODES]
    out += ["algo.redistribution=rrd", "algo.redistribution=arel"]
    if env_id.startswith("mpe2:"):
        out.append("env.kwargs.continuous_actions=true")
    if env_id in TWINS:
        out.append("env.batched=true")
    return out


CASES = [shipped_config_param(config, *(() if config.name == DEFAULT else (pytest.mark.slow,)),
                              id=f"{config.stem}:{switch}", values=(config, switch))
         for config in CONFIGS for switch in _switches(config)]


@pytest.mark.parametrize("config, switch", CASES)
def test_a_switch_flipped_alone_trains_or_is_refused_for_its_own_reason(tmp_path, config, switch):
    data = apply_overrides(_read_yaml(config), [switch])
    steps = data.get("algo", {}).get("rollout_steps", 25) * data.get("env", {}).get("num_envs", 16)
    data.setdefault("train", {}).update({"total_env_steps": steps, "eval_episodes": 0, "progress": False,
                                         "checkpoint_every": 1000})
    data["log"] = {"histogram_every": 0, "credit_image_every": 0, "fidelity_every": 0}
    key, _, value = switch.partition("=")
    try:
        records, _ = train_run(data, tmp_path / "run")
    except (ConfigError, EnvError) as exc:
        message = str(exc)
        assert "\n" not in message, message
        words = [key, value, *key.rsplit(".", 1)[-1].split("_")]   # e.g. "continuous" for continuous_actions
        assert any(word in message for word in words if len(word) > 3 or word == value), \
            f"{switch} on {config.name} was refused over something else: {message}"
        return
    assert records and records[-1]["env_steps"] >= steps
