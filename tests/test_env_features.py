"""Environments as users bring them (``tests/user_envs.py``): episodes longer than the rollout,
per-step action masks, any observation space, agents that leave and arrive, Gymnasium multi-agent
envs (LBF, RWARE), envs that cannot be snapshot, and bad env output. Each new kind of env is
*learned*, against its known optimum and random play."""
import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces
from marl.envs import EnvError, RewardSpec, make_env, make_vector_env
from marl.envs.snapshot import copy_env

from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from marl.cli import main
from marl.config import config_from_dict
from marl.logger import read_metrics
from marl.run import resume_run
from marl.trainer import Trainer
from tests.conftest import (
    assert_same_update,
    default_config,
    resumed_equals_uninterrupted,
    tiny_config,
    train_run,
    update_from,
)
from tests.user_envs import AnySpaces

LATE = "tests.user_envs:late_reward"
MASKED = "tests.user_envs:masked_choice"
LATE_MASKS = "tests.user_envs:late_masks"
DEPARTURES = "tests.user_envs:departures"


_train = train_run


def _learning_config(env_id, kwargs, steps, **sections):
    cfg = tiny_config(env={"id": env_id, "kwargs": kwargs, "num_envs": 8},
                      algo={"rollout_steps": 20, "epochs": 4, "minibatches": 2, "lr": 3e-3, "critic_lr": 3e-3},
                      train={"total_env_steps": steps, "eval_episodes": 20, "checkpoint_every": 1000},
                      log={"histogram_every": 0, "credit_image_every": 0})
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


# -- the PettingZoo API of the test envs ------------------------------------------------------------

@pytest.mark.parametrize("factory, kwargs", [
    ("late_reward", {}), ("masked_choice", {"mask_in": "obs"}), ("departures", {}), ("any_spaces", {})])
def test_user_envs_follow_the_parallel_api(factory, kwargs):
    import tests.user_envs as user_envs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # pettingzoo.test imports its deprecated classic envs
        from pettingzoo.test import parallel_api_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(getattr(user_envs, factory)(**kwargs), num_cycles=100)


# -- observation spaces -------------------------------------------------------------------------------

def test_every_observation_space_is_flattened_by_gymnasium():
    env = make_env("tests.user_envs:any_spaces")
    raw = AnySpaces()
    obs, state, avail, alive = env.reset(seed=3)
    raw_obs, _ = raw.reset(seed=3)
    sizes = [spaces.flatdim(AnySpaces.SPACES[a]) for a in env.agents]
    assert env.obs_dim == max(sizes) and state.shape == (sum(sizes),)
    for i, agent in enumerate(env.agents):
        flat = spaces.flatten(AnySpaces.SPACES[agent], raw_obs[agent])
        np.testing.assert_allclose(obs[i, :sizes[i]], flat)
        assert not obs[i, sizes[i]:].any()
    assert avail.all() and alive.all()


def test_a_space_gymnasium_cannot_flatten_is_a_clear_error():
    with pytest.raises(EnvError, match=r"agent 'box' has observation space Sequence.*cannot flatten"):
        make_env("tests.user_envs:sequence_observation")


@pytest.mark.parametrize("bad, match", [
    ("nan_obs", r"agent 'dict' got a non-finite observation\['pos'\] \(NaN or inf\) at step 2"),
    ("inf_reward", r"agent 'tuple' got a non-finite reward \(NaN or inf\) at step 2"),
    ("nan_state", r"its global state \(env.state\(\)\) is non-finite \(NaN or inf\) at index 1 at step 2 "),
    ("raise", r"raised in step 3 of its episode: RuntimeError: the simulator lost its connection \(at .*user_envs.py"),
])
def test_bad_env_output_names_the_env_agent_step_and_key(bad, match):
    env = make_env("tests.user_envs:any_spaces", {"bad": bad})
    env.reset(seed=0)
    with pytest.raises(EnvError, match="env 'tests.user_envs:any_spaces'.*" + match):
        for _ in range(5):
            env.step(np.zeros(env.n_agents, np.int64))


def test_an_env_that_fails_mid_run_stops_the_cli_with_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    import yaml

    # Each env fails in its 50th step (of its first, 80-step episode): iterations of 20 steps, so
    # iteration 3 fails after 2 checkpoints.
    cfg = _learning_config("tests.user_envs:fails_later", {"fail_after": 49}, 2000,
                           train={"checkpoint_every": 1, "progress": False})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("marl train: error: env 'tests.user_envs:fails_later' raised in step 50 of its "
                              "episode: RuntimeError: the simulator lost its connection (at ")
    assert "Traceback" not in "\n".join(err)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["iteration"] == 2


