"""Render a topic's stored items as RSS 2.0, Atom 1.0 or JSON Feed 1.1 bytes; the only user of feedgen.

feedgen builds the XML skeleton; its gaps (Atom entry link attributes, atom:source id, per-entry xml:lang,
RSS dc:creator and extra enclosures) are filled by editing its tree with lxml. No I/O, no clock.
"""

from __future__ import annotations

import html
import json
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from feedgen.feed import FeedGenerator
from lxml import etree

from aggregator.errors import PublishError
from aggregator.model import Enclosure, Sighting, StoredItem, Topic

FORMATS: dict[str, str] = {
    "rss": "application/rss+xml; charset=utf-8",
    "atom": "application/atom+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
}

SUMMARY_CHARS = 300
# seconds within which every web server serves a stored change (web.py re-reads a topic's state when its
# last read is this old); a WebSub ping waits as long, so that the hub fetches the new feed
REVALIDATE = 1.0
JSONFEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "aggregator"
DEFAULT_MIME = "application/octet-stream"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ATOM = "{http://www.w3.org/2005/Atom}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Characters XML 1.0 forbids (C0 controls but tab/LF/CR, lone surrogates, U+FFFE/F) plus DEL and the C1
# controls, which are never text in a feed: they come from mis-decoded bytes.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_LANG_TAG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")
_SPACES = re.compile(r"\s+")
_SOURCE_NS = uuid.UUID("6f1d3a52-47c4-5c1e-9a0e-6b7f2f0f4a11")  # names the atom:source ids of outlets
# feedgen formats RSS dates under locale.setlocale(), which is process-wide: one render at a time.
_RSS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Paging:
    """RFC 5005 paged-feed links (absolute URLs): first and last always, next/previous where they exist."""

    first: str
    last: str
    next: str | None = None
    previous: str | None = None

    def links(self) -> list[tuple[str, str]]:
        """(rel, href) in a stable order, only the pages that exist."""
        rels = (("first", self.first), ("previous", self.previous), ("next", self.next), ("last", self.last))
        return [(rel, href) for rel, href in rels if href]


def topic_feed_urls(base_url: str, name: str) -> dict[str, str]:
    """The public URL of each format of a topic feed (the WebSub topics and the self links)."""
    base = base_url.rstrip("/")
    return {fmt: f"{base}/topics/{name}.{fmt}" for fmt in FORMATS}


@dataclass(frozen=True, slots=True)
class _Feed:
    """Feed-level facts shared by the three writers, cleaned."""

    title: str
    description: str
    feed_url: str
    site_url: str
    updated: datetime
    language: str | None
    icon: str | None = None
    paging: Paging | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    """One item as every writer shows it: text cleaned for XML, dates UTC to the second."""

    id: str
    title: str
    url: str | None
    published: datetime
    updated: datetime
    authors: tuple[str, ...]
    categories: tuple[str, ...]
    enclosures: tuple[Enclosure, ...]
    html: str
    text: str
    summary: str
    language: str | None
    image: str | None
    source: str
    source_title: str
    source_link: str | None
    article_id: int | None
    story_id: int | None
    also: tuple[Sighting, ...] = ()  # other outlets of the same story (collapse: story)


def render_feed(
    fmt: str,
    topic: Topic,
    items: Sequence[StoredItem],
    *,
    feed_url: str,
    site_url: str,
    updated: datetime | None,
    language: str | None = None,
    paging: Paging | None = None,
) -> bytes:
    """The topic feed in ``fmt`` ("rss", "atom" or "json"), entries in the order given (newest first).
    ``paging`` adds RFC 5005 first/previous/next/last links (Atom and RSS: atom:link; JSON Feed:
    ``next_url`` and an ``_aggregator.paging`` extension)."""
    if fmt not in FORMATS:
        raise PublishError(f"topic {topic.name!r}: unknown feed format {fmt!r} (expected rss, atom or json)")
    try:
        entries = [_entry(stored) for stored in items]
        feed = replace(_feed(topic, entries, feed_url, site_url, updated, language), paging=paging)
        if fmt == "json":
            return _render_json(feed, entries)
        return _render_xml(fmt, feed, entries)
    except (ValueError, TypeError, etree.LxmlError) as e:
        raise PublishError(f"topic {topic.name!r}: cannot render the {fmt} feed: {e}") from e


