"""The data lake and Spark commands: `sieve export` (the event log and the
catalog as day-partitioned Parquet), `sieve spark train` (a funnel version
trained on Spark) and `sieve spark batch` (every user's list scored on Spark,
into Parquet and the cache)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sieve.cli.common import (
    CacheOpt,
    ConfigOpt,
    ModelDirOpt,
    StoreOpt,
    UsageError,
    _clean_errors,
    _service_settings,
    app,
    console,
    out,
)

spark_app = typer.Typer(
    help="Training and batch scoring on Apache Spark (the `spark` extra).",
    no_args_is_help=True,
)
app.add_typer(spark_app, name="spark")

MasterOpt = Annotated[
    str,
    typer.Option("--master", help="Spark master: local[N], local[*] or spark://HOST:PORT."),
]
LakeOpt = Annotated[
    Path, typer.Option("--data", help="The folder `sieve export --to` wrote (the data lake).")
]
ConfOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--conf", help="A Spark setting KEY=VALUE (repeatable), e.g. spark.driver.memory=2g."
    ),
]


@app.command()
def export(
    to: Annotated[Path, typer.Option("--to", help="The export folder (the data lake).")],
    since: Annotated[
        int | None,
        typer.Option("--since", help="Export events after this sequence number (default: resume)."),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Events read per page.", min=1)] = 200_000,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Export the event log and the catalog as Parquet, day by day.

    Writes to --to, from --since or from where the last export there
    stopped; the folder's _manifest.json records each export's sequence
    range."""
    from sieve.storage import open_store
    from sieve.training.export import export_log

    with _clean_errors():
        if since is not None and since < 0:
            raise UsageError(f"--since must be >= 0, not {since}")
        settings = _service_settings(config, store_url=store)
        with open_store(settings.store_url) as opened:
            record = export_log(opened, to, since, batch=batch)
        out.print(
            f"exported {record.events} events (seq {record.from_seq + 1}..{record.to_seq}, "
            f"{len(record.days)} days) and {record.items} items to {to}",
            soft_wrap=True,
        )


def _spark_conf(conf: list[str] | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in conf or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--conf takes KEY=VALUE, not {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


@spark_app.command("train")
def spark_train(
    data: LakeOpt,
    master: MasterOpt = "local[2]",
    conf: ConfOpt = None,
    model_dir: ModelDirOpt = None,
    funnel_config: Annotated[
        Path | None, typer.Option("--funnel-config", help="TOML of the funnel's configuration.")
    ] = None,
    no_ranker: Annotated[
        bool, typer.Option("--no-ranker", help="Skip the ranker (its rows need a second fit).")
    ] = False,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Register as a candidate; do not serve it.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Train a funnel version on Spark from an export.

    ALS, the charts, the item-to-item similarities and the ranker's rows are
    computed on Spark; the version is registered in MODEL_DIR as `sieve
    train` does, and promoted unless --no-promote."""
    from sieve.spark import require_pyspark

    with _clean_errors():
        require_pyspark()
        from sieve.spark.session import spark_session
        from sieve.spark.train import train_on_spark

        settings = _service_settings(config, model_dir=model_dir, funnel_config=funnel_config)
        start = time.perf_counter()
        with spark_session(master, _spark_conf(conf)) as spark:
            funnel, path = train_on_spark(
                spark, data, settings, ranker=not no_ranker, promote=not no_promote
            )
        console.print(f"trained on Spark ({master}) in {time.perf_counter() - start:.1f}s")
        state = "candidate" if no_promote else "current"
        out.print(f"model {funnel.version} saved to {path} ({state})", soft_wrap=True)


@spark_app.command("batch")
def spark_batch(
    data: LakeOpt,
    to: Annotated[Path, typer.Option("--to", help="Folder of the Parquet lists.")],
    master: MasterOpt = "local[2]",
    conf: ConfOpt = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Model version (default: the current one).")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Items per user (default: batch_n).")] = None,
    cache: CacheOpt = None,
    model_dir: ModelDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Precompute every user's top-N on Spark.

    The lists come from the version's factors (seen, unavailable and blocked
    items left out) and are written to Parquet and, from the executors, to
    the cache (a redis:// URL) as the precomputed lists the service serves."""
    from sieve.spark import require_pyspark

    with _clean_errors():
        require_pyspark()
        from sieve.spark.batch import batch_on_spark
        from sieve.spark.session import spark_session

        settings = _service_settings(config, model_dir=model_dir, cache_url=cache)
        if n is not None and n < 1:
            raise UsageError(f"--n must be >= 1, not {n}")
        start = time.perf_counter()
        with spark_session(master, _spark_conf(conf)) as spark:
            result = batch_on_spark(
                spark, data, settings, to, version=version, n=n or settings.batch_n
            )
        seconds = time.perf_counter() - start
        console.print(f"scored on Spark ({master}) in {seconds:.1f}s")
        out.print(
            f"{result.users} users' lists of model {result.version} written to {to}"
            + (f" and {result.cached} to the cache" if result.cached else ""),
            soft_wrap=True,
        )


__all__ = ["export", "spark_batch", "spark_train"]
