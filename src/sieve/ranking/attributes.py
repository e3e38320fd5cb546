"""Item and user attributes as ranking features, declared in the funnel config.

An operator names the attributes the ranker may learn from (`[attributes]`
of the funnel config, `AttributesConfig`); `AttributeFeatures` turns them
into feature columns appended to `sieve.ranking.features.FEATURE_NAMES`,
through the same `candidate_features` call offline (training queries) and
online (live requests), so the ranker sees one encoding on both sides:

- numeric (`item_numeric`, `user_numeric`): the value as a number (booleans
  0/1; missing or non-numeric: missing);
- categorical (`item_categorical`, `user_categorical`): a code in the
  vocabulary fitted at training (the `max_values` most frequent values;
  others share one "other" code), a LightGBM categorical feature;
- list-valued (`item_lists`, `user_lists`): the number of values and one
  0/1 column per vocabulary value (the `max_values` most frequent);
- matches (`matches`, "ITEM_KEY:USER_KEY"): how many of the item's values
  (a scalar or a list) are among the user's (a scalar or a list), e.g.
  "brand:favourite_brands" — missing when the user has no such attribute.
  The item key `categories` reads the item's catalog categories when its
  attributes have no such key;
- per-item request fields (`request_numeric`): numbers a caller sends with
  each candidate of `POST /rank` (a text-match score), missing elsewhere.

Item values come from the catalog (`Catalog.attributes`, updated with it),
encoded once per catalog and cached on it; user values from the query
(`Query.user_attributes`, built by `sieve.ranking.query.build_query` from
the stored user), request fields from `Query.item_fields`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.retrieval.catalog import Catalog

#: Item key that falls back to the item's catalog categories.
CATEGORIES = "categories"
_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


def _name(*parts: str) -> str:
    """A feature name LightGBM accepts (no JSON punctuation, no spaces)."""
    return _SAFE.sub("_", "_".join(parts))


@dataclasses.dataclass(frozen=True)
class AttributesConfig(Config):
    """Attributes the ranker learns from (all empty: none; see the module doc).

    - `item_numeric`, `item_categorical`, `item_lists`: item attribute keys
      read as a number, a category or a list of values;
    - `user_numeric`, `user_categorical`, `user_lists`: the same for users;
    - `matches`: "ITEM_KEY:USER_KEY" pairs, counted as the item's values
      found among the user's (e.g. "brand:favourite_brands");
    - `request_numeric`: per-item numbers a `POST /rank` caller sends with
      its candidates (e.g. "text_match");
    - `max_values`: vocabulary size of a categorical or list-valued key.
    """

    item_numeric: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()
    item_lists: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    user_categorical: tuple[str, ...] = ()
    user_lists: tuple[str, ...] = ()
    matches: tuple[str, ...] = ()
    request_numeric: tuple[str, ...] = ()
    max_values: int = 16

    def validate(self) -> None:
        if not 1 <= self.max_values <= 256:
            raise ConfigError("AttributesConfig.max_values must be in [1, 256]")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, tuple):
                continue
            if any(not k.strip() for k in value):
                raise ConfigError(f"AttributesConfig.{f.name}: empty attribute key")
            if len(set(value)) != len(value):
                raise ConfigError(f"AttributesConfig.{f.name}: a key is listed twice")
        for m in self.matches:
            parts = m.split(":")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise ConfigError(
                    f"AttributesConfig.matches: {m!r} is not 'ITEM_KEY:USER_KEY' "
                    "(e.g. 'brand:favourite_brands')"
                )

    @property
    def declared(self) -> bool:
        """True when any attribute feature is declared."""
        return any(
            getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "max_values"
        )

    @property
    def uses_users(self) -> bool:
        """True when a feature reads user attributes (serving reads the user)."""
        return bool(self.user_numeric or self.user_categorical or self.user_lists or self.matches)


# ------------------------------------------------------------------ values
def number(value: Any) -> float:
    """An attribute value as a number (NaN: missing or not a number)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        v = float(value)
        return v if math.isfinite(v) else math.nan
    if isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            return math.nan
        return v if math.isfinite(v) else math.nan
    return math.nan


def values(value: Any) -> frozenset[str] | None:
    """An attribute value as a set of strings (None: missing)."""
    if value is None:
        return None
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return frozenset(str(v) for v in value if v is not None)
    return frozenset((str(value),))


def _category(value: Any) -> str | None:
    if value is None or isinstance(value, list | dict | tuple):
        return None
    return str(value)


def _top(counts: Counter[str], k: int) -> list[str]:
    return [v for v, _ in sorted(counts.items(), key=lambda p: (-p[1], p[0]))[:k]]


