"""Batched environments: simulators that step B envs at once as ``[B, N, ...]`` tensors.

``env.batched: true`` selects this path. A batched env follows the protocol in
``docs/batched_envs.md`` (the one ``marl.envs.mpe_twin.MPETwin`` implements): attributes ``agents``,
``num_envs``, ``n_agents``, ``obs_dim``, ``state_dim``, ``n_actions``, ``action_mask``,
``continuous``, ``device``; ``reset(seed)``, ``step(actions)`` (auto-resetting, with the true
successors kept), ``observe()``, ``get_state()``/``set_state()``.

``BatchedVectorEnv`` puts one such env behind the interface the trainer's collection loop uses
(``marl.envs.vector.SyncVectorEnv``'s), with everything on tensors on the env's device: the reward mode
(``marl.envs.rewards.reward_pipeline``), per-episode returns and the finished-episode records.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from marl.envs.errors import EnvError
from marl.envs.registry import resolve_factory
from marl.envs.rewards import reward_pipeline, team_reward
from marl.envs.step_schema import ENV_STEP

# env.id -> (the class of its batched twin, the task it is built with)
TWINS = {**{f"mpe2:{task}": ("marl.envs.mpe_twin:MPETwin", task)
            for task in ("simple_spread_v3", "simple_speaker_listener_v4", "simple_reference_v3")},
         **{f"lbf:{task}": ("marl.envs.lbf_twin:LBFTwin", task)
            for task in ("Foraging-8x8-2p-2f-coop-v3", "Foraging-2s-8x8-2p-2f-coop-v3", "Foraging-8x8-2p-3f-v3",
                         "Foraging-10x10-3p-3f-v3", "Foraging-2s-10x10-3p-3f-v3", "Foraging-15x15-3p-4f-v3",
                         "Foraging-15x15-4p-3f-v3", "Foraging-15x15-4p-4f-v3")},
         **{f"rware:{task}": ("marl.envs.rware_twin:RwareTwin", task)
            for task in ("rware-tiny-2ag-v2", "rware-tiny-4ag-v2", "rware-small-4ag-v2",
                         "rware-tiny-2ag-hard-v2", "rware-tiny-4ag-hard-v2", "rware-small-4ag-hard-v2")}}
# env.id prefixes whose factory is a batched simulator, taking the rest of the id first
BATCHED_PREFIXES = {"vmas": "marl.envs.vmas_adapter:vmas_env", "jaxmarl": "marl.envs.jaxmarl_adapter:jaxmarl_env"}


def make_batched_env(env_id: str, kwargs: dict, num_envs: int, device: str = "cpu", seed: int = 0):
    """The batched env for ``env_id``: the twin of a registered mpe2, LBF or RWARE task, a registered batched
    prefix (``vmas:<scenario>``, ``jaxmarl:<name>``), or a ``package.module:factory`` called with ``num_envs``,
    ``device``, ``seed`` and ``env.kwargs``.

    Raises:
        EnvError: for a registered PettingZoo env without a twin (the message lists those with one).
    """
    from marl.envs.registry import ENVS, PREFIXES

    if env_id in TWINS:
        twin, task = TWINS[env_id]
        try:
            return resolve_factory(twin)(task, num_envs, device=device, seed=seed, **kwargs)
        except ValueError as exc:
            raise EnvError(f"env {env_id!r} (batched twin): {exc}") from None
    prefix, _, rest = env_id.partition(":")
    if prefix in BATCHED_PREFIXES:
        factory = functools.partial(resolve_factory(BATCHED_PREFIXES[prefix]), rest)
    elif env_id in ENVS or prefix in PREFIXES:
        raise EnvError(f"env {env_id!r} has no batched twin; env.batched: true works with {', '.join(TWINS)}, "
                       f"with {', '.join(p + ':<name>' for p in BATCHED_PREFIXES)}, or with a "
                       f"'package.module:factory' returning a batched env (docs/batched_envs.md)")
    else:
        factory = resolve_factory(env_id)
    try:
        env = factory(num_envs=num_envs, device=device, seed=seed, **kwargs)
    except TypeError as exc:
        raise EnvError(f"env.id {env_id!r}: the batched factory rejected (num_envs, device, seed, env.kwargs "
                       f"{kwargs}): {exc}") from None
    missing = [name for name in ("reset", "step", "observe", "get_state", "set_state", "agents", "obs_dim",
                                 "state_dim", "n_actions", "action_mask") if not hasattr(env, name)]
    if getattr(env, "dynamic_mask", False) and not hasattr(env, "avail"):
        missing.append("avail")
    if missing:
        raise EnvError(f"env.id {env_id!r}: the factory returned {type(env).__name__}, which lacks {missing} of the "
                       f"batched-env protocol (docs/batched_envs.md)")
    return env


class BatchedVectorEnv:
    """A batched env behind the vector-env interface, on tensors (see the module docstring).

    ``reset``/``current``/``step`` return tensors on the env's device. Every agent is always
    present (``alive`` all True). ``avail`` is the env's static ``action_mask``, or, for an env with
    ``dynamic_mask``, its per-step legal actions. Finished episodes are reported like
    ``marl.envs.vector.EnvSlice``'s records, with ``won`` (bool) where the env reports one.
    """

    on_tensors = True
    turn_based = False
    obs_image = state_image = None   # flat float observations and state (no image encoder)
    state_is_obs = False
    obs_dtype = state_dtype = np.float32

    def __init__(self, env, reward):
        if reward.shaping:
            raise EnvError("env.shaping is not supported with env.batched: true (a potential reads the "
                           "PettingZoo env object)")
        if reward.mode == "difference" and getattr(env, "dynamic_mask", False):
            raise EnvError("env.reward 'difference' is not supported on a batched env with per-step legal actions "
                           "(its default action may be illegal)")
        self.env, self.reward = env, reward
        self.num_envs, self.agents, self.n_agents = env.num_envs, list(env.agents), env.n_agents
        self.obs_dim, self.state_dim, self.n_actions = env.obs_dim, env.state_dim, env.n_actions
        self.device = torch.device(env.device)
        self.action_mask = env.action_mask.cpu().numpy()
        self.continuous = bool(getattr(env, "continuous", False))
        self.dynamic_mask = bool(getattr(env, "dynamic_mask", False))
        B, N = self.num_envs, self.n_agents
        self._avail = env.action_mask.to(self.device).bool().expand(B, N, self.n_actions)
        self._alive = torch.ones(B, N, dtype=torch.bool, device=self.device)
        self._first = torch.ones(B, dtype=torch.bool, device=self.device)
        self._raw_return = torch.zeros(B, N, dtype=torch.float64, device=self.device)
        self._return = torch.zeros_like(self._raw_return)
        self._held = torch.zeros_like(self._raw_return)   # the episodic mode's withheld rewards
        self._length = torch.zeros(B, dtype=torch.long, device=self.device)
        self._current: dict[str, torch.Tensor] = {}

    def _set_current(self, obs: torch.Tensor, state: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        avail = self.env.avail() if self.dynamic_mask else self._avail
        self._current = {"obs": obs, "state": state, "avail": avail, "alive": self._alive, "first": first}
        return self._current

    def reset(self, seed: int) -> dict[str, torch.Tensor]:
        """Fresh episodes in every env, the env's generator seeded with ``seed``."""
        obs, state = self.env.reset(seed=int(seed))
        self._raw_return.zero_()
        self._return.zero_()
        self._held.zero_()
        self._length.zero_()
        return self._set_current(obs, state, torch.ones_like(self._first))

    def current(self) -> dict[str, torch.Tensor]:
        """What the agents act on next: ``obs [B, N, O]``, ``state [B, S]``, ``avail [B, N, A]``,
        ``alive [B, N]``, ``first [B]`` (obs starts an episode)."""
        return self._current

    def step(self, actions: torch.Tensor, autoreset: bool = True) -> "TensorStep":
        """Step with ``actions`` (``[B, N]`` long, or ``[B, N, A]`` float for continuous actions).
        The env always auto-resets; ``autoreset=False`` is not supported here."""
        if not autoreset:
            raise ValueError("a batched env always resets the envs whose episode ended")
        counterfactual = self._counterfactual_team_rewards(actions) if self.reward.mode == "difference" else None
        out = self.env.step(actions)
        raw = out["reward"]
        reward = reward_pipeline(raw, self.reward, counterfactual=counterfactual,
                                 ends=out["terminated"] | out["truncated"] if self.reward.episodic else None,
                                 held=self._held).float()
        self._raw_return += raw
        self._return += reward
        self._length += 1
        done = out["done"]
        episodes = []
        if bool(done.any()):
            ended = done.nonzero().squeeze(1)
            raw_returns, returns = self._raw_return[ended].cpu(), self._return[ended].cpu()
            won = out["won"][ended].tolist() if "won" in out else None
            for k, b in enumerate(ended.tolist()):
                episodes.append({"raw_return": raw_returns[k].numpy(), "return": returns[k].numpy(),
                                 "length": int(self._length[b]), "env": b})
                if won is not None:
                    episodes[-1]["won"] = bool(won[k])
            self._raw_return[ended] = 0.0
            self._return[ended] = 0.0
            self._length[ended] = 0
        current = self._set_current(out["obs"], out["state"], done)
        return TensorStep(obs=out["obs"], state=out["state"], avail=current["avail"], alive=self._alive,
                          next_obs=out["next_obs"], next_state=out["next_state"],
                          next_avail=out["next_avail"] if self.dynamic_mask else self._avail,
                          acted=self._alive, raw_reward=raw, reward=reward, terminated=out["terminated"],
                          truncated=out["truncated"], done=done, first=done, episodes=episodes)

    def _counterfactual_team_rewards(self, actions: torch.Tensor) -> torch.Tensor:
        """``G(s, (u_-i, c_i))`` ``[B, N]``: the env's state is copied (its own tensors) and stepped
        once per agent with that agent's action replaced by ``reward.default_action`` (or, for an
        agent that does not have that action, its first legal one, as on the PettingZoo path), then
        restored."""
        if self.continuous:
            raise EnvError("env.reward 'difference' needs discrete actions (a default action c_i)")
        default = self.reward.default_action
        legal = self._avail[0]                                                         # [N, A], static
        defaults = torch.where(legal[:, default], default, legal.to(torch.int8).argmax(-1))
        state = self.env.get_state()
        columns = []
        for i in range(self.n_agents):
            self.env.set_state(state)
            changed = actions.clone()
            changed[:, i] = defaults[i]
            raw = self.env.step(changed)["reward"]
            columns.append(team_reward(raw, self.reward.team)[:, 0])
        self.env.set_state(state)
        return torch.stack(columns, -1)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly, as tensors: the env's state and the episode bookkeeping."""
        return {**{f"env/{k}": v for k, v in self.env.get_state().items()},
                "raw_return": self._raw_return.clone(), "return": self._return.clone(), "length": self._length.clone(),
                "held": self._held.clone(),
                "first": self._current["first"].clone()}

    def load_snapshot(self, state: dict[str, torch.Tensor]) -> None:
        if not isinstance(state, dict):
            raise EnvError("the checkpoint's env state is from a PettingZoo run, not a batched one")
        self.env.set_state({k[len("env/"):]: v.to(self.device) if k != "env/rng" else v
                            for k, v in state.items() if k.startswith("env/")})
        for name in ("raw_return", "return", "length", "held"):
            getattr(self, f"_{name}").copy_(state[name])
        self._set_current(*self.env.observe(), state["first"].to(self.device))

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


class TensorStep:
    """One batched step, the fields of ``marl.envs.vector.StepBatch`` as tensors: the ``ENV_STEP``
    fields of ``marl.envs.step_schema``, plus the finished ``episodes``."""

    __slots__ = ENV_STEP + ("episodes",)

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)
