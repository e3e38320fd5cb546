"""Events and the users they create in one transaction (SQLite and a real PostgreSQL).

`POST /events` creates unknown users; done in a transaction of its own, a batch
that then failed left its users behind, so the batch was not atomic.
`append_events(..., create_users=True)` does both in one transaction.
"""

from __future__ import annotations

import pytest

from sieve.data.records import Event, User
from sieve.storage import SQLStore, StoreError


def ev(id_: str, user: str, item: str = "i1") -> Event:
    return Event(id=id_, user_id=user, item_id=item, type="click")


def test_failed_batch_leaves_no_user_behind(store: SQLStore) -> None:
    store.upsert_users([User(id="known", attributes={"plan": "pro"})])
    store.append_events([ev("old", "known")])
    # a row the database refuses (item_id NULL) fails the whole batch
    bad = Event.model_construct(id="bad", user_id="new-b", item_id=None, type="click")
    with pytest.raises(StoreError):
        store.append_events([ev("e1", "new-a"), bad], create_users=True)
    assert store.get_user("new-a") is None and store.get_user("new-b") is None
    assert store.count_users() == 1 and store.count_events() == 1
    # the same batch without the bad row goes in with its user
    result = store.append_events([ev("e1", "new-a"), ev("e2", "known")], create_users=True)
    assert result.inserted == 2 and result.created_users == ["new-a"]
    assert store.get_user("new-a") == User(id="new-a")
    assert store.get_user("known") == User(id="known", attributes={"plan": "pro"})  # untouched


def test_create_users_is_idempotent_and_off_by_default(store: SQLStore) -> None:
    assert store.append_events([ev("e1", "u1")]).created_users == []
    assert store.get_user("u1") is None  # default: the log only
    again = store.append_events([ev("e1", "u1"), ev("e2", "u2")], create_users=True)
    assert again.inserted == 1 and again.duplicates == ["e1"]
    assert again.created_users == ["u1", "u2"]
    assert store.append_events([ev("e3", "u2")], create_users=True).created_users == []
    assert store.count_users() == 2


def test_many_new_users_in_one_batch(store: SQLStore) -> None:
    """More users than one IN-list chunk (1000) are all created."""
    events = [ev(f"e{k}", f"u{k:05d}") for k in range(2500)]
    result = store.append_events(events, create_users=True)
    assert result.inserted == 2500 and len(result.created_users) == 2500
    assert store.count_users() == 2500
