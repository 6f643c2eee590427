"""The topic query language (aggregator.topics): parsing, errors, matching, topic restrictions."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.errors import AggregatorError
from aggregator.model import Item, Topic
from aggregator.topics import FieldIndex, MatchDoc, QueryError, TopicMatcher, compile_query, fold

DATA = Path(__file__).resolve().parent / "data"
ARTICLE = (DATA / "normalize-example-article.txt").read_text(encoding="utf-8")
ARTICLE_TITLE = (
    "Over 260 Russian soldiers voluntarily surrender to Ukraine via I Want to Live project, "
    "Ukrainian intelligence says"
)
# The same report as Ukrainian outlets ran it (Ukrainska Pravda's Ukrainian edition, same day).
UK_TITLE = "Понад 260 російських військових здалися в полон через проєкт «Хочу жить» – ГУР"
UK_TEXT = (
    "Проєкт «Хочу жить» отримав понад 35 тисяч заявок. Україна гарантує безпеку. "
    "Їх зареєстровано як полонених, а не як тих, хто добровільно перейшов на бік України."
)
# BBC Chinese (bbc-chinese-1.xml), a script written without spaces.
ZH_TITLE = "中国新闻：乌克兰称超过260名俄罗斯士兵投降"


def make_item(
    title: str, text: str = "", source: str = "ukrainska-pravda", language: str | None = "en"
) -> Item:
    return Item(
        source=source,
        key="guid:1",
        uid="00000000-0000-5000-8000-000000000000",
        title=title,
        html="",
        text=text,
        published=datetime(2024, 5, 10, 16, 43, tzinfo=UTC),
        content_hash="0" * 40,
        language=language,
    )


ARTICLE_DOC = MatchDoc.from_item(make_item(ARTICLE_TITLE, ARTICLE), ("news", "Ukraine"))
UK_DOC = MatchDoc.from_item(make_item(UK_TITLE, UK_TEXT, language="uk"), ("news",))


def matches(query: str, doc: MatchDoc = ARTICLE_DOC) -> bool:
    return compile_query(query).matches(doc)


def doc_of(text: str) -> MatchDoc:
    return MatchDoc.from_item(make_item("", text))


# -------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("query", "words", "expected"),
    [
        # OR binds weakest: a OR (b AND c)
        ("a OR b c", "a", True), ("a OR b c", "b", False), ("a OR b c", "b c", True),
        ("a OR b AND c", "b", False), ("a OR b AND c", "a", True),
        # NOT binds tightest: (NOT a) AND b
        ("NOT a b", "b", True), ("NOT a b", "a b", False), ("NOT a b", "", False),
        ("NOT (a b)", "a", True), ("NOT (a b)", "a b", False),
        ("a OR b NOT c", "b c", False), ("a OR b NOT c", "a c", True),
        ("(a OR b) c", "b c", True), ("(a OR b) c", "b", False),
        ("a -b", "a", True), ("a -b", "a b", False),
        ('a -"b c"', "a b c", False), ('a -"b c"', "a c b", True),
        ("a -(b OR c)", "a c", False), ("NOT NOT a", "a", True), ("a AND NOT b OR c", "c", True),
        # lower-case keywords are plain words
        ("war and peace", "war peace", False), ("war and peace", "war and peace", True),
        ("not OR or", "or", True), ("NOT not", "yes", True),
        # "*" matches everything, and can be narrowed
        ("*", "", True), ("* NOT a", "a", False), ("* NOT a", "b", True),
    ],
)  # fmt: skip
def test_precedence_and_operators(query: str, words: str, expected: bool) -> None:
    assert matches(query, doc_of(words)) is expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty query (write '*' to match every item)"),
        ("   \n", "empty query (write '*' to match every item)"),
        ("ukraine AND (surrender OR war", "at column 30: expected ')' to close '(' opened at column 13"),
        ("a (b (c) OR d", "at column 14: expected ')' to close '(' opened at column 3"),
        ("ukraine)", "at column 8: unexpected ')' with no matching '('"),
        ("ukraine AND", "at column 12: expected a term after 'AND', found the end of the query"),
        ("AND ukraine", "at column 1: expected a term, found 'AND'"),
        ("ukraine OR OR war", "at column 12: expected a term after 'OR', found 'OR'"),
        ("ukraine NOT", "at column 12: expected a term after 'NOT', found the end of the query"),
        ("ukraine (OR war)", "at column 10: expected a term after '(', found 'OR'"),
        ("()", "at column 2: expected a term after '(', found ')'"),
        ("ukraine - war", "at column 9: expected a word, phrase or '(' right after '-'"),
        ("ukraine -", "at column 9: expected a word, phrase or '(' right after '-'"),
        ('"prisoners of war', "at column 18: expected '\"' to close the phrase opened at column 1"),
        ('title:"prisoners', "at column 17: expected '\"' to close the phrase opened at column 7"),
        ("writer:yusov", "at column 1: unknown field 'writer:' (expected one of title:, text:, author:, "
                         "category:, source:, tag:, lang:, domain:, url:, published:; quote the text to "
                         "search for it: \"writer:yusov\")"),
        ("see https://x.example", "at column 5: unknown field 'https:' (expected one of title:, text:, "
                                  "author:, category:, source:, tag:, lang:, domain:, url:, published:; "
                                  "quote the text to search for it: \"https://x.example\")"),
        ("title: ukraine", "at column 1: expected a word, phrase, /regex/ or '(' right after 'title:'"),
        ("source:", "at column 1: expected a name right after 'source:'"),
        ("tag:(news OR sport)", "at column 1: expected a name right after 'tag:'"),
        ("source:*", "at column 1: expected a name after 'source:'"),
        ('tag:""', "at column 1: expected a name after 'tag:'"),
        ("lang:english", "at column 1: 'lang:' expects a language code like 'en', found 'english'"),
        ("dr*ne", "at column 1: '*' is only allowed at the end of a word, in 'dr*ne'"),
        ("a **", "at column 3: '*' is only allowed at the end of a word, in '**'"),
        ("title:*", "at column 1: expected a word before '*' in 'title:*'"),
        ("ukraine !!!", "at column 9: '!!!' has no letters or digits to search for"),
        ('""', "at column 1: '\"\"' has no letters or digits to search for"),
        ("title:(ukraine", "at column 15: expected ')' to close '(' opened at column 7"),
    ],
)  # fmt: skip
def test_query_errors_say_where_and_what(query: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        compile_query(query)
    assert str(caught.value) == message


def test_query_error_is_an_aggregator_error_and_a_value_error() -> None:
    with pytest.raises(QueryError) as caught:
        compile_query("a OR")
    error = caught.value
    assert isinstance(error, AggregatorError) and isinstance(error, ValueError)
    assert error.column == 5
    assert error.reason == "expected a term after 'OR', found the end of the query"


# ------------------------------------------------------------------------------------------- matching


def test_the_design_documents_example_query() -> None:
    query = 'ukraine AND (surrender OR "prisoners of war") NOT tag:sport'
    assert matches(query)
    sport = MatchDoc.from_item(make_item(ARTICLE_TITLE, ARTICLE), ("sport",))
    assert not matches(query, sport)


@pytest.mark.parametrize(
    ("query", "text", "expected"),
    [
        ("war", "the war, it said", True), ("war", "War.", True), ("war", "(war)", True),
        ("war", "warning", False), ("war", "software", False), ("war", "post-war era", True),
        ("war", "Ukraine's war", True), ("ukraine", "Ukraine's war", True),
        ("covid-19", "COVID-19 cases", True), ("covid-19", "covid 19", True), ("covid-19", "19 covid", False),
        ("u.s.", "the U.S. said", True), ("35,000", "over 35,000 applications", True),
    ],
)  # fmt: skip
def test_words_match_on_word_boundaries(query: str, text: str, expected: bool) -> None:
    assert matches(query, doc_of(text)) is expected


def test_matching_on_the_example_article() -> None:
    assert matches("Yusov")
    assert matches("defence intelligence")
    assert not matches("defense")
    assert matches("Ukrinform")
    assert not matches("Ukrinfor")
    assert matches("Ukrinfor*")
    assert not matches("zelensky")


def test_accents_and_case_are_folded_on_both_sides() -> None:
    doc = doc_of("Café crème in São Paulo; Straße; ÉCOLE")
    for query in ("cafe", "CAFÉ", "creme", "sao paulo", '"São Paulo"', "strasse", "école", "ecole"):
        assert matches(query, doc), query
    assert fold("Ñandú ﬁ") == "nandu fi"


def test_cyrillic() -> None:
    for query in ("Україна", "україна", "УКРАЇНА", "полонених", "полон*", "їх", "проєкт", "хочу", "гур"):
        assert matches(query, UK_DOC), query
    assert matches('"здалися в полон"', UK_DOC)
    assert not matches("полон", doc_of("полонених"))  # word boundary in Cyrillic too
    assert not matches("України", doc_of("Україна"))
    # й and ї keep their marks: they are letters of their own, not accented и and і
    assert fold("Йосип") == "йосип" and fold("Їжак") == "їжак"
    assert not matches("мии", doc_of("мій"))
    assert fold("Ёлка") == "елка"


def test_cjk_matches_substrings() -> None:
    doc = MatchDoc.from_item(make_item(ZH_TITLE, language="zh"))
    assert matches("乌克兰", doc)
    assert matches("title:俄罗斯士兵", doc)
    assert matches('"260名俄罗斯"', doc)
    assert not matches("美国", doc)


def test_phrases_match_consecutive_words() -> None:
    assert matches('"prisoners of war"')
    assert matches('"I want to live"')
    assert not matches('"live to want"')
    assert matches('"Treatment  of\nPrisoners"')
    doc = doc_of("prisoners were taken in the war of 2022")
    assert matches("prisoners war", doc)
    assert not matches('"prisoners of war"', doc)


def test_field_index_builds_positions_only_for_phrases_whose_words_are_all_there() -> None:
    index = FieldIndex.of("The drone maker said: the drone flew")
    assert index.has_words(("drone",)) and not index.has_words(("pilot",))
    assert not index.has_words(("drone", "pilot")) and not index.has_words(("pilot", "fl"), prefix=True)
    assert index._positions is None  # a missing word answers without building them
    assert index.has_words(("drone", "flew")) and not index.has_words(("flew", "drone"))
    assert index.has_words(("said", "the", "dr"), prefix=True)
    assert not index.has_words(("said", "the", "fl"), prefix=True)
    assert index.positions["drone"] == (1, 5)
    assert index.vocabulary == ("drone", "flew", "maker", "said", "the")
    assert index == FieldIndex.of("the DRONE  maker said:\nthe drone flew")
    assert index != FieldIndex.of("the drone")


def test_prefix_wildcards() -> None:
    doc = doc_of("Drones attacked; the drone-maker said")
    assert matches("drone*", doc)
    assert matches("dron*", doc)
    assert not matches("drones*", doc_of("drone"))
    assert not matches("rone*", doc)
    assert not matches('"drone ma*"', doc_of("the drone maker"))  # quoted: * is not a wildcard
    assert matches("drone-ma*", doc)  # an unquoted compound: wildcard on its last word
    assert not matches('"surrend*"')
    assert matches("surrend*")


def test_fields() -> None:
    assert matches("title:surrender")
    assert matches('title:"I want to live"')
    assert not matches("title:Yusov")
    assert matches("text:Yusov")
    assert matches("TITLE:surrender")  # field names are case-insensitive
    assert matches("title:(ukraine OR belarus) text:DIU")
    assert not matches("title:(Yusov OR Ukrinform)")
    assert matches("title:(surrender text:Yusov)")  # an explicit field wins inside a group
    assert matches("source:ukrainska-pravda") and matches("source:Ukrainska*")
    assert not matches("source:bbc-news")
    assert matches("tag:ukraine") and matches("tag:NEWS") and matches("tag:new*")
    assert not matches("tag:sport")
    assert matches("lang:en") and matches("lang:EN") and not matches("lang:uk")
    assert matches("lang:uk", UK_DOC)
    assert not matches("lang:en", MatchDoc.from_item(make_item("x", language=None)))


# -------------------------------------------------------------------------------------------- topics


def test_topic_matcher_applies_the_query() -> None:
    item = make_item(ARTICLE_TITLE, ARTICLE)
    matcher = TopicMatcher(Topic(name="surrender", query="surrender*"))
    assert matcher.matches(item, ("news",))
    assert not TopicMatcher(Topic(name="x", query="zelensky")).matches(item, ())


def test_topic_matcher_restricts_by_source_name() -> None:
    item = make_item(ARTICLE_TITLE, ARTICLE)
    assert TopicMatcher(Topic(name="t", query="*", sources=("ukrainska-pravda", "bbc"))).matches(item, ())
    assert not TopicMatcher(Topic(name="t", query="*", sources=("bbc",))).matches(item, ())


def test_topic_matcher_restricts_by_source_tag() -> None:
    item = make_item(ARTICLE_TITLE, ARTICLE)
    topic = Topic(name="t", query="ukraine", tags=("News", "politics"))
    assert TopicMatcher(topic).matches(item, ("news",))
    assert not TopicMatcher(topic).matches(item, ("sport",))
    assert not TopicMatcher(topic).matches(item, ())


def test_topic_matcher_restricts_by_language() -> None:
    topic = Topic(name="t", query="*", language=("en", "uk-UA"))
    matcher = TopicMatcher(topic)
    assert matcher.matches(make_item("a", language="en"), ())
    assert matcher.matches(make_item("a", language="uk"), ())
    assert not matcher.matches(make_item("a", language="de"), ())
    assert not matcher.matches(make_item("a", language=None), ())  # undeclared: not admitted
    assert TopicMatcher(Topic(name="all", query="*")).matches(make_item("a", language=None), ())


def test_topic_matcher_reuses_a_shared_doc() -> None:
    item = make_item(ARTICLE_TITLE, ARTICLE)
    doc = MatchDoc.from_item(item, ("news",))
    matchers = [TopicMatcher(Topic(name=f"t{i}", query=q)) for i, q in enumerate(["ukraine", "yusov", "x"])]
    assert [m.matches(item, ("news",), doc) for m in matchers] == [True, True, False]


def test_topic_matcher_names_the_topic_in_query_errors() -> None:
    with pytest.raises(QueryError) as caught:
        TopicMatcher(Topic(name="ukraine-war", query="ukraine AND (war"))
    assert str(caught.value) == (
        "topic 'ukraine-war': query at column 17: expected ')' to close '(' opened at column 13"
    )
    assert caught.value.topic == "ukraine-war" and caught.value.column == 17


def test_query_repr_and_text() -> None:
    query = compile_query("ukraine OR war")
    assert query.text == "ukraine OR war"
    assert repr(query) == "Query('ukraine OR war')"


# ------------------------------------------------------------ fields, dates and regexes on real items

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
NOW = datetime(2018, 3, 22, 12, 0, tzinfo=UTC)


def real_items(name: str, source: str) -> list[Item]:
    """Entries of a real feed from the corpus, through the real parse and normalize stages."""
    from aggregator.model import Source
    from aggregator.normalize import normalize_entry
    from aggregator.parse import parse_feed

    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"corpus file {path} is missing")
    src = Source(name=source, url=path.as_uri())
    parsed = parse_feed(path.read_bytes(), url=path.as_uri(), content_type=None, source=source)
    return [
        normalize_entry(e, source=src, feed=parsed.meta, feed_url=path.as_uri(), now=NOW)
        for e in parsed.entries
    ]


def hits(query: str, items: list[Item], tags: tuple[str, ...] = (), now: datetime = NOW) -> list[str]:
    compiled = compile_query(query)
    return [i.title for i in items if compiled.matches(MatchDoc.from_item(i, tags, now))]


def test_author_and_category_fields_on_real_items() -> None:
    items = real_items("guardian-1.xml", "guardian")
    by_smith = hits("author:smith", items)
    assert by_smith and all("Smith" in " ".join(i.authors) for i in items if i.title in by_smith)
    assert hits('author:"david smith"', items) == [
        i.title for i in items if "David Smith" in " ".join(i.authors)
    ]
    assert hits("author:smi*", items)  # prefixes work in names too
    fbi = hits('category:"paul ryan"', items)
    assert fbi == [i.title for i in items if "Paul Ryan" in i.categories]
    assert hits("category:(libraries OR canada)", items)
    assert not hits("author:washington category:libraries", items)


def test_url_and_domain_fields_on_real_items() -> None:
    items = real_items("guardian-1.xml", "guardian")
    assert len(hits("domain:theguardian.com", items)) == len(items)
    assert len(hits("domain:www.theguardian.com", items)) == len(items)
    assert not hits("domain:guardian.com", items)  # whole labels, not a suffix of one
    us = hits("url:/us-news/", items)
    assert us and len(us) == sum("/us-news/" in (i.url or "") for i in items)
    assert hits("url:FBI-NUNES", items)  # case-insensitive


def test_cyrillic_items_from_a_real_feed() -> None:
    items = real_items("ibash-1.xml", "ibash")
    assert any(i.language == "ru" for i in items)
    quotes = hits("title:цитата", items)
    assert len(quotes) == len(items)
    assert hits("title:ЦИТАТА lang:ru", items) == [i.title for i in items if i.language == "ru"]
    assert hits("title:/цитата #1770\\d/", items) == [i.title for i in items if "#1770" in i.title]
    assert not hits("title:цитат", items)  # whole words
    assert hits("title:цитат*", items) == quotes


def test_relative_dates_use_now() -> None:
    items = real_items("ibash-1.xml", "ibash")  # published 2018-03-..; NOW is 2018-03-22 12:00
    recent = [i.title for i in items if i.published >= NOW - timedelta(days=7)]
    assert recent and len(recent) < len(items)
    assert hits("published:>7d", items) == recent
    assert hits("published:7d", items) == recent
    assert sorted(hits("published:<7d", items) + recent) == sorted(i.title for i in items)
    later = NOW + timedelta(days=365)
    assert hits("published:>7d", items, now=later) == []
    doc = MatchDoc.from_item(items[0])  # no ``now``: relative dates match nothing
    assert not compile_query("published:>7d").matches(doc)
    assert not compile_query("published:<7d").matches(doc)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("published:2024-05-10", True),
        ("published:2024-05-09", False),
        ("published:2024-05-01..2024-05-31", True),
        ("published:2024-05-01..2024-05-09", False),
        ("published:2024-05-10..", True),
        ("published:..2024-05-10", True),
        ("published:..2024-05-09", False),
        ("published:>2024-05-09", True),
        ("published:>2024-05-10", False),
        ("published:>=2024-05-10", True),
        ("published:<2024-05-10", False),
        ("published:<=2024-05-10", True),
        ("published:<2024-05-11", True),
        ("published:>2024-05-10T16:00Z", True),
        ("published:<2024-05-10T16:00:00+00:00", False),
        ("published:2024-05-10T16:43:00Z", False),  # an instant is an empty range
        ("published:20d..2d", True),  # now is 2024-05-20
        ("published:5d..2d", False),
        ("published:>2w", True),
        ("published:<12h", True),
    ],
)
def test_absolute_dates_and_ranges(query: str, expected: bool) -> None:
    doc = MatchDoc.from_item(make_item("x"), (), datetime(2024, 5, 20, tzinfo=UTC))
    assert compile_query(query).matches(doc) is expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("published:", "at column 1: expected a date or a range right after 'published:'"),
        ("published:yesterday", "at column 1: expected a date (2024-05-01, 2024-05-01T12:00Z) or an age "
                                "(12h, 7d, 2w) in 'published:yesterday'"),
        ("x published:2024-13-01", "at column 3: expected a date (2024-05-01, 2024-05-01T12:00Z) or an "
                                   "age (12h, 7d, 2w) in 'published:2024-13-01'"),
        ("published:..", "at column 1: expected a date before or after '..'"),
        ("published:>7y", "at column 1: expected a date (2024-05-01, 2024-05-01T12:00Z) or an age "
                          "(12h, 7d, 2w) in 'published:>7y'"),
        ("url:", "at column 1: expected part of a URL right after 'url:'"),
        ('url:""', "at column 1: expected part of a URL after 'url:'"),
        ("domain:", "at column 1: expected a name right after 'domain:'"),
        ("title:/unclosed", "at column 16: expected '/' to close the regular expression opened at column 7"),
        ("/a/b", "at column 4: expected a space or ')' after the regular expression"),
        ("title:/(a/", "at column 1: invalid regular expression /(a/: missing ): (a (RE2 syntax)"),
        ("x /(a)\\1/", "at column 3: invalid regular expression /(a)\\1/: invalid escape sequence: \\1 "
                       "(RE2 syntax)"),
        ("source:/bbc/", "at column 1: regular expressions work on title:, text:, author:, category:, "
                         "url: (not source:)"),
        ("//", "at column 1: empty regular expression"),
        ("/" + "a" * 501 + "/", "at column 1: regular expression longer than 500 characters"),
    ],
)  # fmt: skip
def test_new_field_errors_say_where_and_what(query: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        compile_query(query)
    assert str(caught.value) == message


def test_regular_expressions() -> None:
    assert matches("title:/surrender(s|ed)? to ukraine/")  # case-insensitive
    assert matches("/I want to live/")  # title or text
    assert matches("text:/Yusov/") and not matches("title:/Yusov/")
    assert matches("title:/260 russian/ AND NOT /zzz/")
    assert matches("title:( /ukrain\\w+/ )")  # inside a field group
    assert matches(
        "url:/example\\/news/", MatchDoc.from_item(replace(make_item("x"), url="https://example/news"))
    )
    assert matches("text:/a\\/b/", doc_of("path a/b here"))
    assert matches("/^$/", doc_of(""))


def test_a_pathological_regex_does_not_stall() -> None:
    """(a+)+$ on "aaa…ab" backtracks for ages with Python's re; RE2 is linear. Run in a thread so a
    regression fails the test instead of hanging the suite."""
    doc = doc_of("a" * 50_000 + "b")
    query = compile_query("text:/(a+)+$/ OR text:/(a|aa)*c/ OR /(x+x+)+y/")
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(query.matches(doc)), daemon=True)
    worker.start()
    worker.join(30)
    assert result == [False], "the regex did not finish"


def test_topic_options_exclude_sources_tags_and_short_items() -> None:
    item = make_item(ARTICLE_TITLE, ARTICLE)
    assert not TopicMatcher(Topic(name="t", query="*", exclude_sources=("ukrainska-pravda",))).matches(
        item, ()
    )
    assert TopicMatcher(Topic(name="t", query="*", exclude_sources=("bbc",))).matches(item, ())
    no_sport = Topic(name="t", query="ukraine", tags=("news",), exclude_tags=("Sport",))
    assert TopicMatcher(no_sport).matches(item, ("news",))
    assert not TopicMatcher(no_sport).matches(item, ("news", "sport"))
    long_only = TopicMatcher(Topic(name="t", query="*", min_length=len(ARTICLE.strip())))
    assert long_only.matches(item, ())
    assert not long_only.matches(make_item(ARTICLE_TITLE, "too short"), ())
    dated = TopicMatcher(Topic(name="t", query="published:>1d"))
    assert dated.matches(item, (), now=item.published) and not dated.matches(item, ())


# ------------------------------------------------------------------ topic options and websub in YAML

OPTIONS_YAML = """\
websub: {hub: "https://hub.example/"}
sources:
  - {name: up, url: "https://up.example/rss", tags: [news]}
  - {name: espn, url: "https://espn.example/rss", tags: [sport, news]}
