"""Typed run configuration, loaded from YAML.

Unknown keys, wrong types and out-of-range values raise ``ConfigError`` naming the key, so the
CLI can print one clear line instead of a traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config key or value. ``str(err)`` is one line naming the key."""


@dataclass
class EnvConfig:
    id: str = "mpe2:simple_spread_v3"
    """Registered short name (``marl list``) or ``package.module:factory``."""
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the env factory."""
    reward: str = "shared"
    """Reward mode: ``shared`` (team reward to all), ``individual``, ``mixed``, or ``difference``:
    each agent gets D_i = G(s, u) − G(s, (u_-i, c_i)) (Wolpert & Tumer, 2002), G the team reward
    (``env.team_reward``), its counterfactual from ``env.difference``."""
    episodic_reward: bool = False
    """Withhold every reward and pay the episode's sum at its last step (each agent its own sum, at
    its own last step): the temporal-credit problem of outcome rewards, on any env. Raw returns,
    and so evaluation, are unchanged."""
    default_action: int = 0
    """``env.reward: difference``: the default action c_i of the counterfactual (for mpe2, 0 is the
    no-op); an agent for which it is not legal uses its first legal action."""
    difference: str = "resimulate"
    """``env.reward: difference``: where the counterfactual G(s, (u_-i, c_i)) comes from.
    ``resimulate``: exactly, by stepping a copy of the env once per agent (the batched twin copies
    tensors; N extra env steps per step). ``reward_model``: learned, for envs that cannot be copied
    (Dr.Reinforce, Castellini et al. 2021): the env pays the shared team reward, an MLP r̂(s, u)
    regresses it on the global state and the joint action online, and the learner trains on
    D̂_i = r̂(s, u) − r̂(s, (u_-i, c_i)) (see ``marl.redistribute.OnlineDifference``; its loss is
    logged as ``difference/model_loss``). Discrete actions only; local backend only."""
    team_reward: str = "mean"
    """How the team reward is made from the agents' rewards: ``sum`` or ``mean``."""
    alpha: float = 0.5
    """Weight of the agent's own reward in ``mixed`` mode."""
    shaping: str = ""
    """Potential-based shaping Φ: a built-in name (``marl list``) or ``package.module:function``
    taking the PettingZoo env and returning a float; empty for none."""
    num_envs: int = 16
    """Parallel envs B; each iteration collects ``algo.rollout_steps`` steps from each."""
    workers: int = 0
    """0 steps envs in the trainer process; K > 0 steps them in K worker processes."""
    batched: bool = False
    """Step the envs as one batched simulator on tensors (``docs/batched_envs.md``): the validated
    twin of a registered mpe2, LBF or RWARE task, ``vmas:<scenario>``, ``jaxmarl:<name>``, or a
    ``package.module:factory`` returning a batched env. ``env.num_envs`` is then the batch size B."""
    check: str = "first"
    """Which episodes of each env are checked against the PettingZoo API and the env's declared
    spaces (observation shapes and dtypes, agent names, scalar rewards, the ``reset``/``step``
    tuples, an action space that changes; ``marl.envs.contract``): ``first`` or ``always``
    (slower: every step). A violation stops the run in one line naming the env, agent, step and
    key; the last checkpoint is kept."""


