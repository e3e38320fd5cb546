"""Deterministic, salted-hash assignment of users (or sessions) to experiment arms.

A unit's position in an experiment is u = H(salt, unit_id) ∈ [0, 1), where H
takes the first 53 bits of sha256(f"{salt}:{unit_id}"): the same unit always
gets the same arm, with no state to store, and different salts give
independent positions.

Layers let experiments run concurrently. Each `Layer` has its own salt; the
layer position u_L = H(layer.salt, user_id) splits the layer's traffic into
consecutive slots:

    [0, h)                         layer holdout: default experience, in no
                                   experiment of the layer
    [h, h + t₁), [h + t₁, …), …    experiment 1, experiment 2, … (`traffic`
                                   shares, in declaration order)
    the rest                       unallocated: default experience

so a user is in at most one experiment per layer, while experiments in
different layers are independent (different salts). Inside an experiment a
second position u_E = H(experiment.salt, unit) (unit = user or session id)
picks the arm: u_E < holdout_share → experiment holdout (default experience,
not analysed), otherwise the arm whose cumulative share interval holds
(u_E − holdout_share)/(1 − holdout_share). Shadow variants take no traffic:
they are computed and logged for every assigned unit but never shown.

Keep slots stable while experiments run: append new experiments at the end
of their layer and leave stopped ones in place (their slot then serves the
default), or users would move between experiments.

Everything serialises to dicts/JSON/TOML (`to_dict`, `from_dict`, `to_json`,
`from_json`), so the service can store experiments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError

__all__ = [
    "Assigner",
    "Assignment",
    "AssignmentBatch",
    "Experiment",
    "Layer",
    "Variant",
    "hash_uniform",
    "hash_uniforms",
]

Status = Literal["draft", "running", "paused", "stopped"]
Reason = Literal["assigned", "layer_holdout", "experiment_holdout", "unallocated", "not_running"]
_TOL = 1e-9


def hash_uniform(salt: str, unit_id: str) -> float:
    """u = first 53 bits of sha256(f"{salt}:{unit_id}") / 2⁵³, uniform in [0, 1)."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 9007199254740992.0  # 2**53


def hash_uniforms(salt: str, unit_ids: Iterable[str]) -> NDArray[np.float64]:
    """`hash_uniform` of many ids (≈ 1 µs each)."""
    return np.fromiter((hash_uniform(salt, str(u)) for u in unit_ids), dtype=np.float64)


@dataclass(frozen=True)
class Variant(Config):
    """One arm of an experiment.

    - `name`: unique within the experiment (logged with every impression);
    - `share`: fraction of the experiment's (non-holdout) units served this
      arm; the served arms' shares sum to 1; shadow arms have share 0;
    - `config`: parameters the service applies for this arm (None = default);
    - `model_version`: the model this arm serves (None = default);
    - `shadow`: computed and logged for every assigned unit, never shown.
    """

    name: str
    share: float
    config: dict[str, Any] | None = None
    model_version: str | None = None
    shadow: bool = False

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("Variant.name: must not be empty")
        if not (0.0 <= self.share <= 1.0):
            raise ConfigError(f"Variant {self.name!r}: share must be in [0, 1], got {self.share}")
        if self.shadow and self.share != 0.0:
            raise ConfigError(
                f"Variant {self.name!r}: a shadow variant takes no traffic; set share = 0 "
                f"(got {self.share})"
            )
        if not self.shadow and self.share == 0.0:
            raise ConfigError(f"Variant {self.name!r}: a served variant needs share > 0")


