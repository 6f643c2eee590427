"""Retrieve a source's document over HTTP(S) or from a file:// URL: the only user of requests.

Conditional GET, (connect, read) timeouts plus a total deadline, body-size caps enforced while streaming
and after decompression (gzip, deflate, brotli), redirects followed by hand and recorded (into private
address ranges only when allowed), a per-origin (host:port) concurrency limit and Retry-After. Every
failure becomes one FetchError; nothing here parses feeds or decides schedules.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import os
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import brotli
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.models import PreparedRequest, ProtocolError, ReadTimeoutError
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies, get_netrc_auth, select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ResponseError,
)

from aggregator.errors import FetchError
from aggregator.model import FetchResult, FetchState, Source
from aggregator.urls import host_key

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"
)
ACCEPT_ENCODING = "gzip, deflate, br"
MAX_REDIRECTS = 5
CHUNK_SIZE = 64 * 1024
RETRY_STATUSES = (429, 503)  # statuses whose Retry-After is honoured
HOST_POOLS = 64  # host:port connection pools kept (least recently used dropped): keep-alive across polls
MAX_HOST_HOLD = 24 * 3600.0  # a host's Retry-After holds its other sources back at most this long
_host_key = lru_cache(maxsize=4096)(host_key)  # a source's URL is polled again and again: parsed once


class HTTPStatusError(FetchError):
    """The server answered with an error status; ``retry_after`` is its Retry-After header, if any."""

    def __init__(self, message: str, *, status: int | None, url: str, retry_after: str | None = None) -> None:
        super().__init__(message, status=status, url=url)
        self.retry_after = retry_after


# --- private address ranges ----------------------------------------------------------------------


def address_allowed(address: str, *, allow_private: bool = False) -> bool:
    """May a redirect lead to ``address`` (an IP literal)? Loopback, link-local, private, shared (CGNAT),
    multicast, reserved and unspecified addresses are refused unless ``allow_private``."""
    if allow_private:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False  # not an address at all: refuse rather than guess
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


class RefusedAddress(OSError):
    """A connection to an address the redirect policy does not allow (raised before any byte is sent)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} is a loopback, link-local or private address")
        self.address = address


_guard = threading.local()  # the address check in force for connections this thread opens


def _check_peer(sock: socket.socket) -> None:
    check: Callable[[str], bool] | None = getattr(_guard, "check", None)
    if check is None:
        return
    address = str(sock.getpeername()[0])
    if not check(address):
        sock.close()
        raise RefusedAddress(address)


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock)  # enforced at connect time: DNS answers cannot slip past a check made earlier
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock)
        return sock


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        self._pools: dict[tuple[str, str, str], HTTPConnectionPool] = {}  # (scheme, netloc, verify)

    def _direct_pool(self, request: PreparedRequest, verify: Any) -> HTTPConnectionPool:
        """The pool manager's pool for the request's origin, remembered until the manager closes it
        (it keeps the HOST_POOLS most recently created)."""
        parts = urlsplit(request.url or "")
        key = (parts.scheme, parts.netloc, str(verify))
        pool = self._pools.get(key)
        if pool is not None and pool.pool is not None:
            return pool
        try:
            found = self.get_connection_with_tls_context(request, verify, proxies=None, cert=None)
        except (urllib3.exceptions.LocationValueError, ValueError) as e:
            raise requests.exceptions.InvalidURL(e, request=request) from e
        self.cert_verify(found, request.url, verify, None)  # type: ignore[no-untyped-call]
        if not isinstance(found, HTTPConnectionPool):
            raise TypeError(f"fetch: no HTTP connection pool for {request.url}")
        if len(self._pools) > 4 * HOST_POOLS:
            self._pools.clear()
        self._pools[key] = found
        return found

    def get_direct(
        self,
        request: PreparedRequest,
        headers: dict[str, str],
        timeout: tuple[float, float],
        verify: Any,
    ) -> requests.Response:
        """A GET without a proxy, through this adapter's pool: ``send`` without its cookie handling
        (the caller keeps no cookies), urllib3's errors mapped to requests' exceptions as ``send`` does."""
        url = request.url or ""
        pool = self._direct_pool(request, verify)
        try:
            raw = pool.urlopen(
                "GET",
                request.path_url,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=self.max_retries,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            )
        except (ProtocolError, OSError, ClosedPoolError) as e:
            raise requests.ConnectionError(e, request=request) from e
        except MaxRetryError as e:
            if isinstance(e.reason, ConnectTimeoutError) and not isinstance(e.reason, NewConnectionError):
                raise requests.exceptions.ConnectTimeout(e, request=request) from e
            if isinstance(e.reason, ResponseError):
                raise requests.exceptions.RetryError(e, request=request) from e
            if isinstance(e.reason, urllib3.exceptions.SSLError):
                raise requests.exceptions.SSLError(e, request=request) from e
            raise requests.ConnectionError(e, request=request) from e
        except urllib3.exceptions.SSLError as e:
            raise requests.exceptions.SSLError(e, request=request) from e
        except ReadTimeoutError as e:
            raise requests.exceptions.ReadTimeout(e, request=request) from e
        except (urllib3.exceptions.InvalidHeader, ValueError) as e:  # http.client: "Invalid header value"
            raise requests.exceptions.InvalidHeader(e, request=request) from e
        response = requests.Response()
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.raw = raw
        response.reason = raw.reason or ""
        response.url = url
        response.request = request
        return response


