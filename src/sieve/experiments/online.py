"""The experiments of a running service: stored and assigned per request.

`ExperimentBook` is what the engine, the API and `sieve experiment` share:

- experiments live in the store (`experiments` table), so every server
  process and the CLI see the same set; a book re-reads them at most every
  `refresh_seconds` (a new or stopped experiment reaches a running server
  within that time, without a restart);
- each layer gets the salt ``layer:<name>`` and no layer holdout; an
  experiment's arm split uses its own salt (default ``exp:<name>``);
  experiments keep their slot in the layer in creation order, stopped ones
  included, so a stop never moves users between the other experiments (a
  stopped experiment's slot serves the default experience);
- `assign(user)` gives the running experiments a user is in (hashing only:
  no store access on the request path);
- experiments with ``allocation = "thompson"`` choose the arm of every request
  with a Beta–Bernoulli Thompson sampler over the arms' request-level clicks,
  and log the propensity of that choice; its pulls and clicks are exact sums
  in the cache every process adds to (`sieve.explore.shared.SharedBandit`),
  so with Redis every replica allocates on every replica's traffic and a
  restart keeps what was learned;
- experiments with ``allocation = "linucb"`` choose it with one LinUCB model
  per arm over the request's context vector (given to `assign`), its A and
  b sums shared the same way (`sieve.explore.linear.SharedLinUCB`); the
  choice is deterministic (propensity 1) and the context travels with the
  arm to the click that credits it.

`ExperimentBook.create` refuses an experiment that cannot run beside the
running ones (`sieve.experiments.compose.conflicts`), whoever creates it.
Their analysis is `sieve.experiments.report.experiment_report`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from sieve.config import ConfigError
from sieve.experiments.assignment import Assigner, Experiment, Layer, Variant
from sieve.experiments.compose import conflicts
from sieve.explore.bandits import ThompsonSampling
from sieve.explore.linear import SharedLinUCB
from sieve.explore.shared import SharedBandit
from sieve.settings import DEFAULT_SEMANTICS, EventSemantics
from sieve.storage.base import Store, StoreError
from sieve.storage.cache import Cache, MemoryCache

log = logging.getLogger(__name__)

#: The source tag of an interleaved slot: ``team:<arm>``.
TEAM_PREFIX = "team:"


class ExperimentError(ValueError):
    """An experiment request that cannot be honoured (bad definition, unknown name)."""


class ExperimentNotFound(ExperimentError, KeyError):
    """No experiment of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ExperimentExists(ExperimentError):
    """An experiment of that name exists already."""


@dataclass(frozen=True)
class ExperimentRecord:
    """A stored experiment with its life-cycle times (epoch seconds)."""

    experiment: Experiment
    created_at: float
    stopped_at: float | None = None

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def status(self) -> str:
        return self.experiment.status

    def to_dict(self) -> dict[str, Any]:
        out = self.experiment.to_dict()
        out["created_at"] = self.created_at
        out["stopped_at"] = self.stopped_at
        return out


@dataclass(frozen=True)
class Arm:
    """A request's arm in one experiment, as the engine applies and logs it."""

    experiment: Experiment
    variant: Variant
    propensity: float = 1.0
    #: the request context a LinUCB allocation chose on (None: other allocations)
    context: tuple[float, ...] | None = None

    @property
    def name(self) -> str:
        return self.variant.name


def parse_experiment(spec: Mapping[str, Any]) -> Experiment:
    """An `Experiment` from an API/CLI definition, with defaults: layer
    "default", salt ``exp:<name>``, status "running"; `ExperimentError` says
    what is wrong."""
    data = dict(spec)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ExperimentError("experiment: `name` must be a non-empty string")
    data.setdefault("layer", "default")
    data.setdefault("salt", f"exp:{name}")
    data["status"] = "running"
    variants = data.get("variants")
    if not isinstance(variants, list | tuple) or not variants:
        raise ExperimentError(f"experiment {name!r}: `variants` must be a non-empty list")
    try:
        exp = Experiment.from_dict(data)
    except (ConfigError, TypeError, ValueError) as e:
        raise ExperimentError(str(e)) from None
    for v in exp.variants:
        check_variant_config(exp.name, v)
        if v.config and (v.shadow or exp.kind == "interleaving"):
            what = "a shadow arm" if v.shadow else "an arm of an interleaving experiment"
            raise ExperimentError(
                f"experiment {exp.name!r}, variant {v.name!r}: {what} is computed without "
                f"serving parameters, so its config {v.config} would not be applied; remove "
                "it (an interleaving compares its arms' model_version; put serving "
                "parameters in an A/B arm)"
            )
    return exp