@dataclass(frozen=True)
class Experiment(Config):
    """An experiment: arms, salt, and its place in a layer.

    - `name`: unique across all layers;
    - `layer`: name of the `Layer` it runs in;
    - `variants`: the arms (served arms' shares sum to 1; shadow arms share 0);
      the first served arm is the control unless the analysis says otherwise;
    - `salt`: hash salt of the arm split (unique; never change it while running);
    - `holdout_share`: fraction of the experiment's units held out (default
      experience, excluded from the analysis);
    - `unit`: randomisation unit, "user" or "session";
    - `status`: only "running" experiments assign units;
    - `traffic`: fraction of the layer's units in this experiment's slot;
    - `kind`: "ab" shows each unit its arm's list; "interleaving" shows every
      unit one team-draft interleaving of the two served arms' lists and credits
      each click to the arm whose team placed the item;
    - `allocation`: "fixed" splits units by `share` (hash, sticky); "thompson"
      lets a Thompson-sampling bandit choose the arm of every request from the
      clicks so far (adaptive allocation: not sticky, the propensity of the
      choice is logged, and no sample-ratio check applies); "linucb" lets a
      contextual bandit choose it from the request's context (one LinUCB
      model per arm: `sieve.explore.linear`; deterministic, propensity 1).
    """

    name: str
    layer: str
    variants: tuple[Variant, ...]
    salt: str
    holdout_share: float = 0.0
    unit: Literal["user", "session"] = "user"
    status: Status = "running"
    traffic: float = 1.0
    kind: Literal["ab", "interleaving"] = "ab"
    allocation: Literal["fixed", "thompson", "linucb"] = "fixed"

    def validate(self) -> None:
        who = f"Experiment {self.name!r}"
        if not self.name or not self.layer or not self.salt:
            raise ConfigError(f"{who}: name, layer and salt must not be empty")
        if not self.variants:
            raise ConfigError(f"{who}: needs at least one variant")
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{who}: variant names must be unique; repeated: {dupes}")
        served = self.served
        if not served:
            raise ConfigError(f"{who}: needs at least one served (non-shadow) variant")
        total = math.fsum(v.share for v in served)
        if abs(total - 1.0) > _TOL:
            detail = ", ".join(f"{v.name}={v.share:g}" for v in served)
            raise ConfigError(
                f"{who}: served variants' shares must sum to 1, got {total:.6g} ({detail})"
            )
        if not 0.0 <= self.holdout_share < 1.0:
            raise ConfigError(f"{who}: holdout_share must be in [0, 1), got {self.holdout_share}")
        if not 0.0 < self.traffic <= 1.0:
            raise ConfigError(f"{who}: traffic must be in (0, 1], got {self.traffic}")
        if self.kind not in ("ab", "interleaving"):
            raise ConfigError(f"{who}: kind must be 'ab' or 'interleaving', got {self.kind!r}")
        if self.allocation not in ("fixed", "thompson", "linucb"):
            raise ConfigError(
                f"{who}: allocation must be 'fixed', 'thompson' or 'linucb', "
                f"got {self.allocation!r}"
            )
        if self.kind == "interleaving" and len(served) != 2:
            raise ConfigError(
                f"{who}: an interleaving experiment needs exactly two served variants, "
                f"got {len(served)}"
            )
        if self.kind == "interleaving" and self.allocation != "fixed":
            raise ConfigError(f"{who}: an interleaving experiment shows both arms to every unit")

    # ------------------------------------------------------------- structure
    @property
    def served(self) -> tuple[Variant, ...]:
        """The arms that take traffic, in declaration order."""
        return tuple(v for v in self.variants if not v.shadow)

    @property
    def shadows(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.shadow)

    @property
    def shares(self) -> dict[str, float]:
        """Configured share of each served arm (for the sample-ratio check)."""
        return {v.name: v.share for v in self.served}

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"experiment {self.name!r} has no variant {name!r}")

    @classmethod
    def aa(
        cls, name: str, layer: str, salt: str, arms: Sequence[str] = ("A1", "A2"), **kwargs: Any
    ) -> Experiment:
        """An A/A test: identical arms (no config) with equal shares."""
        share = 1.0 / len(arms)
        return cls(
            name=name,
            layer=layer,
            salt=salt,
            variants=tuple(Variant(a, share) for a in arms),
            **kwargs,
        )

    # ------------------------------------------------------------ assignment
    def _edges(self) -> NDArray[np.float64]:
        return np.cumsum([v.share for v in self.served])[:-1]

    def variant_index(self, u: NDArray[np.float64]) -> NDArray[np.int64]:
        """Served-arm index of experiment positions u (−1 = experiment holdout)."""
        h = self.holdout_share
        scaled = (u - h) / (1.0 - h)
        idx = np.searchsorted(self._edges(), scaled, side="right").astype(np.int64)
        return np.where(u < h, -1, idx)

    def assign(self, unit_id: str) -> Variant | None:
        """The served arm of a unit, ignoring layers and status (None = holdout)."""
        k = int(self.variant_index(np.array([hash_uniform(self.salt, unit_id)]))[0])
        return None if k < 0 else self.served[k]

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["variants"] = [v.to_dict() for v in self.variants]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        if isinstance(data.get("variants"), list | tuple):
            data["variants"] = tuple(
                v if isinstance(v, Variant) else Variant.from_dict(v) for v in data["variants"]
            )
        return super().from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Layer(Config):
    """A set of mutually exclusive experiments with its own salt and holdout.

    - `name`: unique; experiments name their layer;
    - `salt`: hash salt of the layer split (unique across layers and experiments);
    - `holdout_share`: fraction of users that get the default experience and are
      in no experiment of this layer.
    """

    name: str
    salt: str
    holdout_share: float = 0.0

    def validate(self) -> None:
        if not self.name or not self.salt:
            raise ConfigError("Layer: name and salt must not be empty")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ConfigError(
                f"Layer {self.name!r}: holdout_share must be in [0, 1), got {self.holdout_share}"
            )


