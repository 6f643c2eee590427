"""Offline exploration of rule 3 (one story per event across outlets) on the real corpus.

Ingests ../shared/corpus/real once through the real pipeline (bench/dedup_quality.py ``ingest``), loads every
item with its stored story terms, then replays rule 3 in Python with the greedy storage-order assignment and
the one-item-per-source rule of ``store.relink_stories``, for several decision functions, and scores each
with ``dedup_quality.score``. Research only: nothing here is used by the aggregator.

    .venv/bin/python bench/story_explore.py            # the table of variants
    .venv/bin/python bench/story_explore.py --missed   # per labelled event, the items left apart and why
    .venv/bin/python bench/story_explore.py --merges   # the new merges with unlabelled items, per variant
    .venv/bin/python bench/story_explore.py --only "norm full"   # the variants whose name holds this
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import html
import itertools
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup_quality import REAL, Ingest, _allowed_pairs, ingest, locate, score, tsv

from aggregator import store
from aggregator.store.tables import FingerprintRow, ItemRow, MergeRow, SourceRow, TermsRow
from aggregator.stories import _CJK as CJK
from aggregator.stories import _YEAR as YEAR
from aggregator.stories import (
    STOPWORDS,
    StoryParams,
    Terms,
    jaccard,
    terms_similarity,
    tokens,
)


@dataclass(frozen=True)
class Doc:
    """One stored item as the replay sees it."""

    id: int
    source: str
    published: datetime  # naive UTC, as stored
    title: str
    text: str
    terms: Terms  # as stored (title terms; title + lead terms)
    keys: frozenset[int]  # its stored story keys (LSH bands of title terms, or term pairs since 0008)
    article_of: int | None  # the earlier item whose article it joined (rule 2), if any


def load(db: Path) -> list[Doc]:
    """Every stored item in storage order, with its stored story terms, band keys and article merge."""
    engine = store.make_engine(f"sqlite:///{db}")
    with store.make_sessionmaker(engine).begin() as s:
        terms = {i: t for i, t in s.execute(select(TermsRow.item_id, TermsRow.terms))}
        keys: dict[int, set[int]] = defaultdict(set)
        query = select(FingerprintRow.item_id, FingerprintRow.key).where(FingerprintRow.kind == "story")
        for item_id, key in s.execute(query):
            keys[item_id].add(key)
        query = select(MergeRow.item_id, MergeRow.other_id).where(MergeRow.level == "article")
        article_of = {i: other for i, other in s.execute(query)}
        rows = s.execute(
            select(ItemRow.id, SourceRow.name, ItemRow.published, ItemRow.title, ItemRow.text)
            .join(SourceRow, SourceRow.id == ItemRow.source_id)
            .order_by(ItemRow.id)
        ).all()
    engine.dispose()
    return [
        Doc(i, name, when.replace(tzinfo=None), title, text, Terms.decode(terms.get(i, "")),
            frozenset(keys[i]), article_of.get(i))
        for i, name, when, title, text in rows
    ]  # fmt: skip


@dataclass
class State:
    """What a rule sees when it decides an item: the earlier items and their stories so far."""

    docs: dict[int, Doc]
    story_of: dict[int, int] = dataclasses.field(default_factory=dict)
    members: dict[int, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    by_term: dict[str, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # title
    by_key: dict[int, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    def add(self, doc: Doc, story: int) -> None:
        self.story_of[doc.id] = story
        self.members[story].append(doc.id)
        for term in doc.terms.title:
            self.by_term[term].append(doc.id)
        for key in doc.keys:
            self.by_key[key].append(doc.id)

    def df(self, term: str, when: datetime, window: timedelta) -> int:
        """Earlier items (any source) within ``window`` of ``when`` whose title holds ``term``: what a
        (term, published) index would count for the new item."""
        return sum(1 for i in self.by_term.get(term, ()) if abs(self.docs[i].published - when) <= window)

    def items_within(self, when: datetime, window: timedelta) -> int:
        """Earlier items within ``window`` of ``when``: the N of the inverse document frequency."""
        return sum(
            1 for d in self.docs.values() if d.id in self.story_of and abs(d.published - when) <= window
        )


# A rule: the new item, its candidates (earlier items of other sources in the window) and the state;
# returns the candidates that pass as (similarity, id), best first.
Rule = Callable[[Doc, list[Doc], State], list[tuple[float, int]]]


def candidates(doc: Doc, state: State, how: str, window: timedelta) -> list[Doc]:
    """Earlier items of other sources within ``window`` that the store's lookup would return: sharing a
    stored story key (``stored``: MinHash bands of the title terms before migration 0008, pairs of title
    terms since), a pair of title terms among the SKETCH of lowest hash (``pair``: the keys of 0008,
    recomputed from the terms in use, so normalized terms get their own keys), or any title term (``term``:
    an inverted index of title terms)."""
    ids: set[int] = set()
    if how == "stored":
        for key in doc.keys:
            ids.update(state.by_key.get(key, ()))
    else:
        for term in doc.terms.title:
            ids.update(state.by_term.get(term, ()))
    found = (state.docs[i] for i in sorted(ids))
    near = [d for d in found if d.source != doc.source and abs(d.published - doc.published) <= window]
    if how == "pair":
        mine = sketch(doc.terms.title)
        near = [d for d in near if len(mine & sketch(d.terms.title)) >= 2]
    return near


SKETCH = StoryParams().story_sketch  # title terms of lowest hash whose pairs are keys (migration 0008)


@functools.lru_cache(maxsize=1 << 14)
def sketch(terms: frozenset[str]) -> frozenset[str]:
    """The SKETCH terms of lowest hash (stories.pair_keys picks them the same way)."""
    rank = sorted(terms, key=lambda t: hashlib.blake2b(t.encode(), digest_size=8).digest())
    return frozenset(rank[:SKETCH])


def replay(docs: Sequence[Doc], rule: Rule, how: str = "stored", window_hours: int = 72) -> State:
    """Rule 3 over every item in storage order, as ``store.relink_stories`` does: an item whose article
    joined an earlier item's takes that item's story; else the best passing candidate whose story holds no
    item of its source; else a story of its own."""
    state = State({d.id: d for d in docs})
    window = timedelta(hours=window_hours)
    for doc in docs:
        story = state.story_of.get(doc.article_of) if doc.article_of is not None else None
        if story is None:
            story = doc.id
            for _sim, other in rule(doc, candidates(doc, state, how, window), state):
                theirs = state.story_of[other]
                if all(state.docs[m].source != doc.source for m in state.members[theirs]):
                    story = theirs
                    break
        state.add(doc, story)
    return state


def best_first(scored: Iterable[tuple[float, int]]) -> list[tuple[float, int]]:
    """Most similar first, then the earliest (as ``store.stories._scored`` orders them)."""
    return sorted(scored, key=lambda pair: (-pair[0], pair[1]))


def with_stories(base: Ingest, story_of: dict[int, int]) -> Ingest:
    """``base`` with its story ids replaced (for ``dedup_quality.score``)."""
    items = {
        name: [(i, link, title, art, story_of.get(i, story)) for i, link, title, art, story in rows]
        for name, rows in base.items.items()
    }
    return Ingest(items, base.repolls, 0.0)


def current(params: StoryParams) -> Rule:
    """Today's rule (stories.terms_similarity against each candidate)."""

    def rule(doc: Doc, cands: list[Doc], state: State) -> list[tuple[float, int]]:
        scored = [(terms_similarity(doc.terms, c.terms, params), c.id) for c in cands]
        return best_first((s, i) for s, i in scored if s >= params.story_threshold and s > 0.0)

    return rule


