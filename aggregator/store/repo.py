"""Repository functions: every read and write the pipeline, worker, web server and CLI make.

Each takes an open Session and never commits: the caller owns the transaction. Identity is decided by
the database (unique constraints + insert-on-conflict), so re-polls, retries and races are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    Text,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
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
from aggregator.store.leases import SYNC_LOCK, end_lease, take_lock, url_host
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
    """Make the sources table agree with the configuration; new sources are due at once. Several
    workers starting together take turns (store/leases.py take_lock)."""
    take_lock(s, SYNC_LOCK)
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
                    host=url_host(source.url),
                )
            )
            continue
        if row.url != source.url:  # the operator changed the URL: start afresh
            row.url, row.effective_url, row.etag, row.last_modified = source.url, None, None, None
            row.redirect_candidate, row.url_reason, row.body_hash = None, None, None
            row.next_due_at, row.retired, row.error_count = now, False, 0
            row.last_status, row.last_error = None, None
            end_lease(row)
        if not row.enabled and source.enabled:  # re-enabled by the operator: also ends a retirement
            row.next_due_at, row.retired = now, False
        row.enabled, row.in_config = source.enabled, True
        row.host = url_host(row.effective_url or row.url)
    for row in rows.values():
        row.in_config = False


# The polling hot path (a 304 runs fetch_state, schedule_inputs and record_poll) uses statements built
# once, with bound parameters, on the session's connection: no statement construction, cache key or ORM
# object per poll.
_FETCH_STATE = select(
    SourceRow.effective_url,
    SourceRow.url,
    SourceRow.etag,
    SourceRow.last_modified,
    SourceRow.error_count,
    SourceRow.body_hash,
    SourceRow.redirect_candidate,
).where(SourceRow.name == bindparam("name"))


def _connection(s: Session | Connection) -> Connection:
    """The Session's connection, or the Core Connection itself (the unchanged re-poll path uses one:
    no Session to build and tear down per poll)."""
    return s if isinstance(s, Connection) else s.connection()


def fetch_state(s: Session | Connection, name: str) -> FetchState | None:
    """What the next request of ``name`` sends (URL, validators) and its error count."""
    row = _connection(s).execute(_FETCH_STATE, {"name": name}).first()
    return None if row is None else _fetch_state(row)


def _fetch_state(row: Any) -> FetchState:
    return FetchState(
        url=row.effective_url or row.url,
        etag=row.etag,
        last_modified=row.last_modified,
        errors=row.error_count,
        body_hash=row.body_hash,
        redirect_candidate=row.redirect_candidate,
    )


def record_poll(
    s: Session | Connection,
    outcome: PollOutcome,
    *,
    now: datetime,
    state: FetchState | None = None,
    meta: FeedMeta | None = None,
    url_reason: str | None = None,
) -> None:
    """Write what one poll learned onto its source row (status, validators, errors, next due time and
    why, a confirmed move, a retirement) and into its bounded poll history: one UPDATE (values that
    depend on the row are SQL expressions), one INSERT and one DELETE."""
    columns, params = _poll_values(outcome, now, state, meta, url_reason)
    statement = _source_update(columns, not outcome.ok, state is not None)
    source_id = _connection(s).execute(statement.returning(SourceRow.id), params).scalar()
    if source_id is not None:
        _record_history(s, [(source_id, outcome, now)])


@dataclass(frozen=True, slots=True)
class UnchangedPoll:
    """A poll that found its document unchanged (a 304, or the body last parsed), to be recorded with
    others by ``record_unchanged``."""

    source_id: int
    outcome: PollOutcome
    now: datetime
    state: FetchState
    url_reason: str | None = None


# The time of a source's last poll that did not fail (its poll history holds the last HISTORY_LIMIT).
_LAST_GOOD_POLL = (
    select(PollRow.at)
    .where(PollRow.source_id == bindparam("source"), PollRow.status != "error")
    .order_by(PollRow.id.desc())
    .limit(1)
    .scalar_subquery()
)
# A document seen again unchanged carries what it carried at that poll: the tombstones that poll stamped
# (and those pruned since), not the older ones of keys it had dropped by then. Executed once per poll
# (executemany): the subquery then runs once per source, not once per tombstone.
_STILL_CARRIED = (
    update(TombstoneRow)
    .where(TombstoneRow.source_id == bindparam("source"), TombstoneRow.pruned_at >= _LAST_GOOD_POLL)
    .values(pruned_at=bindparam("seen", type_=UTCDateTime()))
)


def record_unchanged(s: Session | Connection, polls: Sequence[UnchangedPoll]) -> None:
    """``record_poll`` for many unchanged polls at once: the same columns, each statement executed once
    for all of them (executemany); each poll ends its source's lease as ``record_poll`` does. The
    tombstones the document carries are stamped as seen, as _tombstones does for a parsed document, so
    that a feed answering 304 for longer than the retention keeps them."""
    if not polls:
        return
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for poll in polls:
        columns, params = _poll_values(poll.outcome, poll.now, poll.state, None, poll.url_reason)
        shapes.setdefault(columns, []).append(params)
    connection = _connection(s)
    for columns, rows in shapes.items():
        connection.execute(_source_update(columns, False, True), rows)
    # before the polls enter the history: _LAST_GOOD_POLL is then each source's poll before
    connection.execute(_STILL_CARRIED, [{"source": p.source_id, "seen": p.now} for p in polls])
    _record_history(connection, [(p.source_id, p.outcome, p.now) for p in polls])


def _poll_values(
    outcome: PollOutcome,
    now: datetime,
    state: FetchState | None,
    meta: FeedMeta | None,
    url_reason: str | None,
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The source columns a poll sets and the parameters of ``_source_update`` for them."""
    values: dict[str, Any] = {
        "next_due_reason": outcome.due_reason,
        "last_fetch_at": now,
        "last_http_status": outcome.http_status,
        "last_status": outcome.status,
        "next_due_at": outcome.next_due,
        "lease_owner": None,  # the poll commits with this: the source's lease (store/leases.py) ends
        "lease_expires_at": None,
    }
    if outcome.retired:
        values["retired"] = True
    if outcome.ok:
        values |= {"error_count": 0, "last_error": None, "last_new": outcome.new}
        values["last_problem"] = outcome.problem
        if outcome.entries or outcome.status == "updated":  # not a 304 or an identical body
            values["last_entries"] = outcome.entries
    else:
        values["last_error"] = outcome.error
    params: dict[str, Any] = {"source": outcome.source}
    if state is not None:
        values |= _state_values(state)
        params |= {"state_url": state.url, "url_reason": url_reason}
    if meta is not None:
        values |= _meta_values(meta)
    params |= {f"v_{name}": value for name, value in values.items()}
    return tuple(sorted(values)), params


