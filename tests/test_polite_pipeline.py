"""Polite polling end to end: pipeline.poll_source with the real fetcher against servers on 127.0.0.1 and
a real SQLite store. 304 and identical-body short cuts, redirects (301/308 confirmed, 302 never kept),
410 retirement, Retry-After, backoff growth / cap / reset, the schedule's reasons, the poll history, and
one misbehaving source never holding up the others."""

from __future__ import annotations

import functools
import gzip
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import REAL
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker

import aggregator.pipeline
import aggregator.stages
import aggregator.store.repo
from aggregator import store
from aggregator.fetch import fetch, make_session
from aggregator.model import ParsedFeed, Source
from aggregator.parse import parse_feed
from aggregator.pipeline import Context, poll_source

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
RSS = "application/rss+xml"


def feed(count: int = 3, every: timedelta = HOUR, *, extra: str = "", title: str = "T") -> bytes:
    items = "".join(
        f"<item><guid>g{i}</guid><title>{title} {i}</title>"
        f"<pubDate>{format_datetime(NOW - every * i)}</pubDate></item>"
        for i in range(count)
    )
    return f'<rss version="2.0"><channel><title>T</title>{extra}{items}</channel></rss>'.encode()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = make_session()
    yield session
    session.close()


def context(sessions: sessionmaker[Session], http: requests.Session, *sources: Source) -> Context:
    ctx = Context.build(sources, [], sessions, functools.partial(fetch, http))
    with sessions.begin() as s:
        store.sync_sources(s, sources, NOW)
    return ctx