@dataclass
class AlgoConfig:
    advantage: str = "gae"
    """Advantage module from the registry (``marl list``)."""
    critic: str = "central"
    """``central``: V(state) (MAPPO/MAA2C); ``agent_state``: V(state, o_i, i), MAPPO's agent-specific
    global state (Yu et al., 2022); ``local``: V(o_i) (IPPO/IA2C)."""
    learner: str = "ppo"
    """The learner (``marl.learners.LEARNERS``): ``ppo`` (actor-critic, PPO's clipped surrogate) or
    ``a2c`` (actor-critic, the plain policy gradient). ``algo.loss`` is read as its old name."""
    gamma: float = 0.99
    """Discount factor in (0, 1]."""
    lam: float = 0.95
    """GAE/TD(λ) λ in [0, 1]; also COMA's critic targets."""
    n_step: int = 5
    """k of the ``n_step`` advantage module."""
    critic_obs: bool = False
    """COMA, Shapley, DOP: also give the critic the agent's own observation."""
    shapley_samples: int = 8
    """Shapley: M, the orderings sampled per step (M * N critic rows per step)."""
    resim_horizon: int = 5
    """``resim``: H, the steps of each re-simulated continuation, step t included, in [1, 1000] (1: a
    one-step difference of the reward; at least the episode length: to its end). Cost ∝ H."""
    resim_rollouts: int = 2
    """``resim``: K, the continuations per (step, agent, action), in [1, 1024], sharing their random
    draws across the agent's actions. Cost ∝ K; the estimate's variance ∝ 1 / K. Each rollout step
    costs N × A × K × H twin steps (spread: 15 K H)."""
    target_update_every: int = 0
    """COMA: a target critic copied every this many iterations (0: no target network)."""
    redistribution: str = "none"
    """A learned step-level reward model the learner trains on instead of the env's rewards:
    ``none``; ``rrd`` (randomized return decomposition, Ren et al. 2022: r̂(s, o_i, u_i) whose sums
    over random step subsets match the episode's outcome); ``arel`` (agent-temporal attention,
    Xiao et al. 2022). Both train online on finished episodes (see ``marl.redistribute``); meant for
    ``env.episodic_reward``."""
    redistribution_steps: int = 8
    """Updates of the reward model per iteration."""
    redistribution_state: bool = True
    """Give the reward model the global state beside each agent's observation and action (off: a
    state that reveals the outcome at later steps would let it credit those instead)."""
    redistribution_lr: float = 1e-3
    """Adam learning rate of the reward model."""
    redistribution_subset: int = 8
    """``rrd``: K, the steps of each episode in one return-decomposition sample. RRD's loss then
    also penalises how much sums over K-step subsets vary, which pulls the rewards of steps it
    cannot tell apart towards their mean; K at least the episode length is the plain
    decomposition loss."""
    redistribution_sparsity: float = 0.0
    """λ ≥ 0 of an L1 penalty on the reward model's per-(step, agent) rewards, ``λ · mean_e Σ_{t,i}
    |r̂_{t,i}|`` added to its loss (``marl.reward_models.sparsity_penalty``): a sparse-reward prior.
    Returns alone do not say how much of the outcome belongs to the step that decides it and how
    much to a constant spread over the rest; the penalty makes the sparse decomposition the best
    fit, as long as the model's buffer holds failing episodes it can fit (see
    ``redistribution_capacity`` and ``redistribution_joint_action``). It identifies the step for
    rrd, whose steps see only their own features, not for arel, whose attention can carry the
    outcome to every step. It biases predicted returns towards 0 by about λ / 2. 0: no penalty."""
    redistribution_joint_action: bool = False
    """Give the reward model, beside agent i's own action, the joint action of every agent at the
    step (RRD's ``r̂(s, u)``). Without it a per-(step, agent) model is additive over agents and
    cannot fit an outcome that needs several agents at once (e.g. "both chose 1"); failures it
    cannot fit then look like partial successes, and ``redistribution_sparsity`` cannot tell the
    deciding step from the rest."""
    redistribution_capacity: int = 1000
    """Finished episodes the reward model's buffer keeps (the oldest go first). With
    ``redistribution_sparsity`` the buffer must still hold episodes of different outcomes: once the
    policy always succeeds, new episodes no longer tell the steps apart, and the early, varied ones
    are what identify the decomposition. Memory: capacity × the longest episode × agents × features
    floats."""
    rollout_steps: int = 25
    """Steps T collected from each env per iteration."""
    epochs: int = 10
    """Passes over each batch. With ``learner: a2c`` only the critic takes them all; the actor takes
    one pass (its policy gradient holds only for the behaviour policy)."""
    minibatches: int = 4
    """Minibatches per epoch: the batch's ``rollout_steps * env.num_envs`` rows (or, for recurrent
    networks, its chunks) are shuffled and cut into this many parts of near-equal size (at most one
    part per row)."""
    lr: float = 5e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 5e-4
    """Adam learning rate of the critic."""
    lr_schedule: str = "constant"
    """``constant``, or ``linear``: both learning rates fall linearly to 0 over
    ``train.total_env_steps`` (as in many PPO implementations)."""
    clip: float = 0.2
    """PPO ratio clip ε."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""
    value_coef: float = 1.0
    """Weight of the critic loss."""
    max_grad_norm: float = 10.0
    """Gradient clipping by global norm (0 disables)."""
    normalize_advantage: bool = True
    """Standardise advantages per agent over the batch."""
    normalize_value: bool = True
    """Learn values in a running-normalised space (MAPPO's value normalisation)."""
    own: Any = None
    """Not a YAML key: the chosen learner's own keys (its ``LearnerSpec.config`` dataclass, e.g.
    ``marl.q_learner.QConfig``), written flat under ``algo`` in YAML."""


@dataclass
class ModelConfig:
    hidden: int = 64
    """Width of the hidden layers."""
    layers: int = 2
    """Number of hidden layers."""
    share_actor: bool = True
    """One actor for all agents (with a one-hot agent id) or one per agent."""
    activation: str = "relu"
    """``relu`` or ``tanh``."""
    recurrent: bool = False
    """A GRU after the first layer of actor and critic (MAPPO's recurrent policy), for partially
    observed tasks: hidden states are carried across steps and rollouts and reset where an episode
    starts; training back-propagates through time over chunks of ``model.chunk_length`` steps."""
    chunk_length: int = 0
    """With ``model.recurrent``: steps per chunk of truncated back-propagation through time (the
    MAPPO repo's ``data_chunk_length``); must divide ``algo.rollout_steps``. 0 (the default) picks
    the smallest divisor of ``algo.rollout_steps`` that is at least 10 (the MAPPO repo's value)."""
    encoder: str = "auto"
    """What reads observations and the critic's global state: ``mlp`` (flat), ``cnn`` (a small CNN,
    ``marl.networks.ImageEncoder``, for the image-shaped inputs: a Box H×W×C or C×H×W) or ``auto``
    (the CNN for image-shaped inputs, the MLP for the rest). See docs/envs.md."""
    log_std_init: float = -0.5
    """Continuous (Box) actions: the initial log standard deviation of the Gaussian policy (a
    learned, state-independent parameter per action dimension)."""


@dataclass
class TrainConfig:
    total_env_steps: int = 200_000
    """Budget in joint env steps (one step of one env = 1)."""
    log_every: int = 1
    """Write metrics every this many iterations."""
    checkpoint_every: int = 20
    """Save a checkpoint every this many iterations (and at the end)."""
    eval_episodes: int = 32
    """Greedy episodes of the final evaluation (0 skips it)."""
    eval_every: int = 0
    """Every this many iterations, a greedy evaluation during training, logged as
    ``eval/team_return`` (0: never). It uses the same episode seeds each time, so points on the
    curve differ by the policy only."""
    eval_every_episodes: int = 16
    """Greedy episodes of each periodic evaluation (``train.eval_every``)."""
    progress: bool = True
    """Show a progress bar."""
    device: str = "cpu"
    """Where networks, rollouts and (with ``env.batched``) the envs live: ``cpu``, or ``cuda`` /
    ``cuda:K`` for a GPU. Never needed: CPU is the default."""
    async_collection: bool = False
    """Local backend with ``env.workers >= 1``: collect the next rollout in a background thread while
    the learner updates on the last one. Each rollout is then collected by the policy from before
    the previous update (one update of policy lag, as in asynchronous PPO variants); PPO's ratio
    uses the logged behaviour log-probabilities, so it stays a correct importance ratio. The logged
    ``perf/collect_s`` is then the part of the collection that the update did not hide."""
    act_in_workers: bool = False
    """Local backend with ``env.workers >= 1``: each env worker acts for its own envs with a copy of
    the actor sent every iteration and collects its part of the rollout on its own, instead of
    waiting for the learner's batched inference at every step. Action draws are seeded per worker,
    so results depend on ``env.workers``."""


@dataclass
class LogConfig:
    histogram_every: int = 10
    """Per-agent advantage histograms every this many iterations (0: never)."""
    credit_image_every: int = 50
    """A credit heatmap of one episode every this many iterations, and at the first (0: never)."""
    fidelity_every: int = 10
    """On envs with ``true_credit``: the credit-fidelity score every this many iterations (0: never)."""
    fidelity_episodes: int = 8
    """Episodes per credit-fidelity score."""
    trackers: list[str] = field(default_factory=lambda: ["tensorboard", "jsonl"])
    """Where scalars go: some of ``tensorboard``, ``jsonl`` (``metrics.jsonl``, read by ``marl compare``
    and resume), ``mlflow`` and ``wandb`` (optional extras; see marl/logger.py)."""


@dataclass
class RLlibConfig:
    address: str = ""
    """Ray cluster to join (``auto`` for a running cluster); empty starts a local Ray instance."""
    num_cpus: int = 2
    """CPUs of the local Ray instance (ignored when joining a cluster)."""
    num_env_runners: int = 0
    """Remote EnvRunner workers (0 samples in the driver process)."""
    num_envs_per_env_runner: int = 8
    """Envs stepped (vectorised) by each EnvRunner."""
    num_learners: int = 0
    """Remote Learner workers (0: learn in the driver)."""
    restart_failed_env_runners: bool = True
    """Restart an EnvRunner that crashed, and keep training."""
    max_env_runner_restarts: int = 5
    """Give up after this many EnvRunner restarts."""


@dataclass
class Config:
    seed: int = 0
    """Seed for torch, the action sampler and env resets: an int in [0, 2**32)."""
    backend: str = "local"
    """``local`` (the single-process trainer) or ``rllib`` (Ray RLlib, see the ``rllib`` section)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rllib: RLlibConfig = field(default_factory=RLlibConfig)

    @property
    def rollout_length(self) -> int:
        """Steps each env takes between two updates, as the learner asks for them
        (``marl.learners.LearnerSpec.rollout_steps``; ``algo.rollout_steps`` for the shipped learners)."""
        from marl.learners import LEARNERS   # the registry builds on this module
        return LEARNERS[self.algo.learner].rollout_steps(self)

    @property
    def steps_per_iteration(self) -> int:
        """Env steps collected per iteration (one update): ``rollout_length * env.num_envs``."""
        return self.rollout_length * self.env.num_envs

    @property
    def total_iterations(self) -> int:
        """Iterations (one update each) that cover ``train.total_env_steps``."""
        return math.ceil(self.train.total_env_steps / self.steps_per_iteration)

    def to_dict(self) -> dict:
        """The config as YAML writes it: the learner's own keys flat under ``algo``."""
        out = dataclasses.asdict(self)
        out["algo"].update(out["algo"].pop("own") or {})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- building dataclasses from plain dicts ----------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str):
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key + ".")
    if typing.get_origin(tp) is list:   # list[str]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"config key '{key}': expected a list of strings, got {type(value).__name__} {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # PyYAML reads '1e5' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads '3e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


