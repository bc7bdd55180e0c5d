"""Value-decomposition mixers: per-agent utilities ``Q_i`` -> a team value ``Q_tot``.

Pure ``nn.Module``s with no config object inside. Shapes share leading dims ``[...]`` (usually
``[T, B]``):

- ``agent_qs [..., N]``: each agent's utility of its taken action, ``Q_i(τ_i, u_i)``.
- ``state [..., S]``: the global state the mixer conditions on (VDN ignores it).
- ``alive [..., N]`` bool, optional: agents present at that step. An absent agent's utility is
  removed from ``Q_tot``: neither its value nor its gradient reaches the team value.
- QPLEX also takes ``actions [..., N, A]`` (the joint action, one-hot; zero rows for absent agents)
  and ``max_qs [..., N]`` (``V_i = max_u Q_i(τ_i, u)`` over legal actions).

Every mixer returns ``Q_tot [..., 1]``, the team layout of ``algorithms/returns.py``. Mixers
represent a *team* value, so they are trained on a team reward; independent utilities (IQL) need
no mixer. ``mixer_credit`` gives each agent's ``∂Q_tot/∂Q_i`` for any mixer.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

Tensor = torch.Tensor


def _present(agent_qs: Tensor, alive: Tensor | None) -> Tensor:
    """``agent_qs`` with absent agents' utilities replaced by 0 (``torch.where``, so no gradient)."""
    if alive is None:
        return agent_qs
    if alive.shape != agent_qs.shape:
        raise ValueError(f"alive has shape {tuple(alive.shape)}, expected agent_qs' {tuple(agent_qs.shape)}")
    return torch.where(alive.bool(), agent_qs, 0.0)


def _hypernet(state_dim: int, out: int, layers: int, embed: int) -> nn.Module:
    """``state [..., S] -> [..., out]``: one linear layer, or ``layers`` with ReLU between."""
    if layers < 1:
        raise ValueError(f"hypernet_layers must be >= 1, got {layers}")
    if layers == 1:
        return nn.Linear(state_dim, out)
    mods: list[nn.Module] = [nn.Linear(state_dim, embed), nn.ReLU()]
    for _ in range(layers - 2):
        mods += [nn.Linear(embed, embed), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(embed, out))


class VDNMixer(nn.Module):
    """VDN (Sunehag et al., 2018, arXiv:1706.05296): ``Q_tot = Σ_i alive_i Q_i``.

    Intuition: each agent's utility is its additive share of the team value, so every
    ``∂Q_tot/∂Q_i`` is 1. No parameters; ``state`` is accepted for a common call and not read.
    """

    needs_joint_action = False

    def forward(self, agent_qs: Tensor, state: Tensor | None = None, alive: Tensor | None = None) -> Tensor:
        return _present(agent_qs, alive).sum(dim=-1, keepdim=True)


class QMixer(nn.Module):
    """QMIX (Rashid et al., 2018, arXiv:1803.11485): a monotonic mixing network whose weights are
    produced by hypernetworks of the state.

    ``h = ELU(Q · |W_1(s)| + b_1(s))`` with ``W_1(s) [N, E]``, then
    ``Q_tot = h · |w_2(s)| + V(s)`` with ``w_2(s) [E]`` and ``V(s)`` a two-layer MLP. The absolute
    values make every ``∂Q_tot/∂Q_i ≥ 0``, so the joint greedy action is the agents' own greedy
    actions (IGM), at the cost of representing only monotonic team values. Intuition: the state
    decides how much each agent's utility counts; an agent's better action never hurts the team.

    Args:
        n_agents, state_dim: N and S.
        embed_dim: E, the mixing layer's width (PyMARL's ``mixing_embed_dim``, 32).
        hypernet_layers: 1 (linear) or more (ReLU MLP) for the weight hypernetworks.
        hypernet_embed: the hypernetworks' hidden width when ``hypernet_layers > 1``.
    """

    needs_joint_action = False

    def __init__(self, n_agents: int, state_dim: int, *, embed_dim: int = 32, hypernet_layers: int = 2,
                 hypernet_embed: int = 64):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = _hypernet(state_dim, n_agents * embed_dim, hypernet_layers, hypernet_embed)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = _hypernet(state_dim, embed_dim, hypernet_layers, hypernet_embed)
        self.value = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: Tensor, state: Tensor, alive: Tensor | None = None) -> Tensor:
        qs = _present(agent_qs, alive)
        w1 = self.hyper_w1(state).abs().view(*state.shape[:-1], self.n_agents, self.embed_dim)
        hidden = F.elu(torch.einsum("...n,...ne->...e", qs, w1) + self.hyper_b1(state))
        w2 = self.hyper_w2(state).abs()
        return (hidden * w2).sum(dim=-1, keepdim=True) + self.value(state)


