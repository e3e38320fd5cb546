"""Background retraining: train a candidate, compare it with the serving model
on the most recent events, promote it only if it is not worse.

`Retrainer.due()` says whether a run is due — on a schedule, after N new
events since the serving model's snapshot, or when a monitoring trigger asks
for one (the file `model_dir/RETRAIN`, written by a drift check or an
operator). `Retrainer.run_once()` does one cycle:

1. snapshot the store; the *holdout* is the events that arrived after the
   serving model's snapshot (its manifest's `max_seq`) — neither model saw
   them — or, with no serving model or too few new events, the newest
   `holdout_fraction` of the events by time; then the serving model saw the
   holdout, so its configuration is refit on the same training part and that
   refit stands in for it (a fair comparison of configurations);
2. fit a candidate funnel on everything before the holdout (and, when its
   ranker trains on impressions, `RankerConfig.train_on`, on the impressions
   logged up to then);
3. score both on the holdout (NDCG@k of each holdout user's new items,
   given their history before it), through external ids so the two models'
   vocabularies need not agree;
4. register the candidate with both scores; promote it if its score is at
   least the serving one's × (1 − tolerance), otherwise reject it and record
   why. The serving model is never replaced by a worse one.

The promoted candidate is the one evaluated (fitted without the holdout); the
next cycle's snapshot includes those events.

One worker is active at a time (`sieve.training.lease`): a cycle runs only
under the retraining lease in the shared store, and its candidate is
promoted only if the lease is still held; `run_forever` idles while another
worker holds it, saying so, and takes over when it expires. Replicas pick a
promoted version up within their `model_poll_seconds`, without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sieve.data.dataset import Dataset
from sieve.pipeline import Funnel
from sieve.ranking.logged import LoggedData
from sieve.registry import ModelRegistry
from sieve.settings import Settings
from sieve.storage import Store, open_store
from sieve.training.holdout import holdout_ndcg
from sieve.training.lease import LeaseHeld, WorkerLease
from sieve.training.snapshot import snapshot
from sieve.training.train import new_funnel

log = logging.getLogger(__name__)

#: The file a monitoring trigger (or an operator) writes to ask for a retrain.
TRIGGER = "RETRAIN"
#: Catalog changes older than this are pruned by the active worker (a
#: replica reads only those after its start).
CATALOG_RETENTION_SECONDS = 7 * 86_400.0


@dataclass(frozen=True)
class RetrainPolicy:
    """When to retrain and how to judge the candidate.

    - `every_seconds`: retrain at least this often (None: no schedule);
    - `after_events`: retrain once this many events arrived since the serving
      model's snapshot (None: never for that reason);
    - `holdout_fraction`: share of the newest events held out when there are
      too few new events (fewer than `min_holdout_events`);
    - `k`: list length of the NDCG comparison; `max_users`: users scored;
    - `tolerance`: promote when candidate ≥ serving × (1 − tolerance).
    """

    every_seconds: float | None = 24 * 3600.0
    after_events: int | None = 50_000
    holdout_fraction: float = 0.1
    min_holdout_events: int = 200
    k: int = 10
    max_users: int = 1000
    tolerance: float = 0.0
    seed: int = 42


@dataclass(frozen=True)
class Decision:
    """The outcome of one retraining cycle."""

    reason: str
    candidate: str
    serving: str | None
    candidate_score: float
    serving_score: float | None
    promoted: bool
    why: str


class Retrainer:
    """Runs retraining cycles against one store and one model registry, as
    the one active worker (`lease_seconds`: how long its lease lasts unrenewed;
    `say`: where it reports waiting and taking over)."""

    def __init__(
        self,
        settings: Settings,
        policy: RetrainPolicy | None = None,
        *,
        lease_seconds: float = 60.0,
        say: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.policy = policy or RetrainPolicy()
        self.registry = ModelRegistry(settings.model_dir)
        self.lease_seconds = lease_seconds
        self.say = say or log.info
        self._sleep = sleep
        self._store: Store | None = None
        self._lease: WorkerLease | None = None

    @property
    def lease(self) -> WorkerLease:
        """The retraining lease in the store (the store opened on first use)."""
        if self._lease is None:
            self._store = open_store(self.settings.store_url)
            self._lease = WorkerLease(self._store, self.lease_seconds)
        return self._lease

    def close(self) -> None:
        """Give the lease back (if held) and close the store."""
        if self._lease is not None:
            self._lease.release()
        if self._store is not None:
            self._store.close()
        self._lease = self._store = None

    # ------------------------------------------------------------ when
    def due(self, now: float | None = None) -> str | None:
        """Why a run is due now, or None."""
        now = time.time() if now is None else now
        trigger = Path(self.settings.model_dir) / TRIGGER
        if trigger.exists():
            return f"trigger: {trigger.read_text().strip() or 'requested'}"
        current = self.registry.current()
        if current is None:
            return "no serving model"
        manifest = self.registry.manifest(current)
        p = self.policy
        if p.every_seconds is not None and now - manifest.created_at >= p.every_seconds:
            return f"schedule: serving model is older than {p.every_seconds:.0f}s"
        if p.after_events is not None:
            with open_store(self.settings.store_url) as store:
                new = store.max_seq() - int(manifest.data.get("max_seq", 0))
            if new >= p.after_events:
                return f"{new} new events since the serving model (threshold {p.after_events})"
        return None

    # ------------------------------------------------------------ one cycle
    def run_once(self, reason: str = "manual") -> Decision:
        """One cycle now, under the lease (`LeaseHeld`, naming its holder, when
        another worker has it), which is given back after it."""
        if not self.lease.acquire():
            raise LeaseHeld(
                f"another worker holds the retraining lease ({self.lease.other()}): not training"
            )
        try:
            return self._cycle(reason)
        finally:
            self.lease.release()

    def _cycle(self, reason: str) -> Decision:
        """Train, compare, and promote or reject (the caller holds the lease,
        renewed here while it trains); see the module docstring."""
        with self.lease.heartbeat() as still_held:
            return self._train_and_judge(reason, still_held)

    def _train_and_judge(self, reason: str, still_held: Callable[[], bool]) -> Decision:
        with open_store(self.settings.store_url) as store:
            data = snapshot(store, self.settings.event_weights)
            max_seq = store.max_seq()
        serving_version = self.registry.current()
        loaded = self.registry.load() if serving_version else None
        serving = loaded if isinstance(loaded, Funnel) else None
        seen_seq = (
            int(self.registry.manifest(serving_version).data.get("max_seq", 0))
            if serving_version
            else 0
        )
        seq = data.events["seq"].to_numpy() if "seq" in data.events else None
        held = None
        if seq is not None and serving is not None:
            held = seq > seen_seq
            if held.sum() < self.policy.min_holdout_events:
                held = None
        if held is None:
            ts = data.events["timestamp"].to_numpy()
            held = ts > np.quantile(ts, 1.0 - self.policy.holdout_fraction)
        train = data.subset(~held)
        test = data.subset(held)
        reference = serving
        if serving is not None and (seq is None or (seq[held] <= seen_seq).any()):
            # the serving model saw part of the holdout: comparing it as it is
            # would favour it unfairly, so its configuration is refit on the
            # same training part and that refit is the reference
            reason += "; serving configuration refit as the reference (too few new events)"
            reference = self._with_logged(Funnel(serving.config), train).fit(train)
        candidate = self._with_logged(new_funnel(self.settings), train).fit(train)
        if serving is not None and reference is serving:
            # scored with the online counters it would read live at the holdout
            serving.online = candidate.online
        cand_score = score_on_holdout(candidate, train, test, self.policy)
        serv_score = (
            None if reference is None else score_on_holdout(reference, train, test, self.policy)
        )
        version = str(candidate.version)
        self.registry.register(
            candidate,
            version=version,
            data={
                "events": len(train.events),
                "max_seq": max_seq,
                "holdout_events": int(held.sum()),
                "reason": reason,
            },
            metrics={f"holdout ndcg@{self.policy.k}": cand_score}
            | ({} if serv_score is None else {f"serving holdout ndcg@{self.policy.k}": serv_score}),
        )
        if not still_held():
            why = "the retraining lease was lost while training: another worker may promote"
            self.registry.reject(version, f"{reason}; {why}")
            log.warning("retrain (%s): %s not promoted: %s", reason, version, why)
            return Decision(reason, version, serving_version, cand_score, serv_score, False, why)
        if serv_score is None or cand_score >= serv_score * (1.0 - self.policy.tolerance):
            why = (
                "no serving model"
                if serv_score is None
                else f"holdout ndcg@{self.policy.k} {cand_score:.4f} ≥ serving {serv_score:.4f}"
            )
            self.registry.promote(version, f"{reason}; {why}")
            promoted = True
        else:
            why = (
                f"holdout ndcg@{self.policy.k} {cand_score:.4f} < serving "
                f"{serv_score:.4f}: kept {serving_version}"
            )
            self.registry.reject(version, f"{reason}; {why}")
            promoted = False
        (Path(self.settings.model_dir) / TRIGGER).unlink(missing_ok=True)
        log.info("retrain (%s): %s %s", reason, version, why)
        return Decision(reason, version, serving_version, cand_score, serv_score, promoted, why)

    def _with_logged(self, funnel: Funnel, train: Dataset) -> Funnel:
        """The funnel with the store's logged impressions up to the end of
        `train` (`Funnel.logged`) when its ranker trains on them."""
        if funnel.config.ranker.train_on == "snapshot":
            return funnel
        times = train.events["timestamp"].to_numpy(np.float64)
        until = float(np.nanmax(times)) if len(times) else None
        with open_store(self.settings.store_url) as store:
            funnel.logged = LoggedData.from_store(store, until=until)
        return funnel

    def run_forever(
        self,
        poll_seconds: float = 30.0,
        max_cycles: int | None = None,
        max_polls: int | None = None,
    ) -> None:
        """Hold the lease (renewed every poll: `poll_seconds` must be shorter
        than the lease) and run a cycle whenever `due()` says so; while another
        worker holds it, wait and say so. Stops after `max_cycles` cycles or
        `max_polls` polls (None: never)."""
        if poll_seconds >= self.lease_seconds:
            raise ValueError(
                f"poll every {poll_seconds:g} s keeps no lease of {self.lease_seconds:g} s: "
                "poll more often or lengthen the lease"
            )
        cycles = polls = 0
        active: bool | None = None  # said so far: None (nothing), True, False
        try:
            while (max_cycles is None or cycles < max_cycles) and (
                max_polls is None or polls < max_polls
            ):
                polls += 1
                if not self.lease.acquire():
                    if active is not False:
                        self.say(
                            f"another worker holds the retraining lease ({self.lease.other()}): "
                            "waiting"
                        )
                    active = False
                    self._sleep(poll_seconds)
                    continue
                if active is not True:
                    self.say("took the retraining lease: this worker is the active one")
                    active = True
                self._prune_catalog_changes()
                reason = self.due()
                if reason is not None:
                    self._cycle(reason)
                    cycles += 1
                else:
                    self._sleep(poll_seconds)
        finally:
            self.lease.release()

    def _prune_catalog_changes(self) -> None:
        try:
            store = self._store
            if store is not None:
                store.prune_catalog_changes(CATALOG_RETENTION_SECONDS)
        except Exception:  # housekeeping: next time
            log.warning("old catalog changes not pruned", exc_info=True)


def score_on_holdout(model: Funnel, train: Dataset, test: Dataset, policy: RetrainPolicy) -> float:
    """Mean NDCG@k of a funnel on the holdout users' new items, given each
    user's history before the holdout, matched by external ids (the funnel's
    vocabulary need not be the snapshot's)."""
    return holdout_ndcg(
        model, train, test, k=policy.k, max_users=policy.max_users, seed=policy.seed
    )
