"""Tests for aggregator.publish: render RSS / Atom / JSON Feed, parse them back, validate them."""

from __future__ import annotations

import calendar
import dataclasses
import email.utils
import io
import json
import re
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
from feedcheck import jsonfeed_validator, xmllint_atom
from lxml import etree

from aggregator.errors import PublishError
from aggregator.model import Enclosure, Item, StoredItem, Topic
from aggregator.publish import FORMATS, JSONFEED_VERSION, SUMMARY_CHARS, Paging, render_feed

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus" / "real"
ATOM_RNG = SHARED / "validators" / "atom-schema" / "atom.rng"
JSONFEED_DIR = SHARED / "validators" / "jsonfeed-schema"
XMLLINT = shutil.which("xmllint")

FEED_BASE = "http://localhost:8080/topics/world"
SITE_URL = "http://localhost:8080/topics/world.html"
T0 = datetime(2024, 5, 10, 12, 0, 0, tzinfo=UTC)
ATOM = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
RFC822 = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d\d:\d\d:\d\d [+-]\d{4}$"
)
CRE_AUTHORS = ("Metaebene Personal Media - Tim Pritlove", "Susanne Hüttemeister")
DW_TEXT = "发表斯诺登爆料的美国记者格林沃尔德（Glenn Greenwald）周日在德国荣获第13届新闻记者奖。"

TOPIC = Topic(name="world", query='ukraine OR "中国"', title="World — news", description="World news")
EMPTY_TOPIC = Topic(name="empty", query="nothing")


def make(
    n: int,
    title: str,
    *,
    source: str = "bbc-news",
    html: str = "",
    text: str = "",
    url: str | None = None,
    link: str | None = None,
    updated: datetime | None = None,
    published: datetime | None = None,
    **kw: Any,
) -> StoredItem:
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}:{n}"))
    source_title = kw.pop("source_title", None)
    source_link = kw.pop("source_link", None)
    item = Item(
        source=source,
        key=f"guid:{n}",
        uid=uid,
        title=title,
        html=html,
        text=text,
        published=published or T0 - timedelta(hours=n),
        content_hash=f"h{n}",
        url=url,
        link=link,
        updated=updated,
        **kw,
    )
    return StoredItem(
        id=n,
        item=item,
        first_seen=T0,
        source_title=source_title,
        source_link=source_link,
        article_id=100 + n,
        story_id=200 + n,
    )


def sample_items() -> list[StoredItem]:
    """Newest first: real titles and text, Cyrillic, Chinese, entities, enclosures, no authors."""
    return [
        make(
            0,
            "CRE207 Planetarien",
            source="cre-podcast",
            html="<p>Plantarien waren Anfang des 20. Jahrhunderts die Kathedralen der modernen "
            "Wissenschaft &amp; Technik &lt;3 — &#8220;Kuppel&#8221;</p>",
            text="Plantarien waren Anfang des 20. Jahrhunderts die Kathedralen der modernen "
            "Wissenschaft & Technik <3 — “Kuppel”",
            url="http://cre.fm/cre207-planetarien",
            updated=T0 + timedelta(minutes=30),
            authors=CRE_AUTHORS,
            categories=("Wissenschaft", "Astronomie"),
            enclosures=(
                Enclosure("http://cre.fm/media/cre207-planetarien.m4a", "audio/mp4", 37143728),
                Enclosure("http://cre.fm/media/cre207-planetarien.mp3", "audio/mpeg", None),
            ),
            language="de",
            source_title="CRE: Technik, Kultur, Gesellschaft",
            source_link="http://cre.fm",
            image="http://cre.fm/cre207.jpg",
        ),
        make(
            1,
            "Цитата #17703",
            source="ibash",
            html="<p>xxx: есть у кого жаба программер <br>xxx: кот немного пхп знает?</p>",
            text="xxx: есть у кого жаба программер\nxxx: кот немного пхп знает?",
            link="http://ibash.org.ru/quote.php?id=17703",
            language="ru",
            source_title="iBash.Org.Ru",
            source_link="http://ibash.org.ru/",
        ),
        make(
            2,
            "格林沃尔德获德国新闻记者奖",
            source="dw-chinese",
            html=f"<p>{DW_TEXT}</p>",
            text=DW_TEXT,
            url="http://www.dw.de/格林沃尔德获德国新闻记者奖/a-18317568",
            categories=("德国新闻",),
            language="zh-CN",
        ),
        make(
            3,
            "Covid: US opens up\x0b to fully vaccinated travellers\x00",
            html="<p>The US rolls back\x1b international travel restrictions.\x07</p>",
            text="The US rolls back\x1b international travel restrictions.\x07\ufffe",
            url="https://www.bbc.co.uk/news/world-us-canada-58628491",
            authors=("BBC\x01 News",),
            language="en-GB",
            source_title="BBC News - Home",
        ),
    ]


