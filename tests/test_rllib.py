"""The RLlib backend (``marl/rllib``) against a real local Ray instance and real RLlib classes.

- smoke: one small iteration with 0 and with 2 EnvRunners; the run directory is well formed and
  the checkpoint evaluates with the local evaluator;
- parity: on the same fixed set of episodes, the advantages and value targets of the RLlib learner
  pipeline equal those of the local backend (gae, td_lambda, coma, and the other modules);
- RLlib's own GAE: ours equals ``GeneralAdvantageEstimation`` on a sampled batch except on chunks
  that end at a time limit (RLlib does not bootstrap there, we do), where it equals RLlib's formula
  with the time limit treated as a truncation;
- fault tolerance: an env that raises once inside an EnvRunner; training goes on, no iteration is
  lost, the cause is logged;
- resume after Ctrl-C.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from marl.config import config_from_dict
from marl.evaluate import evaluate
from marl.logger import read_metrics
from marl.run import final_evaluation, load_actor, load_trainer, new_run, resume_run
from marl.trainer import Trainer, TrainingInterrupted
from tests.conftest import after_call_in_iteration, merge_sections, tiny_config

AGENTS = ["agent_0", "agent_1", "agent_2"]
# Envs made in this process by several EnvRunners re-register RLlib's gym id.
pytestmark = pytest.mark.filterwarnings("ignore:.*Overriding environment rllib-multi-agent-env-v0")


def rllib_config(**sections) -> dict:
    """simple_spread with 10-step episodes; one iteration = 10 steps from each of 4 envs."""
    cfg = tiny_config(backend="rllib", env={"kwargs": {"N": 3, "max_cycles": 10}, "num_envs": 4},
                      algo={"rollout_steps": 10, "epochs": 2, "minibatches": 2},
                      rllib={"num_env_runners": 0, "num_envs_per_env_runner": 2},
                      log={"histogram_every": 1}, train={"total_env_steps": 40, "eval_episodes": 2})
    return merge_sections(cfg, sections)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs, no dashboard) for the module; trainers join it."""
    import ray

    from marl.rllib.trainer import start_ray
    started = start_ray(config_from_dict(rllib_config()))
    yield
    if started:
        ray.shutdown()


# -- smoke ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("runners, advantage, loss", [(0, "coma", "a2c"), (2, "gae", "ppo"), (0, "shapley_lambda", "ppo")])
def test_one_iteration_writes_a_run_dir_that_evaluates_locally(tmp_path, ray_instance, runners, advantage, loss):
    cfg = config_from_dict(rllib_config(rllib={"num_env_runners": runners},
                                        algo={"advantage": advantage, "loss": loss}))
    run = tmp_path / "run"
    trainer = new_run(cfg, run)
    try:
        if runners:  # the critic is never built on EnvRunners
            on_runners = trainer.algo.env_runner_group.foreach_env_runner(
                lambda er: (er.module["shared"].inference_only, hasattr(er.module["shared"], "critic")),
                local_env_runner=False)
            assert on_runners == [(True, False)] * runners
        summary = trainer.train()
        result = final_evaluation(trainer)
        trained_actor = {k: v.clone() for k, v in trainer.actor.state_dict().items()}
    finally:
        trainer.close()
    assert summary["env_steps"] == 40 and summary["env_steps_per_s"] > 0

    assert config_from_dict(yaml.safe_load((run / "config.yaml").read_text())) == cfg
    assert list(run.glob("events.out.tfevents.*"))
    (record,) = read_metrics(run)
    assert record["iteration"] == 1 and record["env_steps"] == 40 and record["episodes"] >= 4
    for agent in AGENTS:
        for prefix in ("return", "reward_return", "credit/adv_mean", "credit/share", "value_error", "entropy"):
            assert np.isfinite(record[f"{prefix}/{agent}"]), (prefix, agent)
        if advantage == "coma":
            assert np.isfinite(record[f"coma/gap/{agent}"])
    assert np.isclose(record["team_return"], sum(record[f"return/{a}"] for a in AGENTS))
    for key in ("losses/policy", "losses/value", "losses/grad_norm", "explained_variance", "perf/env_steps_per_s"):
        assert np.isfinite(record[key]), key

    state = load_checkpoint(run / CHECKPOINT_NAME)  # the local backend's format
    assert {"actor", "critic", "value_norm", "optimizer", "updates", "iteration", "env_steps", "generator",
            "torch_rng", "agents"} <= state.keys()
    assert state["iteration"] == 1 and state["updates"] == 1 and state["env_steps"] == 40
    assert state["optimizer"]["state"], "the RLlib Learner's Adam state is in the checkpoint"
    actor, _ = load_actor(run)  # what `marl eval RUN_DIR` does
    assert all(torch.equal(actor.state_dict()[k], v) for k, v in trained_actor.items())
    assert evaluate(actor, cfg.env.id, cfg.env.kwargs, 2, seed=cfg.seed) == {
        k: v for k, v in result.items() if k not in ("env_steps", "sampled", "note")}
    local = load_trainer(run)  # `marl credit` and notebooks load it into the local trainer
    local.close()