def _refuse_private(source: Source, url: str, origin: str) -> None:
    """Before a redirect hop: refuse a host whose addresses are not allowed (a pooled connection is
    reused without a new connect, so the connect-time check alone would not see it)."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname or "", parts.port or 80, type=socket.SOCK_STREAM)
    except OSError as e:
        raise FetchError(
            f"source {source.name!r}: DNS lookup failed (host name not found) for {url}", url=url
        ) from e
    for info in infos:
        address = str(info[4][0])
        if not address_allowed(address, allow_private=source.allow_private):
            raise _refused(source, url, origin, address)


def _refused(source: Source, url: str, origin: str, address: str) -> FetchError:
    return FetchError(
        f"source {source.name!r}: redirect from {origin} to {url} refused: {address} is a loopback, "
        "link-local or private address (set allow_private: true on the source if this is intended)",
        url=url,
    )


@contextmanager
def _guarded(source: Source, enabled: bool) -> Iterator[None]:
    _guard.check = (lambda a: address_allowed(a, allow_private=source.allow_private)) if enabled else None
    try:
        yield
    finally:
        _guard.check = None


# --- per-host limits -------------------------------------------------------------------------------


class HostLimits:
    """Shared by every fetch of the process: at most ``per_host`` requests in flight to one host
    (``host_key``: host name and port), and, when ``host_retry_after``, a host's 429/503 Retry-After
    holds back its other sources too."""

    def __init__(self, per_host: int = 2, *, host_retry_after: bool = True) -> None:
        self.per_host = per_host
        self.host_retry_after = host_retry_after
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._held: dict[str, float] = {}  # host -> wall-clock time before which it is not contacted

    @contextmanager
    def slot(self, host: str, timeout: float | None) -> Iterator[bool]:
        """Hold one of the host's slots; yields False if none came free within ``timeout`` seconds."""
        semaphore = self._slots.get(host)
        if semaphore is None:
            with self._lock:
                semaphore = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        acquired = semaphore.acquire(timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                semaphore.release()

    def hold(self, host: str, retry_after: str | None) -> None:
        seconds = retry_after_seconds(retry_after, time.time())
        if self.host_retry_after and seconds:
            with self._lock:
                until = time.time() + min(seconds, MAX_HOST_HOLD)
                self._held[host] = max(until, self._held.get(host, 0.0))

    def held_until(self, host: str) -> float | None:
        if not self._held:  # no host has asked for a pause (the common case: no lock taken)
            return None
        with self._lock:
            until = self._held.get(host)
        return until if until is not None and until > time.time() else None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP-date); None if unreadable."""
    text = (value or "").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now) if when.tzinfo else None


# --- fetching --------------------------------------------------------------------------------------


# the variables that decide an http(s) URL's proxy (urllib's getproxies_environment, select_proxy) and
# its CA bundle (its netrc credentials are looked up once per origin)
_ENVIRONMENT_VARIABLES = (
    *(
        name
        for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        for name in (base, base.upper())
    ),
    "REQUEST_METHOD",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
_CACHED_ORIGINS = 10_000  # environment lookups remembered (per origin and environment) at most


@dataclass(frozen=True, slots=True)
class _Route:
    """What the environment says about requests to one origin: proxies, CA bundle, netrc credentials."""

    proxies: dict[str, str]
    verify: Any
    direct: bool  # no proxy and no ~/.netrc credentials for it (requests' own path adds those)


class _Session(requests.Session):
    """requests.Session that remembers the environment's settings per origin while the variables that
    decide them stay the same (requests scans the whole environment twice per request to find the
    proxies), and sends the common GET (no proxy, no netrc credentials, nothing set on the session that
    requests would merge in) straight through its adapter's urllib3 pool: no request preparation,
    settings merge or cookie handling per poll. Anything else goes through requests as usual."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[tuple[str, str, tuple[str | None, ...]], _Route] = {}
        self._prepared: dict[str, PreparedRequest] = {}  # URL -> its prepared form (IDNA, quoting)
        self._lock = threading.Lock()

    def _route(self, url: str) -> _Route:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, tuple(os.environ.get(name) for name in _ENVIRONMENT_VARIABLES))
        found = self._routes.get(key)
        if found is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            proxies = get_environ_proxies(url)
            direct = not select_proxy(url, proxies) and get_netrc_auth(url) is None
            found = _Route(proxies, verify, direct)
            with self._lock:
                if len(self._routes) > _CACHED_ORIGINS:
                    self._routes.clear()
                self._routes[key] = found
        return found

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        if not self.trust_env or proxies or not isinstance(url, str):  # explicit proxies: requests' rules
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        route = self._route(url)
        if verify is True or verify is None:
            verify = route.verify if route.verify is not True else verify
        merged = {k: v for k, v in {**self.proxies, **route.proxies}.items() if v is not None}  # requests'
        return {
            "proxies": merged,
            "stream": self.stream if stream is None else stream,
            "verify": self.verify if verify is None else verify,
            "cert": self.cert if cert is None else cert,
        }

    def get_streamed(
        self, url: str, headers: CaseInsensitiveDict[str], timeout: tuple[float, float]
    ) -> requests.Response:
        """GET ``url`` without following redirects, the body left unread (``stream=True``): what
        ``session.get`` does, through the adapter's pool directly when requests would add nothing."""
        route = self._route(url) if self.trust_env else None
        adapter = self.get_adapter(url)
        if (
            route is None
            or not route.direct
            or not isinstance(adapter, _Adapter)
            or self.proxies
            or self.auth
            or (self.cookies and _has_cookies_for(self.cookies, url))
            or self.params
            or self.cert
            or self.verify is not True
            or any(self.hooks.values())
        ):
            return self.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False)
        merged = {k: v for k, v in self.headers.items() if k not in headers and isinstance(v, str)}
        merged.update(headers)  # the session's headers, the request's win (http.client checks them)
        response = adapter.get_direct(self._prepare(url), merged, timeout, route.verify)
        if "set-cookie" in response.headers:  # kept as Session.send keeps them: later requests send them
            sent = PreparedRequest()  # the jar reads the request's URL and headers (rare: no cache)
            sent.prepare(method="GET", url=url, headers=merged)
            extract_cookies_to_jar(self.cookies, sent, response.raw)  # type: ignore[no-untyped-call]
        return response

    def _prepare(self, url: str) -> PreparedRequest:
        prepared = self._prepared.get(url)
        if prepared is None:
            prepared = PreparedRequest()
            prepared.prepare_method("GET")
            prepared.prepare_url(url, None)
            with self._lock:
                if len(self._prepared) > _CACHED_ORIGINS:
                    self._prepared.clear()
                self._prepared[url] = prepared
        return prepared


