"""`sieve export`: day partitions, the manifest's ranges, resuming; and the
Spark commands' message when pyspark is missing. No Spark needed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.data.records import Event, Item
from sieve.storage import open_store
from sieve.training.export import export_log, read_manifest

DAY1 = datetime(2026, 11, 1, 10, tzinfo=UTC)
DAY2 = datetime(2026, 11, 2, 23, 59, tzinfo=UTC)


def _event(k: int, when: datetime, kind: str = "view") -> Event:
    return Event(id=f"e{k}", user_id=f"u{k % 3}", item_id=f"i{k % 4}", type=kind, timestamp=when)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sieve.db'}"
    with open_store(url) as store:
        store.upsert_items(
            [Item(id=f"i{k}", title=f"item {k}", categories=["a"]) for k in range(4)]
        )
        store.append_events(
            [_event(k, DAY1 if k < 5 else DAY2) for k in range(8)], create_users=True
        )
    return url


def _events(root: Path) -> list[dict[str, object]]:
    table = ds.dataset(root / "events", format="parquet", partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda r: int(r["seq"]))  # type: ignore[call-overload]


def test_export_writes_days_and_resumes_from_the_manifest(store_url: str, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    with open_store(store_url) as store:
        first = export_log(store, root, batch=3)  # pages of 3: several per day
        assert (first.from_seq, first.to_seq, first.events) == (0, 8, 8)
        assert first.days == ["2026-11-01", "2026-11-02"]
        rows = _events(root)
        assert [r["event_id"] for r in rows] == [f"e{k}" for k in range(8)]
        assert {r["day"] for r in rows if r["event_id"] == "e6"} == {"2026-11-02"}
        # new events: the next export takes only them, from where the last stopped
        store.append_events([_event(k, DAY2, "click") for k in range(8, 11)])
        second = export_log(store, root)
        assert (second.from_seq, second.to_seq, second.events) == (8, 11, 3)
        assert [r["event_id"] for r in _events(root)] == [f"e{k}" for k in range(11)]
        assert export_log(store, root).events == 0  # nothing new
    records = read_manifest(root)
    assert [(r.from_seq, r.to_seq) for r in records] == [(0, 8), (8, 11), (11, 11)]
    items = ds.dataset(root / records[-1].catalog / "items.parquet").to_table().to_pylist()
    assert [i["item_id"] for i in items] == ["i0", "i1", "i2", "i3"]
    assert items[0]["categories"] == ["a"] and items[0]["available"] is True


def test_an_interrupted_export_is_redone_without_duplicates(store_url: str, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    with open_store(store_url) as store:
        export_log(store, root)
        manifest = (root / "_manifest.json").read_text()
        store.append_events([_event(k, DAY2) for k in range(8, 10)])
        export_log(store, root)
        # as if the second run died before its manifest: its files stay behind
        (root / "_manifest.json").write_text(manifest)
        again = export_log(store, root)
    assert (again.from_seq, again.to_seq) == (8, 10)
    assert [r["event_id"] for r in _events(root)] == [f"e{k}" for k in range(10)]


def test_export_command_and_its_errors(store_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "lake"
    done = runner.invoke(app, ["export", "--to", str(root), "--store", store_url, "--since", "5"])
    assert done.exit_code == 0, done.output
    assert "exported 3 events (seq 6..8, 1 days) and 4 items" in done.output
    bad = runner.invoke(app, ["export", "--to", str(root), "--store", store_url, "--since", "-1"])
    assert bad.exit_code == 2 and "--since must be >= 0" in bad.output
    (root / "_manifest.json").write_text("{not json")
    broken = runner.invoke(app, ["export", "--to", str(root), "--store", store_url])
    assert broken.exit_code == 2 and "not an export manifest" in broken.output


@pytest.mark.parametrize("command", ["train", "batch"])
def test_spark_commands_say_how_to_install_pyspark(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark → ImportError
    args = ["spark", command, "--data", str(tmp_path)]
    if command == "batch":
        args += ["--to", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "pip install 'sieve[spark]'" in " ".join(result.output.split())
    assert "Traceback" not in result.output
