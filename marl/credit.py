"""Per-agent credit: advantages of single episodes, credit heatmaps (and the reward-model views'
figures), and the credit-fidelity score against a diagnostic env's ground truth (``true_credit``,
see ``envs/diagnostic.py``). Integrated-gradients views are in ``marl.attribution``."""
from __future__ import annotations

import numpy as np
import torch

from marl.config import reward_spec
from marl.envs import make_vector_env
from marl.envs.step_schema import CURRENT, ROLLOUT, STEP_OUTCOME
from marl.envs.vector import SyncVectorEnv
from marl.networks import MASKED_LOGIT
from marl.resim import PackageStates, needs_sim_states
from marl.rollout import policy_steps
from marl.seeding import torch_stream


class UniformPolicy(torch.nn.Module):
    """Acts uniformly at random over the legal (discrete) actions, while a recurrent ``actor``'s
    hidden state follows the episode as it would (the credit views read that actor's values)."""

    def __init__(self, actor):
        super().__init__()
        if actor.continuous:
            raise ValueError("uniform behaviour is defined for discrete actions only")
        self.actor = actor
        self.hidden_size = actor.hidden_size

    def initial_hidden(self, *batch, device=None):
        return self.actor.initial_hidden(*batch, device=device)

    def step(self, obs: torch.Tensor, avail: torch.Tensor | None, hidden: torch.Tensor | None):
        _, hidden = self.actor.step(obs, avail, hidden)
        logits = torch.zeros(*obs.shape[:-1], self.actor.action_mask.shape[-1], device=obs.device)
        return logits.masked_fill(~(self.actor.action_mask if avail is None else avail), MASKED_LOGIT), hidden

    def distribution(self, out: torch.Tensor):
        return self.actor.distribution(out)


def play_episode(trainer, venv: SyncVectorEnv, seed: int, generator: torch.Generator,
                 behaviour: str = "policy", snapshots: list | None = None) -> dict[str, torch.Tensor]:
    """One episode as a ``[T, 1, N, ...]`` rollout batch, acting with the trainer's sampling policy
    (``behaviour="policy"``) or uniformly at random over the legal actions (``"uniform"``).
    With ``snapshots`` (a list), ``venv.snapshot()[0]`` is appended before every step: T entries,
    entry t the env as the agents found it at step t (``EnvError`` if it cannot be snapshot).
    For a run that re-simulates (``algo.advantage: resim``) the batch also holds the twin's state
    at every step (``marl.resim.PackageStates``), which its advantage module reads."""
    if behaviour not in ("policy", "uniform"):
        raise ValueError(f"behaviour must be 'policy' or 'uniform', got {behaviour!r}")
    policy = trainer.actor if behaviour == "policy" else UniformPolicy(trainer.actor)
    venv.reset([seed])
    buf = {k: [] for k in ROLLOUT}
    sim = PackageStates(trainer.cfg) if needs_sim_states(trainer.cfg) else None
    if sim is not None:
        sim.record(venv.team_envs[0].env)
    if snapshots is not None:
        snapshots.append(venv.snapshot()[0])
    for ps in policy_steps(venv, policy, generator):
        current, step = ps.current, ps.step
        for key in CURRENT:
            buf[key].append(current[key])
        hidden = ps.hidden.cpu().numpy() if ps.hidden is not None else np.zeros((1, len(trainer.agents), 0), np.float32)
        buf["actor_h"].append(hidden)
        buf["actions"].append(ps.actions)
        buf["logp"].append(ps.logp)
        for key in STEP_OUTCOME:
            buf[key].append(getattr(step, key))
        if step.done[0]:
            break
        if snapshots is not None:   # the state the next step starts from (the env is not reset here)
            snapshots.append(venv.snapshot()[0])
        if sim is not None:
            sim.record(venv.team_envs[0].env)
    batch = {k: torch.from_numpy(np.stack(v)) for k, v in buf.items()}
    return batch if sim is None else {**batch, **sim.take()}


