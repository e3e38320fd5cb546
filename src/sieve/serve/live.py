"""Live answers: a user's list computed now, from their stored events.

The user's experiment arms are planned (`sieve.serve.planner`): the model
version, or two versions interleaved by team draft, and the exploration
slots; shadow arms are computed after the answer (`sieve.serve.shadows`).
A request reads the snapshot once and ranks with it, even if a swap
publishes another meanwhile. Its query comes from the one query builder
(`Funnel.query`), from the user's latest stored events only. A plain
request's answer (no filter or context, no arm, no exploration slot, no
trace) is kept in the cache as the user's list (`answers.remember`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sieve.data.schema import UnknownIdError
from sieve.experiments.interleaving import request_rng, team_draft
from sieve.experiments.online import Arm, ExperimentBook
from sieve.explore.linear import ContextualConfig, item_contexts, request_context
from sieve.explore.random_slice import RandomSlice
from sieve.explore.slots import ExplorationSlots, linucb_key
from sieve.serve import answers
from sieve.serve.credit import ServedRequests
from sieve.serve.errors import InvalidInput, field_error
from sieve.serve.holder import ModelHolder, ServingSnapshot
from sieve.serve.lane import Lane
from sieve.serve.listing import Filters, context_dict, listed, new_request_id
from sieve.serve.planner import plan_request
from sieve.serve.schemas import ExperimentArm, RecommendationList, RecommendedItem
from sieve.serve.shadows import ShadowRunner
from sieve.settings import Settings
from sieve.storage import Cache, Store
from sieve.types import ItemList, Query, Recommended

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

LogImpression = Callable[[RecommendationList, Mapping[str, Any], Sequence[Arm]], None]
#: takes work to run after the response (`recommend_user`'s `defer`)
Defer = Callable[[Callable[[], None]], None]


class LiveAnswers:
    """Live lists for users, sessions and items (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        holder: ModelHolder,
        experiments: ExperimentBook,
        explorer: ExplorationSlots,
        served: ServedRequests,
        shadows: ShadowRunner,
        log_impression: LogImpression,
        random_slice: RandomSlice | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.settings = settings
        #: where the funnel's computations take turns (`sieve.serve.lane`)
        self.lane = Lane(settings.live_concurrency, settings.live_wait_seconds or None)
        #: where plain requests' answers are kept (`answers.remember`); None: not kept
        self.cache = cache
        #: which requests get a uniformly random list (`random_share`)
        self.random_slice = random_slice or RandomSlice(settings.random_share)
        self.store = store
        self.holder = holder
        self.experiments = experiments
        self.explorer = explorer
        self.served = served
        self.shadows = shadows
        self._log_impression = log_impression

    @property
    def funnel(self) -> Funnel:
        return self.holder.snapshot.funnel

    def user_events(self, funnel: Funnel, user_id: str) -> list[tuple[str, str]]:
        """The user's latest stored (item, type) events, most recent first: as
        many as the query's history (`query.history_limit`) and session
        (`query.recent_limit`) take."""
        shape = funnel.config.query
        limit = max(shape.history_limit, shape.recent_limit)
        return self.store.user_interactions(user_id, limit=limit)

    def user_attributes(self, funnels: Sequence[Funnel], user_id: str) -> dict[str, Any]:
        """The user's stored attributes when one of `funnels` ranks with them
        (one store read), else none (no read)."""
        if not any(f.reads_user_attributes for f in funnels):
            return {}
        user = self.store.get_user(user_id)
        return dict(user.attributes) if user is not None else {}

    def user_query(
        self,
        funnel: Funnel,
        user_id: str,
        n: int,
        filters: Filters = Filters(),
        events: Sequence[tuple[str, str]] | None = None,
        now: float | None = None,
        request_id: str = "",
        user_attributes: Mapping[str, Any] | None = None,
    ) -> Query:
        """The live request of a user, built by the one query builder from
        their stored events (the session too: see the module doc) and, when
        the ranker reads them, their stored attributes."""
        if events is None:
            events = self.user_events(funnel, user_id)
        if user_attributes is None:
            user_attributes = self.user_attributes([funnel], user_id)
        return funnel.query(
            events,
            user_id,
            n=n,
            context=filters.context,
            categories=filters.categories,
            exclude=filters.exclude,
            now=time.time() if now is None else now,
            request_id=request_id,
            user_attributes=user_attributes,
        )

    def recommend_user(
        self,
        user_id: str,
        n: int,
        filters: Filters = Filters(),
        log: bool = True,
        trace: dict[str, Any] | None = None,
        explain: bool = False,
        uniform: bool = False,
        defer: Defer | None = None,
    ) -> RecommendationList:
        """Top-n for `user_id`, live.

        `uniform`: the request is in the random slice (`random_list`).
        The user's experiment arms are planned (`sieve.serve.planner`): the
        model version, or two versions interleaved by team draft, and the
        exploration slots; shadow arms are computed after this returns.
        `log=False` (a preview: the dashboard's inspector) logs no impression
        and teaches no bandit, so it never counts as traffic. `trace` (a dict)
        receives the query and the ranker's features of the main list;
        `explain` adds each ranked item's feature contributions; `uniform`
        serves a list of the random slice instead. `defer`: where keeping a
        plain answer in a remote cache goes (a response's background tasks,
        run once it is sent: the client does not wait for the write); None:
        kept now."""
        if uniform:
            return self.random_list(user_id, n, filters, log)
        started = time.time()  # before the read: a later event makes a kept answer stale
        snap = self.holder.snapshot
        events = self.user_events(snap.funnel, user_id)
        c = filters.context
        linucb = snap.funnel.config.linucb
        situation = request_context(linucb, c.hour, c.weekday, c.device, len(events))
        # adaptive arms count a pull only once applied: the planner may drop one
        arms = self.experiments.assign(user_id, learn=False, context=situation.tolist())
        plan = plan_request(arms, self.settings)
        if log:
            self.experiments.pulled(plan.arms)
        request_id = new_request_id()
        attrs = self.user_attributes(
            self._plan_funnels(snap, plan.version, plan.interleave), user_id
        )
        now = time.time()
        explored: dict[str, str] = {}
        k = min(plan.exploration_slots, n)
        pool = self.settings.exploration_pool if k > 0 else 0
        contextual = k > 0 and plan.exploration_policy == "linucb"
        if contextual and trace is None:
            trace = {}  # the candidates' features give the items' contexts
        if plan.interleave is not None:
            ranked, cold = self._interleave(
                snap, plan.interleave, user_id, n - k + pool, filters, events, request_id, attrs
            )
            version = None
        else:
            version = plan.version
            funnel = self._arm_funnel(snap, version)
            ranked, cold = self._ranked(
                funnel,
                user_id,
                n - k + pool,
                filters,
                events,
                now,
                trace,
                request_id,
                attrs,
                explain,
            )
        contexts = _contexts(linucb, ranked, trace) if contextual else None
        linear: dict[str, tuple[str, list[float]]] = {}
        items: list[RecommendedItem] = []
        for item, propensity, explore in self.explorer.fill(
            ranked,
            n,
            k,
            plan.exploration_policy,
            key=lambda r: r.id,
            learn=log,
            contexts=contexts,
            linucb=linucb,
        ):
            if explore:  # the bandit's pick, not a team's: no interleaving credit
                explored[item.id] = plan.exploration_policy
                if contexts is not None:
                    row = contexts[[i.id for i in ranked].index(item.id)]
                    linear[item.id] = (linucb_key(linucb), row.tolist())
                item = item.model_copy(
                    update={"propensity": propensity, "slot": "explore", "team": None}
                )
            items.append(item)
        result = RecommendationList(
            items=items,
            request_id=request_id,
            model_version=version or snap.version,
            user_id=user_id,
            cached=False,
            cold_start=cold,
            experiments=[
                ExperimentArm(experiment=a.experiment.name, arm=a.name, propensity=a.propensity)
                for a in plan.arms
            ],
        )
        if not log:
            return result
        ttl = self.settings.answer_ttl_seconds
        plain = trace is None and not explain and filters.empty and k == 0
        if self.cache is not None and ttl > 0 and plain and not plan.arms and not plan.shadows:
            version = result.model_version
            keep = functools.partial(
                answers.remember, self.cache, user_id, items, version, started, ttl, cold
            )
            if defer is None or not self.cache.remote:
                keep()  # a process-local cache: cheaper now than a task later
            else:
                defer(keep)
        if plan.arms or explored:
            self.served.remember(request_id, plan.arms, explored, linear)
        context = context_dict(filters)
        if not plan.shadows:
            self._log_impression(result, context, plan.arms)
        else:  # logged with the shadows' lists, computed off this path

            def shadow_list(version: str | None) -> list[str]:
                funnel = self.holder.funnel_for(version)
                found = self._ranked(
                    funnel, user_id, n, filters, events, now, user_attributes=attrs or None
                )
                return [i.id for i in found[0]]

            self.shadows.submit(plan.shadows, result, context, plan.arms, shadow_list)
        return result

    def random_list(
        self, user_id: str, n: int, filters: Filters = Filters(), log: bool = True
    ) -> RecommendationList:
        """A list of the random slice: n items drawn uniformly from the serving
        funnel's top `random_pool` for this request, in a random order, each
        with its propensity n / pool (`sieve.explore.random_slice`). No
        experiment arm and no exploration applies: the slice is the same
        uniform policy for everyone, logged without arms."""
        snap = self.holder.snapshot
        request_id = new_request_id()
        events = self.user_events(snap.funnel, user_id)
        pool, cold = self._ranked(
            snap.funnel, user_id, self.settings.random_pool, filters, events, request_id=request_id
        )
        items = [
            item.model_copy(update={"propensity": propensity, "slot": "random", "team": None})
            for item, propensity in self.random_slice.fill(pool, n)
        ]
        result = RecommendationList(
            items=items,
            request_id=request_id,
            model_version=snap.version,
            user_id=user_id,
            cached=False,
            cold_start=cold,
        )
        if log:
            self._log_impression(result, context_dict(filters), ())
        return result

    def _ranked(
        self,
        funnel: Funnel,
        user_id: str,
        n: int,
        filters: Filters,
        events: Sequence[tuple[str, str]],
        now: float | None = None,
        trace: dict[str, Any] | None = None,
        request_id: str = "",
        user_attributes: Mapping[str, Any] | None = None,
        explain: bool = False,
    ) -> tuple[list[RecommendedItem], bool]:
        """The funnel's top-n for a user as served items, and whether it was a cold start."""
        query = self.user_query(
            funnel,
            user_id,
            n,
            filters,
            events=events,
            now=now,
            request_id=request_id,
            user_attributes=user_attributes,
        )
        if trace is None and not explain:  # waiting plain computations go as one block
            recs = self.lane.submit(id(funnel), query, funnel.recommend_queries)
        else:
            with self.lane.held():
                recs = funnel.recommend_query(query, trace=trace, explain=explain)
        found = listed(funnel, recs, explain)
        if trace is not None:
            trace["query"] = {
                "user": query.user,
                "history": query.history.tolist(),
                "history_weights": query.history_weights.tolist(),
                "recent": list(query.recent),
                "recent_types": list(query.recent_types),
                "now": query.now,
            }
        return found, funnel.is_cold(query)

    def _plan_funnels(
        self, snap: ServingSnapshot, version: str | None, interleave: Arm | None
    ) -> list[Funnel]:
        """The funnels a request's plan ranks with."""
        if interleave is None:
            return [self._arm_funnel(snap, version)]
        return [self._arm_funnel(snap, v.model_version) for v in interleave.experiment.served]

    def _arm_funnel(self, snap: ServingSnapshot, version: str | None) -> Funnel:
        """The funnel of an arm's model version; the serving version's is the
        snapshot's the request took, even if a swap published another since."""
        if version is None or version == snap.version:
            return snap.funnel
        return self.holder.funnel_for(version)

    def _interleave(
        self,
        snap: ServingSnapshot,
        arm: Arm,
        user_id: str,
        n: int,
        filters: Filters,
        events: Sequence[tuple[str, str]],
        request_id: str,
        attrs: Mapping[str, Any],
    ) -> tuple[list[RecommendedItem], bool]:
        """Team-draft interleaving of the two arms' lists; each item carries its team."""
        a, b = arm.experiment.served
        now = time.time()
        list_a, cold = self._ranked(
            self._arm_funnel(snap, a.model_version),
            user_id,
            n,
            filters,
            events,
            now,
            user_attributes=attrs,
        )
        list_b, _ = self._ranked(
            self._arm_funnel(snap, b.model_version),
            user_id,
            n,
            filters,
            events,
            now,
            user_attributes=attrs,
        )
        by_id = {i.id: i for i in list_b} | {i.id: i for i in list_a}
        merged = team_draft(
            [i.id for i in list_a], [i.id for i in list_b], request_rng(request_id), k=n
        )
        items = [
            by_id[item_id].model_copy(update={"team": (a.name, b.name)[int(team)]})
            for item_id, team in zip(merged.items, merged.teams, strict=True)
        ]
        return items, cold

    def recommend_session(
        self, recent_items: Sequence[str], n: int, filters: Filters = Filters()
    ) -> RecommendationList:
        """Top-n for an anonymous session from its recent item ids (most recent first)."""
        funnel = self.funnel
        errors: list[dict[str, Any]] = []
        for pos, item_id in enumerate(recent_items):
            try:
                funnel.item_index(item_id)
            except UnknownIdError:
                errors.append(
                    field_error(("body", "recent_items", pos), f"unknown item id {item_id!r}")
                )
        if errors:
            raise InvalidInput(errors[:50])
        events = [(item_id, "view") for item_id in recent_items]
        query = funnel.query(
            events,
            None,
            n=n,
            context=filters.context,
            categories=filters.categories,
            exclude=filters.exclude,
            now=time.time(),
            request_id=new_request_id(),
        )
        items = listed(funnel, self.lane.submit(id(funnel), query, funnel.recommend_queries))
        result = RecommendationList(
            items=items,
            request_id=query.request_id,
            model_version=str(funnel.version),
            user_id=None,
            cached=False,
            cold_start=not recent_items,
        )
        self._log_impression(result, context_dict(filters), ())
        return result

    def similar(self, item_id: str, n: int) -> list[RecommendedItem]:
        """Items like `item_id` (`UnknownIdError` if the funnel does not know it)."""
        funnel = self.funnel
        index = int(funnel.item_index(item_id))
        with self.lane.held():
            found: ItemList = funnel.similar_items(index, n)
        title = str(funnel.item_title(index))
        recs = [
            Recommended(
                item=int(i),
                score=float(s),
                sources={"similar": float(s)},
                explanation=f"similar to {title!r}" if title else f"similar to {item_id}",
            )
            for i, s in zip(found.items, found.scores, strict=True)
        ]
        return listed(funnel, recs)

    def popular(self, n: int, categories: tuple[str, ...] = ()) -> list[RecommendedItem]:
        """The trending items now, optionally restricted to `categories`."""
        funnel = self.funnel
        return listed(funnel, funnel.popular(n, categories, now=time.time()))


def _contexts(
    config: ContextualConfig, ranked: Sequence[RecommendedItem], trace: Mapping[str, Any] | None
) -> NDArray[np.float64]:
    """Each ranked item's LinUCB context from the ranker's features of the
    request (`trace`); items the ranker did not score (backfill, an
    interleaved list) get only the constant."""
    names = (trace or {}).get("feature_names") or []
    rows = (trace or {}).get("features")
    width = max(len(names), 1)
    x = np.full((len(ranked), width), np.nan)
    if rows is not None:
        at = {item_id: k for k, item_id in enumerate((trace or {}).get("candidates", []))}
        for r, item in enumerate(ranked):
            k = at.get(item.id)
            if k is not None:
                x[r, : len(rows[k])] = rows[k]
    return item_contexts(config, names, x)


__all__ = ["LiveAnswers"]
