"""The off-policy value-decomposition learner, ``algo.learner: q``: IQL, VDN, QMIX and QPLEX with
episode replay (docs/value_decomposition.md).

Agents share a utility network ``Q_i(τ_i, ·)`` (``QActor``: the project's ``Actor`` read as
utilities, with a one-hot agent id under ``model.share_actor``; a GRU with ``model.recurrent``,
unrolled over each replayed slot from a zero hidden state, as DRQN in PyMARL). The actor acts
ε-greedily over each step's legal actions, ε annealed linearly over env steps.

Each ``update(batch)`` takes one rollout ``[T, B, N, ...]`` (``marl.rollout.Rollout``):
``EpisodeStitcher`` appends each env's steps to its open episode and moves finished episodes (or
full ``algo.replay_chunk``-step chunks) into an ``EpisodeReplay`` on the learner's device. Once the
replay holds ``algo.batch_size`` slots, ``algo.updates_per_rollout`` gradient steps follow, each on
``algo.batch_size`` uniformly sampled slots:

- utilities ``q [T+1, B, N, A]`` of every state of the slots, the target network's likewise;
- the bootstrap value of each agent at s_{t+1}: double Q (online argmax, target value) over the
  legal actions of the agents there (an agent cut by a truncation still bootstraps);
- ``mixer: none`` (IQL): per-agent TD(λ) or n-step targets of per-agent rewards and flags;
  a mixer: ``Q_tot = mixer(Q_i(u_i), s)`` against the target mixer's ``Q_tot'(s')``, on the team
  reward (the mean over the agents that acted), all via ``algorithms.targets.q_targets``; with
  ``algo.standardize_rewards`` the rewards are first standardised by running statistics;
- the squared TD error over real steps (and, for IQL, the agents that acted); Adam, gradient
  clipping, then the target networks: copied every ``algo.target_every`` updates, or Polyak
  averaged with ``algo.target_tau``.

With ``algo.her`` (hindsight relabelling, ``algorithms/her.py``), a fraction ``algo.her_ratio`` of
the sampled slots has its desired goals replaced by goals achieved in the same episode, before the
utilities are computed: the flat observations' ``desired_goal`` slots (``envs.goals.goal_slices``)
are rewritten, the rewards recomputed with the env's ``compute_reward`` (never stepping it; its
``info`` is empty dicts, as the replay keeps no infos) and put through ``env.reward``, and the
mixer's state is the concatenation of the (relabelled) observations ``[N·O]``, since an env's own
``state()`` may hold the old goals. It needs a goal-conditioned env with no departures.

The replay, the open episodes and the counters are in ``state_dict``, so a resumed run repeats an
uninterrupted one exactly.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.nn import functional as F

from marl.algorithms.her import MODES as HER_MODES
from marl.algorithms.her import STRATEGIES as HER_STRATEGIES
from marl.algorithms.her import hindsight
from marl.algorithms.mixers import build_mixer, mixer_credit
from marl.algorithms.targets import double_q_value, greedy_value, legal_argmax, q_targets
from marl.config import ConfigError
from marl.distributions import Categorical
from marl.envs import EnvError, make_parallel_env
from marl.envs.goals import check_goal_env, goal_slices
from marl.envs.rewards import apply_reward_mode, is_team_reward
from marl.envs.step_schema import SUCCESSOR, Sizes
from marl.networks import MASKED_LOGIT, Actor, ValueNorm, unroll
from marl.replay import NODES, EpisodeReplay, Field, schema_fields

Tensor = torch.Tensor
MIXER_KINDS = ("none", "vdn", "qmix", "qplex")


@dataclass
class QConfig:
    """The q learner's own keys (flat under ``algo`` in YAML). It also reads ``algo.gamma``,
    ``algo.lr``, ``algo.lr_schedule``, ``algo.max_grad_norm``, ``algo.rollout_steps`` and, for its
    targets, ``algo.lam`` (``td: lambda``) or ``algo.n_step`` (``td: n_step``)."""

    mixer: str = "qmix"
    """``none`` (IQL: independent utilities, per-agent targets), ``vdn`` (Σ_i Q_i), ``qmix`` (a
    monotonic mixer of the state) or ``qplex`` (the duplex dueling mixer of the state and joint
    action). The mixers learn one team value: they need ``env.reward: shared``."""
    epsilon_start: float = 1.0
    """ε of the ε-greedy behaviour policy at the first env step, in [0, 1]."""
    epsilon_finish: float = 0.05
    """ε after ``epsilon_anneal_steps`` env steps, in [0, 1]."""
    epsilon_anneal_steps: int = 50_000
    """Env steps of the linear anneal from ``epsilon_start`` to ``epsilon_finish`` (0: finish at once)."""
    buffer_size: int = 5000
    """Replay capacity in slots (episodes, or ``replay_chunk``-step chunks of longer ones)."""
    replay_chunk: int = 50
    """Steps a replay slot holds: the episode limit, or less to cut long episodes into chunks (each
    unrolled from a zero hidden state). Memory is ``buffer_size × (replay_chunk + 1)`` states."""
    batch_size: int = 32
    """Slots per gradient step; learning starts once the replay holds this many."""
    updates_per_rollout: int = 1
    """Gradient steps after each rollout (``algo.rollout_steps × env.num_envs`` env steps)."""
    td: str = "lambda"
    """Targets: ``lambda`` (TD(λ) with ``algo.lam``; PyMARL2 uses λ 0.6, 0 is the one-step target)
    or ``n_step`` (``algo.n_step``)."""
    double_q: bool = True
    """Bootstrap from the target network's value of the online network's greedy action (double Q);
    off: the target network's own max."""
    target_every: int = 200
    """Gradient steps between hard copies of the online networks into the targets (with
    ``target_tau: 0``)."""
    target_tau: float = 0.0
    """0: hard target updates every ``target_every`` steps; τ in (0, 1]: after every step,
    target ← τ·online + (1−τ)·target."""
    mixer_embed: int = 32
    """QMIX: the mixing layer's width E."""
    hypernet_embed: int = 64
    """QMIX and QPLEX: the hidden width of the hypernetworks."""
    qplex_heads: int = 4
    """QPLEX: the attention heads K of its advantage weights λ_i(s, u)."""
    her: str = "none"
    """Hindsight relabelling of sampled slots (goal-conditioned envs, ``envs/goals.py``): ``none``,
    or the state whose achieved goals replace the desired ones: ``final`` (the last), ``future``
    (a later one; the loss keeps the steps before it) or ``episode`` (any)."""
    her_ratio: float = 0.8
    """With ``her``: the fraction of sampled slots relabelled, in [0, 1] (0.8 is HER's k = 4)."""
    her_relabel: str = "joint"
    """With ``her``: ``joint`` relabels every agent's goal at one state of the slot; ``agent`` one
    agent's, the others keep theirs."""
    standardize_rewards: bool = False
    """Train on rewards standardised by running statistics of the rewards collected, ``(r − mean) /
    std`` (one statistic over the acting agents; EPyMARL's ``standardise_rewards``, on in its QMIX).
    A sparse reward then stands well above the utilities' initial noise; the mean's shift is a
    constant cost per step (or a bonus). The statistics are in the checkpoint."""
    normalize_state: bool = True
    """Standardise the mixer's state input per feature by running statistics of the states
    collected (std floored at 0.1). Off: the raw state, on which QMIX's state-only terms
    ``V(s)``, ``b_1(s)`` diverge on LBF (Q_tot 11 → 20 in 20k steps of zero reward)."""