# -- validation ---------------------------------------------------------------------------------------

def _check(ok: bool, key: str, value, expected: str):
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def validate(cfg: Config) -> Config:
    """Range and consistency checks, with derived defaults filled in (``model.chunk_length: 0``);
    returns ``cfg`` or raises ``ConfigError``. Ranges come first, then the rules between keys, each
    group owned by the part of the run that reads the keys."""
    _check_run_ranges(cfg)
    _check_env_ranges(cfg.env)
    _check_difference_rules(cfg)
    _check_lookups(cfg)
    _check_algo_ranges(cfg.algo)
    _check_model_train_ranges(cfg)
    _derive_chunk_length(cfg)
    _learner_rules(cfg)
    _refuse_ignored_options(cfg)
    _check_redistribution_ranges(cfg.algo)
    _check_advantage_rules(cfg)
    _check_device(cfg)
    _check_local_only(cfg)
    _check_worker_rules(cfg)
    return cfg


def _check_run_ranges(cfg: Config) -> None:
    """``backend``, ``seed`` and the ``rllib`` section's counts."""
    _check(cfg.backend in ("local", "rllib"), "backend", cfg.backend, "'local' or 'rllib'")
    _check(0 <= cfg.seed < 2**32, "seed", cfg.seed, "an int in [0, 2**32)")
    r = cfg.rllib
    for key in ("num_env_runners", "num_learners", "max_env_runner_restarts"):
        _check(getattr(r, key) >= 0, f"rllib.{key}", getattr(r, key), "an int >= 0")
    _check(r.num_cpus >= 1, "rllib.num_cpus", r.num_cpus, "an int >= 1")
    _check(r.num_envs_per_env_runner >= 1, "rllib.num_envs_per_env_runner", r.num_envs_per_env_runner, "an int >= 1")


