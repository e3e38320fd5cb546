"""Shadow arms: lists computed for a request after its answer was sent.

A request in an experiment with shadow arms is answered first; one background
thread then computes what each shadow would have shown and logs the request's
impression with those lists (`context.shadows`; the keys of shadows that
failed in `context.shadows_failed`). At most `SHADOW_BACKLOG` requests wait;
past it an impression is logged at once with its shadows marked skipped, so a
slow shadow model can neither grow memory without bound nor hold impressions
back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sieve.experiments.online import Arm
from sieve.serve.planner import Shadow
from sieve.serve.schemas import RecommendationList

log = logging.getLogger("sieve.serve")

#: Requests whose shadow lists may wait to be computed.
SHADOW_BACKLOG = 1000

#: A shadow's list for the request: model version → item ids.
ShadowList = Callable[[str | None], list[str]]
#: Logs a served list with its context and applied arms.
LogImpression = Callable[[RecommendationList, Mapping[str, Any], Sequence[Arm]], None]


class ShadowRunner:
    """Computes shadow lists off the request path (see the module doc)."""

    def __init__(self, log_impression: LogImpression) -> None:
        self._log = log_impression
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-shadows")
        self._room = threading.BoundedSemaphore(SHADOW_BACKLOG)

    def submit(
        self,
        shadows: Sequence[Shadow],
        result: RecommendationList,
        context: Mapping[str, Any],
        arms: Sequence[Arm],
        shadow_list: ShadowList,
    ) -> None:
        """Log `result` once its shadows' lists are computed (or at once,
        marked skipped, when the backlog is full)."""
        if not self._room.acquire(blocking=False):
            skipped = [s.key for s in shadows]
            self._log(result, {**context, "shadows_skipped": skipped}, arms)
            return
        try:
            self._pool.submit(self._run, shadows, result, context, arms, shadow_list)
        except RuntimeError:  # shut down: log what was served
            self._room.release()
            self._log(result, context, arms)

    def _run(
        self,
        shadows: Sequence[Shadow],
        result: RecommendationList,
        context: Mapping[str, Any],
        arms: Sequence[Arm],
        shadow_list: ShadowList,
    ) -> None:
        lists: dict[str, list[str]] = {}
        failed: list[str] = []
        try:
            for shadow in shadows:
                try:
                    lists[shadow.key] = shadow_list(shadow.model_version)
                except Exception:  # a failing shadow never costs the served request
                    log.exception("shadow %s failed", shadow.key)
                    failed.append(shadow.key)
            extra: dict[str, Any] = {"shadows": lists}
            if failed:
                extra["shadows_failed"] = failed
            self._log(result, {**context, **extra}, arms)
        finally:
            self._room.release()

    def flush(self) -> None:
        """Wait until the requests submitted so far are logged."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


__all__ = ["SHADOW_BACKLOG", "ShadowRunner"]
