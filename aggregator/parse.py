"""Turn a fetched body into FeedMeta + RawEntry values: the only user of feedparser (plus a JSON Feed reader).

RSS/Atom go to fastparse.py first (fastfeedparser, 4-6x less CPU) and to feedparser when it declines
(``parse_feed_traced`` says why; feedparser is imported by the first fallback, not before). HTML is passed
through unsanitized and relative URLs unresolved (``sanitize_html=False, resolve_relative_uris=False``):
normalize.py does both, with nh3. No I/O.

Bozo policy: a document feedparser flags as broken ("bozo") is still used when entries could be recovered;
``ParsedFeed.problem`` then says what was wrong ("not well-formed XML at line 12: ...", "declared encoding
X, parsed as Y"). A document with no entries is an error (ParseError) when it is broken or of no known
feed version; an HTML page with no entries is "not a feed" (naming the feed it links, if any). A valid
feed with zero entries is fine. An empty body is an error. Nothing but ParseError ever leaves this module.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

from aggregator.errors import ParseError
from aggregator.fastparse import Rejected, enclosures, feed_timing, parse_fast
from aggregator.fastparse import join_url as _url
from aggregator.fastparse import length as _length
from aggregator.fastparse import mappings as _dicts
from aggregator.fastparse import stripped as _str
from aggregator.fastparse import unique as _dedup
from aggregator.model import Enclosure, FeedMeta, ParsedFeed, RawEntry

_WHITESPACE = b" \t\r\n\x0c"
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/feed+json")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_JSON_VERSIONS = {"1": "json10", "1.0": "json10", "1.1": "json11"}
log = logging.getLogger(__name__)


def parse_feed(
    body: bytes, *, url: str, content_type: str | None = None, source: str = "", fast: bool = True
) -> ParsedFeed:
    """Parse ``body`` (fetched from ``url``); raise ParseError when nothing usable is in it.

    ``fast``: try fastparse first (feedparser stays the fallback); False uses feedparser alone."""
    return parse_feed_traced(body, url=url, content_type=content_type, source=source, fast=fast)[0]


def parse_feed_traced(
    body: bytes, *, url: str, content_type: str | None = None, source: str = "", fast: bool = True
) -> tuple[ParsedFeed, str | None]:
    """parse_feed, and why the fast path was not taken: None when it was (or for JSON Feed),
    "off" when ``fast`` is False, else the fallback reason (for logs and bench/parse.py)."""
    who = f"source {source!r}: " if source else ""
    head = _head(body)
    if not head:
        raise ParseError(f"{who}empty document from {url}")
    mime = (content_type or "").split(";")[0].strip().lower()
    try:
        if head.startswith(b"{"):
            return _parse_json_feed(body, url=url, who=who), None
        reason = "off"
        if fast:
            try:
                return parse_fast(body, url=url, content_type=content_type), None
            except Rejected as e:
                reason = str(e)
                log.debug("%sfeedparser fallback for %s: %s", who, url, reason)
        return _parse_with_feedparser(body, url=url, content_type=content_type, mime=mime, who=who), reason
    except ParseError:
        raise
    except Exception as e:  # feedparser on hostile bytes: whatever it raises becomes a ParseError
        raise ParseError(f"{who}could not parse the document from {url}: {type(e).__name__}: {e}") from e


def _head(body: bytes) -> bytes:
    """The first bytes of the document, without a UTF-8 BOM or leading whitespace (lower-cased)."""
    start = body[:1024]
    for bom in _BOMS:
        if start.startswith(bom):
            start = start[len(bom) :]
            break
    return start.lstrip(_WHITESPACE).lower()


# --- feedparser (RSS 0.9x/1.0/2.0, Atom 0.3/1.0, CDF) ---------------------------------------------


def _parse_with_feedparser(
    body: bytes, *, url: str, content_type: str | None, mime: str, who: str
) -> ParsedFeed:
    import feedparser  # the fallback only: most processes never need it

    d = feedparser.parse(
        io.BytesIO(body),
        response_headers={"content-location": url, "content-type": content_type or ""},
        resolve_relative_uris=False,  # normalize resolves them (nh3 + urls.py), as for the fast path
        sanitize_html=False,
    )
    problem = _bozo_message(d, body, content_type) if d.get("bozo") else None
    # a wrong Content-Type alone does not make a document broken
    broken = bool(d.get("bozo")) and not isinstance(d.get("bozo_exception"), feedparser.NonXMLContentType)
    entries = d.get("entries") or []
    version = d.get("version") or None
    if not entries:
        if mime in _HTML_TYPES or _looks_like_html(body):
            message = f"{who}not a feed: got {mime if mime in _HTML_TYPES else 'text/html'} from {url}"
            alternate = find_feed_link(body, url)
            raise ParseError(message + (f"; the page links a feed at {alternate}" if alternate else ""))
        if broken or not version:
            cause = problem or "no RSS, Atom or JSON Feed version recognised"
            raise ParseError(f"{who}no entries could be read from {url}: {cause}")
    feed = d.get("feed") or {}
    meta = FeedMeta(
        title=_str(feed.get("title")),
        link=_str(feed.get("link")),
        description=_str(feed.get("subtitle")),
        language=_str(feed.get("language")),
        version=version,
        **feed_timing(feed.get("ttl"), feed.get("sy_updateperiod"), feed.get("sy_updatefrequency")),
    )
    raws = tuple(_raw_entry(e, url=url, feed_language=meta.language) for e in entries)
    return ParsedFeed(meta=meta, entries=raws, problem=problem)


def _bozo_message(d: Mapping[str, Any], body: bytes, content_type: str | None) -> str | None:
    """A readable line for feedparser's bozo exception (None for a missing Content-Type alone)."""
    import feedparser  # loaded by _parse_with_feedparser already

    exc = d.get("bozo_exception")
    if isinstance(exc, feedparser.NonXMLContentType):
        return f"served as {content_type}, which is not an XML media type" if content_type else None
    if isinstance(exc, feedparser.CharacterEncodingOverride):
        m = re.search(r"declared as (\S+), but parsed as (\S+)", str(exc))
        if m:
            return f"declared encoding {m.group(1)}, parsed as {m.group(2)}"
    get_line = getattr(exc, "getLineNumber", None)
    get_message = getattr(exc, "getMessage", None)
    if callable(get_line) and callable(get_message):
        line = get_line() - _added_lines(body)
        return f"not well-formed XML at line {line}: {get_message()}"
    if exc is None:
        return "feedparser flagged the document as broken"
    return str(exc) or type(exc).__name__


