"""Turn-based AEC envs run natively (``marl.envs.turns``, ``marl.algorithms.turns``): only the player
to move is alive, a reward that arrives while a player waits is credited to its last move, masks
follow PettingZoo's classic convention, our own cooperative game (``tests/turn_envs.py``) is
learned, and PettingZoo's classic games train or are refused in one line."""
import copy
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from marl.algorithms.returns import gae
from marl.algorithms.turns import from_turns, own_turns
from marl.envs import RewardSpec, make_vector_env

from marl.config import ConfigError, config_from_dict
from marl.rollout import Rollout
from marl.run import check_env
from marl.trainer import Trainer
from tests.conftest import (
    assert_same_update,
    default_config,
    tiny_config,
    train_run,
    update_from,
)
from tests.turn_envs import Relay

RELAY = "tests.turn_envs:relay"
GAMMA, LAM = 0.9, 0.8


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "marl.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("n_players", [2, 3])
def test_relay_follows_the_aec_api(n_players):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # pettingzoo.test imports its deprecated classic envs
        from pettingzoo.test import api_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # PettingZoo's test exempts its own classic envs by name from these two: a Dict observation
        # with an action_mask is the classic convention
        warnings.filterwarnings("ignore", message="Observation space for each agent probably")
        warnings.filterwarnings("ignore", message="Observation is not a NumPy array")
        api_test(Relay(n_players=n_players, length=3 * n_players), num_cycles=200)


def _scripted_rollout(T: int, length: int = 4):
    """``T`` rows of a 2-player Relay (``length`` moves a game), one env, the moves scripted: right,
    wrong, right, right (the second move of each game wrong). Checks that each mover's legal actions
    are the env's mask; returns the rollout."""
    venv = make_vector_env(RELAY, {"length": length}, 1, RewardSpec("shared", "mean"))
    buf = Rollout.allocate(T, 1, 2, venv.obs_dim, venv.state_dim, venv.n_actions)
    current = venv.reset([1])   # a seed whose second moves have a wrong legal action
    move = 0
    try:
        for t in range(T):
            env = venv.team_envs[0].env.aec
            mover = env.agent_selection
            right = env._target()
            wrong = next(a for a in range(4) if a != right and env._mask[a]) if move == 1 else right
            actions = np.zeros((1, 2), np.int64)
            actions[0, int(mover[-1])] = wrong
            np.testing.assert_array_equal(current["avail"][0, int(mover[-1])], env._mask.astype(bool))
            buf.alive[t], buf.first[t] = current["alive"], current["first"]
            step = venv.step(actions)
            buf.reward[t], buf.terminated[t], buf.truncated[t] = step.reward, step.terminated, step.truncated
            buf.raw_reward[t] = step.raw_reward
            current = {"alive": step.alive, "first": step.first, "avail": step.avail}
            move = 0 if step.done[0] else move + 1
    finally:
        venv.close()
    return buf


def test_only_the_player_to_move_is_alive_and_waiting_players_are_paid():
    """Rows 0-3 are one game (moves right, wrong, right, right), rows 4-6 the next. Each move's reward
    (0.5 to each player) arrives one step later, the last one at the game's end."""
    buf = _scripted_rollout(7)
    assert buf.alive[:, 0].tolist() == [[True, False], [False, True]] * 2 + [[True, False], [False, True],
                                                                               [True, False]]
    assert buf.first[:, 0].tolist() == [True, False, False, False, True, False, False]
    paid = buf.reward[:, 0]
    np.testing.assert_array_equal(paid[:, 0], paid[:, 1])   # the waiting player is paid too
    np.testing.assert_allclose(paid[:, 0], [0.0, 0.5, 0.0, 1.0, 0.0, 0.5, 0.0])
    assert buf.terminated[3, 0].tolist() == [True, True] and not buf.terminated[[0, 1, 2, 4, 5, 6]].any()


