"""Repository functions: every read and write the pipeline, worker, web server and CLI make.

Each takes an open Session and never commits: the caller owns the transaction. Identity is decided by
the database (unique constraints + insert-on-conflict), so re-polls, retries and races are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregator.model import (
    Enclosure,
    FeedMeta,
    FetchState,
    Item,
    PollOutcome,
    Source,
    SourceHealth,
    StoredItem,
)
from aggregator.store.stories import with_sightings
from aggregator.store.tables import (
    ArticleRow,
    ItemRow,
    PollRow,
    SourceRow,
    TombstoneRow,
    TopicItemRow,
    TopicRow,
    UTCDateTime,
)


def _insert(s: Session, table: Any) -> Any:
    """The dialect's INSERT, which offers ``on_conflict_do_nothing``."""
    name = s.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"store: unsupported database dialect {name}")


# --- sources -------------------------------------------------------------------------------------


def sync_sources(s: Session, sources: Sequence[Source], now: datetime) -> None:
    """Make the sources table agree with the configuration; new sources are due at once."""
    rows = {row.name: row for row in s.scalars(select(SourceRow))}
    for source in sources:
        row = rows.pop(source.name, None)
        if row is None:
            s.add(
                SourceRow(
                    name=source.name,
                    url=source.url,
                    enabled=source.enabled,
                    in_config=True,
                    error_count=0,
                    last_new=0,
                    next_due_at=now,
                    created_at=now,
                )
            )
            continue
        if row.url != source.url:  # the operator changed the URL: start afresh
            row.url, row.effective_url, row.etag, row.last_modified = source.url, None, None, None
            row.redirect_candidate, row.url_reason, row.body_hash = None, None, None
            row.next_due_at, row.retired, row.error_count = now, False, 0
            row.last_status, row.last_error = None, None
        if not row.enabled and source.enabled:  # re-enabled by the operator: also ends a retirement
            row.next_due_at, row.retired = now, False
        row.enabled, row.in_config = source.enabled, True
    for row in rows.values():
        row.in_config = False