@cache
def _source_update(columns: tuple[str, ...], failed: bool, moved: bool) -> Update:
    """UPDATE sources SET each of ``columns`` to its parameter ``v_<column>`` WHERE name = :source,
    returning the id; ``failed`` counts an error, ``moved`` sets the effective URL and its reason (from
    :state_url and :url_reason). Built once per shape (``record_poll`` adds RETURNING id)."""
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in columns}
    if failed:
        values["error_count"] = SourceRow.error_count + 1
    if moved:
        state_url, reason = bindparam("state_url", type_=Text()), bindparam("url_reason", type_=Text())
        differs = SourceRow.url != state_url
        effective = case((differs, state_url), else_=null())
        unchanged = SourceRow.effective_url.is_not_distinct_from(effective)
        values["effective_url"] = effective
        new_reason = case((differs, reason), else_=null())
        values["url_reason"] = case((unchanged, SourceRow.url_reason), else_=new_reason)
    return update(SourceRow).where(SourceRow.name == bindparam("source")).values(values)


_url_host = lru_cache(maxsize=4096)(url_host)  # a source's URL changes rarely: one parse per URL


def _state_values(state: FetchState) -> dict[str, Any]:
    """The plain columns a poll's FetchState sets (the effective URL and its reason: _source_update)."""
    return {
        "etag": state.etag,
        "last_modified": state.last_modified,
        "body_hash": state.body_hash,
        "redirect_candidate": state.redirect_candidate,
        "host": _url_host(state.url),  # the host the next poll contacts (per-host lease limit)
    }


def _meta_values(meta: FeedMeta) -> dict[str, Any]:
    """The columns the feed document's own metadata sets (a missing title or link keeps the old one)."""
    values: dict[str, Any] = {"feed_ttl": _seconds(meta.ttl)}
    values["feed_update_every"] = _seconds(meta.update_every)
    if meta.title:
        values["title"] = _no_nul(meta.title)
    if meta.link:
        values["link"] = meta.link
    return values


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