# The ``AlgoConfig`` keys this learner reads (every other one must stay at its default).
READS = frozenset({"learner", "gamma", "lam", "n_step", "rollout_steps", "lr", "lr_schedule", "max_grad_norm"})


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def validate_config(cfg) -> None:
    """The q learner's ranges and cross-key rules (``marl.config.validate`` calls it)."""
    q, a = cfg.algo.own, cfg.algo
    _check(cfg.backend == "local", "backend", cfg.backend, "'local' with algo.learner 'q' (RLlib's EnvRunners and "
           "Learners here run the on-policy learners only; train q with the local backend)")
    _check(q.mixer in MIXER_KINDS, "algo.mixer", q.mixer, f"one of {list(MIXER_KINDS)}")
    for key in ("epsilon_start", "epsilon_finish"):
        _check(0.0 <= getattr(q, key) <= 1.0, f"algo.{key}", getattr(q, key), "a float in [0, 1]")
    _check(q.epsilon_anneal_steps >= 0, "algo.epsilon_anneal_steps", q.epsilon_anneal_steps, "an int >= 0")
    for key in ("buffer_size", "replay_chunk", "batch_size", "updates_per_rollout", "target_every", "mixer_embed",
                "hypernet_embed", "qplex_heads"):
        _check(getattr(q, key) >= 1, f"algo.{key}", getattr(q, key), "an int >= 1")
    _check(0.0 <= q.target_tau <= 1.0, "algo.target_tau", q.target_tau, "a float in [0, 1]")
    _check(q.td in ("lambda", "n_step"), "algo.td", q.td, "'lambda' or 'n_step'")
    _validate_her(cfg)
    _check(q.mixer == "none" or is_team_reward(cfg.env.reward), "algo.mixer", q.mixer,
           f"'none' with env.reward {cfg.env.reward!r} (a mixer learns one team value Q_tot, which needs the "
           f"shared team reward; IQL learns each agent's own)")
    _check(not cfg.env.kwargs.get("continuous_actions", False), "env.kwargs.continuous_actions", True,
           "false with algo.learner 'q' (its utilities are over a discrete action set; use learner ppo for Box "
           "actions)")
    unused = "n_step" if q.td == "lambda" else "lam"
    default = getattr(type(a)(), unused)
    if getattr(a, unused) != default:
        raise ConfigError(f"config key 'algo.{unused}': set to {getattr(a, unused)!r}, but algo.td is {q.td!r}, "
                          f"which does not read it; remove it or leave it at {default!r}")
    if q.target_tau > 0 and q.target_every != QConfig.target_every:
        raise ConfigError(f"config key 'algo.target_every': set to {q.target_every!r}, but algo.target_tau is "
                          f"{q.target_tau!r} (soft updates after every step); remove one")


