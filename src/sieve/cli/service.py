"""The service's commands: `sieve train`, `serve`, `batch`, `quickstart` and
`worker` (retraining beside a running server)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sieve.cli.common import (
    CacheOpt,
    ConfigOpt,
    DataOpt,
    ModelDirOpt,
    StoreOpt,
    UsageError,
    _clean_errors,
    _service_settings,
    app,
    console,
    out,
)

if TYPE_CHECKING:
    from sieve.settings import Settings


@app.command()
def train(
    store: StoreOpt = None,
    model_dir: ModelDirOpt = None,
    funnel_config: Annotated[
        Path | None, typer.Option("--funnel-config", help="TOML of the funnel's configuration.")
    ] = None,
    config: ConfigOpt = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Register as a candidate; do not serve it.")
    ] = False,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            min=0.0,
            max=0.5,
            help="Share of the newest events kept out of the fit to measure the version "
            "(its holdout NDCG@10 is recorded); 0 fits on every event and records none.",
        ),
    ] = 0.1,
    auto_budget: Annotated[
        float,
        typer.Option(
            "--auto-budget",
            min=0.0,
            help="Seconds for choosing the funnel's ALS parameters from the data (a shape "
            "rule, then a search on a validation split); 0 keeps the configured ones.",
        ),
    ] = 0.0,
) -> None:
    """Train a funnel on the store's data and register it.

    The version goes to the model registry (MODEL_DIR/VERSION/) with its
    NDCG@10 on the newest events (see --holdout) and is promoted unless
    --no-promote: a running service swaps to it within `model_poll_seconds`."""
    from sieve.training.train import train as train_funnel

    with _clean_errors():
        settings = _service_settings(
            config, store_url=store, model_dir=model_dir, funnel_config=funnel_config
        )
        console.print(f"training on [bold]{settings.store_url}[/bold]", soft_wrap=True)
        start = time.perf_counter()
        funnel, path = train_funnel(
            settings, promote=not no_promote, holdout=holdout, auto_budget=auto_budget
        )
        console.print(f"trained in {time.perf_counter() - start:.1f}s")
        _say_metrics(settings.model_dir, str(funnel.version))
        state = "candidate" if no_promote else "current"
        out.print(f"model {funnel.version} saved to {path} ({state})", soft_wrap=True)


def _say_metrics(model_dir: Path, version: str) -> None:
    """Print the metrics recorded for a newly registered version."""
    from sieve.registry import ModelRegistry

    manifest = ModelRegistry(model_dir).manifest(version)
    if manifest.metrics:
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in manifest.metrics.items())
        console.print(f"{shown} (newest events, not seen by this version)", soft_wrap=True)
    elif "holdout" in manifest.data:
        console.print(f"no holdout metric: {manifest.data['holdout']}", soft_wrap=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Default 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Default 8000.")] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    cache: CacheOpt = None,
    model_dir: ModelDirOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes on this host, sharing the port (default 1; above 1 "
            "needs a redis:// cache).",
        ),
    ] = None,
    precompute: Annotated[
        bool,
        typer.Option(
            "--precompute", help="Precompute every known user's list at start-up (see `batch`)."
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log one line per request.")
    ] = True,
) -> None:
    """Serve the REST API with the current model (its docs at /docs).

    One process, or `--workers N` stateless replicas sharing the store and
    the cache (any number of such processes, on any number of hosts, serve
    as one)."""
    from sieve.serve.workers import check_backends, check_workers, run

    with _clean_errors():
        settings = _service_settings(
            config,
            host=host,
            port=port,
            store_url=store,
            cache_url=cache,
            model_dir=model_dir,
            workers=workers,
            precompute=precompute or None,
        )
        check_workers(settings)
        check_backends(settings)
        if settings.workers > 1:
            console.print(
                f"serving with {settings.workers} processes on {settings.host}:{settings.port}",
                soft_wrap=True,
            )
    run(settings, access_log=access_log)


@app.command()
def batch(
    n: Annotated[int | None, typer.Option("--n", min=1, help="List length (default 50).")] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    cache: CacheOpt = None,
    model_dir: ModelDirOpt = None,
) -> None:
    """Precompute every known user's list into the cache.

    The top-N of every user the current model knows goes to the cache
    (`recs:USER`); the service answers from it until the user's next event or
    a new model. With the default memory:// cache the lists vanish when this
    command ends: use a redis:// cache, or `sieve serve --precompute`."""
    from sieve.serve.service import Service

    with _clean_errors():
        settings = _service_settings(
            config, store_url=store, cache_url=cache, model_dir=model_dir, batch_n=n
        )
        if settings.cache_url.startswith("memory"):
            console.print(
                "[yellow]note:[/yellow] the cache is memory:// (this process only): the "
                "lists are lost when batch exits; use --cache redis://… or "
                "`sieve serve --precompute`"
            )
        service = Service.open(settings)
        try:
            if service.model_version is None:
                raise UsageError(f"no model trained yet in {settings.model_dir}: run `sieve train`")
            start = time.perf_counter()
            count = service.precompute(settings.batch_n)
        finally:
            service.close()
        out.print(
            f"precomputed {count} lists of {settings.batch_n} for model {service.model_version} "
            f"in {time.perf_counter() - start:.1f}s into {settings.cache_url}",
            soft_wrap=True,
        )


