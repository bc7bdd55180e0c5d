"""The local backend: centralised training with decentralised execution in one process.

One iteration = collect ``T = algo.rollout_steps`` steps from each of ``B = env.num_envs`` envs
(batched policy inference over envs and agents), compute advantages with the configured module
from ``algorithms/``, then update actor and critic with PPO-clip or A2C.

Every iteration starts fresh episodes, reset with seeds derived from ``(seed, iteration)``, so a
checkpoint taken between iterations captures the whole state of a run and resuming reproduces
an uninterrupted run exactly. An episode longer than the rollout is cut there and bootstrapped.
"""
from __future__ import annotations

import copy
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from algorithms import coma_baseline, coma_critic_inputs, get_advantage, td_lambda
from envs import RewardSpec, make_vector_env
from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from marl.config import Config
from marl.logger import RunLogger, truncate_metrics
from marl.networks import Actor, CentralCritic, LocalCritic, QCritic, ValueNorm


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was written at the last iteration boundary."""


@dataclass
class Rollout:
    """Time-major rollout storage, ``[T, B, N, ...]``, as numpy arrays preallocated once."""

    obs: np.ndarray
    state: np.ndarray
    next_obs: np.ndarray
    next_state: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    raw_reward: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    @classmethod
    def allocate(cls, T, B, N, obs_dim, state_dim):
        f32 = np.float32
        return cls(obs=np.zeros((T, B, N, obs_dim), f32), state=np.zeros((T, B, state_dim), f32),
                   next_obs=np.zeros((T, B, N, obs_dim), f32), next_state=np.zeros((T, B, state_dim), f32),
                   actions=np.zeros((T, B, N), np.int64), logp=np.zeros((T, B, N), f32),
                   raw_reward=np.zeros((T, B, N), f32), reward=np.zeros((T, B, N), f32),
                   terminated=np.zeros((T, B, N), bool), truncated=np.zeros((T, B, N), bool))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in vars(self).items()}


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one action per row of ``logits [..., A]`` (Gumbel-max, with an explicit generator)."""
    u = torch.rand(logits.shape, generator=generator).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1.0 - (target - pred).var() / var)


