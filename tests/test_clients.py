"""Real clients read the topic feeds from a running server: newsboat (its cache database is compared with
what the store holds) and headless Chromium (the HTML index, dumped as a DOM)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from conftest import REAL, FeedServer, free_port
from lxml import html as lxml_html
from sqlalchemy.orm import Session, sessionmaker
from waitress import create_server

from aggregator import publish, store
from aggregator.fetch import fetch, make_session
from aggregator.model import Source, StoredItem, Topic
from aggregator.pipeline import Context, backfill_topics, notify_topics, poll_source, topic_definitions
from aggregator.web import create_app

pytestmark = pytest.mark.skipif(not REAL.exists(), reason="shared corpus missing")

NOW = datetime(2018, 3, 22, 12, 0, tzinfo=UTC)
TOPICS = (
    Topic("russian", "lang:ru", title="По-русски", description="Цитаты из ibash", limit=100),
    Topic("bbc", "domain:bbc.co.uk", title="BBC News", description="Everything from the BBC", limit=100),
    Topic("trump", "trump OR title:president", title="Trump", limit=100),
    Topic("recent", "published:>3d -domain:bbc.co.uk", title="Last three days", limit=100),
)
FILES = {"/ibash.xml": "ibash-1.xml", "/bbc.xml": "bbc-news-2.xml", "/guardian.xml": "guardian-1.xml"}


class Site:
    """The aggregator as it runs: sources on a loopback feed server, polled by the real pipeline into a
    SQLite store, topic feeds served by waitress on 127.0.0.1."""

    def __init__(
        self,
        tmp_path: Path,
        feeds: FeedServer,
        topics: Sequence[Topic] = TOPICS,
        *,
        websub_hub: str | None = None,
        on_topics_changed: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        for path, name in FILES.items():
            feeds.routes[path] = REAL / name
        self.feeds = feeds
        self.sources = [
            Source(p.strip("/").removesuffix(".xml"), feeds.url(p), tags=("news",)) for p in FILES
        ]
        engine = store.make_engine(f"sqlite:///{tmp_path / 'site.db'}")
        store.upgrade(engine)
        self.engine = engine
        self.sessions: sessionmaker[Session] = store.make_sessionmaker(engine)
        self.http = make_session()
        self.ctx = Context.build(
            self.sources,
            topics,
            self.sessions,
            partial(fetch, self.http),
            on_topics_changed=on_topics_changed,
        )
        with self.sessions.begin() as s:
            store.sync_sources(s, self.sources, NOW)
            stale = store.sync_topics(s, topic_definitions(topics, self.sources))
        backfill_topics(self.ctx, stale, NOW)
        self.topics = topics
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        app = create_app(topics, self.sessions, self.base, websub_hub=websub_hub)
        self.server = create_server(app, host="127.0.0.1", port=port, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def poll(self, now: datetime = NOW) -> None:
        for source in self.sources:
            outcome = poll_source(self.ctx, source.name, now)
            assert outcome.ok, outcome.error

    def items(self, topic: Topic) -> list[StoredItem]:
        with self.sessions() as s:
            return store.topic_items(s, topic.name, limit=topic.limit)

    def close(self) -> None:
        self.server.task_dispatcher.shutdown()  # let running requests finish before the sockets go
        self.server.close()
        self.thread.join(10)
        self.http.close()
        self.engine.dispose()


@pytest.fixture
def site(tmp_path: Path, feed_server: FeedServer) -> Iterator[Site]:
    running = Site(tmp_path, feed_server)
    running.poll()
    yield running
    running.close()


def test_relative_dates_are_matched_against_the_poll_time(site: Site) -> None:
    """The pipeline passes its ``now`` into matching: ``published:>3d`` means three days before the poll."""
    recent = {s.item.uid for s in site.items(TOPICS[3])}
    with site.sessions() as s:
        stored = list(store.stored_items(s))
    want = {
        x.item.uid for x in stored if x.item.published > NOW - timedelta(days=3) and x.item.source != "bbc"
    }
    assert recent == want and recent


# --- newsboat -----------------------------------------------------------------------------------------

NEWSBOAT = shutil.which("newsboat")


class Newsboat:
    """newsboat run headless (`-x reload`) with its own HOME, URL list, config and cache database."""

    def __init__(self, folder: Path, urls: Sequence[str]) -> None:
        if NEWSBOAT is None:
            pytest.skip("newsboat is not installed (apt-get install newsboat)")
        self.folder = folder
        folder.mkdir()
        (folder / "urls").write_text("".join(f"{url}\n" for url in urls), encoding="utf-8")
        (folder / "config").write_text("download-timeout 20\nreload-threads 2\n", encoding="utf-8")
        self.cache = folder / "cache.db"

    def reload(self) -> None:
        env = {"HOME": str(self.folder), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": os.environ["PATH"]}
        args = ["-u", str(self.folder / "urls"), "-c", str(self.cache), "-C", str(self.folder / "config")]
        assert NEWSBOAT is not None
        done = subprocess.run(
            [NEWSBOAT, *args, "-x", "reload"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr + done.stdout

    def rows(self, feed_url: str | None = None) -> dict[str, tuple[str, str]]:
        """guid -> (title, link) of the items newsboat stored for ``feed_url`` (or for any feed)."""
        with sqlite3.connect(self.cache) as db:
            found = db.execute(
                "SELECT guid, title, url FROM rss_item WHERE feedurl = ? OR ? IS NULL", (feed_url, feed_url)
            )
            return {guid: (title, url) for guid, title, url in found}


def expected(site: Site, topic: Topic) -> dict[str, tuple[str, str]]:
    return {
        f"urn:uuid:{s.item.uid}": (s.item.title, s.item.url or s.item.link or "") for s in site.items(topic)
    }


# newsboat 2.21 (Debian 12) has no JSON Feed support: a json URL yields no items, so it is not tested here.
@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_newsboat_reads_every_topic_feed(site: Site, tmp_path: Path, fmt: str) -> None:
    """newsboat keys items by guid across all feeds: an item in two topics is stored once, under the
    feed it was first seen in. So: every topic's items are there with the same title and link, each
    feed's rows belong to that topic, and nothing else is there."""
    urls = [f"{site.base}/topics/{t.name}.{fmt}" for t in site.topics]
    newsboat = Newsboat(tmp_path / "newsboat", urls)
    newsboat.reload()
    everything = newsboat.rows()
    union: dict[str, tuple[str, str]] = {}
    for topic, url in zip(site.topics, urls, strict=True):
        want = expected(site, topic)
        assert want, f"topic {topic.name} is empty"
        assert {guid: everything.get(guid) for guid in want} == want, topic.name
        assert newsboat.rows(url).items() <= want.items(), topic.name
        union |= want
    assert everything == union
    russian = newsboat.rows(urls[0])
    assert russian and all(title.startswith("Цитата #") for title, _ in russian.values())  # Cyrillic intact