def health(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions.begin() as s:
        return {h.name: h for h in store.source_health(s)}


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the documents the pipeline parses (the real parser still runs)."""
    calls: list[str] = []
    real = aggregator.stages.parse_feed

    def counting(body: bytes, **kw: Any) -> ParsedFeed:
        calls.append(kw["url"])
        return real(body, **kw)

    monkeypatch.setattr(aggregator.stages, "parse_feed", counting)
    return calls


# --- conditional GET and unchanged bodies ----------------------------------------------------------


def test_304_round_trip_updates_validators_without_parsing(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer, parses: list[str]
) -> None:
    modified = "Tue, 01 Sep 2026 10:00:00 GMT"
    httpserver.expect_oneshot_request("/feed").respond_with_data(
        feed(), content_type=RSS, headers={"ETag": '"v1"', "Last-Modified": modified}
    )
    httpserver.expect_oneshot_request(
        "/feed", headers={"If-None-Match": '"v1"', "If-Modified-Since": modified}
    ).respond_with_data("", status=304, headers={"ETag": '"v2"'})
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed")))
    assert poll_source(ctx, "pub", NOW).new == 3
    second = poll_source(ctx, "pub", NOW + HOUR)
    assert (second.status, second.http_status, second.bytes) == ("not_modified", 304, 0)
    assert len(parses) == 1
    with sessions.begin() as s:
        state = store.fetch_state(s, "pub")
    assert state is not None and (state.etag, state.last_modified) == ('"v2"', modified)
    row = health(sessions)["pub"]
    assert (row.status, row.last_http_status, row.last_entries) == ("ok", 304, 3)


def test_identical_body_without_validators_is_not_parsed_again(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer, parses: list[str]
) -> None:
    httpserver.expect_ordered_request("/feed").respond_with_data(feed(), content_type=RSS)
    httpserver.expect_ordered_request("/feed").respond_with_data(feed(), content_type=RSS)
    httpserver.expect_ordered_request("/feed").respond_with_data(feed(4), content_type=RSS)
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed")))
    assert poll_source(ctx, "pub", NOW).new == 3
    same = poll_source(ctx, "pub", NOW + HOUR)
    assert (same.status, same.http_status, same.new, same.bytes) == ("unchanged", 200, 0, len(feed()))
    assert len(parses) == 1
    changed = poll_source(ctx, "pub", NOW + 2 * HOUR)
    assert (changed.status, changed.new, changed.unchanged) == ("updated", 1, 3)
    assert len(parses) == 2


# --- redirects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 308])
def test_permanent_redirect_persisted_only_after_two_consecutive_polls(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer, code: int
) -> None:
    httpserver.expect_request("/old").respond_with_data("", status=code, headers={"Location": "/new"})
    httpserver.expect_request("/new").respond_with_data(feed(), content_type=RSS)
    old, new = httpserver.url_for("/old"), httpserver.url_for("/new")
    ctx = context(sessions, http, Source("pub", old))
    poll_source(ctx, "pub", NOW)
    with sessions.begin() as s:
        state = store.fetch_state(s, "pub")
    assert state is not None and (state.url, state.redirect_candidate) == (old, new)  # seen once: a candidate
    assert health(sessions)["pub"].effective_url is None
    poll_source(ctx, "pub", NOW + HOUR)
    row = health(sessions)["pub"]
    assert (row.url, row.effective_url) == (old, new)
    assert row.url_reason == f"moved permanently (HTTP {code}) from {old}, confirmed on 2 consecutive polls"
    poll_source(ctx, "pub", NOW + 2 * HOUR)
    assert [r.path for r, _ in httpserver.log] == ["/old", "/new", "/old", "/new", "/new"]
    # the operator's YAML is never rewritten; changing the URL there starts afresh
    with sessions.begin() as s:
        store.sync_sources(s, [Source("pub", httpserver.url_for("/other"))], NOW)
    assert health(sessions)["pub"].effective_url is None


def test_a_permanent_redirect_seen_once_then_gone_is_forgotten(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    httpserver.expect_ordered_request("/old").respond_with_data("", status=301, headers={"Location": "/new"})
    httpserver.expect_ordered_request("/new").respond_with_data(feed(), content_type=RSS)
    httpserver.expect_ordered_request("/old").respond_with_data(feed(), content_type=RSS)
    httpserver.expect_ordered_request("/old").respond_with_data("", status=301, headers={"Location": "/new"})
    httpserver.expect_ordered_request("/new").respond_with_data(feed(), content_type=RSS)
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/old")))
    for hour in range(3):
        poll_source(ctx, "pub", NOW + hour * HOUR)
    assert health(sessions)["pub"].effective_url is None  # not consecutive: a candidate again, not moved


def test_temporary_redirect_is_followed_but_never_persisted(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    for code in (302, 307, 302):
        httpserver.expect_ordered_request("/feed").respond_with_data(
            "", status=code, headers={"Location": "/mirror"}
        )
        httpserver.expect_ordered_request("/mirror").respond_with_data(feed(), content_type=RSS)
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed")))
    for hour in range(3):
        assert poll_source(ctx, "pub", NOW + hour * HOUR).ok
    assert health(sessions)["pub"].effective_url is None
    with sessions.begin() as s:
        state = store.fetch_state(s, "pub")
    assert state is not None and state.redirect_candidate is None


def test_redirect_loop_is_an_error(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data("", status=301, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", status=301, headers={"Location": "/a"})
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/a")))
    outcome = poll_source(ctx, "pub", NOW)
    assert outcome.error == f"source 'pub': too many redirects (more than 5) from {httpserver.url_for('/a')}"
    assert health(sessions)["pub"].effective_url is None


# --- 410, 429, 503 -----------------------------------------------------------------------------------


def test_410_retires_the_source_until_the_operator_changes_it(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/feed").respond_with_data("gone", status=410)
    source = Source("pub", httpserver.url_for("/feed"))
    ctx = context(sessions, http, source)
    outcome = poll_source(ctx, "pub", NOW)
    assert outcome.retired and outcome.status == "error" and outcome.http_status == 410
    assert outcome.error is not None and outcome.error.endswith(
        "; the source is retired: it is not polled again until its URL changes in the config"
    )
    row = health(sessions)["pub"]
    assert (row.status, row.retired, row.due_reason) == ("retired", True, "retired: HTTP 410 Gone")
    with sessions.begin() as s:
        assert store.claim_due_sources(s, NOW + timedelta(days=365), lease=HOUR) == []
        store.sync_sources(s, [source], NOW)  # a restart with the same config: still retired
    assert health(sessions)["pub"].status == "retired"
    with sessions.begin() as s:
        store.sync_sources(s, [Source("pub", httpserver.url_for("/feed2"))], NOW)
        assert store.claim_due_sources(s, NOW, lease=HOUR) == ["pub"]
    assert health(sessions)["pub"].status == "new"  # a new URL starts afresh


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_sets_the_next_poll(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer, code: int, form: str
) -> None:
    wait = timedelta(hours=3)
    value = str(int(wait.total_seconds())) if form == "seconds" else format_datetime(NOW + wait, usegmt=True)
    httpserver.expect_request("/feed").respond_with_data("busy", status=code, headers={"Retry-After": value})
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed"), interval=timedelta(minutes=10)))
    outcome = poll_source(ctx, "pub", NOW)
    assert (outcome.http_status, outcome.due_reason) == (code, "Retry-After: 3h")
    assert NOW + wait <= outcome.next_due <= NOW + wait * 1.1
    row = health(sessions)["pub"]
    assert (row.status, row.next_due) == ("backing off", outcome.next_due)


# --- backoff and the schedule ----------------------------------------------------------------------


def test_backoff_grows_caps_and_resets(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    source = Source("pub", httpserver.url_for("/feed"), interval=timedelta(hours=4))
    ctx = context(sessions, http, source)
    for _ in range(5):
        httpserver.expect_ordered_request("/feed").respond_with_data("down", status=502)
    httpserver.expect_ordered_request("/feed").respond_with_data(feed(), content_type=RSS)
    waits, reasons = [], []
    for attempt in range(5):
        now = NOW + attempt * timedelta(days=1)
        outcome = poll_source(ctx, "pub", now)
        waits.append(outcome.next_due - now)
        reasons.append(outcome.due_reason)
    assert waits[0] < waits[1] < waits[2] <= waits[3] * 1.25  # 4h, 8h, 16h, then the 24h cap
    assert reasons[:3] == [
        "backoff after 1 error: 4h",
        "backoff after 2 errors: 8h",
        "backoff after 3 errors: 16h",
    ]
    assert (
        reasons[3]
        == reasons[4].replace("5 errors", "4 errors")
        == ("backoff after 4 errors: 1d (the cap; keeps probing every 1d)")
    )
    assert timedelta(hours=21.6) <= waits[4] <= timedelta(hours=26.4)  # still probed at the cap
    assert health(sessions)["pub"].error_count == 5
    ok = poll_source(ctx, "pub", NOW + timedelta(days=6))
    assert ok.ok and health(sessions)["pub"].error_count == 0
    assert ok.due_reason is not None and "backoff" not in ok.due_reason


def test_feed_ttl_and_cache_control_set_the_schedule_and_survive_a_304(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    httpserver.expect_ordered_request("/feed").respond_with_data(
        feed(extra="<ttl>120</ttl>"), content_type=RSS, headers={"ETag": '"a"'}
    )
    httpserver.expect_ordered_request("/feed").respond_with_data("", status=304, headers={"ETag": '"a"'})
    httpserver.expect_ordered_request("/feed").respond_with_data(
        "", status=304, headers={"ETag": '"a"', "Cache-Control": "max-age=14400"}
    )
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed"), interval=timedelta(minutes=15)))
    assert poll_source(ctx, "pub", NOW).due_reason == "feed ttl 2h"
    assert poll_source(ctx, "pub", NOW + HOUR).due_reason == "feed ttl 2h"  # remembered across a 304
    assert poll_source(ctx, "pub", NOW + 2 * HOUR).due_reason == "Cache-Control max-age 4h"
    assert health(sessions)["pub"].due_reason == "Cache-Control max-age 4h"


def test_adaptive_schedule_from_stored_posting_times(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/busy").respond_with_data(feed(10, timedelta(minutes=8)), content_type=RSS)
    httpserver.expect_request("/quiet").respond_with_data(feed(10, timedelta(days=7)), content_type=RSS)
    interval = timedelta(minutes=30)
    ctx = context(
        sessions,
        http,
        Source("busy", httpserver.url_for("/busy"), interval=interval),
        Source("quiet", httpserver.url_for("/quiet"), interval=interval),
    )
    busy, quiet = poll_source(ctx, "busy", NOW), poll_source(ctx, "quiet", NOW)
    assert busy.due_reason == "adaptive: posts every ~8m (median of 9 gaps)"
    assert quiet.due_reason == "adaptive: posts every ~7d (median of 9 gaps)"
    assert busy.next_due < NOW + interval < quiet.next_due


# --- history -----------------------------------------------------------------------------------------


def test_every_poll_is_recorded_in_a_bounded_history(
    sessions: sessionmaker[Session],
    http: requests.Session,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregator.store.repo, "HISTORY_LIMIT", 4)
    httpserver.expect_ordered_request("/feed").respond_with_data(feed(2), content_type=RSS)
    httpserver.expect_ordered_request("/feed").respond_with_data("boom", status=500)
    httpserver.expect_ordered_request("/feed").respond_with_data(feed(3, title="Changed"), content_type=RSS)
    for _ in range(3):
        httpserver.expect_ordered_request("/feed").respond_with_data(
            feed(3, title="Changed"), content_type=RSS
        )
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed")))
    for hour in range(3):
        poll_source(ctx, "pub", NOW + hour * HOUR)
    with sessions.begin() as s:
        first3 = store.poll_history(s, "pub")
    assert [(p.status, p.http_status, p.new, p.updated, p.unchanged) for p in first3] == [
        ("updated", 200, 1, 2, 0),
        ("error", 500, 0, 0, 0),
        ("updated", 200, 2, 0, 0),
    ]
    assert first3[0].bytes == len(feed(3, title="Changed")) and first3[0].entries == 3
    assert (
        first3[1].error == f"source 'pub': HTTP 500 Internal Server Error from {httpserver.url_for('/feed')}"
    )
    assert first3[1].next_due_reason == "backoff after 1 error: 30m"
    assert all(p.duration >= 0 for p in first3) and first3[2].at == NOW
    for hour in range(3, 6):
        poll_source(ctx, "pub", NOW + hour * HOUR)
    with sessions.begin() as s:
        kept = store.poll_history(s, "pub")
    assert [p.at for p in kept] == [NOW + h * HOUR for h in (5, 4, 3, 2)]  # the newest 4


# --- HTML instead of a feed --------------------------------------------------------------------------


def test_html_error_page_is_a_clear_error(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    page = REAL / "latimes-403-cloudfront.html"
    body = (
        page.read_bytes() if page.is_file() else b"<!DOCTYPE html><html><body>Request blocked</body></html>"
    )
    httpserver.expect_request("/feed").respond_with_data(body, content_type="text/html")
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/feed")))
    outcome = poll_source(ctx, "pub", NOW)
    assert outcome.error == f"source 'pub': not a feed: got text/html from {httpserver.url_for('/feed')}"


def test_html_page_linking_a_feed_says_which_url_to_use(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer
) -> None:
    page = (
        b'<!DOCTYPE html><html><head><link rel="alternate" type="application/rss+xml" href="/rss.xml">'
        b"</head><body>News</body></html>"
    )
    httpserver.expect_request("/").respond_with_data(page, content_type="text/html; charset=utf-8")
    ctx = context(sessions, http, Source("pub", httpserver.url_for("/")))
    outcome = poll_source(ctx, "pub", NOW)
    assert outcome.error == (
        f"source 'pub': not a feed: got text/html from {httpserver.url_for('/')}; "
        f"the page links a feed at {httpserver.url_for('/rss.xml')}"
    )


# --- one bad source never holds up the others --------------------------------------------------------


class Drip:
    """Accepts connections, sends headers, then one byte every 0.2 s until the client goes away."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.drip, args=(conn,), daemon=True).start()

    def drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: 999\r\n\r\n"
                )
                for _ in range(100):
                    if self.stop.wait(0.2):
                        return
                    conn.sendall(b"<")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_misbehaving_source_never_breaks_or_delays_the_others(
    sessions: sessionmaker[Session], http: requests.Session, httpserver: HTTPServer, tmp_path: Path
) -> None:
    drip = Drip()
    try:
        httpserver.expect_request("/good").respond_with_data(feed(), content_type=RSS)
        httpserver.expect_request("/gone").respond_with_data("", status=410)
        httpserver.expect_request("/html").respond_with_data(b"<html>hi</html>", content_type="text/html")
        httpserver.expect_request("/bomb").respond_with_data(
            gzip.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "gzip"}
        )
        sources = [
            Source("drip", f"http://127.0.0.1:{drip.port}/feed", timeout=1.0),
            Source("gone", httpserver.url_for("/gone")),
            Source("html", httpserver.url_for("/html")),
            Source("bomb", httpserver.url_for("/bomb"), max_bytes=100_000),
            Source("good-1", httpserver.url_for("/good")),
            Source("good-2", httpserver.url_for("/good") + "?b"),
        ]
        ctx = context(sessions, http, *sources)
        with ThreadPoolExecutor(max_workers=2) as pool:  # fewer threads than sources: a real queue
            outcomes = {o.source: o for o in pool.map(lambda s: poll_source(ctx, s.name, NOW), sources)}
    finally:
        drip.close()
    assert outcomes["drip"].error is not None and "deadline exceeded" in outcomes["drip"].error
    assert outcomes["gone"].retired
    assert outcomes["html"].error is not None and "not a feed" in outcomes["html"].error
    assert outcomes["bomb"].error is not None and "exceeds 100000 bytes" in outcomes["bomb"].error
    assert outcomes["good-1"].new == outcomes["good-2"].new == 3
    rows = health(sessions)
    assert {n: rows[n].status for n in rows} == {
        "drip": "erroring",
        "gone": "retired",
        "html": "erroring",
        "bomb": "erroring",
        "good-1": "ok",
        "good-2": "ok",
    }