#: What a variant's `config` may set, with the check of each value.
VARIANT_CONFIG: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "exploration_slots": (
        "an integer from 0 to 50",
        lambda x: isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 50,
    ),
    "exploration_policy": (
        "one of thompson, ucb1, epsilon, linucb",
        lambda x: x in ("thompson", "ucb1", "epsilon", "linucb"),
    ),
}


def check_variant_config(experiment: str, variant: Variant) -> None:
    """`ExperimentError` naming each unknown key or bad value of a variant's config."""
    problems = []
    for key, value in (variant.config or {}).items():
        rule = VARIANT_CONFIG.get(key)
        if rule is None:
            problems.append(f"unknown key {key!r} (known: {sorted(VARIANT_CONFIG)})")
        elif not rule[1](value):
            problems.append(f"{key} must be {rule[0]}, got {value!r}")
    if problems:
        raise ExperimentError(
            f"experiment {experiment!r}, variant {variant.name!r}: config " + "; ".join(problems)
        )


def _layer(name: str) -> Layer:
    return Layer(name=name, salt=f"layer:{name}")


def build_assigner(experiments: Sequence[Experiment]) -> Assigner:
    """The assigner of these experiments, one default layer per layer name."""
    layers = [_layer(n) for n in dict.fromkeys(e.layer for e in experiments)]
    return Assigner(layers, list(experiments))


