"""Serving benchmark: `python run.py serve` as its own process on 127.0.0.1 under wrk, one table.

Builds a store with `python run.py fetch --all` over synthetic feed files (bench/corpus.py; a few
thousand items), starts `serve` on it, and runs wrk against cached topic feeds in every format: plain
GETs (200, plain and gzip) and conditional GETs (If-None-Match: the current ETag, so 304). Per row:
body bytes, requests/s, p50, p99, the server's CPU seconds over the run and its CPU microseconds per
request (from /proc, every thread), errors (non-2xx/3xx responses and socket errors). Needs wrk
(Debian package `wrk`). Talks only to 127.0.0.1.

    .venv/bin/python bench/serve.py                        # 100 feeds, 64 connections, 5 s per row
    .venv/bin/python bench/serve.py --quick                # 20 feeds, 2 s per row (the smoke test)
    .venv/bin/python bench/serve.py --database postgresql+psycopg://postgres@127.0.0.1:5432/bench_x  # empty
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "run.py"
FORMATS = ("rss", "atom", "json")
TOPICS = {  # name -> (query, collapse); every topic has limit 50
    "everything": ("*", "article"),
    "stories": ("*", "story"),
    "wire": ("domain:example.com", "none"),
    "first-feeds": ("source:feed-0*", "article"),
}


@dataclass(frozen=True)
class Row:
    url: str
    kind: str  # a key of KINDS
    size: int  # body bytes per response
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s: float
    requests: int
    errors: int

    def cells(self) -> list[str]:
        cpu_us = self.cpu_s / self.requests * 1e6 if self.requests else 0.0
        return [
            self.url,
            self.kind,
            f"{self.size:,}",
            f"{self.rps:,.0f}",
            f"{self.p50_ms:.2f}",
            f"{self.p99_ms:.2f}",
            f"{self.cpu_s:.2f}",
            f"{cpu_us:,.0f}",
            str(self.errors),
        ]


def write_store(work: Path, feeds: int, database: str) -> Path:
    """Feed files, a config naming them and the topics, and a store filled by `run.py fetch --all`."""
    (work / "feeds").mkdir(parents=True, exist_ok=True)
    lines = [f"database: {database}", "sources:"]
    for n in range(feeds):
        path = work / "feeds" / f"feed-{n:03d}.xml"
        path.write_bytes(corpus.render(n, 0))
        lines += [f"  - name: feed-{n:03d}", f"    url: feeds/{path.name}"]
    lines.append("topics:")
    for name, (query, collapse) in TOPICS.items():
        lines += [f"  - name: {name}", f"    query: '{query}'", f"    collapse: {collapse}", "    limit: 50"]
    config = work / "bench.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_cli(work, config, "db", "upgrade")
    run_cli(work, config, "fetch", "--all")
    return config


def run_cli(work: Path, config: Path, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--config", str(config), *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        sys.exit(f"bench: run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(work: Path, config: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    served = work / f"serve-{port}.yaml"
    server = (
        f"server: {{host: 127.0.0.1, port: {port}, base_url: 'http://127.0.0.1:{port}', "
        f"processes: {args.processes}, threads: {args.server_threads}}}\n"
    )
    served.write_text(server + config.read_text(encoding="utf-8"), "utf-8")
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(RUN), "--config", str(served), "serve"], cwd=work, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"bench: serve did not answer on {base} within 30 s; see {work / 'serve.log'}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the web processes), all threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total + sum(cpu_seconds(child) for child in children)


def load_average() -> str:
    """The 1-minute load average (other work on the machine skews every figure)."""
    return f"{os.getloadavg()[0]:.1f}"


KINDS = {  # row kind -> request headers ({etag}: the feed's current ETag)
    "200": ["Accept-Encoding: identity"],
    "200 gzip": ["Accept-Encoding: gzip"],
    "304": ["Accept-Encoding: identity", "If-None-Match: {etag}"],
}


def probe(url: str, headers: list[str]) -> tuple[int, int]:
    """One request as wrk will send it: (status, body bytes). urllib neither decodes gzip nor follows
    a 304, so both are seen as sent."""
    request = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, len(r.read())
    except urllib.error.HTTPError as e:
        return e.code, len(e.read())


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, args: argparse.Namespace, headers: list[str]) -> dict[str, float]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=120).stdout
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not (total and rps and p50 and p99):
        sys.exit(f"bench: cannot read wrk's output:\n{out}")
    return {
        "requests": int(total[1]),
        "rps": float(rps[1]),
        "p50": _ms(p50[1]),
        "p99": _ms(p99[1]),
        "errors": (int(bad[1]) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0),
    }


def measure(pid: int, url: str, kind: str, args: argparse.Namespace) -> Row:
    """One wrk run on ``url``; first checks that the server answers these headers as the row claims."""
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
        etag = str(r.headers["ETag"])
    headers = [h.format(etag=etag) for h in KINDS[kind]]
    status, size = probe(url, headers)
    if status != int(kind.split()[0]):
        sys.exit(f"bench: {url} with {headers} answered {status}, not {kind}")
    before = cpu_seconds(pid)
    got = wrk(url, args, headers)
    cpu = cpu_seconds(pid) - before
    path = "/" + url.split("/", 3)[3]
    return Row(
        path, kind, size, got["rps"], got["p50"], got["p99"], cpu, int(got["requests"]), int(got["errors"])
    )


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    head = ["feed", "status", "bytes", "req/s", "p50 ms", "p99 ms", "server CPU s", "CPU us/req", "errors"]
    table = [head] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.feeds} feeds; "
        f"server: python run.py serve, processes: {args.processes or 'one per CPU'}, "
        f"threads: {args.server_threads} ({os.cpu_count()} cores, shared; load average before/after: "
        f"{args.load_before}/{args.load_after})"
    )
    for n, line in enumerate(table):
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, default=100, help="synthetic feeds, ~35 items each (default 100)")
    p.add_argument("--seconds", type=int, default=5, help="wrk duration per row (default 5)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--topics", nargs="*", default=["everything", "stories"], help="topics to load")
    p.add_argument("--database", help="SQLAlchemy URL (default: a SQLite file in the work folder)")
    p.add_argument("--processes", type=int, default=0, help="server.processes (default 0: one per CPU)")
    p.add_argument("--server-threads", type=int, default=8, help="server.threads (default 8)")
    p.add_argument("--quick", action="store_true", help="20 feeds, 2 s per row, one topic")
    p.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    p.add_argument("--reuse", type=Path, help="a work folder kept by --keep: skip building the store")
    args = p.parse_args()
    if args.quick:
        args.feeds, args.seconds, args.topics = 20, 2, ["everything"]
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    work = args.reuse or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        started = time.perf_counter()
        if args.reuse:
            config = work / "bench.yaml"
        else:
            config = write_store(work, args.feeds, args.database or f"sqlite:///{work / 'store.db'}")
            print(f"store: {args.feeds} feeds fetched in {time.perf_counter() - started:.1f} s ({work})")
        proc, base = start_server(work, config, args)
        args.load_before = load_average()
        try:
            rows = [
                measure(proc.pid, f"{base}/topics/{topic}.{fmt}", kind, args)
                for topic in args.topics
                for fmt in FORMATS
                for kind in KINDS
            ]
            args.load_after = load_average()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print_table(rows, args)
    finally:
        if args.keep or args.reuse:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
