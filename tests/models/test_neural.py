"""The neural models beyond the shared contract: seeded fits are
reproducible, the towers read what they claim to read (item text, user
attributes, the order of a session), and PyTorch is needed only to train."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sieve.data.dataset import Dataset
from sieve.models.neural.common import row_sequence, user_sequences
from sieve.models.neural.two_tower import attribute_tokens, user_attributes

from .test_contract import DATA, GROUP_A_ITEM, GROUP_A_USER, HAS_TORCH

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the neural extra (PyTorch)")
TT = {"dim": 16, "hidden": 16, "epochs": 15, "batch_size": 128, "learning_rate": 0.01}
SR = {"dim": 16, "blocks": 1, "max_len": 20, "epochs": 30, "batch_size": 40, "learning_rate": 0.01}


def _events(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ev["type"] = "click"
    ev["value"] = np.nan
    ev["event_id"] = [f"e{k}" for k in range(len(ev))]
    return ev


def test_user_sequences_are_time_ordered_deduplicated_and_cut() -> None:
    ev = _events(
        [
            ("u1", "c", 30.0),
            ("u1", "a", 10.0),
            ("u1", "b", 20.0),
            ("u1", "a", 40.0),  # a again: it counts at its latest time
            ("u2", "b", 5.0),
        ]
    )
    ds = Dataset.from_frames(ev)
    a, b, c = (int(np.flatnonzero(ds.item_ids == x)[0]) for x in "abc")
    seqs = user_sequences(ds, 10)
    assert seqs[0].tolist() == [b, c, a]
    assert seqs[1].tolist() == [b]
    assert user_sequences(ds, 2)[0].tolist() == [c, a]
    # a row ordered by its values (times) gives the same sequence
    assert row_sequence(ds.last_time[0], 10).tolist() == [b, c, a]


def test_attribute_tokens_bucket_numbers_and_keep_frequent_ones() -> None:
    toks = attribute_tokens({"age": 24, "gender": "F", "tags": ["x", "y"], "n": float("nan")})
    assert toks == ["age~4", "gender=f", "tags=x", "tags=y"]
    vocab, m = user_attributes([{"g": "a"}, {"g": "a"}, {"g": "b"}, {}, "not a dict"], min_count=2)
    assert vocab.tolist() == ["g=a"]
    assert m.shape == (5, 1)
    np.testing.assert_allclose(m.toarray().ravel(), [1, 1, 0, 0, 0])


@needs_torch
def test_seeded_fits_are_identical() -> None:
    from sieve.models.neural.sasrec import SASRec
    from sieve.models.neural.two_tower import TwoTower

    a, b = TwoTower(**TT).fit(DATA), TwoTower(**TT).fit(DATA)
    np.testing.assert_array_equal(a.state.item_vectors, b.state.item_vectors)
    c, d = SASRec(**SR).fit(DATA), SASRec(**SR).fit(DATA)
    np.testing.assert_array_equal(c.state.user_vectors, d.state.user_vectors)
    other = TwoTower(**TT, seed=7).fit(DATA)
    assert not np.array_equal(a.state.item_vectors, other.state.item_vectors)


def _with_cold_item() -> tuple[Dataset, int]:
    """The contract data plus one group-A item nobody interacted with."""
    items = DATA.items.reset_index(drop=True).copy()
    cold = dict(items.iloc[0])
    cold.update(item_id="ai99", title="Space saga 99")
    items = pd.concat([items, pd.DataFrame([cold])], ignore_index=True)
    ev = DATA.events[list(DATA.events.columns[:6])]
    ds = Dataset.from_frames(ev, items, weights=DATA.weights)
    return ds, int(np.flatnonzero(ds.item_ids == "ai99")[0])


@needs_torch
def test_two_tower_places_an_item_without_interactions_by_its_text() -> None:
    from sieve.models.neural.two_tower import TwoTower

    ds, cold = _with_cold_item()
    model = TwoTower(**TT).fit(ds)
    group_a = np.array([str(i).startswith("a") for i in ds.item_ids])
    sims = model.similar_items(cold, n=5)
    assert group_a[sims.items].all()
    # group-A users score it above every group-B item, group-B users below
    users = np.arange(ds.n_users)
    scores = model.score_batch(users, ds.matrix)
    a_users = np.array([str(u).startswith("a") for u in ds.user_ids])
    best_b = scores[:, ~group_a].max(axis=1)
    assert (scores[a_users, cold] > best_b[a_users]).mean() >= 0.9
    assert (scores[~a_users, cold] < best_b[~a_users]).all()


@needs_torch
def test_two_tower_reads_user_attributes() -> None:
    """Users with no history: a known user's attributes steer the list."""
    from sieve.models.neural.two_tower import TwoTower

    users = DATA.users.reset_index(drop=True).copy()
    users["attributes"] = [{"side": "a" if g else "b"} for g in GROUP_A_USER]
    ev = DATA.events[list(DATA.events.columns[:6])]
    ds = Dataset.from_frames(ev, DATA.items, users, weights=DATA.weights)
    model = TwoTower(**TT).fit(ds)
    empty = sp.csr_matrix((ds.n_users, ds.n_items), dtype=np.float32)
    top = model.recommend_batch(np.arange(ds.n_users), empty, 3)
    a_users = np.array([str(u).startswith("a") for u in ds.user_ids])
    a_items = np.array([str(i).startswith("a") for i in ds.item_ids])
    hits = [np.mean(a_items[top.items[u]] == a_users[u]) for u in range(ds.n_users)]
    assert np.mean(hits) >= 0.9
    # an unknown user with no history has no attributes: one list for all
    anon = model.recommend_batch(np.full(3, -1), empty[:3], 3)
    assert (anon.items == anon.items[0]).all()


