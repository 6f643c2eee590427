"""The database schema: SQLAlchemy 2.0 declarative tables, shared by SQLite and PostgreSQL.

Migrations (store/migrations) create exactly these tables; this module only describes them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; naive UTC in the database (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SourceRow(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(Text)  # as configured
    effective_url: Mapped[str | None] = mapped_column(Text)  # where the feed was last found
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    in_config: Mapped[bool] = mapped_column(Boolean, default=True)
    title: Mapped[str | None] = mapped_column(Text)  # the feed's own title
    link: Mapped[str | None] = mapped_column(Text)  # the outlet's site
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    last_fetch_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_http_status: Mapped[int | None] = mapped_column(Integer)
    last_status: Mapped[str | None] = mapped_column(String(20))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_problem: Mapped[str | None] = mapped_column(Text)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_new: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # polite fetching (migration 0002)
    retired: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # 410 Gone
    redirect_candidate: Mapped[str | None] = mapped_column(Text)  # a 301/308 target seen once
    url_reason: Mapped[str | None] = mapped_column(Text)  # why effective_url differs from url
    next_due_reason: Mapped[str | None] = mapped_column(Text)  # the scheduling rule that set next_due_at
    body_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 of the last body stored
    feed_ttl: Mapped[int | None] = mapped_column(Integer)  # seconds: RSS <ttl>
    feed_update_every: Mapped[int | None] = mapped_column(Integer)  # seconds: sy:updatePeriod/Frequency
    last_entries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # leases (migration 0005): the worker that claimed the source and until when (store/leases.py)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    host: Mapped[str | None] = mapped_column(String(255))  # of the URL polled; None: no per-host limit


class ArticleRow(Base):
    """One article, however many sources carried it (keyed by canonical URL)."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    merged_into: Mapped[int | None] = mapped_column(Integer)  # a syndication merge joined it to this one


class ItemRow(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("source_id", "key", name="uq_items_source_key"),
        Index("ix_items_published", "published"),
        Index("ix_items_article_id", "article_id"),
        Index("ix_items_story_id", "story_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    link: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    published: Mapped[datetime] = mapped_column(UTCDateTime)
    updated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dated: Mapped[bool] = mapped_column(Boolean, default=True)
    language: Mapped[str | None] = mapped_column(String(16))
    authors: Mapped[list[str]] = mapped_column(JSON, default=list)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    enclosures: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    image: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id", ondelete="SET NULL"))
    story_id: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)  # first seen or last content change
    update_count: Mapped[int] = mapped_column(Integer, default=0)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")  # Item.flags
    # the raw entry's hash (migration 0007, normalize.raw_identity): an entry seen again with the same
    # hash under the same key is not normalized again
    raw_hash: Mapped[str | None] = mapped_column(String(32))


class TopicRow(Base):
    """What the store knows of a configured topic: the definition its memberships were computed for."""

    __tablename__ = "topics"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    definition: Mapped[str] = mapped_column(String(64))  # hash of the topic's settings
    last_match_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TopicItemRow(Base):
    """Membership of an item in a topic, decided when the item is stored."""

    __tablename__ = "topic_items"
    __table_args__ = (Index("ix_topic_items_item_id", "item_id"),)

    topic: Mapped[str] = mapped_column(ForeignKey("topics.name", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TombstoneRow(Base):
    """An item that retention pruned: its identity stays so that the feed cannot bring it back as new."""

    __tablename__ = "tombstones"

    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime)  # or when a poll last saw the key since


class PollRow(Base):
    """One poll of a source, kept for a bounded history (``python run.py sources --history NAME``)."""

    __tablename__ = "poll_history"
    __table_args__ = (Index("ix_poll_history_source_id_id", "source_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20))
    http_status: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    entries: Mapped[int] = mapped_column(Integer, default=0)
    new: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    next_due_reason: Mapped[str | None] = mapped_column(Text)


class FingerprintRow(Base):
    """LSH band keys and exact-text keys of an item (migration 0004): candidates are found by indexed
    lookups of ``key`` within a ``published`` window: the cost per new item does not grow with the store."""

    __tablename__ = "fingerprints"
    __table_args__ = (
        # covering (migration 0007): the candidate lookup reads kind and item from the index alone
        Index("ix_fingerprints_key_published", "key", "published", "kind", "item_id"),
        Index("ix_fingerprints_item_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # "text", "near" or "story"
    key: Mapped[int] = mapped_column(BigInteger)
    published: Mapped[datetime] = mapped_column(UTCDateTime)


class MergeRow(Base):
    """A syndication or story decision: ``item_id`` joined ``other_id``'s article or story, and why."""

    __tablename__ = "merges"
    __table_args__ = (Index("ix_merges_item_id", "item_id"), Index("ix_merges_other_id", "other_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    other_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(8))  # "article" or "story"
    rule: Mapped[str] = mapped_column(String(16))  # url, text-hash, same-title, near-text, story
    similarity: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TermsRow(Base):
    """An item's story terms (migration 0006): title terms, a tab, lead-only terms. Story candidates are
    verified on these few words, so their full texts are never loaded or tokenized again."""

    __tablename__ = "story_terms"

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    terms: Mapped[str] = mapped_column(Text)
