"""Pure fingerprints for syndication and story grouping: tokens, exact text hash, MinHash LSH band keys,
title-term pair keys, the compact story terms store/ keeps per item, and the similarities that verify a
candidate. No database here: store/ indexes the keys and asks these functions whether two items are one
article or one story.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_V = TypeVar("_V")
_WORD = re.compile(r"\w+", re.UNICODE)
_YEAR = re.compile(r"(19|20)\d\d")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")

# Function words of the languages in the corpus: they say nothing about which event a report covers.
_STOP_TEXT = """
a an the and or but of in on at to for from by with as is are was were be been being has have had it its
this that these those he she they them his her their we our you your i not no after before over under
into out up down about than then so if will would can could may might says said say new more most also
just who what when where which why how all any some one two three first last via der die das und oder
ein eine von zu mit den dem des im ist sind le la les un une et du de des en el los las y por para con
que se del al il di che per ang ng nang sa mga na at si ni kay ay pa ito niya siya
january february march april may june july august september october november december monday tuesday
wednesday thursday friday saturday sunday today yesterday tomorrow week live livestream update updates
video videos watch photos pictures news latest breaking opinion analysis explained
"""
STOPWORDS = frozenset(_STOP_TEXT.split())
# Number words as digits, so that "six dead" and "6 killed" share a term (a count is often the news).
NUMBERS = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20", "hundred": "100",
    "thousand": "1000",
}  # fmt: skip
# A number glued to a word by a hyphen (COVID-19, F-35): part of a name, not a count to compare. The
# hyphen comes first and the lookbehind checks the letter before it: the same matches as a lookbehind
# written first, found 5x faster (the scan stops at hyphens only, not at every character).
_GLUED = re.compile(r"[-\u2010\u2011](?<=[^\W\d_][-\u2010\u2011])\d+\b")


@dataclass(frozen=True, slots=True)
class StoryParams:
    """The tuned thresholds of rules 2 and 3 (bench/dedup_quality.py measures them)."""

    min_exact_tokens: int = 12  # below this many tokens, an equal text is not evidence
    min_near_tokens: int = 30  # below this many text tokens, no near-duplicate test
    min_title_terms: int = 7  # a title with this many meaningful terms identifies a wire article
    shingle: int = 3  # words per shingle for the near-duplicate MinHash
    near_threshold: float = 0.8  # word-shingle Jaccard at or above which two texts are one article
    # LSH: 12 bands of 5 rows (60 permutations) make two texts of Jaccard 0.8 candidates with probability
    # 0.991 (0.9: 0.99998); 20 bands of 6 rows (0.998) stored 8 more index rows per item, the largest cost
    # of a new item, for the same merges on the real corpus (migration 0009)
    near_bands: int = 12
    near_rows: int = 5
    lead_words: int = 40  # words of the text that join the title in the story similarity
    story_sketch: int = 8  # title terms (lowest hash first) whose pairs are an item's story keys
    story_threshold: float = 0.45  # share of the shorter title's terms two reports must have in common
    story_min_shared: int = 2  # and at least this many title terms
    story_bonus: float = 0.1  # added to that share when the titles have 3 or more terms in common
    story_jaccard: float = 0.1  # and at least this Jaccard of their title + lead terms
    window_hours: int = 72  # only items published this close together can share a story
    article_window_days: int = 30  # near-duplicate candidates are looked for this far back
    # fingerprints are kept for the items first seen this recently (store.prune_fingerprints): an item
    # published up to index_days - article_window_days (30) days before it is stored still finds every
    # candidate, and the index, the largest cost of a new item, holds a window of the store, not all of it
    index_days: int = 60


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What store/ indexes for an item: exact-text and long-title keys, LSH band keys of its text, and the
    pair keys of its title terms."""

    text_key: int | None  # exact normalized text (None: too short to be evidence)
    near_keys: tuple[int, ...]  # bands of the MinHash over word shingles of the text
    story_keys: tuple[int, ...]  # pairs of title terms (``pair_keys``)
    title_key: int | None = None  # exact long title (None: too short to identify an article)


def tokens(value: str) -> list[str]:
    """Case-folded words; runs of CJK characters become overlapping character bigrams.

    >>> tokens("Hello, World 中国军网")
    ['hello', 'world', '中国', '国军', '军网']
    """
    folded = value.casefold()
    words: list[str] = _WORD.findall(folded)
    if not _CJK.search(folded):  # the common case: no word needs splitting
        return words
    result: list[str] = []
    for word in words:
        if _CJK.search(word):
            result.extend(_cjk_grams(word))
        else:
            result.append(word)
    return result


