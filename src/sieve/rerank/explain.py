"""Explanations: one human-readable reason per served item.

The reason comes from the candidate's source memory, most personal source
first:

- continuation: "still in your cart" (a cart event), "you bookmarked it",
  else "pick up where you left off";
- user-to-user: "people like you chose it recently";
- item-to-item: "similar to <title> you clicked" (the anchor item and its
  event type from the session) or "… you liked" (an anchor from the history);
- ALS / EASE: "people with similar taste liked it";
- content: "matches your interest in <category>" (the item's category the
  user engages with most);
- trending: "trending in <category>" (the requested category, else the
  item's first); popular: "popular right now"; fresh: "new in <category>".
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sieve.retrieval.candidates import SOURCES, Candidates, Request
from sieve.retrieval.sources import CandidateEngine

#: Past-tense phrases of event types, for "similar to X you <verb>".
VERBS: dict[str, str] = {
    "view": "viewed",
    "click": "clicked",
    "cart": "added to your cart",
    "purchase": "bought",
    "rating": "rated",
}
POPULAR = "popular right now"
SIMILAR_TASTE = "people with similar taste liked it"
SIMILAR_USERS = "people like you chose it recently"
NEXT_IN_SESSION = "often chosen next after your latest picks"
#: Why an item came back, by the strongest event type the user left it at.
COMEBACK: dict[str, str] = {"cart": "still in your cart", "bookmark": "you bookmarked it"}
LEFT_OFF = "pick up where you left off"


def explain(
    engine: CandidateEngine, req: Request, cands: Candidates, positions: NDArray[np.int64]
) -> list[str]:
    """The explanation of each listed candidate (positions into `cands`)."""
    col = {s: k for k, s in enumerate(SOURCES)}
    recent = [int(i) for i in req.query.recent]
    out: list[str] = []
    # plain lists once, not numpy scalars per item
    proposed_by = ~np.isnan(cands.ranks[positions])
    block = proposed_by.tolist()
    listed = cands.items[positions]
    items = listed.tolist()
    # the anchors of the listed item-to-item proposals only (not every candidate's)
    anchors = [-1] * len(items)
    i2i = np.flatnonzero(proposed_by[:, col["item_to_item"]])
    if len(i2i):
        for k, a in zip(i2i.tolist(), engine.best_anchors(req, listed[i2i]).tolist(), strict=True):
            anchors[k] = a
    for proposed, item, anchor in zip(block, items, anchors, strict=True):
        if proposed[col["continuation"]]:
            kinds = {t for i, t in zip(recent, req.query.recent_types, strict=False) if i == item}
            out.append(next((COMEBACK[t] for t in COMEBACK if t in kinds), LEFT_OFF))
        elif proposed[col["user_to_user"]]:
            out.append(SIMILAR_USERS)
        elif proposed[col["item_to_item"]] and anchor >= 0:
            out.append(_similar_to(engine, req, anchor, recent))
        elif proposed[col["sasrec"]]:
            out.append(NEXT_IN_SESSION)
        elif proposed[col["ann"]] or proposed[col["ease"]]:
            out.append(SIMILAR_TASTE)
        elif proposed[col["content"]]:
            category = _favourite_category(engine, req, item)
            out.append(
                f"matches your interest in {category}" if category else "matches your interests"
            )
        elif proposed[col["trending"]]:
            category = _shown_category(engine, req, item)
            out.append(f"trending in {category}" if category else "trending now")
        elif proposed[col["fresh"]]:
            category = _shown_category(engine, req, item)
            out.append(f"new in {category}" if category else "new arrival")
        else:
            out.append(POPULAR)
    return out


def _similar_to(engine: CandidateEngine, req: Request, anchor: int, recent: list[int]) -> str:
    title = str(engine.catalog.titles[anchor]) or str(engine.catalog.item_ids[anchor])
    if anchor in recent:
        k = recent.index(anchor)
        kind = req.query.recent_types[k] if k < len(req.query.recent_types) else ""
        return f"similar to {title} you {VERBS.get(kind, 'viewed')}"
    return f"similar to {title} you liked"


def _favourite_category(engine: CandidateEngine, req: Request, item: int) -> str | None:
    """The item's category with the largest share of the user's interactions."""
    cats = engine.catalog.item_categories
    ids = cats.indices[cats.indptr[item] : cats.indptr[item + 1]]
    if len(ids) == 0:
        return None
    share = req.affinity[ids] if len(req.affinity) else np.zeros(len(ids))
    if share.max(initial=0.0) <= 0:
        return None
    return engine.catalog.category_names[int(ids[int(np.argmax(share))])]


def _shown_category(engine: CandidateEngine, req: Request, item: int) -> str | None:
    """The requested category the item is in, else its first category."""
    names = engine.catalog.categories_of(item)
    for c in req.query.categories:
        if c in names:
            return c
    return names[0] if names else None
