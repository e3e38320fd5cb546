"""`sieve train`: snapshot the store, fit a funnel, register (and promote) it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sieve.registry import ModelRegistry
from sieve.settings import Settings
from sieve.storage import Store, open_store
from sieve.training.snapshot import snapshot

if TYPE_CHECKING:
    from sieve.pipeline import Funnel

log = logging.getLogger(__name__)


def new_funnel(settings: Settings) -> Funnel:
    """An unfitted funnel, configured by the TOML file `settings.funnel_config` if given."""
    from sieve.pipeline import Funnel, load_funnel_config

    if settings.funnel_config is None:
        return Funnel()
    return Funnel(load_funnel_config(settings.funnel_config))


def train(
    settings: Settings, store: Store | None = None, *, promote: bool = True
) -> tuple[Funnel, Path]:
    """Snapshot the store, fit a funnel and register it in the model registry
    (`model_dir`), promoting it unless `promote=False`. Returns the funnel and
    the folder of its saved model."""
    own = store is None
    store = store or open_store(settings.store_url)
    funnel = new_funnel(settings)
    try:
        dataset = snapshot(store, settings.event_weights)
        max_seq = store.max_seq()
        if funnel.config.ranker.train_on != "snapshot":  # the ranker learns from what was shown
            from sieve.ranking.logged import LoggedData

            funnel.logged = LoggedData.from_store(store)
    finally:
        if own:
            store.close()
    funnel = funnel.fit(dataset)
    registry = ModelRegistry(settings.model_dir)
    registry.register(
        funnel,
        version=str(funnel.version),
        data={
            "events": len(dataset.events),
            "max_seq": max_seq,
            "users": dataset.n_users,
            "items": dataset.n_items,
            "interactions": int(dataset.matrix.nnz),
            "store": redacted(settings.store_url),
        },
    )
    if promote:
        registry.promote(str(funnel.version), "trained by `sieve train`")
    saved = registry.model_path(str(funnel.version)).resolve()
    log.info("trained funnel %s on %s; saved to %s", funnel.version, dataset, saved)
    return funnel, saved


def redacted(url: str) -> str:
    """A store URL without its password, for manifests and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


__all__ = ["new_funnel", "redacted", "train"]