# -- the module's rows are our networks' agent slots -------------------------------------------------

SPEAKER_LISTENER = {"id": "mpe2:simple_speaker_listener_v4", "kwargs": {"max_cycles": 10, "continuous_actions": False}}


@pytest.mark.parametrize("env, share_actor, advantage, critic", [
    ({}, True, "gae", "central"), ({}, False, "gae", "local"), ({}, True, "gae", "agent_state"),
    ({}, True, "coma", "central"),
    (SPEAKER_LISTENER, True, "gae", "central"), (SPEAKER_LISTENER, False, "coma", "central")])
def test_module_rows_equal_the_networks_agent_slots(env, share_actor, advantage, critic):
    """Each RLlib row (agent i's padded observation and one-hot id) gets exactly agent i's slot of
    our networks; speaker-listener has padded observations and masked actions."""
    from marl.rllib.algorithm import env_spec

    cfg = config_from_dict(rllib_config(env=env, model={"share_actor": share_actor},
                                        algo={"advantage": advantage, "critic": critic}))
    learner, _ = build_learner(cfg)
    module, credit, spec = learner.module["shared"], learner.credit, env_spec(cfg)
    N, B = len(spec["agents"]), 5
    obs, state = torch.randn(B, N, spec["obs_dim"]), torch.randn(B, spec["state_dim"])
    actions = torch.distributions.Categorical(logits=credit.actor(obs)).sample()  # available actions only
    rows = torch.cat([obs, torch.eye(N).expand(B, N, N)], -1).reshape(B * N, -1)  # agent i of env b at row b*N+i
    idx = torch.arange(N).repeat(B)
    with torch.no_grad():
        assert torch.allclose(module.actor_logits(rows), credit.actor(obs).reshape(B * N, -1), atol=1e-6)
        critic_in = credit.critic_input(state, obs, actions)
        full = credit.critic(critic_in)
        if credit.uses_q:
            expected = full.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            per_row = critic_in.reshape(B * N, -1)
        else:
            expected = full
            per_row = state.repeat_interleave(N, 0) if critic == "central" else critic_in.reshape(B * N, -1)
        assert torch.allclose(module.critic_prediction(per_row, idx, actions.reshape(-1)), expected.reshape(-1),
                              atol=1e-6)


# -- parity with the local backend ----------------------------------------------------------------

