"""The fast path for RSS/Atom: fastfeedparser (lxml) adapted to FeedMeta + RawEntry, plus the sanity checks
that send a document back to feedparser (``Rejected``). Never sanitizes (markup.py does), never opens a URL.

Only parse.py calls this; it falls back to feedparser whenever ``parse_fast`` raises.
"""

from __future__ import annotations

import codecs
import html as htmllib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import fastfeedparser
from lxml import etree

from aggregator.model import Enclosure, FeedMeta, ParsedFeed, RawEntry
from aggregator.urls import is_plain_absolute

_MEDIA_NS = ("http://search.yahoo.com/mrss/", "http://search.yahoo.com/mrss")
_ATOM_NS = "http://www.w3.org/2005/Atom"
_DC_NS = "http://purl.org/dc/elements/1.1/"
_RSS10_NS = "http://purl.org/rss/1.0/"
_ATOM03_NS = "http://purl.org/atom/ns#"
_ATOM = "{" + _ATOM_NS + "}"
_DC = "{" + _DC_NS + "}"
_RDF_ABOUT = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}about"
_ITUNES = "{http://www.itunes.com/dtds/podcast-1.0.dtd}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
_RSS090 = b"http://my.netscape.com/rdf/simple/0.9/"
_ENTRY_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(?:item|entry)[\s/>]")
# UTF-8 read as Latin-1/cp1252 ("Ã©", "â€™") or Cyrillic UTF-8 read as Latin-1 ("Ð¡")
_MOJIBAKE = re.compile("[ÂÃÐÑ][\u0080-\u00bf]|â€[\u0080-\u00bf™œ\u009d“”˜¦¢¹]")
_SCAN_CHARS = 4000  # of each text, for mojibake: a wrong decoding shows early
_HTML_TYPES = ("html", "xhtml", "text/html", "application/xhtml+xml")


class Rejected(Exception):  # a verdict, not a failure: the caller falls back to feedparser
    """The fast parser's result cannot be trusted for this document; the message says why."""


def parse_fast(body: bytes, *, url: str, content_type: str | None = None) -> ParsedFeed:
    """``body`` (an RSS or Atom document fetched from ``url``) as a ParsedFeed; Rejected when unsure."""
    if _RSS090 in body[:4096]:
        raise Rejected("RSS 0.90")
    _check_content_type(content_type, body)
    try:
        d = fastfeedparser.parse(body)  # bytes, never a URL: it would fetch one
    except Exception as e:  # whatever the fast parser raises sends the document to feedparser
        raise Rejected(f"fastfeedparser: {type(e).__name__}: {e}") from e
    entries = list(d.get("entries") or [])
    expected = len(_ENTRY_TAG.findall(body))
    if len(entries) < expected:
        raise Rejected(f"{len(entries)} entries read, the document has {expected}")
    feed = d.get("feed") or d
    title = stripped(feed.get("title"))
    if not title:
        raise Rejected("no feed title")
    tree = _Tree.of(body, len(entries))
    facts = tree.feed
    meta = FeedMeta(
        title=title,
        link=join_url(join_url(url, facts.base) or url, facts.link or feed.get("link")),
        description=stripped(feed.get("subtitle")),
        language=stripped(feed.get("language")) or facts.language,
        version=facts.version,
        **feed_timing(facts.ttl, facts.period, facts.frequency),
    )
    raws = tuple(
        _raw_entry(e, x, url=url, feed_language=meta.language)
        for e, x in zip(entries, tree.items, strict=True)
    )
    _check(raws, tree.items, body)
    return ParsedFeed(meta=meta, entries=raws)


# --- what fastfeedparser leaves out, read from our own lxml tree ----------------------------------

_PUBLISHED = frozenset({"pubDate", "published", "issued"})
_CONTENT = frozenset({"encoded", "content"})
_TEXTS = frozenset({"title", "description", "summary", "content", "encoded"})
_SHADOWED = frozenset({"title", "description", "link"})  # fastfeedparser takes them from any namespace
_CORE_NS = frozenset({"", _ATOM_NS, _ATOM03_NS, _RSS10_NS})
_DESCENDANTS = (  # media:* in any namespace here; _descendant checks it
    *("category", f"{_ATOM}category", f"{{{_RSS10_NS}}}category", f"{_DC}subject"),
    *("{*}keywords", "{*}thumbnail", "{*}description"),
)