def render(fmt: str, items: Sequence[StoredItem], topic: Topic = TOPIC, **kw: Any) -> bytes:
    kw.setdefault("updated", T0 + timedelta(hours=1))
    return render_feed(fmt, topic, items, feed_url=f"{FEED_BASE}.{fmt}", site_url=SITE_URL, **kw)


def parse(body: bytes) -> Any:
    parsed = feedparser.parse(io.BytesIO(body))
    assert not parsed.bozo, parsed.get("bozo_exception")
    return parsed


def struct_to_dt(value: Any) -> datetime:
    return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)


def xml(body: bytes) -> etree._Element:
    return etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))


# --- RSS ----------------------------------------------------------------------------------------------


def test_formats_name_the_three_media_types() -> None:
    assert FORMATS == {
        "rss": "application/rss+xml; charset=utf-8",
        "atom": "application/atom+xml; charset=utf-8",
        "json": "application/feed+json; charset=utf-8",
    }


def test_rss_round_trip_keeps_order_ids_links_and_dates() -> None:
    items = sample_items()
    parsed = parse(render("rss", items))
    assert parsed.version == "rss20"
    assert [e.title for e in parsed.entries] == [
        "CRE207 Planetarien",
        "Цитата #17703",
        "格林沃尔德获德国新闻记者奖",
        "Covid: US opens up to fully vaccinated travellers",
    ]
    assert [e.id for e in parsed.entries] == [f"urn:uuid:{s.item.uid}" for s in items]
    assert [e.link for e in parsed.entries] == [
        "http://cre.fm/cre207-planetarien",
        "http://ibash.org.ru/quote.php?id=17703",
        "http://www.dw.de/格林沃尔德获德国新闻记者奖/a-18317568",
        "https://www.bbc.co.uk/news/world-us-canada-58628491",
    ]
    assert [struct_to_dt(e.published_parsed) for e in parsed.entries] == [s.item.published for s in items]
    assert parsed.feed.title == "World — news"
    assert parsed.feed.subtitle == "World news"


def test_rss_dates_are_rfc822() -> None:
    root = xml(render("rss", sample_items()))
    dates = [d.text or "" for d in root.iter("pubDate", "lastBuildDate")]
    assert len(dates) == 5
    for text in dates:
        assert RFC822.match(text), text
        assert email.utils.parsedate_to_datetime(text).tzinfo is not None
    assert email.utils.parsedate_to_datetime(dates[0]) == T0 + timedelta(hours=1)