def episodes_from_rollout(batch: dict, agents: list, obs_space, act_space, dynamic_mask: bool = False):
    """RLlib ``MultiAgentEpisode`` chunks holding exactly a local ``[T, B, N]`` rollout, as
    ``marl.rllib.env`` would have produced them: each env column is split where an episode ends,
    and cut at the rollout end. Returns the chunks and, per chunk, its ``(column, first step)``."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.multi_agent_episode import MultiAgentEpisode

    from marl.rllib.algorithm import shared_policy
    from marl.rllib.env import ALIVE, STATE, TERMINATED, TRUNCATED

    T, B, N = batch["actions"].shape[:3]
    ids = np.eye(N, dtype=np.float32)
    alive = batch["alive"]

    def obs(o, avail):
        rows = [np.concatenate([o[i].numpy(), ids[i]] + ([avail[i].numpy().astype(np.float32)] if dynamic_mask else []))
                for i in range(N)]
        return dict(zip(agents, rows))

    done = ((batch["terminated"] | batch["truncated"]) | ~alive).all(-1)
    chunks, origin = [], []
    for col in range(B):
        start = 0
        for end in range(T):
            if not (done[end, col] or end == T - 1):
                continue
            ep = MultiAgentEpisode(observation_space={a: obs_space for a in agents},
                                   action_space={a: act_space for a in agents},
                                   agent_to_module_mapping_fn=shared_policy)
            first = {STATE: batch["state"][start, col].numpy(), ALIVE: alive[start, col].numpy()}
            ep.add_env_reset(observations=obs(batch["obs"][start, col], batch["avail"][start, col]),
                             infos={a: (first if a == agents[0] else {}) for a in agents})
            for t in range(start, end + 1):
                term, trunc = batch["terminated"][t, col].numpy(), batch["truncated"][t, col].numpy()
                ended = bool(done[t, col])
                gone = term | ~alive[t, col].numpy()
                infos = {a: {} for a in agents}
                next_alive = alive[t + 1, col].numpy() if t + 1 < T and not ended else np.zeros(N, bool)
                infos[agents[0]] = {STATE: batch["next_state"][t, col].numpy(), ALIVE: next_alive,
                                    TERMINATED: term, TRUNCATED: trunc}
                terminateds = {a: ended and bool(gone[i]) for i, a in enumerate(agents)}
                truncateds = {a: ended and not gone[i] for i, a in enumerate(agents)}
                terminateds["__all__"], truncateds["__all__"] = ended and gone.all(), ended and not gone.all()
                ep.add_env_step(
                    observations=obs(batch["next_obs"][t, col], batch["next_avail"][t, col]),
                    actions={a: (batch["actions"][t, col, i].numpy() if batch["actions"].dim() == 4
                                 else int(batch["actions"][t, col, i])) for i, a in enumerate(agents)},
                    rewards={a: float(batch["reward"][t, col, i]) for i, a in enumerate(agents)},
                    infos=infos, terminateds=terminateds, truncateds=truncateds,
                    extra_model_outputs={a: {Columns.ACTION_LOGP: np.float32(batch["logp"][t, col, i])}
                                         for i, a in enumerate(agents)})
            chunks.append(ep)
            origin.append((col, start))
            start = end + 1
    return chunks, origin


def build_learner(cfg):
    """A real ``CreditPPOLearner`` in this process (what each RLlib Learner actor builds)."""
    from marl.rllib.algorithm import build_config, env_spec
    from marl.rllib.env import TeamMultiAgentEnv, env_config

    env = TeamMultiAgentEnv(env_config(cfg))
    return build_config(cfg, **env_spec(cfg)).build_learner(env=env), env


# Mid-episode cuts (rollout 25, episodes of 10) split each env column into three chunks. COMA draws
# the bootstrap joint action at cuts from the generator over the whole [T, B, N] batch, so its
# parity needs the same layout: rollouts of exactly one episode.
PARITY = [("gae", 25, "central", True, {}), ("gae", 25, "central", False, {}), ("td_lambda", 25, "central", True, {}),
          ("coma", 10, "central", True, {}), ("coma", 10, "central", False, {}), ("gae", 25, "local", True, {}), ("gae", 25, "agent_state", True, {}),
          ("n_step", 25, "central", True, {}), ("mc", 25, "central", True, {}), ("coma_lambda", 10, "central", True, {}),
          ("td_lambda", 25, "central", True, SPEAKER_LISTENER), ("coma", 10, "central", True, SPEAKER_LISTENER)]


@pytest.mark.parametrize("advantage, rollout, critic, normalize, env", PARITY)
def test_rllib_pipeline_matches_local_advantages_and_targets(advantage, rollout, critic, normalize, env):
    from ray.rllib.evaluation.postprocessing import Postprocessing

    from marl.rllib.module import INDEX

    cfg = config_from_dict(rllib_config(env=env, algo={"advantage": advantage, "rollout_steps": rollout,
                                                       "critic": critic, "normalize_advantage": normalize,
                                                       "normalize_value": normalize}))
    local = Trainer(cfg)
    heads = local.learner.value_norm.mean.numel()
    local.learner.value_norm.update(torch.randn(64, heads) * 3 - 5)  # a non-trivial value normaliser
    local.collect()
    batch = local.rollout.tensors()
    learner, rllib_env = build_learner(cfg)
    learner.credit.load_state_dict(local.learner.state_dict())

    prep = local.learner.prepare(batch, torch.Generator().manual_seed(7))
    adv, target = prep["adv"], prep["target"]
    if normalize:  # what CreditLearner.update does next
        local.learner.update_value_norm(target)
        target = local.learner.value_norm.normalize(target)
        adv = (adv - adv.mean((0, 1))) / (adv.std((0, 1)) + 1e-8)

    first = local.agents[0]
    chunks, origin = episodes_from_rollout(batch, local.agents, rllib_env.observation_spaces[first],
                                           rllib_env.action_spaces[first])
    assert len(chunks) == (12 if rollout == 25 else 4)
    learner.marl_generator.manual_seed(7)
    rows = learner._learner_connector(rl_module=learner.module, batch={}, episodes=chunks, shared_data={})["shared"]
    chunk, t, i = rows[INDEX].long().unbind(-1)
    col = torch.tensor([origin[c][0] for c in chunk.tolist()])
    step = torch.tensor([origin[c][1] for c in chunk.tolist()]) + t
    assert len(chunk) == adv.numel()  # every (step, env, agent) once, no bootstrap rows
    assert torch.allclose(rows[Postprocessing.ADVANTAGES], adv[step, col, i], atol=1e-5)
    assert torch.allclose(rows[Postprocessing.VALUE_TARGETS], target[step, col, i], atol=1e-5)
    local.close()


DEPARTURES = {"id": "tests.user_envs:departures", "kwargs": {}, "reward": "individual"}
MASKED = {"id": "tests.user_envs:masked_choice", "kwargs": {"mask_in": "obs", "length": 5}}


@pytest.mark.parametrize("env, advantage", [(DEPARTURES, "gae"), (DEPARTURES, "coma"), (MASKED, "gae"),
                                            (MASKED, "coma")])
def test_rllib_pipeline_matches_local_with_agents_that_leave_and_per_step_masks(env, advantage):
    """Agents that leave (padded, and out of every statistic) and per-step masks (carried in the
    RLlib observation) give the same advantages, targets and credit statistics on both backends."""
    from ray.rllib.evaluation.postprocessing import Postprocessing

    from marl.rllib.module import INDEX, WEIGHT

    # rollouts of exactly one episode (11 steps for departures, 5 for masked choice), as COMA's parity needs
    rollout = 11 if env is DEPARTURES else 5
    cfg = config_from_dict(rllib_config(env=env, algo={"advantage": advantage, "rollout_steps": rollout,
                                                       "minibatches": 1}))
    local = Trainer(cfg)
    local.collect()
    batch = local.rollout.tensors()
    valid = local.learner.valid_mask(batch)
    learner, rllib_env = build_learner(cfg)
    learner.credit.load_state_dict(local.learner.state_dict())
    prep = local.learner.prepare(batch, torch.Generator().manual_seed(7))
    adv, target, stats = local.learner.finalise(prep, valid)

    first = local.agents[0]
    chunks, origin = episodes_from_rollout(batch, local.agents, rllib_env.observation_spaces[first],
                                           rllib_env.action_spaces[first], rllib_env.dynamic_mask)
    learner.marl_generator.manual_seed(7)
    rows = learner._learner_connector(rl_module=learner.module, batch={}, episodes=chunks, shared_data={})["shared"]
    chunk, t, i = rows[INDEX].long().unbind(-1)
    col = torch.tensor([origin[c][0] for c in chunk.tolist()])
    step = torch.tensor([origin[c][1] for c in chunk.tolist()]) + t
    real = valid[step, col, i] if valid is not None else torch.ones(len(chunk), dtype=torch.bool)
    assert torch.allclose(rows[Postprocessing.ADVANTAGES][real], adv[step, col, i][real], atol=1e-5)
    assert torch.allclose(rows[Postprocessing.VALUE_TARGETS][real], target[step, col, i][real], atol=1e-5)
    if env is DEPARTURES:
        assert torch.equal(rows[WEIGHT].bool(), real) and not real.all()
    rllib_stats = learner.credit_piece.last_stats["shared"]
    last = local.agents[-1]
    for key in ("credit/adv_mean/agent_0", f"credit/share/{last}", "explained_variance", f"value_error/{last}"):
        assert np.isclose(rllib_stats[key], stats[key], rtol=1e-4, atol=1e-5), key
    # the module masks the logits with the legal actions carried in the observation
    with torch.no_grad():
        logits = learner.module["shared"].actor_logits(rows["obs"])
    if env is MASKED:
        legal = rows["obs"][:, -5:] > 0.5
        assert torch.all(logits[~legal] < -1e8) and torch.all(logits[legal] > -1e8)
    local.close()


@pytest.mark.parametrize("env", [DEPARTURES, MASKED,   # the Gymnasium-adapter and user-module envs: slow, in CI
                                 *(pytest.param(env, marks=pytest.mark.slow) for env in
                                   ({"id": "lbf:Foraging-8x8-2p-2f-coop-v3", "kwargs": {}},
                                    {"id": "tests.user_envs:reach_target", "kwargs": {}}))])
def test_envs_users_bring_train_on_rllib(tmp_path, ray_instance, env):
    """Agents that leave, masks with an env that raises on an illegal action, a Gymnasium
    multi-agent env, and continuous actions with an env that raises on unclipped ones, through
    RLlib's EnvRunners."""
    cfg = config_from_dict(rllib_config(env=env, rllib={"num_env_runners": 1}, train={"total_env_steps": 80},
                                        log={"histogram_every": 0, "credit_image_every": 0}))
    trainer = new_run(cfg, tmp_path / "run")
    try:
        trainer.train()
        result = final_evaluation(trainer)
    finally:
        trainer.close()
    records = read_metrics(tmp_path / "run")
    assert [r["env_steps"] for r in records] == [40, 80]
    assert all(np.isfinite(r["losses/value"]) and np.isfinite(r["losses/policy"]) for r in records)
    assert np.isfinite(result["team_return_mean"])


