"""parse.py on the real-feed corpus, feedparser's own 2,123 fixtures, and small hand-made documents."""

from __future__ import annotations

import csv
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.errors import ParseError
from aggregator.model import Enclosure, ParsedFeed
from aggregator.parse import parse_feed, struct_to_datetime

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
REAL = CORPUS / "real"
FP_TESTS = CORPUS / "feedparser-tests"
needs_corpus = pytest.mark.skipif(not REAL.is_dir(), reason="shared/corpus is not beside the repository")

REAL_FILES = sorted(p.name for p in REAL.iterdir() if p.suffix != ".tsv") if REAL.is_dir() else []


def real(name: str, **kw: str | bool) -> ParsedFeed:
    return parse_feed((REAL / name).read_bytes(), url=f"https://example.org/{name}", source=name, **kw)


def expected_items() -> dict[str, int]:
    with (REAL / "SOURCES.tsv").open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {r["file"]: int(r["items"]) for r in rows if r["items"].isdigit()}


# --- the real corpus ----------------------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "feedparser"])
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_parses(name: str, fast: bool) -> None:
    if name == "latimes-403-cloudfront.html":
        with pytest.raises(ParseError, match="not a feed: got text/html"):
            real(name, fast=fast)
        return
    feed = real(name, fast=fast)
    if name in expected_items():
        assert len(feed.entries) == expected_items()[name]
    for entry in feed.entries:
        for moment in (entry.published, entry.updated):
            assert moment is None or moment.tzinfo is UTC


@needs_corpus
def test_counts_cover_the_sources_table() -> None:
    counts = expected_items()
    assert len(counts) >= 70 and set(counts) <= set(REAL_FILES)


@needs_corpus
def test_html_error_page_message() -> None:
    with pytest.raises(ParseError) as info:
        real("latimes-403-cloudfront.html", content_type="text/html")
    url = "https://example.org/latimes-403-cloudfront.html"
    assert str(info.value) == f"source 'latimes-403-cloudfront.html': not a feed: got text/html from {url}"


@needs_corpus
def test_podcast_enclosures_and_image() -> None:
    entry = real("cre-podcast-1.xml").entries[0]
    assert entry.enclosures == (
        Enclosure(
            url="http://feedproxy.google.com/~r/cre-podcast/~5/cM067ax_iis/cre207-planetarien.m4a",
            type="audio/mp4",
            length=37143728,
        ),
    )
    assert entry.image == "http://meta.metaebene.me/media/cre/cre207-planetarien.jpg"
    assert entry.content is not None and entry.content.startswith("<div><p><strong>Digitale Planetarien")
    assert entry.published == datetime(2015, 2, 13, 22, 38, 52, tzinfo=UTC)
    assert entry.authors == ("Metaebene Personal Media - Tim Pritlove",)
    assert entry.language == "de-DE"

    bbc = real("bbc-inourtime-1.xml")
    (enclosure,) = bbc.entries[0].enclosures
    assert enclosure.type == "audio/mpeg" and enclosure.url.endswith("/p097wt5b.mp3")
    assert bbc.entries[0].guid == "urn:bbc:podcast:m000sjxt"


@needs_corpus
def test_authors_categories_and_meta() -> None:
    feed = real("guardian-1.xml")
    assert (
        feed.meta.title == "The Guardian" and feed.meta.version == "rss20" and feed.meta.language == "en-gb"
    )
    entry = feed.entries[0]
    assert entry.authors == ("David Smith in Washington",)
    assert entry.categories[:3] == ("Donald Trump", "State of the Union address", "US news")
    assert entry.link == (
        "https://www.theguardian.com/us-news/2018/jan/31/donald-trump-state-of-the-union-address-unity-discord"
    )
    assert real("techcrunch-1.xml").entries[0].categories == ("Biotech & Health", "TC")


@needs_corpus
def test_youtube_media_thumbnail_and_description() -> None:
    entry = real("youtube-gmanews-1.xml").entries[0]
    assert entry.image == "https://i1.ytimg.com/vi/TqAxOWruvq0/hqdefault.jpg"
    assert entry.link == "https://www.youtube.com/watch?v=TqAxOWruvq0"
    assert entry.summary is not None and entry.summary.startswith(
        "Dalagita, patay sa pamamaril"
    )  # media:description


