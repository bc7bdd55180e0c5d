"""Actor and critic networks. Every network maps ``[..., N, in]`` to ``[..., N, out]`` in one call,
so policy inference is batched over envs and agents with no Python loop. Image observations and
states go through an ``ImageEncoder`` (a small CNN) first, where ``model.encoder`` says so."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from marl.algorithms import DOP_CRITIC, Q_CRITIC, CriticKind, coma_critic_inputs
from marl.algorithms.dop import dop_mix, positive_weights
from marl.distributions import Categorical, DiagGaussian
from marl.envs.team_env import ImageLayout

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class AgentLinear(nn.Module):
    """A linear layer over ``[..., N, in]``: one weight for all agents, or one per agent (batched)."""

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, shared: bool, gain: float):
        super().__init__()
        self.shared = shared
        copies = 1 if shared else n_agents
        weight = torch.empty(copies, out_dim, in_dim)
        for w in weight:
            nn.init.orthogonal_(w, gain=gain)
        if shared:   # nn.Linear's [out, in] layout: one fused F.linear (an 8% faster update than x @ W + b)
            self.weight = nn.Parameter(weight[0])
            self.bias = nn.Parameter(torch.zeros(out_dim))
        else:        # [N, in, out], for one batched product over agents
            self.weight = nn.Parameter(weight.transpose(1, 2).contiguous())
            self.bias = nn.Parameter(torch.zeros(copies, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return F.linear(x, self.weight, self.bias)
        return torch.einsum("...ni,nio->...no", x, self.weight) + self.bias


def as_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 (uint8 images are kept as uint8 until a network reads them)."""
    return x if x.is_floating_point() else x.to(torch.float32)


IMAGE_PIXELS = 2048   # an image is subsampled to about this many pixels before the first convolution


