"""Learner-connector pieces: the joint columns of a centralised critic, and the advantage piece that
replaces RLlib's ``GeneralAdvantageEstimation`` with the project's advantage modules.

The learner pipeline (PPO's, with our two pieces) runs::

    AddOneTsToEpisodesAndTruncate   (RLlib: one bootstrap row per episode chunk, loss_mask False)
    AddJointColumns                 (ours: state, joint actions, env flags, (chunk, t, agent) index)
    ... RLlib's pieces that batch observations, actions, rewards, logp per module ...
    CreditAdvantages                (ours, in place of GeneralAdvantageEstimation)

``CreditAdvantages`` turns a module batch (one row per agent and step, chunk after chunk) back into
the local backend's time-major ``[T, B, N, ...]`` batch, one column b per episode chunk (zero-padded
to the longest chunk), whose keys are step-schema fields (``marl.envs.step_schema.ROLLOUT``, as in
``marl.rollout.Rollout.tensors()``) with the schema's shapes and dtypes. It calls
``CreditLearner.prepare`` on it, exactly as the local trainer does, so the credit is the same by
construction, and scatters the advantages and value targets back to the rows.

Flags. RLlib's own ``terminateds`` column marks a pure time-limit end as terminated (its
``MultiAgentEpisode`` is terminated *and* truncated), so its GAE does not bootstrap there. We read
the env's own per-agent flags from the info dicts instead (``env.py``): a time limit is a
truncation and bootstraps from V(final state), exactly as in the local backend. A chunk that ends
because the rollout was cut (not by the env) is truncated at its last step, which is what the
local backend's rollout end amounts to.
"""
from __future__ import annotations

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from marl.rllib.env import ALIVE as INFO_ALIVE, STATE as INFO_STATE, TERMINATED as INFO_TERMINATED
from marl.rllib.env import TRUNCATED as INFO_TRUNCATED
from marl.rllib.module import ALIVE, CRITIC_IN, ENV_FLAGS, INDEX, JOINT_ACTIONS, STATE, WEIGHT

# Columns the loss does not need once the advantages are computed.
_SPENT = (STATE, JOINT_ACTIONS, ENV_FLAGS, ALIVE, Columns.LOSS_MASK, Columns.TERMINATEDS, Columns.TRUNCATEDS)