@dataclass(frozen=True)
class Assignment:
    """Where one unit landed in one layer.

    `variant` is the served arm (None: default experience), `config` and
    `model_version` its settings, `shadows` the shadow arms to compute and log.
    `reason` says why: "assigned", "layer_holdout", "experiment_holdout",
    "unallocated" (no experiment owns the slot) or "not_running".
    """

    layer: str
    experiment: str | None
    variant: str | None
    reason: Reason
    config: dict[str, Any] | None = None
    model_version: str | None = None
    shadows: tuple[str, ...] = ()

    @property
    def in_experiment(self) -> bool:
        return self.reason == "assigned"

    @property
    def holdout(self) -> bool:
        return self.reason in ("layer_holdout", "experiment_holdout")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["shadows"] = list(self.shadows)
        return out


@dataclass(frozen=True)
class AssignmentBatch:
    """Vectorised assignments of many units in one layer (object arrays; None =
    no experiment / no variant)."""

    layer: str
    experiment: NDArray[np.object_]
    variant: NDArray[np.object_]
    reason: NDArray[np.object_]

    def counts(self) -> dict[str, int]:
        """Units per served variant (all experiments of the layer together)."""
        names, n = np.unique(
            self.variant[self.reason == "assigned"].astype(str), return_counts=True
        )
        return {str(a): int(b) for a, b in zip(names, n, strict=True)}


