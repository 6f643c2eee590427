"""The scheduled worker: wakes every few seconds, claims the sources that are due and polls them in a
thread pool through ``pipeline.poll_source``. Knows nothing of schedules itself: the store says what
is due. The only user of APScheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler

from aggregator import store
from aggregator.model import PollOutcome
from aggregator.pipeline import Context, flush_unchanged, poll_source
from aggregator.schedule import CLAIM_LEASE

log = logging.getLogger(__name__)
PRUNE_EVERY = timedelta(hours=6)  # how often a worker applies retention.days and the fingerprint window


class Worker:
    """Claims due sources every ``tick`` seconds and polls them with ``threads`` threads (the per-host
    concurrency limit lives in the fetcher the context carries, shared by every thread). Each claim is
    a lease held by ``owner`` for ``lease``; with ``per_host`` the claim also keeps every host under
    that many leases across all workers. ``batch``: sources in flight or queued at most."""

    def __init__(
        self,
        ctx: Context,
        *,
        tick: float = 5.0,
        threads: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease: timedelta = CLAIM_LEASE,
        batch: int | None = None,
        per_host: int | None = None,
        owner: str | None = None,
        retention: timedelta | None = None,
        prune_every: timedelta = PRUNE_EVERY,
    ) -> None:
        self.ctx = ctx
        self.retention, self.prune_every = retention, prune_every
        self.tick = tick
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="poll")
        self.threads = threads
        self.backlog = batch or 2 * threads  # sources in flight or queued at most
        self.lease, self.per_host = lease, per_host
        self.owner = owner or store.new_owner()
        self._stopping = threading.Event()
        self._claimed: dict[str, datetime] = {}  # name -> when its lease was written (polls not started)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._dispatching = False  # a dispatch is running: a wake-up asks it for one more round
        self._again = False  # a poll finished during the running dispatch: look again before ending
        self._woken = False  # the dispatch job has been asked to run now and has not started yet
        self.polls = 0
        self.done = threading.Event()  # set whenever a poll finishes (tests wait on it)

    def start(self) -> None:
        self.scheduler.add_job(
            self.dispatch,
            "interval",
            seconds=self.tick,
            next_run_time=self.clock(),
            id="dispatch",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(  # the first prune a minute after the start, then every prune_every
            self.prune,
            "interval",
            seconds=self.prune_every.total_seconds(),
            next_run_time=self.clock() + timedelta(minutes=1),
            id="prune",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.start()
        log.info("worker started: %d sources, checking every %.0f s", len(self.ctx.sources), self.tick)

    def prune(self) -> int:
        """Drop the fingerprints of the items that left the window new items are matched against
        (``prune_fingerprints``), then, with ``retention``, delete the items older than it (what ``python
        run.py prune`` does); each leaves a tombstone, and tombstones no poll has seen for as long
        expire. Several workers may prune at once: the second finds nothing left. Returns the number of
        items deleted (0 when the database cannot be reached: the next run tries again)."""
        now = self.clock()
        self.prune_fingerprints(now)
        if self.retention is None:
            return 0
        try:
            with self.ctx.sessions.begin() as s:
                result = store.prune_items(s, now - self.retention, now)
        except Exception as e:
            log.warning("worker: could not prune old items (%s); trying again later", store.db_problem(e))
            return 0
        if result.items or result.expired:
            log.info(
                "worker: pruned %d items older than %s (retention.days); %d tombstones expired",
                result.items,
                self.retention,
                result.expired,
            )
        return result.items

    def prune_fingerprints(self, now: datetime) -> None:
        """``store.prune_fingerprints``, each chunk in the write stage (polls write in between), until
        done or the worker stops."""
        try:
            pruned = store.prune_fingerprints(
                self.ctx.sessions,
                now,
                self.ctx.stories,
                guard=self.ctx.stages.write,
                stop=self._stopping.is_set,
            )
        except Exception as e:
            log.warning(
                "worker: could not drop old fingerprints (%s); trying again later", store.db_problem(e)
            )
            return
        if pruned:
            days = self.ctx.stories.index_days
            log.info("worker: dropped the fingerprints of %d items first seen over %d days ago", pruned, days)

    def dispatch(self) -> list[str]:
        """Claim what is due and hand it to the pool: up to ``backlog`` sources (twice as many as
        threads unless ``batch`` says otherwise) are in flight or queued, so a thread that frees up finds
        work at once; a source already in flight is never handed out again. The same transaction
        releases this worker's leases that no poll holds any more (a poll that could not record its
        outcome): those sources are due and are claimed again. A claim that fails (the database is
        unreachable) is logged and tried again at the next tick. Returns the names dispatched.
        Wake-ups while it runs make it look again before it ends (one dispatch runs at a time)."""
        with self._lock:
            self._dispatching, self._woken = True, False
        dispatched: list[str] = []
        while True:
            dispatched += self._dispatch_once()
            with self._lock:
                if not self._again:
                    self._dispatching = False
                    return dispatched
                self._again = False

    def _dispatch_once(self) -> list[str]:
        if self._stopping.is_set():
            return []
        with self._lock:
            free = self.backlog - len(self._in_flight)
            busy = set(self._in_flight)
        if free <= 0:
            return []
        try:
            with self.ctx.sessions.begin() as s:
                flush_unchanged(self.ctx, s)  # the unchanged polls not written yet: this commit ends them
                store.release_leases(s, self.owner, keep=busy | self.ctx.unchanged.unwritten())
                claimed_at = self.clock()
                names = store.claim_due_sources(
                    s, claimed_at, lease=self.lease, limit=free, owner=self.owner, per_host=self.per_host
                )
        except Exception as e:
            log.warning(
                "worker: could not claim due sources (%s); trying again at the next tick", store.db_problem(e)
            )
            log.debug("worker: claim failed", exc_info=True)
            return []
        dispatched = []
        for name in names:
            with self._lock:
                if name not in self.ctx.sources or name in self._in_flight:
                    continue  # its lease is released at the next tick
                self._in_flight.add(name)
                self._claimed[name] = claimed_at
            future = self.pool.submit(self._leased_poll, name)
            future.add_done_callback(partial(self._done, name))
            dispatched.append(name)
        return dispatched

    def _leased_poll(self, name: str) -> PollOutcome | None:
        """Poll ``name`` while this worker holds its lease with at least half of it to run: a lease
        younger than that is polled at once (no other worker can have it), an older one is renewed
        first (it waited in the queue, and once expired another worker may have taken the source).
        None: not polled (stopping, or the lease is lost or cannot be renewed)."""
        now = self.clock()
        with self._lock:
            claimed_at = self._claimed.pop(name, None)
        if self._stopping.is_set():
            return None  # queued when the worker stopped: stop() releases the lease
        if claimed_at is not None and now - claimed_at < self.lease / 2:
            return self._poll(name)
        try:
            with self.ctx.sessions.begin() as s:
                held = store.renew_lease(s, name, self.owner, now, self.lease)
        except Exception as e:
            problem = store.db_problem(e)
            log.warning("worker: could not renew the lease on %r (%s); not polled now", name, problem)
            return None
        if not held:
            log.warning("worker: the lease on %r expired and another worker took it; not polled here", name)
            return None
        return self._poll(name)

    def _poll(self, name: str) -> PollOutcome:
        return poll_source(self.ctx, name, self.clock())  # ``now`` is when the poll starts, not when queued

    def _done(self, name: str, future: Future[PollOutcome | None]) -> None:
        with self._lock:
            self._in_flight.discard(name)
            self.polls += 1
            self.done.set()
            idle = len(self._in_flight) < self.threads
        if idle:
            self._wake()
        if future.exception() is not None:  # poll_source records its own failures; this is a bug
            log.error("worker: poll of %r crashed", name, exc_info=future.exception())

    def _wake(self) -> None:
        """A thread has nothing queued: look for due sources now instead of at the next tick (once: a
        running dispatch looks again, a requested one is still to come)."""
        if not self.scheduler.running:
            return
        with self._lock:
            if self._dispatching:
                self._again = True
                return
            if self._woken:
                return
            self._woken = True
        try:
            self.scheduler.modify_job("dispatch", next_run_time=datetime.now(UTC))
        except Exception:  # stopping, or the job is gone: the next tick (if any) will do
            log.debug("worker: could not wake the dispatcher", exc_info=True)

    def stop(self) -> None:
        """Stop claiming; let polls in flight finish (each commits whole or not at all) and skip the
        queued ones; then release the leases of everything claimed but not polled, so that the other
        workers take those sources at their next tick instead of when the leases expire."""
        self._stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.pool.shutdown(wait=True)
        flush_unchanged(self.ctx)
        self.release()
        log.info("worker stopped")

    def release(self) -> list[str]:
        """End every lease this worker holds; the names released (none if the database is unreachable:
        then the leases simply expire)."""
        try:
            with self.ctx.sessions.begin() as s:
                names = store.release_leases(s, self.owner)
        except Exception as e:
            problem = store.db_problem(e)
            log.warning(
                "worker: could not release its leases (%s); they expire within %s", problem, self.lease
            )
            return []
        if names:
            log.info("worker: released the leases of %d sources not polled: %s", len(names), ", ".join(names))
        return names