# --- the feed's own timing hints, as parse.py exposes them -------------------------------------------


@pytest.mark.parametrize(
    ("channel", "ttl", "every"),
    [
        ("<ttl>45</ttl>", timedelta(minutes=45), None),
        (
            "<sy:updatePeriod>hourly</sy:updatePeriod><sy:updateFrequency>2</sy:updateFrequency>",
            None,
            HOUR / 2,
        ),
        ("<sy:updatePeriod> Daily </sy:updatePeriod>", None, timedelta(days=1)),
        ("<ttl>soon</ttl><sy:updatePeriod>sometimes</sy:updatePeriod>", None, None),
        (
            "<ttl>0</ttl><sy:updatePeriod>weekly</sy:updatePeriod><sy:updateFrequency>x</sy:updateFrequency>",
            None,
            timedelta(days=7),
        ),
    ],
)
def test_feed_timing_hints_are_parsed(channel: str, ttl: timedelta | None, every: timedelta | None) -> None:
    body = (
        '<rss version="2.0" xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"><channel><title>T</title>'
        f"{channel}<item><guid>1</guid><title>x</title></item></channel></rss>"
    ).encode()
    meta = parse_feed(body, url="http://127.0.0.1/feed").meta
    assert (meta.ttl, meta.update_every) == (ttl, every)


