"""The web app on a real SQLite store: index, topic feeds with validators and 304s, OPML, health."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
from flask.testing import FlaskClient
from lxml import etree
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from aggregator import publish, store, web
from aggregator.model import Item, Source, Topic
from aggregator.web import create_app

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
TOPICS = [
    Topic("war", "ukraine", title="Ukraine <war>", description="The war in Ukraine", limit=2),
    Topic("empty", "nothing-matches-this"),
]


def item(key: str, title: str, hours: int) -> Item:
    return Item(
        source="up",
        key=key,
        uid=f"00000000-0000-0000-0000-00000000000{hours}",
        title=title,
        html=f"<p>{title}</p>",
        text=title,
        published=NOW - timedelta(hours=hours),
        content_hash=title,
        url=f"https://up.example/{key}",
    )


def titles(fmt: str, body: bytes) -> list[str]:
    if fmt == "json":
        return [entry["title"] for entry in json.loads(body)["items"]]
    return [entry.title for entry in feedparser.parse(body).entries]


@pytest.fixture
def client(sessions: sessionmaker[Session]) -> FlaskClient:
    with sessions.begin() as s:
        store.sync_sources(s, [Source("up", "https://up.example/rss")], NOW)
        store.sync_topics(s, {"war": "1", "empty": "1"})
        saved = store.save_items(s, "up", [item("a", "Ukraine one", 3), item("b", "Ukraine two", 2)], NOW)
        store.add_topic_items(s, "war", [i for i, _ in saved.new], NOW)
        saved = store.save_items(s, "up", [item("c", "Ukraine three", 1)], NOW + timedelta(minutes=5))
        store.add_topic_items(s, "war", [i for i, _ in saved.new], NOW + timedelta(minutes=5))
    app = create_app(TOPICS, sessions, "http://feeds.test:8080/", revalidate=0)
    return app.test_client()


def test_index_lists_topics_with_subscribe_links_and_autodiscovery(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert "Ukraine &lt;war&gt;" in page and "Ukraine <war>" not in page  # escaped
    assert 'href="http://feeds.test:8080/topics/war.atom"' in page
    assert '<link rel="alternate" type="application/rss+xml"' in page
    assert "3 items" in page and "0 items" in page


@pytest.mark.parametrize("fmt", ["rss", "atom", "json"])
def test_feed_newest_first_limited_with_validators(client: FlaskClient, fmt: str) -> None:
    response = client.get(f"/topics/war.{fmt}")
    assert response.status_code == 200
    assert response.headers["ETag"].startswith('"')
    assert response.headers["Last-Modified"] == "Fri, 10 May 2024 12:05:00 GMT"
    assert "max-age" in response.headers["Cache-Control"]
    assert titles(fmt, response.data) == ["Ukraine three", "Ukraine two"]  # limit 2
    again = client.get(f"/topics/war.{fmt}", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    since = client.get(f"/topics/war.{fmt}", headers={"If-Modified-Since": response.headers["Last-Modified"]})
    assert since.status_code == 304
    stale = client.get(f"/topics/war.{fmt}", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200


def test_etag_changes_when_the_topic_gains_an_item(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    before = client.get("/topics/war.rss").headers["ETag"]
    with sessions.begin() as s:
        saved = store.save_items(s, "up", [item("d", "Ukraine four", 0)], NOW + timedelta(minutes=9))
        store.add_topic_items(s, "war", [i for i, _ in saved.new], NOW + timedelta(minutes=9))
    response = client.get("/topics/war.rss", headers={"If-None-Match": before})
    assert response.status_code == 200 and response.headers["ETag"] != before
    assert feedparser.parse(response.data).entries[0].title == "Ukraine four"


def test_empty_topic_serves_an_empty_valid_feed(client: FlaskClient) -> None:
    response = client.get("/topics/empty.json")
    assert response.status_code == 200 and response.json is not None
    assert response.json["items"] == []
    assert response.content_type.startswith("application/feed+json")


def test_head_and_unknown_topics(client: FlaskClient) -> None:
    head = client.head("/topics/war.atom")
    assert head.status_code == 200 and head.data == b""
    assert client.get("/topics/nope.rss").status_code == 404
    assert client.get("/topics/war.txt").status_code == 404
    assert client.get("/topics/nope").status_code == 404


def test_topic_page_opml_and_health(client: FlaskClient) -> None:
    page = client.get("/topics/war").get_data(as_text=True)
    assert "Ukraine three" in page and "https://up.example/c" in page
    opml = client.get("/opml")
    assert opml.content_type.startswith("text/x-opml")
    assert 'xmlUrl="http://feeds.test:8080/topics/war.rss"' in opml.get_data(as_text=True)
    assert client.get("/healthz").json == {"status": "ok"}


def test_health_reports_a_broken_store(tmp_path: Path) -> None:
    broken = store.make_sessionmaker(store.make_engine(f"sqlite:///{tmp_path}"))  # a folder, not a file
    client = create_app(TOPICS, broken, "http://x").test_client()
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "error"


# --- paging, caching, WebSub headers ---------------------------------------------------------------------

ATOM_NS = "{http://www.w3.org/2005/Atom}"


def page_links(fmt: str, body: bytes) -> dict[str, str]:
    """rel -> href of the RFC 5005 links (and self) in a rendered feed."""
    if fmt == "json":
        doc = json.loads(body)
        links = dict(doc["_aggregator"]["paging"])
        links["self"] = doc["feed_url"]
        if "next_url" in doc:
            assert doc["next_url"] == links["next"]
        return links
    root = etree.fromstring(body)
    head = root if fmt == "atom" else root.find("channel")
    assert head is not None
    wanted = {"self", "first", "previous", "next", "last"}
    return {x.get("rel"): x.get("href") for x in head.findall(f"{ATOM_NS}link") if x.get("rel") in wanted}


@pytest.mark.parametrize("fmt", ["rss", "atom", "json"])
def test_pages_link_first_previous_next_last(client: FlaskClient, fmt: str) -> None:
    feed = f"http://feeds.test:8080/topics/war.{fmt}"
    first = client.get(f"/topics/war.{fmt}")
    assert titles(fmt, first.data) == ["Ukraine three", "Ukraine two"]
    assert page_links(fmt, first.data) == {
        "self": feed,
        "first": feed,
        "next": f"{feed}?page=2",
        "last": f"{feed}?page=2",
    }
    second = client.get(f"/topics/war.{fmt}?page=2")
    assert second.status_code == 200
    assert titles(fmt, second.data) == ["Ukraine one"]  # a reader can go back past the limit
    assert page_links(fmt, second.data) == {
        "self": f"{feed}?page=2",
        "first": feed,
        "previous": feed,
        "last": f"{feed}?page=2",
    }
    assert second.headers["ETag"] != first.headers["ETag"]
    assert client.get(f"/topics/war.{fmt}?page=1").data == first.data


def test_page_errors(client: FlaskClient) -> None:
    assert client.get("/topics/war.rss?page=3").status_code == 404
    assert "has 2 pages, not 3" in client.get("/topics/war.rss?page=3").get_data(as_text=True)
    for bad in ("0", "-1", "two", ""):
        response = client.get(f"/topics/war.rss?page={bad}")
        assert response.status_code == 400, bad
        assert "page: expected a page number" in response.get_data(as_text=True)
    assert client.get("/topics/empty.atom?page=1").status_code == 200  # an empty topic has one page
    assert client.get("/topics/empty.atom?page=2").status_code == 404


def test_paged_atom_feeds_share_one_id(client: FlaskClient) -> None:
    ids = [
        etree.fromstring(client.get(f"/topics/war.atom?page={n}").data).findtext(f"{ATOM_NS}id")
        for n in (1, 2)
    ]
    assert ids == ["http://feeds.test:8080/topics/war.atom"] * 2


def test_strong_etag_and_conditional_requests_do_not_render(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = publish.render_feed

    def counting(fmt: str, *args: Any, **kwargs: Any) -> bytes:
        calls.append(fmt)
        return real(fmt, *args, **kwargs)

    monkeypatch.setattr(publish, "render_feed", counting)
    response = client.get("/topics/war.atom")
    etag = response.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")  # strong
    assert response.headers["Cache-Control"] == "public, max-age=60"
    assert client.get("/topics/war.atom").data == response.data  # cached bytes
    assert client.get("/topics/war.atom", headers={"If-None-Match": etag}).status_code == 304
    head = client.head("/topics/war.atom")
    assert head.status_code == 200 and head.headers["ETag"] == etag and head.data == b""
    assert calls == ["atom"]  # rendered once for this content version


def test_websub_link_headers(sessions: sessionmaker[Session]) -> None:
    app = create_app(TOPICS, sessions, "http://feeds.test", websub_hub="https://hub.example/")
    client = app.test_client()
    for fmt in ("rss", "atom", "json"):
        response = client.get(f"/topics/empty.{fmt}")
        assert response.headers["Link"] == (
            f'<https://hub.example/>; rel="hub", <http://feeds.test/topics/empty.{fmt}>; rel="self"'
        )
        again = client.get(f"/topics/empty.{fmt}", headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304 and 'rel="hub"' in again.headers["Link"]
    no_hub = create_app(TOPICS, sessions, "http://feeds.test").test_client()
    assert "Link" not in no_hub.get("/topics/empty.rss").headers


def test_icon_in_every_format(sessions: sessionmaker[Session]) -> None:
    topic = Topic("iconic", "*", icon="https://feeds.test/icon.png")
    with sessions.begin() as s:
        store.sync_topics(s, {"iconic": "1"})
    client = create_app([topic], sessions, "http://feeds.test").test_client()
    atom = etree.fromstring(client.get("/topics/iconic.atom").data)
    assert atom.findtext(f"{ATOM_NS}icon") == "https://feeds.test/icon.png"
    rss = etree.fromstring(client.get("/topics/iconic.rss").data)
    assert rss.findtext("channel/image/url") == "https://feeds.test/icon.png"
    assert client.get("/topics/iconic.json").json["icon"] == "https://feeds.test/icon.png"


# --- the per-process cache: gzip copies, the state token, the thin path ----------------------------------


def test_gzip_copy_for_clients_that_accept_it(client: FlaskClient) -> None:
    plain = client.get("/topics/war.rss")
    packed = client.get("/topics/war.rss", headers={"Accept-Encoding": "br, gzip;q=0.8"})
    assert packed.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
    assert gzip.decompress(packed.data) == plain.data
    assert int(packed.headers["Content-Length"]) == len(packed.data)
    assert plain.headers["Vary"] == packed.headers["Vary"] == "Accept-Encoding"
    assert packed.headers["ETag"] == plain.headers["ETag"][:-1] + '-gz"'
    for etag in (plain.headers["ETag"], packed.headers["ETag"]):  # either copy's ETag validates
        assert client.get("/topics/war.rss", headers={"If-None-Match": etag}).status_code == 304
    refused = client.get("/topics/war.rss", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers and refused.data == plain.data


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP, deflate", True),
        ("deflate, br", False),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.5", True),
        ("gzip;q=nonsense", False),
        ("x-gzip", True),
    ],
)
def test_accept_encoding(header: str | None, gzipped: bool) -> None:
    assert web._accepts_gzip(header) is gzipped


def test_fast_path_answers_like_the_flask_route(client: FlaskClient) -> None:
    """The first request renders through Flask; the next ones are cache hits answered before Flask:
    same status, headers and body."""
    for path in ("/topics/war.atom", "/topics/war.atom?page=2", "/topics/empty.json"):
        miss, hit = client.get(path), client.get(path)
        assert (hit.status_code, hit.data) == (miss.status_code, miss.data)
        assert sorted(hit.headers.items()) == sorted(miss.headers.items())
        head = client.head(path)
        assert head.data == b"" and head.headers["Content-Length"] == miss.headers["Content-Length"]


def test_a_page_in_use_stays_cached_while_one_off_pages_pass_through(
    client: FlaskClient, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache keeps the CACHE_ENTRIES pages used last: a page asked for between every two others is
    rendered once however many pass through (dropping the whole cache when full rendered it again);
    a page pushed out is rendered again when asked for."""
    monkeypatch.setattr(web, "CACHE_ENTRIES", 3)
    rendered: list[str] = []
    real = publish.render_feed

    def counting(fmt: str, *args: Any, **kwargs: Any) -> bytes:
        rendered.append(kwargs["feed_url"])
        return real(fmt, *args, **kwargs)

    monkeypatch.setattr(publish, "render_feed", counting)
    c = create_app(TOPICS, sessions, "http://x", revalidate=0).test_client()
    hot = "/topics/war.atom"
    cold = [
        f"/topics/{name}.{fmt}{query}"
        for name, query in [("war", "?page=2"), ("empty", "")]
        for fmt in publish.FORMATS
    ]
    cold += ["/topics/war.rss", "/topics/war.json"]
    for path in cold:
        assert c.get(hot).status_code == 200 and c.get(path).status_code == 200
    assert c.get(hot).status_code == 200
    assert rendered.count(f"http://x{hot}") == 1
    assert len(rendered) == 1 + len(cold)  # each once
    assert c.get(cold[0]).status_code == 200  # pushed out long ago: rendered again
    assert len(rendered) == 2 + len(cold)


