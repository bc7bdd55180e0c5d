"""The project's actor and critic inside an RLlib ``TorchRLModule``.

RLlib batches one row per (agent, step) and, with parameter sharing, sends every agent's rows to
the one module ``"shared"``. Our networks map ``[..., N, in]`` to ``[..., N, out]``, so each row is
placed in all N agent slots, the network runs once and the row's own agent slot is kept. The
agent of a row is the one-hot id after its observation (``env.py``), followed, for envs with
per-step action masks, by the legal actions, which mask the logits. The logits are therefore
exactly ``Actor(obs [N, O], avail)[i]``, the same numbers the local evaluator computes.

On EnvRunners (``inference_only``) only the ``Actor`` is built. On a Learner the module builds a
``marl.learner.CreditLearner`` and adopts its networks (actor, critic, value normaliser, target
critic), so the advantage piece can call ``CreditLearner.prepare`` on the very weights RLlib trains.
"""
from __future__ import annotations

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from marl.config import config_from_dict
from marl.distributions import Categorical, DiagGaussian
from marl.learner import build_actor
from marl.learners import EnvShape, build_learner
from marl.networks import MASKED_LOGIT

MODULE_ID = "shared"
STATE = "marl_state"                  # [R, S] global state of the row's step
JOINT_ACTIONS = "marl_joint_actions"  # [R, N] every agent's action at the row's step (sorted ids)
ENV_FLAGS = "marl_env_flags"          # [R, N, 2] the env's own terminated/truncated flags of the step
INDEX = "marl_index"                  # [R, 3] (episode chunk b, step t within the chunk, agent i)
CRITIC_IN = "marl_critic_in"          # [R, D] the critic's input for the row's agent
CRITIC_PRED = "marl_critic_pred"      # [R] critic output (normalised space), of the taken action for Q
ALIVE = "marl_alive"                  # [R] the row's agent acts at the row's step (it has not left)
WEIGHT = "marl_weight"                # [R] 1 where the row counts in the loss (only when some agent left)


def model_config(cfg, agents, obs_dim: int, state_dim: int, n_actions: int, action_mask,
                 dynamic_mask: bool = False, continuous: bool = False) -> dict:
    """The ``model_config`` of ``CreditRLModule``: the project config plus the env's sizes."""
    return {"config": cfg.to_dict(), "agents": list(agents), "obs_dim": int(obs_dim), "state_dim": int(state_dim),
            "n_actions": int(n_actions), "action_mask": [[bool(x) for x in row] for row in action_mask],
            "dynamic_mask": bool(dynamic_mask), "continuous": bool(continuous)}


class CreditRLModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """Shared actor (all processes) and the configured critic (Learners only); see the module
    docstring. Non-inference attributes: ``critic``, ``value_norm``, ``target_critic``."""

    def setup(self):
        mc = self.model_config
        self.cfg = config_from_dict(mc["config"])
        self.agents = list(mc["agents"])
        self.n_agents, self.obs_dim = len(self.agents), int(mc["obs_dim"])
        self.dynamic_mask = bool(mc.get("dynamic_mask", False))
        self.continuous = bool(mc.get("continuous", False))
        mask = torch.tensor(mc["action_mask"], dtype=torch.bool)
        if self.inference_only:
            self.credit = None
            self.actor = build_actor(self.cfg, self.n_agents, self.obs_dim, int(mc["n_actions"]), mask, self.continuous)
            return
        self.credit = build_learner(self.cfg, EnvShape(self.agents, self.obs_dim, int(mc["state_dim"]),
                                                       int(mc["n_actions"]), mask, self.dynamic_mask, self.continuous))
        self.actor = self.credit.actor
        self.critic = self.credit.critic
        self.value_norm = self.credit.value_norm
        if self.credit.target_critic is not None:
            self.target_critic = self.credit.target_critic

    def get_non_inference_attributes(self) -> list[str]:
        return ["critic", "value_norm", "target_critic"]

    # -- rows <-> agent slots ------------------------------------------------------------------------
    def agent_index(self, obs: torch.Tensor) -> torch.Tensor:
        """The agent of each row ``[R]`` from the one-hot id after the observation in ``obs [R, O + N (+ A)]``."""
        return obs[..., self.obs_dim:self.obs_dim + self.n_agents].argmax(-1)

    def legal_actions(self, obs: torch.Tensor) -> torch.Tensor | None:
        """The legal actions ``[R, A]`` carried by RLlib observations, for envs with per-step masks."""
        return obs[..., self.obs_dim + self.n_agents:] > 0.5 if self.dynamic_mask else None

    def _in_all_slots(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-2).expand(*x.shape[:-1], self.n_agents, x.shape[-1])

    @staticmethod
    def _own_slot(full: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return full[torch.arange(idx.shape[0], device=idx.device), idx]

    def actor_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's ``dist_inputs`` ``[R, A]`` of each row's agent for RLlib observations
        ``[R, O + N (+ A)]``: masked logits, or the Gaussian mean for continuous actions.

        A shared actor reads ``[o_i, one-hot i]``, which is the RLlib observation itself, so its
        network runs on the rows directly (N times less work than filling every agent slot);
        ``tests/test_rllib.py`` checks both paths against ``Actor.forward``."""
        idx, legal = self.agent_index(obs), self.legal_actions(obs)
        if self.actor.shared:
            logits = self.actor.net(obs[..., :self.obs_dim + self.n_agents])
            if self.continuous:
                return logits
            if legal is not None:
                return logits.masked_fill(~legal, MASKED_LOGIT)
            mask = self.actor.action_mask
            return logits if bool(mask.all()) else logits.masked_fill(~mask[idx], MASKED_LOGIT)
        avail = None if legal is None else self._in_all_slots(legal)
        return self._own_slot(self.actor(self._in_all_slots(obs[..., :self.obs_dim]), avail), idx)

    def critic_prediction(self, critic_in: torch.Tensor, idx: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What the critic predicts for each row ``[R]`` (normalised space, as trained): V of the
        row's agent, or for a Q critic Q of the taken action. ``critic_in`` is the row's part of
        ``CreditLearner.critic_input``: the state (central V), the own observation (local V), both
        (agent-specific state) or the agent's counterfactual input (Q)."""
        if self.critic.q:
            q = self.critic(critic_in.unsqueeze(-2)).squeeze(-2)
            return q.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        if not self.critic.per_agent_inputs:
            return self._own_slot(self.critic(critic_in), idx)
        return self._own_slot(self.critic(self._in_all_slots(critic_in)), idx)

    # -- RLlib API -----------------------------------------------------------------------------------
    def _forward(self, batch: dict, **kwargs) -> dict:
        """RLlib's distribution inputs: the logits (``TorchCategorical``), or the Gaussian's mean and
        log-std side by side (``TorchDiagGaussian``)."""
        out = self.actor_logits(batch[Columns.OBS])
        if self.continuous:
            out = torch.cat([out, self.actor.log_std.expand_as(out)], -1)
        return {Columns.ACTION_DIST_INPUTS: out}

    def distribution(self, dist_inputs: torch.Tensor):
        """Our distribution (``marl.distributions``) of RLlib's ``ACTION_DIST_INPUTS`` rows, for the loss."""
        if not self.continuous:
            return Categorical(dist_inputs)
        mean, log_std = dist_inputs.chunk(2, -1)
        return DiagGaussian(mean, log_std)

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        out = self._forward(batch)
        if CRITIC_IN in batch:  # set by the advantage piece (connectors.CreditAdvantages)
            out[CRITIC_PRED] = self.critic_prediction(batch[CRITIC_IN], self.agent_index(batch[Columns.OBS]),
                                                      batch[Columns.ACTIONS])
        return out

    def compute_values(self, batch: dict, embeddings=None) -> torch.Tensor:
        """V of each row's agent in return units ``[R]`` (for a Q critic: the policy-weighted
        ``Σ_u π(u) Q(s, u^-a, u)``). Needs ``STATE`` (and ``JOINT_ACTIONS`` for COMA) from
        ``connectors.AddJointColumns``. Training does not use it: the advantage piece calls
        ``CreditLearner.prepare``; RLlib's own GAE can use it (see tests/test_rllib.py)."""
        obs = batch[Columns.OBS]
        idx, own = self.agent_index(obs), self._in_all_slots(obs[..., :self.obs_dim])
        credit = self.credit
        with torch.no_grad():
            if credit.uses_q:
                critic_in = credit.critic_input(batch[STATE], own, batch[JOINT_ACTIONS].long())
                q_all = self._own_slot(credit._to_return_space(self.critic(critic_in), per_action=True), idx)
                pi = torch.softmax(self.actor_logits(obs), -1)
                return (pi * q_all).sum(-1)
            values = self.critic(credit.critic_input(batch[STATE], own))
            return self._own_slot(credit._to_return_space(values), idx)
