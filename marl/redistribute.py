"""Learned rewards the learner trains on instead of the rollout's own: reward redistribution
(``algo.redistribution: rrd | arel``, ``OnlineRedistribution``) and learned difference rewards
(``env.difference: reward_model``, ``OnlineDifference``, at the end of this module). The trainer
calls either one's ``process(batch)`` at the same place, just before the learner's update.

Each rollout's finished episodes train a ``marl.reward_models.RewardRedistributor`` to decompose
their outcome, the sum of the learner's rewards over steps and agents, into per-(step, agent)
rewards; the learner then trains on the model's dense rewards instead of the rollout's own. With
``env.episodic_reward`` that turns one number at an episode's end into credit for the steps and
agents that earned it.

Episodes outlive the rollout (the trainer's envs run on across rollouts), so one episode may span
several rollouts. Per env this module keeps the episode so far (features, learner rewards, alive
mask) and what the learner has already been paid for it:

- **rrd** scores each (step, agent) alone, ``r̂(x_{t,i})``, whatever the rollout boundaries. Its
  rewards are not normalised: they sum to the outcome in expectation (RRD's loss), not exactly.
- **arel** scores every segment of the rollout in its whole-episode context: the episode's steps
  so far, from earlier rollouts too, then the segment, positions counted from the episode's first
  step. A segment that ends its episode is shifted by one constant over its live (step, agent)
  entries so that everything the learner was paid for the episode, in earlier rollouts and this
  one, sums exactly to the outcome; an episode inside one rollout so gets exactly the Euclidean
  projection of ``marl.algorithms.redistribution.normalise_to_outcome`` (over live entries). A segment still in
  flight at the rollout's end has no outcome yet: it is paid the model's raw scores of the episode
  so far, and their sum is settled with the episode's last segment. Why not wait until an episode
  ends before paying its steps: the learner would then train on steps of earlier rollouts, with
  stale log-probabilities and values. The price of paying at once: the settlement, the model's
  error on the earlier part, lands on the final segment's steps.

Features of agent i at step t: ``[state, o_i, action_i (one-hot or continuous), one-hot i]``
(without the state when ``algo.redistribution_state`` is off), followed with
``algo.redistribution_joint_action`` by the joint action ``[action_1, ..., action_N]`` (zeros for
absent agents), so that a per-step model can tell an outcome that needs several agents' actions
(RRD's ``r̂(s, u)``).
With a shared reward every agent gets the team's redistributed step reward, the mean of
``r̂_{t,j}`` over the agents present at t (so with every agent present, one agent's return is
the team's); otherwise agent i gets ``r̂_{t,i}``. Absent agents get 0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from marl.algorithms.difference import default_action_joints, difference_rewards
from marl.config import ConfigError
from marl.envs.rewards import is_team_reward, team_reward
from marl.reward_models import RewardRedistributor, TeamRewardModel, TeamRewardRegressor


class _Segment(NamedTuple):
    """One env's part of a rollout, ``[start, stop)``, with its episode so far (``features
    [L, N, D]``, ``rewards [L, N]``, ``alive [L, N]``, the segment its last ``stop − start`` steps)."""

    env: int
    start: int
    stop: int
    features: torch.Tensor
    rewards: torch.Tensor
    alive: torch.Tensor
    finished: bool


def settle(scores: torch.Tensor, alive: torch.Tensor, outcome: float, paid: float = 0.0) -> torch.Tensor:
    """Shift ``scores [L, N]`` by one constant over the live entries (0 elsewhere) so that
    ``paid + Σ_live scores' = outcome`` (float64 arithmetic, the dtype of ``scores`` back)."""
    live = alive.to(torch.bool)
    r = torch.where(live, scores.double(), 0.0)
    count = int(live.sum())
    if count:
        r = torch.where(live, r + (float(outcome) - float(paid) - float(r.sum())) / count, 0.0)
    return r.to(scores.dtype)


