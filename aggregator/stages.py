"""The stages of a poll between fetching and storing: how many polls may parse and write at once, and
the parse stage itself (bytes -> feed metadata and normalized items), inline or in a process pool.
Imports only the pure parse and normalize modules, so a pool process stays small; no I/O here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import TypeVar

from aggregator.errors import AggregatorError, ParseError
from aggregator.model import FeedMeta, Item, ParsedFeed, RawEntry, Source
from aggregator.normalize import RawIdentity, normalize_entry, raw_identity
from aggregator.parse import parse_feed

log = logging.getLogger(__name__)
R = TypeVar("R")

Parsed = tuple[FeedMeta, list[Item], str | None]  # feed metadata, normalized items, problems worth showing
# feed metadata, the items normalized, how many entries were left as stored (not normalized), problems
Fresh = tuple[FeedMeta, list[Item], int, str | None]
# identity keys -> the raw hash stored under each (keys not stored are absent): store.raw_hashes
Known = Callable[[Sequence[str]], Mapping[str, str | None]]
Identities = list[RawIdentity]  # per entry: normalize.raw_identity
Todo = list[tuple[int, RawEntry, RawIdentity]]  # entries to normalize, with their index in the document


HANDOFF_PATIENCE = 10.0  # seconds a parse waits for the writers before going ahead anyway


class Handoff:
    """Parsed documents on their way to a writer, at most ``limit``: a thread reserves a place before
    parsing (``reserve``, waiting while every place is taken) and gives it back when its store
    transaction starts (``taken``). The parsed items of a poll take several times its body's memory,
    and without this bound every polling thread could hold a parsed document waiting for SQLite's single
    writer. The bound is soft: a thread keeps the place it did not give back (a poll that ended between
    parsing and writing) for its next parse, and a wait longer than HANDOFF_PATIENCE goes ahead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # places taken
        self.waiting = 0  # threads waiting for one
        self._changed = threading.Condition()
        self._mine = threading.local()

    def reserve(self) -> None:
        if getattr(self._mine, "place", False):
            return
        with self._changed:
            self.waiting += 1
            self._changed.wait_for(lambda: self.held < self.limit, timeout=HANDOFF_PATIENCE)
            self.waiting -= 1
            self.held += 1
        self._mine.place = True

    def taken(self) -> None:
        if not getattr(self._mine, "place", False):
            return
        self._mine.place = False
        with self._changed:
            self.held -= 1
            self._changed.notify()


class _WriteStage:
    """``writers`` store transactions at once (``with stages.write``); starting one gives back the
    thread's place in the handoff."""

    def __init__(self, writers: int, handoff: Handoff) -> None:
        self._slots = threading.BoundedSemaphore(writers)
        self._handoff = handoff

    def __enter__(self) -> None:
        self._slots.acquire()
        self._handoff.taken()

    def __exit__(self, *exc: object) -> None:
        self._slots.release()


class Stages:
    """How many polls of one process may parse and write at once, whatever the number of threads that
    fetch: ``parsers`` documents parsed and normalized at once (in ``pool``, a process pool, when there
    is one: the other cores), ``writers`` store transactions at once (1 on SQLite, which has a single
    writer: waiting here is free, where SQLite's busy handler sleeps). Between the two, ``handoff`` lets
    at most ``parsers`` parsed documents wait for a writer; each thread fetches ahead of parsing by at
    most one body. So memory follows the thread count (bodies), not the number of sources.

    With one parser in the threads and one writer (SQLite), ``document`` is a single slot a poll holds from
    the start of its parse to the end of its store transaction: one document at a time is parsed *or*
    stored, while the other threads fetch. Parse and store are both Python, so overlapping them only
    passes the GIL to and fro (at every SQLite call); measured (bench/ingest.py, 200 feeds, 32 threads,
    three runs each): cold ingest 72-75 -> 63-67 ms CPU per feed, re-poll after the corpus advanced
    26-27 -> 24-26, and less wall time. Otherwise (a parse pool, PostgreSQL's writers) it holds nothing."""

    def __init__(self, parsers: int = 1, writers: int = 1, pool: Executor | None = None) -> None:
        self.parsers, self.writers = parsers, writers
        self.parse = threading.BoundedSemaphore(parsers)
        self.handoff = Handoff(parsers)
        self.write = _WriteStage(writers, self.handoff)
        self.pool = pool
        serial = pool is None and parsers == 1 and writers == 1
        self.document: AbstractContextManager[object] = threading.Lock() if serial else nullcontext()

    @classmethod
    def build(cls, *, processes: int, writers: int) -> Stages:
        """``processes`` > 0: parse in a pool of that many processes (started lazily by a fork server
        that imports only this module); 0: parse in the polling threads, one at a time."""
        if processes <= 0:
            return cls(parsers=1, writers=writers)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["aggregator.stages"])
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=context)
        return cls(parsers=processes, writers=writers, pool=pool)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(
        self, source: Source, body: bytes, url: str, content_type: str | None, now: datetime, known: Known
    ) -> Fresh:
        """Parse one document and normalize its entries but those ``known`` says are stored unchanged
        (call it holding ``parse``, then store the result holding ``write``): in the pool when there
        is one (parsing, then normalizing). Waits first for a place in the handoff."""
        self.handoff.reserve()
        if self.pool is None:
            return parse_fresh(source, body, url, content_type, now, known)
        parsed = self.pool.submit(_in_pool, parse_identities, source, body, url, content_type).result()
        if isinstance(parsed, str):
            raise ParseError(parsed)
        document, identities = parsed
        todo, same = fresh_entries(document.entries, identities, known)
        done = self.pool.submit(_in_pool, normalize_entries, source, document.meta, todo, url, now).result()
        if isinstance(done, str):
            raise ParseError(done)
        items, problem = done
        return document.meta, items, same, _problems(document.problem, problem)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (default: 8 per core, one more for each thread that allocates at once):
    with many polling threads each arena keeps its own freed memory, about 50 MB more at 32 threads.
    Call it before the threads start; True if applied (glibc only; ``MALLOC_ARENA_MAX`` set in the
    environment wins)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False