def _validate_her(cfg) -> None:
    q, e = cfg.algo.own, cfg.env
    _check(q.her in ("none", *HER_STRATEGIES), "algo.her", q.her, f"one of {['none', *HER_STRATEGIES]}")
    _check(0.0 <= q.her_ratio <= 1.0, "algo.her_ratio", q.her_ratio, "a float in [0, 1]")
    _check(q.her_relabel in HER_MODES, "algo.her_relabel", q.her_relabel, f"one of {list(HER_MODES)}")
    if q.her == "none":
        for key in ("her_ratio", "her_relabel"):
            if getattr(q, key) != getattr(QConfig, key):
                raise ConfigError(f"config key 'algo.{key}': set to {getattr(q, key)!r}, but algo.her is 'none', "
                                  f"which does not read it; set algo.her or leave it at {getattr(QConfig, key)!r}")
        return
    why = "relabelled rewards are recomputed from the goals and only put through env.reward"
    _check(e.reward in ("shared", "individual", "mixed"), "env.reward", e.reward,
           f"'shared', 'individual' or 'mixed' with algo.her ({why})")
    _check(not e.shaping, "env.shaping", e.shaping, f"'' with algo.her ({why}; a potential would be stale)")
    _check(not e.episodic_reward, "env.episodic_reward", e.episodic_reward, f"false with algo.her ({why})")


class GoalSpec(NamedTuple):
    """What relabelling needs of a goal-conditioned env: its ``compute_reward`` and where each
    agent's ``achieved_goal`` and ``desired_goal`` sit in its flat observation."""
    compute_reward: Callable
    achieved: slice
    desired: slice


def goal_spec(cfg) -> GoalSpec:
    """Build one env of ``cfg`` (never stepped) and read its goals (``algo.her``).

    Raises:
        ConfigError: in one line, if the env is not goal-conditioned (``envs.goals.check_goal_env``)
            or its agents' goals sit at different places in their flat observations.
    """
    env = make_parallel_env(cfg.env.id, cfg.env.kwargs)
    try:
        check_goal_env(env, f"env {cfg.env.id!r}")
    except EnvError as exc:
        raise ConfigError(f"config key 'algo.her': {cfg.algo.own.her!r} relabels goals, but {exc}") from None
    places = {tuple((s.start, s.stop) for s in goal_slices(env.observation_space(a))) for a in env.possible_agents}
    if len(places) != 1:
        raise ConfigError(f"config key 'algo.her': env {cfg.env.id!r}'s agents hold their goals at different places "
                          f"of their flat observations {sorted(places)}; relabelling needs one layout")
    (achieved, desired), = places
    return GoalSpec(env.compute_reward, slice(*achieved), slice(*desired))


