"""The learner: actor, critic and optimiser, and how a ``[T, B, N]`` rollout batch becomes
advantages, critic targets and one PPO/A2C update. Both backends (local and RLlib) call this same
code, so their credit is identical by construction.

An update is four phases, each a method that both backends call:

1. ``prepare``: advantages and critic targets from the configured module (no gradients);
2. ``finalise``: credit statistics, the value normaliser's update and the target and advantage
   normalisation, over the valid entries only;
3. ``optimise``: ``algo.epochs`` passes of ``algo.minibatches`` steps of ``minibatch_loss`` (the
   local backend; RLlib runs its own minibatch loop around the same loss);
4. ``after_update``: the update counter, the target critic's sync and the next learning rate.

Validity. A ``valid`` mask (bool ``[T, B, N]``) marks the entries that are real agent steps: an
agent that has left the episode (or not yet arrived) is padded, and RLlib's batches are padded to
the longest episode chunk. Padded entries take no part in any loss, statistic or normaliser.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from marl.algorithms import ADVANTAGES, CounterfactualInputs, coma_baseline, get_advantage
from marl.algorithms.turns import from_turns, own_turns
from marl.checkpoint import CheckpointError
from marl.config import Config, ConfigError
from marl.distributions import Categorical
from marl.envs.rewards import is_team_reward
from marl.networks import Actor, Critic, CriticSizes, ImageInputs, ValueNorm, critic_class
from marl.networks import build_critic as build_network


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def weighted_mean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``x`` over all entries, or over the entries ``weight`` (0/1, ``x``'s shape) marks."""
    if weight is None:
        return x.mean()
    return (x * weight).sum() / weight.sum().clamp_min(1.0)