@dataclass
class _Extras:
    """Per-entry facts fastfeedparser drops or reads differently from feedparser."""

    has_summary: bool = False  # a description / atom:summary element (fastfeedparser makes one up)
    has_id: bool = False  # a guid, atom:id or rdf:about of its own (fastfeedparser falls back to the link)
    has_published: bool = False  # pubDate, published, dcterms:issued (feedparser's "published")
    has_dc_date: bool = False  # dc:date (feedparser's "updated")
    contents: int = 0  # content:encoded / atom:content elements
    captions: list[str] = field(default_factory=list)  # media:description, itunes:summary (plain text)
    categories: list[str] = field(default_factory=list)  # category, dc:subject, media:keywords, in order
    thumbnail: str | None = None
    itunes_image: str | None = None
    base: str | None = None
    languages: dict[str, str] = field(default_factory=dict)  # xml:lang of title/summary/content
    language: str | None = None  # the item's inherited xml:lang or its dc:language
    enclosures: list[dict[str, str | None]] = field(default_factory=list)
    core: set[str] = field(default_factory=set)  # title/description/link seen in RSS's own namespace
    shadowed: str | None = None  # an extension's <title> (...) before the core one: fastfeedparser takes it


@dataclass
class _Tree:
    feed: _Feed
    items: list[_Extras]

    @classmethod
    def of(cls, body: bytes, count: int) -> _Tree:
        # a parser per call: lxml parsers are not shared between threads
        parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True)
        try:
            root = etree.fromstring(body, parser)
        except (etree.XMLSyntaxError, ValueError) as e:
            raise Rejected(f"lxml: {e}") from e
        errors = [err for err in parser.error_log if err.level >= etree.ErrorLevels.ERROR]
        if root is None or errors:
            raise Rejected(f"not well-formed XML: {errors[0].message if errors else 'no document'}")
        items = [_extras(x) for x in root.iter("{*}item", "{*}entry")]
        if len(items) != count:
            raise Rejected(f"{count} entries read, lxml finds {len(items)}")
        return cls(feed=_feed(root), items=items)


@dataclass
class _Feed:
    """Feed-level facts, read as feedparser reads them."""

    version: str
    language: str | None = None
    link: str | None = None
    ttl: str | None = None
    period: str | None = None  # sy:updatePeriod
    frequency: str | None = None  # sy:updateFrequency
    id: str | None = None
    base: str | None = None  # the document's xml:base


def _feed(root: Any) -> _Feed:
    channel = root.find("channel")
    if channel is None:
        channel = next((c for c in root if isinstance(c.tag, str) and _local(c.tag) == "channel"), root)
    facts = _Feed(version=_version(root))
    for el in channel:
        tag = el.tag
        if not isinstance(tag, str):
            continue
        local, ns, value = _local(tag), _namespace(tag), stripped(el.text)
        if local == "language":
            facts.language = facts.language or value
        elif local == "link" and ns in ("", _RSS10_NS) and facts.link is None:
            facts.link = value
        elif local == "link" and ns in (_ATOM_NS, _ATOM03_NS) and el.get("rel", "alternate") == "alternate":
            facts.link = facts.link or stripped(el.get("href"))
        elif local == "id" and ns in (_ATOM_NS, _ATOM03_NS) and root is channel:
            facts.id = value  # feedparser's link when the feed has no alternate link
        elif local == "ttl" and ns == "":
            facts.ttl = value
        elif ns.endswith("/syndication/") and local in ("updatePeriod", "updateFrequency"):
            facts.period, facts.frequency = (
                (value, facts.frequency) if local == "updatePeriod" else (facts.period, value)
            )
    facts.language = facts.language or stripped(root.get(_XML_LANG)) or stripped(channel.get(_XML_LANG))
    facts.link, facts.base = facts.link or facts.id, stripped(root.get(_XML_BASE))
    return facts


_RSS_VERSIONS = {"2.0": "rss20", "0.91": "rss091u", "0.92": "rss092", "0.93": "rss093", "0.94": "rss094"}


