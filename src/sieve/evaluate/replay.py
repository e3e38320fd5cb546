"""Replaying logged lists: pages of shown slots plus each candidate's list for
the same requests, gathered into arrays, then estimated per candidate.

The log arrives page by page (`Store.logged_slots`, or a simulation's frames
of the same columns); each page adds its slots and, per candidate, the list
the candidate returns for each of its requests. `LogReplay.result` then:

1. estimates the examination probability per position from the random
   slice (lists drawn uniformly: `sieve.explore.random_slice`), its
   uncertainty carried into every interval (`examination_influence`), or
   takes θ = 1 everywhere with a warning when the log has no random slice;
2. chooses the requests to evaluate on (`slice`): the random slice (every
   item of the pool had a known chance: unbiased), all traffic (each slot's
   logged propensity as it is: exploited slots 1, so only the items the
   policy showed count), or `auto` (the random slice when it holds at least
   `min_random_requests` requests);
3. runs the PBM estimators (`sieve.evaluate.offpolicy_lists`) per candidate
   against the logging policy's observed CTR on the same requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sieve.evaluate.offpolicy_lists import (
    ListOPE,
    LoggedSlots,
    estimate_lists,
    examination_from_random,
    examination_influence,
    item_relevance,
)
from sieve.evaluate.stats import Interval, mean_ci

SliceName = Literal["auto", "random", "all"]
#: Source tag of a random-slice slot (`sieve.explore.random_slice.RANDOM_SOURCE`).
RANDOM_TAG = "random"

__all__ = ["LogReplay", "LoggedEvaluation", "SliceName", "observed_ctr"]


def observed_ctr(slots: LoggedSlots, requests: NDArray[np.bool_]) -> tuple[Interval | None, int]:
    """Mean CTR per shown slot of the chosen requests, with its t interval."""
    shown = slots.lengths().astype(np.float64)
    clicks = np.bincount(slots.request, weights=slots.click, minlength=slots.n_requests)
    keep = requests & (shown > 0)
    if keep.sum() < 2:
        return None, int(keep.sum())
    return mean_ci(clicks[keep] / shown[keep]), int(keep.sum())


def _interval(iv: Interval | None) -> dict[str, float] | None:
    if iv is None:
        return None
    return {"estimate": iv.mean, "low": iv.low, "high": iv.high}


@dataclass
class LoggedEvaluation:
    """Per candidate its estimates (or the reason it has none), and the log's
    own CTRs: the policy's traffic and the random slice."""

    candidates: dict[str, ListOPE | str]
    slice: str
    requests: int
    random_requests: int
    policy_ctr: Interval | None
    random_ctr: Interval | None
    theta: NDArray[np.float64]
    theta_source: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "slice": self.slice,
            "requests": self.requests,
            "random_requests": self.random_requests,
            "policy_ctr": _interval(self.policy_ctr),
            "random_ctr": _interval(self.random_ctr),
            "examination": [float(t) for t in self.theta],
            "examination_source": self.theta_source,
            "warnings": list(self.warnings),
            "candidates": {},
        }
        for name, res in self.candidates.items():
            if isinstance(res, str):
                out["candidates"][name] = {"error": res}
                continue
            out["candidates"][name] = {
                "requests": res.n_requests,
                "logging_ctr": _interval(res.logging),
                "support": res.support,
                "matched": res.matched,
                "ess": res.ess,
                "warnings": res.warnings,
                "estimates": {
                    k: {**(_interval(v.interval) or {}), "ess": v.ess, "n": v.n}
                    for k, v in res.estimates.items()
                },
            }
        return out


