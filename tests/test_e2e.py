"""End to end: `python run.py` as a real process, sources served over HTTP on 127.0.0.1 from real feed
files, topic feeds read back over HTTP, parsed and validated; then a re-poll with later captures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import feedparser
import pytest
from conftest import REAL, ROOT, FeedServer, free_port
from feedcheck import jsonfeed_validator, xmllint_atom

from aggregator.publish import REVALIDATE

pytestmark = pytest.mark.skipif(not REAL.exists(), reason="shared corpus missing")

# path on the feed server -> (earlier capture, later capture) from REPOLL.tsv, or one file
FEEDS = {
    "/bbc.xml": ("bbc-news-2.xml", "bbc-news-1.xml"),  # R01: 53 -> 57 items, 20 new
    "/aljazeera.xml": ("aljazeera-2.xml", "aljazeera-1.xml"),  # R02: 15 -> 15 items, 6 new
    "/nytimes.xml": ("nytimes-1.xml", "nytimes-2.xml"),  # R03: 23 -> 29 items, 14 new
    "/cnn.xml": ("cnn-1.xml", "cnn-1.xml"),
    "/smh.xml": ("smh-1.xml", "smh-1.xml"),
    "/dailymail.xml": ("dailymail-1.xml", "dailymail-1.xml"),
    "/fireball.json": ("daringfireball-3.json", "daringfireball-3.json"),
    "/latimes.xml": ("latimes-403-cloudfront.html", "latimes-403-cloudfront.html"),  # not a feed
}
NEW_IN_LATER = 20 + 6 + 14


def write_config(tmp_path: Path, server: FeedServer, port: int, sources: list[tuple[str, str]]) -> Path:
    lines = [
        f"database: sqlite:///{tmp_path / 'e2e.db'}",
        f"server: {{host: 127.0.0.1, port: {port}}}",
        "worker: {tick: 0.5s, threads: 4}",
        # poll every 2 s whatever the feeds' own ttl / sy:updatePeriod ask (max_interval caps those hints)
        "defaults: {interval: 2s, min_interval: 1s, max_interval: 2s, timeout: 5s}",
        "sources:",
    ]
    for name, url in sources:
        lines += [f"  - name: {name}", f"    url: {url}", "    tags: [news]"]
    lines += [
        "topics:",
        "  - {name: everything, query: '*', limit: 1000, collapse: none}",
        "  - name: beatrice",
        "    title: Princess Beatrice",
        "    query: '\"princess beatrice\" OR title:beatrice'",
        "    sources: {tags: [news]}",
        "  - {name: apple, query: 'apple OR iphone', limit: 5}",
    ]
    path = tmp_path / "e2e.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(config: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *command, "--config", str(config)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def running(
    tmp_path: Path, feed_server: FeedServer
) -> Iterator[tuple[str, FeedServer, subprocess.Popen[str]]]:
    for path, (earlier, _) in FEEDS.items():
        feed_server.routes[path] = REAL / earlier
    port = free_port()
    config = write_config(
        tmp_path, feed_server, port, [(p[1:].split(".")[0], feed_server.url(p)) for p in FEEDS]
    )
    process = start(config)  # no command: `run` is the default
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, 30, "the web server")
        yield base, feed_server, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def items(base: str, topic: str) -> list[dict[str, Any]]:
    status, _, body = get(f"{base}/topics/{topic}.json")
    assert status == 200
    result: list[dict[str, Any]] = json.loads(body)["items"]
    return result


def test_run_polls_serves_validates_and_repolls(
    running: tuple[str, FeedServer, subprocess.Popen[str]], tmp_path: Path
) -> None:
    base, server, process = running
    first = wait_for(
        lambda: (
            len(items(base, "everything")) >= 53 + 15 + 23 + 50 + 50 + 141 + 48 and items(base, "everything")
        ),
        120,
        "the first poll",
    )
    time.sleep(REVALIDATE + 0.2)  # every topic's cached page has looked at the store again since

    # every format parses back with the same entries, newest first, and validates
    ids = [entry["id"] for entry in first]
    assert len(ids) == len(set(ids)), "duplicate entries in a topic feed"
    status, headers, rss = get(f"{base}/topics/everything.rss")
    assert status == 200 and headers["content-type"].startswith("application/rss+xml")
    parsed = feedparser.parse(rss)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert [e.id for e in parsed.entries] == ids
    _, _, atom = get(f"{base}/topics/everything.atom")
    assert [e.id for e in feedparser.parse(atom).entries] == ids
    xmllint_atom(atom, tmp_path)
    _, _, feed_json = get(f"{base}/topics/everything.json")
    jsonfeed_validator().validate(json.loads(feed_json))
    dates = [entry["date_published"] for entry in first]
    assert dates == sorted(dates, reverse=True)

    # the cross-outlet story topic holds the outlets' reports (BBC's comes with the re-poll); limits apply
    outlets = {entry["_aggregator"]["source"] for entry in items(base, "beatrice")}
    assert outlets == {"cnn", "smh", "dailymail"}
    assert len(items(base, "apple")) == 5

    # conditional requests, unknown topics, the index
    status, headers, _ = get(f"{base}/topics/beatrice.atom")
    assert get(f"{base}/topics/beatrice.atom", {"If-None-Match": headers["etag"]})[0] == 304
    assert get(f"{base}/topics/nope.rss")[0] == 404
    index = get(f"{base}/")[2].decode()
    assert f"{base}/topics/beatrice.rss" in index and "Princess Beatrice" in index

    # re-poll: the later captures replace the earlier ones
    for path, (_, later) in FEEDS.items():
        server.routes[path] = REAL / later
    expected = len(first) + NEW_IN_LATER
    after = wait_for(
        lambda: len(items(base, "everything")) >= expected and items(base, "everything"), 120, "the re-poll"
    )
    time.sleep(REVALIDATE + 0.2)
    later_ids = [entry["id"] for entry in after]
    assert len(later_ids) == len(set(later_ids)) == expected, "re-poll duplicated or lost items"
    assert set(ids) <= set(later_ids), "an item changed its id"
    assert server.hits["/cnn.xml"] >= 2  # unchanged feeds are re-polled too (answered 304)
    outlets = {entry["_aggregator"]["source"] for entry in items(base, "beatrice")}
    assert outlets == {"bbc", "cnn", "smh", "dailymail"}

    # a clean stop on SIGTERM
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"{base}/topics/beatrice.rss" in out
    assert "Traceback" not in err
    assert "latimes" in err and "not a feed" in err  # the broken source was logged, the rest served


def test_offline_sources_fail_cleanly_and_feeds_still_serve(tmp_path: Path, feed_server: FeedServer) -> None:
    closed = free_port()  # nothing listens there: connection refused, like a machine with no network
    port = free_port()
    config = write_config(
        tmp_path,
        feed_server,
        port,
        [("up", f"http://127.0.0.1:{closed}/rss"), ("bbc", f"http://127.0.0.1:{closed}/bbc")],
    )
    process = start(config, "run")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/healthz")[0] == 200, 30, "the web server")
        assert get(f"{base}/")[0] == 200
        for fmt in ("rss", "atom", "json"):
            status, _, body = get(f"{base}/topics/beatrice.{fmt}")
            assert status == 200 and body
        time.sleep(2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "sources", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("error") >= 2 and "refused" in done.stdout
