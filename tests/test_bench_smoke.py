"""Keeps bench/ from rotting: the corpus generator and its server for 3 feeds (no timings asserted)."""

from __future__ import annotations

import gzip
import subprocess
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


def test_server_on_several_ports_serves_each_feed_on_its_own_port() -> None:
    server = CorpusServer(5, ports=3).start()
    try:
        assert len(set(server.ports)) == 3
        for feed in range(5):
            url = server.url(feed)
            assert f":{server.ports[feed % 3]}/" in url
            assert get(url)[2] == corpus.render(feed, 0)
    finally:
        server.stop()


@pytest.mark.skipif(not corpus.REAL.is_dir(), reason=f"shared corpus not found at {corpus.REAL}")
def test_real_corpus_serves_the_earlier_capture_then_the_later_one() -> None:
    real = corpus.RealCorpus()
    assert real.files and not any(name.endswith(".html") for name in real.files)
    pair = next(i for i, name in enumerate(real.files) if name in real.later)
    earlier, later = real.files[pair], real.later[real.files[pair]]
    assert real.render(pair, 0) == (corpus.REAL / earlier).read_bytes()
    assert real.render(pair, 1) == (corpus.REAL / later).read_bytes()
    assert later not in real.files  # served only as the advanced version of its pair
    assert real.entries(len(real.files)) > 1000
    server = CorpusServer(len(real.files), source=real).start()
    try:
        status, _, body = get(server.url(pair))
        assert status == 200 and body == (corpus.REAL / earlier).read_bytes()
    finally:
        server.stop()


def test_ingest_benchmark_runs_both_sides_and_prints_one_table() -> None:
    command = [sys.executable, str(BENCH / "ingest.py"), "--feeds", "3", "--latency", "0", "--ports", "2"]
    done = subprocess.run([*command, "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "│" in line]
    rows = [line for line in lines if "project" in line or "reader" in line]
    assert len(rows) == 8, done.stdout  # 4 phases x 2 sides
    cold = [cells.split("│") for cells in rows[:2]]
    assert [c[3].strip() for c in cold] == ["project", "reader"]
    assert all(c[8].strip() == str(3 * corpus.ENTRIES) and c[10].strip() == "0" for c in cold)  # new, err