class ExperimentBook:
    """Stored experiments, their assignment and adaptive-allocation bandits."""

    def __init__(
        self,
        store: Store,
        cache: Cache | None = None,
        refresh_seconds: float = 2.0,
        seed: int | None = None,
        semantics: EventSemantics = DEFAULT_SEMANTICS,
    ) -> None:
        self.store = store
        self.semantics = semantics
        #: where the allocation bandits live (a private memory cache if none)
        self.cache: Cache = cache if cache is not None else MemoryCache()
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._records: dict[str, ExperimentRecord] = {}
        self._assigner = build_assigner([])
        self._loaded_at = -math.inf
        self._bandits: dict[str, SharedBandit] = {}
        self._linear: dict[tuple[str, str, int], SharedLinUCB] = {}
        #: LinUCB allocation's confidence width and ridge
        self.linucb_alpha = 1.0
        self.linucb_ridge = 1.0
        self._rng = np.random.default_rng(seed)

    # -------------------------------------------------------------- reading
    def refresh(self, force: bool = False) -> None:
        """Re-read the store when the last read is older than `refresh_seconds`."""
        if not force and time.monotonic() - self._loaded_at < self.refresh_seconds:
            return
        try:
            rows = self.store.experiments()
        except StoreError:
            if force:
                raise
            # a periodic refresh keeps serving with the experiments known so far
            log.warning("store unavailable: experiments not refreshed", exc_info=True)
            self._loaded_at = time.monotonic()
            return
        records: dict[str, ExperimentRecord] = {}
        for row in rows:
            try:
                exp = Experiment.from_dict({**row["definition"], "status": row["status"]})
            except (ConfigError, TypeError, ValueError):
                log.exception("stored experiment %r is invalid: ignored", row["definition"])
                continue
            records[exp.name] = ExperimentRecord(exp, row["created_at"], row["stopped_at"])
        assigner = build_assigner([r.experiment for r in records.values()])
        with self._lock:
            self._records, self._assigner = records, assigner
            self._loaded_at = time.monotonic()

    def records(self) -> list[ExperimentRecord]:
        self.refresh(force=True)
        return list(self._records.values())

    def get(self, name: str) -> ExperimentRecord:
        self.refresh(force=True)
        record = self._records.get(name)
        if record is None:
            raise ExperimentNotFound(f"no experiment named {name!r}")
        return record

    # -------------------------------------------------------------- writing
    def create(
        self, spec: Mapping[str, Any], model_versions: Collection[str] | None = None
    ) -> ExperimentRecord:
        """Validate a definition against the running set (names, salts, layer
        room, no conflict with a running experiment of another layer:
        `sieve.experiments.compose.conflicts`) and, given the registered
        `model_versions`, that every arm's model exists; store it; it takes
        traffic from the next refresh."""
        exp = parse_experiment(spec)
        if model_versions is not None:
            known = set(model_versions)
            for v in exp.variants:
                if v.model_version is not None and v.model_version not in known:
                    raise ExperimentError(
                        f"experiment {exp.name!r}, variant {v.name!r}: model version "
                        f"{v.model_version!r} is not registered (known: {sorted(known)})"
                    )
        self.refresh(force=True)
        if exp.name in self._records:
            raise ExperimentExists(f"an experiment named {exp.name!r} exists already")
        try:
            build_assigner([*(r.experiment for r in self._records.values()), exp])
        except ConfigError as e:
            raise ExperimentError(str(e)) from None
        problem = conflicts(exp, [r.experiment for r in self._records.values()])
        if problem is not None:
            raise ExperimentError(problem)
        now = datetime.now(UTC)
        self.store.add_experiment(exp.to_dict(), exp.status, now)
        self.refresh(force=True)
        return self._records[exp.name]

    def stop(self, name: str) -> ExperimentRecord:
        """Stop an experiment: its units get the default experience from the next
        refresh; its slot and its log stay for the report."""
        record = self.get(name)
        if record.status != "stopped":
            self.store.set_experiment_status(name, "stopped", datetime.now(UTC))
            self.refresh(force=True)
        return self._records[name]

    # ----------------------------------------------------------- assignment
    def in_experiment(self, user_id: str) -> bool:
        """Whether any running experiment takes `user_id` (no bandit draw)."""
        self.refresh()
        assigner = self._assigner
        return any(
            assigner.assign_layer(layer, user_id, user_id).in_experiment
            for layer in assigner.layers
        )

    def assign(
        self,
        user_id: str,
        session_id: str | None = None,
        learn: bool = True,
        context: Sequence[float] | None = None,
    ) -> list[Arm]:
        """The running experiments `user_id` is in, with the arm of this request
        (`learn=False`: an adaptive choice counts no pull — for previews, or for
        a caller that counts the pulls of the arms it applies with `pulled`);
        `context`: the request's context vector, for LinUCB allocations (none:
        a constant 1)."""
        self.refresh()
        assigner = self._assigner
        out: list[Arm] = []
        for layer in assigner.layers:
            a = assigner.assign_layer(layer, user_id, session_id or user_id)
            if not a.in_experiment or a.experiment is None or a.variant is None:
                continue
            exp = assigner.experiments[a.experiment]
            if exp.allocation == "thompson":
                out.append(self._choose(exp, learn))
            elif exp.allocation == "linucb":
                x = tuple(float(v) for v in context) if context is not None else (1.0,)
                out.append(self._choose_linear(exp, x, learn))
            else:
                out.append(Arm(exp, exp.variant(a.variant)))
        return out

    def _choose(self, exp: Experiment, learn: bool = True) -> Arm:
        """Adaptive allocation: Thompson sampling over the served arms."""
        names = [v.name for v in exp.served]
        bandit = self._bandit(exp.name)
        state = bandit.policy(names)  # the arms' counts now, every process's
        with self._lock:
            chosen, propensity = state.select(names, self._rng, 1)
        if learn:
            bandit.pull(chosen)  # the pull; a click credits it later
        return Arm(exp, exp.variant(chosen[0]), max(float(propensity[0]), 1e-6))

    def _choose_linear(self, exp: Experiment, context: tuple[float, ...], learn: bool) -> Arm:
        """Contextual allocation: the arm whose LinUCB model scores the
        request's context highest (ties: the first served arm)."""
        x = np.asarray(context, dtype=np.float64)
        scores = [
            float(self._linear_model(exp.name, v.name, len(x)).model().scores(x[None, :])[0])
            for v in exp.served
        ]
        variant = exp.served[int(np.argmax(scores))]
        arm = Arm(exp, variant, 1.0, context)
        if learn:
            self.pulled([arm])
        return arm

    def _linear_model(self, experiment: str, arm: str, dim: int) -> SharedLinUCB:
        key = (experiment, arm, dim)
        with self._lock:
            model = self._linear.get(key)
            if model is None:
                model = self._linear[key] = SharedLinUCB(
                    self.cache,
                    f"bandit:v2:allocation:linucb:{experiment}:{arm}:{dim}",
                    dim,
                    self.linucb_alpha,
                    self.linucb_ridge,
                )
            return model

    def pulled(self, arms: Sequence[Arm]) -> None:
        """Count a pull of each adaptively allocated arm among `arms`: the arms a
        request applied, chosen by `assign(..., learn=False)`. An arm chosen but
        not applied (dropped by the serving planner) must not count, or its
        bandit would learn from traffic it never served."""
        for arm in arms:
            if arm.experiment.allocation == "thompson":
                self._bandit(arm.experiment.name).pull([arm.name])
            elif arm.experiment.allocation == "linucb" and arm.context is not None:
                x = np.asarray(arm.context, dtype=np.float64)
                self._linear_model(arm.experiment.name, arm.name, len(x)).observe(x[None, :])

    def _bandit(self, name: str) -> SharedBandit:
        with self._lock:
            bandit = self._bandits.get(name)
            if bandit is None:
                bandit = self._bandits[name] = SharedBandit(
                    self.cache, _bandit_key(name), lambda: ThompsonSampling(n_draws=500)
                )
            return bandit

    def clicked(
        self,
        experiment: str,
        arm: str,
        reward: float = 1.0,
        context: Sequence[float] | None = None,
    ) -> None:
        """A click on a request of `experiment` served by `arm`, worth `reward`
        (`semantics.reward(event.type)`): adaptive allocation learns from it;
        fixed splits need nothing. An experiment this process has not read yet
        (created on another replica a moment ago) is credited all the same:
        the credit is capped by the arm's stored pulls, so an arm never served
        gets nothing. A LinUCB arm learns r·x of the request's `context`."""
        record = self._records.get(experiment)
        if reward <= 0 or (record is not None and record.experiment.allocation == "fixed"):
            return
        if context is not None:
            x = np.asarray(context, dtype=np.float64)
            self._linear_model(experiment, arm, len(x)).reward(x, reward)
            return
        if record is not None and record.experiment.allocation != "thompson":
            return
        self._bandit(experiment).credit(arm, reward)

    def credit_event(self, experiment: str, arm: str, event_type: str) -> bool:
        """Credit an event of `event_type` citing a request of `arm` with its
        reward under this book's semantics; False when the type earns nothing."""
        reward = self.semantics.reward(event_type)
        if reward <= 0:
            return False
        self.clicked(experiment, arm, reward)
        return True

    def allocation(self, name: str) -> dict[str, dict[str, float]] | None:
        """Pulls (requests) and clicks per served arm of an adaptively
        allocated experiment, as stored now (every process's); None for an
        unknown or fixed-split experiment."""
        record = self._records.get(name)
        if record is None or record.experiment.allocation != "thompson":
            return None
        arms = [v.name for v in record.experiment.served]
        pulls, sums = self._bandit(name).counts(arms)
        return {
            a: {"requests": float(n), "clicks": float(s)}
            for a, n, s in zip(arms, pulls, sums, strict=True)
        }


def _bandit_key(name: str) -> str:
    return f"bandit:v2:allocation:{name}"


__all__ = [
    "Arm",
    "ExperimentBook",
    "ExperimentError",
    "ExperimentExists",
    "ExperimentNotFound",
    "ExperimentRecord",
    "build_assigner",
    "parse_experiment",
]
