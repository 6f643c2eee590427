"""Engine setup (SQLite pragmas, PostgreSQL pool checks) and schema migrations through Alembic.

Only this package talks to the database; callers get an Engine and a sessionmaker and own the
transactions (``with sessionmaker.begin() as s``). Alembic (~18 MB) is imported only to migrate.
"""

from __future__ import annotations

import ast
import fcntl
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT = 10  # seconds: PostgreSQL connection attempts (a host that does not answer) give up
# SQLite's memory is per connection, and a pool holds several: each keeps a page cache (SQLite's default 2
# MiB) and its prepared statements (Python's default: 128; a 35-row INSERT of 15 columns is ~56 KB, and
# every row count is a statement of its own): at 20 connections, 25-40 MB of a worker. In WAL mode a
# connection's page cache is dropped whenever another connection has written since its last transaction, so
# a large one buys less in a busy worker than in one connection; the operating system caches the file
# anyway. ``database_pool.sqlite_cache`` raises it for large stores. Measured before the fingerprint window
# (store.prune_fingerprints; bench/dedup_cost.py --no-window --batches 31, link_items CPU per new item at 1M
# stored items: a 7.3 GB file whose fingerprint index has 37 MB of inner pages and 2.5 GB of leaves; with
# the window, 0.94-0.98 ms with 1 MiB and 0.73-0.74 with 64 MB): 1.10 ms with 1 MiB, 0.78 with 64 MB (+67 MB
# peak RSS, the 100k figure of 1 MiB), 0.83 with 256 MB (+278 MB): once the inner pages fit, every probe of
# a leaf misses anyway. With another connection committing before each batch of 100 (--other-writer), 64 MB
# still gave 0.88: a transaction's own probes share the inner pages. A memory map (``sqlite_mmap``) reads
# without the copy and is not dropped by other writers, but maps only the file's first bytes and SQLite caps
# it at 2 GiB (SQLITE_MAX_MMAP_SIZE of the usual builds): at 1M (the indexes lie beyond 3.8 GB) it saves
# nothing, at 100k (a 0.7 GB file, all mapped) 0.75 -> 0.70 ms, and the mapped pages count in RSS (+367 MB
# there).
SQLITE_CACHE_KIB = 1024
SQLITE_STATEMENTS = 32
# WAL pages after which a commit checkpoints (SQLite's default: 1000, 4 MB). Every checkpoint copies the
# pages written since the last one into the database file and syncs it; the index pages a poll touches
# (fingerprints, items by key) are written again and again, and at 10,000 pages (~40 MB of WAL on disk)
# each is copied once per ten times fewer checkpoints. Measured (bench/ingest.py, 200 feeds, one run):
# cold ingest 112 -> 101 ms CPU per feed and 31.8 -> 24.0 s wall; re-poll after the corpus advanced
# 11.4 -> 9.1 s wall. Memory does not change (the WAL index grows by 32 KB per 4,096 pages).
SQLITE_WAL_CHECKPOINT_PAGES = 10_000


@dataclass(frozen=True)
class Pool:
    """Connection pool limits (a file database or PostgreSQL; in-memory SQLite has its own pool)."""

    size: int = 10
    overflow: int = 10
    timeout: float = 30.0  # seconds to wait for a free connection
    sqlite_cache: int = SQLITE_CACHE_KIB * 1024  # bytes of page cache per SQLite connection
    sqlite_mmap: int = 0  # bytes of the SQLite file each connection memory-maps; 0: off


