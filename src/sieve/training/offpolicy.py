"""Off-policy evaluation on the service's own logs (`sieve evaluate --data logged:URL`).

Reads the lists served in a window `[since, until)` page by page
(`Store.logged_slots`: each slot with its propensity and whether a click
cites it), asks each candidate for its list for every logged request — as
of that request: the user's events before it, the same length as was shown
— and estimates the candidates' CTR per slot (`sieve.evaluate.replay`).

A candidate is named by a spec (`parse_candidate`):

- `current`, `version:V` or a registered version `V`: that trained funnel;
- a path ending in `.toml`: a funnel of that configuration, trained on the
  store's events before the window;
- a model name (`popular`, `ease`, `als`, …, `funnel`): that model with its
  defaults, trained on the events before the window.

Limits: the users' histories are read from the event log up to `until`
(as training reads it); anonymous-session requests are skipped (their
session is not stored); the request context (hour, device) is not replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sieve.evaluate.offpolicy_lists import examination_from_random
from sieve.evaluate.replay import LoggedEvaluation, LogReplay, SliceName, observed_ctr
from sieve.models.base import MODELS, Recommender, create_model
from sieve.ranking.query import UserLog
from sieve.registry import ModelRegistry, RegistryError
from sieve.storage import Store
from sieve.training.snapshot import snapshot

if TYPE_CHECKING:
    from sieve.data.dataset import Dataset
    from sieve.pipeline import Funnel

log = logging.getLogger(__name__)

__all__ = [
    "Candidate",
    "CandidateError",
    "evaluate_logged",
    "parse_candidate",
    "read_window",
    "slice_ctrs",
]


class CandidateError(ValueError):
    """A candidate spec that names nothing usable; the message says what to give."""


class Candidate(Protocol):
    """What a candidate policy would have shown for logged requests."""

    name: str

    def lists(self, requests: pd.DataFrame, users: UserLog) -> list[list[str]]:
        """One list of item ids per row of `requests` (user_id, timestamp, n)."""
        ...


@dataclass
class FunnelCandidate:
    """A trained funnel, asked as the service asks it (the one query builder)."""

    name: str
    funnel: Funnel

    def lists(self, requests: pd.DataFrame, users: UserLog) -> list[list[str]]:
        ids = self.funnel.item_ids
        out: list[list[str]] = []
        for user_id, at, n in requests[["user_id", "timestamp", "n"]].itertuples(index=False):
            events = users.events(str(user_id), float(at), before=True)
            query = self.funnel.query(events, str(user_id), n=int(n), now=float(at))
            out.append([str(ids[r.item]) for r in self.funnel.recommend_query(query)[: int(n)]])
        return out


@dataclass
class ModelCandidate:
    """A plain model trained on the events before the window; a user's row is
    their events before each request (fold-in for a user it has not seen)."""

    name: str
    model: Recommender[Any, Any]
    dataset: Dataset

    def lists(self, requests: pd.DataFrame, users: UserLog) -> list[list[str]]:
        ds = self.dataset
        weights = ds.weights.weights
        lookup = {str(v): k for k, v in enumerate(ds.item_ids)}
        users_at = {str(v): k for k, v in enumerate(ds.user_ids)}
        out: list[list[str]] = []
        for user_id, at, n in requests[["user_id", "timestamp", "n"]].itertuples(index=False):
            row: dict[int, float] = {}
            for item, kind in users.events(str(user_id), float(at), before=True):
                k = lookup.get(item)
                w = float(weights.get(kind, 0.0))
                if k is not None and w > 0:
                    row[k] = row.get(k, 0.0) + w
            cols = np.fromiter(row, np.int64, len(row))
            vals = np.fromiter(row.values(), np.float32, len(row))
            matrix = sp.csr_matrix((vals, (np.zeros(len(row), np.int64), cols)), (1, ds.n_items))
            top = self.model.recommend(users_at.get(str(user_id), -1), matrix, int(n))
            out.append([str(ds.item_ids[i]) for i in top.items if i >= 0])
        return out


def parse_candidate(
    spec: str,
    store: Store,
    model_dir: Path | None,
    weights: Mapping[str, float],
    before: float,
) -> Candidate:
    """The candidate a spec names (module doc); models to train are trained
    here on the store's events before `before` (epoch seconds)."""
    from sieve.pipeline import Funnel, load_funnel_config

    spec = spec.strip()
    if not spec:
        raise CandidateError("an empty candidate name")

    def trained(model: Recommender[Any, Any]) -> tuple[Recommender[Any, Any], Dataset]:
        try:
            dataset = snapshot(store, weights, until=before)
        except ValueError:
            raise CandidateError(
                f"{spec}: no events before the window to train on; move --since later, "
                "or name a registered version"
            ) from None
        return model.fit(dataset), dataset

    if spec.endswith(".toml"):
        path = Path(spec)
        if not path.is_file():
            raise CandidateError(f"{spec}: funnel config file not found")
        funnel, _ = trained(Funnel(load_funnel_config(path)))
        return FunnelCandidate(spec, funnel)  # type: ignore[arg-type]
    if spec in MODELS:
        model, dataset = trained(create_model(spec))
        if isinstance(model, Funnel):
            return FunnelCandidate(spec, model)
        return ModelCandidate(spec, model, dataset)
    version = spec.removeprefix("version:")
    if model_dir is None:
        raise CandidateError(
            f"{spec}: not a model name ({', '.join(MODELS)}) nor a .toml funnel config; "
            "a registered version needs --model-dir"
        )
    registry = ModelRegistry(model_dir)
    try:
        version = (registry.current() or "") if version == "current" else version
        loaded = registry.load(version)
    except (RegistryError, FileNotFoundError) as e:
        raise CandidateError(
            f"{spec}: not a model name ({', '.join(MODELS)}), a .toml funnel config, "
            f"nor a registered version in {model_dir} ({e})"
        ) from None
    if not isinstance(loaded, Funnel):
        raise CandidateError(f"{spec}: version {version} is not a funnel")
    return FunnelCandidate(spec, loaded)


