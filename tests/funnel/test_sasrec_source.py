"""The funnel's SASRec session source (`sources.sasrec`): on sequences whose
next item follows from the last ones (users walk a cycle of items), it
proposes the right next item for a session, its rank and score reach the
ranker, and a funnel configured with it trains, saves, loads and serves
through the ordinary path; without PyTorch only the option fails, saying
how to install it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sieve.data.dataset import Dataset
from sieve.pipeline import Funnel, FunnelConfig
from sieve.ranking.features import FEATURE_NAMES, candidate_features
from sieve.retrieval.personal import session_sequence
from sieve.types import Query

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs the neural extra (PyTorch)"
)

N_ITEMS, N_USERS, LENGTH = 20, 120, 8
SMALL = {
    "als": {"num_threads": 1, "factors": 8},
    "itemknn": {"num_threads": 1},
    "ranker": {
        "num_threads": 1,
        "n_estimators": 20,
        "min_child_samples": 5,
        "max_folds": 2,
        "holdout": "temporal",
    },
}
CONFIG = FunnelConfig.from_dict(
    {
        **SMALL,
        "sources": {"sasrec": 20, "ease": 0},
        "sasrec": {
            "dim": 16,
            "blocks": 1,
            "max_len": 10,
            "epochs": 25,
            "batch_size": 32,
            "learning_rate": 0.01,
            "dropout": 0.1,
        },
    }
)


def cyclic() -> Dataset:
    """User u clicks LENGTH consecutive items of a cycle of N_ITEMS, from a
    seeded start, one a minute: after item j comes j + 1 (mod N_ITEMS)."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(N_USERS):
        start = int(rng.integers(N_ITEMS))
        for t in range(LENGTH):
            rows.append((f"u{u}", f"i{(start + t) % N_ITEMS:02d}", 1_000.0 + 60.0 * t))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ev["type"] = "click"
    ev["value"] = np.nan
    ev["event_id"] = [f"e{k}" for k in range(len(ev))]
    return Dataset.from_frames(ev)


@cache
def data() -> Dataset:
    return cyclic()


@cache
def fitted() -> Funnel:
    return Funnel(CONFIG).fit(data())


def index(j: int) -> int:
    return int(np.flatnonzero(data().item_ids == f"i{j % N_ITEMS:02d}")[0])


def session(start: int, length: int = 3) -> Query:
    """A new visitor's session: items start … start+length-1, latest first."""
    recent = tuple(index(start + t) for t in reversed(range(length)))
    return Query(recent=recent, recent_types=("click",) * length, n=5)


def test_session_sequence_is_oldest_first_positive_and_deduplicated() -> None:
    recent = np.array([3, 5, 3, 6, 9, 2])  # latest first; 3 twice, 6 only viewed
    types = ("click", "click", "click", "view", "")  # the last event has no type
    seq = session_sequence(recent, types, {"click": 1.0, "view": 0.0}, n_items=8)
    assert seq.tolist() == [2, 5, 3]  # 9 is outside the model, 6 not positive


@needs_torch
def test_the_source_proposes_the_next_item_of_the_session() -> None:
    engine = fitted().state.engine
    assert engine.sasrec is not None
    for start in range(0, N_ITEMS, 3):
        req = engine.request(session(start))
        (proposal,) = (p for p in engine.propose(req) if p.source == "sasrec")
        # the session's items are seen: the first unseen proposal is the next one
        unseen = proposal.items[~np.isin(proposal.items, req.seen)]
        assert unseen[0] == index(start + 3)


@needs_torch
def test_the_ranker_reads_the_source_rank_and_score() -> None:
    funnel = fitted()
    engine = funnel.state.engine
    req = engine.request(session(4))
    cands = engine.candidates(req)
    x = candidate_features(engine, req, cands)
    nxt = int(np.flatnonzero(cands.items == index(7))[0])
    rank = x[:, FEATURE_NAMES.index("src_sasrec_rank")]
    pct = x[:, FEATURE_NAMES.index("sasrec_pct")]
    assert rank[nxt] == 1 and pct[nxt] == 0  # its first proposal, its best score
    assert funnel.state.ranker is not None
    assert "src_sasrec_rank" in funnel.state.ranker.feature_names


@needs_torch
def test_a_sasrec_funnel_saves_loads_and_serves(tmp_path: Path) -> None:
    funnel = fitted()
    loaded = Funnel.load(funnel.save(tmp_path / "f"))
    assert loaded.state.engine.sasrec is not None
    for start in (0, 11):
        a = funnel.recommend_query(session(start), explain=True)
        b = loaded.recommend_query(session(start), explain=True)
        assert [r.item for r in a] == [r.item for r in b]
        assert a[0].item == index(start + 3)  # served first: the next item
        assert "sasrec" in a[0].sources
    # a known user through the offline path: their events give the session
    top = loaded.recommend_batch(np.array([0]), data().matrix[[0]], 3)
    assert top.items[0, 0] >= 0


def test_without_torch_the_funnel_works_and_the_option_says_what_to_install(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("no torch here")

        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_sasrec_source import SMALL, cyclic  # imports no torch
        from sieve.pipeline import Funnel, FunnelConfig
        from sieve.types import Query

        sys.meta_path.insert(0, NoTorch())  # any import of torch now fails

        data = cyclic()
        funnel = Funnel(FunnelConfig.from_dict(SMALL)).fit(data)
        assert funnel.recommend_query(Query(recent=(0, 1), n=3))
        try:
            Funnel(FunnelConfig.from_dict({{**SMALL, "sources": {{"sasrec": 5}}}})).fit(data)
        except ImportError as e:
            print(e)
        assert "torch" not in sys.modules
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert "pip install 'sieve[neural]'" in out.stdout
