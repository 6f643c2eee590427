"""The read-only web side: topic feeds (RSS, Atom, JSON Feed; RFC 5005 pages, WebSub links) served from
rendered bytes kept per process and checked against the store's topic state every second, with ETag,
304 and gzip; an HTML index, OPML, a health check. Writes nothing; any number give the same answers.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING

from flask import Flask, Response, abort, render_template, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator import metrics, publish, store
from aggregator.model import Topic

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

CACHE_SECONDS = 60  # Cache-Control max-age of feed responses
CACHE_ENTRIES = 1024  # rendered pages kept per process; when full, the least recently used one goes
GZIP_LEVEL = 6  # each rendered page is compressed once, for the clients that accept gzip
REVALIDATE = publish.REVALIDATE  # seconds a topic's state is trusted before the store is asked again
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INLINE_MARGIN = 0.05  # seconds of validity a state must have left for a request to be called in-memory
ZERO_COPY = 16384  # bodies from this size are handed to the server's environ["aggregator.body"], if any
REFRESH_AHEAD = 0.25  # seconds before its expiry a state in use is read again in the background

LABELS = {"rss": "RSS", "atom": "Atom", "json": "JSON Feed"}

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class _Rendered:
    """One rendered feed page and its ready-made responses, valid while the topic's state is ``state``.
    The ETag is a hash of the body (the gzip copy's adds ``-gz``): servers that render the same state
    agree, and gzip output is deterministic (no timestamp in its header)."""

    state: store.TopicState
    body: bytes
    gzipped: bytes
    etags: tuple[str, str]  # quoted: the body's, the gzip copy's
    last_modified: str
    last_change: datetime
    ok: Headers  # 200, identity
    ok_gzip: Headers  # 200, gzip
    not_modified: tuple[Headers, Headers]  # 304, identity and gzip


class _States:
    """Each topic's state, read from the store at most every ``revalidate`` seconds (0: per request).
    The clock starts before the read, so nothing older than ``revalidate`` seconds is ever trusted."""

    def __init__(self, sessions: sessionmaker[Session], revalidate: float) -> None:
        self._sessions = sessions
        self._revalidate = revalidate
        self._known: dict[str, tuple[float, store.TopicState]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._refreshing: set[str] = set()  # topics whose state is being read ahead

    def get(self, name: str) -> store.TopicState:
        known = self._known.get(name)
        if known is not None and time.monotonic() - known[0] < self._revalidate:
            return known[1]
        with self._locks.setdefault(name, threading.Lock()):  # one reader per topic; the others wait
            known = self._known.get(name)
            if known is not None and time.monotonic() - known[0] < self._revalidate:
                return known[1]
            return self._read(name)

    def _read(self, name: str) -> store.TopicState:
        started = time.monotonic()
        with self._sessions() as s:
            state = store.topic_state(s, name)
        self.offer(name, started, state)
        return state

    def peek(self, name: str, margin: float) -> store.TopicState | None:
        """The state ``get`` would return without the store for at least ``margin`` more seconds, or
        None. Within REFRESH_AHEAD seconds of its expiry a state is read again in the background, so a
        busy topic's requests keep being answered from memory."""
        known = self._known.get(name)
        if known is None:
            return None
        age = time.monotonic() - known[0]
        ahead = self._revalidate > REFRESH_AHEAD and age >= self._revalidate - REFRESH_AHEAD
        if ahead and name not in self._refreshing:
            self._refreshing.add(name)
            threading.Thread(target=self._refresh, args=(name,), name=f"state-{name}", daemon=True).start()
        return known[1] if age < self._revalidate - margin else None

    def _refresh(self, name: str) -> None:
        try:
            self._read(name)
        except SQLAlchemyError as e:  # the next request past the expiry reads it and answers 503
            log.debug("web: topic %s: the store cannot be read ahead: %s", name, store.db_problem(e))
        finally:
            self._refreshing.discard(name)

    def offer(self, name: str, started: float, state: store.TopicState) -> None:
        """Keep a state read that began at ``started`` unless a later read is known."""
        known = self._known.get(name)
        if known is None or known[0] < started:
            self._known[name] = (started, state)


PageKey = tuple[str, str, int]  # (topic, format, page)


class _Recent:
    """Rendered pages, at most ``size``: keeping one more drops the least recently used, so the pages
    clients keep asking for stay while one-off ones (old pages, a crawler's sweep) pass through.

    No lock (a hit costs about 0.1 µs more than a dict lookup, with a lock 0.5 µs): each OrderedDict
    call is atomic under the GIL, and the races left are harmless (a page pushed out between a hit's
    two calls is a miss; two threads keeping a page at once drop one page each)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pages: OrderedDict[PageKey, _Rendered] = OrderedDict()

    def get(self, key: PageKey) -> _Rendered | None:
        try:
            hit = self._pages[key]
            self._pages.move_to_end(key)
        except KeyError:  # not kept, or pushed out by another thread between the two calls
            return None
        return hit

    def put(self, key: PageKey, page: _Rendered) -> None:
        self._pages.pop(key, None)  # a page kept again goes to the end: no call that can miss
        self._pages[key] = page
        if len(self._pages) > self._size:
            self._pages.popitem(last=False)


class _NoSuchPage(Exception):
    def __init__(self, pages: int) -> None:
        self.pages = pages


class _Feeds:
    """Rendered topic feeds by (topic, format, page), each kept while its topic's state holds and it is
    among the CACHE_ENTRIES most recently used. A hit costs a dictionary lookup; a miss renders once per
    key while concurrent requests for it wait."""

    def __init__(
        self,
        topics: dict[str, Topic],
        sessions: sessionmaker[Session],
        base: str,
        hub: str | None,
        revalidate: float,
    ) -> None:
        self.topics = topics
        self._sessions = sessions
        self._base = base
        self._hub = hub
        self.states = _States(sessions, revalidate)
        self._cache = _Recent(CACHE_ENTRIES)
        self._locks = [threading.Lock() for _ in range(32)]

    def lookup(self, name: str, fmt: str, page: int) -> _Rendered | None:
        """The cached page if it is current, else None (unknown topics and formats too)."""
        if name not in self.topics or fmt not in publish.FORMATS:
            return None
        hit = self._cache.get((name, fmt, page))
        return hit if hit is not None and hit.state == self.states.get(name) else None

    def in_memory(self, method: str, path: str, query: str) -> bool:
        """Whether the fast path answers this request from memory, without reading the store for the
        next INLINE_MARGIN seconds (the server may then answer it in its event-loop thread)."""
        key = _feed_key(method, path, query)
        if key is None:
            return False
        hit = self._cache.get(key)
        return hit is not None and hit.state == self.states.peek(key[0], INLINE_MARGIN)

    def get(self, name: str, fmt: str, page: int) -> _Rendered:
        """The current page, rendered when needed; _NoSuchPage when the topic has fewer pages."""
        key = (name, fmt, page)
        with self._locks[hash(key) % len(self._locks)]:
            hit = self.lookup(name, fmt, page)
            if hit is None:
                hit = self._render(self.topics[name], fmt, page)
                self._cache.put(key, hit)
            return hit

    def _render(self, topic: Topic, fmt: str, page: int) -> _Rendered:
        # the state is read first: the items are then at least as new, so a page is never kept under a
        # state newer than its content (at worst it is rendered once more)
        started = time.monotonic()
        with self._sessions() as s:
            state = store.topic_state(s, topic.name)
            self.states.offer(topic.name, started, state)
            entries = store.topic_entry_count(s, topic.name, collapse=topic.collapse)
            pages = max(1, math.ceil(entries / topic.limit))
            if page > pages:
                raise _NoSuchPage(pages)
            items = store.topic_items(
                s, topic.name, limit=topic.limit, collapse=topic.collapse, offset=(page - 1) * topic.limit
            )
        feed_url = publish.topic_feed_urls(self._base, topic.name)[fmt]
        body = publish.render_feed(
            fmt,
            topic,
            items,
            feed_url=_page_url(feed_url, page),
            site_url=f"{self._base}/topics/{topic.name}",
            updated=state.last_change,
            paging=_paging(feed_url, page, pages),
        )
        return self._entry(state, body, fmt, feed_url)

    def _entry(self, state: store.TopicState, body: bytes, fmt: str, feed_url: str) -> _Rendered:
        last_change = (state.last_change or EPOCH).replace(microsecond=0)
        digest = hashlib.sha256(body).hexdigest()[:32]
        etags = (f'"{digest}"', f'"{digest}-gz"')
        gzipped = gzip.compress(body, GZIP_LEVEL, mtime=0)
        modified = format_datetime(last_change, usegmt=True)
        common = [
            ("Last-Modified", modified),
            ("Cache-Control", f"public, max-age={CACHE_SECONDS}"),
            ("Vary", "Accept-Encoding"),
        ]
        if self._hub:
            common.append(("Link", f'<{self._hub}>; rel="hub", <{feed_url}>; rel="self"'))
        plain, packed = [("ETag", etags[0]), *common], [("ETag", etags[1]), *common]
        ctype = ("Content-Type", publish.FORMATS[fmt])
        return _Rendered(
            state,
            body,
            gzipped,
            etags,
            modified,
            last_change,
            ok=[ctype, ("Content-Length", str(len(body))), *plain],
            ok_gzip=[ctype, ("Content-Encoding", "gzip"), ("Content-Length", str(len(gzipped))), *packed],
            not_modified=(plain, packed),
        )


def create_app(
    topics: Sequence[Topic],
    sessions: sessionmaker[Session],
    base_url: str,
    *,
    websub_hub: str | None = None,
    revalidate: float = REVALIDATE,
) -> Flask:
    """The WSGI application. ``base_url`` is the public address used in feed self links; with
    ``websub_hub``, feed responses announce the hub (``Link: <hub>; rel="hub"``). A rendered feed is
    served until a check of its topic's state, at most ``revalidate`` seconds old, finds it changed."""
    app = Flask("aggregator")
    by_name = {t.name: t for t in topics}
    base = base_url.rstrip("/")
    feeds = _Feeds(by_name, sessions, base, websub_hub, revalidate)
    formats = [(fmt, LABELS[fmt], publish.FORMATS[fmt].split(";")[0]) for fmt in ("rss", "atom", "json")]

    def urls(name: str) -> dict[str, str]:
        return publish.topic_feed_urls(base, name)

    def listing() -> list[dict[str, object]]:
        with sessions() as s:
            stats = store.topic_stats(s)
        rows: list[dict[str, object]] = []
        for t in topics:
            st = stats.get(t.name)
            rows.append(
                {
                    "title": t.title or t.name,
                    "description": t.description,
                    "count": st.count if st else 0,
                    "updated": st.last_change.strftime("%Y-%m-%d %H:%M UTC")
                    if st and st.last_change
                    else None,
                    "urls": urls(t.name),
                    "page": f"{base}/topics/{t.name}",
                }
            )
        return rows

    @app.errorhandler(SQLAlchemyError)
    def store_down(e: SQLAlchemyError) -> tuple[str, int, dict[str, str]]:
        problem = store.db_problem(e)
        log.warning("web: %s %s: the store cannot be read: %s", request.method, request.path, problem)
        return f"store: the database cannot be read ({type(e).__name__})\n", 503, {"Retry-After": "5"}

    @app.get("/")
    def index() -> str:
        return render_template("index.html", topics=listing(), formats=formats, base=base)

    @app.get("/opml")
    def opml() -> Response:
        body = render_template(
            "opml.xml", topics=listing(), now=format_datetime(datetime.now(UTC), usegmt=True)
        )
        return Response(body, content_type="text/x-opml; charset=utf-8")

    @app.get("/healthz")
    def healthz() -> tuple[dict[str, str], int]:
        try:
            with sessions() as s:
                s.execute(text("SELECT 1"))
        except SQLAlchemyError as e:
            return {"status": "error", "error": f"store: {type(e).__name__}"}, 503
        return {"status": "ok"}, 200

    registry = metrics.make_registry(sessions, topics)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(registry), content_type=metrics.CONTENT_TYPE)

    @app.get("/topics/<name>")
    def topic_page(name: str) -> str:
        topic = by_name.get(name) or abort(404, f"unknown topic {name!r}")
        with sessions() as s:
            items = store.topic_items(s, name, limit=topic.limit, collapse=topic.collapse)
        return render_template(
            "topic.html",
            title=topic.title or topic.name,
            description=topic.description,
            items=items,
            urls=urls(name),
            formats=formats,
            base=base,
        )

    @app.route("/topics/<name>.<fmt>", methods=["GET", "HEAD"])
    def topic_feed(name: str, fmt: str) -> Response:
        if name not in by_name or fmt not in publish.FORMATS:
            abort(404, f"unknown topic feed {name}.{fmt}")
        page = _page_number()
        try:
            rendered = feeds.get(name, fmt, page)
        except _NoSuchPage as e:
            abort(404, f"topic {name!r} has {e.pages} page{'s' * (e.pages != 1)}, not {page}")
        status, headers, body = _answer(rendered, request.environ)
        return Response(body, status=status, headers=headers)

    app.wsgi_app = _fast_path(feeds, app.wsgi_app)  # type: ignore[method-assign,assignment]
    app.extensions["aggregator.in_memory"] = feeds.in_memory
    return app


