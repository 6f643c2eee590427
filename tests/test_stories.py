"""Rules 2 and 3 of deduplication on real corpus items: syndicated copies share an article, rewritten
coverage of one event shares a story, different events stay apart, and ``collapse: story`` publishes one
entry per story with its other outlets. Feeds are polled through the real pipeline from file:// URLs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REAL, postgres_database
from datasketch import MinHash
from lxml import etree
from lxml.html import fromstring as html_text
from numpy.typing import NDArray
from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from aggregator import dedup, publish, store, stories
from aggregator.fetch import fetch, make_session
from aggregator.model import Item, Source, StoredItem, Topic
from aggregator.pipeline import Context, poll_source, topic_definitions
from aggregator.store.engine import migrate
from aggregator.store.tables import FingerprintRow, ItemRow, MergeRow, SourceRow, TermsRow
from aggregator.stories import StoryParams

needs_corpus = pytest.mark.skipif(not REAL.is_dir(), reason=f"shared corpus not found at {REAL}")
CAPTURED = datetime(2021, 9, 20, 18, 46, tzinfo=UTC)  # the S2021 snapshot
NEWS = [
    "bbc-news-1.xml",
    "cnn-1.xml",
    "dailymail-1.xml",
    "smh-1.xml",
    "dailytelegraph-au-1.xml",
    "nzherald-1.xml",
]
AP = ["abcnews-1.xml", "washingtontimes-1.xml", "bbc-news-3.xml"]  # S2024: one AP story in two papers
ALL = Topic("all", "*", collapse="story", limit=1000)


# --- pure fingerprints ---------------------------------------------------------------------------------


def test_tokens_fold_case_and_split_cjk_into_bigrams() -> None:
    assert stories.tokens("Gunman KILLS six, 中国军网") == ["gunman", "kills", "six", "中国", "国军", "军网"]


def test_a_word_holding_cjk_becomes_bigrams_and_the_other_words_stay_whole() -> None:
    assert stories.tokens("Ünïcode wörds mix中国x") == ["ünïcode", "wörds", "mi", "ix", "x中", "中国", "国x"]
    assert stories.tokens("ΣΊΣΥΦΟΣ, Straße") == ["σίσυφοσ", "strasse"]  # casefold, no CJK: fast path


def test_shingles_are_every_run_of_k_consecutive_words() -> None:
    words = ["a", "b", "c", "a", "b", "c", "d"]
    assert stories.shingles(words, 3) == {"a b c", "b c a", "c a b", "b c d"}
    assert stories.shingles(words, 1) == {"a", "b", "c", "d"}
    assert stories.shingles(words[:3], 3) == {"a b c"}
    assert stories.shingles(words[:2], 3) == {"a b"}
    assert stories.shingles([], 3) == set()


def test_title_terms_drop_function_words_dates_and_years() -> None:
    terms = stories.title_terms("Best of cartoons, September 20, 2021")
    assert terms == frozenset({"best", "cartoo", "20"})


def test_fingerprint_is_deterministic_and_bands_have_the_configured_count() -> None:
    params = StoryParams()
    text = " ".join(f"word{i}" for i in range(60))
    a = stories.fingerprint("Lava from the volcano destroys homes on La Palma", text, params)
    assert a == stories.fingerprint("Lava from the volcano destroys homes on La Palma", text, params)
    # lava, volcan, destro, homes, palma ("la" is a function word): every pair of the five terms
    assert len(a.near_keys) == params.near_bands and len(a.story_keys) == 10
    assert all(0 <= k < 2**63 for k in (*a.near_keys, *a.story_keys))
    assert a.text_key is not None


def test_story_keys_are_shared_exactly_when_two_titles_share_two_terms() -> None:
    params = StoryParams()

    def keys(title: str) -> set[int]:
        return set(stories.fingerprint(title, "", params).story_keys)

    lava = keys("Lava destroys homes on Palma island")
    assert len(lava & keys("Volcano on Palma island erupts")) == 1  # (island, palma)
    assert len(lava & keys("Lava reaches the sea at Palma island")) == 3  # (island, lava, palma) pairwise
    assert not lava & keys("Flats for sale in Palma de Mallorca")  # one term in common: no candidate
    assert keys("Volcano") == set()  # one term, no pair


def test_a_long_title_keeps_the_pairs_of_its_sketch_only() -> None:
    params = StoryParams()
    words = [f"term{chr(97 + i)}x" for i in range(16)]
    long = stories.fingerprint(" ".join(words), "", params).story_keys
    assert len(long) == params.story_sketch * (params.story_sketch - 1) // 2
    # a title sharing many of its terms shares keys: the sketch picks the same terms in both
    shorter = stories.fingerprint(" ".join(words[:12]), "", params).story_keys
    assert len(set(long) & set(shorter)) >= 10


def test_short_text_gives_no_near_keys_and_tiny_items_no_text_key() -> None:
    params = StoryParams()
    assert stories.fingerprint("Title", "only a few words here", params).near_keys == ()
    assert stories.text_key("Hi", "", params) is None


def test_near_duplicate_texts_share_bands_and_unrelated_do_not() -> None:
    params = StoryParams()
    words = [f"w{i}" for i in range(80)]
    copy = [*words[:40], "inserted", *words[40:]]
    other = [f"x{i}" for i in range(80)]
    base = set(stories.fingerprint("t", " ".join(words), params).near_keys)
    assert base & set(stories.fingerprint("t", " ".join(copy), params).near_keys)
    assert not base & set(stories.fingerprint("t", " ".join(other), params).near_keys)


def test_story_similarity_groups_rewritten_titles_and_rejects_a_shared_date() -> None:
    params = StoryParams()
    lead = "Princess Beatrice has given birth to a baby girl, Buckingham Palace has announced."
    same = stories.story_similarity(
        "Princess Beatrice gives birth to a girl",
        lead,
        "Princess Beatrice, Queen Elizabeth's granddaughter, gives birth to baby girl",
        lead,
        params,
    )
    assert same >= params.story_threshold
    apart = stories.story_similarity(
        "LIVESTREAM: President Duterte's talk to the nation (September 20, 2021)",
        "The president addresses the nation.",
        "Best of cartoons, September 20, 2021",
        "Our cartoonists on the week.",
        params,
    )
    assert apart == 0.0


@pytest.mark.parametrize("params", [StoryParams(), StoryParams(story_threshold=0.3, story_bonus=0.0)])
def test_similar_titles_agrees_with_title_similarity(params: StoryParams) -> None:
    """similar_titles inlines title_similarity for many candidates: the same ids pass, in order."""
    words = [f"w{i}" for i in range(12)]
    sets = [frozenset(words[i : i + n]) for i in range(0, 12, 2) for n in (1, 2, 3, 5, 8)]
    for mine in sets:
        others = list(enumerate(sets))
        sims = [(i, stories.title_similarity(mine, b, params)) for i, b in others]
        expected = [i for i, sim in sims if sim >= params.story_threshold]
        assert stories.similar_titles(mine, others, params) == expected
        assert expected  # the set itself passes: the comparison is not vacuous
    assert len({len(stories.similar_titles(a, list(enumerate(sets)), params)) for a in sets}) > 1


# --- through the pipeline --------------------------------------------------------------------------------


def ingest(
    sessions: sessionmaker[Session], groups: list[tuple[list[str], datetime]], params: StoryParams
) -> None:
    """Poll each group of files (one source per file) at its capture time, one context for all."""
    http = make_session()
    sources = [Source(Path(f).stem, (REAL / f).as_uri()) for files, _ in groups for f in files]
    ctx = dataclasses.replace(
        Context.build(sources, [ALL], sessions, functools.partial(fetch, http)), stories=params
    )
    with sessions.begin() as s:
        store.sync_sources(s, sources, groups[0][1])
        store.sync_topics(s, topic_definitions([ALL], sources))
    for files, when in groups:
        for f in files:
            assert poll_source(ctx, Path(f).stem, when).ok
    http.close()


@pytest.fixture(scope="module")
def news(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    if not REAL.is_dir():
        pytest.skip(f"shared corpus not found at {REAL}")
    engine = store.make_engine(f"sqlite:///{tmp_path_factory.mktemp('stories') / 'news.db'}")
    store.upgrade(engine)
    sessions = store.make_sessionmaker(engine)
    ingest(sessions, [(NEWS, CAPTURED), (AP, datetime(2024, 5, 19, tzinfo=UTC))], StoryParams())
    yield sessions
    engine.dispose()


def labelled(sessions: sessionmaker[Session]) -> dict[int, str]:
    """Stored item id -> CLUSTERS.tsv cluster, for the C clusters among the ingested files."""
    with (REAL / "CLUSTERS.tsv").open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["cluster"].startswith("C")]
    result = {}
    with sessions() as s:
        for r in rows:
            if r["file"] not in NEWS + AP:
                continue
            query = select(ItemRow.id).join(SourceRow, SourceRow.id == ItemRow.source_id)
            query = query.where(SourceRow.name == Path(r["file"]).stem)
            found = s.scalar(
                query.where((ItemRow.link == r["item_link"]) | (ItemRow.title == r["item_title"]))
            )
            if found is not None:
                result[found] = r["cluster"]
    return result


def story_of(sessions: sessionmaker[Session], ids: list[int]) -> set[int | None]:
    with sessions() as s:
        return set(s.scalars(select(ItemRow.story_id).where(ItemRow.id.in_(ids))))


@needs_corpus
def test_syndicated_ap_copies_are_one_article(news: sessionmaker[Session]) -> None:
    ids = [i for i, c in labelled(news).items() if c == "C50-india-heatwave-ap"]
    assert len(ids) == 2
    with news() as s:
        articles = set(s.scalars(select(ItemRow.article_id).where(ItemRow.id.in_(ids))))
        rules = set(
            s.scalars(select(MergeRow.rule).where(MergeRow.item_id.in_(ids), MergeRow.level == "article"))
        )
    assert len(articles) == 1 and None not in articles
    assert rules & {"text-hash", "same-title", "near-text"}
    assert len(story_of(news, ids)) == 1


@needs_corpus
@pytest.mark.parametrize(
    "cluster", ["C01-beatrice-birth", "C04-anthony-johnson-dies", "C08-bees-kill-penguins"]
)
def test_rewritten_coverage_of_one_event_shares_a_story(news: sessionmaker[Session], cluster: str) -> None:
    ids = [i for i, c in labelled(news).items() if c == cluster]
    assert len(ids) >= 2
    assert len(story_of(news, ids)) == 1


@needs_corpus
def test_different_labelled_events_never_share_a_story(news: sessionmaker[Session]) -> None:
    labels = labelled(news)
    by_story: dict[int | None, set[str]] = defaultdict(set)
    with news() as s:
        for item_id, story in s.execute(
            select(ItemRow.id, ItemRow.story_id).where(ItemRow.id.in_(list(labels)))
        ):
            by_story[story].add(labels[item_id])
    assert len(labels) > 20
    assert all(len(clusters) == 1 for clusters in by_story.values()), by_story


@needs_corpus
def test_a_story_holds_one_article_per_source(news: sessionmaker[Session]) -> None:
    with news() as s:
        counts = s.execute(
            select(ItemRow.story_id, ItemRow.source_id, func.count(func.distinct(ItemRow.article_id)))
            .where(ItemRow.article_id.is_not(None))
            .group_by(ItemRow.story_id, ItemRow.source_id)
        ).all()
        unlinked = s.execute(
            select(ItemRow.story_id, ItemRow.source_id, func.count())
            .where(ItemRow.article_id.is_(None))
            .group_by(ItemRow.story_id, ItemRow.source_id)
        ).all()
    assert counts and all(n == 1 for _, _, n in counts)
    assert all(n == 1 for _, _, n in unlinked)


@needs_corpus
def test_every_story_merge_is_recorded_with_its_similarity(news: sessionmaker[Session]) -> None:
    with news() as s:
        merged = s.scalar(select(func.count()).select_from(ItemRow).where(ItemRow.story_id != ItemRow.id))
        decisions = s.scalars(select(MergeRow)).all()
    assert merged and len(decisions) >= merged
    assert all(
        0 < d.similarity <= 1 and d.rule in {"url", "text-hash", "same-title", "near-text", "story"}
        for d in decisions
    )


@needs_corpus
def test_replaying_rule_3_with_the_same_thresholds_gives_the_same_stories(
    news: sessionmaker[Session],
) -> None:
    with news() as s:
        before = {i: story for i, story in s.execute(select(ItemRow.id, ItemRow.story_id))}
    with news.begin() as s:
        store.relink_stories(s, StoryParams(), datetime.now(UTC))
    with news() as s:
        after = {i: story for i, story in s.execute(select(ItemRow.id, ItemRow.story_id))}
    assert before == after
    assert len(set(before.values())) < len(before)  # stories of several items: a replay has work to do


@needs_corpus
def test_replaying_rule_3_keeps_the_stories_of_items_out_of_the_fingerprint_window(tmp_path: Path) -> None:
    """After a prune dropped the fingerprints of the older half, a replay with a threshold no title pair
    meets leaves their stories (and story merges) alone and splits only the newer half's."""
    engine = store.make_engine(f"sqlite:///{tmp_path / 'news.db'}")
    store.upgrade(engine)
    news = store.make_sessionmaker(engine)
    ingest(news, [(NEWS, CAPTURED)], StoryParams())
    try:
        _replay_after_a_prune(news)
    finally:
        engine.dispose()


