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
    """Claims due sources every ``tick`` seconds and polls them with ``threads`` threads."""

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
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self.polls = 0

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

    def dispatch(self) -> None:
        """Claim what is due (no more than there are free threads) and hand it to the pool."""
        with self._lock:
            free = self.threads - len(self._in_flight)
        if free <= 0:
            return
        try:
            with self.ctx.sessions.begin() as s:
                names = store.claim_due_sources(s, self.clock(), lease=CLAIM_LEASE, limit=free)
        except Exception:
            log.exception("worker: could not claim due sources; will retry")
            return
        for name in names:
            if name not in self.ctx.sources:
                continue
            with self._lock:
                self._in_flight.add(name)
            future = self.pool.submit(poll_source, self.ctx, name, self.clock())
            future.add_done_callback(partial(self._done, name))

    def _done(self, name: str, future: Future[PollOutcome]) -> None:
        with self._lock:
            self._in_flight.discard(name)
            self.polls += 1
        if future.exception() is not None:  # poll_source records its own failures; this is a bug
            log.error("worker: poll of %r crashed", name, exc_info=future.exception())

    def stop(self) -> None:
        """Stop claiming; let polls in flight finish (each commits whole or not at all)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        log.info("worker stopped")