@app.command()
def quickstart(
    data: DataOpt = "synthetic",
    folder: Annotated[
        Path, typer.Option("--dir", help="Where the store and the models go.")
    ] = Path("sieve-quickstart"),
    port: Annotated[int, typer.Option("--port")] = 8000,
    movielens: Annotated[
        Path | None,
        typer.Option("--movielens", help="A MovieLens 100K folder (u.data, u.item, u.user)."),
    ] = None,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Load and train, then exit.")
    ] = False,
) -> None:
    """Run a demo in one command: load data, train, serve on 127.0.0.1.

    The data set goes into a local SQLite store, a funnel is trained on it
    and served with reads and (loopback) writes open, no key needed; an
    admin key for experiments is printed. Not for production: see `sieve
    serve`."""
    from sieve.data.io import load_data
    from sieve.serve.auth import hash_key, new_key
    from sieve.storage import open_store
    from sieve.training.snapshot import import_data
    from sieve.training.train import train as train_funnel

    if movielens is not None:
        data = f"movielens-100k:{movielens}"
    with _clean_errors():
        admin_key = new_key()
        settings = quickstart_settings(folder, port, hash_key(admin_key))
        console.print(f"loading [bold]{data}[/bold] into {settings.store_url}", soft_wrap=True)
        with open_store(settings.store_url) as store:
            raw = load_data(data)
            for problem in raw.problems[:20]:
                console.print(f"[yellow]skipped[/yellow] {problem}", soft_wrap=True)
            if len(raw.problems) > 20:
                console.print(f"[yellow]… and {len(raw.problems) - 20} more rows skipped[/yellow]")
            n_items, n_users, n_events = import_data(store, raw)
            console.print(f"{n_items} items, {n_users} users, {n_events} new events")
            funnel, path = train_funnel(settings, store, holdout=0.1)
        out.print(f"model {funnel.version} saved to {path}", soft_wrap=True)
        _say_metrics(settings.model_dir, str(funnel.version))
        key_file = folder / "admin-key"
        key_file.write_text(admin_key + "\n")
        key_file.chmod(0o600)
        for line in quickstart_hints(port, folder, str(funnel.user_ids[0]), key_file):
            out.print(line, soft_wrap=True, highlight=False)
    if not no_serve:
        import logging

        import uvicorn

        from sieve.serve.app import create_app

        logging.basicConfig(level=logging.INFO)
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, access_log=False)