def _has_cookies_for(jar: Any, url: str) -> bool:
    """Whether ``jar`` holds a cookie a request to ``url``'s host may carry (its domain or a parent
    domain): only then does the request need requests' cookie handling (a jar holds a handful)."""
    host = (urlsplit(url).hostname or "").lower()
    if "." not in host:
        host += ".local"  # http.cookiejar's name for a dotless host ("localhost" -> "localhost.local")
    for cookie in jar:
        domain = cookie.domain.lower().lstrip(".")
        if host == domain or host.endswith("." + domain) or not domain:
            return True
    return False


def make_session(pool_size: int = 10) -> requests.Session:
    """One Session for the whole process: pooled keep-alive connections, no automatic retries, and
    connections that check the peer address when a redirect has left the source's own host."""
    session = _Session()
    hosts = max(pool_size, HOST_POOLS)
    adapter = _Adapter(pool_connections=hosts, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = MAX_REDIRECTS  # redirects are followed in fetch(); kept for other callers
    return session


def fetch(
    session: requests.Session,
    source: Source,
    state: FetchState | None = None,
    *,
    limits: HostLimits | None = None,
) -> FetchResult:
    """Fetch ``state.url`` (the last effective URL) or ``source.url``; raise FetchError on any failure."""
    url = state.url if state else source.url
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return _fetch_file(source, url, state)
    if scheme not in ("http", "https"):
        raise FetchError(f"source {source.name!r}: unsupported URL scheme {scheme!r} in {url}", url=url)
    return _fetch_http(session, source, url, state, limits or HostLimits(per_host=1_000_000))


# --- HTTP -----------------------------------------------------------------------------------------


def _request_headers(source: Source, state: FetchState | None) -> CaseInsensitiveDict[str]:
    headers = CaseInsensitiveDict(
        {"User-Agent": source.user_agent, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING}
    )
    if source.auth is not None:
        user, password = source.auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    headers.update(source.headers)  # the source's own headers win
    if state and state.etag:
        headers["If-None-Match"] = state.etag
    if state and state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    return headers


def _fetch_http(
    session: requests.Session, source: Source, url: str, state: FetchState | None, limits: HostLimits
) -> FetchResult:
    headers = _request_headers(source, state)
    redirects: list[tuple[int, str]] = []
    current = url
    deadline: float | None = None  # starts once the first slot at the host is ours
    while True:
        result = _limited_hop(session, source, current, headers, state, limits, deadline, url)
        if isinstance(result, FetchResult) and not redirects:
            return result
        if isinstance(result, FetchResult):
            return FetchResult(
                url=result.url,
                status=result.status,
                body=result.body,
                headers=result.headers,
                etag=result.etag,
                last_modified=result.last_modified,
                redirects=tuple(redirects),
            )
        status, location, deadline = result
        redirects.append((status, location))
        _check_redirect(source, url, current, status, location, len(redirects))
        if urlsplit(location).netloc != urlsplit(current).netloc:
            headers.pop("Authorization", None)  # never send credentials to another host
            headers.pop("Cookie", None)
        current = location


def _check_redirect(source: Source, url: str, current: str, status: int, location: str, hops: int) -> None:
    if hops > MAX_REDIRECTS:
        raise FetchError(
            f"source {source.name!r}: too many redirects (more than {MAX_REDIRECTS}) from {url}",
            status=status,
            url=current,
        )
    if urlsplit(location).scheme.lower() not in ("http", "https"):
        raise FetchError(
            f"source {source.name!r}: redirect to unsupported URL {location} from {current}",
            status=status,
            url=current,
        )
    if _left_home(url, location) and not source.allow_private:
        _refuse_private(source, location, current)


def _left_home(url: str, current: str) -> bool:
    """Has a redirect taken the fetch to another host (or port) than the configured one?"""
    return url != current and urlsplit(url).netloc.lower() != urlsplit(current).netloc.lower()


def _limited_hop(
    session: requests.Session,
    source: Source,
    url: str,
    headers: CaseInsensitiveDict[str],
    state: FetchState | None,
    limits: HostLimits,
    deadline: float | None,
    origin: str,
) -> FetchResult | tuple[int, str, float]:
    """One hop inside the host's concurrency slot and Retry-After hold; maps requests' errors."""
    host = _host_key(url)
    _check_held(source, url, host, limits)
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    with limits.slot(host, wait) as acquired:
        if not acquired:
            raise FetchError(
                f"source {source.name!r}: deadline exceeded waiting for a free connection to {host}", url=url
            )
        deadline = deadline if deadline is not None else time.monotonic() + source.timeout
        try:
            if not _left_home(origin, url) or source.allow_private:  # no address check needed
                return _one_hop(session, source, url, headers, state, deadline)
            with _guarded(source, True):
                return _one_hop(session, source, url, headers, state, deadline)
        except HTTPStatusError as e:
            if e.status in RETRY_STATUSES:
                limits.hold(host, e.retry_after)
            raise
        except requests.RequestException as e:
            refused = next((c for c in _causes(e) if isinstance(c, RefusedAddress)), None)
            if refused is not None:
                raise _refused(source, url, origin, refused.address) from e
            raise FetchError(f"source {source.name!r}: {describe_error(e)} fetching {url}", url=url) from e


def _check_held(source: Source, url: str, host: str, limits: HostLimits) -> None:
    until = limits.held_until(host)
    if until is not None:
        when = email.utils.formatdate(until, usegmt=True)
        raise HTTPStatusError(
            f"source {source.name!r}: {host} asked for a pause (Retry-After) until {when}; not contacted",
            status=None,
            url=url,
            retry_after=when,
        )


def _one_hop(
    session: requests.Session,
    source: Source,
    url: str,
    headers: CaseInsensitiveDict[str],
    state: FetchState | None,
    deadline: float,
) -> FetchResult | tuple[int, str, float]:
    """One GET: a final FetchResult, or (status, absolute location, deadline) for a redirect."""
    remaining = _remaining(source, url, deadline)
    timeout = (min(source.timeout, remaining), min(source.timeout, remaining))
    get = session.get_streamed if isinstance(session, _Session) else _get_streamed(session)
    with get(url, headers, timeout) as resp:
        if resp.is_redirect:
            return resp.status_code, urljoin(url, resp.headers["location"]), deadline
        etag = resp.headers.get("etag")
        last_modified = resp.headers.get("last-modified")
        if resp.status_code == 304:
            # no body: read it (b"") so that the connection goes back to the pool
            resp.raw.read(decode_content=False)
            return FetchResult(
                url=url,
                status=304,
                headers=_lower(resp),
                etag=etag or (state.etag if state else None),
                last_modified=last_modified or (state.last_modified if state else None),
            )
        if not 200 <= resp.status_code < 300:
            raise _status_error(source, url, resp)
        body = _read_body(resp, source, url, deadline)
        return FetchResult(
            url=url,
            status=resp.status_code,
            body=body,
            headers=_lower(resp),
            etag=etag,
            last_modified=last_modified,
        )


def _get_streamed(
    session: requests.Session,
) -> Callable[[str, CaseInsensitiveDict[str], tuple[float, float]], requests.Response]:
    """``_Session.get_streamed`` for any other Session (requests all the way)."""

    def get(url: str, headers: CaseInsensitiveDict[str], timeout: tuple[float, float]) -> requests.Response:
        return session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False)

    return get


