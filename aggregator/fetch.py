"""Retrieve a source's document over HTTP(S) or from a file:// URL: the only user of requests.

Conditional GET, (connect, read) timeouts plus a total deadline, a body-size cap enforced while streaming,
redirects followed by hand and recorded. Every failure becomes one FetchError; nothing here parses feeds.
"""

from __future__ import annotations

import email.utils
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import DecodeError, ProtocolError, ReadTimeoutError
from requests.structures import CaseInsensitiveDict

from aggregator.errors import FetchError
from aggregator.model import FetchResult, FetchState, Source

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"
)
MAX_REDIRECTS = 5
CHUNK_SIZE = 64 * 1024


def make_session(pool_size: int = 10) -> requests.Session:
    """One Session for the whole process: pooled keep-alive connections, no automatic retries."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = MAX_REDIRECTS  # redirects are followed in fetch(); kept for other callers
    return session


def fetch(session: requests.Session, source: Source, state: FetchState | None = None) -> FetchResult:
    """Fetch ``state.url`` (the last effective URL) or ``source.url``; raise FetchError on any failure."""
    url = state.url if state else source.url
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return _fetch_file(source, url, state)
    if scheme not in ("http", "https"):
        raise FetchError(f"source {source.name!r}: unsupported URL scheme {scheme!r} in {url}", url=url)
    return _fetch_http(session, source, url, state)


# --- HTTP -----------------------------------------------------------------------------------------


def _request_headers(source: Source, state: FetchState | None) -> CaseInsensitiveDict[str]:
    headers = CaseInsensitiveDict(
        {"User-Agent": source.user_agent, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"}
    )
    headers.update(source.headers)  # the source's own headers win
    if state and state.etag:
        headers["If-None-Match"] = state.etag
    if state and state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    return headers


def _fetch_http(session: requests.Session, source: Source, url: str, state: FetchState | None) -> FetchResult:
    deadline = time.monotonic() + source.timeout
    headers = _request_headers(source, state)
    redirects: list[tuple[int, str]] = []
    current = url
    while True:
        try:
            result = _one_hop(session, source, current, headers, state, deadline)
        except requests.RequestException as e:
            raise FetchError(
                f"source {source.name!r}: {describe_error(e)} fetching {current}", url=current
            ) from e
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
        status, location = result
        redirects.append((status, location))
        if len(redirects) > MAX_REDIRECTS:
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
        if urlsplit(location).netloc != urlsplit(current).netloc:
            headers.pop("Authorization", None)  # never send credentials to another host
            headers.pop("Cookie", None)
        current = location


def _one_hop(
    session: requests.Session,
    source: Source,
    url: str,
    headers: CaseInsensitiveDict[str],
    state: FetchState | None,
    deadline: float,
) -> FetchResult | tuple[int, str]:
    """One GET: a final FetchResult, or (status, absolute location) for a redirect."""
    remaining = _remaining(source, url, deadline)
    timeout = (min(source.timeout, remaining), min(source.timeout, remaining))
    with session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False) as resp:
        if resp.is_redirect:
            return resp.status_code, urljoin(url, resp.headers["location"])
        etag = resp.headers.get("etag")
        last_modified = resp.headers.get("last-modified")
        if resp.status_code == 304:
            return FetchResult(
                url=url,
                status=304,
                headers=_lower(resp),
                etag=etag or (state.etag if state else None),
                last_modified=last_modified or (state.last_modified if state else None),
            )
        if not 200 <= resp.status_code < 300:
            reason = f"{resp.status_code} {_phrase(resp)}".rstrip()
            raise FetchError(
                f"source {source.name!r}: HTTP {reason} from {url}", status=resp.status_code, url=url
            )
        body = _read_body(resp, source, url, deadline)
        return FetchResult(
            url=url,
            status=resp.status_code,
            body=body,
            headers=_lower(resp),
            etag=etag,
            last_modified=last_modified,
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
    """Stream the (decoded) body, enforcing the size cap and the deadline between reads."""
    too_large = FetchError(
        f"source {source.name!r}: response exceeds {source.max_bytes} bytes from {url}",
        status=resp.status_code,
        url=url,
    )
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > source.max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    for chunk in _chunks(resp, lambda: _remaining(source, url, deadline)):
        size += len(chunk)
        if size > source.max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _chunks(resp: requests.Response, remaining: Callable[[], float]) -> Iterator[bytes]:
    """Like ``resp.iter_content()``, but each read returns what has arrived (``read1``) and waits at most
    until the deadline, so a server dripping bytes cannot hold the transfer open. ``remaining()`` gives
    the seconds left and raises FetchError when there are none."""
    raw = resp.raw  # urllib3 >= 2.3 (read1)
    try:
        while True:
            _set_socket_timeout(resp, remaining())
            chunk = raw.read1(CHUNK_SIZE, decode_content=True)
            if not chunk:
                return
            yield chunk
    # the same mapping requests' iter_content applies to urllib3's errors
    except ReadTimeoutError as e:
        remaining()  # the socket timeout was the deadline: report that
        raise requests.ConnectionError(e) from e
    except ProtocolError as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e
    except DecodeError as e:
        raise requests.exceptions.ContentDecodingError(e) from e


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
