"""Source leases on both dialects: the claim writes (owner, expiry) in its own transaction, an unexpired
lease is never claimed, an expired one is, a poll's commit ends it, a worker releases what it claimed but
did not poll (also when a real `python run.py worker` gets SIGTERM), and the per-host limit holds across
claimers running at once. Also migration 0005, the lease and pool settings, and a lost connection."""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import PG_ADMIN, ROOT, Clock, GateServer, postgres_database
from runcli import environment, finish, start
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.config import load_config
from aggregator.errors import ConfigError
from aggregator.fetch import HostLimits, fetch
from aggregator.model import PollOutcome, Source
from aggregator.pipeline import Context
from aggregator.store.engine import migrate
from aggregator.store.tables import Base, SourceRow
from aggregator.worker import Worker

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
MINE = ("lease_owner", "lease_expires_at", "host")


def sources(*urls: str) -> list[Source]:
    return [Source(f"s{i}", url) for i, url in enumerate(urls)]


def synced(sessions: sessionmaker[Session], *urls: str) -> list[Source]:
    configured = sources(*urls)
    with sessions.begin() as s:
        store.sync_sources(s, configured, NOW)
    return configured


def leases(sessions: sessionmaker[Session]) -> dict[str, tuple[str | None, datetime | None]]:
    with sessions() as s:
        rows = s.execute(select(SourceRow.name, SourceRow.lease_owner, SourceRow.lease_expires_at))
        return {name: (owner, expires) for name, owner, expires in rows}


def claim(
    sessions: sessionmaker[Session],
    owner: str,
    at: datetime = NOW,
    *,
    limit: int = 100,
    per_host: int | None = None,
) -> list[str]:
    with sessions.begin() as s:
        return store.claim_due_sources(s, at, lease=LEASE, owner=owner, limit=limit, per_host=per_host)


# --- the lease and the claim ---------------------------------------------------------------------


def test_the_claim_writes_the_lease_and_an_unexpired_lease_is_never_claimed(
    sessions: sessionmaker[Session],
) -> None:
    synced(sessions, "https://a.example/1", "https://a.example/2", "file:///feed.xml")
    assert sorted(claim(sessions, "w1")) == ["s0", "s1", "s2"]
    assert leases(sessions) == {f"s{i}": ("w1", NOW + LEASE) for i in range(3)}
    almost = NOW + LEASE - timedelta(seconds=1)
    assert claim(sessions, "w2", almost) == []
    with sessions() as s:  # the due time is untouched: a dead worker's sources stay due
        assert {h.next_due for h in store.source_health(s)} == {NOW}


def test_an_expired_lease_is_claimed_by_another_worker(sessions: sessionmaker[Session]) -> None:
    synced(sessions, "https://a.example/1", "https://b.example/2")
    assert claim(sessions, "w1", limit=1) == ["s0"]
    assert claim(sessions, "w2", NOW + timedelta(minutes=1)) == ["s1"]  # the other one only
    later = NOW + LEASE  # w1 died: its lease ends; w2's lasts a minute more
    assert claim(sessions, "w2", later) == ["s0"]
    assert leases(sessions)["s0"] == ("w2", later + LEASE)


def test_a_recorded_poll_ends_the_lease_and_sets_the_host(sessions: sessionmaker[Session]) -> None:
    synced(sessions, "https://A.example/1")
    claim(sessions, "w1")
    with sessions.begin() as s:
        store.record_poll(s, PollOutcome("s0", "updated", NOW + timedelta(minutes=30)), now=NOW)
    assert leases(sessions) == {"s0": (None, None)}
    with sessions() as s:
        assert s.scalar(select(SourceRow.host)) == "a.example:443"
    assert claim(sessions, "w2", NOW + timedelta(minutes=29)) == []  # not due yet
    assert claim(sessions, "w2", NOW + timedelta(minutes=30)) == ["s0"]