def test_newsboat_second_reload_shows_only_the_new_items(site: Site, tmp_path: Path) -> None:
    bbc = site.topics[1]
    url = f"{site.base}/topics/{bbc.name}.atom"
    newsboat = Newsboat(tmp_path / "newsboat", [url])
    newsboat.reload()
    first = newsboat.rows(url)
    assert first == expected(site, bbc)
    with sqlite3.connect(newsboat.cache) as db:
        db.execute("UPDATE rss_item SET unread = 0")
    site.feeds.routes["/bbc.xml"] = REAL / "bbc-news-1.xml"  # the later capture: 20 new stories
    site.poll(NOW + timedelta(hours=1))
    time.sleep(publish.REVALIDATE)  # the servers see a stored change within this period
    newsboat.reload()
    second = newsboat.rows(url)
    assert second == expected(site, bbc)
    new = set(second) - set(first)
    assert len(new) == 20
    with sqlite3.connect(newsboat.cache) as db:
        unread = {
            g for (g,) in db.execute("SELECT guid FROM rss_item WHERE feedurl = ? AND unread = 1", (url,))
        }
    assert unread == new  # the old items kept their ids: newsboat saw nothing else as new


# --- Chromium -----------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, profile: Path) -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]
    done = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_renders_the_index_with_every_topic_and_its_links(site: Site, tmp_path: Path) -> None:
    dom = lxml_html.fromstring(dump_dom(f"{site.base}/", tmp_path / "profile"))
    text = dom.text_content()
    hrefs = set(dom.xpath("//a/@href"))
    alternates = set(dom.xpath("//link[@rel='alternate']/@href"))
    for topic in site.topics:
        assert topic.title and topic.title in text
        assert f"{len(site.items(topic))} items" in text
        assert f"{site.base}/topics/{topic.name}" in hrefs
        for fmt in ("rss", "atom", "json"):
            assert f"{site.base}/topics/{topic.name}.{fmt}" in hrefs
            assert f"{site.base}/topics/{topic.name}.{fmt}" in alternates
    assert "Цитаты из ibash" in text
    assert f"{site.base}/opml" in hrefs


def test_a_failing_change_callback_never_breaks_a_poll(tmp_path: Path, feed_server: FeedServer) -> None:
    """The callback (a WebSub ping) runs after the commit; if it raises, the poll is still a success."""
    called: list[Sequence[str]] = []

    def broken(names: Sequence[str]) -> None:
        called.append(names)
        raise OSError("hub down")

    site = Site(tmp_path, feed_server, on_topics_changed=broken)
    try:
        site.poll()  # asserts every outcome is ok
        assert sorted(n for names in called for n in names) == sorted(t.name for t in TOPICS)
        assert all(site.items(t) for t in TOPICS)  # committed before the callback failed
        notify_topics(site.ctx, [])  # nothing gained: no call
        assert len(called) == len(FILES)
    finally:
        site.close()


# --- the `topics` command on the same store -------------------------------------------------------------


def test_topics_command_shows_counts_and_last_match_and_tests_date_queries(
    site: Site, tmp_path: Path
) -> None:
    import sys

    import yaml
    from conftest import ROOT

    doc = {
        "database": f"sqlite:///{tmp_path / 'site.db'}",
        "sources": [{"name": s.name, "url": s.url, "tags": list(s.tags)} for s in site.sources],
        "topics": [
            {k: getattr(t, k) for k in ("name", "query", "title", "description", "limit") if getattr(t, k)}
            for t in site.topics
        ],
    }
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = run("topics")
    for topic in site.topics:
        row = next(line for line in listing.splitlines() if f"│ {topic.name} " in line)
        cells = [c.strip() for c in row.strip().strip("│").split("│")]
        assert cells[2] == str(len(site.items(topic)))
        with site.sessions() as s:
            last_match = store.topic_stats(s)[topic.name].last_match
        assert last_match is not None
        assert cells[3] == last_match.strftime("%Y-%m-%d %H:%M:%S")  # when the topic last gained items
    days = (datetime.now(UTC) - NOW).days + 30  # --test counts back from the real clock
    assert "Цитата" in run("topics", "--test", f"published:>{days}d lang:ru")
    assert "0 stored items match" in run("topics", "--test", "published:>1d")
