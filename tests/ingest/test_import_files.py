"""`sieve import items|users|events FILE` on a real store (SQLite and
PostgreSQL): every refused row named by line and reason, good rows written
once however often the file is imported, and an interrupted import resumed
after its last committed line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.data.records import Item
from sieve.ingest.files import checkpoint_source, import_file, mapping_for
from sieve.storage import SQLStore, open_store
from storage.conftest import StoreTarget, target  # noqa: F401  (fixture: a store on each backend)

runner = CliRunner()

EVENTS = """customer,sku,kind,stars,at
u1,i1,click,,1700000000
u1,i2,view,,1700000001
u2,i9,click,,1700000002
u2,i1,bogus,,1700000003
u3,i2,rating,4.5,1700000004
u3,i2,rating,inf,1700000005
,i1,click,,1700000006
u4,i1,click,,99999999999
u4,i3,purchase,,2023-11-14T22:13:30Z
u5,i1\x01x,click,,1700000010
"""
#: line → the start of its reason (line 1 is the header)
REFUSED = {
    4: "unknown item id 'i9'",
    5: "unknown event type 'bogus'",
    7: "value 'inf' is not finite",
    8: "empty user id",
    9: "timestamp 5138-11-16",
    11: "item id 'i1\\x01x' contains a control character",
}
MAP = ["--map", "user=customer", "--map", "item=sku", "--map", "type=kind"]
MAP += ["--map", "value=stars", "--map", "timestamp=at"]


def url_of(t: StoreTarget) -> str:
    return t.url if t.schema is None else f"{t.url}?schema={t.schema}"


def catalog(store: SQLStore, n: int = 3) -> None:
    store.upsert_items([Item(id=f"i{k}") for k in range(1, n + 1)])


def rejected(path: Path) -> dict[int, str]:
    with path.open(newline="") as f:
        return {int(r["line"]): r["reason"] for r in csv.DictReader(f)}


def test_events_file_every_bad_row_named_and_imported_once(
    target: StoreTarget,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = target.open()
    catalog(store)
    path = tmp_path / "events.csv"
    path.write_text(EVENTS)
    args = ["import", "events", str(path), *MAP, "--store", url_of(target)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "4 new events, 0 already stored, 6 rejected, 10 rows read" in first.stdout
    reasons = rejected(tmp_path / "events.csv.rejected.csv")
    assert sorted(reasons) == sorted(REFUSED)
    for line, start in REFUSED.items():
        assert reasons[line].startswith(start), (line, reasons[line])
    stored = store.events_frame()
    assert sorted(stored["user_id"]) == ["u1", "u1", "u3", "u4"]
    assert stored.loc[stored["type"] == "rating", "value"].tolist() == [4.5]
    assert stored["event_id"].str.startswith("h:").all()
    assert set(store.users_frame()["user_id"]) == {"u1", "u3", "u4"}  # created with the events

    again = runner.invoke(app, [*args, "--restart"])
    assert again.exit_code == 0, again.output
    assert "0 new events, 4 already stored" in again.stdout
    # the same events in another file, reordered, plus one new: only that one is new
    lines = EVENTS.splitlines()
    other = tmp_path / "more.csv"
    other.write_text("\n".join([lines[0], lines[5], lines[1], "u6,i2,cart,,1700000100"]) + "\n")
    more = runner.invoke(app, ["import", "events", str(other), *MAP, "--store", url_of(target)])
    assert "1 new events, 2 already stored, 0 rejected" in more.stdout, more.output
    assert store.count_events() == 5


def test_interrupted_import_resumes_after_the_last_committed_line(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    catalog(store)
    path = tmp_path / "events.csv"
    rows = [f"u{k},i{1 + k % 3},click,{1_700_000_000 + k}" for k in range(10)]
    path.write_text("user_id,item_id,type,timestamp\n" + "\n".join(rows) + "\n")
    real = store.append_columns
    sent: list[int] = []

    def crash_on_third(events: Any, **kw: Any) -> int:
        if len(sent) == 2:
            raise KeyboardInterrupt  # the process dies mid-import
        sent.append(len(events))
        return real(events, **kw)

    store.append_columns = crash_on_third  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        import_file(store, "events", path, batch=3)
    saved = store.import_checkpoint(checkpoint_source("events", path))
    assert saved is not None and saved.line == 7  # header + 2 batches of 3
    assert store.count_events() == 6

    store.append_columns = real  # type: ignore[method-assign]
    report = import_file(store, "events", path, batch=3)
    assert (report.resumed_after, report.written, report.duplicates) == (7, 4, 0)
    assert store.count_events() == 10
    # a finished file: a third run has nothing left to do
    done = import_file(store, "events", path, batch=3)
    assert (done.resumed_after, done.written) == (11, 0)
    # the file replaced by another: its checkpoint no longer applies
    path.write_text("user_id,item_id,type,timestamp\nu9,i1,view,1700000500\n")
    changed = import_file(store, "events", path, batch=3)
    assert changed.restarted_changed_file and changed.written == 1
    store.close()


def test_jsonl_and_parquet_with_mappings_and_event_ids(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    catalog(store)
    jsonl = tmp_path / "events.jsonl"
    records = [
        {"id": "e1", "user": "u1", "item": "i1", "type": "click", "ts": 1_700_000_000},
        "not json {",
        {"id": "e2", "user": "u2", "item": "i2", "type": "rating", "value": 3, "ts": 1_700_000_001},
        [1, 2],
        {"id": "e1", "user": "u3", "item": "i3", "type": "view", "ts": 1_700_000_002},
    ]
    jsonl.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n\n"
    )
    mapping = mapping_for(
        "events", {"user": "user", "item": "item", "event_id": "id", "timestamp": "ts"}
    )
    report = import_file(store, "events", jsonl, mapping)
    assert report.written == 2
    assert [(p.line, p.reason.split(":")[0]) for p in report.problems] == [
        (2, "not valid JSON"),
        (4, "expected a JSON object, found list"),
        (5, "duplicate event id 'e1'"),
    ]
    assert sorted(store.events_frame()["event_id"]) == ["e1", "e2"]

    parquet = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "who": ["u7", "u8"],
            "what": ["i1", "i404"],
            "when": pd.to_datetime(["2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z"]),
        }
    ).to_parquet(parquet)
    mapping = mapping_for(
        "events", {"user": "who", "item": "what", "timestamp": "when"}, default_type="purchase"
    )
    report = import_file(store, "events", parquet, mapping)
    assert report.written == 1 and [p.line for p in report.problems] == [2]
    bought = store.events_frame().query("user_id == 'u7'")
    assert bought["type"].tolist() == ["purchase"]
    assert bought["timestamp"].tolist() == [1_700_000_000.0]
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['usr'\]"):
        mapping_for("events", {"usr": "x"})
    store.close()


def test_items_and_users_through_the_api_records(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    items = tmp_path / "items.csv"
    items.write_text(
        "sku,title,categories,available,brand,created_at\n"
        "a,Shoe,shoes|running,true,Fast,2024-01-01\n"
        ",Nameless,,,,\n"
        "b,Hat,hats,maybe,Cool,\n"
        f"c,{'x' * 1001},,,,\n"
        "d,Sock,socks,0,,1700000000\n"
    )
    report = import_file(store, "items", items, mapping_for("items", {"id": "sku"}))
    assert report.written == 2
    assert [(p.line, p.reason[:22]) for p in report.problems] == [
        (3, "id: Field required"),
        (4, "available: expected tr"),
        (5, "title: String should h"),
    ]
    shoe = store.get_item("a")
    assert shoe is not None and shoe.categories == ["shoes", "running"]
    assert shoe.attributes == {"brand": "Fast"} and shoe.created_at is not None
    sock = store.get_item("d")
    assert sock is not None and not sock.available and sock.created_at.timestamp() == 1.7e9

    users = tmp_path / "users.jsonl"
    users.write_text(
        '{"id": "u1", "attributes": {"plan": "pro"}, "country": "DE"}\n{"attributes": {}}\n'
    )
    report = import_file(store, "users", users)
    assert report.written == 1 and [p.line for p in report.problems] == [2]
    user = store.get_user("u1")
    assert user is not None and user.attributes == {"country": "DE", "plan": "pro"}
    store.close()


def test_import_command_keeps_data_specs_and_explains_mistakes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = "synthetic:users=20,items=15,seed=2"
    for args in (["import", "--data", spec], ["import", spec]):
        result = runner.invoke(app, [*args, "--store", url])
        assert result.exit_code == 0, result.output
        assert "15 items, 20 users" in result.stdout
    cases = {
        ("import", "events"): "needs a FILE",
        ("import",): "nothing to import",
        ("import", "events", str(tmp_path / "nope.csv")): "data file not found",
        ("import", "events", str(tmp_path), "--map", "user"): "expected FIELD=COLUMN",
    }
    for args, message in cases.items():
        result = runner.invoke(app, [*args, "--store", url])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_content_ids_are_a_fixed_function_of_the_event() -> None:
    """Idempotency across versions: the id of an event without one must not
    change, or a re-import after an upgrade would store it twice."""
    import hashlib

    import numpy as np

    from sieve.data.tables import content_ids

    def s(*v: str) -> pd.Series:
        return pd.Series(list(v), dtype="str")

    ids = content_ids(
        s("u1", "u1"),
        s("i1", "i1"),
        s("click", "rating"),
        np.array([np.nan, 4.5]),
        np.array([1.7e9, np.nan]),
    ).tolist()
    canonical = "u1\x1fi1\x1fclick\x1f\x1f1700000000000000"  # user, item, type, value, µs
    assert ids[0] == "h:" + hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
    assert ids == ["h:d934c5dd6d1bcb7fd6d69debdfa7b9d3", "h:84156f4db1493d01db4a2803402e297c"]