def test_state_is_trusted_for_the_validation_period(sessions: sessionmaker[Session]) -> None:
    """Within the validation period a server keeps serving what it rendered; with revalidate=0 it
    sees every change at once (tests/test_serve_twin.py shows a change arriving within the period)."""
    with sessions.begin() as s:
        store.sync_sources(s, [Source("up", "https://up.example/rss")], NOW)
        store.sync_topics(s, {"war": "1", "empty": "1"})
    trusting = create_app(TOPICS, sessions, "http://x", revalidate=3600).test_client()
    checking = create_app(TOPICS, sessions, "http://x", revalidate=0).test_client()
    before = trusting.get("/topics/war.json")
    assert before.json is not None and before.json["items"] == []
    assert checking.get("/topics/war.json").data == before.data
    with sessions.begin() as s:
        saved = store.save_items(s, "up", [item("a", "Ukraine one", 3)], NOW)
        store.add_topic_items(s, "war", [i for i, _ in saved.new], NOW)
    assert trusting.get("/topics/war.json").data == before.data  # cached and trusted
    fresh = checking.get("/topics/war.json")
    assert fresh.json is not None and [x["title"] for x in fresh.json["items"]] == ["Ukraine one"]


def test_state_changes_with_every_input_of_the_feed(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    """Membership, content, and article or story links (re-linking changes no timestamp)."""

    def state() -> store.TopicState:
        with sessions() as s:
            return store.topic_state(s, "war")

    states = [state()]
    assert states[0].count == 3 and states[0].last_change == NOW + timedelta(minutes=5)
    with sessions.begin() as s:
        s.execute(text("UPDATE items SET story_id = id WHERE story_id IS NULL"))
    states.append(state())
    with sessions.begin() as s:
        s.execute(text("UPDATE items SET article_id = (SELECT MIN(id) FROM items)"))
    states.append(state())
    with sessions.begin() as s:
        store.save_items(s, "up", [item("c", "Ukraine three, revised", 1)], NOW + timedelta(minutes=7))
    states.append(state())
    assert states[-1].last_change == NOW + timedelta(minutes=7)
    revised = client.get("/topics/war.rss").headers["ETag"]
    with sessions.begin() as s:
        ids = [i for (i,) in s.execute(text("SELECT item_id FROM topic_items ORDER BY item_id"))]
        store.remove_topic_items(s, "war", ids[:1])
    states.append(state())
    assert len(set(states)) == len(states), states
    assert client.get("/topics/war.rss").headers["ETag"] != revised
    with sessions.begin() as s:
        store.add_topic_items(s, "war", ids[:1], NOW + timedelta(minutes=5))  # back as it was
    assert state() == states[3] and client.get("/topics/war.rss").headers["ETag"] == revised


def test_a_store_that_cannot_be_read_is_a_503_even_for_cached_feeds(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    engine = store.make_engine(f"sqlite:///{path}")
    store.upgrade(engine)
    sessions = store.make_sessionmaker(engine)
    with sessions.begin() as s:
        store.sync_topics(s, {"war": "1", "empty": "1"})
    client = create_app(TOPICS, sessions, "http://x", revalidate=0).test_client()
    assert client.get("/topics/war.rss").status_code == 200  # rendered and cached
    engine.dispose()
    path.rename(tmp_path / "gone.db")  # the next connection opens an empty database: no tables
    for url in ("/topics/war.rss", "/topics/empty.json"):  # a cached page, then an uncached one
        response = client.get(url)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "store: the database cannot be read (OperationalError)" in response.get_data(as_text=True)
    engine.dispose()


def test_in_memory_names_the_requests_answered_without_the_store(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    """The server runs these in its event loop: only current cached pages, never a store read."""
    app = create_app(TOPICS, sessions, "http://x", revalidate=3600)
    test, c = web.in_memory(app), app.test_client()
    assert not test("GET", "/topics/war.atom", "")  # not rendered yet
    assert (
        c.get("/topics/war.atom").status_code == 200 and c.get("/topics/war.atom?page=2").status_code == 200
    )
    assert test("GET", "/topics/war.atom", "") and test("HEAD", "/topics/war.atom", "")
    assert test("GET", "/topics/war.atom", "page=2") and test("GET", "/topics/war.atom", "page=1")
    for method, path, query in [
        ("POST", "/topics/war.atom", ""),
        ("GET", "/topics/war.rss", ""),  # another format, not rendered
        ("GET", "/topics/war.atom", "page=3"),
        ("GET", "/topics/war.atom", "page=x"),
        ("GET", "/topics/nope.atom", ""),
        ("GET", "/", ""),
        ("GET", "/healthz", ""),
    ]:
        assert not test(method, path, query), (method, path, query)
    checking = create_app(TOPICS, sessions, "http://x", revalidate=0)
    assert checking.test_client().get("/topics/war.atom").status_code == 200
    assert not web.in_memory(checking)("GET", "/topics/war.atom", "")  # revalidate=0: every request reads


def test_a_state_in_use_is_read_again_before_it_expires(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near its expiry, asking whether a page is in memory reads its topic's state in the background:
    a change is seen before the state expires (here: 0.5 s into a 10 s validity)."""
    monkeypatch.setattr(web, "REFRESH_AHEAD", 9.5)
    with sessions.begin() as s:
        store.sync_sources(s, [Source("up", "https://up.example/rss")], NOW)
        store.sync_topics(s, {"war": "1", "empty": "1"})
    app = create_app(TOPICS, sessions, "http://x", revalidate=10)
    test, c = web.in_memory(app), app.test_client()
    before = c.get("/topics/war.json")
    assert test("GET", "/topics/war.json", "")
    with sessions.begin() as s:
        saved = store.save_items(s, "up", [item("a", "Ukraine one", 3)], NOW)
        store.add_topic_items(s, "war", [i for i, _ in saved.new], NOW)
    time.sleep(0.6)
    deadline = time.monotonic() + 8
    while test("GET", "/topics/war.json", "") and time.monotonic() < deadline:
        time.sleep(0.05)  # the first call started the read; the page is no longer current once it ends
    assert not test("GET", "/topics/war.json", "")
    after = c.get("/topics/war.json")
    assert after.json is not None and [x["title"] for x in after.json["items"]] == ["Ukraine one"]
    assert after.headers["ETag"] != before.headers["ETag"]
