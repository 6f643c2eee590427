"""syndication and stories: text fingerprints, LSH bands, merge decisions, story ids

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fingerprints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("key", sa.BigInteger(), nullable=False),
        sa.Column("published", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_fingerprints_item_id_items"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fingerprints")),
    )
    op.create_index("ix_fingerprints_key_published", "fingerprints", ["key", "published"])
    op.create_index("ix_fingerprints_item_id", "fingerprints", ["item_id"])
    op.create_table(
        "merges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("other_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_merges_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["other_id"], ["items.id"], name=op.f("fk_merges_other_id_items"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merges")),
    )
    op.create_index("ix_merges_item_id", "merges", ["item_id"])
    op.create_index("ix_merges_other_id", "merges", ["other_id"])
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into", sa.Integer(), nullable=True))
    op.create_index("ix_items_story_id", "items", ["story_id"])


def downgrade() -> None:
    op.drop_index("ix_items_story_id", table_name="items")
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.drop_column("merged_into")
    op.drop_index("ix_merges_other_id", table_name="merges")
    op.drop_index("ix_merges_item_id", table_name="merges")
    op.drop_table("merges")
    op.drop_index("ix_fingerprints_item_id", table_name="fingerprints")
    op.drop_index("ix_fingerprints_key_published", table_name="fingerprints")
    op.drop_table("fingerprints")
