"""Rules 2 and 3 of deduplication in the store: one article per syndicated text, one story per event.

``link_items`` runs inside the poll's transaction right after ``save_items``: with a few indexed queries
per poll (not per item) it finds candidates by fingerprint keys (exact text, MinHash LSH bands) within a
time window, verifies them with the pure similarities of ``aggregator.stories`` on stored story terms, and
records each decision (rule + similarity) in ``merges``. It does not decide identity (rule 1: repo.py).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from sqlalchemy.sql.expression import Executable

from aggregator import stories
from aggregator.model import Item, Sighting, StoredItem
from aggregator.store.tables import (
    ArticleRow,
    Base,
    FingerprintRow,
    ItemRow,
    MergeRow,
    SourceRow,
    TermsRow,
)
from aggregator.stories import Analysis, StoryParams, Terms

MAX_CANDIDATES = 200  # per item and rule: bounds the work per new item however popular a band key is
LINK_LOCK = 0x6167675F6C696E6B  # PostgreSQL advisory lock key of story and article linking ("agg_link")
CHUNK = 1000  # values per IN list (SQLite allows 32,766 bound parameters per statement)
PRUNE_CHUNK = 250  # items whose fingerprints one prune transaction deletes (~40 rows each)

# The statements of a poll's linking, built once per dialect (Core, the id lists bound as one value): run
# on the Session's connection, they cost no statement construction, ORM loading or per-value processing.


def _in_ids(column: QueryableAttribute[Any], dialect: str) -> ColumnElement[bool]:
    """``column IN :ids`` with the ids bound as one value (``_ids``): a JSON array read by json_each on
    SQLite, an array compared with = ANY on PostgreSQL; both use the column's index."""
    if dialect == "sqlite":
        values = func.json_each(bindparam("ids", type_=Text())).table_valued("value")
        return column.in_(select(values.c.value))
    if dialect == "postgresql":
        return column == any_(bindparam("ids", type_=postgresql.ARRAY(column.type)))
    return column.in_(bindparam("ids", expanding=True))


def _ids(c: Connection, values: list[int]) -> Any:
    """The bound value of ``_in_ids``."""
    return json.dumps(values) if c.dialect.name == "sqlite" else values


@dataclass(frozen=True)
class _Sql:
    known: Executable
    keys: Executable
    stories: Executable
    texts: Executable
    titles_texts: Executable
    terms: Executable
    merged: Executable
    first: Executable
    unindex: tuple[Executable, ...]


@cache
def _sql(dialect: str) -> _Sql:
    def ids(column: QueryableAttribute[Any]) -> ColumnElement[bool]:
        return _in_ids(column, dialect)

    return _Sql(
        known=select(ItemRow.id, ItemRow.uid, ItemRow.source_id, ItemRow.article_id, ItemRow.story_id).where(
            ids(ItemRow.id)
        ),
        keys=(  # read from the driver's cursor (``_Poll._shared``): no conversion per row of the hot read
            select(FingerprintRow.kind, FingerprintRow.key, FingerprintRow.item_id, FingerprintRow.published)
            .join(ItemRow, ItemRow.id == FingerprintRow.item_id)
            .where(
                ids(FingerprintRow.key), FingerprintRow.published.between(bindparam("lo"), bindparam("hi"))
            )
            .where(FingerprintRow.kind.in_(bindparam("kinds", expanding=True)))
            .where(ItemRow.source_id != bindparam("source_id"))
        ),
        stories=select(  # per story: its size, and whether it holds an item of the source
            ItemRow.story_id,
            func.count(),
            func.max(case((ItemRow.source_id == bindparam("source_id"), 1), else_=0)),
        )
        .where(ids(ItemRow.story_id))
        .group_by(ItemRow.story_id),
        texts=select(ItemRow.id, ItemRow.text).where(ids(ItemRow.id)),
        titles_texts=select(ItemRow.id, ItemRow.title, ItemRow.text).where(ids(ItemRow.id)),
        terms=select(TermsRow.item_id, TermsRow.terms).where(ids(TermsRow.item_id)),
        merged=select(ArticleRow.id, ArticleRow.merged_into).where(ids(ArticleRow.id)),
        first=select(ItemRow.article_id, func.min(ItemRow.id))
        .where(ids(ItemRow.article_id))
        .group_by(ItemRow.article_id),
        unindex=(
            delete(FingerprintRow).where(ids(FingerprintRow.item_id)),
            delete(TermsRow).where(ids(TermsRow.item_id)),
        ),
    )