topics:
  - name: war
    query: 'ukraine published:>7d'
    sources: {tags: [news]}
    exclude: {names: [espn], tags: [sport]}
    min_length: 200
    icon: "https://up.example/icon.png"
  - name: short
    query: 'author:smith'
    exclude: [espn]
"""


def load_yaml(tmp_path: Path, text: str) -> Any:
    from aggregator.config import load_config

    path = tmp_path / "a.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, validate_query=compile_query, env={})


def test_topic_options_and_websub_load_from_yaml(tmp_path: Path) -> None:
    settings = load_yaml(tmp_path, OPTIONS_YAML)
    war, short = settings.topics
    assert (war.exclude_sources, war.exclude_tags, war.min_length) == (("espn",), ("sport",), 200)
    assert war.icon == "https://up.example/icon.png"
    assert (short.exclude_sources, short.exclude_tags, short.min_length, short.icon) == (
        ("espn",),
        (),
        0,
        None,
    )
    assert settings.websub_hub == "https://hub.example/"
    assert load_yaml(tmp_path, "sources: []\n").websub_hub is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("exclude: {names: [espn], tags: [sport]}", "exclude: {names: [espm]}"),
         "a.yaml:9: topics[0].exclude.names[0]: unknown source 'espm' (did you mean 'espn'?)"),
        (("exclude: {names: [espn], tags: [sport]}", "exclude: {tags: [sprot]}"),
         "a.yaml:9: topics[0].exclude.tags[0]: no source has the tag 'sprot' (did you mean 'sport'?)"),
        (("min_length: 200", "min_length: -1"), "a.yaml:10: topics[0].min_length: "),
        (('icon: "https://up.example/icon.png"', "icon: icon.png"), "a.yaml:11: topics[0].icon: "),
        (('hub: "https://hub.example/"', "hub: ftp://hub"), "a.yaml:1: websub.hub: "),
        (("published:>7d", "published:>7y"), "a.yaml:7: topics[0].query: at column 9: expected a date"),
        (("websub: {", "websub: {secret: x, "), "a.yaml:1: websub.secret: unknown key"),
    ],
)  # fmt: skip
def test_topic_option_problems_name_file_line_and_key(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    from aggregator.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_yaml(tmp_path, OPTIONS_YAML.replace(*change))
    assert any(f"/{problem}" in line for line in caught.value.problems), caught.value.problems
