"""Ingest benchmark: this project against reader (PyPI), same synthetic corpus, same run, one table.

For every latency, each side runs in its own child process on a fresh SQLite file and polls every feed
of bench/server.py with a thread pool, phase by phase: cold ingest, re-poll unchanged (304s), re-poll
unchanged with the server sending no validators (200s with the same bodies), re-poll after the corpus
advanced. Per phase and side: wall seconds, entries/s (entries in the documents of the corpus / wall),
CPU ms per feed (process_time of the child: every thread, not the server), peak RSS of the child so far;
and the ratio project/reader. The server runs in this (parent) process.

    .venv/bin/python bench/ingest.py                 # N=200, latency 0 and 50 ms (~4 minutes)
    .venv/bin/python bench/ingest.py --quick         # N=40, latency 0 ms
    .venv/bin/python bench/ingest.py --full          # N=1,000
    .venv/bin/python bench/ingest.py --feeds 500 --latency 0 --gzip --threads 16 --profile /tmp/p.prof
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus
from server import CorpusServer

PHASES = ("cold", "unchanged 304", "unchanged, no validators", "advanced")
SIDES = ("project", "reader")
MARK = "@@bench "  # prefix of the child's result lines on stdout


# --- the parent: server, children, table -------------------------------------------------------------


def server_state(srv: CorpusServer, phase: str) -> None:
    """Put the server in the state a phase needs (before the child starts polling)."""
    srv.validators = phase != "unchanged, no validators"
    srv.set_version(1 if phase == "advanced" else 0)


def run_side(srv: CorpusServer, side: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    srv.set_version(0)
    cmd = [sys.executable, __file__, "--child", side, "--feeds", str(args.feeds), "--port", str(srv.port)]
    cmd += ["--threads", str(args.threads), "--work", str(work / side)]
    if args.profile and side == "project":
        cmd += ["--profile", args.profile]
        cmd[cmd.index("--threads") + 1] = "1"
    env = os.environ | {"PYTHONHASHSEED": "0"}
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdin and child.stdout
    results = []
    try:
        _expect(child, "ready")
        for phase in PHASES:
            server_state(srv, phase)
            child.stdin.write(phase + "\n")
            child.stdin.flush()
            results.append(_expect(child, phase))
        child.stdin.write("quit\n")
        child.stdin.flush()
    finally:
        child.stdin.close()
        child.wait(timeout=120)
    return results


def _expect(child: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert child.stdout
    for line in child.stdout:
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK) :])
            if result.get("phase") != what:
                raise RuntimeError(f"child: expected {what!r}, got {result}")
            return result
    raise RuntimeError(f"child exited with {child.wait()} before reporting {what!r} (see its stderr above)")


def table(feeds: int, latency: float, rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> Any:
    from rich.table import Table

    title = (
        f"Ingest: {feeds} feeds x {corpus.ENTRIES} entries, latency {latency * 1000:.0f} ms, "
        f"{args.threads} threads{', gzip' if args.gzip else ''}"
    )
    t = Table(title=title)
    for col in ("phase", "side", "wall s", "entries/s", "CPU ms/feed", "peak RSS MB", "new", "upd", "err"):
        t.add_column(col, justify="left" if col in ("phase", "side") else "right")
    t.add_column("speed x", justify="right")
    t.add_column("CPU x", justify="right")
    entries = corpus.feed_count_entries(feeds)
    for i, phase in enumerate(PHASES):
        got = {side: rows[side][i] for side in rows}
        for side, r in got.items():
            t.add_row(
                phase if side == SIDES[0] or len(got) == 1 else "",
                side,
                f"{r['wall']:.2f}",
                f"{entries / r['wall']:,.0f}",
                f"{r['cpu'] * 1000 / feeds:.2f}",
                f"{r['rss'] / 1024:.0f}",
                str(r["new"]),
                str(r["updated"]),
                str(r["errors"]),
                *(_ratios(got) if side == SIDES[-1] else ("", "")),
            )
        t.add_section()
    return t


def _ratios(got: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The project relative to reader, higher is better: entries/s (reader's wall / the project's) and
    reader's CPU / the project's."""
    if len(got) < 2:
        return "", ""
    p, r = got["project"], got["reader"]
    return f"{r['wall'] / p['wall']:.2f}", f"{r['cpu'] / max(p['cpu'], 1e-9):.2f}"


def parent(args: argparse.Namespace) -> int:
    from rich.console import Console

    out = Console(width=None if sys.stdout.isatty() else 120)
    sides = [s for s in SIDES if s in args.sides.split(",")]
    out.print(
        f"corpus: {args.feeds} feeds, {corpus.feed_count_entries(args.feeds):,} entries; "
        f"sides: {', '.join(sides)}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs"
    )
    for latency in [float(x) / 1000 for x in args.latency.split(",")]:
        srv = CorpusServer(args.feeds, latency=latency, gzip_=args.gzip).start()
        try:
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                rows = {side: run_side(srv, side, args, Path(tmp)) for side in sides}
        finally:
            srv.stop()
        out.print(table(args.feeds, latency, rows, args))
    return 0


