"""The local trainer end to end: files, determinism, resume, custom envs, failures, every shipped config."""
import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from marl.envs import EnvError, RewardSpec, make_vector_env
from marl.envs.vector import episode_seed
from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from marl.config import config_from_dict, load_config
from marl.logger import read_metrics
from marl.run import final_evaluation, new_run, resume_run
from marl.learner import TrainingDiverged
from marl.trainer import Trainer, TrainingInterrupted
from tests.conftest import after_call_in_iteration, shipped_config_param, tiny_config

COMPARED = ("team_return", "losses/policy", "losses/value", "explained_variance", "credit/abs_adv/agent_0")


def _train(cfg_dict, run_dir):
    trainer = new_run(config_from_dict(cfg_dict), run_dir)
    try:
        trainer.train()
        final_evaluation(trainer)
    finally:
        trainer.close()
    return read_metrics(run_dir)


def _strip(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def test_quickstart_trains_and_writes_a_well_formed_run_dir(tmp_path):
    cfg = load_config("configs/quickstart.yaml", ["train.progress=false"])
    trainer = new_run(cfg, tmp_path / "run")
    try:
        summary = trainer.train()
        result = final_evaluation(trainer)
    finally:
        trainer.close()
    run = tmp_path / "run"
    assert summary["env_steps"] == cfg.train.total_env_steps
    assert load_config(run / "config.yaml") == cfg
    records = read_metrics(run)
    assert len(records) == math.ceil(cfg.train.total_env_steps / (cfg.env.num_envs * cfg.algo.rollout_steps))
    for rec in records:
        assert {"env_steps", "team_return", "return/agent_0", "return/agent_1", "return/agent_2"} <= rec.keys()
        assert -400 < rec["team_return"] < 0
    assert [r["env_steps"] for r in records] == sorted(r["env_steps"] for r in records)
    assert list(run.glob("events.out.tfevents.*"))
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["env_steps"] == cfg.train.total_env_steps and "actor" in state
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation == result and evaluation["episodes"] == cfg.train.eval_episodes
    assert {"team_return_mean", "team_return_std", "return/agent_0"} <= evaluation.keys()


def test_same_seed_gives_identical_metrics(tmp_path):
    a = _train(tiny_config(), tmp_path / "a")
    b = _train(tiny_config(), tmp_path / "b")
    c = _train(tiny_config(seed=1), tmp_path / "c")
    assert _strip(a) == _strip(b)
    assert _strip(a) != _strip(c)


@pytest.mark.parametrize("workers, async_collection, act_in_workers",
                         [(0, False, False), (2, False, True),   # the other worker variants: slow, in CI
                          *(pytest.param(*p, marks=pytest.mark.slow) for p in [(2, False, False), (2, True, False),
                                                                               (2, True, True)])])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, workers, async_collection, act_in_workers):
    cfg = tiny_config(train={"total_env_steps": 800, "checkpoint_every": 100, "eval_episodes": 0,
                             "async_collection": async_collection, "act_in_workers": act_in_workers},
                      env={"workers": workers}, algo={"lr_schedule": "linear"})
    full = _train(cfg, tmp_path / "full")
    # The learning rate falls linearly to 0 over the 8 iterations, and resumes where it was.
    assert [r["lr"] for r in full] == pytest.approx([5e-4 * (1 - k / 8) for k in range(8)])

    trainer = new_run(config_from_dict(cfg), tmp_path / "cut")
    # the 3rd update is running: Ctrl-C arrives now
    after_call_in_iteration(trainer, "update", 2, lambda: trainer._request_stop(signal.SIGINT, None))
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    trainer.close()
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["iteration"] == 3
    resumed = resume_run(tmp_path / "cut")
    resumed.train()
    resumed.close()
    assert _strip(read_metrics(tmp_path / "cut")) == _strip(full)


def _iteration_seeds(cfg, iteration: int) -> np.ndarray:
    return np.random.SeedSequence([cfg.seed, iteration]).generate_state(cfg.env.num_envs)


def _second_episode_obs(cfg, first_seeds) -> np.ndarray:
    """The first observations of each env's second episode, the first having been reset with ``first_seeds``."""
    venv = make_vector_env(cfg.env.id, cfg.env.kwargs, len(first_seeds), RewardSpec())
    try:
        return venv.reset([episode_seed(int(s), 1) for s in first_seeds])["obs"]
    finally:
        venv.close()


