"""Alembic environment: runs on the connection handed over by aggregator.store.engine.upgrade."""

from __future__ import annotations

from alembic import context

from aggregator.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by the bare alembic CLI
    raise RuntimeError("run migrations with `python run.py db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
