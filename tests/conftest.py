from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def shipped_config_param(path: Path, *marks, id: str | None = None, values: tuple = ()):
    """A ``pytest.param`` of a shipped config (``values``: the parameters, ``path`` by default), skipped
    when its env needs an optional extra that is not installed (``jaxmarl:`` ids: the ``jaxmarl``
    extra, which ``.ci/run`` installs before the slow tests)."""
    import importlib.util

    import yaml

    env_id = str(((yaml.safe_load(Path(path).read_text()) or {}).get("env") or {}).get("id", ""))
    missing = env_id.startswith("jaxmarl:") and importlib.util.find_spec("jaxmarl") is None
    skip = pytest.mark.skipif(missing, reason=f"{Path(path).name} needs the jaxmarl extra")
    return pytest.param(*(values or (path,)), marks=(*marks, skip), id=id or Path(path).stem)


def tiny_config(**sections):
    """A config dict small enough to train in a second or two on simple_spread."""
    cfg = {
        "seed": 0,
        "env": {"id": "mpe2:simple_spread_v3", "kwargs": {"N": 3, "max_cycles": 25}, "num_envs": 4},
        "algo": {"rollout_steps": 25, "epochs": 2, "minibatches": 2},
        "model": {"hidden": 32},
        "train": {"total_env_steps": 400, "checkpoint_every": 2, "eval_episodes": 2, "progress": False},
    }
    return merge_sections(cfg, sections)


def merge_sections(cfg: dict, sections: dict) -> dict:
    """``cfg`` with each section dict of ``sections`` merged into its own, and other values set."""
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    return cfg


@pytest.fixture
def tiny():
    return tiny_config


def default_config(env_id: str, steps: int, kwargs: dict | None = None, env: dict | None = None,
                   train: dict | None = None) -> dict:
    """``configs/spread_mappo.yaml`` (the default config) as a dict, with only ``env.id`` and
    ``env.kwargs``, the budget ``steps`` and the ``env``/``train`` keys given changed (no progress
    bar): how a user plugs an env into the default config."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "spread_mappo.yaml").read_text())
    data["env"].update(id=env_id, kwargs=kwargs or {}, **(env or {}))
    data["train"].update(total_env_steps=steps, progress=False, **(train or {}))
    return data


def train_run(cfg_dict, run_dir):
    """Train a config dict in a new run directory; returns its metrics records and final evaluation."""
    from marl.config import config_from_dict
    from marl.logger import read_metrics
    from marl.run import final_evaluation, new_run

    trainer = new_run(config_from_dict(cfg_dict), run_dir)
    try:
        trainer.train()
        evaluation = final_evaluation(trainer)
    finally:
        trainer.close()
    return read_metrics(run_dir), evaluation


def resumed_equals_uninterrupted(tmp_path, cfg_dict, cut_steps: int, keys) -> bool:
    """Train ``cfg_dict`` whole, and again stopped at ``cut_steps`` then resumed: equal ``keys`` in
    every metrics record (the resume-exactness check of several test files)."""
    from marl.logger import read_metrics
    from marl.run import resume_run

    total = cfg_dict["train"]["total_env_steps"]
    full, _ = train_run(cfg_dict, tmp_path / "full")
    train_run({**cfg_dict, "train": {**cfg_dict["train"], "total_env_steps": cut_steps}}, tmp_path / "cut")
    resumed = resume_run(tmp_path / "cut", [f"train.total_env_steps={total}"])
    try:
        resumed.train()
    finally:
        resumed.close()

    def strip(records):
        return [{k: r.get(k) for k in keys} for r in records]

    return strip(read_metrics(tmp_path / "cut")) == strip(full)


def update_from(learner, batch: dict, prep: dict, valid: torch.Tensor) -> tuple:
    """Finish one update of ``learner`` on ``batch`` from its ``prepare`` output, with fixed draws:
    ``(adv, target, metrics, loss, actor state)``, advantages and targets at the ``valid`` entries."""
    adv, target, metrics = learner.finalise(prep, valid)
    loss = learner.optimise(batch, prep, adv, target, torch.Generator().manual_seed(0), valid)
    return adv[valid], target[valid], metrics, loss, learner.actor.state_dict()


def spy_on_rewards(trainer) -> list:
    """Make ``trainer.learner.prepare`` record a copy of the rewards of each batch it is given in
    the returned list."""
    seen, original = [], trainer.learner.prepare

    def spy(b, generator):
        seen.append(b["reward"].clone())
        return original(b, generator)

    trainer.learner.prepare = spy
    return seen


def assert_same_update(first: tuple, second: tuple) -> None:
    """Two ``update_from`` results agree: advantages, targets, statistics, loss and actor weights."""
    (adv0, target0, metrics0, loss0, actor0), (adv1, target1, metrics1, loss1, actor1) = first, second
    torch.testing.assert_close(adv0, adv1)
    torch.testing.assert_close(target0, target1)
    assert metrics0 == pytest.approx(metrics1, nan_ok=True)
    assert loss0 == pytest.approx(loss1)
    for key in actor0:
        torch.testing.assert_close(actor0[key], actor1[key])


def assert_restored_twin_continues(twin, other, actions: torch.Tensor, warmup: int) -> list[dict]:
    """After ``warmup`` of ``actions [T, B, N]``, ``other`` (a twin of the same task, seeded apart)
    set to ``twin``'s state steps exactly as ``twin`` over the rest; returns ``twin``'s outputs."""
    for a in actions[:warmup]:
        twin.step(a)
    other.set_state(twin.get_state())
    first = [twin.step(a) for a in actions[warmup:]]   # crosses auto-resets: the generator matters
    for expected, a in zip(first, actions[warmup:], strict=True):
        got = other.step(a)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    return first


def after_call_in_iteration(trainer, name: str, iteration: int, action) -> None:
    """Wrap ``trainer.<name>`` so that ``action()`` runs right after its call made while
    ``trainer.iteration`` is ``iteration`` (e.g. a Ctrl-C arriving mid-run)."""
    original = getattr(trainer, name)

    def wrapped():
        out = original()
        if trainer.iteration == iteration:
            action()
        return out

    setattr(trainer, name, wrapped)
