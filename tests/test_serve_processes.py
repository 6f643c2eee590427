"""`python run.py serve` with several web processes on one listening socket: it starts them, they serve
the same feeds, a 304 keeps the connection open, SIGTERM stops every one (no orphan), a web process that
dies is replaced, and the web processes stop by themselves when their parent is killed."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import runcli
from conftest import REAL, FeedServer, free_port

from aggregator import httpd, web

pytestmark = pytest.mark.skipif(not REAL.exists(), reason="shared corpus missing")

FEEDS = {"/bbc.xml": "bbc-news-1.xml", "/guardian.xml": "guardian-1.xml"}


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    folder: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def children(self) -> set[int]:
        return children(self.proc.pid)

    def stop(self) -> subprocess.CompletedProcess[str]:
        self.proc.send_signal(signal.SIGTERM)
        return runcli.finish(self.proc)


def children(pid: int) -> set[int]:
    try:
        return {
            int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
        }
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture
def store_config(tmp_path: Path, feed_server: FeedServer) -> Path:
    """A migrated, fetched SQLite store and its config (without a server section)."""
    for path, name in FEEDS.items():
        feed_server.routes[path] = REAL / name
    config = tmp_path / "base.yaml"
    config.write_text(
        "database: sqlite:///store.db\nsources:\n"
        + "".join(f"  - {{name: {p[1:-4]}, url: '{feed_server.url(p)}'}}\n" for p in FEEDS)
        + "topics:\n  - {name: everything, query: '*', limit: 100}\n",
        encoding="utf-8",
    )
    for args in (("db", "upgrade"), ("fetch", "--all")):
        done = runcli.finish(runcli.start(tmp_path, "--config", str(config), *args))
        assert done.returncode == 0, done.stdout + done.stderr
    return config


def start(config: Path, *args: str, processes: int | None = None) -> Served:
    port = free_port()
    server = f"server: {{host: 127.0.0.1, port: {port}" + (f", processes: {processes}" if processes else "")
    served = config.parent / f"serve-{port}.yaml"
    served.write_text(server + "}\n" + config.read_text(encoding="utf-8"), encoding="utf-8")
    proc = runcli.start(config.parent, "--config", str(served), "serve", *args)
    s = Served(proc, port, config.parent)
    try:
        wait_until(lambda: proc.poll() is not None or healthy(s.base), "serve answers /healthz")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, runcli.finish(proc).stderr
    return s


@pytest.fixture
def two(store_config: Path) -> Iterator[Served]:
    served = start(store_config, "--processes", "2")
    yield served
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.communicate()


def test_processes_serve_alike_and_sigterm_stops_every_one(two: Served) -> None:
    kids = two.children()
    assert len(kids) == 2, kids
    answers = set()
    for _ in range(20):  # new connections, taken by one process or the other
        with urllib.request.urlopen(f"{two.base}/topics/everything.atom", timeout=10) as r:
            answers.add((r.status, r.headers["ETag"], r.read()))
    assert len(answers) == 1  # every process renders the same bytes under the same ETag
    conn = http.client.HTTPConnection("127.0.0.1", two.port, timeout=10)
    conn.request("GET", "/topics/everything.atom")  # held open while the server stops
    assert conn.getresponse().read()
    stopped = two.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert "(2 processes)" in stopped.stdout
    assert not any(alive(pid) for pid in kids)  # the parent waited for every one of them
    conn.close()


def test_a_304_keeps_the_connection_open(store_config: Path) -> None:
    """waitress closes the connection after a response without a body; a feed reader's conditional
    GETs would each pay a new TCP connection."""
    served = start(store_config, processes=1)
    try:
        assert served.children() == set()  # one process: no fork
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        conn.request("GET", "/topics/everything.rss")
        first = conn.getresponse()
        first.read()
        etag = first.headers["ETag"]
        sock = conn.sock
        for _ in range(3):
            conn.request("GET", "/topics/everything.rss", headers={"If-None-Match": etag})
            again = conn.getresponse()
            assert again.status == 304 and again.read() == b""
            assert again.headers["Connection"] is None and not again.will_close
            assert conn.sock is sock  # the same connection, still open
        conn.request("GET", "/topics/everything.rss", headers={"If-None-Match": etag, "Connection": "close"})
        asked = conn.getresponse()
        assert asked.status == 304 and asked.will_close  # unless the client asks to close it
        conn.close()
    finally:
        assert served.stop().returncode == 0


def test_a_slow_reader_gets_every_byte_of_a_large_feed(store_config: Path) -> None:
    """Large bodies are sent from a view of the rendered bytes (httpd._Body): a client reading slowly
    through a small receive buffer gets them whole."""
    served = start(store_config, processes=1)
    try:
        with urllib.request.urlopen(f"{served.base}/topics/everything.json", timeout=10) as r:
            whole = r.read()
        assert len(whole) > 2 * web.ZERO_COPY  # the zero-copy path, and many partial sends below
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", served.port))
            request = b"GET /topics/everything.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            sock.sendall(request)
            received = bytearray()
            while chunk := sock.recv(1024):
                received += chunk
                time.sleep(0.0005)
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == whole
    finally:
        assert served.stop().returncode == 0


def test_body_buffer_hands_out_views_and_skips_what_was_sent() -> None:
    """httpd._Body as waitress uses it: prepare, then get (a view) and skip what the socket took."""
    body = httpd._Body(b"0123456789")
    assert body.prepare(8) == 8 and len(body) == 8  # the Content-Length caps it
    assert bytes(body.get(3)) == b"012" and len(body) == 8  # get alone consumes nothing
    body.skip(3, True)
    assert bytes(body.get()) == b"34567" and bytes(body.get(100)) == b"34567"
    assert bytes(body.get(2, skip=True)) == b"34" and len(body) == 3
    with pytest.raises(ValueError):
        body.skip(4)
    body.skip(3)
    assert len(body) == 0 and bytes(body.get()) == b""


def test_a_dead_web_process_is_replaced(two: Served) -> None:
    kids = two.children()
    victim = min(kids)
    time.sleep(max(0.0, httpd.RESTART_AFTER - (time.time() - start_time(victim))) + 0.5)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(two.children() - {victim}) == 2, "a new web process replaces the dead one")
    assert healthy(two.base)
    with urllib.request.urlopen(f"{two.base}/topics/everything.json", timeout=10) as r:
        assert r.status == 200
    stopped = two.stop()
    assert (
        stopped.returncode == 0 and "web process" in stopped.stderr and "starting another" in stopped.stderr
    )


def test_web_processes_stop_when_their_parent_is_killed(two: Served) -> None:
    kids = two.children()
    two.proc.kill()  # SIGKILL: the parent cannot stop them
    two.proc.communicate(timeout=30)  # returns once every web process has closed its output too
    assert not any(alive(pid) for pid in kids)


def test_a_web_process_dying_at_its_start_stops_serve(two: Served) -> None:
    """A web process that dies right after its start is not restarted in a loop: `serve` stops the
    others and exits 1."""
    kids = two.children()
    os.kill(min(kids), signal.SIGKILL)  # well within RESTART_AFTER of its start
    done = runcli.finish(two.proc)
    assert done.returncode == 1
    assert f"web process {min(kids)} exited (-9) right after its start; stopping" in done.stderr
    assert not any(alive(pid) for pid in kids)


def start_time(pid: int) -> float:
    """When the process started (seconds since the epoch)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def test_processes_option_rejects_nonsense(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("database: sqlite:///x.db\n")
    done = runcli.finish(runcli.start(tmp_path, "--config", "c.yaml", "serve", "--processes", "0"))
    assert done.returncode == 2 and "--processes: expected a number of processes from 1 to 64" in done.stderr
    (tmp_path / "d.yaml").write_text("database: sqlite:///x.db\nserver: {processes: -1}\n")
    done = runcli.finish(runcli.start(tmp_path, "--config", "d.yaml", "serve"))
    assert done.returncode == 2 and "server.processes" in done.stderr, done.stderr


def test_unknown_topic_is_a_404_from_the_web_processes(two: Served) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{two.base}/topics/nope.rss", timeout=10)
    assert e.value.code == 404
    e.value.close()
    assert two.stop().returncode == 0
