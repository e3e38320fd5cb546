"""Maximum-inner-product search over item embeddings with FAISS.

Small catalogs get an exact `IndexFlatIP` (brute force is both exact and fast
there). Large ones get an HNSW graph searched directly with the inner product
(`IndexHNSWFlat` with `METRIC_INNER_PRODUCT`, the "ip-NSW" of Morozov &
Babenko, NeurIPS 2018). The usual reduction of MIPS to L2 search (an extra
coordinate sqrt(M² − ‖x‖²) that equalises the norms) was measured and
rejected: ALS item norms grow with popularity, so the extra coordinate
dominates most vectors, they crowd together, and recall@100 fell to 0.1-0.4
where the plain inner-product graph reaches 0.97 (`benchmarks/bench_ann.py`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class AnnConfig(Config):
    """ANN index settings.

    - `exact_max_items`: catalogs up to this size use exact search
      (`IndexFlatIP`); larger ones use HNSW.
    - `hnsw_m`: HNSW graph degree (links per node); more is slower to build,
      more accurate to search.
    - `ef_construction`: HNSW beam width while building.
    - `ef_search`: HNSW beam width while searching (raised to k when a search
      asks for more than that); the recall/latency knob.
    - `search_threads`: OpenMP threads of FAISS while serving (1: one request
      per core, no thread contention between concurrent requests).
    """

    exact_max_items: int = 20_000
    hnsw_m: int = 32
    ef_construction: int = 120
    ef_search: int = 256
    search_threads: int = 1

    def validate(self) -> None:
        if self.exact_max_items < 0:
            raise ConfigError("AnnConfig.exact_max_items must be >= 0")
        if self.hnsw_m < 4:
            raise ConfigError("AnnConfig.hnsw_m must be >= 4")
        if self.ef_construction < 1 or self.ef_search < 1:
            raise ConfigError("AnnConfig.ef_construction and ef_search must be >= 1")
        if self.search_threads < 1:
            raise ConfigError("AnnConfig.search_threads must be >= 1")


class AnnIndex:
    """Top-k inner-product search over a fixed set of item vectors.

    Ids are row positions of the vectors given to `build`; `search` returns
    them best first, padded with -1 (score -inf) where fewer than k exist.
    """

    def __init__(self, index: faiss.Index, dim: int, exact: bool, config: AnnConfig) -> None:
        self.index = index
        self.dim = dim
        self.exact = exact
        self.config = config

    @classmethod
    def build(
        cls,
        vectors: NDArray[np.floating],
        config: AnnConfig | None = None,
        *,
        exact: bool | None = None,
    ) -> AnnIndex:
        """Index `vectors` (n × d); `exact` forces (or forbids) brute force,
        otherwise the catalog size decides."""
        cfg = config or AnnConfig()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = x.shape
        use_exact = n <= cfg.exact_max_items if exact is None else exact
        if use_exact:
            index: faiss.Index = faiss.IndexFlatIP(dim)
            index.add(x)
            return cls(index, dim, True, cfg)
        hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = cfg.ef_construction
        hnsw.add(x)
        return cls(hnsw, dim, False, cfg)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    def search(
        self,
        queries: NDArray[np.floating],
        k: int,
        exclude: NDArray[np.int64] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The k items of largest inner product with each query row (q × d,
        or one d-vector), best first: (ids, scores), each q × k. Items in
        `exclude` are skipped inside the search (an `IDSelector`), so a user
        with a long history still gets k unseen items without over-fetching."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        k = max(1, min(k, self.n_items)) if self.n_items else 0
        if k == 0:
            return np.full((len(q), 0), -1, np.int64), np.full((len(q), 0), -np.inf, np.float32)
        if faiss.omp_get_max_threads() != self.config.search_threads:
            faiss.omp_set_num_threads(self.config.search_threads)
        selector = None
        if exclude is not None and len(exclude):
            batch = faiss.IDSelectorBatch(np.ascontiguousarray(exclude, dtype=np.int64))
            selector = faiss.IDSelectorNot(batch)
        params: Any = None
        if not self.exact:
            ef = max(self.config.ef_search, k)
            params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
        elif selector is not None:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        scores, ids = self.index.search(q, k, params=params)
        ids = ids.astype(np.int64)
        scores = scores.astype(np.float32)
        scores[ids < 0] = -np.inf
        return ids, scores

    def search_many(
        self,
        queries: NDArray[np.floating],
        k: int,
        exclude: Sequence[NDArray[np.int64]],
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """`search` of each query row (q × d) with its own excluded items
        (`exclude[r]`), as (ids, scores), each q × k: the same ids and scores
        as one `search` per row.

        Exact index: the block's rows go to FAISS together (below FAISS's
        BLAS threshold, so each row's inner products are computed as for a
        query alone), each row searched k + its exclusions deep and those
        dropped; rows are grouped by depth (a power of two), so one long
        history does not deepen the others' searches. That answer is the
        one-row search's wherever the row's first k + 1 kept scores are
        distinct; a row with a tie among them (which tied item FAISS keeps
        depends on how deep it searches) gets its own `search`, as do a
        block of one row and rows with more than k exclusions (a deep search
        costs more than the index skipping them), and every row of an HNSW
        index (the graph's walk depends on what it skips)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(exclude) != len(q):
            raise ValueError(f"{len(exclude)} exclusion sets for {len(q)} queries")
        if len(q) == 1:
            return self.search(q, k, exclude=exclude[0])
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        n = self.n_items
        k = max(1, min(k, n)) if n else 0
        ids = np.full((len(q), k), -1, np.int64)
        scores = np.full((len(q), k), -np.inf, np.float32)
        if k == 0 or len(q) == 0:
            return ids, scores
        alone = [r for r, e in enumerate(exclude) if not self.exact or len(e) > k]
        shared = np.setdiff1d(np.arange(len(q)), alone)
        if len(shared):
            if faiss.omp_get_max_threads() != self.config.search_threads:
                faiss.omp_set_num_threads(self.config.search_threads)
            need = np.array([k + 1 + len(exclude[r]) for r in shared], dtype=np.int64)
            depth = np.minimum(1 << np.ceil(np.log2(need)).astype(np.int64), n)
            step = max(1, int(faiss.cvar.distance_compute_blas_threshold) - 1)
            for d in np.unique(depth):
                rows = shared[depth == d]
                for lo in range(0, len(rows), step):
                    alone.extend(
                        self._search_block(q, rows[lo : lo + step], int(d), k, exclude, ids, scores)
                    )
        for r in alone:
            one_ids, one_scores = self.search(q[r], k, exclude=exclude[r])
            ids[r], scores[r] = one_ids[0], one_scores[0]
        return ids, scores

    def _search_block(
        self,
        q: NDArray[np.float32],
        rows: NDArray[np.int64],
        depth: int,
        k: int,
        exclude: Sequence[NDArray[np.int64]],
        ids: NDArray[np.int64],
        scores: NDArray[np.float32],
    ) -> list[int]:
        """Fill `ids`/`scores` of `rows` from one search `depth` deep (see
        `search_many`); returns the rows left to a search of their own."""
        n = self.n_items
        found_scores, found = self.index.search(q[rows], depth)
        # each row's excluded items as sorted (row, item) keys: one search for the rows
        skip = np.concatenate(
            [np.empty(0, np.int64), *(j * n + np.asarray(exclude[r]) for j, r in enumerate(rows))]
        ).astype(np.int64, copy=False)
        if len(skip) > 1 and not (skip[1:] > skip[:-1]).all():
            skip = np.unique(skip)
        keep = found >= 0
        if len(skip):
            keys = np.arange(len(rows))[:, None] * n + found
            at = np.minimum(np.searchsorted(skip, keys), len(skip) - 1)
            keep &= skip[at] != keys
        rank = np.cumsum(keep, axis=1) - 1
        keep &= rank <= k  # the k kept and the next one, to see a tie at the boundary
        which, _ = np.nonzero(keep)
        kept = np.full((len(rows), k + 1), -np.inf, np.float32)
        kept[which, rank[keep]] = found_scores[keep]
        tied = ((kept[:, 1:] == kept[:, :-1]) & np.isfinite(kept[:, 1:])).any(axis=1)
        keep &= rank < k
        which, _ = np.nonzero(keep)
        ids[rows[which], rank[keep]] = found[keep]
        scores[rows[which], rank[keep]] = found_scores[keep]
        return [int(r) for r in rows[tied]]

    # ---------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """`faiss.write_index` plus a small JSON sidecar (dimension, kind, config)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(path / "index.faiss"))
        meta = {"dim": self.dim, "exact": self.exact, "config": self.config.to_dict()}
        (path / "index.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AnnIndex:
        path = Path(path)
        meta = json.loads((path / "index.json").read_text())
        index = faiss.read_index(str(path / "index.faiss"))
        config = AnnConfig.from_dict(meta["config"])
        return cls(index, int(meta["dim"]), bool(meta["exact"]), config)