def test_rss_enclosures_authors_categories_source_and_content() -> None:
    body = render("rss", sample_items())
    first, ibash, dw, bbc = parse(body).entries
    assert [(e.href, e.type, e.length) for e in first.enclosures] == [
        ("http://cre.fm/media/cre207-planetarien.m4a", "audio/mp4", "37143728"),
        ("http://cre.fm/media/cre207-planetarien.mp3", "audio/mpeg", "0"),
    ]
    assert [a.name for a in first.authors] == [
        "Metaebene Personal Media - Tim Pritlove",
        "Susanne Hüttemeister",
    ]
    assert [t.term for t in first.tags] == ["Wissenschaft", "Astronomie"]
    assert first.source == {"href": "http://cre.fm", "title": "CRE: Technik, Kultur, Gesellschaft"}
    assert first.content[0].value == (
        "<p>Plantarien waren Anfang des 20. Jahrhunderts die Kathedralen der modernen "
        "Wissenschaft &amp; Technik &lt;3 — &#8220;Kuppel&#8221;</p>"
    )
    assert first.summary.startswith("Plantarien waren Anfang des 20. Jahrhunderts")
    assert "authors" not in ibash and "author" not in ibash
    assert dw.source == {"href": f"{FEED_BASE}.rss", "title": "dw-chinese"}  # no site link: this feed
    assert [t.term for t in dw.tags] == ["德国新闻"]
    assert bbc.author == "BBC News"
    items = xml(body).findall("channel/item")
    assert [i.findtext("{http://purl.org/dc/elements/1.1/}creator") for i in items] == [
        "Metaebene Personal Media - Tim Pritlove",
        None,
        None,
        "BBC News",
    ]
    assert items[0].find("author") is None  # RSS <author> wants an e-mail address
    assert items[0].find("guid").get("isPermaLink") == "false"  # type: ignore[union-attr]


def test_rss_channel_link_is_the_site_and_self_link_is_the_feed() -> None:
    root = xml(render("rss", sample_items(), language="en"))
    channel = root.find("channel")
    assert channel is not None
    assert channel.findtext("link") == SITE_URL
    selves = channel.findall(f"{ATOM}link[@rel='self']")
    assert [(s.get("href"), s.get("type")) for s in selves] == [(f"{FEED_BASE}.rss", "application/rss+xml")]
    assert channel.findtext("language") == "en"
    assert channel.findtext("description") == "World news"


# --- Atom ---------------------------------------------------------------------------------------------


def test_atom_round_trip_keeps_order_ids_links_and_dates() -> None:
    items = sample_items()
    parsed = parse(render("atom", items))
    assert parsed.version == "atom10"
    assert [e.id for e in parsed.entries] == [f"urn:uuid:{s.item.uid}" for s in items]
    assert [e.title for e in parsed.entries][:3] == [
        "CRE207 Planetarien",
        "Цитата #17703",
        "格林沃尔德获德国新闻记者奖",
    ]
    assert [e.link for e in parsed.entries][1] == "http://ibash.org.ru/quote.php?id=17703"
    assert [struct_to_dt(e.published_parsed) for e in parsed.entries] == [s.item.published for s in items]
    assert struct_to_dt(parsed.entries[0].updated_parsed) == T0 + timedelta(minutes=30)
    assert struct_to_dt(parsed.entries[1].updated_parsed) == items[1].item.published
    assert parsed.feed.link == SITE_URL
    assert struct_to_dt(parsed.feed.updated_parsed) == T0 + timedelta(hours=1)


def test_atom_dates_are_rfc3339() -> None:
    root = xml(render("atom", sample_items()))
    dates = [d.text or "" for d in root.iter(f"{ATOM}updated", f"{ATOM}published")]
    assert len(dates) == 9
    for text in dates:
        assert RFC3339.match(text), text


def test_atom_enclosures_keep_rel_type_and_length() -> None:
    body = render("atom", sample_items())
    entry = xml(body).find(f"{ATOM}entry")
    assert entry is not None
    links = [dict(link.attrib) for link in entry.findall(f"{ATOM}link")]
    assert links == [
        {"href": "http://cre.fm/cre207-planetarien", "rel": "alternate", "type": "text/html"},
        {
            "href": "http://cre.fm/media/cre207-planetarien.m4a",
            "rel": "enclosure",
            "type": "audio/mp4",
            "length": "37143728",
        },
        {"href": "http://cre.fm/media/cre207-planetarien.mp3", "rel": "enclosure", "type": "audio/mpeg"},
    ]
    first = parse(body).entries[0]
    assert [(e.href, e.type, e.get("length")) for e in first.enclosures] == [
        ("http://cre.fm/media/cre207-planetarien.m4a", "audio/mp4", "37143728"),
        ("http://cre.fm/media/cre207-planetarien.mp3", "audio/mpeg", None),
    ]


