"""raw entry hashes: each item keeps the hash of the raw entry it was normalized from, so a re-poll
normalizes only the entries that are new or changed; the fingerprint lookup index also covers the kind
and item of each key (the candidate lookup of linking reads no table row)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("raw_hash", sa.String(length=32), nullable=True))
    op.drop_index("ix_fingerprints_key_published", table_name="fingerprints")
    op.create_index("ix_fingerprints_key_published", "fingerprints", ["key", "published", "kind", "item_id"])


def downgrade() -> None:
    op.drop_index("ix_fingerprints_key_published", table_name="fingerprints")
    op.create_index("ix_fingerprints_key_published", "fingerprints", ["key", "published"])
    with op.batch_alter_table("items") as batch:
        batch.drop_column("raw_hash")
