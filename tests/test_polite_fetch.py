"""Polite and hostile-server-proof fetching on real HTTP at 127.0.0.1: status handling (410, 429, 503 with
both Retry-After forms), compression and bombs, the private-address refusal (pure check on literal
addresses; the integration test treats loopback itself as disallowed), basic auth, per-host limits."""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import brotli
import pytest
import requests
from conftest import GATE_FEED, GateServer
from pytest_httpserver import HTTPServer

from aggregator import fetch as fetch_module
from aggregator.errors import FetchError
from aggregator.fetch import (
    HostLimits,
    HTTPStatusError,
    address_allowed,
    fetch,
    host_key,
    make_session,
)
from aggregator.model import Source

FEED = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = make_session(pool_size=4)
    yield s
    s.close()


def src(url: str, name: str = "pub", **kw: object) -> Source:
    return Source(name=name, url=url, **kw)  # type: ignore[arg-type]


# --- status codes ----------------------------------------------------------------------------------


def test_410_is_an_error_with_its_status(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data("gone", status=410)
    with pytest.raises(HTTPStatusError) as info:
        fetch(session, src(httpserver.url_for("/feed")))
    assert info.value.status == 410 and info.value.retry_after is None
    assert str(info.value) == f"source 'pub': HTTP 410 Gone from {httpserver.url_for('/feed')}"


@pytest.mark.parametrize(
    ("status", "value"),
    [
        (429, "120"),
        (503, "Wed, 21 Oct 2037 07:28:00 GMT"),
        (429, "Wed, 21 Oct 2037 07:28:00 GMT"),
        (503, "7"),
    ],
)
def test_429_and_503_carry_retry_after_in_both_forms(
    httpserver: HTTPServer, session: requests.Session, status: int, value: str
) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        "slow down", status=status, headers={"Retry-After": value}
    )
    with pytest.raises(HTTPStatusError) as info:
        fetch(session, src(httpserver.url_for("/feed")))
    assert (info.value.status, info.value.retry_after) == (status, value)
    assert str(info.value).endswith(f"(Retry-After: {value})")


def test_retry_after_is_ignored_on_other_statuses(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data("x", status=500, headers={"Retry-After": "5"})
    with pytest.raises(HTTPStatusError) as info:
        fetch(session, src(httpserver.url_for("/feed")))
    assert info.value.retry_after is None


def test_retry_after_seconds_helper() -> None:
    now = time.time()
    assert fetch_module.retry_after_seconds("30", now) == 30.0
    assert fetch_module.retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0.0
    assert fetch_module.retry_after_seconds("later", now) is None
    assert fetch_module.retry_after_seconds(None, now) is None


# --- compression and bombs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress),
    ],
)
def test_compressed_bodies_are_decoded(
    httpserver: HTTPServer, session: requests.Session, coding: str, encode: object
) -> None:
    body = FEED * 50
    httpserver.expect_request("/feed").respond_with_data(encode(body), headers={"Content-Encoding": coding})  # type: ignore[operator]
    assert fetch(session, src(httpserver.url_for("/feed"))).body == body
    request, _ = httpserver.log[0]
    assert request.headers["Accept-Encoding"] == "gzip, deflate, br"


@pytest.mark.parametrize(("coding", "encode"), [("gzip", gzip.compress), ("br", brotli.compress)])
def test_decompression_bomb_is_cut(
    httpserver: HTTPServer, session: requests.Session, coding: str, encode: object
) -> None:
    bomb = encode(b"\0" * 50_000_000)  # type: ignore[operator]
    assert len(bomb) < 100_000  # small on the wire
    httpserver.expect_request("/feed").respond_with_data(bomb, headers={"Content-Encoding": coding})
    with pytest.raises(FetchError, match="response exceeds 1000000 bytes"):
        fetch(session, src(httpserver.url_for("/feed"), max_bytes=1_000_000))


