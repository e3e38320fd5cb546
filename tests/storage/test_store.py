"""The store contract, run on SQLite and on a real PostgreSQL; and record validation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from sieve.data.records import Event, Item, User
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from sieve.storage import SQLStore, Store, StoreError, StoreUnavailable, open_store
from sieve.storage.migrations import MIGRATIONS, Migration, latest_version
from sieve.storage.opening import POOL_SIZE

from .conftest import StoreTarget

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ev(id_: str, user: str = "u1", item: str = "i1", type_: str = "click", **kw: object) -> Event:
    return Event(id=id_, user_id=user, item_id=item, type=type_, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ records
class TestRecords:
    def test_extra_field_rejected_by_name(self) -> None:
        with pytest.raises(ValidationError, match="colour"):
            Item(id="a", colour="red")  # type: ignore[call-arg]
        with pytest.raises(ValidationError, match="rating"):
            Event.model_validate(
                {"id": "e", "user_id": "u", "item_id": "i", "type": "click", "rating": 5}
            )

    @pytest.mark.parametrize("bad", ["", "   "])
    def test_empty_id_rejected(self, bad: str) -> None:
        with pytest.raises(ValidationError, match="id"):
            Item(id=bad)
        with pytest.raises(ValidationError, match="user_id"):
            ev("e", user=bad)

    def test_long_id_rejected(self) -> None:
        with pytest.raises(ValidationError, match="at most 256"):
            User(id="x" * 257)

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_value_rejected(self, value: float) -> None:
        with pytest.raises(ValidationError, match="finite"):
            ev("e", value=value)

    @pytest.mark.parametrize("bad", ["Click", "add-to-cart", "", "x" * 33])
    def test_event_type_shape(self, bad: str) -> None:
        with pytest.raises(ValidationError, match="type"):
            ev("e", type_=bad)
        assert ev("e", type_="add_to_cart").type == "add_to_cart"

    def test_naive_datetime_becomes_utc(self) -> None:
        e = ev("e", timestamp=datetime(2024, 5, 1, 12, 30))
        assert e.timestamp == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
        assert Item(id="a", created_at=datetime(2024, 5, 1)).created_at.tzinfo is UTC  # type: ignore[union-attr]
        aware = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
        assert ev("e", timestamp=aware).timestamp == e.timestamp

    def test_attributes_must_be_json(self) -> None:
        with pytest.raises(ValidationError, match="attributes"):
            User(id="u", attributes={"when": datetime.now()})  # type: ignore[dict-item]

    def test_schema_has_examples(self) -> None:
        for model in (Item, User, Event):
            examples = model.model_json_schema()["examples"]
            for example in examples:
                model.model_validate(example)


# -------------------------------------------------------------------- open
def test_unknown_scheme_lists_supported() -> None:
    with pytest.raises(ValueError, match=r"mysql://.*sqlite://.*postgresql://"):
        open_store("mysql://localhost/db")


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql://u@h/db"])
def test_postgres_urls_use_psycopg(url: str) -> None:
    store = open_store(url, migrate=False)  # no connection is made without migrate
    assert store.engine.url.drivername == "postgresql+psycopg"
    store.close()


def test_postgres_pool_size_comes_from_the_url() -> None:
    store = open_store("postgresql://u@127.0.0.1/db?pool_size=3", migrate=False)
    assert store.engine.pool.size() == 3  # type: ignore[attr-defined]
    assert "pool_size" not in str(store.engine.url)  # ours, not passed to the driver
    default = open_store("postgresql://u@127.0.0.1/db", migrate=False)
    assert default.engine.pool.size() == POOL_SIZE  # type: ignore[attr-defined]
    for bad in ("0", "x", "-2"):
        with pytest.raises(ValueError, match="pool_size must be a positive integer"):
            open_store(f"postgresql://u@127.0.0.1/db?pool_size={bad}", migrate=False)


def test_unreachable_postgres_names_url() -> None:
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/nodb"):
        open_store("postgresql://postgres@127.0.0.1:1/nodb?connect_timeout=2")


def test_sqlite_in_memory() -> None:
    with open_store("sqlite://") as mem:
        assert mem.append_events([ev("e1")]).inserted == 1
        assert mem.count_events() == 1


def test_sqlite_file_is_wal(tmp_path: Path) -> None:
    def pragma(url: str, name: str) -> object:
        with open_store(url) as store, store.engine.connect() as conn:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

    url = f"sqlite:///{tmp_path / 'new' / 'x.db'}"  # the missing folder is made
    assert pragma(url, "journal_mode") == "wal"
    assert pragma(url, "busy_timeout") == 5000
    assert pragma(url, "synchronous") == 1  # NORMAL
    assert pragma(f"{url}?synchronous=full", "synchronous") == 2  # FULL
    with pytest.raises(ValueError, match="unknown sqlite URL option"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}?journal=off")
    with pytest.raises(ValueError, match="PostgreSQL"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", schema="s")


def test_store_satisfies_protocol(store: SQLStore) -> None:
    assert isinstance(store, Store)


# ------------------------------------------------------------------- items
def test_item_crud(store: SQLStore) -> None:
    item = Item(
        id="a",
        title="Alpha",
        text="first",
        categories=["x", "y"],
        created_at=T0,
        attributes={"price": 9.5, "tags": ["new"], "meta": {"k": None}},
    )
    assert store.upsert_items([item, Item(id="b")]) == 2
    assert store.get_item("a") == item
    assert store.get_item("nope") is None
    assert store.count_items() == 2

    update = Item(id="a", title="Alpha 2", available=False)
    assert store.upsert_items([update]) == 1
    got = store.get_item("a")
    assert got == update  # every field replaced, none merged
    assert got is not None and got.categories == [] and got.created_at is None

    assert store.delete_item("a") is True
    assert store.delete_item("a") is False
    assert store.get_item("a") is None
    assert store.count_items() == 1


def test_bulk_upsert_and_paging(store: SQLStore) -> None:
    items = [Item(id=f"i{n:05d}", title=f"t{n}") for n in range(2500)]
    items.append(Item(id="i00007", title="last wins"))
    assert store.upsert_items(items) == 2500
    assert store.count_items() == 2500
    wanted = [f"i{n:05d}" for n in range(0, 2500, 2)] + ["missing"]
    got = store.get_items(wanted)
    assert list(got) == wanted[:-1]  # request order, unknown ids left out
    assert store.get_item("i00007").title == "last wins"  # type: ignore[union-attr]
    page = store.list_items(offset=10, limit=5)
    assert [i.id for i in page] == [f"i{n:05d}" for n in range(10, 15)]
    assert store.list_items(offset=2500) == []
    with pytest.raises(ValueError, match="limit"):
        store.list_items(limit=-1)


def test_items_frame(store: SQLStore) -> None:
    empty = store.items_frame()
    assert list(empty.columns)[: len(ITEM_COLUMNS)] == ITEM_COLUMNS
    assert len(empty) == 0 and empty["created_at"].dtype == np.float64
    store.upsert_items(
        [
            Item(id="b", categories=["c"], created_at=T0, attributes={"a": 1}),
            Item(id="a", title="A", available=False),
        ]
    )
    frame = store.items_frame()
    assert list(frame.columns) == [*ITEM_COLUMNS, "available"]
    assert frame["item_id"].tolist() == ["a", "b"]
    assert frame["categories"].tolist() == [[], ["c"]]
    assert frame["attributes"].tolist() == [{}, {"a": 1}]
    assert np.isnan(frame["created_at"].iloc[0])
    assert frame["created_at"].iloc[1] == T0.timestamp()
    assert frame["available"].tolist() == [False, True]


# ------------------------------------------------------------------- users
def test_user_crud(store: SQLStore) -> None:
    users = [User(id=f"u{n}", attributes={"n": n}) for n in range(5)]
    assert store.upsert_users(users) == 5
    assert store.get_user("u3") == users[3]
    assert store.upsert_users([User(id="u3", attributes={"plan": "pro"})]) == 1
    assert store.get_user("u3") == User(id="u3", attributes={"plan": "pro"})
    assert [u.id for u in store.list_users(offset=1, limit=2)] == ["u1", "u2"]
    assert store.delete_user("u0") is True
    assert store.delete_user("u0") is False
    assert store.get_user("u0") is None
    assert store.count_users() == 4
    frame = store.users_frame()
    assert list(frame.columns) == USER_COLUMNS
    assert frame["user_id"].tolist() == ["u1", "u2", "u3", "u4"]
    assert frame["attributes"].iloc[2] == {"plan": "pro"}


# ------------------------------------------------------------------ events
def test_append_is_idempotent(store: SQLStore) -> None:
    first = store.append_events([ev("e1"), ev("e2"), ev("e1", item="other")])
    assert first.inserted == 2
    assert first.duplicates == ["e1"]  # repeated within the batch: the first one wins
    again = store.append_events([ev("e2"), ev("e3"), ev("e1")])
    assert again.inserted == 1
    assert again.duplicates == ["e2", "e1"]
    assert store.count_events() == 3
    frame = store.events_frame()
    assert frame["event_id"].tolist() == ["e1", "e2", "e3"]
    assert frame.loc[0, "item_id"] == "i1"
    assert store.append_events([]).inserted == 0


def test_append_is_atomic(store: SQLStore) -> None:
    store.append_events([ev("old")])
    bad = Event.model_construct(id="bad", user_id=None, item_id="i1", type="click")
    with pytest.raises(StoreError, match="nothing stored"):
        store.append_events([ev("new1"), bad, ev("new2")])
    assert store.count_events() == 1
    assert store.events_frame()["event_id"].tolist() == ["old"]
    # the good events of the failed batch can be sent again
    assert store.append_events([ev("new1"), ev("new2")]).inserted == 2


def test_events_frame_round_trip(store: SQLStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    events = [
        ev("e1", "u1", "i1", "click", timestamp=datetime(2024, 1, 1, 2, 0, tzinfo=plus2)),
        ev("e2", "u2", "i2", "rating", value=4.5, timestamp=T0 + timedelta(microseconds=123456)),
        ev("e3", "u1", "i2", "view", timestamp=datetime(2024, 1, 2), request_id="req-9"),
    ]
    store.append_events(events)
    frame = store.events_frame()
    assert list(frame.columns) == [*EVENT_COLUMNS, "seq", "request_id"]
    assert frame["value"].dtype == np.float64 and frame["timestamp"].dtype == np.float64
    assert frame["seq"].dtype == np.int64
    assert pd.api.types.is_string_dtype(frame["event_id"])
    assert frame["user_id"].tolist() == ["u1", "u2", "u1"]
    assert frame["type"].tolist() == ["click", "rating", "view"]
    assert np.isnan(frame["value"].iloc[0]) and frame["value"].iloc[1] == 4.5
    assert frame["timestamp"].tolist() == pytest.approx(
        [T0.timestamp(), T0.timestamp() + 0.123456, T0.timestamp() + 86400], abs=1e-6
    )
    assert frame["request_id"].iloc[2] == "req-9" and pd.isna(frame["request_id"].iloc[0])
    seqs = frame["seq"].tolist()
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert store.max_seq() == seqs[-1]

    later = store.events_frame(since_seq=seqs[0])
    assert later["event_id"].tolist() == ["e2", "e3"]
    assert len(store.events_frame(since_seq=store.max_seq())) == 0

    back = {e.id: e for e in store.user_events("u1")} | {e.id: e for e in store.user_events("u2")}
    for e in events:
        assert back[e.id] == e  # same instants; the store hands back UTC
        assert back[e.id].timestamp.tzinfo == UTC  # type: ignore[union-attr]


def test_user_interactions_are_user_events_in_short(store: SQLStore) -> None:
    """The live query's light read: (item, type) in `user_events`'s order
    (latest timestamp first, ties by arrival), limited, other users apart."""
    store.append_events(
        [
            ev("e1", item="i1", timestamp=T0),
            ev("e2", item="i2", type_="purchase", timestamp=T0 + timedelta(hours=2)),
            ev("e3", item="i3", timestamp=T0 + timedelta(hours=1)),
            ev("e4", item="i4", timestamp=T0 + timedelta(hours=2)),
            ev("e5", user="u2", item="i9", timestamp=T0),
        ]
    )
    full = [(e.item_id, e.type) for e in store.user_events("u1", limit=10)]
    assert store.user_interactions("u1", limit=10) == full
    assert full == [("i4", "click"), ("i2", "purchase"), ("i3", "click"), ("i1", "click")]
    assert store.user_interactions("u1", limit=2) == full[:2]
    assert store.user_interactions("u1'; DROP TABLE events; --") == []
    assert store.user_interactions("nobody") == [] and store.count_events() == 5
    with pytest.raises(ValueError, match="limit"):
        store.user_interactions("u1", limit=-1)


def test_empty_log(store: SQLStore) -> None:
    frame = store.events_frame()
    assert list(frame.columns) == [*EVENT_COLUMNS, "seq", "request_id"]
    assert len(frame) == 0 and frame["timestamp"].dtype == np.float64
    assert store.max_seq() == 0 and store.count_events() == 0
    assert store.user_events("nobody") == []


def test_missing_timestamp_is_now(store: SQLStore) -> None:
    before = datetime.now(UTC)
    store.append_events([ev("e1")])
    after = datetime.now(UTC)
    (stored,) = store.user_events("u1")
    assert stored.timestamp is not None
    assert before - timedelta(milliseconds=1) <= stored.timestamp <= after


def test_user_events_most_recent_first(store: SQLStore) -> None:
    store.append_events(
        [
            ev("mid", timestamp=T0 + timedelta(hours=1)),
            ev("late", timestamp=T0 + timedelta(hours=2)),
            ev("early", timestamp=T0),
            ev("other", user="u2", timestamp=T0 + timedelta(hours=5)),
        ]
    )
    store.append_events([ev("tie", timestamp=T0 + timedelta(hours=2))])  # later seq wins a tie
    assert [e.id for e in store.user_events("u1")] == ["tie", "late", "mid", "early"]
    assert [e.id for e in store.user_events("u1", limit=2)] == ["tie", "late"]


def test_deleting_an_item_keeps_its_events(store: SQLStore) -> None:
    store.upsert_items([Item(id="i1")])
    store.append_events([ev("e1", item="i1")])
    assert store.delete_item("i1")
    assert store.count_events() == 1


def test_concurrent_appends(store: SQLStore) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for batch in range(5):
                store.append_events(
                    [ev(f"w{worker}-{batch}-{n}", user=f"u{worker}") for n in range(50)]
                )
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_events() == 4 * 5 * 50
    assert store.events_frame()["seq"].is_monotonic_increasing


def test_bulk_append(store: SQLStore) -> None:
    events = [ev(f"e{n}", user=f"u{n % 97}", item=f"i{n % 31}") for n in range(10_000)]
    assert store.append_events(events).inserted == 10_000
    assert store.count_events() == 10_000
    result = store.append_events(events[:10])
    assert result.inserted == 0 and len(result.duplicates) == 10


# -------------------------------------------------------- reopen / migrate
def test_persistence_across_reopen(target: StoreTarget) -> None:
    with target.open() as store:
        store.upsert_items([Item(id="a", title="A")])
        store.upsert_users([User(id="u")])
        store.append_events([ev("e1")])
        seq = store.max_seq()
    with target.open() as store:
        assert store.get_item("a") == Item(id="a", title="A")
        assert store.get_user("u") == User(id="u")
        assert store.events_frame()["event_id"].tolist() == ["e1"]
        store.append_events([ev("e2")])
        assert store.max_seq() > seq


def _version_rows(store: SQLStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(sa.text("SELECT version FROM sieve_schema_version ORDER BY version"))
            .scalars()
            .all()
        )


def test_migrations_upgrade_and_are_idempotent(target: StoreTarget) -> None:
    old = target.open(migrate=False)
    assert old.migrate(target=1) == 1  # a database as version 1 left it: no event log
    assert not sa.inspect(old.engine).has_table("events")
    with old.engine.begin() as conn:  # written as version 1's code wrote it
        conn.execute(
            sa.text(
                "INSERT INTO items (id, title, text, categories, available, attributes) "
                "VALUES ('kept', '', '', '[]', TRUE, '{}')"
            )
        )
    old.close()

    store = target.open()  # opening upgrades it
    current = [m.version for m in MIGRATIONS]
    assert _version_rows(store) == current
    assert store.get_item("kept") == Item(id="kept")
    assert store.append_events([ev("e1")]).inserted == 1
    assert store.migrate() == latest_version()  # nothing left to do
    assert _version_rows(store) == current

    def add_table(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE extra_step (x INTEGER)"))

    nxt = latest_version() + 1
    newer = (*MIGRATIONS, Migration(nxt, "test step", add_table))
    assert store.migrate(steps=newer) == nxt
    assert store.migrate(steps=newer) == nxt  # a second run does not redo the step
    assert _version_rows(store) == [*current, nxt]
    with pytest.raises(StoreError, match="newer than this sieve"):
        store.migrate()


def test_failed_migration_changes_nothing(target: StoreTarget) -> None:
    store = target.open()

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.migrate(steps=(*MIGRATIONS, Migration(latest_version() + 1, "broken", broken)))
    assert _version_rows(store) == [m.version for m in MIGRATIONS]
    assert not sa.inspect(store.engine).has_table("half_done")


def test_a_users_latest_events_come_from_one_covering_index(target: StoreTarget) -> None:
    """Every live answer reads its user's latest (item, type) pairs: the index
    on (user, time, seq, item, type) holds them, so no table page is read."""
    store = target.open()
    indexes = {
        ix["name"]: ix["column_names"]
        for ix in sa.inspect(store.engine).get_indexes("events", schema=target.schema)
    }
    assert indexes["ix_events_user_recent"] == ["user_id", "timestamp_us", "seq", "item_id", "type"]
    assert "ix_events_user_time" not in indexes  # its prefix: replaced, not kept beside it
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    store.append_events(
        [ev(f"e{k}", user="u", item=f"i{k}", timestamp=t0 + timedelta(seconds=k)) for k in range(5)]
    )
    latest = [("i4", "click"), ("i3", "click"), ("i2", "click")]
    assert store.user_interactions("u", limit=3) == latest
    if target.backend == "sqlite":
        with store.engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT item_id, type FROM events WHERE user_id = ? "
                "ORDER BY timestamp_us DESC, seq DESC LIMIT 50",
                ("u",),
            ).all()
        assert "COVERING INDEX ix_events_user_recent" in str(plan)
