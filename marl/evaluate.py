"""Evaluation of a trained actor (greedy or sampled), and GIF rendering of one episode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marl.envs import EnvError, RewardSpec
from marl.envs.batched import BatchedVectorEnv, make_batched_env
from marl.envs.vector import EnvSlice, SyncVectorEnv
from marl.networks import Actor
from marl.rollout import policy_steps
from marl.seeding import torch_stream

EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never reuse training reset seeds
SIMULATORS = {"package": "the package env", "batched": "the batched simulator"}   # a result's ``simulator``, in words


def evaluate(actor: Actor, env_id: str, env_kwargs: dict, episodes: int, seed: int = 0,
             greedy: bool = True, max_parallel: int = 32) -> dict:
    """Run ``episodes`` episodes (batched over up to ``max_parallel`` envs), acting greedily or,
    with ``greedy=False``, by sampling from the policy.

    Returns a dict with ``team_return_mean``, ``team_return_std`` (the raw reward summed over agents
    and steps), ``episodes``, ``greedy``, ``simulator`` (``"package"``: the env's own package, as
    opposed to ``evaluate_batched``'s ``"batched"``) and per agent ``return/<agent>`` (mean raw return).
    """
    torch.set_num_threads(1)
    venv = SyncVectorEnv(EnvSlice(env_id, env_kwargs, min(episodes, max_parallel), RewardSpec()))
    generator = torch_stream(seed, next(actor.parameters()).device)
    returns = []
    try:
        while len(returns) < episodes:
            k = min(venv.num_envs, episodes - len(returns))
            base = EVAL_SEED_OFFSET + seed * 100_003 + len(returns)
            venv.reset(base + np.arange(venv.num_envs))
            first = {}   # env row -> raw return of its first episode
            for ps in policy_steps(venv, actor, generator, greedy):
                for ep in ps.step.episodes:
                    if ep["env"] < k:
                        first.setdefault(ep["env"], ep["raw_return"])
                if len(first) == k:
                    break
            returns.extend(first[i] for i in range(k))
        agents = venv.agents
    finally:
        venv.close()
    returns = np.asarray(returns)
    team = returns.sum(1)
    out = {"team_return_mean": float(team.mean()), "team_return_std": float(team.std()),
           "episodes": int(episodes), "greedy": bool(greedy), "simulator": "package"}
    out.update({f"return/{ag}": float(returns[:, i].mean()) for i, ag in enumerate(agents)})
    return out


def evaluate_batched(actor: Actor, env_id: str, env_kwargs: dict, episodes: int, seed: int = 0,
                     greedy: bool = True) -> dict:
    """``evaluate`` on the batched twin of ``env_id`` (``marl.envs.batched``): all ``episodes`` at once
    in one batched env on the actor's device. Same return dict (``simulator: "batched"``, and
    ``win_rate`` where the env reports wins, e.g. SMAX)."""
    torch.set_num_threads(1)
    device = next(actor.parameters()).device
    venv = BatchedVectorEnv(make_batched_env(env_id, env_kwargs, episodes, str(device), seed), RewardSpec())
    generator = torch_stream(seed, device)
    venv.reset(EVAL_SEED_OFFSET + seed)
    first = {}   # env row -> its first episode's record
    try:
        for ps in policy_steps(venv, actor, generator, greedy):
            for ep in ps.step.episodes:
                first.setdefault(ep["env"], ep)
            if len(first) == episodes:
                break
    finally:
        venv.close()
    returns = np.asarray([first[i]["raw_return"] for i in range(episodes)])
    team = returns.sum(1)
    out = {"team_return_mean": float(team.mean()), "team_return_std": float(team.std()),
           "episodes": int(episodes), "greedy": bool(greedy), "simulator": "batched"}
    if "won" in first[0]:
        out["win_rate"] = float(np.mean([first[i]["won"] for i in range(episodes)]))
    out.update({f"return/{ag}": float(returns[:, i].mean()) for i, ag in enumerate(venv.agents)})
    return out


def evaluate_both(run, actor: Actor, env_id: str, env_kwargs: dict, episodes: int, seed: int = 0) -> dict:
    """The greedy policy and the sampled (stochastic) one on the same episodes' seeds, with ``run``
    (``evaluate`` or ``evaluate_batched``): the greedy result, with the sampled one under
    ``sampled`` and, where greedy play falls short of sampled play by more than the sampled mean's
    95% interval, a one-line ``note`` saying so (``greedy_gap_note``)."""
    result = run(actor, env_id, env_kwargs, episodes, seed=seed)
    result["sampled"] = run(actor, env_id, env_kwargs, episodes, seed=seed, greedy=False)
    note = greedy_gap_note(result, result["sampled"])
    if note:
        result["note"] = note
    return result


def greedy_gap_note(greedy: dict, sampled: dict) -> str | None:
    """A line flagging a greedy policy that scores below its sampled one by more than the sampled
    mean's 95% interval (1.96 standard errors), or None. Greedy play can be far worse than the
    policy that was trained (ties broken the same way every step, a deterministic loop), and the
    sampled figure is then the one that says what the policy learned."""
    n = int(sampled["episodes"])
    gap = sampled["team_return_mean"] - greedy["team_return_mean"]
    half_width = 1.96 * sampled["team_return_std"] / np.sqrt(max(n, 1))
    if n < 2 or gap <= half_width or gap <= 1e-9:   # one episode gives no interval
        return None
    return (f"the greedy policy scores {gap:.2f} below the sampled one ({greedy['team_return_mean']:.2f} vs "
            f"{sampled['team_return_mean']:.2f} ± {half_width:.2f}); report the sampled figure for this env")


def render_gif(actor: Actor, env_id: str, env_kwargs: dict, path: str | Path, seed: int = 0, fps: int = 10) -> Path:
    """Render one greedy episode to an animated GIF. The env must support ``render_mode='rgb_array'``."""
    from PIL import Image

    venv = SyncVectorEnv(EnvSlice(env_id, env_kwargs, 1, RewardSpec(), render_mode="rgb_array"))
    env = venv.team_envs[0]

    def frame():
        try:
            return env.render()
        except Exception as exc:
            raise EnvError(f"env {env_id!r} could not render an rgb_array frame ({type(exc).__name__}: {exc})") from None

    try:
        venv.reset([EVAL_SEED_OFFSET + seed])
        frames = [frame()]
        if frames[0] is None:
            raise EnvError(f"env {env_id!r} returned no frame from render(); it does not support rgb_array")
        for ps in policy_steps(venv, actor, None, greedy=True, autoreset=False):
            frames.append(frame())
            if ps.step.done[0]:
                break
    finally:
        venv.close()
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames if f is not None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