def claim_due_sources(s: Session, now: datetime, *, lease: timedelta, limit: int = 100) -> list[str]:
    """Names of enabled sources due by ``now``; their next due time moves ``lease`` ahead so that a
    second claim does not take them while they are being polled."""
    query = (
        select(SourceRow)
        .where(SourceRow.enabled, SourceRow.in_config, ~SourceRow.retired, SourceRow.next_due_at <= now)
        .order_by(SourceRow.next_due_at)
        .limit(limit)
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(s.scalars(query))
    for row in rows:
        row.next_due_at = now + lease
    return [row.name for row in rows]


def fetch_state(s: Session, name: str) -> FetchState | None:
    row = s.scalar(select(SourceRow).where(SourceRow.name == name))
    if row is None:
        return None
    return FetchState(
        url=row.effective_url or row.url,
        etag=row.etag,
        last_modified=row.last_modified,
        errors=row.error_count,
        body_hash=row.body_hash,
        redirect_candidate=row.redirect_candidate,
    )


def record_poll(
    s: Session,
    outcome: PollOutcome,
    *,
    now: datetime,
    state: FetchState | None = None,
    meta: FeedMeta | None = None,
    url_reason: str | None = None,
) -> None:
    """Write what one poll learned onto its source row (status, validators, errors, next due time and
    why, a confirmed move, a retirement) and into its bounded poll history."""
    row = s.scalar(select(SourceRow).where(SourceRow.name == outcome.source))
    if row is None:
        return
    _record_history(s, row.id, outcome, now)
    row.next_due_reason = outcome.due_reason
    row.retired = row.retired or outcome.retired
    row.last_fetch_at = now
    row.last_http_status = outcome.http_status
    row.last_status = outcome.status
    row.next_due_at = outcome.next_due
    if outcome.ok:
        row.error_count, row.last_error = 0, None
        row.last_new = outcome.new
        row.last_problem = outcome.problem
        if outcome.entries or outcome.status == "updated":  # not a 304 or an identical body
            row.last_entries = outcome.entries
    else:
        row.error_count += 1
        row.last_error = outcome.error
    if state is not None:
        effective = state.url if state.url != row.url else None
        if effective != row.effective_url:
            row.url_reason = url_reason if effective else None
        row.effective_url = effective
        row.etag, row.last_modified = state.etag, state.last_modified
        row.body_hash, row.redirect_candidate = state.body_hash, state.redirect_candidate
    if meta is not None:
        row.title = _no_nul(meta.title) if meta.title else row.title
        row.link = meta.link or row.link
        row.feed_ttl = _seconds(meta.ttl)
        row.feed_update_every = _seconds(meta.update_every)


def source_health(s: Session) -> list[SourceHealth]:
    counts = dict(s.execute(select(ItemRow.source_id, func.count()).group_by(ItemRow.source_id)).all())
    result = []
    for row in s.scalars(select(SourceRow).where(SourceRow.in_config).order_by(SourceRow.name)):
        result.append(
            SourceHealth(
                name=row.name,
                url=row.url,
                effective_url=row.effective_url,
                enabled=row.enabled,
                status=_health_status(row),
                last_fetch=row.last_fetch_at,
                last_http_status=row.last_http_status,
                error_count=row.error_count,
                last_error=row.last_error,
                items=counts.get(row.id, 0),
                last_new=row.last_new,
                next_due=row.next_due_at,
                due_reason=row.next_due_reason,
                url_reason=row.url_reason,
                retired=row.retired,
                last_entries=row.last_entries,
            )
        )
    return result


def _health_status(row: SourceRow) -> str:
    """disabled, retired, new, ok, erroring (one failure) or backing off (more, or Retry-After)."""
    if not row.enabled:
        return "disabled"
    if row.retired:
        return "retired"
    if row.last_status is None:
        return "new"
    if row.last_status != "error":
        return "ok"
    waiting = row.error_count > 1 or (row.next_due_reason or "").startswith("Retry-After")
    return "backing off" if waiting else "erroring"


# --- items ---------------------------------------------------------------------------------------


#: Content changes applied to one item at most; after that it is "flapping" (a counter, a rotating
#: teaser or an A/B title that changes on every poll) and further changes are ignored.
MAX_UPDATES = 10


@dataclass
class SaveResult:
    """The rows a batch of items created and changed, as (id, item); the rest were stored as is.

    ``tombstoned``: items that retention pruned and the feed still carries (not stored again);
    ``flapping``: changed items past MAX_UPDATES (not updated). Both are counted in ``unchanged`` too.
    """

    new: list[tuple[int, Item]] = field(default_factory=list)
    updated: list[tuple[int, Item]] = field(default_factory=list)
    unchanged: int = 0
    tombstoned: int = 0
    flapping: int = 0


def save_items(
    s: Session, source: str, items: Sequence[Item], now: datetime, *, max_updates: int = MAX_UPDATES
) -> SaveResult:
    """Insert new items, update changed ones in place (at most ``max_updates`` times each), leave the
    others alone; an item whose identity has a tombstone is not stored again."""
    source_id = s.scalar(select(SourceRow.id).where(SourceRow.name == source))
    if source_id is None:
        raise LookupError(f"store: unknown source {source!r}")
    result = SaveResult()
    unique: dict[str, Item] = {}
    for item in items:  # the same identity twice in one document: the first one wins
        unique.setdefault(item.key, item)
    existing = {
        row.key: row
        for row in s.scalars(
            select(ItemRow).where(ItemRow.source_id == source_id, ItemRow.key.in_(list(unique)))
        )
    }
    buried = _tombstones(s, source_id, [key for key in unique if key not in existing])
    for key, item in unique.items():
        row = existing.get(key)
        if row is None and key in buried:
            result.unchanged += 1
            result.tombstoned += 1
        elif row is None:
            new_id = _insert_item(s, source_id, item, now)
            if new_id is not None:
                result.new.append((new_id, item))
            else:
                result.unchanged += 1  # another writer stored it first
        elif row.content_hash == item.content_hash:
            result.unchanged += 1
        elif row.update_count >= max_updates:
            result.unchanged += 1
            result.flapping += 1
            if "flapping" not in (row.flags or []):
                row.flags = [*(row.flags or []), "flapping"]
        else:
            _update_item(s, row, item, now)
            result.updated.append((row.id, item))
    return result


def _tombstones(s: Session, source_id: int, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    query = select(TombstoneRow.key).where(TombstoneRow.source_id == source_id, TombstoneRow.key.in_(keys))
    return set(s.scalars(query))


def item_urls(s: Session, source: str, keys: Sequence[str]) -> dict[str, str | None]:
    """The canonical URL stored under each of ``keys`` in ``source`` (keys not stored are absent)."""
    if not keys:
        return {}
    query = (
        select(ItemRow.key, ItemRow.url)
        .join(SourceRow, ItemRow.source_id == SourceRow.id)
        .where(SourceRow.name == source, ItemRow.key.in_(list(keys)))
    )
    return {key: url for key, url in s.execute(query)}


def _article_id(s: Session, url: str | None, now: datetime) -> int | None:
    if not url:
        return None
    s.execute(_insert(s, ArticleRow).values(url=url, created_at=now).on_conflict_do_nothing())
    return s.scalar(select(ArticleRow.id).where(ArticleRow.url == url))


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters (SQLite can): the store drops them on both."""
    return text.replace("\x00", "")


def _item_values(item: Item) -> dict[str, Any]:
    return {
        "url": item.url,
        "link": item.link,
        "title": _no_nul(item.title),
        "html": _no_nul(item.html),
        "text": _no_nul(item.text),
        "updated": item.updated,
        "language": item.language,
        "authors": list(item.authors),
        "categories": list(item.categories),
        "enclosures": [{"url": e.url, "type": e.type, "length": e.length} for e in item.enclosures],
        "image": item.image,
        "content_hash": item.content_hash,
        "flags": list(item.flags),
    }


def _insert_item(s: Session, source_id: int, item: Item, now: datetime) -> int | None:
    statement = (
        _insert(s, ItemRow)
        .values(
            uid=item.uid,
            source_id=source_id,
            key=item.key,
            published=item.published,
            dated=item.dated,
            article_id=_article_id(s, item.url, now),
            first_seen=now,
            changed_at=now,
            update_count=0,
            **_item_values(item),
        )
        .on_conflict_do_nothing()
        .returning(ItemRow.id)
    )
    new_id: int | None = s.scalar(statement)
    return new_id


def _update_item(s: Session, row: ItemRow, item: Item, now: datetime) -> None:
    values = _item_values(item)
    values["updated"] = item.updated or now
    if item.dated:  # an undated entry keeps the first-seen time it was given
        row.published, row.dated = item.published, True
    if item.url != row.url:
        row.article_id = _article_id(s, item.url, now)
    for name, value in values.items():
        setattr(row, name, value)
    row.changed_at = now
    row.update_count += 1


def _stored_query() -> Select[ItemRow, str, str | None, str | None]:
    return select(ItemRow, SourceRow.name, SourceRow.title, SourceRow.link).join(
        SourceRow, ItemRow.source_id == SourceRow.id
    )


def _to_stored(row: ItemRow, source: str, title: str | None, link: str | None) -> StoredItem:
    item = Item(
        source=source,
        key=row.key,
        uid=row.uid,
        title=row.title,
        html=row.html,
        text=row.text,
        published=row.published,
        content_hash=row.content_hash,
        url=row.url,
        link=row.link,
        updated=row.updated,
        dated=row.dated,
        language=row.language,
        authors=tuple(row.authors or ()),
        categories=tuple(row.categories or ()),
        enclosures=tuple(
            Enclosure(url=e["url"], type=e.get("type"), length=e.get("length")) for e in row.enclosures or ()
        ),
        image=row.image,
        flags=tuple(row.flags or ()),
    )
    return StoredItem(
        id=row.id,
        item=item,
        first_seen=row.first_seen,
        source_title=title,
        source_link=link,
        article_id=row.article_id,
        story_id=row.story_id,
    )


def stored_items(s: Session, ids: Iterable[int] | None = None, *, batch: int = 500) -> Iterator[StoredItem]:
    """Stored items by id (all of them when ``ids`` is None), oldest id first, read in batches."""
    if ids is not None:
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            query = _stored_query().where(ItemRow.id.in_(chunk)).order_by(ItemRow.id)
            for row in s.execute(query):
                yield _to_stored(*row)
        return
    last = 0
    while True:
        query = _stored_query().where(ItemRow.id > last).order_by(ItemRow.id).limit(batch)
        rows = s.execute(query).all()
        if not rows:
            return
        for row in rows:
            yield _to_stored(*row)
        last = rows[-1][0].id


# --- topics --------------------------------------------------------------------------------------


def sync_topics(s: Session, definitions: dict[str, str]) -> list[str]:
    """Record the configured topics (name -> definition hash). Returns the names whose memberships must
    be (re)computed from the stored items: new topics and changed definitions. Removed topics are
    dropped with their memberships."""
    rows = {row.name: row for row in s.scalars(select(TopicRow))}
    stale = []
    for name, definition in definitions.items():
        row = rows.pop(name, None)
        if row is None:
            s.add(TopicRow(name=name, definition=definition))
            stale.append(name)
        elif row.definition != definition:
            s.execute(delete(TopicItemRow).where(TopicItemRow.topic == name))
            row.definition = definition
            stale.append(name)
    for row in rows.values():
        s.execute(delete(TopicItemRow).where(TopicItemRow.topic == row.name))
        s.delete(row)
    s.flush()
    return stale


def add_topic_items(s: Session, topic: str, item_ids: Sequence[int], now: datetime) -> int:
    """Add items to a topic (already-present ones are kept); returns how many were new members."""
    if not item_ids:
        return 0
    present = set(
        s.scalars(
            select(TopicItemRow.item_id).where(
                TopicItemRow.topic == topic, TopicItemRow.item_id.in_(list(item_ids))
            )
        )
    )
    added = [i for i in dict.fromkeys(item_ids) if i not in present]
    for item_id in added:
        s.execute(
            _insert(s, TopicItemRow)
            .values(topic=topic, item_id=item_id, added_at=now)
            .on_conflict_do_nothing()
        )
    if added:
        s.execute(update(TopicRow).where(TopicRow.name == topic).values(last_match_at=now))
    return len(added)


def remove_topic_items(s: Session, topic: str, item_ids: Sequence[int]) -> None:
    """Drop memberships that no longer hold (an item changed and stopped matching)."""
    if item_ids:
        s.execute(
            delete(TopicItemRow).where(TopicItemRow.topic == topic, TopicItemRow.item_id.in_(list(item_ids)))
        )


def topic_items(
    s: Session, topic: str, *, limit: int, collapse: bool | str = False, offset: int = 0
) -> list[StoredItem]:
    """A topic's items, newest first. ``collapse``: "article" (or True) keeps one item per article (its
    first sighting); "story" one per story, the other outlets' items in ``StoredItem.also``; "none" (or
    False) every item. ``offset`` skips that many (the pages of a paged feed)."""
    mode = ("article" if collapse else "none") if isinstance(collapse, bool) else collapse
    members = select(TopicItemRow.item_id).where(TopicItemRow.topic == topic)
    query = _stored_query().where(ItemRow.id.in_(members))
    if mode in ("article", "story"):
        group = ItemRow.story_id if mode == "story" else ItemRow.article_id
        rank = (
            func.row_number()
            .over(partition_by=func.coalesce(group, -ItemRow.id), order_by=(ItemRow.first_seen, ItemRow.id))
            .label("rank")
        )
        firsts = select(ItemRow.id, rank).where(ItemRow.id.in_(members)).subquery()
        query = query.where(ItemRow.id.in_(select(firsts.c.id).where(firsts.c.rank == 1)))
    query = query.order_by(ItemRow.published.desc(), ItemRow.id.desc()).limit(limit).offset(offset)
    items = [_to_stored(*row) for row in s.execute(query)]
    return with_sightings(s, items, members) if mode == "story" else items


def topic_entry_count(s: Session, topic: str, *, collapse: str = "none") -> int:
    """How many entries a topic's feed holds once collapsed: its pages are counted from this."""
    members = select(TopicItemRow.item_id).where(TopicItemRow.topic == topic)
    if collapse in ("article", "story"):
        group = ItemRow.story_id if collapse == "story" else ItemRow.article_id
        query = select(func.count(func.distinct(func.coalesce(group, -ItemRow.id)))).where(
            ItemRow.id.in_(members)
        )
    else:
        query = select(func.count()).select_from(members.subquery())
    return s.scalar(query) or 0


