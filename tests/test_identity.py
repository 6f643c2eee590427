"""Rule 1 of deduplication on real corpus items: the same entry again, within one source.

guid, else canonical link, else hash; a guid reused for different entries is disambiguated; changed
entries are updated in place once per change; flapping entries stop generating updates; pruned items
leave tombstones. Runs the real parse -> normalize -> disambiguate -> save path on a real SQLite file.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.dedup import disambiguate, repeated_keys
from aggregator.model import Item, Source
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed
from aggregator.store import repo
from aggregator.store.tables import ItemRow, SourceRow

REAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def items_of(name: str, source: str = "feed", now: datetime = NOW) -> list[Item]:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"corpus file {path} is missing")
    parsed = parse_feed(path.read_bytes(), url=path.as_uri(), source=source)
    src = Source(name=source, url=path.as_uri())
    return [
        normalize_entry(raw, source=src, feed=parsed.meta, feed_url=path.as_uri(), now=now)
        for raw in parsed.entries
    ]


def save(sessions: sessionmaker[Session], items: Sequence[Item], now: datetime = NOW) -> store.SaveResult:
    """What the pipeline does with one document's items."""
    with sessions.begin() as s:
        store.sync_sources(s, [Source(name="feed", url="https://example.com/feed")], now)
        distinct = disambiguate(items, store.item_urls(s, "feed", repeated_keys(items)))
        return store.save_items(s, "feed", distinct, now)


def repoll_pairs() -> list[dict[str, str]]:
    path = REAL / "REPOLL.tsv"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("pair", repoll_pairs(), ids=lambda p: p["pair"])
def test_repolls_are_classified_and_updates_applied_once(
    sessions: sessionmaker[Session], pair: dict[str, str]
) -> None:
    first = save(sessions, items_of(pair["earlier_file"]))
    assert len(first.new) == int(pair["earlier_items"])
    later = items_of(pair["later_file"], now=NOW + timedelta(hours=9))
    second = save(sessions, later, NOW + timedelta(hours=9))
    assert len(second.new) == int(pair["new_in_later"])
    assert len(second.updated) == int(pair["common_with_changed_title_or_content"])
    assert second.unchanged == int(pair["common"]) - len(second.updated)
    again = save(sessions, later, NOW + timedelta(hours=10))  # the same document again: nothing to do
    assert (again.new, again.updated, again.unchanged) == ([], [], len(later))
    with sessions() as s:
        for item_id, item in second.updated:  # updated in place, with the time of the change
            row = s.get(ItemRow, item_id)
            assert row is not None and row.update_count == 1 and row.title == item.title
            assert row.updated == (item.updated or NOW + timedelta(hours=9))
            assert row.first_seen == NOW


def test_identity_is_guid_else_link_else_hash_on_real_items() -> None:
    assert all(item.key.startswith("guid:") for item in items_of("bbc-news-1.xml"))
    no_guids = items_of("cacm-news-1.xml")  # minimal RSS without guids
    assert all(item.key == f"link:{item.url}" for item in no_guids)
    path = REAL / "cacm-news-1.xml"
    parsed = parse_feed(path.read_bytes(), url=path.as_uri())
    src = Source(name="feed", url=path.as_uri())
    for raw in parsed.entries:  # neither guid nor link: the content decides
        item = normalize_entry(replace(raw, link=None), source=src, feed=parsed.meta, feed_url="", now=NOW)
        assert item.key == f"hash:{item.content_hash}"


def test_a_guid_reused_for_different_entries_is_disambiguated(sessions: sessionmaker[Session]) -> None:
    # A broken CMS gives every entry of the day the same guid: three real BBC entries share one.
    a, b, c = items_of("bbc-news-1.xml")[:3]
    shared = [replace(item, key=a.key, uid=a.uid) for item in (a, b, c)]
    result = save(sessions, [*shared, shared[1]])  # ... and one of them twice
    assert len(result.new) == 3
    keys = [item.key for _, item in result.new]
    assert keys == [a.key, f"{a.key}#link:{b.url}", f"{a.key}#link:{c.url}"]
    assert len({item.uid for _, item in result.new}) == 3
    assert all("guid-repeated" in item.flags for _, item in result.new)
    # the next poll lists them in another order: each entry keeps its identity, nothing is new
    again = save(sessions, [shared[2], shared[0], shared[1]], NOW + timedelta(hours=1))
    assert (again.new, again.updated, again.unchanged) == ([], [], 3)


