"""Learned reward redistribution in training (``algo.redistribution: rrd | arel``).

Each rollout's finished episodes (which may have begun in earlier rollouts: episodes outlive the
rollout) train a ``marl.reward_models.RewardRedistributor`` to decompose their outcome, the sum of
the learner's rewards over steps and agents, into per-(step, agent) rewards; the learner then
trains on the model's dense rewards instead of the rollout's own. With ``env.episodic_reward``
that turns one number at an episode's end into credit for the steps and agents that earned it.

Features of agent i at step t: ``[state, o_i, action_i (one-hot or continuous), one-hot i]``
(without the state when ``algo.redistribution_state`` is off).
With a shared reward every agent gets the team's redistributed step reward
(``Σ_i r̂_{t,i} / N``, so one agent's return matches the team's); otherwise agent i gets
``r̂_{t,i}``. ``arel`` scores each rollout's part of an episode on its own (the transformer does
not see the steps before the rollout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from marl.reward_models import RewardRedistributor


class OnlineRedistribution:
    """The redistribution model of a run and the episodes in flight (see the module docstring)."""

    def __init__(self, cfg, n_agents: int, obs_dim: int, state_dim: int, n_actions: int, continuous: bool,
                 num_envs: int):
        a = cfg.algo
        self.n_agents, self.n_actions, self.continuous = n_agents, n_actions, continuous
        self.shared = cfg.env.reward == "shared"
        self.steps, self.with_state = a.redistribution_steps, a.redistribution_state
        self.feature_dim = (state_dim if self.with_state else 0) + obs_dim + n_actions + n_agents
        self.model = RewardRedistributor(a.redistribution, self.feature_dim, n_agents, hidden=cfg.model.hidden,
                                         lr=a.redistribution_lr, subset_size=a.redistribution_subset, seed=cfg.seed)
        # per env: the features [L, N, D] and learner rewards [L, N] of its current episode so far
        self._features = [torch.zeros(0, n_agents, self.feature_dim) for _ in range(num_envs)]
        self._rewards = [torch.zeros(0, n_agents) for _ in range(num_envs)]

    def features(self, b: dict) -> torch.Tensor:
        """``[T, B, N, D]`` reward-model inputs of a rollout batch."""
        obs, actions = b["obs"], b["actions"]
        acted = actions.float() if self.continuous else F.one_hot(actions, self.n_actions).float()
        eye = torch.eye(self.n_agents, device=obs.device).expand(*obs.shape[:-1], self.n_agents)
        parts = [obs, acted, eye]
        if self.with_state:
            parts.insert(0, b["state"].unsqueeze(-2).expand(*obs.shape[:-1], b["state"].shape[-1]))
        return torch.cat(parts, -1)

    @staticmethod
    def episode_ends(b: dict) -> torch.Tensor:
        """``[T, B]``: step t ends its env's episode (no agent goes on)."""
        return ((b["terminated"] | b["truncated"]) | ~b["alive"]).all(-1)

    def _collect_finished(self, feats: torch.Tensor, rewards: torch.Tensor, ends: torch.Tensor) -> list:
        finished = []
        for env in range(feats.shape[1]):
            start = 0
            for t in ends[:, env].nonzero().flatten().tolist() + [feats.shape[0] - 1]:
                if t < start:
                    continue
                self._features[env] = torch.cat([self._features[env], feats[start:t + 1, env]])
                self._rewards[env] = torch.cat([self._rewards[env], rewards[start:t + 1, env]])
                if ends[t, env]:
                    finished.append((self._features[env], self._rewards[env]))
                    self._features[env] = self._features[env][:0]
                    self._rewards[env] = self._rewards[env][:0]
                start = t + 1
        return finished

    def process(self, b: dict) -> tuple[torch.Tensor, dict]:
        """Train on the episodes this rollout finished, then return the rollout's dense learner
        rewards ``[T, B, N]`` and the model's metrics (``redistribution/*``)."""
        feats = self.features(b).cpu()
        ends = self.episode_ends(b).cpu()
        finished = self._collect_finished(feats, b["reward"].float().cpu(), ends)
        metrics = {}
        if finished:
            longest = max(len(f) for f, _ in finished)
            padded = torch.zeros(len(finished), longest, self.n_agents, self.feature_dim)
            valid = torch.zeros(len(finished), longest, dtype=torch.bool)
            returns = torch.zeros(len(finished))
            for k, (f, r) in enumerate(finished):
                padded[k, :len(f)], valid[k, :len(f)], returns[k] = f, True, r.sum()
            self.model.add_episodes(padded, valid, returns)
        if len(self.model):
            metrics = self.model.train(self.steps)
        dense = self.model.rewards(feats, ends) if len(self.model) else torch.zeros_like(b["reward"].cpu())
        if self.shared:
            dense = dense.mean(-1, keepdim=True).expand_as(dense)
        return dense.to(b["reward"].device) * b["alive"], metrics

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "features": [f.clone() for f in self._features],
                "rewards": [r.clone() for r in self._rewards]}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self._features = [f.clone() for f in state["features"]]
        self._rewards = [r.clone() for r in state["rewards"]]