def source_sites(s: Session) -> dict[str, str]:
    """The site (the feed's own link) of each configured source that has one, by name: OPML's htmlUrl."""
    rows = s.execute(
        select(SourceRow.name, SourceRow.link).where(SourceRow.in_config, SourceRow.link.is_not(None))
    )
    return {name: link for name, link in rows if link}


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
    buried = _tombstones(s, source_id, [key for key in unique if key not in existing], now)
    fresh = [item for key, item in unique.items() if key not in existing and key not in buried]
    inserted = _insert_items(s, source_id, fresh, now)
    result.new = [(inserted[item.key], item) for item in fresh if item.key in inserted]
    result.unchanged += len(fresh) - len(result.new)  # another writer stored those first
    for key, item in unique.items():
        row = existing.get(key)
        if row is None and key in buried:
            result.unchanged += 1
            result.tombstoned += 1
        elif row is None:
            continue  # inserted above
        elif row.content_hash == item.content_hash:
            result.unchanged += 1
            if item.raw_hash is not None and row.raw_hash != item.raw_hash:
                row.raw_hash = item.raw_hash  # another raw entry, the same content: skipped next time
        elif row.update_count >= max_updates:
            result.unchanged += 1
            result.flapping += 1
            if "flapping" not in (row.flags or []):
                row.flags = [*(row.flags or []), "flapping"]
        else:
            _update_item(s, row, item, now)
            result.updated.append((row.id, item))
    return result


_RAW_HASHES = (
    select(ItemRow.key, ItemRow.raw_hash)
    .where(
        ItemRow.source_id
        == select(SourceRow.id).where(SourceRow.name == bindparam("source")).scalar_subquery()
    )
    .where(ItemRow.key.in_(bindparam("keys", expanding=True)))
)


def raw_hashes(s: Session | Connection, source: str, keys: Sequence[str]) -> dict[str, str | None]:
    """The raw entry hash stored under each of ``keys`` in ``source`` (keys not stored are absent): one
    read on the (source_id, key) index, made before a document's entries are normalized."""
    if not keys:
        return {}
    found: dict[str, str | None] = {}
    for start in range(0, len(keys), 1000):  # SQLite allows 32,766 bound parameters per statement
        chunk = list(keys[start : start + 1000])
        found.update(
            (key, raw_hash)
            for key, raw_hash in _connection(s).execute(_RAW_HASHES, {"source": source, "keys": chunk})
        )
    return found


def _tombstones(s: Session, source_id: int, keys: Sequence[str], now: datetime) -> set[str]:
    """Which of ``keys`` have a tombstone, each stamped ``now`` in the same statement: the feed still
    carries them, so prune_items keeps them until it has not for the whole retention period."""
    if not keys:
        return set()
    seen = (
        update(TombstoneRow)
        .where(TombstoneRow.source_id == source_id, TombstoneRow.key.in_(keys))
        .values(pruned_at=now)
        .returning(TombstoneRow.key)
    )
    return set(_connection(s).execute(seen).scalars())


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
    return _article_ids(s, [url] if url else [], now).get(url or "")


def _article_ids(s: Session, urls: Sequence[str], now: datetime) -> dict[str, int]:
    """The article id of each canonical URL, creating the articles not stored yet (two statements)."""
    wanted = sorted(set(urls))
    if not wanted:
        return {}
    values = [{"url": url, "created_at": now} for url in wanted]
    s.execute(_insert(s, ArticleRow.__table__).on_conflict_do_nothing(), values)
    query = select(ArticleRow.url, ArticleRow.id).where(ArticleRow.url.in_(wanted))
    return {url: article_id for url, article_id in s.execute(query)}


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
        "raw_hash": item.raw_hash,
    }


def _insert_items(s: Session, source_id: int, items: Sequence[Item], now: datetime) -> dict[str, int]:
    """Insert new items in one multi-row statement; returns key -> id of the rows this call stored (an
    item another writer stored first is skipped by the unique constraint and absent)."""
    if not items:
        return {}
    articles = _article_ids(s, [item.url for item in items if item.url], now)
    values = [
        {
            "uid": item.uid, "source_id": source_id, "key": item.key, "published": item.published,
            "dated": item.dated, "article_id": articles.get(item.url or ""), "first_seen": now,
            "changed_at": now, "update_count": 0, "story_id": None, **_item_values(item),
        }
        for item in items
    ]  # fmt: skip
    statement = _insert(s, ItemRow.__table__).on_conflict_do_nothing().returning(ItemRow.key, ItemRow.id)
    return {key: new_id for key, new_id in s.execute(statement, values)}


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