def check_env(cfg, continuous: bool, turn_based: bool, images) -> None:
    """The q learner's refusals that need the env's spaces (``ConfigError``, one line)."""
    if continuous:
        raise ConfigError(f"config key 'algo.learner': 'q' learns utilities over a discrete action set, and env "
                          f"{cfg.env.id!r} has continuous (Box) actions; use algo.learner: ppo")
    if turn_based:
        raise ConfigError(f"config key 'algo.learner': 'q' bootstraps each agent from the next step, and env "
                          f"{cfg.env.id!r} is turn-based (one player moves per step); use algo.learner: ppo")
    if images is not None and (images.obs_image is not None or images.state_image is not None):
        raise ConfigError(f"config key 'algo.learner': 'q' reads flat observations and states, and env "
                          f"{cfg.env.id!r} has image ones; use algo.learner: ppo (its CNN encoder)")
    if cfg.algo.own.her != "none":
        goal_spec(cfg)


# -- the acting network --------------------------------------------------------------------------

class EpsilonGreedy(Categorical):
    """ε-greedy over the legal actions of utilities ``q [..., A]`` (illegal ones hold
    ``MASKED_LOGIT``): probability ε/k on each of the k legal actions plus 1−ε on the greedy one.
    ``mode()`` is the greedy action."""

    def __init__(self, q: Tensor, epsilon: float):
        legal = q > MASKED_LOGIT / 2
        self.greedy = q.argmax(-1)
        k = legal.sum(-1, keepdim=True).clamp(min=1)
        probs = legal * (epsilon / k) + (1.0 - epsilon) * F.one_hot(self.greedy, q.shape[-1])
        super().__init__(torch.where(legal, probs.clamp_min(1e-30).log(), MASKED_LOGIT))
        self.probs = torch.where(legal, probs, 0.0)

    def mode(self) -> Tensor:
        return self.greedy


class QActor(Actor):
    """Utilities ``Q_i(τ_i, ·) [..., N, A]`` of every agent (the ``Actor`` network, its output read as
    utilities), acting ε-greedily (``epsilon``, a plain attribute set by the learner). A plain
    ``Actor`` loads its weights and acts greedily with the same actions."""

    epsilon: float = 1.0

    def distribution(self, out: Tensor) -> EpsilonGreedy:
        return EpsilonGreedy(out, self.epsilon)

    def utilities(self, obs: Tensor, first: Tensor | None = None) -> Tensor:
        """Unmasked utilities ``[T, *B, N, A]`` of ``obs [T, *B, N, O]``; a recurrent network is unrolled
        from a zero hidden state at row 0 (and where ``first [T, *B]`` marks an episode's start)."""
        x = self._net_input(self.inputs(obs))
        if not self.recurrent:
            return self.net(x)
        h0 = torch.zeros(*obs.shape[1:-1], self.hidden_size, device=obs.device)
        first = torch.zeros(obs.shape[:-2], dtype=torch.bool, device=obs.device) if first is None else first
        return unroll(self.net, x, h0, first)[0]


# -- episodes across rollouts ---------------------------------------------------------------------

def q_fields(n_agents: int, obs_dim: int, state_dim: int, n_actions: int) -> dict[str, Field]:
    """What a replay slot holds, in the step schema's shapes: per state ``obs [N, O]``, ``state [S]``,
    ``avail [N, A]`` and ``alive [N]`` (the agents that act there); per step ``actions [N]``,
    ``reward [N]`` (after the reward mode) and per-agent ``terminated``/``truncated [N]``."""
    return schema_fields(Sizes(n_agents, obs_dim, state_dim, n_actions),
                         NODES + ("actions", "reward", "terminated", "truncated"))