def test_rewards_between_turns_are_credited_to_the_last_move_hand_checked():
    """The scripted rollout above, with values chosen by hand, through ``own_turns`` and GAE.

    player_0 moves at rows 0, 2 | 4, 6 (``|``: a new game), player_1 at rows 1, 3 | 5. Rewards per
    row (both players): 0, .5, 0, 1 | 0, .5, 0.
    - player_0: turn 0 = rows 0-1 (0.5: its own right move), turn 2 = rows 2-3 (1.0, terminated),
      turn 4 = rows 4-5 (0.5; its next turn at row 6 is in the rollout), turn 6: incomplete.
    - player_1: turn 1 = rows 1-2 (0.5 + 0), turn 3 = row 3 (1.0, terminated), row 4 belongs to no
      turn of its own (a new game before its first move), turn 5 = rows 5-6: incomplete (no next
      move or end in the rollout).
    """
    buf = {k: torch.as_tensor(v) for k, v in vars(_scripted_rollout(7)).items()}
    value = torch.arange(7, dtype=torch.float32).view(7, 1, 1).expand(7, 1, 2) * torch.tensor([1.0, 10.0])
    next_value = torch.full((7, 1, 2), 99.0)   # read only where a turn ends in a truncation: never here
    turns = own_turns(buf["reward"], value, next_value, buf["terminated"], buf["truncated"], buf["alive"],
                      buf["first"])
    p0, p1 = (slice(None), 0, 0), (slice(None), 0, 1)
    assert turns.reward[p0][:4].tolist() == [0.5, 1.0, 0.5, 0.0]
    assert turns.reward[p1][:3].tolist() == [0.5, 1.0, 0.5]   # the last one partial: not complete
    assert turns.complete[p0][:4].tolist() == [True, True, True, False]
    assert turns.complete[p1][:3].tolist() == [True, True, False]
    assert not turns.complete[p0][4:].any() and not turns.complete[p1][3:].any()
    assert turns.value[p0][:4].tolist() == [0.0, 2.0, 4.0, 6.0] and turns.value[p1][:3].tolist() == [10.0, 30.0, 50.0]
    assert turns.next_value[p0][0] == 2.0 and turns.next_value[p0][2] == 6.0 and turns.next_value[p1][0] == 30.0
    assert turns.terminated[p0][:4].tolist() == [False, True, False, True]    # incomplete: a step of its own
    assert turns.truncated[p0][:3].tolist() == [False, False, True]           # cut before the incomplete turn
    assert turns.terminated[p1][:3].tolist() == [False, True, True]

    adv, target = gae(turns.reward, turns.value, turns.next_value, turns.terminated, turns.truncated,
                      gamma=GAMMA, lam=LAM)
    a2 = 1.0 - 2.0                                     # player_0's move at row 2: terminated
    a0 = 0.5 + GAMMA * 2.0 - 0.0 + GAMMA * LAM * a2    # row 0: its own reward, then the trace to row 2
    a4 = 0.5 + GAMMA * 6.0 - 4.0                       # row 4: bootstraps from row 6, trace cut
    b3 = 1.0 - 30.0
    b1 = 0.5 + GAMMA * 30.0 - 10.0 + GAMMA * LAM * b3
    adv, valid = from_turns(adv, turns.order), from_turns(turns.complete, turns.order)
    torch.testing.assert_close(adv[[0, 2, 4], 0, 0], torch.tensor([a0, a2, a4]))
    torch.testing.assert_close(adv[[1, 3], 0, 1], torch.tensor([b1, b3]))
    assert valid[:, 0].tolist() == [[True, False], [False, True], [True, False], [False, True], [True, False],
                                    [False, False], [False, False]]
    torch.testing.assert_close(from_turns(target, turns.order)[[0, 2, 4], 0, 0],
                               torch.tensor([a0, a2 + 2.0, a4 + 4.0]))


