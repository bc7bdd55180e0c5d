"""The env contract checked at the boundary (``marl.envs.contract``): each way a small env of our
own breaks the PettingZoo API or its declared spaces is one ``EnvError`` line naming the env,
agent, step and key, on the first episode (``env.check: first``) or on any (``always``); what is
allowed (size-1 rewards, a ``state_space`` that disagrees with ``state()``, a ``state()`` gone at
a terminal step) trains. Also import paths: re-exported modules, PettingZoo's deprecations."""
import numpy as np
import pytest
from gymnasium import spaces

from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from marl.cli import main
from marl.envs import EnvError, RewardSpec, make_env, make_parallel_env, make_vector_env
from marl.envs.contract import space_problem
from tests.conftest import tiny_config, train_run
from tests.user_envs import AnySpaces

ANY = "tests.user_envs:any_spaces"


def _run(env, steps: int = 5):
    for _ in range(steps):
        step = env.step(np.zeros(env.n_agents, np.int64))
    return step


@pytest.mark.parametrize("bad, match", [
    ("obs_shape", r"agent 'box', step 2 of its episode, observation: has shape \(4,\), its observation_space says "
                  r"\(2, 3\)"),
    ("obs_dtype", r"agent 'box', step 2 of its episode, observation: is a ndarray of dtype <U1, not numbers"),
    ("obs_discrete", r"agent 'discrete', step 2 of its episode, observation: is 2.5, outside its observation_space "
                     r"Discrete\(4\)"),
    ("unknown_agent", r"agent 'ghost', step 2 of its episode, rewards: is not in possible_agents \['box', "),
    ("unknown_live", r"agent 'ghost', step 2 of its episode, env.agents: is not in possible_agents"),
    ("reward_vector", r"agent 'box', step 2 of its episode, reward: has shape \(2,\); expected one number per agent"),
    ("action_space", r"agent 'box', step 2 of its episode, action_space: changed during the episode from "
                     r"Discrete\(2\) to Discrete\(3\); declare the largest space once and mask"),
    ("state_length", r"step 2 of its episode, state\(\): returned 4 values, 3 at the first reset"),
    ("step_four", r"step 2 of its episode, step\(\): returned a tuple of 4; PettingZoo's parallel step returns "
                  r"\(observations, rewards, terminations, truncations, infos\)"),
    ("state_gone_truncated", r"step 5 of its episode, state\(\): raised AttributeError: 'NoneType' object"),
])
def test_each_violation_is_one_line_naming_the_env_agent_step_and_key(bad, match):
    env = make_env(ANY, {"bad": bad})
    with pytest.raises(EnvError, match=f"^env '{ANY}': " + match) as info:
        _run(env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad, match", [
    ("reset_swapped", r"reset, reset\(\): returned \(infos, observations\); PettingZoo's order is "
                      r"\(observations, infos\)"),
    ("reset_obs_only", r"reset, reset\(\): returned a dict; PettingZoo's reset returns \(observations, infos\)"),
])
def test_a_bad_reset_tuple_is_named(bad, match):
    with pytest.raises(EnvError, match=f"^env '{ANY}': " + match):
        make_env(ANY, {"bad": bad})   # its first reset probes the env


def _steps(bad: dict, check: str, steps: int = 15) -> None:
    venv = make_vector_env(ANY, bad, 1, RewardSpec(), check=check)
    venv.reset([0])
    for _ in range(steps):
        venv.step(np.zeros((1, 6), np.int64))


def test_first_checks_only_the_first_episode_and_always_every_one():
    """An action space that changes in the 3rd episode (the probe's reset is the 1st) passes unseen
    with check 'first' and stops 'always'; a broken observation there is named either way (a later
    episode's output that cannot be converted is diagnosed by the same checks)."""
    late = {"bad": "action_space", "bad_episode": 3}
    _steps(late, "first")
    with pytest.raises(EnvError, match="agent 'box', step 2 of its episode, action_space: changed"):
        _steps(late, "always")
    with pytest.raises(EnvError, match="agent 'box', step 2 of its episode, observation: has shape"):
        _steps({"bad": "obs_shape", "bad_episode": 3}, "first")
    with pytest.raises(EnvError, match="agent 'box', step 2 of its episode, reward: has shape"):
        _steps({"bad": "reward_vector", "bad_episode": 3}, "first")