class EpisodeStitcher:
    """Each env's open episode, ``[B, C(+1), ...]`` per field, filled step by step from rollouts and
    moved into ``replay`` when the episode ends (the env's next step is an episode's first) or its
    ``C`` steps are full (a chunk; the next chunk starts at the state after it). The state after a
    slot's last step is that step's ``next_*``; its ``alive`` is the agents that acted and did not
    terminate (a truncated agent bootstraps there)."""

    def __init__(self, fields: dict[str, Field], num_envs: int, chunk: int, device: torch.device):
        self.fields, self.chunk = fields, chunk
        self.open = {k: torch.zeros(num_envs, chunk + f.nodes, *f.shape, dtype=f.dtype, device=device)
                     for k, f in fields.items()}
        self.length = torch.zeros(num_envs, dtype=torch.int64, device=device)

    def add(self, b: dict[str, Tensor], replay: EpisodeReplay) -> None:
        """Append the rollout ``b`` (``[T, B, ...]``) and store what ends in ``replay``."""
        rows = torch.arange(len(self.length), device=self.length.device)
        for t in range(b["obs"].shape[0]):
            self._flush(b["first"][t] & (self.length > 0), replay)
            at, after = (rows, self.length), (rows, self.length + 1)
            for name in self.fields:
                self.open[name][at] = b[name][t].to(self.open[name].dtype)
            for name, successor in SUCCESSOR.items():
                self.open[name][after] = b[successor][t].to(self.open[name].dtype)
            self.open["alive"][after] = b["alive"][t] & ~b["terminated"][t]
            self.length += 1
            self._flush(self.length == self.chunk, replay)

    def _flush(self, done: Tensor, replay: EpisodeReplay) -> None:
        if not bool(done.any()):
            return
        index = done.nonzero()[:, 0]
        replay.add({k: v[index].movedim(0, 1) for k, v in self.open.items()}, self.length[index].cpu())
        self.length[index] = 0

    def state_dict(self) -> dict:
        return {"open": {k: v.clone() for k, v in self.open.items()}, "length": self.length.clone()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.open.items():
            v.copy_(state["open"][k])
        self.length.copy_(state["length"])


# -- the learner ------------------------------------------------------------------------------------

class QLearner:
    """``algo.learner: q`` (see the module docstring); built by ``marl.learners.build_learner``."""

    def __init__(self, cfg, env, device: torch.device | str = "cpu"):
        check_env(cfg, env.continuous, env.turn_based, env.images)
        self.cfg, self.q, self.device = cfg, cfg.algo.own, torch.device(device)
        q, m = self.q, cfg.model
        self.agents, N, A = list(env.agents), len(env.agents), env.n_actions
        self.actor = QActor(N, env.obs_dim, A, env.action_mask, m.hidden, m.layers, m.activation, m.share_actor,
                            recurrent=m.recurrent).to(self.device)
        self.target = copy.deepcopy(self.actor).requires_grad_(False)
        self.goals = goal_spec(cfg) if q.her != "none" else None
        kwargs = {"qmix": {"embed_dim": q.mixer_embed, "hypernet_embed": q.hypernet_embed},
                  "qplex": {"hypernet_embed": q.hypernet_embed, "heads": q.qplex_heads}}.get(q.mixer, {})
        state_dim = env.state_dim if self.goals is None else N * env.obs_dim   # under HER: the obs, concatenated
        self.mixer = build_mixer(q.mixer, n_agents=N, state_dim=state_dim, n_actions=A, **kwargs)
        self.target_mixer = None
        params = list(self.actor.parameters())
        if self.mixer is not None:
            self.mixer.to(self.device)
            self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)
            params += list(self.mixer.parameters())
        # Per-feature running statistics of the states seen (updated per rollout, used by the mixers).
        self.state_norm = ValueNorm(state_dim, eps=0.01).to(self.device) if q.normalize_state else None
        # Running statistics of the collected rewards (``algo.standardize_rewards``).
        self.reward_norm = ValueNorm(1).to(self.device) if q.standardize_rewards else None
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=cfg.algo.lr, foreach=True)   # one kernel per op, not per tensor
        fields = q_fields(N, env.obs_dim, env.state_dim, A)
        self.replay = EpisodeReplay(fields, capacity=q.buffer_size, chunk=q.replay_chunk, device=self.device,
                                    seed=cfg.seed)
        self.stitcher = EpisodeStitcher(fields, cfg.env.num_envs, q.replay_chunk, self.device)
        self.env_steps = 0
        self.updates = 0
        self.last_credit: list[Tensor] | None = None
        self.actor.epsilon = self.epsilon()

    def epsilon(self) -> float:
        q = self.q
        frac = 1.0 if q.epsilon_anneal_steps == 0 else min(self.env_steps / q.epsilon_anneal_steps, 1.0)
        return q.epsilon_start + frac * (q.epsilon_finish - q.epsilon_start)

    # -- the protocol ---------------------------------------------------------------------------
    def update(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict:
        """Store the rollout ``batch`` ``[T, B, ...]``, then take ``algo.updates_per_rollout``
        gradient steps on replayed slots (once there are ``algo.batch_size``). ``generator`` is
        unused: the replay draws from its own seeded generator."""
        self.stitcher.add(batch, self.replay)
        if self.state_norm is not None:
            seen = batch["state"] if self.goals is None else batch["obs"].flatten(-2)   # the mixer's state
            self.state_norm.update(seen.to(self.device))
        if self.reward_norm is not None:
            acting = batch["alive"].to(self.device)[..., None]   # [T, B, N, 1]: absent agents' rewards do not count
            self.reward_norm.update(batch["reward"].to(self.device)[..., None], acting)
        self.env_steps += batch["obs"].shape[0] * batch["obs"].shape[1]
        metrics: dict = {}
        if len(self.replay) >= self.q.batch_size:
            self._set_lr()
            for i in range(self.q.updates_per_rollout):
                metrics = self._step(report=i == self.q.updates_per_rollout - 1)
        self.actor.epsilon = self.epsilon()
        metrics.update({"q/epsilon": self.actor.epsilon, "q/replay_slots": float(len(self.replay)),
                        "q/updates": float(self.updates)})
        return metrics

    def _set_lr(self) -> None:
        a = self.cfg.algo
        frac = 1.0
        if a.lr_schedule == "linear":
            frac = max(1.0 - self.env_steps / self.cfg.train.total_env_steps, 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = a.lr * frac

    def credit_values(self) -> list[Tensor] | None:
        """Per agent, the advantages ``Q_i(u_i) − E_{π_ε} Q_i`` of the last update's acted steps."""
        return self.last_credit

    def state_dict(self) -> dict:
        state = {"actor": self.actor.state_dict(), "q_target": self.target.state_dict(),
                 "q_optimizer": self.optimizer.state_dict(), "q_replay": self.replay.state_dict(),
                 "q_open": self.stitcher.state_dict(), "q_env_steps": self.env_steps, "q_updates": self.updates}
        if self.mixer is not None:
            state["mixer"], state["target_mixer"] = self.mixer.state_dict(), self.target_mixer.state_dict()
        if self.state_norm is not None:
            state["q_state_norm"] = self.state_norm.state_dict()
        if self.reward_norm is not None:
            state["q_reward_norm"] = self.reward_norm.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["q_optimizer"])
        self.replay.load_state_dict(state["q_replay"])
        self.stitcher.load_state_dict(state["q_open"])
        self.env_steps, self.updates = int(state["q_env_steps"]), int(state["q_updates"])
        if self.mixer is not None:
            self.mixer.load_state_dict(state["mixer"])
            self.target_mixer.load_state_dict(state["target_mixer"])
        if self.state_norm is not None:
            self.state_norm.load_state_dict(state["q_state_norm"])
        if self.reward_norm is not None:
            self.reward_norm.load_state_dict(state["q_reward_norm"])
        self.actor.epsilon = self.epsilon()

    # -- one gradient step ------------------------------------------------------------------------
    def _step(self, report: bool = True) -> dict:
        """One gradient step. With ``report`` (the rollout's last step, whose metrics the loop logs) it
        returns the step's metrics and credit statistics (``_credit``: an autograd pass through the
        mixer); otherwise ``{}``."""
        q, a = self.q, self.cfg.algo
        s = self.replay.sample(q.batch_size)
        d, filled = s.data, s.filled                             # nodes [T+1, B, ...], steps [T, B, ...]
        keep = filled
        if self.goals is not None:
            d, keep = self.relabel(d, filled)
        if self.reward_norm is not None:
            # [T, B, N]; padded steps get −mean/std, which q_targets zeroes
            d = {**d, "reward": self.reward_norm.normalize(d["reward"][..., None])[..., 0]}
        acted = d["alive"][:-1]                                  # [T, B, N]
        boot_alive = d["alive"][1:] | (acted & d["truncated"])   # agents with a value at s_{t+1}
        boot_avail = d["avail"][1:] & boot_alive[..., None]
        state = d["state"] if self.state_norm is None else self.state_norm.normalize(d["state"])   # [T+1, B, S]
        utilities = self.actor.utilities(d["obs"])               # [T+1, B, N, A]
        with torch.no_grad():
            target_q = self.target.utilities(d["obs"])
        taken = utilities[:-1].gather(-1, d["actions"][..., None]).squeeze(-1)   # [T, B, N]
        online_next = utilities[1:].detach()
        with torch.no_grad():
            nxt = (double_q_value(online_next, target_q[1:], boot_avail) if q.double_q
                   else greedy_value(target_q[1:], boot_avail))
        td = {"gamma": a.gamma, "lam": a.lam} if q.td == "lambda" else {"gamma": a.gamma, "n": a.n_step}
        if self.mixer is None:
            mask = acted & keep[..., None]
            value = taken
            with torch.no_grad():
                target = q_targets(d["reward"], nxt, d["terminated"], d["truncated"], filled, **td)
        else:
            mask = keep[..., None] & acted.any(-1, keepdim=True)
            joint, joint_next = self._joint(utilities[:-1].detach(), d, acted, online_next, target_q[1:], boot_avail)
            value = self.mixer(taken, state[:-1], acted, **joint)
            with torch.no_grad():
                team_next = self.target_mixer(nxt, state[1:], boot_alive, **joint_next)
                reward, terminated, truncated = team_signals(d["reward"], d["terminated"], d["truncated"], acted)
                target = q_targets(reward, team_next, terminated, truncated, filled, **td)
        error = torch.where(mask, value - target, 0.0)
        loss = (error ** 2).sum() / mask.sum().clamp(min=1)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, a.max_grad_norm if a.max_grad_norm > 0 else math.inf)
        self.optimizer.step()
        self.updates += 1
        self._update_targets()
        if not report:
            return {}
        metrics = {"q/loss": float(loss.detach()), "q/grad_norm": float(grad_norm),
                   "q/value": float(value.detach()[mask].mean()), "q/target": float(target[mask].mean()),
                   "q/td_error_abs": float(error.detach().abs().sum() / mask.sum().clamp(min=1))}
        metrics.update(self._credit(utilities[:-1].detach(), taken.detach(), d, state[:-1],
                                    acted & keep[..., None], joint if self.mixer is not None else None))
        return metrics

    def relabel(self, d: dict[str, Tensor], filled: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Hindsight-relabel sampled slots ``d`` (``algo.her``): new ``obs`` (desired goals rewritten),
        ``reward [T, B, N]`` (``compute_reward``, then ``env.reward``) and ``state`` (the concatenated
        obs ``[T+1, B, N·O]``), and the steps the loss keeps ``[T, B]``.

        Raises:
            EnvError: in one line, if an agent was absent at a real step (HER assumes no departures).
        """
        q, e, g = self.q, self.cfg.env, self.goals
        if not bool((d["alive"][:-1] | ~filled[..., None]).all()):
            raise EnvError(f"algo.her: env {e.id!r} has agents that leave or arrive mid-episode; hindsight "
                           f"relabelling recomputes every agent's reward at every step, so it needs all agents present")
        obs, raw, keep = hindsight(d["obs"], filled, g.compute_reward, self.agents, achieved=g.achieved,
                                   desired=g.desired, strategy=q.her, ratio=q.her_ratio, mode=q.her_relabel,
                                   generator=self.replay.generator)
        reward = apply_reward_mode(raw, e.reward, e.team_reward, e.alpha) * filled[..., None]
        return {**d, "obs": obs, "reward": reward, "state": obs.flatten(-2)}, keep

    def _joint(self, q_now: Tensor, d: dict, acted: Tensor, online_next: Tensor, target_next: Tensor,
               boot_avail: Tensor) -> tuple[dict, dict]:
        """QPLEX's joint-action inputs at s_t (the taken actions, ``V_i = max`` legal online utility)
        and at s_{t+1} (the greedy actions, the target's max); empty for the other mixers."""
        if not getattr(self.mixer, "needs_joint_action", False):
            return {}, {}
        A = q_now.shape[-1]
        now = {"actions": F.one_hot(d["actions"], A) * acted[..., None],
               "max_qs": greedy_value(q_now, d["avail"][:-1] & acted[..., None])}
        pick = online_next if self.q.double_q else target_next
        nxt = {"actions": F.one_hot(legal_argmax(pick, boot_avail), A) * boot_avail.any(-1, keepdim=True),
               "max_qs": greedy_value(target_next, boot_avail)}
        return now, nxt

    def _update_targets(self) -> None:
        pairs = [(self.actor, self.target)] + ([(self.mixer, self.target_mixer)] if self.mixer is not None else [])
        tau = self.q.target_tau
        if tau == 0 and self.updates % self.q.target_every:
            return
        with torch.no_grad():
            for online, target in pairs:
                for p, tp in zip(online.parameters(), target.parameters()):
                    tp.copy_(p) if tau == 0 else tp.lerp_(p, tau)

    def _credit(self, q_now: Tensor, taken: Tensor, d: dict, state: Tensor, valid: Tensor, joint: dict | None
                ) -> dict:
        """Per-agent credit of the sampled steps: the advantage of the taken action over the
        ε-greedy policy's mean utility (``credit_values`` and ``credit/*``), and, with a mixer,
        ``∂Q_tot/∂Q_i`` (``credit/dqtot/<agent>``)."""
        adv = advantage_over_policy(q_now, taken, d["avail"][:-1], self.actor.epsilon)
        self.last_credit = [adv[..., i][valid[..., i]] for i in range(len(self.agents))]
        from marl.learner import per_agent_mean, per_agent_std
        abs_mean = per_agent_mean(adv.abs(), valid)
        share = abs_mean / abs_mean.sum().clamp_min(1e-12)
        mean, std = per_agent_mean(adv, valid), per_agent_std(adv, valid)
        q_mean = per_agent_mean(taken, valid)
        out = {}
        for i, ag in enumerate(self.agents):
            out.update({f"credit/adv_mean/{ag}": float(mean[i]), f"credit/adv_std/{ag}": float(std[i]),
                        f"credit/abs_adv/{ag}": float(abs_mean[i]), f"credit/share/{ag}": float(share[i]),
                        f"credit/q_taken/{ag}": float(q_mean[i])})
        if joint is not None and self.cfg.algo.own.mixer != "vdn":
            grad = mixer_credit(self.mixer, taken, state, d["alive"][:-1], **joint)
            g = per_agent_mean(grad, valid)
            out.update({f"credit/dqtot/{ag}": float(g[i]) for i, ag in enumerate(self.agents)})
        return out

    def prepare(self, b: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-step credit of a rollout ``b`` ``[T, B, ...]`` for the credit views: ``adv [T, B, N]``
        (the taken action's utility over the ε-greedy mean; 0 for absent agents) and ``q_taken``."""
        with torch.no_grad():
            q_now = self.actor.utilities(b["obs"].to(self.device), b["first"].to(self.device))
            taken = q_now.gather(-1, b["actions"].long()[..., None]).squeeze(-1)
            adv = advantage_over_policy(q_now, taken, b["avail"], self.actor.epsilon)
        alive = b["alive"].bool()
        return {"adv": torch.where(alive, adv, 0.0), "q_taken": torch.where(alive, taken, 0.0)}


def advantage_over_policy(q: Tensor, taken: Tensor, avail: Tensor, epsilon: float) -> Tensor:
    """``Q_i(u_i) − Σ_u π_ε(u) Q_i(u)`` ``[..., N]`` for utilities ``q [..., N, A]``, taken utilities
    ``[..., N]`` and legal actions ``avail [..., N, A]`` (ε-greedy over them)."""
    masked = torch.where(avail.bool(), q, MASKED_LOGIT)
    probs = EpsilonGreedy(masked, epsilon).probs
    return taken - (probs * torch.where(avail.bool(), q, 0.0)).sum(-1)


def team_signals(reward: Tensor, terminated: Tensor, truncated: Tensor, acted: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """The team's reward and flags ``[T, B, 1]`` from per-agent ones ``[T, B, N]``: the mean reward
    of the agents that acted; terminated when every acting agent terminated (the episode ended with
    nothing to bootstrap), truncated when every one ended and some by truncation."""
    count = acted.sum(-1, keepdim=True)
    team_reward = (reward * acted).sum(-1, keepdim=True) / count.clamp(min=1)
    any_acted = count > 0
    ended = ((terminated | truncated) | ~acted).all(-1, keepdim=True) & any_acted
    team_terminated = (terminated | ~acted).all(-1, keepdim=True) & any_acted
    return team_reward, team_terminated, ended & ~team_terminated