class LogReplay:
    """Accumulates pages of logged slots and the candidates' lists (module doc)."""

    def __init__(self, candidates: Sequence[str]) -> None:
        self.names = list(candidates)
        self._codes: dict[str, int] = {}
        self._slot_parts: list[dict[str, NDArray[Any]]] = []
        self._lists: dict[str, list[NDArray[np.int64]]] = {c: [] for c in self.names}
        self._failed: dict[str, str] = {}
        self.n_requests = 0

    def _codes_of(self, ids: NDArray[Any]) -> NDArray[np.int64]:
        """Integer codes of item ids (new ids get the next codes), vectorised;
        ids are compared as given (the store's strings, a simulation's ints)."""
        if not len(ids):
            return np.zeros(0, np.int64)
        codes, uniques = pd.factorize(ids, sort=False)
        table = np.empty(len(uniques), np.int64)
        for k, item in enumerate(uniques.tolist()):
            code = self._codes.get(item)
            if code is None:
                code = self._codes[item] = len(self._codes)
            table[k] = code
        return table[codes]

    def add(self, page: pd.DataFrame, lists: Mapping[str, Sequence[Sequence[Any]] | str]) -> None:
        """Add a page (one row per slot: request_id, item_id, position,
        propensity, clicked, and sources or a boolean `random`; rows of a
        request together) and each candidate's lists for its requests in order
        of first appearance — or a string: why that candidate has no lists."""
        if page.empty:
            return
        codes, uniques = pd.factorize(page["request_id"].to_numpy(), sort=False)
        r = len(uniques)
        if "random" in page:
            random = page["random"].to_numpy(bool)
        else:
            random = np.array([RANDOM_TAG in (s or ()) for s in page["sources"]], dtype=bool)
        self._slot_parts.append(
            {
                "request": codes.astype(np.int64) + self.n_requests,
                "item": self._codes_of(page["item_id"].to_numpy()),
                "position": page["position"].to_numpy(np.int64),
                "propensity": page["propensity"].to_numpy(np.float64),
                "click": page["clicked"].to_numpy(np.float64),
                "random": random,
            }
        )
        for name in self.names:
            got = lists.get(name, "no lists")
            if isinstance(got, str):
                self._failed.setdefault(name, got)
                got = [[] for _ in range(r)]
            if len(got) != r:
                raise ValueError(f"candidate {name!r}: {len(got)} lists for {r} requests")
            lengths = np.array([len(row) for row in got], np.int64)
            flat = np.array([i for row in got for i in row])
            block = np.full((r, max(int(lengths.max(initial=0)), 1)), -1, np.int64)
            block[np.arange(block.shape[1]) < lengths[:, None]] = self._codes_of(flat)
            self._lists[name].append(block)
        self.n_requests += r

    def slots(self) -> LoggedSlots:
        if not self._slot_parts:
            raise ValueError("no logged requests in the window")
        cat = {k: np.concatenate([p[k] for p in self._slot_parts]) for k in self._slot_parts[0]}
        return LoggedSlots(n_requests=self.n_requests, **cat)

    def _targets(self, name: str) -> NDArray[np.int64]:
        blocks = self._lists[name]
        width = max((b.shape[1] for b in blocks), default=1)
        return np.vstack(
            [np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=-1) for b in blocks]
        )

    def result(
        self,
        slice: SliceName = "auto",
        *,
        confidence: float = 0.95,
        min_random_requests: int = 100,
        clip: float | None = None,
    ) -> LoggedEvaluation:
        """The estimates per candidate (see the module doc)."""
        if slice not in ("auto", "random", "all"):
            raise ValueError(f"slice must be auto, random or all, got {slice!r}")
        slots = self.slots()
        per_request = np.zeros(slots.n_requests, bool)
        np.logical_or.at(per_request, slots.request, slots.random)
        n_random = int(per_request.sum())
        depth = int(slots.position.max()) + 1
        warnings: list[str] = []
        on_random = slots.random
        theta = examination_from_random(slots.position[on_random], slots.click[on_random], depth)
        if n_random and slots.click[on_random].sum() > 0:
            source = f"random slice ({n_random} requests)"
        else:
            source = "none: no clicked random slice, positions taken as examined alike"
            warnings.append(
                "no random slice with clicks in the window: position bias is not "
                "corrected (serve a random slice, `random_share`, to measure it)"
            )
        chosen = slice
        if slice == "auto":
            chosen = "random" if n_random >= min_random_requests else "all"
        if chosen == "random" and n_random == 0:
            raise ValueError("the window has no request of the random slice: use slice 'all'")
        if chosen == "all" and n_random < slots.n_requests:
            warnings.append(
                "evaluated on all traffic: the policy's ranked slots have propensity 1, so "
                "only items the logging policy showed count (check each candidate's support)"
            )
        keep = per_request if chosen == "random" else np.ones(slots.n_requests, bool)
        sub, old = slots.subset(keep)
        policy_ctr, _ = observed_ctr(slots, ~per_request)
        random_ctr, _ = observed_ctr(slots, per_request)
        relevance = item_relevance(sub, theta, len(self._codes))
        influence = None
        if n_random and slots.click[on_random].sum() > 0:  # θ estimated here: in the intervals
            influence = examination_influence(slots, depth)[old] * (sub.n_requests / n_random)
        results: dict[str, ListOPE | str] = {}
        for name in self.names:
            if name in self._failed:
                results[name] = self._failed[name]
                continue
            target = self._targets(name)[old]
            try:
                results[name] = estimate_lists(
                    sub,
                    target,
                    theta,
                    relevance,
                    theta_influence=influence,
                    confidence=confidence,
                    clip=clip,
                )
            except ValueError as e:
                results[name] = str(e)
        return LoggedEvaluation(
            results,
            chosen,
            slots.n_requests,
            n_random,
            policy_ctr,
            random_ctr,
            theta,
            source,
            warnings,
        )