class Trainer:
    """Builds envs and networks from a ``Config`` and trains them; see the module docstring."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        torch.set_num_threads(1)
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        e, a, m = cfg.env, cfg.algo, cfg.model
        self.advantage = get_advantage(a.advantage)
        self.venv = make_vector_env(e.id, e.kwargs, e.num_envs,
                                    RewardSpec(e.reward, e.team_reward, e.alpha, e.shaping, a.gamma), e.workers)
        v = self.venv
        self.agents, N = list(v.agents), v.n_agents
        mask = torch.from_numpy(v.action_mask)
        self.actor = Actor(N, v.obs_dim, v.n_actions, mask, m.hidden, m.layers, m.activation, m.share_actor)
        self.uses_q = self.advantage.critic == "q"
        if self.uses_q:
            in_dim = v.state_dim + N * v.n_actions + N + (v.obs_dim if a.critic_obs else 0)
            self.critic = QCritic(in_dim, v.n_actions, m.hidden, m.layers, m.activation)
        elif a.critic == "central":
            self.critic = CentralCritic(N, v.state_dim, m.hidden, m.layers, m.activation,
                                        team_value=e.reward == "shared")
        else:
            self.critic = LocalCritic(N, v.obs_dim, m.hidden, m.layers, m.activation)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False) if a.target_update_every else None
        self.value_norm = ValueNorm(N)
        self.optimizer = torch.optim.Adam([
            {"params": self.actor.parameters(), "lr": a.lr},
            {"params": self.critic.parameters(), "lr": a.critic_lr},
        ], eps=1e-5)
        self.rollout = Rollout.allocate(a.rollout_steps, e.num_envs, N, v.obs_dim, v.state_dim)
        self.iteration = 0
        self.env_steps = 0
        self.logger: RunLogger | None = None
        self._stop_requested = False
        self._has_true_credit: bool | None = None
        self._last_advantage: torch.Tensor | None = None

    # -- persistence ------------------------------------------------------------------------------
    @property
    def steps_per_iteration(self) -> int:
        return self.cfg.algo.rollout_steps * self.cfg.env.num_envs

    @property
    def total_iterations(self) -> int:
        return math.ceil(self.cfg.train.total_env_steps / self.steps_per_iteration)

    def state_dict(self) -> dict:
        state = {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "value_norm": self.value_norm.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration, "env_steps": self.env_steps,
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "agents": self.agents}
        if self.target_critic is not None:
            state["target_critic"] = self.target_critic.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.target_critic is not None:
            self.target_critic.load_state_dict(state["target_critic"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        return save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())

    def restore(self) -> None:
        """Load the run directory's checkpoint and trim logs written after it."""
        self.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT_NAME))
        truncate_metrics(self.run_dir, self.iteration)

    # -- collection -------------------------------------------------------------------------------
    def collect(self) -> list[dict]:
        """Fill ``self.rollout`` with T steps from each env; returns the finished episodes."""
        buf, T = self.rollout, self.cfg.algo.rollout_steps
        seeds = np.random.SeedSequence([self.cfg.seed, self.iteration]).generate_state(self.cfg.env.num_envs)
        obs, state = self.venv.reset(seeds)
        episodes = []
        for t in range(T):
            buf.obs[t], buf.state[t] = obs, state
            with torch.no_grad():
                logits = self.actor(torch.from_numpy(obs))
                actions = sample_actions(logits, self.generator)
                logp = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            step = self.venv.step(actions.numpy())
            buf.actions[t], buf.logp[t] = actions.numpy(), logp.numpy()
            buf.next_obs[t], buf.next_state[t] = step.next_obs, step.next_state
            buf.raw_reward[t], buf.reward[t] = step.raw_reward, step.reward
            buf.terminated[t], buf.truncated[t] = step.terminated, step.truncated
            episodes.extend(step.episodes)
            obs, state = step.obs, step.state
        return episodes

    # -- update -----------------------------------------------------------------------------------
    def _to_return_space(self, x: torch.Tensor) -> torch.Tensor:
        """Critic output (normalised when ``algo.normalize_value``) in return units; values are
        ``[..., N]`` and Q values ``[..., N, A]``."""
        if not self.cfg.algo.normalize_value:
            return x
        return self.value_norm.denormalize(x.transpose(-1, -2)).transpose(-1, -2) if self.uses_q \
            else self.value_norm.denormalize(x)

    def critic_input(self, state: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor | None = None):
        """What the critic reads: the state (central V), the observations (local V) or, for a Q
        critic, the per-agent counterfactual inputs built from state and joint actions."""
        if self.uses_q:
            onehot = F.one_hot(actions, self.venv.n_actions).to(state.dtype)
            return coma_critic_inputs(state, onehot, obs if self.cfg.algo.critic_obs else None)
        return state if self.cfg.algo.critic == "central" else obs

    def prepare(self, b: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Advantages, critic targets and credit diagnostics for a rollout, all ``[T, B, N]``, from
        the current networks (no gradients). ``generator`` draws COMA's bootstrap actions (default:
        the trainer's own)."""
        a = self.cfg.algo
        with torch.no_grad():
            if not self.uses_q:
                critic_in = self.critic_input(b["state"], b["obs"])
                value = self._to_return_space(self.critic(critic_in))
                next_value = self._to_return_space(self.critic(self.critic_input(b["next_state"], b["next_obs"])))
                adv, target = self.advantage.fn(b["reward"], value, next_value, b["terminated"], b["truncated"],
                                                **self.advantage.kwargs(a))
                return {"adv": adv, "target": target, "value": value, "critic_in": critic_in}
            return self._prepare_q(b, generator or self.generator)

    def _prepare_q(self, b: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """COMA: Q of every action of each agent in one critic pass; the critic learns TD(λ) targets
        of the taken joint action; the advantage is Q_taken minus the policy-weighted baseline."""
        a = self.cfg.algo
        actions = b["actions"]
        critic = self.target_critic if self.target_critic is not None else self.critic
        critic_in = self.critic_input(b["state"], b["obs"], actions)
        q_all = self._to_return_space(self.critic(critic_in))
        q_taken = q_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        # The next joint action: the one taken at t+1 inside an episode; drawn from the policy where
        # the rollout was cut (truncation or rollout end), since no action was taken there.
        ended = (b["terminated"] | b["truncated"]).any(-1, keepdim=True)
        continues = torch.zeros_like(ended)
        continues[:-1] = ~ended[:-1]
        drawn = sample_actions(self.actor(b["next_obs"]), generator)
        following = torch.cat([actions[1:], actions[-1:]])
        next_actions = torch.where(continues, following, drawn)
        next_in = self.critic_input(b["next_state"], b["next_obs"], next_actions)
        next_q = self._to_return_space(critic(next_in)).gather(-1, next_actions.unsqueeze(-1)).squeeze(-1)
        if critic is not self.critic:
            q_taken_target = self._to_return_space(critic(critic_in)).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        else:
            q_taken_target = q_taken
        _, target = td_lambda(b["reward"], q_taken_target, next_q, b["terminated"], b["truncated"],
                              gamma=a.gamma, lam=a.lam)
        logits = self.actor(b["obs"])
        baseline = coma_baseline(q_all, logits, self.actor.action_mask)
        adv = self.advantage.fn(q_all, logits, actions, self.actor.action_mask)
        return {"adv": adv, "target": target, "value": q_taken, "critic_in": critic_in,
                "coma_baseline": baseline}

    def _critic_prediction(self, critic_in: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        out = self.critic(critic_in)
        return out.gather(-1, actions.unsqueeze(-1)).squeeze(-1) if self.uses_q else out

    def update(self) -> dict:
        a = self.cfg.algo
        b = self.rollout.tensors()
        prep = self.prepare(b)
        adv, target = prep["adv"], prep["target"]
        metrics = self._credit_metrics(adv)
        if "coma_baseline" in prep:
            for i, ag in enumerate(self.agents):
                metrics[f"coma/gap/{ag}"] = float(adv[..., i].mean())
                metrics[f"coma/baseline/{ag}"] = float(prep["coma_baseline"][..., i].mean())
        metrics["explained_variance"] = explained_variance(prep["value"], target)
        value_error = ((prep["value"] - target) ** 2).mean((0, 1))
        metrics.update({f"value_error/{ag}": float(value_error[i]) for i, ag in enumerate(self.agents)})
        self._last_advantage = adv
        if a.normalize_value:
            self.value_norm.update(target)
            target = self.value_norm.normalize(target)
        if a.normalize_advantage:
            adv = (adv - adv.mean((0, 1))) / (adv.std((0, 1)) + 1e-8)
        TB = self.steps_per_iteration
        flat = {"obs": b["obs"], "critic_in": prep["critic_in"], "actions": b["actions"], "logp": b["logp"],
                "adv": adv, "target": target}
        flat = {k: v.reshape(TB, *v.shape[2:]) for k, v in flat.items()}
        mb_size = TB // a.minibatches
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(a.epochs):
            perm = torch.randperm(TB, generator=self.generator)
            for start in range(0, TB, mb_size):
                idx = perm[start:start + mb_size]
                mb = {k: v[idx] for k, v in flat.items()}
                stats = self._minibatch_step(mb, params)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_updates += 1
        if self.target_critic is not None and (self.iteration + 1) % a.target_update_every == 0:
            self.target_critic.load_state_dict(self.critic.state_dict())
        metrics.update({k: v / n_updates for k, v in sums.items()})
        return metrics

    def _minibatch_step(self, mb: dict, params: list) -> dict:
        a = self.cfg.algo
        logits = self.actor(mb["obs"])
        log_probs = torch.log_softmax(logits, -1)
        logp = log_probs.gather(-1, mb["actions"].unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        log_ratio = logp - mb["logp"]
        ratio = log_ratio.exp()
        if a.loss == "ppo":
            surrogate = torch.min(ratio * mb["adv"], ratio.clamp(1 - a.clip, 1 + a.clip) * mb["adv"])
            policy_loss = -surrogate.mean()
        else:
            policy_loss = -(logp * mb["adv"]).mean()
        value_loss = F.mse_loss(self._critic_prediction(mb["critic_in"], mb["actions"]), mb["target"])
        loss = policy_loss + a.value_coef * value_loss - a.entropy_coef * entropy.mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at iteration {self.iteration + 1} (policy {policy_loss.item():.4g}, "
                f"value {value_loss.item():.4g}); try a lower algo.lr or algo.critic_lr. The last good "
                f"checkpoint is kept")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = a.max_grad_norm if a.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean().item()
            clip_frac = ((ratio - 1).abs() > a.clip).float().mean().item()
        per_agent_entropy = entropy.detach().mean(0)
        stats = {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(),
                 "losses/entropy": entropy.mean().item(), "losses/approx_kl": approx_kl,
                 "losses/clip_fraction": clip_frac, "losses/grad_norm": float(grad_norm)}
        stats.update({f"entropy/{ag}": float(v) for ag, v in zip(self.agents, per_agent_entropy)})
        return stats

    def _credit_metrics(self, adv: torch.Tensor) -> dict:
        """Per-agent advantage statistics before normalisation: who got how much credit."""
        abs_mean = adv.abs().mean((0, 1))
        share = abs_mean / abs_mean.sum().clamp_min(1e-12)
        out = {}
        for i, ag in enumerate(self.agents):
            out[f"credit/adv_mean/{ag}"] = float(adv[..., i].mean())
            out[f"credit/adv_std/{ag}"] = float(adv[..., i].std())
            out[f"credit/abs_adv/{ag}"] = float(abs_mean[i])
            out[f"credit/share/{ag}"] = float(share[i])
        return out

    # -- the loop ---------------------------------------------------------------------------------
    def _episode_metrics(self, episodes: list[dict]) -> dict:
        if not episodes:
            return {"team_return": float("nan"), "episodes": 0}
        raw = np.stack([ep["raw_return"] for ep in episodes])
        moded = np.stack([ep["return"] for ep in episodes])
        out = {"team_return": float(raw.sum(1).mean()), "episodes": len(episodes),
               "episode_length": float(np.mean([ep["length"] for ep in episodes]))}
        for i, ag in enumerate(self.agents):
            out[f"return/{ag}"] = float(raw[:, i].mean())
            out[f"reward_return/{ag}"] = float(moded[:, i].mean())
        return out

    def _credit_views(self) -> dict:
        """Histograms and heatmaps go straight to TensorBoard; returns the fidelity scalars (on
        envs with ``true_credit``) for the metrics record."""
        from marl.credit import credit_fidelity, credit_heatmap, episode_credit
        from marl.evaluate import EVAL_SEED_OFFSET

        log, it, step = self.cfg.log, self.iteration, self.env_steps
        if log.histogram_every and it % log.histogram_every == 0:
            for i, agent in enumerate(self.agents):
                self.logger.log_histogram(f"credit/adv_hist/{agent}", self._last_advantage[..., i], step)
        if log.credit_image_every and (it % log.credit_image_every == 0 or it == 1):
            ep = episode_credit(self, seed=EVAL_SEED_OFFSET + it)
            title = f"{self.cfg.algo.advantage} credit at {step:,} env steps"
            self.logger.writer.add_figure("credit/heatmap", credit_heatmap(ep["advantage"], ep["raw_reward"],
                                                                           self.agents, title), step)
        out = {}
        if log.fidelity_every and it % log.fidelity_every == 0 and self.has_true_credit:
            score = credit_fidelity(self, log.fidelity_episodes, seed=it)
            out = {f"credit_fidelity/{k}": v for k, v in score.items() if k not in ("episodes", "behaviour")}
        return out

    @property
    def has_true_credit(self) -> bool:
        if self._has_true_credit is None:
            from envs import make_parallel_env
            env = make_parallel_env(self.cfg.env.id, self.cfg.env.kwargs)
            self._has_true_credit = hasattr(env.unwrapped, "true_credit")
            env.close()
        return self._has_true_credit

    def _request_stop(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True

    def train(self, progress: bool | None = None) -> dict:
        """Run to ``train.total_env_steps``. Returns a summary dict.

        Ctrl-C finishes the current iteration, writes a checkpoint and raises
        ``TrainingInterrupted``; a second Ctrl-C stops at once.
        """
        cfg = self.cfg
        progress = cfg.train.progress if progress is None else progress
        if self.run_dir is not None and self.logger is None:
            self.logger = RunLogger(self.run_dir, self.agents, purge_step=self.env_steps + 1 if self.iteration else None)
            if self.iteration == 0:
                self.logger.log_text("config", "```\n" + cfg.to_yaml() + "\n```")
                self.logger.log_custom_layout()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_iterations * self.steps_per_iteration, initial=self.env_steps,
                       unit="step", dynamic_ncols=True, desc="train")
        previous = signal.signal(signal.SIGINT, self._request_stop) if _main_thread() else None
        start, start_steps = time.perf_counter(), self.env_steps
        pending: list[dict] = []
        last: dict = {}
        try:
            while self.iteration < self.total_iterations:
                if self._stop_requested:
                    self.save()
                    raise TrainingInterrupted(f"interrupted at {self.env_steps} env steps")
                t0 = time.perf_counter()
                pending.extend(self.collect())
                t1 = time.perf_counter()
                metrics = self.update()
                t2 = time.perf_counter()
                self.iteration += 1
                self.env_steps += self.steps_per_iteration
                if self.iteration % cfg.train.log_every == 0 or self.iteration == self.total_iterations:
                    metrics.update(self._episode_metrics(pending))
                    pending = []
                    metrics.update({"iteration": self.iteration, "env_steps": self.env_steps,
                                    "perf/env_steps_per_s": self.steps_per_iteration / (t2 - t0),
                                    "perf/collect_s": t1 - t0, "perf/update_s": t2 - t1})
                    if self.logger is not None:
                        metrics.update(self._credit_views())
                        self.logger.log(metrics, self.env_steps)
                    last = metrics
                if self.iteration % cfg.train.checkpoint_every == 0:
                    self.save()
                if bar is not None:
                    bar.update(self.steps_per_iteration)
                    if last:
                        bar.set_postfix(ret=f"{last.get('team_return', float('nan')):.2f}",
                                        sps=f"{(self.env_steps - start_steps) / (time.perf_counter() - start):.0f}")
            self.save()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
            if self.logger is not None:
                self.logger.flush()
        wall = time.perf_counter() - start
        return {"env_steps": self.env_steps, "wall_s": wall,
                "env_steps_per_s": (self.env_steps - start_steps) / max(wall, 1e-9),
                "team_return": last.get("team_return"), "run_dir": str(self.run_dir) if self.run_dir else None}

    def close(self) -> None:
        self.venv.close()
        if self.logger is not None:
            self.logger.close()
            self.logger = None


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