def test_rewards_of_size_one_are_read_as_numbers():
    env = make_env(ANY, {"bad": "reward_size_one"})
    step = _run(env, 1)
    assert step.reward.shape == (env.n_agents,) and step.reward.tolist() == [1.0] * env.n_agents


def test_a_state_space_that_disagrees_with_state_is_said_once_and_state_is_trusted(capsys):
    env = make_env(ANY, {"bad": "state_space"})
    make_env(ANY, {"bad": "state_space"})
    assert env.state_dim == 3 and _run(env).state.shape == (3,)
    err = capsys.readouterr().err
    assert err.count("state() returns 3 values but its state_space says (5,); the critic takes the 3") == 1


def test_a_state_that_is_gone_at_a_terminal_step_is_zeros_said_once(capsys):
    venv = make_vector_env(ANY, {"bad": "state_gone"}, 2, RewardSpec())
    venv.reset([0, 1])
    for _ in range(10):
        step = venv.step(np.zeros((2, 6), np.int64))
    assert step.done.all() and step.terminated.all() and not step.next_state.any()
    assert step.state.shape == (2, 3) and (step.state == 0.0).all()   # the next episode's first state
    assert capsys.readouterr().err.count("that state is never bootstrapped from, so zeros stand for it") == 1


def test_a_state_that_raises_at_the_first_reset_is_replaced_by_the_observations_said_once(capsys):
    env = make_env(ANY, {"bad": "state_broken"})
    obs = env.reset(seed=0).obs
    assert env.state_dim == sum(spaces.flatdim(s) for s in AnySpaces.SPACES.values()) and obs.shape[0] == 6
    assert capsys.readouterr().err.count("state() raised TypeError: 'dict' object is not callable (at ") == 1


def test_an_env_holding_a_c_pointer_cannot_be_snapshot_and_says_so():
    """magent2 keeps its C engine behind ctypes pointers, which pickle refuses with a ValueError."""
    import ctypes

    from marl.envs.snapshot import snapshot

    with pytest.raises(EnvError, match=r"cannot snapshot the env \(ValueError: ctypes objects containing pointers"):
        snapshot({"engine": ctypes.pointer(ctypes.c_int(1))})


def test_image_dtypes_are_checked_within_their_kind():
    image = spaces.Box(0, 255, (4, 4, 3), np.uint8)
    assert space_problem(image, np.zeros((4, 4, 3), np.uint8)) is None
    assert space_problem(image, np.zeros((4, 4, 3), np.float64)) == (
        "", "has dtype float64, its observation_space says uint8")
    assert space_problem(spaces.Box(0.0, 1.0, (2,), np.float32), np.zeros(2, np.float64)) is None


def test_size_one_rewards_are_learned(tmp_path):
    """LateReward with every reward as an array of shape (1,): learned as with plain floats.
    Optimum 2 x 5 = 10; random 3.3."""
    cfg = tiny_config(env={"id": "tests.user_envs:late_reward_arrays", "kwargs": {"length": 5, "reward_from": 0},
                           "num_envs": 8},
                      algo={"rollout_steps": 20, "epochs": 4, "minibatches": 2, "lr": 3e-3, "critic_lr": 3e-3},
                      train={"total_env_steps": 4000, "eval_episodes": 20, "checkpoint_every": 1000},
                      log={"histogram_every": 0, "credit_image_every": 0})
    _, evaluation = train_run(cfg, tmp_path / "run")
    assert evaluation["team_return_mean"] >= 9.0


