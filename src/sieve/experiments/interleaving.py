"""Team-draft interleaving: compare two rankers inside one result list.

Team draft (Radlinski, Kurup & Joachims, 2008): like captains picking
teams, the ranker with fewer picks so far (a fair coin on ties) adds its
highest-ranked item not yet in the list, until the list is full. Each slot
remembers its team. Every impression then yields one preference: the team
whose items got more clicks wins (equal clicks: tie). Each user compares both
rankers on the same request, so the between-user variance that dominates an
A/B test cancels out, and far fewer impressions are needed.

Aggregate test: among impressions with a winner, the share won by A is
Binomial(w, ½) under H₀ (no preference): exact two-sided sign test, with the
Clopper–Pearson interval of the preference share and
Δ_AB = (wins_A − wins_B)/(wins_A + wins_B + ties).

Per request, draw coins from `request_rng(request_id)` so an interleaving can
be reproduced from the logged request id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from sieve.evaluate.stats import Interval

__all__ = [
    "TEAM_A",
    "TEAM_B",
    "Interleaving",
    "InterleavingResult",
    "credit",
    "credit_many",
    "interleaving_test",
    "request_rng",
    "sign_test_pvalues",
    "team_draft",
    "team_draft_batch",
]

TEAM_A = 0
TEAM_B = 1


def request_rng(request_id: str, salt: str = "interleave") -> np.random.Generator:
    """A generator seeded by sha256(f"{salt}:{request_id}"): reproducible per request."""
    seed = int.from_bytes(hashlib.sha256(f"{salt}:{request_id}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class Interleaving:
    """An interleaved list and the team of each slot (TEAM_A = 0, TEAM_B = 1)."""

    items: list[Any]
    teams: NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.items)


def team_draft(
    a: Sequence[Hashable], b: Sequence[Hashable], rng: np.random.Generator, k: int | None = None
) -> Interleaving:
    """Team-draft interleaving of rankings ``a`` and ``b`` into at most ``k`` items
    (default: as many distinct items as the two lists hold)."""
    if k is None:
        k = len(set(a) | set(b))
    items: list[Any] = []
    teams: list[int] = []
    seen: set[Hashable] = set()
    pa = pb = 0
    count_a = count_b = 0
    while len(items) < k:
        while pa < len(a) and a[pa] in seen:
            pa += 1
        while pb < len(b) and b[pb] in seen:
            pb += 1
        a_left, b_left = pa < len(a), pb < len(b)
        if not (a_left or b_left):
            break
        if a_left and b_left:
            pick_a = count_a < count_b or (count_a == count_b and rng.random() < 0.5)
        else:
            pick_a = a_left
        item = a[pa] if pick_a else b[pb]
        items.append(item)
        seen.add(item)
        teams.append(TEAM_A if pick_a else TEAM_B)
        if pick_a:
            count_a += 1
        else:
            count_b += 1
    return Interleaving(items, np.asarray(teams, dtype=np.int8))


def team_draft_batch(
    a: ArrayLike, b: ArrayLike, rng: np.random.Generator, k: int
) -> tuple[NDArray[np.int64], NDArray[np.int8]]:
    """Team draft of many requests at once (for simulations).

    ``a`` and ``b``: (n, L) integer rankings with ids in [0, m) (e.g. positions
    in each request's candidate pool). Returns items (n, k) and teams (n, k);
    slots left empty when both lists run out hold −1.
    """
    aa = np.asarray(a, dtype=np.int64)
    bb = np.asarray(b, dtype=np.int64)
    if aa.ndim != 2 or bb.ndim != 2 or aa.shape[0] != bb.shape[0]:
        raise ValueError("a and b must be (n, L) arrays with the same number of rows")
    n = aa.shape[0]
    m = int(max(aa.max(initial=-1), bb.max(initial=-1))) + 1
    if min(aa.min(initial=0), bb.min(initial=0)) < 0:
        raise ValueError("item ids must be non-negative")
    used = np.zeros((n, max(m, 1)), dtype=bool)
    rows = np.arange(n)
    pa = np.zeros(n, dtype=np.int64)
    pb = np.zeros(n, dtype=np.int64)
    count_a = np.zeros(n, dtype=np.int64)
    count_b = np.zeros(n, dtype=np.int64)
    items = np.full((n, k), -1, dtype=np.int64)
    teams = np.full((n, k), -1, dtype=np.int8)
    for slot in range(k):
        pa = _advance(aa, pa, used, rows)
        pb = _advance(bb, pb, used, rows)
        a_left, b_left = pa < aa.shape[1], pb < bb.shape[1]
        coin = rng.random(n) < 0.5
        pick_a = (count_a < count_b) | ((count_a == count_b) & coin)
        pick_a = np.where(a_left & b_left, pick_a, a_left)
        live = a_left | b_left
        ia = aa[rows, np.minimum(pa, aa.shape[1] - 1)]
        ib = bb[rows, np.minimum(pb, bb.shape[1] - 1)]
        item = np.where(pick_a, ia, ib)
        items[live, slot] = item[live]
        teams[live, slot] = np.where(pick_a[live], TEAM_A, TEAM_B)
        used[rows[live], item[live]] = True
        count_a += pick_a & live
        count_b += ~pick_a & live
    return items, teams


def _advance(
    lists: NDArray[np.int64], ptr: NDArray[np.int64], used: NDArray[np.bool_], rows: NDArray[Any]
) -> NDArray[np.int64]:
    """Move each pointer past items already placed."""
    length = lists.shape[1]
    while True:
        valid = ptr < length
        blocked = np.zeros_like(valid)
        r = rows[valid]
        blocked[valid] = used[r, lists[r, ptr[valid]]]
        if not blocked.any():
            return ptr
        ptr = ptr + blocked


def credit(teams: ArrayLike, clicks: ArrayLike) -> int:
    """+1 if team A's slots got more clicks, −1 if team B's did, 0 on a tie."""
    out = credit_many(np.asarray(teams)[None, :], np.asarray(clicks)[None, :])
    return int(out[0])


def credit_many(teams: ArrayLike, clicks: ArrayLike) -> NDArray[np.int8]:
    """Per impression (rows): sign(clicks on A slots − clicks on B slots)."""
    t = np.asarray(teams)
    c = np.asarray(clicks, dtype=np.float64)
    if t.shape != c.shape:
        raise ValueError(f"teams and clicks must have the same shape ({t.shape} != {c.shape})")
    diff = (c * (t == TEAM_A)).sum(axis=-1) - (c * (t == TEAM_B)).sum(axis=-1)
    return np.sign(diff).astype(np.int8)


def sign_test_pvalues(wins_a: ArrayLike, wins_b: ArrayLike) -> NDArray[np.float64]:
    """Vectorised exact two-sided sign test: min(1, 2·P(Bin(w, ½) ≤ min(w_A, w_B)))."""
    wa = np.asarray(wins_a, dtype=np.int64)
    wb = np.asarray(wins_b, dtype=np.int64)
    p = 2.0 * scipy.stats.binom.cdf(np.minimum(wa, wb), wa + wb, 0.5)
    return np.asarray(np.minimum(1.0, np.where(wa + wb > 0, p, 1.0)), dtype=np.float64)


@dataclass(frozen=True)
class InterleavingResult:
    """Aggregate of many interleaved impressions.

    ``preference``: share of decided impressions won by A with its Clopper–Pearson
    interval; ``delta``: (wins_A − wins_B)/impressions; ``winner``: "A", "B" or
    None (not significant at ``alpha``).
    """

    wins_a: int
    wins_b: int
    ties: int
    preference: Interval
    delta: float
    p_value: float
    winner: str | None


def interleaving_test(
    outcomes: ArrayLike, alpha: float = 0.05, confidence: float = 0.95
) -> InterleavingResult:
    """Sign test on per-impression outcomes (+1 A wins, −1 B wins, 0 tie)."""
    o = np.asarray(outcomes).ravel()
    wa, wb = int((o > 0).sum()), int((o < 0).sum())
    ties = int(o.size - wa - wb)
    decided = wa + wb
    if decided == 0:
        pref = Interval(0.5, 0.0, 1.0)
        p = 1.0
    else:
        res = scipy.stats.binomtest(wa, decided, 0.5)
        ci = res.proportion_ci(confidence_level=confidence)
        pref = Interval(wa / decided, float(ci.low), float(ci.high))
        p = float(res.pvalue)
    winner = None if p >= alpha else ("A" if wa > wb else "B")
    delta = (wa - wb) / o.size if o.size else 0.0
    return InterleavingResult(wa, wb, ties, pref, delta, p, winner)
