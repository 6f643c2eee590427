"""Scale-out benchmark on PostgreSQL: throughput with 1, 2 and 4 `worker` processes against the same local
corpus (bench/server.py), and the latency of one claim with 10,000 sources in the table. One table.

Throughput: for each worker count, a fresh database on the local PostgreSQL (127.0.0.1:5432, user
postgres), `db upgrade`, the workers started and idle (every source due tomorrow), then every source
made due at once: *cold* is the first ingest of the corpus (every entry new), *304* the re-poll of the
same unchanged corpus (conditional GETs: the cost of claiming, fetching and recording a poll). A phase
ends when every source has recorded its poll. Per phase: wall seconds, entries/s and sources/s (over
the wall time), CPU seconds of the worker processes and of their PostgreSQL backends, and the speed-up
over one worker. Claim latency: `store.claim_due_sources` of one batch (the default, twice 4 threads)
on a table of 10,000 due sources over 500 hosts, per-host limit on, one claimer and 4 at once; p50 and
p99 of one claim transaction (SELECT … FOR UPDATE SKIP LOCKED, the per-host count, the lease writes,
the commit). The machine is shared: compare the rows of one run, not runs of different days.

    .venv/bin/python bench/workers.py                 # 200 feeds, 1/2/4 workers, 10,000 sources
    .venv/bin/python bench/workers.py --quick         # 40 feeds, 1/2 workers, 2,000 sources
    .venv/bin/python bench/workers.py --feeds 400 --workers 1,4 --threads 8 --claim-sources 50000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus
from server import CorpusServer

ROOT = Path(__file__).resolve().parents[1]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
TICKS = os.sysconf("SC_CLK_TCK")
NOW = "(now() AT TIME ZONE 'UTC')"  # the store keeps naive UTC times
POLLED = f"SELECT count(*) FROM sources WHERE next_due_at > {NOW} + interval '30 minutes'"  # interval 1h
ACTIVITY = (  # the other backends of the database (not this sampling one)
    "SELECT pid, state, wait_event_type || ':' || wait_event FROM pg_stat_activity"
    " WHERE datname = %s AND pid <> pg_backend_pid()"
)
DONE = (  # what recording a poll does to the claim's columns
    f"UPDATE sources SET next_due_at = {NOW} + interval '1 hour', lease_owner = NULL,"
    " lease_expires_at = NULL WHERE name = ANY(:names)"
)
DUE_SOURCES = (  # N sources over 500 hosts, all due, one millisecond apart
    "INSERT INTO sources (name, url, host, enabled, in_config, error_count, last_new, retired, last_entries,"
    " next_due_at, created_at) SELECT 's' || g, 'http://h' || (g %% 500) || '.test/f' || g,"
    f" 'h' || (g %% 500) || '.test', true, true, 0, 0, false, 0, {NOW} - g * interval '1 ms', {NOW}"
    " FROM generate_series(1, %s) AS g"
)


@dataclass
class Phase:
    workers: int
    name: str
    wall: float
    sources: int
    entries: int
    worker_cpu: float
    db_cpu: float
    errors: int
    waits: Counter[str]


# --- databases and processes ------------------------------------------------------------------------


def conninfo(name: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={name}"


def database_url(name: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(conninfo("postgres"), autocommit=True) as connection:
        connection.execute(statement)


@contextlib.contextmanager
def database(label: str) -> Iterator[str]:
    """A fresh database on the local PostgreSQL (its name), dropped afterwards."""
    name = f"bench_workers_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(name: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(conninfo(name), autocommit=True) as connection:
        cursor = connection.execute(statement, params or None)
        return list(cursor.fetchall()) if cursor.description else []


def run_cli(work: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=work, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"run.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def write_config(work: Path, name: str, srv: CorpusServer, args: argparse.Namespace) -> Path:
    """Every feed of the server polled hourly (so a phase polls each once), the per-host limit high."""
    path = work / f"{name}.yaml"
    lines = [
        f"database: {database_url(name)}",
        f"worker: {{tick: 1s, threads: {args.threads}, per_host: 64, lease: 2m}}",
        "defaults: {interval: 1h, min_interval: 1h, timeout: 30s}",
        "sources:",
        *(f"  - {{name: f{n}, url: '{srv.url(n)}'}}" for n in range(srv.feeds)),
        "topics:",
        "  - {name: everything, query: '*'}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_workers(work: Path, config: Path, count: int) -> list[subprocess.Popen[str]]:
    """``count`` workers, each once it says it is polling (logs in work/worker-N.log)."""
    procs = []
    for i in range(count):
        with (work / f"worker-{i}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(ROOT / "run.py"), "worker", "--config", str(config)],
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=os.environ | {"PYTHONUNBUFFERED": "1"},
                )
            )
    for i, proc in enumerate(procs):
        log_path = work / f"worker-{i}.log"
        deadline = time.monotonic() + 120
        while "worker polling" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker {i} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
    return procs


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process and its live children (0 when it is gone)."""
    total = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += proc_cpu(int(child))
    return total


