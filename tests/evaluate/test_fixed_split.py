"""Data sets that ship a fixed train/test pair: `--data … --test-data …`,
in the adjacency-list format of the graph-recommender benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.data.io import load_data
from sieve.data.split import fixed_split


def _write(tmp_path: Path) -> tuple[Path, Path]:
    """Two taste groups (users 0-19 like items 0-9, users 20-39 items 10-19):
    each user has 6 of the group's items in training and 2 others in test;
    item 99 and user 40 only appear in the test file."""
    rng = np.random.default_rng(3)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    tr, te = ["# header comment\n"], []
    for u in range(40):
        liked = (u // 20) * 10 + rng.permutation(10)[:8]
        tr.append(f"{u} " + " ".join(map(str, liked[:6])) + "\n")
        te.append(f"{u}\t{liked[6]},{liked[7]}\n")
    train.write_text("".join(tr) + "\n")
    test.write_text("".join(te) + "0 99\n40 3\n")
    return train, test


def test_lists_files_make_one_snapshot_and_the_given_split(tmp_path: Path) -> None:
    train, test = _write(tmp_path)
    raw = load_data(f"lists:{train}")
    assert len(raw.events) == 240 and set(raw.events["type"]) == {"click"}
    ds, split = fixed_split(raw, load_data(f"lists:{test}"))
    assert ds.n_users == 41 and "99" in ds.item_ids.tolist()
    assert split.train.matrix.nnz == 240 and split.test.matrix.nnz == 82
    item99 = ds.item_ids.tolist().index("99")
    assert split.train.matrix[:, item99].nnz == 0 and split.test.matrix[:, item99].nnz == 1
    assert np.array_equal(split.history.toarray(), split.train.matrix.toarray())


def test_evaluate_on_a_fixed_test_set(tmp_path: Path) -> None:
    train, test = _write(tmp_path)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--data", f"lists:{train}", "--test-data", f"lists:{test}",
            "--models", "popular,itemknn", "--in-process", "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["settings"]["split"] == "fixed test set" and data["n_test_users"] == 41
    # the group structure is learnable: item-kNN beats popularity on the given test set
    knn = data["models"]["itemknn"]["metrics"]["ndcg@10"]["mean"]
    assert knn > data["models"]["popular"]["metrics"]["ndcg@10"]["mean"]


def test_a_lists_file_without_items_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "e.txt"
    empty.write_text("1\n2\n")
    with pytest.raises(ValueError, match="no 'user item"):
        load_data(f"lists:{empty}")
