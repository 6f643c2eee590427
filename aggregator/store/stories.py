"""Rules 2 and 3 of deduplication in the store: one article per syndicated text, one story per event.

``link_items`` runs inside the poll's transaction right after ``save_items``: it looks up candidates by
indexed fingerprint keys (exact text, MinHash LSH bands) within a time window, verifies them with the
pure similarities of ``aggregator.stories``, and records each decision (rule + similarity) in ``merges``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.orm import Session, load_only

from aggregator import stories
from aggregator.model import Item, Sighting, StoredItem
from aggregator.store.tables import ArticleRow, FingerprintRow, ItemRow, MergeRow, SourceRow
from aggregator.stories import Fingerprint, StoryParams

MAX_CANDIDATES = 200  # per lookup: bounds the work per new item however popular a band key is


@dataclass(frozen=True)
class Merge:
    """One stored decision, as ``explain`` shows it."""

    item_id: int
    other_id: int
    level: str
    rule: str
    similarity: float
    created_at: datetime


def link_items(
    s: Session,
    new: Sequence[tuple[int, Item]],
    updated: Sequence[tuple[int, Item]],
    now: datetime,
    params: StoryParams | None = None,
) -> None:
    """Give new items their article and story ids; re-index the fingerprints of updated ones."""
    params = params or StoryParams()
    for item_id, item in updated:
        s.execute(delete(FingerprintRow).where(FingerprintRow.item_id == item_id))
        _index(s, item_id, item.published, stories.fingerprint(item.title, item.text, params))
    for item_id, item in new:
        row = s.get(ItemRow, item_id)
        if row is None:
            continue
        fp = stories.fingerprint(item.title, item.text, params)
        merged = _link_article(s, row, item, fp, params, now)
        if merged is not None:
            row.story_id = merged.story_id or merged.id
        else:
            row.story_id = _link_story(s, row, fp, params, now)
        _index(s, item_id, item.published, fp)
        s.flush()


def _index(s: Session, item_id: int, published: datetime, fp: Fingerprint) -> None:
    rows = [("near", k) for k in fp.near_keys] + [("story", k) for k in fp.story_keys]
    if fp.text_key is not None:
        rows.append(("text", fp.text_key))
    if fp.title_key is not None:
        rows.append(("title", fp.title_key))
    if rows:
        values = [{"item_id": item_id, "kind": k, "key": v, "published": published} for k, v in rows]
        s.execute(insert(FingerprintRow), values)


def _record(
    s: Session, row: ItemRow, other: ItemRow, level: str, rule: str, sim: float, now: datetime
) -> None:
    s.add(
        MergeRow(
            item_id=row.id,
            other_id=other.id,
            level=level,
            rule=rule,
            similarity=round(sim, 4),
            created_at=now,
        )
    )


# --- rule 2: the same article from several sources -------------------------------------------------


def _link_article(
    s: Session, row: ItemRow, item: Item, fp: Fingerprint, params: StoryParams, now: datetime
) -> ItemRow | None:
    """Join ``row`` to an earlier item carrying the same article; returns that item, or None."""
    if row.article_id is not None:
        article = _resolve(s, row.article_id)
        row.article_id = article
        other = s.scalar(
            select(ItemRow)
            .where(ItemRow.article_id == article, ItemRow.id < row.id)
            .order_by(ItemRow.id)
            .limit(1)
        )
        if other is not None:
            _record(s, row, other, "article", "url", 1.0, now)
            return other
    other, rule, sim = _same_text(s, row, item, fp, params)
    if other is None:
        return None
    target = other.article_id
    if target is None:
        target = _new_article(s, f"urn:aggregator:item:{other.uid}", now)
        other.article_id = target
    if row.article_id is not None and row.article_id != target:
        own = s.get(ArticleRow, row.article_id)
        if own is not None:
            own.merged_into = target
    row.article_id = target
    _record(s, row, other, "article", rule, sim, now)
    return other


def _resolve(s: Session, article_id: int) -> int:
    """Follow ``merged_into`` (a URL whose first item was merged into another article by its text)."""
    for _ in range(8):
        merged_into = s.scalar(select(ArticleRow.merged_into).where(ArticleRow.id == article_id))
        if merged_into is None:
            return article_id
        article_id = merged_into
    return article_id


def _new_article(s: Session, key: str, now: datetime) -> int:
    article = ArticleRow(url=key, created_at=now)
    s.add(article)
    s.flush()
    return article.id


def _same_text(
    s: Session, row: ItemRow, item: Item, fp: Fingerprint, params: StoryParams
) -> tuple[ItemRow | None, str, float]:
    """An earlier item of another source with the same text (exact key) or a near-identical one."""
    if fp.text_key is not None:
        query = (
            select(ItemRow)
            .join(FingerprintRow, FingerprintRow.item_id == ItemRow.id)
            .where(FingerprintRow.key == fp.text_key, ItemRow.source_id != row.source_id)
            .order_by(ItemRow.id)
            .limit(1)
        )
        other = s.scalar(query)
        if other is not None:
            return other, "text-hash", 1.0
    if fp.title_key is not None:
        window = timedelta(hours=params.window_hours)
        for other in _candidates(s, row, [fp.title_key], item.published, window):
            if stories.title_key(other.title, params) == fp.title_key:
                return other, "same-title", 1.0
    mine = stories.near_shingles(item.text, params)
    if not mine or not fp.near_keys:
        return None, "", 0.0
    window = timedelta(days=params.article_window_days)
    best: tuple[ItemRow | None, float] = (None, 0.0)
    for other in _candidates(s, row, fp.near_keys, item.published, window):
        theirs = stories.near_shingles(other.text, params)
        sim = stories.jaccard(mine, theirs) if theirs else 0.0
        if sim >= params.near_threshold and sim > best[1]:
            best = (other, sim)
    return best[0], "near-text", best[1]


def _candidates(
    s: Session,
    row: ItemRow,
    keys: Sequence[int],
    published: datetime,
    window: timedelta,
    before: int | None = None,
) -> list[ItemRow]:
    """Items of other sources sharing a band key, published within ``window`` of ``published`` (and
    stored before item ``before``, when replaying)."""
    ids = select(FingerprintRow.item_id).where(
        FingerprintRow.key.in_(list(keys)),
        FingerprintRow.published >= published - window,
        FingerprintRow.published <= published + window,
    )
    if before is not None:
        ids = ids.where(FingerprintRow.item_id < before)
    ids = ids.distinct().limit(MAX_CANDIDATES)
    query = (
        select(ItemRow)
        .options(load_only(*_CANDIDATE_COLUMNS))
        .where(ItemRow.id.in_(ids), ItemRow.source_id != row.source_id)
    )
    return list(s.scalars(query.order_by(ItemRow.id)))


_CANDIDATE_COLUMNS = (
    ItemRow.id,
    ItemRow.uid,
    ItemRow.source_id,
    ItemRow.title,
    ItemRow.text,
    ItemRow.article_id,
    ItemRow.story_id,
)


# --- rule 3: the same story from several outlets ---------------------------------------------------


def _link_story(
    s: Session,
    row: ItemRow,
    fp: Fingerprint,
    params: StoryParams,
    now: datetime,
    before: int | None = None,
) -> int:
    """The story id for ``row``: a verified candidate's story, or a new story of its own."""
    if not fp.story_keys:
        return row.id
    window = timedelta(hours=params.window_hours)
    scored = []
    for other in _candidates(s, row, fp.story_keys, row.published, window, before):
        sim = stories.story_similarity(row.title, row.text, other.title, other.text, params)
        if sim >= params.story_threshold:
            scored.append((sim, other))
    scored.sort(key=lambda pair: (-pair[0], pair[1].id))
    for sim, other in scored:
        if other.story_id is None:  # stored before stories existed
            other.story_id = other.id
        story = other.story_id
        if _source_in_story(s, story, row):
            continue  # never two different articles of one source in one story
        _record(s, row, other, "story", "story", sim, now)
        return story
    return row.id


