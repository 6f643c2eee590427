"""Stateless web servers: two `python run.py serve` processes on one store (SQLite and PostgreSQL) give
identical bodies, ETags and Last-Modified for every topic, format and page, and after `fetch` stores new
items both serve the new feeds once the validation period (web.REVALIDATE) has passed."""

from __future__ import annotations

import gzip
import http.client
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import runcli
from conftest import REAL, ROOT, FeedServer, free_port, postgres_database, postgres_unreachable

from aggregator.web import REVALIDATE

pytestmark = pytest.mark.skipif(not REAL.exists(), reason="shared corpus missing")

# path on the feed server -> (earlier capture, later capture): see REPOLL.tsv
FEEDS = {
    "/bbc.xml": ("bbc-news-2.xml", "bbc-news-1.xml"),
    "/aljazeera.xml": ("aljazeera-2.xml", "aljazeera-1.xml"),
    "/nytimes.xml": ("nytimes-1.xml", "nytimes-2.xml"),
    "/cnn.xml": ("cnn-1.xml", "cnn-1.xml"),
    "/guardian.xml": ("guardian-1.xml", "guardian-1.xml"),
    "/fireball.json": ("daringfireball-3.json", "daringfireball-3.json"),
}
TOPICS = [  # every collapse mode, a paged topic, an empty one
    "  - {name: everything, query: '*', collapse: story, limit: 40}",
    "  - {name: articles, query: '*', collapse: article, limit: 15}",
    "  - {name: world, query: 'world OR president OR minister', collapse: none, limit: 10}",
    "  - {name: nothing, query: 'zzzqqqxxy'}",
]
PAGES = [("everything", 1), ("everything", 2), ("articles", 1), ("articles", 3), ("world", 1), ("nothing", 1)]
FORMATS = ("rss", "atom", "json")
Answer = tuple[int, bytes, str, str, str]  # status, body, ETag, Last-Modified, Content-Type


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        yield url


def write_configs(tmp_path: Path, database: str, feeds: FeedServer) -> list[tuple[Path, int]]:
    """Two configs (and their ports) that differ only in the port; the public base_url is the same, as
    behind a load balancer."""
    configs = []
    for n in (1, 2):
        port = free_port()
        lines = [
            f"database: {database}",
            f"server: {{host: 127.0.0.1, port: {port}, base_url: 'http://localhost:8080'}}",
            "sources:",
            *[f"  - {{name: {path[1:].split('.')[0]}, url: '{feeds.url(path)}'}}" for path in FEEDS],
            "topics:",
            *TOPICS,
        ]
        path = tmp_path / f"serve{n}.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        configs.append((path, port))
    return configs


@dataclass
class Twins:
    bases: list[str]  # http://127.0.0.1:PORT of each server
    procs: list[subprocess.Popen[str]]
    config: Path  # the first server's config, for `fetch`

    def stop(self, n: int) -> None:
        """SIGTERM server ``n``: it must exit 0 promptly, without a traceback."""
        proc = self.procs[n]
        proc.terminate()
        stopped = runcli.finish(proc)
        assert stopped.returncode == 0, stopped.stderr


def cli(config: Path, *args: str) -> None:
    result = runcli.finish(runcli.start(config.parent, "--config", str(config), *args))
    assert result.returncode == 0, result.stdout + result.stderr