def test_async_collection_acts_with_the_policy_from_before_the_last_update():
    cfg = config_from_dict(tiny_config(env={"workers": 2}, train={"async_collection": True}))
    trainer = Trainer(cfg, None)
    try:
        initial = copy.deepcopy(trainer.actor)
        trainer.run_iteration()   # update 0 on rollout 0, while rollout 1 is collected
        trainer.iteration += 1
        b = trainer.rollout       # rollout 1, ready for update 1
        obs, actions = torch.from_numpy(b.obs), torch.from_numpy(b.actions).unsqueeze(-1)
        with torch.no_grad():
            by_initial = torch.log_softmax(initial(obs), -1).gather(-1, actions).squeeze(-1)
            by_updated = torch.log_softmax(trainer.actor(obs), -1).gather(-1, actions).squeeze(-1)
        logged = torch.from_numpy(b.logp)
        assert torch.allclose(logged, by_initial, atol=1e-6)
        assert (logged - by_updated).abs().max() > 1e-4   # update 0 changed the policy; rollout 1 lags it
        # rollout 1 continues where rollout 0 left the envs: its 25-step episodes ended at rollout 0's
        # last step, so rollout 1 starts their second episodes
        first = trainer._spare_rollout
        assert first.truncated[-1].all()
        assert np.array_equal(b.obs[0], _second_episode_obs(cfg, _iteration_seeds(cfg, 0)))
    finally:
        trainer.close()


def test_workers_acting_for_their_own_envs_collect_with_the_learners_policy():
    env = {"num_envs": 5, "workers": 2}   # uneven split: 3 and 2 envs
    cfg = config_from_dict(tiny_config(env=env, algo={"minibatches": 1}, train={"act_in_workers": True}))
    trainer = Trainer(cfg, None)
    try:
        trainer.run_iteration()   # the actor is no longer the initial one
        trainer.iteration += 1
        learner_draws = trainer.generator.get_state()
        episodes = trainer.collect()
        assert torch.equal(trainer.generator.get_state(), learner_draws)   # the workers drew the actions
        b = trainer.rollout
        obs, actions = torch.from_numpy(b.obs), torch.from_numpy(b.actions).unsqueeze(-1)
        with torch.no_grad():
            expected = torch.log_softmax(trainer.actor(obs), -1).gather(-1, actions).squeeze(-1)
        assert torch.allclose(torch.from_numpy(b.logp), expected, atol=1e-6)
        # every env's rows were filled, continuing the envs' episodes, and the transitions chain up
        assert np.array_equal(b.obs[0], _second_episode_obs(cfg, _iteration_seeds(cfg, 0)))
        ended = b.terminated | b.truncated
        assert np.array_equal(b.obs[1:][~ended[:-1]], b.next_obs[:-1][~ended[:-1]])
        assert len(episodes) == int(ended.all(-1).sum())
    finally:
        trainer.close()


@pytest.mark.parametrize("act_in_workers", [False, True])
def test_an_env_error_during_background_collection_surfaces_in_the_learner(act_in_workers):
    # The env's episodes last 5 steps, so rollout 0 (25 steps) starts env 0's episodes 1-5 and rollout 1
    # its episodes 6-10: env 0 fails when it resets for episode 7, in the thread that collects during update 0.
    bad_seed = episode_seed(int(np.random.SeedSequence([0, 0]).generate_state(2)[0]), 7)
    env = {"id": "tests.custom_env:make_fails_on_seed", "kwargs": {"fail_on_seed": bad_seed}, "num_envs": 2,
           "workers": 1}
    cfg = config_from_dict(tiny_config(env=env, train={"async_collection": True, "act_in_workers": act_in_workers}))
    trainer = Trainer(cfg, None)
    try:
        with pytest.raises(EnvError, match=f"env worker failed: .*RuntimeError: reset with seed {bad_seed} failed"):
            trainer.run_iteration()
        assert trainer.learner.updates == 1   # update 0 itself completed
    finally:
        trainer.close()


