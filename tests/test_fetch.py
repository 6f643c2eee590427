"""fetch.py on real HTTP at 127.0.0.1 (pytest-httpserver, a tiny threaded socket server) and real files."""

from __future__ import annotations

import gzip
import http.server
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from aggregator.errors import FetchError
from aggregator.fetch import ACCEPT, describe_error, fetch, file_etag, make_session
from aggregator.model import DEFAULT_USER_AGENT, FetchState, Source

FEED = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = make_session(pool_size=2)
    yield s
    s.close()


def src(url: str, **kw: object) -> Source:
    return Source(name="bbc", url=url, **kw)  # type: ignore[arg-type]


# --- HTTP: success, validators, conditional GET ----------------------------------------------------


def test_200_with_validators(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        FEED,
        content_type="application/rss+xml",
        headers={"ETag": 'W/"v1"', "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT"},
    )
    url = httpserver.url_for("/feed")
    result = fetch(session, src(url))
    assert result.status == 200 and not result.not_modified
    assert result.body == FEED
    assert result.url == url
    assert result.etag == 'W/"v1"'
    assert result.last_modified == "Wed, 01 May 2024 10:00:00 GMT"
    assert result.headers["content-type"].startswith("application/rss+xml")
    assert result.redirects == ()


def test_conditional_request_and_304(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data("", status=304, headers={"ETag": 'W/"v2"'})
    state = FetchState(
        url=httpserver.url_for("/feed"), etag='W/"v1"', last_modified="Wed, 01 May 2024 10:00:00 GMT"
    )
    result = fetch(session, src("http://unused.invalid/"), state)
    assert result.not_modified and result.body == b""
    assert result.etag == 'W/"v2"'  # the server's new validator wins
    assert result.last_modified == "Wed, 01 May 2024 10:00:00 GMT"  # kept from the state
    request, _ = httpserver.log[0]
    assert request.headers["If-None-Match"] == 'W/"v1"'
    assert request.headers["If-Modified-Since"] == "Wed, 01 May 2024 10:00:00 GMT"


def test_default_headers_without_state(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)
    fetch(session, src(httpserver.url_for("/feed")))
    request, _ = httpserver.log[0]
    assert "If-None-Match" not in request.headers and "If-Modified-Since" not in request.headers
    assert request.headers["Accept"] == ACCEPT
    assert request.headers["User-Agent"] == DEFAULT_USER_AGENT


def test_default_and_custom_headers_sent(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)
    headers = (("X-Token", "abc"), ("accept", "application/atom+xml"))
    source = src(httpserver.url_for("/feed"), user_agent="test-agent/1.0", headers=headers)
    fetch(session, source)
    request, _ = httpserver.log[0]
    assert request.headers["User-Agent"] == "test-agent/1.0"
    assert request.headers["X-Token"] == "abc"
    assert request.headers.getlist("Accept") == ["application/atom+xml"]  # the source's header wins
    assert request.headers["Accept-Encoding"] == "gzip, deflate, br"


def test_gzip_body_is_decoded(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        gzip.compress(FEED), headers={"Content-Encoding": "gzip"}
    )
    assert fetch(session, src(httpserver.url_for("/feed"))).body == FEED


def test_corrupt_gzip_is_a_fetch_error(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(
        b"not gzip at all", headers={"Content-Encoding": "gzip"}
    )
    with pytest.raises(FetchError, match="could not decode the compressed body"):
        fetch(session, src(httpserver.url_for("/feed")))


# --- HTTP errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "reason"), [(404, "Not Found"), (500, "Internal Server Error")])
def test_http_error_status(
    httpserver: HTTPServer, session: requests.Session, status: int, reason: str
) -> None:
    httpserver.expect_request("/feed").respond_with_data("nope", status=status)
    url = httpserver.url_for("/feed")
    with pytest.raises(FetchError) as info:
        fetch(session, src(url))
    assert info.value.status == status
    assert str(info.value) == f"source 'bbc': HTTP {status} {reason} from {url}"


def test_redirect_chain_recorded(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/a").respond_with_data("", status=301, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/c")}
    )
    httpserver.expect_request("/c").respond_with_data(FEED)
    result = fetch(session, src(httpserver.url_for("/a")))
    assert result.body == FEED
    assert result.url == httpserver.url_for("/c")
    assert result.redirects == ((301, httpserver.url_for("/b")), (302, httpserver.url_for("/c")))