class AddJointColumns(ConnectorV2):
    """Per row: the global state ``STATE``, the joint action ``JOINT_ACTIONS`` (sorted agent ids),
    the env's flags of the step ``ENV_FLAGS``, whether the row's agent acts at that step ``ALIVE``,
    and the row's coordinates ``INDEX`` = (chunk b, step t, agent i). Runs right after
    ``AddOneTsToEpisodesAndTruncate``, so every chunk already has its bootstrap row (the final
    observation and state)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, agents, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.agents = list(agents)

    def _joint(self, episode) -> tuple:
        chunks = [episode.agent_episodes.get(a) for a in self.agents]
        lengths = {len(c) for c in chunks if c is not None}
        if any(c is None for c in chunks) or len(lengths) != 1:
            steps = {a: len(c) if c is not None else 0 for a, c in zip(self.agents, chunks)}
            raise ValueError(f"an episode chunk has steps {steps} per agent; the rllib backend needs every agent "
                             f"to act at every step")
        L = lengths.pop()
        infos = chunks[0].get_infos(slice(0, L))
        state = np.stack([np.asarray(info[INFO_STATE], np.float32) for info in infos])
        alive = np.stack([np.asarray(info.get(INFO_ALIVE, np.ones(len(self.agents), bool)), bool) for info in infos])
        flags = np.zeros((L, len(self.agents), 2), bool)
        for k in range(L - 1):  # the flags of step k come with the observation after it
            flags[k, :, 0] = infos[k + 1][INFO_TERMINATED]
            flags[k, :, 1] = infos[k + 1][INFO_TRUNCATED]
        actions = [np.asarray(c.get_actions(slice(0, L))) for c in chunks]
        # [L, N] action indices; continuous actions (read by no joint-action module) stay float, [L, N, A]
        actions = (np.stack(actions, 1).astype(np.float32) if np.issubdtype(actions[0].dtype, np.floating)
                   else np.stack(actions, -1).astype(np.int64))
        return L, state, actions, flags, alive

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        chunk_of = {episode.id_: b for b, episode in enumerate(episodes)}
        cache = {}
        # The same iterator as RLlib's own pieces, so the rows line up with theirs.
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            key = sa_episode.multi_agent_episode_id
            if key not in cache:
                cache[key] = self._joint(episodes[chunk_of[key]])
            L, state, actions, flags, alive = cache[key]
            i = self.agents.index(sa_episode.agent_id)
            index = np.stack([np.full(L, chunk_of[key]), np.arange(L), np.full(L, i)], -1)
            self.add_n_batch_items(batch, STATE, state, L, sa_episode)
            self.add_n_batch_items(batch, JOINT_ACTIONS, actions, L, sa_episode)
            self.add_n_batch_items(batch, ENV_FLAGS, flags[:, i], L, sa_episode)
            self.add_n_batch_items(batch, ALIVE, alive[:, i], L, sa_episode)
            self.add_n_batch_items(batch, INDEX, index, L, sa_episode)
        return batch


def _as_actions(actions: torch.Tensor) -> torch.Tensor:
    """Discrete action indices as long, continuous actions as float (never truncated to ints)."""
    return actions.float() if actions.is_floating_point() else actions.long()


def to_time_major(mb: dict, obs_dim: int, n_agents: int, dynamic_mask: bool = False) -> tuple[dict, torch.Tensor]:
    """A module batch (rows, see ``AddJointColumns``) as the local backend's rollout batch.

    Returns ``(batch, valid)``: ``batch`` has ``obs``, ``next_obs`` ``[T, B, N, O]``, ``state``,
    ``next_state`` ``[T, B, S]``, ``actions``, ``logp``, ``reward``, ``terminated``, ``truncated``,
    ``alive`` ``[T, B, N]`` and, with ``dynamic_mask``, ``avail``/``next_avail`` ``[T, B, N, A]``
    (read from the observations' mask bits), one column b per episode chunk; ``valid [T, B, N]`` is
    True on real steps of agents that act. Padding steps are zeros and terminated. A chunk not
    ended by the env is truncated at its last step.
    """
    b, t, i = mb[INDEX].long().unbind(-1)
    real = mb[Columns.LOSS_MASK].bool()
    B = int(b.max()) + 1
    lengths = torch.bincount(b[real & (i == 0)], minlength=B)
    T = int(lengths.max())

    def extended(column: torch.Tensor, dtype=None) -> torch.Tensor:
        out = column.new_zeros((T + 1, B, n_agents) + tuple(column.shape[1:]), dtype=dtype)
        out[t, b, i] = column.to(out.dtype)
        return out

    rows = extended(mb[Columns.OBS])
    obs = rows[..., :obs_dim]
    first = i == 0
    states = mb[STATE].new_zeros((T + 1, B, mb[STATE].shape[-1]))
    states[t[first], b[first]] = mb[STATE][first]
    flags = extended(mb[ENV_FLAGS].bool())[:T]
    terminated, truncated = flags[..., 0].clone(), flags[..., 1].clone()
    mask = torch.arange(T, device=b.device)[:, None] < lengths[None, :]
    terminated |= ~mask[..., None]
    cols = torch.arange(B, device=b.device)
    last = lengths - 1
    truncated[last, cols] = truncated[last, cols] | ~terminated[last, cols]
    alive = extended(mb[ALIVE].bool())[:T] if ALIVE in mb else mask[..., None].expand(T, B, n_agents)
    batch = {"obs": obs[:T], "next_obs": obs[1:], "state": states[:T], "next_state": states[1:],
             "actions": extended(_as_actions(mb[Columns.ACTIONS]))[:T],
             "logp": extended(mb[Columns.ACTION_LOGP].float())[:T],
             "reward": extended(mb[Columns.REWARDS].float())[:T], "terminated": terminated, "truncated": truncated,
             "alive": alive & mask[..., None]}
    if dynamic_mask:
        legal = rows[..., obs_dim + n_agents:] > 0.5
        legal[~legal.any(-1)] = True   # padding rows: any action (never used)
        batch["avail"], batch["next_avail"] = legal[:T], legal[1:]
    return batch, batch["alive"]


class CreditAdvantages(ConnectorV2):
    """Replaces RLlib's ``GeneralAdvantageEstimation``: advantages and critic targets from the
    configured advantage module via ``CreditLearner.prepare``, then ``CreditLearner.finalise``
    (credit statistics, value normalisation, advantage standardisation over the valid entries),
    exactly the two phases the local update runs (see the module docstring).

    It writes ``ADVANTAGES``, ``VALUE_TARGETS`` and ``CRITIC_IN`` per row (and ``WEIGHT`` when some
    agent left its episode early, so the loss skips its padded rows), drops the bootstrap rows (the
    loss never uses them, so a minibatch of ``minibatch_size`` rows is all real data) and shuffles the
    rows with ``generator``.
    """

    def __init__(self, input_observation_space=None, input_action_space=None, *, generator: torch.Generator,
                 histogram_every: int = 0, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.generator = generator
        self.histogram_every = histogram_every
        self.last_stats: dict[str, dict] = {}
        self.last_prepared: dict[str, dict] = {}
        self.rows: dict[str, int] = {}  # rows of the last batch per module (the loss counts passes)

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for module_id, mb in batch.items():
            module = rl_module[module_id].unwrapped()
            credit = module.credit
            tm, valid = to_time_major(mb, module.obs_dim, module.n_agents, module.dynamic_mask)
            prep = credit.prepare(tm, self.generator)
            self.last_prepared[module_id] = {"batch": tm, "mask": valid.any(-1), **prep}
            adv, target, stats = credit.finalise(prep, valid)
            if self.histogram_every and (credit.updates + 1) % self.histogram_every == 0:
                stats["credit/adv_hist"] = {agent: values.numpy().astype(np.float32)
                                            for agent, values in zip(credit.agents, credit.last_advantage)}
            self.last_stats[module_id] = stats
            self._write_rows(mb, adv, target, prep["critic_in"], credit, valid)
            self.rows[module_id] = len(mb[Columns.ACTIONS])
        return batch

    def _write_rows(self, mb: dict, adv, target, critic_in, credit, valid) -> None:
        keep = mb[Columns.LOSS_MASK].bool()
        b, t, i = mb[INDEX][keep].long().unbind(-1)
        order = torch.randperm(int(keep.sum()), generator=self.generator)
        for key in list(mb):
            if key in _SPENT:
                del mb[key]
            else:
                mb[key] = mb[key][keep][order]
        b, t, i = b[order], t[order], i[order]
        mb[Postprocessing.ADVANTAGES] = adv[t, b, i]
        mb[Postprocessing.VALUE_TARGETS] = target[t, b, i]
        mb[CRITIC_IN] = critic_in[t, b, i] if credit.critic.per_agent_inputs else critic_in[t, b]
        row_valid = valid[t, b, i]
        if not bool(row_valid.all()):
            mb[WEIGHT] = row_valid.to(adv.dtype)