def _cjk_grams(word: str) -> list[str]:
    if len(word) < 2:
        return [word]
    return [word[i : i + 2] for i in range(len(word) - 1)]


def shingles(words: Sequence[str], k: int) -> set[str]:
    """Sets of ``k`` consecutive words (the whole sequence when shorter)."""
    if len(words) <= k:
        return {" ".join(words)} if words else set()
    # zip stops at the shortest tail: the last full shingle
    return set(map(" ".join, zip(*[words[i:] for i in range(k)], strict=False)))


def story_terms(title: str, text: str, lead_words: int) -> frozenset[str]:
    """Title words and the first ``lead_words`` words of the text, minus function words, stemmed."""
    return Terms.of(title, text, lead_words).lead


def title_terms(title: str) -> frozenset[str]:
    """The words of a title that can say which event it reports: no function words, dates or years."""
    return _terms(tokens(_GLUED.sub("", title)))


def _lead(text: str, count: int) -> list[str]:
    """The first ``count`` words of ``text`` (glued numbers dropped), tokenizing only its beginning."""
    head = text[: 16 * count]
    words = tokens(_GLUED.sub("", head))
    if len(words) <= count and len(head) < len(text):  # long words: the whole text after all
        words = tokens(_GLUED.sub("", text))
    return words[:count]


def _terms(words: Iterable[str]) -> frozenset[str]:
    """The stems of the meaningful ``words``."""
    return frozenset(filter(None, map(_TERMS.__getitem__, words)))


def _term(word: str) -> str | None:
    """``word``'s stem, or None for a function word or year (``_TERMS`` caches it: news text repeats its
    words)."""
    word = NUMBERS.get(word, word)
    return _stem(word) if _meaningful(word) else None


class _Memo(dict[str, _V]):
    """Word -> ``function`` of the word, computed on first use: news text repeats its words, and a dict
    lookup (``map(memo.__getitem__, words)``) costs a third less than an lru_cache call. Emptied when it
    holds ``limit`` words, which bounds its memory."""

    def __init__(self, function: Callable[[str], _V], limit: int) -> None:
        super().__init__()
        self.function, self.limit = function, limit

    def __missing__(self, word: str) -> _V:
        if len(self) >= self.limit:
            self.clear()
        value = self[word] = self.function(word)
        return value


_TERMS = _Memo(_term, 1 << 14)


def _meaningful(word: str) -> bool:
    if word in STOPWORDS or _YEAR.fullmatch(word):
        return False
    return len(word) > 1 or word.isdigit()


def _stem(word: str) -> str:
    """A crude prefix stem for alphabetic words (evacuated/evacuation, vaccine/vaccinated), plurals made
    singular first (homes/home, bans/ban; not -ss, -us, -is: class, virus, crisis)."""
    if not word.isalpha() or _CJK.search(word):
        return word
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word[:6]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = _as_set(a), _as_set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def overlap(a: Iterable[str], b: Iterable[str]) -> float:
    """Shared terms over the size of the smaller set."""
    sa, sb = _as_set(a), _as_set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / min(len(sa), len(sb))


def _as_set(values: Iterable[str]) -> set[str] | frozenset[str]:
    """``values`` as a set, not copied when it is one (shingle sets of a thousand strings)."""
    return values if isinstance(values, set | frozenset) else set(values)


def text_key(title: str, text: str, params: StoryParams) -> int | None:
    """A 63-bit key of the normalized text; titles join in when the text alone is short."""
    return _text_key(tokens(title), tokens(text), params)


def _text_key(title_words: list[str], words: list[str], params: StoryParams) -> int | None:
    if len(words) < params.min_exact_tokens:
        words = [*title_words, "\n", *words]
        if len(words) < params.min_exact_tokens + 1:
            return None
    return _key("text", " ".join(words).encode())


def near_shingles(text: str, params: StoryParams) -> set[str] | None:
    """The word shingles compared for near-duplicate text, or None when the text is too short."""
    return _near_shingles(tokens(text), params)


def _near_shingles(words: list[str], params: StoryParams) -> set[str] | None:
    return shingles(words, params.shingle) if _comparable(words, params) else None


