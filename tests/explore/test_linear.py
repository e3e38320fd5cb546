"""LinUCB in serving: its A and b are exact sums in the cache that every
process adds to, it explores by context and learns from clicks, and as an
experiment's allocation it sends each request context to the arm that pays
there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from servers import REDIS_URL, redis_problem
from sieve.explore.bandits import LinUCB
from sieve.explore.linear import ContextualConfig, SharedLinUCB, item_contexts, request_context
from sieve.explore.slots import ExplorationSlots, linucb_key
from sieve.storage import Cache, MemoryCache, open_cache


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    shared = open_cache(f"{REDIS_URL}?prefix=sieve_linucb_test_{uuid.uuid4().hex}:")
    yield shared
    shared.clear_prefix("")
    shared.close()


def test_two_processes_add_up_to_the_in_process_model(cache: Cache) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    r = (rng.random(40) < 0.3).astype(float)
    local = LinUCB(alpha=0.7, dim=4, ridge=2.0)
    local.update_many(["a"] * 40, r, features=x)
    one = SharedLinUCB(cache, "lin", 4, 0.7, 2.0)
    two = SharedLinUCB(cache, "lin", 4, 0.7, 2.0)  # another process on the same cache
    for k in range(40):
        (one if k % 2 else two).observe(x[k])
        (two if k % 3 else one).reward(x[k], r[k])
    shared = SharedLinUCB(cache, "lin", 4, 0.7, 2.0).model()
    np.testing.assert_allclose(shared.A, local.A, atol=1e-9)
    np.testing.assert_allclose(shared.b, local.b, atol=1e-9)
    probe = rng.normal(size=(5, 4))
    np.testing.assert_allclose(shared.scores(probe), local.scores(probe), atol=1e-9)


def test_a_dead_cache_chooses_from_the_prior() -> None:
    class Dead(MemoryCache):
        def hash_get(self, key: str, fields: object) -> list[float | None]:
            from sieve.storage.cache import CacheError

            raise CacheError("down")

    model = SharedLinUCB(Dead(), "lin", 3, 1.0, 1.0).model()
    np.testing.assert_array_equal(model.A, np.eye(3))
    assert not model.b.any()


def test_exploration_learns_which_contexts_get_clicked(cache: Cache) -> None:
    """Pool items whose feature `good` is 1 get clicked: before learning the
    slots take the pool in order; after, they take the good items."""
    config = ContextualConfig(features=("good", "noise"), alpha=0.5)
    names = ["noise", "good"]
    ranked = [f"i{k}" for k in range(10)]
    good = {"i6", "i8", "i9"}
    rows = np.array([[k % 3, 1.0 if i in good else 0.0] for k, i in enumerate(ranked)])
    contexts = item_contexts(config, names, rows)
    slots = ExplorationSlots(cache)

    def fill() -> list[str]:
        out = slots.fill(ranked, 5, 3, "linucb", key=str, contexts=contexts, linucb=config)
        assert [p for _, p, _ in out] == [1.0] * 5  # a deterministic choice
        return [i for i, _, explored in out if explored]

    before = fill()
    for _ in range(30):
        for item in fill():
            if item in good:  # a click citing the request credits its context
                slots.credit_linear(linucb_key(config), contexts[ranked.index(item)], 1.0)
    assert set(before) != good
    assert set(fill()) == good
    model = slots.linear(config).model()
    theta = np.linalg.solve(model.A, model.b)
    assert theta[0] > 0.5 > abs(theta[1])  # learned on `good`, not on `noise`


def test_contexts_read_the_named_columns() -> None:
    config = ContextualConfig(features=("b", "missing"), request_features=("hour", "mobile"))
    x = item_contexts(config, ["a", "b"], np.array([[1.0, np.nan], [2.0, 3.0]]))
    np.testing.assert_array_equal(x, [[0.0, 0.0, 1.0], [3.0, 0.0, 1.0]])
    ctx = request_context(config, 6, 5, "mobile", 3)
    np.testing.assert_allclose(ctx, [0.0, 1.0, 1.0, 1.0], atol=1e-12)
    assert len(ctx) == config.request_dim
