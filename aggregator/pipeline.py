"""Poll one source end to end: fetch | parse | normalize | store | match topics.

``poll_source`` is the unit of work that both the worker and the one-shot ``fetch`` command run. It owns
the transaction boundaries (no transaction is held across the network call) and turns every failure into
a PollOutcome recorded on the source, never an exception that stops a batch. ``Stages`` bounds how many
polls parse and write at once, and may send parsing to a process pool; fetching is bounded by the threads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.dedup import disambiguate, repeated_keys
from aggregator.errors import AggregatorError
from aggregator.model import (
    FeedMeta,
    FetchResult,
    FetchState,
    Item,
    PollOutcome,
    Source,
    StoredItem,
    Topic,
)
from aggregator.schedule import Due, Hints, http_hints, parse_retry_after, plan
from aggregator.stages import Stages
from aggregator.stories import StoryParams
from aggregator.topics import MatchDoc, TopicMatcher

log = logging.getLogger(__name__)
STORE_ATTEMPTS = 3  # a store transaction that lost SQLite's write lock is tried again this many times
UNCHANGED_BATCH = 32  # unchanged polls recorded together by the worker and the fetch command

Fetcher = Callable[[Source, FetchState | None], FetchResult]
T = TypeVar("T")


class UnchangedPolls:
    """Write-behind for the most frequent poll of all, the unchanged one (a 304, or the body last
    parsed): its record waits here until ``batch`` of them (or one older than ``max_delay`` seconds)
    are written in one transaction, one statement each for all (``store.record_unchanged``). Whoever
    drives the polls writes what is left (``flush_unchanged``): the worker at each dispatch and when it
    stops, the ``fetch`` command when its polls are done. Until then the source keeps its lease, so a
    crash costs a re-poll, never items (never buffered). ``batch`` 1: each record is written at once."""

    def __init__(self, batch: int = 1, max_delay: float = 1.0) -> None:
        self.batch, self.max_delay = batch, max_delay
        self._lock = threading.Lock()
        self._pending: dict[str, store.UnchangedPoll] = {}  # by source name, in the order polled
        self._writing: dict[str, int] = {}  # sources whose records are being written (how many)
        self._oldest = 0.0  # time.monotonic() of the oldest pending record

    def add(self, poll: store.UnchangedPoll) -> list[store.UnchangedPoll]:
        """Keep ``poll``; the records to write now (all of them when the batch is full or old enough)."""
        now = time.monotonic()
        with self._lock:
            if not self._pending:
                self._oldest = now
            self._pending[poll.outcome.source] = poll
            if len(self._pending) < self.batch and now - self._oldest < self.max_delay:
                return []
            return self._take()

    def holds(self, name: str) -> bool:
        return name in self._pending

    def unwritten(self) -> set[str]:
        """The sources whose records are not in the store yet (held, or being written)."""
        with self._lock:
            return {*self._pending, *self._writing}

    def take(self) -> list[store.UnchangedPoll]:
        """The records held, to be written now; then call ``written`` with them."""
        with self._lock:
            return self._take()

    def written(self, polls: Sequence[store.UnchangedPoll]) -> None:
        """``polls`` (from ``take`` or ``add``) are committed, or given up on."""
        with self._lock:
            for poll in polls:
                left = self._writing.pop(poll.outcome.source, 1) - 1
                if left:
                    self._writing[poll.outcome.source] = left

    def _take(self) -> list[store.UnchangedPoll]:
        taken = list(self._pending.values())
        self._pending.clear()
        for poll in taken:
            self._writing[poll.outcome.source] = self._writing.get(poll.outcome.source, 0) + 1
        return taken


@dataclass(frozen=True)
class Context:
    """Everything a poll needs, built once by the composition root (cli.py)."""

    sources: dict[str, Source]
    topics: Sequence[Topic]
    sessions: sessionmaker[Session]
    fetch: Fetcher
    matchers: dict[str, TopicMatcher] = field(default_factory=dict)
    # called after the commit with the names of the topics that gained items (a WebSub ping)
    on_topics_changed: Callable[[Sequence[str]], None] | None = None
    stories: StoryParams = field(default_factory=StoryParams)  # syndication and story thresholds
    stages: Stages = field(default_factory=Stages)  # parse and write concurrency, the parse pool
    unchanged: UnchangedPolls = field(default_factory=UnchangedPolls)  # unchanged polls not yet written
    posting_times: store.PostingTimes = field(default_factory=store.PostingTimes)  # read once per body

    @classmethod
    def build(
        cls,
        sources: Iterable[Source],
        topics: Sequence[Topic],
        sessions: sessionmaker[Session],
        fetch: Fetcher,
        on_topics_changed: Callable[[Sequence[str]], None] | None = None,
        stages: Stages | None = None,
        unchanged_batch: int = 1,
    ) -> Context:
        """``unchanged_batch`` > 1: unchanged polls are recorded that many at a time (UnchangedPolls;
        the caller then calls ``flush_unchanged`` when its polls are done)."""
        return cls(
            sources={s.name: s for s in sources},
            topics=topics,
            sessions=sessions,
            fetch=fetch,
            matchers={t.name: TopicMatcher(t) for t in topics},
            on_topics_changed=on_topics_changed,
            stages=stages or Stages(),
            unchanged=UnchangedPolls(unchanged_batch),
        )


def poll_source(ctx: Context, name: str, now: datetime) -> PollOutcome:
    """Fetch, parse, normalize and store one source; record the outcome on it."""
    source = ctx.sources[name]
    started = time.monotonic()
    if ctx.unchanged.holds(name):  # its previous poll is not written yet: write it first
        flush_unchanged(ctx)
    try:
        with _engine(ctx).connect() as c:  # a Core connection: no Session per poll
            state, stored = store.poll_inputs(c, name, ctx.posting_times)  # so a 304 only writes
    except SQLAlchemyError as e:  # the database is away: nothing was fetched; polled again when due
        message = f"source {name!r}: store: cannot read the source's state: {store.db_problem(e)}"
        log.error("%s; polled again when its lease ends", message)
        return PollOutcome(name, "error", now, error=message)
    with ExitStack() as slot:
        try:
            result = ctx.fetch(source, state)
            if result.not_modified or _same_body(result, state):
                return _not_modified(ctx, source, result, state, stored, started, now)
            slot.enter_context(ctx.stages.document)  # SQLite, parsed in the threads: parse + store, one slot
            with ctx.stages.parse:
                content_type = result.headers.get("content-type")
                known = partial(_raw_hashes, ctx, name)
                meta, items, same, problem = ctx.stages.run(
                    source, result.body, result.url, content_type, now, known
                )
        except AggregatorError as e:
            status, retry_after = getattr(e, "status", None), getattr(e, "retry_after", None)
            with ctx.stages.write:
                return _failed(ctx, source, state, started, now, str(e), status, retry_after)
        except Exception as e:  # a bug must not stop the other sources: record it, log the traceback
            log.exception("source %r: unexpected error", name)
            message = f"source {name!r}: internal error: {type(e).__name__}: {e}"
            with ctx.stages.write:
                return _failed(ctx, source, state, started, now, message, None)
        return _retried(
            partial(_store, ctx, source, result, state, meta, items, same, problem, started, now),
            partial(_store_failed, ctx, source, state, started, now, http_status=result.status),
            name,
        )


def _raw_hashes(ctx: Context, name: str, keys: Sequence[str]) -> dict[str, str | None]:
    """The raw hashes stored under ``keys`` (the parse stage normalizes only the other entries); the
    database being away here is no reason to fail: then every entry is normalized."""
    try:
        with _engine(ctx).connect() as c:
            return store.raw_hashes(c, name, keys)
    except SQLAlchemyError as e:
        log.warning("source %r: store: cannot read the stored entries' hashes: %s", name, store.db_problem(e))
        return {}


def _retried(store_once: Callable[[], T], failed: Callable[[Exception], T], name: str) -> T:
    """Run a store transaction; one that lost a lock to another process (SQLite's write lock, a
    PostgreSQL deadlock) is redone whole, any other failure is recorded by ``failed``."""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return store_once()
        except OperationalError as e:  # another writer won the lock (or a deadlock): redone whole
            if attempt == STORE_ATTEMPTS or not store.lost_lock(e):
                return failed(e)
            log.info("source %r: database busy, storing again (attempt %d)", name, attempt + 1)
            time.sleep(0.2 * attempt)
        except Exception as e:
            return failed(e)
    raise AssertionError("unreachable")


def _store_failed(
    ctx: Context,
    source: Source,
    state: FetchState | None,
    started: float,
    now: datetime,
    error: Exception,
    http_status: int | None,
) -> PollOutcome:
    """The store transaction rolled back: nothing of this poll was written; record why."""
    _log_store_error(f"source {source.name!r}: could not store the poll", error)
    message = f"source {source.name!r}: store: {store.db_problem(error)}"
    with ctx.stages.write:
        return _failed(ctx, source, state, started, now, message, http_status)


def _store(
    ctx: Context,
    source: Source,
    result: FetchResult,
    state: FetchState | None,
    meta: FeedMeta,
    items: list[Item],
    same: int,
    problem: str | None,
    started: float,
    now: datetime,
) -> PollOutcome:
    """Store a parsed document: ``items`` normalized, ``same`` more entries stored before unchanged."""
    gained: set[str] = set()
    with ctx.stages.write, ctx.sessions.begin() as s:  # the WebSub ping below runs outside both
        distinct = disambiguate(items, store.item_urls(s, source.name, repeated_keys(items)))
        saved = store.save_items(s, source.name, distinct, now)
        match_items(ctx, s, saved.new, saved.updated, now, gained)
        stored = store.schedule_inputs(s, source.name)  # with this poll's items
        due = _plan(s, source, now, headers=result.headers, meta=meta, stored=stored)
        outcome = PollOutcome(
            source.name,
            "updated" if saved.new or saved.updated else "unchanged",
            due.at,
            http_status=result.status,
            entries=len(items) + same,
            new=len(saved.new),
            updated=len(saved.updated),
            problem=problem,
            duration=time.monotonic() - started,
            bytes=len(result.body),
            unchanged=saved.unchanged + same,
            due_reason=due.reason,
        )
        validators, moved = _validators(result, state, source, _hash(result.body))
        store.record_poll(s, outcome, now=now, state=validators, meta=meta, url_reason=moved)
        # last: on PostgreSQL it waits for other workers' linking, and holds theirs until this commit
        store.link_items(s, saved.new, saved.updated, now, ctx.stories)
    if stored.source_id is not None:  # the next unchanged re-poll needs no read of these
        ctx.posting_times.put(stored.source_id, validators.body_hash, stored.published)
    _log(outcome)
    notify_topics(ctx, gained)
    return outcome


def notify_topics(ctx: Context, names: Iterable[str]) -> None:
    """Tell ``ctx.on_topics_changed`` which topics gained items; outside any transaction, and a
    failure is logged, never raised (a hub being down must not fail a poll)."""
    gained = sorted(names)
    if not gained or ctx.on_topics_changed is None:
        return
    try:
        ctx.on_topics_changed(gained)
    except Exception:
        log.exception("topics %s: change notification failed", ", ".join(gained))


def match_items(
    ctx: Context,
    s: Session,
    new: Sequence[tuple[int, Item]],
    updated: Sequence[tuple[int, Item]],
    now: datetime,
    gained: set[str] | None = None,
) -> int:
    """Decide topic memberships for freshly stored items; a changed item may also leave a topic.
    The names of the topics that gained members are added to ``gained``."""
    changed = {item_id for item_id, _ in updated}
    docs = _match_docs(ctx, [*new, *updated], now)
    return _apply_topics(ctx, s, ctx.topics, docs, now, changed, gained)


def backfill_topics(ctx: Context, names: Sequence[str], now: datetime, *, batch: int = 500) -> int:
    """Compute the memberships of new or changed topics from every stored item; returns matches."""
    wanted = [t for t in ctx.topics if t.name in set(names)]
    if not wanted:
        return 0
    matched = 0
    with ctx.sessions.begin() as s:
        pending: list[StoredItem] = []
        for stored in store.stored_items(s, batch=batch):
            pending.append(stored)
            if len(pending) >= batch:
                matched += _apply_topics(ctx, s, wanted, _match_docs(ctx, _pairs(pending), now), now, set())
                pending = []
        matched += _apply_topics(ctx, s, wanted, _match_docs(ctx, _pairs(pending), now), now, set())
    return matched


def _pairs(batch: Sequence[StoredItem]) -> list[tuple[int, Item]]:
    return [(stored.id, stored.item) for stored in batch]


_Doc = tuple[int, Item, tuple[str, ...], MatchDoc]


def _match_docs(ctx: Context, pairs: Sequence[tuple[int, Item]], now: datetime) -> list[_Doc]:
    """Prepare each item once for matching against every topic (``now`` anchors relative dates)."""
    docs = []
    for item_id, item in pairs:
        source = ctx.sources.get(item.source)
        tags = source.tags if source else ()
        docs.append((item_id, item, tags, MatchDoc.from_item(item, tags, now)))
    return docs


def _apply_topics(
    ctx: Context,
    s: Session,
    topics: Sequence[Topic],
    docs: Sequence[_Doc],
    now: datetime,
    changed: set[int],
    gained: set[str] | None = None,
) -> int:
    matched = 0
    for topic in topics:
        matcher = ctx.matchers[topic.name]
        hits, gone = [], []
        for item_id, item, tags, doc in docs:
            if matcher.matches(item, tags, doc):
                hits.append(item_id)
            elif item_id in changed:
                gone.append(item_id)
        added = store.add_topic_items(s, topic.name, hits, now)
        if added and gained is not None:
            gained.add(topic.name)
        matched += added
        store.remove_topic_items(s, topic.name, gone)
    return matched


def topic_definitions(topics: Sequence[Topic], sources: Iterable[Source]) -> dict[str, str]:
    """A hash per topic of everything its memberships depend on (its settings and the source tags)."""
    tags = repr(sorted((s.name, s.tags) for s in sources))
    return {t.name: hashlib.sha256(f"{t!r}|{tags}".encode()).hexdigest() for t in topics}


def _hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _same_body(result: FetchResult, state: FetchState | None) -> bool:
    """A body identical to the last one stored: nothing to parse (servers without validators)."""
    return bool(state and state.body_hash and result.status == 200 and _hash(result.body) == state.body_hash)


def _plan(
    s: Session | Connection | None,
    source: Source,
    now: datetime,
    *,
    errors: int = 0,
    headers: Mapping[str, str] | None = None,
    meta: FeedMeta | None = None,
    retry_after: str | None = None,
    stored: store.ScheduleInputs | None = None,
) -> Due:
    """Gather the scheduling inputs (this poll's hints, the stored feed hints and posting times: read
    now unless ``stored`` has them already)."""
    if stored is None:
        if s is None:
            raise TypeError("pipeline: _plan needs a connection or the stored schedule inputs")
        stored = store.schedule_inputs(s, source.name)
    max_age, expires = http_hints(headers or {}, now)
    hints = Hints(
        ttl=meta.ttl if meta else stored.ttl,
        update_every=meta.update_every if meta else stored.update_every,
        max_age=max_age,
        expires=expires,
        retry_after=parse_retry_after(retry_after, now),
        published=stored.published,
    )
    return plan(source, now, errors=errors, hints=hints)


def _validators(
    result: FetchResult, state: FetchState | None, source: Source, body_hash: str | None
) -> tuple[FetchState, str | None]:
    """What to send next time (the validators just received, else the ones we had) and where: a
    permanent redirect (301, 308) moves the feed once it is seen on two consecutive polls (the reason
    is returned with the new state); a temporary one (302, 307) never does."""
    etag = result.etag or (state.etag if state and result.not_modified else None)
    modified = result.last_modified or (state.last_modified if state and result.not_modified else None)
    requested = state.url if state else source.url
    target = _permanent_target(result, requested)
    seen_before = state.redirect_candidate if state else None
    url, candidate, reason = requested, target, None
    if target is not None and target == seen_before:
        codes = "/".join(sorted({str(code) for code, _ in result.redirects if code in (301, 308)}))
        url, candidate = target, None
        reason = f"moved permanently (HTTP {codes}) from {requested}, confirmed on 2 consecutive polls"
    state_out = FetchState(url, etag, modified, body_hash=body_hash, redirect_candidate=candidate)
    return state_out, reason


def _permanent_target(result: FetchResult, requested: str) -> str | None:
    """Where the leading permanent redirects (301, 308) of this fetch lead, if there were any."""
    url = None
    for status, location in result.redirects:
        if status not in (301, 308):
            break
        url = location
    return url if url != requested else None


def _failed(
    ctx: Context,
    source: Source,
    state: FetchState | None,
    started: float,
    now: datetime,
    message: str,
    http_status: int | None,
    retry_after: str | None = None,
) -> PollOutcome:
    """Record a failed poll; if even that cannot be written, log it and still return the outcome (the
    source stays claimed until its lease ends, then it is polled again): poll_source never raises."""
    errors = (state.errors if state else 0) + 1
    gone = http_status == 410
    if gone:
        message += "; the source is retired: it is not polled again until its URL changes in the config"
    try:
        with ctx.sessions.begin() as s:
            due = _plan(s, source, now, errors=errors, retry_after=retry_after)
            if gone:
                due = Due(now + source.max_interval, "retired: HTTP 410 Gone")
            outcome = PollOutcome(
                source.name,
                "error",
                due.at,
                http_status=http_status,
                error=message,
                duration=time.monotonic() - started,
                due_reason=due.reason,
                retired=gone,
            )
            store.record_poll(s, outcome, now=now)
    except Exception as e:
        _log_store_error(f"source {source.name!r}: could not record the failure {message!r}", e)
        return PollOutcome(source.name, "error", now, http_status=http_status, error=message)
    _log(outcome)
    return outcome


def _log_store_error(what: str, error: Exception) -> None:
    """A lost database connection is logged as one line with its cause (an operator needs no
    traceback for a restart); anything else with its traceback (a bug)."""
    if store.connection_lost(error):
        log.error("%s: %s", what, store.db_problem(error))
    else:
        log.error("%s", what, exc_info=error)


def _not_modified(
    ctx: Context,
    source: Source,
    result: FetchResult,
    state: FetchState | None,
    stored: store.ScheduleInputs,
    started: float,
    now: datetime,
) -> PollOutcome:
    """A 304, or a body identical to the last one: validators and schedule updated, nothing parsed.
    Recorded with other unchanged polls (``ctx.unchanged``), or at once when that batch is 1."""
    due = _plan(None, source, now, headers=result.headers, stored=stored)
    outcome = PollOutcome(
        source.name,
        "not_modified" if result.not_modified else "unchanged",
        due.at,
        http_status=result.status,
        duration=time.monotonic() - started,
        bytes=len(result.body),
        due_reason=due.reason,
    )
    if stored.source_id is not None:  # else the source is no longer in the store: nothing to record
        validators, moved = _validators(result, state, source, state.body_hash if state else None)
        poll = store.UnchangedPoll(stored.source_id, outcome, now, validators, moved)
        if ctx.unchanged.batch > 1:
            _write_unchanged(ctx, ctx.unchanged.add(poll), taken=True)
        else:
            _write_unchanged(ctx, [poll])
    _log(outcome)
    return outcome


def flush_unchanged(ctx: Context, s: Session | Connection | None = None) -> int:
    """Write the unchanged polls ``ctx.unchanged`` still holds (in ``s``'s transaction when given: the
    caller's failure then loses them, which costs re-polls when their leases end); how many."""
    polls = ctx.unchanged.take()
    if s is None:
        _write_unchanged(ctx, polls, taken=True)
        return len(polls)
    try:
        store.record_unchanged(s, polls)
    finally:
        ctx.unchanged.written(polls)
    return len(polls)


def _write_unchanged(ctx: Context, polls: Sequence[store.UnchangedPoll], *, taken: bool = False) -> None:
    """One transaction for ``polls`` (``taken`` from ``ctx.unchanged``); one that lost SQLite's write lock
    is redone; a failure is logged in one line: those sources keep their leases and are polled again
    when the leases end."""
    if not polls:
        return
    try:
        _write_polls(ctx, polls)
    finally:
        if taken:
            ctx.unchanged.written(polls)


def _write_polls(ctx: Context, polls: Sequence[store.UnchangedPoll]) -> None:
    names = ", ".join(repr(p.outcome.source) for p in polls)

    def once() -> None:
        with ctx.stages.write, _engine(ctx).begin() as c:
            store.record_unchanged(c, polls)

    def failed(error: Exception) -> None:
        if not isinstance(error, SQLAlchemyError):
            raise error  # a bug, not the database: the worker logs it with its traceback
        log.error(
            "store: could not record %d unchanged poll(s) (source %s): %s; polled again when the lease ends",
            len(polls),
            names,
            store.db_problem(error),
        )

    _retried(once, failed, names)


def _engine(ctx: Context) -> Engine:
    """The engine the context's sessions are bound to (the re-poll path uses Core connections)."""
    bind = ctx.sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError(f"pipeline: the sessionmaker must be bound to an Engine, not {bind!r}")
    return bind


def _log(outcome: PollOutcome) -> None:
    """Failures as warnings, polls that stored something as info; an unchanged poll (304 or the same
    body: the bulk of a worker's polls) only at debug level (``sources --history`` shows every poll)."""
    if not outcome.ok:
        log.warning("%s", outcome.error)
        return
    log.log(
        logging.INFO if outcome.status == "updated" else logging.DEBUG,
        "source %r: %s (HTTP %s): %d entries, %d new, %d updated in %.2f s%s",
        outcome.source,
        outcome.status,
        outcome.http_status,
        outcome.entries,
        outcome.new,
        outcome.updated,
        outcome.duration,
        f"; problem: {outcome.problem}" if outcome.problem else "",
    )
