"""Parse benchmark: CPU ms per entry of parse and of parse + normalize, feedparser alone (old) against the
fast path (new: fastfeedparser + adapter, feedparser as the fallback), on the real corpus and on the
synthetic one (bench/corpus.py), with the ratio old/new and the fallback rate. One process, one thread:
process_time, both sides interleaved round by round, best round kept (the machine is shared and noisy).

    .venv/bin/python bench/parse.py                        # real corpus + 40 synthetic feeds, 5 rounds
    .venv/bin/python bench/parse.py --feeds 100 --rounds 7
    .venv/bin/python bench/parse.py --variants             # also feedparser's own options, parse only
    .venv/bin/python bench/parse.py --profile 20           # then the top 20 functions of the new path
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import feedparser

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

from aggregator.errors import ParseError
from aggregator.model import ParsedFeed, Source
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed_traced

REAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
Doc = tuple[str, bytes]


def real_docs() -> list[Doc]:
    skip = (".tsv", ".html")
    return [(p.name, p.read_bytes()) for p in sorted(REAL.iterdir()) if p.is_file() and p.suffix not in skip]


def synthetic_docs(feeds: int) -> list[Doc]:
    return [(f"bench-{n}.xml", corpus.render(n, 0)) for n in range(feeds)]


def _parse(doc: Doc, fast: bool) -> tuple[ParsedFeed | None, str | None]:
    name, body = doc
    try:
        return parse_feed_traced(body, url=f"https://example.org/{name}", source=name, fast=fast)
    except ParseError:
        return None, None


def _normalize(doc: Doc, parsed: ParsedFeed | None) -> None:
    if parsed is None:
        return
    source = Source(name=doc[0], url=f"https://example.org/{doc[0]}")
    for raw in parsed.entries:
        normalize_entry(raw, source=source, feed=parsed.meta, feed_url=source.url, now=NOW)


def cpu(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


@dataclass
class Side:
    parse: float = float("inf")  # best round, CPU seconds for the whole corpus
    total: float = float("inf")  # parse + normalize

    def keep(self, parse: float, total: float) -> None:
        self.parse, self.total = min(self.parse, parse), min(self.total, total)


def run(docs: list[Doc], fast: bool) -> tuple[float, float]:
    """(parse CPU s, parse + normalize CPU s) over the corpus."""
    parse_s = normalize_s = 0.0
    for doc in docs:
        started = time.process_time()
        parsed = _parse(doc, fast)[0]
        parsed_at = time.process_time()
        _normalize(doc, parsed)
        parse_s += parsed_at - started
        normalize_s += time.process_time() - parsed_at
    return parse_s, parse_s + normalize_s


def fallbacks(docs: list[Doc]) -> tuple[int, int, int]:
    """(entries, documents that fell back to feedparser, entries in them)."""
    entries = fell = fell_entries = 0
    for doc in docs:
        parsed, reason = _parse(doc, True)
        count = len(parsed.entries) if parsed else 0
        entries += count
        if reason:
            fell, fell_entries = fell + 1, fell_entries + count
    return entries, fell, fell_entries


def measure(label: str, docs: list[Doc], rounds: int) -> list[str]:
    entries, fell, fell_entries = fallbacks(docs)
    old, new = Side(), Side()
    run(docs, True)  # warm up: the language model, caches, imports
    for _ in range(rounds):
        old.keep(*run(docs, False))
        new.keep(*run(docs, True))
    ms = 1000 / max(entries, 1)
    rows = []
    for what, a, b in (("parse", old.parse, new.parse), ("parse+normalize", old.total, new.total)):
        rows.append(
            f"{label:<10} {len(docs):>5} {entries:>7} {what:<16} {a * ms:>9.3f} {b * ms:>9.3f} {a / b:>6.1f}x"
            f" {fell:>4} docs / {fell_entries / max(entries, 1):6.1%} entries"
        )
    rows.append(
        f"{'':<10} {'':>5} {'':>7} {'normalize alone':<16} "
        f"{(old.total - old.parse) * ms:>9.3f} {(new.total - new.parse) * ms:>9.3f}"
    )
    return rows


def variants(docs: list[Doc], rounds: int) -> list[str]:
    """feedparser's own options, parse only (ms per entry), against the fast path."""
    options = {
        "feedparser sanitize+resolve (library defaults)": {
            "sanitize_html": True,
            "resolve_relative_uris": True,
        },
        "feedparser resolve only (old path)": {"sanitize_html": False, "resolve_relative_uris": True},
        "feedparser neither (then nh3)": {"sanitize_html": False, "resolve_relative_uris": False},
    }
    entries = fallbacks(docs)[0]
    best = dict.fromkeys([*options, "fast path"], float("inf"))
    for _ in range(rounds):
        for name, kw in options.items():
            best[name] = min(
                best[name], cpu(lambda kw=kw: [feedparser.parse(io.BytesIO(b), **kw) for _, b in docs])
            )
        best["fast path"] = min(best["fast path"], cpu(lambda: [_parse(d, True) for d in docs]))
    return [f"  {name:<48} {s * 1000 / entries:8.3f} ms/entry" for name, s in best.items()]


def profile(docs: list[Doc], top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    run(docs, True)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeds", type=int, default=40, help="synthetic feeds (~35 entries each)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per side; the best is kept")
    p.add_argument("--variants", action="store_true", help="also time feedparser's options, parse only")
    p.add_argument("--profile", type=int, metavar="N", help="print the N costliest functions of the new path")
    args = p.parse_args()
    corpora = {"real": real_docs(), "synthetic": synthetic_docs(args.feeds)}
    print("CPU ms per entry (process time, best of the rounds); old = feedparser alone, new = fast path")
    print(
        f"{'corpus':<10} {'docs':>5} {'entries':>7} {'stage':<16} {'old ms':>9} {'new ms':>9} {'ratio':>7}"
        f"  fallback to feedparser"
    )
    for label, docs in corpora.items():
        print("\n".join(measure(label, docs, args.rounds)))
    if args.variants:
        for label, docs in corpora.items():
            print(f"{label}: parse only")
            print("\n".join(variants(docs, args.rounds)))
    if args.profile:
        print(profile([d for docs in corpora.values() for d in docs], args.profile))


if __name__ == "__main__":
    main()