# -- per-step action masks ------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_in", ["obs", "info"])
def test_masks_are_read_from_the_observation_or_the_infos(mask_in):
    env = make_env(MASKED, {"mask_in": mask_in})
    assert env.dynamic_mask and env.obs_dim == env.n_actions   # the mask is not part of the observation
    first = env.reset(seed=1)
    raw = env.env.unwrapped
    for _ in range(5):
        expected = np.stack([raw._masks[a].astype(bool) for a in env.agents])
        np.testing.assert_array_equal(first.avail, expected)
        legal = np.array([np.flatnonzero(row)[0] for row in first.avail])
        first = env.step(legal)


def test_an_env_with_no_legal_action_for_a_live_agent_is_a_clear_error():
    env = make_env("tests.user_envs:no_legal_action")
    current = env.reset(seed=0)
    with pytest.raises(EnvError, match=r"'tests.user_envs:no_legal_action': agent 'agent_1' is live at step 2 of its "
                                       r"episode but its action_mask marks no action legal"):
        for _ in range(3):
            current = env.step(np.array([np.flatnonzero(row)[0] for row in current.avail]))


@pytest.mark.parametrize("mask_in, advantage", [("obs", "gae"), ("info", "gae"), ("obs", "coma")])
def test_masked_choices_are_learned_without_an_illegal_action(tmp_path, mask_in, advantage):
    """The env raises on an illegal action, so training and evaluation only run if every sampled and
    greedy action respects the mask. Optimum 20 (2 agents x 10 steps); random legal play ~11.5."""
    algo = {"advantage": advantage, "rollout_steps": 10}
    if advantage == "coma":
        algo.update(loss="a2c", lam=0.8)
    records, evaluation = _train(_learning_config(MASKED, {"mask_in": mask_in}, 6000, algo=algo), tmp_path / "run")
    assert records[0]["team_return"] < 15.0
    assert evaluation["team_return_mean"] >= 19.0


@pytest.mark.parametrize("masks_from", [1, 4])
def test_masks_that_first_appear_after_a_step_are_learned_without_an_illegal_action(tmp_path, masks_from):
    """The reset's infos carry no mask (nor, with masks_from=4, those of the first steps): whether an
    env masks is not decided at its reset, and each step's mask is applied before the next action
    is drawn, in training and in the greedy evaluation. The env raises on an illegal action."""
    records, evaluation = _train(_learning_config(LATE_MASKS, {"masks_from": masks_from}, 6000,
                                                  algo={"rollout_steps": 10}), tmp_path / "run")
    assert records[0]["team_return"] < 15.0
    assert evaluation["team_return_mean"] >= 19.0


# -- episodes longer than the rollout ------------------------------------------------------------------

def test_a_reward_after_the_rollout_length_is_learned_and_logged_when_episodes_end(tmp_path):
    """80-step episodes, rewards only from step 40, rollouts of 20 steps: a trainer that started
    fresh episodes every iteration would never see a reward. Optimum 80; random 26.7."""
    records, evaluation = _train(_learning_config(LATE, {}, 16000), tmp_path / "run")
    finished = [r for r in records if r["episodes"]]
    assert [r["episodes"] for r in records] == [0, 0, 0, 8] * 25   # 8 envs end an episode every 4th iteration
    assert all("team_return" not in r for r in records if not r["episodes"])   # no fake value
    assert finished[0]["team_return"] < 40.0 and finished[0]["episode_length"] == 80
    assert evaluation["team_return_mean"] >= 72.0


# -- agents that leave (and arrive) ----------------------------------------------------------------------

def test_agents_that_leave_and_arrive_are_padded_with_an_alive_mask():
    venv = make_vector_env(DEPARTURES, {}, 1, RewardSpec("shared", "mean"))
    current = venv.reset([0])
    alive, rewards, acted = [current["alive"][0]], [], []
    for _ in range(11):
        step = venv.step(np.zeros((1, 3), np.int64))
        alive.append(step.alive[0])
        rewards.append(step.reward[0])
        acted.append(step.acted[0])
    venv.close()
    alive = np.array(alive[:-1])
    assert alive.sum(0).tolist() == [3, 6, 9] and alive[:2, 2].tolist() == [False, False]
    np.testing.assert_array_equal(np.array(acted), alive)
    assert not np.array(rewards)[~alive].any()   # an absent agent gets no (shared) reward
    assert step.done[0] and step.episodes[0]["length"] == 11


def test_agents_that_leave_at_different_times_are_learned(tmp_path):
    """Agents present for 3, 6 and 9 steps (one arrives at step 2, one leaves by truncation):
    optimum 18, random 6."""
    records, evaluation = _train(_learning_config(DEPARTURES, {}, 6000, env={"reward": "individual"}),
                                 tmp_path / "run")
    assert records[0]["team_return"] < 10.0
    assert evaluation["team_return_mean"] >= 17.0
    assert evaluation["return/agent_0"] <= 3.0 and evaluation["return/agent_2"] <= 9.0