def test_redirect_loop(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/loop").respond_with_data("", status=302, headers={"Location": "/loop"})
    with pytest.raises(FetchError, match="too many redirects"):
        fetch(session, src(httpserver.url_for("/loop")))
    assert len(httpserver.log) == 6  # the first request and five redirects


def test_redirect_to_file_url_refused(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/a").respond_with_data(
        "", status=302, headers={"Location": "file:///etc/passwd"}
    )
    with pytest.raises(FetchError, match="redirect to unsupported URL file:///etc/passwd"):
        fetch(session, src(httpserver.url_for("/a")))


def test_credentials_not_sent_to_another_host(httpserver: HTTPServer, session: requests.Session) -> None:
    other = httpserver.url_for("/b").replace("localhost", "127.0.0.1")
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": other})
    httpserver.expect_request("/b").respond_with_data(FEED)
    fetch(
        session,
        src(
            httpserver.url_for("/a"),
            headers=(("authorization", "Bearer x"), ("X-Keep", "1")),
            allow_private=True,
        ),
    )
    (first, _), (second, _) = httpserver.log
    assert first.headers["Authorization"] == "Bearer x"
    assert "Authorization" not in second.headers
    assert second.headers["X-Keep"] == "1"


def test_body_over_cap_with_content_length(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(b"x" * 2000)
    with pytest.raises(FetchError, match="response exceeds 1000 bytes"):
        fetch(session, src(httpserver.url_for("/feed"), max_bytes=1000))


def test_body_over_cap_streamed_without_content_length(
    httpserver: HTTPServer, session: requests.Session
) -> None:
    def handler(request: Request) -> Response:
        return Response((b"x" * 500 for _ in range(10)), content_type="text/xml")  # no Content-Length

    httpserver.expect_request("/feed").respond_with_handler(handler)
    with pytest.raises(FetchError, match="response exceeds 1000 bytes") as info:
        fetch(session, src(httpserver.url_for("/feed"), max_bytes=1000))
    assert info.value.status == 200


def test_decompressed_size_is_capped(httpserver: HTTPServer, session: requests.Session) -> None:
    bomb = gzip.compress(b"x" * 100_000)  # ~100 bytes on the wire
    httpserver.expect_request("/feed").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="response exceeds 10000 bytes"):
        fetch(session, src(httpserver.url_for("/feed"), max_bytes=10_000))


# --- network failures ------------------------------------------------------------------------------


class SlowServer:
    """A one-connection-at-a-time HTTP server that sends headers and then ``drip`` (a byte every 0.3 s),
    ``short`` (5 of 100 bytes, then hangs up) or nothing at all (``stall``). Bounded: it gives up after
    20 s and stops on close()."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.recv(65536)
        if self.mode == "stall":
            self.stop.wait(20)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 100\r\n\r\n")
        if self.mode == "short":
            conn.sendall(b"<rss>")  # then hang up, 95 bytes short
            return
        for _ in range(60):
            if self.stop.wait(0.3):
                return
            try:
                conn.sendall(b"x")
            except OSError:  # the client hung up
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def drip_server() -> Iterator[SlowServer]:
    server = SlowServer("drip")
    yield server
    server.close()


@pytest.fixture
def stall_server() -> Iterator[SlowServer]:
    server = SlowServer("stall")
    yield server
    server.close()


def test_slow_drip_cut_at_deadline(drip_server: SlowServer, session: requests.Session) -> None:
    url = f"http://127.0.0.1:{drip_server.port}/feed"
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"deadline exceeded: transfer took longer than 1s"):
        fetch(session, src(url, timeout=1.0))
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5  # else it would drip for 30 s


def test_server_sending_nothing_times_out(stall_server: SlowServer, session: requests.Session) -> None:
    url = f"http://127.0.0.1:{stall_server.port}/feed"
    started = time.monotonic()
    with pytest.raises(FetchError, match=re.escape(f"source 'bbc': read timed out fetching {url}")):
        fetch(session, src(url, timeout=0.5))
    assert time.monotonic() - started < 2.5


def test_connection_closed_mid_body(session: requests.Session) -> None:
    server = SlowServer("short")
    try:
        with pytest.raises(FetchError, match="connection broken while reading the body"):
            fetch(session, src(f"http://127.0.0.1:{server.port}/feed"))
    finally:
        server.close()


def test_connection_refused(session: requests.Session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/feed"
    with pytest.raises(
        FetchError, match=re.escape(f"source 'bbc': connection refused fetching {url}")
    ) as info:
        fetch(session, src(url))
    assert info.value.status is None and info.value.url == url


def test_tls_to_a_plain_http_server(httpserver: HTTPServer, session: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)
    url = httpserver.url_for("/feed").replace("http://", "https://")
    with pytest.raises(FetchError, match="TLS/SSL error"):
        fetch(session, src(url))


def test_invalid_url(session: requests.Session) -> None:
    with pytest.raises(FetchError, match="invalid URL"):
        fetch(session, src("http://"))


def test_unsupported_scheme(session: requests.Session) -> None:
    with pytest.raises(
        FetchError, match=re.escape("source 'bbc': unsupported URL scheme 'ftp' in ftp://example.org/f")
    ):
        fetch(session, src("ftp://example.org/f"))


def test_describe_error_classifies_causes() -> None:
    dns = requests.ConnectionError("boom")
    dns.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert describe_error(dns) == "DNS lookup failed (host name not found)"
    assert describe_error(requests.exceptions.ConnectTimeout("x")) == "connection timed out"
    assert describe_error(requests.exceptions.TooManyRedirects("x")) == "too many redirects"
    assert (
        describe_error(requests.exceptions.ChunkedEncodingError("x"))
        == "connection broken while reading the body"
    )
    reset = requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
    assert describe_error(reset) == "connection reset by peer"
    assert describe_error(requests.RequestException("odd")) == "request failed: odd"


# --- file:// ----------------------------------------------------------------------------------------


def test_file_read(tmp_path: Path, session: requests.Session) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(FEED)
    os.utime(path, ns=(1_714_557_600_000_000_000, 1_714_557_600_000_000_000))  # 2024-05-01 10:00:00Z
    result = fetch(session, src(path.as_uri()))
    assert result.status == 200 and result.body == FEED and result.url == path.as_uri()
    assert result.etag == file_etag(path.stat())
    assert result.last_modified == "Wed, 01 May 2024 10:00:00 GMT"


def test_file_not_modified_then_changed(tmp_path: Path, session: requests.Session) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(FEED)
    first = fetch(session, src(path.as_uri()))
    state = FetchState(url=first.url, etag=first.etag, last_modified=first.last_modified)
    again = fetch(session, src(path.as_uri()), state)
    assert again.status == 304 and again.body == b"" and again.etag == first.etag
    path.write_bytes(FEED + b"\n")
    changed = fetch(session, src(path.as_uri()), state)
    assert changed.status == 200 and changed.etag != first.etag


def test_file_missing(tmp_path: Path, session: requests.Session) -> None:
    path = tmp_path / "nope.xml"
    with pytest.raises(
        FetchError, match=re.escape(f"source 'bbc': cannot read {path}: No such file or directory")
    ):
        fetch(session, src(path.as_uri()))


def test_file_is_a_directory(tmp_path: Path, session: requests.Session) -> None:
    with pytest.raises(FetchError, match=r"cannot read .*: Is a directory"):
        fetch(session, src(tmp_path.as_uri()))


def test_file_over_cap(tmp_path: Path, session: requests.Session) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(b"x" * 2000)
    with pytest.raises(FetchError, match=re.escape(f"file {path} exceeds 1000 bytes")):
        fetch(session, src(path.as_uri(), max_bytes=1000))


def test_file_url_with_remote_host(session: requests.Session) -> None:
    with pytest.raises(FetchError, match="file URL with a remote host"):
        fetch(session, src("file://server/share/feed.xml"))


def test_connections_are_reused(session: requests.Session) -> None:
    ports: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:
            ports.append(self.client_address[1])
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(FEED)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(FEED)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/feed"
        bodies = [fetch(session, src(url)).body for _ in range(3)]
        state = FetchState(url, '"v1"')
        answers = [fetch(session, src(url), state).status for _ in range(3)]
    finally:
        server.shutdown()
        server.server_close()
    assert bodies == [FEED] * 3 and answers == [304] * 3
    assert len(ports) == 6 and len(set(ports)) == 1  # one pooled connection: bodies read, 304s too


def test_environment_proxies_followed_as_they_change(
    httpserver: HTTPServer, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY / NO_PROXY are honoured on every request, also after they change (the session
    remembers the lookup per origin only while the variables stay the same)."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    httpserver.expect_request("/feed").respond_with_data(FEED)
    url = httpserver.url_for("/feed")
    with HTTPServer(host="127.0.0.1", port=0) as proxy:
        proxy.expect_request("/feed").respond_with_data(b"via proxy")
        assert fetch(session, src(url)).body == FEED
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        assert fetch(session, src(url)).body == b"via proxy"
        assert len(proxy.log) == 1 and len(httpserver.log) == 1
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        assert fetch(session, src(url)).body == FEED
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv("HTTP_PROXY")
        assert fetch(session, src(url)).body == FEED
    assert len(proxy.log) == 1 and len(httpserver.log) == 3


# --- the direct path: plain GETs go through the adapter's pool, not Session.request -----------------


def test_plain_gets_bypass_session_request_and_keep_every_header(
    httpserver: HTTPServer, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a proxy or netrc credentials a GET skips requests' per-request preparation, yet sends
    what requests would: the session's own headers, the source's, its credentials and validators."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def not_used(*args: object, **kwargs: object) -> requests.Response:
        raise AssertionError("Session.request called")

    monkeypatch.setattr(requests.Session, "request", not_used)
    session.headers["X-Team"] = "polling"
    httpserver.expect_ordered_request("/feed").respond_with_data(FEED, headers={"ETag": '"v1"'})
    httpserver.expect_ordered_request("/feed").respond_with_data("", status=304)
    source = src(httpserver.url_for("/feed"), auth=("u", "p"), headers=(("X-Token", "abc"),))
    first = fetch(session, source)
    second = fetch(session, source, FetchState(first.url, first.etag))
    assert (first.status, first.body, first.etag, second.status, second.etag) == (
        200,
        FEED,
        '"v1"',
        304,
        '"v1"',
    )
    (one, _), (two, _) = httpserver.log
    for request in (one, two):
        assert request.headers["X-Team"] == "polling" and request.headers["X-Token"] == "abc"
        assert request.headers["Authorization"] == "Basic dTpw"  # u:p
        assert request.headers["User-Agent"] == DEFAULT_USER_AGENT
    assert "If-None-Match" not in one.headers and two.headers["If-None-Match"] == '"v1"'


def test_netrc_credentials_still_apply(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """requests adds ~/.netrc credentials for the host; such a host keeps requests' own path."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine localhost login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    httpserver.expect_request("/feed").respond_with_data(FEED)
    session = make_session()
    try:
        assert fetch(session, src(httpserver.url_for("/feed"))).body == FEED
    finally:
        session.close()
    request, _ = httpserver.log[0]
    assert request.headers["Authorization"] == "Basic dXNlcjpzZWNyZXQ="  # user:secret


def test_an_invalid_header_value_is_one_fetch_error(
    httpserver: HTTPServer, session: requests.Session
) -> None:
    httpserver.expect_request("/feed").respond_with_data(FEED)
    source = src(httpserver.url_for("/feed"), headers=(("X-Bad", "a\r\nInjected: 1"),))
    with pytest.raises(FetchError) as caught:
        fetch(session, source)
    message = str(caught.value)
    assert message.startswith("source 'bbc': request failed: ") and "\n" not in message
    assert httpserver.log == []  # nothing was sent


def test_a_cookie_set_on_a_redirect_is_sent_on_the_next_hop(
    httpserver: HTTPServer, session: requests.Session
) -> None:
    """A consent/bot wall: the first answer sets a cookie and redirects to itself; without the cookie the
    feed would loop until 'too many redirects'. Kept in the session's jar like requests does."""

    def handler(request: Request) -> Response:
        if request.cookies.get("consent") == "yes":
            return Response(FEED, content_type="application/rss+xml")
        return Response("", status=302, headers={"Location": "/walled", "Set-Cookie": "consent=yes; Path=/"})

    httpserver.expect_request("/walled").respond_with_handler(handler)
    result = fetch(session, src(httpserver.url_for("/walled")))
    assert result.body == FEED
    assert len(httpserver.log) == 2
    assert session.cookies.get("consent") == "yes"
    again = fetch(session, src(httpserver.url_for("/walled")))  # the next poll sends it at once
    assert again.body == FEED and len(httpserver.log) == 3
    other = fetch(session, src(httpserver.url_for("/walled").replace("localhost", "127.0.0.1")))
    assert other.redirects and len(httpserver.log) == 5  # another host does not get it: walled again
