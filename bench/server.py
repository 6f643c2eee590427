"""A threaded HTTP server on 127.0.0.1 that serves the synthetic corpus of bench/corpus.py (or the real
feeds, ``corpus.RealCorpus``) at ``/feeds/<n>.xml``, with ETag/Last-Modified and 304s, optional latency
per request, optional gzip and a mode that sends no validators (and ignores the client's). With
``ports=k`` it listens on k ports of 127.0.0.1 and feed n is served on port n % k: k origins, which the
poller's per-host limit counts as k hosts (it keys on host:port), so a benchmark can keep that limit and
still have many requests in flight. Documents are rendered before a phase starts (``set_version``),
never while a request waits. Not a general web server: GET and HEAD only.

    .venv/bin/python bench/server.py --feeds 200 --port 8765 --latency 50 --gzip
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus


class Corpus(Protocol):
    """What the server serves: documents by feed number and version."""

    def render(self, feed: int, version: int) -> bytes: ...

    def content_type(self, feed: int) -> str: ...


class Synthetic:
    """The synthetic corpus of bench/corpus.py."""

    def render(self, feed: int, version: int) -> bytes:
        return corpus.render(feed, version)

    def content_type(self, feed: int) -> str:
        return "application/atom+xml" if corpus.is_atom(feed) else "application/rss+xml"


@dataclass(frozen=True)
class Doc:
    body: bytes
    gzipped: bytes
    etag: str
    last_modified: str
    content_type: str


class CorpusServer:
    """Serves ``feeds`` documents of the corpus on ``ports`` ports of 127.0.0.1 (``port``, else free
    ones); start() starts them."""

    def __init__(
        self,
        feeds: int,
        *,
        latency: float = 0.0,
        gzip_: bool = False,
        validators: bool = True,
        port: int = 0,
        ports: int = 1,
        source: Corpus | None = None,
    ) -> None:
        self.feeds = feeds
        self.source: Corpus = source or Synthetic()
        self.latency = latency
        self.gzip = gzip_
        self.validators = validators
        self.requests = 0
        self.not_modified = 0
        self.docs: list[Doc] = []
        self.version = -1
        self._lock = threading.Lock()
        self.servers = [_listen(port + i if port else 0, self) for i in range(ports)]
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def ports(self) -> list[int]:
        return [int(httpd.server_address[1]) for httpd in self.servers]

    def url(self, feed: int) -> str:
        return f"http://127.0.0.1:{self.ports[feed % len(self.servers)]}/feeds/{feed}.xml"

    def set_version(self, version: int) -> None:
        """Render every document at ``version`` (the corpus advanced ``version`` times)."""
        if version == self.version:
            return
        self.docs = [_doc(self.source, f, version, self.gzip) for f in range(self.feeds)]
        self.version = version

    def start(self) -> CorpusServer:
        if self.version < 0:
            self.set_version(0)
        for i, httpd in enumerate(self.servers):
            thread = threading.Thread(target=httpd.serve_forever, name=f"corpus-server-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for httpd in self.servers:
            httpd.shutdown()
            httpd.server_close()

    def count(self, not_modified: bool) -> None:
        with self._lock:
            self.requests += 1
            self.not_modified += not_modified


def _listen(port: int, server: CorpusServer) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(server))
    httpd.daemon_threads = True
    httpd.request_queue_size = 256
    return httpd


def _doc(source: Corpus, feed: int, version: int, with_gzip: bool) -> Doc:
    body = source.render(feed, version)
    modified = corpus.BASE + timedelta(hours=version, seconds=feed)
    return Doc(
        body=body,
        gzipped=gzip.compress(body, compresslevel=5, mtime=0) if with_gzip else b"",
        etag='"' + hashlib.sha1(body).hexdigest()[:20] + '"',
        last_modified=format_datetime(modified, usegmt=True),
        content_type=source.content_type(feed),
    )


def _handler(server: CorpusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:
            if server.latency:
                time.sleep(server.latency)
            doc = self._doc()
            if doc is None:
                self._send(404, {"Content-Type": "text/plain"}, b"no such feed\n", head)
                return
            headers = {"Content-Type": doc.content_type + "; charset=utf-8"}
            if server.validators:
                headers |= {"ETag": doc.etag, "Last-Modified": doc.last_modified}
                if self._fresh(doc):
                    server.count(True)
                    self._send(304, headers, b"", head)
                    return
            body = doc.body
            if server.gzip and "gzip" in self.headers.get("Accept-Encoding", ""):
                body, headers["Content-Encoding"] = doc.gzipped, "gzip"
            server.count(False)
            self._send(200, headers, body, head)

        def _doc(self) -> Doc | None:
            name = self.path.split("?", 1)[0]
            if not (name.startswith("/feeds/") and name.endswith(".xml")):
                return None
            try:
                n = int(name[len("/feeds/") : -len(".xml")])
            except ValueError:
                return None
            docs = server.docs
            return docs[n] if 0 <= n < len(docs) else None

        def _fresh(self, doc: Doc) -> bool:
            inm = self.headers.get("If-None-Match")
            if inm is not None:
                return doc.etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
            return self.headers.get("If-Modified-Since") == doc.last_modified

        def _send(self, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and status != 304:
                self.wfile.write(body)

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, default=200)
    p.add_argument("--port", type=int, default=8765, help="the first port (default 8765)")
    p.add_argument("--ports", type=int, default=1, help="listen on this many consecutive ports")
    p.add_argument("--version", type=int, default=0, help="corpus version (how many advances)")
    p.add_argument("--latency", type=float, default=0.0, help="milliseconds added to every request")
    p.add_argument("--gzip", action="store_true", help="gzip bodies for clients that accept it")
    p.add_argument("--no-validators", action="store_true", help="send no ETag/Last-Modified, never 304")
    args = p.parse_args()
    srv = CorpusServer(
        args.feeds,
        latency=args.latency / 1000,
        gzip_=args.gzip,
        validators=not args.no_validators,
        port=args.port,
        ports=args.ports,
    )
    srv.set_version(args.version)
    srv.start()
    print(f"serving {args.feeds} feeds at {srv.url(0)} .. {srv.url(args.feeds - 1)} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