CONTINUOUS_SPREAD = {"kwargs": {"N": 3, "max_cycles": 10, "continuous_actions": True}}


@pytest.mark.parametrize("advantage, loss, rollout, env", [("gae", "ppo", 25, {}), ("coma", "a2c", 10, {}),
                                                           ("gae", "ppo", 25, CONTINUOUS_SPREAD),
                                                           ("td_lambda", "a2c", 25, CONTINUOUS_SPREAD)])
def test_one_update_equals_the_local_update(advantage, loss, rollout, env):
    """With one minibatch per epoch both backends take full-batch steps, so the RLlib Learner's
    loss, Adam, clipping, value normaliser and A2C's one actor pass give the local weights; with
    continuous actions the Gaussian (its log-std included) trains the same on both."""
    cfg = config_from_dict(rllib_config(env=env, algo={"advantage": advantage, "loss": loss, "rollout_steps": rollout,
                                                       "epochs": 3, "minibatches": 1, "lr": 3e-3, "critic_lr": 3e-3}))
    local = Trainer(cfg)
    local.collect()
    batch = local.rollout.tensors()
    learner, env = build_learner(cfg)
    learner.credit.load_state_dict(local.learner.state_dict())
    chunks, _ = episodes_from_rollout(batch, local.agents, env.observation_spaces["agent_0"],
                                      env.action_spaces["agent_0"])
    local_metrics = local.learner.update(batch, torch.Generator().manual_seed(3))
    learner.marl_generator.manual_seed(3)
    results = learner.update(episodes=chunks, timesteps={}, num_epochs=3, minibatch_size=batch["logp"].numel(),
                             shuffle_batch_per_epoch=True)
    ours, theirs = learner.credit.state_dict(), local.learner.state_dict()
    for part in ("actor", "critic", "value_norm"):
        for key, value in theirs[part].items():
            assert torch.allclose(ours[part][key].double(), value.double(), atol=1e-5), (part, key)
    assert ours["updates"] == theirs["updates"] == 1
    seen = learner.credit_piece.last_prepared["shared"]["batch"]["actions"]   # time-major, as the learner read them
    assert seen.dtype == batch["actions"].dtype   # continuous actions stay float, never truncated to ints
    (stats,) = results["shared"]["marl"].peek()  # what reaches metrics.jsonl
    for key in ("credit/adv_mean/agent_0", "credit/share/agent_1", "explained_variance", "value_error/agent_2",
                "losses/policy", "losses/value", "losses/entropy", "losses/grad_norm", "entropy/agent_1"):
        assert np.isclose(stats[key], local_metrics[key], rtol=1e-4, atol=1e-5), key
    local.close()


