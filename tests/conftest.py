"""Shared fixtures: the shared corpus, a fresh migrated store per test (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import queue
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
REAL = CORPUS / "real"
VALIDATORS = SHARED / "validators"


PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the PostgreSQL server on 127.0.0.1:5432 cannot be used for tests (None when it can)."""
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - psycopg is a dependency
        return f"psycopg is not installed: {e}"
    try:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3):
            return None
    except psycopg.Error as e:
        return f"PostgreSQL on {PG_HOST}:{PG_PORT} is not reachable: {e}"


PG_ADMIN = {"host": PG_HOST, "port": PG_PORT, "user": PG_USER, "dbname": "postgres", "autocommit": True}


def _pg_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(**PG_ADMIN) as connection:
        connection.execute(statement)


class _Dropper:
    """Drops test databases in a background thread: DROP DATABASE waits for a checkpoint (~0.5 s), which
    need not hold up the next test. ``close`` waits for every drop."""

    def __init__(self) -> None:
        self.names: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (name := self.names.get()) is not None:
            with contextlib.suppress(Exception):
                _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.names.put(None)
        self.thread.join()


@contextlib.contextmanager
def postgres_database(template: str | None = None, dropper: _Dropper | None = None) -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database (its SQLAlchemy URL), dropped afterwards; a copy of
    ``template`` when given, else empty."""
    name = f"agg_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    _pg_admin(f'ALTER DATABASE "{name}" SET synchronous_commit TO off')  # tests need no durability
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        if dropper is None:
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            dropper.names.put(name)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[tuple[str, _Dropper]]:
    """A migrated database that each test's database is copied from (faster than migrating each one)."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    dropper = _Dropper()
    with postgres_database() as url:
        engine = store.make_engine(url)
        store.upgrade(engine)
        engine.dispose()
        yield url.rsplit("/", 1)[1], dropper
        dropper.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each dialect: a SQLite file, or a database of its own on the local
    PostgreSQL (skipped with the reason when that server cannot be reached)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        engine = store.make_engine(url)
        store.upgrade(engine)
        engine.dispose()
        yield url
        return
    template, dropper = request.getfixturevalue("postgres_template")
    with postgres_database(template, dropper) as url:
        yield url


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = store.make_engine(database_url)
    yield store.make_sessionmaker(engine)
    engine.dispose()


class FeedServer:
    """A threaded HTTP server on 127.0.0.1 serving feed files by path, with ETag/Last-Modified and 304.

    ``routes`` maps a URL path ("/bbc.xml") to a file; tests swap files to simulate a feed changing.
    ``hits`` counts requests per path.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Path] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                path = server.routes.get(self.path)
                if path is None:
                    self.send_error(404)
                    return
                body = path.read_bytes()
                etag = '"' + hashlib.sha1(body).hexdigest() + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                ctype = "text/html" if path.suffix == ".html" else "application/xml"
                if path.suffix == ".json":
                    ctype = "application/feed+json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


GATE_FEED = b'<rss version="2.0"><channel><title>T</title><item><guid>1</guid></item></channel></rss>'


class GateServer:
    """A threaded server on 127.0.0.1 answering every path with a tiny feed. It holds each request until
    ``gate`` opens (or ``hold`` seconds pass) and records the paths asked for and the peak of requests in
    flight at once."""

    def __init__(self, hold: float = 10.0) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.active += 1
                    server.peak = max(server.peak, server.active)
                    server.paths.append(self.path)
                server.gate.wait(hold)
                with server.lock:
                    server.active -= 1
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(GATE_FEED)))
                self.end_headers()
                self.wfile.write(GATE_FEED)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int) -> None:
        for _ in range(200):
            with self.lock:
                if self.active >= count:
                    return
            threading.Event().wait(0.02)

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
