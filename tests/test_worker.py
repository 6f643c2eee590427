"""The worker's dispatch on a real SQLite store and a real server on 127.0.0.1: it keeps the pool busy
(claims up to twice as many sources as threads), never hands out a source that is still in flight, and
the per-host limit holds across every source of a host (counted at the server)."""

from __future__ import annotations

import functools
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import requests
from conftest import Clock, GateServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.fetch import HostLimits, fetch
from aggregator.model import Source
from aggregator.pipeline import Context, UnchangedPolls
from aggregator.schedule import CLAIM_LEASE
from aggregator.store.tables import FingerprintRow, SourceRow
from aggregator.worker import Worker

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def setup(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer, count: int, per_host: int
) -> tuple[Context, list[Source]]:
    sources = [Source(f"s{i}", gate.url(f"/feed-{i}")) for i in range(count)]
    limits = HostLimits(per_host=per_host)
    ctx = Context.build(sources, [], sessions, functools.partial(fetch, http, limits=limits))
    with sessions.begin() as s:
        store.sync_sources(s, sources, NOW)
    return ctx, sources


def finish_polls(worker: Worker, polls: int) -> None:
    for _ in range(500):
        if worker.polls >= polls:
            return
        worker.done.wait(0.05)
        worker.done.clear()
    raise AssertionError(f"only {worker.polls} of {polls} polls finished")


def finish(worker: Worker, polls: int) -> None:
    finish_polls(worker, polls)
    worker.pool.shutdown(wait=True)


