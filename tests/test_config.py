"""config.py: the shipped configs load, round-trip and match the JSON Schema; every mistake is reported
with file, line and key path."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from aggregator.config import (
    DEFAULT_DATABASE,
    ServerSettings,
    Settings,
    config_json_schema,
    load_config,
    parse_duration,
    parse_size,
)
from aggregator.errors import ConfigError
from aggregator.model import DEFAULT_USER_AGENT, Source

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "config" / "aggregator.yaml", ROOT / "config" / "demo.yaml"]


def accept(query: str) -> None:
    """A query validator that accepts anything (the query language lives in topics.py)."""


def reject_or(query: str) -> None:
    if " OR OR " in query:
        raise ValueError("expected a word after OR at offset 7")


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so problems name files as the operator wrote them ("a.yaml:3: ...")."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: str | Path = "a.yaml", **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=kwargs.pop("env", {}), **kwargs)
    assert str(path) in str(info.value).splitlines()[0]
    return info.value.problems


def only_problem(path: str | Path = "a.yaml", **kwargs: Any) -> str:
    found = problems(path, **kwargs)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- the shipped configs


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    settings = load_config(path, validate_query=accept, env={})
    assert settings.path == path.resolve()
    assert settings.sources and settings.topics
    for topic in settings.topics:
        for name in topic.sources:
            settings.source(name)
        for tag in topic.tags:
            assert any(tag in source.tags for source in settings.sources)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_topic_queries_parse(path: Path) -> None:
    from aggregator.topics import compile_query

    assert load_config(path, validate_query=compile_query, env={}).topics


def test_one_problem_reads_as_one_line(cfg: Path) -> None:
    write("a.yaml", "sources: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config("a.yaml", env={})
    assert str(info.value) == "a.yaml: 1 problem\n  a.yaml:1: sources: expected a list (got 5)"


def test_shipped_operator_config() -> None:
    settings = load_config(SHIPPED[0], validate_query=accept, env={})
    assert settings.database == DEFAULT_DATABASE
    assert settings.server == ServerSettings("127.0.0.1", 8080, "http://localhost:8080")
    assert settings.source("ukrainska-pravda").url == "https://www.pravda.com.ua/eng/rss/"
    assert settings.source("ukrainska-pravda").interval == timedelta(minutes=10)
    assert settings.source("dw").interval == timedelta(minutes=30)
    assert settings.source("dw").max_bytes == 10 * 2**20
    assert [t.name for t in settings.topics] == ["ukraine-war", "prisoners-of-war", "world"]
    assert settings.topic("ukraine-war").tags == ("news",)
    assert all(s.url.startswith("https://") for s in settings.sources)


def test_shipped_operator_config_reads_database_from_environment() -> None:
    env = {"AGGREGATOR_DATABASE": "postgresql+psycopg://agg@db/agg"}
    assert load_config(SHIPPED[0], env=env).database == "postgresql+psycopg://agg@db/agg"


def test_demo_config_points_at_files_in_the_repository() -> None:
    settings = load_config(SHIPPED[1], validate_query=accept, env={})
    assert settings.database == "sqlite:///data/demo.db"
    assert 6 <= len(settings.sources) <= 8
    for source in settings.sources:
        assert source.url.startswith("file:///")
        path = Path(source.url.removeprefix("file://"))
        assert path.is_file() and path.parent == ROOT / "config" / "demo-feeds"
    assert (ROOT / "config" / "demo-feeds" / "README.md").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_matches_json_schema(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), config_json_schema())


def test_json_schema_rejects_unknown_keys() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"sources": [{"name": "a", "url": "x", "intervall": "1m"}]}, schema)
    jsonschema.validate({"topics": [{"name": "t", "query": "q", "sources": ["a"]}]}, schema)


def as_yaml(settings: Settings) -> dict[str, Any]:
    """Settings written back as a config file (durations as seconds, sizes as bytes)."""
    return {
        "database": settings.database,
        "server": dataclasses.asdict(settings.server),
        "worker": dataclasses.asdict(settings.worker),
        "sources": [
            {
                **{k: getattr(s, k) for k in ("name", "url", "title", "timeout", "max_bytes", "user_agent")},
                **{"enabled": s.enabled, "tags": list(s.tags), "headers": dict(s.headers)},
                "interval": s.interval.total_seconds(),
            }
            for s in settings.sources
        ],
        "topics": [
            {
                **{k: getattr(t, k) for k in ("name", "query", "title", "description", "limit")},
                "sources": {"names": list(t.sources), "tags": list(t.tags)},
                "language": list(t.language),
                "collapse": t.collapse,
            }
            for t in settings.topics
        ],
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_round_trip(path: Path, tmp_path: Path) -> None:
    settings = load_config(path, env={})
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump(as_yaml(settings), allow_unicode=True), encoding="utf-8")
    again = load_config(copy, env={})
    assert dataclasses.replace(again, path=settings.path) == settings


# ---------------------------------------------------------------- values, defaults, environment


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("1h30m", 5400), ("1h 30m", 5400),
     ("1.5h", 5400), ("2 hours", 7200), ("1w", 604800), (45, 45), (0.5, 0.5), ("90", 90), (" 10M ", 600)],
)  # fmt: skip
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "m10", "-5s", "1h-30m", "5 parsecs", "1h 30"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [0, -1, "0s", 0.0, float("inf"), True, "99999999999999d"])
def test_parse_duration_rejects_zero_negative_and_absurd(value: Any) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("10MB", 10_000_000), ("512KB", 512_000), ("1.5MiB", 1_572_864), ("2kib", 2048), ("1GB", 10**9),
     ("100", 100), ("100B", 100), (4096, 4096), ("10 MB", 10_000_000)],
)  # fmt: skip
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("value", ["", "ten", "10XB", "10 M B", 0, -5, "0KB", True, "1.5.2MB"])
def test_parse_size_rejects_nonsense(value: Any) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(value)


def test_minimal_config_gets_every_default(cfg: Path) -> None:
    write("a.yaml", "sources:\n  - {name: one, url: 'https://example.org/feed'}\n")
    settings = load_config("a.yaml", env={})
    assert settings.path == cfg / "a.yaml"
    assert settings.database == DEFAULT_DATABASE
    assert settings.server == ServerSettings("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert (settings.worker.tick, settings.worker.threads) == (5.0, 4)
    assert settings.sources == (Source("one", "https://example.org/feed"),)
    assert settings.source("one").user_agent == DEFAULT_USER_AGENT
    assert settings.topics == ()
    with pytest.raises(KeyError):
        settings.source("two")
    with pytest.raises(KeyError):
        settings.topic("two")


def test_empty_file_and_empty_sources_are_allowed(cfg: Path) -> None:
    write("empty.yaml", "# nothing yet\n")
    assert load_config("empty.yaml", env={}).sources == ()
    write("a.yaml", "sources: []\ntopics:\n")
    assert load_config("a.yaml", env={}).sources == ()


def test_defaults_and_overrides(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        server: {host: 0.0.0.0, port: 9000}
        worker: {tick: 2s, threads: 2}
        defaults: {interval: 1h, timeout: 5s, max_bytes: 1MB, user_agent: test-agent}
        sources:
          - name: plain
            url: https://example.org/a
          - name: tuned
            url: http://example.org/b
            title: Tuned
            tags: [x, y.z]
            interval: 1s
            timeout: 0.5
            max_bytes: 2048
            user_agent: other
            headers: {X-Key: secret, X-Num: 5}
            enabled: false
        topics:
          - name: t
            query: anything
            sources: [plain, tuned]
            language: [EN, pt-BR]
        """,
    )
    settings = load_config("a.yaml", env={})
    assert settings.server.base_url == "http://localhost:9000"
    assert (settings.worker.tick, settings.worker.threads) == (2.0, 2)
    plain, tuned = settings.sources
    assert (plain.interval, plain.timeout, plain.max_bytes, plain.user_agent) == (
        timedelta(hours=1), 5.0, 1_000_000, "test-agent"
    )  # fmt: skip
    assert tuned == Source(
        "tuned", "http://example.org/b", "Tuned", ("x", "y.z"), timedelta(seconds=1), 0.5, 2048, "other",
        (("X-Key", "secret"), ("X-Num", "5")), enabled=False,
    )  # fmt: skip
    assert settings.topic("t").sources == ("plain", "tuned")
    assert settings.topic("t").language == ("en", "pt-br")


