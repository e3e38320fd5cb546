"""`sieve train`: snapshot the store, fit a funnel, register (and promote) it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sieve.registry import ModelRegistry
from sieve.settings import Settings
from sieve.storage import Store, open_store
from sieve.training.holdout import holdout_ndcg, newest_held, scorable_users
from sieve.training.snapshot import snapshot

if TYPE_CHECKING:
    from sieve.data.dataset import Dataset
    from sieve.pipeline import Funnel

log = logging.getLogger(__name__)

#: List length of the holdout NDCG that `sieve train` records.
HOLDOUT_K = 10


def new_funnel(settings: Settings) -> Funnel:
    """An unfitted funnel, configured by the TOML file `settings.funnel_config` if given."""
    from sieve.pipeline import Funnel, load_funnel_config

    if settings.funnel_config is None:
        return Funnel()
    return Funnel(load_funnel_config(settings.funnel_config))


def train(
    settings: Settings,
    store: Store | None = None,
    *,
    promote: bool = True,
    holdout: float = 0.0,
    k: int = HOLDOUT_K,
    auto_budget: float = 0.0,
) -> tuple[Funnel, Path]:
    """Snapshot the store, fit a funnel and register it in the model registry
    (`model_dir`), promoting it unless `promote=False`. Returns the funnel and
    the folder of its saved model.

    `holdout` > 0: the newest share of the events (by time) is kept out of
    the fit and the registered version's NDCG@`k` on it is recorded in its
    manifest (`holdout ndcg@k`), as the retraining worker does; the service
    still reads those events as the users' live history. With no user on
    both sides of the cut the funnel is fitted on every event and no metric
    is recorded (the manifest says why).

    `auto_budget` > 0: the funnel's ALS (its ANN source and the ranker's ALS
    features) takes the parameters `als:auto` chooses on the fitted part
    (`sieve.evaluate.auto`: the data-shape rule, then a search of at most
    that many seconds on a validation split carved from it), recorded in
    the manifest."""
    own = store is None
    store = store or open_store(settings.store_url)
    funnel = new_funnel(settings)
    try:
        dataset = snapshot(store, settings.event_weights)
        max_seq = store.max_seq()
        held = newest_held(dataset, holdout) if holdout > 0 else None
        fit_on, test = dataset, None
        if held is not None and held.any():
            train_part, test_part = dataset.subset(~held), dataset.subset(held)
            if len(scorable_users(train_part, test_part)):
                fit_on, test = train_part, test_part
        if funnel.config.ranker.train_on != "snapshot":  # the ranker learns from what was shown
            from sieve.ranking.logged import LoggedData

            times = fit_on.events["timestamp"].to_numpy(np.float64)
            until = float(np.nanmax(times)) if test is not None and len(times) else None
            funnel.logged = LoggedData.from_store(store, until=until)
    finally:
        if own:
            store.close()
    chosen = None
    if auto_budget > 0:
        funnel, chosen = _auto_als(funnel, fit_on, auto_budget)
    funnel = funnel.fit(fit_on)
    data: dict[str, Any] = {
        "events": len(fit_on.events),
        "max_seq": max_seq,
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": int(fit_on.matrix.nnz),
        "store": redacted(settings.store_url),
    }
    if chosen is not None:
        data["auto"] = chosen
    metrics: dict[str, float] = {}
    if test is not None:
        metrics[f"holdout ndcg@{k}"] = holdout_ndcg(funnel, fit_on, test, k=k)
        data["holdout_events"] = len(test.events)
    elif holdout > 0:
        data["holdout"] = "none: no user has events both before and in the newest events"
    registry = ModelRegistry(settings.model_dir)
    registry.register(funnel, version=str(funnel.version), data=data, metrics=metrics)
    if promote:
        registry.promote(str(funnel.version), "trained by `sieve train`")
    saved = registry.model_path(str(funnel.version)).resolve()
    log.info("trained funnel %s on %s; saved to %s", funnel.version, fit_on, saved)
    return funnel, saved


def _auto_als(funnel: Funnel, data: Dataset, budget_s: float) -> tuple[Funnel, str]:
    """The funnel with `als:auto`'s parameters for `data` in its ALS config
    (its logged data kept), and what was chosen, in words."""
    import dataclasses

    from sieve.evaluate.auto import auto_params
    from sieve.pipeline import Funnel

    choice = auto_params("als", data, budget_s=budget_s)
    known = {f.name for f in dataclasses.fields(funnel.config.als)}
    params = {k: v for k, v in choice.params.items() if k in known}
    config = dataclasses.replace(
        funnel.config, als=dataclasses.replace(funnel.config.als, **params)
    )
    tuned = Funnel(config)
    tuned.logged = funnel.logged
    return tuned, choice.describe("als")


def redacted(url: str) -> str:
    """A store URL without its password, for manifests and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


__all__ = ["new_funnel", "redacted", "train"]