def test_our_gae_equals_rllib_gae_except_at_time_limits():
    """A batch sampled by RLlib's own EnvRunner: episodes continued from the previous sample,
    episodes ending at the time limit, and chunks cut mid-episode."""
    from ray.rllib.connectors.learner import GeneralAdvantageEstimation
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
    from ray.rllib.evaluation.postprocessing import Postprocessing
    from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

    from marl.rllib.algorithm import build_config, env_spec, register_env
    from marl.rllib.module import INDEX

    cfg = config_from_dict(rllib_config(algo={"normalize_advantage": False, "normalize_value": False, "lam": 0.9},
                                        rllib={"num_envs_per_env_runner": 3}))
    register_env()
    runner = MultiAgentEnvRunner(config=build_config(cfg, **env_spec(cfg)))
    runner.sample(num_timesteps=3 * 3 * 7, explore=True)              # 7 steps per env (counted per agent)
    episodes = runner.sample(num_timesteps=3 * 3 * 16, explore=True)  # 3 + 10 + 3 steps per env
    runner.stop()
    assert sorted((len(e), e.env_t_started, e.is_done) for e in episodes) == \
        [(3, 0, False)] * 3 + [(3, 7, True)] * 3 + [(10, 0, True)] * 3

    learner, _ = build_learner(cfg)
    ours = learner._learner_connector(rl_module=learner.module, batch={}, episodes=copy.deepcopy(episodes),
                                      shared_data={})["shared"]
    prepared = learner.credit_piece.last_prepared["shared"]
    tm, mask = prepared["batch"], prepared["mask"]
    # Rows line up across columns: simple_spread's state is the concatenation of the observations,
    # also for the final observation of each chunk (the bootstrap row).
    assert torch.equal(tm["state"][mask], tm["obs"][mask].flatten(-2))
    assert torch.equal(tm["next_state"][mask], tm["next_obs"][mask].flatten(-2))

    theirs, shared, eps = {}, {}, copy.deepcopy(episodes)
    for piece in learner._learner_connector.connectors[:-1] + [
            GeneralAdvantageEstimation(gamma=cfg.algo.gamma, lambda_=cfg.algo.lam)]:
        theirs = piece(rl_module=learner.module, batch=theirs, episodes=eps, shared_data=shared, explore=None)
    theirs = theirs["shared"]
    real = theirs[Columns.LOSS_MASK].bool()

    def grid(index, values):
        c, t, i = index.long().unbind(-1)
        out = torch.full((int(t.max()) + 1, len(episodes), 3), float("nan"))
        out[t, c, i] = values.float()
        return out

    ours_vt = grid(ours[INDEX], ours[Postprocessing.VALUE_TARGETS])
    rllib_vt = grid(theirs[INDEX][real], theirs[Postprocessing.VALUE_TARGETS][real])
    time_limit = torch.tensor([e.is_done for e in episodes])
    # RLlib marks a pure time-limit end as terminated, so it does not bootstrap there.
    last = torch.tensor([len(e) - 1 for e in episodes])
    terminated = grid(theirs[INDEX][real], theirs[Columns.TERMINATEDS][real])
    assert (terminated[last, torch.arange(len(episodes))][time_limit] == 1).all()
    assert torch.allclose(ours_vt[:, ~time_limit], rllib_vt[:, ~time_limit], atol=1e-5, equal_nan=True)
    gap = (ours_vt[:, time_limit] - rllib_vt[:, time_limit]).nan_to_num().abs()
    assert (gap.amax(0) > 1e-3).all(), "negative control: the conventions differ on every time-limit chunk"
    # With the time limit as a truncation, RLlib's own formula gives our targets everywhere.
    values = learner.module["shared"].compute_values(theirs)
    switched = compute_value_targets(values=values.numpy(), rewards=theirs[Columns.REWARDS].numpy(),
                                     terminateds=np.zeros(len(values)), truncateds=theirs[Columns.TRUNCATEDS].numpy(),
                                     gamma=cfg.algo.gamma, lambda_=cfg.algo.lam)
    switched = grid(theirs[INDEX][real], torch.as_tensor(switched)[real])
    assert torch.allclose(ours_vt, switched, atol=1e-5, equal_nan=True)


