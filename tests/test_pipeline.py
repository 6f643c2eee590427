"""poll_source end to end: real feed files served on 127.0.0.1, the real fetcher, a real SQLite file.

Covers the whole real corpus, re-polls of captures taken hours apart (REPOLL.tsv), conditional GET,
failures recorded on the source with backoff, and topic memberships decided at store time.
"""

from __future__ import annotations

import csv
import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import REAL, FeedServer, free_port
from pytest_httpserver import HTTPServer
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

import aggregator.pipeline
import aggregator.stages
from aggregator import store
from aggregator.fetch import fetch, make_session
from aggregator.model import FetchResult, FetchState, Item, PollOutcome, RawEntry, Source, StoredItem, Topic
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed
from aggregator.pipeline import (
    Context,
    UnchangedPolls,
    backfill_topics,
    flush_unchanged,
    poll_source,
    topic_definitions,
)
from aggregator.stages import Stages, limit_malloc_arenas, parse_document
from aggregator.store.tables import SourceRow

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)  # after every capture in the corpus
HOUR = timedelta(hours=1)
TINY_FEED = b'<rss version="2.0"><channel><title>T</title><item><guid>1</guid></item></channel></rss>'

needs_corpus = pytest.mark.skipif(not REAL.is_dir(), reason=f"shared corpus not found at {REAL}")


