"""fastparse.py: the adapter's gap filling and every rule that sends a document back to feedparser."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.fastparse import Rejected, join_url, parse_fast
from aggregator.model import Enclosure
from aggregator.parse import parse_feed, parse_feed_traced

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
REAL = CORPUS / "real"
FP_TESTS = CORPUS / "feedparser-tests"
needs_corpus = pytest.mark.skipif(not REAL.is_dir(), reason="shared/corpus is not beside the repository")
URL = "https://e.org/feed.xml"
MEDIA = 'xmlns:media="http://search.yahoo.com/mrss/"'


def rss(items: str, channel: str = "<title>T</title>", ns: str = "") -> bytes:
    return f'<rss version="2.0" {ns}><channel>{channel}{items}</channel></rss>'.encode()


def reason(body: bytes, **kw: str) -> str | None:
    """Why parse_feed did not take the fast path (None when it did)."""
    return parse_feed_traced(body, url=URL, **kw)[1]


# --- fallback rules: each failure mode sends the document to feedparser -------------------------------


@needs_corpus
def test_rss_090_falls_back() -> None:
    assert reason((REAL / "heise-1.xml").read_bytes()) == "RSS 0.90"
    assert reason(rss("<item><title>x</title></item>")) is None


@needs_corpus
def test_mojibake_falls_back_and_feedparser_decodes_it() -> None:
    body = (REAL / "lautde-1.rdf").read_bytes()
    assert (reason(body) or "").startswith("entry 0: mojibake ('Ã¤'")
    assert parse_feed(body, url=URL).entries[0].summary.startswith("Schon länger")  # type: ignore[union-attr]


def test_mojibake_the_publisher_wrote_is_kept() -> None:
    body = rss("<item><title>CafÃ© owner</title></item>")  # in the bytes: nothing to repair
    assert reason(body) is None
    assert parse_fast(body, url=URL).entries[0].title == "CafÃ© owner"


def test_replacement_characters_fall_back() -> None:
    latin1 = rss("<item><title>x</title></item>").replace(b"<title>x", b"<title>caf\xe9")
    body = b'<?xml version="1.0" encoding="iso-8859-1"?>' + latin1
    assert reason(body) is None  # declared and decoded right
    assert parse_fast(body, url=URL).entries[0].title == "café"
    lying = b'<?xml version="1.0" encoding="utf-8"?>' + latin1
    assert (reason(lying) or "").startswith(("not well-formed XML", "entry 0: replacement"))


def test_replacement_character_the_publisher_wrote_is_kept() -> None:
    body = rss("<item><title>a \ufffd b</title></item>")
    assert parse_fast(body, url=URL).entries[0].title == "a \ufffd b"


def test_no_feed_title_falls_back() -> None:
    assert reason(rss("<item><title>x</title></item>", channel="")) == "no feed title"


@needs_corpus
def test_fewer_entries_than_the_document_has_fall_back() -> None:
    path = FP_TESTS / "wellformed" / "base" / "http_entry_contributor_url_base_docuri.xml"
    assert reason(path.read_bytes()) == "0 entries read, the document has 1"


def test_a_fast_parser_crash_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastfeedparser

    def explode(*args: object, **kwargs: object) -> None:
        raise RecursionError("deep")

    monkeypatch.setattr(fastfeedparser, "parse", explode)
    feed, why = parse_feed_traced(rss("<item><title>x</title></item>"), url=URL)
    assert why == "fastfeedparser: RecursionError: deep"
    assert [e.title for e in feed.entries] == ["x"]


@needs_corpus
def test_not_well_formed_xml_falls_back_and_feedparser_says_why() -> None:
    body = (REAL / "techcrunch-2009-1.xml").read_bytes()
    feed, why = parse_feed_traced(body, url=URL)
    assert why == "not well-formed XML: XML declaration allowed only at the start of the document"
    assert feed.problem is not None and feed.problem.startswith("not well-formed XML at line")


def test_undeclared_html_entities_fall_back() -> None:
    body = rss("<item><title>caf&eacute;</title></item>")
    assert (reason(body) or "").startswith("not well-formed XML: Entity 'eacute'")
    assert parse_feed(body, url=URL).entries[0].title == "café"


def test_an_extension_title_read_as_the_title_falls_back() -> None:
    body = rss("<item><media:title>caption</media:title><title>real</title></item>", ns=MEDIA)
    assert reason(body) == "<title> of http://search.yahoo.com/mrss/ read as the item's title"
    assert parse_feed(body, url=URL).entries[0].title == "real"
    after = rss("<item><title>real</title><media:title>caption</media:title></item>", ns=MEDIA)
    assert reason(after) is None and parse_feed(after, url=URL).entries[0].title == "real"


def test_several_content_elements_fall_back() -> None:
    body = (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>urn:f</id>'
        b'<entry><id>urn:1</id><title>t</title><content type="text">a plain text body</content>'
        b'<content type="html">&lt;p&gt;short&lt;/p&gt;</content></entry></feed>'
    )
    assert reason(body) == "an entry with several content elements"


@pytest.mark.parametrize(
    ("content_type", "why"),
    [
        (None, None),
        ("application/rss+xml", None),
        ("application/xml; charset=UTF-8", None),
        ('application/atom+xml; charset="utf8"', None),
        ("application/xml; charset=x-unknown", "HTTP charset x-unknown differs from the document's encoding"),
        ("text/xml", "text/xml without a charset means US-ASCII (RFC 3023)"),
        ("text/html", "served as text/html, not an XML media type"),
        (
            "application/rss+xml; charset=windows-1251",
            "HTTP charset windows-1251 differs from the document's encoding",
        ),
    ],
)
def test_content_types_that_change_the_decoding_fall_back(content_type: str | None, why: str | None) -> None:
    body = rss("<item><title>café</title></item>")
    assert parse_feed_traced(body, url=URL, content_type=content_type)[1] == why


def test_fast_off_uses_feedparser() -> None:
    assert parse_feed_traced(rss("<item><title>x</title></item>"), url=URL, fast=False)[1] == "off"


# --- gaps the adapter fills -------------------------------------------------------------------------


def test_feed_language_media_fields_and_atom_enclosures() -> None:
    body = rss(
        "<item><guid>g</guid><title>x</title><media:description>a caption</media:description>"
        "<media:keywords>war, peace ,</media:keywords><category>news</category>"
        '<media:thumbnail url="/t.jpg"/></item>',
        channel="<title>T</title><language>uk-UA</language>",
        ns=MEDIA,
    )
    (entry,) = parse_fast(body, url=URL).entries
    assert parse_fast(body, url=URL).meta.language == "uk-UA" and entry.language == "uk-UA"
    assert entry.summary == "a caption" and entry.content is None  # the body where nothing else is
    assert entry.categories == ("war", "peace", "news")  # document order, as feedparser
    assert entry.image == "https://e.org/t.jpg"
    atom = (
        b'<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="de"><title>A</title>'
        b'<entry><id>urn:1</id><title>t</title><link rel="alternate" href="/a"/>'
        b'<link rel="enclosure" type="audio/mpeg" length="12345" href="/a.mp3"/>'
        b"<updated>2024-05-01T10:00:00.5Z</updated></entry></feed>"
    )
    (e,) = parse_fast(atom, url=URL).entries
    assert e.enclosures == (Enclosure("https://e.org/a.mp3", "audio/mpeg", 12345),)
    assert e.link == "https://e.org/a" and e.language == "de"
    assert e.published is None and e.updated == datetime(2024, 5, 1, 10, tzinfo=UTC)  # whole seconds


def test_ids_are_the_documents_own_never_the_link() -> None:
    body = rss("<item><title>x</title><link>https://e.org/1</link></item>")
    (entry,) = parse_fast(body, url=URL).entries
    assert entry.guid is None and entry.link == "https://e.org/1"  # identity keys match feedparser's


def test_dates_are_aware_utc_and_dc_date_is_updated() -> None:
    body = rss(
        "<item><title>x</title><pubDate>Wed, 01 May 2024 12:00:00 +0200</pubDate></item>"
        '<item><title>y</title><dc:date xmlns:dc="http://purl.org/dc/elements/1.1/">2024-05-02T00:00:00+03:00'
        "</dc:date></item>"
    )
    a, b = parse_fast(body, url=URL).entries
    assert a.published == datetime(2024, 5, 1, 10, tzinfo=UTC) and a.published.tzinfo is UTC
    assert b.published is None and b.updated == datetime(2024, 5, 1, 21, tzinfo=UTC)


@needs_corpus
def test_podcast_itunes_image_authors_and_enclosures() -> None:
    entry = parse_fast((REAL / "cre-podcast-1.xml").read_bytes(), url=URL).entries[0]
    assert entry.image == "http://meta.metaebene.me/media/cre/cre207-planetarien.jpg"
    assert entry.enclosures[0].length == 37143728


@needs_corpus
def test_a_longer_caption_is_the_body_as_feedparser_has_it() -> None:
    entry = parse_fast((REAL / "nytimes-1.xml").read_bytes(), url=URL).entries[0]
    assert entry.content is None and entry.summary is not None  # a caption shorter than the description
    assert entry.summary.startswith("As Nashville’s popularity has grown")


def test_rejected_is_never_raised_by_parse_feed() -> None:
    with pytest.raises(Rejected):
        parse_fast(rss("<item/>", channel=""), url=URL)
    assert parse_feed(rss("<item/>", channel=""), url=URL).entries  # feedparser took it


def test_an_empty_body_beside_a_media_description_falls_back() -> None:
    # the adapter fills the body from media:description, so only a regression reaches this rule
    from aggregator.fastparse import _check, _Extras
    from aggregator.model import RawEntry

    with pytest.raises(Rejected, match="entry 0: empty body where media:description exists"):
        _check((RawEntry(title="t"),), [_Extras(captions=["a caption"])], b"<rss/>")
    _check((RawEntry(title="t", summary="a caption"),), [_Extras(captions=["a caption"])], b"<rss/>")


_URL_PART = st.sampled_from(
    ["http://Ex.com", "https://ex.com:443", "https://ex.com", "/a", "/./b", "/../c", "?q=1", "?", "#f", "#",
     "//h.org", "x y", ";p", "%41", "/é", "mailto:a@b", "file:///t", ""]
)  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_URL_PART, max_size=4).map("".join), st.lists(_URL_PART, max_size=4).map("".join))
def test_join_url_is_urljoin(base: str, value: str) -> None:
    """join_url's shortcut for plain absolute URLs gives what urljoin gives."""
    from urllib.parse import urljoin

    try:
        expected = urljoin(base, value.strip()) if value.strip() else None
    except ValueError:
        expected = value.strip()
    assert join_url(base, value) == expected
