"""Model names as used on the command line and in config files."""

from __future__ import annotations

import importlib
from typing import Any

from sieve.models.base import Recommender

#: name -> "module:Class"; imported lazily so `sieve --help` stays fast.
MODELS: dict[str, str] = {
    "popular": "sieve.models.popularity:Popularity",
    "bayes-rating": "sieve.models.popularity:BayesianRating",
    "trending": "sieve.models.popularity:Trending",
    "itemknn": "sieve.models.itemknn:ItemKNN",
    "ease": "sieve.models.ease:EASE",
    "als": "sieve.models.factorization:ALS",
    "bpr": "sieve.models.factorization:BPR",
    "content": "sieve.models.content:ContentTFIDF",
    "biasedmf": "sieve.models.biasedmf:BiasedMF",
    "funnel": "sieve.pipeline:Funnel",
}


def model_class(name: str) -> type[Recommender[Any, Any]]:
    """The class registered under `name`; the error lists the known names."""
    try:
        target = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    module, cls = target.split(":")
    klass: type[Recommender[Any, Any]] = getattr(importlib.import_module(module), cls)
    return klass


def create_model(name: str, params: dict[str, Any] | None = None) -> Recommender[Any, Any]:
    """A fresh model with its defaults, overridden by `params`."""
    klass = model_class(name)
    config = klass.config_class.from_dict(params or {})
    return klass(config)