def _added_lines(body: bytes) -> int:
    """feedparser puts its own XML declaration on a new first line when the document has none."""
    start = body[:64]
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if start.startswith(bom):
            start = start[len(bom) :].decode(codec, "ignore").encode()
            break
    return 0 if start.startswith(b"<?xml") else 1


def _looks_like_html(body: bytes) -> bool:
    head = _head(body)
    return head.startswith((b"<!doctype html", b"<html"))


class _AlternateFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "link" or self.href is not None:
            return
        a = {k.lower(): (v or "") for k, v in attrs}
        rels = a.get("rel", "").lower().split()
        if "alternate" in rels and a.get("type", "").lower().strip() in _FEED_TYPES and a.get("href"):
            self.href = a["href"].strip()


def find_feed_link(body: bytes, url: str) -> str | None:
    """The absolute URL of the first RSS/Atom/JSON feed an HTML page links with rel=alternate."""
    finder = _AlternateFinder()
    try:
        finder.feed(body[:1_000_000].decode("utf-8", "replace"))
        finder.close()
    except Exception:  # a broken page: no link
        return None
    return _url(url, finder.href)


def _raw_entry(e: Mapping[str, Any], *, url: str, feed_language: str | None) -> RawEntry:
    content, content_detail = _content(e)
    summary_detail = e.get("summary_detail") or {}
    title_detail = e.get("title_detail") or {}
    link = _link(e)
    xml_base = _str(content_detail.get("base")) or _str(summary_detail.get("base")) or url
    return RawEntry(
        guid=_str(e.get("id")),
        link=link,
        title=_str(e.get("title")),
        summary=_str(e.get("summary")),
        content=content,
        published=struct_to_datetime(e.get("published_parsed")),
        updated=struct_to_datetime(_own(e, "updated_parsed")),
        authors=_authors(e),
        categories=_dedup(_str(t.get("term") or t.get("label")) for t in _dicts(e.get("tags"))),
        enclosures=_enclosures(e, xml_base),
        language=_str(content_detail.get("language"))
        or _str(summary_detail.get("language"))
        or _str(title_detail.get("language"))
        or feed_language,
        base=_str(content_detail.get("base")) or _str(summary_detail.get("base")) or link or url,
        image=_image(e, xml_base),
    )


