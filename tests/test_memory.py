"""What bounds a polling process's memory: SQLite connections with a bounded page cache and statement
cache, handed out most recent first, and at most ``parsers`` parsed documents waiting for the writer.

The RSS itself is measured by bench/ingest.py (peak RSS column), not asserted here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import REAL
from sqlalchemy import text

from aggregator import store
from aggregator.model import Source
from aggregator.stages import Stages
from aggregator.store.engine import SQLITE_CACHE_KIB, SQLITE_STATEMENTS, SQLITE_WAL_CHECKPOINT_PAGES

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
GUARD = 60.0  # seconds before a wait that should end is called a failure (not a speed assertion)


def test_sqlite_connections_keep_a_small_page_cache(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'a.db'}", store.Pool(size=2, overflow=2))
    with engine.connect() as c:
        assert c.execute(text("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_sqlite_checkpoints_the_wal_every_ten_thousand_pages(tmp_path: Path) -> None:
    """Not SQLite's 1,000: a poll's index pages are copied to the database file ten times less often
    (bench/ingest.py measures what that saves); the WAL stays bounded."""
    db = tmp_path / "a.db"
    engine = store.make_engine(f"sqlite:///{db}", store.Pool(size=1, overflow=0))
    with engine.begin() as c:
        assert c.execute(text("PRAGMA wal_autocheckpoint")).scalar() == SQLITE_WAL_CHECKPOINT_PAGES == 10_000
        c.execute(text("CREATE TABLE t (x BLOB)"))
        for _ in range(8):  # 8 MB, ~2,000 pages: twice what the default checkpoints at
            c.execute(text("INSERT INTO t VALUES (zeroblob(1000000))"))
    # the commit did not checkpoint (with SQLite's default the file would hold the 8 MB now)
    assert db.stat().st_size < 1_000_000 < Path(f"{db}-wal").stat().st_size
    engine.dispose()


def test_the_pool_hands_out_the_connection_returned_last(tmp_path: Path) -> None:
    """LIFO: under light load one warm connection serves, the others stay idle."""
    engine = store.make_engine(f"sqlite:///{tmp_path / 'a.db'}", store.Pool(size=3, overflow=0))
    first, second = engine.connect(), engine.connect()
    first_dbapi, second_dbapi = first.connection.dbapi_connection, second.connection.dbapi_connection
    first.close()
    second.close()
    with engine.connect() as again:
        assert again.connection.dbapi_connection is second_dbapi
    assert first_dbapi is not second_dbapi
    engine.dispose()


def _sqlite_memory_used() -> ctypes._CFuncPtr | None:
    """sqlite3_memory_used of the SQLite library Python's sqlite3 module uses, when it is a shared one."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    used = ctypes.CDLL(name).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return used  # type: ignore[no-any-return]


def test_a_connection_keeps_a_bounded_number_of_prepared_statements(tmp_path: Path) -> None:
    """Every row count of a multi-row INSERT is a statement of its own; a connection caches only
    SQLITE_STATEMENTS of them (Python's default, 128, kept several MB per connection)."""
    used = _sqlite_memory_used()
    engine = store.make_engine(f"sqlite:///{tmp_path / 'a.db'}", store.Pool(size=1, overflow=0))
    columns = [f"c{i}" for i in range(15)]
    with engine.begin() as c:
        c.execute(text(f"CREATE TABLE t ({', '.join(columns)})"))
    raw = engine.raw_connection()
    try:
        before = used() if used is not None else 0
        if not before:
            pytest.skip("Python's sqlite3 is not linked to a shared SQLite library ctypes can see")
        cursor = raw.cursor()
        for rows in range(1, 129):  # 128 statements of 1..128 rows
            values = ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * rows)
            cursor.execute(f"INSERT INTO t VALUES {values}", ["x"] * (rows * len(columns)))
        raw.commit()
        grown = used() - before
    finally:
        raw.close()
        engine.dispose()
    # the largest SQLITE_STATEMENTS statements (97..128 rows) are ~200 KB each, the whole 128 ~13 MB
    assert grown < 200_000 * SQLITE_STATEMENTS + SQLITE_CACHE_KIB * 1024 * 2, grown


def test_parsed_documents_waiting_for_the_writer_are_bounded() -> None:
    """With the writer busy, two parsers parse two documents and stop: the other threads wait with
    their bodies only, however many there are."""
    stages = Stages(parsers=2, writers=1)
    source = Source("abc", "http://127.0.0.1/abc.xml")
    body = (REAL / "abcnews-1.xml").read_bytes()
    lock, writer_busy, release = threading.Lock(), threading.Event(), threading.Event()
    parsed, written, most = [0], [0], [0]

    def writer() -> None:
        with stages.write:
            writer_busy.set()
            release.wait(GUARD)

    def poll() -> None:
        with stages.parse:
            stages.run(source, body, source.url, "application/rss+xml", NOW, lambda keys: {})
        with lock:
            parsed[0] += 1
            most[0] = max(most[0], parsed[0] - written[0])
        with stages.write, lock:
            written[0] += 1

    busy = threading.Thread(target=writer)
    busy.start()
    assert writer_busy.wait(GUARD)
    polls = [threading.Thread(target=poll) for _ in range(8)]
    for t in polls:
        t.start()
    deadline = time.monotonic() + GUARD
    while (stages.handoff.waiting, parsed[0]) != (2, 2) and time.monotonic() < deadline:
        time.sleep(0.01)  # two documents parsed, the next two parsers waiting for a place
    assert (stages.handoff.waiting, stages.handoff.held) == (2, 2)
    with lock:
        assert parsed[0] == 2 and written[0] == 0
    release.set()
    for t in [busy, *polls]:
        t.join(GUARD)
    assert written[0] == 8 and most[0] <= 2
    assert stages.handoff.held == 0 and stages.handoff.waiting == 0
