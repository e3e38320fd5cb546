"""Running the server: one process, or several on one host (`sieve serve --workers N`).

With `workers` above 1, uvicorn's supervisor starts N processes that share
the listening socket (the kernel spreads connections among them) and
restarts one that dies. They are spawned, not forked: each imports sieve
afresh and builds its own app and `Service` — store pool, cache client,
model, background threads — in its lifespan, so no connection, lock or
thread is shared by accident. The settings reach them as JSON in the
environment (`SIEVE_SERVE_SETTINGS`), exactly as the command resolved them
(flags over `SIEVE_*` over the TOML file).

Processes are stateless replicas (`sieve.serve.follow`): everything one
request leaves for the next lives in the store and the cache, so the cache
must be shared: `memory://` (per process) is refused above one worker, as is
an in-memory SQLite store. Replicas on several hosts need nothing more than
the same settings: one PostgreSQL, one Redis and one model directory.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from sieve.settings import Settings

#: The environment variables that carry the settings and the access-log
#: choice to the worker processes.
SETTINGS_ENV = "SIEVE_SERVE_SETTINGS"
ACCESS_LOG_ENV = "SIEVE_SERVE_ACCESS_LOG"


def check_workers(settings: Settings) -> None:
    """`ValueError` saying why these settings cannot run `workers` processes."""
    if settings.workers <= 1:
        return
    if settings.cache_url.split("://", 1)[0].lower() == "memory":
        raise ValueError(
            f"--workers {settings.workers} needs a cache every process shares: with "
            "memory:// each process would keep its own online counters, bandit state and "
            "precomputed lists; use Redis, e.g. --cache redis://127.0.0.1:6379/0"
        )
    url = settings.store_url.lower()
    if url.startswith("sqlite") and url.split("://", 1)[1] in ("", "/", "/:memory:"):
        raise ValueError(
            f"--workers {settings.workers} needs a store every process shares: an in-memory "
            "SQLite database is per process; use a file (sqlite:///PATH) or PostgreSQL"
        )


def check_backends(settings: Settings) -> None:
    """`ValueError` in one line when the store or the cache cannot be opened,
    before any server process starts (its lifespan would fail with a
    traceback per process). The store is opened as a server opens it
    (migrations included); the cache is asked for one key."""
    from sieve.storage import CacheError, StoreError, open_cache, open_store

    try:
        with open_store(settings.store_url):
            pass
    except (StoreError, ValueError, OSError) as e:
        raise ValueError(
            f"cannot open the store at {settings.store_url}: {_first_line(e)} — check --store "
            "or SIEVE_STORE_URL (sqlite:///PATH or postgresql://USER@HOST/DB) and that the "
            "database is running"
        ) from None
    try:
        cache = open_cache(settings.cache_url)
        try:
            cache.get("sieve:ping")
        finally:
            cache.close()
    except (CacheError, ValueError, OSError) as e:
        raise ValueError(
            f"cannot open the cache at {settings.cache_url}: {_first_line(e)} — check --cache "
            "or SIEVE_CACHE_URL (memory:// or redis://HOST:6379/0) and that Redis is running"
        ) from None


def _first_line(error: BaseException) -> str:
    """An exception's message without the driver's continuation lines."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def configure_logging(access_log: bool) -> None:
    """The server's log format and levels (in each worker process too)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    logging.getLogger("sieve.serve.access").setLevel(
        logging.INFO if access_log else logging.WARNING
    )


def app_from_environment() -> FastAPI:
    """The app of one worker process (uvicorn's factory), from the settings
    the command passed in `SIEVE_SERVE_SETTINGS`."""
    from sieve.serve.app import create_app

    configure_logging(os.environ.get(ACCESS_LOG_ENV, "1") == "1")
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(settings)


def run(settings: Settings, *, access_log: bool = True) -> None:
    """Serve on `settings.host:port` with `settings.workers` processes."""
    import uvicorn

    check_workers(settings)
    configure_logging(access_log)
    if settings.workers == 1:
        from sieve.serve.app import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ[ACCESS_LOG_ENV] = "1" if access_log else "0"
    uvicorn.run(
        f"{__name__}:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
    )


__all__ = ["ACCESS_LOG_ENV", "SETTINGS_ENV", "app_from_environment", "check_workers", "run"]