class Assigner:
    """Layers plus experiments: validates the whole set and assigns units.

    Validation: unique layer and experiment names, every experiment's layer
    exists, all salts distinct, and per layer holdout + Σ traffic ≤ 1.
    """

    def __init__(self, layers: Sequence[Layer], experiments: Sequence[Experiment]) -> None:
        self.layers: dict[str, Layer] = {}
        for layer in layers:
            if layer.name in self.layers:
                raise ConfigError(f"layer {layer.name!r} is defined twice")
            self.layers[layer.name] = layer
        self.experiments: dict[str, Experiment] = {}
        salts: dict[str, str] = {}
        for layer in layers:
            _claim_salt(salts, layer.salt, f"layer {layer.name!r}")
        self._slots: dict[str, list[tuple[float, float, Experiment]]] = {n: [] for n in self.layers}
        used = {n: layer.holdout_share for n, layer in self.layers.items()}
        for exp in experiments:
            if exp.name in self.experiments:
                raise ConfigError(f"experiment {exp.name!r} is defined twice")
            if exp.layer not in self.layers:
                raise ConfigError(
                    f"experiment {exp.name!r}: unknown layer {exp.layer!r}; "
                    f"layers: {sorted(self.layers)}"
                )
            _claim_salt(salts, exp.salt, f"experiment {exp.name!r}")
            start = used[exp.layer]
            stop = start + exp.traffic
            if stop > 1.0 + _TOL:
                raise ConfigError(
                    f"layer {exp.layer!r} is over-allocated: holdout + traffic reaches {stop:.6g} "
                    f"with experiment {exp.name!r} (must be ≤ 1)"
                )
            self._slots[exp.layer].append((start, min(stop, 1.0), exp))
            used[exp.layer] = stop
            self.experiments[exp.name] = exp

    # ------------------------------------------------------------ assignment
    def assign_layer(self, layer: str, user_id: str, session_id: str | None = None) -> Assignment:
        """Assignment of a user (and session) in one layer."""
        lay = self.layers[layer]
        u = hash_uniform(lay.salt, user_id)
        if u < lay.holdout_share:
            return Assignment(layer, None, None, "layer_holdout")
        owner = [e for start, stop, e in self._slots[layer] if start <= u < stop]
        if not owner:
            return Assignment(layer, None, None, "unallocated")
        exp = owner[0]
        if exp.status != "running":
            return Assignment(layer, exp.name, None, "not_running")
        unit = _unit_id(exp, user_id, session_id)
        k = int(exp.variant_index(np.array([hash_uniform(exp.salt, unit)]))[0])
        if k < 0:
            return Assignment(layer, exp.name, None, "experiment_holdout")
        v = exp.served[k]
        shadows = tuple(s.name for s in exp.shadows)
        return Assignment(layer, exp.name, v.name, "assigned", v.config, v.model_version, shadows)

    def assign(self, user_id: str, session_id: str | None = None) -> dict[str, Assignment]:
        """Assignments of a user (and session) in every layer, keyed by layer."""
        return {name: self.assign_layer(name, user_id, session_id) for name in self.layers}

    def assign_many(
        self,
        layer: str,
        user_ids: Sequence[str],
        session_ids: Sequence[str] | None = None,
    ) -> AssignmentBatch:
        """Assignments of many units in one layer (same rules, vectorised)."""
        lay = self.layers[layer]
        n = len(user_ids)
        u = hash_uniforms(lay.salt, user_ids)
        experiment = np.full(n, None, dtype=object)
        variant = np.full(n, None, dtype=object)
        reason = np.full(n, "unallocated", dtype=object)
        reason[u < lay.holdout_share] = "layer_holdout"
        for start, stop, exp in self._slots[layer]:
            inside = np.flatnonzero((u >= start) & (u < stop))
            experiment[inside] = exp.name
            if exp.status != "running":
                reason[inside] = "not_running"
                continue
            if exp.unit == "session" and session_ids is None:
                raise ValueError(f"experiment {exp.name!r} randomises sessions: pass session_ids")
            ids = user_ids if exp.unit == "user" else session_ids
            assert ids is not None
            k = exp.variant_index(hash_uniforms(exp.salt, (ids[int(i)] for i in inside)))
            names = np.array([None, *(v.name for v in exp.served)], dtype=object)
            reason[inside] = np.where(k < 0, "experiment_holdout", "assigned")
            variant[inside] = names[k + 1]
        return AssignmentBatch(layer, experiment, variant, reason)

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers.values()],
            "experiments": [e.to_dict() for e in self.experiments.values()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assigner:
        unknown = sorted(set(data) - {"layers", "experiments"})
        if unknown:
            raise ConfigError(f"Assigner: unknown key(s) {unknown}; known: experiments, layers")
        return cls(
            [Layer.from_dict(d) for d in data.get("layers", [])],
            [Experiment.from_dict(d) for d in data.get("experiments", [])],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Assigner:
        return cls.from_dict(json.loads(text))


def _claim_salt(salts: dict[str, str], salt: str, owner: str) -> None:
    if salt in salts:
        raise ConfigError(
            f"{owner} reuses the salt {salt!r} of {salts[salt]}; salts must be distinct or "
            "the splits are correlated"
        )
    salts[salt] = owner


def _unit_id(exp: Experiment, user_id: str, session_id: str | None) -> str:
    if exp.unit == "user":
        return user_id
    if session_id is None:
        raise ValueError(f"experiment {exp.name!r} randomises sessions: pass session_id")
    return session_id
