"""Saving and loading a fitted funnel: a directory of plain files (TOML,
JSON, npz, each sub-model's own format, the FAISS index, LightGBM text), no
pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from sieve.models.base import Recommender
from sieve.models.content import ContentTFIDF
from sieve.models.ease import EASE
from sieve.models.factorization import ALS
from sieve.models.itemknn import ItemKNN
from sieve.models.neural.common import torch_module
from sieve.models.neural.sasrec import SASRec
from sieve.models.neural.two_tower import TwoTower
from sieve.models.sparse_ease import SparseEASE
from sieve.pipeline.config import FunnelConfig
from sieve.pipeline.training import FunnelState
from sieve.ranking.attributes import AttributeFeatures
from sieve.ranking.ltr import LTRRanker
from sieve.realtime.counters import OnlineCounters
from sieve.retrieval.ann import AnnIndex
from sieve.retrieval.catalog import Catalog
from sieve.retrieval.content import ContentIndex
from sieve.retrieval.sources import CandidateEngine
from sieve.storage.cache import MemoryCache

#: 2: the continuation and user-to-user sources and attribute features (new ranker inputs);
#: 3: the SASRec session source (its rank and score are ranker inputs)
_FORMAT = 3


def save_funnel(
    path: str | Path,
    model_name: str,
    config: FunnelConfig,
    state: FunnelState,
    online: OnlineCounters | None,
) -> Path:
    """Write a fitted funnel (`Funnel.save`) as a directory."""
    engine = state.engine
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(config.to_toml())
    engine.catalog.save(path / "catalog.npz")
    arrays: dict[str, Any] = {
        "user_ids": np.array([str(u) for u in state.user_ids], dtype=str),
        "train_count": engine.user_train_count,
        "train_sum": engine.user_train_sum,
        **_recent_arrays(engine),
    }
    np.savez(path / "users.npz", **arrays)
    parts: dict[str, bool] = {}
    for name in ("als", "itemknn", "ease", "tower", "sasrec"):
        model = getattr(engine, name)
        parts[name] = model is not None
        if model is not None:
            model.save(path / name)
    parts["content"] = engine.content is not None
    if engine.content is not None:
        engine.content.model.save(path / "content")
        engine.content.save(path / "content_delta.npz")
    parts["ann"] = engine.ann is not None
    if engine.ann is not None:
        engine.ann.save(path / "ann")
    parts["attributes"] = state.attributes is not None
    if state.attributes is not None:
        (path / "attributes.json").write_text(json.dumps(state.attributes.to_dict(), indent=1))
    parts["ranker"] = state.ranker is not None
    if state.ranker is not None:
        state.ranker.save(path / "ranker.txt")
    parts["counters"] = online is not None
    if online is not None:
        _save_counters(
            path / "counters.npz",
            online.export(engine.catalog.item_ids.tolist(), state.user_ids.tolist()),
        )
    meta = {
        "model": model_name,
        "format": _FORMAT,
        "version": state.version,
        "fitted_at": state.fitted_at,
        "snapshot_time": engine.snapshot_time,
        "n_train_items": engine.n_train_items,
        "event_weights": engine.event_weights,
        "parts": parts,
    }
    (path / "model.json").write_text(json.dumps(meta, indent=1))
    return path


def _recent_arrays(engine: CandidateEngine) -> dict[str, np.ndarray]:
    """The user-to-user source's latest items per user, as CSR parts (none: {})."""
    m = engine.user_recent
    if m is None:
        return {}
    return {"recent_indptr": m.indptr.astype(np.int64), "recent_items": m.indices.astype(np.int64)}


def _ease(path: Path) -> EASE | SparseEASE:
    """The EASE source's model: dense EASE, or sparse EASE past `ease_max_items`."""
    model = Recommender.load(path)
    if not isinstance(model, EASE | SparseEASE):
        raise TypeError(f"{path} holds a {model.name} model, not the EASE source's")
    return model