def test_dispatch_keeps_the_pool_busy_and_never_doubles_a_source(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    ctx, _ = setup(sessions, http, gate, count=7, per_host=10)
    clock = Clock(NOW)
    worker = Worker(ctx, threads=2, clock=clock)
    try:
        first = worker.dispatch()
        assert len(first) == 4  # two polling, two queued for the next free thread
        assert worker.dispatch() == []  # the backlog is full
        gate.wait_for(2)
        clock.now = NOW + CLAIM_LEASE + timedelta(minutes=1)  # leases expired: all 7 are claimable again
        assert worker.dispatch() == []  # still no room: nothing more is claimed
    finally:
        gate.gate.set()
        finish(worker, 4)
    assert worker.polls == 4
    assert sorted(gate.paths) == sorted(f"/feed-{n[1:]}" for n in first)  # each polled once


def test_per_host_limit_holds_across_the_workers_threads(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    ctx, sources = setup(sessions, http, gate, count=6, per_host=2)
    worker = Worker(ctx, threads=6, clock=Clock(NOW))
    try:
        assert len(worker.dispatch()) == 6
        gate.wait_for(2)
        threading.Event().wait(0.3)  # give the other four every chance to (wrongly) get through
        assert gate.peak == 2
    finally:
        gate.gate.set()
        finish(worker, 6)
    assert worker.polls == 6 and len(gate.paths) == 6
    assert gate.peak == 2
    with sessions.begin() as s:
        assert {h.name: h.status for h in store.source_health(s)} == {s.name: "ok" for s in sources}


def test_a_source_still_in_flight_is_not_dispatched_again_when_its_lease_expires(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    ctx, _ = setup(sessions, http, gate, count=3, per_host=10)
    clock = Clock(NOW)
    worker = Worker(ctx, threads=2, clock=clock)  # room for 4: a free slot remains
    try:
        assert sorted(worker.dispatch()) == ["s0", "s1", "s2"]
        gate.wait_for(2)
        clock.now = NOW + CLAIM_LEASE + timedelta(minutes=1)  # claimable again, but still in flight
        assert worker.dispatch() == []
    finally:
        gate.gate.set()
        finish(worker, 3)
    assert sorted(gate.paths) == ["/feed-0", "/feed-1", "/feed-2"]  # each polled exactly once


def test_a_thread_that_frees_up_picks_up_due_sources_before_the_next_tick(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    gate.gate.set()  # answer at once
    ctx, _ = setup(sessions, http, gate, count=7, per_host=10)
    worker = Worker(ctx, tick=3600, threads=2)  # the interval tick would come only in an hour
    worker.start()
    try:
        for _ in range(400):  # bounded: all 7 are polled long before the hour-long tick
            if worker.polls >= 7:
                break
            worker.done.wait(0.05)
            worker.done.clear()
    finally:
        worker.stop()
    assert worker.polls == 7 and sorted(gate.paths) == sorted(f"/feed-{i}" for i in range(7))


def test_unchanged_polls_are_written_by_the_next_dispatch_and_keep_their_leases_until_then(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    """With unchanged polls written in batches, a finished poll's record may wait: its source keeps
    the lease (not released, not claimed again) until the next dispatch writes it in its own
    transaction; stop() writes what is left."""
    gate.gate.set()  # answer at once: the same tiny feed every time (an unchanged body)
    ctx, _ = setup(sessions, http, gate, count=3, per_host=10)
    ctx = replace(ctx, unchanged=UnchangedPolls(batch=50))
    clock = Clock(NOW)
    worker = Worker(ctx, threads=3, clock=clock, owner="w1")
    assert sorted(worker.dispatch()) == ["s0", "s1", "s2"]
    finish_polls(worker, 3)  # first polls: stored (written at once)
    clock.now = NOW + timedelta(days=2)  # all due again
    assert sorted(worker.dispatch()) == ["s0", "s1", "s2"]
    finish_polls(worker, 6)  # unchanged: held
    assert ctx.unchanged.unwritten() == {"s0", "s1", "s2"}
    with sessions.begin() as s:
        assert {h.name: len(store.poll_history(s, h.name)) for h in store.source_health(s)} == {
            "s0": 1,
            "s1": 1,
            "s2": 1,
        }
        rows = s.execute(select(SourceRow.name, SourceRow.lease_owner)).all()
        assert sorted(rows) == [("s0", "w1"), ("s1", "w1"), ("s2", "w1")]
    assert worker.dispatch() == []  # writes the held records: leases end, nothing is due any more
    assert ctx.unchanged.unwritten() == set()
    with sessions.begin() as s:
        statuses = {h.name: [p.status for p in store.poll_history(s, h.name)] for h in store.source_health(s)}
        assert statuses == {name: ["unchanged", "updated"] for name in ("s0", "s1", "s2")}
        assert s.execute(select(SourceRow.lease_owner).where(SourceRow.lease_owner.is_not(None))).all() == []
    clock.now += timedelta(days=2)
    assert sorted(worker.dispatch()) == ["s0", "s1", "s2"]
    finish_polls(worker, 9)
    worker.stop()  # writes the last held records
    with sessions.begin() as s:
        assert [len(store.poll_history(s, n)) for n in ("s0", "s1", "s2")] == [3, 3, 3]


def test_the_worker_applies_retention_days_on_a_schedule(sessions: sessionmaker[Session]) -> None:
    from aggregator.model import Item

    source = Source("old", "http://127.0.0.1:9/feed", enabled=False)  # never polled here
    ctx = Context.build([source], [], sessions, functools.partial(fetch, requests.Session()))

    def item(key: str, days: int) -> Item:
        when = NOW - timedelta(days=days)
        return Item("old", key, f"uid-{key}", key, f"<p>{key}</p>", key, when, content_hash=key)

    with sessions.begin() as s:
        store.sync_sources(s, [source], NOW - timedelta(days=100))
        store.save_items(s, "old", [item("ancient", 90)], NOW - timedelta(days=90))
        store.save_items(s, "old", [item("recent", 2)], NOW - timedelta(days=2))
    worker = Worker(ctx, clock=lambda: NOW, retention=timedelta(days=30), prune_every=timedelta(hours=1))
    worker.start()
    try:
        job = worker.scheduler.get_job("prune")
        assert job is not None and job.trigger.interval == timedelta(hours=1)
        assert job.next_run_time > NOW  # not at start: a minute later
    finally:
        worker.stop()
    assert worker.prune() == 1
    assert worker.prune() == 0  # a second worker pruning at once finds nothing left
    with sessions() as s:
        assert [stored.item.key for stored in store.stored_items(s)] == ["recent"]
        assert store.prune_items(s, NOW, NOW, dry_run=True).tombstones == 1
    assert Worker(ctx, clock=lambda: NOW).prune() == 0  # no retention: no item deleted


def test_the_worker_keeps_fingerprints_for_the_window_new_items_are_matched_against(
    sessions: sessionmaker[Session],
) -> None:
    """The fingerprint rows of items first seen before StoryParams.index_days (60) are dropped on the
    first prune, those that age out later on the next ones; a new item still joins a recent item's
    article through them, and the items and their decisions stay."""
    from aggregator.model import Item

    text = " ".join(f"word{i}" for i in range(80))  # long enough for near-duplicate and exact-text keys
    sources = [
        Source("a", "http://127.0.0.1:9/a", enabled=False),
        Source("b", "http://127.0.0.1:9/b", enabled=False),
    ]
    ctx = Context.build(sources, [], sessions, functools.partial(fetch, requests.Session()))

    def item(source: str, key: str, days: int) -> Item:
        when = NOW - timedelta(days=days)
        return Item(source, key, f"uid-{source}-{key}", f"Title {key}", f"<p>{text}</p>", text, when,
                    content_hash=key)  # fmt: skip

    def rows() -> dict[str, int]:
        with sessions() as s:
            query = select(FingerprintRow.item_id, FingerprintRow.id)
            keys = {i: k for i, k in s.execute(select(store.tables.ItemRow.id, store.tables.ItemRow.key))}
            found: dict[str, int] = {}
            for item_id, _ in s.execute(query):
                found[keys[item_id]] = found.get(keys[item_id], 0) + 1
            return found

    with sessions.begin() as s:
        store.sync_sources(s, sources, NOW - timedelta(days=200))
    for key, days in (("ancient", 100), ("old", 61), ("recent", 10)):
        with sessions.begin() as s:  # each stored and linked when it was published
            saved = store.save_items(s, "a", [item("a", key, days)], NOW - timedelta(days=days))
            store.link_items(s, saved.new, [], NOW - timedelta(days=days), ctx.stories)
    assert set(rows()) == {"ancient", "old", "recent"}
    worker = Worker(ctx, clock=lambda: NOW)
    worker.prune()
    assert set(rows()) == {"recent"}
    with sessions.begin() as s:  # the same text from another source: the same article, found by its keys
        saved = store.save_items(s, "b", [item("b", "copy", 0)], NOW)
        store.link_items(s, saved.new, [], NOW, ctx.stories)
        articles = dict(s.execute(select(store.tables.ItemRow.key, store.tables.ItemRow.article_id)).all())
    assert articles["copy"] == articles["recent"]
    later = NOW + timedelta(days=55)  # "recent" is 65 days old now, "copy" 55
    worker.clock = lambda: later
    worker.prune()
    assert set(rows()) == {"copy"}
    with sessions() as s:
        assert len(list(store.stored_items(s))) == 4  # the items stay


def test_an_item_stored_out_of_order_keeps_its_fingerprints_until_the_next_prune_never_for_good(
    sessions: sessionmaker[Session],
) -> None:
    """Ids follow inserts, first_seen the poll's start: a lower id may have been seen later. The prune
    stops at the first item still in the window and the next one goes on from the lowest id with rows;
    the job is scheduled without a retention too."""
    from aggregator.model import Item

    text = " ".join(f"word{i}" for i in range(80))
    source = Source("a", "http://127.0.0.1:9/a", enabled=False)
    ctx = Context.build([source], [], sessions, functools.partial(fetch, requests.Session()))
    with sessions.begin() as s:
        store.sync_sources(s, [source], NOW - timedelta(days=200))
    for key, days in (("first", 100), ("seen-later", 59), ("seen-earlier", 70), ("new", 1)):
        when = NOW - timedelta(days=days)
        item = Item("a", key, f"uid-{key}", f"Title {key}", f"<p>{key} {text}</p>", f"{key} {text}", when,
                    content_hash=key)  # fmt: skip
        with sessions.begin() as s:
            saved = store.save_items(s, "a", [item], when)
            store.link_items(s, saved.new, [], when, ctx.stories)

    def indexed() -> set[str]:
        with sessions() as s:
            query = select(store.tables.ItemRow.key).join(
                FingerprintRow, FingerprintRow.item_id == store.tables.ItemRow.id
            )
            return set(s.scalars(query))

    scheduled = Worker(ctx, clock=lambda: NOW)
    scheduled.start()
    try:
        assert scheduled.scheduler.get_job("prune") is not None  # no retention: the window is still kept
    finally:
        scheduled.stop()
    assert scheduled.prune() == 0 and len(indexed()) == 4  # a stopped worker prunes nothing more
    worker = Worker(ctx, clock=lambda: NOW)
    assert indexed() == {"first", "seen-later", "seen-earlier", "new"}
    worker.prune()  # stops at "seen-later" (59 days): "seen-earlier" (70) waits behind it
    assert indexed() == {"seen-later", "seen-earlier", "new"}
    worker.clock = lambda: NOW + timedelta(days=2)  # "seen-later" is 61 days old now
    worker.prune()
    assert indexed() == {"new"}