def _check_env_ranges(e: EnvConfig) -> None:
    """The ``env`` section's values, each on its own."""
    from marl.envs import REWARD_MODES, TEAM_REDUCTIONS
    from marl.envs.rewards import DIFFERENCE_COUNTERFACTUALS

    _check(e.reward in REWARD_MODES, "env.reward", e.reward, f"one of {list(REWARD_MODES)}")
    _check(e.team_reward in TEAM_REDUCTIONS, "env.team_reward", e.team_reward, f"one of {list(TEAM_REDUCTIONS)}")
    _check(0.0 <= e.alpha <= 1.0, "env.alpha", e.alpha, "a float in [0, 1]")
    _check(e.default_action >= 0, "env.default_action", e.default_action, "an int >= 0")
    _check(e.difference in DIFFERENCE_COUNTERFACTUALS, "env.difference", e.difference,
           f"one of {list(DIFFERENCE_COUNTERFACTUALS)}")


def _check_difference_rules(cfg: Config) -> None:
    """A learned difference reward (``env.difference: reward_model``) excludes what would replace or
    withhold the rewards it learns from."""
    e, a = cfg.env, cfg.algo
    if e.reward == "difference" and e.difference == "reward_model":
        _check(a.redistribution == "none", "algo.redistribution", a.redistribution, "'none' with env.difference "
               "'reward_model' (both replace the rewards the learner trains on)")
        _check(not e.episodic_reward, "env.episodic_reward", e.episodic_reward, "false with env.difference "
               "'reward_model' (the reward model learns G(s, u) from every step's team reward, which "
               "env.episodic_reward withholds)")


def _check_lookups(cfg: Config) -> None:
    """Keys that name something to resolve (a shaping potential, trackers), plus ``env``'s counts."""
    e = cfg.env
    if e.shaping:
        from marl.envs import EnvError
        from marl.envs.rewards import resolve_potential
        try:
            resolve_potential(e.shaping)
        except EnvError as exc:
            raise ConfigError(f"config key 'env.shaping': {exc}") from None
    from marl.logger import check_trackers
    problem = check_trackers(cfg.log.trackers)
    if problem is not None:
        raise ConfigError(f"config key 'log.trackers': {problem}")
    _check(e.num_envs >= 1, "env.num_envs", e.num_envs, "an int >= 1")
    _check(e.check in ("first", "always"), "env.check", e.check, "'first' or 'always'")
    _check(0 <= e.workers <= e.num_envs, "env.workers", e.workers, f"an int in [0, env.num_envs={e.num_envs}]")


