"""The RLlib Learner: PPO's machinery (minibatching, epochs, weight sync) with the project's
advantage piece, optimiser and loss.

- ``build`` swaps RLlib's ``GeneralAdvantageEstimation`` for ``connectors.CreditAdvantages``.
- The optimiser is the ``CreditLearner``'s own Adam (actor and critic parameter groups with
  ``algo.lr`` and ``algo.critic_lr``), so its state has the local checkpoint format.
- The loss is ``CreditLearner``'s: PPO-clip or A2C actor loss, MSE critic loss on the (normalised)
  targets, where the prediction is V of the row's agent or, for COMA, Q of the taken action, and
  the entropy bonus. Gradients are clipped by global norm as in the local backend.
- After each update: the COMA target critic is refreshed every ``algo.target_update_every``
  updates, and the iteration's metrics (credit, losses, per-agent entropy) are reported under
  ``result["learners"]["shared"]["marl"]``.
"""
from __future__ import annotations

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from marl.learner import TrainingDiverged
from marl.rllib.connectors import CreditAdvantages
from marl.rllib.module import CRITIC_PRED

STATS_KEY = "marl"


class CreditPPOLearner(PPOTorchLearner):
    """See the module docstring."""

    def build(self) -> None:
        super().build()
        module = self._credit_module()
        self.marl_generator = torch.Generator().manual_seed(module.cfg.seed)
        self.credit_piece = CreditAdvantages(generator=self.marl_generator,
                                             histogram_every=module.cfg.log.histogram_every)
        if self._learner_connector is not None:
            self._learner_connector.remove("GeneralAdvantageEstimation")
            self._learner_connector.append(self.credit_piece)
        self._sums: dict[str, float] = {}
        self._minibatches = 0

    def _credit_module(self, module_id: str | None = None):
        module_id = module_id or next(iter(self.module.keys()))
        return self.module[module_id].unwrapped()

    @property
    def credit(self):
        """The ``CreditLearner`` whose networks this Learner trains."""
        return self._credit_module().credit

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        credit = self._module[module_id].credit
        params = list(credit.actor.parameters()) + list(credit.critic.parameters())
        # No lr schedule: the param groups keep algo.lr and algo.critic_lr.
        self.register_optimizer(module_id=module_id, optimizer=credit.optimizer, params=params)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        a = module.cfg.algo
        logits = fwd_out[Columns.ACTION_DIST_INPUTS]
        log_probs = torch.log_softmax(logits, -1)
        actions = batch[Columns.ACTIONS].long()
        logp = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        log_ratio = logp - batch[Columns.ACTION_LOGP]
        ratio = log_ratio.exp()
        adv = batch[Postprocessing.ADVANTAGES]
        if a.loss == "ppo":
            policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - a.clip, 1 + a.clip) * adv).mean()
        else:
            policy_loss = -(logp * adv).mean()
        value_loss = torch.nn.functional.mse_loss(fwd_out[CRITIC_PRED], batch[Postprocessing.VALUE_TARGETS])
        loss = policy_loss + a.value_coef * value_loss - a.entropy_coef * entropy.mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at update {module.credit.updates + 1} (policy {policy_loss.item():.4g}, "
                f"value {value_loss.item():.4g}); try a lower algo.lr or algo.critic_lr. The last good "
                f"checkpoint is kept")
        with torch.no_grad():
            idx = module.agent_index(batch[Columns.OBS])
            n = module.n_agents
            counts = torch.bincount(idx, minlength=n).clamp_min(1)
            per_agent_entropy = torch.zeros(n).index_add_(0, idx, entropy.detach().float()) / counts
            stats = {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(),
                     "losses/entropy": entropy.mean().item(),
                     "losses/approx_kl": ((ratio - 1) - log_ratio).mean().item(),
                     "losses/clip_fraction": ((ratio - 1).abs() > a.clip).float().mean().item()}
            stats.update({f"entropy/{ag}": float(v) for ag, v in zip(module.agents, per_agent_entropy)})
        for key, value in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._minibatches += 1
        return loss

    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        """Clip by global norm like ``torch.nn.utils.clip_grad_norm_`` in the local backend (the
        gradients are the parameters' ``.grad`` tensors, clipped in place)."""
        max_norm = self._credit_module(module_id).cfg.algo.max_grad_norm
        params = [self._params[ref] for ref in module_gradients_dict]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        self._sums["losses/grad_norm"] = self._sums.get("losses/grad_norm", 0.0) + float(norm)
        return module_gradients_dict

    def after_gradient_based_update(self, *, timesteps) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():
            credit = self._credit_module(module_id).credit
            credit.updates += 1
            every = credit.cfg.algo.target_update_every
            if credit.target_critic is not None and credit.updates % every == 0:
                credit.target_critic.load_state_dict(credit.critic.state_dict())
            stats = dict(self.credit_piece.last_stats.pop(module_id, {}))
            stats.update({k: v / max(self._minibatches, 1) for k, v in self._sums.items()})
            stats["updates"] = credit.updates
            self.metrics.log_value((module_id, STATS_KEY), stats, reduce="item_series")
        self._sums, self._minibatches = {}, 0

    # -- state in the local checkpoint format ------------------------------------------------------
    def marl_state(self) -> dict:
        """``CreditLearner.state_dict()`` plus this Learner's generator (COMA draws, row shuffling)."""
        return {**self.credit.state_dict(), "learner_generator": self.marl_generator.get_state()}

    def marl_load_state(self, state: dict) -> None:
        self.credit.load_state_dict(state)
        if "learner_generator" in state:
            self.marl_generator.set_state(state["learner_generator"])