def test_release_ends_only_the_owners_leases_and_keeps_those_in_flight(
    sessions: sessionmaker[Session],
) -> None:
    synced(sessions, "https://a.example/1", "https://a.example/2", "https://a.example/3")
    assert claim(sessions, "w1", limit=2) == ["s0", "s1"]
    assert claim(sessions, "w2") == ["s2"]
    with sessions.begin() as s:
        assert store.release_leases(s, "w1", keep={"s0"}) == ["s1"]
    assert leases(sessions) == {"s0": ("w1", NOW + LEASE), "s1": (None, None), "s2": ("w2", NOW + LEASE)}
    assert claim(sessions, "w3") == ["s1"]  # still due: taken at once, not after the lease


def test_only_the_owner_renews_its_lease(sessions: sessionmaker[Session]) -> None:
    synced(sessions, "https://a.example/1")
    claim(sessions, "w1")
    later = NOW + LEASE + timedelta(seconds=1)
    claim(sessions, "w2", later)  # w1's lease expired while the source waited in its queue
    with sessions.begin() as s:
        assert not store.renew_lease(s, "s0", "w1", later, LEASE)
        assert store.renew_lease(s, "s0", "w2", later + timedelta(minutes=1), LEASE)
    assert leases(sessions)["s0"] == ("w2", later + timedelta(minutes=1) + LEASE)


def test_a_changed_url_ends_the_lease(sessions: sessionmaker[Session]) -> None:
    synced(sessions, "https://a.example/1")
    claim(sessions, "w1")
    with sessions.begin() as s:
        store.sync_sources(s, [Source("s0", "https://b.example/1")], NOW)
    assert leases(sessions) == {"s0": (None, None)}
    with sessions() as s:
        assert s.scalar(select(SourceRow.host)) == "b.example:443"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://News.Example.org/rss", "news.example.org:443"),
        ("http://example.org/rss", "example.org:80"),
        ("http://127.0.0.1:8081/a.xml", "127.0.0.1:8081"),
        ("https://[::1]:8443/feed", "::1:8443"),
        ("https://example.org:99999/bad-port", "example.org:443"),
        ("file:///srv/feeds/a.xml", None),
        ("feeds/a.xml", None),
    ],
)
def test_the_host_of_a_source_is_its_name_and_port(url: str, host: str | None) -> None:
    assert store.url_host(url) == host


def test_owner_ids_differ_between_workers_of_one_process() -> None:
    owners = {store.new_owner() for _ in range(20)}
    assert len(owners) == 20
    assert all(o.startswith("worker@") for o in owners)


# --- the per-host limit across workers -----------------------------------------------------------


def test_per_host_limit_counts_every_workers_leases(sessions: sessionmaker[Session]) -> None:
    synced(sessions, *(f"https://a.example/{i}" for i in range(6)), "https://b.example/x", "file:///f.xml")
    first = claim(sessions, "w1", per_host=2)
    assert first == ["s0", "s1", "s6", "s7"]  # two of a.example, b.example, the file (no host)
    assert claim(sessions, "w2", per_host=2) == []  # a.example is full, whoever holds its leases
    with sessions.begin() as s:
        store.record_poll(s, PollOutcome("s0", "updated", NOW + timedelta(hours=1)), now=NOW)
    assert claim(sessions, "w2", per_host=2) == ["s2"]  # one slot came free
    with sessions() as s:
        assert store.leases_per_host(s, NOW) == {"a.example:443": 2, "b.example:443": 1}
        assert store.leases_per_host(s, NOW + LEASE) == {}  # expired leases count for nothing


def test_a_full_host_does_not_starve_the_others(sessions: sessionmaker[Session]) -> None:
    synced(sessions, *(f"https://a.example/{i}" for i in range(40)), "https://b.example/x")
    assert claim(sessions, "w1", per_host=2, limit=4) == ["s0", "s1"]
    assert claim(sessions, "w2", per_host=2, limit=4) == ["s40"]  # b.example, behind 38 of a.example