_ITEMS, _ARTICLES = cast(Table, ItemRow.__table__), cast(Table, ArticleRow.__table__)
_LINK = (
    update(_ITEMS)
    .where(_ITEMS.c.id == bindparam("b_id"))
    .values(article_id=bindparam("b_article"), story_id=bindparam("b_story"))
)
_MERGE = update(_ARTICLES).where(_ARTICLES.c.id == bindparam("b_id")).values(merged_into=bindparam("b_into"))


@dataclass(frozen=True)
class Merge:
    """One stored decision, as ``explain`` shows it."""

    item_id: int
    other_id: int
    level: str
    rule: str
    similarity: float
    created_at: datetime


@dataclass
class _Known:
    """An item as the decisions see it (a new one of this poll, or a candidate stored earlier)."""

    id: int
    uid: str
    source_id: int
    article_id: int | None
    story_id: int | None


@dataclass
class _New:
    """A new item of the poll with its analysis and the candidates the batched lookups found for it."""

    row: _Known
    item: Item
    analysis: Analysis
    text_match: int | None = None  # earliest item of another source with the same text key
    titles: list[int] = field(default_factory=list)
    nears: list[int] = field(default_factory=list)
    stories: list[int] = field(default_factory=list)
    verified: list[tuple[float, int]] = field(default_factory=list)  # story candidates that pass (_scored)


def link_items(
    s: Session,
    new: Sequence[tuple[int, Item]],
    updated: Sequence[tuple[int, Item]],
    now: datetime,
    params: StoryParams | None = None,
) -> None:
    """Give new items their article and story ids; re-index the fingerprints of updated ones.

    On PostgreSQL, workers link one at a time: two workers storing two reports of one event at once
    would each miss the other's uncommitted item and start two stories. A transaction-level advisory
    lock makes the second wait for the first's commit, then find its item; the caller links last in
    its transaction, so the lock is held only for the linking and the commit."""
    params = params or StoryParams()
    s.flush()  # the reads below run on the connection: they must see the items' pending changes
    c = s.connection()
    if new and c.dialect.name == "postgresql":
        c.execute(select(func.pg_advisory_xact_lock(LINK_LOCK)))
    changed = [
        (item_id, item.published, stories.analyze(item.title, item.text, params)) for item_id, item in updated
    ]
    for chunk in _chunks(item_id for item_id, _, _ in changed):
        for statement in _sql(c.dialect.name).unindex:
            c.execute(statement, {"ids": _ids(c, chunk)})
    rows = _known(c, [item_id for item_id, _ in new])
    by_source: dict[int, list[_New]] = defaultdict(list)
    for item_id, item in new:
        if item_id in rows:  # else deleted meanwhile
            analysis = stories.analyze(item.title, item.text, params)
            by_source[rows[item_id].source_id].append(_New(rows[item_id], item, analysis))
    merges: list[dict[str, Any]] = []
    for source_id, batch in by_source.items():
        _Poll(c, source_id, batch, params, now, merges).link()
    fresh = [(n.row.id, n.item.published, n.analysis) for batch in by_source.values() for n in batch]
    _index(
        c,
        changed + fresh,
        _out_of_window(c, [i for i, _, _ in changed], _window_start(params, now)),
    )
    if merges:
        c.execute(insert(_table(MergeRow)), merges)


def _table(row: type[Base]) -> Table:
    """A mapped class's Table: Core statements skip the ORM's per-row bookkeeping in bulk inserts."""
    return cast(Table, row.__table__)


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(values)
    while chunk := list(itertools.islice(iterator, CHUNK)):
        yield chunk


def _known(c: Connection, ids: Iterable[int]) -> dict[int, _Known]:
    result: dict[int, _Known] = {}
    for chunk in _chunks(sorted(set(ids))):
        for row in c.execute(_sql(c.dialect.name).known, {"ids": _ids(c, chunk)}).all():
            result[row[0]] = _Known(*row)
    return result


def _processor(c: Connection, column: QueryableAttribute[Any]) -> Callable[[Any], Any]:
    """The column type's conversion of a Python value to the driver's (identity when there is none)."""
    process = column.type.dialect_impl(c.dialect).bind_processor(c.dialect)
    return process if process is not None else (lambda value: value)


