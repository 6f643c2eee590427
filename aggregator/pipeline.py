"""Poll one source end to end: fetch | parse | normalize | store | match topics.

``poll_source`` is the unit of work that both the worker and the one-shot ``fetch`` command run. It owns
the transaction boundaries (no transaction is held across the network call) and turns every failure into
a PollOutcome recorded on the source, never an exception that stops a batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from aggregator import store
from aggregator.errors import AggregatorError
from aggregator.model import (
    FeedMeta,
    FetchResult,
    FetchState,
    Item,
    PollOutcome,
    RawEntry,
    Source,
    StoredItem,
    Topic,
)
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed
from aggregator.schedule import next_due
from aggregator.topics import MatchDoc, TopicMatcher

log = logging.getLogger(__name__)

Fetcher = Callable[[Source, FetchState | None], FetchResult]


@dataclass(frozen=True)
class Context:
    """Everything a poll needs, built once by the composition root (cli.py)."""

    sources: dict[str, Source]
    topics: Sequence[Topic]
    sessions: sessionmaker[Session]
    fetch: Fetcher
    matchers: dict[str, TopicMatcher] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        sources: Iterable[Source],
        topics: Sequence[Topic],
        sessions: sessionmaker[Session],
        fetch: Fetcher,
    ) -> Context:
        return cls(
            sources={s.name: s for s in sources},
            topics=topics,
            sessions=sessions,
            fetch=fetch,
            matchers={t.name: TopicMatcher(t) for t in topics},
        )


def poll_source(ctx: Context, name: str, now: datetime) -> PollOutcome:
    """Fetch, parse, normalize and store one source; record the outcome on it."""
    source = ctx.sources[name]
    started = time.monotonic()
    with ctx.sessions.begin() as s:
        state = store.fetch_state(s, name)
    try:
        result = ctx.fetch(source, state)
        if result.not_modified:
            return _not_modified(ctx, source, result, state, started, now)
        parsed = parse_feed(
            result.body, url=result.url, content_type=result.headers.get("content-type"), source=name
        )
        items, problem = _normalize(source, parsed.meta, parsed.entries, result.url, now)
        problem = "; ".join(p for p in (parsed.problem, problem) if p) or None
    except AggregatorError as e:
        return _failed(ctx, source, state, started, now, str(e), getattr(e, "status", None))
    except Exception as e:  # a bug must not stop the other sources: record it, log the traceback
        log.exception("source %r: unexpected error", name)
        message = f"source {name!r}: internal error: {type(e).__name__}: {e}"
        return _failed(ctx, source, state, started, now, message, None)
    try:
        return _store(ctx, source, result, state, parsed.meta, items, problem, started, now)
    except Exception as e:  # the transaction rolled back: nothing of this poll was written
        log.exception("source %r: could not store the poll", name)
        message = f"source {name!r}: store: {type(e).__name__}: {e}"
        return _failed(ctx, source, state, started, now, message, result.status)


def _normalize(
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


def _store(
    ctx: Context,
    source: Source,
    result: FetchResult,
    state: FetchState | None,
    meta: FeedMeta,
    items: list[Item],
    problem: str | None,
    started: float,
    now: datetime,
) -> PollOutcome:
    with ctx.sessions.begin() as s:
        saved = store.save_items(s, source.name, items, now)
        match_items(ctx, s, saved.new, saved.updated, now)
        outcome = PollOutcome(
            source.name,
            "updated" if saved.new or saved.updated else "unchanged",
            next_due(source, now),
            http_status=result.status,
            entries=len(items),
            new=len(saved.new),
            updated=len(saved.updated),
            problem=problem,
            duration=time.monotonic() - started,
        )
        store.record_poll(s, outcome, now=now, state=_validators(result, state, source), meta=meta)
    _log(outcome)
    return outcome


def match_items(
    ctx: Context,
    s: Session,
    new: Sequence[tuple[int, Item]],
    updated: Sequence[tuple[int, Item]],
    now: datetime,
) -> int:
    """Decide topic memberships for freshly stored items; a changed item may also leave a topic."""
    changed = {item_id for item_id, _ in updated}
    return _apply_topics(ctx, s, ctx.topics, _match_docs(ctx, [*new, *updated]), now, changed)


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
                matched += _apply_topics(ctx, s, wanted, _match_docs(ctx, _pairs(pending)), now, set())
                pending = []
        matched += _apply_topics(ctx, s, wanted, _match_docs(ctx, _pairs(pending)), now, set())
    return matched


def _pairs(batch: Sequence[StoredItem]) -> list[tuple[int, Item]]:
    return [(stored.id, stored.item) for stored in batch]


_Doc = tuple[int, Item, tuple[str, ...], MatchDoc]


def _match_docs(ctx: Context, pairs: Sequence[tuple[int, Item]]) -> list[_Doc]:
    """Prepare each item once for matching against every topic."""
    docs = []
    for item_id, item in pairs:
        source = ctx.sources.get(item.source)
        tags = source.tags if source else ()
        docs.append((item_id, item, tags, MatchDoc.from_item(item, tags)))
    return docs


def _apply_topics(
    ctx: Context, s: Session, topics: Sequence[Topic], docs: Sequence[_Doc], now: datetime, changed: set[int]
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
        matched += store.add_topic_items(s, topic.name, hits, now)
        store.remove_topic_items(s, topic.name, gone)
    return matched


def topic_definitions(topics: Sequence[Topic], sources: Iterable[Source]) -> dict[str, str]:
    """A hash per topic of everything its memberships depend on (its settings and the source tags)."""
    tags = repr(sorted((s.name, s.tags) for s in sources))
    return {t.name: hashlib.sha256(f"{t!r}|{tags}".encode()).hexdigest() for t in topics}


def _validators(result: FetchResult, state: FetchState | None, source: Source) -> FetchState:
    """What to send next time: the validators just received, else the ones we had."""
    etag = result.etag or (state.etag if state and result.not_modified else None)
    modified = result.last_modified or (state.last_modified if state and result.not_modified else None)
    return FetchState(
        url=_next_url(result, state.url if state else source.url), etag=etag, last_modified=modified
    )


def _next_url(result: FetchResult, requested: str) -> str:
    """Where to ask next time: a permanent redirect (301, 308) moves the feed, a temporary one does not
    (a 302 to a signed or load-balanced URL must not become the address polled from then on)."""
    if not result.redirects:
        return result.url
    url = requested
    for status, location in result.redirects:
        if status not in (301, 308):
            break
        url = location
    return url


def _failed(
    ctx: Context,
    source: Source,
    state: FetchState | None,
    started: float,
    now: datetime,
    message: str,
    http_status: int | None,
) -> PollOutcome:
    errors = (state.errors if state else 0) + 1
    outcome = PollOutcome(
        source.name,
        "error",
        next_due(source, now, errors=errors),
        http_status=http_status,
        error=message,
        duration=time.monotonic() - started,
    )
    with ctx.sessions.begin() as s:
        store.record_poll(s, outcome, now=now)
    _log(outcome)
    return outcome


def _not_modified(
    ctx: Context,
    source: Source,
    result: FetchResult,
    state: FetchState | None,
    started: float,
    now: datetime,
) -> PollOutcome:
    outcome = PollOutcome(
        source.name,
        "not_modified",
        next_due(source, now),
        http_status=result.status,
        duration=time.monotonic() - started,
    )
    with ctx.sessions.begin() as s:
        store.record_poll(s, outcome, now=now, state=_validators(result, state, source))
    _log(outcome)
    return outcome


def _log(outcome: PollOutcome) -> None:
    if not outcome.ok:
        log.warning("%s", outcome.error)
        return
    log.info(
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
