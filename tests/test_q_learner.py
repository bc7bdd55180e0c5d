"""The off-policy value-decomposition learner (``algo.learner: q``, ``marl/q_learner.py``): it learns
small envs of ours to their optimum with each mixer, never takes an illegal action, handles agents
that leave and episodes that outlive the rollout, resumes exactly with a full replay, gives the
credit views their inputs, and refuses what it cannot do in one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from marl.config import ConfigError, config_from_dict, load_config
from marl.run import new_run, resume_run
from tests.conftest import resumed_equals_uninterrupted, train_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = {"fidelity_every": 0, "credit_image_every": 0, "histogram_every": 0}


def q_config(env_id: str, kwargs: dict, mixer: str, steps: int, T: int, reward: str = "shared", **algo) -> dict:
    """A small q config: 8 envs, 4 gradient steps per rollout, ε annealed over half the budget."""
    return {"seed": 0, "env": {"id": env_id, "kwargs": kwargs, "num_envs": 8, "reward": reward},
            "algo": {"learner": "q", "mixer": mixer, "rollout_steps": T, "lr": 0.001, "lam": 0.6,
                     "epsilon_anneal_steps": steps // 2, "replay_chunk": 16, "buffer_size": 500, "batch_size": 32,
                     "target_every": 25, "updates_per_rollout": 4, **algo},
            "model": {"hidden": 32},
            "train": {"total_env_steps": steps, "checkpoint_every": 1000, "eval_episodes": 8, "progress": False},
            "log": dict(QUIET)}


CHAIN = ("diag:delayed_chain", {"n_agents": 2, "length": 10, "decision_step": 0})


@pytest.mark.parametrize("mixer", ["vdn", "qmix", pytest.param("none", marks=pytest.mark.slow),
                                   pytest.param("qplex", marks=pytest.mark.slow)])
def test_the_delayed_chain_is_learned_to_its_optimum_across_rollouts(tmp_path, mixer):
    """Only the joint action at step 0 pays, 10 steps later; rollouts of 4 steps cut every episode,
    so the replay holds episodes stitched across rollouts. Optimum: team return 2 (1 per agent)."""
    _, evaluation = train_run(q_config(*CHAIN, mixer, 4000, T=4), tmp_path / "run")
    assert evaluation["team_return_mean"] == 2.0


def test_episodes_are_stored_whole_across_rollouts(tmp_path):
    """The delayed chain observes the one-hot step index: every replayed slot holds one episode's
    10 steps, its states 0..10 in order, though each rollout holds 7 steps."""
    from marl.trainer import Trainer

    trainer = Trainer(config_from_dict(q_config(*CHAIN, "vdn", 8 * 7 * 3, T=7, batch_size=64)))
    try:
        trainer.train(progress=False)
        replay = trainer.learner.replay
        assert len(replay) == 16   # two episodes per env; the third is open
        slots = replay.ring.read(torch.arange(len(replay)))
        assert (slots["filled"].sum(1) == 10).all()
        steps = slots["obs"][:, :11, 0, :11].argmax(-1)            # [slots, 11]: the step index of each state
        assert (steps == torch.arange(11)).all()
        assert slots["terminated"][:, 9].all() and not slots["terminated"][:, :9].any()
    finally:
        trainer.close()


@pytest.mark.parametrize("env_id, mixer, floor", [
    ("tests.user_envs:late_masks", "qmix", 0.9),
    pytest.param("tests.user_envs:masked_choice", "vdn", 0.7, marks=pytest.mark.slow)])
def test_per_step_masks_are_respected_and_learned(tmp_path, env_id, mixer, floor):
    """These envs raise on an illegal action, so finishing is the proof that none was taken (ε-greedy
    explores over legal actions only); the target action is always legal. Optimum 20."""
    _, evaluation = train_run(q_config(env_id, {}, mixer, 4000, T=10), tmp_path / "run")
    assert evaluation["team_return_mean"] >= floor * 20


def test_epsilon_greedy_samples_only_legal_actions():
    from marl.networks import MASKED_LOGIT
    from marl.q_learner import EpsilonGreedy

    q = torch.tensor([[0.0, 5.0, 1.0, 2.0]]).repeat(4000, 1)
    legal = torch.tensor([True, False, True, True])
    dist = EpsilonGreedy(torch.where(legal, q, MASKED_LOGIT), epsilon=0.3)
    actions = dist.sample(torch.Generator().manual_seed(0))
    counts = torch.bincount(actions, minlength=4).float() / len(actions)
    assert counts[1] == 0 and (dist.mode() == 3).all()
    assert torch.allclose(counts, torch.tensor([0.1, 0.0, 0.1, 0.8]), atol=0.03)


@pytest.mark.parametrize("mixer, reward", [("none", "individual"), ("vdn", "shared"),
                                           pytest.param("qmix", "shared", marks=pytest.mark.slow)])
def test_agents_that_arrive_and_leave_are_learned(tmp_path, mixer, reward):
    """``Departures``: agents present for 3, 6 and 9 steps (the third arrives at step 2; one leaves by
    truncation, two by termination). Optimum 18."""
    _, evaluation = train_run(q_config("tests.user_envs:departures", {}, mixer, 4000, T=11, reward=reward),
                              tmp_path / "run")
    assert evaluation["team_return_mean"] >= 0.9 * 18


@pytest.mark.parametrize("standardize", [False, True])
def test_resume_with_a_full_replay_equals_an_uninterrupted_run(tmp_path, standardize):
    """A replay of 12 slots is full after two rollouts of 8 envs; the resumed run samples and learns
    exactly as the uninterrupted one (the replay, its generator, the open episodes and, with
    ``algo.standardize_rewards``, the reward statistics are in the checkpoint)."""
    cfg = q_config(*CHAIN, "qmix", 8 * 4 * 8, T=4, buffer_size=12, batch_size=8, standardize_rewards=standardize)
    cfg["train"]["checkpoint_every"] = 2
    keys = ["q/loss", "q/value", "q/replay_slots", "q/epsilon", "team_return", "credit/dqtot/agent_0"]
    assert resumed_equals_uninterrupted(tmp_path, cfg, cut_steps=8 * 4 * 5, keys=keys)


@pytest.mark.slow
def test_a_recurrent_utility_learns_the_chain(tmp_path):
    """``model.recurrent``: each replayed slot is unrolled from a zero hidden state at its start."""
    cfg = q_config(*CHAIN, "vdn", 4000, T=5)
    cfg["model"]["recurrent"] = True
    _, evaluation = train_run(cfg, tmp_path / "run")
    assert evaluation["team_return_mean"] == 2.0


def test_credit_views_read_the_q_learner(tmp_path):
    """Per-agent credit (advantage over the ε-greedy mean, QMIX's ∂Q_tot/∂Q_i ≥ 0) is logged, and
    ``prepare`` gives ``marl credit`` its ``adv [T, B, N]``."""
    from marl.credit import episode_credit
    from marl.run import load_trainer

    records, _ = train_run(q_config(*CHAIN, "qmix", 1200, T=10), tmp_path / "run")
    last = records[-1]
    for agent in ("agent_0", "agent_1"):
        assert last[f"credit/dqtot/{agent}"] >= 0
        assert 0 <= last[f"credit/share/{agent}"] <= 1
    trainer = load_trainer(tmp_path / "run")
    try:
        assert trainer.learner.credit_values() is None   # nothing learned in this process yet
        ep = episode_credit(trainer, seed=3)
        assert ep["advantage"].shape == (10, 2) and ep["actions"].shape == (10, 2)
    finally:
        trainer.close()


# -- the default config, and envs none of us wrote ----------------------------------------------------

def test_the_default_config_with_only_the_switch_trains(tmp_path):
    """configs/spread_mappo.yaml plus ``--set algo.learner=q``: its PPO keys are dropped by the
    switch, and one iteration trains (mpe2 simple_spread)."""
    cfg = load_config(CONFIGS / "spread_mappo.yaml", ["algo.learner=q", "train.total_env_steps=800",
                                                      "train.eval_episodes=2", "train.progress=false"])
    assert cfg.algo.epochs == 10 and cfg.algo.own.mixer == "qmix"   # the base's epochs: 15 is not inherited
    records, evaluation = train_run(_as_dict(cfg), tmp_path / "run")
    assert len(records) == 1 and records[0]["q/replay_slots"] == 0.0 and evaluation["team_return_mean"] < 0


def test_lbf_through_the_gymnasium_adapter_trains(tmp_path):
    """configs/lbf_qmix.yaml (LBF, a Gymnasium env) for a few iterations, gradient steps included."""
    cfg = load_config(CONFIGS / "lbf_qmix.yaml", ["train.total_env_steps=1200", "algo.batch_size=8",
                                                  "train.eval_episodes=2", "train.progress=false"])
    records, _ = train_run(_as_dict(cfg), tmp_path / "run")
    assert records[-1]["q/updates"] > 0 and records[-1]["q/loss"] >= 0


def test_the_batched_twin_trains(tmp_path):
    """configs/spread_fast_qmix.yaml (``env.batched``): the rollout arrives as tensors; each of the
    64 envs stores its 25-step episode as its chunk fills, and 8 gradient steps follow each rollout."""
    cfg = load_config(CONFIGS / "spread_fast_qmix.yaml", ["train.total_env_steps=3200", "algo.batch_size=16",
                                                          "train.eval_episodes=4", "train.progress=false"])
    records, evaluation = train_run(_as_dict(cfg), tmp_path / "run")
    assert records[-1]["q/replay_slots"] == 128 and records[-1]["q/updates"] == 16 and evaluation["team_return_mean"] < 0


@pytest.mark.parametrize("normalize, lo, hi", [(True, -1.0, 2.0), (False, 5.0, float("inf"))])
def test_qmix_on_lbf_raw_states_stays_bounded_only_when_normalised(tmp_path, normalize, lo, hi):
    """LBF's state holds coordinates and levels up to 7 and a team return of at most 1. On the raw
    state QMIX's initial state-only terms make Q_tot ≈ 10 and bootstrapping keeps it there (the
    negative control); with ``algo.normalize_state`` the mixer's state is standardised and the mean
    Q_tot of the replayed steps stays in [-1, 2] over 4,000 mostly unrewarded steps."""
    cfg = load_config(CONFIGS / "lbf_qmix.yaml", ["env.batched=true", "train.total_env_steps=4000",
                                                  f"algo.normalize_state={str(normalize).lower()}",
                                                  "algo.standardize_rewards=false",   # Q_tot in the env's units
                                                  "train.eval_episodes=2", "train.progress=false"])
    records, _ = train_run(_as_dict(cfg), tmp_path / "run")
    values = [r["q/value"] for r in records if "q/value" in r]
    assert len(values) > 10 and all(lo < v < hi for v in values[-5:])


@pytest.mark.parametrize("mixer", ["vdn", "qmix"])
def test_standardised_rewards_make_learning_invariant_to_the_reward_scale(tmp_path, mixer):
    """``algo.standardize_rewards``: the climbing game's payoff P and 10·P − 3 give the same
    standardised rewards, so the same updates: the losses, values and targets of every logged step
    agree (in standardised units; unstandardised, the losses would differ by about 100×)."""
    from marl.envs.diagnostic import CLIMBING_PAYOFF

    runs = {}
    for scale, shift in [(1.0, 0.0), (10.0, -3.0)]:
        payoff = (scale * CLIMBING_PAYOFF + shift).tolist()
        cfg = q_config("marl.envs.diagnostic:MatrixGame", {"payoff": payoff}, mixer, 8 * 60, T=1,
                       replay_chunk=1, standardize_rewards=True)
        runs[scale] = train_run(cfg, tmp_path / f"x{scale:g}")
    (small, _), (large, _) = runs[1.0], runs[10.0]
    pairs = torch.tensor([[a[k], b[k]] for a, b in zip(small, large) if "q/loss" in a
                          for k in ("q/loss", "q/value", "q/target")])
    assert len(pairs) > 60
    assert torch.allclose(pairs[:, 0], pairs[:, 1], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_env_workers_acting_for_themselves_carry_epsilon(tmp_path):
    """``env.workers`` with ``train.act_in_workers``: each worker acts with a pickled copy of the
    ε-greedy actor, so the chain is still learned."""
    cfg = q_config(*CHAIN, "vdn", 4000, T=4)
    cfg["env"]["workers"] = 2
    cfg["train"]["act_in_workers"] = True
    _, evaluation = train_run(cfg, tmp_path / "run")
    assert evaluation["team_return_mean"] == 2.0


def _as_dict(cfg) -> dict:
    data = cfg.to_dict()
    data["log"].update(QUIET)
    return data


@pytest.mark.parametrize("name", ["spread_qmix", "lbf_qmix", "lbf_vdn", "lbf_iql", "lbf_qplex", "spread_fast_qmix"])
def test_shipped_q_configs_load_and_say_only_what_they_change(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.algo.learner == "q"
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()   # the saved config reloads as is
    assert "base:" in (CONFIGS / f"{name}.yaml").read_text()


# -- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({"algo": {"mixer": "vdn"}}, (r"config key 'algo.mixer': it belongs to algo.learner 'q', and algo.learner is "
                                  r"'ppo'; remove it or set algo.learner: q")),
    ({"algo": {"learner": "q", "clip": 0.3}}, r"config key 'algo.clip': set to 0.3, but algo.learner 'q' does not read"),
    ({"algo": {"learner": "q", "entropy_coef": 0.0}}, r"'algo.entropy_coef': .* algo.learner 'q' does not read it"),
    ({"backend": "rllib", "algo": {"learner": "q"}}, r"config key 'backend': expected 'local' with algo.learner 'q'"),
    ({"algo": {"learner": "q"}, "env": {"kwargs": {"continuous_actions": True}}},
     r"'env.kwargs.continuous_actions': expected false with algo.learner 'q' .* use learner ppo"),
    ({"algo": {"learner": "q", "mixer": "qmix"}, "env": {"reward": "individual"}},
     r"config key 'algo.mixer': expected 'none' with env.reward 'individual'"),
    ({"algo": {"learner": "q", "td": "n_step", "lam": 0.6}}, r"'algo.lam': .* algo.td is 'n_step'"),
])
def test_refusals_are_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(data)
    assert "\n" not in str(err.value)


def test_a_box_action_env_is_refused_before_the_run_starts(tmp_path):
    from marl.run import new_run

    cfg = config_from_dict({"env": {"id": "tests.user_envs:reach_target", "kwargs": {}},
                            "algo": {"learner": "q", "mixer": "vdn"}})
    with pytest.raises(ConfigError, match=r"continuous \(Box\) actions; use algo.learner: ppo$"):
        new_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_switching_learner_in_a_variant_drops_the_other_learners_keys(tmp_path):
    variant = tmp_path / "v.yaml"
    variant.write_text(f"base: {CONFIGS / 'spread_qmix.yaml'}\nalgo: {{learner: ppo}}\n")
    cfg = load_config(variant)
    assert cfg.algo.learner == "ppo" and cfg.algo.own is None
    assert load_config(CONFIGS / "spread_qmix.yaml", ["algo.learner=ppo"]).algo.own is None
    with pytest.raises(ConfigError, match="'algo.mixer': it belongs to algo.learner 'q'"):
        load_config(CONFIGS / "spread_qmix.yaml", ["algo.learner=ppo", "algo.mixer=vdn"])


def test_resume_names_a_changed_q_key_as_the_user_writes_it(tmp_path):
    """The q learner's own keys sit flat under ``algo``; a resume that changes one is refused naming
    ``algo.<key>``, the key the user wrote, not the config's internal layout."""
    cfg = q_config(*CHAIN, "vdn", 8 * 4 * 2, T=4)
    trainer = new_run(config_from_dict(cfg), tmp_path / "run")
    trainer.train()
    trainer.close()
    with pytest.raises(ConfigError, match=r"--set algo.epsilon_finish=0.2 changes algo.epsilon_finish \("):
        resume_run(tmp_path / "run", ["algo.epsilon_finish=0.2"])
