"""The request planner: what a request's experiment arms ask the service to do.

Experiments in different layers apply to the same request, so their
treatments must compose or be kept from meeting:

- an A/B arm may choose the model version and set serving parameters
  (`exploration_slots`, `exploration_policy`); parameters of arms of
  different layers are merged;
- an interleaving experiment chooses the two versions whose lists are
  merged, and the merged list still gets the A/B arms' parameters (an
  exploration arm explores on interleaved traffic too).

Two treatments that cannot both apply — two experiments that each choose
the model version (an A/B arm with a `model_version`, an interleaving) or
that set the same parameter to different values — are refused when the
second is created (`conflicts`), with a message naming the first. A request
still meeting such a pair (experiments stored before this check) applies the
first and drops the other from the request, which then logs only the arms
it applied. Shadow arms are computed after the response is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sieve.experiments.assignment import Experiment, Variant
from sieve.experiments.online import Arm
from sieve.settings import Settings

log = logging.getLogger("sieve.serve")

#: Serving parameters an A/B arm may set (its `config`).
ARM_PARAMETERS = ("exploration_slots", "exploration_policy")


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


def _chooses_version(experiment: Experiment) -> bool:
    served = [v for v in experiment.variants if not v.shadow]
    return experiment.kind == "interleaving" or any(v.model_version for v in served)


def _parameters(variant: Variant) -> dict[str, object]:
    return {k: v for k, v in (variant.config or {}).items() if k in ARM_PARAMETERS}


def plan_request(arms: Sequence[Arm], settings: Settings) -> RequestPlan:
    """The plan of a request in these arms (see the module doc)."""
    applied: list[Arm] = []
    version: str | None = None
    interleave: Arm | None = None
    chooser: str | None = None
    params: dict[str, object] = {}
    owner: dict[str, str] = {}
    for arm in arms:
        exp = arm.experiment
        if _chooses_version(exp) and chooser is not None:
            log.warning(
                "experiments %r and %r both choose the model version: %r not applied",
                chooser,
                exp.name,
                exp.name,
            )
            continue
        mine = _parameters(arm.variant) if exp.kind == "ab" else {}
        clash = [k for k, v in mine.items() if k in params and params[k] != v]
        if clash:
            log.warning(
                "experiments %r and %r set %s differently: %r not applied",
                owner[clash[0]],
                exp.name,
                clash,
                exp.name,
            )
            continue
        if exp.kind == "interleaving":
            interleave, chooser = arm, exp.name
        elif arm.variant.model_version:
            version, chooser = arm.variant.model_version, exp.name
        for k, v in mine.items():
            params[k] = v
            owner[k] = exp.name
        applied.append(arm)
    slots = int(str(params.get("exploration_slots", settings.exploration_slots)))
    policy = str(params.get("exploration_policy", settings.exploration_policy))
    shadows = tuple(
        Shadow(f"{a.experiment.name}/{s.name}", s.model_version)
        for a in applied
        for s in a.experiment.shadows
    )
    return RequestPlan(tuple(applied), version, interleave, slots, policy, shadows)


def conflicts(new: Experiment, running: Sequence[Experiment]) -> str | None:
    """Why `new` cannot run beside the `running` experiments of other layers
    (None: it can). Experiments of one layer never meet in a request."""
    for other in running:
        if other.layer == new.layer or other.name == new.name:
            continue
        if _chooses_version(new) and _chooses_version(other):
            return (
                f"experiment {new.name!r} chooses the model version "
                f"({'interleaving' if new.kind == 'interleaving' else 'an arm sets model_version'})"
                f" and so does running experiment {other.name!r} in layer {other.layer!r}: "
                f"a request in both could apply only one. Put {new.name!r} in layer "
                f"{other.layer!r} (the layers split traffic) or stop {other.name!r} first"
            )
        mine = {k for v in new.variants for k in _parameters(v)}
        theirs = {k for v in other.variants for k in _parameters(v)}
        shared = sorted(mine & theirs)
        if shared:
            return (
                f"experiment {new.name!r} sets {shared} and so does running experiment "
                f"{other.name!r} in layer {other.layer!r}: a request in both could apply only "
                f"one. Put {new.name!r} in layer {other.layer!r} or stop {other.name!r} first"
            )
    return None


__all__ = ["ARM_PARAMETERS", "RequestPlan", "Shadow", "conflicts", "plan_request"]