def parse_document(source: Source, body: bytes, url: str, content_type: str | None, now: datetime) -> Parsed:
    """bytes -> feed metadata and normalized items (every entry), the parse and normalize problems in
    one line."""
    meta, items, _, problem = parse_fresh(source, body, url, content_type, now, lambda keys: {})
    return meta, items, problem


def parse_fresh(
    source: Source, body: bytes, url: str, content_type: str | None, now: datetime, known: Known
) -> Fresh:
    """parse_document, leaving out the entries ``known`` says are stored unchanged (counted)."""
    document, identities = parse_identities(source, body, url, content_type)
    todo, same = fresh_entries(document.entries, identities, known)
    items, problem = normalize_entries(source, document.meta, todo, url, now)
    return document.meta, items, same, _problems(document.problem, problem)


def parse_identities(
    source: Source, body: bytes, url: str, content_type: str | None
) -> tuple[ParsedFeed, Identities]:
    """bytes -> the parsed document and each entry's raw identity (key and hash)."""
    parsed = parse_feed(body, url=url, content_type=content_type, source=source.name)
    ids = [raw_identity(raw, source=source, feed=parsed.meta, feed_url=url) for raw in parsed.entries]
    return parsed, ids


def fresh_entries(entries: Sequence[RawEntry], identities: Identities, known: Known) -> tuple[Todo, int]:
    """The entries to normalize, and how many are left out: those whose identity key is the document's
    only one with that key (so it stays the item's key: dedup.disambiguate leaves it alone) and whose
    raw hash is the one stored under that key (one lookup for the document)."""
    counts = Counter(identity.key for identity in identities)
    unique = [key for key, count in counts.items() if key is not None and count == 1]
    stored = known(unique) if unique else {}
    todo = [
        (index, raw, identity)
        for index, (raw, identity) in enumerate(zip(entries, identities, strict=True))
        if identity.key is None or counts[identity.key] > 1 or stored.get(identity.key) != identity.hash
    ]
    return todo, len(entries) - len(todo)


def _problems(*problems: str | None) -> str | None:
    return "; ".join(p for p in problems if p) or None


def _in_pool(function: Callable[..., R], *args: object) -> R | str:
    """``function(*args)`` in a pool process; an AggregatorError comes back as its message (the
    exception classes take keyword arguments, which pickling drops)."""
    try:
        return function(*args)
    except AggregatorError as e:
        return str(e)


def normalize_entries(
    source: Source, meta: FeedMeta, entries: Todo, feed_url: str, now: datetime
) -> tuple[list[Item], str | None]:
    """Normalize the (index, entry, raw identity) ``entries``; one bad entry is skipped and reported, not
    fatal to the feed."""
    items, failures = [], []
    for index, raw, identity in entries:
        try:
            items.append(
                normalize_entry(raw, source=source, feed=meta, feed_url=feed_url, now=now, identity=identity)
            )
        except Exception as e:
            log.exception("source %r: entry %d could not be normalized", source.name, index)
            failures.append(f"entry {index}: {type(e).__name__}: {e}")
    problem = f"{len(failures)} entries skipped ({failures[0]})" if failures else None
    return items, problem
