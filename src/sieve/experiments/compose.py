"""Which experiments can run side by side: what each one sets in a request.

Experiments in different layers meet in the same request (each layer splits
all traffic on its own salt), so their treatments must compose:

- an interleaving experiment chooses the model versions whose lists are
  merged; an A/B experiment whose served arms name a `model_version` chooses
  the version of the list. A request can have only one of these, so two
  experiments that both choose the version cannot run in different layers;
- an A/B served arm may set serving parameters (`ARM_PARAMETERS`, its
  `config`); two experiments of different layers that set the same
  parameter cannot run side by side either, since one arm's value would
  override the other's. Parameters set by different experiments compose
  (one sets `exploration_slots`, another `exploration_policy`), and so do
  parameters with interleaving (the merged list gets the exploration slots).

Shadow arms are computed off the request path and shown to no one: neither
their `model_version` nor their config counts as choosing anything.
Experiments of one layer never meet in a request (the layer gives a user at
most one of them), so they never conflict. `conflicts` is what
`ExperimentBook.create` refuses a new experiment with; the serving planner
(`sieve.serve.planner`) applies the same rules to a request that still meets
such a pair (experiments stored before this check).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sieve.experiments.assignment import Experiment, Variant

#: Serving parameters an A/B arm may set (its `config`).
ARM_PARAMETERS = ("exploration_slots", "exploration_policy")


def chooses_version(experiment: Experiment) -> bool:
    """Whether the experiment decides which model version a request is served
    by: an interleaving, or an A/B experiment with a served arm that names a
    `model_version` (shadow arms do not count: they are never served)."""
    if experiment.kind == "interleaving":
        return True
    return any(v.model_version for v in experiment.served)


def arm_parameters(experiment: Experiment, variant: Variant) -> dict[str, Any]:
    """The serving parameters that `variant` of `experiment` sets in a request:
    a served A/B arm's `config` keys among `ARM_PARAMETERS`; nothing for a
    shadow arm or an interleaving arm (their config is refused at creation)."""
    if experiment.kind != "ab" or variant.shadow:
        return {}
    return {k: v for k, v in (variant.config or {}).items() if k in ARM_PARAMETERS}


def parameters_set(experiment: Experiment) -> set[str]:
    """Every serving parameter some served arm of `experiment` sets."""
    return {k for v in experiment.served for k in arm_parameters(experiment, v)}


def _why_version(experiment: Experiment) -> str:
    if experiment.kind == "interleaving":
        return "it interleaves two model versions"
    arms = [v.name for v in experiment.served if v.model_version]
    return f"its arm(s) {arms} set model_version"


def conflicts(new: Experiment, running: Sequence[Experiment]) -> str | None:
    """Why `new` cannot run beside the `running` experiments (None: it can).

    Only running experiments of other layers are compared: a request in both
    could apply only one of the two treatments (see the module doc)."""
    for other in running:
        if other.layer == new.layer or other.name == new.name or other.status != "running":
            continue
        where = (
            f"running experiment {other.name!r} in layer {other.layer!r}: a request in both "
            "layers could apply only one. Put "
            f"{new.name!r} in layer {other.layer!r} (experiments of one layer split its "
            f"traffic and never meet) or stop {other.name!r} first"
        )
        if chooses_version(new) and chooses_version(other):
            return (
                f"experiment {new.name!r} chooses the model version ({_why_version(new)}) "
                f"and so does {where}"
            )
        shared = sorted(parameters_set(new) & parameters_set(other))
        if shared:
            return f"experiment {new.name!r} sets {', '.join(shared)} and so does {where}"
    return None


__all__ = ["ARM_PARAMETERS", "arm_parameters", "chooses_version", "conflicts", "parameters_set"]
