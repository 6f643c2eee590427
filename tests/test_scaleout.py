"""Several `worker` processes on one PostgreSQL database, run as an operator runs them: every source is
polled once per due period across the workers (never twice, none missed), the store ends up with what a
single process stores, and a worker killed with SIGKILL while it holds leases loses nothing."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, PeriodFeeds, postgres_database, postgres_unreachable
from pgcluster import (
    Daemon,
    cli,
    daemons,
    expected,
    exported,
    fleet_config,
    polled_since,
    published,
    stop_cleanly,
    wait_until,
)

FEEDS = 300
INTERVAL = 15.0  # seconds between polls of a source (300 sources: 20 polls a second)
PERIODS = 1  # due periods (each one changes a third of the feeds) before the last one
JITTER = 0.1  # schedule.JITTER: each wait is the interval ±10 %
LAG = 0.6 * INTERVAL  # how late a poll may start on a busy machine; a missed period is a whole interval


@pytest.fixture
def pg_urls() -> Iterator[list[str]]:
    """Two empty databases of their own on the local PostgreSQL."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as first, postgres_database() as second:
        yield [first, second]


def assert_once_per_period(feeds: PeriodFeeds, group: str, began: float) -> None:
    """Per source, the gaps between polls: never under the shortest jittered interval (two polls in one
    period), never over the longest plus the lag a busy machine adds (a period missed). A failure shows
    the gaps of every source too: all of them long means an overloaded machine, one long a lost poll."""
    polls = {n: [r.started for r in requests] for n, requests in feeds.delivered(group).items()}
    gaps = {n: [b - a for a, b in itertools.pairwise(starts)] for n, starts in polls.items()}
    every = sorted(g for source in gaps.values() for g in source)
    spread = f"all gaps: p50 {every[len(every) // 2]:.1f} s, p90 {every[len(every) * 9 // 10]:.1f} s"
    for n, starts in polls.items():
        assert starts[0] - began < 2 * INTERVAL, (group, n, "first poll late", starts[0] - began, spread)
        assert min(gaps[n]) >= (1 - JITTER) * INTERVAL - 0.3, (group, n, "polled twice", gaps[n], spread)
        assert max(gaps[n]) <= (1 + JITTER) * INTERVAL + LAG, (group, n, "missed a period", gaps[n], spread)


def test_three_workers_poll_each_source_once_per_period_and_store_what_one_process_stores(
    tmp_path: Path, pg_urls: list[str]
) -> None:
    feeds = PeriodFeeds(FEEDS, every=3)  # a third of the feeds gain an entry each period, 304 for the rest
    fleet, single = (
        fleet_config(
            tmp_path,
            f"{name}.yaml",
            url,
            [feeds.url(n, name) for n in range(FEEDS)],
            interval=INTERVAL,
            lease=60,
        )
        for name, url in zip(("fleet", "single"), pg_urls, strict=True)
    )
    try:
        for config in (fleet, single):
            cli(tmp_path, "db", "upgrade", "--config", config)
        with daemons() as running:
            began = time.monotonic()  # all three start at once, as systemd would start them
            running += [Daemon(tmp_path, "worker", fleet, f"w{i}", ready=False) for i in range(3)]
            for _ in range(PERIODS):
                time.sleep(INTERVAL)
                feeds.advance()
            last = time.monotonic()
            wait_until(polled_since(feeds, "fleet", last), 2 * INTERVAL, "every source is polled")
            stop_cleanly(running)
        cli(tmp_path, "fetch", "--all", "--config", single)  # one process, the feeds as they are now
    finally:
        feeds.close()
    assert feeds.overlaps == [], "polled while a poll of the same source was in flight"
    assert_once_per_period(feeds, "fleet", began)
    agents = Counter(r.agent for requests in feeds.delivered("fleet").values() for r in requests)
    assert set(agents) == {"w0", "w1", "w2"}
    assert min(agents.values()) >= 0.1 * agents.total(), agents  # every worker takes a share
    items = exported(tmp_path, fleet)
    assert published(items) == expected(feeds, feeds.period)
    assert items == exported(tmp_path, single)


KILL_FEEDS, LEASE = 60, 6.0