def test_base_url_loses_its_trailing_slash_and_ipv6_gets_brackets(cfg: Path) -> None:
    write("a.yaml", "server: {base_url: 'https://feeds.example.org/news/'}\n")
    assert load_config("a.yaml", env={}).server.base_url == "https://feeds.example.org/news"
    assert ServerSettings("::1", 80).base_url == "http://[::1]:80"


def test_relative_paths_become_file_urls_against_the_config_directory(cfg: Path) -> None:
    write(
        "conf/a.yaml",
        """
        sources:
          - {name: rel, url: feeds/x.xml}
          - {name: up, url: ../y.xml}
          - {name: abs, url: /srv/z.xml}
          - {name: uri, url: 'file:///srv/w.xml'}
        """,
    )
    settings = load_config("conf/a.yaml", env={})
    assert [s.url for s in settings.sources] == [
        (cfg / "conf" / "feeds" / "x.xml").as_uri(),
        (cfg / "y.xml").as_uri(),
        "file:///srv/z.xml",
        "file:///srv/w.xml",
    ]


def test_topic_sources_mapping_form(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources: [{name: a, url: 'https://e.org/a', tags: [news]}]
        topics:
          - {name: t, query: q, sources: {names: [a], tags: [news]}, collapse_duplicates: true, limit: 1}
        """,
    )
    topic = load_config("a.yaml", env={}).topic("t")
    assert (topic.sources, topic.tags, topic.collapse, topic.limit) == (("a",), ("news",), "article", 1)
    write("b.yaml", "topics: [{name: t, query: q, sources: null}]\n")
    assert load_config("b.yaml", env={}).topic("t").sources == ()


def test_environment_substitution(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        database: ${DB}
        server: {port: "${PORT:-8181}", host: "${HOST:-::1}"}
        sources:
          - name: a
            url: https://e.org/${FEED:-default}.xml
            headers: {Authorization: "Bearer ${TOKEN}", Literal: "$${NOT_ENV}", Empty: "[${EMPTY}]"}
        """,
    )
    env = {"DB": "sqlite:///x.db", "TOKEN": "t0k", "EMPTY": "", "HOST": ""}
    settings = load_config("a.yaml", env=env)
    assert settings.database == "sqlite:///x.db"
    assert (settings.server.port, settings.server.host) == (8181, "::1")
    assert settings.source("a").url == "https://e.org/default.xml"
    assert dict(settings.source("a").headers) == {
        "Authorization": "Bearer t0k", "Literal": "${NOT_ENV}", "Empty": "[]"
    }  # fmt: skip