def test_a_waiting_player_contributes_to_no_loss():
    """Junk in every row where a player waits (its observation, action, log-probability) and in the
    value read there changes no advantage, target, statistic or loss of a move."""
    cfg = config_from_dict(tiny_config(env={"id": RELAY, "kwargs": {}, "num_envs": 4},
                                       algo={"rollout_steps": 20}))
    trainer = Trainer(cfg)
    try:
        trainer.collect()
        clean = trainer.rollout.tensors()
        waiting = ~clean["alive"]
        junk = {k: v.clone() for k, v in clean.items()}
        gen = torch.Generator().manual_seed(1)
        junk["obs"][waiting] = torch.randn(junk["obs"][waiting].shape, generator=gen) * 100
        junk["actions"][waiting] = torch.randint(0, 4, junk["actions"][waiting].shape, generator=gen)
        junk["logp"][waiting] = -50.0
        outputs = []
        for batch in (clean, junk):
            learner = copy.deepcopy(trainer.learner)
            prep = learner.prepare(batch, torch.Generator().manual_seed(0))
            valid = prep["valid"]
            assert not (valid & waiting).any() and valid.sum() < (~waiting).sum()   # incomplete turns left out
            outputs.append(update_from(learner, batch, prep, valid))
        assert_same_update(*outputs)
    finally:
        trainer.close()


def _default_config(env_id: str, steps: int, **env) -> dict:
    return default_config(env_id, steps, env=env, train={"eval_episodes": 8})


def test_the_relay_is_learned_with_the_default_config(tmp_path):
    """configs/spread_mappo.yaml plus env.id (and a 30k-step budget): the 2-player relay, where each
    move's reward arrives while its player waits. Optimum 8; random play over the legal actions
    about 3.75."""
    records, evaluation = train_run(_default_config(RELAY, 30000), tmp_path / "run")
    assert records[0]["team_return"] < 5.0
    assert evaluation["team_return_mean"] >= 7.6


def test_a_zero_sum_game_is_refused_under_a_team_reward_in_one_line(tmp_path):
    out = _cli("train", "configs/spread_mappo.yaml", "--run-dir", str(tmp_path / "run"), "--set",
               "env.id=pettingzoo.classic.tictactoe_v3:env", "--set", "env.kwargs={}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # PettingZoo's own deprecation notice ("[marl] env.id ...: The old environment creation API ...")
    # comes first; the refusal is the one error line
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("[marl] ")]
    assert len(lines) == 1 and "is a zero-sum game" in lines[0] and "env.reward: individual" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("game", ["tictactoe_v3", "connect_four_v3"])
def test_zero_sum_classic_games_train_as_self_play(tmp_path, game):
    """With env.reward: individual each player learns its own reward, against the other."""
    records, evaluation = train_run(_default_config(f"pettingzoo.classic.{game}:env", 1600, reward="individual"),
                                    tmp_path / "run")
    assert records[-1]["env_steps"] == 1600 and records[-1]["episodes"] > 0
    assert evaluation["team_return_mean"] == 0.0   # zero-sum: the players' returns cancel


@pytest.mark.parametrize("override, match", [
    ({"algo": {"advantage": "coma"}}, r"'algo.advantage': 'coma' values the joint action of one step.*turn-based"),
    ({"env": {"reward": "difference"}}, r"'env.reward': 'difference' re-simulates one step.*turn-based"),
    ({"backend": "rllib"}, r"'backend': 'rllib' does not credit the rewards a player receives between its turns"),
])
def test_what_cannot_credit_turns_is_refused_in_one_line(override, match):
    cfg = tiny_config(env={"id": RELAY, "kwargs": {}})
    for section, values in override.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    with pytest.raises(ConfigError, match=match):
        check_env(config_from_dict(cfg))


def test_hanabi_trains_with_the_default_config(tmp_path):
    """PettingZoo's hanabi_v5 (OpenSpiel through Shimmy: ``pip install marl-credit[hanabi]``), briefly."""
    pytest.importorskip("pyspiel")
    records, _ = train_run(_default_config("pettingzoo.classic.hanabi_v5:env", 1600), tmp_path / "run")
    assert records[-1]["env_steps"] == 1600 and records[-1]["episodes"] > 0
