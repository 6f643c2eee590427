"""Turn a parsed RawEntry into a clean Item: canonical URL, sanitized HTML, plain text, UTC dates, language.

Pure: no I/O, no clock (``now`` is a parameter). The work is done by urls.py (canonical URLs), markup.py
(sanitizing, text, furniture) and language.py; this module assembles the Item and records in
``Item.flags`` what it had to fix. Deciding whether two items are the same story is not done here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

from aggregator.dedup import content_hash, identity_key, item_uid
from aggregator.language import detect_language, item_language, normalize_language
from aggregator.markup import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    BOILERPLATE_PATTERNS,
    boilerplate_pattern,
    clean_html,
    clean_html_text,
    clean_title,
    html_to_text,
    is_boilerplate,
    remove_boilerplate_text,
)
from aggregator.model import Enclosure, FeedMeta, Item, RawEntry, Source
from aggregator.urls import (
    HTTP_PORTS,
    TRACKING_PARAMS,
    TRACKING_PREFIXES,
    TRACKING_VALUES,
    canonical_url,
    http_url,
    resolve_url,
)

__all__ = [  # the normalization API, wherever each piece lives
    "ALLOWED_ATTRIBUTES",
    "ALLOWED_TAGS",
    "BOILERPLATE_PATTERNS",
    "FLAGS",
    "FUTURE_TOLERANCE",
    "TRACKING_PARAMS",
    "TRACKING_PREFIXES",
    "TRACKING_VALUES",
    "canonical_url",
    "clean_html",
    "clean_title",
    "detect_language",
    "html_to_text",
    "is_boilerplate",
    "normalize_entry",
    "normalize_language",
    "remove_boilerplate_text",
]

#: What ``Item.flags`` may say. "future-date": a published/updated date more than FUTURE_TOLERANCE
#: ahead of ``now`` was clamped to ``now``; "language-detected": the language was detected from the
#: text (none declared, or the declared one implausible); "guid-repeated": the feed used the entry's
#: guid for another entry too, so its identity key was made distinct (dedup.disambiguate).
FLAGS = ("future-date", "language-detected", "guid-repeated")

FUTURE_TOLERANCE = timedelta(days=1)
_FALLBACK_TITLE_CHARS = 80

#: Part of every raw hash: bump it when normalize_entry gives a different Item for the same input, so
#: that entries stored before are normalized again (and updated if their title or text changed).
NORMALIZER_VERSION = 1


class RawIdentity(NamedTuple):
    """What raw_identity finds out about an entry before it is normalized."""

    key: str | None  # the identity key, None when it needs the entry's text
    hash: str  # of everything normalize_entry reads but ``now``
    url: str | None  # the canonical URL, worked out for an entry without a guid (else None)


def raw_identity(raw: RawEntry, *, source: Source, feed: FeedMeta, feed_url: str) -> RawIdentity:
    """What the store compares before normalizing an entry again: the identity key normalize_entry gives
    it when the guid or the link decides it (None when the key needs its text: such an entry is always
    normalized), and a hash of everything normalize_entry reads except ``now`` (the entry's fields, the
    base URL, the feed's language, the source's settings). The same key and hash as the stored item's
    mean the same title and text, so the same content hash: nothing to update. An entry without a guid
    needs its canonical URL for the key; it comes back too, so normalize_entry does not work it out again."""
    base = raw.base or feed_url
    url: str | None = None
    if raw.guid is not None and raw.guid.strip():  # dedup.identity_key, without the text
        key: str | None = "guid:" + raw.guid.strip()
    else:
        url = canonical_url(raw.link, base, extra_params=source.strip_params)
        key = "link:" + url if url else None
    inputs = (
        NORMALIZER_VERSION,
        raw,
        base,
        feed.language,
        source.name,
        source.strip_params,
        source.boilerplate,
    )
    return RawIdentity(key, hashlib.blake2b(repr(inputs).encode(), digest_size=16).hexdigest(), url)


def normalize_entry(
    raw: RawEntry,
    *,
    source: Source,
    feed: FeedMeta,
    feed_url: str,
    now: datetime,
    identity: RawIdentity | None = None,
) -> Item:
    """The Item for ``raw``: relative links resolve against ``raw.base`` or ``feed_url``; the source's
    ``strip_params`` and ``boilerplate`` apply on top of the built-in lists. ``identity`` (raw_identity's
    for ``raw``): its hash is kept on the Item for the store, its canonical URL is not worked out again."""
    base = raw.base or feed_url
    url = (identity and identity.url) or canonical_url(raw.link, base, extra_params=source.strip_params)
    link = resolve_url(raw.link, base) if url else None
    furniture = boilerplate_pattern(source.boilerplate)
    html, text = clean_html_text(raw.content or raw.summary or "", base, boilerplate=furniture)
    text = remove_boilerplate_text(text, furniture)
    title = clean_title(raw.title) or _fallback_title(text, link)
    key = identity_key(raw.guid, url, title, text)
    published, updated, dated, clamped = _dates(raw.published, raw.updated, now)
    declared = raw.language if normalize_language(raw.language) else feed.language
    language, detected = item_language(declared, title, text)
    enclosures = _enclosures(raw.enclosures, base)
    flags = ("future-date",) * clamped + ("language-detected",) * detected
    return Item(
        source=source.name,
        key=key,
        uid=item_uid(source.name, key),
        title=title,
        html=html,
        text=text,
        published=published,
        content_hash=content_hash(title, text),
        url=url,
        link=link,
        updated=updated,
        dated=dated,
        language=language,
        authors=_unique(raw.authors),
        categories=_unique(raw.categories),
        enclosures=enclosures,
        image=lead_image(raw.image, base, enclosures, html),
        flags=flags,
        raw_hash=identity.hash if identity is not None else None,
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _dates(
    published: datetime | None, updated: datetime | None, now: datetime
) -> tuple[datetime, datetime | None, bool, bool]:
    """(published, updated, dated, clamped): a missing or far-future date becomes ``now`` with
    dated=False; clamped is True when a far-future date was replaced."""
    now = _utc(now)
    limit = now + FUTURE_TOLERANCE
    first = published or updated
    clamped = first is not None and _utc(first) > limit
    if first is None or clamped:
        pub, dated = now, False
    else:
        pub, dated = _utc(first), True
    upd = _utc(updated) if updated else None
    if upd is not None and upd > limit:
        upd, clamped = now, True
    return pub, (upd if upd != pub else None), dated, clamped


def _fallback_title(text: str, link: str | None) -> str:
    first = text.split("\n", 1)[0].strip()
    if not first:
        return link or ""
    if len(first) <= _FALLBACK_TITLE_CHARS:
        return first
    cut = first[:_FALLBACK_TITLE_CHARS]
    words = cut.rsplit(" ", 1)[0]
    return (words if len(words) > _FALLBACK_TITLE_CHARS // 2 else cut).rstrip(" ,;:.-–—") + "…"


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for value in values:
        clean = clean_title(value)
        if clean and clean.casefold() not in seen:
            seen[clean.casefold()] = clean
    return tuple(seen.values())


def _enclosures(enclosures: Iterable[Enclosure], base: str) -> tuple[Enclosure, ...]:
    kept: dict[str, Enclosure] = {}
    for enc in enclosures:
        url = canonical_url(enc.url, base)
        if url and urlsplit(url).scheme in HTTP_PORTS and url not in kept:
            length = enc.length if enc.length is not None and enc.length >= 0 else None
            kept[url] = Enclosure(url, (enc.type or "").strip() or None, length)
    return tuple(kept.values())


_IMG_SRC = re.compile(r"<img\b[^>]*?\ssrc=\"(https?://[^\"]+)\"", re.IGNORECASE)


def lead_image(declared: str | None, base: str, enclosures: Iterable[Enclosure], html: str) -> str | None:
    """The entry's lead image: the one the feed names (media:thumbnail, ...), else its first image
    enclosure, else the first http(s) image in its sanitized HTML."""
    image = http_url(declared, base)
    if image:
        return image
    for enc in enclosures:
        if (enc.type or "").startswith("image/"):
            return enc.url
    match = _IMG_SRC.search(html)
    return match.group(1).replace("&amp;", "&") if match else None