def test_environment_defaults_to_os_environ(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGG_TEST_DB", "sqlite:///from-env.db")
    write("a.yaml", "database: ${AGG_TEST_DB}\n")
    assert load_config("a.yaml").database == "sqlite:///from-env.db"


def test_includes_are_appended_in_order_and_resolve_relative_to_their_file(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        include: [more/b.yaml]
        sources: [{name: a, url: a.xml}]
        topics: [{name: ta, query: q, sources: [c]}]
        """,
    )
    write("more/b.yaml", "include: [deeper/c.yaml]\nsources: [{name: b, url: b.xml}]\n")
    write(
        "more/deeper/c.yaml",
        "sources: [{name: c, url: c.xml, tags: [deep]}]\ntopics: [{name: tc, query: q}]\n",
    )
    settings = load_config("a.yaml", env={})
    assert [s.name for s in settings.sources] == ["a", "b", "c"]
    assert [t.name for t in settings.topics] == ["ta", "tc"]
    assert settings.source("c").url == (cfg / "more" / "deeper" / "c.xml").as_uri()


# ---------------------------------------------------------------- one broken config per kind of mistake


def test_unknown_key_suggests_the_close_match(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources:
          - name: one
            url: https://e.org/a
            intervall: 10m
        """,
    )
    assert only_problem() == "a.yaml:4: sources[0].intervall: unknown key (did you mean 'interval'?)"


def test_unknown_keys_at_every_level(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        databse: sqlite:///x.db
        server: {prot: 1}
        topics:
          - name: t
            query: q
            sources: {nmes: [x]}
            colapse_duplicates: true
        zzz: 1
        """,
    )
    assert problems() == [
        "a.yaml:1: databse: unknown key (did you mean 'database'?)",
        "a.yaml:2: server.prot: unknown key (did you mean 'port'?)",
        "a.yaml:6: topics[0].sources.nmes: unknown key (did you mean 'names'?)",
        "a.yaml:7: topics[0].colapse_duplicates: unknown key (did you mean 'collapse_duplicates'?)",
        "a.yaml:8: zzz: unknown key (expected one of: include, sources, topics, database, database_pool,"
        " server, worker, defaults, retention, websub)",
    ]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("server: {port: eighty}", "a.yaml:1: server.port: expected a whole number (got 'eighty')"),
        ("server: {port: 70000}", "a.yaml:1: server.port: must be at most 65535 (got 70000)"),
        ("server: [1]", "a.yaml:1: server: expected a mapping (key: value pairs) (got a list)"),
        ("worker: {threads: 0}", "a.yaml:1: worker.threads: must be at least 1 (got 0)"),
        ("sources: {name: a}", "a.yaml:1: sources: expected a list (got a mapping)"),
        ("sources: all of them", "a.yaml:1: sources: expected a list (got 'all of them')"),
        ("include: more.yaml", "a.yaml:1: include: expected a list (got 'more.yaml')"),
        ("sources: [{name: a, url: 'https://e.org', enabled: maybe}]",
         "a.yaml:1: sources[0].enabled: expected true or false (got 'maybe')"),
        ("sources: [{name: a, url: 'https://e.org', tags: news}]",
         "a.yaml:1: sources[0].tags: expected a list (got 'news')"),
        ("sources: [{name: a, url: 'https://e.org', headers: [a]}]",
         "a.yaml:1: sources[0].headers: expected a mapping (key: value pairs) (got a list)"),
        ("sources: [{name: a, url: 'https://e.org', title: {x: 1}}]",
         "a.yaml:1: sources[0].title: expected a text value (got a mapping)"),
        ("sources: [just-a-string]",
         "a.yaml:1: sources[0]: expected a mapping (key: value pairs) (got 'just-a-string')"),
        ("topics: [{name: t, query: q, limit: 0}]", "a.yaml:1: topics[0].limit: must be at least 1 (got 0)"),
        ("topics: [{name: t, query: q, limit: 1001}]",
         "a.yaml:1: topics[0].limit: must be at most 1000 (got 1001)"),
        ("topics: [{name: t, query: q, sources: bbc}]",
         "a.yaml:1: topics[0].sources: expected a list of source names, or a mapping with 'names'"
         " and/or 'tags'"),
        ("topics: [{name: t, query: q, language: [en, no]}]",
         "a.yaml:1: topics[0].language[1]: expected a text value (got False); YAML reads"
         " yes/no/on/off/true/false as booleans: quote the value"),
        ("topics: [{name: t, query: q, language: [english]}]",
         "a.yaml:1: topics[0].language[0]: 'english' is not a language code like 'en', 'uk' or 'pt-br'"),
        ("topics: [{name: t, query: '  '}]", "a.yaml:1: topics[0].query: must not be empty"),
        ("topics: [{name: t, query: }]", "a.yaml:1: topics[0].query: expected a text value (got nothing)"),
        ("worker: {threads: .inf}", "a.yaml:1: worker.threads: input should be a finite number"),
        ("worker: {threads: 2.5}", "a.yaml:1: worker.threads: expected a whole number (got 2.5)"),
    ],
)  # fmt: skip
def test_wrong_types_and_ranges(cfg: Path, yaml_text: str, expected: str) -> None:
    write("a.yaml", yaml_text + "\n")
    assert only_problem() == expected


def test_missing_required_keys(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources:
          - name: a
        topics:
          - query: q
        """,
    )
    assert problems() == [
        "a.yaml:2: sources[0].url: required key is missing",
        "a.yaml:4: topics[0].name: required key is missing",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10 parsecs", "invalid duration '10 parsecs': write seconds or a number with a unit, e.g. 30s, 10m,"
         " 1h30m, 2d"),
        ("0s", "invalid duration '0s': must be greater than zero"),
        ("-5", "invalid duration -5: must be greater than zero"),
        ("0.5", "interval 0.5 is too short: the minimum is 1 second"),
        ("[10m]", "invalid duration ['10m']: write seconds or a number with a unit, e.g. 30s, 10m, 1h30m,"
         " 2d"),
    ],
)  # fmt: skip
def test_bad_durations(cfg: Path, value: str, message: str) -> None:
    write("a.yaml", f"sources:\n  - name: a\n    url: https://e.org\n    interval: {value}\n")
    assert only_problem() == f"a.yaml:4: sources[0].interval: {message}"


