"""Ingest benchmark: this project against reader (PyPI), same corpus, same run, one table.

For every latency, each side runs in its own child process on a fresh SQLite file and polls every feed
of bench/server.py with ``--threads`` threads, phase by phase: cold ingest, re-poll unchanged (304s),
re-poll unchanged with the server sending no validators (200s with the same bodies), re-poll after the
corpus advanced. An unchanged phase takes ~0.2 s, too short for one reading on a shared machine: it is
polled ``--passes`` times (nothing changes between passes) and its row is the median pass (wall and CPU
each). The server (in this parent process) listens on ``--ports`` ports of 127.0.0.1; the
project keeps its default per-host limit (2 requests in flight per host:port), so up to 2 x ports
requests are in flight. Per phase and side: wall seconds, entries/s (entries in the documents of the
corpus / wall), CPU ms per feed (CPU time of the child and its pool processes: every thread, not the
server), peak RSS of the phase (the sum of VmRSS of the child and its descendants, sampled every 20 ms, or the
child's own VmHWM if higher, reset before each phase: shared pages count once per process, so this is an
upper bound); and the ratios reader/project of wall time and of CPU (higher is better for the project).
Above the table, each side's RSS once started (imports done, store open, nothing polled yet). The project's
schema is created by `run.py db upgrade` in a process of its own before the child polls (Alembic, loaded
only to migrate, is no part of a worker started on a current database), so the child holds what a
worker holds.

    .venv/bin/python bench/ingest.py                 # N=200, latency 0 and 50 ms
    .venv/bin/python bench/ingest.py --quick         # N=40, latency 0 ms
    .venv/bin/python bench/ingest.py --full          # N=1,000
    .venv/bin/python bench/ingest.py --real          # the real feeds of ../shared/corpus/real
    .venv/bin/python bench/ingest.py --feeds 500 --latency 0 --gzip --threads 16 --profile /tmp/p.prof
    .venv/bin/python bench/ingest.py --latency 0 --sides project --phases cold,304   # memory, quickly
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus
from server import Corpus, CorpusServer, Synthetic

PHASES = ("cold", "unchanged 304", "unchanged, no validators", "advanced")
PHASE_KEYS = dict(zip(("cold", "304", "200", "advanced"), PHASES, strict=True))  # --phases
SIDES = ("project", "reader")
MARK = "@@bench "  # prefix of the child's result lines on stdout
ROOT = Path(__file__).resolve().parent.parent  # the checkout: run.py


# --- the parent: server, children, table -------------------------------------------------------------


def server_state(srv: CorpusServer, phase: str) -> None:
    """Put the server in the state a phase needs (before the child starts polling)."""
    srv.validators = phase != "unchanged, no validators"
    srv.set_version(1 if phase == "advanced" else 0)


def run_side(srv: CorpusServer, side: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    srv.set_version(0)
    ports = ",".join(str(p) for p in srv.ports)
    cmd = [sys.executable, __file__, "--child", side, "--feeds", str(args.feeds), "--port-list", ports]
    cmd += ["--threads", str(args.threads), "--work", str(work / side)]
    cmd += ["--parse-processes", str(args.parse_processes), "--passes", str(args.passes)]
    if args.profile and side == "project":
        cmd += ["--profile", args.profile, "--profile-phase", args.profile_phase]
        cmd[cmd.index("--threads") + 1] = "1"
    env = os.environ | {"PYTHONHASHSEED": "0"}
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdin and child.stdout
    results = []
    try:
        args.started[side] = _expect(child, "ready")["rss"]
        for phase in args.phase_names:
            server_state(srv, phase)
            child.stdin.write(phase + "\n")
            child.stdin.flush()
            with TreeRSS(child.pid) as rss:
                result = _expect(child, phase)
            result["rss"] = max(result["rss"], rss.peak_kb)
            results.append(result)
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


class TreeRSS:
    """Samples the resident memory of a process and its descendants (pool processes) every 20 ms while
    in use; ``peak_kb`` is the highest sum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in _tree(self.pid)))


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the process or thread has just ended
                todo += [int(c) for c in task.read_text().split()]
    return found


