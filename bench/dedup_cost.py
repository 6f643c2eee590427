"""Cost of syndication and story dedup per new item as the store grows (10k, 100k, optionally 1M items).

Fills a fresh SQLite file with N stored items (2,000 a day, 40 sources, with real fingerprints of synthetic
texts drawn from a 30k-word vocabulary), then stores batches of 100 new items through the real
``save_items`` + ``link_items`` (half of them rewrites of recent stored items, so candidates are found,
verified and merged) and reports the time per new item. Flat numbers mean indexed lookups only.

    .venv/bin/python bench/dedup_cost.py              # 10k and 100k
    .venv/bin/python bench/dedup_cost.py 10000 100000 1000000
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store, stories
from aggregator.dedup import content_hash, item_uid
from aggregator.model import Item, Source
from aggregator.store.tables import FingerprintRow, ItemRow, SourceRow
from aggregator.stories import StoryParams

RATE = 2000  # stored items per day
SOURCES = 40
POOL = 4000  # distinct synthetic documents whose fingerprints the background reuses
BATCHES, BATCH = 5, 100
START = datetime(2020, 1, 1, tzinfo=UTC)
WORDS = [f"w{i}" for i in range(30000)]


def document(rng: random.Random) -> tuple[str, str]:
    title = " ".join(rng.choices(WORDS[:3000], k=rng.randint(6, 12)))
    text = " ".join(rng.choices(WORDS, k=rng.randint(40, 160)))
    return title, text


def fill(
    sessions: sessionmaker[Session], n: int, rng: random.Random
) -> tuple[datetime, list[tuple[str, str]]]:
    """N background items, ``RATE`` a day, fingerprints taken from a pool of real ones."""
    params = StoryParams()
    pool = [document(rng) for _ in range(POOL)]
    prints = [stories.fingerprint(t, x, params) for t, x in pool]
    step = timedelta(days=1) / RATE
    with sessions.begin() as s:
        store.sync_sources(s, [Source(f"s{i}", f"file:///s{i}") for i in range(SOURCES + 1)], START)
        ids = list(s.scalars(select(SourceRow.id).order_by(SourceRow.id)))
    for chunk in range(0, n, 5000):
        items, keys = [], []
        for i in range(chunk, min(n, chunk + 5000)):
            title, text = pool[i % POOL]
            when = START + i * step
            items.append(
                {
                    "id": i + 1, "uid": item_uid("bg", str(i)), "source_id": ids[i % SOURCES], "key": f"k{i}",
                    "title": title, "html": "", "text": text, "published": when, "dated": True,
                    "authors": [], "categories": [], "enclosures": [], "story_id": i + 1,
                    "content_hash": content_hash(title, text), "first_seen": when, "changed_at": when,
                    "update_count": 0,
                }
            )  # fmt: skip
            fp = prints[i % POOL]
            rows = [("near", k) for k in fp.near_keys] + [("story", k) for k in fp.story_keys]
            rows += [("text", fp.text_key)] if fp.text_key is not None else []
            keys.extend({"item_id": i + 1, "kind": k, "key": v, "published": when} for k, v in rows)
        with sessions.begin() as s:
            s.execute(insert(ItemRow), items)
            s.execute(insert(FingerprintRow), keys)
    return START + n * step, pool


def new_items(
    rng: random.Random, pool: list[tuple[str, str]], n: int, at: datetime, batch: int
) -> list[Item]:
    """Fresh documents, and rewrites (shuffled title, text with a changed sentence) of stored ones."""
    items = []
    for i in range(BATCH):
        title, text = document(rng) if i % 2 else pool[(n - 1 - rng.randrange(RATE // 2)) % POOL]
        if i % 2 == 0:
            words = title.split()
            rng.shuffle(words)
            title, text = " ".join(words), text + " " + " ".join(rng.choices(WORDS, k=8))
        key = f"new{batch}-{i}"
        items.append(Item(source=f"s{SOURCES}", key=key, uid=item_uid("new", key), title=title, html="",
                          text=text, published=at, content_hash=content_hash(title, text)))  # fmt: skip
    return items


def measure(n: int) -> tuple[float, float, int]:
    rng = random.Random(n)
    with tempfile.TemporaryDirectory() as tmp:
        engine = store.make_engine(f"sqlite:///{Path(tmp) / 'cost.db'}")
        store.upgrade(engine)
        sessions = store.make_sessionmaker(engine)
        started = time.monotonic()
        end, pool = fill(sessions, n, rng)
        filled = time.monotonic() - started
        timings = []
        for b in range(BATCHES):
            items = new_items(rng, pool, n, end + timedelta(minutes=b), b)
            with sessions.begin() as s:
                began = time.perf_counter()
                saved = store.save_items(s, f"s{SOURCES}", items, end)
                store.link_items(s, saved.new, saved.updated, end)
                timings.append((time.perf_counter() - began) / len(items))
        with sessions() as s:
            merged = s.scalar(select(func.count()).select_from(ItemRow).where(ItemRow.story_id != ItemRow.id))
        engine.dispose()
    timings.sort()
    return timings[len(timings) // 2] * 1000, filled, merged or 0


def main(argv: list[str]) -> int:
    sizes = [int(x) for x in argv] or [10_000, 100_000]
    print(f"{'stored items':>12} | {'ms per new item (median of 5 batches of 100)':>44} | merged | fill s")
    for n in sizes:
        per_item, filled, merged = measure(n)
        print(f"{n:>12,} | {per_item:>44.2f} | {merged:>6} | {filled:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
