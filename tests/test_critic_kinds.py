"""Critics as objects (issue 24): each advantage module's registry entry names a ``CriticKind``
whose properties the trainer reads; ``marl.networks`` maps a kind (and a V critic's placement) to its
network; the head count follows from the reward mode and is stated in the checkpoint."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from marl.algorithms import ADVANTAGES, DOP_CRITIC, Q_CRITIC, SIM_CRITIC, V_CRITIC
from marl.checkpoint import CheckpointError
from marl.config import config_from_dict
from marl.learner import CreditLearner
from marl.networks import V_CRITICS, CriticSizes, build_critic, critic_class
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
# The names a critic kind or placement had as strings; "local" is also a backend, so it is caught
# only beside a ``critic`` or ``kind`` operand.
KIND_NAMES = {"v", "q", "dop", "central", "agent_state", "local"}


def _strings(node: ast.AST) -> set[str]:
    """The string constants of ``node``: itself, or the elements of a tuple, list or set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def _names_a_critic(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name in ("critic", "kind")


def critic_name_comparisons(paths) -> list[str]:
    """``file:line`` of every comparison of a critic kind or placement with its name as a string."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            strings = set().union(*map(_strings, sides))
            by_operand = any(map(_names_a_critic, sides)) and strings & KIND_NAMES
            if by_operand or strings & (KIND_NAMES - {"local", "v", "q"}):
                found.append(f"{path.parent.name}/{path.name}:{node.lineno}")
    return found


def test_no_critic_kind_is_compared_by_name_outside_the_registry():
    """The trainer, config, CLI and RLlib code read a kind's properties, never its name."""
    paths = sorted((ROOT / "marl").rglob("*.py")) + [p for p in sorted((ROOT / "algorithms").glob("*.py"))
                                                     if p.name != "registry.py"]
    assert critic_name_comparisons(paths) == []


def test_the_name_check_catches_the_comparisons_it_replaced(tmp_path):
    """A negative control: the old forms of the check are found."""
    path = tmp_path / "old.py"
    path.write_text('a = spec.critic in ("q", "dop")\nb = kind == "dop"\nc = algo.critic == "local"\n'
                    'd = cfg.backend == "local"\n')
    assert critic_name_comparisons([path]) == [f"{tmp_path.name}/old.py:{n}" for n in (1, 2, 3)]


@pytest.mark.parametrize("name", list(ADVANTAGES))
@pytest.mark.parametrize("placement", list(V_CRITICS))
def test_each_kind_builds_the_network_its_properties_say(name, placement):
    """A critic over actions gives Q ``[..., N, A]`` from the joint action (its own network whatever
    the placement); a V critic gives ``[..., N]`` from the placement's inputs."""
    kind = ADVANTAGES[name].critic
    N, O, S, A = 3, 4, 6, 5
    critic = build_critic(kind, placement, CriticSizes(N, O, S, A), team_value=True, with_obs=False, hidden=16,
                          layers=1, activation="relu", recurrent=False)
    assert type(critic) is critic_class(kind, placement)
    assert critic.q == kind.over_actions and critic.mixed == kind.mixed
    x = critic.inputs(torch.randn(2, S), torch.randn(2, N, O), torch.randint(0, A, (2, N)))
    assert critic(x).shape == ((2, N, A) if kind.over_actions else (2, N))
    if kind.over_actions:
        assert critic_class(kind, "central") is critic_class(kind, "local")
    assert kind in (V_CRITIC, Q_CRITIC, DOP_CRITIC, SIM_CRITIC)


def _learner(reward: str, advantage: str = "gae") -> CreditLearner:
    cfg = config_from_dict(tiny_config(env={"reward": reward}, algo={"advantage": advantage}))
    return CreditLearner(cfg, ["a", "b", "c"], 4, 6, 5, torch.ones(3, 5, dtype=torch.bool))


@pytest.mark.parametrize("reward, advantage, heads", [("shared", "gae", 1), ("individual", "gae", 3),
                                                      ("mixed", "gae", 3), ("shared", "coma", 3)])
def test_the_head_count_follows_the_reward_mode_and_is_in_the_checkpoint(reward, advantage, heads):
    """One value head per reward column: a central V critic has one for a shared team reward, one per
    agent otherwise (COMA's Q critic has a row per agent); the checkpoint says how many."""
    learner = _learner(reward, advantage)
    assert learner.critic.value_heads == heads == learner.value_norm.mean.shape[0]
    assert learner.state_dict()["value_heads"] == heads


def test_a_checkpoint_with_other_heads_is_refused_in_one_line_and_an_old_one_loads():
    shared, individual = _learner("shared"), _learner("individual")
    with pytest.raises(CheckpointError) as err:
        individual.load_state_dict(shared.state_dict())
    assert "\n" not in str(err.value)
    assert "1 value head(s)" in str(err.value) and "asks for 3" in str(err.value)
    old = shared.state_dict()
    del old["value_heads"]   # written before the head count was stored
    other = _learner("shared")
    other.load_state_dict(old)
    assert all(torch.equal(p, q) for p, q in zip(other.critic.parameters(), shared.critic.parameters()))