def _check_algo_ranges(a: AlgoConfig) -> None:
    """The ``algo`` section's registry names and optimiser values."""
    from marl.algorithms import ADVANTAGES
    from marl.learners import LEARNERS
    from marl.networks import V_CRITICS

    _check(a.advantage in ADVANTAGES, "algo.advantage", a.advantage, f"one of {sorted(ADVANTAGES)}")
    _check(a.critic in V_CRITICS, "algo.critic", a.critic, f"one of {', '.join(map(repr, V_CRITICS))}")
    _check(a.learner in LEARNERS, "algo.learner", a.learner, f"one of {sorted(LEARNERS)}")
    _check(a.lr_schedule in ("constant", "linear"), "algo.lr_schedule", a.lr_schedule, "'constant' or 'linear'")
    _check(0.0 < a.gamma <= 1.0, "algo.gamma", a.gamma, "a float in (0, 1]")
    _check(0.0 <= a.lam <= 1.0, "algo.lam", a.lam, "a float in [0, 1]")
    for key in ("n_step", "rollout_steps", "epochs", "minibatches"):
        _check(getattr(a, key) >= 1, f"algo.{key}", getattr(a, key), "an int >= 1")
    _check(1 <= a.resim_horizon <= 1000, "algo.resim_horizon", a.resim_horizon, "an int in [1, 1000]")
    _check(1 <= a.resim_rollouts <= 1024, "algo.resim_rollouts", a.resim_rollouts, "an int in [1, 1024]")
    _check(a.target_update_every >= 0, "algo.target_update_every", a.target_update_every, "an int >= 0")
    for key in ("lr", "critic_lr"):
        _check(getattr(a, key) > 0.0, f"algo.{key}", getattr(a, key), "a float > 0")
    for key in ("clip", "entropy_coef", "value_coef", "max_grad_norm"):
        _check(getattr(a, key) >= 0.0, f"algo.{key}", getattr(a, key), "a float >= 0")


def _check_model_train_ranges(cfg: Config) -> None:
    """The ``model``, ``train`` and ``log`` sections' values, each on its own."""
    m, t = cfg.model, cfg.train
    _check(m.hidden >= 1, "model.hidden", m.hidden, "an int >= 1")
    _check(m.layers >= 1, "model.layers", m.layers, "an int >= 1")
    _check(m.activation in ("relu", "tanh"), "model.activation", m.activation, "'relu' or 'tanh'")
    _check(m.encoder in ("auto", "mlp", "cnn"), "model.encoder", m.encoder, "'auto', 'mlp' or 'cnn'")
    for key in ("total_env_steps", "log_every", "checkpoint_every", "eval_every_episodes"):
        _check(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "an int >= 1")
    for key in ("histogram_every", "credit_image_every", "fidelity_every"):
        _check(getattr(cfg.log, key) >= 0, f"log.{key}", getattr(cfg.log, key), "an int >= 0")
    _check(cfg.log.fidelity_episodes >= 1, "log.fidelity_episodes", cfg.log.fidelity_episodes, "an int >= 1")
    for key in ("eval_episodes", "eval_every"):
        _check(getattr(t, key) >= 0, f"train.{key}", getattr(t, key), "an int >= 0")
    _check(m.chunk_length >= 0, "model.chunk_length", m.chunk_length, "an int >= 0 (0: derived from "
           "algo.rollout_steps)")


def _derive_chunk_length(cfg: Config) -> None:
    """A recurrent net's ``model.chunk_length: 0`` becomes the smallest divisor of
    ``algo.rollout_steps`` that is at least 10 (or the rollout); a set one must divide it."""
    m, rollout = cfg.model, cfg.algo.rollout_steps
    if not m.recurrent:
        return
    if m.chunk_length == 0:   # a derived default: it adapts to the rollout instead of refusing it
        m.chunk_length = min(d for d in range(1, rollout + 1) if rollout % d == 0 and d >= min(10, rollout))
    _check(rollout % m.chunk_length == 0, "model.chunk_length", m.chunk_length,
           f"a divisor of algo.rollout_steps = {rollout}, or 0 to derive one")


def _check_redistribution_ranges(a: AlgoConfig) -> None:
    """The reward model's (``algo.redistribution_*``) values and ``algo.shapley_samples``."""
    _check(a.redistribution in ("none", "rrd", "arel"), "algo.redistribution", a.redistribution,
           "'none', 'rrd' or 'arel'")
    for key in ("redistribution_steps", "redistribution_subset", "redistribution_capacity"):
        _check(getattr(a, key) >= 1, f"algo.{key}", getattr(a, key), "an int >= 1")
    _check(a.redistribution_lr > 0, "algo.redistribution_lr", a.redistribution_lr, "a float > 0")
    _check(0 <= a.redistribution_sparsity < math.inf, "algo.redistribution_sparsity", a.redistribution_sparsity,
           "a finite float >= 0")
    _check(a.shapley_samples >= 1, "algo.shapley_samples", a.shapley_samples, "an int >= 1")


def _check_advantage_rules(cfg: Config) -> None:
    """What the advantage module's critic kind supports: a recurrent critic, the reward modes (DOP's
    decomposed critic is feed-forward and learns a team return), and for a re-simulating module
    (``resim``) a batched twin to copy and the env's own per-step reward."""
    from marl.algorithms import ADVANTAGES
    from marl.envs.batched import TWINS

    a, e = cfg.algo, cfg.env
    kind = ADVANTAGES[a.advantage].critic
    if kind.simulates:
        why = f"with algo.advantage {a.advantage!r} ({kind.why})"
        _check(e.batched and e.id in TWINS, "env.batched", e.batched, f"true, with env.id one of {', '.join(TWINS)}, "
               f"{why}; env.id is {e.id!r}")
        _check(not e.episodic_reward, "env.episodic_reward", e.episodic_reward, f"false {why}")
        _check(a.redistribution == "none", "algo.redistribution", a.redistribution, f"'none' {why}")
        _check(not (e.reward == "difference" and e.difference == "reward_model"), "env.difference", e.difference,
               f"'resimulate' {why}")
    _check(kind.recurrent or not cfg.model.recurrent, "model.recurrent", cfg.model.recurrent,
           f"false with algo.advantage {a.advantage!r} ({kind.why})")
    modes = kind.reward_modes or (cfg.env.reward,)
    _check(cfg.env.reward in modes, "env.reward", cfg.env.reward,
           f"{' or '.join(map(repr, modes))} with algo.advantage {a.advantage!r} ({kind.why})")