def _version(root: Any) -> str:
    """feedparser's name for the format: rss20, rss092, rss10, atom10, atom03, ..."""
    local, ns = _local(root.tag), _namespace(root.tag)
    if local == "rss":
        return _RSS_VERSIONS.get((root.get("version") or "").strip(), "rss")
    if local == "feed":
        return "atom03" if ns == _ATOM03_NS else "atom10"
    return "rss10" if local == "RDF" else "rss"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def _extras(item: Any) -> _Extras:
    x = _Extras(base=_inherited(item, _XML_BASE), language=_inherited(item, _XML_LANG))
    x.has_id = bool(stripped(item.get(_RDF_ABOUT)))
    for child in item:
        tag = child.tag
        if isinstance(tag, str):
            _direct_child(x, child, tag, _local(tag))
    for el in item.iter(*_DESCENDANTS):  # lxml filters the tags, in document order
        tag = el.tag
        _descendant(x, el, _namespace(tag), _local(tag))
    if _namespace(item.tag) not in ("", _RSS10_NS):
        x.shadowed = None  # only RSS items are read by local name
    return x


def _direct_child(x: _Extras, child: Any, tag: str, local: str) -> None:
    ns = _namespace(tag)
    if local in _SHADOWED:
        if ns in _CORE_NS:
            x.core.add(local)
        elif local not in x.core and x.shadowed is None:
            x.shadowed = f"<{local}> of {ns} read as the item's {local}"
    if local in _TEXTS and child.get(_XML_LANG):
        x.languages.setdefault("content" if local in _CONTENT else local, child.get(_XML_LANG))
    if local in ("description", "summary") and ns in _CORE_NS:
        x.has_summary = True
    elif local == "guid" or (local == "id" and ns in _CORE_NS):
        x.has_id = x.has_id or bool(stripped(child.text))
    elif local in _PUBLISHED:
        x.has_published = True
    elif tag == f"{_DC}date":
        x.has_dc_date = True
    elif tag == f"{_DC}language" or tag == "language":
        x.language = stripped(child.text) or x.language
    elif local in _CONTENT and ns not in _MEDIA_NS:
        x.contents += 1
    elif tag == f"{_ITUNES}image" and x.itunes_image is None:
        x.itunes_image = stripped(child.get("href"))
    elif tag == f"{_ITUNES}summary" and stripped(child.text):
        x.captions.append(child.text.strip())
    elif tag == f"{_ATOM}link" and child.get("rel") == "enclosure" and child.get("href"):
        x.enclosures.append(
            {"url": child.get("href"), "type": child.get("type"), "length": child.get("length")}
        )


def _descendant(x: _Extras, el: Any, ns: str, local: str) -> None:
    if local == "category" and ns in ("", _ATOM_NS, _RSS10_NS):
        term = stripped(el.text) if ns != _ATOM_NS else stripped(el.get("term")) or stripped(el.get("label"))
        x.categories += [term] if term else []
    elif local == "subject" and ns == _DC_NS:
        x.categories += [el.text.strip()] if stripped(el.text) else []
    elif ns in _MEDIA_NS or ns.endswith("search.yahoo.com/mrss/"):
        if local == "keywords":
            x.categories += [k.strip() for k in (el.text or "").split(",") if k.strip()]
        elif local == "thumbnail" and x.thumbnail is None:
            x.thumbnail = stripped(el.get("url"))
        elif local == "description" and stripped(el.text):
            x.captions.append(el.text.strip())


def _inherited(el: Any, attr: str) -> str | None:
    """The nearest ancestor-or-self value of xml:lang; for xml:base, all of them resolved in turn."""
    bases: list[str] = []
    while el is not None:
        value = el.get(attr)
        if value:
            if attr != _XML_BASE:
                return str(value).strip() or None
            bases.append(str(value).strip())
        el = el.getparent()
    if not bases:
        return None
    base = bases[-1]
    for inner in reversed(bases[:-1]):
        base = urljoin(base, inner)
    return base


# --- the adapter ----------------------------------------------------------------------------------


