"""A deterministic synthetic news corpus for the ingest benchmark: N feeds (RSS 2.0 and Atom mixed, ~35
entries and ~150 KB each, HTML bodies with links and images, GUIDs, dates, utm_ tracking parameters, wire
stories repeated across feeds) at a given version; each ``advance`` adds entries, drops old ones and
changes a few. Pure: the same (feeds, version) always renders the same bytes. Serving is bench/server.py.
``RealCorpus`` serves the real feeds of ../shared/corpus/real instead.

    .venv/bin/python bench/corpus.py --feeds 5 --version 0 --out /tmp/corpus   # write the files
"""

from __future__ import annotations

import argparse
import csv
import random
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

ENTRIES = 35  # entries per feed document
STEP = 3  # new entries per feed (and old ones dropped) per advance
CHANGE_EVERY = 12  # on each advance, about one entry in CHANGE_EVERY of the window is revised
WIRE_EVERY = 5  # every WIRE_EVERY-th story is a wire story, carried by every feed of a group
WIRE_GROUP = 10  # feeds 0-9, 10-19, ... carry the same wire stories: 10 copies of each, whatever N
PARAGRAPHS = (5, 8)  # paragraphs per body: ~4 KB of HTML per entry, ~150 KB per feed
BASE = datetime(2025, 6, 1, tzinfo=UTC)
_SYLLABLES = [
    "ka",
    "ri",
    "to",
    "ne",
    "mo",
    "sa",
    "lu",
    "vi",
    "de",
    "pa",
    "gor",
    "tin",
    "bel",
    "ash",
    "urn",
    "col",
    "mer",
    "dan",
    "fel",
    "hu",
]
WORDS = sorted({a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "s", "on", "er")})[:4000]
TRACKING = "utm_source=rss&utm_medium=feed&utm_campaign=bench{feed}"


@dataclass(frozen=True)
class Entry:
    key: int  # position in the feed's endless sequence of entries (newest = highest)
    guid: str
    link: str
    title: str
    summary: str
    html: str
    author: str
    categories: tuple[str, ...]
    published: datetime
    updated: datetime
    image: str


def feed_count_entries(feeds: int) -> int:
    """Entries in all documents of one version."""
    return feeds * ENTRIES


def window(version: int) -> range:
    """The entry keys a feed document holds at ``version`` (oldest first)."""
    return range(version * STEP, version * STEP + ENTRIES)


def revision(feed: int, key: int, version: int) -> int:
    """How many times entry ``key`` of ``feed`` has been revised by ``version`` (deterministic)."""
    return sum(1 for v in range(1, version + 1) if (feed * 31 + key + v) % CHANGE_EVERY == 0)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def _body(rng: random.Random, site: str, rev: int) -> str:
    parts = []
    for p in range(rng.randint(*PARAGRAPHS)):
        link = f"https://{site}/topic/{_words(rng, 1)}?utm_source=rss&utm_medium=body&ref=p{p}"
        parts.append(
            f'<p>{_words(rng, rng.randint(25, 45))} <a href="{link}">{_words(rng, 3)}</a> '
            f"{_words(rng, rng.randint(10, 25))}.</p>"
        )
        if p % 4 == 1:
            img = f"https://img.{site}/{rng.randrange(10**9)}.jpg"
            parts.append(
                f'<figure><img src="{img}" alt="{_words(rng, 4)}" width="800" height="450"/>'
                f"<figcaption>{_words(rng, 8)}</figcaption></figure>"
            )
    if rev:
        parts.append(f"<p><em>Updated (revision {rev}): {_words(rng, 12)}.</em></p>")
    return "\n".join(parts)


def entry(feed: int, key: int, version: int) -> Entry:
    """Entry ``key`` of ``feed`` as published at ``version``."""
    rev = revision(feed, key, version)
    wire = key % WIRE_EVERY == 0
    seed = f"wire-{feed // WIRE_GROUP}-{key}" if wire else f"f{feed}-{key}"
    rng = random.Random(zlib.crc32(seed.encode()))
    site = f"wire{feed // WIRE_GROUP}.example.com" if wire else f"site{feed}.example.org"
    title = _words(rng, rng.randint(7, 13)).capitalize()
    if rev:
        title += f" (updated {rev})"
    path = f"/news/{2025}/{key:06d}-{'-'.join(title.lower().split()[:5])}"
    link = f"https://{site}{path}?{TRACKING.format(feed=feed)}"
    published = BASE + timedelta(minutes=10 * key, seconds=feed % 600)
    body_rng = random.Random(zlib.crc32(f"{seed}-r{rev}".encode()))
    return Entry(
        key=key,
        guid=f"https://site{feed}.example.org/guid/{key}",
        link=link,
        title=title,
        summary=_words(rng, 30) + ".",
        html=_body(body_rng, site, rev),
        author=f"{_words(rng, 1).capitalize()} {_words(rng, 1).capitalize()}",
        categories=tuple(_words(rng, 1) for _ in range(rng.randint(1, 3))),
        published=published,
        updated=published + timedelta(hours=rev),
        image=f"https://img.{site}/lead/{key}.jpg",
    )


