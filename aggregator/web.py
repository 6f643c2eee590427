"""The read-only web side: an HTML index, topic feeds (RSS, Atom, JSON Feed) with ETag/Last-Modified,
304s, RFC 5005 pages (?page=N) and WebSub Link headers, the topic list as OPML, and a health check.
Writes nothing; any number can run side by side.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from flask import Flask, Response, abort, render_template, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator import publish, store
from aggregator.model import Topic

CACHE_SECONDS = 60
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

LABELS = {"rss": "RSS", "atom": "Atom", "json": "JSON Feed"}


class _RenderCache:
    """Rendered feed bytes by (topic, format, etag): a topic is rendered once per content version."""

    def __init__(self, size: int = 256) -> None:
        self._data: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: tuple[str, str, str]) -> bytes | None:
        with self._lock:
            body = self._data.get(key)
            if body is not None:
                self._data.move_to_end(key)
            return body

    def put(self, key: tuple[str, str, str], body: bytes) -> None:
        with self._lock:
            self._data[key] = body
            while len(self._data) > self._size:
                self._data.popitem(last=False)


def create_app(
    topics: Sequence[Topic],
    sessions: sessionmaker[Session],
    base_url: str,
    *,
    websub_hub: str | None = None,
) -> Flask:
    """The WSGI application. ``base_url`` is the public address used in feed self links; with
    ``websub_hub``, feed responses announce the hub (``Link: <hub>; rel="hub"``)."""
    app = Flask("aggregator")
    by_name = {t.name: t for t in topics}
    base = base_url.rstrip("/")
    cache = _RenderCache()
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
        topic = by_name.get(name)
        if topic is None or fmt not in publish.FORMATS:
            abort(404, f"unknown topic feed {name}.{fmt}")
        page = _page_number()
        with sessions() as s:
            stats = store.topic_stats(s).get(name)
            entries = store.topic_entry_count(s, name, collapse=topic.collapse)
        last_change = (stats.last_change if stats else None) or EPOCH
        count = stats.count if stats else 0
        pages = max(1, math.ceil(entries / topic.limit))
        if page > pages:
            abort(404, f"topic {name!r} has {pages} page{'s' * (pages != 1)}, not {page}")
        version = f"{topic!r}|{base}|{fmt}|{page}|{count}|{entries}|{last_change.isoformat()}"
        etag = hashlib.sha256(version.encode()).hexdigest()[:32]
        feed_url = urls(name)[fmt]
        headers = {
            "ETag": f'"{etag}"',
            "Last-Modified": format_datetime(last_change.replace(microsecond=0), usegmt=True),
            "Cache-Control": f"public, max-age={CACHE_SECONDS}",
        }
        if websub_hub:
            headers["Link"] = f'<{websub_hub}>; rel="hub", <{feed_url}>; rel="self"'
        if _not_modified(etag, last_change):
            return Response(status=304, headers=headers)
        body = cache.get((name, fmt, etag))
        if body is None:
            with sessions() as s:
                items = store.topic_items(
                    s,
                    name,
                    limit=topic.limit,
                    collapse=topic.collapse,
                    offset=(page - 1) * topic.limit,
                )
            body = publish.render_feed(
                fmt,
                topic,
                items,
                feed_url=_page_url(feed_url, page),
                site_url=f"{base}/topics/{name}",
                updated=stats.last_change if stats else None,
                paging=_paging(feed_url, page, pages),
            )
            cache.put((name, fmt, etag), body)
        return Response(body, content_type=publish.FORMATS[fmt], headers=headers)

    return app


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


def _not_modified(etag: str, last_change: datetime) -> bool:
    """RFC 9110: If-None-Match wins when present; otherwise If-Modified-Since."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or f'"{etag}"' in tags
    since = request.headers.get("If-Modified-Since")
    if since:
        try:
            when = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return last_change.replace(microsecond=0) <= when
    return False