def test_per_host_limit_is_exact_when_claimers_race(sessions: sessionmaker[Session]) -> None:
    synced(sessions, *(f"https://a.example/{i}" for i in range(30)))
    owners = [f"w{i}" for i in range(6)]
    for _ in range(3):  # a race lost without the lock shows up in most rounds, not every one
        names = race(sessions, owners, per_host=3, limit=5)
        assert len(names) == len(set(names)) == 3
        with sessions() as s:
            assert store.leases_per_host(s, NOW) == {"a.example:443": 3}
        with sessions.begin() as s:
            for owner in owners:
                store.release_leases(s, owner)


def race(sessions: sessionmaker[Session], owners: list[str], *, limit: int, per_host: int) -> list[str]:
    """Every owner claims at the same moment, each in its own thread and transaction."""
    barrier = threading.Barrier(len(owners))
    claimed: list[list[str]] = []
    errors: list[BaseException] = []

    def run(owner: str) -> None:
        try:
            barrier.wait(timeout=10)
            claimed.append(claim(sessions, owner, limit=limit, per_host=per_host))
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(owner,)) for owner in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    return [name for batch in claimed for name in batch]


# --- the worker: dispatch, stop, a lost connection -----------------------------------------------


def worker_for(
    sessions: sessionmaker[Session], http: requests.Session, configured: list[Source], **kwargs: object
) -> Worker:
    fetcher = functools.partial(fetch, http, limits=HostLimits(per_host=10))
    ctx = Context.build(configured, [], sessions, fetcher)
    return Worker(ctx, clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


def arrived(gate: GateServer, count: int) -> None:
    """Wait until ``count`` requests are held at the gate (a busy machine may take seconds)."""
    deadline = time.monotonic() + 30
    while gate.active < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gate.active == count


def test_stop_lets_the_poll_in_flight_finish_and_releases_the_queued_ones(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    configured = synced(sessions, *(gate.url(f"/feed-{i}") for i in range(4)))
    worker = worker_for(sessions, http, configured, threads=1, batch=4, owner="w1")
    assert worker.dispatch() == ["s0", "s1", "s2", "s3"]
    arrived(gate, 1)
    assert set(leases(sessions).values()) == {("w1", NOW + LEASE * 2)}  # CLAIM_LEASE, 10 minutes
    threading.Timer(0.3, gate.gate.set).start()  # the poll in flight answers while stop() waits
    worker.stop()
    assert gate.paths == ["/feed-0"]  # the queued three were not polled
    assert set(leases(sessions).values()) == {(None, None)}
    with sessions() as s:
        health = {h.name: h for h in store.source_health(s)}
    assert health["s0"].status == "ok" and health["s0"].items == 1
    assert [health[f"s{i}"].status for i in (1, 2, 3)] == ["new"] * 3
    assert all(health[f"s{i}"].next_due == NOW for i in (1, 2, 3))  # due for the next worker at once


def test_two_workers_share_one_per_host_limit(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    configured = synced(sessions, *(gate.url(f"/feed-{i}") for i in range(6)))
    a, b = (worker_for(sessions, http, configured, threads=4, owner=o, per_host=2) for o in "ab")
    try:
        assert a.dispatch() == ["s0", "s1"]
        assert b.dispatch() == []  # 127.0.0.1:PORT has its two leases, both a's
        arrived(gate, 2)
        threading.Event().wait(0.2)
        assert gate.peak == 2
        gate.gate.set()
        a.pool.shutdown(wait=True)  # both polls recorded: their leases ended
        assert b.dispatch() == ["s2", "s3"]
    finally:
        gate.gate.set()
        a.stop()
        b.stop()
    assert sorted(gate.paths) == [f"/feed-{i}" for i in range(4)] and gate.peak == 2


def test_a_young_lease_is_polled_at_once_and_an_old_one_renewed_first(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewed: list[str] = []

    def renew(s: Session, name: str, owner: str, now: datetime, lease: timedelta) -> bool:
        renewed.append(name)  # a spy: the real renewal runs
        return real(s, name, owner, now, lease)

    real = store.renew_lease
    monkeypatch.setattr(store, "renew_lease", renew)
    clock = Clock(NOW)
    configured = synced(sessions, *(gate.url(f"/feed-{i}") for i in range(3)))
    fetcher = functools.partial(fetch, http, limits=HostLimits(per_host=10))
    ctx = Context.build(configured, [], sessions, fetcher)
    worker = Worker(ctx, clock=clock, threads=1, batch=3, owner="w1", lease=LEASE)
    try:
        assert worker.dispatch() == ["s0", "s1", "s2"]
        arrived(gate, 1)  # s0 is polled at once, without a renewal; s1 and s2 wait in the queue
        clock.now = NOW + LEASE + timedelta(seconds=1)  # their leases expired meanwhile
        with sessions.begin() as s:
            assert real(s, "s0", "w1", clock.now, LEASE)  # (s0's poll is still running)
        assert claim(sessions, "w2", clock.now, limit=1) == ["s1"]  # another worker takes s1
        gate.gate.set()
        deadline = time.monotonic() + 30
        while worker.polls < 3 and time.monotonic() < deadline:
            worker.done.wait(0.05)
            worker.done.clear()
    finally:
        gate.gate.set()
        worker.stop()
    assert renewed == ["s1", "s2"]  # both were renewed before polling; s1's renewal found w2's lease
    assert sorted(gate.paths) == ["/feed-0", "/feed-2"]
    assert leases(sessions)["s1"] == ("w2", clock.now + LEASE)


def test_a_poll_whose_lease_went_to_another_worker_is_skipped(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    gate.gate.set()
    configured = synced(sessions, gate.url("/feed-0"))
    worker = worker_for(sessions, http, configured, threads=1, owner="w1")
    claim(sessions, "w2")  # the source's lease is w2's, as after w1's expired while it was queued
    assert worker._leased_poll("s0") is None
    assert gate.paths == []
    assert leases(sessions)["s0"][0] == "w2"


def test_the_next_dispatch_claims_again_what_a_poll_could_not_record(
    sessions: sessionmaker[Session], http: requests.Session, gate: GateServer
) -> None:
    gate.gate.set()
    configured = synced(sessions, gate.url("/feed-0"), gate.url("/feed-1"))
    worker = worker_for(sessions, http, configured, threads=1, owner="w1")
    claim(sessions, "w1")  # as if w1 had polled both and could not record either (database down) ...
    with worker._lock:
        worker._in_flight.add("s1")  # ... and were still polling s1
    assert claim(sessions, "w2") == []  # both are w1's
    assert worker.dispatch() == ["s0"]  # its own stale lease released and s0 claimed again, not s1
    worker.pool.shutdown(wait=True)
    assert gate.paths == ["/feed-0"]
    assert leases(sessions)["s1"][0] == "w1"
    assert worker.release() == ["s1"]


@pytest.fixture
def pg_url(postgres_template: tuple[str, object]) -> Iterator[str]:
    """A migrated database of its own on the local PostgreSQL."""
    template, dropper = postgres_template
    with postgres_database(template, dropper) as url:  # type: ignore[arg-type]
        yield url


def test_dispatch_survives_the_database_dropping_its_connections(
    pg_url: str, http: requests.Session, gate: GateServer
) -> None:
    gate.gate.set()
    engine = store.make_engine(pg_url)
    sessions = store.make_sessionmaker(engine)
    configured = synced(sessions, *(gate.url(f"/feed-{i}") for i in range(2)))
    worker = worker_for(sessions, http, configured, threads=1, owner="w1", per_host=5)
    try:
        assert worker.dispatch() == ["s0", "s1"]
        worker.pool.shutdown(wait=True)
        with sessions.begin() as s:  # due again
            s.execute(text("UPDATE sources SET next_due_at = :at"), {"at": NOW.replace(tzinfo=None)})
        terminate_backends(pg_url.rsplit("/", 1)[1])  # what a restart does to pooled connections
        worker = worker_for(sessions, http, configured, threads=1, owner="w1", per_host=5)
        assert worker.dispatch() == ["s0", "s1"]  # the pool checks its connections and opens new ones
        worker.stop()
    finally:
        engine.dispose()


def terminate_backends(database: str) -> None:
    import psycopg

    with psycopg.connect(**PG_ADMIN) as admin:  # type: ignore[arg-type]
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()
    assert killed is not None and killed[0] >= 1


def test_an_unreachable_database_costs_the_tick_not_the_worker(
    http: requests.Session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'deeper' / 'db.sqlite'}"
    engine = store.make_engine(url)
    (tmp_path / "missing" / "deeper").rmdir()  # the store is gone: every connection fails
    worker = worker_for(store.make_sessionmaker(engine), http, sources("https://a.example/1"), owner="w1")
    assert worker.dispatch() == []
    assert worker.release() == []
    worker.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not claim due sources" in m and "next tick" in m for m in messages), messages
    assert any("could not release its leases" in m and "expire within 0:10:00" in m for m in messages)
    engine.dispose()


def test_sigterm_of_a_worker_process_releases_the_leases_of_what_it_did_not_poll(
    database_url: str, tmp_path: Path, gate: GateServer
) -> None:
    feeds = "".join(f"  - {{name: s{i}, url: '{gate.url(f'/feed-{i}')}'}}\n" for i in range(4))
    (tmp_path / "w.yaml").write_text(
        f"database: {database_url}\nworker: {{threads: 1, batch: 4, per_host: 8, lease: 1h}}\n"
        f"sources:\n{feeds}"
    )
    proc = start(tmp_path, "worker", "--config", "w.yaml", env=environment(PYTHONUNBUFFERED="1"))
    engine = store.make_engine(database_url)
    sessions = store.make_sessionmaker(engine)
    try:
        deadline = time.monotonic() + 60  # the process starts slowly on a busy machine
        while gate.active < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.active == 1, finish(proc).stderr if proc.poll() is not None else "no request in 60 s"
        held = leases(sessions)
        owners = {owner for owner, _ in held.values()}
        assert len(owners) == 1 and str(next(iter(owners))).startswith("worker@"), held
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the worker is now waiting for the poll in flight
        assert proc.poll() is None
        gate.gate.set()
        done = finish(proc)
        assert done.returncode == 0, done.stderr
        assert "released the leases of 3 sources not polled" in done.stderr
        assert gate.paths == ["/feed-0"]
        assert set(leases(sessions).values()) == {(None, None)}
        with sessions() as s:
            assert {h.name: h.status for h in store.source_health(s)} == {
                "s0": "ok",
                "s1": "new",
                "s2": "new",
                "s3": "new",
            }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        engine.dispose()


# --- migration 0005 and the settings -------------------------------------------------------------


def test_migration_0005_adds_the_lease_columns_and_fills_in_the_hosts(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine, "0004")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO sources (name, url, effective_url, enabled, in_config, error_count, last_new,"
                " created_at) VALUES ('a', 'https://Old.example/rss', 'https://new.example/rss', 1, 1, 0, 0,"
                " '2026-01-01 00:00:00'), ('b', 'feeds/b.xml', NULL, 1, 1, 0, 0, '2026-01-01 00:00:00')"
            )
        )
    migrate(engine, "0005")
    with engine.connect() as c:
        assert dict(c.execute(text("SELECT name, host FROM sources")).all()) == {
            "a": "new.example:443",
            "b": None,
        }
        diffs = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert [d for d in diffs if any(name in repr(d) for name in MINE)] == []
    migrate(engine, "0004", down=True)
    assert not set(MINE) & {c["name"] for c in inspect(engine).get_columns("sources")}
    engine.dispose()


def test_lease_batch_and_pool_settings(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("worker: {lease: 90s, batch: 12}\ndatabase_pool: {size: 3, overflow: 0, timeout: 5s}\n")
    settings = load_config(path, env={})
    assert (settings.worker.lease, settings.worker.batch) == (90.0, 12)
    pool = settings.database_pool
    assert (pool.size, pool.overflow, pool.timeout) == (3, 0, 5.0)
    (tmp_path / "b.yaml").write_text("{}\n")
    defaults = load_config(tmp_path / "b.yaml", env={})
    assert (defaults.worker.lease, defaults.worker.batch, defaults.database_pool.size) == (600.0, None, 10)


def test_bad_lease_batch_and_pool_settings_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("worker:\n  lease: soon\n  batch: 0\ndatabase_pool:\n  size: 0\n  sise: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    found = info.value.problems
    assert len(found) == 4, found
    assert found[0].startswith(f"{path}:2: worker.lease: invalid duration 'soon'")
    assert found[1] == f"{path}:3: worker.batch: must be at least 1 (got 0)"
    assert found[2] == f"{path}:5: database_pool.size: must be at least 1 (got 0)"
    assert found[3] == f"{path}:6: database_pool.sise: unknown key (did you mean 'size'?)"


def test_the_pool_settings_reach_the_engine(database_url: str) -> None:
    engine = store.make_engine(database_url, store.Pool(size=3, overflow=1, timeout=2.5))
    try:
        assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._timeout) == (3, 1, 2.5)  # type: ignore[attr-defined]
    finally:
        engine.dispose()


# --- the example systemd units -------------------------------------------------------------------


def unit(path: Path) -> dict[str, str]:
    """The ``Key=value`` lines of a systemd unit file (the last one wins)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_example_units_start_real_commands_and_outwait_a_poll() -> None:
    from aggregator.cli import build_parser
    from aggregator.model import Source as Defaults

    units = sorted((ROOT / "deploy").glob("*.service"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [u.name for u in units] == [
        "aggregator-run.service",
        "aggregator-serve.service",
        "aggregator-worker.service",
        "aggregator-worker@.service",
    ]
    for path in units:
        keys = unit(path)
        assert f"(deploy/{path.name})" in readme
        program, command = keys["ExecStart"].split()
        assert program.endswith("/bin/aggregator")
        assert build_parser().parse_args([command]).command == command
        assert command in path.name or (command == "worker" and "worker@" in path.name)
        assert keys["Environment"].startswith("AGGREGATOR_CONFIG=/")
        assert (keys["KillSignal"], keys["Restart"], keys["RestartPreventExitStatus"]) == (
            "SIGTERM",
            "on-failure",
            "2",
        )
        if command != "serve":  # room for the polls in flight to finish
            assert int(keys["TimeoutStopSec"]) > 2 * Defaults("x", "y").timeout


def test_a_lease_too_short_for_the_slowest_poll_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from aggregator.cli import make_worker, open_app

    path = tmp_path / "a.yaml"
    feeds = (
        "sources:\n  - {name: fast, url: f.xml, timeout: 5s}\n  - {name: slow, url: s.xml, timeout: 40s}\n"
    )
    warning = "worker.lease (0:01:20) is not more than twice the longest source timeout (40 s)"
    for seconds, warned in ((80, True), (81, False)):
        path.write_text(
            f"database: sqlite:///{tmp_path / 'db.sqlite'}\nworker: {{lease: {seconds}s}}\n{feeds}"
        )
        caplog.clear()
        app = open_app(load_config(path, env={}))
        worker = make_worker(app)
        assert (worker.lease, worker.per_host, worker.backlog) == (timedelta(seconds=seconds), 2, 8)
        found = [r.getMessage() for r in caplog.records if "worker.lease" in r.getMessage()]
        assert [m.startswith(warning) for m in found] == ([True] if warned else []), found
        app.engine.dispose()
