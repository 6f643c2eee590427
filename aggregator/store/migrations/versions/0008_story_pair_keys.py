"""story pair keys: an item's story candidate keys are the pairs of its title terms (one key per term
before), so a lookup reads the items that share two terms, not every item that shares a common word;
story terms fold plurals, number words and numbers glued to names (COVID-19); near-duplicate band keys
hash each shingle from cached word hashes (SHA-1 of each shingle's text before): the stored items get all
three again from their title and text

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import sqlalchemy as sa
from alembic import op

from aggregator import stories

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHUNK = 5000
_BANDS = 12  # the single-term MinHash bands of revisions 0004 to 0007 (downgrade)


# the near-duplicate bands of revisions 0004 to 0008 (0009 has fewer): pinned, so that this revision
# stores what it stored when it was written
_NEAR = {"near_bands": 20, "near_rows": 6}


def upgrade() -> None:
    params = dataclasses.replace(stories.StoryParams(), **_NEAR)
    _rekey(
        lambda terms: stories.pair_keys(terms, params.story_sketch),
        lambda text: stories.near_keys(text, params),
        terms=True,
    )


def downgrade() -> None:
    """Single-term story keys and SHA-1 near keys again (the stored terms keep the new folding: they only
    verify candidates)."""
    params = dataclasses.replace(stories.StoryParams(), **_NEAR)
    _rekey(
        lambda terms: _sha1_keys("story", terms, _BANDS, 1),
        lambda text: _sha1_keys(
            "near", stories.near_shingles(text, params) or set(), params.near_bands, params.near_rows
        ),
        terms=False,
    )


def _sha1_keys(kind: str, features: Collection[str], bands: int, rows: int) -> tuple[int, ...]:
    """Band keys of ``features`` as revisions 0004 to 0007 computed them (SHA-1 input hashes); none
    without features."""
    return stories.band_keys(kind, stories.sha1_hashes(features), bands, rows) if features else ()


def _rekey(
    story: Callable[[frozenset[str]], tuple[int, ...]], near: Callable[[str], tuple[int, ...]], *, terms: bool
) -> None:
    """Replace every item's "story" fingerprint rows by ``story`` keys of its title terms, its "near"
    rows by ``near`` keys of its text (and, with ``terms``, its stored story terms), a chunk of items at
    a time."""
    c = op.get_bind()
    lead_words = stories.StoryParams().lead_words
    items = sa.table(
        "items",
        sa.column("id", sa.Integer),
        sa.column("title", sa.Text),
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
    stored = sa.table("story_terms", sa.column("item_id", sa.Integer), sa.column("terms", sa.Text))
    last = 0
    while True:
        columns = [items.c.id, items.c.title, items.c.published, items.c.text]
        rows = c.execute(sa.select(*columns).where(items.c.id > last).order_by(items.c.id).limit(CHUNK)).all()
        if not rows:
            return
        first, last = rows[0][0], rows[-1][0]
        c.execute(
            sa.delete(prints).where(
                prints.c.kind.in_(("story", "near")), prints.c.item_id.between(first, last)
            )
        )
        values, encoded = [], []
        for item_id, title, published, text in rows:
            found = stories.Terms.of(title, text, lead_words)
            for kind, keys in (("story", story(found.title)), ("near", near(text))):
                values += [
                    {"item_id": item_id, "kind": kind, "key": key, "published": published} for key in keys
                ]
            encoded.append({"item_id": item_id, "terms": found.encode()})
        if values:
            c.execute(sa.insert(prints), values)
        if terms:
            c.execute(sa.delete(stored).where(stored.c.item_id.between(first, last)))
            c.execute(sa.insert(stored), encoded)
