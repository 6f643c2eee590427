"""Pure fingerprints for syndication and story grouping: tokens, exact text hash, MinHash LSH band keys,
the compact story terms store/ keeps per item, and the similarities that verify a candidate. No database
here: store/ indexes the keys and asks these functions whether two items are one article or one story.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from numpy.typing import NDArray

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
que se del al il di che per
january february march april may june july august september october november december monday tuesday
wednesday thursday friday saturday sunday today yesterday tomorrow week live livestream update updates
video videos watch photos pictures news latest breaking opinion analysis explained
"""
STOPWORDS = frozenset(_STOP_TEXT.split())


@dataclass(frozen=True, slots=True)
class StoryParams:
    """The tuned thresholds of rules 2 and 3 (bench/dedup_quality.py measures them)."""

    min_exact_tokens: int = 12  # below this many tokens, an equal text is not evidence
    min_near_tokens: int = 30  # below this many text tokens, no near-duplicate test
    min_title_terms: int = 7  # a title with this many meaningful terms identifies a wire article
    shingle: int = 3  # words per shingle for the near-duplicate MinHash
    near_threshold: float = 0.8  # word-shingle Jaccard at or above which two texts are one article
    near_bands: int = 20
    near_rows: int = 6
    lead_words: int = 40  # words of the text that join the title in the story similarity
    story_bands: int = 12  # LSH over title terms, one value per band: candidates share a title term
    story_rows: int = 1
    story_threshold: float = 0.5  # share of the shorter title's terms two reports must have in common
    story_min_shared: int = 2  # and at least this many title terms
    story_bonus: float = 0.1  # added to that share when the titles have 3 or more terms in common
    story_jaccard: float = 0.1  # and at least this Jaccard of their title + lead terms
    window_hours: int = 72  # only items published this close together can share a story
    article_window_days: int = 30  # near-duplicate candidates are looked for this far back


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What store/ indexes for an item: one exact-text key and two sets of LSH band keys."""

    text_key: int | None  # exact normalized text (None: too short to be evidence)
    near_keys: tuple[int, ...]  # bands of the MinHash over word shingles of the text
    story_keys: tuple[int, ...]  # bands of the MinHash over title terms
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
    words = tokens(title) + tokens(text)[:lead_words]
    return _terms(words)


def title_terms(title: str) -> frozenset[str]:
    """The words of a title that can say which event it reports: no function words, dates or years."""
    return _terms(tokens(title))


def _terms(words: Iterable[str]) -> frozenset[str]:
    """The stems of the meaningful ``words``."""
    return frozenset(filter(None, map(_term, words)))


@lru_cache(maxsize=1 << 14)
def _term(word: str) -> str | None:
    """``word``'s stem, or None for a function word or year (cached: news text repeats its words)."""
    return _stem(word) if _meaningful(word) else None


def _meaningful(word: str) -> bool:
    if word in STOPWORDS or _YEAR.fullmatch(word):
        return False
    return len(word) > 1 or word.isdigit()


def _stem(word: str) -> str:
    """A crude prefix stem for alphabetic words (evacuated/evacuation, vaccine/vaccinated)."""
    return word[:6] if word.isalpha() and not _CJK.search(word) else word


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def overlap(a: Iterable[str], b: Iterable[str]) -> float:
    """Shared terms over the size of the smaller set."""
    sa, sb = set(a), set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / min(len(sa), len(sb))


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
    if len(words) < params.min_near_tokens:
        return None
    return shingles(words, params.shingle)


@dataclass(frozen=True, slots=True)
class Terms:
    """The compact story signature an item is verified by (stored once, never recomputed)."""

    title: frozenset[str]  # title_terms
    lead: frozenset[str]  # story_terms: title terms and the stemmed lead words

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
    shingles: set[str] | None  # near-duplicate shingles (None: text too short)


def analyze(title: str, text: str, params: StoryParams) -> Analysis:
    title_words, words = tokens(title), tokens(text)
    near = _near_shingles(words, params)
    heading = _terms(title_words)
    lead = heading | _terms(words[: params.lead_words])
    fp = Fingerprint(
        text_key=_text_key(title_words, words, params),
        near_keys=band_keys("near", near, params.near_bands, params.near_rows) if near else (),
        story_keys=band_keys("story", heading, params.story_bands, params.story_rows) if heading else (),
        title_key=_title_key(title_words, heading, params),
    )
    return Analysis(fp, Terms(heading, lead), near)


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


def band_keys(kind: str, features: Iterable[str], bands: int, rows: int) -> tuple[int, ...]:
    """LSH: the MinHash signature cut into ``bands`` bands of ``rows`` values, each hashed to a key."""
    signature = _minhash(features, bands * rows).astype(">u4").tobytes()
    width = 4 * rows
    return tuple(
        _key(f"{kind}:{band}", signature[band * width : (band + 1) * width]) for band in range(bands)
    )


def minhash(features: Iterable[str], num_perm: int) -> list[int]:
    """datasketch's MinHash (affine32 scheme, fixed seed) as a list of 32-bit values."""
    return [int(v) for v in _minhash(features, num_perm)]


def _minhash(features: Iterable[str], num_perm: int) -> NDArray[np.uint32]:
    """The same values as datasketch's ``MinHash(scheme="affine32").update_batch`` (SHA-1 32-bit input
    hash, MurmurHash3 finalizer, ``a * h + b`` mod 2^32), without building a MinHash object."""
    sha1 = hashlib.sha1
    digests = b"".join([sha1(f.encode()).digest() for f in features])
    if not digests:
        return np.full(num_perm, 0xFFFFFFFF, dtype=np.uint32)
    # each 20-byte digest starts with its 32-bit little-endian input hash: every fifth uint32 of the lot
    hv = _fmix32(np.frombuffer(digests, dtype="<u4")[::5].astype(np.uint32)).reshape(-1, 1)
    a, b = _permutations(num_perm)
    result: NDArray[np.uint32] = (hv * a + b).min(axis=0)
    return result


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
    return a, b


def _key(kind: str, payload: bytes) -> int:
    digest = hashlib.blake2b(payload, digest_size=8, person=kind.encode()[:16]).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: fits a signed BIGINT everywhere


def story_similarity(title_a: str, text_a: str, title_b: str, text_b: str, params: StoryParams) -> float:
    """``terms_similarity`` of two items given as title and text."""
    a = Terms(title_terms(title_a), story_terms(title_a, text_a, params.lead_words))
    b = Terms(title_terms(title_b), story_terms(title_b, text_b, params.lead_words))
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