def test_atom_authors_categories_source_content_and_language() -> None:
    body = render("atom", sample_items())
    first, _, dw, bbc = parse(body).entries
    assert [a.name for a in first.authors] == list(CRE_AUTHORS)
    assert [t.term for t in first.tags] == ["Wissenschaft", "Astronomie"]
    assert first.content[0].type == "text/html"
    assert first.content[0].value.endswith("Technik &lt;3 — &#8220;Kuppel&#8221;</p>")
    assert first.summary_detail.type == "text/plain"
    assert first.source.title == "CRE: Technik, Kultur, Gesellschaft"
    assert first.source.link == "http://cre.fm"
    assert first.source.id.startswith("urn:uuid:")
    assert dw.source.title == "dw-chinese"
    assert dw.source.link == dw.source.id  # feedparser's guidislink: the XML has no <link>
    assert bbc.author == "BBC News"
    root = xml(body)
    entries = root.findall(f"{ATOM}entry")
    lang = "{http://www.w3.org/XML/1998/namespace}lang"
    assert [e.get(lang) for e in entries] == ["de", "ru", "zh-CN", "en-GB"]
    assert entries[1].find(f"{ATOM}author") is None
    assert root.findtext(f"{ATOM}author/{ATOM}name") == "World — news"  # what author-less entries inherit
    # a source id depends only on the source name
    again = xml(render("atom", [make(9, "x", source="cre-podcast")]))
    assert again.findtext(f"{ATOM}entry/{ATOM}source/{ATOM}id") == first.source.id


def test_atom_links_self_and_site() -> None:
    root = xml(render("atom", sample_items(), language="en"))
    links = {link.get("rel"): link.get("href") for link in root.findall(f"{ATOM}link")}
    assert links == {"self": f"{FEED_BASE}.atom", "alternate": SITE_URL}
    assert root.findtext(f"{ATOM}id") == f"{FEED_BASE}.atom"
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"


def test_atom_validates_against_relax_ng(tmp_path: Path) -> None:
    xmllint_atom(render("atom", sample_items()), tmp_path)


# --- JSON Feed ----------------------------------------------------------------------------------------


def test_json_feed_fields() -> None:
    items = sample_items()
    doc = json.loads(render("json", items, language="en"))
    assert doc["version"] == "https://jsonfeed.org/version/1.1"
    assert doc["title"] == "World — news"
    assert doc["home_page_url"] == SITE_URL
    assert doc["feed_url"] == f"{FEED_BASE}.json"
    assert doc["description"] == "World news"
    assert doc["language"] == "en"
    assert [i["id"] for i in doc["items"]] == [f"urn:uuid:{s.item.uid}" for s in items]
    first, ibash, dw, bbc = doc["items"]
    assert first["url"] == "http://cre.fm/cre207-planetarien"
    assert first["title"] == "CRE207 Planetarien"
    assert first["content_html"] == items[0].item.html
    assert first["content_text"] == items[0].item.text
    assert first["summary"] == items[0].item.text
    assert first["date_published"] == "2024-05-10T12:00:00Z"
    assert first["date_modified"] == "2024-05-10T12:30:00Z"
    assert first["authors"] == [
        {"name": "Metaebene Personal Media - Tim Pritlove"},
        {"name": "Susanne Hüttemeister"},
    ]
    assert first["tags"] == ["Wissenschaft", "Astronomie"]
    assert first["attachments"] == [
        {
            "url": "http://cre.fm/media/cre207-planetarien.m4a",
            "mime_type": "audio/mp4",
            "size_in_bytes": 37143728,
        },
        {"url": "http://cre.fm/media/cre207-planetarien.mp3", "mime_type": "audio/mpeg"},
    ]
    assert first["image"] == "http://cre.fm/cre207.jpg"
    assert first["language"] == "de"
    assert first["_aggregator"] == {
        "source": "cre-podcast",
        "source_title": "CRE: Technik, Kultur, Gesellschaft",
        "source_link": "http://cre.fm",
        "article_id": 100,
        "story_id": 200,
    }
    assert ibash["url"] == "http://ibash.org.ru/quote.php?id=17703"
    assert "authors" not in ibash and "attachments" not in ibash
    assert dw["_aggregator"]["source_title"] == "dw-chinese"
    assert bbc["title"] == "Covid: US opens up to fully vaccinated travellers"
    for item in doc["items"]:
        for key in ("date_published", "date_modified"):
            assert RFC3339.match(item[key])
            assert datetime.fromisoformat(item[key]).tzinfo is not None