# ---------------------------------------------------------------- features
class AttributeFeatures:
    """The declared attribute features with their fitted vocabularies."""

    def __init__(self, config: AttributesConfig, vocabularies: Mapping[str, Sequence[str]]) -> None:
        self.config = config
        self.vocabularies = {k: list(v) for k, v in vocabularies.items()}
        cfg = config
        item_cols: list[str] = []
        for k in cfg.item_numeric:
            item_cols.append(_name("attr_item", k))
        for k in cfg.item_categorical:
            item_cols.append(_name("attr_item", k))
        for k in cfg.item_lists:
            item_cols.append(_name("attr_item", k, "count"))
            item_cols += [_name("attr_item", k, "is", v) for v in self._vocab("item", k)]
        user_cols: list[str] = []
        for k in cfg.user_numeric:
            user_cols.append(_name("attr_user", k))
        for k in cfg.user_categorical:
            user_cols.append(_name("attr_user", k))
        for k in cfg.user_lists:
            user_cols.append(_name("attr_user", k, "count"))
            user_cols += [_name("attr_user", k, "is", v) for v in self._vocab("user", k)]
        self._pairs = [tuple(m.split(":")) for m in cfg.matches]
        match_cols = [_name("attr_match", i, "in", u) for i, u in self._pairs]
        request_cols = [_name("request", k) for k in cfg.request_numeric]
        self.n_item, self.n_user = len(item_cols), len(user_cols)
        self.names: tuple[str, ...] = (*item_cols, *user_cols, *match_cols, *request_cols)
        if len(set(self.names)) != len(self.names):
            raise ConfigError(
                "AttributesConfig: two declared features get the same column name "
                f"({sorted(n for n in self.names if self.names.count(n) > 1)})"
            )
        self.categorical: tuple[str, ...] = tuple(
            [_name("attr_item", k) for k in cfg.item_categorical]
            + [_name("attr_user", k) for k in cfg.user_categorical]
        )
        blob = json.dumps([cfg.to_dict(), self.vocabularies], sort_keys=True)
        self._memo_key = "attributes:" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _vocab(self, side: str, key: str) -> list[str]:
        return self.vocabularies.get(f"{side}:{key}", [])

    # ------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        config: AttributesConfig,
        item_attributes: Iterable[Mapping[str, Any]],
        user_attributes: Iterable[Mapping[str, Any]],
    ) -> AttributeFeatures:
        """Vocabularies of the categorical and list-valued keys: their
        `max_values` most frequent values in the training catalog and users."""
        vocab: dict[str, list[str]] = {}
        for side, rows, cats, lists in (
            ("item", list(item_attributes), config.item_categorical, config.item_lists),
            ("user", list(user_attributes), config.user_categorical, config.user_lists),
        ):
            for k in cats:
                counts = Counter(c for r in rows if (c := _category(r.get(k))) is not None)
                vocab[f"{side}:{k}"] = _top(counts, config.max_values)
            for k in lists:
                counts = Counter(v for r in rows for v in (values(r.get(k)) or ()))
                vocab[f"{side}:{k}"] = _top(counts, config.max_values)
        return cls(config, vocab)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "vocabularies": self.vocabularies}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributeFeatures:
        return cls(AttributesConfig.from_dict(dict(data["config"])), data["vocabularies"])

    # ------------------------------------------------------------ encoding
    def _encode(self, side: str, attrs: Mapping[str, Any]) -> list[float]:
        """The item or user columns of one attribute dict."""
        cfg = self.config
        numeric, cats, lists = (
            (cfg.item_numeric, cfg.item_categorical, cfg.item_lists)
            if side == "item"
            else (cfg.user_numeric, cfg.user_categorical, cfg.user_lists)
        )
        out = [number(attrs.get(k)) for k in numeric]
        for k in cats:
            vocab = self._vocab(side, k)
            c = _category(attrs.get(k))
            code = vocab.index(c) if c in vocab else len(vocab)
            out.append(math.nan if c is None else float(code))
        for k in lists:
            vocab = self._vocab(side, k)
            found = values(attrs.get(k))
            out.append(math.nan if found is None else float(len(found)))
            out += [math.nan if found is None else float(v in found) for v in vocab]
        return out

    def _item_tables(self, catalog: Catalog) -> tuple[NDArray[np.float32], list[list[Any]]]:
        """Every catalog item's columns and match values, cached on the catalog."""

        def build() -> tuple[NDArray[np.float32], list[list[Any]]]:
            n = catalog.n_items
            table = np.full((n, self.n_item), np.nan, np.float32)
            match_values: list[list[Any]] = [[None] * n for _ in self._pairs]
            for i in range(n):
                attrs = catalog.attributes[i]
                if self.n_item:
                    table[i] = self._encode("item", attrs)
                for m, (key, _) in enumerate(self._pairs):
                    raw = attrs.get(key)
                    if raw is None and key == CATEGORIES:
                        raw = catalog.categories_of(i)
                    match_values[m][i] = values(raw)
            return table, match_values

        found: tuple[NDArray[np.float32], list[list[Any]]] = catalog.memo(self._memo_key, build)
        return found

    def warm(self, catalog: Catalog) -> None:
        """Encode the catalog's items now (after a load or a catalog change),
        so that no request pays for it."""
        self._item_tables(catalog)

    def matrix(
        self,
        catalog: Catalog,
        items: NDArray[np.int64],
        user_attributes: Mapping[str, Any],
        item_fields: Mapping[int, Mapping[str, float]],
    ) -> NDArray[np.float32]:
        """The attribute columns (len(items) × len(names)) of a request's candidates."""
        n = len(items)
        x = np.full((n, len(self.names)), np.nan, np.float32)
        if n == 0:
            return x
        table, match_values = self._item_tables(catalog)
        col = 0
        if self.n_item:
            x[:, : self.n_item] = table[items]
            col = self.n_item
        if self.n_user:
            if user_attributes:
                x[:, col : col + self.n_user] = np.asarray(
                    self._encode("user", user_attributes), np.float32
                )
            col += self.n_user
        for m, (_, user_key) in enumerate(self._pairs):
            mine = values(user_attributes.get(user_key))
            if mine is not None:
                theirs = match_values[m]
                x[:, col] = [len(s & mine) if (s := theirs[i]) is not None else 0 for i in items]
            col += 1
        for k in self.config.request_numeric:
            if item_fields:
                x[:, col] = [number(item_fields.get(int(i), {}).get(k)) for i in items]
            col += 1
        return x


__all__ = ["CATEGORIES", "AttributeFeatures", "AttributesConfig", "number", "values"]
