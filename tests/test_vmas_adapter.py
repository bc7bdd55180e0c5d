"""envs.vmas_adapter: VMAS behind the batched-env protocol. Needs the optional ``vmas`` extra
(``pip install -e ".[vmas]"``); without it only the missing-package test runs."""
import io
import sys

import pytest
import torch

from marl.envs.errors import EnvError
from marl.envs.vmas_adapter import VMASBatchedEnv, vmas_env

B = 3
STEP_KEYS = {"obs", "state", "next_obs", "next_state", "reward", "terminated", "truncated", "done"}


@pytest.fixture(scope="module")
def vmas():
    return pytest.importorskip("vmas")


@pytest.fixture(scope="module")
def toy(vmas):
    """A scenario class with unsorted agent names, a dict observation of another size than the other
    agent's, per-agent rewards and a termination the test sets per env (``scenario.terminate``)."""
    from vmas.simulator.core import Agent, World
    from vmas.simulator.scenario import BaseScenario

    class Toy(BaseScenario):
        def make_world(self, batch_dim, device, **kwargs):
            self.bad_obs = kwargs.pop("bad_obs", False)
            world = World(batch_dim, device)
            for name in ("zed", "alpha"):
                world.add_agent(Agent(name=name, collide=False))
            self.terminate = torch.zeros(batch_dim, dtype=torch.bool, device=device)
            return world

        def reset_world_at(self, env_index=None):
            for agent in self.world.agents:
                rows = self.world.batch_dim if env_index is None else 1
                pos = torch.rand(rows, 2, device=self.world.device) * 2 - 1
                agent.set_pos(pos if env_index is None else pos[0], batch_index=env_index)
            if env_index is None:
                self.terminate[:] = False
            else:
                self.terminate[env_index] = False

        def observation(self, agent):
            if self.bad_obs:
                return [agent.state.pos]
            if agent.name == "zed":
                return {"vel": agent.state.vel, "pos": agent.state.pos}
            return agent.state.pos

        def reward(self, agent):
            return agent.state.pos[:, 0] + (1.0 if agent.name == "zed" else 0.0)

        def done(self):
            return self.terminate.clone()

    return Toy


def _discrete(env, generator):
    return (torch.rand(env.num_envs, env.n_agents, generator=generator) * env._action_sizes).long()


def _continuous(env, generator, scale=1.5):
    return (torch.rand(env.num_envs, env.n_agents, env.n_actions, generator=generator) * 2 - 1) * scale


def _actions(env, generator):
    return _continuous(env, generator) if env.continuous else _discrete(env, generator)


def _raw(env):
    """VMAS's own observations, by agent name."""
    raw = env.simulator.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                          get_dones=False, dict_agent_names=True)[0]
    return raw


# -- without vmas ---------------------------------------------------------------------------------
def test_missing_vmas_is_an_env_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vmas", None)   # import vmas -> ImportError, installed or not
    for build in (lambda: VMASBatchedEnv("navigation", 2), lambda: vmas_env("navigation", 2)):
        with pytest.raises(EnvError, match=r'pip install -e "\.\[vmas\]"'):
            build()


# -- the protocol ---------------------------------------------------------------------------------
@pytest.mark.parametrize("continuous", [False, True])
def test_protocol_shapes_and_dtypes(vmas, continuous):
    env = vmas_env("vmas:navigation", B, seed=0, continuous_actions=continuous, max_steps=10)
    assert env.agents == sorted(env.agents) == ["agent_0", "agent_1", "agent_2", "agent_3"]
    assert (env.num_envs, env.n_agents, env.obs_dim, env.state_dim) == (B, 4, 18, 72)
    assert env.continuous is continuous and env.device == torch.device("cpu")
    assert env.n_actions == (2 if continuous else 9)
    assert env.action_mask.dtype == torch.bool and env.action_mask.shape == (4, env.n_actions)
    assert env.action_mask.all()
    obs, state = env.reset(seed=1)
    assert obs.shape == (B, 4, 18) and state.shape == (B, 72)
    assert obs.dtype == state.dtype == torch.float32
    out = env.step(_actions(env, torch.Generator().manual_seed(0)))
    assert set(out) == STEP_KEYS
    for key in ("obs", "next_obs"):
        assert out[key].shape == (B, 4, 18) and out[key].dtype == torch.float32
    for key in ("state", "next_state"):
        assert out[key].shape == (B, 72) and out[key].dtype == torch.float32
    assert out["reward"].shape == (B, 4) and out["reward"].dtype == torch.float32
    for key in ("terminated", "truncated"):
        assert out[key].shape == (B, 4) and out[key].dtype == torch.bool
    assert out["done"].shape == (B,) and out["done"].dtype == torch.bool
    observed = env.observe()
    assert torch.equal(observed[0], out["obs"]) and torch.equal(observed[1], out["state"])


