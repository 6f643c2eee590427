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
    auth: tuple[str, str] | None = None  # HTTP basic auth (user, password), sent to this host only
    allow_private: bool = False  # may redirects lead into loopback, link-local or private addresses?
    min_interval: timedelta = timedelta(minutes=1)  # the scheduler never polls more often than this
    max_interval: timedelta = timedelta(hours=24)  # nor less often than this (backoff excepted)
    strip_params: tuple[str, ...] = ()  # more tracking query parameters to drop from its URLs
    boilerplate: tuple[str, ...] = ()  # regexes of its own furniture lines (whole-line matches)


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
    limit: int = 50
    exclude_sources: tuple[str, ...] = ()  # never these source names
    exclude_tags: tuple[str, ...] = ()  # never sources carrying one of these tags
    min_length: int = 0  # items whose plain text is shorter (in characters) are left out
    icon: str | None = None  # feed icon/logo URL
    collapse: str = "article"  # "story": one entry per story; "article": one per article; "none"


@dataclass(frozen=True, slots=True)
class FetchState:
    """What the store remembers about a source to make the next request conditional."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    errors: int = 0  # consecutive failed polls so far (drives the backoff)
    body_hash: str | None = None  # sha256 of the last body parsed (skips parsing an identical one)
    redirect_candidate: str | None = None  # a 301/308 target seen once, persisted when seen again


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
    ttl: timedelta | None = None  # RSS <ttl>: how long the publisher says the feed may be cached
    update_every: timedelta | None = None  # sy:updatePeriod / sy:updateFrequency


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
    flags: tuple[str, ...] = ()  # what normalization or identity had to fix: see normalize.FLAGS
    raw_hash: str | None = None  # of its raw entry (normalize.raw_identity): skips normalizing it again


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
    also: tuple[Sighting, ...] = ()  # other outlets' items of the same story (collapse: story)


@dataclass(frozen=True, slots=True)
class Sighting:
    """Another outlet's item of the same story, listed under the entry that stands for the story."""

    source: str
    source_title: str | None
    title: str
    url: str | None


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
    bytes: int = 0  # body size received (decoded)
    unchanged: int = 0  # entries stored before and not changed
    due_reason: str | None = None  # which scheduling rule set ``next_due``
    retired: bool = False  # 410 Gone: polling stops until the operator changes the source

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
    status: str  # "new", "ok", "erroring", "backing off", "retired", "disabled"
    last_fetch: datetime | None
    last_http_status: int | None
    error_count: int
    last_error: str | None
    items: int
    last_new: int
    next_due: datetime | None
    due_reason: str | None = None  # which scheduling rule set ``next_due``
    url_reason: str | None = None  # why ``effective_url`` differs from ``url``
    retired: bool = False
    last_entries: int = 0  # entries in the last successful document
