"""The `Store` interface: the catalog (items, users) and the append-only event log.

Kept narrow on purpose: everything the service and the trainer need, nothing
a single backend could not do cheaply. One SQLAlchemy Core implementation
(`sieve.storage.sql.SQLStore`) serves SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import pandas as pd

from sieve.data.records import Event, Impression, Item, User


class StoreError(Exception):
    """A storage operation that failed; nothing of the failed write was stored."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (or is locked); the message names its URL."""


@dataclass(frozen=True)
class AppendResult:
    """What `append_events` did: how many events are new, which ids were already known.

    `duplicates` lists (in batch order) the ids that were not stored because an
    event with that id is already in the log or appeared earlier in the batch.
    """

    inserted: int
    duplicates: list[str] = field(default_factory=list)
    #: users created by `append_events(..., create_users=True)` (sorted)
    created_users: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WindowCounts:
    """Aggregates of the logs over a time window `[start, end)` cut into
    buckets of `bucket_seconds` (bucket k covers `[start + k·w, start + (k+1)·w)`),
    computed in the database (`Store.window_counts`): the cost is the window's
    rows, never the whole log, and what travels is one row per bucket and type.

    - `slots`: columns bucket, impressions (shown slots), requests (distinct
      served lists with at least one slot);
    - `events`: columns bucket, type, events, cited (events of that type
      citing a request);
    - `users`: columns bucket, users (distinct users of slots and events);
    - `total_users`: distinct users over the whole window.
    """

    start: float
    end: float
    bucket_seconds: int
    slots: pd.DataFrame
    events: pd.DataFrame
    users: pd.DataFrame
    total_users: int


@dataclass(frozen=True)
class SignalCounts:
    """Dwell and sessions over a window `[start, end)` in buckets of
    `bucket_seconds`, aggregated in the database (`Store.signal_counts`):

    - `dwell`: columns bucket, dwell_events (events of the dwell types with a
      value), dwell_seconds (the sum of their values), by event time;
    - `sessions`: columns bucket, sessions (starting in the bucket), ended,
      bounces (the rule of `sieve.data.sessions`, decided at `now`).
    """

    start: float
    end: float
    bucket_seconds: int
    now: float
    dwell: pd.DataFrame
    sessions: pd.DataFrame


