"""Shared fixtures: the shared corpus, a fresh migrated store per test (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.fetch import make_session

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


@pytest.fixture
def gate() -> Iterator[GateServer]:
    server = GateServer()
    yield server
    server.close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """The poller's HTTP session (a module may define its own ``http``)."""
    session = make_session(pool_size=16)
    yield session
    session.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PeriodFeeds:
    """A threaded server on 127.0.0.1 for the multi-process tests: ``count`` small RSS feeds at
    ``/GROUP/N.xml`` (a group per database under test; ``url``). In period P (``advance`` moves it on)
    feed N holds its entries of periods 0..P (``period_entries``); each feed gains one every ``every``
    periods, in turn. ETag and 304 as a real server. Every request is logged (``FeedRequest``): the
    worker (the last word of its User-Agent), when it started and ended, the period served, whether
    the response reached the client. Requests from the agents in ``held`` wait for ``release``, every
    request waits ``delay`` seconds; ``peak`` is the most requests ever in flight at once."""

    def __init__(self, count: int, *, every: int = 1, delay: float = 0.0) -> None:
        self.count, self.every, self.period, self.delay = count, every, 0, delay
        self.active = self.peak = 0
        self.lock = threading.Lock()
        self.log: list[FeedRequest] = []
        self.in_flight: dict[tuple[str, int], int] = {}
        self.overlaps: list[tuple[str, int]] = []  # asked for while a request for it was in flight
        self.held: set[str] = set()
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, n: int, group: str = "feeds") -> str:
        return f"http://127.0.0.1:{self.port}/{group}/{n}.xml"

    def advance(self) -> None:
        with self.lock:
            self.period += 1

    def entries(self, n: int, period: int) -> list[int]:
        return period_entries(n, period, self.every)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        feeds = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                group, name = self.path.strip("/").split("/")
                request = FeedRequest(group, int(name.split(".")[0]), self.headers.get("User-Agent", "-"))
                with feeds.lock:
                    if feeds.in_flight.get(request.key):
                        feeds.overlaps.append(request.key)
                    feeds.in_flight[request.key] = feeds.in_flight.get(request.key, 0) + 1
                    feeds.log.append(request)
                    feeds.active += 1
                    feeds.peak = max(feeds.peak, feeds.active)
                try:
                    if request.agent in feeds.held:
                        feeds.release.wait(120)
                    time.sleep(feeds.delay)
                    request.period = feeds.period
                    self._answer(request)
                    request.delivered = True
                except OSError:  # the client went away (a killed worker)
                    pass
                finally:
                    request.ended = time.monotonic()
                    with feeds.lock:
                        feeds.in_flight[request.key] -= 1
                        feeds.active -= 1

            def _answer(self, request: FeedRequest) -> None:
                entries = feeds.entries(request.source, request.period)
                etag = f'"{request.source}-{entries[-1]}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                body = period_feed(request.source, entries, f"http://127.0.0.1:{feeds.port}")
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def delivered(self, group: str = "feeds", since: float = 0.0) -> dict[int, list[FeedRequest]]:
        """Per source of ``group``, the requests started after ``since`` and answered in full."""
        with self.lock:
            done = [r for r in self.log if r.group == group and r.delivered and r.started >= since]
        by_source: dict[int, list[FeedRequest]] = {n: [] for n in range(self.count)}
        for request in done:
            by_source[request.source].append(request)
        return by_source

    def log_of(self, agent: str) -> list[FeedRequest]:
        with self.lock:
            return [r for r in self.log if r.agent == agent]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class FeedRequest:
    group: str
    source: int
    user_agent: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    period: int = -1
    delivered: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return self.group, self.source

    @property
    def agent(self) -> str:
        return self.user_agent.split()[-1]


PERIOD_BASE = datetime(2026, 1, 1, tzinfo=UTC)


def period_entries(n: int, period: int, every: int = 1) -> list[int]:
    """The entries feed N holds in ``period``: entry 0, then one every ``every`` periods."""
    return [k for k in range(period + 1) if k == 0 or (n + k) % every == 0]


def period_feed(n: int, entries: list[int], base: str) -> bytes:
    """Feed N holding ``entries``, each with its own words (no two alike) and date."""
    items = []
    for k in entries:
        words = [hashlib.blake2b(f"{n}/{k}/{w}".encode(), digest_size=4).hexdigest() for w in range(16)]
        published = email.utils.format_datetime(PERIOD_BASE + timedelta(hours=k))
        items.append(
            f"<item><guid isPermaLink='false'>s{n}-e{k}</guid>"
            f"<title>{' '.join(words[:5])}</title><link>{base}/site/{n}/{k}</link>"
            f"<description>{' '.join(words)}.</description>"
            f"<pubDate>{published}</pubDate></item>"
        )
    return (
        f"<rss version='2.0'><channel><title>Source {n}</title><link>{base}/site/{n}</link>"
        f"<description>feed {n}</description><language>en</language>{''.join(reversed(items))}"
        "</channel></rss>"
    ).encode()


class Clock:
    """A settable clock for the worker: ``clock.now`` is what it reads."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