def _comparable(words: Sequence[str], params: StoryParams) -> bool:
    """Whether a text of ``words`` is long enough for the near-duplicate test (shingles, band keys)."""
    return len(words) >= params.min_near_tokens


@dataclass(frozen=True, slots=True)
class Terms:
    """The compact story signature an item is verified by (stored once, never recomputed)."""

    title: frozenset[str]  # title_terms
    lead: frozenset[str]  # story_terms: title terms and the stemmed lead words

    @classmethod
    def of(
        cls, title: str, text: str, lead_words: int, tokenized: tuple[list[str], list[str]] | None = None
    ) -> Terms:
        """The terms of an item: its title terms, and those with the first ``lead_words`` words of its
        text (what ``analyze`` stores, and what an item stored without them gets). ``tokenized``:
        ``tokens(title)`` and ``tokens(text)`` when the caller has them (``analyze``), the very words
        the terms are made of unless a number glued to a name has to go first (rare): then title and
        lead are tokenized again without it."""
        title_words, words = tokenized or (None, None)
        retokenize = title_words is None or _GLUED.search(title)
        heading = title_terms(title) if retokenize else _terms(title_words or [])
        if words is None or _GLUED.search(text):  # else the text's first words are the lead
            words = _lead(text, lead_words)  # (tokenizing only the beginning of the text)
        return cls(heading, heading | _terms(words[:lead_words]))

    def encode(self) -> str:
        """One line: the title terms, a tab, the lead-only terms (terms never hold whitespace)."""
        return " ".join(sorted(self.title)) + "\t" + " ".join(sorted(self.lead - self.title))

    @staticmethod
    def decode_title(value: str) -> frozenset[str]:
        """The title terms alone of an encoded value (cheaper than ``decode``)."""
        return frozenset(value.partition("\t")[0].split())

    @classmethod
    def decode(cls, value: str) -> Terms:
        title, _, lead = value.partition("\t")
        terms = frozenset(title.split())
        return cls(terms, terms | frozenset(lead.split()))


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything rules 2 and 3 need of one item, computed from one tokenization of its title and text."""

    fingerprint: Fingerprint
    terms: Terms
    words: list[str] | None  # the text's tokens when it is long enough to compare (None: too short)
    shingle: int  # words per near-duplicate shingle

    def shingles(self) -> set[str] | None:
        """The near-duplicate shingles of the text (None: too short), built when asked: only an item
        with near-duplicate candidates to verify needs them."""
        return None if self.words is None else shingles(self.words, self.shingle)


def analyze(title: str, text: str, params: StoryParams) -> Analysis:
    title_words, words = tokens(title), tokens(text)
    near = _comparable(words, params)
    terms = Terms.of(title, text, params.lead_words, (title_words, words))
    heading = terms.title
    fp = Fingerprint(
        text_key=_text_key(title_words, words, params),
        near_keys=_near_keys(words, params) if near else (),
        story_keys=pair_keys(heading, params.story_sketch),
        title_key=_title_key(title_words, heading, params),
    )
    return Analysis(fp, terms, words if near else None, params.shingle)


def fingerprint(title: str, text: str, params: StoryParams) -> Fingerprint:
    return analyze(title, text, params).fingerprint


def title_key(title: str, params: StoryParams) -> int | None:
    """A key of a long title, word for word: wire copies keep the agency's headline."""
    words = tokens(title)
    return _title_key(words, _terms(words), params)


def _title_key(words: list[str], terms: frozenset[str], params: StoryParams) -> int | None:
    if len(terms) < params.min_title_terms:
        return None
    return _key("title", " ".join(words).encode())


def pair_keys(terms: Iterable[str], sketch: int) -> tuple[int, ...]:
    """Story candidate keys: one per pair of title terms, so that candidates are exactly the items that
    share two terms (what ``title_similarity`` asks of any pair of titles with two terms or more). A pair
    is far rarer than a term: the rows a lookup reads stay few however many items the window holds
    (single-term keys read every item that shares a common word). A title with more than ``sketch``
    terms gives the pairs of its ``sketch`` terms of lowest hash (a bottom-k sketch: two titles sharing
    several terms keep the same ones), at most sketch * (sketch - 1) / 2 keys. A one-term title has none.

    >>> len(pair_keys({"volcan", "palma", "lava"}, 10))
    3
    """
    chosen = [term.encode() for term in sorted(sorted(terms, key=_rank)[:sketch])]
    person = _person("story")
    pairs = itertools.combinations(chosen, 2)
    return _keys([hashlib.blake2b(a + b" " + b, digest_size=8, person=person).digest() for a, b in pairs])