@pytest.mark.parametrize("payout", ["split", pytest.param("team", marks=pytest.mark.slow),
                                    pytest.param("leaver", marks=pytest.mark.slow)])
def test_agents_that_leave_are_learned_with_the_default_config(tmp_path, payout):
    """The default config (configs/spread_mappo.yaml) with only env.id changed, on ``Handover``:
    three agents leave after 3, 6 and 9 steps, the team's score is paid by each convention, and
    the two that leave early must give up a hit at their last step to pay the team after they have
    gone. A team value head whose targets ended where each agent left never learned the hand-over
    (1.8 of 3.3 under ``split``)."""
    from tests.user_envs import Handover

    cfg = default_config("tests.user_envs:handover", 40_000, {"payout": payout},
                         train={"eval_episodes": 8, "checkpoint_every": 1000})
    cfg["log"] = {"histogram_every": 0, "credit_image_every": 0}
    records, evaluation = _train(cfg, tmp_path / "run")
    best = Handover(payout=payout).optimum()
    assert records[0]["team_return"] < 0.0
    assert evaluation["team_return_mean"] >= best - 0.2, (evaluation["team_return_mean"], best)


@pytest.mark.parametrize("advantage", ["shapley", "dop"])
def test_shapley_and_dop_learn_with_agents_that_leave(tmp_path, advantage):
    """The team's summed hits under a shared reward: optimum 18, random 6. DOP's utilities see
    the agent's own observation (``critic_obs``); Shapley's critic is COMA's."""
    algo = {"advantage": advantage, "learner": "a2c", "lam": 0.8, "critic_obs": advantage == "dop"}
    records, evaluation = _train(_learning_config(DEPARTURES, {}, 6000, algo=algo, env={"team_reward": "sum"}),
                                 tmp_path / "run")
    assert records[0]["team_return"] < 10.0
    assert evaluation["team_return_mean"] >= 17.0