def read_window(
    store: Store,
    since: float,
    until: float,
    click_types: Sequence[str],
    batch: int = 5000,
    max_requests: int | None = None,
) -> Iterator[pd.DataFrame]:
    """The window's logged slots, `batch` requests at a time (anonymous
    requests left out), at most `max_requests` requests in all (the oldest)."""
    after: tuple[int, str] | None = None
    seen = 0
    while max_requests is None or seen < max_requests:
        limit = batch if max_requests is None else min(batch, max_requests - seen)
        page = store.logged_slots(since, until, click_types, after, limit)
        if page.empty:
            return
        last = page.iloc[-1]
        after = (int(last["timestamp_us"]), str(last["request_id"]))
        seen += page["request_id"].nunique()
        yield page[page["user_id"].notna()]


def evaluate_logged(
    store: Store,
    candidates: Sequence[Candidate],
    since: float,
    until: float,
    click_types: Sequence[str],
    *,
    slice: SliceName = "auto",
    batch: int = 5000,
    max_requests: int | None = None,
    confidence: float = 0.95,
    on_page: Callable[[int], None] | None = None,
) -> LoggedEvaluation:
    """Estimates of each candidate's CTR on the window's logged requests (module doc)."""
    if until <= since:
        raise ValueError(f"the window is empty: until ({until}) must be after since ({since})")
    events = store.events_frame()
    events = events.loc[events["timestamp"].to_numpy(np.float64) < until]
    users = UserLog(events)
    replay = LogReplay([c.name for c in candidates])
    for page in read_window(store, since, until, click_types, batch, max_requests):
        if page.empty:
            continue
        requests = (
            page.groupby("request_id", sort=False)
            .agg(
                user_id=("user_id", "first"),
                timestamp=("timestamp", "first"),
                n=("item_id", "size"),
            )
            .reset_index()
        )
        lists: dict[str, Sequence[Sequence[str]] | str] = {}
        for cand in candidates:
            lists[cand.name] = cand.lists(requests, users)
        replay.add(page, lists)
        if on_page is not None:
            on_page(replay.n_requests)
    if replay.n_requests == 0:
        raise ValueError(
            "no logged request with a user in the window: widen --since/--until, or "
            "serve traffic first"
        )
    return replay.result(slice, confidence=confidence)


def slice_ctrs(
    store: Store,
    since: float,
    until: float,
    click_types: Sequence[str],
    max_requests: int = 20_000,
) -> dict[str, Any]:
    """The observed CTR per slot of the policy's lists and of the random slice
    over the oldest `max_requests` requests of the window (each with
    its interval and request count), and the examination per position the
    random slice measures: what the dashboard shows side by side."""
    replay = LogReplay([])
    for page in read_window(store, since, until, click_types, max_requests=max_requests):
        replay.add(page, {})
    out: dict[str, Any] = {"requests": replay.n_requests, "policy": None, "random": None}
    if replay.n_requests == 0:
        out["examination"] = []
        return out
    slots = replay.slots()
    in_random = np.zeros(slots.n_requests, bool)
    np.logical_or.at(in_random, slots.request, slots.random)
    for key, mask in (("policy", ~in_random), ("random", in_random)):
        iv, _ = observed_ctr(slots, mask)
        out[key] = {
            "requests": int(mask.sum()),
            "ctr": None if iv is None else iv.mean,
            "low": None if iv is None else iv.low,
            "high": None if iv is None else iv.high,
        }
    r = slots.random
    depth = int(slots.position.max()) + 1
    measured = r.any() and slots.click[r].sum() > 0
    out["examination"] = (
        examination_from_random(slots.position[r], slots.click[r], depth).tolist()
        if measured
        else []
    )
    return out
