"""Story and syndication quality on the real corpus, through the real pipeline.

Ingests ../shared/corpus/real (file:// sources, one per capture; the REPOLL.tsv pairs are one source polled
twice) into a fresh SQLite database in capture-time order, then scores the stored story ids against
CLUSTERS.tsv and the second polls against REPOLL.tsv, for a sweep of the story thresholds.

    .venv/bin/python bench/dedup_quality.py            # the sweep and the chosen setting
    .venv/bin/python bench/dedup_quality.py --show     # also list every merged pair of the chosen setting
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import itertools
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from aggregator import store
from aggregator.fetch import fetch, make_session
from aggregator.model import PollOutcome, Source
from aggregator.pipeline import Context, poll_source
from aggregator.store.stories import relink_stories
from aggregator.store.tables import ItemRow, SourceRow
from aggregator.stories import StoryParams

REAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
FEED_SUFFIXES = {".xml", ".atom", ".json", ".rdf"}


def tsv(name: str) -> list[dict[str, str]]:
    with (REAL / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@dataclass
class Ingest:
    """What one run stored: item rows by source, and the outcome of every re-poll."""

    items: dict[str, list[tuple[int, str | None, str, int | None, int | None]]]  # id, link, title, art, story
    repolls: dict[str, PollOutcome]
    seconds: float
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # process seconds: total and per stage


def plan() -> list[tuple[datetime, str, Path]]:
    """(capture time, source name, file) in capture order; a re-poll pair shares its source name."""
    captured = {
        r["file"]: datetime.fromisoformat(r["file_last_changed"]).astimezone(UTC) for r in tsv("SOURCES.tsv")
    }
    partner = {r["later_file"]: r["earlier_file"] for r in tsv("REPOLL.tsv")}
    steps = []
    for path in sorted(REAL.iterdir()):
        if path.suffix not in FEED_SUFFIXES or path.name not in captured:
            continue
        name = Path(partner.get(path.name, path.name)).stem
        steps.append((captured[path.name], name, path))
    steps.sort(key=lambda step: (step[0], step[2].name))
    return steps


def ingest(params: StoryParams, db: Path) -> Ingest:
    engine = store.make_engine(f"sqlite:///{db}")
    store.upgrade(engine)
    sessions = store.make_sessionmaker(engine)
    http = make_session()
    started, clock = time.monotonic(), time.process_time()
    repolls: dict[str, PollOutcome] = {}
    seen: set[str] = set()
    with cpu_in(("save_items", "link_items")) as cpu:
        for when, name, path in plan():
            source = Source(name, path.as_uri())
            ctx = dataclasses.replace(
                Context.build([source], [], sessions, functools.partial(fetch, http)), stories=params
            )
            with sessions.begin() as s:
                store.sync_sources(s, [source], when)
            outcome = poll_source(ctx, name, when)
            if name in seen:
                repolls[path.name] = outcome
            seen.add(name)
    seconds = time.monotonic() - started
    cpu["ingest"] = time.process_time() - clock
    engine.dispose()
    http.close()
    return Ingest(read_items(db), repolls, seconds, cpu)


@contextlib.contextmanager
def cpu_in(names: Sequence[str]) -> Iterator[dict[str, float]]:
    """Process seconds spent in the named ``aggregator.store`` functions (the pipeline calls them through
    the module) while the block runs; single-threaded, so process time is theirs."""
    spent = dict.fromkeys(names, 0.0)
    originals = {name: getattr(store, name) for name in names}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            clock = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - clock

        return call

    for name, function in originals.items():
        setattr(store, name, timed(name, function))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(store, name, function)


def read_items(db: Path) -> dict[str, list[tuple[int, str | None, str, int | None, int | None]]]:
    engine = store.make_engine(f"sqlite:///{db}")
    items: dict[str, list[tuple[int, str | None, str, int | None, int | None]]] = defaultdict(list)
    with store.make_sessionmaker(engine).begin() as s:
        query = select(
            SourceRow.name, ItemRow.id, ItemRow.link, ItemRow.title, ItemRow.article_id, ItemRow.story_id
        )
        for name, *row in s.execute(query.join(SourceRow, SourceRow.id == ItemRow.source_id)):
            items[name].append(tuple(row))  # type: ignore[arg-type]
    engine.dispose()
    return items


def replay(db: Path, params: StoryParams, base: Ingest) -> Ingest:
    """The same stored items with rule 3 replayed at other thresholds (store.relink_stories)."""
    engine = store.make_engine(f"sqlite:///{db}")
    started = time.monotonic()
    with store.make_sessionmaker(engine).begin() as s:
        relink_stories(s, params, datetime.now(UTC))
    seconds = time.monotonic() - started
    engine.dispose()
    return Ingest(read_items(db), base.repolls, seconds)


def source_of(file: str) -> str:
    partner = {r["later_file"]: r["earlier_file"] for r in tsv("REPOLL.tsv")}
    return Path(partner.get(file, file)).stem


def locate(run: Ingest, file: str, link: str, title: str) -> tuple[int, str, int | None, int | None] | None:
    """The stored item of a CLUSTERS.tsv row: (id, source, article id, story id)."""
    name = source_of(file)
    rows = run.items.get(name, [])
    for key in ("link", "title"):
        for item_id, ilink, ititle, article, story in rows:
            if (key == "link" and link and ilink == link) or (
                key == "title" and ititle.strip() == title.strip()
            ):
                return item_id, name, article, story
    return None


@dataclass
class Score:
    precision: float
    recall: float
    of_allowed: float  # true pairs / the most pairs a partition with one item per source per story has
    true_pairs: int
    false_merges: int  # both items labelled, different clusters, one story
    unjudged: int  # merged pairs with an unlabelled item (listed with --show)
    syndication: tuple[int, int]  # merged / labelled same-article pairs
    repolls_exact: tuple[int, int]
    missing: int


def score(run: Ingest) -> tuple[Score, list[str]]:
    rows = tsv("CLUSTERS.tsv")
    labels: dict[int, str] = {}
    where: dict[int, tuple[str, int | None, int | None]] = {}
    missing = 0
    same_article: set[tuple[int, int]] = set()
    by_post: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        found = locate(run, r["file"], r["item_link"], r["item_title"])
        if found is None:
            missing += 1
            continue
        item_id, name, article, story = found
        where[item_id] = (name, article, story)
        if r["cluster"].startswith("C"):
            labels[item_id] = r["cluster"]
        if r["cluster"].startswith("L") or r["kind"].startswith(("exact-title", "republication")):
            # L: one post in two formats (same link); exact-title: the rows whose headline is the same
            post = r["item_link"] if r["cluster"].startswith("L") else r["cluster"]
            post = r["item_title"] if r["kind"].startswith("exact-title") else post
            by_post[(r["cluster"], post)].append(item_id)
    for ids in by_post.values():
        for a, b in itertools.combinations(sorted(set(ids)), 2):
            same_article.add((a, b))
    synd = sum(1 for a, b in same_article if where[a][1] is not None and where[a][1] == where[b][1])
    tp = fn = fp = 0
    for a, b in itertools.combinations(sorted(labels), 2):
        together = where[a][2] is not None and where[a][2] == where[b][2]
        if labels[a] == labels[b]:
            tp += together
            fn += not together
        else:
            fp += together
    allowed = _allowed_pairs(labels, {i: w[0] for i, w in where.items()})
    notes, unjudged = _unjudged(run, labels)
    repoll_rows = tsv("REPOLL.tsv")
    exact = 0
    for r in repoll_rows:
        outcome = run.repolls.get(r["later_file"])
        if outcome and (outcome.new, outcome.updated) == (
            int(r["new_in_later"]),
            int(r["common_with_changed_title_or_content"]),
        ):
            exact += 1
        notes.append(
            f"repoll {r['pair']}: new {outcome and outcome.new}/{r['new_in_later']}, updated "
            f"{outcome and outcome.updated}/{r['common_with_changed_title_or_content']}"
        )
    return (
        Score(
            precision=tp / (tp + fp) if tp + fp else 1.0,
            recall=tp / (tp + fn) if tp + fn else 1.0,
            of_allowed=tp / allowed if allowed else 1.0,
            true_pairs=tp,
            false_merges=fp,
            unjudged=unjudged,
            syndication=(synd, len(same_article)),
            repolls_exact=(exact, len(repoll_rows)),
            missing=missing,
        ),
        notes,
    )


def _allowed_pairs(labels: dict[int, str], source: dict[int, str]) -> int:
    """Labelled pairs that can share a story when a story holds one item per source: per cluster, the
    k-th story takes the k-th item of every source that has k items."""
    total = 0
    clusters: dict[str, list[int]] = defaultdict(list)
    for item_id, cluster in labels.items():
        clusters[cluster].append(item_id)
    for ids in clusters.values():
        per_source = Counter(source[i] for i in ids)
        for k in range(1, max(per_source.values()) + 1):
            n = sum(1 for count in per_source.values() if count >= k)
            total += n * (n - 1) // 2
    return total


def _unjudged(run: Ingest, labels: dict[int, str]) -> tuple[list[str], int]:
    """Story merges that involve an item CLUSTERS.tsv does not label: they need a human look."""
    stories: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
    for name, rows in run.items.items():
        for item_id, _link, title, _article, story in rows:
            if story is not None:
                stories[story].append((name, item_id, title))
    notes, count = [], 0
    for members in stories.values():
        if len(members) < 2:
            continue
        pairs = [
            (x, y) for x, y in itertools.combinations(members, 2) if x[1] not in labels or y[1] not in labels
        ]
        count += len(pairs)
        if pairs:
            tags = ", ".join(f"{n}:{labels.get(i, '?')}:{t[:60]!r}" for n, i, t in members)
            notes.append(f"story of {len(members)}: {tags}")
    return notes, count


SWEEP = [
    (t, j, n, b)
    for b in (0.0, 0.1)
    for n in (2, 3)
    for t in (0.3, 0.4, 0.45, 0.5, 0.6, 0.7)
    for j in (0.0, 0.1, 0.15)
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="list merged pairs and re-poll details")
    parser.add_argument("--quick", action="store_true", help="only the default thresholds")
    args = parser.parse_args(argv)
    if not REAL.is_dir():
        print(f"corpus not found at {REAL}", file=sys.stderr)
        return 2
    default = StoryParams()
    header = (
        f"{'title':>5} {'lead':>5} {'terms':>5} {'bonus':>5} | {'prec':>5} {'recall':>6} {'of_ok':>5} | "
        f"{'true':>4} {'false':>5} "
        f"{'unjudged':>8} | {'synd':>7} | {'repoll':>6} | {'secs':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "quality.db"
        base = ingest(default, db)
        result, chosen_notes = score(base)
        stored = sum(map(len, base.items.values()))
        print(
            f"ingest through the pipeline ({len(plan())} polls, {stored} items): {base.seconds:.1f}s; "
            f"CPU {base.cpu['ingest']:.2f}s, of which save_items {base.cpu['save_items']:.2f}s "
            f"({base.cpu['save_items'] / stored * 1000:.2f} ms per item), link_items "
            f"{base.cpu['link_items']:.2f}s ({base.cpu['link_items'] / stored * 1000:.2f} ms per item); "
            "sweep by replaying rule 3 (store.relink_stories) on a copy"
        )
        print(header)
        for threshold, lead, shared, bonus in [] if args.quick else SWEEP:
            params = dataclasses.replace(
                default,
                story_threshold=threshold,
                story_jaccard=lead,
                story_min_shared=shared,
                story_bonus=bonus,
            )
            copy = Path(tmp) / "sweep.db"
            shutil.copyfile(db, copy)
            run = replay(copy, params, base)
            print(_line(params, score(run)[0], run.seconds, ""))
        print(_line(default, result, base.seconds, " <- chosen (the pipeline's defaults)"))
    if args.show:
        print("\n".join(chosen_notes))
    print(
        "title/lead/terms/bonus: story_threshold / story_jaccard / story_min_shared / story_bonus; "
        "prec, recall: pairwise over the labelled C clusters; "
        "of_ok: recall over the pairs a one-item-per-source story can hold; false: merged pairs of two "
        "different labelled events; unjudged: merged pairs with an unlabelled item (--show lists them); "
        "synd: same-article pairs (L clusters, exact-title, republication) given one article_id; "
        "repoll: second polls whose new/updated counts equal REPOLL.tsv"
    )
    print(f"(labelled rows not found among stored items: {result.missing})")
    return 0


def _line(p: StoryParams, result: Score, seconds: float, mark: str) -> str:
    return (
        f"{p.story_threshold:>5.2f} {p.story_jaccard:>5.2f} {p.story_min_shared:>5} {p.story_bonus:>5.2f} | "
        f"{result.precision:>5.3f} {result.recall:>6.3f} "
        f"{result.of_allowed:>5.3f} | {result.true_pairs:>4} {result.false_merges:>5} "
        f"{result.unjudged:>8} | {result.syndication[0]:>3}/{result.syndication[1]:<3} | "
        f"{result.repolls_exact[0]}/{result.repolls_exact[1]:<4} | {seconds:>5.1f}{mark}"
    )


if __name__ == "__main__":
    sys.exit(main())