def test_unsupported_and_corrupt_encodings(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_oneshot_request("/feed").respond_with_data(FEED, headers={"Content-Encoding": "zstd"})
    with pytest.raises(FetchError, match="unsupported Content-Encoding 'zstd'"):
        fetch(session, src(httpserver.url_for("/feed")))
    httpserver.expect_oneshot_request("/feed").respond_with_data(
        b"garbage", headers={"Content-Encoding": "br"}
    )
    with pytest.raises(FetchError, match="could not decode the compressed body"):
        fetch(session, src(httpserver.url_for("/feed")))


# --- private address ranges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "240.0.0.1",
        "not-an-address",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    assert not address_allowed(address)
    if address != "not-an-address":
        assert address_allowed(address, allow_private=True)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(address)  # a pure check on the literal: no traffic goes anywhere


def test_redirect_into_loopback_is_refused(httpserver: HTTPServer, session: requests.Session) -> None:
    """The feed lives at http://localhost:PORT; it redirects to http://127.0.0.1:PORT, another host name
    for the same loopback server. Loopback is a disallowed range for redirects: refused, no second request."""
    target = httpserver.url_for("/internal").replace("localhost", "127.0.0.1")
    httpserver.expect_request("/feed").respond_with_data("", status=302, headers={"Location": target})
    httpserver.expect_request("/internal").respond_with_data(FEED)
    url = httpserver.url_for("/feed")
    with pytest.raises(FetchError) as info:
        fetch(session, src(url))
    assert str(info.value) == (
        f"source 'pub': redirect from {url} to {target} refused: 127.0.0.1 is a loopback, link-local or "
        "private address (set allow_private: true on the source if this is intended)"
    )
    assert [r.path for r, _ in httpserver.log] == ["/feed"]
    # allowed when the source says so
    assert fetch(session, src(url, allow_private=True)).body == FEED


def test_redirect_refused_at_connect_time_too(
    httpserver: HTTPServer, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the name check (as when DNS answers differently at connect time), the connection itself
    checks the peer address and is closed before a byte is sent."""
    monkeypatch.setattr(fetch_module, "_refuse_private", lambda *args: None)
    target = httpserver.url_for("/internal").replace("localhost", "127.0.0.1")
    httpserver.expect_request("/feed").respond_with_data("", status=301, headers={"Location": target})
    httpserver.expect_request("/internal").respond_with_data(FEED)
    with pytest.raises(FetchError, match=r"to .*/internal refused: 127\.0\.0\.1 is a loopback"):
        fetch(session, src(httpserver.url_for("/feed")))
    assert [r.path for r, _ in httpserver.log] == ["/feed"]


def test_same_host_redirect_needs_no_permission(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data("", status=301, headers={"Location": "/moved"})
    httpserver.expect_request("/moved").respond_with_data(FEED)
    assert fetch(session, src(httpserver.url_for("/feed"))).body == FEED


# --- basic auth ------------------------------------------------------------------------------------


def test_basic_auth_sent_to_the_source_host_only(httpserver: HTTPServer, session: requests.Session) -> None:
    other = httpserver.url_for("/b").replace("localhost", "127.0.0.1")
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": other})
    httpserver.expect_request("/b").respond_with_data(FEED)
    fetch(session, src(httpserver.url_for("/a"), auth=("reader", "s3cret:x"), allow_private=True))
    (first, _), (second, _) = httpserver.log
    assert first.headers["Authorization"] == "Basic " + base64.b64encode(b"reader:s3cret:x").decode()
    assert "Authorization" not in second.headers


# --- per-host limits -------------------------------------------------------------------------------


@pytest.fixture
def counting() -> Iterator[GateServer]:
    server = GateServer(hold=0.3)
    yield server
    server.close()


def test_per_host_concurrency_is_never_exceeded(counting: GateServer, session: requests.Session) -> None:
    limits = HostLimits(per_host=2)
    sources = [src(counting.url(f"/feed-{i}"), name=f"s{i}") for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda s: fetch(session, s, limits=limits), sources))
    assert all(r.body == GATE_FEED for r in results)
    assert len(counting.paths) == 8
    assert counting.peak == 2


def test_host_retry_after_holds_back_the_hosts_other_sources(httpserver: HTTPServer) -> None:
    session = make_session()
    limits = HostLimits(per_host=2)
    httpserver.expect_request("/a").respond_with_data("busy", status=429, headers={"Retry-After": "3600"})
    httpserver.expect_request("/b").respond_with_data(FEED)
    with pytest.raises(HTTPStatusError):
        fetch(session, src(httpserver.url_for("/a"), name="a"), limits=limits)
    with pytest.raises(
        HTTPStatusError,
        match=rf"source 'b': localhost:{httpserver.port} asked for a pause \(Retry-After\) until ",
    ):
        fetch(session, src(httpserver.url_for("/b"), name="b"), limits=limits)
    assert [r.path for r, _ in httpserver.log] == ["/a"]  # b's host was not contacted
    unheld = HostLimits(per_host=2, host_retry_after=False)
    unheld.hold(host_key(httpserver.url_for("/b")), "3600")
    assert fetch(session, src(httpserver.url_for("/b"), name="b"), limits=unheld).body == FEED
    session.close()


def test_the_per_host_limit_counts_host_and_port() -> None:
    assert host_key("http://Example.org/feed") == "example.org:80"
    assert host_key("https://example.org/feed") == "example.org:443"
    assert host_key("http://127.0.0.1:8081/a") == "127.0.0.1:8081" != host_key("http://127.0.0.1:8082/a")
    assert host_key("http://user:pw@[::1]:9000/a") == "::1:9000"


def test_two_ports_of_one_machine_are_two_hosts(session: requests.Session) -> None:
    servers = [GateServer(), GateServer()]  # each holds its requests until its gate opens
    limits = HostLimits(per_host=2)
    sources = [src(servers[i % 2].url(f"/feed-{i}"), name=f"s{i}") for i in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            jobs = [pool.submit(fetch, session, s, limits=limits) for s in sources]
            for server in servers:
                server.wait_for(2)
            in_flight = [server.active for server in servers]  # 2 at each port at the same time
            for server in servers:
                server.gate.set()
            results = [job.result() for job in jobs]
    finally:
        for server in servers:
            server.close()
    assert in_flight == [2, 2]
    assert all(r.body == GATE_FEED for r in results)
    assert [server.peak for server in servers] == [2, 2]
