"""The store: the only package that touches the database (SQLAlchemy 2.x, SQLite or PostgreSQL)."""

from aggregator.store.engine import make_engine, make_sessionmaker, schema_revision, upgrade
from aggregator.store.repo import (
    SaveResult,
    TopicStats,
    add_topic_items,
    claim_due_sources,
    count_items,
    fetch_state,
    item_topics,
    record_poll,
    remove_topic_items,
    save_items,
    source_health,
    stored_items,
    sync_sources,
    sync_topics,
    topic_items,
    topic_stats,
)

__all__ = [
    "SaveResult",
    "TopicStats",
    "add_topic_items",
    "claim_due_sources",
    "count_items",
    "fetch_state",
    "item_topics",
    "make_engine",
    "make_sessionmaker",
    "record_poll",
    "remove_topic_items",
    "save_items",
    "schema_revision",
    "source_health",
    "stored_items",
    "sync_sources",
    "sync_topics",
    "topic_items",
    "topic_stats",
    "upgrade",
]