def is_atom(feed: int) -> bool:
    return feed % 3 == 2


def render(feed: int, version: int) -> bytes:
    """The document of ``feed`` at ``version``: RSS 2.0, or Atom for every third feed."""
    entries = [entry(feed, k, version) for k in reversed(window(version))]
    text = _atom(feed, entries) if is_atom(feed) else _rss(feed, entries)
    return text.encode("utf-8")


def _rfc822(d: datetime) -> str:
    return d.strftime("%a, %d %b %Y %H:%M:%S +0000")


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rss(feed: int, entries: list[Entry]) -> str:
    items = []
    for e in entries:
        cats = "".join(f"<category>{escape(c)}</category>" for c in e.categories)
        items.append(
            f"<item><title>{escape(e.title)}</title><link>{escape(e.link)}</link>"
            f'<guid isPermaLink="false">{e.guid}</guid><pubDate>{_rfc822(e.published)}</pubDate>'
            f"<dc:creator>{escape(e.author)}</dc:creator>{cats}"
            f"<description>{escape(e.summary)}</description>"
            f"<content:encoded><![CDATA[{e.html}]]></content:encoded>"
            f'<media:content url="{e.image}" medium="image" type="image/jpeg"/></item>'
        )
    last = entries[0].updated if entries else BASE
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/">'
        f"<channel><title>Bench site {feed}</title><link>https://site{feed}.example.org/</link>"
        f"<description>Synthetic news feed {feed}</description><language>en</language>"
        f"<lastBuildDate>{_rfc822(last)}</lastBuildDate>\n" + "\n".join(items) + "\n</channel></rss>\n"
    )


def _atom(feed: int, entries: list[Entry]) -> str:
    items = []
    for e in entries:
        cats = "".join(f'<category term="{escape(c)}"/>' for c in e.categories)
        items.append(
            f"<entry><title>{escape(e.title)}</title>"
            f'<link rel="alternate" type="text/html" href="{escape(e.link)}"/>'
            f"<id>{e.guid}</id><published>{_iso(e.published)}</published><updated>{_iso(e.updated)}</updated>"
            f"<author><name>{escape(e.author)}</name></author>{cats}"
            f"<summary>{escape(e.summary)}</summary>"
            f'<content type="html">{escape(e.html)}</content></entry>'
        )
    last = entries[0].updated if entries else BASE
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">'
        f"<title>Bench site {feed}</title><id>https://site{feed}.example.org/</id>"
        f'<link rel="alternate" href="https://site{feed}.example.org/"/><updated>{_iso(last)}</updated>\n'
        + "\n".join(items)
        + "\n</feed>\n"
    )


REAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
_TYPES = {".atom": "application/atom+xml", ".json": "application/feed+json", ".rdf": "application/rdf+xml"}


class RealCorpus:
    """The real feeds of ``folder`` (default ../shared/corpus/real), feed n being its n-th file (wrapping
    round when more feeds are asked for). Of a re-poll pair (REPOLL.tsv) the earlier capture is served
    first and the later one once the corpus advanced; the others never change. Pages that are not
    feeds (.html) are left out."""

    def __init__(self, folder: Path = REAL) -> None:
        self.folder = folder
        with (folder / "SOURCES.tsv").open(encoding="utf-8") as f:
            self.items = {r["file"]: int(r["items"] or 0) for r in csv.DictReader(f, delimiter="\t")}
        with (folder / "REPOLL.tsv").open(encoding="utf-8") as f:
            self.later = {r["earlier_file"]: r["later_file"] for r in csv.DictReader(f, delimiter="\t")}
        later = set(self.later.values())
        self.files = [
            name
            for name in sorted(self.items)
            if name not in later and not name.endswith(".html") and (folder / name).is_file()
        ]

    def _name(self, feed: int, version: int) -> str:
        name = self.files[feed % len(self.files)]
        return self.later.get(name, name) if version else name

    def render(self, feed: int, version: int) -> bytes:
        return (self.folder / self._name(feed, version)).read_bytes()

    def content_type(self, feed: int) -> str:
        return _TYPES.get(Path(self._name(feed, 0)).suffix, "application/rss+xml")

    def entries(self, feeds: int, version: int = 0) -> int:
        """Entries in all documents of one version (SOURCES.tsv's count)."""
        return sum(self.items.get(self._name(f, version), 0) for f in range(feeds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, default=200)
    p.add_argument("--version", type=int, default=0, help="how many times the corpus has advanced")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in range(args.feeds):
        data = render(f, args.version)
        total += len(data)
        (args.out / f"feed{f:04d}.{'atom' if is_atom(f) else 'rss'}.xml").write_bytes(data)
    print(f"{args.feeds} feeds, {total / args.feeds / 1024:.0f} KB each on average, in {args.out}")


if __name__ == "__main__":
    main()