@needs_corpus
def test_json_feed_1_0() -> None:
    feed = real("daringfireball-3.json")
    assert feed.meta.version == "json10" and feed.meta.title == "Daring Fireball"
    assert feed.meta.link == "https://daringfireball.net/"
    assert len(feed.entries) == 48 and feed.problem is None
    entry = feed.entries[0]
    assert entry.guid == entry.link == "https://daringfireball.net/linked/2017/06/26/the-talk-show-195"
    assert entry.title == "The Talk Show: ‘I Do Like Throwing a Baby’"
    assert entry.content is not None and entry.content.startswith("<p>New episode of America")
    assert entry.published == datetime(2017, 6, 27, 0, 54, 17, tzinfo=UTC)
    assert entry.updated == datetime(2017, 6, 27, 0, 54, 20, tzinfo=UTC)
    assert entry.authors == ("John Gruber",)  # the feed's author, inherited


@needs_corpus
def test_json_feed_1_1() -> None:
    feed = real("jsonfeed-elastic-1.json")
    assert feed.meta.version == "json11" and feed.meta.language == "en-US"
    entry = feed.entries[0]
    assert entry.authors == ("Chris Churilo", "Fake Author 1")
    assert entry.categories == ("InfluxDB", "Community", "Elasticsearch", "Time Series Database")
    assert entry.language == "en-US"


@needs_corpus
def test_rdf_rss_1_0() -> None:
    feed = real("debian-news-1.rdf")
    assert feed.meta.version == "rss10" and feed.meta.title == "Debian News"
    (entry,) = feed.entries
    assert entry.link == "https://www.debian.org/News/2022/20221217"
    assert entry.title == "Updated Debian 11: 11.6 released"
    assert entry.updated == datetime(2022, 12, 17, tzinfo=UTC)


@needs_corpus
def test_legacy_encodings_decode_to_real_text() -> None:
    ibash = real("ibash-1.xml")  # windows-1251
    assert ibash.meta.description == "Новый цитатник Рунета"
    assert ibash.entries[0].title == "Цитата #17703"
    tencent = real("tencent-tech-1.xml")  # GB2312
    assert tencent.meta.title == "互联网"
    assert tencent.entries[0].title == "拟298亿元重组盛大游戏后 世纪华通发20亿回购预案"
    assert "Umsetzung" in (real("golem-1.xml").entries[0].title or "")  # ISO-8859-1


@needs_corpus
def test_recovered_bozo_feeds_keep_entries_and_say_why() -> None:
    broken = real("techcrunch-2009-1.xml")
    assert len(broken.entries) == 20
    assert broken.problem == "not well-formed XML at line 2: XML or text declaration not at start of entity"
    misdeclared = real("uol-1.xml")
    assert len(misdeclared.entries) == 15
    assert misdeclared.problem == "declared encoding utf-8, parsed as windows-1252"
    assert real("bbc-news-1.xml").problem is None


# --- feedparser's fixtures ----------------------------------------------------------------------------


@pytest.mark.skipif(not FP_TESTS.is_dir(), reason="shared/corpus is not beside the repository")
def test_every_feedparser_fixture_parses_or_raises_parse_error() -> None:
    files = [p for p in sorted(FP_TESTS.rglob("*")) if p.is_file() and p.name not in ("LICENSE", "README.md")]
    assert len(files) == 2123
    started = time.monotonic()
    parsed = failed = 0
    for path in files:
        try:
            parse_feed(
                path.read_bytes(), url=f"http://127.0.0.1:8097/{path.relative_to(FP_TESTS)}", source="t"
            )
            parsed += 1
        except ParseError as e:
            assert str(e).startswith("source 't': ")
            failed += 1
    elapsed = time.monotonic() - started
    print(f"{len(files)} feedparser fixtures in {elapsed:.1f}s: {parsed} parsed, {failed} ParseError")
    assert parsed > 1800
    assert elapsed < 60


# --- hand-made documents: every error branch ----------------------------------------------------------


RSS_EMPTY = b'<?xml version="1.0"?><rss version="2.0"><channel><title>Quiet</title></channel></rss>'


def rss_item(item: str) -> bytes:
    return f'<rss version="2.0"><channel><title>T</title><item>{item}</item></channel></rss>'.encode()