def test_json_feed_keeps_non_ascii_unescaped() -> None:
    body = render("json", sample_items())
    assert "格林沃尔德获德国新闻记者奖".encode() in body
    assert "Цитата #17703".encode() in body
    assert b"\\u" not in body


def test_json_feed_validates_against_schema() -> None:
    validator = jsonfeed_validator()
    doc = json.loads(render("json", sample_items(), language="en"))
    validator.validate(doc)
    # the schema bites, through its "feed-1#/..." references too
    broken = {"id": "x", "content_text": "t", "attachments": [{"url": "http://cre.fm/a.m4a"}]}
    errors = list(validator.iter_errors({"version": JSONFEED_VERSION, "title": "t", "items": [broken]}))
    assert [e.message for e in errors] == ["'mime_type' is a required property"]


# --- shared behaviour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_control_characters_are_stripped_and_xml_stays_well_formed(fmt: str) -> None:
    bad = make(
        7,
        "Null\x00 byte\x08 and \x1f unit separator",
        html="<p>Vertical\x0b tab, form\x0c feed, DEL\x7f and C1\x85\x9f</p>",
        text="Vertical\x0b tab, form\x0c feed, DEL\x7f and C1\x85\x9f, lone \ud800 surrogate",
        url="https://example.org/a\x01b",
        authors=("Jane\x02 Doe",),
        categories=("cat\x03",),
        source_title="Outlet\x04",
        source_link="https://example.org/",
    )
    body = render(fmt, [bad])
    root = xml(body)  # strict parser: raises on anything not well-formed
    assert root is not None
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", body)
    entry = parse(body).entries[0]
    assert entry.title == "Null byte and  unit separator"
    assert entry.link == "https://example.org/ab"
    assert entry.author == "Jane Doe"
    assert "C1" in entry.content[0].value and "\x85" not in entry.content[0].value


def test_json_control_characters_and_surrogates_are_stripped() -> None:
    bad = make(7, "Null\x00 byte", html="<p>a\x0bb</p>", text="a\x0bb \ud800", authors=("J\x01",))
    body = render("json", [bad])
    doc = json.loads(body)
    assert doc["items"][0]["title"] == "Null byte"
    assert doc["items"][0]["content_html"] == "<p>ab</p>"
    assert doc["items"][0]["authors"] == [{"name": "J"}]
    jsonfeed_validator().validate(doc)


def test_atom_with_control_characters_validates(tmp_path: Path) -> None:
    bad = make(7, "Null\x00 byte", html="<p>a\x0bb</p>", text="a\x0bb", url="https://example.org/x")
    xmllint_atom(render("atom", [bad]), tmp_path)


@pytest.mark.parametrize("fmt", ["rss", "atom", "json"])
def test_empty_topic_renders_a_valid_feed(fmt: str, tmp_path: Path) -> None:
    body = render(fmt, [], topic=EMPTY_TOPIC, updated=None)
    if fmt == "json":
        doc = json.loads(body)
        assert doc["items"] == []
        assert doc["title"] == "empty"
        assert doc["description"] == "Items matching nothing"
        jsonfeed_validator().validate(doc)
        return
    parsed = parse(body)
    assert parsed.entries == []
    assert parsed.feed.title == "empty"
    assert parsed.feed.subtitle == "Items matching nothing"
    assert struct_to_dt(parsed.feed.updated_parsed) == datetime(1970, 1, 1, tzinfo=UTC)
    if fmt == "atom":
        xmllint_atom(body, tmp_path)
    else:
        assert xml(body).findtext("channel/link") == SITE_URL


