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
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from datetime import datetime

from aggregator.errors import AggregatorError, ParseError
from aggregator.model import FeedMeta, Item, RawEntry, Source
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed

log = logging.getLogger(__name__)

Parsed = tuple[FeedMeta, list[Item], str | None]  # feed metadata, normalized items, problems worth showing


class Stages:
    """How many polls of one process may parse and write at once, whatever the number of threads that
    fetch: ``parsers`` documents parsed and normalized at once (in ``pool``, a process pool, when there
    is one: the other cores), ``writers`` store transactions at once (1 on SQLite, which has a single
    writer: waiting here is free, where SQLite's busy handler sleeps). Each thread fetches ahead of
    parsing by at most one body, so memory follows the thread count, not the number of sources."""

    def __init__(self, parsers: int = 1, writers: int = 1, pool: Executor | None = None) -> None:
        self.parsers, self.writers = parsers, writers
        self.parse = threading.BoundedSemaphore(parsers)
        self.write = threading.BoundedSemaphore(writers)
        self.pool = pool

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

    def run(self, source: Source, body: bytes, url: str, content_type: str | None, now: datetime) -> Parsed:
        """Parse and normalize one document (call it holding ``parse``): in the pool when there is one."""
        if self.pool is None:
            return parse_document(source, body, url, content_type, now)
        done = self.pool.submit(_parse_in_pool, source, body, url, content_type, now).result()
        if isinstance(done, str):
            raise ParseError(done)
        return done


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
    """bytes -> feed metadata and normalized items, the parse and normalize problems in one line."""
    parsed = parse_feed(body, url=url, content_type=content_type, source=source.name)
    items, problem = normalize_entries(source, parsed.meta, parsed.entries, url, now)
    return parsed.meta, items, "; ".join(p for p in (parsed.problem, problem) if p) or None


def _parse_in_pool(
    source: Source, body: bytes, url: str, content_type: str | None, now: datetime
) -> Parsed | str:
    """parse_document in a pool process; an AggregatorError comes back as its message (the exception
    classes take keyword arguments, which pickling drops)."""
    try:
        return parse_document(source, body, url, content_type, now)
    except AggregatorError as e:
        return str(e)


def normalize_entries(
    source: Source, meta: FeedMeta, entries: Sequence[RawEntry], feed_url: str, now: datetime
) -> tuple[list[Item], str | None]:
    """Normalize every entry; one bad entry is skipped and reported, not fatal to the feed."""
    items, failures = [], []
    for index, raw in enumerate(entries):
        try:
            items.append(normalize_entry(raw, source=source, feed=meta, feed_url=feed_url, now=now))
        except Exception as e:
            log.exception("source %r: entry %d could not be normalized", source.name, index)
            failures.append(f"entry {index}: {type(e).__name__}: {e}")
    problem = f"{len(failures)} entries skipped ({failures[0]})" if failures else None
    return items, problem