def _raw_entry(e: Mapping[str, Any], x: _Extras, *, url: str, feed_language: str | None) -> RawEntry:
    if x.contents > 1:
        raise Rejected("an entry with several content elements")
    if x.shadowed and (x.shadowed.rpartition(" ")[2] in x.core or x.shadowed.endswith("title")):
        raise Rejected(x.shadowed)
    base = urljoin(url, x.base) if x.base else url
    summary, content = _body(e, x)
    published = _date(e.get("published"))
    lang = x.languages  # the xml:lang of its body, else of its summary, else of its title
    return RawEntry(
        guid=stripped(e.get("id")) if x.has_id else None,
        link=_link(e, base),
        title=stripped(e.get("title")),
        summary=summary,
        content=content,
        published=published if x.has_published else None,
        updated=_date(e.get("updated")) or (published if x.has_dc_date and not x.has_published else None),
        authors=unique(stripped(a.get("name")) for a in mappings(e.get("authors"))),
        categories=unique(x.categories),
        enclosures=_enclosures(e, x, base),
        language=_first(lang.get(k) for k in _LANG_FROM) or x.language or feed_language,
        base=base,
        image=_image(e, x, base),
    )


def _body(e: Mapping[str, Any], x: _Extras) -> tuple[str | None, str | None]:
    """(summary, content) as feedparser's mapping gives them: the first description-like element is the
    summary; the others (media:description, itunes:summary) compete with the content element, HTML
    first, else the longest, which must be longer than the summary."""
    captions = list(x.captions)
    summary = stripped(e.get("description")) if x.has_summary else None
    if summary is None and captions:
        summary = captions.pop(0)
    html, kind = _content(e) if x.contents else (None, "")
    if html and kind in _HTML_TYPES:
        return summary, html
    pool = [c for c in (html, *captions) if c]
    best = max(pool, key=len) if pool else None
    if best is not None and summary is not None and len(best) <= len(summary):
        best = None
    return summary, best


def _content(e: Mapping[str, Any]) -> tuple[str | None, str]:
    for c in mappings(e.get("content")):
        value = c.get("value")
        if isinstance(value, str) and value.strip():
            return value, str(c.get("type") or "html").lower()
    return None, ""


def _link(e: Mapping[str, Any], base: str) -> str | None:
    link = _first_link(e, base)
    return htmllib.unescape(link) if link and "&amp;" in link else link  # escaped twice by the feed


def _first_link(e: Mapping[str, Any], base: str) -> str | None:
    alternates = [
        x for x in mappings(e.get("links")) if x.get("rel") in ("alternate", None) and x.get("href")
    ]
    html = [x for x in alternates if x.get("type") in ("text/html", None)]
    for x in html or alternates:
        return join_url(base, x.get("href"))
    return join_url(base, e.get("link"))


def _enclosures(e: Mapping[str, Any], x: _Extras, base: str) -> tuple[Enclosure, ...]:
    found = [*x.enclosures, *(y for y in mappings(e.get("links")) if y.get("rel") == "enclosure")]
    return enclosures([*found, *mappings(e.get("enclosures"))], base)


def _image(e: Mapping[str, Any], x: _Extras, base: str) -> str | None:
    if x.thumbnail:
        return join_url(base, x.thumbnail)
    for m in mappings(e.get("media_content")):
        kind = str(m.get("type") or "").lower()
        if stripped(m.get("url")) and (kind.startswith("image/") or m.get("medium") == "image"):
            return join_url(base, m.get("url"))
    return join_url(base, x.itunes_image)


# --- sanity checks -------------------------------------------------------------------------------

_XML_DECLARED = re.compile(rb"""^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*["']([\w.:-]+)["']""")
_XML_TYPES = ("application/xml", "text/xml", "application/xml-dtd", "text/xml-external-parsed-entity")


def _check_content_type(content_type: str | None, body: bytes) -> None:
    """Rejected when the HTTP Content-Type would change how feedparser decodes the document (RFC 3023
    charset rules) or makes it a bozo: the fast parser reads the bytes alone."""
    if not content_type:
        return
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", params, re.IGNORECASE)
    charset = m.group(1).lower() if m else None
    xml = mime in _XML_TYPES or (mime.startswith(("application/", "text/")) and mime.endswith("+xml"))
    if not xml:
        raise Rejected(f"served as {mime}, not an XML media type")
    if charset is None:
        if mime.startswith("text/") and not body.isascii():
            raise Rejected(f"{mime} without a charset means US-ASCII (RFC 3023)")
        return
    declared = _XML_DECLARED.match(body[:512])
    wanted = _codec(charset)
    if wanted is None or wanted != _codec(declared.group(1).decode() if declared else "utf-8"):
        raise Rejected(f"HTTP charset {charset} differs from the document's encoding")


