"""Team-draft interleaving: properties, credit assignment, the aggregate test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from sieve.experiments.interleaving import (
    TEAM_A,
    TEAM_B,
    credit,
    credit_many,
    interleaving_test,
    request_rng,
    sign_test_pvalues,
    team_draft,
    team_draft_batch,
)


def _check(items: list[object], teams: np.ndarray, a: list[object], b: list[object]) -> None:
    assert len(items) == len(set(items)), "duplicates"
    n_a, n_b = int((teams == TEAM_A).sum()), int((teams == TEAM_B).sum())
    assert abs(n_a - n_b) <= 1, (n_a, n_b)
    for team, ranking in ((TEAM_A, a), (TEAM_B, b)):
        picked = [it for it, t in zip(items, teams, strict=True) if t == team]
        positions = [ranking.index(it) for it in picked]
        assert positions == sorted(positions), "a team's items must keep its list's order"


def test_team_draft_properties() -> None:
    rng = np.random.default_rng(0)
    first_a = 0
    for _ in range(500):
        pool = [f"i{k}" for k in range(40)]
        a = list(rng.permutation(pool)[:20])
        b = list(rng.permutation(pool)[:20])
        out = team_draft(a, b, rng, k=10)
        assert len(out) == 10
        _check(out.items, out.teams, a, b)
        # every item comes from the list of its team, and it was that team's best left
        for it, t in zip(out.items, out.teams, strict=True):
            assert it in (a if t == TEAM_A else b)
        first_a += int(out.teams[0] == TEAM_A)
    assert 0.42 < first_a / 500 < 0.58  # the coin decides who starts


def test_identical_lists_give_the_same_list() -> None:
    a = list("abcdefgh")
    out = team_draft(a, a, np.random.default_rng(1), k=8)
    assert out.items == a


def test_short_lists_and_default_length() -> None:
    out = team_draft(["x", "y"], ["y", "z", "w"], np.random.default_rng(2))
    assert sorted(out.items) == ["w", "x", "y", "z"]


def test_request_rng_is_reproducible() -> None:
    a, b = list("abcdefghij"), list("jihgfedcba")
    one = team_draft(a, b, request_rng("req-42"), k=6)
    two = team_draft(a, b, request_rng("req-42"), k=6)
    assert one.items == two.items and np.array_equal(one.teams, two.teams)


def test_batch_team_draft_properties_and_agreement() -> None:
    rng = np.random.default_rng(3)
    n, m = 4000, 30
    a = np.argsort(rng.random((n, m)), axis=1)
    b = np.argsort(rng.random((n, m)), axis=1)
    items, teams = team_draft_batch(a, b, rng, k=10)
    assert items.shape == (n, 10) and np.all(items >= 0)
    for r in range(200):
        _check(list(items[r]), teams[r], list(a[r]), list(b[r]))
    assert np.mean(teams == TEAM_A) == pytest.approx(0.5, abs=0.01)
    # same distribution as the scalar version: how often A's top item is in slot 0
    scalar = np.mean(
        [team_draft(list(a[r]), list(b[r]), rng, k=10).items[0] == a[r, 0] for r in range(n)]
    )
    assert np.mean(items[:, 0] == a[:, 0]) == pytest.approx(scalar, abs=0.04)


def test_credit_assignment() -> None:
    teams = np.array([TEAM_A, TEAM_B, TEAM_A, TEAM_B])
    assert credit(teams, [1, 0, 0, 0]) == 1
    assert credit(teams, [1, 1, 0, 1]) == -1
    assert credit(teams, [0, 0, 0, 0]) == 0
    assert credit(teams, [1, 1, 0, 0]) == 0
    out = credit_many(np.stack([teams, teams]), np.array([[0, 1, 0, 0], [1, 0, 1, 0]]))
    assert out.tolist() == [-1, 1]


def test_aggregate_sign_test() -> None:
    outcomes = np.array([1] * 70 + [-1] * 40 + [0] * 90)
    res = interleaving_test(outcomes)
    ref = scipy.stats.binomtest(70, 110, 0.5)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert (res.wins_a, res.wins_b, res.ties) == (70, 40, 90)
    assert res.preference.mean == pytest.approx(70 / 110)
    assert res.preference.low < 70 / 110 < res.preference.high
    assert res.delta == pytest.approx(30 / 200)
    assert res.winner == "A"
    assert sign_test_pvalues([70, 5], [40, 5]).tolist() == pytest.approx([ref.pvalue, 1.0])
    assert interleaving_test([0, 0]).winner is None