class QPLEXMixer(nn.Module):
    """QPLEX (Wang et al., 2021, arXiv:2008.01062): the duplex dueling mixer, as PyMARL2's
    ``dmaq_general`` builds it.

    Transformation: ``Q_i' = w_i(s) Q_i + b_i(s)`` and ``V_i' = w_i(s) V_i + b_i(s)`` with
    ``w_i > 0``. Dueling: ``Q_tot = Σ_i V_i' + Σ_i λ_i(s, u) (Q_i' − V_i')``, where ``V_i = max Q_i``
    and the advantage weights are a sum over K attention heads,
    ``λ_i(s, u) = Σ_k |key_k(s)| · σ(agent_k(s))_i · σ(action_k(s, u))_i > 0``.
    Intuition: every ``Q_i' − V_i' ≤ 0`` with equality exactly at agent i's greedy action, and
    ``λ > 0``, so ``Q_tot``'s argmax over joint actions is the joint of the agents' argmaxes (IGM),
    while ``λ`` depending on the joint action lets ``Q_tot`` represent non-monotonic team values.
    Absent agents contribute neither ``V_i'`` nor an advantage.

    Args:
        n_agents, state_dim, n_actions: N, S and A (the joint action enters λ as ``N·A`` one-hots).
        hypernet_embed: hidden width of the ``w``, ``b`` and head networks.
        heads: K, the attention heads of λ (QPLEX's ``num_kernel``, 4 in PyMARL2).
        adv_hypernet_layers: 1 (linear) or more for the heads' networks.
    """

    needs_joint_action = True

    def __init__(self, n_agents: int, state_dim: int, n_actions: int, *, hypernet_embed: int = 64,
                 heads: int = 4, adv_hypernet_layers: int = 2):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.n_agents, self.n_actions = n_agents, n_actions
        self.weight = _hypernet(state_dim, n_agents, 2, hypernet_embed)
        self.bias = _hypernet(state_dim, n_agents, 2, hypernet_embed)
        joint_dim = state_dim + n_agents * n_actions
        self.keys = nn.ModuleList(_hypernet(state_dim, 1, adv_hypernet_layers, hypernet_embed) for _ in range(heads))
        self.agents = nn.ModuleList(_hypernet(state_dim, n_agents, adv_hypernet_layers, hypernet_embed)
                                    for _ in range(heads))
        self.actions = nn.ModuleList(_hypernet(joint_dim, n_agents, adv_hypernet_layers, hypernet_embed)
                                     for _ in range(heads))

    def lambdas(self, state: Tensor, actions: Tensor) -> Tensor:
        """The advantage weights ``λ_i(s, u) [..., N] > 0`` of ``state [..., S]`` and the one-hot
        joint action ``actions [..., N, A]``."""
        joint = torch.cat([state, actions.flatten(-2).to(state.dtype)], dim=-1)
        weights = [(key(state).abs() + 1e-10) * torch.sigmoid(agent(state)) * torch.sigmoid(action(joint))
                   for key, agent, action in zip(self.keys, self.agents, self.actions)]
        return torch.stack(weights).sum(dim=0)

    def forward(self, agent_qs: Tensor, state: Tensor, alive: Tensor | None = None, *, actions: Tensor,
                max_qs: Tensor) -> Tensor:
        if actions.shape != agent_qs.shape + (self.n_actions,):
            raise ValueError(f"actions has shape {tuple(actions.shape)}, expected one-hots "
                             f"{tuple(agent_qs.shape) + (self.n_actions,)}")
        w = self.weight(state).abs() + 1e-10
        b = self.bias(state)
        if alive is not None:
            b = _present(b, alive)
            actions = torch.where(alive.bool()[..., None], actions.to(state.dtype), 0.0)
        qs, vs = _present(agent_qs, alive), _present(max_qs, alive)
        advantage = w * (qs - vs)
        mixed = w * vs + b + self.lambdas(state, actions) * advantage
        return mixed.sum(dim=-1, keepdim=True)


MIXERS = {"vdn": VDNMixer, "qmix": QMixer, "qplex": QPLEXMixer}


def build_mixer(kind: str, *, n_agents: int, state_dim: int, n_actions: int, **kwargs) -> nn.Module | None:
    """The mixer named ``kind`` (``none`` gives ``None``: independent utilities, IQL); ``kwargs`` go
    to its constructor (``embed_dim``, ``hypernet_layers``, ``hypernet_embed``, ``heads``, ...).

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind == "none":
        return None
    if kind not in MIXERS:
        raise ValueError(f"mixer {kind!r} is not one of none, {', '.join(MIXERS)}")
    if kind == "vdn":
        return VDNMixer(**kwargs)
    if kind == "qmix":
        return QMixer(n_agents, state_dim, **kwargs)
    return QPLEXMixer(n_agents, state_dim, n_actions, **kwargs)


def mixer_credit(mixer: nn.Module, agent_qs: Tensor, state: Tensor, alive: Tensor | None = None,
                 **joint: Tensor) -> Tensor:
    """Each agent's credit ``∂Q_tot/∂Q_i [..., N]`` at ``agent_qs``, by autograd.

    ``joint`` holds QPLEX's ``actions`` and ``max_qs``; ``V_i = max_qs`` is held fixed, so QPLEX's
    credit is ``w_i λ_i``. The mixer's parameters get no gradient. Absent agents get 0.
    """
    qs = agent_qs.detach().requires_grad_(True)
    with torch.enable_grad():
        q_tot = mixer(qs, state.detach(), alive, **{k: v.detach() for k, v in joint.items()})
        (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    return grad