@runtime_checkable
class Store(Protocol):
    """Catalog + append-only event log.

    Writes are transactions: when a method returns, its write is committed;
    when it raises, nothing of it was stored. Events are never updated or
    deleted through this interface; deleting an item keeps its events.
    """

    url: str

    def migrate(self, target: int | None = None) -> int:
        """Apply pending schema migrations (up to `target`); return the schema version."""
        ...

    # ----------------------------------------------------------------- items
    def upsert_items(self, items: Sequence[Item]) -> int:
        """Insert or replace items (all fields); the last of repeated ids wins.
        Returns the number of distinct ids written."""
        ...

    def get_item(self, item_id: str) -> Item | None: ...

    def get_items(self, item_ids: Iterable[str]) -> dict[str, Item]:
        """The known items among `item_ids`, by id (unknown ids are left out)."""
        ...

    def item_categories(self, item_ids: Iterable[str]) -> dict[str, list[str]]:
        """The categories of the known ones of `item_ids` (a light read, for
        the online counters' category affinities)."""
        ...

    def delete_item(self, item_id: str) -> bool:
        """Remove an item from the catalog (its events stay); False if it was unknown."""
        ...

    def list_items(self, offset: int = 0, limit: int = 100) -> list[Item]:
        """A page of items in id order."""
        ...

    def count_items(self) -> int: ...

    def items_frame(self) -> pd.DataFrame:
        """All items with the columns of `ITEM_COLUMNS` plus `available`."""
        ...

    # ----------------------------------------------------------------- users
    def upsert_users(self, users: Sequence[User]) -> int: ...

    def get_user(self, user_id: str) -> User | None: ...

    def delete_user(self, user_id: str) -> bool: ...

    def list_users(self, offset: int = 0, limit: int = 100) -> list[User]: ...

    def count_users(self) -> int: ...

    def users_frame(self) -> pd.DataFrame:
        """All users with the columns of `USER_COLUMNS`."""
        ...

    # ---------------------------------------------------------------- events
    def append_events(self, events: Sequence[Event], *, create_users: bool = False) -> AppendResult:
        """Append a batch atomically and idempotently (by event id).

        Missing timestamps become the time of the call. Each stored event gets
        an increasing sequence number (`seq`) in commit order. With
        `create_users`, users of the batch not yet known are created (no
        attributes) in the same transaction: if the append fails, no user of
        it stays behind either.
        """
        ...

    def events_frame(self, since_seq: int | None = None, limit: int | None = None) -> pd.DataFrame:
        """The first `limit` (all if None) events with `seq > since_seq` (all if
        None), in `seq` order: the columns of `EVENT_COLUMNS` plus `seq` and
        `request_id`."""
        ...

    def user_events(self, user_id: str, limit: int = 50) -> list[Event]:
        """A user's latest events, most recent (by timestamp, then seq) first."""
        ...

    def user_interactions(self, user_id: str, limit: int = 50) -> list[tuple[str, str]]:
        """A user's latest events as (item id, event type), in `user_events`'s
        order: the live query's read, without building whole events."""
        ...

    def count_events(self) -> int: ...

    def max_seq(self) -> int:
        """The highest sequence number stored (0 for an empty log)."""
        ...

    # ----------------------------------------------------------- impressions
    def log_impressions(self, impressions: Sequence[Impression]) -> int:
        """Store served lists, idempotent by request id; returns how many were new."""
        ...

    def get_impression(self, request_id: str) -> Impression | None: ...

    def attribute(
        self, user_id: str, item_id: str, at: datetime | None, window_seconds: float
    ) -> str | None:
        """Request id of the latest impression of the item to the user within the window."""
        ...

    def attribute_many(
        self,
        clicks: Sequence[tuple[str, str, datetime | None]],
        window_seconds: float,
        unwritten: Sequence[tuple[str, str, datetime, str]] = (),
    ) -> list[str | None]:
        """`attribute` for many (user, item, time) triples at once; the
        (user, item, served at, request id) of `unwritten` (lists not yet
        logged) count as stored impressions."""
        ...

    def impressions_frame(self, since: float | None = None) -> pd.DataFrame:
        """One row per shown slot, oldest first."""
        ...

    # ------------------------------------------------------------- analytics
    def window_counts(self, start: float, end: float, bucket_seconds: int) -> WindowCounts:
        """Per-bucket and total counts of slots, requests, events by type and
        users over `[start, end)` (epoch seconds), aggregated in the database."""
        ...

    def event_counts(self, after_seq: int, upto_seq: int, by: str) -> pd.Series:
        """Events with `after_seq < seq <= upto_seq` counted per value of column
        `by` (`item_id` or `type`), aggregated in the database."""
        ...

    def shown_slots(
        self,
        model_version: str,
        since: float,
        until: float,
        click_types: Sequence[str],
        limit: int,
    ) -> pd.DataFrame:
        """The newest `limit` slots shown by `model_version` in `[since, until)`:
        columns timestamp, score, clicked (whether an event of `click_types`
        cites the slot's request and item), newest first."""
        ...

    def signal_counts(
        self,
        start: float,
        end: float,
        bucket_seconds: int,
        *,
        dwell_types: Sequence[str],
        gap_seconds: float,
        bounce_seconds: float,
        now: float,
    ) -> SignalCounts:
        """Dwell per bucket and sessions starting per bucket (ended, bounced
        as of `now`) over `[start, end)`, reading activity from
        `start - gap_seconds` on: the window's rows, never the whole log."""
        ...

    def item_event_stats(
        self, types: Sequence[str], since: float | None, limit: int | None = None
    ) -> pd.DataFrame:
        """Per available item with events of `types` since `since` (None: all
        time): item_id, events, value_count, value_sum; most events first."""
        ...

    def newest_items(self, limit: int, category: str | None = None) -> list[tuple[str, float]]:
        """(item id, created_at) of the newest available items, newest first."""
        ...

    def experiment_activity(self, name: str, gap_seconds: float) -> pd.DataFrame:
        """When the users of an experiment's requests were active (events and
        served slots) from `gap_seconds` before its first request on: columns
        user_id, timestamp."""
        ...

    def logged_slots(
        self,
        since: float,
        until: float,
        click_types: Sequence[str],
        after: tuple[int, str] | None = None,
        limit: int = 5000,
    ) -> pd.DataFrame:
        """One page (at most `limit` requests after the key `after` =
        (timestamp_us, request_id)) of the lists served in `[since, until)`:
        one row per slot with request_id, user_id, model_version, item_id,
        position, propensity, sources, clicked, timestamp, timestamp_us."""
        ...

    # ----------------------------------------------------------- experiments
    def add_experiment(self, definition: dict[str, Any], status: str, at: datetime) -> None:
        """Store a new experiment definition (its name must be new)."""
        ...

    def experiments(self) -> list[dict[str, Any]]:
        """Every experiment (definition, status, created_at, stopped_at), oldest first."""
        ...

    def set_experiment_status(self, name: str, status: str, at: datetime) -> bool:
        """Change an experiment's status; False if there is no such experiment."""
        ...

    def experiment_frames(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(shown slots of the experiment's requests with their arm, events citing them)."""
        ...

    def experiment_contexts(self, name: str) -> pd.DataFrame:
        """The logged context of each of the experiment's requests (request_id,
        arm, context: a dict), oldest first: what shadow arms would have shown."""
        ...

    # ------------------------------------------------ shared between processes
    def catalog_seq(self) -> int:
        """The newest number of the catalog change sequence (0: none yet):
        every item written or deleted is numbered, in commit order."""
        ...

    def catalog_changes(self, after_seq: int, limit: int = 10_000) -> list[tuple[int, str]]:
        """(number, item id) of the first `limit` catalog changes after `after_seq`."""
        ...

    def prune_catalog_changes(self, older_than_seconds: float) -> int:
        """Forget catalog changes older than this; returns how many were deleted."""
        ...

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take (or, for its holder, renew) the lease `name` for `seconds`;
        False when another holder has it and it has not expired."""
        ...

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease back; False if `holder` did not have it."""
        ...

    def lease(self, name: str) -> tuple[str, float] | None:
        """(holder, seconds left) of the lease, or None when it is free."""
        ...

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