def actor_critic_loss(dist, actions: torch.Tensor, behaviour_logp: torch.Tensor,
                      adv: torch.Tensor, value_pred: torch.Tensor, target: torch.Tensor, algo,
                      train_actor: bool, update: int, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The minibatch loss of both backends: PPO-clip (Schulman et al., 2017) or A2C policy loss,
    MSE critic loss and entropy bonus; the actor terms only when ``train_actor``.

    Rows are any leading shape ``[...]``: ``dist`` is the current policy's distribution over them
    (``marl.distributions``), ``actions`` ``[...]`` (discrete) or ``[..., A]`` (continuous), the rest
    ``[...]``. ``weight`` (0/1, ``[...]``) leaves padded rows out of every mean. Returns the loss
    and its parts (``policy``, ``value``, ``entropy`` per row, ``ratio``, ``log_ratio``).

    Raises:
        TrainingDiverged: when the loss is not finite (``update`` is named in the message).
    """
    logp = dist.log_prob(actions)
    entropy = dist.entropy()
    log_ratio = logp - behaviour_logp
    ratio = log_ratio.exp()
    if algo.learner == "ppo":
        policy_loss = -weighted_mean(torch.min(ratio * adv, ratio.clamp(1 - algo.clip, 1 + algo.clip) * adv), weight)
    else:
        policy_loss = -weighted_mean(logp * adv, weight)
    value_loss = F.mse_loss(value_pred, target) if weight is None else weighted_mean((value_pred - target) ** 2, weight)
    loss = algo.value_coef * value_loss
    if train_actor:
        loss = loss + policy_loss - algo.entropy_coef * weighted_mean(entropy, weight)
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss.item()} at update {update} (policy {policy_loss.item():.4g}, "
            f"value {value_loss.item():.4g}); try a lower algo.lr or algo.critic_lr. The last good "
            f"checkpoint is kept")
    return {"loss": loss, "policy": policy_loss, "value": value_loss, "entropy": entropy, "ratio": ratio,
            "log_ratio": log_ratio}


def ppo_diagnostics(ratio: torch.Tensor, log_ratio: torch.Tensor, clip: float,
                    weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate KL(behaviour ‖ current), estimated as ``(r - 1) - log r`` (Schulman's low-variance
    estimator), and the fraction of rows whose ratio ``r`` lies outside ``[1 - clip, 1 + clip]``
    (over the rows ``weight`` marks, when given)."""
    return (weighted_mean((ratio - 1) - log_ratio, weight),
            weighted_mean(((ratio - 1).abs() > clip).to(ratio.dtype), weight))


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one action per row of ``logits [..., A]`` (Gumbel-max, with an explicit generator)."""
    return Categorical(logits).sample(generator)


def explained_variance(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    if valid is not None:
        pred, target = pred[valid], target[valid]
    var = target.var()
    return float("nan") if not var > 0 else float(1.0 - (target - pred).var() / var)


def per_agent_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x [T, B, N]`` over time and envs, per agent ``[N]``, over the valid entries."""
    if valid is None:
        return x.mean((0, 1))
    w = valid.to(x.dtype)
    return (x * w).sum((0, 1)) / w.sum((0, 1)).clamp_min(1.0)


def per_agent_std(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Unbiased standard deviation of ``x [T, B, N]`` per agent ``[N]``, over the valid entries."""
    if valid is None:
        return x.std((0, 1))
    w = valid.to(x.dtype)
    n = w.sum((0, 1))
    centred = (x - per_agent_mean(x, valid)) * w
    return ((centred ** 2).sum((0, 1)) / (n - 1).clamp_min(1.0)).sqrt()


def encoded_images(cfg: Config, images: ImageInputs | None) -> ImageInputs:
    """The image inputs that ``model.encoder`` sends through a CNN encoder (the MLP reads the rest
    flat): all of them under ``auto`` and ``cnn``, none under ``mlp``."""
    if images is None or cfg.model.encoder == "mlp":
        return ImageInputs()
    return images


def build_actor(cfg: Config, n_agents: int, obs_dim: int, n_actions: int, action_mask: torch.Tensor,
                continuous: bool = False, images: ImageInputs | None = None) -> Actor:
    """The one place that builds the policy network of ``cfg.model`` for an env's sizes (and image
    observations, ``images``)."""
    m = cfg.model
    return Actor(n_agents, obs_dim, n_actions, action_mask, m.hidden, m.layers, m.activation, m.share_actor,
                 continuous=continuous, recurrent=m.recurrent, log_std_init=m.log_std_init,
                 encoder=encoded_images(cfg, images).obs_encoder(m.hidden))


def build_critic(cfg: Config, n_agents: int, obs_dim: int, state_dim: int, n_actions: int,
                 images: ImageInputs | None = None) -> Critic:
    """The critic of ``cfg``: the one its advantage module's critic kind needs (``algo.critic`` places
    a V critic), for an env's sizes and image inputs, with one value head for the team where the
    reward mode pays one team reward (``is_team_reward``)."""
    a, m = cfg.algo, cfg.model
    sizes = CriticSizes(n_agents, obs_dim, state_dim, n_actions)
    return build_network(get_advantage(a.advantage).critic, a.critic, sizes, is_team_reward(cfg.env.reward),
                         a.critic_obs, encoded_images(cfg, images), hidden=m.hidden, layers=m.layers,
                         activation=m.activation, recurrent=m.recurrent)


def refuse_unfit_env(cfg: Config, continuous: bool, n_actions: int, turn_based: bool = False,
                     zero_sum: bool = False, images: ImageInputs | None = None) -> None:
    """The config checks that need the env's spaces and kind (``marl.run.check_env`` runs them before a
    run directory is made; the learner again, for direct users). Raises ``ConfigError``."""
    a, e = cfg.algo, cfg.env
    env = f"env {e.id!r}"
    kind = get_advantage(a.advantage).critic
    use_v = "use a V-critic module (" + ", ".join(n for n, s in ADVANTAGES.items()
                                                if not (s.critic.over_actions or s.critic.simulates)) + ")"
    images = images or ImageInputs()
    enc = encoded_images(cfg, images)
    unencoded = (enc.obs_image is not None or enc.state_image is not None) and \
        not critic_class(kind, a.critic).encodes_images
    rules = [   # (key, refused, why and what to use instead)
        ("env.reward", zero_sum and e.reward in ("shared", "difference"),
         (f"{env} is a zero-sum game (its players' rewards sum to 0 at every step), so a team reward ({e.reward!r}) "
         f"is always 0 and there is nothing to learn; set env.reward: individual to train its players against "
         f"each other")),
        ("env.reward", turn_based and e.reward == "difference", (f"'difference' re-simulates one step, and {env} "
         f"is turn-based (a move's reward arrives over the turns that follow); use shared, individual or mixed")),
        ("algo.advantage", turn_based and kind.over_actions, (f"{a.advantage!r} values the joint action of one "
         f"step, and {env} is turn-based (one player moves per step, and its reward arrives over the turns that "
         f"follow); {use_v}")),
        ("env.default_action", e.reward == "difference" and not continuous and not e.default_action < n_actions,
         f"expected an action of {env}, an int in [0, {n_actions}), got {e.default_action!r}"),
        ("algo.advantage", continuous and (kind.over_actions or kind.simulates), (f"{a.advantage!r} is "
         f"counterfactual over a discrete action set, and {env} has continuous (Box) actions; {use_v}")),
        ("env.reward", continuous and e.reward == "difference", (f"'difference' puts a default action c_i "
         f"(env.default_action) in each agent's place, and {env} has continuous (Box) actions; use shared, "
         f"individual or mixed")),
        ("model.encoder", cfg.model.encoder == "cnn" and images.obs_image is None and images.state_image is None,
         (f"'cnn' needs image observations or an image state (a Box shaped H×W×C or C×H×W, 1-4 channels, sides "
          f"of 8 pixels or more), and {env} has neither; use auto or mlp")),
        ("algo.advantage", unencoded and kind.over_actions, (f"{a.advantage!r} has a Q critic that reads the "
         f"raw state, and {env} has images, which it cannot encode; {use_v}, or model.encoder: mlp")),
        ("algo.critic", unencoded, (f"{a.critic!r} reads the raw state beside each observation, and {env} "
         f"has images, which it cannot encode; use central or local, or model.encoder: mlp")),
    ]
    for key, refused, why in rules:
        if refused:
            raise ConfigError(f"config key '{key}': {why}")


class CreditLearner:
    """Networks and update rule for ``cfg``, sized for an env with ``agents``.

    Batches are dicts of tensors shaped ``[T, B, N, ...]`` with keys ``obs``, ``state``, ``next_obs``,
    ``next_state``, ``actions``, ``logp`` (behaviour log-probabilities), ``reward``, ``terminated``,
    ``truncated``, and optionally ``alive`` (bool ``[T, B, N]``: the agent acted at that step; absent
    means everyone always acts) and, for envs with per-step masks (``dynamic_mask``), ``avail`` and
    ``next_avail`` (bool ``[T, B, N, A]``: the legal actions at ``obs`` and ``next_obs``). See
    ``marl.rollout.Rollout``.
    """

    def __init__(self, cfg: Config, agents: list[str], obs_dim: int, state_dim: int, n_actions: int,
                 action_mask: torch.Tensor, dynamic_mask: bool = False, device: torch.device | str = "cpu",
                 continuous: bool = False, turn_based: bool = False, images: ImageInputs | None = None):
        a = cfg.algo
        self.cfg = cfg
        self.agents = list(agents)
        self.n_actions = n_actions
        self.dynamic_mask = dynamic_mask
        N = len(agents)
        self.advantage = get_advantage(a.advantage)
        self.uses_q = self.advantage.critic.over_actions   # a critic over actions (counterfactual modules)
        self.simulator = None   # the re-simulation of a re-simulating module (marl.resim)
        self.continuous = continuous
        self.turn_based = turn_based
        refuse_unfit_env(cfg, continuous, n_actions, turn_based, images=images)
        self.actor = build_actor(cfg, N, obs_dim, n_actions, action_mask, continuous, images)
        self.critic = build_critic(cfg, N, obs_dim, state_dim, n_actions, images)
        self.device = torch.device(device)
        self.actor.to(self.device)
        self.critic.to(self.device)
        if self.advantage.critic.simulates:
            from marl.resim import Resimulator
            self.simulator = Resimulator(cfg, self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False) if a.target_update_every else None
        team_head = self.critic.team_value   # one V(s) for the team (shared reward)
        # One column of value statistics per critic head: a team head has one (the team's return).
        self.value_norm = ValueNorm(self.critic.value_heads).to(self.device)
        self.optimizer = torch.optim.Adam([
            {"params": self.actor.parameters(), "lr": a.lr},
            {"params": self.critic.parameters(), "lr": a.critic_lr},
        ], eps=1e-5, fused=True)
        self.updates = 0
        self.last_advantage: list[torch.Tensor] | None = None   # per agent, the valid advantages of the last update
        self.critic_h_final: torch.Tensor | None = None   # a recurrent critic's hidden after the last rollout
        self.critic_hidden: torch.Tensor | None = None    # where the next rollout's critic starts (None: zeros)
        # A team value head learns the team's return, which an agent's departure does not end (see
        # _team_returns); per-agent reward streams (episodic payouts, learned redistributions) end
        # where their agent leaves.
        self.team_returns = team_head and not cfg.env.episodic_reward and a.redistribution == "none"

    def credit_values(self) -> list[torch.Tensor] | None:
        """Per agent, the valid advantages of the last update (None before the first)."""
        return self.last_advantage

    def state_dict(self) -> dict:
        state = {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                 "value_norm": self.value_norm.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "updates": self.updates, "value_heads": self.critic.value_heads}
        if self.target_critic is not None:
            state["target_critic"] = self.target_critic.state_dict()
        if self.critic_hidden is not None:
            state["critic_hidden"] = self.critic_hidden.cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load ``state_dict``'s output. A checkpoint written before the head count was stored
        (no ``value_heads``) loads where its tensors fit.

        Raises:
            CheckpointError: when its critic has another number of value heads than this one's.
        """
        heads = state.get("value_heads", self.critic.value_heads)
        if heads != self.critic.value_heads:
            raise CheckpointError(f"the checkpoint's critic has {heads} value head(s) and env.reward "
                                  f"{self.cfg.env.reward!r} with {len(self.agents)} agents asks for "
                                  f"{self.critic.value_heads} (one per reward column); resume with the reward "
                                  f"mode it was trained with")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.target_critic is not None:
            self.target_critic.load_state_dict(state["target_critic"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.optimizer.load_state_dict(state["optimizer"])
        hidden = state.get("critic_hidden")
        self.critic_hidden = hidden.to(self.device) if hidden is not None and self.critic.recurrent else None
        self.updates = int(state["updates"])
        self.apply_lr_schedule()

    def apply_lr_schedule(self) -> None:
        """Set the optimiser's learning rates for update number ``updates + 1``: the configured rates,
        or with ``algo.lr_schedule: linear`` those rates times ``1 - updates / cfg.total_iterations``
        (one update per iteration)."""
        a = self.cfg.algo
        scale = 1.0 if a.lr_schedule == "constant" else max(0.0, 1.0 - self.updates / self.cfg.total_iterations)
        for group, base in zip(self.optimizer.param_groups, (a.lr, a.critic_lr)):
            group["lr"] = base * scale

    # -- inputs -----------------------------------------------------------------------------------
    def _to_return_space(self, x: torch.Tensor, per_action: bool = False) -> torch.Tensor:
        """Critic output (normalised when ``algo.normalize_value``) in return units: values
        ``[..., N]``, or with ``per_action`` Q values ``[..., N, A]``."""
        if not self.cfg.algo.normalize_value:
            return x
        if per_action:
            return self.value_norm.denormalize(x.transpose(-1, -2)).transpose(-1, -2)
        return self.value_norm.denormalize(x)

    def critic_input(self, state: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor | None = None,
                     alive: torch.Tensor | None = None):
        """What the critic reads (its own ``inputs``; see ``marl.networks.Critic``)."""
        return self.critic.inputs(state, obs, actions, alive)

    def _avail(self, b: dict, key: str = "avail") -> torch.Tensor | None:
        """The batch's per-step legal actions ``b[key]``, or None where they add nothing to the
        actor's static ``action_mask`` (no per-step masks, or none in this batch): the fast path,
        with the same logits."""
        if not self.dynamic_mask:
            return None
        avail = b[key]
        return None if bool((avail == self.actor.action_mask).all()) else avail

    @staticmethod
    def valid_mask(b: dict) -> torch.Tensor | None:
        """The batch's ``alive`` mask, or None when every agent acts at every step (the fast path)."""
        alive = b.get("alive")
        return None if alive is None or bool(alive.all()) else alive

    # -- phase 1: advantages and targets -----------------------------------------------------------
    def prepare(self, b: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Advantages, critic targets and credit diagnostics for a rollout, all ``[T, B, N]``, from
        the current networks (no gradients). ``generator`` draws the counterfactual modules'
        bootstrap actions, and Shapley's orderings and re-sampled actions.

        A padded entry (``alive`` False) is treated as a terminated step of its own, so that no
        advantage or target of a real step reads it. With a turn-based env (``turn_based``) the
        advantages run over each agent's own turns instead (``_turn_credit``), and ``valid`` in the
        result is the mask the losses use. A recurrent critic runs over the rollout from
        ``b["critic_h0"]`` (zeros if absent), reset at ``b["first"]``; its hiddens are returned
        (``critic_starts`` ``[T, B, rows, H]``, and ``critic_h_final``, where the next rollout's
        critic starts)."""
        a = self.cfg.algo
        valid = self.valid_mask(b)
        terminated = b["terminated"] if valid is None else b["terminated"] | ~valid
        with torch.no_grad():
            if not self.uses_q:
                critic_in = self.critic_input(b["state"], b["obs"])
                next_in = self.critic_input(b["next_state"], b["next_obs"])
                out, ends, prep = self._critic_pass(self.critic, critic_in, b)
                value = self._to_return_space(out)
                next_out = self.critic(next_in) if ends is None else self.critic.step(next_in, ends)[0]
                next_value = self._to_return_space(next_out)
                if self.turn_based:
                    return {**prep, **self._turn_credit(b, value, next_value), "value": value, "critic_in": critic_in}
                if self.simulator is not None:
                    _, target = self.advantage.critic.targets(b["reward"], value, next_value, terminated,
                                                              b["truncated"], **self.advantage.kwargs(a))
                    adv = self._resim_credit(b, generator)
                elif valid is not None and self.team_returns:
                    adv, target = self._team_returns(b, value, next_value, valid)
                else:
                    adv, target = self.advantage.fn(b["reward"], value, next_value, terminated, b["truncated"],
                                                    **self.advantage.kwargs(a))
                return {**prep, "adv": adv, "target": target, "value": value, "critic_in": critic_in}
            return self._prepare_q(b, generator, valid, terminated)

    def _resim_credit(self, b: dict, generator: torch.Generator) -> torch.Tensor:
        """``resim``: COMA's counterfactual advantage ``[T, B, N]`` from re-simulated returns
        (``marl.resim``), with π the current actor's softmax over the legal actions (as the oracle's)."""
        avail = b["avail"].bool()
        logits = self.actor(b["obs"], self._avail(b)).masked_fill(~avail, float("-inf"))
        probs = torch.softmax(logits.double(), -1)
        returns = self.simulator.returns(b, self.actor, generator).to(probs.device)
        return self.advantage.fn(returns, probs, b["actions"]).to(b["reward"].dtype)

    def _team_returns(self, b: dict, value: torch.Tensor, next_value: torch.Tensor, valid: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantages and targets ``[T, B, N]`` of a team value head when agents come and go: one
        return for the team, which goes on while any agent is present, so an agent's departure is no
        end for V(s) (its last action is scored by the team's return after it, as the shared reward
        asks); the team's episode ends by truncation if a present agent was truncated, else by
        termination. Each present agent gets the team's advantage; absent ones get 0."""
        ended = b["terminated"] | b["truncated"] | ~valid
        team_end = ended.all(-1, keepdim=True)
        truncated = team_end & (b["truncated"] & valid).any(-1, keepdim=True)
        count = valid.sum(-1, keepdim=True)
        reward = torch.where(valid, b["reward"], 0.0).sum(-1, keepdim=True) / count.clamp_min(1)
        terminated = (team_end & ~truncated) | (count == 0)
        adv, target = self.advantage.fn(reward, value[..., :1], next_value[..., :1], terminated, truncated,
                                        **self.advantage.kwargs(self.cfg.algo))
        return torch.where(valid, adv, 0.0), target.expand_as(valid)

    def _turn_credit(self, b: dict, value: torch.Tensor, next_value: torch.Tensor) -> dict[str, torch.Tensor]:
        """A turn-based rollout's advantages and targets over each agent's own turns
        (``marl.algorithms.turns``), at the rows where it moved; ``valid`` marks the moves whose turn
        is complete, the entries every loss and statistic reads."""
        turns = own_turns(b["reward"], value, next_value, b["terminated"], b["truncated"], b["alive"], b["first"])
        adv, target = self.advantage.fn(turns.reward, turns.value, turns.next_value, turns.terminated,
                                        turns.truncated, **self.advantage.kwargs(self.cfg.algo))
        return {"adv": from_turns(adv, turns.order), "target": from_turns(target, turns.order),
                "valid": from_turns(turns.complete, turns.order)}

    def _critic_pass(self, critic: Critic, critic_in: torch.Tensor, b: dict
                     ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """``critic`` over the rollout's inputs: its outputs, the hiddens after each step (None for a
        feed-forward critic) and, for the online critic, the hiddens to keep (see ``prepare``)."""
        if not critic.recurrent:
            return critic(critic_in), None, {}
        h0 = b.get("critic_h0")
        if h0 is None:
            h0 = critic.initial_hidden(critic_in.shape[1], device=critic_in.device)
        out, starts, ends = critic.unroll(critic_in, h0, b["first"])
        keep = {"critic_starts": starts, "critic_h_final": ends[-1]} if critic is self.critic else {}
        return out, ends, keep

    def _policy_outputs(self, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's ``dist_inputs`` at ``obs`` and at ``next_obs``, ``[T, B, N, A]``: a recurrent
        actor steps from the hiddens stored at collection (``actor_h``)."""
        avail, next_avail = self._avail(b), self._avail(b, "next_avail")
        if not self.actor.recurrent:
            return self.actor(b["obs"], avail), self.actor(b["next_obs"], next_avail)
        out, after = self.actor.step(b["obs"], avail, b["actor_h"])
        return out, self.actor.step(b["next_obs"], next_avail, after)[0]

    def _prepare_q(self, b: dict[str, torch.Tensor], generator: torch.Generator, valid: torch.Tensor | None,
                   terminated: torch.Tensor) -> dict[str, torch.Tensor]:
        """The counterfactual modules (COMA, COMA-λ, Shapley, DOP): a critic over actions, trained on its
        kind's targets (TD(λ)) of the taken joint action's value (COMA's Q(s, u), or DOP's Q_tot); the
        module's function reads ``CounterfactualInputs`` (``marl.algorithms.registry``)."""
        a = self.cfg.algo
        if valid is not None and self.critic.mixed:
            b = self._absent_filled(b, valid)
        actions = b["actions"]
        critic = self.target_critic if self.target_critic is not None else self.critic
        critic_in = self.critic_input(b["state"], b["obs"], actions, valid)
        out, ends, prep = self._critic_pass(self.critic, critic_in, b)
        q_taken = self._to_return_space(self.critic.prediction(out, critic_in, actions))
        # The next joint action: the one taken at t+1 inside an episode; drawn from the policy where
        # the rollout was cut (truncation or rollout end), since no action was taken there. The
        # episode goes on while some agent neither ended nor is absent.
        ended = b["terminated"] | b["truncated"]
        ended = (ended if valid is None else ended | ~valid).all(-1, keepdim=True)
        continues = torch.zeros_like(ended)
        continues[:-1] = ~ended[:-1]
        logits, next_logits = self._policy_outputs(b)
        # An agent that left at t (or has not arrived at t+1) took no action at t+1 either: its
        # own bootstrap uses a drawn action, and it is absent from the others' next inputs.
        drawn = sample_actions(next_logits, generator)
        following = torch.cat([actions[1:], actions[-1:]])
        next_obs = b["next_obs"]
        if valid is None:
            next_actions, next_alive = torch.where(continues, following, drawn), None
        else:
            arrives = torch.cat([valid[1:], valid[-1:]])
            next_actions = torch.where(continues & arrives, following, drawn)
            next_alive = torch.where(continues, arrives, valid)
            if self.critic.mixed:   # DOP: as for the taken actions (see _absent_filled)
                next_actions = torch.where(next_alive, next_actions, 0)
                next_obs = next_obs * next_alive.unsqueeze(-1).to(next_obs.dtype)
        next_in = self.critic_input(b["next_state"], next_obs, next_actions, next_alive)
        if critic is not self.critic:
            target_out, target_ends, _ = self._critic_pass(critic, critic_in, b)
            q_taken_target = self._to_return_space(critic.prediction(target_out, critic_in, actions))
        else:
            target_ends, q_taken_target = ends, q_taken
        next_out = critic(next_in) if target_ends is None else critic.step(next_in, target_ends)[0]
        next_q = self._to_return_space(critic.prediction(next_out, next_in, next_actions))
        _, target = self.advantage.critic.targets(b["reward"], q_taken_target, next_q, terminated, b["truncated"],
                                                  **self.advantage.kwargs(a))
        avail = self._avail(b)
        avail = self.actor.action_mask if avail is None else avail
        inputs = CounterfactualInputs(returns=target, q_all=out, logits=logits, actions=actions, avail=avail,
                                      state=b["state"], obs=b["obs"] if a.critic_obs else None, generator=generator,
                                      coalition_q=self._coalition_q(b["state"].shape[-1], valid, prep),
                                      q_taken=q_taken)
        extra = {}
        if self.critic.mixed:   # DOP: utilities stay in the critic's units; the weights carry the scale
            k, _ = self.critic.mix(critic_in)
            inputs.weights = k * self._value_scale()
        else:
            inputs.q_all = self._to_return_space(out, per_action=True)
            extra["coma_baseline"] = coma_baseline(inputs.q_all, logits, avail)
        adv = self.advantage.fn(inputs, **self.advantage.fn_kwargs(a))
        if valid is not None:   # a padded entry gets no credit (and no loss: finalise and the loss skip it)
            adv = torch.where(valid, adv, 0.0)
        return {**prep, **extra, "adv": adv, "target": target, "value": q_taken, "critic_in": critic_in}

    @staticmethod
    def _absent_filled(b: dict, valid: torch.Tensor) -> dict:
        """DOP with agents that leave or arrive: ``b`` with each absent agent's action set to 0 and its
        observation to zeros, so that its term ``k_j(s) Q_j(s, u_j)`` of Q_tot depends on the state
        alone and joins the state bias ``b(s)`` (the same family of Q_tot, so no present agent's
        advantage changes); nothing padded is read."""
        return {**b, "actions": torch.where(valid, b["actions"], 0),
                "obs": b["obs"] * valid.unsqueeze(-1).to(b["obs"].dtype)}

    def _coalition_q(self, state_dim: int, valid: torch.Tensor | None, prep: dict):
        """Shapley's critic on coalition rows ``x [T, B, M, N, D]`` (``shapley_critic_inputs``), in
        return units. An absent agent joins no coalition: its action block is zeroed in every row, as
        in the critic's own input (``QCritic.inputs``). A recurrent critic steps each row from the
        hidden state the rollout's own inputs left at that step: the counterfactual changes the
        other agents' actions at step t only, as COMA's does."""
        critic = self.critic
        keep = None
        if valid is not None:
            T, B, _ = valid.shape
            present = valid.to(torch.float32).repeat_interleave(self.n_actions, -1)          # [T, B, N * A]
            keep = torch.cat([present.new_ones(T, B, state_dim), present], -1)[:, :, None, None, :]

        def q(x: torch.Tensor) -> torch.Tensor:
            if keep is not None:   # the layout [state, N x A action one-hots, ...]: mask the action blocks
                width = keep.shape[-1]
                x = torch.cat([x[..., :width] * keep.to(x.dtype), x[..., width:]], -1)
            if critic.recurrent:
                h = prep["critic_starts"].unsqueeze(2).expand(*x.shape[:-1], critic.hidden_size)
                out = critic.step(x, h)[0]
            else:
                out = critic(x)
            return self._to_return_space(out, per_action=True)

        return q

    def _value_scale(self) -> torch.Tensor | float:
        """Return units per critic unit (the value normaliser's standard deviation, or 1)."""
        if not self.cfg.algo.normalize_value:
            return 1.0
        return (self.value_norm.var + self.value_norm.eps).sqrt().to(torch.float32)

    # -- phase 2: statistics and normalisation -----------------------------------------------------
    def finalise(self, prep: dict[str, torch.Tensor], valid: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Credit statistics of ``prep`` (from ``prepare``), then the value normaliser's update and
        the normalised targets and advantages, all over the ``valid`` entries (``[T, B, N]``; None:
        all). Returns ``(advantage, target, metrics)``, the first two as the loss uses them."""
        a = self.cfg.algo
        adv, target = prep["adv"], prep["target"]
        metrics = self._credit_metrics(adv, valid)
        if "coma_baseline" in prep:
            gap, baseline = per_agent_mean(adv, valid), per_agent_mean(prep["coma_baseline"], valid)
            for i, ag in enumerate(self.agents):
                metrics[f"coma/gap/{ag}"] = float(gap[i])
                metrics[f"coma/baseline/{ag}"] = float(baseline[i])
        metrics["explained_variance"] = explained_variance(prep["value"], target, valid)
        value_error = per_agent_mean((prep["value"] - target) ** 2, valid)
        metrics.update({f"value_error/{ag}": float(value_error[i]) for i, ag in enumerate(self.agents)})
        self.last_advantage = [adv[..., i] if valid is None else adv[..., i][valid[..., i]]
                               for i in range(len(self.agents))]
        if a.normalize_value:
            self.update_value_norm(target, valid)
            target = self.value_norm.normalize(target)
        if a.normalize_advantage:
            if valid is None:
                adv = (adv - adv.mean((0, 1))) / (adv.std((0, 1)) + 1e-8)
            else:
                adv = (adv - per_agent_mean(adv, valid)) / (per_agent_std(adv, valid) + 1e-8)
        return adv, target, metrics

    def update_value_norm(self, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Fold the value targets ``[T, B, N]`` (over the ``valid`` entries) into the value
        normaliser. A team head's one column sees the team's target wherever the team is present
        (the same for every agent there), or, where its targets are per agent (episodic payouts,
        learned redistributions), every valid agent's target."""
        if self.value_norm.mean.numel() == target.shape[-1]:
            self.value_norm.update(target, valid)
        elif self.team_returns:
            self.value_norm.update(target[..., :1], None if valid is None else valid.any(-1, keepdim=True))
        else:
            self.value_norm.update(target.unsqueeze(-1), None if valid is None else valid.unsqueeze(-1))

    def _credit_metrics(self, adv: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
        """Per-agent advantage statistics before normalisation: who got how much credit."""
        abs_mean = per_agent_mean(adv.abs(), valid)
        share = abs_mean / abs_mean.sum().clamp_min(1e-12)
        mean, std = per_agent_mean(adv, valid), per_agent_std(adv, valid)
        out = {}
        for i, ag in enumerate(self.agents):
            out[f"credit/adv_mean/{ag}"] = float(mean[i])
            out[f"credit/adv_std/{ag}"] = float(std[i])
            out[f"credit/abs_adv/{ag}"] = float(abs_mean[i])
            out[f"credit/share/{ag}"] = float(share[i])
        return out

    # -- phase 3: optimisation (local backend) -----------------------------------------------------
    def optimise(self, b: dict[str, torch.Tensor], prep: dict[str, torch.Tensor], adv: torch.Tensor,
                 target: torch.Tensor, generator: torch.Generator, valid: torch.Tensor | None = None) -> dict:
        """``algo.epochs`` passes of ``algo.minibatches`` PPO/A2C steps (near-equal parts of the shuffled
        rows, at most one per row) over the batch ``b``, with the
        advantages and targets from ``finalise``. Returns the loss diagnostics. Recurrent networks
        train by truncated back-propagation through time over chunks of ``model.chunk_length``
        steps, each starting from the hidden state stored at collection (the actor's) or computed
        by ``prepare`` (the critic's), so PPO's ratio compares the same policy."""
        a = self.cfg.algo
        if valid is not None and self.critic.mixed:   # DOP's Q_tot reads the actions prepare read
            b = self._absent_filled(b, valid)
        rows = {"critic_in": prep["critic_in"], "actions": b["actions"], "logp": b["logp"], "adv": adv,
                "target": target}
        if self._avail(b) is not None:
            rows["avail"] = b["avail"]
        if valid is not None:
            rows["weight"] = valid.to(adv.dtype)
        if self.actor.recurrent or self.critic.recurrent:
            items, starts = self._chunks(b, prep, rows)
        else:
            rows["actor_in"] = self.actor.inputs(b["obs"])
            items = {k: v.reshape(-1, *v.shape[2:]) for k, v in rows.items()}   # [T * B, ...]
            starts = {}
        count = next(iter(items.values())).shape[0]
        parts = min(a.minibatches, count)
        bounds = [part * count // parts for part in range(parts + 1)]   # near-equal parts, in order
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        steps = []
        for epoch in range(a.epochs):
            # A2C's policy gradient is only valid for the behaviour policy: one actor pass, while the
            # critic keeps fitting its targets for all epochs (like COMA's repeated critic training).
            train_actor = a.learner == "ppo" or epoch == 0
            perm = torch.randperm(count, generator=generator, device=adv.device)
            # index_select (4x faster than v[perm] here), so that minibatches are contiguous views
            shuffled = {k: v.index_select(0, perm) for k, v in {**items, **starts}.items()}
            for start, stop in zip(bounds[:-1], bounds[1:]):
                mb = {k: v[start:stop] for k, v in shuffled.items()}
                steps.append(self._minibatch_step(mb, params, train_actor))
        return self._minibatch_metrics(steps)

    def _chunks(self, b: dict, prep: dict, rows: dict) -> tuple[dict, dict]:
        """The rollout cut into ``C = (T / L) * B`` chunks of ``L = model.chunk_length`` steps:
        ``[C, L, ...]`` per key, and each chunk's starting hiddens ``[C, ...]``."""
        T, B = b["first"].shape
        L = self.cfg.model.chunk_length
        rows = {**rows, "obs": b["obs"], "first": b["first"]}

        def chunked(x):   # [T, B, ...] -> [(T / L) * B, L, ...]
            x = x.reshape(T // L, L, B, *x.shape[2:]).transpose(1, 2)
            return x.reshape(T // L * B, L, *x.shape[3:])

        def chunk_starts(x):   # [T, B, ...] -> the first step of each chunk, [(T / L) * B, ...]
            return x.reshape(T // L, L, B, *x.shape[2:])[:, 0].reshape(T // L * B, *x.shape[2:])

        starts = {}
        if self.actor.recurrent:
            starts["actor_h0"] = chunk_starts(b["actor_h"])
        if self.critic.recurrent:
            starts["critic_h0"] = chunk_starts(prep["critic_starts"])
        return {k: chunked(v) for k, v in rows.items()}, starts

    def _minibatch_step(self, mb: dict, params: list, train_actor: bool = True) -> dict[str, torch.Tensor]:
        """One optimiser step on minibatch ``mb`` (rows ``[M, ...]``, or chunks ``[M, L, ...]`` for
        recurrent networks); returns the loss parts (detached, per row) and the gradient norm for
        ``_minibatch_metrics``."""
        a = self.cfg.algo
        if "first" in mb:   # chunks, time-major for the unroll
            mb = {k: v.transpose(0, 1) if k not in ("actor_h0", "critic_h0") else v for k, v in mb.items()}
            actor_out = self.actor.unroll(mb["obs"], mb.get("avail"), mb.get("actor_h0"), mb["first"])
            critic_out = self.critic.unroll(mb["critic_in"], mb["critic_h0"], mb["first"])[0] \
                if self.critic.recurrent else self.critic(mb["critic_in"])
        else:
            actor_out = self.actor.logits(mb["actor_in"], mb.get("avail"))
            critic_out = self.critic(mb["critic_in"])
        weight = mb.get("weight")
        out = actor_critic_loss(self.actor.distribution(actor_out), mb["actions"], mb["logp"], mb["adv"],
                                self.critic.prediction(critic_out, mb["critic_in"], mb["actions"]), mb["target"], a,
                                train_actor,
                                self.updates + 1, weight)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        max_norm = a.max_grad_norm if a.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        n = len(self.agents)
        step = {"policy": out["policy"].detach(), "value": out["value"].detach(), "grad_norm": grad_norm,
                "entropy": out["entropy"].detach().reshape(-1, n), "ratio": out["ratio"].detach().reshape(-1, n),
                "log_ratio": out["log_ratio"].detach().reshape(-1, n)}
        if weight is not None:
            step["weight"] = weight.reshape(-1, n)
        return step

    def _minibatch_metrics(self, steps: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """The update's loss diagnostics, reduced once after all minibatch steps (cheaper than per
        step): losses and gradient norms averaged over the steps; entropy, approximate KL and clip
        fraction averaged over every (valid) row the steps saw (the same as averaging over steps
        when the minibatches are of equal size)."""
        with torch.no_grad():
            scalars = torch.stack([torch.stack([s[k] for s in steps]).mean() for k in ("policy", "value", "grad_norm")])
            entropy, ratio, log_ratio = (torch.cat([s[k] for s in steps]) for k in ("entropy", "ratio", "log_ratio"))
            weight = torch.cat([s["weight"] for s in steps]) if "weight" in steps[0] else None
            approx_kl, clip_frac = ppo_diagnostics(ratio, log_ratio, self.cfg.algo.clip, weight)
            if weight is None:
                agent_entropy = entropy.mean(0)
            else:
                agent_entropy = (entropy * weight).sum(0) / weight.sum(0).clamp_min(1.0)
            values = torch.cat([scalars, torch.stack([weighted_mean(entropy, weight), approx_kl, clip_frac]),
                                agent_entropy])
        names = (["losses/policy", "losses/value", "losses/grad_norm", "losses/entropy", "losses/approx_kl",
                  "losses/clip_fraction"] + [f"entropy/{ag}" for ag in self.agents])
        return dict(zip(names, values.tolist()))

    # -- phase 4: bookkeeping ----------------------------------------------------------------------
    def after_update(self) -> None:
        """Count the update, sync the target critic every ``algo.target_update_every`` updates, and
        set the learning rates of the next update."""
        self.updates += 1
        every = self.cfg.algo.target_update_every
        if self.target_critic is not None and self.updates % every == 0:
            self.target_critic.load_state_dict(self.critic.state_dict())
        self.apply_lr_schedule()

    def update(self, b: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        """One update on rollout ``b``: the four phases (see the module docstring). Returns metrics
        (per-agent credit statistics included). A recurrent critic runs over the rollout from where
        it stopped at the end of the last one (``critic_hidden``; zeros at first), so rollouts
        collected back to back continue its hidden state."""
        if self.critic_hidden is not None and "critic_h0" not in b:
            b = {**b, "critic_h0": self.critic_hidden}
        prep = self.prepare(b, generator)
        valid = prep.get("valid", self.valid_mask(b))
        self.critic_h_final = prep.get("critic_h_final")
        if self.critic.recurrent:
            self.critic_hidden = self.critic_h_final
        adv, target, metrics = self.finalise(prep, valid)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.simulator is not None:
            metrics.update({f"resim/{k}": v for k, v in self.simulator.last.items()})
        metrics.update(self.optimise(b, prep, adv, target, generator, valid))
        self.after_update()
        return metrics