def test_the_entry_stored_under_a_guid_keeps_it_when_the_guid_is_reused(
    sessions: sessionmaker[Session],
) -> None:
    a, b = items_of("bbc-news-1.xml")[:2]
    save(sessions, [a])
    b_same_guid = replace(b, key=a.key, uid=a.uid)
    result = save(sessions, [b_same_guid, a], NOW + timedelta(hours=1))  # the newcomer comes first
    assert [item.key for _, item in result.new] == [f"{a.key}#link:{b.url}"]
    assert result.unchanged == 1


def test_a_guid_repeated_for_the_same_entry_is_one_item() -> None:
    a = items_of("bbc-news-1.xml")[0]
    assert disambiguate([a, a]) == [a]
    assert repeated_keys([a, a]) == [a.key]
    titled = [replace(a, url=None), replace(a, url=None, title=a.title + " ")]  # same title, no link
    assert len(disambiguate(titled)) == 1
    other = replace(a, url=None, title="Another entry")
    assert [i.key for i in disambiguate([titled[0], other])][1].startswith(a.key + "#title:")


def test_a_flapping_entry_stops_generating_updates(sessions: sessionmaker[Session]) -> None:
    item = items_of("aljazeera-1.xml")[0]
    save(sessions, [item])
    updates = 0
    for poll in range(1, 16):  # the title changes on every poll (a live counter, an A/B test)
        flapped = replace(item, title=f"{item.title} ({poll})", content_hash=f"{poll:040x}")
        result = save(sessions, [flapped], NOW + timedelta(minutes=10 * poll))
        updates += len(result.updated)
        assert result.new == []
    assert updates == store.repo.MAX_UPDATES
    with sessions() as s:
        row = s.scalars(select(ItemRow)).one()
        assert row.update_count == store.repo.MAX_UPDATES and "flapping" in row.flags
        assert row.title == f"{item.title} ({store.repo.MAX_UPDATES})"  # the last update applied


def test_pruned_items_leave_tombstones_and_never_come_back(sessions: sessionmaker[Session]) -> None:
    items = items_of("bbc-news-2.xml")  # published in September 2021
    save(sessions, items, NOW)
    later = NOW + timedelta(days=100)
    with sessions.begin() as s:
        dry = store.prune_items(s, later - timedelta(days=90), later, dry_run=True)
        assert (dry.items, dry.tombstones) == (len(items), 0)
        result = store.prune_items(s, later - timedelta(days=90), later)
        assert (result.items, result.tombstones) == (len(items), len(items))
        assert store.count_items(s) == 0
    again = save(sessions, items_of("bbc-news-1.xml"), later)  # the feed still carries 37 of them
    assert len(again.new) == 20 and again.tombstoned == 37
    with sessions.begin() as s:  # pruning again keeps the old tombstones and adds none for kept items
        assert store.prune_items(s, later - timedelta(days=90), later).tombstones == len(items)


def test_prune_keeps_recent_items_and_recently_seen_old_ones(sessions: sessionmaker[Session]) -> None:
    items = items_of("bbc-news-2.xml")
    save(sessions, items, NOW)
    with sessions.begin() as s:  # first seen just now: kept, whatever their published date
        assert store.prune_items(s, NOW - timedelta(days=90), NOW).items == 0
        assert store.count_items(s) == len(items)


def test_one_batch_insert_stores_a_poll_and_skips_what_another_writer_stored(
    sessions: sessionmaker[Session],
) -> None:
    items = items_of("bbc-news-1.xml")[:6]
    with sessions.begin() as s:
        store.sync_sources(s, [Source(name="feed", url="https://example.com/feed")], NOW)
        source_id = s.scalars(select(SourceRow.id)).one()
        first = repo._insert_items(s, source_id, items[:2], NOW)  # the other writer's commit
        second = repo._insert_items(s, source_id, items, NOW)
        stored = {key: article for key, article in s.execute(select(ItemRow.key, ItemRow.article_id))}
    assert set(first) == {i.key for i in items[:2]}
    assert set(second) == {i.key for i in items[2:]}  # the two stored already are not claimed as new
    assert sorted(second.values()) == list(second.values())  # ids in document order
    assert all(stored[i.key] is not None for i in items if i.url)  # every URL got its article
    result = save(sessions, items)
    assert (len(result.new), result.unchanged) == (0, 6)