def _replay_after_a_prune(news: sessionmaker[Session]) -> None:
    with news() as s:
        before = dict(s.execute(select(ItemRow.id, ItemRow.story_id)).all())
        ids = sorted(before)
        middle = ids[len(ids) // 2]
        first_seen = s.scalar(select(ItemRow.first_seen).where(ItemRow.id == middle))
        merges = s.scalar(select(func.count()).select_from(MergeRow).where(MergeRow.level == "story"))
    assert first_seen is not None
    with news.begin() as s:  # the items before the middle one go out of the window
        s.execute(
            update(ItemRow).where(ItemRow.id < middle).values(first_seen=first_seen - timedelta(days=1))
        )
    store.prune_fingerprints(news, first_seen + timedelta(days=StoryParams().index_days), StoryParams())
    strict = replace(StoryParams(), story_threshold=1.1)  # no candidate passes: every story of one item
    with news.begin() as s:
        store.relink_stories(s, strict, datetime.now(UTC))
    with news() as s:
        after = dict(s.execute(select(ItemRow.id, ItemRow.story_id)).all())
        kept = s.scalar(
            select(func.count())
            .select_from(MergeRow)
            .where(MergeRow.level == "story", MergeRow.item_id < middle)
        )
    assert {i: after[i] for i in ids if i < middle} == {i: before[i] for i in ids if i < middle}
    assert 0 < kept < merges  # the older items' story merges stay, the newer ones' are replayed
    assert any(after[i] != before[i] for i in ids if i >= middle)


@needs_corpus
def test_collapse_story_gives_one_entry_per_story_with_its_other_outlets(news: sessionmaker[Session]) -> None:
    beatrice = [i for i, c in labelled(news).items() if c == "C01-beatrice-birth"]
    with news() as s:
        stories_count = s.scalar(select(func.count(func.distinct(ItemRow.story_id))))
        entries = store.topic_items(s, "all", limit=5000, collapse="story")
        every = store.topic_items(s, "all", limit=5000, collapse="none")
    assert len(entries) == stories_count < len(every)
    entry = next(x for x in entries if x.id in beatrice)
    assert {x.source for x in entry.also} == {"bbc-news-1", "cnn-1", "dailymail-1", "smh-1"} - {
        entry.item.source
    }
    assert all(x.url for x in entry.also)
    check_rendered(entry)


def check_rendered(entry: StoredItem) -> None:
    feed_args = {"feed_url": "http://127.0.0.1/t.atom", "site_url": "http://127.0.0.1/t", "updated": None}
    doc = json.loads(publish.render_feed("json", ALL, [entry], **feed_args))
    also = doc["items"][0]["_aggregator"]["also_reported_by"]
    assert [x["url"] for x in also] == [x.url for x in entry.also]
    assert "Also reported by: " in doc["items"][0]["content_html"]
    atom = etree.fromstring(publish.render_feed("atom", ALL, [entry], **feed_args))
    ns = {"a": "http://www.w3.org/2005/Atom"}
    related = atom.xpath("//a:entry/a:link[@rel='related']/@href", namespaces=ns)
    assert related == [x.url for x in entry.also]
    assert atom.xpath("//a:entry/a:source/a:id", namespaces=ns)
    rss = publish.render_feed("rss", ALL, [entry], **feed_args)
    assert b"Also reported by: " in rss


@needs_corpus
def test_an_updated_item_is_reindexed(news: sessionmaker[Session]) -> None:
    with news() as s:
        row = s.scalars(select(ItemRow).where(ItemRow.text != "").limit(1)).one()
        stored = next(store.stored_items(s, [row.id]))
    changed = dataclasses.replace(stored.item, title=stored.item.title + " (updated)")

    def keys_after_update(now: datetime) -> set[int]:
        with news.begin() as s:
            store.link_items(s, [], [(row.id, changed)], now)
        with news() as s:
            return set(s.scalars(select(FingerprintRow.key).where(FingerprintRow.item_id == row.id)))

    keys = keys_after_update(changed.published + timedelta(hours=1))
    assert set(stories.fingerprint(changed.title, changed.text, StoryParams()).story_keys) <= keys
    # updated 61 days after it was published: out of the window new items are matched against (index_days)
    assert keys_after_update(changed.published + timedelta(days=61)) == set()


def test_link_items_skips_an_id_that_is_not_stored(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        store.link_items(s, [(12345, None)], [], datetime.now(UTC))  # type: ignore[list-item]
        assert s.scalar(select(func.count()).select_from(MergeRow)) == 0


# --- cost: batched lookups, stored terms, the numpy MinHash ----------------------------------------------


def test_minhash_gives_datasketch_values_with_the_word_hash_input() -> None:
    """The near-duplicate MinHash is datasketch's, given ``feature_hash`` as its hashfunc; the shingle
    hashes computed by position are ``feature_hash`` of each shingle's text."""
    words = stories.tokens(" ".join(f"shingle {i} über 中国 word{i % 7}" for i in range(80)))
    features = sorted(stories.shingles(words, 3))
    hashes = stories.shingle_hashes(words, 3)
    assert sorted(set(map(int, hashes))) == sorted(map(stories.feature_hash, features))
    for num_perm in (12, 120):
        sketch = MinHash(num_perm=num_perm, seed=1, scheme="affine32", hashfunc=stories.feature_hash)
        sketch.update_batch(features)
        assert stories.minhash(hashes, num_perm) == [int(v) for v in sketch.hashvalues]
    assert stories.minhash(stories.shingle_hashes([], 3), 12) == [0xFFFFFFFF] * 12
    for short in (["one"], ["one", "two"], ["one", "two", "three"]):  # the whole sequence: one shingle
        assert list(map(int, stories.shingle_hashes(short, 3))) == [stories.feature_hash(" ".join(short))]


def test_the_input_hashes_never_change_so_stored_near_keys_stay_valid() -> None:
    """Pinned values: another word hash, mixing or base would silently orphan every stored near key."""
    assert stories.feature_hash("volcano erupts on") == 676898866
    assert stories.feature_hash("erupts volcano on") != stories.feature_hash("volcano erupts on")
    text = " ".join(f"w{i}" for i in range(40))
    assert stories.near_keys(text, StoryParams())[:2] == (9171085605713652997, 7152834726210107650)
    revision_0008 = replace(StoryParams(), near_bands=20, near_rows=6)  # what 0009's downgrade stores
    assert stories.near_keys(text, revision_0008)[:2] == (6620574156837946120, 3246092694650452754)


def test_story_text_and_title_keys_never_change_so_stored_keys_stay_valid() -> None:
    """Pinned values of the other stored kinds: pairs of title terms, exact text, exact long title."""
    params = StoryParams()
    assert stories.pair_keys({"volcan", "palma", "lava"}, 8) == (
        5380463984157212385, 8755101906928199445, 5957066435777972486
    )  # fmt: skip
    assert stories.text_key("Lava", " ".join(f"w{i}" for i in range(20)), params) == 4361560790465828880
    title = "Volcano erupts on La Palma island as thousands are evacuated from homes near lava"
    fp = stories.fingerprint(title, "", params)
    assert fp.title_key == stories.title_key(title, params) == 7064410923706014789
    assert len(fp.story_keys) == 28 and fp.story_keys[:2] == (7328817342911941426, 3040571818714671297)


def test_analyze_builds_the_terms_of_its_own_tokens_as_terms_of_does() -> None:
    """analyze hands its tokens to Terms.of, which uses them unless a number glued to a name has to go
    first: the same terms as tokenizing title and lead again, wherever the glued number is."""
    params = StoryParams()
    lead = " ".join(f"word{i}" for i in range(params.lead_words))
    texts = [
        lead + " and more " * 50,
        "The COVID-19 jets. " + lead,  # glued number in the lead
        lead + " then the F-35 flew " * 30,  # only after the lead
        "x" * 700 + " " + lead,  # a long word: the beginning of the text holds few words
        "中国军网 " * 30 + lead,
        lead[:-3] + "ab-12" + " tail" * 200,  # a glued number where a lead of 16 chars per word ends
        "short",
        "",
    ]
    for title in ("Six dead as COVID-19 cases rise", "Lava destroys homes", "", "G-7 中国 summit"):
        for body in texts:
            expected = stories.Terms.of(title, body, params.lead_words)
            assert stories.analyze(title, body, params).terms == expected, (title, body[:40])


def test_glued_numbers_are_found_where_a_leading_lookbehind_finds_them() -> None:
    """``_GLUED`` checks the letter before the hyphen after finding the hyphen (5x faster): the same
    matches as the pattern with the lookbehind first."""
    reference = re.compile(r"(?<=[^\W\d_])[-\u2010\u2011]\d+\b")
    samples = [
        "COVID-19 x-1",
        "-1 a-1 _-2 1-2 é\u20103 中-4 a--5 a-5b a-5_ a-5 ",
        "a\u2011\u20111 b\u20112",
        "F-35s F-35",
    ]
    for value in samples:
        assert [m.span() for m in stories._GLUED.finditer(value)] == [
            m.span() for m in reference.finditer(value)
        ], value


def test_sha1_input_hashes_give_datasketch_default_values_for_the_0008_downgrade() -> None:
    features = [f"shingle {i} über 中国" for i in range(300)]
    for num_perm in (12, 120):
        sketch = MinHash(num_perm=num_perm, seed=1, scheme="affine32")
        sketch.update_batch([f.encode() for f in features])
        assert stories.minhash(stories.sha1_hashes(features), num_perm) == [int(v) for v in sketch.hashvalues]


def corpus_texts(least: int) -> list[list[str]]:
    """The words of every entry body of the real feeds with at least ``least`` words (HTML as text)."""
    texts = []
    for path in sorted(REAL.iterdir()):
        if path.suffix not in {".xml", ".atom", ".rdf"}:
            continue
        root = etree.parse(str(path), etree.XMLParser(recover=True, huge_tree=True)).getroot()
        for body in [] if root is None else root.iter("{*}description", "{*}encoded", "{*}content"):
            value = (body.text or "").strip()
            text = (
                etree.tostring(html_text(value), method="text", encoding="unicode") if "<" in value else value
            )
            words = stories.tokens(text)
            if len(words) >= least:
                texts.append(words)
    return texts


@needs_corpus
def test_minhash_estimates_the_jaccard_of_real_texts_as_well_as_sha1_did() -> None:
    """On the corpus texts, each against an edited copy (a share of its words replaced) and against
    another text: the estimate (share of equal MinHash values) is as close to the exact shingle Jaccard
    with the word-hash input as with SHA-1 of each shingle's text."""
    texts = corpus_texts(60)
    assert len(texts) > 300

    def estimate(a: NDArray[np.uint32], b: NDArray[np.uint32]) -> float:
        return float(np.mean(np.array(stories.minhash(a, 120)) == np.array(stories.minhash(b, 120))))

    errors: dict[str, list[float]] = {"words": [], "sha1": []}
    for i, words in enumerate(texts):
        step = (2, 3, 5, 8, 13, 30)[i % 6]
        edited = [w if j % step else f"edit{j}" for j, w in enumerate(words)]
        for other in (edited, texts[(7 * i + 1) % len(texts)]):
            a, b = stories.shingles(words, 3), stories.shingles(other, 3)
            exact = stories.jaccard(a, b)
            hashes = stories.shingle_hashes(words, 3), stories.shingle_hashes(other, 3)
            errors["words"].append(estimate(*hashes) - exact)
            errors["sha1"].append(estimate(stories.sha1_hashes(a), stories.sha1_hashes(b)) - exact)
    mean = {name: float(np.mean(np.abs(e))) for name, e in errors.items()}
    assert mean["words"] < 0.03 and mean["words"] <= 1.2 * mean["sha1"]
    assert abs(float(np.mean(errors["words"]))) < 0.01  # unbiased


def test_terms_round_trip_and_a_third_shared_title_term_earns_the_bonus() -> None:
    params = StoryParams()
    terms = stories.analyze(
        "Volcano erupts on La Palma", "Lava pours from the volcano on La Palma.", params
    ).terms
    assert stories.Terms.decode(terms.encode()) == terms
    assert stories.Terms.decode_title(terms.encode()) == terms.title
    two = frozenset({"volcan", "erupts", "x1", "x2", "x3"}), frozenset({"volcan", "erupts", "y1", "y2", "y3"})
    three = (
        frozenset({"volcan", "erupts", "palma", "x2", "x3"}),
        frozenset({"volcan", "erupts", "palma", "y"}),
    )
    assert stories.title_similarity(*two, params) == pytest.approx(0.4)  # below the threshold
    assert stories.title_similarity(*three, params) == pytest.approx(0.75 + params.story_bonus)
    assert stories.title_similarity(*three, replace(params, story_bonus=0.0)) == pytest.approx(0.75)


def story_items(source: str, count: int, at: datetime, first: int = 0, *, copies: bool = True) -> list[Item]:
    """``count`` reports, each on an event of its own: item i of every source covers event i (with the
    same text, or with ``copies`` False, in words of its own)."""
    items = []
    for i in range(first, first + count):
        title = f"Volcano{i} erupts{i} in Harbour{i} as Mayor{i} orders{i} evacuation{i} ({source})"
        more = "More. " if copies else f"{source} has more. "
        text = f"Mayor{i} ordered the evacuation of Harbour{i} after Volcano{i} erupted. " + more * 30
        key = f"{source}-{i}"
        items.append(Item(source=source, key=key, uid=f"uid-{key}", title=title, html="", text=text,
                          published=at, content_hash=f"h-{key}"))  # fmt: skip
    return items


def link_poll(s: Session, source: str, items: list[Item], at: datetime) -> int:
    """Store and link one poll; returns the number of SQL statements link_items ran."""
    saved = store.save_items(s, source, items, at)
    statements = []
    engine = s.get_bind()
    event.listen(engine, "before_cursor_execute", record := lambda *args: statements.append(args[2]))
    try:
        store.link_items(s, saved.new, saved.updated, at)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(statements)


def test_link_items_runs_as_many_statements_for_40_items_as_for_5(sessions: sessionmaker[Session]) -> None:
    at = datetime(2024, 5, 10, tzinfo=UTC)
    names = ["wire", "small", "large"]
    with sessions.begin() as s:
        store.sync_sources(s, [Source(n, f"file:///{n}") for n in names], at)
        link_poll(s, "wire", story_items("wire", 40, at), at)
    with sessions.begin() as s:
        few = link_poll(s, "small", story_items("small", 5, at), at)
    with sessions.begin() as s:
        many = link_poll(s, "large", story_items("large", 35, at, first=5), at)
    assert many == few  # a few batched lookups and writes per poll, none per item
    with sessions() as s:
        rows = s.execute(select(SourceRow.name, ItemRow.key, ItemRow.story_id).join(SourceRow)).all()
    story = {key: story_id for _, key, story_id in rows}
    for i in range(40):  # every report found its story
        assert story[f"{'small' if i < 5 else 'large'}-{i}"] == story[f"wire-{i}"]
    assert len({story[f"wire-{i}"] for i in range(40)}) == 40  # and no two events were joined


def test_items_stored_before_story_terms_get_them_when_compared(sessions: sessionmaker[Session]) -> None:
    at = datetime(2024, 5, 10, tzinfo=UTC)
    with sessions.begin() as s:
        store.sync_sources(s, [Source(n, f"file:///{n}") for n in ("old", "new")], at)
        link_poll(s, "old", story_items("old", 3, at, copies=False), at)
        s.execute(delete(TermsRow))  # as if stored before migration 0006
    with sessions.begin() as s:
        link_poll(s, "new", story_items("new", 3, at, copies=False), at)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(TermsRow)) == 6
        merged = s.scalars(select(MergeRow.rule).where(MergeRow.level == "story")).all()
    assert merged == ["story"] * 3


@needs_corpus
def test_migrations_0008_and_0009_rekey_stored_items_both_ways(database_url: str) -> None:
    """Items stored with one key per title term and SHA-1 near keys (0007) get the pair keys and the
    word-hash near keys (0008), then 12 near bands of 5 rows instead of 20 of 6 (0009), and back."""
    engine = store.make_engine(database_url)
    try:
        sessions = store.make_sessionmaker(engine)
        ingest(sessions, [(["bbc-news-1.xml", "cnn-1.xml", "nzherald-1.xml"], CAPTURED)], StoryParams())
        params = replace(StoryParams(), near_bands=20, near_rows=6)  # the bands of revisions 0004 to 0008

        def stored(kind: str) -> dict[int, set[int]]:
            with sessions() as s:
                rows = s.execute(
                    select(FingerprintRow.item_id, FingerprintRow.key).where(FingerprintRow.kind == kind)
                )
                found: dict[int, set[int]] = defaultdict(set)
                for item_id, key in rows:
                    found[item_id].add(key)
                return found

        def expected(
            story: Callable[[frozenset[str]], tuple[int, ...]], near: Callable[[str], tuple[int, ...]]
        ) -> dict[str, dict[int, set[int]]]:
            with sessions() as s:
                items = s.execute(select(ItemRow.id, ItemRow.title, ItemRow.text)).all()
            return {
                "story": {i: set(k) for i, title, _ in items if (k := story(stories.title_terms(title)))},
                "near": {i: set(k) for i, _, text in items if (k := near(text))},
            }

        def sha1_near(text: str) -> tuple[int, ...]:
            shingles = stories.near_shingles(text, params)
            hashes = stories.sha1_hashes(shingles or ())
            return stories.band_keys("near", hashes, params.near_bands, params.near_rows) if shingles else ()

        new = expected(
            lambda terms: stories.pair_keys(terms, params.story_sketch),
            lambda text: stories.near_keys(text, params),
        )
        old = expected(
            lambda terms: stories.band_keys("story", stories.sha1_hashes(terms), 12, 1) if terms else (),
            sha1_near,
        )
        assert len(new["story"]) > 50 and len(new["near"]) > 20  # the short texts have no near keys
        assert new["near"].keys() == old["near"].keys()  # the same items have near keys, other keys
        assert not any(keys & old["near"][item_id] for item_id, keys in new["near"].items())
        current = StoryParams()  # 0009: fewer bands
        head = {
            "story": new["story"],
            "near": expected(lambda t: (), lambda x: stories.near_keys(x, current))["near"],
        }
        assert head["near"].keys() == new["near"].keys()
        assert all(len(keys) == 12 for keys in head["near"].values())
        assert {kind: stored(kind) for kind in new} == head  # as the pipeline stored them
        with sessions() as s:
            terms = dict(s.execute(select(TermsRow.item_id, TermsRow.terms)).all())
        migrate(engine, "0008", down=True)
        assert {kind: stored(kind) for kind in new} == new
        migrate(engine, "0007", down=True)
        assert {kind: stored(kind) for kind in new} == old
        with sessions.begin() as s:  # as 0007 stored them: COVID-19 was "covid" and "19", no plurals
            s.execute(update(TermsRow).values(terms="covid 19 cases\t"))
        migrate(engine, "0008")
        assert {kind: stored(kind) for kind in new} == new
        migrate(engine, "head")
        assert {kind: stored(kind) for kind in new} == head
        with sessions() as s:
            assert dict(s.execute(select(TermsRow.item_id, TermsRow.terms)).all()) == terms
    finally:
        engine.dispose()


def _report(source: str, title: str, at: datetime) -> Item:
    key = f"guid:{source}-1"
    return Item(source=source, key=key, uid=dedup.item_uid(source, key), title=title, html="", text="",
                published=at, content_hash=dedup.content_hash(title, ""))  # fmt: skip


def test_two_workers_linking_reports_of_one_event_at_once_make_one_story(
    postgres_template: tuple[str, Any],
) -> None:
    """Worker b stores its report while worker a's is stored but not committed: b waits for a's commit
    (the linking lock) and joins a's story instead of starting a second one."""
    now = datetime(2021, 9, 20, 12, tzinfo=UTC)
    with postgres_database(*postgres_template) as url:
        engine = store.make_engine(url)
        sessions = store.make_sessionmaker(engine)
        try:
            with sessions.begin() as s:
                store.sync_sources(s, [Source("a", "file:///a"), Source("b", "file:///b")], now)
            first = _report("a", "Volcano erupts on La Palma as thousands are evacuated", now)
            second = _report("b", "Thousands evacuated after La Palma volcano erupts", now)
            finished = threading.Event()

            def worker_b() -> None:
                with sessions.begin() as s:
                    store.link_items(s, store.save_items(s, "b", [second], now).new, [], now)
                finished.set()

            with sessions() as a:
                with a.begin():
                    store.link_items(a, store.save_items(a, "a", [first], now).new, [], now)
                    b = threading.Thread(target=worker_b)
                    b.start()
                    activity = text(
                        "SELECT state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    watcher = store.make_engine(url)  # its own pool: b must not wait for a connection
                    try:
                        with watcher.connect() as watch:
                            deadline = time.monotonic() + 60
                            while not finished.is_set():
                                seen = [tuple(row) for row in watch.execute(activity)]
                                if any(row[1:3] == ("Lock", "advisory") for row in seen):
                                    break
                                assert time.monotonic() < deadline, f"b neither waited nor finished: {seen}"
                                time.sleep(0.05)
                    finally:
                        watcher.dispose()
                    assert not finished.is_set(), "worker b linked without waiting for a's commit"
                b.join(30)
            assert finished.is_set()
            with sessions() as s:
                found = {uid: story for uid, story in s.execute(select(ItemRow.uid, ItemRow.story_id))}
            assert found[second.uid] == found[first.uid] is not None
        finally:
            engine.dispose()


def test_candidates_are_found_up_to_the_window_and_not_beyond(sessions: sessionmaker[Session]) -> None:
    """A report published exactly ``window_hours`` after another joins its story, one a microsecond
    further does not; an identical text exactly ``article_window_days`` away joins its article (the
    windows compare the stored times as the database driver gives them)."""
    params, now = StoryParams(), datetime(2021, 9, 20, 12, tzinfo=UTC)
    story, article = timedelta(hours=params.window_hours), timedelta(days=params.article_window_days)
    tick = timedelta(microseconds=1)
    title, words = "Lava destroys homes on Palma island", " ".join(f"w{i}" for i in range(40))
    reports = {
        "a": (title, "", now),
        "b": (title, "", now + story),
        "c": (title, "", now - story - tick),
        "d": ("Quarterly figures", words, now),
        "e": ("Annual report", words, now + article),
        "f": ("Monthly results", words, now - article - tick),
    }
    with sessions.begin() as s:
        store.sync_sources(s, [Source(name, f"file:///{name}") for name in reports], now)
    for name, (head, body, at) in reports.items():
        key = f"guid:{name}"
        item = Item(source=name, key=key, uid=dedup.item_uid(name, key), title=head, html="", text=body,
                    published=at, content_hash=dedup.content_hash(head, body))  # fmt: skip
        with sessions.begin() as s:
            store.link_items(s, store.save_items(s, name, [item], now).new, [], now)
    with sessions() as s:
        rows = s.execute(select(ItemRow.source_id, ItemRow.story_id, ItemRow.article_id).order_by(ItemRow.id))
        found = {
            name: (story_id, article_id)
            for name, (_, story_id, article_id) in zip(reports, rows, strict=True)
        }
    assert found["b"][0] == found["a"][0] != found["c"][0]
    assert found["e"][1] == found["d"][1] is not None and found["f"][1] != found["d"][1]


def test_story_terms_fold_counts_plurals_and_numbers_glued_to_names() -> None:
    assert stories.title_terms("Six dead as COVID-19 cases rise in classes") == {
        "6", "dead", "covid", "case", "rise", "classe"
    }  # fmt: skip
    assert stories.title_terms("6 killed in Covid case") == {"6", "killed", "covid", "case"}
    assert stories.title_terms("Virus crisis: the class of 2021") == {"virus", "crisis", "class"}
    assert stories.title_terms("Patay ang lima sa pamamaril sa Maynila") == {
        "patay",
        "lima",
        "pamama",
        "maynil",
    }
    lead = stories.story_terms("Lava", "The F-35 jets flew over. " * 40, 40)
    assert lead == {"lava", "jet", "flew"}  # no "35"


def test_a_report_joins_the_biggest_of_the_stories_it_matches(sessions: sessionmaker[Session]) -> None:
    """Two outlets' reports of the lava already share a story; a third outlet's report that matches it
    and, more closely, a one-item story about the airport joins the bigger story."""
    now = datetime(2021, 9, 20, 12, tzinfo=UTC)
    reports = {
        "a": "Lava destroys homes on Palma island",
        "b": "Lava destroys more homes on Palma island",
        "d": "Palma island airport closed by ash cloud",
        "e": "Ash cloud from Palma island lava closes airport",
    }
    with sessions.begin() as s:
        store.sync_sources(s, [Source(name, f"file:///{name}") for name in reports], now)
    for name, title in reports.items():
        with sessions.begin() as s:
            store.link_items(s, store.save_items(s, name, [_report(name, title, now)], now).new, [], now)
    with sessions() as s:
        story = {
            name: s.scalar(select(ItemRow.story_id).where(ItemRow.title == t)) for name, t in reports.items()
        }
    assert story["a"] == story["b"] != story["d"]  # the airport report is a story of its own
    assert story["e"] == story["a"]  # closer to d's title, but a and b's story is the bigger
    params = StoryParams()
    e, d, a = (stories.Terms.of(reports[name], "", params.lead_words) for name in "eda")
    assert (
        stories.terms_similarity(e, d, params)
        > stories.terms_similarity(e, a, params)
        >= params.story_threshold
    )
