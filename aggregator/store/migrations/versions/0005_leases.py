"""source leases: which worker holds a claimed source and until when; the host each source polls

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_sources_lease_expires_at", ["lease_expires_at"], unique=False)
    sources = sa.table(
        "sources", sa.column("id"), sa.column("url"), sa.column("effective_url"), sa.column("host")
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(sources.c.id, sources.c.url, sources.c.effective_url)).all()
    for id_, url, effective_url in rows:  # the host each source polls (the worker keeps it current)
        host = _host(effective_url or url)
        connection.execute(sources.update().where(sources.c.id == id_).values(host=host))


def _host(url: str) -> str | None:
    """store.leases.url_host as of this revision: "name:port" of an http(s) URL, else None."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port or (443 if scheme == 'https' else 80)}"


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_index("ix_sources_lease_expires_at")
        batch_op.drop_column("host")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