def test_padding_state_and_sorted_order(toy):
    env = VMASBatchedEnv(toy(), B, seed=0, max_steps=5)
    assert env.agents == ["alpha", "zed"] and env.obs_sizes == [2, 4]   # VMAS order is zed, alpha
    assert (env.obs_dim, env.state_dim) == (4, 6)
    obs, state = env.observe()
    raw = _raw(env)
    zed = torch.cat([raw["zed"]["pos"], raw["zed"]["vel"]], dim=1)   # dict: sorted keys
    assert torch.equal(obs[:, 0, :2], raw["alpha"]) and torch.equal(obs[:, 0, 2:], torch.zeros(B, 2))
    assert torch.equal(obs[:, 1], zed)
    assert torch.equal(state, torch.cat([raw["alpha"], zed], dim=1))
    out = env.step(torch.zeros(B, 2, dtype=torch.long))
    pos = {a.name: a.state.pos[:, 0] for a in env.simulator.agents}
    assert torch.equal(out["reward"], torch.stack([pos["alpha"], pos["zed"] + 1.0], dim=1))


def test_heterogeneous_real_scenario_is_padded(vmas):
    env = vmas_env("simple_speaker_listener", B, seed=0)
    assert env.agents == ["listener_0", "speaker_0"] and env.obs_sizes == [11, 3]
    obs, state = env.reset(seed=2)
    raw = _raw(env)
    assert torch.equal(obs[:, 1, :3], raw["speaker_0"]) and not obs[:, 1, 3:].any()
    assert torch.equal(state, torch.cat([raw["listener_0"], raw["speaker_0"]], dim=1))
    assert env.action_sizes == [9, 27] and env.action_mask.sum(dim=1).tolist() == [9, 27]


def test_many_agents_keep_name_order(vmas):
    env = vmas_env("navigation", 2, seed=0, n_agents=11, collisions=False, shared_rew=False)
    assert env.agents == sorted(f"agent_{i}" for i in range(11))
    assert env.agents[2] == "agent_10"
    out = env.step(_discrete(env, torch.Generator().manual_seed(1)))
    raw = _raw(env)
    by_name = {a.name: a for a in env.simulator.agents}
    for k, name in enumerate(env.agents):
        assert torch.equal(out["next_obs"][:, k], raw[name])
        expected = by_name[name].pos_rew + env.simulator.scenario.final_rew   # its own reward
        assert torch.equal(out["reward"][:, k], expected)


@pytest.mark.parametrize("continuous", [False, True])
def test_steps_match_raw_vmas(vmas, continuous):
    """The adapter passes actions through to VMAS unchanged (continuous: after clipping)."""
    kwargs = {"continuous_actions": continuous, "max_steps": 50}
    env = vmas_env("simple_speaker_listener", B, seed=4, **kwargs)
    raw = vmas.make_env("simple_speaker_listener", num_envs=B, seed=4, **kwargs)
    generator = torch.Generator().manual_seed(3)
    sizes = env.action_sizes
    for _ in range(6):
        actions = _actions(env, generator)
        out = env.step(actions)
        if continuous:
            clipped = actions.clamp(env.action_low, env.action_high)
            raw_actions = {name: clipped[:, k, :sizes[k]] for k, name in enumerate(env.agents)}
        else:
            raw_actions = {name: actions[:, k] for k, name in enumerate(env.agents)}
        raw_obs, raw_rew, _, _ = raw.step([raw_actions[a.name] for a in raw.agents])
        names = [a.name for a in raw.agents]
        for k, name in enumerate(env.agents):
            i = names.index(name)
            assert torch.equal(out["next_obs"][:, k, :env.obs_sizes[k]], raw_obs[i])
            assert torch.equal(out["reward"][:, k], raw_rew[i])