class ImageEncoder(nn.Module):
    """A small CNN from flattened images ``[..., D]`` (``D = H·W·C`` in ``layout``'s order) to features
    ``[..., hidden]``, in two stages:

    - ``prepare(x) -> [..., C, h, w]`` float, no parameters (the learner runs it once per batch, not
      once per epoch): every k-th pixel in each direction, k so that about ``IMAGE_PIXELS`` remain
      (8 on a 280×480 screen, 1 up to 45×45), channels first, uint8 scaled by 1/255. An object
      smaller than k pixels can fall between the kept ones;
    - ``forward``: a 4×4 stride-4 convolution (16 channels), a 3×3 stride-2 one (32 channels) where
      the map is still 3×3 or larger, then a linear layer to ``hidden``, each with a ReLU (the
      Nature-DQN layout, cut down so that 15 PPO epochs on a 280×480 env run on one CPU thread).
    """

    def __init__(self, layout: ImageLayout, hidden: int):
        super().__init__()
        self.layout = layout
        h, w, c = layout.shape if layout.channels_last else (*layout.shape[1:], layout.shape[0])
        self.stride = max(1, min(int(math.sqrt(h * w / IMAGE_PIXELS)), min(h, w) // 8))
        h, w = -(-h // self.stride), -(-w // self.stride)
        convs = [nn.Conv2d(c, 16, 4, 4), nn.ReLU()]
        h, w = h // 4, w // 4
        if min(h, w) >= 3:
            convs += [nn.Conv2d(16, 32, 3, 2), nn.ReLU()]
            h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        self.convs = nn.Sequential(*convs)
        self.out = nn.Sequential(nn.Linear(convs[-2].out_channels * h * w, hidden), nn.ReLU())
        self.out_dim = hidden
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(m.weight, gain=math.sqrt(2))
                nn.init.zeros_(m.bias)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Flat images ``[..., D]`` (uint8 or float) -> the network's input ``[..., C, h, w]`` float32."""
        k, lead = self.stride, x.shape[:-1]
        x = x.reshape(*lead, *self.layout.shape)
        x = x[..., ::k, ::k, :] if self.layout.channels_last else x[..., ::k, ::k]
        x = x.to(torch.float32)   # copies the kept pixels only
        if self.layout.channels_last:
            x = x.movedim(-1, -3)
        x = x.contiguous()
        return x * (1.0 / 255.0) if self.layout.uint8 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``prepare``'s output ``[..., C, h, w]`` -> features ``[..., hidden]``."""
        lead = x.shape[:-3]
        y = self.convs(x.reshape(-1, *x.shape[-3:]))
        return self.out(y.reshape(*lead, -1))


class AgentMLP(nn.Module):
    """MLP over ``[..., N, in] -> [..., N, out]``, shared across agents or one per agent."""

    recurrent = False

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, hidden: int, layers: int,
                 activation: str = "relu", shared: bool = True, out_gain: float = 1.0):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        body = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            body += [AgentLinear(n_agents, d_in, d_out, shared, math.sqrt(2)), ACTIVATIONS[activation]()]
        self.body = nn.Sequential(*body)
        self.head = AgentLinear(n_agents, dims[-1], out_dim, shared, out_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class AgentGRUCell(nn.Module):
    """A GRU cell (Cho et al., 2014) over ``[..., N, in]`` rows with hidden ``[..., N, H]``, shared
    across agents or one per agent (its gates are ``AgentLinear`` layers)."""

    def __init__(self, n_agents: int, in_dim: int, hidden: int, shared: bool):
        super().__init__()
        self.input_gates = AgentLinear(n_agents, in_dim, 3 * hidden, shared, 1.0)
        self.hidden_gates = AgentLinear(n_agents, hidden, 3 * hidden, shared, 1.0)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.from_input_gates(self.input_gates(x), h)

    def from_input_gates(self, gates_in: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step from the input's gate pre-activations ``[..., N, 3H]`` (computed ahead for a
        whole sequence by ``unroll``) and the hidden ``h [..., N, H]``."""
        i_r, i_z, i_n = gates_in.chunk(3, -1)
        h_r, h_z, h_n = self.hidden_gates(h).chunk(3, -1)
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return (1.0 - update) * candidate + update * h


class RecurrentAgentMLP(nn.Module):
    """``AgentMLP`` with a GRU after the first layer (MAPPO's recurrent policy and critic):
    ``step(x [..., N, in], h [..., N, H]) -> (out [..., N, out], h')``."""

    recurrent = True

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, hidden: int, layers: int,
                 activation: str = "relu", shared: bool = True, out_gain: float = 1.0):
        super().__init__()
        self.hidden_size = hidden
        self.first = nn.Sequential(AgentLinear(n_agents, in_dim, hidden, shared, math.sqrt(2)),
                                   ACTIVATIONS[activation]())
        self.gru = AgentGRUCell(n_agents, hidden, hidden, shared)
        rest = []
        for _ in range(layers - 1):
            rest += [AgentLinear(n_agents, hidden, hidden, shared, math.sqrt(2)), ACTIVATIONS[activation]()]
        self.rest = nn.Sequential(*rest)
        self.head = AgentLinear(n_agents, hidden, out_dim, shared, out_gain)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.gru(self.first(x), h)
        return self.head(self.rest(h)), h


def unroll(net: RecurrentAgentMLP, x: torch.Tensor, h0: torch.Tensor, first: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``net`` over a sequence ``x [T, *B, R, in]`` from hidden ``h0 [*B, R, H]``, zeroing the
    hidden where ``first [T, *B]`` marks an episode's first step. Returns the outputs
    ``[T, *B, R, out]``, the hiddens each step starts from (after the reset) and the hiddens after
    each step, both ``[T, *B, R, H]``.

    The layers before and after the GRU run once over the whole sequence; only the recurrence is
    sequential. A shared GRU runs as PyTorch's fused GRU over each stretch of steps in which no
    row resets (one stretch when episodes start only where chunks do), so no Python loop runs per
    step; per-agent GRU weights step a cell whose input gates were computed for all steps at once."""
    keep = (~first).to(x.dtype).unsqueeze(-1).unsqueeze(-1)   # [T, *B, 1, 1]
    z = net.first(x)                                          # [T, *B, R, H]
    cell = net.gru
    if cell.input_gates.shared:
        ends = _fused_gru(cell, z, h0, first, keep)
    else:
        gates_in = cell.input_gates(z)
        out, h = [], h0
        for t in range(z.shape[0]):
            h = cell.from_input_gates(gates_in[t], h * keep[t])
            out.append(h)
        ends = torch.stack(out)
    starts = torch.cat([h0.unsqueeze(0), ends[:-1]]) * keep
    return net.head(net.rest(ends)), starts, ends


def _fused_gru(cell: AgentGRUCell, z: torch.Tensor, h0: torch.Tensor, first: torch.Tensor,
               keep: torch.Tensor) -> torch.Tensor:
    """The hiddens after each step ``[T, *B, R, H]`` of a shared ``cell`` over inputs ``z``, with
    ``torch.gru`` (the same gates: r, z, n, with the reset gate applied to ``W_hn h + b_hn``) run
    over the stretches between the steps at which some row resets."""
    T, H = z.shape[0], z.shape[-1]
    rows = z[0].numel() // z.shape[-1]
    params = [cell.input_gates.weight, cell.hidden_gates.weight, cell.input_gates.bias, cell.hidden_gates.bias]
    resets = first.reshape(T, -1).any(-1)
    resets[0] = True
    cuts = resets.nonzero().flatten().tolist() + [T]
    flat_keep = keep.expand(*z.shape[:-1], 1).reshape(T, rows, 1)
    flat_z, h = z.reshape(T, rows, z.shape[-1]), h0.reshape(1, rows, H)
    pieces = []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        out, h = torch.gru(flat_z[start:stop], h * flat_keep[start], params, True, 1, 0.0, cell.training, False,
                           False)
        pieces.append(out)
    return torch.cat(pieces).reshape(*z.shape[:-1], H)


def with_agent_id(x: torch.Tensor) -> torch.Tensor:
    """Append a one-hot agent id to ``x [..., N, D]`` -> ``[..., N, D + N]``."""
    n = x.shape[-2]
    eye = torch.eye(n, dtype=x.dtype, device=x.device).expand(*x.shape[:-2], n, n)
    return torch.cat([x, eye], dim=-1)


MASKED_LOGIT = -1e9   # the logit of an illegal action: probability exactly 0, and finite arithmetic


class Actor(nn.Module):
    """Decentralised policy π(u_i | o_i) (or π(u_i | τ_i) with ``recurrent``), for every agent at once.

    Its output ``[..., N, A]`` is a distribution's input: masked logits for discrete actions
    (``action_mask [N, A]`` marks the actions each agent has at all; ``avail [..., N, A]``, when
    given, the legal actions of that step, ``action_mask`` included), or the mean of a diagonal
    Gaussian for continuous ones, with a learned state-independent log-std (``action_mask`` then
    marks each agent's action dims). ``distribution(out)`` turns it into a
    ``marl.distributions`` object. A recurrent actor has a GRU after its first layer
    (``hidden_size``), stepped by ``step`` and ``unroll``. With an ``encoder`` (image observations)
    the MLP reads each agent's image features instead of its observation.
    """

    def __init__(self, n_agents: int, obs_dim: int, n_actions: int, action_mask: torch.Tensor,
                 hidden: int, layers: int, activation: str, shared: bool, continuous: bool = False,
                 recurrent: bool = False, log_std_init: float = -0.5, encoder: ImageEncoder | None = None):
        super().__init__()
        self.shared, self.continuous, self.n_agents = shared, continuous, n_agents
        self.encoder = encoder
        in_dim = (encoder.out_dim if encoder is not None else obs_dim) + (n_agents if shared else 0)
        net = RecurrentAgentMLP if recurrent else AgentMLP
        self.net = net(n_agents, in_dim, n_actions, hidden, layers, activation, shared, out_gain=0.01)
        self.recurrent = recurrent
        self.hidden_size = hidden if recurrent else 0
        self.register_buffer("action_mask", action_mask.bool())
        self._all_available = bool(action_mask.all())
        if continuous:
            self.log_std = nn.Parameter(torch.full((n_actions,) if shared else (n_agents, n_actions), log_std_init))

    def inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """What the network reads, from ``obs [..., N, O]`` (the update builds it once per batch): the
        observation with the one-hot agent id when shared, or the encoder's prepared images
        ``[..., N, C, h, w]``."""
        if self.encoder is not None:
            return self.encoder.prepare(obs)
        return self._with_id(as_float(obs))

    def _with_id(self, x: torch.Tensor) -> torch.Tensor:
        return with_agent_id(x) if self.shared else x

    def _net_input(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs if self.encoder is None else self._with_id(self.encoder(inputs))

    def dist_inputs(self, raw: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        """The network's raw output as a distribution's input: logits masked by ``avail`` (or the
        static ``action_mask``), or the Gaussian mean unchanged."""
        if self.continuous:
            return raw
        if avail is not None:
            return raw.masked_fill(~avail, MASKED_LOGIT)
        return raw if self._all_available else raw.masked_fill(~self.action_mask, MASKED_LOGIT)

    def logits(self, inputs: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        """``dist_inputs`` from ``inputs(obs)`` for a feed-forward actor (the update builds the
        inputs once per batch)."""
        return self.dist_inputs(self.net(self._net_input(inputs)), avail)

    def forward(self, obs: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        """``dist_inputs [..., N, A]`` of a feed-forward actor (a recurrent one needs ``step``)."""
        if self.recurrent:
            raise TypeError("a recurrent actor needs its hidden state: use step() or unroll()")
        return self.logits(self.inputs(obs), avail)

    def initial_hidden(self, *batch: int, device=None) -> torch.Tensor | None:
        """Zero hidden states ``[*batch, N, H]`` (None for a feed-forward actor)."""
        if not self.recurrent:
            return None
        return torch.zeros(*batch, self.n_agents, self.hidden_size, device=device or self.action_mask.device)

    def step(self, obs: torch.Tensor, avail: torch.Tensor | None, hidden: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step ``obs [..., N, O]`` from ``hidden [..., N, H]``: ``(dist_inputs, next hidden)``."""
        if not self.recurrent:
            return self.logits(self.inputs(obs), avail), None
        out, hidden = self.net.step(self._net_input(self.inputs(obs)), hidden)
        return self.dist_inputs(out, avail), hidden

    def unroll(self, obs: torch.Tensor, avail: torch.Tensor | None, h0: torch.Tensor | None,
               first: torch.Tensor | None) -> torch.Tensor:
        """``dist_inputs [T, *B, N, A]`` over a sequence ``obs [T, *B, N, O]`` from ``h0``, the hidden
        reset where ``first [T, *B]`` marks an episode's first step (see ``unroll``)."""
        if not self.recurrent:
            return self.logits(self.inputs(obs), avail)
        out, _, _ = unroll(self.net, self._net_input(self.inputs(obs)), h0, first)
        return self.dist_inputs(out, avail)

    def distribution(self, out: torch.Tensor):
        """The action distribution of ``dist_inputs`` ``out [..., N, A]``."""
        if self.continuous:
            return DiagGaussian(out, self.log_std, self.action_mask)
        return Categorical(out)


class CriticSizes(NamedTuple):
    """An env's sizes, as a critic reads them."""
    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int


class ImageInputs(NamedTuple):
    """An env's image inputs that go through a CNN encoder: the layouts of its observations and of its
    global state (None where flat), and whether the state is the observations side by side
    (``marl.envs.team_env.TeamEnv``'s attributes of the same names)."""

    obs_image: ImageLayout | None = None
    state_image: ImageLayout | None = None
    state_is_obs: bool = False

    @classmethod
    def of(cls, env) -> ImageInputs:
        """The image inputs of a ``TeamEnv``, vector env or ``EnvSpec`` (none for a batched env)."""
        return cls(getattr(env, "obs_image", None), getattr(env, "state_image", None),
                   bool(getattr(env, "state_is_obs", False)))

    def obs_encoder(self, hidden: int) -> ImageEncoder | None:
        return None if self.obs_image is None else ImageEncoder(self.obs_image, hidden)

    def state_encoder(self, hidden: int) -> ImageEncoder | None:
        return None if self.state_image is None else ImageEncoder(self.state_image, hidden)


class Critic(nn.Module):
    """Base of the critics: each owns its network, what it reads and its output layout.

    ``inputs(state, obs, actions, alive)`` builds what it reads from a batch (``[..., S]`` for a
    central V, ``[..., N, D]`` per agent otherwise); ``forward(x)`` gives values ``[..., N]`` (V
    critics) or Q values ``[..., N, A]`` (``q``). A recurrent critic (``hidden_size > 0``) steps
    with ``step(x, h)`` over ``rows`` hidden rows per env (1 for a central V, else N). Each network
    makes itself for an env with ``build(sizes, team_value, with_obs, images, **common)``;
    ``build_critic`` picks the network.
    """

    q = False                # outputs Q(s, u^-a, ·) per agent instead of V
    mixed = False            # DOP: the per-agent Q are mixed into Q_tot (see DOPCritic)
    per_agent_inputs = True  # reads [..., N, D]; False: the state [..., S] only
    encodes_images = True    # image observations or state go through a CNN encoder; False: refused
    team_value = False       # one value head for the team (a shared reward), else one per agent

    def __init__(self, net: nn.Module, rows: int, n_agents: int):
        super().__init__()
        self.net = net
        self.rows = rows
        self.n_agents = n_agents
        self.recurrent = net.recurrent
        self.hidden_size = net.hidden_size if net.recurrent else 0

    @property
    def value_heads(self) -> int:
        """The value heads, one per reward column: 1 for a team value, else N."""
        return 1 if self.team_value else self.n_agents

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _output(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._output(self.net(self._net_input(x)), x)

    def prediction(self, out: torch.Tensor, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What the critic loss compares with the target, ``[..., N]``, from its output ``out`` on
        inputs ``x``: V itself (Q critics pick the taken action's value)."""
        return out

    def initial_hidden(self, *batch: int, device=None) -> torch.Tensor | None:
        if not self.recurrent:
            return None
        return torch.zeros(*batch, self.rows, self.hidden_size, device=device)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.net.step(self._net_input(x), h)
        return self._output(out, x), h

    def unroll(self, x: torch.Tensor, h0: torch.Tensor, first: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outputs ``[T, ...]`` over a sequence, and the hiddens each step starts from and ends with,
        ``[T, *B, rows, H]`` (see ``unroll``)."""
        out, starts, ends = unroll(self.net, self._net_input(x), h0, first)
        return self._output(out, x), starts, ends


class CentralCritic(Critic):
    """Centralised V(s) for every agent: ``state [..., S] -> [..., N]``.

    With a team reward (``team_value=True``) one head gives the team's value to every agent, as in
    MAPPO/MAA2C; otherwise each agent gets its own head for its own (individual or mixed) return.
    An image state goes through ``state_encoder``; a state that is the agents' image observations
    side by side (an env without ``state()``) goes through ``obs_encoder`` agent by agent, and the
    MLP reads the N agents' features, never their raw images.
    """

    per_agent_inputs = False

    def __init__(self, n_agents: int, state_dim: int, hidden: int, layers: int, activation: str,
                 team_value: bool = False, recurrent: bool = False, state_encoder: ImageEncoder | None = None,
                 obs_encoder: ImageEncoder | None = None):
        if state_encoder is not None:
            state_dim = state_encoder.out_dim
        elif obs_encoder is not None:
            state_dim = n_agents * obs_encoder.out_dim
        net = RecurrentAgentMLP if recurrent else AgentMLP
        super().__init__(net(1, state_dim, 1 if team_value else n_agents, hidden, layers, activation, shared=True), 1,
                         n_agents)
        self.team_value = team_value
        self.state_encoder, self.obs_encoder = state_encoder, obs_encoder

    @classmethod
    def build(cls, sizes: CriticSizes, team_value: bool, with_obs: bool, images: ImageInputs, **common):
        obs_encoder = images.obs_encoder(common["hidden"])   # made first, as every V critic does (same draws)
        return cls(sizes.n_agents, sizes.state_dim, team_value=team_value, state_encoder=images.state_encoder(
            common["hidden"]), obs_encoder=obs_encoder if images.state_is_obs else None, **common)

    def inputs(self, state, obs, actions=None, alive=None):
        """``state``, or its prepared images: ``[..., C, h, w]`` (``state_encoder``) or ``[..., N, C, h,
        w]`` (``obs_encoder``)."""
        if self.state_encoder is not None:
            return self.state_encoder.prepare(state)
        if self.obs_encoder is not None:
            return self.obs_encoder.prepare(state.reshape(*state.shape[:-1], self.n_agents, -1))
        return as_float(state)

    def _net_input(self, x):
        if self.state_encoder is not None:
            x = self.state_encoder(x)
        elif self.obs_encoder is not None:
            x = self.obs_encoder(x).flatten(-2)
        return x.unsqueeze(-2)

    def _output(self, out, x):
        return out.squeeze(-2).expand(*out.shape[:-2], self.n_agents)


class LocalCritic(Critic):
    """A value per agent from per-agent inputs, shared with a one-hot agent id: ``x [..., N, D] -> [..., N]``.
    With ``x = o_i`` it is the decentralised V(o_i) (IPPO/IA2C), image observations through
    ``obs_encoder``; ``AgentStateCritic`` reads ``x = [s, o_i]``."""

    reads_state = False   # x = [s, o_i]: the raw state beside each observation

    def __init__(self, n_agents: int, obs_dim: int, hidden: int, layers: int, activation: str,
                 state_dim: int = 0, recurrent: bool = False, obs_encoder: ImageEncoder | None = None):
        if obs_encoder is not None:
            obs_dim = obs_encoder.out_dim
        in_dim = obs_dim + (state_dim if self.reads_state else 0)
        net = RecurrentAgentMLP if recurrent else AgentMLP
        super().__init__(net(n_agents, in_dim + n_agents, 1, hidden, layers, activation, shared=True), n_agents,
                         n_agents)
        self.obs_encoder = obs_encoder

    @classmethod
    def build(cls, sizes: CriticSizes, team_value: bool, with_obs: bool, images: ImageInputs, **common):
        return cls(sizes.n_agents, sizes.obs_dim, state_dim=sizes.state_dim,
                   obs_encoder=images.obs_encoder(common["hidden"]), **common)

    def inputs(self, state, obs, actions=None, alive=None):
        if self.obs_encoder is not None:
            return self.obs_encoder.prepare(obs)
        state, obs = as_float(state), as_float(obs)
        if self.reads_state:
            return torch.cat([state.unsqueeze(-2).expand(*obs.shape[:-1], state.shape[-1]), obs], -1)
        return obs

    def _net_input(self, x):
        return with_agent_id(x if self.obs_encoder is None else self.obs_encoder(x))

    def _output(self, out, x):
        return out.squeeze(-1)


class AgentStateCritic(LocalCritic):
    """MAPPO's agent-specific V(s, o_i, i): ``[s, o_i]`` rows ``[..., N, S + O] -> [..., N]``; it reads
    the raw state, so it encodes no images."""

    reads_state = True
    encodes_images = False


class QCritic(Critic):
    """COMA's counterfactual critic (Foerster et al., 2018): per-agent inputs ``[..., N, D]`` (state,
    the other agents' actions, the agent's id; see ``marl.algorithms.coma_critic_inputs``) to
    Q(s, u^{-a}, ·) for all of the agent's actions, ``[..., N, A]``, in one forward pass. An absent
    agent (``alive`` False) contributes no action: a zero one-hot."""

    q = True
    encodes_images = False

    def __init__(self, n_agents: int, state_dim: int, obs_dim: int, n_actions: int, hidden: int, layers: int,
                 activation: str, with_obs: bool = False, recurrent: bool = False):
        in_dim = state_dim + n_agents * n_actions + n_agents + (obs_dim if with_obs else 0)
        net = RecurrentAgentMLP if recurrent else AgentMLP
        super().__init__(net(1, in_dim, n_actions, hidden, layers, activation, shared=True), n_agents, n_agents)
        self.n_actions, self.with_obs = n_actions, with_obs

    @classmethod
    def build(cls, sizes: CriticSizes, team_value: bool, with_obs: bool, images: ImageInputs, **common):
        return cls(sizes.n_agents, sizes.state_dim, sizes.obs_dim, sizes.n_actions, with_obs=with_obs, **common)

    def inputs(self, state, obs, actions=None, alive=None):
        state, obs = as_float(state), as_float(obs)
        onehot = F.one_hot(actions, self.n_actions).to(state.dtype)
        if alive is not None:
            onehot = onehot * alive.unsqueeze(-1).to(state.dtype)
        return coma_critic_inputs(state, onehot, obs if self.with_obs else None)

    def prediction(self, out, x, actions):
        return out.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


class DOPCritic(Critic):
    """DOP's decomposed critic (Wang et al., 2021, "Off-Policy Multi-Agent Decomposed Policy
    Gradients"): per-agent utilities Q_a(s, ·) from ``[s, one-hot a (, o_a)]`` rows, ``[..., N, A]``,
    mixed by state-conditioned weights k_a(s) = |w_a(s)| ≥ 0 and a bias b(s) into
    Q_tot(s, u) = Σ_a k_a(s) Q_a(s, u_a) + b(s), which learns the team's TD(λ) targets."""

    q = True
    mixed = True
    encodes_images = False
    build = classmethod(QCritic.build.__func__)

    def __init__(self, n_agents: int, state_dim: int, obs_dim: int, n_actions: int, hidden: int, layers: int,
                 activation: str, with_obs: bool = False, recurrent: bool = False):
        if recurrent:
            raise ValueError("DOP's critic is feed-forward")
        in_dim = state_dim + n_agents + (obs_dim if with_obs else 0)
        super().__init__(AgentMLP(1, in_dim, n_actions, hidden, layers, activation, shared=True), n_agents, n_agents)
        self.mixer = AgentMLP(1, state_dim, n_agents + 1, hidden, 1, activation, shared=True)
        self.state_dim, self.with_obs = state_dim, with_obs

    def inputs(self, state, obs, actions=None, alive=None):
        state, obs = as_float(state), as_float(obs)
        parts = [state.unsqueeze(-2).expand(*obs.shape[:-1], state.shape[-1]),
                 torch.eye(obs.shape[-2], dtype=state.dtype, device=state.device).expand(*obs.shape[:-1], obs.shape[-2])]
        if self.with_obs:
            parts.append(obs)
        return torch.cat(parts, -1)

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixing weights ``k [..., N]`` (≥ 0) and bias ``b [...]`` of the state in rows ``x``."""
        out = self.mixer(x[..., :1, :self.state_dim]).squeeze(-2)
        return positive_weights(out[..., :-1]), out[..., -1]

    def prediction(self, out, x, actions):
        """Q_tot of the taken joint action, the same for every agent ``[..., N]``."""
        k, b = self.mix(x)
        q_tot = dop_mix(k, out.gather(-1, actions.unsqueeze(-1)).squeeze(-1), b)
        return q_tot.unsqueeze(-1).expand_as(k)


V_CRITICS: dict[str, type[Critic]] = {"central": CentralCritic, "agent_state": AgentStateCritic,
                                      "local": LocalCritic}
"""``algo.critic``: where a V critic sits (what it reads), and its network."""

ACTION_CRITICS: dict[CriticKind, type[Critic]] = {Q_CRITIC: QCritic, DOP_CRITIC: DOPCritic}
"""The registry's critic kinds over actions (``marl.algorithms.registry``), and their networks."""


def critic_class(kind: CriticKind, placement: str) -> type[Critic]:
    """The network of an advantage module's critic ``kind``: its own for a critic over actions, else
    the V critic ``algo.critic`` (``placement``) names."""
    return ACTION_CRITICS[kind] if kind.over_actions else V_CRITICS[placement]


def build_critic(kind: CriticKind, placement: str, sizes: CriticSizes, team_value: bool, with_obs: bool,
                 images: ImageInputs | None = None, **common) -> Critic:
    """The critic of ``kind`` (``placement`` for a V critic) for an env's ``sizes``: ``team_value``
    gives a V critic one head for the team, ``with_obs`` adds each agent's observation to a critic
    over actions, ``images`` are what it encodes (its own encoders: the actor's are separate
    networks, as MAPPO's actor and critic are), ``common`` the network's ``hidden``, ``layers``,
    ``activation`` and ``recurrent``."""
    return critic_class(kind, placement).build(sizes, team_value, with_obs, images or ImageInputs(), **common)


class ValueNorm(nn.Module):
    """Running mean and variance of value targets per critic head (one per agent, or one for a team
    head); critics learn in normalised space.

    The statistics (and each agent's sample count) live in buffers, so they are saved with the model.
    """

    def __init__(self, n_agents: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(n_agents, dtype=torch.float64))
        self.register_buffer("var", torch.ones(n_agents, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(n_agents, dtype=torch.float64))

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Fold ``x [..., N]`` into the statistics (parallel mean/variance combination); with ``mask``
        (bool ``[..., N]``) only the marked entries count."""
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if mask is None:
            n = torch.full_like(self.count, x.shape[0])
            batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        else:
            w = mask.reshape(-1, x.shape[-1]).double()
            n = w.sum(0)
            batch_mean = (w * x).sum(0) / n.clamp_min(1)
            batch_var = (w * (x - batch_mean) ** 2).sum(0) / n.clamp_min(1)
        total = self.count + n
        seen = n > 0
        delta = batch_mean - self.mean
        safe = total.clamp_min(1)
        mean = self.mean + delta * n / safe
        var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / safe) / safe
        self.mean.copy_(torch.where(seen, mean, self.mean))
        self.var.copy_(torch.where(seen, var, self.var))
        self.count.copy_(total)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        count = state_dict.get(prefix + "count")
        if count is not None and count.dim() == 0:   # checkpoints before per-agent counts
            state_dict[prefix + "count"] = count.expand_as(self.count).clone()
        if self.mean.numel() == 1:   # a team head's statistics, saved per agent before 2026-12-07 (all equal)
            for name in ("mean", "var", "count"):
                saved = state_dict.get(prefix + name)
                if saved is not None and saved.dim() == 1 and saved.numel() > 1:
                    state_dict[prefix + name] = saved[:1].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / (self.var + self.eps).sqrt()).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (self.var + self.eps).sqrt() + self.mean).to(x.dtype)