# --- shared preparation -------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return _NOT_TEXT.sub("", text)


def _opt(text: str | None) -> str | None:
    cleaned = _clean(text).strip() if text else ""
    return cleaned or None


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} is a naive datetime ({value.isoformat()}); all datetimes must be UTC-aware")
    return value.astimezone(UTC).replace(microsecond=0)


def _lang(value: str | None) -> str | None:
    tag = (value or "").strip().replace("_", "-")
    return tag if _LANG_TAG.fullmatch(tag) else None


def _summary(text: str, limit: int = SUMMARY_CHARS) -> str:
    flat = _SPACES.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] if " " in flat[:limit] else flat[:limit]
    return cut.rstrip(" ,;:.-") + "…"


def _entry(stored: StoredItem) -> _Entry:
    item = stored.item
    published = _utc(item.published, f"item {item.uid}: published")
    updated = _utc(item.updated, f"item {item.uid}: updated") if item.updated else published
    text = _clean(item.text).strip()
    body = _clean(item.html).strip()
    if not body and text:
        body = "".join(f"<p>{html.escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())
    also = tuple(_sighting(x) for x in stored.also)
    if also:
        body += _also_html(also)
        text += "\n\nAlso reported by: " + ", ".join(x.source_title or x.source for x in also)
    title = _opt(item.title) or _summary(text, 80) or _opt(item.url or item.link) or "(untitled)"
    return _Entry(
        id=f"urn:uuid:{_clean(item.uid).strip()}",
        title=title,
        url=_opt(item.url) or _opt(item.link),
        published=published,
        updated=max(updated, published),
        authors=tuple(a for a in (_opt(x) for x in item.authors) if a),
        categories=tuple(c for c in (_opt(x) for x in item.categories) if c),
        enclosures=tuple(_enclosure(e) for e in item.enclosures if _opt(e.url)),
        html=body,
        text=text,
        summary=_summary(text),
        language=_lang(item.language),
        image=_opt(item.image),
        source=_clean(item.source),
        source_title=_opt(stored.source_title) or _clean(item.source),
        source_link=_opt(stored.source_link),
        article_id=stored.article_id,
        story_id=stored.story_id,
        also=also,
    )


def _sighting(x: Sighting) -> Sighting:
    return Sighting(_clean(x.source), _opt(x.source_title), _opt(x.title) or "", _opt(x.url))


def _also_html(also: Sequence[Sighting]) -> str:
    """The paragraph that lists the other outlets of a story, linked to their items."""
    parts = []
    for x in also:
        name = html.escape(x.source_title or x.source)
        parts.append(f'<a href="{html.escape(x.url)}">{name}</a>' if x.url else name)
    return f"<p>Also reported by: {', '.join(parts)}</p>"


def _enclosure(enc: Enclosure) -> Enclosure:
    mime = _opt(enc.type)
    length = enc.length if enc.length and enc.length > 0 else None
    return Enclosure(url=_clean(enc.url).strip(), type=mime if mime and "/" in mime else None, length=length)


def _feed(
    topic: Topic,
    entries: Sequence[_Entry],
    feed_url: str,
    site_url: str,
    updated: datetime | None,
    language: str | None,
) -> _Feed:
    if updated is not None:
        last = _utc(updated, "the topic's updated")
    else:
        last = max((e.updated for e in entries), default=_EPOCH)
    for name, url in (("feed_url", feed_url), ("site_url", site_url)):
        if not _opt(url):
            raise ValueError(f"{name} is empty")
    if language is None and len(topic.language) == 1:
        language = topic.language[0]
    return _Feed(
        title=_opt(topic.title) or _clean(topic.name),
        description=_opt(topic.description) or _clean(f"Items matching {topic.query}"),
        feed_url=_clean(feed_url).strip(),
        site_url=_clean(site_url).strip(),
        updated=last,
        language=_lang(language),
        icon=_opt(topic.icon),
    )


# --- JSON Feed 1.1 ------------------------------------------------------------------------------------


def _render_json(feed: _Feed, entries: Sequence[_Entry]) -> bytes:
    doc: dict[str, Any] = {
        "version": JSONFEED_VERSION,
        "title": feed.title,
        "home_page_url": feed.site_url,
        "feed_url": feed.feed_url,
        "description": feed.description,
    }
    if feed.language:
        doc["language"] = feed.language
    if feed.icon:
        doc["icon"] = doc["favicon"] = feed.icon
    if feed.paging is not None:
        if feed.paging.next:
            doc["next_url"] = feed.paging.next
        doc["_aggregator"] = {"paging": dict(feed.paging.links())}
    doc["items"] = [_json_item(e) for e in entries]
    return json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8")


def _json_item(e: _Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"id": e.id}
    if e.url:
        out["url"] = e.url
    out["title"] = e.title
    out["content_html"] = e.html
    if e.text:
        out["content_text"] = e.text
    if e.summary:
        out["summary"] = e.summary
    out["date_published"] = _rfc3339(e.published)
    out["date_modified"] = _rfc3339(e.updated)
    if e.authors:
        out["authors"] = [{"name": a} for a in e.authors]
    if e.categories:
        out["tags"] = list(e.categories)
    if e.enclosures:
        out["attachments"] = [_json_attachment(enc) for enc in e.enclosures]
    if e.image:
        out["image"] = e.image
    if e.language:
        out["language"] = e.language
    ext: dict[str, str | int | None] = {
        "source": e.source,
        "source_title": e.source_title,
        "source_link": e.source_link,
    }
    ext |= {"article_id": e.article_id, "story_id": e.story_id}
    out["_aggregator"] = {k: v for k, v in ext.items() if v is not None}
    if e.also:
        out["_aggregator"]["also_reported_by"] = [
            {
                k: v
                for k, v in (
                    ("source", x.source),
                    ("source_title", x.source_title),
                    ("title", x.title),
                    ("url", x.url),
                )
                if v
            }
            for x in e.also
        ]
    return out


def _json_attachment(enc: Enclosure) -> dict[str, Any]:
    out: dict[str, Any] = {"url": enc.url, "mime_type": enc.type or DEFAULT_MIME}
    if enc.length:
        out["size_in_bytes"] = enc.length
    return out


def _rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- RSS 2.0 and Atom 1.0 through feedgen ---------------------------------------------------------------


def _render_xml(fmt: str, feed: _Feed, entries: Sequence[_Entry]) -> bytes:
    fg = _generator(fmt, feed)
    for e in entries:
        _add_entry(fg, e, feed)
    if fmt == "rss":
        with _RSS_LOCK:
            raw = fg.rss_str(pretty=False)
        root = _parse(raw)
        _fix_rss(root, entries)
    else:
        root = _parse(fg.atom_str(pretty=False))
        _fix_atom(root, feed, entries)
    if feed.paging is not None:
        _add_paging(root, fmt, feed.paging)
    out: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True)
    return out