class OnlineRedistribution:
    """The redistribution model of a run and the episodes in flight (see the module docstring)."""

    def __init__(self, cfg, n_agents: int, obs_dim: int, state_dim: int, n_actions: int, continuous: bool,
                 num_envs: int):
        a = cfg.algo
        self.n_agents, self.n_actions, self.continuous = n_agents, n_actions, continuous
        self.shared = is_team_reward(cfg.env.reward)
        self.steps, self.with_state = a.redistribution_steps, a.redistribution_state
        self.feature_dim = (state_dim if self.with_state else 0) + obs_dim + n_actions + n_agents
        self.joint = a.redistribution_joint_action
        if self.joint:
            self.feature_dim += n_agents * n_actions
        self.model = RewardRedistributor(a.redistribution, self.feature_dim, n_agents, hidden=cfg.model.hidden,
                                         lr=a.redistribution_lr, subset_size=a.redistribution_subset,
                                         sparsity=a.redistribution_sparsity, capacity=a.redistribution_capacity,
                                         seed=cfg.seed)
        # per env: its current episode so far, features [L, N, D], learner rewards [L, N], alive [L, N],
        # and (arel) the sum of the dense rewards the learner has been paid for it
        self._features = [torch.zeros(0, n_agents, self.feature_dim) for _ in range(num_envs)]
        self._rewards = [torch.zeros(0, n_agents) for _ in range(num_envs)]
        self._alive = [torch.zeros(0, n_agents, dtype=torch.bool) for _ in range(num_envs)]
        self._paid = torch.zeros(num_envs, dtype=torch.float64)

    def features(self, b: dict) -> torch.Tensor:
        """``[T, B, N, D]`` reward-model inputs of a rollout batch."""
        obs, actions = b["obs"], b["actions"]
        acted = actions.float() if self.continuous else F.one_hot(actions, self.n_actions).float()
        # An absent agent sent no action to the env (its slot holds a sampled one): zero it, so that
        # nothing it did not do reaches the model (AREL's attention reads every agent's features).
        acted = acted * b["alive"].unsqueeze(-1).to(acted.dtype)
        eye = torch.eye(self.n_agents, device=obs.device).expand(*obs.shape[:-1], self.n_agents)
        parts = [obs, acted, eye]
        if self.joint:   # every present agent's action, the same for each agent (absent agents' are 0)
            joint = acted.flatten(-2)
            parts.append(joint.unsqueeze(-2).expand(*obs.shape[:-1], joint.shape[-1]))
        if self.with_state:
            parts.insert(0, b["state"].unsqueeze(-2).expand(*obs.shape[:-1], b["state"].shape[-1]))
        return torch.cat(parts, -1)

    @staticmethod
    def episode_ends(b: dict) -> torch.Tensor:
        """``[T, B]``: step t ends its env's episode (no agent goes on)."""
        return ((b["terminated"] | b["truncated"]) | ~b["alive"]).all(-1)

    def _segments(self, feats: torch.Tensor, rewards: torch.Tensor, alive: torch.Tensor,
                  ends: torch.Tensor) -> list[_Segment]:
        """Cut each env's column at its episode ends, extend the env's episode so far with each part,
        and return the parts (env, then time order) with their episodes so far."""
        segments = []
        T = feats.shape[0]
        for env in range(feats.shape[1]):
            start = 0
            for t in ends[:, env].nonzero().flatten().tolist() + [T - 1]:
                if t < start:
                    continue
                self._features[env] = torch.cat([self._features[env], feats[start:t + 1, env]])
                self._rewards[env] = torch.cat([self._rewards[env], rewards[start:t + 1, env]])
                self._alive[env] = torch.cat([self._alive[env], alive[start:t + 1, env]])
                finished = bool(ends[t, env])
                segments.append(_Segment(env, start, t + 1, self._features[env], self._rewards[env],
                                         self._alive[env], finished))
                if finished:
                    self._features[env] = self._features[env][:0]
                    self._rewards[env] = self._rewards[env][:0]
                    self._alive[env] = self._alive[env][:0]
                start = t + 1
        return segments

    def _padded(self, segments: list[_Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """The segments' episodes so far as ``features [E, L, N, D]`` and ``valid [E, L]``."""
        longest = max(len(s.features) for s in segments)
        padded = torch.zeros(len(segments), longest, self.n_agents, self.feature_dim)
        valid = torch.zeros(len(segments), longest, dtype=torch.bool)
        for k, s in enumerate(segments):
            padded[k, :len(s.features)], valid[k, :len(s.features)] = s.features, True
        return padded, valid

    def _arel_rewards(self, segments: list[_Segment], shape: torch.Size) -> torch.Tensor:
        """arel's rewards ``[T, B, N]`` for the rollout: every segment scored in its episode's
        context, a finished one settled against the outcome (see the module docstring)."""
        scores = self.model.score(*self._padded(segments))
        dense = torch.zeros(shape)
        for k, s in enumerate(segments):
            length, n = len(s.features), s.stop - s.start
            part, alive = scores[k, length - n:length], s.alive[length - n:]
            paid = float(self._paid[s.env]) if s.start == 0 else 0.0   # the episode's earlier rollouts
            if s.finished:
                part = settle(part, alive, float(s.rewards.double().sum()), paid)
                self._paid[s.env] = 0.0
            else:
                part = torch.where(alive, part, 0.0)
                self._paid[s.env] = paid + float(part.double().sum())
            dense[s.start:s.stop, s.env] = part
        return dense

    def _to_learner(self, dense: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """Per-(step, agent) rewards ``[..., N]`` as the learner gets them: under a shared reward each
        present agent gets the mean over the present agents; absent agents get 0."""
        live = alive.to(dense.dtype)
        if self.shared:
            team = (dense * live).sum(-1, keepdim=True) / live.sum(-1, keepdim=True).clamp_min(1.0)
            dense = team.expand_as(dense)
        return dense * live

    def process(self, b: dict) -> tuple[torch.Tensor, dict]:
        """Train on the episodes this rollout finished, then return the rollout's dense learner
        rewards ``[T, B, N]`` and the model's metrics (``redistribution/*``)."""
        feats = self.features(b).cpu()
        ends = self.episode_ends(b).cpu()
        alive = b["alive"].cpu()
        segments = self._segments(feats, b["reward"].float().cpu(), alive, ends)
        finished = [s for s in segments if s.finished]
        metrics = {}
        if finished:
            padded, valid = self._padded(finished)
            returns = torch.stack([s.rewards.sum() for s in finished])
            self.model.add_episodes(padded, valid, returns)
        if not len(self.model):     # nothing learned yet (and nothing paid, so nothing to settle)
            dense = torch.zeros(feats.shape[:3])
        else:
            metrics = self.model.train(self.steps)
            dense = (self.model.rewards(feats) if self.model.method == "rrd"
                     else self._arel_rewards(segments, feats.shape[:3]))
        return self._to_learner(dense, alive).to(b["reward"].device), metrics

    # -- views of one finished episode --------------------------------------------------------------
    def episode_rewards(self, b: dict) -> torch.Tensor:
        """The redistributed reward ``[T, N]`` of one whole episode ``b`` (a ``[T, 1, ...]`` batch, as
        ``marl.credit.play_episode`` plays it): the model's scores shifted over the live entries to
        sum to the episode's outcome (its learner rewards summed over steps and agents), per agent,
        before a shared reward's mean over agents. For arel this is what training pays an episode
        inside one rollout; for rrd the learner trains on the unshifted scores."""
        feats = self.features(b)[:, 0].cpu()
        scores = self.model.score(feats[None], torch.ones(1, len(feats), dtype=torch.bool))[0]
        return settle(scores, b["alive"][:, 0].cpu(), float(b["reward"].double().sum()))

    def episode_attention(self, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """arel's attention on one whole episode ``b`` (``[T, 1, ...]``): temporal ``[blocks, N, T, T]``
        (agent i's query step over key steps) and agent ``[blocks, T, N, N]`` (at step t, query agent
        over key agents)."""
        feats = self.features(b)[:, 0].cpu()
        temporal, agent = self.model.attention(feats[None], torch.ones(1, len(feats), dtype=torch.bool))
        return temporal[:, 0], agent[:, 0]

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "features": [f.clone() for f in self._features],
                "rewards": [r.clone() for r in self._rewards], "alive": [a.clone() for a in self._alive],
                "paid": self._paid.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self._features = [f.clone() for f in state["features"]]
        self._rewards = [r.clone() for r in state["rewards"]]
        # checkpoints from before the alive mask and the settlement: every agent present, nothing paid
        self._alive = [a.clone() for a in state["alive"]] if "alive" in state else [
            torch.ones(r.shape, dtype=torch.bool) for r in self._rewards]
        self._paid = state["paid"].clone() if "paid" in state else torch.zeros(len(self._rewards), dtype=torch.float64)


class OnlineDifference:
    """Difference rewards from a learned counterfactual (``env.difference: reward_model``):
    Dr.Reinforce (Castellini et al., 2021, "Difference Rewards Policy Gradients") for envs that
    cannot be copied, so that ``G(s, (u_−i, c_i))`` cannot be re-simulated.

    The env layer pays the shared team reward; each rollout's ``(s, u, G)`` steps (G the team reward
    of the raw rewards, ``env.team_reward`` over the agents present) train a
    ``TeamRewardRegressor`` ``r̂(s, u)`` by mean squared error (``steps`` updates per iteration on
    batches from the last ``capacity`` steps), and the learner then gets, for the whole rollout,

        D̂_i = r̂(s, u) − r̂(s, (u_−i, c_i))

    (``marl.algorithms.difference``): one batched model pass over N + 1 joint actions per step.
    ``c_i`` is ``env.default_action``, or agent i's first legal action at a step where that one is
    not legal (as the re-simulation does). Absent agents (``alive`` False) get 0 and are left out of
    the joint action (their one-hot is zero). With ``env.shaping`` the shaping term the env added to
    the team reward is kept: ``D̂_i + γΦ(s') − Φ(s)``.

    Logged: ``difference/model_loss`` (the mean training MSE of this iteration's updates) and
    ``difference/model_error`` (the MSE on the new rollout before the model trains on it: its error on
    fresh steps of the current policy).

    Why a long buffer: G(s, u) does not change with the policy, but the counterfactual joints
    ``(u_−i, c_i)`` are ones the policy stops playing as it converges. Trained on the last 8 rollouts
    only, r̂ forgot them: on ``configs/diag_lazy_agent_difference_learned.yaml`` as of 2026-12-06
    (team-sum reward, γ 0.01; 20k steps, seeds 0–2) the mean |D̂_i − D_i| of agents 0 and 1 was 0.06–0.10 (worst entry 0.33–1.15) against exact
    D of 0, 1.5 or 3; with every step of the run kept, 0.02–0.03 (worst 0.09–0.11).
    """

    steps = 8           # Adam updates of r̂ per iteration
    capacity = 65_536   # steps in the buffer (the most recent)
    batch_size = 256
    lr = 1e-3

    def __init__(self, cfg, n_agents: int, state_dim: int, n_actions: int, continuous: bool,
                 device: torch.device | str = "cpu"):
        e = cfg.env
        if continuous:
            raise ConfigError(f"config key 'env.difference': 'reward_model' needs discrete actions (a default action "
                              f"c_i to put in agent i's place), and env {e.id!r} has continuous (Box) actions")
        if not 0 <= e.default_action < n_actions:
            raise ConfigError(f"config key 'env.default_action': expected an action of env {e.id!r}, an int in "
                              f"[0, {n_actions}), got {e.default_action!r}")
        self.n_agents, self.n_actions = n_agents, n_actions
        self.team, self.default, self.shaped = e.team_reward, e.default_action, bool(e.shaping)
        self.model = TeamRewardRegressor(state_dim + n_agents * n_actions, hidden=cfg.model.hidden,
                                         layers=cfg.model.layers, lr=self.lr,
                                         capacity=self.capacity, batch_size=self.batch_size,
                                         seed=cfg.seed, device=device)

    def team_reward(self, raw: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """G ``[...]``: the sum, or the mean over all N agents, of the present agents' raw rewards
        ``[..., N]`` (``marl.envs.rewards.team_reward``)."""
        return team_reward(raw, self.team, alive.bool()).squeeze(-1)

    def defaults(self, avail: torch.Tensor) -> torch.Tensor:
        """``c_i`` per step ``[..., N]``: ``env.default_action`` where ``avail [..., N, A]`` marks it
        legal, else the agent's first legal action."""
        first_legal = avail.to(torch.int8).argmax(-1)   # the first maximum
        return torch.where(avail[..., self.default], self.default, first_legal)

    def rewards(self, b: dict) -> torch.Tensor:
        """``D̂ [T, B, N]`` of a rollout batch (``state``, ``actions``, ``alive``, ``avail``, and with
        shaping ``raw_reward`` and ``reward``), on the batch's device; no training."""
        device = self.model.device
        state, actions = b["state"].to(device).float(), b["actions"].to(device)
        alive, avail = b["alive"].to(device), b["avail"].to(device)
        joints = torch.cat([actions.unsqueeze(-2), default_action_joints(actions, self.defaults(avail))], -2)
        states = state.unsqueeze(-2).expand(*joints.shape[:-1], state.shape[-1])
        r_hat = self.model.predict(TeamRewardModel.inputs(states, joints, alive.unsqueeze(-2), self.n_actions))
        d_hat = difference_rewards(r_hat[..., :1], r_hat[..., 1:])          # [T, B, N]
        if self.shaped:   # keep what the env's shaping added to the team reward it paid
            raw, paid = b["raw_reward"].to(device).float(), b["reward"].to(device).float()
            d_hat = d_hat + paid - self.team_reward(raw, alive).unsqueeze(-1)
        return torch.where(alive, d_hat, 0.0).to(b["reward"].device)

    def process(self, b: dict) -> tuple[torch.Tensor, dict]:
        """Train ``r̂`` on the rollout's steps, then return its ``D̂ [T, B, N]`` and the metrics."""
        device = self.model.device
        alive = b["alive"].to(device)
        present = alive.any(-1)                                             # steps some agent took
        inputs = TeamRewardModel.inputs(b["state"].to(device).float(), b["actions"].to(device), alive,
                                        self.n_actions)[present]
        g = self.team_reward(b["raw_reward"].to(device).float(), alive)[present]
        metrics = {}
        if len(self.model) and len(g):
            metrics["difference/model_error"] = float(((self.model.predict(inputs) - g) ** 2).mean())
        self.model.add(inputs, g)
        if len(self.model):
            metrics["difference/model_loss"] = self.model.train(self.steps)
        return self.rewards(b), metrics

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
