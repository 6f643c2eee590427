"""The scheduled worker: wakes every few seconds, claims the sources that are due and polls them in a
thread pool through ``pipeline.poll_source``. Knows nothing of schedules itself: the store says what
is due. The only user of APScheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler

from aggregator import store
from aggregator.model import PollOutcome
from aggregator.pipeline import Context, poll_source
from aggregator.schedule import CLAIM_LEASE

log = logging.getLogger(__name__)


class Worker:
    """Claims due sources every ``tick`` seconds and polls them with ``threads`` threads (the per-host
    concurrency limit lives in the fetcher the context carries, shared by every thread)."""

    def __init__(
        self,
        ctx: Context,
        *,
        tick: float = 5.0,
        threads: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ctx = ctx
        self.tick = tick
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="poll")
        self.threads = threads
        self.backlog = 2 * threads  # sources in flight or queued at most
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
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
        self.scheduler.start()
        log.info("worker started: %d sources, checking every %.0f s", len(self.ctx.sources), self.tick)

    def dispatch(self) -> list[str]:
        """Claim what is due and hand it to the pool: up to twice as many sources as threads are in
        flight or queued, so a thread that frees up finds work at once; a source already in flight is
        never handed out again. Returns the names dispatched."""
        with self._lock:
            free = self.backlog - len(self._in_flight)
        if free <= 0:
            return []
        try:
            with self.ctx.sessions.begin() as s:
                names = store.claim_due_sources(s, self.clock(), lease=CLAIM_LEASE, limit=free)
        except Exception:
            log.exception("worker: could not claim due sources; will retry")
            return []
        dispatched = []
        for name in names:
            with self._lock:
                if name not in self.ctx.sources or name in self._in_flight:
                    continue
                self._in_flight.add(name)
            future = self.pool.submit(self._poll, name)
            future.add_done_callback(partial(self._done, name))
            dispatched.append(name)
        return dispatched

    def _poll(self, name: str) -> PollOutcome:
        return poll_source(self.ctx, name, self.clock())  # ``now`` is when the poll starts, not when queued

    def _done(self, name: str, future: Future[PollOutcome]) -> None:
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
        """A thread has nothing queued: look for due sources now instead of at the next tick."""
        if not self.scheduler.running:
            return
        try:
            self.scheduler.modify_job("dispatch", next_run_time=datetime.now(UTC))
        except Exception:  # stopping, or the job is gone: the next tick (if any) will do
            log.debug("worker: could not wake the dispatcher", exc_info=True)

    def stop(self) -> None:
        """Stop claiming; let polls in flight finish (each commits whole or not at all)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        log.info("worker stopped")