def _check_device(cfg: Config) -> None:
    """``train.device`` is ``cpu``, or a GPU that exists here."""
    device = cfg.train.device
    index = device[len("cuda:"):] if device.startswith("cuda:") else "0"
    _check(device in ("cpu", "cuda") or (device.startswith("cuda:") and index.isdigit()), "train.device",
           device, "'cpu', 'cuda' or 'cuda:K'")
    if device == "cpu":
        return
    import torch
    _check(torch.cuda.is_available(), "train.device", device,
           "'cpu' on this machine (torch.cuda.is_available() is False: no GPU or a CPU build of torch)")
    _check(int(index) < torch.cuda.device_count(), "train.device", device,
           f"a GPU index below {torch.cuda.device_count()} (the GPUs torch sees here)")


def _check_local_only(cfg: Config) -> None:
    """Features only the local trainer has: each is refused once, here, with backend ``rllib``."""
    if cfg.backend == "local":
        return
    a, e, m, t = cfg.algo, cfg.env, cfg.model, cfg.train
    from marl.algorithms import ADVANTAGES
    rules = [   # (key, value, in use, what the key must be with backend 'rllib')
        ("env.difference", e.difference, e.reward == "difference" and e.difference == "reward_model",
         "'resimulate' with backend 'rllib' (the reward model trains in the local trainer)"),
        ("model.encoder", m.encoder, m.encoder == "cnn", "'auto' or 'mlp' with backend 'rllib' (its RLModule "
         "reads observations flat; train image envs with the local backend)"),
        ("model.recurrent", m.recurrent, m.recurrent, "false with backend 'rllib' (its RLModule here is not "
         "stateful; train recurrent policies with the local backend)"),
        ("algo.redistribution", a.redistribution, a.redistribution != "none", "'none' with backend 'rllib'"),
        ("algo.advantage", a.advantage, ADVANTAGES[a.advantage].critic.mixed, f"not {a.advantage!r} with "
         "backend 'rllib' (its loss mixes every agent's Q, and RLlib's rows are per agent)"),
        ("train.device", t.device, t.device != "cpu", "'cpu' with backend 'rllib' (RLlib places its own "
         "Learners)"),
        ("env.batched", e.batched, e.batched, "false with backend 'rllib'"),
        ("train.async_collection", t.async_collection, t.async_collection, "false with backend 'rllib' (RLlib "
         "schedules its own EnvRunners)"),
        ("train.act_in_workers", t.act_in_workers, t.act_in_workers, "false with backend 'rllib' (RLlib's "
         "EnvRunners act for themselves)"),
    ]
    for key, value, used, expected in rules:
        _check(not used, key, value, expected)


def _check_worker_rules(cfg: Config) -> None:
    """What ``env.workers`` (env processes) allows: a GPU and a batched env want none, async
    collection and acting in workers want some."""
    e, t = cfg.env, cfg.train
    if t.device != "cpu":
        _check(e.workers == 0, "train.device", t.device, "'cpu' with env.workers > 0 (worker processes act on the CPU)")
    if e.batched:
        _check(e.workers == 0, "env.batched", e.batched, "false with env.workers > 0 (a batched env steps all its "
               "envs at once in the trainer process)")
        _check(not e.shaping, "env.batched", e.batched, "false with env.shaping (a potential reads the PettingZoo env)")
        _check(not (t.async_collection or t.act_in_workers), "env.batched", e.batched,
               "false with train.async_collection or train.act_in_workers")
    if t.async_collection:
        _check(e.workers >= 1, "train.async_collection", t.async_collection,
               "false unless env.workers >= 1 (envs stepped in the learner process would hold the "
               "interpreter lock the update needs)")
    if t.act_in_workers:
        _check(e.workers >= 1, "train.act_in_workers", t.act_in_workers, "false unless env.workers >= 1")


_ADVANTAGE_KEYS = ("algo.critic", "algo.critic_obs", "algo.target_update_every", "algo.n_step",
                   "algo.shapley_samples", "algo.lam", "algo.resim_horizon", "algo.resim_rollouts")


def _reads(learner: str, key: str) -> bool:
    from marl.learners import LEARNERS
    reads = LEARNERS[learner].reads
    return reads is None or key in reads