# -- fault tolerance --------------------------------------------------------------------------------

def crashing_spread(flag: str, at_step: int, driver_pid: int, **kwargs):
    """simple_spread whose first env to reach step ``at_step`` in an EnvRunner process raises once
    (the flag file is claimed by an atomic rename, so the restarted EnvRunner does not crash)."""
    from mpe2 import simple_spread_v3
    from pettingzoo.utils.wrappers import BaseParallelWrapper

    class CrashOnce(BaseParallelWrapper):
        steps = 0

        def step(self, actions):
            self.steps += 1
            if self.steps == at_step and os.getpid() != driver_pid:
                try:
                    os.rename(flag, flag + ".used")
                except FileNotFoundError:
                    pass
                else:
                    raise RuntimeError(f"injected crash at step {at_step}")
            return super().step(actions)

    return CrashOnce(simple_spread_v3.parallel_env(**kwargs))


@pytest.mark.slow   # fault injection
def test_crashed_env_runner_is_restarted_and_no_iteration_is_lost(tmp_path, ray_instance, capfd):
    flag = tmp_path / "crash.flag"
    flag.touch()
    cfg = config_from_dict(rllib_config(
        env={"id": "tests.test_rllib:crashing_spread",
             "kwargs": {"N": 3, "max_cycles": 10, "flag": str(flag), "at_step": 5, "driver_pid": os.getpid()}},
        rllib={"num_env_runners": 2, "num_envs_per_env_runner": 1}, train={"total_env_steps": 120, "eval_episodes": 0},
        log={"histogram_every": 0, "credit_image_every": 0}))
    run = tmp_path / "run"
    trainer = new_run(cfg, run)
    try:
        trainer.train()  # the healthy EnvRunner fills the batches while the other restarts
        group = trainer.algo.env_runner_group
        deadline = time.monotonic() + 240    # a restarted actor re-imports torch and Ray: slow on a busy machine
        while group.num_healthy_remote_workers() < 2 and time.monotonic() < deadline:
            trainer.algo.restore_env_runners(group)  # what Algorithm.train() does every iteration
            time.sleep(0.5)
        assert group.num_healthy_remote_workers() == 2 and group.num_remote_worker_restarts() == 1
        # Both sample again, and the restarted one does not crash again.
        assert all(group.foreach_env_runner(lambda er: len(er.sample(num_timesteps=15, explore=False)) > 0,
                                            local_env_runner=False))
    finally:
        trainer.close()
    assert not flag.exists(), "the env crashed once"
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert [r["env_steps"] for r in records] == [40, 80, 120]
    assert [r["faults/env_failures"] for r in records] == [1, 1, 1]
    (fault,) = [json.loads(line) for line in (run / "env_faults.jsonl").read_text().splitlines()]
    assert fault["error"].startswith("env 'tests.test_rllib:crashing_spread' raised in step 5 of its episode: "
                                     "RuntimeError: injected crash at step 5 (at ")
    assert fault["worker_index"] in (1, 2) and "Traceback" in fault["traceback"]
    assert "failed in env.step at its step 5: env 'tests.test_rllib:crashing_spread' raised in step 5" in \
        capfd.readouterr().err
    assert load_checkpoint(run / CHECKPOINT_NAME)["iteration"] == 3