def episode_venv(trainer) -> SyncVectorEnv:
    e = trainer.cfg.env
    return make_vector_env(e.id, e.kwargs, 1, reward_spec(trainer.cfg))


def episode_credit(trainer, seed: int, venv: SyncVectorEnv | None = None,
                   behaviour: str = "policy", keep_batch: bool = False) -> dict:
    """Advantages ``[T, N]`` the trainer's advantage module assigns in one fresh episode, with the
    actions, rewards and (for COMA) the counterfactual baseline. See ``play_episode`` for
    ``behaviour``; the advantages always come from the trained critic and policy. With
    ``keep_batch`` the episode's ``[T, 1, ...]`` batch is kept under ``"batch"`` (for other views
    of the same episode)."""
    own = venv is None
    venv = venv or episode_venv(trainer)
    generator = torch_stream(seed, trainer.device)
    batch = play_episode(trainer, venv, seed, generator, behaviour)
    prep = trainer.prepare(batch, generator=generator)
    if own:
        venv.close()
    prep = {k: v.cpu() for k, v in prep.items()}
    out = {"advantage": prep["adv"][:, 0].numpy(), "actions": batch["actions"][:, 0].numpy(),
           "reward": batch["reward"][:, 0].numpy(), "raw_reward": batch["raw_reward"][:, 0].numpy()}
    if "coma_baseline" in prep:
        out["coma_baseline"] = prep["coma_baseline"][:, 0].numpy()
    if keep_batch:
        out["batch"] = batch
    return out


def credit_heatmap(advantage: np.ndarray, reward: np.ndarray, agents: list[str], title: str = "",
                   label: str = "advantage"):
    """A matplotlib figure: agents × time steps coloured by advantage (or any per-(step, agent)
    quantity named by ``label``, e.g. a redistributed reward; diverging around 0), with the team
    reward per step underneath. ``advantage`` and ``reward`` are ``[T, N]``."""
    from matplotlib.figure import Figure

    T, N = advantage.shape
    fig = Figure(figsize=(max(6, 0.25 * T + 2), 1.0 + 0.45 * N + 1.6), layout="constrained")
    # The colour bar gets a grid column of its own, so the two x axes stay aligned.
    grid = fig.add_gridspec(2, 2, height_ratios=[max(N, 2), 1.5], width_ratios=[40, 1])
    top = fig.add_subplot(grid[0, 0])
    bottom = fig.add_subplot(grid[1, 0], sharex=top)
    bar = fig.add_subplot(grid[0, 1])
    bound = float(np.abs(advantage).max()) or 1.0
    image = top.imshow(advantage.T, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound,
                       interpolation="nearest", extent=(-0.5, T - 0.5, N - 0.5, -0.5))
    top.set_yticks(range(N), agents)
    top.set_title(title or f"{label} per agent and step")
    top.tick_params(labelbottom=False)
    fig.colorbar(image, cax=bar, label=label)
    bottom.bar(np.arange(T), reward.sum(-1), color="0.4")
    bottom.set_ylabel("reward\n(sum)")
    bottom.set_xlabel("step")
    return fig


