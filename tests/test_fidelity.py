"""The fidelity gate: every real feed and every feedparser fixture through the fast path and through
feedparser alone; per-field agreement must stay at or above the measured thresholds.

Fields are compared as normalize sees them (titles cleaned, bodies as sanitized plain text, dates as the
item's date). The differences are printed (run with ``-s``), a few per field. Run as a script
(``python tests/test_fidelity.py``) for every difference.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aggregator.errors import ParseError
from aggregator.markup import clean_html, clean_title, html_to_text
from aggregator.model import ParsedFeed, RawEntry
from aggregator.parse import parse_feed, parse_feed_traced

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
REAL = CORPUS / "real"
FP_TESTS = CORPUS / "feedparser-tests"
needs_corpus = pytest.mark.skipif(not REAL.is_dir(), reason="shared/corpus is not beside the repository")


def _date(e: RawEntry) -> object:
    return e.published or e.updated


def _body(e: RawEntry) -> str:
    return " ".join(html_to_text(clean_html(e.content or e.summary or "", e.base)).split())


def _enclosures(e: RawEntry) -> object:
    return tuple((x.url, x.type, x.length) for x in e.enclosures)


def _casefolded(values: tuple[str, ...]) -> object:
    return tuple(v.casefold() for v in values)


FIELDS: dict[str, Callable[[RawEntry], object]] = {
    "id": lambda e: e.guid,
    "link": lambda e: e.link,
    "title": lambda e: clean_title(e.title),
    "date": _date,
    "authors": lambda e: _casefolded(e.authors),
    "body": _body,
    "enclosures": _enclosures,
    "categories": lambda e: _casefolded(e.categories),
    "image": lambda e: e.image,
    "language": lambda e: (e.language or "").lower()[:2] or None,
}

# feed-level fields, compared per document: the schedule reads ttl and update_every
FEED_FIELDS = ("feed link", "feed version", "feed ttl", "feed update_every")


def _feed_field(feed: ParsedFeed, name: str) -> object:
    return getattr(feed.meta, name.removeprefix("feed ").replace(" ", "_"))


# Floors per field, a little under the measurement (74 real feeds, 1,832 entries: 100 % on every field
# but body 99.89 % and language 95.36 %; fixtures: >= 99.8 % each), so a regression of a few entries fails.
# The known differences are feedparser's own: a media:description type="html" caption it takes for the
# body (dailymail-2), and an item's dc:language after its description that it ignores (dw-chinese, 85).
THRESHOLDS = {
    "real": dict.fromkeys([*FIELDS, *FEED_FIELDS], 0.995) | {"language": 0.95},
    "fixtures": dict.fromkeys([*FIELDS, *FEED_FIELDS], 0.99),
}
MIN_ENTRIES = {"real": 1800, "fixtures": 1200}


@dataclass
class Tally:
    entries: int = 0
    documents: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    agree: Counter[str] = field(default_factory=Counter)
    diffs: dict[str, list[str]] = field(default_factory=dict)

    def rate(self, name: str) -> float:
        total = self.documents if name in FEED_FIELDS else self.entries
        return self.agree[name] / total if total else 1.0

    def report(self, label: str, shown: int = 3) -> str:
        fell = sum(self.fallbacks.values())
        lines = [
            f"{label}: {self.documents} documents, {self.entries} entries, {fell} fell back to feedparser"
        ]
        lines += [f"  fallback: {n} x {reason}" for reason, n in self.fallbacks.most_common(8)]
        for name in [*FIELDS, *FEED_FIELDS]:
            diffs = self.diffs.get(name, [])
            lines.append(f"  {name:<11} {self.rate(name):7.2%} agree ({len(diffs)} differ)")
            lines += [f"      {d}" for d in diffs[:shown]]
        return "\n".join(lines)


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def compare(tally: Tally, label: str, body: bytes, url: str) -> None:
    """Parse ``body`` both ways and count, per field, the entries on which the two agree."""
    try:
        slow = parse_feed(body, url=url, fast=False)
    except ParseError:
        slow = None
    try:
        fast, reason = parse_feed_traced(body, url=url)
    except ParseError:
        fast, reason = None, None
    if slow is None:
        return  # nothing to agree with (the fast path may not do better than ParseError either)
    tally.documents += 1
    if reason:
        tally.fallbacks[reason.split(":")[0][:60]] += 1
    for name in FEED_FIELDS:
        va, vb = _feed_field(slow, name), (_feed_field(fast, name) if fast else "<missing>")
        if va == vb:
            tally.agree[name] += 1
        else:
            tally.diffs.setdefault(name, []).append(f"{label}: feedparser {_clip(va)} fast {_clip(vb)}")
    for i, (a, b) in enumerate(_pairs(slow, fast)):
        tally.entries += 1
        for name, get in FIELDS.items():
            va, vb = get(a), (get(b) if b is not None else "<missing>")
            if va == vb:
                tally.agree[name] += 1
            else:
                tally.diffs.setdefault(name, []).append(
                    f"{label}#{i}: feedparser {_clip(va)} fast {_clip(vb)}"
                )


def _pairs(slow: ParsedFeed, fast: ParsedFeed | None) -> Iterator[tuple[RawEntry, RawEntry | None]]:
    others = fast.entries if fast is not None else ()
    for i, entry in enumerate(slow.entries):
        yield entry, (others[i] if i < len(others) else None)


def _documents(folder: Path) -> Iterator[Path]:
    skip = {"LICENSE", "README.md"}
    yield from (
        p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".tsv" and p.name not in skip
    )


def measure(folder: Path) -> Tally:
    tally = Tally()
    for path in _documents(folder):
        rel = path.relative_to(folder)
        compare(tally, str(rel), path.read_bytes(), f"http://127.0.0.1:8097/{rel}")
    return tally


@pytest.fixture(scope="module")
def real_tally() -> Tally:
    return measure(REAL)


@pytest.fixture(scope="module")
def fixture_tally() -> Tally:
    return measure(FP_TESTS)


@needs_corpus
@pytest.mark.parametrize("name", [*FIELDS, *FEED_FIELDS])
def test_real_corpus_agreement(real_tally: Tally, name: str) -> None:
    if name == "id":
        print("\n" + real_tally.report("real"))
    assert real_tally.entries >= MIN_ENTRIES["real"]
    assert real_tally.rate(name) >= THRESHOLDS["real"][name], real_tally.report("real", shown=20)


@needs_corpus
@pytest.mark.parametrize("name", [*FIELDS, *FEED_FIELDS])
def test_feedparser_fixtures_agreement(fixture_tally: Tally, name: str) -> None:
    if name == "id":
        print("\n" + fixture_tally.report("fixtures"))
    assert fixture_tally.entries >= MIN_ENTRIES["fixtures"]
    assert fixture_tally.rate(name) >= THRESHOLDS["fixtures"][name], fixture_tally.report(
        "fixtures", shown=20
    )


@needs_corpus
def test_real_corpus_mostly_takes_the_fast_path(real_tally: Tally) -> None:
    assert sum(real_tally.fallbacks.values()) <= 0.1 * real_tally.documents, real_tally.fallbacks


if __name__ == "__main__":  # every difference: python tests/test_fidelity.py [real|fixtures]
    for which in sys.argv[1:] or ["real", "fixtures"]:
        print(measure(REAL if which == "real" else FP_TESTS).report(which, shown=10**6))