def test_custom_env_from_a_test_module_learns(tmp_path):
    cfg = tiny_config(env={"id": "tests.custom_env:make_match_target", "kwargs": {"n_actions": 3, "length": 5},
                           "num_envs": 8},
                      algo={"rollout_steps": 10, "epochs": 4, "minibatches": 1, "lr": 3e-3},
                      train={"total_env_steps": 6000, "eval_episodes": 20})
    records = _train(cfg, tmp_path / "run")
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert "return/player_0" in records[-1]
    # random play scores 5 steps * 2 agents * 1/3 = 3.33; the optimum is 10
    assert records[0]["team_return"] < 5.0
    assert evaluation["team_return_mean"] > 8.0


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    trainer = new_run(config_from_dict(tiny_config(train={"total_env_steps": 1000, "checkpoint_every": 1})),
                      tmp_path / "run")
    original_collect = trainer.collect

    def collect_with_nan_on_third():
        episodes = original_collect()
        if trainer.iteration == 2:
            trainer.rollout.obs[0, 0, 0, 0] = float("nan")
        return episodes

    trainer.collect = collect_with_nan_on_third
    with pytest.raises(TrainingDiverged, match="loss became nan at update 3"):
        trainer.train()
    trainer.close()
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert state["iteration"] == 2
    assert all(torch.isfinite(p).all() for p in state["actor"].values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.ones(3), "step": 1})

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.zeros(3), "step": 2})
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]


def test_checkpoint_loads_with_weights_only(tmp_path):
    _train(tiny_config(), tmp_path / "run")
    state = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert {"actor", "critic", "optimizer", "generator", "iteration"} <= state.keys()