@needs_torch
def test_sasrec_follows_the_order_of_the_session() -> None:
    """The same items, in two orders: the latest ones lead the next item."""
    from sieve.models.neural.sasrec import SASRec

    model = SASRec(**SR).fit(DATA)
    a_items = np.flatnonzero(GROUP_A_ITEM)[:6]
    b_items = np.flatnonzero(~GROUP_A_ITEM)[:6]
    seqs = [np.concatenate([a_items, b_items]), np.concatenate([b_items, a_items])]
    scores = model.sequence_scores(seqs)
    assert scores[0, ~GROUP_A_ITEM].mean() > scores[0, GROUP_A_ITEM].mean()
    assert scores[1, GROUP_A_ITEM].mean() > scores[1, ~GROUP_A_ITEM].mean()
    # a row whose values are times is read in that order
    row = sp.csr_matrix(
        (np.arange(1.0, 13.0), (np.zeros(12, int), seqs[1])), shape=(1, DATA.n_items)
    )
    np.testing.assert_allclose(model.score_batch(np.array([-1]), row)[0], scores[1], rtol=1e-5)
    with pytest.raises(IndexError):
        model.sequence_scores([np.array([DATA.n_items])])


@needs_torch
def test_scoring_a_saved_two_tower_needs_no_torch(tmp_path: Path) -> None:
    from sieve.models.neural.two_tower import TwoTower

    model = TwoTower(**TT).fit(DATA)
    path = model.save(tmp_path / "tt")
    expected = model.recommend_batch(np.array([0, -1]), DATA.matrix[[0, 1]], 5).items
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("no torch here")

        sys.meta_path.insert(0, NoTorch())  # any import of torch now fails
        import numpy as np, scipy.sparse as sp
        from sieve.models.base import Recommender
        m = Recommender.load({str(path)!r})
        rows = sp.load_npz({str(tmp_path / "rows.npz")!r})
        print(m.recommend_batch(np.array([0, -1]), rows, 5).items.tolist())
        assert "torch" not in sys.modules
        """
    )
    sp.save_npz(tmp_path / "rows.npz", sp.csr_matrix(DATA.matrix[[0, 1]]))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == str(expected.tolist())


def test_importing_the_models_does_not_import_torch() -> None:
    script = (
        "import sys, sieve, sieve.models.base, sieve.models.neural.two_tower, "
        "sieve.models.neural.sasrec; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