def _generator(fmt: str, feed: _Feed) -> FeedGenerator:
    fg = FeedGenerator()
    fg.id(feed.paging.first if feed.paging else feed.feed_url)  # every page of a feed shares its id
    fg.title(feed.title)
    fg.description(feed.description)
    fg.author(name=feed.title)  # Atom: entries without an author inherit the feed's
    fg.link(href=feed.feed_url, rel="self", type=FORMATS[fmt].split(";")[0])
    fg.link(href=feed.site_url, rel="alternate", type="text/html")  # the last link() is RSS <link>
    fg.updated(feed.updated)
    fg.generator(GENERATOR)
    if feed.icon:
        fg.icon(feed.icon)  # Atom <icon>
        fg.logo(feed.icon)  # Atom <logo>, RSS <image>
    if feed.language:
        fg.language(feed.language)
    if fmt == "rss":
        fg.load_extension("dc", atom=False, rss=True)
    return fg


def _add_entry(fg: FeedGenerator, e: _Entry, feed: _Feed) -> None:
    fe = fg.add_entry(order="append")
    fe.id(e.id)  # RSS <guid isPermaLink="false">, Atom <id>
    fe.title(e.title)
    if e.url:
        fe.link(href=e.url, rel="alternate")
    fe.published(e.published)
    fe.updated(e.updated)
    fe.content(e.html, type="html")
    if e.summary:
        fe.summary(e.summary)
    for name in e.authors:
        fe.author(name=name)
    for term in e.categories:
        fe.category(term=term)
    if e.enclosures:  # RSS keeps one <enclosure>; _fix_rss adds the others, _fix_atom rewrites all
        first = e.enclosures[0]
        fe.enclosure(url=first.url, length=str(first.length or 0), type=first.type or DEFAULT_MIME)
    # RSS <source url> wants the outlet's feed, unknown here: its site link, else this feed
    fe.source(url=e.source_link or feed.feed_url, title=e.source_title)
    if hasattr(fe, "dc"):  # RSS only: <author> must be an e-mail address, dc:creator is a name
        if e.authors:
            fe.dc.dc_creator(list(e.authors))
        if e.language and e.language != feed.language:
            fe.dc.dc_language(e.language)