def _codec(name: str) -> str | None:
    """The codec's canonical name ("UTF8" and "utf-8" are one); None when Python has no such codec."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


# --- sanity checks on the adapted result ----------------------------------------------------------


def _check(raws: tuple[RawEntry, ...], extras: list[_Extras], body: bytes) -> None:
    for i, (raw, x) in enumerate(zip(raws, extras, strict=True)):
        if x.captions and not (raw.content or raw.summary):
            raise Rejected(f"entry {i}: empty body where media:description exists")
    if body.isascii():
        return  # every decoding gives the same text: no replacement characters, no mojibake
    has_replacement = b"\xef\xbf\xbd" in body or b"&#65533;" in body or b"&#xfffd;" in body.lower()
    for i, raw in enumerate(raws):
        for text in _texts(raw):
            if not has_replacement and "\ufffd" in text:
                raise Rejected(f"entry {i}: replacement characters")
            bad = _MOJIBAKE.search(text, 0, _SCAN_CHARS)
            if bad and bad.group().encode() not in body:  # not when the publisher's text has it too
                raise Rejected(f"entry {i}: mojibake ({bad.group()!r} in {text[:40]!r})")


def _texts(raw: RawEntry) -> Iterator[str]:
    for text in (raw.title, raw.summary, raw.content, *raw.authors):
        if text:
            yield text


# --- small helpers --------------------------------------------------------------------------------


def _date(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value).replace(microsecond=0)  # feedparser keeps whole seconds
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_LANG_FROM = ("content", "description", "summary", "title")


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v), None)


# shared with parse.py (which imports them under its own private names)


def stripped(value: object) -> str | None:
    """A stripped, non-empty string, or None."""
    if not isinstance(value, str):
        return None
    return value.strip() or None


def join_url(base: str, value: object) -> str | None:
    """``value`` resolved against ``base``; as given when it is too malformed to resolve."""
    found = stripped(value)
    if not found:
        return None
    if is_plain_absolute(found) and is_plain_absolute(base):
        return found  # what urljoin gives back for it, without its two parses
    try:
        return urljoin(base, found)
    except ValueError:  # e.g. "http://[bad-ipv6"
        return found


def mappings(value: object) -> list[Mapping[str, Any]]:
    """The mappings in ``value`` when it is a list; [] for anything else."""
    return [x for x in value if isinstance(x, Mapping)] if isinstance(value, list) else []


def unique(values: Iterable[str | None]) -> tuple[str, ...]:
    """The non-empty values, first occurrence kept, in order."""
    return tuple(dict.fromkeys(v for v in values if v))


_SY_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 604800, "monthly": 2592000, "yearly": 31536000}


def feed_timing(ttl: object, period: object, frequency: object) -> dict[str, timedelta | None]:
    """RSS <ttl> (minutes) and sy:updatePeriod / sy:updateFrequency as durations; junk is ignored."""
    minutes = str(ttl or "").strip()
    seconds = _SY_PERIODS.get(str(period or "").strip().lower())
    times = str(frequency or "1").strip()
    per = int(times) if times.isdigit() and int(times) > 0 else 1
    return {
        "ttl": timedelta(minutes=int(minutes)) if minutes.isdigit() and 0 < int(minutes) < 10**6 else None,
        "update_every": timedelta(seconds=seconds / per) if seconds else None,
    }


def enclosures(found: Iterable[Mapping[str, Any]], base: str) -> tuple[Enclosure, ...]:
    """Enclosures from link / enclosure mappings (href or url, type, length); the first per URL."""
    out: dict[str, Enclosure] = {}
    for y in found:
        href = join_url(base, y.get("href") or y.get("url"))
        if href and href not in out:
            out[href] = Enclosure(url=href, type=stripped(y.get("type")), length=length(y.get("length")))
    return tuple(out.values())


def length(value: object) -> int | None:
    """A byte count from an attribute: a non-negative integer, else None."""
    try:
        n = int(str(value).strip())
    except ValueError:
        return None
    return n if n >= 0 else None
