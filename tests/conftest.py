"""Shared fixtures: paths to the shared corpus and a fresh, migrated SQLite store per test."""

from __future__ import annotations

import hashlib
import socket
import threading
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


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade(engine)
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