def test_bad_durations_in_defaults_and_worker(cfg: Path) -> None:
    write("a.yaml", "worker:\n  tick: soon\ndefaults:\n  timeout: 0\n")
    found = problems()
    assert found[0].startswith("a.yaml:2: worker.tick: invalid duration 'soon'")
    assert found[1] == "a.yaml:4: defaults.timeout: invalid duration 0: must be greater than zero"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10XB", "invalid size '10XB': write bytes or a number with a unit, e.g. 512KB, 10MB, 1.5MiB"),
        ("0", "invalid size 0: must be at least 1 byte"),
        ("yes", "invalid size True: write bytes or a number with a unit, e.g. 512KB, 10MB, 1.5MiB"),
    ],
)
def test_bad_sizes(cfg: Path, value: str, message: str) -> None:
    write("a.yaml", f"defaults:\n  interval: 1m\n  max_bytes: {value}\n")
    assert only_problem() == f"a.yaml:3: defaults.max_bytes: {message}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://e.org/feed", "unsupported URL scheme 'ftp' in 'ftp://e.org/feed': use http://, https://, file://"
         " or a path"),
        ("feed://e.org/rss", "unsupported URL scheme 'feed' in 'feed://e.org/rss': use http://, https://,"
         " file:// or a path"),
        ("https:///no-host", "'https:///no-host' is not an http:// or https:// URL"),
        ("file://feeds/x.xml", "'file://feeds/x.xml': a file:// URL must be absolute (file:///path); write a"
         " relative path without file://"),
        ("''", "must not be empty"),
    ],
)  # fmt: skip
def test_bad_source_urls(cfg: Path, url: str, message: str) -> None:
    write("a.yaml", f"sources:\n  - name: a\n    url: {url}\n")
    assert only_problem() == f"a.yaml:3: sources[0].url: {message}"


