"""Rules 2 and 3 of deduplication on real corpus items: syndicated copies share an article, rewritten
coverage of one event shares a story, different events stay apart, and ``collapse: story`` publishes one
entry per story with its other outlets. Feeds are polled through the real pipeline from file:// URLs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import REAL
from datasketch import MinHash
from lxml import etree
from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator import publish, store, stories
from aggregator.fetch import fetch, make_session
from aggregator.model import Item, Source, StoredItem, Topic
from aggregator.pipeline import Context, poll_source, topic_definitions
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
    a = stories.fingerprint("A title about volcanoes", text, params)
    assert a == stories.fingerprint("A title about volcanoes", text, params)
    assert len(a.near_keys) == params.near_bands and len(a.story_keys) == params.story_bands
    assert all(0 <= k < 2**63 for k in (*a.near_keys, *a.story_keys))
    assert a.text_key is not None


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
    with news.begin() as s:
        store.link_items(s, [], [(row.id, changed)], datetime.now(UTC))
    with news() as s:
        keys = set(s.scalars(select(FingerprintRow.key).where(FingerprintRow.item_id == row.id)))
    assert set(stories.fingerprint(changed.title, changed.text, StoryParams()).story_keys) <= keys


def test_link_items_skips_an_id_that_is_not_stored(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        store.link_items(s, [(12345, None)], [], datetime.now(UTC))  # type: ignore[list-item]
        assert s.scalar(select(func.count()).select_from(MergeRow)) == 0


# --- cost: batched lookups, stored terms, the numpy MinHash ----------------------------------------------


def test_minhash_gives_datasketch_values_so_stored_keys_stay_valid() -> None:
    features = [f"shingle {i} über 中国" for i in range(300)]
    for num_perm in (12, 120):
        sketch = MinHash(num_perm=num_perm, seed=1, scheme="affine32")
        sketch.update_batch([f.encode() for f in features])
        assert stories.minhash(features, num_perm) == [int(v) for v in sketch.hashvalues]
    assert stories.minhash([], 12) == [0xFFFFFFFF] * 12


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