def test_html_page_names_its_alternate_feed() -> None:
    page = b"""\xef\xbb\xbf
    <!DOCTYPE html><html><head><title>News</title>
    <link rel="stylesheet" href="/s.css">
    <link rel="alternate" type="application/rss+xml" title="RSS" href="/feeds/all.xml">
    </head><body><p>Hello</p></body></html>"""
    with pytest.raises(ParseError) as info:
        parse_feed(page, url="https://example.org/news/", source="x")
    assert str(info.value) == (
        "source 'x': not a feed: got text/html from https://example.org/news/; "
        "the page links a feed at https://example.org/feeds/all.xml"
    )


def test_html_by_content_type_only() -> None:
    with pytest.raises(ParseError, match=r"source 'x': not a feed: got text/html from https://e\.org/$"):
        parse_feed(
            b"<div>hello</div>", url="https://e.org/", content_type="text/html; charset=utf-8", source="x"
        )


def test_valid_feed_with_no_entries_is_fine() -> None:
    feed = parse_feed(RSS_EMPTY, url="https://e.org/f", content_type="application/rss+xml")
    assert feed.entries == () and feed.meta.title == "Quiet" and feed.problem is None
    mislabelled = parse_feed(RSS_EMPTY, url="https://e.org/f", content_type="application/octet-stream")
    assert mislabelled.entries == ()
    assert mislabelled.problem == "served as application/octet-stream, which is not an XML media type"


@pytest.mark.parametrize("body", [b"", b"  \r\n\t", b"\xef\xbb\xbf \n"])
def test_empty_body(body: bytes) -> None:
    with pytest.raises(ParseError, match=re.escape("source 'x': empty document from https://e.org/f")):
        parse_feed(body, url="https://e.org/f", source="x")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"<rss><channel><title>x</channel>",
            "no entries could be read from https://e.org/f: not well-formed XML",
        ),
        (
            b"<foo><bar/></foo>",
            "no entries could be read from https://e.org/f: no RSS, Atom or JSON Feed version",
        ),
        (b"\x00\xff\xfe garbage \x80\x81", "no entries could be read"),
        (b'{"title": "x"', "invalid JSON from https://e.org/f"),
        (b'{"title": "x", "items": []}', "not a feed: JSON without a jsonfeed.org version"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": 3}', "JSON Feed without an items list"),
    ],
)
def test_unusable_documents(body: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_feed(body, url="https://e.org/f", source="x")


def test_entry_field_mapping_and_bad_values() -> None:
    body = rss_item(
        '<guid isPermaLink="false">  g-1 </guid><link>/posts/1</link><title>Hello</title>'
        "<description>&lt;p&gt;short&lt;/p&gt;</description>"
        "<pubDate>Wed, 01 May 2024 12:00:00 +0200</pubDate>"
        "<category> a </category><category>a</category><category>b</category>"
        '<enclosure url="/a.mp3" type="audio/mpeg" length="abc"/>'
        "<author>x@example.org</author>"
    )
    (entry,) = parse_feed(body, url="https://e.org/feed.xml").entries
    assert entry.guid == "g-1"
    assert entry.link == "https://e.org/posts/1"
    assert entry.summary == "<p>short</p>"
    assert entry.content is None
    assert entry.published == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert entry.categories == ("a", "b")
    assert entry.enclosures == (Enclosure(url="https://e.org/a.mp3", type="audio/mpeg", length=None),)
    assert entry.authors == ("x@example.org",)
    assert entry.base == "https://e.org/feed.xml"


def test_content_prefers_the_longest_html() -> None:
    body = (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>urn:f</id>'
        b"<entry><id>urn:1</id><title>t</title>"
        b'<content type="text">a plain text body that is the longest of them all</content>'
        b'<content type="html">&lt;p&gt;short html&lt;/p&gt;</content>'
        b"</entry></feed>"
    )
    (entry,) = parse_feed(body, url="https://e.org/atom").entries
    assert entry.content == "<p>short html</p>"


def test_served_with_a_non_xml_type_is_a_problem_but_usable() -> None:
    body = rss_item("<title>x</title>")
    assert parse_feed(body, url="https://e.org/f").problem is None  # no Content-Type at all (a file)
    feed = parse_feed(body, url="https://e.org/f", content_type="text/plain")
    assert len(feed.entries) == 1
    assert feed.problem == "served as text/plain, which is not an XML media type"


@pytest.mark.parametrize("declaration", [b"", b'<?xml version="1.0"?>\n'])
def test_bozo_line_numbers_match_the_document(declaration: bytes) -> None:
    lines = [
        b'<rss version="2.0">',
        b"<channel>",
        b"<item><title>x</title></item>",
        b"<bad&>",
        b"</channel></rss>",
    ]
    body = declaration + b"\n".join(lines)
    feed = parse_feed(body, url="https://e.org/f")
    assert len(feed.entries) == 1
    line = 4 + declaration.count(b"\n")
    assert feed.problem == f"not well-formed XML at line {line}: not well-formed (invalid token)"


def test_json_feed_bad_values() -> None:
    body = b"""{"version": "https://jsonfeed.org/version/1.1", "title": "J",
      "authors": [{"name": "Feed Author"}],
      "items": [
        {"id": 7, "url": "/p/7", "content_text": "text", "date_published": "not a date",
         "attachments": [{"url": "/a.mp3", "mime_type": "audio/mpeg", "size_in_bytes": -5}, "junk"],
         "image": "/i.png"},
        "not an item",
        {"id": "", "date_modified": "2024-05-01T12:00:00", "tags": [" x ", "x", 3]},
        {"id": {"a": 1}, "url": 5, "tags": "abc", "authors": "x", "attachments": {}},
        {"id": true, "url": "http://[bad", "date_published": "0001-01-01T00:00:00+01:00"}
      ]}"""
    feed = parse_feed(body, url="https://e.org/feed.json")
    first, second, third, fourth = feed.entries
    assert first.guid == "7" and first.link == "https://e.org/p/7" and first.content == "text"
    assert first.published is None
    assert first.enclosures == (Enclosure(url="https://e.org/a.mp3", type="audio/mpeg", length=None),)
    assert first.image == "https://e.org/i.png"
    assert first.authors == ("Feed Author",)
    assert second.guid is None
    assert second.updated == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # naive: taken as UTC
    assert second.categories == ("x",)
    assert (third.guid, third.link, third.categories, third.enclosures) == (None, None, (), ())
    assert third.authors == ("Feed Author",)
    assert (fourth.guid, fourth.link, fourth.published) == (None, "http://[bad", None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "2024",
        (0, 1, 1, 0, 0, 0, 0, 1, 0),
        (2024, 13, 1, 0, 0, 0, 0, 1, 0),
        (2024, 1),
        ("a", 1, 1, 0, 0, 0),
    ],
)
def test_bad_struct_times_become_none(value: object) -> None:
    assert struct_to_datetime(value) is None