def test_continuous_clipping_and_padding_dims(vmas):
    env = vmas_env("simple_speaker_listener", B, seed=0, continuous_actions=True)
    assert env.action_sizes == [2, 5] and env.n_actions == 5
    assert env.action_low.tolist() == [[-1, -1, 0, 0, 0], [-1, -1, 0, 0, 0]]
    assert env.action_high.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    wild = _continuous(env, torch.Generator().manual_seed(0), scale=5.0)
    tame = wild.clamp(env.action_low, env.action_high)
    tame[:, 0, 2:] = 123.0   # the listener's padding dims are ignored
    start = env.get_state()
    a = env.step(wild)
    env.set_state(start)
    b = env.step(tame)
    for key in STEP_KEYS:
        assert torch.equal(a[key], b[key]), key


def test_invalid_actions_are_rejected(vmas):
    discrete = vmas_env("navigation", B, seed=0)
    for bad in (torch.zeros(B, 4), torch.zeros(B, 3, dtype=torch.long), torch.full((B, 4), 9)):
        with pytest.raises(ValueError):
            discrete.step(bad)
    continuous = vmas_env("navigation", B, seed=0, continuous_actions=True)
    nan = torch.full((B, 4, 2), float("nan"))
    for bad in (torch.zeros(B, 4, dtype=torch.long), torch.zeros(B, 4, 3), nan):
        with pytest.raises(ValueError):
            continuous.step(bad)


# -- episode ends ---------------------------------------------------------------------------------
def test_truncation_at_max_steps(vmas):
    env = vmas_env("navigation", B, seed=0, max_steps=4)
    zeros = torch.zeros(B, 4, dtype=torch.long)
    for episode in range(2):
        for t in range(1, 5):
            out = env.step(zeros)
            assert out["done"].tolist() == [t == 4] * B, (episode, t)
            assert out["truncated"].all().item() == (t == 4) and not out["terminated"].any()
    assert env.simulator.steps.tolist() == [0] * B


def test_auto_reset_keeps_true_successor(vmas):
    env = vmas_env("navigation", B, seed=0, max_steps=3)
    mirror = vmas.make_env("navigation", num_envs=B, seed=0, continuous_actions=False, max_steps=100)
    actions = _discrete(env, torch.Generator().manual_seed(5))
    for _ in range(3):
        out = env.step(actions)
        raw_obs = mirror.step([actions[:, k] for k in range(4)])[0]   # names sort as VMAS orders them
    assert out["done"].all()
    assert torch.equal(out["next_obs"], torch.stack(raw_obs, dim=1))   # the episode's last observation
    assert not torch.equal(out["obs"], out["next_obs"])                 # the new episode's first
    assert torch.equal(out["next_state"], out["next_obs"].reshape(B, -1))
    observed = env.observe()
    assert torch.equal(observed[0], out["obs"]) and torch.equal(observed[1], out["state"])


def test_termination_resets_only_that_env(toy):
    env = VMASBatchedEnv(toy(), B, seed=0, max_steps=3)
    scenario = env.simulator.scenario
    zeros = torch.zeros(B, 2, dtype=torch.long)
    env.step(zeros)
    scenario.terminate[1] = True
    out = env.step(zeros)
    assert out["terminated"].tolist() == [[False] * 2, [True] * 2, [False] * 2]
    assert not out["truncated"].any() and out["done"].tolist() == [False, True, False]
    assert torch.equal(out["obs"][[0, 2]], out["next_obs"][[0, 2]])
    assert not torch.equal(out["obs"][1], out["next_obs"][1])
    assert env.simulator.steps.tolist() == [2, 0, 2]
    scenario.terminate[0] = True   # terminated at the time limit: a termination, not a truncation
    out = env.step(zeros)
    assert out["terminated"][:, 0].tolist() == [True, False, False]
    assert out["truncated"][:, 0].tolist() == [False, False, True]
    assert out["done"].tolist() == [True, False, True]