def test_updated_falls_back_to_the_newest_item_change() -> None:
    items = [*sample_items()[1:], sample_items()[0]]  # the most recently changed item is last
    parsed = parse(render("atom", items, updated=None))
    assert struct_to_dt(parsed.feed.updated_parsed) == T0 + timedelta(minutes=30)


def test_rendering_is_deterministic() -> None:
    for fmt in FORMATS:
        assert render(fmt, sample_items()) == render(fmt, sample_items())


def test_summary_is_cut_near_300_characters() -> None:
    long_text = " ".join(["Plantarien waren Anfang des 20. Jahrhunderts die Kathedralen."] * 20)
    doc = json.loads(render("json", [make(5, "Long", text=long_text, html=f"<p>{long_text}</p>")]))
    summary = doc["items"][0]["summary"]
    assert len(summary) <= SUMMARY_CHARS + 1
    assert summary.endswith("…")
    assert long_text.startswith(summary[:-1])
    assert doc["items"][0]["content_text"] == long_text


def test_entry_without_html_title_or_url_still_renders(tmp_path: Path) -> None:
    bare = make(6, "", text="Первый абзац.\n\nВторой & последний.")
    doc = json.loads(render("json", [bare]))
    assert doc["items"][0]["title"] == "Первый абзац. Второй & последний."
    assert doc["items"][0]["content_html"] == "<p>Первый абзац.</p><p>Второй &amp; последний.</p>"
    assert "url" not in doc["items"][0]
    body = render("atom", [bare])
    assert xml(body).find(f"{ATOM}entry/{ATOM}link") is None
    xmllint_atom(body, tmp_path)
    rss = parse(render("rss", [bare])).entries[0]
    assert "link" not in rss


# --- errors -------------------------------------------------------------------------------------------


def test_unknown_format_is_a_publish_error_naming_topic_and_format() -> None:
    with pytest.raises(PublishError, match=r"topic 'world': unknown feed format 'html'"):
        render_feed("html", TOPIC, [], feed_url="x", site_url="y", updated=None)


@pytest.mark.parametrize("fmt", ["rss", "atom", "json"])
def test_naive_item_date_is_a_publish_error_naming_topic_and_item(fmt: str) -> None:
    stored = make(1, "Naive")
    naive = StoredItem(
        id=1,
        item=dataclasses.replace(stored.item, published=datetime(2024, 1, 1)),
        first_seen=T0,
    )
    with pytest.raises(PublishError) as caught:
        render(fmt, [naive])
    message = str(caught.value)
    assert f"topic 'world': cannot render the {fmt} feed" in message
    assert stored.item.uid in message and "naive" in message
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize("fmt", ["rss", "atom", "json"])
def test_missing_url_is_a_publish_error_naming_the_topic(fmt: str) -> None:
    with pytest.raises(
        PublishError, match=rf"topic 'world': cannot render the {fmt} feed: site_url is empty"
    ) as caught:
        render_feed(fmt, TOPIC, sample_items(), feed_url="http://x/f", site_url=" ", updated=None)
    assert isinstance(caught.value.__cause__, ValueError)


def test_naive_topic_updated_is_a_publish_error() -> None:
    with pytest.raises(PublishError, match=r"topic 'world'.*updated is a naive datetime"):
        render("rss", sample_items(), updated=datetime(2024, 1, 1))


# --- real feeds from the corpus -----------------------------------------------------------------------