# -- resume -------------------------------------------------------------------------------------------

def test_resume_after_ctrl_c_continues_from_the_checkpoint(tmp_path, ray_instance):
    cfg = config_from_dict(rllib_config(train={"total_env_steps": 160, "checkpoint_every": 100, "eval_episodes": 0},
                                        log={"histogram_every": 0, "credit_image_every": 0}))
    run = tmp_path / "run"
    trainer = new_run(cfg, run)
    # the 2nd iteration is running: Ctrl-C arrives now
    after_call_in_iteration(trainer, "_train_once", 1, lambda: trainer._request_stop(signal.SIGINT, None))
    try:
        with pytest.raises(TrainingInterrupted):
            trainer.train()
    finally:
        trainer.close()
    saved = load_checkpoint(run / CHECKPOINT_NAME)
    assert saved["iteration"] == 2 and saved["updates"] == 2 and len(read_metrics(run)) == 2

    resumed = resume_run(run)
    try:
        resumed._pull_state()  # the Learner now holds exactly the checkpoint
        assert all(torch.equal(resumed.learner.critic.state_dict()[k], v) for k, v in saved["critic"].items())
        assert resumed.learner.optimizer.state_dict()["state"][0]["exp_avg"].equal(
            saved["optimizer"]["state"][0]["exp_avg"])
        assert resumed.learner.updates == 2 and resumed.iteration == 2
        resumed.train()
    finally:
        resumed.close()
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3, 4]
    final = load_checkpoint(run / CHECKPOINT_NAME)
    assert final["iteration"] == 4 and final["updates"] == 4 and final["env_steps"] == 160


# -- slow: the CLI end to end -----------------------------------------------------------------------

@pytest.mark.slow
def test_cli_trains_resumes_and_evaluates_an_rllib_run(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(rllib_config(train={"total_env_steps": 80, "eval_episodes": 2})))
    run = tmp_path / "run"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "marl.cli", *args], capture_output=True, text=True, timeout=600)

    proc = cli("train", str(cfg), "--run-dir", str(run), "--set", "rllib.num_env_runners=1")
    assert proc.returncode == 0, proc.stderr
    assert "env steps/s" in proc.stdout and "eval greedy" in proc.stdout
    assert proc.stderr.count("rllib backend: runs are not reproducible from a seed") == 1   # said at the start
    proc = cli("train", "--resume", str(run), "--set", "train.total_env_steps=120")
    assert proc.returncode == 0, proc.stderr
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3]
    proc = cli("eval", str(run), "--episodes", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["episodes"] == 3