def make_engine(url: str, pool: Pool | None = None) -> Engine:
    """Create an engine; for PostgreSQL, pooled connections are checked before use (a database
    restart costs the operation in progress, not the process) and connecting gives up after
    CONNECT_TIMEOUT seconds; for SQLite files (no server to lose: no check, a round trip saved on every
    checkout), create the folder, turn on WAL and foreign keys, bound each connection's memory
    (``pool.sqlite_cache``, else SQLITE_CACHE_KIB; SQLITE_STATEMENTS), memory-map the file if
    ``pool.sqlite_mmap`` says so, and hand out the most recently used pooled connection first
    (its cache is the warm one; the others stay idle)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"store: invalid database URL {url!r}: {e}") from e
    kwargs: dict[str, Any] = {"pool_pre_ping": parsed.get_backend_name() != "sqlite"}
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"store: cannot create the folder for {database}: {e}") from e
        kwargs["connect_args"] = {
            "timeout": 30,
            "check_same_thread": False,
            "cached_statements": SQLITE_STATEMENTS,
        }
    elif "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    if pool is not None and database and database != ":memory:" and not database.startswith("file:"):
        kwargs.update(pool_size=pool.size, max_overflow=pool.overflow, pool_timeout=pool.timeout)
        kwargs["pool_use_lifo"] = parsed.get_backend_name() == "sqlite"
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError, SQLAlchemyError) as e:
        raise StoreError(f"store: cannot use database {parsed.render_as_string()}: {e}") from e
    if parsed.get_backend_name() == "sqlite":
        pragmas = pool or Pool()
        event.listen(engine, "connect", _sqlite_pragmas(pragmas.sqlite_cache, pragmas.sqlite_mmap))
    return engine


def _sqlite_pragmas(cache: int, mmap: int) -> Callable[[sqlite3.Connection, object], None]:
    """The engine's connect listener: every new connection gets WAL, the page cache of ``cache`` bytes
    and, when ``mmap`` > 0, memory-mapped reads of the file's first ``mmap`` bytes."""

    def apply(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA cache_size=-{max(1, cache // 1024)}")
        if mmap > 0:
            cursor.execute(f"PRAGMA mmap_size={mmap}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
        cursor.close()

    return apply


def connection_lost(error: BaseException) -> bool:
    """The database could not be reached or dropped the connection (a restart, a network cut)."""
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or isinstance(error, OperationalError)
    )


def db_problem(error: BaseException) -> str:
    """The driver's own first line for a database error (no SQL, no parameters), else the error's."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def lost_lock(error: BaseException) -> bool:
    """Whether a transaction failed only because another one held what it needed (SQLite's write lock,
    a PostgreSQL deadlock or serialization failure): redone whole, it succeeds."""
    cause = getattr(error, "orig", None) or error
    return "locked" in str(cause) or getattr(cause, "sqlstate", None) in ("40P01", "40001")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (creating it on an empty database); a database
    already there is left alone without loading Alembic."""
    current, head = schema_revision(engine)
    if current != head:
        migrate(engine, "head")


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    """Upgrade (or, with ``down``, downgrade) the schema to ``revision``, in one transaction."""
    from alembic import command

    config = _alembic_config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
    except SQLAlchemyError as e:
        raise StoreError(f"store: migration failed on {engine.url.render_as_string()}: {e}") from e


def schema_revision(engine: Engine) -> tuple[str | None, str | None]:
    """(current revision of the database, newest revision this code knows), read with one query of
    Alembic's ``alembic_version`` table and from the migration files, without loading Alembic."""
    shown = engine.url.render_as_string()
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None, head_revision()
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError as e:
        raise StoreError(f"store: cannot open database {shown}: {e}") from e
    if len(versions) > 1:
        raise StoreError(f"store: {shown} has several schema revisions {sorted(versions)}: one is expected")
    return (versions[0] if versions else None), head_revision()


@cache
def head_revision() -> str:
    """The newest revision of the migration files: the one no other revision revises."""
    revised: dict[str, set[str]] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found = _revision_of(path)
        if found is not None:
            revised[found[0]] = found[1]
    heads = set(revised) - set().union(*revised.values())
    if len(heads) != 1:
        raise StoreError(f"store: the migrations in {MIGRATIONS} have {len(heads)} heads {sorted(heads)}")
    return heads.pop()


_REVISION_NAMES = ("revision", "down_revision")


def _revision_of(path: Path) -> tuple[str, set[str]] | None:
    """(``revision``, the ``down_revision`` set) assigned at the top of a migration file."""
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(node, ast.Assign) and isinstance(target, ast.Name) and target.id in _REVISION_NAMES:
            values[target.id] = ast.literal_eval(node.value)
    revision, down = values.get("revision"), values.get("down_revision")
    if not isinstance(revision, str):
        return None
    return revision, {down} if isinstance(down, str) else set(down) if isinstance(down, tuple) else set()


class WriterLock:
    """An exclusive lock file beside a SQLite database: one ``worker`` or ``run`` process per file.

    With PostgreSQL, or an in-memory SQLite database, it holds nothing (workers coordinate in the
    database). The lock is an ``flock``: the kernel releases it when the process ends, however it ends.
    """

    def __init__(self, engine: Engine) -> None:
        self.path: Path | None = None
        self._file: IO[str] | None = None
        url = engine.url
        database = url.database or ""
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return
        if database.startswith("file:"):
            return
        self.path = Path(database).expanduser().resolve().with_name(Path(database).name + ".lock")
        self._acquire(url.render_as_string())

    def _acquire(self, shown: str) -> None:
        assert self.path is not None
        try:
            handle = self.path.open("a+", encoding="utf-8")
        except OSError as e:
            raise StoreError(f"store: cannot create the lock file {self.path}: {e}") from e
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(
                f"store: {shown} is already used by a worker ({holder}, lock file {self.path}); with "
                "SQLite only one `worker` or `run` process may write a database: stop the other one, or "
                "move to PostgreSQL to run several workers (`serve` processes may run beside it)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def ensure_current(engine: Engine, fix: str) -> None:
    """Refuse an outdated schema: ``fix`` names the command that migrates it."""
    current, head = schema_revision(engine)
    if current != head:
        raise StoreError(
            f"store: the database schema is at {current or 'nothing'}, this version needs {head}: "
            f"run `{fix}` first"
        )