def corpus_items(name: str, source: str) -> list[StoredItem]:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"corpus file {path} is missing")
    parsed = feedparser.parse(io.BytesIO(path.read_bytes()))
    out = []
    for n, entry in enumerate(parsed.entries[:10]):
        when = entry.get("published_parsed") or entry.get("updated_parsed")
        html = entry.content[0].value if entry.get("content") else entry.get("summary", "")
        out.append(
            make(
                n,
                entry.get("title", ""),
                source=source,
                html=html,
                text=re.sub(r"<[^>]+>", " ", html),
                url=entry.get("link"),
                authors=tuple(a["name"] for a in entry.get("authors", []) if a.get("name")),
                categories=tuple(t["term"] for t in entry.get("tags", []) if t.get("term")),
                enclosures=tuple(
                    Enclosure(e["href"], e.get("type"), int(e["length"]) if e.get("length") else None)
                    for e in entry.get("enclosures", [])
                ),
                source_title=parsed.feed.get("title"),
                source_link=parsed.feed.get("link"),
                published=struct_to_dt(when) if when else None,
            )
        )
    return out


@pytest.mark.parametrize(
    ("name", "source"),
    [("ibash-1.xml", "ibash"), ("dw-chinese-1.xml", "dw-chinese"), ("cre-podcast-1.xml", "cre-podcast")],
)
def test_real_feeds_round_trip_in_all_formats(name: str, source: str, tmp_path: Path) -> None:
    items = corpus_items(name, source)
    assert items
    titles = [s.item.title for s in items]
    for fmt in ("rss", "atom"):
        body = render(fmt, items)
        parsed = parse(body)
        assert [e.title for e in parsed.entries] == titles
        assert [e.id for e in parsed.entries] == [f"urn:uuid:{s.item.uid}" for s in items]
        assert [e.get("link") for e in parsed.entries] == [s.item.url for s in items]
        enclosures = [[(x.href, x.type) for x in e.enclosures] for e in parsed.entries]
        assert enclosures == [[(x.url, x.type) for x in s.item.enclosures] for s in items]
    xmllint_atom(render("atom", items), tmp_path)
    doc = json.loads(render("json", items))
    assert [i["title"] for i in doc["items"]] == titles
    jsonfeed_validator().validate(doc)


# --- topics built by the real pipeline from the corpus: every format validates; ids are stable --------

PIPELINE_FILES = (
    "ibash-1.xml",  # Russian
    "guardian-1.xml",  # authors, categories
    "cre-podcast-1.xml",  # enclosures
    "daringfireball-3.json",  # JSON Feed in
    "bbc-chinese-2.atom",  # Atom in, CJK
)


def ingest(db: Path, now: datetime) -> tuple[Any, list[Topic]]:
    """Poll the corpus files (file:// sources) into the store at ``db``; returns (sessions, topics)."""
    from functools import partial

    from aggregator import store
    from aggregator.fetch import fetch, make_session
    from aggregator.model import Source
    from aggregator.pipeline import Context, backfill_topics, poll_source, topic_definitions

    missing = [name for name in PIPELINE_FILES if not (CORPUS / name).exists()]
    if missing:
        pytest.skip(f"corpus files missing: {missing}")
    sources = [
        Source(name.split(".")[0], (CORPUS / name).as_uri(), tags=("news",)) for name in PIPELINE_FILES
    ]
    topics = [
        Topic("everything", "*", title="Everything", limit=1000, icon="https://feeds.test/icon.png"),
        Topic("russian", "lang:ru", title="По-русски", limit=30),
        Topic("podcasts", "/./ published:2000-01-01..", limit=10, min_length=1),
    ]
    engine = store.make_engine(f"sqlite:///{db}")
    store.upgrade(engine)
    sessions = store.make_sessionmaker(engine)
    with make_session() as http:
        ctx = Context.build(sources, topics, sessions, partial(fetch, http))
        with sessions.begin() as s:
            store.sync_sources(s, sources, now)
            stale = store.sync_topics(s, topic_definitions(topics, sources))
        backfill_topics(ctx, stale, now)
        for source in sources:
            assert poll_source(ctx, source.name, now).ok
    return sessions, topics


