"""A re-poll normalizes only the entries that are new or changed (issue 7): each item keeps the hash of
its raw entry (migration 0007) and the parse stage compares it, per identity key, before normalizing.

Real parts: feeds served on 127.0.0.1 by tests/conftest.py's FeedServer, the real fetcher, migrated
SQLite files and PostgreSQL databases. Normalizing is counted by wrapping stages.normalize_entry.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import FeedServer
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

import aggregator.normalize
from aggregator import store
from aggregator.fetch import fetch, make_session
from aggregator.model import FeedMeta, RawEntry, Source
from aggregator.normalize import raw_identity
from aggregator.pipeline import Context, poll_source
from aggregator.stages import Stages
from aggregator.store.engine import migrate
from aggregator.store.tables import Base, ItemRow

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def rss(*items: str) -> bytes:
    return ('<rss version="2.0"><channel><title>T</title>' + "".join(items) + "</channel></rss>").encode()


def item(guid: str | None, title: str, link: str, body: str = "Some words of the body.") -> str:
    guid_xml = f"<guid>{guid}</guid>" if guid is not None else ""
    return (
        f"<item>{guid_xml}<title>{title}</title><link>{link}</link>"
        f"<pubDate>Mon, 31 Aug 2026 10:00:00 +0000</pubDate><description>{body}</description></item>"
    )


class Feed:
    """One source whose document the test rewrites between polls."""

    def __init__(self, server: FeedServer, folder: Path, sessions: sessionmaker[Session], **kw: Any) -> None:
        self.path = folder / "feed.xml"
        server.routes["/feed.xml"] = self.path
        self.source = Source(name="s", url=server.url("/feed.xml"), **kw)
        self.sessions = sessions
        self.http = make_session()
        self.ctx = Context.build([self.source], [], sessions, functools.partial(fetch, self.http))
        with sessions.begin() as s:
            store.sync_sources(s, [self.source], NOW)
        self.polls = 0

    def poll(self, body: bytes) -> Any:
        self.path.write_bytes(body)
        self.polls += 1
        return poll_source(self.ctx, "s", NOW + timedelta(hours=self.polls))

    def stored(self) -> dict[str, tuple[str, str | None]]:
        with self.sessions() as s:
            rows = s.execute(select(ItemRow.key, ItemRow.title, ItemRow.raw_hash)).all()
        return {key: (title, raw_hash) for key, title, raw_hash in rows}


@pytest.fixture
def normalized(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The titles of the raw entries the parse stage normalizes, in order."""
    seen: list[str | None] = []
    real = aggregator.normalize.normalize_entry

    def counting(raw: RawEntry, **kw: Any) -> Any:
        seen.append(raw.title)
        return real(raw, **kw)

    monkeypatch.setattr("aggregator.stages.normalize_entry", counting)
    return seen


@pytest.fixture
def feed(feed_server: FeedServer, tmp_path: Path, sessions: sessionmaker[Session]) -> Iterator[Feed]:
    f = Feed(feed_server, tmp_path, sessions)
    yield f
    f.http.close()


A = item("a", "Alpha", "https://x.example/a")
B = item("b", "Bravo", "https://x.example/b")
C = item("c", "Charlie", "https://x.example/c")


def test_a_repoll_normalizes_only_new_and_changed_entries(feed: Feed, normalized: list[str | None]) -> None:
    first = feed.poll(rss(A, B, C))
    assert (first.new, first.entries, normalized) == (3, 3, ["Alpha", "Bravo", "Charlie"])
    normalized.clear()
    changed_b = item("b", "Bravo revised", "https://x.example/b")
    d = item("d", "Delta", "https://x.example/d")
    second = feed.poll(rss(d, A, changed_b))  # C dropped off, B changed, D new
    assert normalized == ["Delta", "Bravo revised"]
    assert (second.entries, second.new, second.updated, second.unchanged) == (3, 1, 1, 1)
    assert feed.stored()["guid:b"][0] == "Bravo revised"
    normalized.clear()
    third = feed.poll(rss(item("e", "Echo", "https://x.example/e"), d, A, changed_b))
    assert normalized == ["Echo"]
    assert (third.status, third.entries, third.new, third.updated, third.unchanged) == ("updated", 4, 1, 0, 3)


def test_entries_sharing_an_identity_are_always_normalized(feed: Feed, normalized: list[str | None]) -> None:
    """A guid reused for two entries: both are normalized on every poll, so dedup.disambiguate keeps
    giving each the key it was stored under."""
    one, two = item("g", "One", "https://x.example/1"), item("g", "Two", "https://x.example/2")
    first = feed.poll(rss(one, two, A))
    keys = set(feed.stored())
    assert first.new == 3 and len(keys) == 3
    normalized.clear()
    second = feed.poll(rss(B, one, two, A))
    assert sorted(t for t in normalized if t) == ["Bravo", "One", "Two"]
    assert (second.new, second.updated, second.unchanged) == (1, 0, 3)
    assert set(feed.stored()) == keys | {"guid:b"}