def _rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def _status_kb(pid: int, field: str) -> int:
    """A kB figure of /proc/PID/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _reset_peak_rss() -> None:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs 5), so that each phase reports its
    own peak, not the highest of the phases before it (ru_maxrss cannot be reset)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def table(runs: list[tuple[float, dict[str, list[dict[str, Any]]]]], args: argparse.Namespace) -> Any:
    """One table: a section per latency and phase, a row per side, the ratios on reader's row."""
    from rich.table import Table

    title = (
        f"Ingest: {args.feeds} feeds ({args.corpus_name}), {args.threads} threads, "
        f"{len(args.port_numbers)} ports x per_host 2{', gzip' if args.gzip else ''}"
    )
    t = Table(title=title)
    columns = ("latency", "phase", "side", "wall s", "entries/s", "CPU ms/feed", "peak RSS MB")
    for col in (*columns, "new", "upd", "err", "speed x", "CPU x"):
        t.add_column(col, justify="left" if col in ("phase", "side") else "right")
    for latency, rows in runs:
        _table_rows(t, latency, rows, args)
    return t


def _table_rows(
    t: Any, latency: float, rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace
) -> None:
    feeds, entries = args.feeds, args.entries
    for i, phase in enumerate(args.phase_names):
        got = {side: rows[side][i] for side in rows}
        for side, r in got.items():
            first = side == SIDES[0] or len(got) == 1
            t.add_row(
                f"{latency * 1000:.0f} ms" if first else "",
                phase if first else "",
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
    source: Corpus = corpus.RealCorpus() if args.real else Synthetic()
    if args.real:
        args.feeds = args.feeds or len(corpus.RealCorpus().files)
        args.corpus_name, args.entries = "real", corpus.RealCorpus().entries(args.feeds)
    else:
        args.feeds = args.feeds or 200
        args.corpus_name = f"synthetic, {corpus.ENTRIES} entries each"
        args.entries = corpus.feed_count_entries(args.feeds)
    out.print(
        f"corpus: {args.feeds} feeds, {args.entries:,} entries; sides: {', '.join(sides)}; "
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs"
    )
    runs = []
    for latency in [float(x) / 1000 for x in args.latency.split(",")]:
        srv = CorpusServer(args.feeds, latency=latency, gzip_=args.gzip, ports=args.ports, source=source)
        srv.start()
        args.port_numbers = srv.ports
        try:
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                rows = {side: run_side(srv, side, args, Path(tmp)) for side in sides}
        finally:
            srv.stop()
        runs.append((latency, rows))
    started = ", ".join(f"{side} {kb / 1024:.0f} MB" for side, kb in args.started.items())
    out.print(f"RSS once started (imports, store open; the last latency's run): {started}")
    out.print(table(runs, args))
    return 0


# --- the children: one side each, phases on command --------------------------------------------------


Poller = Callable[[], tuple[int, int, int]]  # one pass over every feed: (new, updated, errors)


def feed_url(ports: list[int], feed: int) -> str:
    """Where bench/server.py serves ``feed`` (CorpusServer.url)."""
    return f"http://127.0.0.1:{ports[feed % len(ports)]}/feeds/{feed}.xml"


def project_side(feeds: int, ports: list[int], threads: int, work: Path, processes: int = 0) -> Poller:
    """Build the Context as aggregator/cli.py open_app does, on a fresh SQLite file."""
    from aggregator.cli import open_app
    from aggregator.config import load_config
    from aggregator.model import PollOutcome
    from aggregator.pipeline import flush_unchanged, poll_source

    logging.getLogger("aggregator").setLevel(logging.CRITICAL)  # failures: one line each, below
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        f"database: sqlite:///{work / 'project.db'}",
        f"worker: {{threads: {threads}, parse_processes: {processes}}}",  # per_host: 2 per host:port
        "sources:",
    ]
    for f in range(feeds):
        lines += [f"  - name: bench-{f:04d}", f"    url: {feed_url(ports, f)}"]
        lines += ["    tags: [news]"]
    lines += [
        "topics:",
        "  - {name: kaka, query: 'kaka OR tinsa', sources: {tags: [news]}}",
        "  - {name: phrase, query: '\"colmer danpa\" OR title:gorris'}",
        "  - {name: everything, query: '*', limit: 50}",
    ]
    path = work / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    # the schema is created by `db upgrade` in its own process, as an operator's first step: Alembic
    # (loaded only to migrate) stays out of the measured process, like a worker started on a current store
    upgrade = [sys.executable, str(ROOT / "run.py"), "db", "upgrade", "--config", str(path)]
    subprocess.run(upgrade, check=True, stdout=subprocess.DEVNULL)
    app = open_app(load_config(path))
    names = list(app.ctx.sources)

    def poll() -> tuple[int, int, int]:
        if threads == 1:  # in the main thread: what --profile needs (cProfile sees one thread)
            outcomes = [one(n) for n in names]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                outcomes = list(pool.map(one, names))
        flush_unchanged(app.ctx)  # as cli.poll_many: the unchanged polls still held are written
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