# --- one document at a time, parsed and stored ---------------------------------------------------------


def overlaps_of_parse_and_store(
    sessions: sessionmaker[Session],
    http: requests.Session,
    httpserver: HTTPServer,
    stages: aggregator.stages.Stages,
    prefix: str,
) -> int:
    """Polls 6 sources from 6 threads; how many parses ran while another poll's store transaction ran
    (each parse and store slowed down by 30 ms, so that overlapping ones would)."""
    storing, overlaps, lock = [0], [0], threading.Lock()
    real_parse, real_save = aggregator.stages.parse_feed, store.save_items

    def parse(body: bytes, **kw: Any) -> ParsedFeed:
        with lock:
            overlaps[0] += storing[0] > 0
        threading.Event().wait(0.03)
        with lock:
            overlaps[0] += storing[0] > 0
        return real_parse(body, **kw)

    def save(*args: Any) -> Any:  # inside the store transaction
        with lock:
            storing[0] += 1
        try:
            threading.Event().wait(0.03)
            return real_save(*args)
        finally:
            with lock:
                storing[0] -= 1

    sources = [Source(f"{prefix}{i}", httpserver.url_for(f"/{prefix}{i}")) for i in range(6)]
    for source in sources:
        httpserver.expect_request(f"/{source.name}").respond_with_data(
            feed(title=source.name), content_type=RSS
        )
    ctx = context(sessions, http, *sources)
    ctx = Context(**{**ctx.__dict__, "stages": stages})
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(max_workers=6) as pool:
        patch.setattr(aggregator.stages, "parse_feed", parse)
        patch.setattr(store, "save_items", save)
        outcomes = list(pool.map(lambda s: poll_source(ctx, s.name, NOW), sources))
    assert [o.new for o in outcomes] == [3] * 6
    return overlaps[0]


def test_with_one_writer_a_document_is_parsed_or_stored_never_both(
    sessions: sessionmaker[Session],
    http: requests.Session,
    httpserver: HTTPServer,
) -> None:
    """SQLite (one writer), parsing in the threads: parse and store share one slot, so the GIL is not
    passed between a parser and the writer at every SQLite call; with several writers (PostgreSQL) a
    parse overlaps another poll's store, as it did before (so the count below can tell the two apart)."""
    serial = aggregator.stages.Stages(parsers=1, writers=1)
    assert overlaps_of_parse_and_store(sessions, http, httpserver, serial, "a") == 0
    parallel = aggregator.stages.Stages(parsers=1, writers=6)
    assert overlaps_of_parse_and_store(sessions, http, httpserver, parallel, "b") > 0