# --- the children: one side each, phases on command --------------------------------------------------


Poller = Callable[[], tuple[int, int, int]]  # one pass over every feed: (new, updated, errors)


def project_side(feeds: int, port: int, threads: int, work: Path) -> Poller:
    """Build the Context as aggregator/cli.py open_app does, on a fresh SQLite file."""
    from aggregator.cli import open_app
    from aggregator.config import load_config
    from aggregator.model import PollOutcome
    from aggregator.pipeline import poll_source

    logging.getLogger("aggregator").setLevel(logging.CRITICAL)  # failures: one line each, below
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        f"database: sqlite:///{work / 'project.db'}",
        f"worker: {{threads: {threads}, per_host: {min(threads, 64)}}}",
        "sources:",
    ]
    for f in range(feeds):
        lines += [f"  - name: bench-{f:04d}", f"    url: http://127.0.0.1:{port}/feeds/{f}.xml"]
        lines += ["    tags: [news]"]
    lines += [
        "topics:",
        "  - {name: kaka, query: 'kaka OR tinsa', sources: {tags: [news]}}",
        "  - {name: phrase, query: '\"colmer danpa\" OR title:gorris'}",
        "  - {name: everything, query: '*', limit: 50}",
    ]
    path = work / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    app = open_app(load_config(path))
    names = list(app.ctx.sources)

    def poll() -> tuple[int, int, int]:
        if threads == 1:  # in the main thread: what --profile needs (cProfile sees one thread)
            outcomes = [one(n) for n in names]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                outcomes = list(pool.map(one, names))
        return sum(o.new for o in outcomes), sum(o.updated for o in outcomes), sum(not o.ok for o in outcomes)

    def one(name: str) -> PollOutcome:
        """Poll one source; a failure (or an exception poll_source lets out) is one line on stderr."""
        try:
            outcome = poll_source(app.ctx, name, datetime.now(UTC))
        except Exception as e:
            print(f"project: {name}: poll_source raised {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            return PollOutcome(name, "error", datetime.now(UTC), error=str(e))
        if not outcome.ok:
            print(f"project: {name}: {(outcome.error or '')[:200]}", file=sys.stderr)
        return outcome

    return poll


def reader_side(feeds: int, port: int, threads: int, work: Path) -> Poller:
    from reader import make_reader

    work.mkdir(parents=True, exist_ok=True)
    r = make_reader(str(work / "reader.sqlite"))
    for f in range(feeds):
        r.add_feed(f"http://127.0.0.1:{port}/feeds/{f}.xml")

    def poll() -> tuple[int, int, int]:
        new = updated = errors = 0
        for result in r.update_feeds_iter(scheduled=False, workers=threads):
            if isinstance(result.value, Exception):
                errors += 1
                print(f"reader: {result.url}: {result.value}", file=sys.stderr)
            elif result.value is not None:
                new += result.value.new
                updated += result.value.modified
        return new, updated, errors

    return poll


def child(args: argparse.Namespace) -> int:
    build = project_side if args.child == "project" else reader_side
    poll = build(args.feeds, args.port, args.threads, Path(args.work))
    _report({"phase": "ready"})
    profiler = None
    for line in sys.stdin:
        phase = line.strip()
        if phase == "quit":
            break
        if args.profile and phase == "cold":
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        new, updated, errors = poll()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            profiler = None
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux: the peak so far
        _report(dict(phase=phase, wall=wall, cpu=cpu, rss=rss, new=new, updated=updated, errors=errors))
    return 0


def _report(result: dict[str, Any]) -> None:
    print(MARK + json.dumps(result), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, default=200, help="number of feeds (default 200)")
    p.add_argument("--full", action="store_true", help="1,000 feeds")
    p.add_argument("--quick", action="store_true", help="40 feeds, latency 0 only")
    p.add_argument("--latency", default="0,50", help="comma-separated latencies in ms (default 0,50)")
    p.add_argument(
        "--threads", type=int, default=4, help="polling threads per side (default 4, the worker's default)"
    )
    p.add_argument("--gzip", action="store_true", help="the server gzips bodies")
    p.add_argument("--sides", default="project,reader", help="project,reader (default both)")
    p.add_argument(
        "--profile", help="write a cProfile of the project's cold ingest to this file (polls in one thread)"
    )
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.full:
        args.feeds = 1000
    if args.quick:
        args.feeds, args.latency = 40, "0"
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