def _parse(raw: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    return etree.fromstring(raw, parser)


def _fix_rss(root: etree._Element, entries: Sequence[_Entry]) -> None:
    """Add the enclosures after the first (feedgen writes one per item)."""
    for node, e in zip(root.iter("item"), entries, strict=True):
        first = node.find("enclosure")
        for enc in reversed(e.enclosures[1:]):
            extra = etree.Element("enclosure", url=enc.url)
            extra.set("length", str(enc.length or 0))
            extra.set("type", enc.type or DEFAULT_MIME)
            assert first is not None
            first.addnext(extra)


def _fix_atom(root: etree._Element, feed: _Feed, entries: Sequence[_Entry]) -> None:
    """Rewrite entry links with their attributes, give atom:source an id, set per-entry xml:lang."""
    for node, e in zip(root.iter(f"{_ATOM}entry"), entries, strict=True):
        for link in node.findall(f"{_ATOM}link"):
            node.remove(link)
        anchor = node.find(f"{_ATOM}title")
        assert anchor is not None
        for enc in reversed(e.enclosures):
            link = etree.Element(f"{_ATOM}link", href=enc.url, rel="enclosure", type=enc.type or DEFAULT_MIME)
            if enc.length:
                link.set("length", str(enc.length))
            anchor.addnext(link)
        if e.url:
            anchor.addnext(etree.Element(f"{_ATOM}link", href=e.url, rel="alternate", type="text/html"))
        _fix_atom_source(node, e)
        for x in reversed(e.also):  # provenance of the other outlets: rel="related" links
            if x.url:
                related = etree.Element(f"{_ATOM}link", href=x.url, rel="related", type="text/html")
                related.set("title", x.source_title or x.source)
                anchor.addnext(related)
        if e.language and e.language != feed.language:
            node.set(_XML_LANG, e.language)


def _fix_atom_source(node: etree._Element, e: _Entry) -> None:
    source = node.find(f"{_ATOM}source")
    assert source is not None
    source_id = etree.Element(f"{_ATOM}id")
    source_id.text = f"urn:uuid:{uuid.uuid5(_SOURCE_NS, e.source)}"
    source.insert(0, source_id)
    link = source.find(f"{_ATOM}link")
    if link is not None:
        if e.source_link:
            link.set("rel", "alternate")
            link.set("type", "text/html")
        else:
            source.remove(link)  # feedgen needs a URL; Atom can do without one


def _add_paging(root: etree._Element, fmt: str, paging: Paging) -> None:
    """RFC 5005 section 3: atom:link rel=first/previous/next/last after the self link."""
    head = root if fmt == "atom" else root.find("channel")
    assert head is not None
    anchor = next((x for x in head.iter(f"{_ATOM}link") if x.get("rel") == "self"), None)
    for rel, href in reversed(paging.links()):
        link = etree.Element(f"{_ATOM}link", rel=rel, href=href, type=FORMATS[fmt].split(";")[0])
        if anchor is not None:
            anchor.addnext(link)
        else:
            head.insert(0, link)