# the membership statements of every poll, built once (Core, on the table: no ORM synchronization)
_MEMBERS: Any = TopicItemRow.__table__
_TOPIC_PRESENT = select(_MEMBERS.c.item_id).where(
    _MEMBERS.c.topic == bindparam("topic"), _MEMBERS.c.item_id.in_(bindparam("ids", expanding=True))
)
_TOPIC_REMOVE = delete(_MEMBERS).where(
    _MEMBERS.c.topic == bindparam("topic"), _MEMBERS.c.item_id.in_(bindparam("ids", expanding=True))
)


@cache
def _topic_insert(dialect: str) -> Any:
    """INSERT INTO topic_items ... ON CONFLICT DO NOTHING, built once per dialect."""
    modules = {"postgresql": postgresql, "sqlite": sqlite}
    if dialect not in modules:
        raise NotImplementedError(f"store: unsupported database dialect {dialect}")
    return modules[dialect].insert(_MEMBERS).on_conflict_do_nothing()


def add_topic_items(s: Session, topic: str, item_ids: Sequence[int], now: datetime) -> int:
    """Add items to a topic (already-present ones are kept); returns how many were new members."""
    if not item_ids:
        return 0
    present = set(s.scalars(_TOPIC_PRESENT, {"topic": topic, "ids": list(item_ids)}))
    added = [i for i in dict.fromkeys(item_ids) if i not in present]
    if added:  # one executemany (batched into multi-row INSERTs), not one statement per item
        rows = [{"topic": topic, "item_id": item_id, "added_at": now} for item_id in added]
        s.execute(_topic_insert(s.get_bind().dialect.name), rows)
        s.execute(update(TopicRow).where(TopicRow.name == topic).values(last_match_at=now))
    return len(added)


def remove_topic_items(s: Session, topic: str, item_ids: Sequence[int]) -> None:
    """Drop memberships that no longer hold (an item changed and stopped matching)."""
    if item_ids:
        s.execute(_TOPIC_REMOVE, {"topic": topic, "ids": list(item_ids)})


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


@dataclass(frozen=True)
class TopicState:
    """A topic's feed inputs in a few numbers, read with one query: any change that can change the feed
    changes them (members added or removed, an item's content changed, items re-linked into other
    articles or stories). Web servers compare it to decide whether a rendered feed is still current."""

    count: int
    ids: int  # sum of the member item ids
    last_added: datetime | None
    last_changed: datetime | None
    articles: int  # sum of the members' article ids
    stories: int  # sum of the members' story ids

    @property
    def last_change(self) -> datetime | None:
        stamps = [d for d in (self.last_added, self.last_changed) if d is not None]
        return max(stamps) if stamps else None


def topic_state(s: Session, topic: str) -> TopicState:
    count, ids, added, changed, articles, stories = s.execute(
        select(
            func.count(),
            func.coalesce(func.sum(TopicItemRow.item_id), 0),
            func.max(TopicItemRow.added_at),
            func.max(ItemRow.changed_at),
            func.coalesce(func.sum(ItemRow.article_id), 0),
            func.coalesce(func.sum(ItemRow.story_id), 0),
        )
        .join(ItemRow, ItemRow.id == TopicItemRow.item_id)
        .where(TopicItemRow.topic == topic)
    ).one()
    return TopicState(count, ids or 0, _aware(added), _aware(changed), articles or 0, stories or 0)


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates bypass the column type: SQLite hands back naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


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


_HISTORY_INSERT = insert(PollRow)
_HISTORY_TRIM = delete(PollRow).where(
    PollRow.source_id == bindparam("source_id"),
    PollRow.id
    < (
        select(PollRow.id)
        .where(PollRow.source_id == bindparam("source_id"))
        .order_by(PollRow.id.desc())
        .offset(bindparam("skip"))
        .limit(1)
        .scalar_subquery()
    ),
)


def _record_history(s: Session | Connection, polls: Sequence[tuple[int, PollOutcome, datetime]]) -> None:
    """Append the polls (source id, outcome, time) and drop the ones beyond HISTORY_LIMIT for their
    sources (two statements, both on the (source_id, id) index, each executed once for all)."""
    connection = _connection(s)
    rows = [
        {
            "source_id": source_id,
            "at": now,
            "status": outcome.status,
            "http_status": outcome.http_status,
            "bytes": outcome.bytes,
            "duration": outcome.duration,
            "entries": outcome.entries,
            "new": outcome.new,
            "updated": outcome.updated,
            "unchanged": outcome.unchanged,
            "error": outcome.error,
            "next_due_reason": outcome.due_reason,
        }
        for source_id, outcome, now in polls
    ]
    if not rows:
        return
    connection.execute(_HISTORY_INSERT, rows)
    trims = [
        {"source_id": source_id, "skip": HISTORY_LIMIT - 1} for source_id in {r["source_id"] for r in rows}
    ]
    connection.execute(_HISTORY_TRIM, trims)


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
    source_id: int | None = None  # the source row's id (None: no such source)