class Backends:
    """The PostgreSQL backends serving one database, sampled every 0.2 s while running: their CPU seconds
    (a backend's time is kept after it exits; PostgreSQL's own background processes are not counted)
    and what the busy ones do (``waits``, by samples: a wait event, "running", or "idle in transaction"
    while the worker computes inside a transaction)."""

    def __init__(self, name: str) -> None:
        self.name, self.seen, self.start = name, dict[int, float](), dict[int, float]()
        self.waits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rows = sql(self.name, ACTIVITY, self.name)
        for _, state, event in rows:
            if state == "active":
                self.waits[event or "running"] += 1
            elif state == "idle in transaction":  # the worker holds a transaction while it computes
                self.waits["idle-in-tx"] += 1
        for pid, _, _ in rows:
            cpu = proc_cpu(pid)
            self.start.setdefault(pid, cpu)
            self.seen[pid] = max(self.seen.get(pid, 0.0), cpu)

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            with contextlib.suppress(Exception):
                self._sample()

    def __enter__(self) -> Backends:
        self._sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self.stopping.set()
        self.thread.join()

    @property
    def used(self) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.seen.items())


# --- throughput -------------------------------------------------------------------------------------


def phase(name: str, label: str, procs: list[subprocess.Popen[str]], feeds: int) -> Phase:
    """Make every source due now and wait until each has recorded a poll."""
    before = sum(proc_cpu(p.pid) for p in procs)
    with Backends(name) as db:
        start = time.monotonic()
        sql(name, f"UPDATE sources SET next_due_at = {NOW} - interval '1 second'")
        while True:
            [(done,)] = sql(name, POLLED)
            if done >= feeds:
                break
            if time.monotonic() - start > 1800:
                raise SystemExit(f"{label}: only {done} of {feeds} sources polled after 30 minutes")
            time.sleep(0.05)
        wall = time.monotonic() - start
    [(errors,)] = sql(name, "SELECT count(*) FROM sources WHERE error_count > 0")
    [(items,)] = sql(name, "SELECT count(*) FROM items")
    cpu = sum(proc_cpu(p.pid) for p in procs) - before
    return Phase(len(procs), label, wall, feeds, items, cpu, db.used, errors, db.waits)


def throughput(work: Path, srv: CorpusServer, workers: int, args: argparse.Namespace) -> list[Phase]:
    with database(f"w{workers}") as name:
        config = write_config(work, name, srv, args)
        run_cli(work, "db", "upgrade", "--config", str(config))
        run_cli(work, "sources", "--config", str(config))  # creates the source rows, due now
        sql(name, f"UPDATE sources SET next_due_at = {NOW} + interval '1 day'")
        procs = start_workers(work, config, workers)
        try:
            cold = phase(name, "cold", procs, srv.feeds)
            repoll = phase(name, "304", procs, srv.feeds)
            repoll.entries = 0  # nothing was sent again
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(120)
        return [cold, repoll]


# --- claim latency ----------------------------------------------------------------------------------


