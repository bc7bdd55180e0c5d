"""The JaxMARL adapter (``env.id: jaxmarl:<name>``, ``marl.envs.jaxmarl_adapter``): real SMAX 3m
stepped against JaxMARL's own ``step_env``, legal-action masks, the DLPack exchange, exact
snapshots, and training through the default config with only the env switched.

Every test but the first needs the optional extra (``pip install -e ".[jaxmarl]"``) and skips
without it. All envs here have B = 32 (the default config's ``num_envs`` and ``eval_episodes``),
so jax compiles each function once for the whole file.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from marl.envs import EnvError, RewardSpec
from marl.envs.batched import BatchedVectorEnv, make_batched_env

from tests.conftest import default_config, resumed_equals_uninterrupted, train_run

B = 32
SMAX = "jaxmarl:smax:3m"
STOP, N_MOVES = 4, 5   # SMAX's discrete actions: 4 moves, stop, then one attack per enemy


@pytest.fixture(scope="module")
def jax():
    pytest.importorskip("jaxmarl", reason='the jaxmarl extra is not installed (pip install -e ".[jaxmarl]")')
    import jax

    return jax


@pytest.fixture
def smax(jax):
    return make_batched_env(SMAX, {}, B, "cpu", 0)


def _random_legal(avail: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.multinomial(avail.reshape(-1, avail.shape[-1]).float(), 1, generator=generator).reshape(avail.shape[:2])


def _focus_fire(avail: torch.Tensor) -> torch.Tensor:
    """Shoot the first enemy in range, else move (action 1), else stop: wins 3m about half the time."""
    attack = avail[..., N_MOVES:]
    actions = torch.where(attack.any(-1), attack.float().argmax(-1) + N_MOVES, torch.ones_like(attack[..., 0], dtype=torch.long))
    return torch.where(avail.gather(-1, actions[..., None]).squeeze(-1), actions, torch.full_like(actions, STOP))


# -- without the extra ----------------------------------------------------------------------------
def test_missing_jaxmarl_is_a_one_line_env_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jaxmarl", None)   # import jaxmarl -> ImportError, installed or not
    with pytest.raises(EnvError, match=r'install the extra: pip install -e "\.\[jaxmarl\]"') as info:
        make_batched_env(SMAX, {}, 2)
    assert "\n" not in str(info.value)


def test_a_jaxmarl_id_without_env_batched_says_to_set_it():
    from marl.envs import make_parallel_env

    with pytest.raises(EnvError, match=r"is a batched simulator with no PettingZoo env: set env.batched: true"):
        make_parallel_env(SMAX)


# -- SMAX -----------------------------------------------------------------------------------------
def test_smax_3m_protocol_shapes(smax):
    assert smax.agents == ["ally_0", "ally_1", "ally_2"] and smax.dynamic_mask and not smax.continuous
    assert (smax.obs_dim, smax.state_dim, smax.n_actions) == (75, 72, 8) and smax.action_mask.all()
    obs, state = smax.reset(3)
    assert obs.shape == (B, 3, 75) and state.shape == (B, 72) and obs.dtype == state.dtype == torch.float32
    avail = smax.avail()
    assert avail.shape == (B, 3, 8) and avail.dtype == torch.bool
    assert avail[..., :N_MOVES].all() and not avail[..., N_MOVES:].any()   # all alive, enemies out of range
    out = smax.step(torch.full((B, 3), STOP))
    for key, shape, dtype in [("obs", (B, 3, 75), torch.float32), ("next_state", (B, 72), torch.float32),
                              ("reward", (B, 3), torch.float32), ("terminated", (B, 3), torch.bool),
                              ("truncated", (B, 3), torch.bool), ("done", (B,), torch.bool),
                              ("won", (B,), torch.bool), ("next_avail", (B, 3, 8), torch.bool)]:
        assert out[key].shape == shape and out[key].dtype == dtype, key


def test_smax_steps_as_jaxmarl_steps_it(jax, smax):
    """Each step's true successor, reward, end and legal actions equal JaxMARL's own ``step_env`` and
    ``get_avail_actions`` from the same states with the same keys (random legal actions, 40 steps,
    through several auto-resets)."""
    import jax.numpy as jnp
    import numpy as np

    env = smax.jax_env
    raw_step = jax.jit(jax.vmap(env.step_env))
    raw_avail = jax.jit(jax.vmap(env.get_avail_actions))
    generator = torch.Generator().manual_seed(1)
    ends = 0
    for _ in range(40):
        states, key = smax._states, smax._key
        actions = _random_legal(smax.avail(), generator)
        out = smax.step(actions)
        _, sub = jax.random.split(key)
        step_keys = jax.vmap(lambda k: jax.random.split(k)[0])(jax.random.split(sub, B))
        act = jnp.asarray(actions.numpy().astype(np.int32))
        obs, nxt, rew, dones, _ = raw_step(step_keys, states, {a: act[:, i] for i, a in enumerate(smax.agents)})
        legal = raw_avail(nxt)
        for i, a in enumerate(smax.agents):
            assert torch.equal(out["next_obs"][:, i], torch.from_numpy(np.asarray(obs[a])))
            assert torch.equal(out["reward"][:, i], torch.from_numpy(np.asarray(rew[a])))
            assert torch.equal(out["next_avail"][:, i], torch.from_numpy(np.asarray(legal[a])).bool())
        assert torch.equal(out["next_state"], torch.from_numpy(np.asarray(obs["world_state"])))
        assert torch.equal(out["done"], torch.from_numpy(np.asarray(dones["__all__"])))
        alive = torch.from_numpy(np.asarray(nxt.state.unit_alive[:, :3]))
        dead = out["next_avail"][~alive]   # a dead ally may only stop
        assert torch.equal(dead, torch.nn.functional.one_hot(torch.tensor(STOP), 8).bool().expand_as(dead))
        ends += int(out["done"].sum())
    assert ends >= B   # every env went through at least one auto-reset


def test_smax_endings_and_wins(smax):
    """Ends are terminations (a team dead) or truncations at 100 steps; a win ends the episode with
    the +1 bonus in the reward; ``won`` is False where nothing ended."""
    length = torch.zeros(B, dtype=torch.long)
    wins = losses = 0
    for _ in range(150):
        out = smax.step(_focus_fire(smax.avail()))
        length += 1
        done = out["done"]
        term, trunc = out["terminated"][:, 0], out["truncated"][:, 0]
        assert torch.equal(done, term | trunc) and not (term & trunc).any()
        assert (length[trunc] == 100).all() and (length[term] <= 100).all()
        assert not out["won"][~done].any() and not out["won"][trunc].any()
        assert (out["reward"][out["won"]] >= 1.0).all()
        wins += int(out["won"].sum())
        losses += int((term & ~out["won"]).sum())
        length[done] = 0
    assert wins > 10 and losses > 10


def test_vector_env_reports_wins_and_per_step_masks(smax):
    venv = BatchedVectorEnv(smax, RewardSpec())
    assert venv.dynamic_mask
    current = venv.reset(0)
    episodes = []
    for _ in range(60):
        assert torch.equal(current["avail"], smax.avail())
        step = venv.step(_focus_fire(current["avail"]))
        episodes += step.episodes
        current = venv.current()
    assert episodes and all(isinstance(ep["won"], bool) for ep in episodes)
    assert {ep["won"] for ep in episodes} == {True, False}


def test_importing_jaxmarl_prints_nothing_to_stdout(jax):
    """jaxmarl prints a line when imported; in a fresh process, the adapter's import sends it to stderr
    (``marl eval --json`` owns stdout)."""
    code = "from marl.envs.jaxmarl_adapter import _import_jax; _import_jax()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout == "" and "Submoduled" in done.stderr


# -- DLPack ---------------------------------------------------------------------------------------
def test_arrays_cross_through_dlpack_without_a_copy_on_cpu(jax):
    import jax.numpy as jnp
    from marl.envs.jaxmarl_adapter import _to_torch

    x = jnp.arange(12.0).reshape(3, 4)
    t = _to_torch(x, torch.device("cpu"))
    assert t.data_ptr() == x.unsafe_buffer_pointer() and torch.equal(t, torch.arange(12.0).reshape(3, 4))
    actions = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    back = jax.dlpack.from_dlpack(actions)
    assert back.unsafe_buffer_pointer() == actions.data_ptr() and back.tolist() == actions.tolist()


# -- snapshots ------------------------------------------------------------------------------------
def test_set_state_continues_exactly_in_a_fresh_env(jax, smax):
    generator = torch.Generator().manual_seed(2)
    for _ in range(7):
        smax.step(_random_legal(smax.avail(), generator))
    snapshot = smax.get_state()
    assert all(isinstance(v, torch.Tensor) for v in snapshot.values())
    plan = []
    first = []
    for _ in range(30):   # through auto-resets, which draw from the key
        actions = _random_legal(smax.avail(), generator)
        plan.append(actions)
        first.append({k: v.clone() for k, v in smax.step(actions).items()})
    other = make_batched_env(SMAX, {}, B, "cpu", seed=99)
    other.set_state(snapshot)
    assert torch.equal(other.avail(), snapshot["avail"]) and torch.equal(other.observe()[0], snapshot["obs"])
    for actions, expected in zip(plan, first):
        out = other.step(actions)
        for key, value in expected.items():
            assert torch.equal(out[key], value), key
    with pytest.raises(ValueError, match="expected keys"):
        other.set_state({k: v for k, v in snapshot.items() if k != "key"})
    bad = dict(snapshot, leaf_000=snapshot["leaf_000"][:2])
    with pytest.raises(ValueError, match="leaf 0 must be"):
        other.set_state(bad)


# -- other families -------------------------------------------------------------------------------
def test_hanabi_masks_the_waiting_player_to_its_noop(jax):
    env = make_batched_env("jaxmarl:hanabi", {}, 4, "cpu", 0)
    assert env.agents == ["agent_0", "agent_1"] and env.n_actions == 21
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        avail = env.avail()
        waiting = avail[..., -1]   # the no-op is legal only for the player who is not to move
        assert torch.equal(waiting.sum(-1), torch.ones(4, dtype=torch.long))
        assert not avail[waiting][:, :-1].any() and avail[~waiting][:, :-1].any(-1).all()
        env.step(_random_legal(avail, generator))


def test_overcooked_and_unknown_names(jax):
    env = make_batched_env("jaxmarl:overcooked", {"layout": "cramped_room"}, 2, "cpu", 0)
    assert (env.obs_dim, env.n_actions) == (4 * 5 * 26, 6) and env.avail().all()
    with pytest.raises(EnvError, match="unknown Overcooked layout 'nowhere'"):
        make_batched_env("jaxmarl:overcooked", {"layout": "nowhere"}, 2)
    with pytest.raises(EnvError, match="unknown SMAX map '4m'"):
        make_batched_env("jaxmarl:smax:4m", {}, 2)
    with pytest.raises(EnvError, match=r"unknown env 'mpe'; the adapter runs smax:<map>, hanabi, overcooked"):
        make_batched_env("jaxmarl:mpe", {}, 2)
    with pytest.raises(ValueError, match=r"actions out of range; each agent takes 0 <= a < 6"):
        env.step(torch.full((2, 2), 6))
    with pytest.raises(ValueError, match=r"integer tensor of shape \(2, 2\)"):
        env.step(torch.zeros(2, 2))
    with pytest.raises(EnvError, match="env.kwargs .* rejected"):
        make_batched_env(SMAX, {"no_such_kwarg": 1}, 2)


# -- training -------------------------------------------------------------------------------------
def _smax_default(steps: int, **train) -> dict:
    """configs/spread_mappo.yaml with only the env switched to batched SMAX 3m."""
    return default_config(SMAX, steps, env={"batched": True}, train=train)


def test_one_iteration_of_the_default_config_on_smax_logs_the_win_rate(jax, tmp_path, capsys):
    from marl.cli import main

    records, evaluation = train_run(_smax_default(B * 25), tmp_path / "run")
    assert len(records) == 1 and records[0]["env_steps"] == B * 25
    assert 0.0 <= records[0]["win_rate"] <= 1.0 and records[0]["episodes"] > 0
    assert evaluation["simulator"] == "batched" and 0.0 <= evaluation["win_rate"] <= 1.0
    assert 0.0 <= evaluation["sampled"]["win_rate"] <= 1.0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json", "--episodes", str(B)]) == 0
    result = json.loads(capsys.readouterr().out)   # stdout is the JSON alone
    assert 0.0 <= result["win_rate"] <= 1.0 and result["episodes"] == B


def test_resume_of_a_smax_run_equals_an_uninterrupted_run(jax, tmp_path):
    cfg = _smax_default(B * 25 * 3, checkpoint_every=1, eval_episodes=0)
    cfg["algo"].update(epochs=2)
    assert resumed_equals_uninterrupted(tmp_path, cfg, B * 25, ("team_return", "episodes", "win_rate",
                                                               "losses/policy", "losses/value"))
