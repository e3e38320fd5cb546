"""Attribute features: each declared kind encodes as documented, from the
catalog and the query alike, and a bad declaration fails naming it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sieve.config import ConfigError
from sieve.pipeline import FunnelConfig
from sieve.ranking.attributes import AttributeFeatures, AttributesConfig
from sieve.retrieval.catalog import Catalog

ITEMS = [
    {"price": 10.0, "brand": "acme", "tags": ["red", "big"]},
    {"price": "12.5", "brand": "zeta", "tags": ["red"]},
    {"brand": "rare"},
    {},
]


def _catalog() -> Catalog:
    cats = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32))
    n = len(ITEMS)
    return Catalog(
        item_ids=np.array([f"i{k}" for k in range(n)], dtype=object),
        titles=np.array([""] * n, dtype=object),
        category_names=["shoes", "hats"],
        item_categories=cats,
        created_at=np.zeros(n),
        available=np.ones(n, bool),
        popularity=np.ones(n),
        trending=np.zeros(n),
        attributes=ITEMS,
    )


def _features(**declared: object) -> AttributeFeatures:
    cfg = AttributesConfig.from_dict({"max_values": 2, **declared})
    users = [{"plan": "pro", "brands": ["acme"]}, {"plan": "pro"}, {"plan": "free"}]
    return AttributeFeatures.fit(cfg, ITEMS, users)


def _column(f: AttributeFeatures, x: np.ndarray, name: str) -> list[float]:
    return x[:, f.names.index(name)].tolist()


def test_each_kind_encodes_as_documented() -> None:
    f = _features(
        item_numeric=["price"],
        item_categorical=["brand"],
        item_lists=["tags"],
        user_numeric=["age"],
        user_categorical=["plan"],
        matches=["brand:brands", "categories:likes"],
        request_numeric=["text_match"],
    )
    assert f.categorical == ("attr_item_brand", "attr_user_plan")
    items = np.array([0, 1, 2, 3])
    x = f.matrix(
        _catalog(),
        items,
        {"age": 30, "plan": "free", "brands": ["acme", "zeta"], "likes": "hats"},
        {1: {"text_match": 0.7}},
    )
    assert x.shape == (4, len(f.names))
    price = _column(f, x, "attr_item_price")
    assert price[:2] == [10.0, 12.5] and all(math.isnan(v) for v in price[2:])
    # a vocabulary of two (max_values), by count then name; others share code 2
    assert f.vocabularies["item:brand"] == ["acme", "rare"]
    brand = _column(f, x, "attr_item_brand")
    assert brand[:3] == [0.0, 2.0, 1.0] and math.isnan(brand[3])
    assert _column(f, x, "attr_item_tags_count")[:2] == [2.0, 1.0]
    assert _column(f, x, "attr_item_tags_is_red")[:2] == [1.0, 1.0]
    assert math.isnan(_column(f, x, "attr_item_tags_is_red")[2])  # no tags at all: missing
    assert _column(f, x, "attr_user_age") == [30.0] * 4
    plan_vocab = f.vocabularies["user:plan"]
    assert _column(f, x, "attr_user_plan") == [float(plan_vocab.index("free"))] * 4
    assert _column(f, x, "attr_match_brand_in_brands") == [1.0, 1.0, 0.0, 0.0]
    # the item key "categories" reads the catalog's categories
    assert _column(f, x, "attr_match_categories_in_likes") == [0.0, 1.0, 1.0, 0.0]
    text = _column(f, x, "request_text_match")
    assert math.isnan(text[0]) and text[1] == pytest.approx(0.7) and math.isnan(text[2])


def test_a_user_without_the_attribute_leaves_user_and_match_columns_missing() -> None:
    f = _features(user_categorical=["plan"], matches=["brand:brands"])
    x = f.matrix(_catalog(), np.array([0, 1]), {}, {})
    assert np.isnan(x).all()


def test_catalog_changes_reach_the_features() -> None:
    f = _features(item_numeric=["price"])
    cat = _catalog()
    assert f.matrix(cat, np.array([3]), {}, {})[0, 0] != 99.0
    cat.update(np.array([3]), pd.DataFrame({"attributes": [{"price": 99.0}]}))
    assert f.matrix(cat, np.array([3]), {}, {})[0, 0] == 99.0
    added = cat.append(pd.DataFrame({"item_id": ["new"], "attributes": [{"price": 5}]}))
    assert f.matrix(cat, added, {}, {})[0, 0] == 5.0


def test_round_trip_keeps_vocabularies_and_names() -> None:
    f = _features(item_categorical=["brand"], user_lists=["brands"])
    g = AttributeFeatures.from_dict(f.to_dict())
    assert g.names == f.names and g.vocabularies == f.vocabularies


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"matches": ["brand"]}, "ITEM_KEY:USER_KEY"),
        ({"item_numeric": ["price", "price"]}, "listed twice"),
        ({"max_values": 0}, "max_values"),
        ({"item_numerik": ["price"]}, "unknown key"),
    ],
)
def test_a_bad_declaration_names_what_is_wrong(declared: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FunnelConfig.from_dict({"attributes": declared})


def test_linucb_features_must_be_ranking_features() -> None:
    from sieve.data.synthetic import SyntheticConfig, generate
    from sieve.pipeline import Funnel

    raw, _ = generate(SyntheticConfig(n_users=20, n_items=15, seed=3))
    cfg = FunnelConfig.from_dict({"linucb": {"features": ["no_such_feature"]}})
    with pytest.raises(ConfigError, match="no_such_feature"):
        Funnel(cfg).fit(raw.to_dataset())
