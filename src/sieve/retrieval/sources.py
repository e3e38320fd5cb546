"""The candidate engine: the fitted candidate models of a funnel and every
per-request computation on them (request normalisation, user vectors, the
sources' proposals and their merge). The sources, their quotas and the merge
itself are in `sieve.retrieval.candidates`.

Longer than most modules: each computation exists once, over a block of
requests, with its block-of-one form beside it for the live path and the
features; splitting them apart would separate the two forms that must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse

from sieve.models.content import item_document
from sieve.models.ease import EASE
from sieve.models.factorization import ALS
from sieve.models.itemknn import ItemKNN
from sieve.models.neural.sasrec import SASRec
from sieve.models.neural.two_tower import TwoTower
from sieve.models.sparse_ease import SparseEASE
from sieve.retrieval.ann import AnnConfig, AnnIndex
from sieve.retrieval.candidates import (
    SOURCES,
    SUB_BLOCK,
    Candidates,
    KnnScores,
    Proposal,
    Request,
    ScoreRow,
    SourcesConfig,
    StoredScores,
    joined,
    merge,
    merge_many,
    positions,
)
from sieve.retrieval.catalog import Catalog, _categories
from sieve.retrieval.content import ContentIndex
from sieve.retrieval.personal import UserNeighbours, comeback, session_sequence
from sieve.sparse import gather_rows, maximum_at, minimum_at, nonzero_sums
from sieve.types import Query

_DAY = 86_400.0


class CandidateEngine:
    """The fitted candidate models of a funnel, and every per-request
    computation on them: request normalisation, user vectors (fold-in),
    source proposals and the merge.

    `user_train_count` / `user_train_sum` hold each training user's number
    of training items and the sum of their indices: a query whose history
    matches both uses the trained ALS vector, any other is folded in.
    `user_recent`: each training user's latest items (users × items CSR),
    what the user-to-user source proposes from similar users.
    """

    def __init__(
        self,
        config: SourcesConfig,
        catalog: Catalog,
        event_weights: dict[str, float],
        *,
        als: ALS | None = None,
        ann: AnnIndex | None = None,
        itemknn: ItemKNN | None = None,
        ease: EASE | SparseEASE | None = None,
        tower: TwoTower | None = None,
        sasrec: SASRec | None = None,
        content: ContentIndex | None = None,
        user_train_count: NDArray[np.int64] | None = None,
        user_train_sum: NDArray[np.int64] | None = None,
        n_train_items: int = 0,
        snapshot_time: float = 0.0,
        user_recent: sparse.csr_matrix | None = None,
    ) -> None:
        self.config = config
        self.n_train_items = n_train_items
        self.catalog = catalog
        self.event_weights = dict(event_weights)
        self.als = als
        self.ann = ann
        self.itemknn = itemknn
        self.ease = ease
        self.tower = tower
        self.sasrec = sasrec
        self.content = content
        self.user_train_count = (
            np.empty(0, np.int64) if user_train_count is None else user_train_count
        )
        self.user_train_sum = np.empty(0, np.int64) if user_train_sum is None else user_train_sum
        self.snapshot_time = snapshot_time
        self.user_recent = user_recent
        self._fold_in_gram: NDArray[np.float64] | None = None
        self._unit_factors: NDArray[np.float32] | None = None
        self.neighbours: UserNeighbours | None = None
        if config.user_to_user > 0 and als is not None and user_recent is not None:
            index_config = ann.config if ann is not None else None
            self.neighbours = UserNeighbours(
                als.state.user_factors, user_recent, index_config or _default_ann()
            )

    # ---------------------------------------------------------------- request
    def request(self, query: Query, *, exclude_seen: bool = True) -> Request:
        """Normalise a query: validated indices, merged history and session,
        item-to-item anchors, filters and the user's category shares (the
        block of one of `requests`)."""
        return self.requests([query], exclude_seen=exclude_seen)[0]

    def requests(self, queries: Sequence[Query], *, exclude_seen: bool = True) -> list[Request]:
        """`request` of each query of a block, the category shares of the
        block's interactions summed at once (`_affinities`)."""
        reqs = [self._normalise(query, exclude_seen) for query in queries]
        for req, affinity in zip(reqs, self._affinities(reqs), strict=True):
            req.affinity = affinity
        return reqs

    def _normalise(self, query: Query, exclude_seen: bool) -> Request:
        """A query's request, its category shares left to `_affinities`."""
        cfg = self.config
        n_items = self.catalog.n_items
        history = np.asarray(query.history, dtype=np.int64).ravel()
        hw = np.asarray(query.history_weights, dtype=np.float64).ravel()
        if len(hw) != len(history):
            if len(hw):
                raise ValueError(
                    f"Query.history_weights has {len(hw)} entries for {len(history)} history items"
                )
            hw = np.ones(len(history))
        recent = np.asarray(query.recent, dtype=np.int64).ravel()
        for what, arr in (("history", history), ("recent", recent)):
            if len(arr) == 0 or (arr.min() >= 0 and arr.max() < n_items):
                continue
            bad = arr[(arr < 0) | (arr >= n_items)]
            if len(bad):
                raise IndexError(
                    f"Query.{what} item index {int(bad[0])} is outside 0..{n_items - 1}"
                )
        types = tuple(query.recent_types) + ("",) * max(0, len(recent) - len(query.recent_types))
        all_recent = recent
        recent = recent[: cfg.max_recent]
        decay = cfg.recency_decay ** np.arange(len(recent))
        type_w = np.array(
            [self.event_weights.get(t, 1.0) if t else 1.0 for t in types[: len(recent)]], np.float64
        )
        rw = decay * type_w
        interactions, inv = np.unique(np.concatenate([history, recent]), return_inverse=True)
        weights = np.bincount(
            inv, weights=np.concatenate([np.maximum(hw, 0.0), rw]), minlength=len(interactions)
        ).astype(np.float64)
        # anchors: the session (latest first), then the strongest history items
        order = np.argsort(-hw, kind="stable")[: cfg.max_history_anchors]
        hist_anchor = history[order]
        if len(recent):  # (the set operations' fixed costs only where there is a session)
            unique_recent, first = np.unique(recent, return_index=True)
            hist_anchor = hist_anchor[~_in_sorted(hist_anchor, unique_recent)]
            first = np.sort(first)
        else:
            first = np.empty(0, np.int64)
        anchors = np.concatenate([recent[first], hist_anchor])
        anchor_w = np.concatenate([cfg.session_weight * rw[first], np.ones(len(hist_anchor))])
        seen = interactions if exclude_seen else np.empty(0, np.int64)
        if exclude_seen and len(all_recent):
            seen = np.union1d(interactions, all_recent)
        back = None
        if cfg.continuation > 0:
            back = comeback(
                all_recent,
                tuple(query.recent_types),
                cfg.continuation_weights,
                cfg.continuation_decay,
                cfg.continuation_stop,
            )
            seen = np.setdiff1d(seen, back[0])  # they may come back: not filtered as seen
        exclude = np.empty(0, np.int64)
        if query.exclude:
            exclude = np.unique(np.fromiter(query.exclude, np.int64, count=len(query.exclude)))
        return Request(
            query=query,
            now=float(query.now) if query.now is not None else self.snapshot_time,
            interactions=interactions,
            weights=weights,
            anchors=anchors,
            anchor_weights=anchor_w,
            seen=seen,
            exclude=exclude,
            category_filter=self.catalog.category_ids(query.categories),
            affinity=np.empty(0),
            comeback=back,
        )

    def _affinities(self, reqs: Sequence[Request]) -> list[NDArray[np.float64]]:
        """Each request's share of its (weighted) interactions in each
        category: the block's category rows gathered at once, every
        (request, category) sum by one `np.bincount` (each the sum of its own
        request's terms in their order)."""
        n_cat = self.catalog.n_categories
        out = [np.zeros(n_cat) for _ in reqs]
        lens = [len(req.interactions) for req in reqs]
        if sum(lens) == 0:
            return out
        which, cols, vals = gather_rows(
            self.catalog.category_distribution, joined([req.interactions for req in reqs])
        )
        weights = joined([req.weights for req in reqs])
        keys = (
            cols if len(reqs) == 1 else np.repeat(np.arange(len(reqs)), lens)[which] * n_cat + cols
        )
        sums = np.bincount(keys, weights=vals * weights[which], minlength=len(reqs) * n_cat)
        by_request = sums.astype(np.float64, copy=False).reshape(len(reqs), n_cat)
        for k, n in enumerate(lens):
            if n:
                affinity = by_request[k].copy()
                total = affinity.sum()
                if total > 0:
                    affinity /= total
                out[k] = affinity
        return out

    def allowed(
        self, req: Request, blocked: NDArray[np.bool_] | None = None
    ) -> Callable[[NDArray[np.int64]], NDArray[np.bool_]]:
        """The merge filter of a request: available, not seen, not excluded,
        not blocked, and in the requested categories (the block of one of
        `allowed_many`)."""
        ok = self.allowed_many([req], blocked)
        return lambda items: ok(items, np.zeros(len(items), np.int64))

    def allowed_many(
        self, reqs: Sequence[Request], blocked: NDArray[np.bool_] | None = None
    ) -> Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.bool_]]:
        """The merge filter of a block of requests: `ok(items, requests)`
        tells, for each item, whether the request at that position in the
        block may list it (see `allowed`). Each request's item sets become
        (request, item) keys, so one sorted search covers the block."""
        cat = self.catalog
        width = cat.n_items

        def keys(sets: list[NDArray[np.int64]]) -> NDArray[np.int64]:
            return np.concatenate(
                [np.empty(0, np.int64), *(b * width + s for b, s in enumerate(sets) if len(s))]
            )

        seen = keys([req.seen for req in reqs])
        excluded = keys([req.exclude for req in reqs])
        filtered = np.array([len(req.query.categories) > 0 for req in reqs])
        members = (
            keys(
                [
                    cat.members(req.category_filter) if f else np.empty(0, np.int64)
                    for req, f in zip(reqs, filtered, strict=True)
                ]
            )
            if filtered.any()
            else None
        )

        def ok(items: NDArray[np.int64], requests: NDArray[np.int64]) -> NDArray[np.bool_]:
            mask = cat.available[items].copy()
            if blocked is not None:
                mask &= ~blocked[items]
            at = requests * width + items
            for sorted_set in (seen, excluded):
                if len(sorted_set):
                    mask &= ~_in_sorted(at, sorted_set)
            if members is not None:
                inside = filtered[requests]
                mask[inside] &= _in_sorted(at[inside], members)
            return mask

        return ok

    # ------------------------------------------------------------ model outputs
    def user_vector(self, req: Request) -> NDArray[np.float32] | None:
        """The ALS user vector: the trained one when the query's history is
        the user's training history, else folded in from the interactions.

        None without interactions (cold start) and for a zero vector: a user
        the model knows but who had no training events has the zero vector,
        under which every item scores 0 and any ANN answer is arbitrary. The
        block of one of `user_vectors`."""
        return self.user_vectors([req])[0]

    def user_vectors(self, reqs: Sequence[Request]) -> list[NDArray[np.float32] | None]:
        """`user_vector` of each request of a block, the fold-ins' linear
        systems solved together (`_fold_in`)."""
        folds: list[tuple[Request, NDArray[np.int64], NDArray[np.float64]]] = []
        for req in reqs:
            if "user_vector" in req.cache:
                continue
            vec: NDArray[np.float32] | None = None
            if self.als is not None and req.has_signal:
                n_train = self.als.n_items
                known = req.interactions < n_train
                items = req.interactions[known]
                u = req.query.user
                if (
                    0 <= u < min(self.als.n_users, len(self.user_train_count))
                    and len(req.interactions) == self.user_train_count[u]
                    and int(req.interactions.sum()) == self.user_train_sum[u]
                ):
                    vec = self.als.state.user_factors[u]
                elif len(items):
                    folds.append((req, items, req.weights[known]))
            req.cache["user_vector"] = None if vec is None or not vec.any() else vec
        if folds:
            solved = self._fold_in([f[1] for f in folds], [f[2] for f in folds])
            for (req, _, _), vec in zip(folds, solved, strict=True):
                req.cache["user_vector"] = vec if vec.any() else None
        return [req.cache["user_vector"] for req in reqs]

    def ann_vector(self, req: Request) -> NDArray[np.float32] | None:
        """The query vector of the ANN source: the ALS user vector, or with
        a two-tower model its user tower over the request's interactions
        (and, for a user it knows, their attributes): a new user is folded
        in by one forward pass (the block of one of `ann_vectors`)."""
        if self.tower is None:
            return self.user_vector(req)
        if "ann_vector" in req.cache:
            return req.cache["ann_vector"]
        vec: NDArray[np.float32] | None = None
        items = req.interactions[req.interactions < self.tower.n_items]
        if len(items):
            row = sparse.csr_matrix(
                (np.ones(len(items), np.float32), (np.zeros(len(items), np.int64), items)),
                shape=(1, self.tower.n_items),
            )
            u = req.query.user
            known = 0 <= u < self.tower.state.user_attributes.shape[0]
            vec = self.tower.user_vectors(np.array([u if known else -1]), row)[0]
        req.cache["ann_vector"] = vec
        return vec

    def ann_vectors(self, reqs: Sequence[Request]) -> list[NDArray[np.float32] | None]:
        """`ann_vector` of each request of a block (ALS: `user_vectors`; the
        user tower: one forward pass per request)."""
        if self.tower is None:
            return self.user_vectors(reqs)
        return [self.ann_vector(req) for req in reqs]

    def _fold_in(
        self, items: Sequence[NDArray[np.int64]], weights: Sequence[NDArray[np.float64]]
    ) -> NDArray[np.float32]:
        """One exact ALS user step (implicit's `recalculate_user`) for each
        (items, weights): (YᵀY + λI + Σ (c−1) y yᵀ) x = Σ c y with
        c = alpha · weight. The systems are stacked into one `solve` (LAPACK
        solves each on its own: a user's vector does not depend on the others)."""
        assert self.als is not None
        y = self.als.state.item_factors
        if self._fold_in_gram is None:
            y64 = y.astype(np.float64)
            gram = y64.T @ y64
            gram[np.diag_indices_from(gram)] += self.als.config.regularization
            self._fold_in_gram = gram
        dim = y.shape[1]
        a = np.empty((len(items), dim, dim))
        b = np.empty((len(items), dim, 1))
        for k, (its, w) in enumerate(zip(items, weights, strict=True)):
            yi = y[its].astype(np.float64)
            c = self.als.config.alpha * w
            a[k] = self._fold_in_gram + (yi.T * (c - 1.0)) @ yi
            b[k, :, 0] = yi.T @ c
        return np.linalg.solve(a, b)[:, :, 0].astype(np.float32)

    @property
    def unit_factors(self) -> NDArray[np.float32] | None:
        """ALS item factors scaled to unit length (for cosines)."""
        if self.als is None:
            return None
        if self._unit_factors is None:
            f = self.als.state.item_factors
            norms = np.linalg.norm(f, axis=1, keepdims=True)
            self._unit_factors = (f / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return self._unit_factors

    def knn(self, req: Request) -> KnnScores | None:
        """Item-kNN scores of the request's anchors over the training items
        (the block of one of `knn_many`)."""
        return self.knn_many([req])[0]

    def knn_many(self, reqs: Sequence[Request]) -> list[KnnScores | None]:
        """`knn` of each request of a block, computed `SUB_BLOCK` requests at
        a time (`_knn_block`)."""
        todo = [req for req in reqs if "knn" not in req.cache]
        for req in todo:
            req.cache["knn"] = None
        if self.itemknn is not None:
            for lo in range(0, len(todo), SUB_BLOCK):
                self._knn_block(todo[lo : lo + SUB_BLOCK])
        return [req.cache["knn"] for req in reqs]

    def _knn_block(self, reqs: Sequence[Request]) -> None:
        """Cache the kNN scores of a few requests: their anchors' similarity
        rows gathered at once and the scores summed in one `np.bincount` of
        (request, item) keys, each the sum of its request's own terms in
        their order."""
        assert self.itemknn is not None
        sim = self.itemknn.state.similarity
        n_train = sim.shape[0]
        valid = [np.flatnonzero(req.anchors < n_train) for req in reqs]
        got = [k for k, v in enumerate(valid) if len(v)]
        if not got:
            return
        which, entry_item, entry_sim = gather_rows(
            sim, joined([reqs[k].anchors[valid[k]] for k in got])
        )
        entry_anchor = joined([valid[k] for k in got])[which]
        contrib = entry_sim * joined([reqs[k].anchor_weights[valid[k]] for k in got])[which]
        if len(got) == 1:
            keys, bounds = entry_item, np.array([0, len(entry_item)])
        else:
            owner = np.repeat(np.arange(len(got)), [len(valid[k]) for k in got])[which]
            keys = owner * n_train + entry_item
            bounds = np.searchsorted(owner, np.arange(len(got) + 1))
        sums = np.bincount(keys, weights=contrib, minlength=len(got) * n_train)
        score = sums.astype(np.float64, copy=False).reshape(len(got), n_train)
        for j, k in enumerate(got):
            lo, hi = bounds[j], bounds[j + 1]
            reqs[k].cache["knn"] = KnnScores(
                score[j], entry_item[lo:hi], entry_anchor[lo:hi], entry_sim[lo:hi]
            )

    def content_profile(self, req: Request) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
        """The request's TF-IDF profile as (terms, weights), its
        `content_terms` strongest terms; None without indexed text (the block
        of one of `content_profiles`)."""
        return self.content_profiles([req])[0]

    def content_profiles(
        self, reqs: Sequence[Request]
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float64]] | None]:
        """`content_profile` of each request of a block, computed for the
        block at once (`ContentIndex.profiles`), each kept to its
        `content_terms` strongest terms: strongest first, ties by term (the
        same terms whatever order they come in)."""
        todo = [req for req in reqs if "content" not in req.cache]
        for req in todo:
            req.cache["content"] = None
        todo = [req for req in todo if len(req.interactions)]
        if self.content is not None and todo:
            found = self.content.profiles(
                [req.interactions for req in todo],
                [req.weights for req in todo],
                self.catalog.n_items,
                self.config.content_terms,
            )
            for req, profile in zip(todo, found, strict=True):
                req.cache["content"] = profile
        return [req.cache["content"] for req in reqs]

    def content_cosines(self, req: Request, items: NDArray[np.int64]) -> NDArray[np.float64] | None:
        """TF-IDF cosine of `items` with the request's profile (the block of
        one of `content_cosines_many`)."""
        return self.content_cosines_many([req], [items])[0]

    def content_cosines_many(
        self, reqs: Sequence[Request], items: Sequence[NDArray[np.int64]]
    ) -> list[NDArray[np.float64] | None]:
        """`content_cosines` of each (request, items) of a block (None for a
        request without a profile), computed for the block at once."""
        profiles = [self.content_profile(req) for req in reqs]
        out: list[NDArray[np.float64] | None] = [None] * len(reqs)
        if self.content is None:
            return out
        has = [k for k, p in enumerate(profiles) if p is not None]
        found = self.content.cosines_many(
            [items[k] for k in has],
            [p for p in profiles if p is not None],
            self.catalog.n_items,
        )
        for k, cos in zip(has, found, strict=True):
            out[k] = cos
        return out

    def ease_scores(self, req: Request) -> ScoreRow | None:
        """EASE scores x_u · B over the training items (the block of one of
        `ease_scores_many`)."""
        return self.ease_scores_many([req])[0]

    def ease_scores_many(self, reqs: Sequence[Request]) -> list[ScoreRow | None]:
        """`ease_scores` of each request of a block: one sparse (requests ×
        items) by B product; each row is the sum of its items' rows of B in
        item order, as `B[items].sum(axis=0)` adds them. Dense EASE's rows are
        dense; sparse EASE's keep their stored entries (`StoredScores`), so a
        request costs what its items reach, however large the catalog."""
        todo = [req for req in reqs if "ease" not in req.cache]
        for req in todo:
            req.cache["ease"] = None
        if self.ease is None or not todo:
            return [req.cache["ease"] for req in reqs]
        b = self.ease.state.weights
        rows = [req.interactions[req.interactions < b.shape[0]] for req in todo]
        got = [k for k, r in enumerate(rows) if len(r)]
        if not isinstance(b, np.ndarray):  # sparse EASE: each request's own sums
            for k in got:
                cols, sums = nonzero_sums(b, rows[k], np.ones(len(rows[k])), b.shape[1])
                todo[k].cache["ease"] = StoredScores(cols, sums.astype(np.float32))
        elif len(got) == 1:  # a block of one: the same sums, without a sparse matrix
            todo[got[0]].cache["ease"] = b[rows[got[0]]].sum(axis=0)
        elif got:
            lens = np.array([len(rows[k]) for k in got], dtype=np.int64)
            x = sparse.csr_matrix(
                (
                    np.ones(int(lens.sum()), b.dtype),
                    np.concatenate([rows[k] for k in got]),
                    np.concatenate([[0], np.cumsum(lens)]),
                ),
                shape=(len(got), b.shape[0]),
            )
            scores = np.asarray(x @ b)
            for j, k in enumerate(got):
                todo[k].cache["ease"] = scores[j]
        return [req.cache["ease"] for req in reqs]

    def sasrec_scores(self, req: Request) -> NDArray[np.float32] | None:
        """SASRec's next-item scores over its items after the session
        (`session_sequence`); None without a model or a session."""
        if "sasrec" in req.cache:
            return req.cache["sasrec"]
        out: NDArray[np.float32] | None = None
        if self.sasrec is not None:
            recent = np.asarray(req.query.recent, dtype=np.int64)
            seq = session_sequence(
                recent, req.query.recent_types, self.event_weights, self.sasrec.n_items
            )
            if len(seq):
                out = self.sasrec.sequence_scores([seq])[0]
        req.cache["sasrec"] = out
        return out

    # --------------------------------------------------------------- sources
    def _fetch(self, req: Request, quota: int) -> int:
        """How many proposals to fetch so that `quota` survive the filters."""
        return quota + len(req.seen) + len(req.exclude) + quota // 2 + 10

    def propose(self, req: Request) -> list[Proposal]:
        """Every enabled source's proposal for the request. Without any
        interaction (an unknown user, or a known one with no events: the
        cold start) only the charts propose, whoever the user is (the block
        of one of `propose_many`)."""
        return self.propose_many([req])[0]

    def propose_many(self, reqs: Sequence[Request]) -> list[list[Proposal]]:
        """`propose` of each request of a block: each source's model outputs
        computed for the block's personal requests together."""
        personal = [k for k, req in enumerate(reqs) if req.has_signal]
        found = self._personal([reqs[k] for k in personal])
        out: list[list[Proposal]] = [[] for _ in reqs]
        for k, props in zip(personal, found, strict=True):
            out[k] = props
        for req, props in zip(reqs, out, strict=True):
            props.extend(self._charts(req))
        return out

    def _personal(self, reqs: Sequence[Request]) -> list[list[Proposal]]:
        """The proposals of the sources that read the user's interactions,
        for each request of a block."""
        cfg = self.config
        out: list[list[Proposal]] = [[] for _ in reqs]
        if cfg.ann and self.ann is not None:
            vecs = [(k, vec) for k, vec in enumerate(self.ann_vectors(reqs)) if vec is not None]
            got = [k for k, _ in vecs]
            if got:
                n_index = self.ann.n_items
                skips = []
                for k in got:
                    req = reqs[k]
                    skip = np.union1d(req.seen, req.exclude) if len(req.exclude) else req.seen
                    skips.append(skip[skip < n_index])
                fetch = cfg.ann + cfg.ann // 2 + 10  # seen/excluded skipped in the index
                ids, scores = self.ann.search_many(np.stack([v for _, v in vecs]), fetch, skips)
                for j, k in enumerate(got):
                    keep = ids[j] >= 0
                    out[k].append(Proposal("ann", ids[j][keep], scores[j][keep]))
        if cfg.item_to_item:
            knns = self.knn_many(reqs)
            got = [k for k, knn in enumerate(knns) if knn is not None]
            tops = [
                _top(knns[k].score, self._fetch(reqs[k], cfg.item_to_item))  # type: ignore[union-attr]
                for k in got
            ]
            for k, (items, scores) in zip(got, tops, strict=True):
                out[k].append(Proposal("item_to_item", items, scores))
        if cfg.content and self.content is not None:
            profiles = self.content_profiles(reqs)
            got = [k for k, profile in enumerate(profiles) if profile is not None]
            found = self.content.top_many(
                [profiles[k] for k in got],  # type: ignore[misc]
                [self._fetch(reqs[k], cfg.content) for k in got],
                self.catalog.n_items,
                cfg.content_postings,
            )
            for k, (items, cos) in zip(got, found, strict=True):
                out[k].append(Proposal("content", items, cos.astype(np.float32)))
        if cfg.ease:
            for k, es in enumerate(self.ease_scores_many(reqs)):
                if es is not None:
                    items, scores = _top_row(es, self._fetch(reqs[k], cfg.ease))
                    out[k].append(Proposal("ease", items, scores))
        for req, props in zip(reqs, out, strict=True):
            if cfg.continuation and req.comeback is not None and len(req.comeback[0]):
                props.append(Proposal("continuation", *req.comeback))
            if cfg.user_to_user and self.neighbours is not None:
                vec = self.user_vector(req)
                if vec is not None:
                    fetch = self._fetch(req, cfg.user_to_user)
                    items, scores = self.neighbours.propose(
                        vec, req.query.user, cfg.user_neighbours, fetch
                    )
                    props.append(Proposal("user_to_user", items, scores))
            if cfg.sasrec:
                ss = self.sasrec_scores(req)
                if ss is not None:
                    items, scores = _top(ss, self._fetch(req, cfg.sasrec), positive=False)
                    props.append(Proposal("sasrec", items, scores))
        return out

    def _charts(self, req: Request) -> list[Proposal]:
        """The popular, trending and fresh charts' proposals."""
        cfg = self.config
        out: list[Proposal] = []
        cat = self.catalog
        for kind in ("popular", "trending", "fresh"):
            quota = cfg.quota(kind)
            if not quota:
                continue
            filt = req.category_filter if len(req.query.categories) else np.empty(0, np.int64)
            ranked = cat.fresh(filt, req.now) if kind == "fresh" else cat.ranked(kind, filt)
            items = ranked[: self._fetch(req, quota)]
            if kind == "popular":
                chart = np.log1p(cat.popularity[items])
            elif kind == "trending":
                chart = np.log1p(cat.trending[items])
            else:
                chart = -(req.now - cat.created_at[items]) / _DAY
            out.append(Proposal(kind, items, chart.astype(np.float32)))
        return out

    def best_anchors(self, req: Request, items: NDArray[np.int64]) -> NDArray[np.int64]:
        """For each of the (distinct) items, the anchor item contributing most
        to its kNN score, the first entry giving it on ties (-1 where no
        anchor reaches it). Asked for the items a list explains only."""
        out = np.full(len(items), -1, np.int64)
        knn = self.knn(req)
        if knn is None or not len(items):
            return out
        pos = positions(knn.entry_item, items)
        hit = np.flatnonzero(pos >= 0)  # one scan of the entries, not one per mask
        if not len(hit):
            return out
        entry_anchor = knn.entry_anchor[hit]
        contrib = knn.entry_sim[hit] * req.anchor_weights[entry_anchor]
        p = pos[hit]
        top = np.full(len(items), -np.inf)
        maximum_at(top, p, contrib)
        ties = np.flatnonzero(contrib == top[p])
        first = np.full(len(items), len(p), np.int64)
        minimum_at(first, p[ties], ties)
        reached = first < len(p)
        out[reached] = req.anchors[entry_anchor[first[reached]]]
        return out

    def candidates_many(
        self, reqs: Sequence[Request], blocked: NDArray[np.bool_] | None = None
    ) -> list[Candidates]:
        """`candidates` of each request of a block: each request's proposals,
        merged for the whole block at once (`merge_many`)."""
        cfg = self.config
        quotas = {s: cfg.quota(s) for s in SOURCES}
        ok = self.allowed_many(reqs, blocked)
        cands = merge_many(self.propose_many(reqs), quotas, ok)
        for k, (req, found) in enumerate(zip(reqs, cands, strict=True)):
            if len(found) < cfg.min_candidates:
                cands[k] = self._top_up(req, found, self.allowed(req, blocked), quotas)
        return cands

    def candidates(self, req: Request, blocked: NDArray[np.bool_] | None = None) -> Candidates:
        """All sources, merged under their quotas, topped up with popular
        items when fewer than `min_candidates` survive (the block of one of
        `candidates_many`)."""
        return self.candidates_many([req], blocked)[0]

    def _top_up(
        self,
        req: Request,
        cands: Candidates,
        ok: Callable[[NDArray[np.int64]], NDArray[np.bool_]],
        quotas: dict[str, int],
    ) -> Candidates:
        cat = self.catalog
        filt = req.category_filter if len(req.query.categories) else np.empty(0, np.int64)
        ranked = cat.ranked("popular", filt)
        need = self.config.min_candidates
        fetch = need + len(cands) + len(req.seen) + len(req.exclude) + 10
        items = ranked[:fetch]
        extra = Proposal("popular", items, np.log1p(cat.popularity[items]).astype(np.float32))
        proposals = [extra]
        more = merge(proposals, {**quotas, "popular": need + len(cands)}, ok)
        if len(more) == 0:
            return cands
        new = ~np.isin(more.items, cands.items)
        if not new.any():
            return cands
        return Candidates(
            np.concatenate([cands.items, more.items[new]]),
            np.vstack([cands.scores, more.scores[new]]),
            np.vstack([cands.ranks, more.ranks[new]]),
        )

    def documents(self, frame: pd.DataFrame) -> list[str]:
        """Content documents of item rows (title, text, categories)."""
        titles = frame["title"].fillna("").astype(str) if "title" in frame else [""] * len(frame)
        texts = frame["text"].fillna("").astype(str) if "text" in frame else [""] * len(frame)
        cats = frame["categories"] if "categories" in frame else [[]] * len(frame)
        return [
            item_document(t, x, _categories(c)) for t, x, c in zip(titles, texts, cats, strict=True)
        ]


