"""Migration 0002 (polite fetching) creates exactly what store/tables.py describes, migrates an existing
0001 database with its rows intact, and downgrades cleanly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from aggregator import store
from aggregator.model import Source
from aggregator.store.engine import _alembic_config
from aggregator.store.tables import Base

NOW = datetime(2026, 9, 1, tzinfo=UTC)
MINE = {"poll_history", "retired", "redirect_candidate", "url_reason", "next_due_reason", "body_hash"}
MINE |= {"feed_ttl", "feed_update_every", "last_entries", "ix_poll_history_source_id_id"}


def mentions_mine(diff: object) -> bool:
    return any(name in repr(diff) for name in MINE)


def migrate(engine: object, action: str, revision: str) -> None:
    config = _alembic_config()
    with engine.begin() as connection:  # type: ignore[attr-defined]
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_upgrade_matches_the_tables_and_keeps_rows(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine, "upgrade", "0001")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO sources (name, url, enabled, in_config, error_count, last_new, created_at) "
                "VALUES ('bbc', 'https://bbc.example/rss', 1, 1, 0, 0, '2026-01-01 00:00:00')"
            )
        )
    store.upgrade(engine)
    with engine.connect() as c:
        diffs = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert [d for d in diffs if mentions_mine(d)] == []
    with store.make_sessionmaker(engine).begin() as s:
        (health,) = store.source_health(s)
        assert (health.name, health.retired, health.last_entries, health.status) == ("bbc", False, 0, "new")
        store.sync_sources(s, [Source("bbc", "https://bbc.example/rss")], NOW)
        assert store.poll_history(s, "bbc") == []
    engine.dispose()


def test_downgrade_removes_the_columns_and_the_history(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.upgrade(engine)
    migrate(engine, "downgrade", "0001")
    inspector = inspect(engine)
    assert "poll_history" not in inspector.get_table_names()
    assert not MINE & {c["name"] for c in inspector.get_columns("sources")}
    store.upgrade(engine)
    assert "poll_history" in inspect(engine).get_table_names()
    engine.dispose()
