"""Gradient attribution of a scalar model output to its input features, with captum.

Integrated gradients (Sundararajan et al., 2017, "Axiomatic Attribution for Deep Networks",
arXiv:1703.01365): ``a_j = (x_j − x'_j) ∫_0^1 ∂f(x' + α (x − x'))/∂x_j dα`` for input x and
baseline x'. Completeness: ``Σ_j a_j = f(x) − f(x')``, up to the quadrature error that captum
reports as the convergence delta. Typical use: which part of a reward model's input (the state,
each agent's slice of it, the agent's own action) a redistributed reward ``r̂_{t,i}`` comes from.

The views of a trained run (``marl credit RUN_DIR --attribution ig``, and the TensorBoard scalars
``credit/attribution/<agent>``) are built on ``integrated_gradients``: ``value_attribution``
(the central critic's V(s), grouped by each agent's part of the state, ``state_agent_weights``),
``actor_attribution`` (each agent's chosen-action logit over its observation and its id) and
``attribution_fidelity`` (both over fresh episodes, scored against a diagnostic env's
``true_credit``). What they mean and do not mean: docs/credit.md, "Attribution views".
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn

Tensor = torch.Tensor


def contiguous_groups(sizes: dict[str, int]) -> dict[str, slice]:
    """Consecutive feature blocks as slices, in order: ``{"state": 4, "obs": 3}`` ->
    ``{"state": slice(0, 4), "obs": slice(4, 7)}``."""
    groups, start = {}, 0
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"group {name!r} has size {size!r}, expected an int >= 0")
        groups[name] = slice(start, start + size)
        start += size
    return groups


def integrated_gradients(forward_fn: Callable[[Tensor], Tensor], inputs: Tensor, baseline: Tensor | None = None,
                         groups: dict[str, list[int] | slice] | None = None, n_steps: int = 50,
                         internal_batch_size: int | None = None) -> dict:
    """Integrated gradients of ``forward_fn`` per row, by captum's ``IntegratedGradients``.

    Args:
        forward_fn: maps rows ``[R, D]`` to one scalar per row ``[R]`` (differentiable).
        inputs: float ``[R, D]``.
        baseline: float ``[R, D]``, the reference input x'; None for zeros.
        groups: named feature sets (column lists or slices of D; they may overlap) whose
            attributions are summed per row.
        n_steps: quadrature points of the path integral (Gauss-Legendre).
        internal_batch_size: rows per forward pass inside captum (None: all ``R · n_steps`` at once).

    Returns:
        ``{"attributions": [R, D], "groups": {name: [R]}, "delta": [R], "output": [R]}``, where
        ``delta = Σ_j a_j − (f(x) − f(x'))`` is captum's convergence delta and ``output = f(x)``.

    Raises:
        ValueError: on shapes that do not fit, a group index outside ``[0, D)``, or ``n_steps < 1``.
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs has shape {tuple(inputs.shape)}, expected [R, D]")
    if baseline is None:
        baseline = torch.zeros_like(inputs)
    elif baseline.shape != inputs.shape:
        raise ValueError(f"baseline has shape {tuple(baseline.shape)}, expected {tuple(inputs.shape)} (inputs)")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    D = inputs.shape[1]
    columns = {}
    for name, cols in (groups or {}).items():
        index = torch.arange(D)[cols] if isinstance(cols, slice) else torch.as_tensor(cols, dtype=torch.long)
        if index.dim() != 1 or (index.numel() and (index.min() < 0 or index.max() >= D)):
            raise ValueError(f"group {name!r} has columns {cols!r}, expected indices in [0, {D})")
        columns[name] = index
    with torch.no_grad():
        output = forward_fn(inputs)
    if output.shape != inputs.shape[:1]:
        raise ValueError(f"forward_fn returned shape {tuple(output.shape)}, expected one scalar per row "
                         f"{tuple(inputs.shape[:1])}")
    ig = IntegratedGradients(forward_fn)
    attributions, delta = ig.attribute(inputs, baselines=baseline, n_steps=n_steps,
                                       internal_batch_size=internal_batch_size,
                                       return_convergence_delta=True)
    attributions = attributions.detach()
    return {"attributions": attributions,
            "groups": {name: attributions[:, index].sum(dim=1) for name, index in columns.items()},
            "delta": delta.detach().to(attributions.dtype), "output": output}


# -- attribution views of a trained run: the central critic's V(s) and each agent's chosen-action logit --------
BASELINES = ("mean", "zeros")


def state_agent_weights(state: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, str]:
    """Which state features are agent i's part of the state: ``weights [S, N]`` (feature j's fraction
    given to agent i; a row sums to 1, or to 0 for a feature no agent owns) and the grouping's name.

    - ``"observation blocks"``: the state is the concatenation of the agents' observations
      (``state == obs.reshape(N·O)`` on every sampled row, the default state of every env without
      its own ``state()``): agent i owns its block.
    - ``"observed features"``: otherwise, feature j belongs to every agent whose observation holds
      the same values on every sampled row, split equally among them (a feature all N agents see
      goes 1/N to each); features that are constant over the sample, or that no agent observes, are
      nobody's (the ``unobserved`` group).
    - ``"none"``: no feature is owned (then every row is 0).

    Shapes: ``state [R, S]``, ``obs [R, N, O]`` (float arrays over the same R sampled rows).
    """
    R, S = state.shape
    N, O = obs.shape[1:]
    weights = np.zeros((S, N))
    if S == N * O and np.array_equal(state, obs.reshape(R, N * O)):
        for i in range(N):
            weights[i * O:(i + 1) * O, i] = 1.0
        return weights, "observation blocks"
    seen: dict[bytes, set[int]] = {}
    for i in range(N):
        for k in range(O):
            seen.setdefault((obs[:, i, k].astype(np.float64) + 0.0).tobytes(), set()).add(i)
    for j in range(S):
        column = state[:, j].astype(np.float64) + 0.0     # + 0.0 folds -0.0 into 0.0
        if np.ptp(column) == 0:
            continue
        owners = seen.get(column.tobytes(), ())
        for i in owners:
            weights[j, i] = 1.0 / len(owners)
    return weights, "observed features" if weights.any() else "none"


def _float64(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module``: captum's delta then measures the quadrature error, not rounding."""
    return copy.deepcopy(module).double().requires_grad_(False)


def _batch_rows(n_rows: int, n_steps: int, budget: int = 1 << 17) -> int | None:
    """captum's ``internal_batch_size``: whole multiples of the R rows, about ``budget`` rows a pass."""
    return None if n_rows * n_steps <= budget else n_rows * max(1, budget // n_rows)


def _tiled(hidden: Tensor | None, rows: int) -> Tensor | None:
    """``hidden [R, ...]`` repeated for captum's ``[k·R, ...]`` path points (row order: point, then row)."""
    return None if hidden is None else hidden.repeat(rows // hidden.shape[0], *([1] * (hidden.dim() - 1)))


def _refuse_view(note: str | None, baseline: str) -> None:
    """``ValueError`` with ``note`` (why a view does not apply), or for an unknown ``baseline``."""
    if note:
        raise ValueError(note)
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")


def _value_note(trainer) -> str | None:
    """Why the value view does not apply to ``trainer`` (None where it does)."""
    from marl.networks import CentralCritic
    critic, a = getattr(trainer.learner, "critic", None), trainer.cfg.algo
    if critic is None:
        return f"the value view needs a critic V(s), and algo.learner {a.learner!r} has none"
    if isinstance(critic, CentralCritic) and (critic.state_encoder or critic.obs_encoder):
        return "the value view attributes a flat state, and this critic reads an image state through a CNN encoder"
    if isinstance(critic, CentralCritic):
        return None
    why = (f"algo.advantage {a.advantage!r} uses a critic over actions ({type(critic).__name__})" if critic.q
           else f"algo.critic {a.critic!r} reads per-agent inputs ({type(critic).__name__})")
    return f"the value view needs the central critic V(s) of the state alone; {why}"


def _actor_note(trainer) -> str | None:
    if trainer.actor.encoder is not None:
        return "the actor view attributes flat observations, and this actor reads images through a CNN encoder"
    if trainer.actor.continuous:
        return ("continuous actions: the log-probability of the mean action does not depend on the observation "
                "(the log-std is state-independent), so there is nothing to attribute")
    return None


def value_attribution(trainer, episodes: list[dict], baseline: str = "mean", n_steps: int = 128) -> dict:
    """Integrated gradients of the central critic's value of the state, in return units, for every
    step of ``episodes`` (``marl.credit.play_episode`` batches ``[T, 1, ...]``).

    The attributed output is the team's value V(s) under a shared reward (one head), else the sum of
    the per-agent heads ``Σ_i V_i(s)``. A recurrent critic is unrolled over each episode and its
    hidden state held fixed at each step (attributed: the state at that step only). The baseline is
    the mean state over all the episodes' steps (``"mean"``) or zeros.

    Returns ``{"attributions" [R, S], "agents" [R, N] (grouped with ``state_agent_weights``),
    "unobserved" [R], "delta" [R], "output" [R], "gap" [R] (V(s) − V(baseline)), "grouping"}``.

    Raises:
        ValueError: where the run has no central V critic, or on an unknown ``baseline``.
    """
    _refuse_view(_value_note(trainer), baseline)
    learner = trainer.learner
    critic = _float64(learner.critic)
    device = next(critic.parameters()).device
    states, hiddens = [], []
    for b in episodes:
        x = b["state"][:, 0].to(device, torch.float64)
        states.append(x)
        if critic.recurrent:
            _, starts, _ = critic.unroll(x[:, None], critic.initial_hidden(1, device=x.device).double(),
                                         b["first"][:, :1].to(x.device))
            hiddens.append(starts[:, 0])                       # [T, 1, H]
    x = torch.cat(states)
    hidden = torch.cat(hiddens) if hiddens else None
    team = critic.team_value

    def value(z: Tensor) -> Tensor:
        out = critic(z) if hidden is None else critic.step(z, _tiled(hidden, z.shape[0]))[0]
        v = learner._to_return_space(out)     # the learner's one place for the value normaliser
        return v[:, 0] if team else v.sum(-1)

    base = x.mean(0, keepdim=True).expand_as(x) if baseline == "mean" else torch.zeros_like(x)
    out = integrated_gradients(value, x, base, n_steps=n_steps, internal_batch_size=_batch_rows(len(x), n_steps))
    obs = torch.cat([b["obs"][:, 0] for b in episodes]).cpu().numpy()
    weights, grouping = state_agent_weights(x.cpu().numpy(), obs)
    w = torch.from_numpy(weights)
    a = out["attributions"].cpu()
    with torch.no_grad():
        gap = (out["output"] - value(base)).cpu()
    return {"attributions": a, "agents": a @ w, "unobserved": a @ (1.0 - w.sum(1)), "delta": out["delta"].cpu(),
            "output": out["output"].cpu(), "gap": gap, "grouping": grouping}


def actor_attribution(trainer, episodes: list[dict], baseline: str = "mean", n_steps: int = 128) -> dict:
    """Integrated gradients of each agent's logit of the action it chose, with respect to what its
    actor reads: its own observation and (a shared actor) its one-hot id.

    The baseline of agent i's input is its own mean observation over the episodes' steps, with the
    mean id ``1/N`` (``"mean"``; so the id's attribution is what being agent i, rather than the
    average agent, adds), or zeros. A recurrent actor's hidden state is held at what it was at each
    step. Entries of absent agents are 0.

    Returns ``{"obs" [R, N], "agent_id" [R, N] (attribution summed per group), "delta" [R, N]
    (per agent: Σ attribution − (logit(x) − logit(baseline))), "gap" [R, N], "alive" [R, N]}``.

    Raises:
        ValueError: for continuous actions (see ``_actor_note``) or an unknown ``baseline``.
    """
    _refuse_view(_actor_note(trainer), baseline)
    actor = trainer.actor
    net = _float64(actor.net)
    device = next(net.parameters()).device
    obs = torch.cat([b["obs"][:, 0] for b in episodes]).to(device, torch.float64)         # [R, N, O]
    alive = torch.cat([b["alive"][:, 0] for b in episodes]).to(device, torch.bool)
    chosen = torch.cat([b["actions"][:, 0] for b in episodes]).to(device).long()
    hidden = (torch.cat([b["actor_h"][:, 0] for b in episodes]).to(device, torch.float64) if actor.recurrent
              else None)
    R, N, O = obs.shape
    rows = actor.inputs(obs)                                                                # [R, N, D]
    D = rows.shape[-1]
    if baseline == "mean":
        weight = alive[..., None].to(obs.dtype)
        mean_obs = (obs * weight).sum(0) / weight.sum(0).clamp_min(1.0)                    # [N, O]
        base = actor.inputs(mean_obs.expand(R, N, O)).clone()
        if actor.shared:
            base[..., O:] = 1.0 / N
    else:
        base = torch.zeros_like(rows)
    live = alive.to(obs.dtype)

    def chosen_logits(z: Tensor) -> Tensor:                                                # [k·R, N]
        x = z.reshape(-1, N, D)
        out = net(x) if hidden is None else net.step(x, _tiled(hidden, x.shape[0]))[0]
        k = x.shape[0] // R
        return out.gather(-1, chosen.repeat(k, 1)[..., None]).squeeze(-1) * live.repeat(k, 1)

    # Agent i's logit reads row i only, so the attribution of the sum to row i is agent i's own.
    result = integrated_gradients(lambda z: chosen_logits(z).sum(-1), rows.reshape(R, N * D),
                                  base.reshape(R, N * D), n_steps=n_steps,
                                  internal_batch_size=_batch_rows(R, n_steps))
    a = result["attributions"].reshape(R, N, D).cpu()
    with torch.no_grad():
        gap = (chosen_logits(rows.reshape(R, N * D)) - chosen_logits(base.reshape(R, N * D))).cpu()
    return {"obs": a[..., :O].sum(-1), "agent_id": a[..., O:].sum(-1), "delta": a.sum(-1) - gap, "gap": gap,
            "alive": alive.cpu()}


def attribution_fidelity(trainer, episodes: int = 32, seed: int = 0, behaviour: str | None = None,
                         baseline: str = "mean", n_steps: int = 128) -> dict:
    """``marl credit --attribution ig``: integrated gradients of the central critic's V(s) and of
    each agent's chosen-action logit over ``episodes`` fresh episodes, summarised per agent, and on
    envs with ``true_credit`` scored against it like ``marl.credit.credit_fidelity``.

    ``behaviour``: ``"uniform"`` (random legal actions) or ``"policy"``; None picks uniform on envs
    with ``true_credit`` (the default the true credit is defined against) and the policy elsewhere.

    Returns a flat dict: ``value/abs/<agent>`` (mean |attribution of V(s) to the agent's part of
    the state|), ``value/share/<agent>`` (its share over agents; the ``unobserved`` features are
    outside it, ``value/unobserved_fraction`` says how much they hold), ``value/grouping``,
    ``value/delta_max`` and ``value/delta_mean_abs`` (captum's completeness delta
    ``Σ_j a_j − (V(s) − V(baseline))``) beside ``value/gap_mean_abs`` (mean |V(s) − V(baseline)|);
    ``actor/abs/<agent>``, ``actor/share/<agent>``, ``actor/obs_fraction/<agent>`` (the part of the
    agent's |attribution| on its observation rather than its id) and the same deltas; where the
    env has ``true_credit``: ``value/spearman`` and ``actor/spearman`` (rank correlation of the
    agent's signed attribution with its true marginal contribution over all (episode, step, agent)
    entries) and ``true_abs/<agent>``, ``true_share/<agent>``. A view that does not apply has
    ``<view>/skipped`` (the reason) instead.

    Raises:
        ValueError: when neither view applies, or on bad arguments.
    """
    from marl.credit import episode_venv, play_episode, spearman
    from marl.seeding import torch_stream, view_episode_seed

    value_note, actor_note = _value_note(trainer), _actor_note(trainer)
    _refuse_view(f"nothing to attribute: {value_note}; and {actor_note}" if value_note and actor_note else None,
                 baseline)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    venv = episode_venv(trainer)
    raw_env = venv.team_envs[0].env.unwrapped
    has_truth = hasattr(raw_env, "true_credit")
    behaviour = behaviour or ("uniform" if has_truth else "policy")
    batches, trues = [], []
    try:
        for k in range(episodes):
            episode_seed = view_episode_seed(seed, k)
            generator = torch_stream(episode_seed, trainer.device)
            b = {key: v.cpu() for key, v in play_episode(trainer, venv, episode_seed, generator, behaviour).items()}
            batches.append(b)
            if has_truth:
                trues.append(np.asarray(raw_env.true_credit(b["actions"][:, 0].numpy()), dtype=np.float64))
    finally:
        venv.close()
    agents = list(trainer.agents)
    out = {"method": "integrated_gradients", "env": trainer.cfg.env.id, "episodes": episodes,
           "behaviour": behaviour, "baseline": baseline, "n_steps": n_steps,
           "steps": int(sum(len(b["state"]) for b in batches))}
    true = np.concatenate(trues) if has_truth else None
    alive = torch.cat([b["alive"][:, 0] for b in batches]).numpy()

    def score(per_agent: np.ndarray) -> float:
        return spearman(per_agent[alive], true[alive])

    if value_note:
        out["value/skipped"] = value_note
    else:
        v = value_attribution(trainer, batches, baseline, n_steps)
        per_agent = v["agents"].numpy()
        magnitude = np.abs(per_agent).mean(0)
        unobserved = float(v["unobserved"].abs().mean())
        out.update({"value/output": "V(s), team value head" if trainer.learner.critic.team_value
                    else "sum of the per-agent value heads V_i(s)",
                    "value/grouping": v["grouping"], "value/unobserved_fraction":
                    unobserved / max(magnitude.sum() + unobserved, 1e-12),
                    "value/delta_max": float(v["delta"].abs().max()),
                    "value/delta_mean_abs": float(v["delta"].abs().mean()),
                    "value/gap_mean_abs": float(v["gap"].abs().mean())})
        for i, agent in enumerate(agents):
            out[f"value/abs/{agent}"] = float(magnitude[i])
            out[f"value/share/{agent}"] = _share(magnitude, i)
        if has_truth:
            out["value/spearman"] = score(per_agent)
    if actor_note:
        out["actor/skipped"] = actor_note
    else:
        p = actor_attribution(trainer, batches, baseline, n_steps)
        live = p["alive"].numpy()
        total = (p["obs"] + p["agent_id"]).numpy()
        count = np.maximum(live.sum(0), 1)
        magnitude = np.abs(total).sum(0) / count
        obs_abs, id_abs = p["obs"].abs().sum(0).numpy() / count, p["agent_id"].abs().sum(0).numpy() / count
        delta = p["delta"].abs().numpy()[live]
        out.update({"actor/output": "logit of the chosen action", "actor/delta_max": float(delta.max(initial=0.0)),
                    "actor/delta_mean_abs": float(delta.mean()) if delta.size else 0.0,
                    "actor/gap_mean_abs": float(p["gap"].abs().numpy()[live].mean()) if live.any() else 0.0})
        for i, agent in enumerate(agents):
            out[f"actor/abs/{agent}"] = float(magnitude[i])
            out[f"actor/share/{agent}"] = _share(magnitude, i)
            out[f"actor/obs_fraction/{agent}"] = float(obs_abs[i] / max(obs_abs[i] + id_abs[i], 1e-12))
        if has_truth:
            out["actor/spearman"] = score(total)
    if has_truth:
        true_abs = np.array([np.abs(true[alive[:, i], i]).mean() for i in range(len(agents))])
        for i, agent in enumerate(agents):
            out[f"true_abs/{agent}"] = float(true_abs[i])
            out[f"true_share/{agent}"] = _share(true_abs, i)
    return out


def _share(magnitude: np.ndarray, i: int) -> float:
    """``magnitude[i] / Σ magnitude`` (equal shares when every magnitude is 0)."""
    total = float(magnitude.sum())
    return float(magnitude[i] / total) if total > 0 else 1.0 / len(magnitude)


def value_shares(trainer, episode: dict, n_steps: int = 32) -> dict[str, float] | None:
    """Each agent's share of the mean |IG attribution| of V(s) over one episode (mean-state
    baseline), for ``credit/attribution/<agent>``; None where the run has no central V critic."""
    if _value_note(trainer):
        return None
    magnitude = value_attribution(trainer, [episode], "mean", n_steps)["agents"].abs().mean(0).numpy()
    return {agent: _share(magnitude, i) for i, agent in enumerate(trainer.agents)}