# ====================================================================== helpers
def _default_ann() -> AnnConfig:
    return AnnConfig()


def _in_sorted(items: NDArray[np.int64], sorted_set: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Membership of items in a sorted array (vectorised binary search); an
    empty set holds nothing (a category filter that matches no item)."""
    if len(sorted_set) == 0:
        return np.zeros(len(items), dtype=bool)
    pos = np.searchsorted(sorted_set, items)
    pos = np.minimum(pos, len(sorted_set) - 1)
    return sorted_set[pos] == items


def _top_row(row: ScoreRow, k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The k best items of a score row, best first: a stored row's among its
    stored entries (the others score 0, no evidence either way)."""
    if isinstance(row, StoredScores):
        at, values = _top(row.values, k, positive=False)
        return row.items[at], values
    return _top(row, k, positive=False)


def _top(
    scores: NDArray[np.floating], k: int, *, positive: bool = True
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The k best entries of a dense score vector, best first (only positive
    scores when `positive`: zero means no evidence)."""
    if positive:
        idx = np.flatnonzero(scores > 0)
        vals = scores[idx]
    else:
        idx = np.arange(len(scores))
        vals = scores
    if len(idx) > k:
        part = np.argpartition(-vals, k - 1)[:k]
        idx, vals = idx[part], vals[part]
    order = np.argsort(-vals, kind="stable")
    return idx[order].astype(np.int64), vals[order].astype(np.float32)