def _recent_matrix(users: Any, n_items: int) -> sparse.csr_matrix | None:
    if "recent_indptr" not in users:
        return None
    indptr, items = users["recent_indptr"], users["recent_items"]
    data = np.ones(len(items), np.float32)
    return sparse.csr_matrix((data, items, indptr), shape=(len(indptr) - 1, n_items))


def load_funnel(
    path: str | Path, model_name: str
) -> tuple[FunnelConfig, FunnelState, OnlineCounters | None]:
    """The config, fitted state and online counters of a funnel written by
    `save_funnel` (`Funnel.load`)."""
    path = Path(path)
    meta_file = path / "model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} holds no saved model (no model.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("model") != model_name:
        raise TypeError(f"{path} holds a {meta.get('model')} model, not a funnel")
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{path}: this funnel was saved in format {meta.get('format')}, and this version of "
            f"sieve reads format {_FORMAT} (its ranker has other inputs): retrain it with "
            "`sieve train`"
        )
    config = FunnelConfig.from_toml((path / "config.toml").read_text())
    parts = meta["parts"]
    als = ALS.load(path / "als") if parts["als"] else None
    itemknn = ItemKNN.load(path / "itemknn") if parts["itemknn"] else None
    ease = _ease(path / "ease") if parts["ease"] else None
    tower = TwoTower.load(path / "tower") if parts.get("tower") else None
    sasrec = None
    if parts.get("sasrec"):
        torch_module()  # the session source runs the network on every request
        sasrec = SASRec.load(path / "sasrec")
    content = None
    if parts["content"]:
        model = ContentTFIDF.load(path / "content")
        assert isinstance(model, ContentTFIDF)
        content = ContentIndex.load(model, path / "content_delta.npz")
    users = np.load(path / "users.npz", allow_pickle=False)
    engine = CandidateEngine(
        config.sources,
        Catalog.load(path / "catalog.npz"),
        {str(k): float(v) for k, v in meta["event_weights"].items()},
        als=als,  # type: ignore[arg-type]
        ann=AnnIndex.load(path / "ann") if parts["ann"] else None,
        itemknn=itemknn,  # type: ignore[arg-type]
        ease=ease,
        tower=tower,  # type: ignore[arg-type]
        sasrec=sasrec,  # type: ignore[arg-type]
        content=content,
        user_train_count=users["train_count"].astype(np.int64),
        user_train_sum=users["train_sum"].astype(np.int64),
        n_train_items=int(meta["n_train_items"]),
        snapshot_time=float(meta["snapshot_time"]),
        user_recent=_recent_matrix(users, int(meta["n_train_items"])),
    )
    engine.catalog.warm(config.rerank.long_tail.head_share)
    ranker = LTRRanker.load(path / "ranker.txt") if parts["ranker"] else None
    online: OnlineCounters | None = None
    if parts.get("counters", False):
        records = _load_counters(path / "counters.npz")
        online = OnlineCounters(MemoryCache())
        online.restore(records)
    attributes = (
        AttributeFeatures.from_dict(json.loads((path / "attributes.json").read_text()))
        if parts.get("attributes", False)
        else None
    )
    if attributes is not None:
        attributes.warm(engine.catalog)
    state = FunnelState(
        engine=engine,
        ranker=ranker,
        user_ids=users["user_ids"].astype(object),
        version=str(meta["version"]),
        fitted_at=float(meta["fitted_at"]),
        attributes=attributes,
    )
    return config, state, online


def _save_counters(path: Path, records: dict[str, bytes]) -> None:
    """Counter records (key → bytes) as an npz: keys, sizes, one byte buffer."""
    blobs = list(records.values())
    np.savez(
        path,
        keys=np.array(list(records), dtype=str),
        sizes=np.array([len(b) for b in blobs], dtype=np.int64),
        data=np.frombuffer(b"".join(blobs), dtype=np.uint8),
    )


def _load_counters(path: Path) -> dict[str, bytes]:
    with np.load(path, allow_pickle=False) as f:
        keys, sizes, data = f["keys"], f["sizes"], f["data"].tobytes()
    ends = np.cumsum(sizes)
    return {
        str(k): data[e - n : e] for k, n, e in zip(keys, sizes.tolist(), ends.tolist(), strict=True)
    }
