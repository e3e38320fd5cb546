"""Adjacency-list interaction files: one user per line, then the user's items.

The format the graph-recommender benchmarks publish their fixed train/test
pairs in (Gowalla, Yelp2018, Amazon-Book: `train.txt`, `test.txt`):

    0 12 7 301
    1 5

Fields are separated by whitespace (spaces or tabs) or commas; a line with a
user and no item is a user without interactions there; blank lines and lines
starting with `#` are skipped. Each (user, item) is one "click" event; the
files carry no time, so every event gets the same timestamp (0) and time-based
splits are meaningless on them — they come with their own split.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sieve.data.raw import ImportProblem, RawData
from sieve.data.schema import EVENT_COLUMNS

_FIELDS = re.compile(r"[\s,]+")


def load_lists(path: Path) -> RawData:
    """Read an adjacency-list file (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    users: list[str] = []
    items: list[str] = []
    lines: list[int] = []
    problems: list[ImportProblem] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            user, *listed = _FIELDS.split(text)
            if not user:
                problems.append(ImportProblem(number, "no user id", path.name))
                continue
            users.extend([user] * len(listed))
            items.extend(listed)
            lines.extend([number] * len(listed))
    if not items:
        raise ValueError(f"{path}: no 'user item item …' line with an item in it")
    n = len(items)
    events = pd.DataFrame(
        {
            "event_id": pd.Series(
                [f"{path.name}:{ln}:{k}" for k, ln in enumerate(lines)], dtype="str"
            ),
            "user_id": pd.Series(users, dtype="str"),
            "item_id": pd.Series(items, dtype="str"),
            "type": pd.Series(["click"] * n, dtype="str"),
            "value": np.ones(n),
            "timestamp": np.zeros(n),
        }
    )
    return RawData(events=events[EVENT_COLUMNS], problems=problems)
