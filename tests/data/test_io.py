"""Importers: MovieLens layouts, generic tables, malformed rows and CLI specs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sieve.config import ConfigError
from sieve.data.io import load_data
from sieve.data.movielens import (
    load_movielens_1m,
    load_movielens_10m,
    load_movielens_100k,
    load_movielens_latest,
)
from sieve.data.raw import ImportProblem, RawData
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from sieve.data.tables import ColumnMapping, load_table

JAN_1_1995 = 788918400.0  # 1995-01-01T00:00:00Z


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _problems(raw: RawData) -> list[str]:
    return [str(p) for p in raw.problems]


def _check_schema(raw: RawData) -> None:
    assert list(raw.events.columns) == EVENT_COLUMNS
    assert list(raw.items.columns) == ITEM_COLUMNS
    assert list(raw.users.columns) == USER_COLUMNS
    assert raw.events["value"].dtype == np.float64
    assert raw.events["timestamp"].dtype == np.float64
    assert raw.events["event_id"].is_unique
    assert all(isinstance(v, str) for v in raw.events["user_id"].head())


# ------------------------------------------------------------- MovieLens 100K
def test_movielens_100k_real(ml100k_path: Path) -> None:
    start = time.perf_counter()
    raw = load_movielens_100k(ml100k_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # about 0.15 s; generous for a loaded machine
    _check_schema(raw)
    assert (len(raw.events), len(raw.items), len(raw.users)) == (100_000, 1682, 943)
    assert raw.problems == []
    assert set(raw.events["type"]) == {"rating"}
    assert set(raw.events["value"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    first = raw.events.iloc[0]
    assert (first.user_id, first.item_id, first.value, first.timestamp) == (
        "196",
        "242",
        3.0,
        881250949.0,
    )
    toy = raw.items.set_index("item_id").loc["1"]
    assert toy.title == "Toy Story (1995)"
    assert toy.categories == ["Animation", "Children's", "Comedy"]
    assert toy.created_at == JAN_1_1995
    assert toy.text == "Toy Story (1995) Animation Children's Comedy"
    assert toy.attributes["imdb_url"].startswith("http://us.imdb.com/")
    unknown = raw.items.set_index("item_id").loc["267"]  # the one item with no data
    assert unknown.categories == [] and np.isnan(unknown.created_at)
    user1 = raw.users.set_index("user_id").loc["1"].attributes
    assert user1 == {"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"}
    ds = raw.to_dataset()
    assert (ds.n_users, ds.n_items, ds.matrix.nnz) == (943, 1682, 100_000)


def _ml100k_folder(tmp_path: Path, data: str) -> Path:
    _write(tmp_path / "u.data", data)
    _write(tmp_path / "u.genre", "unknown|0\nAction|1\nComedy|2\n\n")
    _write(
        tmp_path / "u.item",
        "1|Café Noir (1995)|01-Jan-1995||http://x/1|0|1|1\n"
        "2|Bad Date (1996)|1996-01-01||http://x/2|0|1|0\n"
        "3|Too Few|01-Jan-1995\n"
        "4|Flags (1997)|01-Jan-1997|||0|2|0\n",
        encoding="latin-1",
    )
    _write(tmp_path / "u.user", "1|24|M|technician|85711\n2|old|F|other|94043\n")
    return tmp_path


def test_movielens_100k_malformed_rows_are_reported_and_good_rows_kept(tmp_path: Path) -> None:
    data = (
        "1\t1\t5\t100\n"  # good
        "1\t2\tx\t101\n"  # rating not a number
        "2\t1\t4\n"  # too few fields
        "\t1\t3\t102\n"  # empty user id
        "\n"  # blank: ignored, still counted as a line
        "2\t2\t3\tlater\n"  # timestamp not a number
        "3\t1\t2\t103\n"  # good
    )
    raw = load_movielens_100k(_ml100k_folder(tmp_path, data))
    assert raw.events["user_id"].tolist() == ["1", "3"]
    assert raw.events["event_id"].tolist() == ["u.data:1", "u.data:7"]
    assert _problems(raw) == [
        "u.data line 2: rating 'x' is not a number",
        "u.data line 3: expected 4 fields separated by '\\t', found 3",
        "u.data line 4: empty user id",
        "u.data line 6: timestamp 'later' is not a number",
        "u.item line 2: release date '1996-01-01' is not a date like 01-Jan-1995",
        "u.item line 3: expected 8 fields separated by '|', found 3",
        "u.item line 4: genre flags must be 0 or 1",
        "u.user line 2: age 'old' is not a number",
    ]
    assert raw.items["title"].tolist() == ["Café Noir (1995)"]  # Latin-1 decoded
    assert raw.items["categories"].tolist() == [["Action", "Comedy"]]
    assert raw.users["user_id"].tolist() == ["1"]


def test_problem_fields_and_text() -> None:
    p = ImportProblem(17, "rating 'x' is not a number", "u.data")
    assert (p.line, p.reason, p.source) == (17, "rating 'x' is not a number", "u.data")
    assert str(p) == "u.data line 17: rating 'x' is not a number"
    assert str(ImportProblem(3, "empty item id")) == "line 3: empty item id"


def test_all_rows_bad_raises_naming_file_and_first_problem(tmp_path: Path) -> None:
    folder = _ml100k_folder(tmp_path, "a,b,c\n1\t2\tx\t4\n")
    with pytest.raises(ValueError, match=r"u\.data: no valid row; first problem: u\.data line 1"):
        load_movielens_100k(folder)


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_movielens_100k(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"u\.data"):
        load_movielens_100k(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"events\.csv"):
        load_table(tmp_path / "events.csv")


def test_empty_events_file_raises(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "")
    with pytest.raises(ValueError, match="no events"):
        load_movielens_100k(tmp_path)


def test_windows_line_endings_and_metadata_files_optional(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t1\t5\t100\r\n2\t1\t4\t200\r\n")
    raw = load_movielens_100k(tmp_path)
    assert raw.events["timestamp"].tolist() == [100.0, 200.0]
    assert raw.items.empty and raw.users.empty and raw.problems == []


# ---------------------------------------------------------- MovieLens 1M/10M
def test_movielens_1m_layout(tmp_path: Path) -> None:
    _write(
        tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::x::978300761\n2::10::3::978300762\n"
    )
    _write(
        tmp_path / "movies.dat",
        "10::Pokémon the Movie (1999)::Animation|Children's\n"
        "20::Sans genre (2000)::(no genres listed)\n"
        "30::Broken\n",
        encoding="latin-1",
    )
    _write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::99::1\n")
    raw = load_movielens_1m(tmp_path)
    _check_schema(raw)
    assert raw.events["item_id"].tolist() == ["10", "10"]
    assert _problems(raw) == [
        "movies.dat line 3: expected 3 fields separated by '::', found 2",
        "ratings.dat line 2: rating 'x' is not a number",
        "users.dat line 3: occupation code 99 is not in 0..20",
    ]
    items = raw.items.set_index("item_id")
    assert items.loc["10"].title == "Pokémon the Movie (1999)"
    assert items.loc["10"].categories == ["Animation", "Children's"]
    assert items.loc["10"].created_at == pd.Timestamp("1999-01-01", tz="UTC").timestamp()
    assert items.loc["20"].categories == []
    users = raw.users.set_index("user_id")
    assert users.loc["1"].attributes == {
        "age": 1,
        "gender": "F",
        "occupation": "K-12 student",
        "zip": "48067",
    }


def test_movielens_10m_fractional_ratings_and_tags(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.dat", "1::10::4.5::1\n2::10::0.5::2\n")
    _write(tmp_path / "movies.dat", "10::Heat (1995)::Action|Crime\n")
    _write(tmp_path / "tags.dat", "1::10::heist::5\n2::10::heist::6\n2::10::Al Pacino::7\n")
    raw = load_movielens_10m(tmp_path)
    assert raw.events["value"].tolist() == [4.5, 0.5]
    assert len(raw.events) == 2  # tags are not events
    heat = raw.items.iloc[0]
    assert heat.attributes["tags"] == ["heist", "Al Pacino"]
    assert heat.text == "Heat (1995) Action Crime heist Al Pacino"


# ---------------------------------------------------------- MovieLens latest
def test_movielens_latest_csv_with_quotes_tags_and_links(tmp_path: Path) -> None:
    _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,four,964981247\n2,1,3.5,964982224\n",
    )
    _write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        '1,"American President, The (1995)",Comedy|Drama|Romance\n'
        '2,"A title\nover two lines (2001)",Drama\n'
        "3,Missing genres column (2002)\n"
        "4,Jumanji (1995),Adventure\n",
    )
    _write(
        tmp_path / "tags.csv", 'userId,movieId,tag,timestamp\n1,1,politics,1\n2,1,"funny, warm",2\n'
    )
    _write(tmp_path / "links.csv", "movieId,imdbId,tmdbId\n1,0112346,9087\n4,0113497,\n")
    raw = load_movielens_latest(tmp_path)
    _check_schema(raw)
    assert raw.events["event_id"].tolist() == ["ratings.csv:2", "ratings.csv:4"]
    # the quoted newline makes "3,Missing..." line 5 of movies.csv
    assert _problems(raw) == [
        "movies.csv line 5: expected 3 fields separated by ',', found 2",
        "ratings.csv line 3: rating 'four' is not a number",
    ]
    items = raw.items.set_index("item_id")
    assert items.loc["1"].title == "American President, The (1995)"
    assert items.loc["1"].attributes == {
        "tags": ["politics", "funny, warm"],
        "imdb_id": "0112346",
        "tmdb_id": "9087",
    }
    assert "politics" in items.loc["1"].text
    assert items.loc["4"].attributes == {"imdb_id": "0113497"}
    assert items.loc["2"].created_at == pd.Timestamp("2001-01-01", tz="UTC").timestamp()


def test_movielens_latest_wrong_header(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.csv", "user,item,rating,timestamp\n1,1,4,5\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['userId', 'movieId'\]"):
        load_movielens_latest(tmp_path)


# ------------------------------------------------------------- generic table
def test_csv_table_types_values_and_times(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "events.csv",
        "user_id,item_id,type,value,timestamp\n"
        "u1,a,view,,1600000000\n"  # epoch seconds
        "u1,b,PURCHASE,,2020-09-13T12:26:40Z\n"  # ISO string, upper-case type
        "u2,a,,4,2020-09-13 12:26:40\n"  # empty type: default (the table has values)
        "u2,b,like,,1600000000\n"  # unknown type
        "u3,a,rating,,1600000000\n"  # rating without value
        "u3,b,click,,yesterday\n"  # bad time
        "u3,c,click,,\n",  # empty time
    )
    raw = load_table(path)
    custom = load_table(path, event_types=["view", "like"])
    assert custom.events["type"].tolist() == ["view", "like"]
    _check_schema(raw)
    assert raw.events["type"].tolist() == ["view", "purchase", "rating"]
    assert raw.events["timestamp"].tolist() == [1_600_000_000.0, 1_600_000_000.0, 1_600_000_000.0]
    assert raw.events["value"].isna().tolist() == [True, True, False]
    assert _problems(raw) == [
        "events.csv line 5: unknown event type 'like'; accepted: "
        "['cart', 'click', 'dwell', 'purchase', 'rating', 'view']",
        "events.csv line 6: rating without a value",
        "events.csv line 7: timestamp 'yesterday' is not a number or an ISO date",
        "events.csv line 8: empty timestamp",
    ]


def test_csv_table_custom_mapping(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "log.tsv",
        "who\twhat\twhen\tid\n"
        "7\tx\t13/09/2020\te1\n"
        "8\ty\t14/09/2020\te2\n"
        "8\tz\t15/09/2020\te1\n",  # duplicate id
    )
    mapping = ColumnMapping(
        user="who",
        item="what",
        timestamp="when",
        event_id="id",
        time_format="%d/%m/%Y",
        sep="\t",
    )
    raw = load_table(path, mapping)
    assert raw.events["type"].tolist() == ["click", "click"]  # no value column
    assert raw.events["event_id"].tolist() == ["e1", "e2"]
    assert raw.events["timestamp"].iloc[0] == pd.Timestamp("2020-09-13", tz="UTC").timestamp()
    assert _problems(raw) == ["log.tsv line 4: duplicate event id 'e1'"]


def test_csv_table_with_byte_order_mark(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.csv", "\ufeffuser_id,item_id\n1,a\n", encoding="utf-8")
    quoted = _write(tmp_path / "bomq.csv", '\ufeffuser_id,item_id\n1,"a, b"\n', encoding="utf-8")
    assert load_table(path).events["user_id"].tolist() == ["1"]
    assert load_table(quoted).events["item_id"].tolist() == ["a, b"]


def test_csv_table_missing_user_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.csv", "user,item_id\n1,2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['user_id'\]; found"):
        load_table(path)


def test_parquet_table_with_datetimes_and_millis(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": ["a", "b", None],
            "timestamp": pd.to_datetime(["2020-09-13T12:26:40Z"] * 3),
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    raw = load_table(path)
    assert raw.events["user_id"].tolist() == ["1", "2"]
    assert raw.events["timestamp"].tolist() == [1_600_000_000.0] * 2
    assert _problems(raw) == ["events.parquet line 3: empty item id"]

    millis = pd.DataFrame({"u": ["1"], "i": ["a"], "t": [1_600_000_000_000]})
    millis.to_parquet(path)
    mapping = ColumnMapping(user="u", item="i", timestamp="t", time_unit="ms")
    assert load_table(path, mapping).events["timestamp"].tolist() == [1_600_000_000.0]


def test_column_mapping_is_a_validated_config() -> None:
    mapping = ColumnMapping(user="who", sep=";")
    assert ColumnMapping.from_toml(mapping.to_toml()) == mapping
    with pytest.raises(ConfigError, match="time_unit"):
        ColumnMapping(time_unit="days")


# ------------------------------------------------------------------ specs
def test_load_data_specs(tmp_path: Path, ml100k_path: Path) -> None:
    assert len(load_data(f"movielens-100k:{ml100k_path}").events) == 100_000
    csv_path = _write(tmp_path / "e.txt", "user_id,item_id\n1,a\n")
    assert load_data(f"csv:{csv_path}").events["type"].tolist() == ["click"]
    raw = load_data("synthetic:users=30,items=20,seed=3,with_ratings=true")
    assert raw.users["user_id"].nunique() == 30
    assert set(raw.events["type"]) == {"rating"}


def test_load_data_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"movielens-100k, movielens-1m, .*synthetic"):
        load_data(f"excel:{tmp_path}")
    with pytest.raises(ValueError, match="needs a path"):
        load_data("movielens-1m:")
    with pytest.raises(ValueError, match="bad synthetic option 'colour=red'"):
        load_data("synthetic:colour=red")
    with pytest.raises(ValueError, match="n_users: expected int, got 'many'"):
        load_data("synthetic:users=many")
