"""polite fetching: redirects, retirement, retry-after, poll history

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    "retired",
    "redirect_candidate",
    "url_reason",
    "next_due_reason",
    "body_hash",
    "feed_ttl",
    "feed_update_every",
    "last_entries",
)


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retired", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("redirect_candidate", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("url_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("next_due_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("body_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("feed_ttl", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("feed_update_every", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_entries", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "poll_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("new", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_due_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name=op.f("fk_poll_history_source_id_sources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_poll_history")),
    )
    with op.batch_alter_table("poll_history", schema=None) as batch_op:
        batch_op.create_index("ix_poll_history_source_id_id", ["source_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("poll_history", schema=None) as batch_op:
        batch_op.drop_index("ix_poll_history_source_id_id")
    op.drop_table("poll_history")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        for name in reversed(_COLUMNS):
            batch_op.drop_column(name)