def reader_side(feeds: int, ports: list[int], threads: int, work: Path) -> Poller:
    from reader import make_reader

    work.mkdir(parents=True, exist_ok=True)
    r = make_reader(str(work / "reader.sqlite"))
    for f in range(feeds):
        r.add_feed(feed_url(ports, f))

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
    ports = [int(p) for p in args.port_list.split(",")]
    if args.child == "project":
        poll = project_side(args.feeds, ports, args.threads, Path(args.work), args.parse_processes)
    else:
        poll = reader_side(args.feeds, ports, args.threads, Path(args.work))
    _report({"phase": "ready", "rss": sum(_rss_kb(p) for p in _tree(os.getpid()))})
    profiler = None
    for line in sys.stdin:
        phase = line.strip()
        if phase == "quit":
            break
        if args.profile and phase == args.profile_phase:
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time: the machine is shared
            profiler.enable()
        _reset_peak_rss()
        walls, cpus = [], []
        for _ in range(args.passes if phase.startswith("unchanged") else 1):  # nothing changes: repeatable
            wall, cpu = time.perf_counter(), tree_cpu()
            new, updated, errors = poll()
            walls.append(time.perf_counter() - wall)
            cpus.append(tree_cpu() - cpu)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            profiler = None
        rss = _status_kb(os.getpid(), "VmHWM")  # this process's peak since _reset_peak_rss
        _report(dict(phase=phase, wall=wall, cpu=cpu, rss=rss, new=new, updated=updated, errors=errors))
    return 0


def tree_cpu() -> float:
    """CPU seconds of this process (every thread) and of its live descendants (pool processes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in _tree(os.getpid())[1:]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _report(result: dict[str, Any]) -> None:
    print(MARK + json.dumps(result), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, help="number of feeds (default 200; --real: one per file)")
    p.add_argument("--real", action="store_true", help="serve the real feeds of ../shared/corpus/real")
    p.add_argument("--full", action="store_true", help="1,000 feeds")
    p.add_argument("--quick", action="store_true", help="40 feeds, latency 0 only")
    p.add_argument("--latency", default="0,50", help="comma-separated latencies in ms (default 0,50)")
    p.add_argument("--threads", type=int, default=32, help="polling threads (reader: workers) per side")
    p.add_argument("--ports", type=int, default=16, help="server ports, each one host:port (default 16)")
    p.add_argument("--gzip", action="store_true", help="the server gzips bodies")
    p.add_argument(
        "--parse-processes", type=int, default=0, help="the project's worker.parse_processes (default 0)"
    )
    p.add_argument(
        "--passes",
        type=int,
        default=3,
        help="passes of each unchanged phase; the row is the median pass (default 3: one pass is ~0.2 s)",
    )
    p.add_argument("--sides", default="project,reader", help="project,reader (default both)")
    p.add_argument(
        "--phases",
        default=",".join(PHASE_KEYS),
        help="phases to run, in order, cold first: cold,304,200,advanced (default all; 200: no validators)",
    )
    p.add_argument(
        "--profile", help="write a cProfile of the project's cold ingest to this file (polls in one thread)"
    )
    p.add_argument("--profile-phase", default="cold", choices=PHASES, help="the phase --profile records")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--port-list", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.passes < 1:
        p.error("--passes: 1 or more")
    if args.child:
        return child(args)
    keys = args.phases.split(",")
    if not set(keys) <= PHASE_KEYS.keys() or keys[0] != "cold":
        p.error(f"--phases: some of {','.join(PHASE_KEYS)}, cold first (the others re-poll what it stored)")
    args.phase_names = [PHASE_KEYS[key] for key in keys]
    args.started = {}
    if args.full:
        args.feeds = 1000
    if args.quick:
        args.feeds, args.latency, args.ports = 40, "0", 4
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