def test_a_violation_mid_run_stops_the_cli_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    """5-step episodes, 20-step iterations: the 10th episode of each env (the probe's reset is the
    1st, the trainer's the 2nd) falls in iteration 3, after 2 checkpoints. Only env.check: always
    looks at it."""
    import yaml

    cfg = tiny_config(env={"id": ANY, "kwargs": {"bad": "action_space", "bad_episode": 10}, "num_envs": 2,
                           "check": "always"},
                      algo={"rollout_steps": 20, "minibatches": 1},
                      train={"total_env_steps": 400, "checkpoint_every": 1, "progress": False})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"marl train: error: env '{ANY}': agent 'box', step 2 of its episode, action_space: "
                              f"changed during the episode")
    kept = "; the checkpoint of iteration 2 is kept: continue with "   # then the printed marl command
    assert kept in err[-1] and err[-1].endswith(f"marl train --resume {tmp_path / 'run'}")
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["iteration"] == 2


def test_env_check_is_validated():
    from marl.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"env.check.*'first' or 'always'"):
        config_from_dict(tiny_config(env={"check": "sometimes"}))


# -- import paths ----------------------------------------------------------------------------------------

def test_a_module_re_exported_as_an_attribute_is_found():
    """``tests.reexports.envs_v1`` is no module but an attribute of one, as MaMuJoCo's documented
    ``gymnasium_robotics.mamujoco_v1`` is (tests/test_env_zoo.py tries that one where it is installed)."""
    env = make_env("tests.reexports.envs_v1:any_spaces")
    assert env.agents == sorted(AnySpaces.SPACES)
    with pytest.raises(EnvError, match=r"cannot import module 'tests.reexports.nope_v1' \(No module named "):
        make_env("tests.reexports.nope_v1:any_spaces")


def test_pettingzoos_own_deprecation_hint_reaches_the_user():
    pytest.importorskip("pymunk")
    with pytest.raises(EnvError, match=r"^env.id 'pettingzoo.butterfly.cooperative_pong_v5:parallel_env': "
                                       r"cooperative_pong_v5 is now deprecated, use cooperative_pong_v6 instead$"):
        make_parallel_env("pettingzoo.butterfly.cooperative_pong_v5:parallel_env")


def test_a_missing_dependency_of_an_existing_module_is_named():
    with pytest.raises(EnvError, match=r"importing 'tests.needs_missing' failed: No module named "
                                       r"'no_such_dependency_xyz'; install it"):
        make_parallel_env("tests.needs_missing:make")


def test_deprecation_warnings_of_an_env_package_reach_the_user_once(capsys):
    """Python hides DeprecationWarnings raised outside __main__ (PettingZoo 1.27 warns on every
    env module it imports): they are shown, each once, in one line."""
    make_env("tests.deprecated_env:make")
    make_env("tests.deprecated_env:make")
    err = capsys.readouterr().err.splitlines()
    assert err == ["[marl] env.id 'tests.deprecated_env:make': deprecated_env is deprecated, use any_spaces",
                   "[marl] env.id 'tests.deprecated_env:make': make() will be removed in v2"]


@pytest.mark.parametrize("check", ["first", "always"])
def test_rllib_env_runners_check_as_env_check_says(check):
    """The RLlib backend's per-EnvRunner env honours ``env.check``: a space that changes in a later
    episode passes with 'first' and is named with 'always', as on the local backend."""
    from marl.config import config_from_dict
    from marl.rllib.env import TeamMultiAgentEnv, env_config

    cfg = config_from_dict(tiny_config(env={"id": ANY, "kwargs": {"bad": "action_space", "bad_episode": 3},
                                            "check": check}))
    env = TeamMultiAgentEnv(env_config(cfg))

    def play():
        for episode in range(3):
            env.reset(seed=episode)
            done = False
            while not done:
                *_, terminateds, truncateds, _ = env.step({a: 0 for a in env.agents})
                done = terminateds["__all__"] or truncateds["__all__"]

    if check == "first":
        play()
    else:
        with pytest.raises(EnvError, match="agent 'box', step 2 of its episode, action_space: changed"):
            play()