# -- seeds and snapshots --------------------------------------------------------------------------
def test_seeded_resets_are_reproducible(vmas):
    env = vmas_env("navigation", B, seed=0, max_steps=2)
    first = env.reset(seed=5)[0]
    assert torch.equal(env.reset(seed=5)[0], first)
    assert not torch.equal(env.reset(seed=6)[0], first)

    def run(seed):
        run_env = vmas_env("navigation", B, seed=seed, max_steps=2)
        outs = [run_env.observe()[0]]
        for _ in range(5):   # crosses two auto-resets
            outs.append(run_env.step(torch.zeros(B, 4, dtype=torch.long))["obs"])
        return torch.stack(outs)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_each_env_has_its_own_random_stream(vmas):
    """Two envs stepped in turn give the episodes each gives alone, and the caller's random state
    (global torch / numpy / random, and VMAS's own) is left alone."""
    import random

    import numpy as np

    zeros = torch.zeros(B, 4, dtype=torch.long)

    def episodes(env, steps=5):   # max_steps 2: crosses two auto-resets
        return [env.observe()[0]] + [env.step(zeros)["obs"] for _ in range(steps)]

    alone = episodes(vmas_env("navigation", B, seed=7, max_steps=2))
    global_state = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    shared = [state for state in vmas.simulator.environment.Environment.vmas_random_state]
    a = vmas_env("navigation", B, seed=7, max_steps=2)
    b = vmas_env("navigation", B, seed=8, max_steps=2)
    together = [a.observe()[0]]
    for _ in range(5):
        b.reset(seed=3)
        b.step(zeros)
        together.append(a.step(zeros)["obs"])
    assert all(torch.equal(x, y) for x, y in zip(alone, together))
    assert torch.equal(torch.random.get_rng_state(), global_state[0])
    assert np.array_equal(np.random.get_state()[1], global_state[1]) and random.getstate() == global_state[2]
    assert torch.equal(vmas.simulator.environment.Environment.vmas_random_state[0], shared[0])


@pytest.mark.parametrize("scenario, kwargs", [
    ("navigation", {}),                                     # lidar, reward shaping state
    ("balance", {}),                                        # joints, Python float parameters
    ("simple_speaker_listener", {"continuous_actions": True}),   # a goal held as an entity pointer
    ("sampling", {}),                                       # torch.distributions objects
    ("joint_passage", {}),                                  # dicts keyed by entities, made lazily
])
def test_get_set_state_continues_exactly(vmas, scenario, kwargs):
    env = vmas_env(scenario, B, seed=0, max_steps=4, **kwargs)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        env.step(_actions(env, generator))
    snapshot = env.get_state()
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    before = env.observe()
    actions = [_actions(env, generator) for _ in range(5)]   # crosses an auto-reset (random draws)
    expected = [env.step(a) for a in actions]

    for target, state in ((env, snapshot), (vmas_env(scenario, B, seed=99, max_steps=4, **kwargs), loaded)):
        target.set_state(state)
        observed = target.observe()
        assert torch.equal(observed[0], before[0]) and torch.equal(observed[1], before[1])
        for a, want in zip(actions, expected):
            got = target.step(a)
            for key in STEP_KEYS:
                assert torch.equal(got[key], want[key]), key


def test_set_state_restores_scenario_tensors(toy):
    env = VMASBatchedEnv(toy(), B, seed=0, max_steps=10)
    snapshot = env.get_state()
    env.simulator.scenario.terminate[:] = True
    env.set_state(snapshot)
    assert not env.simulator.scenario.terminate.any()


def test_set_state_restores_entity_references(vmas):
    """speaker_listener's goal is a pointer to one of the landmarks (drawn on a full reset)."""
    env = vmas_env("simple_speaker_listener", B, seed=0)
    speaker = next(a for a in env.simulator.agents if a.name == "speaker_0")
    goal = speaker.goal_b
    snapshot = env.get_state()
    assert any(key.startswith("ref/") and key.endswith("goal_b") for key in snapshot)
    speaker.goal_b = next(lm for lm in env.simulator.world.landmarks if lm is not goal)
    env.set_state(snapshot)
    assert speaker.goal_b is goal


def test_set_state_rejects_another_env(vmas):
    snapshot = vmas_env("navigation", B, seed=0).get_state()
    with pytest.raises(ValueError, match="num_envs"):
        vmas_env("navigation", B + 1, seed=0).set_state(snapshot)
    with pytest.raises(ValueError):
        vmas_env("balance", B, seed=0, n_agents=4).set_state(snapshot)


# -- construction errors --------------------------------------------------------------------------
def test_construction_errors(vmas, toy):
    with pytest.raises(EnvError, match="unknown scenario 'navigaton'.*navigation"):
        vmas_env("navigaton", B)
    with pytest.raises(EnvError, match="not used by the scenario"):
        vmas_env("navigation", B, n_agentz=3)
    with pytest.raises(EnvError, match="set by the adapter"):
        vmas_env("navigation", B, dict_spaces=True)
    with pytest.raises(EnvError, match="max_steps"):
        vmas_env("navigation", B, max_steps=0)
    with pytest.raises(EnvError, match="make_env raised"):
        VMASBatchedEnv(toy(), B, bad_obs=True)   # VMAS rejects a list observation