@dataclass(frozen=True)
class TopicStats:
    """How many items a topic holds and when its content last changed (for ETag and Last-Modified)."""

    count: int
    last_change: datetime | None
    last_match: datetime | None


def topic_stats(s: Session) -> dict[str, TopicStats]:
    counts = {
        name: (count, added, changed)
        for name, count, added, changed in s.execute(
            select(
                TopicItemRow.topic,
                func.count(),
                func.max(TopicItemRow.added_at),
                func.max(ItemRow.changed_at),
            )
            .join(ItemRow, ItemRow.id == TopicItemRow.item_id)
            .group_by(TopicItemRow.topic)
        )
    }
    result = {}
    for row in s.scalars(select(TopicRow)):
        count, added, changed = counts.get(row.name, (0, None, None))
        stamps = [d for d in (added, changed) if d is not None]
        last = max(stamps) if stamps else None
        if last is not None and last.tzinfo is None:  # aggregates bypass the column type
            last = last.replace(tzinfo=UTC)
        result[row.name] = TopicStats(count=count, last_change=last, last_match=row.last_match_at)
    return result


def item_topics(s: Session, item_ids: Sequence[int]) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    for item_id, topic in s.execute(
        select(TopicItemRow.item_id, TopicItemRow.topic).where(TopicItemRow.item_id.in_(list(item_ids)))
    ):
        result.setdefault(item_id, []).append(topic)
    return result


