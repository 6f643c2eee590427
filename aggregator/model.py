"""Frozen value objects passed between the pipeline stages.

Nothing here does I/O or knows about feedparser, requests, SQLAlchemy or feedgen: each stage turns one
of these into the next (Source -> FetchResult -> ParsedFeed -> Item -> StoredItem). All datetimes are
timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

DEFAULT_USER_AGENT = "aggregator/0.1 (+https://github.com/aggregator/aggregator)"


@dataclass(frozen=True, slots=True)
class Enclosure:
    """A media attachment (podcast audio, image): URL, MIME type, length in bytes."""

    url: str
    type: str | None = None
    length: int | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One configured feed. ``url`` is http(s) or file:// (config resolves bare paths)."""

    name: str
    url: str
    title: str | None = None
    tags: tuple[str, ...] = ()
    interval: timedelta = timedelta(minutes=30)
    timeout: float = 20.0
    max_bytes: int = 10 * 1024 * 1024
    user_agent: str = DEFAULT_USER_AGENT
    headers: tuple[tuple[str, str], ...] = ()
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Topic:
    """A published feed: the items of the selected sources that match ``query``."""

    name: str
    query: str
    title: str | None = None
    description: str | None = None
    sources: tuple[str, ...] = ()  # only these source names (empty: all)
    tags: tuple[str, ...] = ()  # only sources carrying one of these tags (empty: all)
    language: tuple[str, ...] = ()  # only items in these languages (empty: all)
    collapse_duplicates: bool = False  # one entry per article seen from several sources
    limit: int = 50


@dataclass(frozen=True, slots=True)
class FetchState:
    """What the store remembers about a source to make the next request conditional."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    errors: int = 0  # consecutive failed polls so far (drives the backoff)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A completed retrieval. ``body`` is empty when the server answered 304 Not Modified."""

    url: str  # final URL, after redirects
    status: int  # HTTP status; 200 for a file
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    etag: str | None = None
    last_modified: str | None = None
    redirects: tuple[tuple[int, str], ...] = ()  # (status, location) per hop

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True, slots=True)
class FeedMeta:
    """Feed-level facts taken from the document."""

    title: str | None = None
    link: str | None = None
    description: str | None = None
    language: str | None = None
    version: str | None = None  # feedparser's name: rss20, atom10, json11, ...


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One entry as the document gave it; HTML fields are not yet sanitized."""

    guid: str | None = None
    link: str | None = None
    title: str | None = None
    summary: str | None = None  # HTML (or text)
    content: str | None = None  # HTML (or text): the fullest body the entry carries
    published: datetime | None = None
    updated: datetime | None = None
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    enclosures: tuple[Enclosure, ...] = ()
    language: str | None = None
    base: str | None = None  # base URL for relative links (xml:base or the feed URL)
    image: str | None = None  # a lead image (media:thumbnail, media:content, ...)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """Entries recovered from a document; ``problem`` records what was wrong with it, if anything."""

    meta: FeedMeta
    entries: tuple[RawEntry, ...]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """A normalized entry, ready to store. ``key`` is its identity inside its source."""

    source: str
    key: str  # "guid:…", "link:…" or "hash:…"
    uid: str  # stable public id (a UUID string), derived from source + key
    title: str
    html: str  # sanitized
    text: str  # plain text, paragraphs separated by blank lines
    published: datetime
    content_hash: str  # hash of title + text: changes when the entry's content does
    url: str | None = None  # canonical: resolved, tracking parameters removed
    link: str | None = None  # as published (resolved)
    updated: datetime | None = None
    dated: bool = True  # False when ``published`` fell back to the first-seen time
    language: str | None = None
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    enclosures: tuple[Enclosure, ...] = ()
    image: str | None = None


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item as read back from the store, with what the store decided about it."""

    id: int
    item: Item
    first_seen: datetime
    source_title: str | None = None
    source_link: str | None = None  # the outlet's site link
    article_id: int | None = None  # shared by items of several sources carrying one article
    story_id: int | None = None


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """The result of polling one source; failures are values, not exceptions."""

    source: str
    status: str  # "updated", "unchanged", "not_modified" or "error"
    next_due: datetime
    http_status: int | None = None
    entries: int = 0  # entries in the document
    new: int = 0
    updated: int = 0
    error: str | None = None
    problem: str | None = None  # a recoverable parse problem (bozo) worth showing
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "error"


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """One row of ``python run.py sources``."""

    name: str
    url: str
    effective_url: str | None
    enabled: bool
    status: str  # "new", "ok", "error"
    last_fetch: datetime | None
    last_http_status: int | None
    error_count: int
    last_error: str | None
    items: int
    last_new: int
    next_due: datetime | None
