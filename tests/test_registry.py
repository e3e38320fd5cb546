"""Model registry: register, promote, reject, rollback, load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sieve.data.dataset import Dataset
from sieve.data.io import load_data
from sieve.models.ease import EASE
from sieve.registry import ModelRegistry, RegistryError


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return load_data("synthetic:users=80,items=40,seed=2").to_dataset()


def test_register_promote_load(tmp_path: Path, ds: Dataset) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.current() is None
    with pytest.raises(RegistryError, match="no model is serving"):
        reg.load()
    model = EASE(l2=50.0).fit(ds)
    m = reg.register(model, version="v1", data={"events": len(ds.events)}, metrics={"ndcg@10": 0.3})
    assert m.status == "candidate" and reg.current() is None
    reg.promote("v1", "first")
    assert reg.current() == "v1"
    loaded = reg.load()
    assert isinstance(loaded, EASE) and loaded.config.l2 == 50.0
    top = model.recommend_batch(np.arange(5), ds.matrix[:5], 5).items
    assert (loaded.recommend_batch(np.arange(5), ds.matrix[:5], 5).items == top).all()
    listed = reg.list()
    assert [x.version for x in listed] == ["v1"]
    assert listed[0].data["events"] == len(ds.events) and listed[0].metrics["ndcg@10"] == 0.3
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(model, version="v1")


def test_rollback_walks_back_through_served_versions(tmp_path: Path, ds: Dataset) -> None:
    reg = ModelRegistry(tmp_path)
    for v in ("a", "b", "c"):
        reg.register(EASE(l2=10.0).fit(ds), version=v)
        reg.promote(v)
    assert reg.rollback().version == "b"
    assert reg.manifest("c").status == "retired"
    assert reg.rollback().version == "a"
    with pytest.raises(RegistryError, match="no earlier served version"):
        reg.rollback()
    assert reg.current() == "a"


def test_reject_records_reason_and_unknown_version_is_named(tmp_path: Path, ds: Dataset) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register(EASE().fit(ds), version="cand")
    reg.reject("cand", "ndcg@10 0.21 < serving 0.25")
    m = reg.manifest("cand")
    assert m.status == "rejected" and "0.21" in m.notes[0]
    assert reg.current() is None
    with pytest.raises(RegistryError, match="unknown model version 'zzz'; registered: cand"):
        reg.promote("zzz")