def tsv(name: str) -> list[dict[str, str]]:
    if not REAL.is_dir():
        return []
    with (REAL / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = make_session()
    yield session
    session.close()


def open_context(
    sessions: sessionmaker[Session],
    sources: Sequence[Source],
    topics: Sequence[Topic],
    fetcher: Callable[[Source, FetchState | None], FetchResult],
    now: datetime = NOW,
) -> Context:
    """What cli.open_app does on start: build the context, sync sources and topics, backfill topics."""
    ctx = Context.build(sources, topics, sessions, fetcher)
    with sessions.begin() as s:
        store.sync_sources(s, sources, now)
        stale = store.sync_topics(s, topic_definitions(topics, sources))
    if stale:
        backfill_topics(ctx, stale, now)
    return ctx


def real_fetch(http: requests.Session) -> Callable[[Source, FetchState | None], FetchResult]:
    return functools.partial(fetch, http)


def serve(server: FeedServer, name: str, file: str, **kwargs: Any) -> Source:
    """Serve ``REAL/file`` at /NAME.xml and return a Source for it."""
    server.routes[f"/{name}.xml"] = REAL / file
    return Source(name, server.url(f"/{name}.xml"), **kwargs)


def all_items(sessions: sessionmaker[Session]) -> list[StoredItem]:
    with sessions.begin() as s:
        return list(store.stored_items(s))


def health(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions.begin() as s:
        return {h.name: h for h in store.source_health(s)}


def members(sessions: sessionmaker[Session], topic: str, *, collapse: bool = False) -> list[StoredItem]:
    with sessions.begin() as s:
        return store.topic_items(s, topic, limit=10_000, collapse=collapse)


def has_word(word: str, *texts: str) -> bool:
    """The test's own oracle for a one-word query: a case-insensitive whole-word search."""
    return any(re.search(rf"\b{word}\b", t, re.IGNORECASE) for t in texts)


# --- the whole real corpus -----------------------------------------------------------------------


@dataclass
class CorpusRun:
    files: list[Path]
    outcomes: dict[str, PollOutcome]  # by file name (= source name)
    counts: dict[str, int]  # stored items per source
    health: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    """Poll every file of the real corpus once, as its own source (shared by the tests below)."""
    if not REAL.is_dir():
        pytest.skip(f"shared corpus not found at {REAL}")
    files = sorted(p for p in REAL.iterdir() if p.is_file() and p.suffix != ".tsv")
    engine = store.make_engine(f"sqlite:///{tmp_path_factory.mktemp('corpus') / 'store.db'}")
    store.upgrade(engine)
    sessions = store.make_sessionmaker(engine)
    server, http = FeedServer(), make_session()
    try:
        sources = []
        for path in files:
            server.routes[f"/{path.name}"] = path
            sources.append(Source(path.name, server.url(f"/{path.name}")))
        ctx = open_context(sessions, sources, [], real_fetch(http))
        started = time.monotonic()
        outcomes = {source.name: poll_source(ctx, source.name, NOW) for source in sources}
        seconds = time.monotonic() - started
        counts: dict[str, int] = {}
        for stored in all_items(sessions):
            counts[stored.item.source] = counts.get(stored.item.source, 0) + 1
        yield CorpusRun(files, outcomes, counts, health(sessions), seconds)
    finally:
        http.close()
        server.close()
        engine.dispose()


@needs_corpus
def test_the_corpus_is_74_feeds_and_one_html_page(corpus_run: CorpusRun) -> None:
    names = {p.name for p in corpus_run.files}
    assert len(names) == 75
    assert names - {row["file"] for row in tsv("SOURCES.tsv")} == {"latimes-403-cloudfront.html"}
    print(f"\n{len(names)} sources, {sum(corpus_run.counts.values())} items in {corpus_run.seconds:.1f} s")


@needs_corpus
def test_every_real_feed_is_stored_once_per_identity(corpus_run: CorpusRun) -> None:
    for row in tsv("SOURCES.tsv"):
        name = row["file"]
        outcome = corpus_run.outcomes[name]
        expected = int(row["items"]) - int(row["duplicate_ids"] or 0)
        assert outcome.ok, outcome.error
        assert outcome.status == "updated" and outcome.http_status == 200, name
        assert outcome.entries == int(row["items"]), name
        assert outcome.new == corpus_run.counts.get(name, 0) == expected, name
        # feedparser flagged these documents; their recovered entries are kept, the problem recorded
        assert (outcome.problem is not None) == (row["bozo"] == "bozo"), (name, outcome.problem)


@needs_corpus
def test_an_html_page_is_an_error_naming_the_source(corpus_run: CorpusRun) -> None:
    outcome = corpus_run.outcomes["latimes-403-cloudfront.html"]
    assert outcome.status == "error" and outcome.new == 0
    assert outcome.error is not None
    assert "'latimes-403-cloudfront.html'" in outcome.error and "not a feed" in outcome.error
    assert "text/html" in outcome.error


@needs_corpus
def test_source_health_after_the_corpus(corpus_run: CorpusRun) -> None:
    rows = corpus_run.health
    assert set(rows) == {p.name for p in corpus_run.files}
    broken = rows.pop("latimes-403-cloudfront.html")
    assert (broken.status, broken.error_count, broken.items) == ("erroring", 1, 0)
    assert broken.last_error == corpus_run.outcomes[broken.name].error
    assert broken.next_due > NOW
    for row in rows.values():
        assert (row.status, row.error_count, row.last_error) == ("ok", 0, None), row.name
        assert row.last_fetch == NOW and row.last_http_status == 200
        assert row.items == row.last_new == corpus_run.counts[row.name]
        assert row.next_due > NOW


# --- re-polls ------------------------------------------------------------------------------------

REPOLLS = tsv("REPOLL.tsv")


def poll_pair(
    sessions: sessionmaker[Session], http: requests.Session, server: FeedServer, pair: dict[str, str]
) -> tuple[dict[str, StoredItem], PollOutcome, dict[str, StoredItem]]:
    """Poll the earlier capture, then the later one at the same URL an hour on."""
    ctx = open_context(sessions, [serve(server, "feed", pair["earlier_file"])], [], real_fetch(http))
    first = poll_source(ctx, "feed", NOW)
    assert first.new == int(pair["earlier_items"])
    before = {stored.item.key: stored for stored in all_items(sessions)}
    server.routes["/feed.xml"] = REAL / pair["later_file"]
    second = poll_source(ctx, "feed", NOW + HOUR)
    return before, second, {stored.item.key: stored for stored in all_items(sessions)}


@needs_corpus
@pytest.mark.parametrize("pair", REPOLLS, ids=[row["pair"] for row in REPOLLS])
def test_repoll_stores_only_the_new_items(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer, pair: dict[str, str]
) -> None:
    before, second, after = poll_pair(sessions, http, feed_server, pair)
    assert second.status == "updated" and second.entries == int(pair["later_items"])
    assert second.new == int(pair["new_in_later"])
    assert len(after) == int(pair["earlier_items"]) + int(pair["new_in_later"])  # the union, once each
    assert len({stored.id for stored in after.values()}) == len(after)
    assert set(before) <= set(after)  # dropped entries stay stored
    for key, old in before.items():
        assert after[key].id == old.id and after[key].first_seen == NOW


@needs_corpus
@pytest.mark.parametrize(
    "pair",
    REPOLLS,
    ids=[row["pair"] for row in REPOLLS],
)
def test_repoll_updates_changed_items_in_place(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer, pair: dict[str, str]
) -> None:
    before, second, after = poll_pair(sessions, http, feed_server, pair)
    common = set(before) & set(after)
    changed = {k for k in common if before[k].item.content_hash != after[k].item.content_hash}
    for key in changed:
        assert after[key].id == before[key].id and after[key].first_seen == NOW
        assert after[key].item.updated is not None and after[key].item.updated != before[key].item.updated
    for key in common - changed:
        assert after[key].item.updated == before[key].item.updated
    assert second.updated == len(changed)
    assert len(changed) == int(pair["common_with_changed_title_or_content"])


# --- conditional GET -----------------------------------------------------------------------------


def test_unchanged_feed_is_answered_304_and_not_parsed(
    sessions: sessionmaker[Session],
    http: requests.Session,
    feed_server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parses: list[str] = []

    def counting_parse(body: bytes, **kwargs: Any) -> Any:
        parses.append(kwargs["source"])
        return parse_feed(body, **kwargs)

    monkeypatch.setattr(aggregator.stages, "parse_feed", counting_parse)
    ctx = open_context(sessions, [serve(feed_server, "bbc", "bbc-news-2.xml")], [], real_fetch(http))
    first = poll_source(ctx, "bbc", NOW)
    with sessions.begin() as s:
        validators = store.fetch_state(s, "bbc")
    assert first.new == 53 and validators is not None and validators.etag

    second = poll_source(ctx, "bbc", NOW + HOUR)
    assert (second.status, second.http_status, second.new, second.entries) == ("not_modified", 304, 0, 0)
    assert second.ok and second.next_due > NOW + HOUR
    assert feed_server.hits["/bbc.xml"] == 2 and parses == ["bbc"]
    with sessions.begin() as s:
        assert store.fetch_state(s, "bbc") == validators
        assert store.count_items(s) == 53
        inputs = store.poll_inputs(s, "bbc")  # the one read the poll makes before fetching
        assert inputs == (validators, store.schedule_inputs(s, "bbc")) and len(inputs[1].published) == 20
        assert store.poll_inputs(s, "missing") == (None, store.ScheduleInputs())
        history = store.poll_history(s, "bbc")
    assert [(h.status, h.http_status, h.at) for h in history] == [
        ("not_modified", 304, NOW + HOUR),
        ("updated", 200, NOW),
    ]
    assert history[0].next_due_reason == second.due_reason
    row = health(sessions)["bbc"]
    assert (row.status, row.last_http_status, row.last_fetch, row.items) == ("ok", 304, NOW + HOUR, 53)


def test_only_a_permanent_redirect_moves_the_feed(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    url = httpserver.url_for
    ctx = open_context(
        sessions, [Source("temp", url("/feed")), Source("moved", url("/old"))], [], real_fetch(http)
    )
    # a temporary redirect to a one-time (signed) URL: the next poll must start from the source's URL again
    for n in (1, 2):
        httpserver.expect_oneshot_request("/feed").respond_with_data(
            "", status=302, headers={"Location": f"/signed-{n}"}
        )
        httpserver.expect_oneshot_request(f"/signed-{n}").respond_with_data(
            TINY_FEED, content_type="application/rss+xml"
        )
    assert poll_source(ctx, "temp", NOW).new == 1
    assert poll_source(ctx, "temp", NOW + HOUR).status == "unchanged"
    # a permanent one: the feed has moved once two consecutive polls saw it; then straight to the new address
    httpserver.expect_request("/old").respond_with_data("", status=301, headers={"Location": "/new"})
    httpserver.expect_request("/new").respond_with_data(TINY_FEED, content_type="application/rss+xml")
    assert poll_source(ctx, "moved", NOW).new == 1
    assert poll_source(ctx, "moved", NOW + HOUR).status == "unchanged"
    assert poll_source(ctx, "moved", NOW + 2 * HOUR).status == "unchanged"
    assert [request.path for request, _ in httpserver.log] == [
        *("/feed", "/signed-1", "/feed", "/signed-2"),
        *("/old", "/new", "/old", "/new", "/new"),
    ]
    rows = health(sessions)
    assert (rows["temp"].effective_url, rows["moved"].effective_url) == (None, url("/new"))


# --- failures ------------------------------------------------------------------------------------


def test_failing_source_backs_off_and_recovers(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    feed = (REAL / "aljazeera-2.xml").read_bytes() if REAL.is_dir() else TINY_FEED
    source = Source("flaky", httpserver.url_for("/feed"))
    for _ in range(3):
        httpserver.expect_oneshot_request("/feed").respond_with_data("oops", status=500)
    httpserver.expect_oneshot_request("/feed").respond_with_data(
        feed, content_type="application/xml", headers={"ETag": '"v1"'}
    )
    ctx = open_context(sessions, [source], [], real_fetch(http))

    waits = []
    for attempt in range(1, 4):
        now = NOW + attempt * HOUR
        outcome = poll_source(ctx, "flaky", now)
        assert (outcome.status, outcome.http_status) == ("error", 500)
        assert outcome.error == f"source 'flaky': HTTP 500 Internal Server Error from {source.url}"
        row = health(sessions)["flaky"]
        status = "erroring" if attempt == 1 else "backing off"
        assert (row.status, row.error_count, row.last_error) == (status, attempt, outcome.error)
        assert row.next_due == outcome.next_due
        waits.append(outcome.next_due - now)
    assert source.interval * 0.9 <= waits[0] < waits[1] < waits[2]  # exponential backoff
    assert waits[2] >= source.interval * 4 * 0.9

    now = NOW + 4 * HOUR
    outcome = poll_source(ctx, "flaky", now)
    assert outcome.ok and outcome.new > 0
    row = health(sessions)["flaky"]
    assert (row.status, row.error_count, row.last_error, row.last_http_status) == ("ok", 0, None, 200)
    assert row.next_due - now <= source.interval * 1.1
    with sessions.begin() as s:
        state = store.fetch_state(s, "flaky")
        assert state is not None and (state.url, state.etag, state.errors) == (source.url, '"v1"', 0)


def test_connection_refused_is_a_clear_error(sessions: sessionmaker[Session], http: requests.Session) -> None:
    url = f"http://127.0.0.1:{free_port()}/feed.xml"  # nothing listens there any more
    ctx = open_context(sessions, [Source("gone", url)], [], real_fetch(http))
    outcome = poll_source(ctx, "gone", NOW)
    assert outcome.status == "error" and outcome.http_status is None
    assert outcome.error == f"source 'gone': connection refused fetching {url}"
    row = health(sessions)["gone"]
    assert (row.status, row.error_count, row.last_error) == ("erroring", 1, outcome.error)


@needs_corpus
def test_an_entry_that_fails_to_normalize_is_skipped(
    sessions: sessionmaker[Session],
    http: requests.Session,
    feed_server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str | None] = []

    def normalize(raw: RawEntry, **kwargs: Any) -> Item:
        calls.append(raw.guid)
        if len(calls) == 4:  # the fourth entry of the document
            raise ValueError("cannot normalize this one")
        return normalize_entry(raw, **kwargs)

    monkeypatch.setattr(aggregator.stages, "normalize_entry", normalize)
    ctx = open_context(sessions, [serve(feed_server, "aje", "aljazeera-1.xml")], [], real_fetch(http))
    outcome = poll_source(ctx, "aje", NOW)
    assert outcome.ok and outcome.status == "updated"
    assert (outcome.new, outcome.entries) == (14, 14)
    assert outcome.problem == "1 entries skipped (entry 3: ValueError: cannot normalize this one)"
    stored = {stored.item.key for stored in all_items(sessions)}
    assert len(stored) == 14 and f"guid:{calls[3]}" not in stored


@needs_corpus
def test_a_bug_in_fetch_is_an_internal_error_and_the_batch_goes_on(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    def fetcher(source: Source, state: FetchState | None) -> FetchResult:
        if source.name == "buggy":
            raise RuntimeError("unexpected None")
        return fetch(http, source, state)

    sources = [
        serve(feed_server, "bbc", "bbc-news-2.xml"),
        serve(feed_server, "buggy", "aljazeera-1.xml"),
        serve(feed_server, "nyt", "nytimes-1.xml"),
    ]
    ctx = open_context(sessions, sources, [], fetcher)
    with ThreadPoolExecutor(max_workers=3) as pool:  # as cli.poll_many and the worker run a batch
        outcomes = {o.source: o for o in pool.map(lambda n: poll_source(ctx, n, NOW), ctx.sources)}
    buggy = outcomes.pop("buggy")
    assert buggy.status == "error"
    assert buggy.error == "source 'buggy': internal error: RuntimeError: unexpected None"
    assert {name: (o.status, o.new) for name, o in outcomes.items()} == {
        "bbc": ("updated", 53),
        "nyt": ("updated", 23),
    }
    rows = health(sessions)
    assert (rows["buggy"].status, rows["buggy"].error_count, rows["buggy"].items) == ("erroring", 1, 0)
    assert (rows["bbc"].items, rows["nyt"].items) == (53, 23)


# --- topics --------------------------------------------------------------------------------------

UK_COVID = Topic("uk-covid", "covid", tags=("uk",))
BBC_GAS = Topic("bbc-gas", "title:gas", sources=("bbc",))


def news_sources(server: FeedServer, *, bbc_tags: tuple[str, ...] = ("news", "uk")) -> list[Source]:
    return [
        serve(server, "bbc", "bbc-news-2.xml", tags=bbc_tags),
        serve(server, "guardian", "guardian-1.xml", tags=("news",)),
        serve(server, "nyt", "nytimes-1.xml", tags=("news", "us")),
    ]


def expected_members(items: Sequence[StoredItem], topic: Topic) -> set[int]:
    """The test's own reading of UK_COVID and BBC_GAS on the stored items."""
    if topic is UK_COVID:
        return {
            x.id for x in items if x.item.source == "bbc" and has_word("covid", x.item.title, x.item.text)
        }
    assert topic is BBC_GAS
    return {x.id for x in items if x.item.source == "bbc" and has_word("gas", x.item.title)}


def member_ids(sessions: sessionmaker[Session], topic: Topic) -> set[int]:
    return {x.id for x in members(sessions, topic.name)}


@needs_corpus
def test_items_are_matched_into_topics_when_stored(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    sources = news_sources(feed_server)
    ctx = open_context(sessions, sources, [UK_COVID, BBC_GAS], real_fetch(http))
    for source in sources:
        assert poll_source(ctx, source.name, NOW).ok
    items = all_items(sessions)
    for topic in (UK_COVID, BBC_GAS):
        assert member_ids(sessions, topic) == expected_members(items, topic) != set(), topic.name
    # the restrictions matter: other sources carry Covid stories too, and none of them got in
    assert any(has_word("covid", x.item.title) for x in items if x.item.source != "bbc")
    with sessions.begin() as s:
        stats = store.topic_stats(s)
    assert stats["uk-covid"].count == len(expected_members(items, UK_COVID))
    assert stats["uk-covid"].last_match == NOW


@needs_corpus
def test_an_updated_item_that_stops_matching_leaves_the_topic(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    sources = news_sources(feed_server)
    ctx = open_context(sessions, sources, [BBC_GAS], real_fetch(http))
    poll_source(ctx, "bbc", NOW)
    (gas,) = [x for x in members(sessions, "bbc-gas") if x.item.key.endswith("/business-58620167")]
    assert gas.item.title == "Loans for gas firms urged over energy price crisis"

    feed_server.routes["/bbc.xml"] = REAL / "bbc-news-1.xml"  # later: retitled, no more "gas"
    assert poll_source(ctx, "bbc", NOW + HOUR).updated == 3
    (now_stored,) = [x for x in all_items(sessions) if x.id == gas.id]
    assert now_stored.item.title == "No chance lights will go out, says government"
    assert gas.id not in member_ids(sessions, BBC_GAS)
    assert member_ids(sessions, BBC_GAS) == expected_members(all_items(sessions), BBC_GAS)


@needs_corpus
def test_collapse_duplicates_shows_an_article_once(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    both = Topic("both", "*", collapse="article")
    sources = [serve(feed_server, "bbc-a", "bbc-news-2.xml"), serve(feed_server, "bbc-b", "bbc-news-2.xml")]
    ctx = open_context(sessions, sources, [both], real_fetch(http))
    poll_source(ctx, "bbc-a", NOW)
    poll_source(ctx, "bbc-b", NOW + HOUR)
    items = all_items(sessions)
    urls = {x.item.url for x in items}
    assert len(items) == 106 and None not in urls
    by_url: dict[str | None, set[int | None]] = {}
    for x in items:
        by_url.setdefault(x.item.url, set()).add(x.article_id)
    assert all(len(ids) == 1 and None not in ids for ids in by_url.values())  # one article per URL

    collapsed = members(sessions, "both", collapse=True)
    assert len(members(sessions, "both")) == 106
    assert len(collapsed) == len(urls)
    assert {x.item.source for x in collapsed} == {"bbc-a"}  # the first sighting stands for both


@needs_corpus
def test_backfill_computes_a_new_topic_from_stored_items(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    sources = news_sources(feed_server)
    ctx = open_context(sessions, sources, [BBC_GAS], real_fetch(http))
    for source in sources:
        poll_source(ctx, source.name, NOW)
    items = all_items(sessions)
    assert member_ids(sessions, UK_COVID) == set()

    # a restart with a new topic: sync_topics names it as stale, backfill computes it in small batches
    topics = [BBC_GAS, UK_COVID]
    ctx = Context.build(sources, topics, sessions, real_fetch(http))
    with sessions.begin() as s:
        assert store.sync_topics(s, topic_definitions(topics, sources)) == ["uk-covid"]
    expected = expected_members(items, UK_COVID)
    assert backfill_topics(ctx, ["uk-covid"], NOW + HOUR, batch=7) == len(expected)
    assert member_ids(sessions, UK_COVID) == expected
    assert member_ids(sessions, BBC_GAS) == expected_members(items, BBC_GAS)  # untouched
    assert backfill_topics(ctx, ["uk-covid"], NOW + HOUR) == 0  # idempotent
    assert backfill_topics(ctx, ["no-such-topic"], NOW + HOUR) == 0


def test_topic_definitions_change_with_the_topic_or_the_source_tags() -> None:
    sources = [Source("bbc", "http://x/bbc", tags=("news", "uk")), Source("nyt", "http://x/nyt")]
    base = topic_definitions([UK_COVID, BBC_GAS], sources)
    assert base == topic_definitions([UK_COVID, BBC_GAS], list(reversed(sources)))  # stable
    assert set(base) == {"uk-covid", "bbc-gas"} and base["uk-covid"] != base["bbc-gas"]

    requery = topic_definitions([Topic("uk-covid", "covid OR vaccine", tags=("uk",)), BBC_GAS], sources)
    assert requery["uk-covid"] != base["uk-covid"] and requery["bbc-gas"] == base["bbc-gas"]
    limited = topic_definitions([UK_COVID, Topic("bbc-gas", "title:gas", sources=("bbc", "nyt"))], sources)
    assert limited["bbc-gas"] != base["bbc-gas"] and limited["uk-covid"] == base["uk-covid"]
    retagged = [Source("bbc", "http://x/bbc", tags=("news",)), sources[1]]
    assert topic_definitions([UK_COVID, BBC_GAS], retagged)["uk-covid"] != base["uk-covid"]


@needs_corpus
def test_a_source_losing_a_tag_recomputes_the_topic_on_restart(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    sources = news_sources(feed_server)
    ctx = open_context(sessions, sources, [UK_COVID], real_fetch(http))
    poll_source(ctx, "bbc", NOW)
    assert member_ids(sessions, UK_COVID)

    open_context(sessions, news_sources(feed_server, bbc_tags=("news",)), [UK_COVID], real_fetch(http))
    assert member_ids(sessions, UK_COVID) == set()


@needs_corpus
def test_a_busy_database_is_retried_and_a_dead_one_never_raises(
    sessions: sessionmaker[Session],
    http: requests.Session,
    feed_server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    real_save = store.save_items
    busy = [2]  # the first two store attempts lose the write lock, as under SQLite contention

    def save_items(*args: Any, **kwargs: Any) -> Any:
        if busy[0]:
            busy[0] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_save(*args, **kwargs)

    monkeypatch.setattr(store, "save_items", save_items)
    monkeypatch.setattr(aggregator.pipeline.time, "sleep", lambda _s: None)
    ctx = open_context(sessions, [serve(feed_server, "aje", "aljazeera-1.xml")], [], real_fetch(http))
    outcome = poll_source(ctx, "aje", NOW)
    assert outcome.ok and outcome.new == 15 and busy == [0]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("UPDATE", {}, Exception("disk I/O error"))

    monkeypatch.setattr(store, "save_items", broken)
    monkeypatch.setattr(store, "record_poll", broken)  # not even the failure can be written
    feed_server.routes["/aje.xml"] = REAL / "aljazeera-2.xml"
    outcome = poll_source(ctx, "aje", NOW)
    assert not outcome.ok and "disk I/O error" in (outcome.error or "")


@needs_corpus
def test_parsing_in_a_process_pool_stores_what_inline_parsing_does(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    aje = serve(feed_server, "aje", "aljazeera-1.xml")
    page = serve(feed_server, "page", "latimes-403-cloudfront.html")
    stages = Stages.build(processes=1, writers=1)
    try:
        ctx = replace(open_context(sessions, [aje, page], [], real_fetch(http)), stages=stages)
        pooled, refused = poll_source(ctx, "aje", NOW), poll_source(ctx, "page", NOW)
    finally:
        stages.close()
    assert pooled.ok and pooled.new == 15
    _, inline, _ = parse_document(aje, (REAL / "aljazeera-1.xml").read_bytes(), aje.url, None, NOW)
    stored = {stored.item.key: stored.item.content_hash for stored in all_items(sessions)}
    assert stored == {item.key: item.content_hash for item in inline}
    assert not refused.ok and "not a feed" in (refused.error or "")  # a ParseError crosses the pool


@needs_corpus
def test_polls_write_one_at_a_time_on_sqlite_and_none_is_lost(
    sessions: sessionmaker[Session],
    http: requests.Session,
    feed_server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """16 threads poll at once; Stages lets one store transaction in at a time (SQLite has one writer),
    so none waits in SQLite's busy handler and every poll is stored."""
    writing, peak = [0], [0]
    real_save = store.save_items

    def save_items(*args: Any, **kwargs: Any) -> Any:
        writing[0] += 1
        peak[0] = max(peak[0], writing[0])
        time.sleep(0.01)
        try:
            return real_save(*args, **kwargs)
        finally:
            writing[0] -= 1

    monkeypatch.setattr(store, "save_items", save_items)
    sources = [serve(feed_server, f"s{i}", "aljazeera-1.xml") for i in range(16)]
    ctx = open_context(sessions, sources, [], real_fetch(http))
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda s: poll_source(ctx, s.name, NOW), sources))
    assert all(o.ok and o.new == 15 for o in outcomes)
    assert peak == [1]


def test_malloc_arenas_are_capped_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    if ctypes.util.find_library("c") is None:
        pytest.skip("no C library to call")
    assert limit_malloc_arenas() is True  # glibc (Debian): mallopt(M_ARENA_MAX, 2) accepted
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's setting wins


# --- unchanged polls: write-behind and the posting times read once per body ------------------------


def _history(sessions: sessionmaker[Session], name: str) -> list[tuple[str, datetime]]:
    with sessions.begin() as s:
        return [(h.status, h.at) for h in store.poll_history(s, name)]


def _lease_owner(sessions: sessionmaker[Session], name: str) -> str | None:
    with sessions.begin() as s:
        owner: str | None = s.scalar(
            select(SourceRow.lease_owner).where(SourceRow.name == name)  # the lease column itself
        )
        return owner


def test_unchanged_polls_are_written_in_batches_in_order_and_flushed(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer, tmp_path: Path
) -> None:
    """With unchanged_batch 3: an unchanged poll keeps its source's lease until its record is written
    with others; a source polled again first has its held record written; flush_unchanged writes the
    rest; a full batch is written at once."""
    names = ("a", "b", "c")
    for name in names:
        (tmp_path / f"{name}.xml").write_bytes(TINY_FEED)
        feed_server.routes[f"/{name}.xml"] = tmp_path / f"{name}.xml"
    sources = [Source(name, feed_server.url(f"/{name}.xml")) for name in names]
    ctx = replace(open_context(sessions, sources, [], real_fetch(http)), unchanged=UnchangedPolls(3))
    assert [poll_source(ctx, n, NOW).status for n in names] == ["updated"] * 3  # written at once
    later = NOW + timedelta(days=2)
    with sessions.begin() as s:
        assert sorted(store.claim_due_sources(s, later, lease=HOUR, owner="w1")) == list(names)

    held = poll_source(ctx, "a", later)
    assert (held.status, held.http_status) == ("not_modified", 304)
    assert _history(sessions, "a") == [("updated", NOW)] and _lease_owner(sessions, "a") == "w1"
    assert ctx.unchanged.unwritten() == {"a"}

    poll_source(ctx, "a", later + HOUR)  # "a" again: its held record is written before this poll
    assert _history(sessions, "a") == [("not_modified", later), ("updated", NOW)]
    assert _lease_owner(sessions, "a") is None  # the written record ended the lease

    poll_source(ctx, "b", later)
    assert _history(sessions, "b") == [("updated", NOW)] and _lease_owner(sessions, "b") == "w1"
    poll_source(ctx, "c", later)  # the third held record: the batch is written
    assert ctx.unchanged.unwritten() == set()
    assert _history(sessions, "a")[0] == ("not_modified", later + HOUR)
    for name in ("b", "c"):
        assert _history(sessions, name) == [("not_modified", later), ("updated", NOW)]
        assert _lease_owner(sessions, name) is None

    poll_source(ctx, "c", later + HOUR)
    assert flush_unchanged(ctx) == 1 and flush_unchanged(ctx) == 0
    assert _history(sessions, "c")[0] == ("not_modified", later + HOUR)
    with sessions() as s:
        health = {h.name: h for h in store.source_health(s)}
    assert (health["c"].status, health["c"].last_http_status, health["c"].last_fetch) == (
        "ok",
        304,
        later + HOUR,
    )
    assert health["c"].next_due is not None and health["c"].next_due > later + HOUR


def test_unchanged_polls_that_cannot_be_written_keep_their_leases(
    sessions: sessionmaker[Session],
    http: requests.Session,
    feed_server: FeedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "a.xml").write_bytes(TINY_FEED)
    feed_server.routes["/a.xml"] = tmp_path / "a.xml"
    ctx = open_context(sessions, [Source("a", feed_server.url("/a.xml"))], [], real_fetch(http))
    poll_source(ctx, "a", NOW)
    later = NOW + timedelta(days=2)
    with sessions.begin() as s:
        assert store.claim_due_sources(s, later, lease=HOUR, owner="w1") == ["a"]

    def unreachable(*args: object) -> None:
        raise OperationalError("UPDATE sources", {}, Exception("unable to open database file"))

    monkeypatch.setattr(store, "record_unchanged", unreachable)
    outcome = poll_source(ctx, "a", later)  # the poll itself went well: its outcome says so
    assert (outcome.status, outcome.ok) == ("not_modified", True)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert lines == [
        "store: could not record 1 unchanged poll(s) (source 'a'): Exception: unable to open database "
        "file; polled again when the lease ends"
    ]
    assert all(r.exc_info is None for r in caplog.records)  # one line, no traceback
    assert _lease_owner(sessions, "a") == "w1" and _history(sessions, "a") == [("updated", NOW)]


@needs_corpus
def test_an_unchanged_re_poll_reads_the_posting_times_once_per_body(
    sessions: sessionmaker[Session], http: requests.Session, feed_server: FeedServer
) -> None:
    """The posting times the scheduler needs are remembered from the poll that stored the items: an
    unchanged re-poll reads the source row only, and plans as a fresh read would."""
    ctx = open_context(sessions, [serve(feed_server, "bbc", "bbc-news-2.xml")], [], real_fetch(http))
    first = poll_source(ctx, "bbc", NOW)
    with sessions.begin() as s:
        state, inputs = store.poll_inputs(s, "bbc")
    assert state is not None and inputs.source_id is not None and len(inputs.published) == 20
    assert ctx.posting_times.get(inputs.source_id, state.body_hash) == inputs.published
    statements: list[str] = []
    engine = sessions.kw["bind"]
    listen = functools.partial(_record_statement, statements)
    event.listen(engine, "before_cursor_execute", listen)
    try:
        second = poll_source(ctx, "bbc", NOW + HOUR)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert (second.status, second.due_reason) == ("not_modified", first.due_reason)
    assert not [q for q in statements if "items.published" in q]
    assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 1


def _record_statement(statements: list[str], *args: Any) -> None:
    statements.append(str(args[2]))
