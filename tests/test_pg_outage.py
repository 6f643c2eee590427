"""A PostgreSQL outage under a running `worker` and `serve`: a private cluster is restarted, then stopped
and started again after a gap. Both processes keep running, the polls that failed are made again, no
item is lost or doubled, and `serve` answers again once the database is back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PeriodFeeds, free_port
from pgcluster import (
    Cluster,
    Daemon,
    cli,
    cluster_unavailable,
    daemons,
    expected,
    exported,
    fleet_config,
    polled_since,
    private_cluster,
    published,
    stop_cleanly,
    wait_until,
)

FEEDS, INTERVAL, LEASE = 20, 3.0, 4.0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = cluster_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with private_cluster() as started:
        yield started


def feed_ids(url: str) -> list[str] | None:
    """The item ids of a JSON Feed, or None when the server does not answer 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return [item["id"].removeprefix("urn:uuid:") for item in json.load(response)["items"]]
    except (urllib.error.URLError, OSError):
        return None


def serving(topic: str, feeds: PeriodFeeds) -> Callable[[], bool]:
    """Whether serve answers the topic feed with every entry published so far."""
    total = expected(feeds, feeds.period).total()
    return lambda: len(feed_ids(topic) or []) == total


def test_worker_and_serve_ride_out_a_postgresql_restart_and_a_stop_with_a_gap(
    tmp_path: Path, cluster: Cluster
) -> None:
    feeds = PeriodFeeds(FEEDS)
    port = free_port()
    config = fleet_config(
        tmp_path,
        "outage.yaml",
        cluster.url,
        [feeds.url(n) for n in range(FEEDS)],
        interval=INTERVAL,
        lease=LEASE,
        timeout=2,
        server=f"{{host: 127.0.0.1, port: {port}}}",
    )
    topic = f"http://127.0.0.1:{port}/topics/everything.json"
    try:
        cli(tmp_path, "db", "upgrade", "--config", config)
        with daemons() as running:
            running += [Daemon(tmp_path, "worker", config, "w0"), Daemon(tmp_path, "serve", config, "web")]
            wait_until(serving(topic, feeds), 30, "serve shows every item of period 0")

            feeds.advance()
            cluster.restart()
            wait_until(serving(topic, feeds), 30, "serve shows every item of period 1 after the restart")
            assert all(d.alive() for d in running), [d.output()[-2000:] for d in running]

            feeds.advance()
            cluster.stop()
            time.sleep(2 * INTERVAL)  # polls fail (the claim, or the store after the fetch)
            assert all(d.alive() for d in running), [d.output()[-2000:] for d in running]
            cluster.start()
            feeds.advance()
            back = time.monotonic()
            wait_until(polled_since(feeds, "feeds", back), 30, "every source is polled after the gap")
            wait_until(serving(topic, feeds), 30, "serve shows every item of period 3 after the gap")
            assert all(d.alive() for d in running), [d.output()[-2000:] for d in running]
            items = exported(tmp_path, config)
            assert sorted(feed_ids(topic) or []) == sorted(items)
            stop_cleanly(running)  # the polls caught by the outage log one line each, no traceback
            log = running[0].output()
    finally:
        feeds.close()
    assert published(items) == expected(feeds, feeds.period)
    assert "could not store the poll" in log or "could not claim" in log  # the outage was felt
