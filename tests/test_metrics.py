"""GET /metrics: Prometheus text read from the store, on SQLite and PostgreSQL, after real polls of a
server on 127.0.0.1 (one good feed, one answering 404)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import REAL, FeedServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.fetch import fetch, make_session
from aggregator.model import Source, Topic
from aggregator.pipeline import Context, poll_source, topic_definitions
from aggregator.web import create_app

TOPICS = [Topic("everything", "*"), Topic("nothing", "zzzzqqqq-no-such-word")]


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed with prometheus-client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


@pytest.fixture
def polled(sessions: sessionmaker[Session], feed_server: FeedServer) -> sessionmaker[Session]:
    if not REAL.is_dir():
        pytest.skip(f"shared corpus not found at {REAL}")
    feed_server.routes["/bbc.xml"] = REAL / "bbc-news-1.xml"
    sources = [Source("bbc", feed_server.url("/bbc.xml")), Source("gone", feed_server.url("/missing.xml"))]
    http = make_session()
    ctx = Context.build(sources, TOPICS, sessions, functools.partial(fetch, http))
    now = datetime.now(UTC)
    with sessions.begin() as s:
        store.sync_sources(s, sources, now)
        store.sync_topics(s, topic_definitions(TOPICS, sources))
    try:
        outcomes = [poll_source(ctx, "bbc", now).status, poll_source(ctx, "gone", now).status]
    finally:
        http.close()
    assert outcomes[0] != "error" and outcomes[1] == "error"
    return sessions


def test_metrics_report_sources_items_polls_and_topics(polled: sessionmaker[Session]) -> None:
    with polled() as s:
        stored = {h.name: h.items for h in store.source_health(s)}
        matched = store.topic_stats(s)["everything"].count
    assert stored["bbc"] > 10 and stored["gone"] == 0
    response = create_app(TOPICS, polled, "http://feeds.test/").test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    got = samples(response.get_data(as_text=True))
    assert got[("aggregator_sources", (("status", "ok"),))] == 1
    assert got[("aggregator_sources", (("status", "erroring"),))] == 1
    assert got[("aggregator_sources", (("status", "disabled"),))] == 0
    assert got[("aggregator_source_items", (("source", "bbc"),))] == stored["bbc"]
    assert got[("aggregator_source_errors", (("source", "gone"),))] == 1
    assert got[("aggregator_source_errors", (("source", "bbc"),))] == 0
    assert got[("aggregator_items", ())] == stored["bbc"]
    polls = {
        dict(labels)["outcome"]: v
        for (name, labels), v in got.items()
        if name == "aggregator_polls_last_hour"
    }
    assert polls["error"] == 1 and sum(polls.values()) == 2
    assert got[("aggregator_topic_items", (("topic", "everything"),))] == matched == stored["bbc"]
    assert got[("aggregator_topic_items", (("topic", "nothing"),))] == 0
    fetched = got[("aggregator_source_last_fetch_timestamp_seconds", (("source", "bbc"),))]
    assert abs(fetched - datetime.now(UTC).timestamp()) < 600
    assert got[("aggregator_sources_leased", ())] == 0  # poll_source records, and so ends, every poll
    assert got[("process_resident_memory_bytes", ())] > 1e6  # the serving process itself


def test_a_scrape_storm_reads_the_store_once_per_ttl(polled: sessionmaker[Session]) -> None:
    client = create_app(TOPICS, polled, "http://feeds.test/").test_client()
    engine = polled.kw["bind"]
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append("x")

    event.listen(engine, "before_cursor_execute", count)
    try:
        first = client.get("/metrics").get_data(as_text=True)
        after_first = len(statements)
        bodies = [client.get("/metrics").get_data(as_text=True) for _ in range(20)]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert after_first > 0 and len(statements) == after_first
    strip = [line for line in first.splitlines() if line.startswith("aggregator_")]
    assert all([line for line in b.splitlines() if line.startswith("aggregator_")] == strip for b in bodies)


def test_a_store_that_cannot_be_read_fails_the_scrape_with_503(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'store.db'}")
    app = create_app(TOPICS, store.make_sessionmaker(engine), "http://feeds.test/")
    response = app.test_client().get("/metrics")
    assert response.status_code == 503
    assert b"database cannot be read" in response.data


def test_due_and_leased_sources_are_counted(polled: sessionmaker[Session]) -> None:
    later = datetime.now(UTC) + timedelta(days=2)  # both sources are due by then
    with polled.begin() as s:
        claimed = store.claim_due_sources(s, later, lease=timedelta(minutes=10), limit=1, owner="test")
        due, leased = store.queue_depth(s, later)
    assert len(claimed) == 1 and (due, leased) == (1, 1)
