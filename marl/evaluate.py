"""Greedy evaluation of a trained actor, and GIF rendering of one episode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from envs import TeamEnv
from marl.networks import Actor

EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never reuse training reset seeds


def _policy_actions(actor: Actor, obs: np.ndarray, greedy: bool, generator: torch.Generator) -> np.ndarray:
    from marl.learner import sample_actions
    with torch.no_grad():
        logits = actor(torch.from_numpy(obs))
        actions = logits.argmax(-1) if greedy else sample_actions(logits, generator)
    return actions.numpy()


def evaluate(actor: Actor, env_id: str, env_kwargs: dict, episodes: int, seed: int = 0,
             greedy: bool = True, max_parallel: int = 32) -> dict:
    """Run ``episodes`` episodes (batched over up to ``max_parallel`` envs).

    Returns a dict with ``team_return_mean``, ``team_return_std`` (the raw reward summed over agents
    and steps), ``episodes``, and per agent ``return/<agent>`` (mean raw return).
    """
    torch.set_num_threads(1)
    envs = [TeamEnv(env_id, env_kwargs) for _ in range(min(episodes, max_parallel))]
    agents = envs[0].agents
    generator = torch.Generator().manual_seed(seed)
    returns = []
    while len(returns) < episodes:
        k = min(len(envs), episodes - len(returns))
        base = EVAL_SEED_OFFSET + seed * 100_003 + len(returns)
        obs = np.stack([envs[i].reset(seed=base + i)[0] for i in range(k)])
        ep_return = np.zeros((k, len(agents)))
        active = np.ones(k, bool)
        while active.any():
            actions = _policy_actions(actor, obs, greedy, generator)
            for i in np.flatnonzero(active):
                obs[i], _, reward, _, _, done = envs[i].step(actions[i])
                ep_return[i] += reward
                active[i] = not done
        returns.extend(ep_return)
    for env in envs:
        env.close()
    returns = np.asarray(returns)
    team = returns.sum(1)
    out = {"team_return_mean": float(team.mean()), "team_return_std": float(team.std()),
           "episodes": int(episodes)}
    out.update({f"return/{ag}": float(returns[:, i].mean()) for i, ag in enumerate(agents)})
    return out


def render_gif(actor: Actor, env_id: str, env_kwargs: dict, path: str | Path, seed: int = 0, fps: int = 10) -> Path:
    """Render one greedy episode to an animated GIF. The env must support ``render_mode='rgb_array'``."""
    from PIL import Image

    from envs import EnvError
    env = TeamEnv(env_id, env_kwargs, render_mode="rgb_array")
    obs, _ = env.reset(seed=EVAL_SEED_OFFSET + seed)
    frames = [env.render()]
    if frames[0] is None:
        raise EnvError(f"env {env_id!r} returned no frame from render(); it does not support rgb_array")
    done = False
    generator = torch.Generator().manual_seed(seed)
    while not done:
        actions = _policy_actions(actor, obs[None], True, generator)[0]
        obs, _, _, _, _, done = env.step(actions)
        frames.append(env.render())
    env.close()
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames if f is not None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
