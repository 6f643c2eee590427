"""For the multi-process tests: a private PostgreSQL cluster (initdb into a temporary folder, its own port
on 127.0.0.1, stopped and removed afterwards), and `run.py` processes that run until told to stop,
their logs in files. Does not judge what the processes do: the tests do."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from conftest import PeriodFeeds, free_port, period_entries
from runcli import RUN, environment, finish, start

RUNUSER = "/usr/sbin/runuser"
PG_SYSTEM_USER = "postgres"  # initdb and postgres refuse to run as root


def postgres_binaries() -> Path | None:
    """The newest installed PostgreSQL bin folder with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def cluster_unavailable() -> str | None:
    """Why a private cluster cannot be started here (None when it can)."""
    if postgres_binaries() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); apt-get install postgresql"
    if os.geteuid() == 0 and not Path(RUNUSER).exists():
        return f"running as root without {RUNUSER} to start PostgreSQL as {PG_SYSTEM_USER}"
    return None


class Cluster:
    """A PostgreSQL cluster of its own: trust authentication, listening on 127.0.0.1:``port`` only."""

    def __init__(self, folder: Path) -> None:
        bin_folder = postgres_binaries()
        assert bin_folder is not None, cluster_unavailable()
        self.bin, self.folder, self.port = bin_folder, folder, free_port()
        self.data, self.log = folder / "data", folder / "postgres.log"
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = [RUNUSER, "-u", PG_SYSTEM_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (
            f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{self.log_tail()}"
        )

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n--- postgres log ---\n" + self.log.read_text(errors="replace")[-3000:]
        return ""

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A started cluster in a temporary folder; stopped (immediately) and removed however the test ends."""
    folder = Path(tempfile.mkdtemp(prefix="agg-pg-"))  # mode 0700: only its owner may enter
    if os.geteuid() == 0:
        shutil.chown(folder, PG_SYSTEM_USER, PG_SYSTEM_USER)
    try:
        cluster = Cluster(folder / "cluster")
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- aggregator processes ------------------------------------------------------------------------


def fleet_config(
    folder: Path,
    name: str,
    database: str,
    sources: list[str],
    *,
    interval: float,
    lease: float,
    timeout: float = 10,
    per_host: int = 64,
    **more: str,
) -> str:
    """A config file shared by the processes of one store, ``sources`` polled every ``interval`` seconds
    (min = max interval: only the ±10 % jitter moves it), ``per_host`` requests in flight to a host
    (each worker's threads: 4), a topic holding everything. The User-Agent
    ends with the process's WORKER_ID so the feed server can tell them apart. ``more``: top-level keys
    (YAML flow values)."""
    lines = [
        f"database: {database}",
        f"worker: {{tick: 1s, threads: 4, per_host: {per_host}, lease: {lease}s}}",
        f"defaults: {{interval: {interval}s, min_interval: {interval}s, max_interval: {interval}s,"
        f" timeout: {timeout}s, user_agent: 'aggregator-test ${{WORKER_ID:-unnamed}}'}}",
        *(f"{key}: {value}" for key, value in more.items()),
        "sources:",
        *(f"  - {{name: s{n}, url: '{url}'}}" for n, url in enumerate(sources)),
        "topics:",
        "  - {name: everything, query: '*', limit: 1000}",
    ]
    (folder / name).write_text("\n".join(lines) + "\n")
    return name


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command that must succeed."""
    done = finish(start(folder, *args))
    assert done.returncode == 0, done.stderr
    return done


class Daemon:
    """A `worker` or `serve` process named ``agent`` (its WORKER_ID), logging to ``folder/agent.log``
    (a pipe would fill up and stall it)."""

    def __init__(self, folder: Path, command: str, config: str, agent: str, *, ready: bool = True) -> None:
        self.agent, self.log = agent, folder / f"{agent}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUN), command, "--config", config],
                cwd=folder,
                env=environment(WORKER_ID=agent, PYTHONUNBUFFERED="1"),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        if ready:
            self.wait_for("worker polling" if command == "worker" else "serving")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"{self.agent} exited {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.agent} did not say {text!r}:\n{self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, *, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already: a second one would kill it); the exit code (killed
        after 60 s)."""
        if not signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


@contextlib.contextmanager
def daemons() -> Iterator[list[Daemon]]:
    """A list to start daemons into; whatever is still running at the end is killed."""
    running: list[Daemon] = []
    try:
        yield running
    finally:
        for daemon in running:
            if daemon.alive():
                daemon.kill()


def stop_cleanly(running: list[Daemon], *, tracebacks: tuple[str, ...] = ()) -> None:
    """SIGTERM each live daemon: each must exit 0, its log without a traceback (unless its agent is in
    ``tracebacks``)."""
    live = [d for d in running if d.alive()]
    for daemon in live:
        daemon.proc.send_signal(signal.SIGTERM)
    for daemon in live:
        code = daemon.terminate(signalled=True)
        assert code == 0, f"{daemon.agent} exited {code}:\n{daemon.output()[-3000:]}"
        if daemon.agent not in tracebacks:
            assert "Traceback" not in daemon.output(), daemon.output()[-5000:]


# --- what the processes did --------------------------------------------------------------------------

VOLATILE = ("first_seen", "article_id", "story_id")  # clock times and row ids differ between two stores


def exported(folder: Path, config: str) -> dict[str, dict[str, object]]:
    """Every stored item by id (`export`) without the VOLATILE fields; an id twice is an error."""
    records = [json.loads(line) for line in cli(folder, "export", "--config", config).stdout.splitlines()]
    items = {record["id"]: {k: v for k, v in record.items() if k not in VOLATILE} for record in records}
    assert len(items) == len(records), "an item was stored twice"
    return items


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting until {what}"
        time.sleep(0.2)


def polled_since(feeds: PeriodFeeds, group: str, since: float) -> Callable[[], bool]:
    return lambda: all(feeds.delivered(group, since).values())


def published(items: dict[str, dict[str, object]]) -> Counter[str]:
    """Stored items as source#entry (the entry number ends the link)."""
    return Counter(f"{item['source']}#{str(item['link']).rsplit('/', 1)[1]}" for item in items.values())


def expected(feeds: PeriodFeeds, period: int) -> Counter[str]:
    """What the feeds have published by ``period``, as ``published`` shows it."""
    return Counter(f"s{n}#{k}" for n in range(feeds.count) for k in period_entries(n, period, feeds.every))