def test_a_new_raw_entry_with_the_same_content_is_skipped_from_then_on(
    feed: Feed, normalized: list[str | None]
) -> None:
    """Another tracking parameter on the link: the title and text are the same (unchanged, not an
    update); the stored raw hash follows, so the next poll skips the entry."""
    feed.poll(rss(A, B))
    before = feed.stored()["guid:a"][1]
    normalized.clear()
    moved = item("a", "Alpha", "https://x.example/a?utm_source=rss")
    second = feed.poll(rss(moved, B))
    assert (normalized, second.updated, second.unchanged) == (["Alpha"], 0, 2)
    assert feed.stored()["guid:a"][1] not in (None, before)
    normalized.clear()
    third = feed.poll(rss(C, moved, B))
    assert (normalized, third.new, third.unchanged) == (["Charlie"], 1, 2)


def test_entries_without_guid_are_compared_by_canonical_link(
    feed: Feed, normalized: list[str | None]
) -> None:
    no_guid = item(None, "Linked", "https://x.example/linked?utm_medium=feed")
    feed.poll(rss(no_guid))
    assert "link:https://x.example/linked" in feed.stored()
    normalized.clear()
    second = feed.poll(rss(A, no_guid))
    assert (normalized, second.new, second.unchanged) == (["Alpha"], 1, 1)


@pytest.mark.parametrize("processes", [0, 1])
def test_the_parse_stage_normalizes_only_what_the_store_lacks(processes: int) -> None:
    """Inline and in a pool process: the entries whose stored raw hash matches are counted, not
    normalized."""
    stages = Stages.build(processes=processes, writers=1)
    source = Source("s", "https://x.example/feed")
    try:
        _, items, same, _ = stages.run(source, rss(A, B, C), source.url, None, NOW, lambda keys: {})
        assert (len(items), same) == (3, 0)
        stored = {item.key: item.raw_hash for item in items}
        changed = rss(A, item("b", "Bravo revised", "https://x.example/b"), C)
        _, again, same, _ = stages.run(source, changed, source.url, None, NOW, lambda keys: stored)
        assert ([i.title for i in again], same) == (["Bravo revised"], 2)
    finally:
        stages.close()


def test_raw_identity_key_and_hash() -> None:
    source, meta, url = Source("s", "https://x.example/feed"), FeedMeta(language="en"), "https://x.example/f"
    raw = RawEntry(guid=" 42 ", link="https://x.example/a?utm_source=x", title="T", summary="<p>Hi</p>")
    key, digest, url_found = raw_identity(raw, source=source, feed=meta, feed_url=url)
    assert key == "guid:42" and len(digest) == 32 and url_found is None  # the guid decides: no URL needed
    assert raw_identity(raw, source=source, feed=meta, feed_url=url) == (key, digest, None)  # deterministic
    no_guid = RawEntry(link="https://x.example/a?utm_source=x", title="T")
    assert raw_identity(no_guid, source=source, feed=meta, feed_url=url)[::2] == (
        "link:https://x.example/a",
        "https://x.example/a",
    )
    assert raw_identity(RawEntry(title="T"), source=source, feed=meta, feed_url=url)[0] is None
    others = [  # whatever normalize_entry reads changes the hash
        (RawEntry(guid=" 42 ", link=raw.link, title="T", summary="<p>Hi!</p>"), source, meta),
        (raw, Source("s", source.url, boilerplate=("Share this",)), meta),
        (raw, Source("s", source.url, strip_params=("ref",)), meta),
        (raw, source, FeedMeta(language="de")),
    ]
    for other, src, feed_meta in others:
        assert raw_identity(other, source=src, feed=feed_meta, feed_url=url)[1] != digest
    assert raw_identity(raw, source=source, feed=meta, feed_url="https://y.example/f")[1] != digest


def _lookup_index(engine: Any) -> list[str | None]:
    found = [
        i for i in inspect(engine).get_indexes("fingerprints") if i["name"] == "ix_fingerprints_key_published"
    ]
    return list(found[0]["column_names"])


def test_migration_0007_up_and_down(database_url: str) -> None:
    engine = store.make_engine(database_url)
    try:
        with engine.connect() as c:
            diffs = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert diffs == []
        assert _lookup_index(engine) == ["key", "published", "kind", "item_id"]
        migrate(engine, "0006", down=True)
        assert "raw_hash" not in {c["name"] for c in inspect(engine).get_columns("items")}
        assert _lookup_index(engine) == ["key", "published"]
        migrate(engine, "head")
        assert "raw_hash" in {c["name"] for c in inspect(engine).get_columns("items")}
        assert _lookup_index(engine) == ["key", "published", "kind", "item_id"]
    finally:
        engine.dispose()