def count_items(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(ItemRow)) or 0


# --- polite fetching: poll history and scheduling inputs ------------------------------------------

HISTORY_LIMIT = 100  # polls kept per source


@dataclass(frozen=True)
class PollRecord:
    """One row of a source's poll history."""

    at: datetime
    status: str
    http_status: int | None
    bytes: int
    duration: float
    entries: int
    new: int
    updated: int
    unchanged: int
    error: str | None
    next_due_reason: str | None


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else round(value.total_seconds())


def _record_history(s: Session, source_id: int, outcome: PollOutcome, now: datetime) -> None:
    """Append the poll and drop the ones beyond HISTORY_LIMIT for this source."""
    s.add(
        PollRow(
            source_id=source_id,
            at=now,
            status=outcome.status,
            http_status=outcome.http_status,
            bytes=outcome.bytes,
            duration=outcome.duration,
            entries=outcome.entries,
            new=outcome.new,
            updated=outcome.updated,
            unchanged=outcome.unchanged,
            error=outcome.error,
            next_due_reason=outcome.due_reason,
        )
    )
    s.flush()
    keep = (
        select(PollRow.id)
        .where(PollRow.source_id == source_id)
        .order_by(PollRow.id.desc())
        .limit(HISTORY_LIMIT)
    )
    s.execute(
        delete(PollRow).where(PollRow.source_id == source_id, PollRow.id.not_in(keep.scalar_subquery()))
    )


