"""What an importer returns: the schema's frames and the rows it skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from sieve.data.dataset import Dataset
from sieve.data.schema import EventWeights, empty_items, empty_users


@dataclass(frozen=True)
class ImportProblem:
    """One malformed row: where it is (`source` file, 1-based `line`) and why.

    For Parquet tables `line` is the 1-based row number.
    """

    line: int
    reason: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source} line {self.line}" if self.source else f"line {self.line}"
        return f"{where}: {self.reason}"


@dataclass(eq=False)
class RawData:
    """Imported frames in the schema columns, before any indexing.

    `problems` lists every skipped row; callers decide whether to warn or fail.
    """

    events: pd.DataFrame
    items: pd.DataFrame = field(default_factory=empty_items)
    users: pd.DataFrame = field(default_factory=empty_users)
    problems: list[ImportProblem] = field(default_factory=list)

    def to_dataset(self, weights: EventWeights | None = None) -> Dataset:
        """Index the frames into a `Dataset` snapshot."""
        return Dataset.from_frames(self.events, self.items, self.users, weights=weights)

    def __repr__(self) -> str:
        return (
            f"RawData({len(self.events)} events, {len(self.items)} items, "
            f"{len(self.users)} users, {len(self.problems)} problems)"
        )


__all__ = ["ImportProblem", "RawData"]