def test_a_checkpoint_that_does_not_fit_the_networks_is_a_clear_error(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    run = tmp_path / "run"
    assert _cli("train", str(cfg), "--run-dir", str(run), "--set", "train.total_env_steps=100").returncode == 0
    # An older version stored a shared layer's weight as [1, in, out] instead of [out, in].
    state = load_checkpoint(run / CHECKPOINT_NAME)
    state["actor"]["net.head.weight"] = state["actor"]["net.head.weight"].t().unsqueeze(0).contiguous()
    save_checkpoint(run / CHECKPOINT_NAME, state)
    for command in (["eval", str(run)], ["train", "--resume", str(run)]):
        proc = _cli(*command)
        assert proc.returncode == 2, proc.stderr
        assert f"marl {command[0]}: error: {run / CHECKPOINT_NAME} does not fit the networks" in proc.stderr
        assert "size mismatch for net.head.weight" in proc.stderr and "Traceback" not in proc.stderr
    assert load_config(run / "config.yaml") == load_config(cfg, ["train.total_env_steps=100"])
    # a --set that changes the networks is refused before anything is built, and leaves the run's config as it was
    proc = _cli("train", "--resume", str(run), "--set", "model.hidden=16")
    assert proc.returncode == 2 and "changes model.hidden (32 in the run, 16 now)" in proc.stderr
    assert load_config(run / "config.yaml").model.hidden == 32
    (run / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    proc = _cli("eval", str(run))
    assert proc.returncode == 2 and "is corrupt or not a checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("share_actor, critic", [(False, "central"), (True, "local"), (True, "agent_state")])
def test_actor_and_critic_variants_train(tmp_path, share_actor, critic):
    records = _train(tiny_config(model={"share_actor": share_actor}, algo={"critic": critic, "learner": "a2c"}),
                     tmp_path / "run")
    assert len(records) == 4 and all(math.isfinite(r["losses/value"]) for r in records)


def test_refuses_to_overwrite_a_run_dir(tmp_path):
    from marl.config import ConfigError
    _train(tiny_config(), tmp_path / "run")
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        new_run(config_from_dict(tiny_config()), tmp_path / "run")


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "marl.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_cli_train_eval_list_and_gif(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    run = tmp_path / "run"
    proc = _cli("train", str(cfg), "--run-dir", str(run), "--set", "train.total_env_steps=200")
    assert proc.returncode == 0, proc.stderr
    assert f"run directory {run}" in proc.stdout and "tensorboard --logdir" in proc.stdout
    assert "env steps/s" in proc.stdout
    proc = _cli("eval", str(run), "--episodes", "3", "--json", "--gif", str(tmp_path / "ep.gif"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["episodes"] == 3 and {"team_return_mean", "team_return_std", "return/agent_2"} <= result.keys()
    assert [json.loads(p.read_text()) for p in run.glob("eval_*.json")] == [result]   # beside eval.json
    assert (tmp_path / "ep.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    proc = _cli("list")
    assert proc.returncode == 0 and "mpe2:simple_spread_v3" in proc.stdout and "gae" in proc.stdout


@pytest.mark.parametrize("workers, async_collection", [(0, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_cli_ctrl_c_saves_and_resume_continues(tmp_path, workers, async_collection):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(train={"total_env_steps": 200_000, "checkpoint_every": 1000,
                                                     "async_collection": async_collection},
                                              env={"workers": workers})))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "marl.cli", "train", str(cfg), "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(run)) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)   # as a terminal's Ctrl-C: to the env workers too
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "marl train --resume" in err.partition("Continue with: ")[2] and "Traceback" not in err
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["iteration"] >= 2 and len(read_metrics(run)) == state["iteration"]
    proc = _cli("train", "--resume", str(run), "--set", f"train.total_env_steps={(state['iteration'] + 1) * 100}",
                "--set", "train.eval_episodes=0")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(run / CHECKPOINT_NAME)["iteration"] == state["iteration"] + 1


@pytest.mark.parametrize("path", [shipped_config_param(str(p)) for p in sorted(Path("configs").glob("*.yaml"))])
def test_every_shipped_config_trains_end_to_end(tmp_path, path):
    """Each config in configs/ as shipped (its env, reward mode, advantage module, critic and loss),
    cut to two small iterations so that the whole set runs in seconds."""
    q = load_config(path).algo.learner == "q"   # off-policy: a small replay batch, no epochs
    shrink = ["algo.batch_size=1"] if q else ["algo.epochs=1", "algo.minibatches=1"]
    cfg = load_config(path, ["env.num_envs=4", *shrink, "train.total_env_steps=2",
                             "train.eval_episodes=1", "train.progress=false", "log.fidelity_episodes=1"])
    cfg.train.total_env_steps = 2 * cfg.steps_per_iteration
    records = _train(cfg.to_dict(), tmp_path / "run")
    assert len(records) == 2
    assert all(math.isfinite(r["q/loss" if q else "losses/value"]) for r in records if not q or "q/loss" in r)
    assert not q or any("q/loss" in r for r in records)
    # a run this short may end no episode (rware's last 500 steps): where some did, their return is finite
    assert all(math.isfinite(r["team_return"]) for r in records if r["episodes"])
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["episodes"] == 1


def test_periodic_greedy_evaluation_is_logged(tmp_path):
    records = _train(tiny_config(train={"total_env_steps": 500, "eval_every": 2, "eval_every_episodes": 3}),
                     tmp_path / "run")
    evaluated = [r["iteration"] for r in records if "eval/team_return" in r]
    assert evaluated == [2, 4, 5]   # every 2nd iteration and the last
    assert all(math.isfinite(r["eval/team_return"]) and "eval/return/agent_0" in r for r in records
               if r["iteration"] in evaluated)


def test_eval_reports_the_stochastic_policy_beside_the_greedy_one(tmp_path):
    _train(tiny_config(), tmp_path / "run")
    training = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert training["greedy"] and not training["sampled"]["greedy"] and training["sampled"]["episodes"] == 2
    proc = _cli("eval", str(tmp_path / "run"), "--episodes", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["greedy"] and not result["sampled"]["greedy"] and result["sampled"]["episodes"] == 4
    proc = _cli("eval", str(tmp_path / "run"), "--episodes", "4")
    assert "over 4 greedy episodes" in proc.stdout and "over 4 sampled episodes" in proc.stdout


def test_a_greedy_policy_far_below_its_sampled_one_is_flagged():
    from marl.evaluate import greedy_gap_note

    sampled = {"team_return_mean": 8.0, "team_return_std": 0.5, "episodes": 32}
    note = greedy_gap_note({"team_return_mean": 4.5}, sampled)
    assert note.startswith("the greedy policy scores 3.50 below the sampled one (4.50 vs 8.00")
    assert note.endswith("report the sampled figure for this env")
    assert greedy_gap_note({"team_return_mean": 7.9}, sampled) is None   # within the sampled interval
    assert greedy_gap_note({"team_return_mean": 9.0}, sampled) is None
