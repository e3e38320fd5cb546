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
) -> tuple[Funnel, Path]:
    """Snapshot the store, fit a funnel and register it in the model registry
    (`model_dir`), promoting it unless `promote=False`. Returns the funnel and
    the folder of its saved model.

    `holdout` > 0: the newest share of the events (by time) is kept out of
    the fit and the registered version's NDCG@`k` on it is recorded in its
    manifest (`holdout ndcg@k`), as the retraining worker does; the service
    still reads those events as the users' live history. With no user on
    both sides of the cut the funnel is fitted on every event and no metric
    is recorded (the manifest says why)."""
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
    funnel = funnel.fit(fit_on)
    data: dict[str, Any] = {
        "events": len(fit_on.events),
        "max_seq": max_seq,
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": int(fit_on.matrix.nnz),
        "store": redacted(settings.store_url),
    }
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


def redacted(url: str) -> str:
    """A store URL without its password, for manifests and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


__all__ = ["new_funnel", "redacted", "train"]