def _learner_rules(cfg: Config) -> None:
    """The chosen learner's rules: a shared ``algo`` key it does not read, set away from its
    default, is an error naming the key and the learner; then the learner's own ``validate``."""
    from marl.learners import LEARNERS

    a, defaults = cfg.algo, AlgoConfig()
    for f in dataclasses.fields(AlgoConfig):
        value, default = getattr(a, f.name), getattr(defaults, f.name)
        if f.name != "own" and not _reads(a.learner, f.name) and value != default:
            raise ConfigError(f"config key 'algo.{f.name}': set to {value!r}, but algo.learner {a.learner!r} does "
                              f"not read it; remove it or leave it at {default!r}")
    if LEARNERS[a.learner].validate is not None:
        LEARNERS[a.learner].validate(cfg)


def _refuse_ignored_options(cfg: Config) -> None:
    """An option set to a non-default value that the chosen setup never reads is an error, not a
    silent no-op (e.g. ``algo.critic: local`` with COMA, whose Q critic is its own)."""
    from marl.algorithms import ADVANTAGES

    defaults = Config()
    a, spec = cfg.algo, ADVANTAGES[cfg.algo.advantage]
    reads = spec.fields
    q_critic = spec.critic.over_actions
    counterfactual = ", ".join(name for name, other in ADVANTAGES.items() if other.critic.over_actions)
    ignored = [
        ("algo.critic", a.critic, defaults.algo.critic, q_critic,
         f"{a.advantage!r} uses its own counterfactual Q critic"),
        ("algo.critic_obs", a.critic_obs, defaults.algo.critic_obs, not q_critic,
         f"only the counterfactual modules ({counterfactual}) read it, not {a.advantage!r}"),
        ("algo.target_update_every", a.target_update_every, defaults.algo.target_update_every, not q_critic,
         f"only the counterfactual modules ({counterfactual}) have a target critic, not "
         f"{a.advantage!r}"),
        ("algo.n_step", a.n_step, defaults.algo.n_step, "n_step" not in reads, f"{a.advantage!r} does not read it"),
        ("algo.shapley_samples", a.shapley_samples, defaults.algo.shapley_samples, "shapley_samples" not in reads,
         f"{a.advantage!r} does not read it"),
        ("algo.lam", a.lam, defaults.algo.lam, "lam" not in reads, f"{a.advantage!r} does not read it"),
        ("algo.resim_horizon", a.resim_horizon, defaults.algo.resim_horizon, "resim_horizon" not in reads,
         f"{a.advantage!r} does not read it"),
        ("algo.resim_rollouts", a.resim_rollouts, defaults.algo.resim_rollouts, "resim_rollouts" not in reads,
         f"{a.advantage!r} does not read it"),
        ("env.alpha", cfg.env.alpha, defaults.env.alpha, cfg.env.reward != "mixed",
         f"only env.reward: mixed reads it, not {cfg.env.reward!r}"),
        ("env.default_action", cfg.env.default_action, defaults.env.default_action, cfg.env.reward != "difference",
         f"only env.reward: difference reads it, not {cfg.env.reward!r}"),
        ("env.difference", cfg.env.difference, defaults.env.difference, cfg.env.reward != "difference",
         f"only env.reward: difference reads it, not {cfg.env.reward!r}"),
        ("model.chunk_length", cfg.model.chunk_length, defaults.model.chunk_length, not cfg.model.recurrent,
         "only recurrent networks (model.recurrent: true) read it"),
        ("env.team_reward", cfg.env.team_reward, defaults.env.team_reward, cfg.env.reward == "individual",
         "env.reward: individual pays each agent its own reward and never forms a team reward"),
        ("train.eval_every_episodes", cfg.train.eval_every_episodes, defaults.train.eval_every_episodes,
         cfg.train.eval_every == 0, "train.eval_every is 0 (no periodic evaluation)"),
    ]
    for key in ("redistribution_steps", "redistribution_state", "redistribution_lr", "redistribution_subset",
                "redistribution_sparsity", "redistribution_joint_action", "redistribution_capacity"):
        ignored.append((f"algo.{key}", getattr(a, key), getattr(defaults.algo, key), a.redistribution == "none",
                        "algo.redistribution is 'none' (no reward model)"))
    ignored.append(("algo.redistribution_subset", a.redistribution_subset, defaults.algo.redistribution_subset,
                    a.redistribution == "arel", "only algo.redistribution: rrd reads it, not 'arel'"))
    if not _reads(cfg.algo.learner, "advantage"):   # the learner's own rule (_learner_rules) covers these
        ignored = [row for row in ignored if row[0] not in _ADVANTAGE_KEYS]
    for key, value, default, unused, why in ignored:
        if unused and value != default:
            raise ConfigError(f"config key '{key}': set to {value!r}, but {why}; remove it or leave it at "
                              f"{default!r}")


