"""PostgreSQL as a backend, and who may open a store: migrations on an empty PostgreSQL database, text
with NUL characters, `worker` refusing an outdated PostgreSQL schema, one `worker` per SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import free_port, postgres_database, postgres_unreachable
from runcli import TIMEOUT, environment, finish
from runcli import start as start_cli
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.errors import StoreError
from aggregator.model import Item, Source

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty database of its own on the local PostgreSQL."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        yield url


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return start_cli(cwd, *args, env=environment(PYTHONUNBUFFERED="1"))


def started_worker(cwd: Path, config: str) -> subprocess.Popen[str]:
    """A `worker` process that has opened the store and is polling."""
    proc = start(cwd, "worker", "--config", config)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("worker polling"), line + finish(proc).stderr
    return proc


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return finish(proc).returncode


def test_migrations_create_the_schema_on_an_empty_postgresql_database(pg_url: str) -> None:
    engine = store.make_engine(pg_url)
    assert store.schema_revision(engine)[0] is None
    store.upgrade(engine)
    current, head = store.schema_revision(engine)
    assert current == head is not None
    tables = set(inspect(engine).get_table_names())
    assert {"sources", "items", "topics", "topic_items", "tombstones", "fingerprints", "merges"} <= tables
    store.upgrade(engine)  # idempotent
    engine.dispose()


def test_text_with_nul_characters_is_stored_without_them(sessions: sessionmaker[Session]) -> None:
    item = Item(
        source="bbc",
        key="guid:nul",
        uid="nul-1",
        title="Tit\x00le",
        html="<p>bo\x00dy</p>",
        text="bo\x00dy",
        published=NOW,
        content_hash="h",
    )
    with sessions.begin() as s:
        store.sync_sources(s, [Source("bbc", "https://bbc.example/rss")], NOW)
        assert len(store.save_items(s, "bbc", [item], NOW).new) == 1
    with sessions() as s:
        [stored] = list(store.stored_items(s))
    assert (stored.item.title, stored.item.html, stored.item.text) == ("Title", "<p>body</p>", "body")


def test_a_second_writer_lock_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    first = store.WriterLock(engine)
    with pytest.raises(StoreError) as caught:
        store.WriterLock(engine)
    message = str(caught.value)
    assert f"is already used by a worker (pid {os.getpid()}, lock file {tmp_path / 'one.db.lock'})" in message
    assert "only one `worker` or `run` process" in message
    first.release()
    store.WriterLock(engine).release()  # free again
    engine.dispose()


def test_writer_lock_holds_nothing_on_postgresql_or_in_memory(tmp_path: Path) -> None:
    for url in ("postgresql+psycopg://postgres@127.0.0.1:5432/none", "sqlite://"):
        engine = store.make_engine(url)
        locks = [store.WriterLock(engine), store.WriterLock(engine)]
        assert [lock.path for lock in locks] == [None, None]
        engine.dispose()


def test_lock_file_that_cannot_be_created_names_it(tmp_path: Path) -> None:
    (tmp_path / "ro.db.lock").mkdir()  # a folder where the lock file should be
    engine = store.make_engine(f"sqlite:///{tmp_path / 'ro.db'}")
    with pytest.raises(StoreError, match=f"cannot create the lock file {tmp_path / 'ro.db.lock'}"):
        store.WriterLock(engine)
    engine.dispose()


def test_second_sqlite_worker_is_refused_while_serve_may_read(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "one.yaml").write_text(
        f"database: sqlite:///data/one.db\nserver: {{host: 127.0.0.1, port: {port}}}\n"
        f"sources:\n  - {{name: local, url: 'http://127.0.0.1:{free_port()}/feed.xml'}}\n"
    )
    first = started_worker(tmp_path, "one.yaml")
    try:
        for command in ("worker", "run"):
            done = finish(start(tmp_path, command, "--config", "one.yaml"))
            code, stderr = done.returncode, done.stderr
            assert code == 1, stderr
            assert "sqlite:///data/one.db is already used by a worker (pid" in stderr
            assert f"lock file {tmp_path / 'data' / 'one.db.lock'}" in stderr
        serve = start(tmp_path, "serve", "--config", "one.yaml")
        try:
            assert fetch_status(f"http://127.0.0.1:{port}/") == 200
        finally:
            assert stop(serve) == 0
    finally:
        assert stop(first) == 0
    stop(started_worker(tmp_path, "one.yaml"))  # the lock went with the first worker


def fetch_status(url: str) -> int:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status: int = response.status
                return status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_worker_refuses_an_outdated_postgresql_schema_until_db_upgrade(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "pg.yaml").write_text(
        f"database: {pg_url}\nsources:\n  - {{name: local, url: 'http://127.0.0.1:{free_port()}/f.xml'}}\n"
    )
    for command in ("worker", "serve"):  # `run` shares the check of `worker`
        done = finish(start(tmp_path, command, "--config", "pg.yaml"))
        code, stderr = done.returncode, done.stderr
        assert code == 1, stderr
        assert "the database schema is at nothing" in stderr
        assert f"run `python run.py db upgrade --config {tmp_path / 'pg.yaml'}` first" in stderr
    done = finish(start(tmp_path, "db", "upgrade", "--config", "pg.yaml"))
    code, stderr = done.returncode, done.stderr
    assert code == 0, stderr
    workers = [started_worker(tmp_path, "pg.yaml") for _ in range(2)]  # PostgreSQL takes several
    assert [stop(w) for w in workers] == [0, 0]


def test_a_deadlock_counts_as_a_lost_lock_so_the_poll_is_stored_again(pg_url: str) -> None:
    """Two transactions that wait for each other: PostgreSQL aborts one, and ``store.lost_lock`` says
    it is worth redoing (pipeline._retried redoes it), unlike any other database error."""
    engine = store.make_engine(pg_url)
    errors: list[BaseException] = []
    try:
        with engine.connect() as a, engine.connect() as b:
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            a.execute(lock, {"key": 1})
            b.execute(lock, {"key": 2})

            def b_wants_1() -> None:
                try:
                    b.execute(lock, {"key": 1})
                except OperationalError as e:
                    errors.append(e)

            waiting = threading.Thread(target=b_wants_1)
            waiting.start()
            time.sleep(
                0.2
            )  # b waits for 1 (if not yet, a's request below waits first: a deadlock all the same)
            try:
                a.execute(lock, {"key": 2})
            except OperationalError as e:
                errors.append(e)
            waiting.join(30)
            a.rollback()
            b.rollback()
            assert len(errors) == 1 and store.lost_lock(errors[0])
            with pytest.raises(ProgrammingError) as other:
                a.execute(text("SELECT * FROM no_such_table"))
            assert not store.lost_lock(other.value)
            a.rollback()
    finally:
        engine.dispose()
