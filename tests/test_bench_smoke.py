"""Keeps bench/ from rotting: the corpus generator and its server for 3 feeds (no timings asserted)."""

from __future__ import annotations

import gzip
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import corpus  # noqa: E402
from server import CorpusServer  # noqa: E402

from aggregator.parse import parse_feed  # noqa: E402


@pytest.fixture
def srv() -> Iterator[CorpusServer]:
    server = CorpusServer(3, gzip_=True).start()
    yield server
    server.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_corpus_is_deterministic_and_parses() -> None:
    for feed in range(3):
        doc = corpus.render(feed, 0)
        assert doc == corpus.render(feed, 0)
        parsed = parse_feed(doc, url=f"http://127.0.0.1/feeds/{feed}.xml", content_type=None, source="b")
        assert len(parsed.entries) == corpus.ENTRIES
        assert 80_000 < len(doc) < 250_000


def test_advance_adds_drops_and_changes_entries() -> None:
    before = {e.guid: e for e in (corpus.entry(0, k, 0) for k in corpus.window(0))}
    after = {e.guid: e for e in (corpus.entry(0, k, 1) for k in corpus.window(1))}
    assert len(set(after) - set(before)) == corpus.STEP
    assert len(set(before) - set(after)) == corpus.STEP
    changed = [g for g in set(before) & set(after) if before[g].html != after[g].html]
    assert 0 < len(changed) < corpus.ENTRIES // 2


def test_server_validators_304_gzip_and_no_validators(srv: CorpusServer) -> None:
    status, headers, body = get(srv.url(1), {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == corpus.render(1, 0)
    assert get(srv.url(1), {"If-None-Match": headers["ETag"]})[0] == 304
    assert get(srv.url(1), {"If-Modified-Since": headers["Last-Modified"]})[0] == 304
    srv.validators = False
    status, headers, _ = get(srv.url(1), {"If-None-Match": headers["ETag"]})
    assert status == 200 and "ETag" not in headers and "Last-Modified" not in headers
    srv.validators = True
    srv.set_version(1)
    assert get(srv.url(1))[2] == corpus.render(1, 1)
    assert get(srv.url(7))[0] == 404