def test_bad_database_and_base_url(cfg: Path) -> None:
    write("a.yaml", "database: data/aggregator.db\nserver:\n  base_url: localhost:8080\n")
    assert problems() == [
        "a.yaml:1: database: 'data/aggregator.db' is not a database URL: write e.g."
        " sqlite:///data/aggregator.db or postgresql+psycopg://user@host/db",
        "a.yaml:3: server.base_url: 'localhost:8080' is not an http:// or https:// URL",
    ]


def test_bad_slugs_and_tags(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources:
          - name: BBC World
            url: https://e.org
            tags: [news, World News]
        topics:
          - name: -dash
            query: q
        """,
    )
    rule = "use lower-case letters, digits, '-', '_', '.'"
    assert problems() == [
        f"a.yaml:2: sources[0].name: 'BBC World' is not a valid name: {rule}",
        f"a.yaml:4: sources[0].tags[1]: 'World News' is not a valid tag: {rule}",
        f"a.yaml:6: topics[0].name: '-dash' is not a valid name: {rule}",
    ]


def test_duplicate_names(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources:
          - {name: a, url: 'https://e.org/1'}
          - {name: a, url: 'https://e.org/2'}
        topics:
          - {name: t, query: q}
          - {name: t, query: r}
        """,
    )
    assert problems() == [
        "a.yaml:3: sources[1].name: duplicate source name 'a' (first at a.yaml:2)",
        "a.yaml:6: topics[1].name: duplicate topic name 't' (first at a.yaml:5)",
    ]


