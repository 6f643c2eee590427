"""The worker's dispatch on a real SQLite store and a real server on 127.0.0.1: it keeps the pool busy
(claims up to twice as many sources as threads), never hands out a source that is still in flight, and
the per-host limit holds across every source of a host (counted at the server)."""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime, timedelta

import requests
from conftest import GateServer
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.fetch import HostLimits, fetch
from aggregator.model import Source
from aggregator.pipeline import Context
from aggregator.schedule import CLAIM_LEASE
from aggregator.worker import Worker

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def setup(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer, count: int, per_host: int
) -> tuple[Context, list[Source]]:
    sources = [Source(f"s{i}", gate.url(f"/feed-{i}")) for i in range(count)]
    limits = HostLimits(per_host=per_host)
    ctx = Context.build(sources, [], sessions, functools.partial(fetch, http, limits=limits))
    with sessions.begin() as s:
        store.sync_sources(s, sources, NOW)
    return ctx, sources


def finish(worker: Worker, polls: int) -> None:
    for _ in range(500):
        if worker.polls >= polls:
            break
        worker.done.wait(0.05)
        worker.done.clear()
    worker.pool.shutdown(wait=True)


def test_dispatch_keeps_the_pool_busy_and_never_doubles_a_source(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    ctx, _ = setup(sessions, http, gate, count=7, per_host=10)
    clock = Clock()
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
    worker = Worker(ctx, threads=6, clock=Clock())
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
    clock = Clock()
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