# -- loading ------------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[list[str], Any]:
    """``"algo.lr=3e-4"`` -> ``(["algo", "lr"], 3e-4)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set algo.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``data`` with each ``--set key=value`` applied in order. An override that changes ``env.id``
    drops the config's ``env.kwargs`` (they were the old env's); ``env.kwargs`` overrides then apply
    to the new env."""
    parsed = [(text, *parse_override(text)) for text in overrides]
    env = data.get("env")
    if isinstance(env, dict) and any(path == ["env", "id"] and value != env.get("id") for _, path, value in parsed):
        env.pop("kwargs", None)
    algo = data.get("algo")
    switch = [value for _, path, value in parsed if path in (["algo", "learner"], ["algo", "loss"])]
    if isinstance(algo, dict) and switch and switch[-1] != algo.get("learner", AlgoConfig.learner):
        for key in _unread_by(switch[-1], algo):   # the config's keys for its own learner
            algo.pop(key)
    for text, path, value in parsed:
        if path == ["algo", "loss"]:   # the old name of algo.learner (see _renamed_keys)
            path = ["algo", "learner"]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def config_from_dict(data: dict, overrides: list[str] = ()) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(_renamed_keys(_deep_copy(data)), list(overrides))
    own = _learner_keys(data)
    cfg = _build(Config, data)
    cfg.algo.own = own
    return validate(cfg)


def _learner_keys(data: dict):
    """Pop the chosen learner's own keys from ``data["algo"]`` and build its config dataclass from
    them (None for a learner without one); another learner's key is an error naming both."""
    from marl.learners import LEARNERS

    algo = data.get("algo") if isinstance(data.get("algo"), dict) else {}
    name = algo.get("learner", AlgoConfig.learner)
    owners = {f.name: other for other, spec in LEARNERS.items() if spec.config is not None
              for f in dataclasses.fields(spec.config)}
    mine = {}
    for key in [k for k in algo if k in owners or k == "own"]:
        if key == "own" or owners[key] != name:
            why = ("it is not a key" if key == "own" else f"it belongs to algo.learner {owners[key]!r}, and "
                   f"algo.learner is {name!r}")
            raise ConfigError(f"config key 'algo.{key}': {why}; remove it" +
                              ("" if key == "own" else f" or set algo.learner: {owners[key]}"))
        mine[key] = algo.pop(key)
    spec = LEARNERS.get(name)
    return None if spec is None or spec.config is None else _build(spec.config, mine, "algo.")


def _unread_by(learner, algo: dict) -> list[str]:
    """The keys of ``algo`` (a YAML layer's section) that ``learner`` does not read: a base's keys
    that a variant switching the learner does not inherit."""
    from marl.learners import LEARNERS

    spec = LEARNERS.get(learner)
    if spec is None:
        return []
    shared = {f.name for f in dataclasses.fields(AlgoConfig)} if spec.reads is None else spec.reads
    others = {f.name for name, other in LEARNERS.items() if name != learner and other.config is not None
              for f in dataclasses.fields(other.config)}
    return [k for k in algo if k in others or k in AlgoConfig.__dataclass_fields__ and k not in shared]


def _renamed_keys(data: dict) -> dict:
    """``data`` (one layer: a YAML file or a dict, before it is merged with others) with old key
    names read as their new ones: ``algo.loss`` is ``algo.learner``."""
    algo = data.get("algo")
    if isinstance(algo, dict) and "loss" in algo:
        loss = algo.pop("loss")
        if algo.setdefault("learner", loss) != loss:
            raise ConfigError(f"config key 'algo.loss' (the old name of 'algo.learner') is {loss!r} and "
                              f"'algo.learner' is {algo['learner']!r}; keep one")
    return data


def _deep_copy(data):
    return yaml.safe_load(yaml.safe_dump(data))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a dict, with its ``base:`` (a path relative to the file) merged under it:
    a variant says only what it changes from its base."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
    if isinstance(data, dict):
        data = _renamed_keys(data)
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = (path.parent / str(data.pop("base"))).resolve()
    if base in seen:
        raise ConfigError(f"config file {str(path)!r}: its base chain loops back to {str(base)!r}")
    return _merged(_read_yaml(base, seen + (path.resolve(),)), data)


def _merged(base: dict, variant: dict, path: tuple[str, ...] = ()) -> dict:
    """``variant`` merged over ``base``, section by section. A variant that changes ``env.id`` does
    not inherit the base's ``env.kwargs`` (those were the base env's)."""
    out = dict(base)
    if path == ("env",) and "id" in variant and variant["id"] != base.get("id"):
        out.pop("kwargs", None)
    if path == ("algo",) and "learner" in variant and variant["learner"] != base.get("learner", AlgoConfig.learner):
        for key in _unread_by(variant.get("learner"), base):   # the base's keys for its own learner
            out.pop(key)
    for key, value in variant.items():
        out[key] = (_merged(out[key], value, path + (key,)) if isinstance(value, dict) and isinstance(out.get(key), dict)
                    else value)
    return out


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML file into a validated ``Config`` (a ``base:`` key names a config it extends)."""
    return config_from_dict(_read_yaml(Path(path)), overrides)


def reward_spec(cfg: Config):
    """The env reward pipeline (``marl.envs.RewardSpec``) of a run. With ``env.difference:
    reward_model`` the env pays the shared team reward and the learner replaces it with learned
    difference rewards (``marl.redistribute.OnlineDifference``), so nothing is re-simulated there."""
    from marl.envs import RewardSpec

    e = cfg.env
    mode = "shared" if e.reward == "difference" and e.difference == "reward_model" else e.reward
    return RewardSpec(mode, e.team_reward, e.alpha, e.shaping, cfg.algo.gamma, e.default_action, e.episodic_reward)
