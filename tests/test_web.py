"""The web app on a real SQLite store: index, topic feeds with validators and 304s, OPML, health."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
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
    app = create_app(TOPICS, sessions, "http://feeds.test:8080/")
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
