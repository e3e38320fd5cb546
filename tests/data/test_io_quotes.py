"""CSV rows around an unclosed quote, and future timestamps, are reported by line (issue 9).

A quote left open made the csv module read every later line as one field: the
import reported one malformed row and silently dropped the rest of the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sieve.data.io import load_data
from sieve.data.movielens import load_movielens_100k
from sieve.data.tables import load_table

NOW = 1_700_000_000.0  # an injected clock: "now" for the future check


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _problems(raw: object) -> list[str]:
    return [str(p) for p in raw.problems]  # type: ignore[attr-defined]


def test_unclosed_quote_to_the_end_of_the_file(tmp_path: Path) -> None:
    rows = "\n".join(f"u{k},i{k},click" for k in range(4, 40))
    csv = _write(tmp_path / "ev.csv", f'user_id,item_id,type\nu1,i1,click\nu2,"i2,click\n{rows}\n')
    raw = load_table(csv)
    assert raw.events["user_id"].tolist() == ["u1", *(f"u{k}" for k in range(4, 40))]
    assert _problems(raw) == [
        'ev.csv line 3: a quote (") opened on this line is never closed: line skipped, '
        "reading resumes on the next one"
    ]
    assert raw.events["event_id"].iloc[1] == "ev.csv:4"  # line numbers stay exact


def test_unclosed_quote_closed_by_a_later_one(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "ev.csv",
        "user_id,item_id,type\n"
        "u1,i1,click\n"
        'u2,"i2,click\n'  # line 3: never closed on its line
        "u3,i3,click\n"
        'u4,"i4, with a comma",click\n'  # a well-formed quoted field
        'u5,"i5,view\n'  # line 6: open to the end of the file
        "u6,i6,click\n",
    )
    raw = load_table(csv)
    assert raw.events["user_id"].tolist() == ["u1", "u3", "u4", "u6"]
    assert raw.events["item_id"].tolist() == ["i1", "i3", "i4, with a comma", "i6"]
    assert [p.line for p in raw.problems] == [3, 6]


def test_doubled_quotes_and_quoted_newlines_in_titles_still_read(tmp_path: Path) -> None:
    csv = _write(tmp_path / "ev.csv", 'user_id,item_id,type\nu1,"say ""hi""",click\n')
    assert load_table(csv).events["item_id"].tolist() == ['say "hi"']


def test_many_unclosed_quotes_each_cost_one_line(tmp_path: Path) -> None:
    lines = [f'u{k},"i{k},click' if k % 2 else f"u{k},i{k},click" for k in range(2000)]
    csv = _write(tmp_path / "ev.csv", "user_id,item_id,type\n" + "\n".join(lines) + "\n")
    raw = load_table(csv)
    assert raw.events["user_id"].tolist() == [f"u{k}" for k in range(0, 2000, 2)]
    assert [p.line for p in raw.problems] == [k + 2 for k in range(1, 2000, 2)]


def test_future_timestamps_are_reported_by_line(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "ev.csv",
        "user_id,item_id,type,timestamp\n"
        f"u1,i1,click,{NOW - 10:.0f}\n"
        "u2,i2,click,9999-12-31T00:00:00Z\n"
        f"u3,i3,click,{NOW + 3600:.0f}\n",
    )
    raw = load_table(csv, latest=NOW + 300)
    assert raw.events["user_id"].tolist() == ["u1"]
    assert [p.line for p in raw.problems] == [3, 4]
    assert "9999-12-31" in raw.problems[0].reason and "future" in raw.problems[0].reason
    # through the CLI spec, and with a clock late enough nothing is in the future
    assert len(load_data(f"csv:{csv}", latest=NOW + 7200).events) == 2


def test_future_ratings_in_movielens_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    _write(folder / "u.data", f"1\t10\t4\t{NOW - 5:.0f}\n2\t20\t3\t{NOW + 10**6:.0f}\n")
    raw = load_movielens_100k(folder, latest=NOW)
    assert raw.events["user_id"].tolist() == ["1"]
    assert _problems(raw)[0].startswith("u.data line 2: timestamp 2023-")


@pytest.mark.parametrize("latest", [None])
def test_default_clock_accepts_the_past(tmp_path: Path, latest: float | None) -> None:
    csv = _write(tmp_path / "ev.csv", "user_id,item_id,timestamp\nu1,i1,1000\n")
    assert load_table(csv, latest=latest).problems == []
