"""Config loading: typed dataclasses, one clear error line per class of bad input, CLI overrides."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from marl.config import Config, ConfigError, config_from_dict, load_config


def test_defaults_and_required_keys_exist():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    for path in ["seed", "env.id", "env.kwargs", "env.reward", "env.num_envs", "algo.advantage", "algo.gamma",
                 "algo.lam", "train.total_env_steps", "backend"]:
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
    assert cfg.algo.advantage == "gae" and cfg.backend == "local"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'algo.gama'; did you mean 'algo.gamma'\?"):
        config_from_dict({"algo": {"gama": 0.9}})


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz'.*valid keys: seed, backend"):
        config_from_dict({"zzz": 1})


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"config key 'env.num_envs': expected int, got str 'many'"):
        config_from_dict({"env": {"num_envs": "many"}})
    with pytest.raises(ConfigError, match=r"config key 'model.share_actor': expected bool"):
        config_from_dict({"model": {"share_actor": "yes"}})
    with pytest.raises(ConfigError, match=r"config key 'algo': expected a mapping"):
        config_from_dict({"algo": 3})


@pytest.mark.parametrize("gamma", [0.0, 1.5, -0.1])
def test_gamma_out_of_range(gamma):
    with pytest.raises(ConfigError, match=r"config key 'algo.gamma': expected a float in \(0, 1\]"):
        config_from_dict({"algo": {"gamma": gamma}})


def test_negative_learning_rate():
    with pytest.raises(ConfigError, match=r"config key 'algo.lr': expected a float > 0, got -0.001"):
        config_from_dict({"algo": {"lr": -1e-3}})


def test_derived_defaults_adapt_to_the_rollout_instead_of_refusing(tmp_path):
    """Switches flipped alone on the default config: recurrent networks get a chunk length that fits
    the rollout, and minibatches need not divide the batch (two envs of 25 steps, 4 minibatches)."""
    from tests.conftest import train_run, tiny_config

    default = Path(__file__).parent.parent / "configs" / "spread_mappo.yaml"
    assert load_config(default, ["model.recurrent=true"]).model.chunk_length == 25
    assert load_config(default, ["model.recurrent=true", "algo.rollout_steps=40"]).model.chunk_length == 10
    assert load_config(default, ["model.recurrent=true", "algo.rollout_steps=7"]).model.chunk_length == 7
    assert load_config(default, ["env.num_envs=2"]).algo.minibatches == 4
    records, _ = train_run(tiny_config(env={"num_envs": 2}, algo={"rollout_steps": 5, "minibatches": 4}),
                           tmp_path / "run")
    assert records[-1]["env_steps"] == 400


def test_numbers_users_write_are_read_as_they_mean_them():
    assert load_config_text("train: {total_env_steps: 1e5}").train.total_env_steps == 100_000
    with pytest.raises(ConfigError, match="'train.total_env_steps': expected int, got float 1.5"):
        load_config_text("train: {total_env_steps: 1.5}")
    for seed in (-1, 2**32):
        with pytest.raises(ConfigError, match=r"config key 'seed': expected an int in \[0, 2\*\*32\)"):
            config_from_dict({"seed": seed})


def load_config_text(text: str) -> Config:
    return config_from_dict(yaml.safe_load(text))


def test_a_new_env_id_starts_from_no_kwargs(tmp_path):
    """The default config's kwargs belong to simple_spread; a variant or --set that names another
    env does not hand them to it."""
    default = Path(__file__).parent.parent / "configs" / "spread_mappo.yaml"
    cfg = load_config(default, ["env.id=tests.user_envs:handover"])
    assert cfg.env.kwargs == {}
    cfg = load_config(default, ["env.id=tests.user_envs:handover", "env.kwargs.payout=team"])
    assert cfg.env.kwargs == {"payout": "team"}
    variant = tmp_path / "v.yaml"
    variant.write_text(f"base: {default}\nenv: {{id: 'tests.user_envs:handover', kwargs: {{payout: split}}}}\n")
    assert load_config(variant).env.kwargs == {"payout": "split"}
    variant.write_text(f"base: {default}\nenv: {{num_envs: 4}}\n")
    assert load_config(variant).env.kwargs["N"] == 3


def test_minibatches_must_be_positive():
    with pytest.raises(ConfigError, match=r"'algo.minibatches': expected an int >= 1, got 0"):
        config_from_dict({"algo": {"minibatches": 0}})


def test_bad_choices_name_the_options():
    with pytest.raises(ConfigError, match=r"'env.reward': expected one of \['shared', 'individual', 'mixed', 'difference'\]"):
        config_from_dict({"env": {"reward": "selfish"}})
    with pytest.raises(ConfigError, match=r"'algo.advantage': expected one of"):
        config_from_dict({"algo": {"advantage": "magic"}})


@pytest.mark.parametrize("option", ["async_collection", "act_in_workers"])
def test_worker_collection_options_need_env_workers_and_the_local_backend(option):
    with pytest.raises(ConfigError, match=rf"'train.{option}': expected false unless env.workers >= 1"):
        config_from_dict({"train": {option: True}})
    with pytest.raises(ConfigError, match=rf"'train.{option}': expected false with backend 'rllib'"):
        config_from_dict({"backend": "rllib", "env": {"workers": 1}, "train": {option: True}})
    assert getattr(config_from_dict({"env": {"workers": 1}, "train": {option: True}}).train, option)


def test_overrides_parse_yaml_values_and_are_validated():
    cfg = config_from_dict({}, ["algo.lr=3e-4", "model.share_actor=false", "env.kwargs={N: 4}"])
    assert cfg.algo.lr == pytest.approx(3e-4) and cfg.model.share_actor is False and cfg.env.kwargs == {"N": 4}
    with pytest.raises(ConfigError, match="did you mean 'algo.lr'"):
        config_from_dict({}, ["algo.lrr=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["algo.lr"])


def test_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict({"seed": 7, "algo": {"lam": 0.5}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_load():
    from pathlib import Path
    for path in sorted(Path("configs").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize("content, needle", [
    ({"algo": {"gama": 0.9}}, "did you mean 'algo.gamma'"),
    ({"algo": {"gamma": 2}}, "'algo.gamma'"),
    ({"algo": {"lr": -1}}, "'algo.lr'"),
    ({"algo": {"minibatches": 0}}, "'algo.minibatches'"),
    ({"env": {"num_envs": "x"}}, "'env.num_envs'"),
])
def test_cli_prints_one_line_and_exits_nonzero(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(content))
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "train", str(path), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