@lru_cache(maxsize=1 << 14)
def _rank(term: str) -> bytes:
    """A term's place in the sketch order: a hash, the same in every process and run."""
    return hashlib.blake2b(term.encode(), digest_size=8).digest()


def near_keys(text: str, params: StoryParams) -> tuple[int, ...]:
    """The near-duplicate band keys of a text (none when it is too short to compare), as ``analyze``
    gives them."""
    words = tokens(text)
    return _near_keys(words, params) if _comparable(words, params) else ()


def _near_keys(words: Sequence[str], params: StoryParams) -> tuple[int, ...]:
    return band_keys("near", shingle_hashes(words, params.shingle), params.near_bands, params.near_rows)


def band_keys(kind: str, hashes: NDArray[np.uint32], bands: int, rows: int) -> tuple[int, ...]:
    """LSH: the MinHash signature of the features' input ``hashes`` cut into ``bands`` bands of ``rows``
    values, each hashed to a key."""
    signature = _minhash(hashes, bands * rows).astype(">u4").tobytes()
    width = 4 * rows
    chunks = [signature[band * width : (band + 1) * width] for band in range(bands)]
    persons = _band_persons(kind, bands)
    blake2b = hashlib.blake2b
    return _keys(
        [
            blake2b(chunk, digest_size=8, person=person).digest()
            for chunk, person in zip(chunks, persons, strict=True)
        ]
    )


@cache
def _band_persons(kind: str, bands: int) -> tuple[bytes, ...]:
    """The ``_key`` kind of each band, encoded once."""
    return tuple(_person(f"{kind}:{band}") for band in range(bands))


def minhash(hashes: NDArray[np.uint32], num_perm: int) -> list[int]:
    """datasketch's MinHash (affine32 scheme, seed 1) of features whose input hashes (its ``hashfunc``
    values) are ``hashes``, as a list of 32-bit values."""
    return [int(v) for v in _minhash(hashes, num_perm)]


def _minhash(hashes: NDArray[np.uint32], num_perm: int) -> NDArray[np.uint32]:
    """The same values as datasketch's ``MinHash(scheme="affine32").update_batch`` (MurmurHash3
    finalizer over the input hash, ``a * h + b`` mod 2^32), without building a MinHash object. A
    repeated input hash changes nothing: the minimum is the same."""
    if not len(hashes):
        return np.full(num_perm, 0xFFFFFFFF, dtype=np.uint32)
    a, b = _permutations(num_perm)
    permuted = np.multiply(a, _fmix32(hashes))
    np.add(permuted, b, out=permuted)  # in place: one (num_perm x features) array, not two
    result: NDArray[np.uint32] = permuted.min(axis=1)
    return result


def shingle_hashes(words: Sequence[str], k: int) -> NDArray[np.uint32]:
    """The input hash of every ``k``-word shingle of ``words`` by position (the whole sequence when
    shorter, none when empty, as ``shingles``), all positions at once: a polynomial hash (mod 2^32, odd
    base) of the shingle's word hashes, each the CRC-32 of the word spread by the MurmurHash3 finalizer.
    Two different shingles get one value with probability about 2^-32 (2^-29 at worst, for a reversed
    word order); the finalizer that datasketch's affine32 scheme applies to every input hash
    (``_minhash``) then spreads it. Hashing each distinct word once (cached) instead of each shingle's
    text is what makes the near-duplicate MinHash cheap; every value is the same in every process and
    run (stored keys), and ``feature_hash`` of the shingle's text."""
    hashes = _fmix32(np.fromiter(map(_WORD_HASHES.__getitem__, words), np.uint32, len(words)))
    width = min(k, len(words))
    count = len(words) - width + 1 if words else 0
    hv = hashes[:count]
    for i in range(1, width):
        hv = hv * _BASE + hashes[i : i + count]
    return hv


def feature_hash(feature: str) -> int:
    """The input hash of one shingle given as its words joined by spaces (``shingles``), the value
    ``shingle_hashes`` gives its position: the ``hashfunc`` with which datasketch computes the same
    MinHash (tests/test_stories.py)."""
    words = feature.split(" ")
    return int(shingle_hashes(words, len(words))[0])