@dataclass(frozen=True)
class Knobs:
    """A variant of the pairwise test and of the choice among passing candidates."""

    threshold: float = 0.5  # share of the shorter title's terms (weight) in common
    min_shared: int = 2  # title terms in common, at least
    bonus: float = 0.1  # added to the share when 3 or more terms are shared
    lead: float = 0.1  # Jaccard of title + lead terms, at least
    idf: bool = False  # weigh terms by log((N + 1) / (df + 1)) over the earlier items in the window
    rescue: float = 0.0  # else pass when the lead Jaccard reaches this and 2+ terms are shared (0: off)
    # which passing candidate's story to join: best (the most similar; today), big (the story with the
    # most members), votes (the story with the most passing candidates)
    choose: str = "best"
    union: bool = False  # compare with the union of a candidate story's title terms (share of the new one)


def weights(doc: Doc, terms: Iterable[str], state: State, on: bool, window: timedelta) -> dict[str, float]:
    """Per-term weights: 1 each, or an inverse document frequency over the earlier items in the window."""
    if not on:
        return dict.fromkeys(terms, 1.0)
    n = state.items_within(doc.published, window)
    return {t: math.log((n + 1) / (state.df(t, doc.published, window) + 1)) for t in terms}


def knob_rule(k: Knobs, window_hours: int = 72) -> Rule:
    """The rule ``k`` describes: today's share + lead test by default (the same decisions as ``current``)."""
    window = timedelta(hours=window_hours)

    def share(w: dict[str, float], a: frozenset[str], b: frozenset[str]) -> float:
        shared = a & b
        if len(shared) < min(k.min_shared, len(a), len(b)):
            return 0.0
        total = min(sum(w[t] for t in a), sum(w[t] for t in b))
        value = sum(w[t] for t in shared) / total if total > 0 else 0.0
        return min(1.0, value + (k.bonus if len(shared) >= 3 else 0.0))

    def rule(doc: Doc, cands: list[Doc], state: State) -> list[tuple[float, int]]:
        others: dict[int, frozenset[str]] = {}  # union: the title terms of each candidate story
        if k.union:
            by_story: dict[int, set[str]] = defaultdict(set)
            for c in cands:
                by_story[state.story_of[c.id]] |= c.terms.title
            others = {story: frozenset(t) for story, t in by_story.items()}
        vocab = set(doc.terms.title).union(*(c.terms.title for c in cands))
        w = weights(doc, vocab, state, k.idf, window)
        scored = []
        for c in cands:
            theirs = others[state.story_of[c.id]] if k.union else c.terms.title
            sim = share(w, doc.terms.title, theirs)
            lead = jaccard(doc.terms.lead, c.terms.lead)
            passes = sim >= k.threshold and lead >= k.lead
            if not passes and k.rescue and lead >= k.rescue and len(doc.terms.title & c.terms.title) >= 2:
                passes, sim = True, min(sim, k.threshold)
            if passes and sim > 0.0:
                scored.append((sim, c.id))
        ranked = best_first(scored)
        if k.choose == "big":  # the story with the most members
            size = {i: len(state.members[state.story_of[i]]) for _, i in ranked}
            ranked.sort(key=lambda pair: -size[pair[1]])  # stable: most similar first within a size
        elif k.choose == "votes":  # the story with the most passing candidates
            votes = Counter(state.story_of[i] for _, i in ranked)
            ranked.sort(key=lambda pair: -votes[state.story_of[pair[1]]])
        return ranked

    return rule