def _status_error(source: Source, url: str, resp: requests.Response) -> HTTPStatusError:
    reason = f"{resp.status_code} {_phrase(resp)}".rstrip()
    retry_after = resp.headers.get("retry-after") if resp.status_code in RETRY_STATUSES else None
    hint = f" (Retry-After: {retry_after})" if retry_after else ""
    return HTTPStatusError(
        f"source {source.name!r}: HTTP {reason} from {url}{hint}",
        status=resp.status_code,
        url=url,
        retry_after=retry_after,
    )


def _phrase(resp: requests.Response) -> str:
    """The standard reason phrase ("Not Found"), else whatever the server sent."""
    try:
        return HTTPStatus(resp.status_code).phrase
    except ValueError:
        return resp.reason or ""


def _lower(resp: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items()}


def _remaining(source: Source, url: str, deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(
            f"source {source.name!r}: deadline exceeded: transfer took longer than {source.timeout:g}s "
            f"fetching {url}",
            url=url,
        )
    return remaining


def _read_body(resp: requests.Response, source: Source, url: str, deadline: float) -> bytes:
    """Stream the body, enforcing the size cap on the bytes received and again on the decompressed
    bytes (a gzip bomb is cut as soon as it inflates past the cap), and the deadline between reads."""
    too_large = FetchError(
        f"source {source.name!r}: response exceeds {source.max_bytes} bytes from {url}",
        status=resp.status_code,
        url=url,
    )
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > source.max_bytes:
        raise too_large
    decoder = _Decoder(source, url, resp.headers.get("content-encoding", ""))
    chunks: list[bytes] = []
    received = size = 0
    for chunk in _chunks(resp, lambda: _remaining(source, url, deadline)):
        received += len(chunk)
        if received > source.max_bytes:
            raise too_large
        data = decoder.decode(chunk, source.max_bytes - size)
        size += len(data)
        if size > source.max_bytes:
            raise too_large
        chunks.append(data)
    chunks.append(decoder.flush())
    return b"".join(chunks)


class _Decoder:
    """Content-Encoding (identity, gzip, deflate, br) decoded with bounded output: a call never returns
    more than ``room + 1`` bytes, however small the input."""

    def __init__(self, source: Source, url: str, header: str) -> None:
        codings = [c.strip().lower() for c in header.split(",") if c.strip().lower() not in ("", "identity")]
        self.error = FetchError(f"source {source.name!r}: could not decode the compressed body from {url}")
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate", "br")):
            raise FetchError(
                f"source {source.name!r}: unsupported Content-Encoding {header!r} from {url}", url=url
            )
        self.coding = codings[0] if codings else ""
        self.started = False
        self.zlib: Any = None
        self.brotli: Any = brotli.Decompressor() if self.coding == "br" else None
        if self.coding in ("gzip", "x-gzip"):
            self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.coding == "deflate":
            self.zlib = zlib.decompressobj()

    def decode(self, data: bytes, room: int) -> bytes:
        limit = max(room, 0) + 1
        try:
            if self.brotli is not None:
                return bytes(self.brotli.process(data, output_buffer_limit=limit))
            if self.zlib is not None:
                return self._inflate(data, limit)
        except (zlib.error, brotli.error) as e:
            raise self.error from e
        return data

    def _inflate(self, data: bytes, limit: int) -> bytes:
        try:
            out: bytes = self.zlib.decompress(data, limit)
        except zlib.error:
            if self.coding != "deflate" or self.started:
                raise
            self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent as a raw stream
            out = self.zlib.decompress(data, limit)
        self.started = True
        return out

    def flush(self) -> bytes:
        try:
            return bytes(self.zlib.flush()) if self.zlib is not None else b""
        except zlib.error as e:
            raise self.error from e


def _chunks(resp: requests.Response, remaining: Callable[[], float]) -> Iterator[bytes]:
    """The raw (still compressed) body as it arrives: each read returns what has come (``read1``) and
    waits at most until the deadline, so a server dripping bytes cannot hold the transfer open.
    ``remaining()`` gives the seconds left and raises FetchError when there are none."""
    raw = resp.raw  # urllib3 >= 2.3 (read1)
    try:
        while True:
            _set_socket_timeout(resp, remaining())
            chunk = raw.read1(CHUNK_SIZE, decode_content=False)
            if not chunk:
                return
            yield chunk
    # the same mapping requests' iter_content applies to urllib3's errors
    except ReadTimeoutError as e:
        remaining()  # the socket timeout was the deadline: report that
        raise requests.ConnectionError(e) from e
    except ProtocolError as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e


def _set_socket_timeout(resp: requests.Response, seconds: float) -> None:
    connection = getattr(resp.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)


_INVALID_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.URLRequired,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


def describe_error(error: BaseException) -> str:
    """A short, readable cause for a requests exception (walking its chain of causes)."""
    chain = list(_causes(error))
    if any(isinstance(e, requests.exceptions.ConnectTimeout) for e in chain):
        return "connection timed out"
    if any(isinstance(e, (requests.exceptions.ReadTimeout, ReadTimeoutError)) for e in chain):
        return "read timed out"
    if any(isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError" for e in chain):
        return "DNS lookup failed (host name not found)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, (requests.exceptions.SSLError, ssl.SSLError)) for e in chain):
        return f"TLS/SSL error: {_innermost(chain, ssl.SSLError)}"
    if any(isinstance(e, requests.exceptions.TooManyRedirects) for e in chain):
        return "too many redirects"
    if any(isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.URLRequired)) for e in chain):
        return f"invalid URL: {error}"
    if any(
        isinstance(e, (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)) for e in chain
    ):
        return f"invalid URL: {error}"
    if any(isinstance(e, requests.exceptions.ContentDecodingError) for e in chain):
        return "could not decode the compressed body"
    if any(isinstance(e, requests.exceptions.ChunkedEncodingError) for e in chain):
        return "connection broken while reading the body"
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "connection reset by peer"
    return f"request failed: {_innermost(chain, OSError)}"


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        nested = [a for a in e.args if isinstance(a, BaseException)]
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            nested.append(reason)
        todo.extend(x for x in (e.__cause__, e.__context__, *nested) if x is not None)


def _innermost(chain: list[BaseException], kind: type[BaseException]) -> str:
    matching = [e for e in chain if isinstance(e, kind)]
    best = matching[-1] if matching else chain[-1]
    return str(best) or type(best).__name__


# --- file:// -------------------------------------------------------------------------------------


def file_etag(stat: os.stat_result) -> str:
    """A validator for a local file: changes when its mtime or size does."""
    return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'


def _fetch_file(source: Source, url: str, state: FetchState | None) -> FetchResult:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"source {source.name!r}: file URL with a remote host: {url}", url=url)
    path = Path(unquote(parts.path))
    try:
        with path.open("rb") as f:
            stat = os.fstat(f.fileno())
            etag = file_etag(stat)
            last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
            if state and state.etag == etag:
                return FetchResult(url=url, status=304, etag=etag, last_modified=last_modified)
            body = f.read(source.max_bytes + 1)
    except OSError as e:
        raise FetchError(f"source {source.name!r}: cannot read {path}: {e.strerror or e}", url=url) from e
    if len(body) > source.max_bytes:
        raise FetchError(f"source {source.name!r}: file {path} exceeds {source.max_bytes} bytes", url=url)
    return FetchResult(url=url, status=200, body=body, etag=etag, last_modified=last_modified)