def poll_history(s: Session, name: str, *, limit: int = HISTORY_LIMIT) -> list[PollRecord]:
    """The source's most recent polls, newest first."""
    query = (
        select(PollRow)
        .join(SourceRow, SourceRow.id == PollRow.source_id)
        .where(SourceRow.name == name)
        .order_by(PollRow.id.desc())
        .limit(limit)
    )
    return [
        PollRecord(
            r.at,
            r.status,
            r.http_status,
            r.bytes,
            r.duration,
            r.entries,
            r.new,
            r.updated,
            r.unchanged,
            r.error,
            r.next_due_reason,
        )
        for r in s.scalars(query)
    ]


@dataclass(frozen=True)
class ScheduleInputs:
    """What the store remembers for the scheduler: the feed's own timing hints and posting times."""

    ttl: timedelta | None = None
    update_every: timedelta | None = None
    published: tuple[datetime, ...] = ()


def schedule_inputs(s: Session, name: str, *, posts: int = 20) -> ScheduleInputs:
    """The feed's stored ttl / sy hints and the publication times of its ``posts`` latest dated items."""
    row = s.scalar(select(SourceRow).where(SourceRow.name == name))
    if row is None:
        return ScheduleInputs()
    published = s.scalars(
        select(ItemRow.published)
        .where(ItemRow.source_id == row.id, ItemRow.dated)
        .order_by(ItemRow.published.desc())
        .limit(posts)
    )
    return ScheduleInputs(
        ttl=None if row.feed_ttl is None else timedelta(seconds=row.feed_ttl),
        update_every=None if row.feed_update_every is None else timedelta(seconds=row.feed_update_every),
        published=tuple(published),
    )


# --- retention -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    items: int  # items deleted (or that would be, in a dry run); each leaves a tombstone
    tombstones: int  # tombstones in the store afterwards


def prune_items(s: Session, cutoff: datetime, now: datetime, *, dry_run: bool = False) -> PruneResult:
    """Delete the items both published and first seen before ``cutoff``; each leaves a (source, key)
    tombstone, so a feed that still carries it cannot bring it back as new. Topic memberships go too."""
    old = select(ItemRow.id).where(ItemRow.published < cutoff, ItemRow.first_seen < cutoff)
    count = s.scalar(select(func.count()).select_from(old.subquery())) or 0
    if count and not dry_run:
        buried = select(ItemRow.source_id, ItemRow.key, literal(now, UTCDateTime())).where(
            ItemRow.id.in_(old)
        )
        s.execute(
            _insert(s, TombstoneRow)
            .from_select(["source_id", "key", "pruned_at"], buried)
            .on_conflict_do_nothing()
        )
        s.execute(delete(TopicItemRow).where(TopicItemRow.item_id.in_(old)))
        s.execute(delete(ItemRow).where(ItemRow.id.in_(old)))
    tombstones = s.scalar(select(func.count()).select_from(TombstoneRow)) or 0
    return PruneResult(items=count, tombstones=tombstones)