def test_struct_time_is_utc() -> None:
    assert struct_to_datetime(time.gmtime(0)) == datetime(1970, 1, 1, tzinfo=UTC)
    assert struct_to_datetime((2016, 12, 31, 23, 59, 60, 5, 366, 0)) == datetime(
        2016, 12, 31, 23, 59, 59, tzinfo=UTC
    )


def test_unexpected_parser_crash_becomes_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # feedparser never raised on the corpora or in fuzzing; if it ever does, callers still see ParseError
    import feedparser

    def explode(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(feedparser, "parse", explode)
    with pytest.raises(
        ParseError,
        match=re.escape("source 'x': could not parse the document from https://e.org/f: Recursion"),
    ):
        parse_feed(RSS_EMPTY, url="https://e.org/f", source="x", fast=False)


def test_broken_html_page_still_reports_not_a_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator import parse

    def explode(self: object, data: str) -> None:
        raise AssertionError("unexpected markup")

    monkeypatch.setattr(parse._AlternateFinder, "feed", explode)
    with pytest.raises(ParseError, match=r"not a feed: got text/html from https://e\.org/$"):
        parse_feed(b"<html><link rel=alternate></html>", url="https://e.org/")


@needs_corpus
def test_a_media_description_caption_does_not_replace_the_description() -> None:
    entry = real("nytimes-1.xml").entries[0]
    assert entry.content is None
    assert entry.summary is not None and entry.summary.startswith("As Nashville’s popularity has grown")
