"""The request planner and the composition rules, on experiment definitions:
what composes, what conflicts, and that a clash drops a whole experiment
(never some of its arms)."""

from __future__ import annotations

from typing import Any

from sieve.experiments.compose import chooses_version, conflicts, parameters_set
from sieve.experiments.online import Arm, parse_experiment
from sieve.serve.planner import plan_request
from sieve.settings import Settings

SETTINGS = Settings(exploration_slots=0, exploration_policy="thompson")


def _exp(name: str, layer: str, *variants: dict[str, Any], kind: str = "ab") -> Any:
    return parse_experiment({"name": name, "layer": layer, "kind": kind, "variants": variants})


def _arm(experiment: Any, name: str) -> Arm:
    return Arm(experiment, experiment.variant(name))


VERSIONS = _exp(
    "versions",
    "L1",
    {"name": "control", "share": 0.5},
    {"name": "pinned", "share": 0.5, "model_version": "v2"},
)
INTER = _exp(
    "inter", "L2", {"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}, kind="interleaving"
)
EXPLORE = _exp(
    "explore",
    "L3",
    {"name": "control", "share": 0.5},
    {"name": "slots", "share": 0.5, "config": {"exploration_slots": 3}},
)
ONE_SLOT = _exp("one", "L4", {"name": "x", "share": 1.0, "config": {"exploration_slots": 1}})
POLICY = _exp(
    "policy", "L5", {"name": "ucb", "share": 1.0, "config": {"exploration_policy": "ucb1"}}
)
SHADOWED = _exp(
    "shadowed",
    "L6",
    {"name": "live", "share": 1.0},
    {"name": "ghost", "share": 0.0, "shadow": True, "model_version": "v3"},
)


def test_interleaving_composes_with_exploration_and_policy() -> None:
    plan = plan_request([_arm(INTER, "A"), _arm(EXPLORE, "slots"), _arm(POLICY, "ucb")], SETTINGS)
    assert [a.experiment.name for a in plan.arms] == ["inter", "explore", "policy"]
    assert plan.interleave is not None and plan.interleave.experiment is INTER
    assert (plan.exploration_slots, plan.exploration_policy) == (3, "ucb1")


def test_a_clash_drops_the_whole_later_experiment_whatever_the_arms() -> None:
    # the first experiment's control arm serves the default version: it still
    # chooses the version, so the interleaving is dropped on both of its arms
    for arm in ("control", "pinned"):
        plan = plan_request([_arm(VERSIONS, arm), _arm(INTER, "B")], SETTINGS)
        assert [a.experiment.name for a in plan.arms] == ["versions"]
        assert plan.interleave is None
        assert plan.version == VERSIONS.variant(arm).model_version
    # the first sets exploration_slots in one arm only: the second is dropped on
    # both, so the first's control keeps the default and its arms differ by 3 slots
    for arm, slots in (("control", 0), ("slots", 3)):
        plan = plan_request([_arm(EXPLORE, arm), _arm(ONE_SLOT, "x")], SETTINGS)
        assert [a.experiment.name for a in plan.arms] == ["explore"]
        assert plan.exploration_slots == slots


def test_shadows_choose_nothing_and_come_from_applied_experiments_only() -> None:
    assert not chooses_version(SHADOWED) and parameters_set(SHADOWED) == set()
    plan = plan_request([_arm(INTER, "A"), _arm(SHADOWED, "live")], SETTINGS)
    assert [a.experiment.name for a in plan.arms] == ["inter", "shadowed"]
    assert [(s.key, s.model_version) for s in plan.shadows] == [("shadowed/ghost", "v3")]
    other = _exp(
        "other-shadowed",
        "L7",
        {"name": "v", "share": 1.0, "model_version": "v2"},
        {"name": "g", "share": 0.0, "shadow": True},
    )
    dropped = plan_request([_arm(INTER, "A"), _arm(other, "v")], SETTINGS)
    assert dropped.shadows == ()  # a dropped experiment's shadows are not computed


def test_conflicts_name_both_experiments_and_skip_one_layer_and_stopped() -> None:
    problem = conflicts(INTER, [VERSIONS])
    assert problem is not None
    assert "'inter' chooses the model version (it interleaves two model versions)" in problem
    assert "running experiment 'versions' in layer 'L1'" in problem
    assert "stop 'versions' first" in problem
    problem = conflicts(ONE_SLOT, [INTER, EXPLORE])
    assert problem is not None and "'one' sets exploration_slots" in problem
    assert conflicts(POLICY, [INTER, EXPLORE, VERSIONS]) is None  # composes
    assert conflicts(SHADOWED, [INTER, VERSIONS, EXPLORE]) is None
    same_layer = _exp("inter-l1", "L1", *INTER.to_dict()["variants"], kind="interleaving")
    assert conflicts(same_layer, [VERSIONS]) is None  # one layer: never in one request
    stopped = parse_experiment({**VERSIONS.to_dict(), "name": "old"})
    stopped = type(stopped).from_dict({**stopped.to_dict(), "status": "stopped"})
    assert conflicts(INTER, [stopped]) is None
