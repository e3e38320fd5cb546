"""Getting data in: the file import behind `sieve import items|users|events
FILE` (the command itself is `store.import_`, which still loads data specs),
and `sieve consume`, the Redis Stream consumer."""

from __future__ import annotations

import csv
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from sieve.cli.common import (
    ConfigOpt,
    StoreOpt,
    UsageError,
    _clean_errors,
    _progress,
    _service_settings,
    app,
    console,
    out,
)

#: Rejected rows printed; all of them go to the rejects file.
SHOWN_PROBLEMS = 20

MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        help="FIELD=COLUMN, repeatable: which column holds a field (events: user, item, "
        "type, value, timestamp, event_id; items: id, title, text, categories, "
        "created_at, available, attributes; users: id, attributes).",
    ),
]


def parse_pairs(pairs: list[str] | None) -> dict[str, str]:
    """`FIELD=COLUMN` options as a dict; a malformed one is a `UsageError`."""
    out_: dict[str, str] = {}
    for pair in pairs or []:
        name, eq, column = pair.partition("=")
        if not eq or not name.strip() or not column.strip():
            raise UsageError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. --map user=customer_id")
        out_[name.strip()] = column.strip()
    return out_


def import_file_command(
    kind: str,
    file: Path,
    *,
    settings: Any,
    pairs: dict[str, str],
    options: dict[str, Any],
    fmt: str | None,
    batch: int,
    allow_unknown_items: bool,
    restart: bool,
    rejects: Path | None,
) -> None:
    """`sieve import KIND FILE`: the import with a progress bar, the refused
    rows (the first few printed, every one in the rejects file) and a summary."""
    from sieve.ingest.files import KINDS, import_file, mapping_for
    from sieve.storage import open_store

    if kind not in KINDS:
        raise UsageError(f"unknown import kind {kind!r}; expected one of {', '.join(KINDS)}")
    mapping = mapping_for(kind, pairs, **options)
    console.print(f"importing {kind} from [bold]{file}[/bold] into {settings.store_url}")
    with (
        _store_errors(),
        open_store(settings.store_url) as opened,
        _change_stamps(settings) as stamp,
        _progress() as bar,
    ):
        task = bar.add_task(f"{kind}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = import_file(
            opened,
            kind,
            file,
            mapping,
            format=fmt,
            batch=batch,
            event_types=list(settings.event_weights),
            latest=None if kind != "events" else _latest(settings),
            known_items=not allow_unknown_items,
            restart=restart,
            progress=progress,
            on_users=stamp,
        )
    if report.restarted_changed_file:
        console.print(
            "[yellow]the file changed since its checkpoint: imported from line 1[/yellow]"
        )
    elif report.resumed_after:
        console.print(f"resumed after line {report.resumed_after} (the last committed)")
    problems = report.problems
    for problem in problems[:SHOWN_PROBLEMS]:
        console.print(f"[yellow]rejected[/yellow] {problem}", soft_wrap=True)
    if problems:
        target = rejects or file.with_name(file.name + ".rejected.csv")
        with target.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "line", "reason"])
            writer.writerows((p.source, p.line, p.reason) for p in problems)
        more = len(problems) - SHOWN_PROBLEMS
        tail = f" (… and {more} more)" if more > 0 else ""
        console.print(f"{len(problems)} rows rejected{tail}: every one listed in {target}")
    if kind == "events":
        summary = f"{report.written} new events, {report.duplicates} already stored"
    else:
        summary = f"{report.written} {kind} written"
    out.print(f"{summary}, {len(problems)} rejected, {report.rows} rows read", soft_wrap=True)


def _is_redis(url: object) -> bool:
    """Whether a URL names a Redis server (the shared cache, a stream)."""
    return str(url).startswith(("redis://", "rediss://", "unix://"))


@contextmanager
def _change_stamps(settings: Any) -> Iterator[Callable[[Iterable[str]], None] | None]:
    """What stamps users changed in the servers' shared cache, retiring their
    stored answers (`sieve.storage.changes`); None with a per-process
    (`memory://`) cache, which no server shares with this command."""
    from sieve.storage import open_cache
    from sieve.storage.changes import mark_users_changed

    if not _is_redis(settings.cache_url):
        yield None
        return
    cache = open_cache(settings.cache_url)

    def stamp(users: Iterable[str]) -> None:
        mark_users_changed(cache, users)

    try:
        yield stamp
    finally:
        cache.close()


@contextmanager
def _store_errors() -> Iterator[None]:
    """A store or Redis that fails: one line saying which and why, exit code 2
    (what was committed before stays committed: run the command again)."""
    import redis

    from sieve.storage import StoreError

    try:
        yield
    except StoreError as e:
        raise UsageError(f"the store failed: {e}; what was committed stays: run again") from None
    except redis.RedisError as e:
        raise UsageError(f"Redis failed: {e}; unacknowledged entries stay pending") from None


def _latest(settings: Any) -> float:
    import time

    return time.time() + float(settings.max_future_skew_seconds)


@app.command()
def consume(
    stream: Annotated[str, typer.Option("--stream", help="The Redis Stream's key.")],
    group: Annotated[str, typer.Option("--group", help="The consumer group (created if missing).")],
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="This consumer's name in the group (default: host:pid)."),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis", help="Redis URL (default: the settings' cache_url, if redis://)."),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Entries per transaction.")] = 500,
    claim_idle: Annotated[
        float,
        typer.Option(
            "--claim-idle",
            min=0.0,
            help="Seconds after which another consumer's unacknowledged entries are claimed.",
        ),
    ] = 60.0,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", min=0.0, help="Stop after this many seconds with no entry."),
    ] = None,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="Stop after this many entries.")
    ] = None,
    allow_unknown_items: Annotated[
        bool,
        typer.Option("--allow-unknown-items", help="Accept events of items not in the catalog."),
    ] = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Store the events of a Redis Stream, as a consumer group member.

    Each batch is committed, then acknowledged, so a crash loses nothing (the
    entries stay pending and are delivered again) and duplicates nothing
    (events are stored once by id). Refused entries go to STREAM:rejected."""
    import os
    import socket

    from sieve.ingest.stream import StreamConsumer
    from sieve.storage import open_store

    with _clean_errors():
        settings = _service_settings(config, store_url=store)
        url = redis_url or settings.cache_url
        if not _is_redis(url):
            raise UsageError(f"--redis: a redis:// URL is needed, got {url!r}")
        name = consumer or f"{socket.gethostname()}:{os.getpid()}"
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with (
            _store_errors(),
            open_store(settings.store_url) as opened,
            _change_stamps(settings) as stamp,
        ):
            worker = StreamConsumer.from_url(
                url,
                opened,
                stream=stream,
                group=group,
                consumer=name,
                batch=batch,
                claim_idle_seconds=claim_idle,
                event_types=list(settings.event_weights),
                max_future_skew_seconds=settings.max_future_skew_seconds,
                known_items=not allow_unknown_items,
                on_stored=None
                if stamp is None
                else lambda events: stamp(e.user_id for e in events),
            )
            console.print(f"consuming {stream} as {group}/{name} into {settings.store_url}")
            try:
                totals = worker.run(max_events=max_events, idle_exit=idle_exit, stop=stop)
            finally:
                worker.close()
        out.print(
            f"{totals.read} entries read, {totals.inserted} new events, "
            f"{totals.duplicates} already stored, {totals.rejected} rejected",
            soft_wrap=True,
        )


__all__ = ["consume", "import_file_command", "parse_pairs"]
