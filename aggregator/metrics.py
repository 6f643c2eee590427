"""``GET /metrics``: Prometheus exposition of what an operator alerts on, read from the store at scrape
time, so every ``serve`` process (and every machine) reports the same fleet whatever the number of
workers: sources by health, per-source errors/items/last fetch, the polling queue, polls by outcome in
the last hour, items stored, items per topic. Plus this process's own CPU and memory (prometheus-client's
process collector). A scrape reads the store at most once per ``ttl`` seconds (the figures are cached),
and a store that cannot be read makes the scrape fail (503) rather than report stale zeros.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.model import Topic

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = ("new", "ok", "erroring", "backing off", "retired", "disabled")  # model.SourceHealth.status
RECENT = timedelta(hours=1)


class StoreCollector(Collector):
    """The store's figures as gauges, recomputed at most every ``ttl`` seconds."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        topics: Sequence[Topic],
        *,
        ttl: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions, self.topics, self.ttl, self.clock = sessions, topics, ttl, clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:  # one store read at a time; concurrent scrapes share it
            if self._cached is None or time.monotonic() - self._cached[0] >= self.ttl:
                self._cached = (time.monotonic(), self._read())
            return list(self._cached[1])

    def _read(self) -> list[Metric]:
        now = self.clock()
        with self.sessions() as s:
            health = store.source_health(s)
            topic_stats = store.topic_stats(s)
            polls = store.recent_polls(s, now - RECENT)
            due, leased = store.queue_depth(s, now)
        by_status = GaugeMetricFamily(
            "aggregator_sources", "Configured sources by health status", labels=["status"]
        )
        counts = {status: 0 for status in STATUSES}
        for h in health:
            counts[h.status] = counts.get(h.status, 0) + 1
        for status, n in counts.items():
            by_status.add_metric([status], n)
        errors = GaugeMetricFamily(
            "aggregator_source_errors", "Consecutive failed polls of a source (0: its last poll worked)",
            labels=["source"],
        )  # fmt: skip
        items = GaugeMetricFamily("aggregator_source_items", "Items stored from a source", labels=["source"])
        fetched = GaugeMetricFamily(
            "aggregator_source_last_fetch_timestamp_seconds", "When a source was last polled (Unix time)",
            labels=["source"],
        )  # fmt: skip
        next_due = GaugeMetricFamily(
            "aggregator_source_next_due_timestamp_seconds", "When a source is next due (Unix time)",
            labels=["source"],
        )  # fmt: skip
        for h in health:
            errors.add_metric([h.name], h.error_count)
            items.add_metric([h.name], h.items)
            if h.last_fetch is not None:
                fetched.add_metric([h.name], h.last_fetch.timestamp())
            if h.next_due is not None:
                next_due.add_metric([h.name], h.next_due.timestamp())
        total = GaugeMetricFamily("aggregator_items", "Items stored from the configured sources")
        total.add_metric([], sum(h.items for h in health))
        queue = GaugeMetricFamily("aggregator_sources_due", "Sources due for a poll that no worker holds yet")
        queue.add_metric([], due)
        held = GaugeMetricFamily(
            "aggregator_sources_leased", "Sources a worker has claimed and not yet recorded"
        )
        held.add_metric([], leased)
        recent = GaugeMetricFamily(
            "aggregator_polls_last_hour", "Polls recorded in the last hour, by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(polls.items()):
            recent.add_metric([outcome], n)
        topic_items = GaugeMetricFamily(
            "aggregator_topic_items", "Items matched by a topic", labels=["topic"]
        )
        changed = GaugeMetricFamily(
            "aggregator_topic_last_change_timestamp_seconds", "When a topic's feed last changed (Unix time)",
            labels=["topic"],
        )  # fmt: skip
        for t in self.topics:
            stats = topic_stats.get(t.name)
            topic_items.add_metric([t.name], stats.count if stats else 0)
            if stats is not None and stats.last_change is not None:
                changed.add_metric([t.name], stats.last_change.timestamp())
        return [by_status, errors, items, fetched, next_due, total, queue, held, recent, topic_items, changed]


def make_registry(
    sessions: sessionmaker[Session], topics: Sequence[Topic], *, ttl: float = 10.0
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(sessions, topics, ttl=ttl))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format; raises what the store raised when it cannot be read."""
    return generate_latest(registry)
