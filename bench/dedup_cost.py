"""Cost per new item of syndication/story linking and of topic matching as the store grows (10k to 1M).

Fills a fresh SQLite file with N stored items (2,000 a day from 40 sources; synthetic texts from a 30k-word
vocabulary, each with its real fingerprint keys, story terms and topic memberships) by bulk inserts, then
stores batches of 100 new items through the real ``save_items`` + ``link_items`` (half of them rewrites
of recent stored items, so candidates are found, verified and merged) and ``pipeline.match_items`` (10
topics), and reports CPU ms per new item (process time, median of the batches). Flat columns from 10k to
1M mean indexed lookups only (below ~60k items the 30-day near-duplicate window is not full yet, so 10k
costs less). The stores hold what a worker leaves: fingerprints only for the items of the last
StoryParams.index_days (60) days, 120,000 items (``--no-window``: for every item, as before a worker
prunes: then the index outgrows SQLite's page cache and each lookup reads leaf pages from the OS).
CPU time, not wall time: the machine is shared. "peak RSS" is the process's ru_maxrss after
the size's batches (file pages read through a memory map count, as they do in a worker); it includes
building the store when this process built it, so compare it between runs that reuse a kept store
(``--keep``), one configuration per process.

``--sqlite-cache`` and ``--sqlite-mmap`` (sizes as in the config: 64MB, 1GiB; mmap 0 is off) set the
``database_pool.sqlite_cache`` / ``sqlite_mmap`` of the engine that stores the new items (defaults: the
config's, 1 MiB and off). ``--keep DIR`` keeps each built store in DIR (stored-N.db, built there when
missing, a few GB at 1M) and measures a fresh copy of it, so every run starts from the same file and the
1M store is built once. ``--other-writer``: another connection commits a write before each batch, as
the other threads of a worker do; in WAL mode that drops the measuring connection's page cache (not what
it reads through the memory map).

    .venv/bin/python bench/dedup_cost.py                          # 10k, 100k and 1M (1M: ~10 minutes)
    .venv/bin/python bench/dedup_cost.py 10000 100000
    .venv/bin/python bench/dedup_cost.py 10000 --batches 31     # steadier medians on a busy machine
    .venv/bin/python bench/dedup_cost.py 1000000 --keep /tmp/dedup --sqlite-mmap 1GB
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import DateTime, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store, stories
from aggregator.config import parse_size
from aggregator.dedup import content_hash, item_uid
from aggregator.model import FetchResult, FetchState, Item, Source, Topic
from aggregator.pipeline import Context, match_items
from aggregator.store.tables import ItemRow
from aggregator.stories import Analysis, StoryParams
from aggregator.topics import TopicMatcher

RATE = 2000  # stored items per day
SOURCES = 40
POOL = 4000  # distinct synthetic documents the background reuses (analysed once each)
BATCHES, BATCH = 7, 100
START = datetime(2020, 1, 1, tzinfo=UTC)
WORDS = [f"w{i}" for i in range(30000)]
TOPICS = [
    Topic(f"t{i}", f"w{i} OR w{i + 100} OR (w{i + 200} AND NOT w{i + 300}) OR title:w{i + 400}")
    for i in range(10)
]
# the store's text form of a UTC datetime
_STAMP = cast(
    Callable[[datetime], str], DateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
)


def document(rng: random.Random) -> tuple[str, str]:
    title = " ".join(rng.choices(WORDS[:3000], k=rng.randint(6, 12)))
    text = " ".join(rng.choices(WORDS, k=rng.randint(40, 160)))
    return title, text


def stamp(when: datetime) -> str:
    value: str = _STAMP(when.replace(tzinfo=None))
    return value


def background(
    n: int, pool: list[tuple[str, str]], analyses: list[Analysis], window: bool
) -> Iterator[tuple[list[tuple[Any, ...]], ...]]:
    """Rows of items, fingerprints, story terms and topic memberships, in chunks of 20,000 items. A pool
    document comes back every POOL items from another source (syndicated copies across the store). With
    ``window``, fingerprints only for the items first seen within StoryParams.index_days of the last
    one: what a worker's prune (store.prune_fingerprints) leaves."""
    step = timedelta(days=1) / RATE
    indexed_from = n - StoryParams().index_days * RATE if window else 0
    matchers = [TopicMatcher(topic) for topic in TOPICS]
    hits = [[m.topic.name for m in matchers if m.matches(_item(t, x), ())] for t, x in pool]
    for start in range(0, n, 20_000):
        items: list[tuple[Any, ...]] = []
        keys: list[tuple[Any, ...]] = []
        terms: list[tuple[Any, ...]] = []
        members: list[tuple[Any, ...]] = []
        for i in range(start, min(n, start + 20_000)):
            doc, item_id, when = i % POOL, i + 1, stamp(START + i * step)
            title, text = pool[doc]
            source = (i + i // POOL) % SOURCES + 1
            uid, digest = item_uid("bg", str(i)), content_hash(title, text)
            items.append((item_id, uid, source, f"k{i}", title, "", text, when, 1, "[]", "[]", "[]", digest,
                          item_id, when, when, 0, "[]"))  # fmt: skip
            fp = analyses[doc].fingerprint
            pairs = [("near", k) for k in fp.near_keys] + [("story", k) for k in fp.story_keys]
            pairs += [
                (kind, k) for kind, k in (("text", fp.text_key), ("title", fp.title_key)) if k is not None
            ]
            if i >= indexed_from:
                keys.extend((item_id, kind, k, when) for kind, k in pairs)
            terms.append((item_id, analyses[doc].terms.encode()))
            members.extend((name, item_id, when) for name in hits[doc])
        yield items, keys, terms, members


def fill(url: str, db: Path, n: int, pool: list[tuple[str, str]], window: bool) -> None:
    """N background items written with sqlite3 executemany (indexes dropped during the fill, rebuilt)."""
    params = StoryParams()
    analyses = [stories.analyze(t, x, params) for t, x in pool]
    engine = store.make_engine(url)
    with store.make_sessionmaker(engine).begin() as s:
        store.sync_sources(s, [Source(f"s{i}", f"file:///s{i}") for i in range(SOURCES + 1)], START)
        store.sync_topics(s, {t.name: "bench" for t in TOPICS})
    engine.dispose()
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    indexes = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        con.execute(f"DROP INDEX {name}")
    for items, keys, terms, members in background(n, pool, analyses, window):
        con.executemany(
            "INSERT INTO items (id, uid, source_id, key, title, html, text, published, dated, authors, "
            "categories, enclosures, content_hash, story_id, first_seen, changed_at, update_count, flags) "
            "VALUES (" + ",".join("?" * 18) + ")",
            items,
        )
        con.executemany("INSERT INTO fingerprints (item_id, kind, key, published) VALUES (?,?,?,?)", keys)
        con.executemany("INSERT INTO story_terms (item_id, terms) VALUES (?,?)", terms)
        con.executemany("INSERT INTO topic_items (topic, item_id, added_at) VALUES (?,?,?)", members)
        con.commit()
    for _, sql in indexes:
        con.execute(sql)
    con.commit()
    con.close()


def build(db: Path, n: int, pool: list[tuple[str, str]], window: bool) -> float:
    """A new store of N background items at ``db``: seconds it took."""
    started = time.monotonic()
    url = f"sqlite:///{db}"
    engine = store.make_engine(url)
    store.upgrade(engine)
    engine.dispose()
    fill(url, db, n, pool, window)
    return time.monotonic() - started


def prepare(db: Path, n: int, pool: list[tuple[str, str]], keep: Path | None, window: bool) -> float:
    """The store to measure at ``db``: built there, or copied from ``keep`` (built there first when
    missing; the measured run writes to its copy only). Seconds spent building (0: a kept one was used)."""
    if keep is None:
        return build(db, n, pool, window)
    kept = keep / f"stored-{n}{'' if window else '-all'}.db"
    filled = 0.0
    if not kept.exists():
        partial = keep / f"stored-{n}.part"
        partial.unlink(missing_ok=True)
        filled = build(partial, n, pool, window)
        partial.rename(kept)
    shutil.copyfile(kept, db)
    return filled


def _item(title: str, text: str, key: str = "k", at: datetime = START) -> Item:
    return Item(source=f"s{SOURCES}", key=key, uid=item_uid("new", key), title=title, html="", text=text,
                published=at, content_hash=content_hash(title, text))  # fmt: skip


def _no_fetch(source: Source, state: FetchState | None) -> FetchResult:
    raise AssertionError("the benchmark stores items directly")


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
        items.append(_item(title, text, f"new{batch}-{i}", at))
    return items


def measure(
    n: int,
    batches: int = BATCHES,
    settings: store.Pool | None = None,
    keep: Path | None = None,
    other_writer: bool = False,
    window: bool = True,
) -> dict[str, float]:
    """CPU ms per new item (median over the batches) of storing, linking and topic matching, through an
    engine with ``settings`` (the SQLite page cache and memory map); with ``other_writer``, a second
    connection commits before each batch."""
    rng = random.Random(n)
    pool = [document(rng) for _ in range(POOL)]
    end = START + n * (timedelta(days=1) / RATE)
    with tempfile.TemporaryDirectory(dir=keep) as tmp:
        db = Path(tmp) / "cost.db"
        filled = prepare(db, n, pool, keep, window)
        engine = store.make_engine(f"sqlite:///{db}", settings or store.Pool())
        sessions: sessionmaker[Session] = store.make_sessionmaker(engine)
        sources = [Source(f"s{i}", f"file:///s{i}") for i in range(SOURCES + 1)]
        ctx = Context.build(sources, TOPICS, sessions, _no_fetch)
        costs: dict[str, list[float]] = {"save": [], "link": [], "match": []}
        other = sqlite3.connect(db)
        other.execute("CREATE TABLE bench_writes (batch INTEGER)")
        for b in range(batches):
            if other_writer:
                other.execute("INSERT INTO bench_writes VALUES (?)", (b,))
                other.commit()
            items = new_items(rng, pool, n, end + timedelta(minutes=b), b)
            with sessions.begin() as s:
                clock = time.process_time()
                saved = store.save_items(s, f"s{SOURCES}", items, end)
                costs["save"].append(time.process_time() - clock)
                clock = time.process_time()
                store.link_items(s, saved.new, saved.updated, end)
                costs["link"].append(time.process_time() - clock)
                clock = time.process_time()
                match_items(ctx, s, saved.new, saved.updated, end)
                costs["match"].append(time.process_time() - clock)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; before the count,
        with sessions() as s:  # which reads the whole items table (through the memory map, if any)
            merged = s.scalar(select(func.count()).select_from(ItemRow).where(ItemRow.story_id != ItemRow.id))
        engine.dispose()
        other.close()
    result = {name: statistics.median(values[1:]) / BATCH * 1000 for name, values in costs.items()}
    return result | {"merged": float(merged or 0), "fill": filled, "rss": peak}


def _mmap_size(value: str) -> int:
    return 0 if value.strip() == "0" else parse_size(value)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sizes", nargs="*", type=int, help="stored items to measure at (default: 10k, 100k, 1M)")
    p.add_argument(
        "--batches", type=int, default=BATCHES, help=f"batches of {BATCH} new items (default: %(default)s)"
    )
    p.add_argument(
        "--sqlite-cache", type=parse_size, default=store.Pool.sqlite_cache, metavar="SIZE",
        help="SQLite page cache of the measuring connection (default: 1MiB)",
    )  # fmt: skip
    p.add_argument(
        "--sqlite-mmap", type=_mmap_size, default=0, metavar="SIZE",
        help="bytes of the store the measuring connection memory-maps (default: 0, off)",
    )  # fmt: skip
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep built stores in DIR and measure copies")
    p.add_argument("--other-writer", action="store_true", help="another connection commits before each batch")
    p.add_argument(
        "--no-window",
        action="store_true",
        help="fingerprints for every stored item (no worker pruned the store: StoryParams.index_days)",
    )
    args = p.parse_args(argv)
    sizes = args.sizes or [10_000, 100_000, 1_000_000]
    settings = store.Pool(sqlite_cache=args.sqlite_cache, sqlite_mmap=args.sqlite_mmap)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    print(
        f"CPU ms per new item, median of {args.batches - 1} batches of {BATCH} (the first one warms caches); "
        f"SQLite cache {args.sqlite_cache:,} bytes, mmap {args.sqlite_mmap:,} bytes"
    )
    columns = ("save_items", "link_items", "match_items", "merged", "fill s", "peak RSS MB")
    print(f"{'stored items':>12} | " + " | ".join(columns))
    rows = []
    for n in sizes:
        r = measure(n, args.batches, settings, args.keep, args.other_writer, not args.no_window)
        rows.append({"stored": n, **r})
        print(f"{n:>12,} | {r['save']:>10.3f} | {r['link']:>10.3f} | {r['match']:>11.3f} | "
              f"{int(r['merged']):>6} | {r['fill']:>6.0f} | {r['rss']:>11.0f}", flush=True)  # fmt: skip
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