def test_a_killed_workers_sources_are_polled_by_the_others_once_its_leases_expire(
    tmp_path: Path, pg_urls: list[str]
) -> None:
    feeds = PeriodFeeds(KILL_FEEDS)
    feeds.held.add("victim")  # its polls hang until it is killed: it dies holding leases
    config = fleet_config(
        tmp_path,
        "fleet.yaml",
        pg_urls[0],
        [feeds.url(n) for n in range(KILL_FEEDS)],
        interval=600,
        lease=LEASE,
        timeout=5,
    )
    try:
        cli(tmp_path, "db", "upgrade", "--config", config)
        with daemons() as running:
            running.append(Daemon(tmp_path, "worker", config, "victim", ready=False))
            wait_until(lambda: len(feeds.log_of("victim")) >= 4, 30, "the victim has four polls in flight")
            running += [Daemon(tmp_path, "worker", config, name, ready=False) for name in ("w0", "w1")]
            running[0].kill()  # while its polls hang (before they time out) and it holds its claims
            claimed = min(r.started for r in feeds.log_of("victim"))
            killed = time.monotonic()
            wait_until(
                polled_since(feeds, "feeds", 0),
                claimed + LEASE + 30 - time.monotonic(),
                "every source is polled",
            )
            time.sleep(2)  # a second poll of anything would come now (the interval is 10 minutes)
            stop_cleanly(running[1:])
    finally:
        feeds.close()
    victims = {r.source for r in feeds.log_of("victim")}
    assert len(victims) >= 4
    assert {n for _, n in feeds.overlaps} <= victims  # only the victim's hung requests were still open
    polls = {n: [r for r in requests if r.agent != "victim"] for n, requests in feeds.delivered().items()}
    assert all(len(requests) == 1 for requests in polls.values()), polls  # once, by a survivor
    for n in victims:
        [retry] = polls[n]
        assert retry.agent in {"w0", "w1"}
        assert retry.started >= claimed + LEASE - 1.5, (
            "taken before the lease expired",
            retry.started - claimed,
        )
        assert retry.started <= killed + LEASE + 20, "not taken soon after the lease expired"
    items = exported(tmp_path, config)
    assert published(items) == expected(feeds, 0)


def test_the_per_host_limit_holds_across_three_workers(tmp_path: Path, pg_urls: list[str]) -> None:
    feeds = PeriodFeeds(30, delay=0.2)  # one host, per_host 2
    feeds.held.add("w0")  # the first worker's two polls hang: the host is full for everyone
    config = fleet_config(
        tmp_path,
        "fleet.yaml",
        pg_urls[0],
        [feeds.url(n) for n in range(30)],
        interval=600,
        lease=60,
        timeout=30,
        per_host=2,
    )
    try:
        cli(tmp_path, "db", "upgrade", "--config", config)
        with daemons() as running:
            running.append(Daemon(tmp_path, "worker", config, "w0", ready=False))
            wait_until(lambda: len(feeds.log_of("w0")) == 2, 30, "w0 has two polls in flight")
            running += [Daemon(tmp_path, "worker", config, f"w{i}") for i in (1, 2)]
            time.sleep(2.5)  # two ticks of theirs: each would send 2 requests with only its own limit
            assert [r.agent for r in feeds.log] == ["w0", "w0"]
            feeds.release.set()
            wait_until(polled_since(feeds, "feeds", 0), 60, "every source is polled")
            stop_cleanly(running)
    finally:
        feeds.close()
    assert feeds.peak == 2  # 3 workers x 4 threads could have had 12 in flight
    assert all(len(requests) == 1 for requests in feeds.delivered().values())


def test_the_workers_benchmark_runs_and_says_where_the_bottleneck_is() -> None:
    """Keeps bench/workers.py from rotting (3 feeds; no timings asserted)."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    args = ["--feeds", "3", "--workers", "1,2", "--claim-sources", "200"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "workers.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Claim latency: 200 due sources" in done.stdout
    assert "the workers' Python is the first limit" in done.stdout
    assert "meet the claim first" in done.stdout
    for phase in ("cold", "304"):
        assert re.search(rf"│ {phase}\s+│\s+2 │", done.stdout), done.stdout