def test_duplicate_yaml_keys(cfg: Path) -> None:
    write("a.yaml", "sources:\n  - name: a\n    url: https://e.org\n    url: https://e.org/2\n")
    assert only_problem() == "a.yaml:4: sources[0].url: duplicate key 'url' (only the last one would count)"


def test_yaml_merge_keys_are_not_duplicates(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources:
          - &base {name: a, url: 'https://e.org/a', interval: 5m}
          - {<<: *base, name: b, interval: 7m}
        """,
    )
    assert load_config("a.yaml", env={}).source("b").interval == timedelta(minutes=7)


def test_topic_references_unknown_sources_and_tags(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        sources:
          - {name: bbc-world, url: 'https://e.org/1', tags: [news, world]}
        topics:
          - name: t
            query: q
            sources: [bbc-wrld, nothing-like-it]
          - name: u
            query: q
            sources: {names: [bbc-world, bbc-wrld], tags: [newz]}
        """,
    )
    assert problems() == [
        "a.yaml:6: topics[0].sources[0]: unknown source 'bbc-wrld' (did you mean 'bbc-world'?)",
        "a.yaml:6: topics[0].sources[1]: unknown source 'nothing-like-it'",
        "a.yaml:9: topics[1].sources.names[1]: unknown source 'bbc-wrld' (did you mean 'bbc-world'?)",
        "a.yaml:9: topics[1].sources.tags[0]: no source has the tag 'newz' (did you mean 'news'?)",
    ]


def test_bad_query(cfg: Path) -> None:
    write("a.yaml", "topics:\n  - name: t\n    query: a OR OR b\n  - name: u\n    query: fine\n")
    assert only_problem(validate_query=reject_or) == (
        "a.yaml:3: topics[0].query: expected a word after OR at offset 7"
    )


