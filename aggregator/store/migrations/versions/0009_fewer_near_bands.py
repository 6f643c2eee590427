"""fewer near-duplicate bands: an item's near keys are 12 LSH bands of 5 rows (20 bands of 6 before), so a
new item stores and looks up 8 index rows fewer; the stored items get their near keys again from their
text

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from alembic import op

from aggregator import stories

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CHUNK = 5000


def upgrade() -> None:
    _rekey(bands=12, rows=5)


def downgrade() -> None:
    """Every item gets 20 bands of 6 rows again, those whose fingerprints a prune had dropped too (their
    story keys stay dropped: the next prune of a worker of this revision drops the near keys again)."""
    _rekey(bands=20, rows=6)


def _rekey(*, bands: int, rows: int) -> None:
    """Replace every item's "near" fingerprint rows by the band keys of its text, ``bands`` bands of
    ``rows`` rows, a chunk of items at a time (items too short to compare have none, before and after)."""
    params = dataclasses.replace(stories.StoryParams(), near_bands=bands, near_rows=rows)
    c = op.get_bind()
    items = sa.table(
        "items",
        sa.column("id", sa.Integer),
        sa.column("published", sa.DateTime),
        sa.column("text", sa.Text),
    )
    prints = sa.table(
        "fingerprints",
        sa.column("item_id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("key", sa.BigInteger),
        sa.column("published", sa.DateTime),
    )
    last = 0
    while True:
        columns = [items.c.id, items.c.published, items.c.text]
        chunk = c.execute(
            sa.select(*columns).where(items.c.id > last).order_by(items.c.id).limit(CHUNK)
        ).all()
        if not chunk:
            return
        first, last = chunk[0][0], chunk[-1][0]
        c.execute(sa.delete(prints).where(prints.c.kind == "near", prints.c.item_id.between(first, last)))
        values = [
            {"item_id": item_id, "kind": "near", "key": key, "published": published}
            for item_id, published, text in chunk
            for key in stories.near_keys(text or "", params)
        ]
        if values:
            c.execute(sa.insert(prints), values)
