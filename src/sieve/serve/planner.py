"""The request planner: what a request's experiment arms ask the service to do.

Experiments in different layers apply to the same request, so their
treatments compose (the rules are `sieve.experiments.compose`):

- an A/B arm may choose the model version and set serving parameters
  (`exploration_slots`, `exploration_policy`); parameters of arms of
  different layers are merged;
- an interleaving experiment chooses the two versions whose lists are
  merged, and the merged list still gets the A/B arms' parameters (an
  exploration arm explores on interleaved traffic too).

Two treatments that cannot both apply — two experiments that each choose
the model version, or that set the same parameter to different values — are
refused when the second is created (`conflicts`, in `ExperimentBook.create`).
A request still meeting such a pair (experiments stored before that check)
applies the one met first (layers in the order of their first experiment)
and drops the other from the request, which then shows and logs only the
arms it applied. Shadow arms of the applied experiments are computed after
the response is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sieve.experiments.compose import (
    ARM_PARAMETERS,
    arm_parameters,
    chooses_version,
    conflicts,
    parameters_set,
)
from sieve.experiments.online import Arm
from sieve.settings import Settings

log = logging.getLogger("sieve.serve")


@dataclass(frozen=True)
class Shadow:
    """A shadow arm to compute for a request (named `experiment/arm`)."""

    key: str
    model_version: str | None


@dataclass(frozen=True)
class RequestPlan:
    """What to serve: the version (or the interleaving arm), the exploration
    parameters, the arms applied (the ones logged) and the shadows."""

    arms: tuple[Arm, ...] = ()
    version: str | None = None
    interleave: Arm | None = None
    exploration_slots: int = 0
    exploration_policy: str = "thompson"
    shadows: tuple[Shadow, ...] = ()


def plan_request(arms: Sequence[Arm], settings: Settings) -> RequestPlan:
    """The plan of a request in these arms (see the module doc).

    A clash is decided per experiment, never per arm: an experiment that
    chooses the version, or sets a parameter that an experiment met before
    sets in *any* of its served arms, is dropped whatever arm the request has
    in either. Deciding per arm would apply the second experiment to some of
    the first one's arms and not to others, biasing both comparisons."""
    applied: list[Arm] = []
    version: str | None = None
    interleave: Arm | None = None
    chooser: str | None = None
    params: dict[str, object] = {}
    owner: dict[str, str] = {}
    for arm in arms:
        exp = arm.experiment
        if chooses_version(exp) and chooser is not None:
            log.warning(
                "experiments %r and %r both choose the model version: %r not applied",
                chooser,
                exp.name,
                exp.name,
            )
            continue
        clash = sorted(parameters_set(exp) & owner.keys())
        if clash:
            log.warning(
                "experiments %r and %r both set %s: %r not applied",
                owner[clash[0]],
                exp.name,
                ", ".join(clash),
                exp.name,
            )
            continue
        if chooses_version(exp):
            chooser = exp.name
            if exp.kind == "interleaving":
                interleave = arm
            else:
                version = arm.variant.model_version  # None: the arm serves the default
        params.update(arm_parameters(exp, arm.variant))
        owner.update(dict.fromkeys(parameters_set(exp), exp.name))
        applied.append(arm)
    slots = int(str(params.get("exploration_slots", settings.exploration_slots)))
    policy = str(params.get("exploration_policy", settings.exploration_policy))
    shadows = tuple(
        Shadow(f"{a.experiment.name}/{s.name}", s.model_version)
        for a in applied
        for s in a.experiment.shadows
    )
    return RequestPlan(tuple(applied), version, interleave, slots, policy, shadows)


__all__ = ["ARM_PARAMETERS", "RequestPlan", "Shadow", "conflicts", "plan_request"]