def test_unset_environment_variable(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        server:
          port: ${PORT}
        sources:
          - name: a
            url: https://e.org
            headers: {X-Key: "${API_KEY}", Y: "${oops"}
        """,
    )
    assert problems(env={}) == [
        "a.yaml:2: server.port: environment variable PORT is not set"
        " (write ${PORT:-default} to give a default)",
        "a.yaml:6: sources[0].headers.X-Key: environment variable API_KEY is not set"
        " (write ${API_KEY:-default} to give a default)",
        "a.yaml:6: sources[0].headers.Y: malformed '${': write ${NAME} or ${NAME:-default}"
        " ($${ for a literal '${')",
    ]


def test_yaml_syntax_error(cfg: Path) -> None:
    write("a.yaml", "sources:\n  - name: a\n    url: https://e.org\n  tags: [x\n")
    found = only_problem()
    assert found == (
        "a.yaml:4: YAML syntax error: while parsing a block collection on line 2: expected <block end>,"
        " but found '?'"
    )


def test_yaml_syntax_error_in_an_included_file(cfg: Path) -> None:
    write("a.yaml", "include: [b.yaml]\n")
    write("b.yaml", "sources:\n  - name: a\n   url: x\n")
    assert only_problem().startswith("b.yaml:3: YAML syntax error: while parsing a block")


def test_yaml_with_several_documents(cfg: Path) -> None:
    write("a.yaml", "sources: []\n---\ntopics: []\n")
    assert only_problem() == (
        "a.yaml:2: YAML syntax error: expected a single document in the stream on line 1:"
        " but found another document"
    )


def test_control_character_in_yaml(cfg: Path) -> None:
    Path("a.yaml").write_text("sources: []\n# a bell \x07 here\n", encoding="utf-8")
    assert only_problem() == "a.yaml:2: YAML syntax error: control character U+0007 is not allowed"


def test_top_level_must_be_a_mapping(cfg: Path) -> None:
    write("a.yaml", "- name: a\n  url: x\n")
    assert only_problem() == (
        "a.yaml:1: expected a mapping of keys (database:, sources:, topics:, ...) at the top"
    )


def test_missing_and_unreadable_main_file(cfg: Path) -> None:
    assert only_problem("nope.yaml") == "nope.yaml: file not found"
    Path("dir.yaml").mkdir()
    assert only_problem("dir.yaml") == "dir.yaml: cannot read: Is a directory"
    Path("latin1.yaml").write_bytes(b"sources: []\n# caf\xe9\n")
    assert only_problem("latin1.yaml") == "latin1.yaml:2: not UTF-8 text (byte 0xe9): save the file as UTF-8"


def test_unreadable_include(cfg: Path) -> None:
    write("a.yaml", "include: [sub]\n")
    Path("sub").mkdir()
    assert only_problem() == "a.yaml:1: include[0]: cannot read sub: Is a directory"


def test_missing_include(cfg: Path) -> None:
    write("a.yaml", "sources: []\ninclude:\n  - more/sources.yaml\n")
    assert only_problem() == "a.yaml:3: include[0]: file not found: more/sources.yaml"


def test_include_cycle(cfg: Path) -> None:
    write("a.yaml", "include: [sub/b.yaml]\n")
    write("sub/b.yaml", "include: [c.yaml]\n")
    write("sub/c.yaml", "sources: []\ninclude: [../a.yaml]\n")
    assert (
        only_problem()
        == "sub/c.yaml:2: include[0]: include cycle: a.yaml -> sub/b.yaml -> sub/c.yaml -> a.yaml"
    )


def test_file_included_twice(cfg: Path) -> None:
    write("a.yaml", "include: [b.yaml, c.yaml]\n")
    write("b.yaml", "include: [c.yaml]\n")
    write("c.yaml", "sources: [{name: c, url: c.xml}]\n")
    assert only_problem() == "a.yaml:1: include[1]: c.yaml is already included (as c.yaml)"


def test_main_only_keys_in_an_included_file(cfg: Path) -> None:
    write("a.yaml", "include: [b.yaml]\n")
    write("b.yaml", "sources: []\ndatabase: sqlite:///other.db\ndefaults: {interval: 1m}\n")
    assert problems() == [
        "b.yaml:2: database: 'database' is only allowed in the main config file",
        "b.yaml:3: defaults: 'defaults' is only allowed in the main config file",
    ]


def test_every_problem_in_every_file_is_reported_in_order(cfg: Path) -> None:
    write(
        "a.yaml",
        """
        server: {port: x}
        include: [b.yaml]
        sources:
          - {name: a, url: 'https://e.org', interval: never}
          - {name: b, url: 'https://e.org'}
        topics:
          - {name: t, query: q, sources: [a, b, c, d]}
        """,
    )
    write("b.yaml", "sources:\n  - {name: c, url: 'gopher://x'}\n  - {name: a, url: a.xml}\n")
    with pytest.raises(ConfigError) as info:
        load_config("a.yaml", env={})
    found = info.value.problems
    assert [p.split(":")[0:2] for p in found] == [
        ["a.yaml", "1"], ["a.yaml", "4"], ["a.yaml", "7"], ["b.yaml", "2"], ["b.yaml", "3"]
    ]  # fmt: skip
    assert "topics[0].sources[3]: unknown source 'd'" in found[2]  # c is known though it has a problem
    assert str(info.value).startswith("a.yaml: 5 problems\n  a.yaml:1: server.port:")


def test_keys_that_are_not_text_are_unknown_keys(cfg: Path) -> None:
    write("a.yaml", "sources:\n  - {name: a, url: x.xml, 5: y}\n1: x\n")
    assert problems() == [
        "a.yaml:2: sources[0].5: unknown key (expected one of: name, url, title, tags, interval, timeout,"
        " max_bytes, user_agent, headers, enabled, auth, allow_private, strip_params, boilerplate)",
        "a.yaml:3: 1: unknown key (expected one of: include, sources, topics, database, database_pool,"
        " server, worker, defaults, retention, websub)",
    ]


def test_bad_include_entries(cfg: Path) -> None:
    write("a.yaml", "include:\n  - ''\n  - {file: b.yaml}\n  - 7\n")
    assert problems() == [
        "a.yaml:2: include[0]: must not be empty",
        "a.yaml:3: include[1]: expected a text value (got a mapping)",
        "a.yaml:4: include[2]: file not found: 7",
    ]