def render_topic(sessions: Any, topic: Topic, fmt: str, page: int = 1) -> bytes:
    from aggregator import store

    with sessions() as s:
        items = store.topic_items(s, topic.name, limit=topic.limit, offset=(page - 1) * topic.limit)
        stats = store.topic_stats(s)[topic.name]
    feed = f"http://feeds.test/topics/{topic.name}.{fmt}"
    pages = max(1, -(-stats.count // topic.limit))
    paging = Paging(
        first=feed,
        last=feed if pages == 1 else f"{feed}?page={pages}",
        next=f"{feed}?page={page + 1}" if page < pages else None,
        previous=(feed if page == 2 else f"{feed}?page={page - 1}") if page > 1 else None,
    )
    return render_feed(
        fmt,
        topic,
        items,
        feed_url=feed if page == 1 else f"{feed}?page={page}",
        site_url="http://feeds.test/topics/" + topic.name,
        updated=stats.last_change,
        paging=paging,
    )


def check_rss_strictly(body: bytes) -> list[str]:
    """Parse as XML with no recovery; check RSS 2.0's required channel and item elements; guids."""
    root = etree.fromstring(body, etree.XMLParser(recover=False, resolve_entities=False))
    assert root.tag == "rss" and root.get("version") == "2.0"
    channel = root.find("channel")
    assert channel is not None
    for name in ("title", "link", "description"):
        assert (channel.findtext(name) or "").strip(), f"channel/{name}"
    guids = []
    for node in channel.findall("item"):
        assert (node.findtext("title") or node.findtext("description") or "").strip()
        assert node.findtext("pubDate")
        guid = node.find("guid")
        assert guid is not None and guid.get("isPermaLink") == "false" and guid.text
        guids.append(guid.text)
        for enclosure in node.findall("enclosure"):
            assert enclosure.get("url") and enclosure.get("type") and enclosure.get("length") is not None
    return guids


def test_every_format_of_corpus_topics_validates(tmp_path: Path) -> None:
    sessions, topics = ingest(tmp_path / "store.db", datetime(2026, 1, 1, tzinfo=UTC))
    validator = jsonfeed_validator()
    for topic in topics:
        pages = 2 if topic.name == "podcasts" else 1
        for page in range(1, pages + 1):
            rss = render_topic(sessions, topic, "rss", page)
            atom = render_topic(sessions, topic, "atom", page)
            doc = json.loads(render_topic(sessions, topic, "json", page))
            guids = check_rss_strictly(rss)
            assert guids, topic.name
            xmllint_atom(atom, tmp_path)
            validator.validate(doc)
            atom_ids = [
                e.findtext("{http://www.w3.org/2005/Atom}id")
                for e in xml(atom).iter("{http://www.w3.org/2005/Atom}entry")
            ]
            assert guids == atom_ids == [i["id"] for i in doc["items"]]
    russian = json.loads(render_topic(sessions, topics[1], "json"))
    assert russian["items"] and all(i["title"].startswith("Цитата") for i in russian["items"])
    everything = xml(render_topic(sessions, topics[0], "atom"))
    enclosures = everything.findall(".//{http://www.w3.org/2005/Atom}link[@rel='enclosure']")
    assert enclosures and all(e.get("type") and e.get("length") for e in enclosures)


def test_entry_ids_are_stable_across_re_renders_and_restarts(tmp_path: Path) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    sessions, topics = ingest(tmp_path / "a.db", now)
    first = {fmt: render_topic(sessions, topics[0], fmt) for fmt in ("rss", "atom", "json")}
    assert {fmt: render_topic(sessions, topics[0], fmt) for fmt in first} == first  # re-render: same bytes
    sessions.kw["bind"].dispose()
    from aggregator import store

    reopened = store.make_sessionmaker(store.make_engine(f"sqlite:///{tmp_path / 'a.db'}"))  # a restart
    assert {fmt: render_topic(reopened, topics[0], fmt) for fmt in first} == first
    fresh, _ = ingest(tmp_path / "b.db", now + timedelta(days=3))  # another store, polled later
    ids = [i["id"] for i in json.loads(first["json"])["items"]]
    assert [i["id"] for i in json.loads(render_topic(fresh, topics[0], "json"))["items"]] == ids
