"""Session awareness: a new user's three clicks in one category shift their
very next recommendations toward it, without retraining."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

MakeClient = Callable[..., TestClient]


def _share(items: list[dict[str, Any]], category: str) -> float:
    return sum(category in i["categories"] for i in items) / max(len(items), 1)


def test_three_clicks_shift_the_next_list(serve: MakeClient, trained: Any) -> None:
    client = serve()
    user = "brand-new-user"
    before = client.get(f"/recommendations/{user}", params={"n": 10}).json()
    assert before["cold_start"] is True
    # the category least represented in the cold-start list, with enough items
    items = trained.raw.items
    counts = Counter(c for cats in items["categories"] for c in cats)
    shown = Counter(c for i in before["items"] for c in i["categories"])
    category = min((c for c, n in counts.items() if n >= 10), key=lambda c: (shown[c], c))
    in_cat = [
        i for i, cats in zip(items["item_id"], items["categories"], strict=True) if category in cats
    ][:3]
    events = [
        {"id": f"s{k}", "user_id": user, "item_id": it, "type": "click"}
        for k, it in enumerate(in_cat)
    ]
    assert client.post("/events", json={"events": events}).status_code in (200, 201)
    start = time.perf_counter()
    after = client.get(f"/recommendations/{user}", params={"n": 10}).json()
    assert time.perf_counter() - start < 1.0
    assert after["cold_start"] is False
    share_before, share_after = _share(before["items"], category), _share(after["items"], category)
    assert share_after >= share_before + 0.3, (category, share_before, share_after)
    # the list says why: something it was shown is explained by the clicks
    assert any(
        "you clicked" in i["explanation"] or category in i["explanation"] for i in after["items"]
    )
