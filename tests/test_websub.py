"""WebSub against a real hub on 127.0.0.1: Flask-WebSub's hub (Celery in eager mode, so it works
synchronously without a broker) and its subscriber. The aggregator announces the hub in Link headers and
pings it when a topic gains items; the subscriber receives the new feed content."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import feedparser
import pytest
from conftest import REAL, FeedServer, free_port
from flask import Flask
from test_clients import NOW, Site
from werkzeug.serving import make_server

from aggregator import publish, websub
from aggregator.model import Topic

pytestmark = pytest.mark.skipif(not REAL.exists(), reason="shared corpus missing")
hub_module = pytest.importorskip("flask_websub.hub")
subscriber_module = pytest.importorskip("flask_websub.subscriber")
celery_module = pytest.importorskip("celery")

TOPIC = Topic("bbc", "domain:bbc.co.uk", title="BBC News", limit=100)


class Served:
    """A Flask app served by werkzeug in a thread on 127.0.0.1."""

    def __init__(self, app: Flask, port: int) -> None:
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[str]:
    celery = celery_module.Celery("hub", broker="memory://", backend="cache+memory://")
    celery.conf.update(task_always_eager=True, task_eager_propagates=True)
    app = Flask("hub")
    app.config["PUBLISH_SUPPORTED"] = True
    the_hub = hub_module.Hub(hub_module.SQLite3HubStorage(str(tmp_path / "hub.db")), celery, **app.config)
    app.register_blueprint(the_hub.build_blueprint(url_prefix="/hub"))
    port = free_port()
    served = Served(app, port)
    yield f"http://127.0.0.1:{port}/hub"
    served.close()


class Subscriber:
    def __init__(self, tmp_path: Path) -> None:
        db = str(tmp_path / "subscriber.db")
        self.sub = subscriber_module.Subscriber(
            subscriber_module.SQLite3SubscriberStorage(db), subscriber_module.SQLite3TempSubscriberStorage(db)
        )
        self.received: list[tuple[str, bytes]] = []
        self.confirmed = threading.Event()
        self.got = threading.Event()
        self.sub.add_listener(self.on_content)
        self.sub.add_success_handler(lambda *args: self.confirmed.set())
        port = free_port()
        self.app = Flask("subscriber")
        self.app.config["SERVER_NAME"] = f"127.0.0.1:{port}"
        self.app.register_blueprint(self.sub.build_blueprint(url_prefix="/callbacks"))
        self.served = Served(self.app, port)

    def on_content(self, topic_url: str, callback_id: str, body: bytes) -> None:
        self.received.append((topic_url, body))
        self.got.set()

    def subscribe(self, topic_url: str, hub_url: str) -> Any:
        with self.app.app_context():
            return self.sub.subscribe(topic_url=topic_url, hub_url=hub_url)


@pytest.fixture
def subscriber(tmp_path: Path) -> Iterator[Subscriber]:
    sub = Subscriber(tmp_path)
    yield sub
    sub.served.close()


def test_feeds_announce_the_hub_and_themselves(tmp_path: Path, feed_server: FeedServer, hub: str) -> None:
    site = Site(tmp_path, feed_server, (TOPIC,), websub_hub=hub)
    try:
        for fmt, url in publish.topic_feed_urls(site.base, TOPIC.name).items():
            with urllib.request.urlopen(url) as response:
                link = response.headers["Link"]
            assert link == f'<{hub}>; rel="hub", <{url}>; rel="self"', fmt
    finally:
        site.close()


def test_a_subscriber_receives_new_items_after_a_publish_ping(
    tmp_path: Path, feed_server: FeedServer, hub: str, subscriber: Subscriber
) -> None:
    pings: list[list[str]] = []

    def ping(names: Any) -> None:
        urls = [publish.topic_feed_urls(site.base, n)["atom"] for n in names]
        pings.append(urls)
        assert websub.ping_hub(hub, urls, settle=publish.REVALIDATE) == []  # as cli's pinger does

    site = Site(tmp_path, feed_server, (TOPIC,), websub_hub=hub, on_topics_changed=ping)
    try:
        feed_url = publish.topic_feed_urls(site.base, TOPIC.name)["atom"]
        subscriber.subscribe(feed_url, hub)
        assert subscriber.confirmed.wait(20), "the hub did not verify the subscription"
        site.poll()  # first poll: the topic gains items -> ping -> the hub fetches the feed and pushes it
        assert pings == [[feed_url]]
        assert subscriber.got.wait(20), "no content distributed"
        first = feedparser.parse(subscriber.received[-1][1])
        assert subscriber.received[-1][0] == feed_url
        assert len(first.entries) == len(site.items(TOPIC))
        subscriber.got.clear()
        site.feeds.routes["/bbc.xml"] = REAL / "bbc-news-1.xml"  # 20 new stories
        site.poll(NOW + timedelta(hours=1))
        assert subscriber.got.wait(20)
        second = feedparser.parse(subscriber.received[-1][1])
        new = {e.id for e in second.entries} - {e.id for e in first.entries}
        assert len(new) == 20
        site.poll(NOW + timedelta(hours=2))  # nothing new: no ping
        assert len(pings) == 2
    finally:
        site.close()


def test_ping_failures_are_reported_not_raised(hub: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hub"
    problems = websub.ping_hub(dead, ["http://127.0.0.1/topics/x.atom"], timeout=2)
    assert len(problems) == 1 and problems[0].startswith(f"websub: cannot reach hub {dead} for ")
    refused = websub.ping_hub(hub.replace("/hub", "/nothing-here"), ["http://127.0.0.1/topics/x.atom"])
    assert len(refused) == 1 and "refused the ping" in refused[0] and "HTTP 404" in refused[0]


def test_ping_later_returns_at_once_and_pings_after_settling() -> None:
    """cli's pinger: the poll that committed does not wait; the hub hears of the change only once every
    web server serves it (publish.REVALIDATE)."""
    got: list[tuple[float, bytes]] = []
    heard = threading.Event()

    class Hub(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((time.monotonic(), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()
            heard.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        websub.ping_later(
            f"http://127.0.0.1:{server.server_address[1]}/", ["http://x/topics/a.atom"], settle=0.5
        )
        assert not got  # returned before the ping
        assert heard.wait(10)
        assert got[0][0] - started >= 0.5 and b"hub.topic=http%3A%2F%2Fx%2Ftopics%2Fa.atom" in got[0][1]
    finally:
        server.shutdown()
        server.server_close()
