"""The store on a real SQLite file: identity, updates in place, articles, topic memberships, health."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.errors import StoreError
from aggregator.model import Enclosure, FeedMeta, FetchState, Item, PollOutcome, Source

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


def make_item(source: str, key: str, title: str, *, url: str | None = None, hours: int = 0) -> Item:
    return Item(
        source=source,
        key=key,
        uid=f"uid-{source}-{key}",
        title=title,
        html=f"<p>{title}</p>",
        text=title,
        published=NOW - timedelta(hours=hours),
        content_hash=f"hash-{title}",
        url=url,
        link=url,
        authors=("Jane Doe",),
        categories=("World",),
        enclosures=(Enclosure("https://example.com/a.mp3", "audio/mpeg", 123),),
    )


@pytest.fixture
def s(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions.begin() as session:
        store.sync_sources(
            session, [Source("bbc", "https://bbc.example/rss"), Source("cnn", "file:///x")], NOW
        )
    with sessions() as session:
        yield session


def test_schema_is_at_head_after_upgrade(sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    current, head = store.schema_revision(engine)
    assert current == head
    if engine.dialect.name == "sqlite":
        with engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    store.upgrade(engine)  # idempotent


def test_save_is_idempotent_and_updates_in_place(s: Session) -> None:
    a, b = make_item("bbc", "guid:1", "One"), make_item("bbc", "guid:2", "Two")
    first = store.save_items(s, "bbc", [a, b, a], NOW)
    assert [item for _, item in first.new] == [a, b] and first.updated == []
    again = store.save_items(s, "bbc", [a, b], NOW + timedelta(hours=1))
    assert again.new == [] and again.unchanged == 2
    changed = dataclasses.replace(a, title="One, corrected", content_hash="hash-new")
    result = store.save_items(s, "bbc", [changed], NOW + timedelta(hours=2))
    first_id = first.new[0][0]
    assert result.updated == [(first_id, changed)]
    assert store.count_items(s) == 2
    (stored,) = store.stored_items(s, [first_id])
    assert stored.item.title == "One, corrected"
    assert stored.item.updated == NOW + timedelta(hours=2)
    assert stored.first_seen == NOW
    assert stored.item.enclosures == (Enclosure("https://example.com/a.mp3", "audio/mpeg", 123),)
    assert stored.item.published.tzinfo is not None


def test_undated_item_keeps_first_seen_time(s: Session) -> None:
    item = dataclasses.replace(make_item("bbc", "hash:x", "X"), dated=False)
    ((item_id, _),) = store.save_items(s, "bbc", [item], NOW).new
    later = dataclasses.replace(item, published=NOW + timedelta(days=1), content_hash="other")
    store.save_items(s, "bbc", [later], NOW + timedelta(days=1))
    (stored,) = store.stored_items(s, [item_id])
    assert stored.item.published == NOW


def test_same_url_from_two_sources_is_one_article(s: Session) -> None:
    url = "https://news.example/story"
    one = [i for i, _ in store.save_items(s, "bbc", [make_item("bbc", "guid:a", "A", url=url)], NOW).new]
    two = [i for i, _ in store.save_items(s, "cnn", [make_item("cnn", "link:" + url, "A", url=url)], NOW).new]
    items = list(store.stored_items(s, one + two))
    assert items[0].article_id is not None and items[0].article_id == items[1].article_id
    store.sync_topics(s, {"t": "def"})
    store.add_topic_items(s, "t", one + two, NOW)
    assert len(store.topic_items(s, "t", limit=10)) == 2
    collapsed = store.topic_items(s, "t", limit=10, collapse=True)
    assert [x.id for x in collapsed] == one
    assert store.topic_entry_count(s, "t", collapse="article") == 1  # paging counts collapsed entries
    assert store.topic_entry_count(s, "t", collapse="none") == 2


def test_unknown_source_is_refused(s: Session) -> None:
    with pytest.raises(LookupError, match="unknown source 'nope'"):
        store.save_items(s, "nope", [], NOW)


def test_topic_membership_order_limit_and_stats(s: Session) -> None:
    items = [make_item("bbc", f"guid:{i}", f"T{i}", hours=i) for i in range(5)]
    ids = [i for i, _ in store.save_items(s, "bbc", items, NOW).new]
    assert store.sync_topics(s, {"t": "v1", "u": "v1"}) == ["t", "u"]
    assert store.add_topic_items(s, "t", ids, NOW) == 5
    assert store.add_topic_items(s, "t", ids, NOW) == 0
    newest = store.topic_items(s, "t", limit=3)
    assert [x.item.title for x in newest] == ["T0", "T1", "T2"]
    stats = store.topic_stats(s)
    assert stats["t"].count == 5 and stats["t"].last_change == NOW
    assert stats["u"].count == 0 and stats["u"].last_change is None
    store.remove_topic_items(s, "t", ids[:1])
    assert store.topic_stats(s)["t"].count == 4
    assert store.item_topics(s, ids[1:2]) == {ids[1]: ["t"]}
    # a changed definition or a removed topic drops memberships
    assert store.sync_topics(s, {"t": "v2"}) == ["t"]
    assert store.topic_stats(s) == {"t": store.TopicStats(0, None, NOW)}


def test_claim_moves_due_time_and_record_poll(s: Session) -> None:
    assert sorted(store.claim_due_sources(s, NOW, lease=timedelta(minutes=5))) == ["bbc", "cnn"]
    assert store.claim_due_sources(s, NOW + timedelta(minutes=1), lease=timedelta(minutes=5)) == []
    ok = PollOutcome("bbc", "updated", NOW + timedelta(minutes=30), http_status=200, entries=3, new=3)
    store.record_poll(
        s,
        ok,
        now=NOW,
        state=FetchState("https://bbc.example/new", etag='"e1"', last_modified="x"),
        meta=FeedMeta(title="BBC News", link="https://bbc.example"),
    )
    bad = PollOutcome("cnn", "error", NOW + timedelta(minutes=30), error="source 'cnn': boom")
    store.record_poll(s, bad, now=NOW)
    store.record_poll(s, bad, now=NOW)
    health = {h.name: h for h in store.source_health(s)}
    assert health["bbc"].status == "ok" and health["bbc"].last_new == 3
    assert health["bbc"].effective_url == "https://bbc.example/new"
    assert store.fetch_state(s, "bbc") == FetchState("https://bbc.example/new", '"e1"', "x")
    assert store.fetch_state(s, "cnn") == FetchState("file:///x", errors=2)
    assert health["cnn"].status == "backing off" and health["cnn"].error_count == 2
    assert health["cnn"].last_error == "source 'cnn': boom"
    assert store.fetch_state(s, "missing") is None


def test_sync_sources_handles_removed_changed_and_disabled(s: Session) -> None:
    store.claim_due_sources(s, NOW, lease=timedelta(hours=1))
    store.sync_sources(
        s, [Source("bbc", "https://bbc.example/other"), Source("cnn", "file:///x", enabled=False)], NOW
    )
    assert store.claim_due_sources(s, NOW, lease=timedelta(hours=1)) == ["bbc"]
    store.sync_sources(s, [], NOW)
    assert store.source_health(s) == []


def test_bad_database_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="invalid database URL"):
        store.make_engine("not a url")
    with pytest.raises(StoreError, match="nosuchdriver"):
        store.make_engine("nosuchdriver://x/y")
