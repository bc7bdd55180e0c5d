"""The RLlib Learner: PPO's machinery (minibatching, epochs, weight sync) with the project's
advantage piece, optimiser and loss.

- ``build`` swaps RLlib's ``GeneralAdvantageEstimation`` for ``connectors.CreditAdvantages``.
- The optimiser is the ``CreditLearner``'s own Adam (actor and critic parameter groups with
  ``algo.lr`` and ``algo.critic_lr``), so its state has the local checkpoint format.
- The loss is ``CreditLearner``'s: PPO-clip or A2C actor loss, MSE critic loss on the (normalised)
  targets, where the prediction is V of the row's agent or, for COMA, Q of the taken action, and
  the entropy bonus; with A2C the actor learns only in the first pass over the batch. Gradients
  are clipped by global norm as in the local backend.
- After each update: ``CreditLearner.after_update`` (update counter, target critic sync, the next
  learning rate), and the iteration's metrics (credit, losses, per-agent entropy) are reported
  under ``result["learners"]["shared"]["marl"]``.
"""
from __future__ import annotations

import copy

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from marl.learner import actor_critic_loss, ppo_diagnostics, weighted_mean
from marl.rllib.connectors import CreditAdvantages
from marl.rllib.module import CRITIC_PRED, WEIGHT
from marl.seeding import torch_stream

STATS_KEY = "marl"


class CreditPPOLearner(PPOTorchLearner):
    """See the module docstring."""

    def build(self) -> None:
        super().build()
        module = self._credit_module()
        self.marl_generator = torch_stream(module.cfg.seed)
        self.credit_piece = CreditAdvantages(generator=self.marl_generator,
                                             histogram_every=module.cfg.log.histogram_every)
        if self._learner_connector is not None:
            self._learner_connector.remove("GeneralAdvantageEstimation")
            self._learner_connector.append(self.credit_piece)
        self._reset_update_stats()

    def _reset_update_stats(self) -> None:
        self._stats: list[torch.Tensor] = []
        self._grad_norms: list[torch.Tensor] = []
        self._rows_seen: dict[str, int] = {}

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
        # The param groups hold algo.lr and algo.critic_lr; CreditLearner.apply_lr_schedule scales them.
        self.register_optimizer(module_id=module_id, optimizer=credit.optimizer, params=params)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        """``CreditLearner``'s minibatch loss on RLlib's rows (one per agent and step)."""
        module = self.module[module_id].unwrapped()
        a = module.cfg.algo
        # A2C's policy gradient holds only for the behaviour policy: the actor learns during the first
        # pass over the batch, the critic during all ``algo.epochs`` passes (as CreditLearner.update).
        seen = self._rows_seen.get(module_id, 0)
        train_actor = a.learner == "ppo" or seen < self.credit_piece.rows.get(module_id, 0)
        self._rows_seen[module_id] = seen + len(batch[Columns.ACTIONS])
        weight = batch.get(WEIGHT)
        actions = batch[Columns.ACTIONS] if module.continuous else batch[Columns.ACTIONS].long()
        out = actor_critic_loss(module.distribution(fwd_out[Columns.ACTION_DIST_INPUTS]), actions,
                                batch[Columns.ACTION_LOGP], batch[Postprocessing.ADVANTAGES], fwd_out[CRITIC_PRED],
                                batch[Postprocessing.VALUE_TARGETS], a, train_actor, module.credit.updates + 1, weight)
        loss, entropy, ratio, log_ratio = out["loss"], out["entropy"], out["ratio"], out["log_ratio"]
        with torch.no_grad():
            idx = module.agent_index(batch[Columns.OBS])
            w = torch.ones_like(entropy) if weight is None else weight
            counts = torch.zeros(module.n_agents).index_add_(0, idx, w.float()).clamp_min(1)
            per_agent = torch.zeros(module.n_agents).index_add_(0, idx, (entropy * w).detach().float()) / counts
            approx_kl, clip_frac = ppo_diagnostics(ratio, log_ratio, a.clip, weight)
            scalars = torch.stack([out["policy"], out["value"], weighted_mean(entropy, weight), approx_kl, clip_frac])
            self._stats.append(torch.cat([scalars.detach(), per_agent]))
        return loss

    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        """Clip by global norm like ``torch.nn.utils.clip_grad_norm_`` in the local backend (the
        gradients are the parameters' ``.grad`` tensors, clipped in place). Parameters without a
        gradient (the actor in A2C's later epochs) are left out, so the optimiser skips them."""
        max_norm = self._credit_module(module_id).cfg.algo.max_grad_norm
        grads = {ref: g for ref, g in module_gradients_dict.items() if g is not None}
        norm = torch.nn.utils.clip_grad_norm_([self._params[ref] for ref in grads],
                                              max_norm if max_norm > 0 else float("inf"))
        self._grad_norms.append(norm.detach())
        return grads

    def after_gradient_based_update(self, *, timesteps) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():
            module = self._credit_module(module_id)
            credit = module.credit
            credit.after_update()
            stats = dict(self.credit_piece.last_stats.pop(module_id, {}))
            if self._stats:
                means = torch.stack(self._stats).mean(0).tolist()
                names = (["losses/policy", "losses/value", "losses/entropy", "losses/approx_kl",
                          "losses/clip_fraction"] + [f"entropy/{agent}" for agent in module.agents])
                stats.update(zip(names, means))
                stats["losses/grad_norm"] = float(torch.stack(self._grad_norms).mean())
            stats["updates"] = credit.updates
            self.metrics.log_value((module_id, STATS_KEY), stats, reduce="item_series")
        self._reset_update_stats()

    # -- state in the local checkpoint format ------------------------------------------------------
    def marl_state(self) -> dict:
        """``CreditLearner.state_dict()`` plus this Learner's generator (COMA draws, row shuffling)."""
        return {**self.credit.state_dict(), "learner_generator": self.marl_generator.get_state()}

    def marl_load_state(self, state: dict) -> None:
        state = copy.deepcopy(state)  # in-process callers keep their tensors; Adam updates its state in place
        self.credit.load_state_dict(state)
        if "learner_generator" in state:
            self.marl_generator.set_state(state["learner_generator"])