def _insert_plain(c: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """INSERT many rows of values already converted for the driver (``_processor``), handed to its
    executemany as they are: no per-value work in SQLAlchemy for the thousands of fingerprint rows."""
    mark = "?" if c.dialect.paramstyle == "qmark" else "%s"  # SQLite; psycopg (pyformat/format)
    names, marks = ", ".join(columns), ", ".join([mark] * len(columns))
    c.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", rows)


def _window_start(params: StoryParams, now: datetime) -> datetime:
    """The start of the fingerprint window: the items first seen before it keep no fingerprint rows."""
    return now - timedelta(days=params.index_days)


def _out_of_window(c: Connection, ids: list[int], oldest: datetime) -> set[int]:
    """Those of the (updated) items ``ids`` first seen before ``oldest``: out of the fingerprint window
    (``prune_fingerprints``, which has passed them already)."""
    found: set[int] = set()
    for chunk in _chunks(ids):
        query = select(ItemRow.id).where(_in_ids(ItemRow.id, c.dialect.name), ItemRow.first_seen < oldest)
        found.update(c.scalars(query, {"ids": _ids(c, chunk)}))
    return found


def _index(c: Connection, items: Sequence[tuple[int, datetime, Analysis]], unindexed: set[int]) -> None:
    """Store the fingerprint keys and story terms of freshly linked (or changed) items; no keys for the
    ``unindexed`` ones (out of the fingerprint window). The rows go in
    in key order: the keys are hashes, and inserted at random places of the (key, ...) index each row
    would touch a page of its own; in order, neighbours share pages (a quarter less CPU per row)."""
    keys: list[tuple[Any, ...]] = []
    terms = []
    when = _processor(c, FingerprintRow.published)
    for item_id, published, analysis in items:
        terms.append({"item_id": item_id, "terms": analysis.terms.encode()})
        if item_id in unindexed:
            continue
        fp = analysis.fingerprint
        pairs = [("near", k) for k in fp.near_keys] + [("story", k) for k in fp.story_keys]
        pairs += [(kind, k) for kind, k in (("text", fp.text_key), ("title", fp.title_key)) if k is not None]
        stored = when(published)  # the one conversion of this item's rows
        keys += [(item_id, kind, k, stored) for kind, k in pairs]
    if keys:
        keys.sort(key=itemgetter(2))
        _insert_plain(c, _table(FingerprintRow), ("item_id", "kind", "key", "published"), keys)
    if terms:
        c.execute(insert(_table(TermsRow)), terms)


class _Poll:
    """Rules 2 and 3 for the new items of one source: the candidate lookups are batched for all of them
    (a handful of queries per poll), then each item is decided in storage order."""

    def __init__(
        self,
        c: Connection,
        source_id: int,
        batch: list[_New],
        params: StoryParams,
        now: datetime,
        merges: list[dict[str, Any]],
    ) -> None:
        self.c, self.source_id, self.batch, self.params, self.now = c, source_id, batch, params, now
        self.merges = merges
        self.known: dict[int, _Known] = {n.row.id: n.row for n in batch}
        self.texts: dict[int, str] = {}  # texts of near-duplicate candidates
        self.touched: set[int] = set()  # candidates whose article or story this poll changed
        self.taken: set[int] = set()  # stories that already hold an item of this source
        self.sizes: Counter[int] = Counter()  # items per candidate story
        self.articles = _Articles(c, {n.row.article_id for n in batch if n.row.article_id is not None})

    def link(self) -> None:
        self._lookup()
        for new in sorted(self.batch, key=lambda n: n.row.id):
            row = new.row
            merged = self._link_article(new)
            row.story_id = (merged.story_id or merged.id) if merged is not None else self._link_story(new)
            self.taken.add(row.story_id)
            self.sizes[row.story_id] += 1
        real = self.articles.write(self.now)
        changed = [n.row for n in self.batch] + [self.known[i] for i in self.touched]
        values = [{"b_id": k.id, "b_article": real(k.article_id), "b_story": k.story_id} for k in changed]
        self.c.execute(_LINK, values)

    # --- the batched lookups ----------------------------------------------------------------------

    def _lookup(self) -> None:
        p = self.params
        story_window, near_window = timedelta(hours=p.window_hours), timedelta(days=p.article_window_days)
        shared = self._shared(("story", "title"), story_window) | self._shared(("near", "text"), near_window)
        for n in self.batch:
            texts = _pick(shared[(n.row.id, "text")])
            n.text_match = texts[0] if texts else None  # the earliest
            n.titles = _pick(shared[(n.row.id, "title")])
            n.nears = _pick(shared[(n.row.id, "near")])
            n.stories = _pick(shared[(n.row.id, "story")])
        terms = _terms(self.c, {i for n in self.batch for i in n.stories}, p)
        titles: dict[int, frozenset[str]] = {}
        for n in self.batch:  # verified on their stored terms: only those that pass are loaded
            others = [(i, terms[i]) for i in n.stories if i in terms]
            n.verified = _scored(n.analysis.terms, others, p, titles)
        wanted = {i for n in self.batch for i in (n.text_match, *n.titles, *n.nears) if i is not None}
        wanted.update(i for n in self.batch for _, i in n.verified)
        wanted.update(i for i in self.articles.first.values() if i is not None)  # same-URL items
        self.known.update(_known(self.c, wanted - set(self.known)))
        targets = {i for n in self.batch for i in (n.text_match, *n.titles[:1], *n.nears) if i is not None}
        # the articles an item can join (rule 2's candidates; story candidates never need theirs)
        known = [self.known[i] for i in targets if i in self.known]
        self.articles.prefetch({k.article_id for k in known if k.article_id is not None})
        self.texts = _texts(
            self.c, {i for n in self.batch if not (n.text_match or n.titles) for i in n.nears}
        )
        mine = {n.row.id for n in self.batch}
        self._read_stories({k.story_id or k.id for i, k in self.known.items() if i not in mine})

    def _shared(self, kinds: tuple[str, ...], window: timedelta) -> dict[tuple[int, str], dict[int, int]]:
        """Other sources' items sharing fingerprint keys of ``kinds`` with the batch's items, each within
        ``window`` of the new item's publication time: (new item id, kind) -> {candidate id: keys
        shared}. One indexed range scan per key on (key, published), over the window of the whole
        batch: the rows read follow the window, not the store's size. Each row read is counted at once
        for the new items holding its key (most keys are one item's), with no list of rows kept.

        The rows are the driver's tuples, read from its cursor: Row objects and a datetime parsed per row
        cost as much as the query. Their times stay in the driver's form (SQLite: fixed-width text, in
        time order, as ``published BETWEEN`` compares them too; PostgreSQL: naive UTC datetimes), and
        each item's window bounds are put in that form (the column's own conversion of a time)."""
        when = _processor(self.c, FingerprintRow.published)
        # key -> (kind, the counts of the new item holding it, its window: abs(stored - published) <= window)
        holders: dict[int, list[tuple[str, dict[int, int], Any, Any]]] = {}
        result: dict[tuple[int, str], dict[int, int]] = {}
        for n in self.batch:
            published = n.item.published.astimezone(UTC)
            lo, hi = when(published - window), when(published + window)
            for kind in kinds:
                counts = result[(n.row.id, kind)] = {}
                holder = (kind, counts, lo, hi)
                for key in set(_keys_of(n, kind)):
                    holders.setdefault(key, []).append(holder)
        if not holders:
            return result
        times = [n.item.published for n in self.batch]
        bound = {"lo": min(times) - window, "hi": max(times) + window, "kinds": list(kinds)}
        bound["source_id"] = self.source_id
        statement = _sql(self.c.dialect.name).keys
        for chunk in _chunks(sorted(holders)):
            with self.c.execute(statement, {**bound, "ids": _ids(self.c, chunk)}) as result_set:
                rows = result_set.cursor.fetchall()
            for kind, key, item_id, stored in rows:
                for held, counts, lo, hi in holders[key]:
                    if held == kind and lo <= stored <= hi:
                        counts[item_id] = counts.get(item_id, 0) + 1
        return result

    def _read_stories(self, story_ids: set[int]) -> None:
        """The size of each candidate story, and those that already hold an item of this source."""
        for chunk in _chunks(sorted(story_ids)):
            bound = {"ids": _ids(self.c, chunk), "source_id": self.source_id}
            for story_id, size, holds in self.c.execute(_sql(self.c.dialect.name).stories, bound):
                self.sizes[story_id] = size
                if holds:
                    self.taken.add(story_id)

    def _record(self, row: _Known, other: _Known, level: str, rule: str, sim: float) -> None:
        self.merges.append(
            {"item_id": row.id, "other_id": other.id, "level": level, "rule": rule,
             "similarity": round(sim, 4), "created_at": self.now}
        )  # fmt: skip

    # --- rule 2: the same article from several sources -------------------------------------------

    def _link_article(self, new: _New) -> _Known | None:
        """Join the item to an earlier item carrying the same article; returns that item, or None."""
        row = new.row
        if row.article_id is not None:
            row.article_id = self.articles.resolve(row.article_id)
            other_id = self.articles.earliest(row.article_id)
            if other_id is not None and other_id < row.id and other_id not in self.known:
                self.known.update(_known(self.c, [other_id]))  # rare: loaded with the batch as a rule
            first = self.known.get(other_id) if other_id is not None and other_id < row.id else None
            if first is not None:
                self._record(row, first, "article", "url", 1.0)
                return first
        other, rule, sim = self._same_text(new)
        if other is None:
            return None
        target = other.article_id
        if target is None:
            target = self.articles.create(f"urn:aggregator:item:{other.uid}", other.id)
            other.article_id = target
            self.touched.add(other.id)
        if row.article_id is not None and row.article_id != target:
            self.articles.merge(row.article_id, target)
        row.article_id = target
        self.articles.joined(target, row.id)
        self._record(row, other, "article", rule, sim)
        return other

    def _same_text(self, new: _New) -> tuple[_Known | None, str, float]:
        """An earlier item of another source with the same text (exact key), the same long title, or a
        near-identical text (word-shingle Jaccard at or above ``near_threshold``)."""
        if new.text_match is not None:
            return self.known[new.text_match], "text-hash", 1.0
        if new.titles:
            return self.known[new.titles[0]], "same-title", 1.0
        mine = new.analysis.shingles() if new.nears else None
        best: tuple[_Known | None, float] = (None, 0.0)
        sims: dict[str, float] = {}  # per text: syndicated copies among the candidates are compared once
        for other_id in new.nears if mine else ():
            text = self.texts.get(other_id, "")
            sim = sims.get(text)
            if sim is None:
                theirs = stories.near_shingles(text, self.params)
                sim = sims[text] = stories.jaccard(mine or (), theirs) if theirs else 0.0
            if sim >= self.params.near_threshold and sim > best[1]:
                best = (self.known[other_id], sim)
        return best[0], "near-text", best[1]

    # --- rule 3: the same story from several outlets ---------------------------------------------

    def _link_story(self, new: _New) -> int:
        """The story id for the item: the biggest story among its verified candidates' (then the most
        similar candidate, then the earliest), or a new story of its own. The biggest: when an outlet
        filed several reports of one event, they sit in different stories (one per story), and the
        others' reports belong with the story most of them joined (measured: bench/dedup_quality.py)."""
        row = new.row
        for sim, other_id in _by_story_size(new.verified, self._story_of, self.sizes):
            other = self.known[other_id]
            if self._story_of(other_id) in self.taken:
                continue  # never two different articles of one source in one story
            if other.story_id is None:  # stored before stories existed: its own story from now on
                other.story_id = other.id
                self.touched.add(other.id)
            self._record(row, other, "story", "story", sim)
            return other.story_id
        return row.id

    def _story_of(self, item_id: int) -> int:
        """A known item's story (its own id when it was stored before stories existed)."""
        known = self.known[item_id]
        return known.story_id or known.id


def _keys_of(new: _New, kind: str) -> Sequence[int]:
    """The item's fingerprint keys of one kind (``analyze`` gives no near keys when its text is too short
    to compare)."""
    fp = new.analysis.fingerprint
    if kind in ("story", "near"):
        return fp.story_keys if kind == "story" else fp.near_keys
    key = fp.text_key if kind == "text" else fp.title_key
    return () if key is None else (key,)


def _pick(shared: dict[int, int]) -> list[int]:
    """Candidate ids for one item and kind, given how many keys each shares with it (``_shared``);
    beyond MAX_CANDIDATES, the ones sharing the most keys. Ascending id (storage order)."""
    if len(shared) > MAX_CANDIDATES:
        return sorted(sorted(shared, key=lambda i: (-shared[i], i))[:MAX_CANDIDATES])
    return sorted(shared)


def _scored(
    mine: Terms,
    others: Iterable[tuple[int, str]],
    params: StoryParams,
    titles: dict[int, frozenset[str]] | None = None,
) -> list[tuple[float, int]]:
    """Verified story candidates (given their encoded terms) as (similarity, id), most similar first, then
    the earliest. The title terms alone rule most candidates out: the lead terms are decoded for few.
    ``titles`` keeps the decoded title terms per id (candidates shared by the items of a poll)."""
    titles = {} if titles is None else titles
    encoded = dict(others)
    decoded = []
    for other_id, value in encoded.items():
        theirs = titles.get(other_id)
        if theirs is None:
            theirs = titles[other_id] = Terms.decode_title(value)
        decoded.append((other_id, theirs))
    scored = []
    for other_id in stories.similar_titles(mine.title, decoded, params):
        sim = stories.terms_similarity(mine, Terms.decode(encoded[other_id]), params)
        if sim >= params.story_threshold:
            scored.append((sim, other_id))
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return scored


def _by_story_size(
    verified: list[tuple[float, int]], story_of: Callable[[int], int], sizes: Counter[int]
) -> list[tuple[float, int]]:
    """Verified candidates (similarity, id) ordered by the size of their story (biggest first), then
    by similarity (highest first), then by id (earliest first); a story not counted holds one item."""

    def order(pair: tuple[float, int]) -> tuple[int, float, int]:
        return (-(sizes.get(story_of(pair[1])) or 1), -pair[0], pair[1])

    return sorted(verified, key=order)


def _texts(c: Connection, ids: set[int]) -> dict[int, str]:
    result: dict[int, str] = {}
    for chunk in _chunks(sorted(ids)):
        result.update({i: text for i, text in c.execute(_sql(c.dialect.name).texts, {"ids": _ids(c, chunk)})})
    return result


def _terms(c: Connection, ids: set[int], params: StoryParams) -> dict[int, str]:
    """The stored (encoded) story terms of ``ids``; items stored before migration 0006 get theirs now."""
    result: dict[int, str] = {}
    for chunk in _chunks(sorted(ids)):
        result.update(
            {i: terms for i, terms in c.execute(_sql(c.dialect.name).terms, {"ids": _ids(c, chunk)})}
        )
    missing = sorted(ids - set(result))
    for chunk in _chunks(missing):
        computed = {}
        for item_id, title, text in c.execute(_sql(c.dialect.name).titles_texts, {"ids": _ids(c, chunk)}):
            computed[item_id] = Terms.of(title, text, params.lead_words).encode()
        if computed:  # another worker may be storing the same ones
            values = [{"item_id": i, "terms": t} for i, t in computed.items()]
            c.execute(_insert_missing(c, TermsRow), values)
        result.update(computed)
    return result


def _insert_missing(c: Connection, table: Any) -> Any:
    """INSERT that skips rows whose key is already stored (SQLite and PostgreSQL)."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[c.dialect.name]
    return dialect.insert(table).on_conflict_do_nothing()


class _Articles:
    """Where the articles of a poll's items were merged to (``merged_into``) and their earliest items:
    read for the whole batch in a few queries, then kept in step with the poll's own decisions."""

    def __init__(self, c: Connection, article_ids: set[int]) -> None:
        self.c = c
        self.merged: dict[int, int | None] = {}
        self.first: dict[int, int | None] = {}
        self.merges: dict[int, int] = {}  # merged_into values this poll set
        self.created: dict[int, str] = {}  # articles this poll creates: placeholder id (< 0) -> key
        self._load_merged(article_ids)
        self.prefetch({self.resolve(a) for a in article_ids})

    def resolve(self, article_id: int) -> int:
        """Follow ``merged_into`` (a URL whose first item was merged into another article by its text)."""
        for _ in range(8):
            if article_id not in self.merged:
                self._load_merged({article_id})
            merged_into = self.merged[article_id]
            if merged_into is None:
                return article_id
            article_id = merged_into
        return article_id

    def earliest(self, article_id: int) -> int | None:
        if article_id not in self.first:
            self.prefetch({article_id})
        return self.first[article_id]

    def create(self, key: str, first_item: int) -> int:
        """A new article (for an item stored without one), under a placeholder id until ``write``."""
        placeholder = -1 - len(self.created)
        self.created[placeholder] = key
        self.merged[placeholder], self.first[placeholder] = None, first_item
        return placeholder

    def write(self, now: datetime) -> Callable[[int | None], int | None]:
        """Store the created articles and the merges (two statements); returns the function that maps a
        placeholder id to the stored one (other ids pass through)."""
        ids: dict[int | None, int] = {}
        if self.created:
            rows = [{"url": key, "created_at": now} for key in self.created.values()]
            statement = insert(_table(ArticleRow)).returning(ArticleRow.url, ArticleRow.id)
            stored = {url: article_id for url, article_id in self.c.execute(statement, rows)}
            ids = {placeholder: stored[key] for placeholder, key in self.created.items()}

        def real(article_id: int | None) -> int | None:
            return ids.get(article_id, article_id)

        if self.merges:
            values = [{"b_id": real(i), "b_into": real(into)} for i, into in self.merges.items()]
            self.c.execute(_MERGE, values)
        return real

    def merge(self, article_id: int, into: int) -> None:
        self.merged[article_id] = self.merges[article_id] = into

    def joined(self, article_id: int, item_id: int) -> None:
        first = self.earliest(article_id)
        self.first[article_id] = item_id if first is None else min(first, item_id)

    def _load_merged(self, ids: set[int]) -> None:
        pending = ids - self.merged.keys()
        while pending:
            for chunk in _chunks(sorted(pending)):
                found = self.c.execute(_sql(self.c.dialect.name).merged, {"ids": _ids(self.c, chunk)})
                self.merged.update({article_id: into for article_id, into in found})
            self.merged.update((i, None) for i in pending if i not in self.merged)
            pending = {into for i in pending if (into := self.merged[i]) is not None} - self.merged.keys()

    def prefetch(self, ids: set[int]) -> None:
        """Read the earliest item of each of the articles ``ids``."""
        for chunk in _chunks(sorted(ids - self.first.keys())):
            rows = self.c.execute(_sql(self.c.dialect.name).first, {"ids": _ids(self.c, chunk)})
            found = {article_id: first for article_id, first in rows}
            self.first.update((i, found.get(i)) for i in chunk)


def prune_fingerprints(
    sessions: sessionmaker[Session],
    now: datetime,
    params: StoryParams,
    *,
    guard: AbstractContextManager[Any] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Delete the fingerprint rows of the items first seen before the window (``params.index_days``
    before ``now``: ``before`` below), PRUNE_CHUNK items per
    transaction (each inside ``guard``: a worker's write stage, so that polls go on in between), until
    ``stop()``; returns how many items lost theirs. Each chunk starts at the lowest item id that still
    has rows (one index lookup) and walks the items up in id order to the first one seen since
    ``before``: an item stored out of order (ids follow inserts, first_seen the poll's start) waits for
    the next prune, none is skipped for good. No new item can find these rows unless it was published
    more than ``index_days - article_window_days`` days before it was stored (``StoryParams.index_days``),
    so the index that the hot path reads and writes keeps a window of the store however large the store
    grows. The items and their decisions stay (articles, stories, merges, story terms)."""
    before, pruned = _window_start(params, now), 0
    while not stop():
        with guard or nullcontext(), sessions.begin() as s:
            c = s.connection()
            first = c.scalar(select(func.min(FingerprintRow.item_id)))
            if first is None:
                return pruned
            walk = select(ItemRow.id, ItemRow.first_seen).where(ItemRow.id >= first).order_by(ItemRow.id)
            rows = c.execute(walk.limit(PRUNE_CHUNK)).all()
            old = [item_id for item_id, _ in itertools.takewhile(lambda row: row[1] < before, rows)]
            if old:
                c.execute(_sql(c.dialect.name).unindex[0], {"ids": _ids(c, old)})
            pruned += len(old)
        if len(old) < PRUNE_CHUNK:
            return pruned
    return pruned


def relink_stories(s: Session, params: StoryParams, now: datetime) -> int:
    """Replay rule 3 with new thresholds (articles are kept) over the stored items in storage order from
    the first one that still has fingerprints (``prune_fingerprints`` dropped those of the older ones,
    whose stories stay as they are); returns the number of stories replayed. For threshold sweeps and
    after a change of the story settings."""
    first = s.scalar(select(func.min(FingerprintRow.item_id))) or 0
    s.execute(delete(MergeRow).where(MergeRow.level == "story", MergeRow.item_id >= first))
    query = select(MergeRow.item_id, MergeRow.other_id).where(MergeRow.level == "article")
    article_of = {item_id: other_id for item_id, other_id in s.execute(query)}
    keys: dict[int, list[int]] = defaultdict(list)
    for item_id, key in s.execute(
        select(FingerprintRow.item_id, FingerprintRow.key).where(FingerprintRow.kind == "story")
    ):
        keys[item_id].append(key)
    items = list(
        s.execute(
            select(ItemRow.id, ItemRow.source_id, ItemRow.published)
            .where(ItemRow.id >= first)
            .order_by(ItemRow.id)
        )
    )
    terms = _terms(s.connection(), {i for i, _, _ in items}, params)
    window = timedelta(hours=params.window_hours)
    seen: dict[int, list[tuple[int, int, datetime]]] = defaultdict(
        list
    )  # key -> earlier (id, source, published)
    # the stories of the older items that replayed ones share an article with: kept, and joined
    older = sorted({other for item_id, other in article_of.items() if item_id >= first > other})
    story_of: dict[int, int] = {}
    for chunk in _chunks(older):
        rows = s.execute(select(ItemRow.id, ItemRow.story_id).where(ItemRow.id.in_(chunk)))
        story_of.update((item_id, story or item_id) for item_id, story in rows)
    sources_of: dict[int, set[int]] = defaultdict(set)
    sizes: Counter[int] = Counter()
    merges = []
    for item_id, source_id, published in items:
        other = article_of.get(item_id)
        story = story_of.get(other) if other is not None else None
        if story is None:
            found = {i: terms[i] for k in keys[item_id] for i, src, when in seen[k]
                     if src != source_id and abs(when - published) <= window and i in terms}  # fmt: skip
            story = item_id
            mine = Terms.decode(terms[item_id]) if item_id in terms else None
            scored = _scored(mine, found.items(), params) if mine else []
            for sim, cand in _by_story_size(scored, story_of.__getitem__, sizes):
                if source_id not in sources_of[story_of[cand]]:
                    story = story_of[cand]
                    merges.append({"item_id": item_id, "other_id": cand, "level": "story", "rule": "story",
                                   "similarity": round(sim, 4), "created_at": now})  # fmt: skip
                    break
        story_of[item_id] = story
        sources_of[story].add(source_id)
        sizes[story] += 1
        for k in keys[item_id]:
            seen[k].append((item_id, source_id, published))
    replayed = [(i, story) for i, story in story_of.items() if i >= first]
    for chunk in _chunks(replayed):
        s.execute(update(ItemRow), [{"id": i, "story_id": story} for i, story in chunk])
    if merges:
        s.execute(insert(_table(MergeRow)), merges)
    return sum(1 for i, story in replayed if i == story)


# --- reading the decisions -------------------------------------------------------------------------


def with_sightings(s: Session, items: list[StoredItem], members: Select[Any]) -> list[StoredItem]:
    """``items`` with ``also``: the other outlets' items (among ``members``) of each one's story, one per
    outlet, earliest first."""
    wanted = {x.story_id for x in items if x.story_id is not None}
    if not wanted:
        return items
    query = (
        select(ItemRow.story_id, ItemRow.title, ItemRow.url, ItemRow.link, SourceRow.name, SourceRow.title)
        .join(SourceRow, SourceRow.id == ItemRow.source_id)
        .where(ItemRow.story_id.in_(wanted), ItemRow.id.in_(members))
        .where(ItemRow.id.not_in([x.id for x in items]))
        .order_by(ItemRow.first_seen, ItemRow.id)
    )
    found: dict[int | None, dict[str, Sighting]] = {}
    for story, title, url, link, source, source_title in s.execute(query):
        found.setdefault(story, {}).setdefault(source, Sighting(source, source_title, title, url or link))
    result = []
    for x in items:
        others = found.get(x.story_id, {}) if x.story_id is not None else {}
        result.append(replace(x, also=tuple(v for k, v in others.items() if k != x.item.source)))
    return result


def merges_of(s: Session, item_id: int) -> list[Merge]:
    """Every decision that names the item, on either side, oldest first."""
    query = (
        select(MergeRow)
        .where((MergeRow.item_id == item_id) | (MergeRow.other_id == item_id))
        .order_by(MergeRow.id)
    )
    return [
        Merge(m.item_id, m.other_id, m.level, m.rule, m.similarity, m.created_at) for m in s.scalars(query)
    ]


@dataclass(frozen=True)
class Member:
    """An item named by an explanation."""

    id: int
    source: str
    uid: str
    title: str


@dataclass(frozen=True)
class Explanation:
    """Why an item is where it is: its identity, its article and story, the decisions that name it."""

    item: Member
    key: str
    published: datetime
    first_seen: datetime
    article_id: int | None
    story_id: int | None
    article: list[Member]  # every item of its article, itself included
    story: list[Member]  # every item of its story, itself included
    merges: list[Merge]
    named: dict[int, Member]  # the items the merges name


def explain_item(s: Session, ident: str) -> Explanation | None:
    """Look an item up by public uid (``urn:uuid:`` optional) or numeric row id."""
    ident = ident.strip().removeprefix("urn:uuid:")
    where = ItemRow.id == int(ident) if ident.isdigit() else ItemRow.uid == ident
    row = s.scalar(select(ItemRow).where(where))
    if row is None:
        return None
    merges = merges_of(s, row.id)
    named = _members(s, ItemRow.id.in_({m.item_id for m in merges} | {m.other_id for m in merges}))
    article = _members(s, ItemRow.article_id == row.article_id) if row.article_id is not None else {}
    story = _members(s, ItemRow.story_id == row.story_id) if row.story_id is not None else {}
    me = _members(s, ItemRow.id == row.id)[row.id]
    return Explanation(
        item=me,
        key=row.key,
        published=row.published,
        first_seen=row.first_seen,
        article_id=row.article_id,
        story_id=row.story_id,
        article=list(article.values()) or [me],
        story=list(story.values()) or [me],
        merges=merges,
        named=named,
    )


def _members(s: Session, where: Any) -> dict[int, Member]:
    query = (
        select(ItemRow.id, SourceRow.name, ItemRow.uid, ItemRow.title)
        .join(SourceRow, SourceRow.id == ItemRow.source_id)
        .where(where)
        .order_by(ItemRow.id)
        .limit(1000)
    )
    return {i: Member(i, source, uid, title) for i, source, uid, title in s.execute(query)}