def in_memory(app: Flask) -> Callable[[str, str, str], bool]:
    """The app's test for requests it answers from memory: (method, path, query string) -> bool."""
    test: Callable[[str, str, str], bool] = app.extensions["aggregator.in_memory"]
    return test


def _fast_path(feeds: _Feeds, flask_app: WSGIApplication) -> WSGIApplication:
    """Answer GET and HEAD of a current cached feed page (200 or 304) before Flask: no routing, no
    request object, ready-made headers. Anything else, misses included, goes to the Flask app."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        key = _feed_key(
            environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        )
        if key is not None:
            try:
                rendered = feeds.lookup(*key)
            except SQLAlchemyError:
                rendered = None  # Flask answers it: 503
            if rendered is not None:
                status, headers, body = _answer(rendered, environ)
                start_response(status, headers)
                send = environ.get("aggregator.body")  # aggregator.httpd: sent without a copy
                return send(body) if send is not None and len(body) >= ZERO_COPY else [body]
        return flask_app(environ, start_response)

    return app


_PAGES = {f"page={n}": n for n in range(1, 101)}  # the query strings the fast path understands


def _feed_key(method: str, path: str, query: str) -> tuple[str, str, int] | None:
    """(topic, format, page) of a GET or HEAD the fast path may answer from the cache, or None."""
    if method not in ("GET", "HEAD") or not path.startswith("/topics/"):
        return None
    name, _, fmt = path[8:].rpartition(".")
    page = 1 if not query else _PAGES.get(query)
    return (name, fmt, page) if page else None


def _answer(rendered: _Rendered, environ: WSGIEnvironment) -> tuple[str, Headers, bytes]:
    """Status, headers and body for a GET or HEAD of ``rendered``: 304 when the client's copy is
    current, the gzip copy when the client accepts it."""
    packed = _accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING"))
    if _not_modified(rendered, environ.get("HTTP_IF_NONE_MATCH"), environ.get("HTTP_IF_MODIFIED_SINCE")):
        return "304 Not Modified", rendered.not_modified[packed], b""
    if environ.get("REQUEST_METHOD") == "HEAD":
        return "200 OK", rendered.ok_gzip if packed else rendered.ok, b""
    return (
        ("200 OK", rendered.ok_gzip, rendered.gzipped) if packed else ("200 OK", rendered.ok, rendered.body)
    )


@functools.lru_cache(maxsize=256)
def _accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header takes gzip (RFC 9110: ``gzip`` or ``*``, unless q=0)."""
    for part in (accept_encoding or "").lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if "q=" in params else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def _page_number() -> int:
    """``?page=N`` (1-based); anything else is a 400 naming the parameter."""
    raw = request.args.get("page")
    if raw is None:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        abort(400, f"page: expected a page number 1, 2, ..., found {raw!r}")
    return int(raw)


def _page_url(feed_url: str, page: int) -> str:
    return feed_url if page == 1 else f"{feed_url}?page={page}"


def _paging(feed_url: str, page: int, pages: int) -> publish.Paging:
    """RFC 5005 links: page 1 is the subscription document itself (no ?page)."""
    return publish.Paging(
        first=feed_url,
        last=_page_url(feed_url, pages),
        next=_page_url(feed_url, page + 1) if page < pages else None,
        previous=_page_url(feed_url, page - 1) if page > 1 else None,
    )


def _not_modified(rendered: _Rendered, if_none_match: str | None, since: str | None) -> bool:
    """RFC 9110: If-None-Match wins when present; otherwise If-Modified-Since."""
    if if_none_match is not None:
        if if_none_match in rendered.etags:
            return True
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or not tags.isdisjoint(rendered.etags)
    if not since:
        return False
    if since == rendered.last_modified:
        return True
    try:
        when = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return rendered.last_change <= when