_SCHEDULE_SOURCE = select(SourceRow.id, SourceRow.feed_ttl, SourceRow.feed_update_every).where(
    SourceRow.name == bindparam("name")
)
_PUBLISHED = (
    select(ItemRow.published)
    .where(ItemRow.source_id == bindparam("source_id"), ItemRow.dated)
    .order_by(ItemRow.published.desc())
    .limit(bindparam("posts"))
)


def schedule_inputs(s: Session | Connection, name: str, *, posts: int = 20) -> ScheduleInputs:
    """The feed's stored ttl / sy hints and the publication times of its ``posts`` latest dated items
    (two indexed reads)."""
    connection = _connection(s)
    row = connection.execute(_SCHEDULE_SOURCE, {"name": name}).first()
    return ScheduleInputs() if row is None else _schedule_inputs(connection, row, posts)


_POLL_INPUTS = _FETCH_STATE.add_columns(SourceRow.id, SourceRow.feed_ttl, SourceRow.feed_update_every)


class PostingTimes:
    """The publication times ``poll_inputs`` read, remembered per source while its last parsed body
    (``body_hash``) stays the same: items are stored only with a new body, so an unchanged re-poll
    needs no second read. Pruning elsewhere is seen at the next change. Bounded: cleared when full.
    One per database (source ids are the key)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._times: dict[tuple[int, str], tuple[datetime, ...]] = {}

    def get(self, source_id: int, body_hash: str | None) -> tuple[datetime, ...] | None:
        return None if body_hash is None else self._times.get((source_id, body_hash))

    def put(self, source_id: int, body_hash: str | None, times: tuple[datetime, ...]) -> None:
        if body_hash is not None:
            if len(self._times) >= self.size:
                self._times.clear()
            self._times[(source_id, body_hash)] = times


def poll_inputs(
    s: Session | Connection, name: str, memo: PostingTimes | None = None
) -> tuple[FetchState | None, ScheduleInputs]:
    """``fetch_state`` and ``schedule_inputs`` together: the source row is read once, the posting times
    only when ``memo`` does not have them for the source's current body."""
    connection = _connection(s)
    row = connection.execute(_POLL_INPUTS, {"name": name}).first()
    if row is None:
        return None, ScheduleInputs()
    published = memo.get(row.id, row.body_hash) if memo is not None else None
    inputs = _schedule_inputs(connection, row, published=published)
    if memo is not None and published is None:
        memo.put(row.id, row.body_hash, inputs.published)
    return _fetch_state(row), inputs


def _schedule_inputs(
    connection: Connection, row: Any, posts: int = 20, *, published: tuple[datetime, ...] | None = None
) -> ScheduleInputs:
    if published is None:
        published = tuple(connection.execute(_PUBLISHED, {"source_id": row.id, "posts": posts}).scalars())
    return ScheduleInputs(
        ttl=None if row.feed_ttl is None else timedelta(seconds=row.feed_ttl),
        update_every=None if row.feed_update_every is None else timedelta(seconds=row.feed_update_every),
        published=published,
        source_id=row.id,
    )


# --- retention -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    items: int  # items deleted (or that would be, in a dry run); each leaves a tombstone
    tombstones: int  # tombstones in the store afterwards (a dry run: now)
    expired: int = 0  # tombstones deleted (or that would be): no poll saw their key since the cutoff


def prune_items(s: Session, cutoff: datetime, now: datetime, *, dry_run: bool = False) -> PruneResult:
    """Delete the items both published and first seen before ``cutoff``; each leaves a (source, key)
    tombstone, so a feed that still carries it cannot bring it back as new. Topic memberships go too.
    Tombstones expire: those no poll has seen since ``cutoff`` (their ``pruned_at``, which a poll of a
    feed still carrying the key moves on) are deleted, so the table does not grow forever; their item
    comes back only if its feed carries it again."""
    stale = TombstoneRow.pruned_at < cutoff
    expired = s.scalar(select(func.count()).select_from(TombstoneRow).where(stale)) or 0
    if expired and not dry_run:
        s.execute(delete(TombstoneRow).where(stale))
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
    return PruneResult(items=count, tombstones=tombstones, expired=expired)