def _content(e: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """The longest content value, HTML preferred; with its detail dict (for base and language)."""
    parts = [c for c in _dicts(e.get("content")) if isinstance(c.get("value"), str) and c["value"].strip()]
    html = [c for c in parts if str(c.get("type", "")).lower() in ("text/html", "application/xhtml+xml")]
    pool = html or parts
    if not pool:
        return None, {}
    best = max(pool, key=lambda c: len(c["value"]))
    summary = e.get("summary")
    if not html and isinstance(summary, str) and len(best["value"]) <= len(summary):
        # plain text no longer than the description is a media:description caption (NYT), not the body
        return None, {}
    return best["value"], best


def _link(e: Mapping[str, Any]) -> str | None:
    alternates = [x for x in _dicts(e.get("links")) if x.get("rel") == "alternate" and _str(x.get("href"))]
    html = [x for x in alternates if x.get("type") in ("text/html", None)]
    for x in html or alternates:
        return _str(x.get("href"))
    return _str(e.get("link"))


def _authors(e: Mapping[str, Any]) -> tuple[str, ...]:
    names = [_str(a.get("name")) or _str(a.get("email")) for a in _dicts(e.get("authors"))]
    if not any(names):
        names = [_str(e.get("author"))]
    return _dedup(names)


def _enclosures(e: Mapping[str, Any], base: str) -> tuple[Enclosure, ...]:
    found = [x for x in _dicts(e.get("links")) if x.get("rel") == "enclosure"]
    return enclosures([*found, *_dicts(e.get("enclosures"))], base)


def _image(e: Mapping[str, Any], base: str) -> str | None:
    for t in _dicts(e.get("media_thumbnail")):
        if _str(t.get("url")):
            return _url(base, t.get("url"))
    for m in _dicts(e.get("media_content")):
        kind = str(m.get("type") or "").lower()
        if _str(m.get("url")) and (kind.startswith("image/") or m.get("medium") == "image"):
            return _url(base, m.get("url"))
    image = e.get("image")
    return _url(base, image.get("href")) if isinstance(image, Mapping) else None


def struct_to_datetime(value: object) -> datetime | None:
    """feedparser's UTC ``*_parsed`` struct_time as an aware UTC datetime; None for missing or bad values."""
    if not isinstance(value, (time.struct_time, tuple)) or len(value) < 6:
        return None
    year, month, day, hour, minute, second = value[:6]
    try:
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except (ValueError, TypeError, OverflowError):
        return None


# --- JSON Feed 1.0 / 1.1 (feedparser 6.0.x has no JSON Feed support) -----------------------------


def _parse_json_feed(body: bytes, *, url: str, who: str) -> ParsedFeed:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ParseError(f"{who}invalid JSON from {url}: {e}") from e
    version = _str(doc.get("version")) if isinstance(doc, dict) else None
    if not version or "jsonfeed.org/version/" not in version:
        raise ParseError(f"{who}not a feed: JSON without a jsonfeed.org version from {url}")
    meta = FeedMeta(
        title=_str(doc.get("title")),
        link=_url(url, doc.get("home_page_url")),
        description=_str(doc.get("description")),
        language=_str(doc.get("language")),
        version=_JSON_VERSIONS.get(version.rstrip("/").rsplit("/", 1)[-1], "json"),
    )
    feed_authors = _json_authors(doc)
    items = doc.get("items")
    if not isinstance(items, list):
        raise ParseError(f"{who}JSON Feed without an items list from {url}")
    entries = tuple(
        _json_entry(item, url=url, feed_authors=feed_authors, feed_language=meta.language)
        for item in items
        if isinstance(item, dict)
    )
    return ParsedFeed(meta=meta, entries=entries)


def _json_entry(
    item: Mapping[str, Any], *, url: str, feed_authors: tuple[str, ...], feed_language: str | None
) -> RawEntry:
    link = _url(url, item.get("url")) or _url(url, item.get("external_url"))
    return RawEntry(
        guid=_json_id(item.get("id")),
        link=link,
        title=_str(item.get("title")),
        summary=_str(item.get("summary")),
        content=_str(item.get("content_html")) or _str(item.get("content_text")),
        published=_iso_datetime(item.get("date_published")),
        updated=_iso_datetime(item.get("date_modified")),
        authors=_json_authors(item) or feed_authors,
        categories=_dedup(_str(t) for t in _list(item.get("tags"))),
        enclosures=_json_attachments(url, item.get("attachments")),
        language=_str(item.get("language")) or feed_language,
        base=link or url,
        image=_url(url, item.get("image")) or _url(url, item.get("banner_image")),
    )


def _json_id(value: object) -> str | None:
    """JSON Feed ids are strings; numbers are common and kept as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


def _json_authors(obj: Mapping[str, Any]) -> tuple[str, ...]:
    people = obj.get("authors") if isinstance(obj.get("authors"), list) else [obj.get("author")]
    return _dedup(_str(p.get("name")) or _str(p.get("url")) for p in _dicts(people))


def _json_attachments(url: str, value: object) -> tuple[Enclosure, ...]:
    out: dict[str, Enclosure] = {}
    for a in _dicts(value):
        href = _url(url, a.get("url"))
        if href and href not in out:
            out[href] = Enclosure(
                url=href, type=_str(a.get("mime_type")), length=_length(a.get("size_in_bytes"))
            )
    return tuple(out.values())


def _iso_datetime(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# --- small helpers --------------------------------------------------------------------------------


def _own(d: Mapping[str, Any], key: str) -> Any:
    """``d[key]`` without FeedParserDict's fallback from updated to published (which warns)."""
    return dict.get(d, key) if isinstance(d, dict) else d.get(key)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