def get(url: str, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            h = r.headers
            return r.status, r.read(), h["ETag"], h["Last-Modified"], h["Content-Type"]
    except urllib.error.HTTPError as e:
        h = e.headers
        return e.code, e.read(), h["ETag"] or "", h["Last-Modified"] or "", h["Content-Type"] or ""


@pytest.fixture
def twins(tmp_path: Path, database: str, feed_server: FeedServer) -> Iterator[Twins]:
    """Both servers running on a store filled by `run.py fetch` from the earlier captures."""
    for path, (earlier, _) in FEEDS.items():
        feed_server.routes[path] = REAL / earlier
    configs = write_configs(tmp_path, database, feed_server)
    cli(configs[0][0], "db", "upgrade")
    cli(configs[0][0], "fetch", "--all")
    procs = [runcli.start(tmp_path, "--config", str(c), "serve") for c, _ in configs]
    twins = Twins([f"http://127.0.0.1:{port}" for _, port in configs], procs, configs[0][0])
    try:
        for base in twins.bases:
            wait_healthy(base)
        yield twins
    finally:
        for n, proc in enumerate(procs):
            if proc.returncode is None:
                twins.stop(n)


def wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(f"{base}/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{base} did not answer /healthz within 30 s")


def snapshot(base: str) -> dict[str, Answer]:
    return {
        f"/topics/{topic}.{fmt}{f'?page={page}' if page > 1 else ''}": get(
            f"{base}/topics/{topic}.{fmt}{f'?page={page}' if page > 1 else ''}"
        )
        for topic, page in PAGES
        for fmt in FORMATS
    }


def assert_twins(bases: list[str]) -> dict[str, Answer]:
    """Both servers answer every feed identically (asked twice each: a render, then a cache hit)."""
    first, second = snapshot(bases[0]), snapshot(bases[1])
    assert snapshot(bases[0]) == first and snapshot(bases[1]) == second
    for path, answer in first.items():
        assert answer[0] == 200, (path, answer[0], answer[1][:300])
        assert answer[2].startswith('"') and answer[3], path
        assert second[path] == answer, f"{path}: the two servers differ"
    return first


def test_two_servers_answer_identically_and_change_together(twins: Twins, feed_server: FeedServer) -> None:
    bases, config = twins.bases, twins.config
    before = assert_twins(bases)
    assert len({answer[2] for answer in before.values()}) == len(before)  # one ETag per page and format
    etag = before["/topics/everything.atom"][2]
    for base in bases:  # either server honours the other's validators
        assert get(f"{base}/topics/everything.atom", {"If-None-Match": etag})[0] == 304
        gz = urllib.request.Request(f"{base}/topics/everything.atom", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gz, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip" and r.headers["ETag"] == etag[:-1] + '-gz"'
            packed = r.read()
        assert get(f"{base}/topics/everything.atom", {"If-None-Match": etag[:-1] + '-gz"'})[0] == 304
        assert gzip.decompress(packed) == before["/topics/everything.atom"][1]

    for path, (_, later) in FEEDS.items():
        feed_server.routes[path] = REAL / later
    cli(config, "fetch", "--all")  # new items committed when it exits
    time.sleep(REVALIDATE + 0.1)  # the servers' cached states are now all older than REVALIDATE
    after = assert_twins(bases)
    changed = {path for path in after if after[path][2] != before[path][2]}
    assert {"/topics/everything.json", "/topics/articles.rss", "/topics/world.atom"} <= changed
    assert not any(path.startswith("/topics/nothing") for path in changed)
    for path in changed:
        assert after[path][1] != before[path][1]
    assert get(f"{bases[1]}/topics/everything.atom", {"If-None-Match": etag})[0] == 200


def test_a_stale_server_is_impossible_past_the_validation_period(
    twins: Twins, feed_server: FeedServer
) -> None:
    """Hammered by requests while `fetch` stores new items, neither server serves the old feed once the
    validation period has passed since the fetch ended."""
    bases, config = twins.bases, twins.config
    url = "/topics/everything.json"
    old = get(bases[0] + url)[2]
    for path, (_, later) in FEEDS.items():
        feed_server.routes[path] = REAL / later
    fetch = runcli.start(config.parent, "--config", str(config), "fetch", "--all")
    while fetch.poll() is None:  # keep both caches warm (and revalidating) during the writes
        for base in bases:
            get(base + url)
    assert runcli.finish(fetch).returncode == 0
    done = time.monotonic()
    time.sleep(REVALIDATE + 0.1)
    answers = [get(base + url) for base in bases]
    assert time.monotonic() - done < REVALIDATE + 5  # the check ran soon after (not a timing claim)
    assert answers[0] == answers[1] and answers[0][2] != old


def test_stop_with_open_client_connections(twins: Twins) -> None:
    """SIGTERM while clients hold keep-alive connections: `serve` exits (it used to loop forever on
    them), and the other server goes on answering."""
    port = int(twins.bases[0].rsplit(":", 1)[1])
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(20)]
    for conn in conns:
        conn.request("GET", "/topics/everything.rss")
        assert conn.getresponse().read()  # the connection stays open (HTTP/1.1 keep-alive)
    twins.stop(0)
    assert get(f"{twins.bases[1]}/topics/everything.rss")[0] == 200
    for conn in conns:
        conn.close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_bench_serve_smoke() -> None:
    """bench/serve.py runs end to end and prints a row per feed and request kind, without errors (a
    smoke test: the figures themselves are not asserted)."""
    bench = ROOT / "bench" / "serve.py"
    args = ["--quick", "--seconds", "1", "--connections", "8"]
    result = subprocess.run(
        [sys.executable, str(bench), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("/topics/")]
    kinds = [" ".join(row[1:-7]) for row in rows]
    assert kinds == ["200", "200 gzip", "304"] * 3, result.stdout
    for row in rows:
        assert float(row[-6].replace(",", "")) > 0 and row[-1] == "0", row  # req/s, errors
