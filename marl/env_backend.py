"""The run's env backend: one object, built once from the config, that owns what the rest of a run
asks about its envs.

- ``batched``: the envs step as one batched simulator on tensors (``env.batched``), on ``device``;
- ``has_package_env``: the env id has a PettingZoo (or Gymnasium) version to play single episodes
  on, which every run has but one on a batched simulator without a twin (VMAS, JaxMARL);
- ``spec()``: the spaces of one env, probed on the simulator the run trains on (or, where the run
  trains on a twin, on either);
- ``open()``: the vector env the local backend collects from (once per run);
- ``start(iteration)``: reset the envs with the seeds of ``iteration`` unless they hold episodes;
- ``snapshot()`` / ``restore(state)``: the envs' live state in a checkpoint;
- ``evaluator(kind)``: the evaluation function of periodic (``eval/*``) or final (``eval.json``)
  evaluation, and ``simulators``, which simulator each runs on, in words.

The RLlib backend steps its envs in RLlib's EnvRunners and uses only the description and the
evaluators. Only this module reads ``env.batched`` outside config validation.
"""
from __future__ import annotations

from typing import Callable

import torch

from marl import seeding
from marl.config import Config, reward_spec
from marl.envs import EnvSpec, env_spec, make_vector_env
from marl.envs.batched import TWINS, BatchedVectorEnv, make_batched_env

EnvState = list[torch.Tensor] | dict[str, torch.Tensor]   # pickled PettingZoo slices as uint8, or a twin's tensors


class EnvBackend:
    """See the module docstring. ``device`` is where a batched simulator steps (``train.device``)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.batched = cfg.env.batched
        self.device = torch.device(cfg.train.device) if self.batched else None   # None: numpy on the CPU
        self.has_package_env = not self.batched or cfg.env.id in TWINS
        self.venv = None
        self.started = False   # the envs hold live episodes (else the next ``start`` resets them)

    # -- what the run asks -----------------------------------------------------------------------
    def spec(self, trained_on: bool = True) -> EnvSpec:
        """One env's spaces: on the simulator the run trains on, or (``trained_on=False``) on the
        package env wherever there is one (what loading an actor for evaluation probes)."""
        batched = self.batched if trained_on else not self.has_package_env
        return env_spec(self.cfg.env.id, self.cfg.env.kwargs, batched=batched)

    def evaluator(self, kind: str = "final", batched: bool = False) -> Callable[..., dict]:
        """``marl.evaluate.evaluate`` (the package env) or ``evaluate_batched``: ``"periodic"``
        evaluation runs on the simulator the run trains on, ``"final"`` on the package env wherever
        there is one, or on the batched simulator when ``batched`` asks for it."""
        from marl.evaluate import evaluate, evaluate_batched

        if kind not in ("periodic", "final"):
            raise ValueError(f"kind must be 'periodic' or 'final', got {kind!r}")
        on_batched = self.batched if kind == "periodic" else batched or not self.has_package_env
        return evaluate_batched if on_batched else evaluate

    @property
    def simulators(self) -> str:
        """Which simulator periodic (``eval/*``) and final (``eval.json``) evaluation run on."""
        from marl.evaluate import SIMULATORS, evaluate_batched

        def name(kind: str) -> str:
            return SIMULATORS["batched" if self.evaluator(kind) is evaluate_batched else "package"]
        return f"periodic evaluation on {name('periodic')}, final evaluation on {name('final')}"

    # -- the local backend's envs ----------------------------------------------------------------
    def open(self):
        """Build the run's vector env (``env.num_envs`` envs with the run's reward pipeline): the
        batched simulator (recording its states where the advantage re-simulates) or the PettingZoo
        envs, in this process or in ``env.workers`` processes."""
        if self.venv is not None:
            raise RuntimeError("the run's envs are already open")
        e = self.cfg.env
        if self.batched:
            from marl.resim import StateRecorder, needs_sim_states

            twin = make_batched_env(e.id, e.kwargs, e.num_envs, self.cfg.train.device, self.cfg.seed)
            self.venv = BatchedVectorEnv(twin, reward_spec(self.cfg))
            if needs_sim_states(self.cfg):
                self.venv = StateRecorder(self.venv)
        else:
            self.venv = make_vector_env(e.id, e.kwargs, e.num_envs, reward_spec(self.cfg), e.workers, e.check)
        return self.venv

    def start(self, iteration: int) -> None:
        """Reset the envs with the seeds of ``iteration`` (``marl.seeding.env_reset_seeds``) unless
        they hold live episodes."""
        if self.started:
            return
        seeds = seeding.env_reset_seeds(self.cfg.seed, iteration, self.cfg.env.num_envs)
        self.venv.reset(int(seeds[0]) if self.batched else seeds)   # a batched env draws its rows from one seed
        self.started = True

    def snapshot(self) -> EnvState | None:
        """The envs' live state (None before they hold episodes): a batched simulator's tensors, or
        one uint8 tensor of pickled state per PettingZoo slice.

        Raises:
            EnvWorkerLost: an env worker died (the save must fail, not drop the env state).
            EnvError: the envs' state cannot be saved (an env that does not pickle).
        """
        if not self.started:
            return None
        if self.batched:
            return self.venv.snapshot()
        return [torch.frombuffer(bytearray(part), dtype=torch.uint8) for part in self.venv.snapshot()]

    def restore(self, state: EnvState) -> None:
        """Load ``snapshot()``'s state into the open envs; they then hold those episodes.

        Raises:
            EnvWorkerLost: an env worker died.
            EnvError: the state does not fit these envs (the envs are left to start fresh).
        """
        self.started = False
        self.venv.load_snapshot(state if isinstance(state, dict) else [part.numpy().tobytes() for part in state])
        self.started = True

    def close(self) -> None:
        if self.venv is not None:
            self.venv.close()