def attention_figure(temporal: np.ndarray, agent: np.ndarray, agents: list[str], title: str = ""):
    """AREL's attention on one episode as two agents × steps maps (a matplotlib figure): on top, the
    temporal attention each agent's step t receives, averaged over that agent's query steps
    (``temporal [N, T, T]``, query × key); below, the agent attention agent i receives at step t,
    averaged over the query agents (``agent [T, N, N]``). Where the model looked, not credit."""
    from matplotlib.figure import Figure

    N, T = temporal.shape[0], temporal.shape[-1]
    received = [temporal.mean(1), agent.mean(1).T]          # [N, T] each
    fig = Figure(figsize=(max(6, 0.25 * T + 2), 1.6 + 0.9 * max(N, 2)), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    names = ["temporal attention received (mean over query steps)",
             "agent attention received (mean over query agents)"]
    for ax, values, name in zip(axes, received, names):
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest",
                          extent=(-0.5, T - 0.5, N - 0.5, -0.5))
        ax.set_yticks(range(N), agents)
        ax.set_title(name, fontsize="small")
        fig.colorbar(image, ax=ax, label="weight", fraction=0.04, pad=0.01)
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x))
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end - 1) / 2.0 + 1.0
            start = end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def credit_fidelity(trainer, episodes: int = 16, seed: int = 0, behaviour: str = "uniform") -> dict:
    """Score the trainer's credit against the env's ``true_credit`` over fresh episodes.

    By default the episodes are played with uniformly random actions, so every action is tried
    and the score does not collapse once a policy is deterministic; the advantages still come
    from the trained critic and policy (the true credit is defined against that same uniform
    default, see ``envs/diagnostic.py``). ``behaviour="policy"`` scores on-policy episodes.

    Returns:
        ``overall``: Spearman correlation of estimated advantage and true marginal contribution over
        all (episode, step, agent) entries; ``per_step``: mean over steps of the correlation across
        (episode, agent) at that step, skipping steps where the true credit is constant;
        ``abs_adv/<agent>``, ``share/<agent>`` (mean |A_i| and its share) and ``true_abs/<agent>``.
    Raises:
        ValueError: when the env has no ``true_credit``.
    """
    venv = episode_venv(trainer)
    raw_env = venv.team_envs[0].env.unwrapped
    if not hasattr(raw_env, "true_credit"):
        venv.close()
        raise ValueError(f"env {trainer.cfg.env.id!r} has no true_credit(actions); credit fidelity needs a "
                         f"diagnostic env (marl list shows them under diag:)")
    advs, trues = [], []
    for k in range(episodes):
        ep = episode_credit(trainer, seed * 1_000_003 + k, venv, behaviour)
        advs.append(ep["advantage"])
        trues.append(np.asarray(raw_env.true_credit(ep["actions"]), dtype=np.float64))
    venv.close()
    adv, true = np.stack(advs), np.stack(trues)          # [E, T, N]
    per_step = [spearman(adv[:, t], true[:, t]) for t in range(adv.shape[1]) if np.ptp(true[:, t]) > 0]
    per_step = [c for c in per_step if np.isfinite(c)]
    abs_adv = np.abs(adv).mean((0, 1))
    out = {"overall": spearman(adv, true), "per_step": float(np.mean(per_step)) if per_step else float("nan"),
           "episodes": episodes, "behaviour": behaviour}
    for i, agent in enumerate(trainer.agents):
        out[f"abs_adv/{agent}"] = float(abs_adv[i])
        out[f"share/{agent}"] = float(abs_adv[i] / max(abs_adv.sum(), 1e-12))
        out[f"true_abs/{agent}"] = float(np.abs(true[..., i]).mean())
    return out


def credit_over_training_figure(runs: dict[str, list[dict]], prefix: str = "credit/share"):
    """One panel per run: the per-agent metric ``<prefix>/<agent>`` from ``metrics.jsonl`` records
    against env steps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(runs), 3.2))
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)
    for ax, (label, records) in zip(axes[0], runs.items()):
        agents = sorted({k[len(prefix) + 1:] for r in records for k in r if k.startswith(prefix + "/")})
        steps = [r["env_steps"] for r in records]
        for agent in agents:
            ax.plot(steps, [r.get(f"{prefix}/{agent}") for r in records], label=agent)
        ax.set_title(label)
        ax.set_xlabel("env steps")
    axes[0][0].set_ylabel(prefix)
    axes[0][-1].legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def fidelity_table(scores: dict[str, dict], agents: list[str]) -> str:
    """A markdown table of ``credit_fidelity`` results, one row per method."""
    head = "| method | overall | per step | " + " | ".join(f"share {a}" for a in agents) + " |"
    rule = "|" + "---|" * (3 + len(agents))
    rows = [f"| {name} | {s['overall']:.3f} | {s['per_step']:.3f} | "
            + " | ".join(f"{s['share/' + a]:.3f}" for a in agents) + " |" for name, s in scores.items()]
    return "\n".join([head, rule, *rows])
