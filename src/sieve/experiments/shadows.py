"""What each shadow arm would have shown, compared with what was served.

A shadow arm is computed for every request of its experiment after the
response is sent, and its list is logged in the impression's context
(``context["shadows"]["<experiment>/<arm>"]``; a shadow that failed is named
in ``shadows_failed``, one skipped because the shadows were behind in
``shadows_skipped``). Per shadow arm `shadow_summary` gives:

- `requests`: requests compared (the shadow's list logged and a non-empty
  served list); `failed` and `skipped`: requests where it was not computed;
- `mean_overlap`: the mean over requests of overlap@n = |shadow's top n ∩
  served list| / n, with n the served list's length (1: the shadow would have
  shown the same items, in any order);
- `novel_share`: the share of the shadow's items that the served list did
  not show (pooled over requests): what the shadow would have added;
- `ctr_shared` / `ctr_served_only`: the served list's CTR (clicks per shown
  slot, clicks as `EventSemantics` defines them) on the items the shadow
  would have shown too, and on the rest (None without such slots): whether
  the items both agree on are the ones users click;
- `by_arm`: requests and mean overlap per served arm.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sieve.experiments.assignment import Experiment
from sieve.settings import DEFAULT_SEMANTICS, EventSemantics


def _rate(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _listed(contexts: pd.DataFrame, field: str, key: str) -> int:
    """Requests whose context names `key` in its list `field`."""
    return int(sum(key in (c.get(field) or ()) for c in contexts["context"]))


def shadow_summary(
    exp: Experiment,
    slots: pd.DataFrame,
    events: pd.DataFrame,
    contexts: pd.DataFrame,
    semantics: EventSemantics = DEFAULT_SEMANTICS,
) -> list[dict[str, Any]]:
    """One comparison per shadow arm of `exp` (see the module doc).

    `slots` and `events` are `Store.experiment_frames`, `contexts`
    `Store.experiment_contexts` of the experiment."""
    out: list[dict[str, Any]] = []
    served = slots.loc[slots["item_id"].notna(), ["request_id", "item_id", "arm"]]
    length = served.groupby("request_id").size()
    clicks = events.loc[events["type"].isin(semantics.click_types), ["request_id", "item_id"]]
    clicked = clicks.drop_duplicates().assign(clicked=1.0)
    for variant in exp.shadows:
        key = f"{exp.name}/{variant.name}"
        lists = [
            (rid, item, rank)
            for rid, ctx in zip(contexts["request_id"], contexts["context"], strict=True)
            if rid in length.index
            for rank, item in enumerate(((ctx.get("shadows") or {}).get(key)) or ())
        ]
        compared = {
            rid
            for rid, ctx in zip(contexts["request_id"], contexts["context"], strict=True)
            if rid in length.index and key in (ctx.get("shadows") or {})
        }
        shadow = pd.DataFrame(lists, columns=["request_id", "item_id", "rank"])
        mine = served.loc[served["request_id"].isin(compared)]
        top = shadow.loc[shadow["rank"] < shadow["request_id"].map(length)]
        both = mine.merge(top[["request_id", "item_id"]].drop_duplicates(), how="inner")
        common = both.groupby("request_id").size().reindex(sorted(compared), fill_value=0)
        overlap = common / length.reindex(common.index)
        arm_of = mine.drop_duplicates("request_id").set_index("request_id")["arm"]
        by_arm = {
            str(arm): {"requests": len(group), "mean_overlap": float(group.mean())}
            for arm, group in overlap.groupby(arm_of.reindex(overlap.index), sort=True)
        }
        novel = shadow.merge(mine[["request_id", "item_id"]], how="left", indicator=True)
        marked = mine.merge(
            shadow[["request_id", "item_id"]].drop_duplicates().assign(shared=True), how="left"
        ).merge(clicked, how="left")
        shared = marked["shared"].eq(True)
        hits = marked["clicked"].fillna(0.0)
        out.append(
            {
                "shadow": variant.name,
                "key": key,
                "model_version": variant.model_version,
                "requests": len(compared),
                "failed": _listed(contexts, "shadows_failed", key),
                "skipped": _listed(contexts, "shadows_skipped", key),
                "mean_overlap": float(overlap.mean()) if len(overlap) else None,
                "novel_share": _rate(float((novel["_merge"] == "left_only").sum()), len(shadow)),
                "shared_slots": int(shared.sum()),
                "served_only_slots": int((~shared).sum()),
                "ctr_shared": _rate(float(hits[shared].sum()), float(shared.sum())),
                "ctr_served_only": _rate(float(hits[~shared].sum()), float((~shared).sum())),
                "by_arm": by_arm,
            }
        )
    return out


__all__ = ["shadow_summary"]