def sha1_hashes(features: Iterable[str]) -> NDArray[np.uint32]:
    """datasketch's default input hash (the first 4 bytes of SHA-1, little-endian), which keyed the
    near-duplicate bands up to revision 0008 and the story bands of 0004 to 0007: migration 0008's
    downgrade computes the keys those revisions read."""
    digests = b"".join([hashlib.sha1(f.encode()).digest() for f in features])
    # each 20-byte digest starts with its 32-bit little-endian input hash: every fifth uint32 of the lot
    return np.frombuffer(digests, dtype="<u4")[::5].astype(np.uint32)


def _crc32(word: str) -> int:
    """A word's input hash: the CRC-32 of its UTF-8 bytes, the same in every process and run. CRC-32
    rather than blake2b: a fifth of the cost for a word not seen yet (a fifth of the words of a pass over
    the real corpus), and ``_fmix32`` spreads it."""
    return zlib.crc32(word.encode())


_WORD_HASHES = _Memo(_crc32, 1 << 16)  # ~9 MB at most; the real corpus (1,755 items) has 48,000 words
_BASE = np.uint32(0x1B873593)  # odd, 3 mod 8: a swap of two words changes the value but for ~2^-29


def _fmix32(hv: NDArray[np.uint32]) -> NDArray[np.uint32]:
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


@cache
def _permutations(num_perm: int) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
    """datasketch's affine32 permutations for seed 1 (odd ``a``, any ``b``), drawn the way it draws
    them, so that stored keys stay valid without importing datasketch (~40 MB) at run time."""
    gen = np.random.RandomState(1)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a.reshape(-1, 1), b.reshape(-1, 1)  # columns: ``_minhash`` permutes into a row per permutation


def _key(kind: str, payload: bytes) -> int:
    digest = hashlib.blake2b(payload, digest_size=8, person=_person(kind)).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: fits a signed BIGINT everywhere


def _person(kind: str) -> bytes:
    return kind.encode()[:16]


def _keys(digests: list[bytes]) -> tuple[int, ...]:
    """``_key``'s values of many 8-byte digests, converted at once (an item has ~50 keys)."""
    return tuple((np.frombuffer(b"".join(digests), ">u8") >> np.uint64(1)).tolist())


def story_similarity(title_a: str, text_a: str, title_b: str, text_b: str, params: StoryParams) -> float:
    """``terms_similarity`` of two items given as title and text."""
    a, b = Terms.of(title_a, text_a, params.lead_words), Terms.of(title_b, text_b, params.lead_words)
    return terms_similarity(a, b, params)


def terms_similarity(a: Terms, b: Terms, params: StoryParams) -> float:
    """The stricter test of a story candidate: the share of the shorter title's terms the two titles have
    in common (two reports of one event share the headline's key words), or 0 when they share fewer than
    ``story_min_shared`` terms or their title + lead terms overlap less than ``story_jaccard``."""
    title = title_similarity(a.title, b.title, params)
    if title == 0.0 or jaccard(a.lead, b.lead) < params.story_jaccard:
        return 0.0
    return title


def similar_titles(
    a: frozenset[str], others: Iterable[tuple[int, frozenset[str]]], params: StoryParams
) -> list[int]:
    """The ids of ``others`` (id, title terms) whose ``title_similarity`` with ``a`` reaches
    ``story_threshold``: the first test of every story candidate, so the same formula inlined for many
    candidates at once (tests/test_stories.py checks that it agrees with title_similarity)."""
    threshold, need, bonus, size = params.story_threshold, params.story_min_shared, params.story_bonus, len(a)
    found = []
    for other_id, b in others:
        shared = len(a & b)
        if shared < min(need, size, len(b)):
            sim = 0.0
        else:
            sim = min(1.0, shared / min(size, len(b)) + (bonus if shared >= 3 else 0.0))
        if sim >= threshold:
            found.append(other_id)
    return found


def title_similarity(a: frozenset[str], b: frozenset[str], params: StoryParams) -> float:
    """The title half of ``terms_similarity`` (an upper bound of it, and a cheap first test): the share
    of the shorter title's terms in common, plus ``story_bonus`` when three or more are (measured on the
    real corpus: the more terms two headlines share, the less the share of them needs to be)."""
    shared = len(a & b)
    if shared < min(params.story_min_shared, len(a), len(b)):
        return 0.0
    return min(1.0, shared / min(len(a), len(b)) + (params.story_bonus if shared >= 3 else 0.0))