def claim_latency(sources: int, claimers: int, batch: int) -> tuple[float, float, int]:
    """p50 and p99 (ms) of one claim of ``batch`` sources from ``sources`` due ones (500 hosts, at
    most 64 leases a host), by ``claimers`` threads at once until none is left; and the claims made."""
    from sqlalchemy import text

    from aggregator import store

    with database(f"claim{claimers}") as name:
        engine = store.make_engine(database_url(name))
        store.upgrade(engine)
        sql(name, DUE_SOURCES, sources)
        sql(name, "ANALYZE sources")
        sessions = store.make_sessionmaker(engine)
        times: list[float] = []
        lock = threading.Lock()
        now = datetime.now(UTC) + timedelta(seconds=1)

        def claimer() -> None:
            owner = store.new_owner("bench")
            while True:
                start = time.perf_counter()
                with sessions.begin() as s:
                    names = store.claim_due_sources(
                        s, now, lease=timedelta(minutes=10), limit=batch, owner=owner, per_host=64
                    )
                elapsed = time.perf_counter() - start
                if not names:
                    return
                with lock:
                    times.append(elapsed)
                with sessions.begin() as s:  # the polls are done: due in an hour, leases over (untimed)
                    s.execute(text(DONE), {"names": names})

        threads = [threading.Thread(target=claimer) for _ in range(claimers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        engine.dispose()
    quantiles = statistics.quantiles(times, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000, len(times)


# --- the table --------------------------------------------------------------------------------------


def table(phases: list[Phase], claims: list[tuple[int, float, float, int]], args: argparse.Namespace) -> Any:
    from rich.table import Table

    t = Table(
        title=f"Workers on PostgreSQL: {args.feeds} feeds ({corpus.ENTRIES} entries each, bench/corpus.py), "
        f"{args.threads} threads a worker"
    )
    for col in (
        "phase",
        "workers",
        "wall s",
        "entries/s",
        "sources/s",
        "speed-up",
        "worker CPU s",
        "DB CPU s",
        "CPU ms/source",
        "errors",
        "DB backends busy: top states (share of samples)",
    ):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for name in ("cold", "304"):
        rows = [p for p in phases if p.name == name]
        base = rows[0].wall if rows else 1.0
        for p in rows:
            t.add_row(
                name,
                str(p.workers),
                f"{p.wall:.2f}",
                f"{p.entries / p.wall:,.0f}" if p.entries else "-",
                f"{p.sources / p.wall:,.1f}",
                f"{base / p.wall:.2f}",
                f"{p.worker_cpu:.1f}",
                f"{p.db_cpu:.1f}",
                f"{(p.worker_cpu + p.db_cpu) * 1000 / p.sources:.0f}",
                str(p.errors),
                top_waits(p.waits),
            )
        t.add_section()
    c = Table(
        title=f"Claim latency: {args.claim_sources:,} due sources, batch {2 * args.threads}, per_host 64"
    )
    for col in ("claimers at once", "claims", "p50 ms", "p99 ms"):
        c.add_column(col, justify="right")
    for claimers, p50, p99, count in claims:
        c.add_row(str(claimers), str(count), f"{p50:.2f}", f"{p99:.2f}")
    return t, c


def top_waits(waits: Counter[str]) -> str:
    total = waits.total()
    return (
        ", ".join(f"{event} {count / total:.0%}" for event, count in waits.most_common(2)) if total else "-"
    )


def verdict(phases: list[Phase], claims: list[tuple[int, float, float, int]], batch: int) -> str:
    """Where the next bottleneck is, read off the phases with the most workers and the claim latency."""
    cold = max((p for p in phases if p.name == "cold"), key=lambda p: p.workers)
    locks = sum(n for event, n in cold.waits.items() if event.startswith("Lock:")) / max(
        cold.waits.total(), 1
    )
    idle = cold.waits["idle-in-tx"] / max(cold.waits.total(), 1)
    ratio = cold.worker_cpu / max(cold.db_cpu, 0.01)
    per_source = f"{cold.worker_cpu * 1000 / cold.sources:.0f} vs {cold.db_cpu * 1000 / cold.sources:.0f} ms"
    return (
        f"Cold ingest with {cold.workers} workers: the workers used {ratio:.1f}x the CPU of their database "
        f"backends ({per_source} a source): the workers' Python is the first limit, one core per worker "
        "process (threads share the GIL), so add processes or machines. Next, the database: its busy "
        f"backends sat idle in a transaction {idle:.0%} of the time (a poll's transaction stays open while "
        f"the worker computes) and waited on row or advisory locks {locks:.0%} of the time (polls of feeds "
        "sharing a story wait for each other's commit); that share grows with the workers. "
        + claim_verdict(phases, claims, batch)
    )


def claim_verdict(phases: list[Phase], claims: list[tuple[int, float, float, int]], batch: int) -> str:
    repoll = max((p for p in phases if p.name == "304"), key=lambda p: p.workers)
    advisory = repoll.waits["Lock:advisory"] / max(repoll.waits.total(), 1)
    alone, crowded = claims[0][1], claims[-1][1]
    cpu = repoll.worker_cpu * 1000 / repoll.sources
    ceiling = batch * 1000 / max(crowded, 0.01)
    return (
        f"Re-polls (304s, {cpu:.0f} ms of worker CPU a source) meet the claim first: with a per-host "
        "limit every claim takes one advisory lock, so claims queue across the fleet (Lock:advisory "
        f"{advisory:.0%} of busy samples with {repoll.workers} workers; one claim {alone:.0f} ms alone, "
        f"{crowded:.0f} ms with {claims[-1][0]} claimers): about {ceiling:,.0f} sources/s for the whole "
        f"fleet at batch {batch}, whatever the number of workers. A larger worker.batch, or a lock per "
        "host, lifts it."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, default=200)
    p.add_argument("--workers", default="1,2,4", help="worker process counts, comma-separated")
    p.add_argument("--threads", type=int, default=4, help="poll threads per worker")
    p.add_argument("--claim-sources", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="40 feeds, 1 and 2 workers, 2,000 sources")
    args = p.parse_args()
    if args.quick:
        args.feeds, args.workers, args.claim_sources = 40, "1,2", 2000
    from rich.console import Console

    out = Console(width=180)
    out.print(
        f"{args.feeds} feeds, {corpus.feed_count_entries(args.feeds):,} entries; {os.cpu_count()} CPUs; "
        f"python {sys.version.split()[0]}"
    )
    srv = CorpusServer(args.feeds).start()
    phases: list[Phase] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            for count in [int(x) for x in args.workers.split(",")]:
                phases += throughput(Path(tmp), srv, count, args)
                cold = phases[-2]
                out.print(
                    f"  {count} worker(s): cold ingest {cold.wall:.1f} s, {cold.errors} errors",
                    highlight=False,
                )
    finally:
        srv.stop()
    claims = [(n, *claim_latency(args.claim_sources, n, 2 * args.threads)) for n in (1, 4)]
    for t in table(phases, claims, args):
        out.print(t)
    out.print(verdict(phases, claims, 2 * args.threads), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