def _source_in_story(s: Session, story: int, row: ItemRow) -> bool:
    query = select(ItemRow.id).where(
        ItemRow.story_id == story, ItemRow.source_id == row.source_id, ItemRow.id != row.id
    )
    return s.scalar(query.limit(1)) is not None


def relink_stories(s: Session, params: StoryParams, now: datetime) -> int:
    """Replay rule 3 over every stored item in storage order with new thresholds (articles are kept);
    returns the number of stories. For threshold sweeps and after a change of the story settings."""
    s.execute(delete(MergeRow).where(MergeRow.level == "story"))
    s.execute(update(ItemRow).values(story_id=None))
    article_of = {
        m.item_id: m.other_id for m in s.scalars(select(MergeRow).where(MergeRow.level == "article"))
    }
    story_keys: dict[int, list[int]] = {}
    for item_id, key in s.execute(
        select(FingerprintRow.item_id, FingerprintRow.key).where(FingerprintRow.kind == "story")
    ):
        story_keys.setdefault(item_id, []).append(key)
    stories_seen = 0
    for row in s.scalars(select(ItemRow).order_by(ItemRow.id)):
        other_id = article_of.get(row.id)
        other = s.get(ItemRow, other_id) if other_id is not None else None
        if other is not None and other.story_id is not None:
            row.story_id = other.story_id
        else:
            fp = Fingerprint(None, (), tuple(story_keys.get(row.id, ())))
            row.story_id = _link_story(s, row, fp, params, now, before=row.id)
            stories_seen += row.story_id == row.id
        s.flush()
    return stories_seen


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