def quickstart_settings(folder: Path, port: int, admin_key_hash: str) -> Settings:
    """The quickstart's service: SQLite and models in `folder`, reads and
    loopback writes open, one admin key (for experiments and reloads)."""
    from sieve.settings import ApiKey, Settings

    return Settings(
        store_url=f"sqlite:///{folder / 'sieve.db'}",
        cache_url="memory://",
        model_dir=folder / "models",
        open_read=True,
        open_write=True,
        host="127.0.0.1",
        port=port,
        precompute=True,
        api_keys=(ApiKey(name="quickstart-admin", key_hash=admin_key_hash, scopes=("admin",)),),
    )


def quickstart_hints(port: int, folder: Path, user: str, key_file: Path) -> list[str]:
    """What the quickstart prints once its model is trained: commands that
    work as printed, from the folder it was run in (a test runs them)."""
    base = f"http://127.0.0.1:{port}"
    return [
        f"serving on {base} (reads and loopback writes need no key; Ctrl-C stops it). Try:",
        f"  curl {base}/popular",
        f"  curl {base}/recommendations/{user}",
        f"  open {base}/docs (the API) and {base}/dashboard#user={user} (the dashboard)",
        f"admin key (experiments, reloads), also in {key_file}:",
        f'  curl -H "Authorization: Bearer $(cat {key_file})" {base}/experiments',
        "for the `sieve experiment`, `sieve models` and `sieve simulate` commands, set:",
        f"  export SIEVE_STORE_URL=sqlite:///{folder / 'sieve.db'} "
        f"SIEVE_MODEL_DIR={folder / 'models'} SIEVE_URL={base}",
    ]


@app.command()
def worker(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model_dir: ModelDirOpt = None,
    funnel_config: Annotated[
        Path | None, typer.Option("--funnel-config", help="TOML of the candidate's configuration.")
    ] = None,
    every: Annotated[
        float | None, typer.Option("--every", help="Retrain at least every this many seconds.")
    ] = 24 * 3600.0,
    after_events: Annotated[
        int | None, typer.Option("--after-events", help="Retrain after this many new events.")
    ] = 50_000,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Promote if ≥ serving × (1 − tolerance).")
    ] = 0.0,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between checks.")] = 30.0,
    lease_seconds: Annotated[
        float,
        typer.Option(
            "--lease-seconds",
            min=1.0,
            help="The retraining lease lasts this long unrenewed (a standby worker takes "
            "over after it); longer than --poll.",
        ),
    ] = 120.0,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle now and exit.")] = False,
) -> None:
    """Retrain beside the servers; promote only a model not worse.

    Retrains on a schedule, after N new events or when
    MODEL_DIR/RETRAIN appears (a drift check writes it); promote the candidate
    only if it is not worse than the serving model on the most recent events,
    else keep the old one and record why (`sieve models list` shows it).
    Replicas swap to a promoted version within their `model_poll_seconds`.

    One worker is active at a time: it holds a lease in the store; others
    wait (saying so) and take over when it stops renewing it."""
    from sieve.training.lease import LeaseHeld
    from sieve.training.worker import Retrainer, RetrainPolicy

    with _clean_errors():
        settings = _service_settings(
            config, store_url=store, model_dir=model_dir, funnel_config=funnel_config
        )
        policy = RetrainPolicy(every_seconds=every, after_events=after_events, tolerance=tolerance)
        retrainer = Retrainer(
            settings,
            policy,
            lease_seconds=lease_seconds,
            say=lambda text: console.print(text, soft_wrap=True),
        )
        try:
            if once:
                try:
                    d = retrainer.run_once("manual (`sieve worker --once`)")
                except LeaseHeld as e:
                    console.print(f"[yellow]{e}[/yellow]", soft_wrap=True)
                    raise typer.Exit(code=1) from None
                verdict = "promoted" if d.promoted else "rejected"
                out.print(f"{d.candidate} {verdict}: {d.why}", soft_wrap=True)
                return
            console.print(f"watching {settings.store_url} every {poll:.0f}s", soft_wrap=True)
            retrainer.run_forever(poll_seconds=poll)
        finally:
            retrainer.close()