@pytest.mark.parametrize("advantage", ["gae", "coma", "shapley", "shapley_lambda", "dop", "dop_lambda"])
def test_padded_steps_leak_into_nothing(advantage):
    """Junk written into every padded entry (observation, action, reward, flags) of a rollout with
    agents that leave changes no advantage, target, statistic or loss of a real entry; the
    counterfactual modules give a padded entry no credit at all."""
    cfg = config_from_dict(_learning_config(DEPARTURES, {}, 400, algo={"advantage": advantage}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        clean = trainer.rollout.tensors()
        valid = clean["alive"]
        assert not valid.all() and valid.any()
        junk = {k: v.clone() for k, v in clean.items()}
        gen = torch.Generator().manual_seed(1)
        pad = ~valid
        junk["obs"][pad] = torch.randn(junk["obs"][pad].shape, generator=gen) * 100
        junk["actions"][pad] = torch.randint(0, 3, junk["actions"][pad].shape, generator=gen)
        junk["reward"][pad] = 1e3
        junk["logp"][pad] = -50.0
        junk["terminated"][pad] = torch.rand(junk["terminated"][pad].shape, generator=gen) < 0.5
        junk["truncated"][pad] = ~junk["terminated"][pad]
        outputs = []
        for batch in (clean, junk):
            learner = copy_learner(trainer.learner)
            prep = learner.prepare(batch, torch.Generator().manual_seed(0))
            if learner.uses_q:
                assert not prep["adv"][pad].any()
            outputs.append(update_from(learner, batch, prep, learner.valid_mask(batch)))
        assert_same_update(*outputs)
    finally:
        trainer.close()


def copy_learner(learner):
    import copy
    return copy.deepcopy(learner)


# -- exact resume with live episodes ----------------------------------------------------------------------

@pytest.mark.parametrize("workers, async_collection, act_in_workers",
                         [(0, False, False), (2, False, True),   # the other worker variants: slow, in CI
                          *(pytest.param(*p, marks=pytest.mark.slow) for p in [(2, False, False), (2, True, False)])])
def test_resume_with_episodes_in_flight_equals_an_uninterrupted_run(tmp_path, workers, async_collection,
                                                                    act_in_workers):
    """30-step episodes and 20-step rollouts: every checkpoint falls inside episodes."""
    cfg = _learning_config(LATE, {"length": 30, "reward_from": 5}, 1600,
                           env={"workers": workers, "num_envs": 4},
                           train={"checkpoint_every": 3, "eval_episodes": 0, "async_collection": async_collection,
                                  "act_in_workers": act_in_workers})
    # stopped after 6 iterations
    assert resumed_equals_uninterrupted(tmp_path, cfg, 480, ("team_return", "episodes", "losses/policy",
                                                          "losses/value", "credit/abs_adv/agent_0"))


@pytest.mark.parametrize("workers", [0, 1])
def test_an_env_that_cannot_be_snapshot_says_so_once_and_resumes_with_fresh_episodes(tmp_path, capsys, workers):
    """With env workers the failed snapshot is answered by the worker, which keeps serving."""
    cfg = _learning_config("tests.user_envs:unpicklable", {"length": 30}, 480, env={"workers": workers},
                           train={"checkpoint_every": 2, "eval_episodes": 0, "progress": False})
    _train(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("its live state cannot be saved in checkpoints") == 1
    assert "a run resumed from a checkpoint starts fresh episodes there" in err
    assert "env_state" not in load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    resumed = resume_run(tmp_path / "run", ["train.total_env_steps=640"])
    try:
        resumed.train()
    finally:
        resumed.close()
    assert read_metrics(tmp_path / "run")[-1]["env_steps"] == 640


@pytest.mark.slow   # a real local Ray run and its resume
@pytest.mark.filterwarnings("ignore:.*Overriding environment rllib-multi-agent-env-v0")
def test_an_rllib_run_says_once_that_resume_starts_fresh_episodes(tmp_path, capsys):
    """RLlib's EnvRunners keep their episodes out of checkpoints: one line at the run's first
    checkpoint, and one when it resumes."""
    import ray

    from marl.rllib.trainer import start_ray

    cfg = tiny_config(backend="rllib", env={"kwargs": {"N": 3, "max_cycles": 10}, "num_envs": 4},
                      algo={"rollout_steps": 10, "epochs": 1, "minibatches": 2},
                      rllib={"num_env_runners": 0, "num_envs_per_env_runner": 4},
                      log={"histogram_every": 0, "credit_image_every": 0},
                      train={"total_env_steps": 80, "checkpoint_every": 1, "eval_episodes": 0})
    note = "a run resumed from a checkpoint starts fresh episodes there"
    started = start_ray(config_from_dict(cfg))
    try:
        _train(cfg, tmp_path / "run")
        assert capsys.readouterr().err.count(note) == 1   # two checkpoints, one line
        resumed = resume_run(tmp_path / "run", ["train.total_env_steps=120"])
        try:
            resumed.train()
        finally:
            resumed.close()
        assert capsys.readouterr().err.count(note) == 1
    finally:
        if started:
            ray.shutdown()


def test_a_snapshot_continues_an_ezpickle_env_where_a_deepcopy_would_start_over():
    import copy

    env = make_env("mpe2:simple_spread_v3", {"N": 3, "max_cycles": 25})
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(4):
        env.step(rng.integers(0, 5, 3))
    snap, naive = copy_env(env), copy.deepcopy(env)
    actions = rng.integers(0, 5, 3)
    original, restored = env.step(actions), snap.step(actions)
    np.testing.assert_array_equal(original.obs, restored.obs)
    np.testing.assert_array_equal(original.reward, restored.reward)
    with pytest.raises(Exception):   # EzPickle rebuilt the env from its arguments: no episode is running
        np.testing.assert_array_equal(original.obs, naive.step(actions).obs)


# -- Gymnasium multi-agent envs -------------------------------------------------------------------------

@pytest.mark.parametrize("env_id, obs_dim, n_actions, length", [
    ("lbf:Foraging-8x8-2p-2f-coop-v3", 12, 6, 50), ("rware:rware-tiny-2ag-v2", 71, 5, 500)])
def test_lbf_and_rware_run_through_the_gymnasium_adapter(env_id, obs_dim, n_actions, length):
    env = make_env(env_id)
    assert env.agents == ["agent_0", "agent_1"] and (env.obs_dim, env.n_actions) == (obs_dim, n_actions)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(length):
        step = env.step(rng.integers(0, n_actions, 2))
        if step.done:
            break
    # the time limit is a truncation (the envs themselves report it as terminated)
    assert t == length - 1 and step.truncated.all() and not step.terminated.any()


def test_lbf_all_food_collected_is_a_termination():
    env = make_env("lbf:Foraging-8x8-2p-2f-coop-v3")
    env.reset(seed=0)
    env.env.env.unwrapped.field[:] = 0   # the Gymnasium env under the adapter: all food gone, the true end
    step = env.step(np.zeros(2, np.int64))
    assert step.done and step.terminated.all() and not step.truncated.any()


@pytest.mark.parametrize("env_id, match", [
    ("lbf:NoSuchEnv-v0", r"lbforaging has no env 'NoSuchEnv-v0'"),
    ("lbf:", r"give the lbf env's name after 'lbf:'"),
    ("gym:CartPole-v1", r"does not follow the multi-agent convention"),
])
def test_bad_gymnasium_ids_are_clear_errors(env_id, match):
    with pytest.raises(EnvError, match=match):
        make_env(env_id)