# --- term variants: the stored terms, or terms normalized further ------------------------------------------

_NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty hundred thousand"
_DIGITS = ["2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "20", "100", "1000"]
NUMBER_WORDS = dict(zip(_NUMBERS.split(), _DIGITS, strict=True))
_GLUED = re.compile(r"(?<=[^\W\d_])[-\u2010\u2011](?=\d)")  # the hyphen of COVID-19, G-7
_GLUED_NUMBER = re.compile(r"(?<=[^\W\d_])[-\u2010\u2011]\d+\b")  # the -19 of COVID-19
_DOTTED = re.compile(r"\b(?:[A-Za-z]\.){2,}")  # U.S., U.K.: two one-letter words, both dropped as terms
# Tagalog function words (gmanews): "ng", "sa" and "nang" made two different killings share three terms
TAGALOG = frozenset(("ang", "ng", "nang", "sa", "mga", "na", "at", "si", "ni", "kay", "ay", "para", "pa",
                     "ito", "niya", "siya"))  # fmt: skip


@dataclass(frozen=True)
class Norm:
    """Normalizations of title and lead words beyond today's stories._term (all off: the same terms)."""

    plural: bool = False  # a final s goes before the 6-letter prefix: emmys/emmy, bans/ban, awards/award
    numbers: bool = False  # number words as digits: six/6, five/5
    # a number glued to a word by a hyphen: keep (covid, 19), join (covid19) or drop (covid)
    glued: str = "keep"
    dotted: bool = False  # U.S. -> US
    stop: frozenset[str] = frozenset()  # more function words

    def terms(self, title: str, text: str, lead_words: int = 40) -> Terms:
        title, text = self._text(title), self._text(text)
        heading = self._terms(tokens(title))
        return Terms(heading, heading | self._terms(tokens(text)[:lead_words]))

    def _text(self, value: str) -> str:
        if self.glued == "join":
            value = _GLUED.sub("", value)
        elif self.glued == "drop":
            value = _GLUED_NUMBER.sub("", value)
        if self.dotted:
            value = _DOTTED.sub(lambda m: m.group().replace(".", ""), value)
        return value

    def _terms(self, words: list[str]) -> frozenset[str]:
        return frozenset(t for t in map(self._term, words) if t)

    def _term(self, word: str) -> str | None:
        """stories._term with the extra steps."""
        if self.numbers:
            word = NUMBER_WORDS.get(word, word)
        if word in STOPWORDS or word in self.stop or YEAR.fullmatch(word):
            return None
        if len(word) < 2 and not word.isdigit():
            return None
        if self.plural and word.isalpha() and len(word) > 3 and word.endswith("s"):
            word = word if word.endswith(("ss", "us", "is")) else word[:-1]
        return word[:6] if word.isalpha() and not CJK.search(word) else word


def renormalized(docs: Sequence[Doc], norm: Norm) -> list[Doc]:
    """``docs`` with their terms made from title and text by ``norm`` (the stored keys are kept)."""
    return [dataclasses.replace(d, terms=norm.terms(d.title, d.text)) for d in docs]


def labelled(base: Ingest, posts: bool = False) -> dict[int, str]:
    """Item id -> event cluster of CLUSTERS.tsv (C rows); with ``posts``, also the L rows (one site's feeds
    in several formats) as one event per title (the formats link a post differently)."""
    result = {}
    for r in tsv("CLUSTERS.tsv"):
        found = locate(base, r["file"], r["item_link"], r["item_title"])
        if found is not None and r["cluster"].startswith("C"):
            result[found[0]] = r["cluster"]
        elif found is not None and posts and r["cluster"].startswith("L"):
            result[found[0]] = f"{r['cluster']} {html.unescape(r['item_title'])}"
    return result


def pairs_of(state: State) -> set[tuple[int, int]]:
    """Every pair of items that share a story."""
    return {pair for members in state.members.values() for pair in itertools.combinations(sorted(members), 2)}


def new_unlabelled(state: State, before: State, labels: dict[int, str]) -> list[str]:
    """The stories of ``state`` that hold a pair ``before`` did not, with an unlabelled item in it: the
    merges a person has to judge. Members are marked + when they take part in such a pair."""
    fresh = {p for p in pairs_of(state) - pairs_of(before) if p[0] not in labels or p[1] not in labels}
    touched = {i for p in fresh for i in p}
    lines = []
    for story, members in sorted(state.members.items()):
        if len(members) > 1 and touched.intersection(members):
            lines.append(f"story {story}:")
            for i in members:
                d = state.docs[i]
                mark = "+" if i in touched else " "
                lines.append(f"  {mark} {i:5} {d.source:20.20} {labels.get(i, '?'):14.14} {d.title[:90]!r}")
    return lines


@dataclass(frozen=True)
class Variant:
    """One row of the table: a rule, the terms it sees and how its candidates are found."""

    name: str
    rule: Knobs | None  # None: today's rule (stories.terms_similarity)
    norm: Norm = Norm()
    how: str = "pair"  # candidate lookup (``candidates``)
    window_hours: int = 72


# the normalization recommended: plural s, number words, the number of "COVID-19" dropped, Tagalog function
# words (U.S. -> US changes nothing on this corpus)
NORM = Norm(plural=True, numbers=True, glued="drop", stop=TAGALOG)
# headline formula words ("what you need to know"): the BBC explainer of the Canada election shared only
# "canada" and "election" of its five title terms with the other reports
HEADLINE = frozenset(("know", "need", "here", "heres", "thing", "things"))
RECOMMENDED = Knobs(threshold=0.45, choose="big")
VARIANTS = [
    Variant("today's rule, stored story keys", None, how="stored"),
    Variant("today's rule, pair-key candidates (0008)", None),
    Variant("today's rule, any shared title term", None, how="term"),
    Variant("share >= 0.45", Knobs(threshold=0.45)),
    Variant("share >= 0.40", Knobs(threshold=0.4)),
    Variant("lead Jaccard >= 0.07", Knobs(lead=0.07)),
    Variant("lead Jaccard >= 0.05", Knobs(lead=0.05)),
    Variant("lead rescue: 2 terms + lead >= 0.2", Knobs(rescue=0.2)),
    Variant("idf-weighted share >= 0.5", Knobs(idf=True)),
    Variant("idf-weighted share >= 0.4", Knobs(threshold=0.4, idf=True)),
    Variant("idf-weighted share >= 0.3", Knobs(threshold=0.3, idf=True)),
    Variant("union of the story's title terms", Knobs(union=True)),
    Variant("norm: plural s", None, Norm(plural=True)),
    Variant("norm: number words", None, Norm(numbers=True)),
    Variant("norm: covid-19 -> covid", None, Norm(glued="drop")),
    Variant("norm: covid-19 -> covid19, U.S. -> US", None, Norm(glued="join", dotted=True)),
    Variant("norm: Tagalog function words", None, Norm(stop=TAGALOG)),
    Variant("norm (all four)", None, NORM),
    Variant("choose: most passing members", Knobs(choose="votes")),
    Variant("choose: biggest story", Knobs(choose="big")),
    Variant("norm + biggest", Knobs(choose="big"), NORM),
    Variant("biggest + share >= 0.45 (stored terms)", RECOMMENDED),
    Variant("norm + biggest + share >= 0.45", RECOMMENDED, NORM),
    Variant("  same, stored story keys", RECOMMENDED, NORM, how="stored"),
    Variant("  same, window 24 h", RECOMMENDED, NORM, window_hours=24),
    Variant("  same, covid-19 kept as covid, 19", RECOMMENDED, dataclasses.replace(NORM, glued="keep")),
    Variant("  same, no number words", RECOMMENDED, dataclasses.replace(NORM, numbers=False)),
    Variant("  same, no Tagalog function words", RECOMMENDED, dataclasses.replace(NORM, stop=frozenset())),
    Variant("  same, lead Jaccard >= 0.07", dataclasses.replace(RECOMMENDED, lead=0.07), NORM),
    Variant("  same, share >= 0.40", dataclasses.replace(RECOMMENDED, threshold=0.4), NORM),
    Variant("  same, idf share >= 0.35", dataclasses.replace(RECOMMENDED, threshold=0.35, idf=True), NORM),
    Variant("  same, votes instead of biggest", dataclasses.replace(RECOMMENDED, choose="votes"), NORM),
    Variant(
        "  same, headline words as stopwords", RECOMMENDED, dataclasses.replace(NORM, stop=TAGALOG | HEADLINE)
    ),
]

# My reading of the unlabelled items that some variant merges (title prefix -> event; CLUSTERS.tsv ids
# where the item reports a labelled event). Two items of one event may share a story; two of different
# events may not. Items not listed here show up as "unread" in the table.
EVENTS: dict[str, str] = {
    "克里：必须与阿萨德谈判": "syria-kerry-assad-talks",
    "美国改变态度寻求与阿萨德谈判": "syria-kerry-assad-talks",
    "英媒：英国申请加入亚投行": "aiib-members",  # the UK applies; Australia decides soon: one development
    "澳总理：尽快决定是否加入": "aiib-members",
    "军机轰炸事件：中国军方与缅司令": "myanmar-jet-bombs-china",
    "中国总理李克强谴责缅甸战机轰炸事件": "myanmar-jet-bombs-china",
    "China pumps $14bn in cash into market amid Evergrande": "evergrande-markets",
    "Evergrande's debt crisis is wreaking havoc": "evergrande-markets",
    "Global stock markets plunge as Chinese real estate giant Evergrande": "evergrande-markets",
    "Global stocks sink on Evergrande contagion": "evergrande-markets",
    "Contagion worries as Chinese property developer Sinic": "sinic-shares-crash",  # another company
    "Submarine pact delivers France some hard truths": "aukus-france-row",
    "France threatens to block EU-Australia trade talks": "aukus-france-row",
    "'We felt fooled': Recalled French ambassador": "aukus-france-row",
    "Veteran Labor senator demands Senate inquiry into AUKUS": "aukus-senate-inquiry",
    "Travel update: What are the new rules for holidays": "england-travel-rules-explainer",
    "Covid-19 in the UK: How many coronavirus cases": "uk-covid-case-tracker",
    "Is this the first sign of the back to school wave?": "uk-covid-cases-rise",
    "Covid-19: 22 new community cases": "nz-covid-cases-sep-20",
    "Dalagita, patay sa pamamaril": "ph-girl-shot",
    "Lalaking naglalakad sa gilid ng kalsada": "ph-man-run-over",
    "Duktora, patay matapos pagbabarilin": "ph-doctor-shot",
    "Covid-19: UK to US travel to restart and Chelsea": "C02-us-lifts-travel-ban",  # the papers' lead story
    "PM welcomes US decision to ease travel rules": "C02-us-lifts-travel-ban",
    "U.S. to Lift Travel Ban": "C02-us-lifts-travel-ban",
    "Rich nations must increase climate support funds, says Boris": "johnson-un-climate",
    "Boris Johnson slams major countries for lack of climate": "johnson-un-climate",
    "What if my energy supplier goes bust?": "uk-energy-suppliers-fail",
    "Is your energy firm about to go bust": "uk-energy-suppliers-fail",
    "Gas crisis 'could cause three-day-week'": "uk-gas-crisis",
    "Texas Gov. Abbott asks Biden for federal emergency": "texas-border-emergency",
    "Florist finalise their colourful displays at the Chelsea": "chelsea-flower-show",
    "Ted Lasso: Who are the stars?": "ted-lasso-explainer",  # not the awards
    "Live: 'On a knife edge' - Auckland moves to level 3": "auckland-level-3",
    "Experts say Auckland moving to alert level 3": "auckland-level-3",
    "Live Covid-19 updates: Auckland heads to level": "auckland-level-3",
    "Parents May Hesitate to Vaccinate Younger Children": "C07-pfizer-vaccine-kids",  # follow-up, borderline
    "Designing the Worst Volume Sliders Possible": "daringfireball-volume-sliders",  # one post, two feeds
    "Football agent Aidy Ward broke rules": "aidy-ward-fa-rules",
    "Raheem Sterling's former agent Aidy Ward": "aidy-ward-fa-rules",
    "Russia shooting: Gunman kills several at Perm": "C05-perm-university-shooting",
    "Northern Line extension: Two new Tube stations": "northern-line-extension",
    "First new London Tube line in 22 years": "northern-line-extension",
    "Killamarsh deaths: Family's tribute": "killamarsh-deaths",
    "Devastated father of two children found dead": "killamarsh-deaths",
    "Early baby therapy could reduce autism": "autism-baby-therapy-study",
    "Early signs of autism can be reversed": "autism-baby-therapy-study",
    "RHS Chelsea Flower Show returns": "chelsea-flower-show",
    "Sophie Wessex joins Gemma Collins": "chelsea-flower-show",
    "Why Serbia has soft spot for late Only Fools actor": "john-challis-dies",
    "Sir David Jason says his Only Fools and Horses co-star": "john-challis-dies",
    "US rapper Ice T pays tribute to his late 'internet friend'": "john-challis-dies",
    "UK could face food shortages within weeks": "uk-co2-shortage",
    "Carol Kirkwood: BBC Weather presenter pulled": "carol-kirkwood-dog",
    "BBC Breakfast's Carol Kirkwood is dragged": "carol-kirkwood-dog",
    "Why is there a CO2 shortage": "uk-co2-shortage",
    "Iceland boss warns C02 shortage": "uk-co2-shortage",
    "Beckham's son Romeo makes pro debut": "romeo-beckham-debut",
    "David Beckham's son Romeo makes professional": "romeo-beckham-debut",
    "See the harvest moon shine": "harvest-moon",
    "Harvest Moon will peak this evening": "harvest-moon",
    "'Multiple injuries' reported in shooting at Virginia high school": "virginia-school-shooting",
    "Two injured in shooting at US high school": "virginia-school-shooting",
    "A court in Slovakia says a suspect charged": "fico-shooting-suspect",
    "The Slovak prime minister is stable": "fico-shooting-suspect",
    "An ultimatum raises pressure on Netanyahu": "gantz-ultimatum",
    "United Russia party claims victory": "C12-russia-duma-election",
    # today's rule already merges these (two feeds of one site, or one feed carrying a post twice)
    "Manuscripts and Findings": "df-sponsor-manuscripts",
    "[Sponsor] Manuscripts and Findings": "df-sponsor-manuscripts",
    "Mnml – A Mac Client for Medium": "df-sponsor-mnml",
    "[Sponsor] MNML: A macOS Writing App": "df-sponsor-mnml",
    "Scam callers targeting parasite outbreak victims": "scam-parasite-outbreak",
    "Police injured and 19 arrested in Celtic celebrations": "celtic-celebrations",
    "'All-round mastermind Usyk reaches boxing's summit'": "usyk-title",
    "Why is the DOJ investigating Andreessen Horowitz": "doj-a16z",
    "The DOJ is investigating a16z": "doj-a16z",
    "Starcloud raises $250 million": "starcloud-raise",
    "Aid from new pier off Gaza": "gaza-pier-aid",
}


def event_of(doc: Doc, labels: dict[int, str]) -> str | None:
    """My reading first (it also names a few posts the L clusters hold), then the labels."""
    for prefix, event in EVENTS.items():
        if doc.title.startswith(prefix):
            return event
    return labels.get(doc.id)


@dataclass
class Row:
    """A variant's figures on the corpus."""

    variant: Variant
    score: Any  # dedup_quality.Score
    fresh: int  # pairs with an unlabelled item that today's rule does not make
    wrong: tuple[int, int]  # pairs of two events by EVENTS: among the new ones, among all
    unread: tuple[int, int]  # pairs with an item EVENTS does not list: among the new ones, among all
    seconds: float
    state: State


def evaluate(
    variant: Variant,
    docs: Sequence[Doc],
    base: Ingest,
    before: State,
    labels: dict[int, str],
    posts: dict[int, str],
) -> Row:
    """Replay ``variant`` over ``docs``, score it and count its merges with unlabelled items against
    ``before`` (today's rule) and EVENTS."""
    clock = time.process_time()
    if variant.norm != Norm():
        docs = renormalized(docs, variant.norm)
    rule = current(StoryParams()) if variant.rule is None else knob_rule(variant.rule, variant.window_hours)
    state = replay(docs, rule, variant.how, variant.window_hours)
    seconds = time.process_time() - clock
    result = score(with_stories(base, state.story_of))[0]
    merged = [p for p in pairs_of(state) if p[0] not in labels or p[1] not in labels]
    fresh = set(merged) - pairs_of(before)

    def count(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
        events = [(event_of(state.docs[a], posts), event_of(state.docs[b], posts)) for a, b in pairs]
        return sum(1 for x, y in events if x and y and x != y), sum(1 for x, y in events if not (x and y))

    (wrong_new, unread_new), (wrong_all, unread_all) = count(fresh), count(merged)
    return Row(variant, result, len(fresh), (wrong_new, wrong_all), (unread_new, unread_all), seconds, state)


def table(rows: list[Row]) -> list[str]:
    """One line per variant; cpu s: the replay alone (not the scoring)."""
    lines = [
        f"{'variant':44} | {'prec':>5} {'recall':>6} {'of_ok':>5} | {'true':>4} {'false':>5} | "
        f"{'unlab':>5} {'new':>4} {'wrong':>7} {'unread':>7} | {'cpu s':>5}"
    ]
    for r in rows:
        s = r.score
        lines.append(
            f"{r.variant.name:44.44} | {s.precision:>5.3f} {s.recall:>6.3f} {s.of_allowed:>5.3f} | "
            f"{s.true_pairs:>4} {s.false_merges:>5} | {s.unjudged:>5} {r.fresh:>4} "
            f"{r.wrong[0]:>3}/{r.wrong[1]:<3} {r.unread[0]:>3}/{r.unread[1]:<3} | "
            f"{r.seconds:>5.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--missed", action="store_true", help="per labelled event, the items left apart and why"
    )
    parser.add_argument("--merges", action="store_true", help="list the new merges with unlabelled items")
    parser.add_argument("--only", help="only the variants whose name contains this")
    parser.add_argument("--orders", type=int, default=0, help="also replay N shuffled poll orders")
    args = parser.parse_args(argv)
    if not REAL.is_dir():
        print(f"corpus not found at {REAL}", file=sys.stderr)
        return 2
    params = StoryParams()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "explore.db"
        base = ingest(params, db)
        docs = load(db)
    labels = labelled(base)
    before = replay(docs, current(params), "stored", params.window_hours)
    stored, replayed = score(base)[0], score(with_stories(base, before.story_of))[0]
    check = "reproduces them" if replayed == stored else f"DIFFERS: {replayed}"
    print(
        f"{len(docs)} items; stored stories: {stored.true_pairs} true, {stored.false_merges} false, of_ok "
        f"{stored.of_allowed:.3f}; the replay of today's rule {check}"
    )
    variants = [v for v in VARIANTS if not args.only or args.only in v.name]
    posts = labelled(base, posts=True)
    rows = [evaluate(v, docs, base, before, labels, posts) for v in variants]
    print("\n".join(table(rows)))
    print(
        "of_ok: true pairs / the pairs a one-item-per-source story can hold; unlab: merged pairs with an "
        "unlabelled item; new: those today's rule does not make; wrong: pairs of two different events by my "
        "reading (EVENTS), among the new ones / among all; unread: pairs with an item I have not read, same"
    )
    if args.orders:
        print("\n".join(order_lines(docs, base, labels, posts, rows, args.orders)))
    if args.missed:
        for r in rows:
            print(f"\nlabelled events under {r.variant.name!r}:")
            print("\n".join(cluster_lines(r.state, labels, r.variant.rule or Knobs(), r.variant.how)))
    if args.merges:
        for r in rows:
            lines = new_unlabelled(r.state, before, labels)
            if lines:
                print(f"\nnew merges with unlabelled items of {r.variant.name!r}:")
                print("\n".join(lines))
    return 0


def order_lines(
    docs: Sequence[Doc], base: Ingest, labels: dict[int, str], posts: dict[int, str], rows: list[Row], n: int
) -> list[str]:
    """The variants again with the polls stored in ``n`` random orders (each poll's items keep theirs): a
    greedy assignment depends on the order, the capture order of the corpus is one of many."""
    polls = [list(run) for _, run in itertools.groupby(docs, key=lambda d: d.source)]
    found: dict[str, list[Row]] = defaultdict(list)
    for seed in range(n):
        order = polls[:]
        random.Random(seed).shuffle(order)
        shuffled = [d for run in order for d in run]
        before = replay(shuffled, current(StoryParams()), "stored")
        for r in rows:
            found[r.variant.name].append(evaluate(r.variant, shuffled, base, before, labels, posts))
    lines = [f"\n{n} shuffled poll orders: true pairs (false, wrong, unread) per order, and the mean of_ok"]
    for name, runs in found.items():
        each = " ".join(
            f"{r.score.true_pairs}({r.score.false_merges},{r.wrong[1]},{r.unread[1]})" for r in runs
        )
        mean = sum(r.score.of_allowed for r in runs) / len(runs)
        lines.append(f"{name:44.44} | {mean:.3f} | {each}")
    return lines


def cluster_lines(state: State, labels: dict[int, str], knobs: Knobs, how: str) -> list[str]:
    """Per labelled event: the pairs one-item-per-source stories can hold and the pairs held; for an event
    held short, every item outside its biggest story with the reason it is not in it."""
    lines = []
    events: dict[str, list[int]] = defaultdict(list)
    for item_id, event in labels.items():
        events[event].append(item_id)
    for event, ids in sorted(events.items()):
        allowed = _allowed_pairs(dict.fromkeys(ids, event), {i: state.docs[i].source for i in ids})
        held = sum(1 for a, b in itertools.combinations(ids, 2) if state.story_of[a] == state.story_of[b])
        lines.append(f"{event}: {held} of {allowed} pairs")
        if held == allowed:
            continue
        main = Counter(state.story_of[i] for i in ids).most_common(1)[0][0]
        members = [state.docs[i] for i in state.members[main]]
        for i in sorted(ids, key=lambda i: (state.story_of[i] != main, state.story_of[i], i)):
            doc = state.docs[i]
            why = "" if state.story_of[i] == main else "  <- " + why_apart(doc, members, knobs, how)
            lines.append(f"  {i:5} story {state.story_of[i]:<5} {doc.source:20.20} {doc.title[:60]!r}{why}")
    return lines


def why_apart(doc: Doc, members: list[Doc], k: Knobs, how: str) -> str:
    """Why ``doc`` is not in the story of ``members``: the test it fails against the member it comes
    closest to passing with (idf is not re-evaluated: the plain share is shown)."""
    if any(m.source == doc.source for m in members):
        return "its source already has an item in that story"
    best = (-1.0, "")
    for m in members:
        a, b = doc.terms.title, m.terms.title
        shared, lead = a & b, jaccard(doc.terms.lead, m.terms.lead)
        share = len(shared) / min(len(a), len(b)) + (k.bonus if len(shared) >= 3 else 0.0) if a and b else 0.0
        if (how == "pair" and len(sketch(a) & sketch(b)) < 2) or (how == "stored" and not doc.keys & m.keys):
            reason = f"not a candidate ({len(shared)} title terms shared: {' '.join(sorted(shared))})"
            closeness = len(shared) / 10
        elif share < k.threshold:
            reason = f"title share {share:.2f} < {k.threshold} ({' '.join(sorted(shared))})"
            closeness = 1 + share
        elif lead < k.lead:
            reason = f"lead Jaccard {lead:.2f} < {k.lead} (title share {share:.2f})"
            closeness = 3 + lead
        else:
            reason = f"passes with {m.id} (share {share:.2f}, lead {lead:.2f}): it joined another story first"
            closeness = 5.0
        best = max(best, (closeness, reason))
    return best[1]


if __name__ == "__main__":
    sys.exit(main())
