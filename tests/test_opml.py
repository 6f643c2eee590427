"""`opml export` / `opml import FILE`: real OPML files as Miniflux, FreshRSS, newsboat and an old reader
write them, the config file edited in place (comments kept), hostile files refused, and the imported
sources polled from a server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import REAL, FeedServer
from runcli import RUN, environment, finish, start, table

from aggregator import opml
from aggregator.config import load_config
from aggregator.errors import ConfigError
from aggregator.model import Source

DATA = Path(__file__).parent / "data" / "opml"


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return finish(start(cwd, *args, env=env))


def plan(name: str, existing: tuple[Source, ...] = ()) -> opml.ImportPlan:
    return opml.plan_import(opml.parse_opml((DATA / name).read_bytes(), name), existing)


def added(p: opml.ImportPlan) -> dict[str, dict[str, object]]:
    return {a.entry["name"]: a.entry for a in p.added}


# ---------------------------------------------------------------- reading real-world OPML


def test_miniflux_categories_become_tags_and_titles_give_names() -> None:
    p = plan("miniflux.opml")
    assert list(added(p)) == [
        "bbc-news-home",
        "cnn-com-rss-channel-app-international-edition",
        "al-jazeera-breaking-news-world-news-and-video",  # cut at a word boundary
        "daring-fireball",
    ]
    bbc = added(p)["bbc-news-home"]
    assert bbc == {
        "name": "bbc-news-home",
        "title": "BBC News - Home",
        "url": "http://feeds.example/bbc.xml",
        "tags": ["news"],
    }
    assert added(p)["al-jazeera-breaking-news-world-news-and-video"]["tags"] == ["world-politics"]
    assert not p.skipped and not p.problems


def test_freshrss_duplicate_names_urls_and_feed_scheme() -> None:
    p = plan("freshrss.opml")
    entries = added(p)
    assert entries["blog"]["url"] == "https://alice.example/feed.xml"
    assert entries["blog-2"]["url"] == "https://bob.example/atom.xml"  # same title: a unique name
    assert entries["blog-2"]["tags"] == ["friends"]
    assert entries["cafe-society"]["url"] == "http://cafe.example/rss"  # feed:// undone
    assert entries["cafe-society"]["title"] == "Café Society"
    # the same feed again (host case, default port, fragment): skipped, naming the first
    [(feed, why)] = p.skipped
    assert feed.line == 15 and why == "a duplicate of line 9 in this file"
    assert "frss" not in str(entries)  # other readers' namespaced attributes are not options


def test_newsboat_outlines_without_text_are_named_by_title_or_url() -> None:
    entries = added(plan("newsboat.opml"))
    assert entries["lwn-net"]["title"] == "LWN.net"
    assert entries["example-com"] == {"name": "example-com", "url": "https://www.example.com/feeds/rss.xml"}
    assert "hacker-news" in entries


def test_opml_1_latin1_nested_categories_comments_and_includes() -> None:
    p = plan("legacy-latin1.opml")
    entries = added(p)
    assert entries["le-telegramme"]["title"] == "Le Télégramme"
    assert entries["le-telegramme"]["tags"] == ["francais", "presse-regionale"]  # both enclosing outlines
    assert entries["berkman"]["tags"] == ["harvard", "berkman", "politics"]  # category="/Harvard/Berkman,..."
    assert [why for _, why in p.ignored] == [
        "commented out (isComment)",
        "an OPML include (https://lists.example/more.opml) is not followed",
    ]


def test_undeclared_windows_1252_is_read() -> None:
    data = '<opml><body><outline text="Caf\u00e9 \u201cnews\u201d" xmlUrl="https://c.example/rss"/></body></opml>'
    doc = opml.parse_opml(data.encode("cp1252"), "old.opml")
    assert doc.feeds[0].text == "Café “news”"


def test_urls_already_configured_are_skipped_and_names_stay_unique() -> None:
    existing = (
        Source(name="bbc-news-home", url="http://other.example/feed"),
        Source(name="cnn", url="HTTP://Feeds.Example:80/cnn.xml"),
    )
    p = plan("miniflux.opml", existing)
    assert [(f.line, why) for f, why in p.skipped] == [(10, "already configured as 'cnn'")]
    assert "bbc-news-home-2" in added(p)


def test_non_latin_categories_give_no_tag_and_say_so() -> None:
    data = '<opml version="2.0"><body><outline text="Новини"><outline text="УП" xmlUrl="https://www.pravda.com.ua/rss/"/></outline></body></opml>'
    [a] = opml.plan_import(opml.parse_opml(data.encode(), "ua.opml"), []).added
    assert a.entry == {"name": "pravda-com-ua", "title": "УП", "url": "https://www.pravda.com.ua/rss/"}
    assert a.notes == ("category 'Новини' gives no tag (tags use a-z, 0-9, '-', '_', '.')",)


def test_environment_references_from_a_file_are_kept_literal_unless_trusted() -> None:
    data = b'<opml><body><outline text="x" xmlUrl="https://evil.example/?k=${HOME}"/></body></opml>'
    doc = opml.parse_opml(data, "evil.opml")
    [a] = opml.plan_import(doc, []).added
    assert a.entry["url"] == "https://evil.example/?k=$${HOME}"  # the loader reads $${ as a literal ${
    [trusted] = opml.plan_import(doc, [], keep_env=True).added
    assert trusted.entry["url"] == "https://evil.example/?k=${HOME}"


# ---------------------------------------------------------------- editing the config text


BLOCK = """\
# my sources
database: sqlite:///x.db
sources:
  # the first one
  - name: one   # trailing comment
    url: https://one.example/rss
    tags: [a]

  - name: two
    url: 'https://two.example/rss'
    # interval: 5m   (a commented-out option of the last source)

# the topics
topics:
  - {name: t, query: '*'}
"""
NEW = [{"name": "three", "url": "https://three.example/rss", "tags": ["b", "c"]}]


def test_append_keeps_every_byte_and_follows_the_spacing_of_the_list() -> None:
    out = opml.append_sources(BLOCK, NEW)
    head, _, tail = BLOCK.partition("    url: 'https://two.example/rss'\n")
    assert (
        out
        == head
        + (
            "    url: 'https://two.example/rss'\n"
            "\n"
            "  - name: three\n"
            "    url: https://three.example/rss\n"
            "    tags: [b, c]\n"
        )
        + tail
    )
    assert [s["name"] for s in yaml.safe_load(out)["sources"]] == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("database: sqlite:///x.db\n", "database: sqlite:///x.db\nsources:\n  - name: three\n"),
        ("# only a comment", "# only a comment\nsources:\n  - name: three\n"),
        ("sources: []  # none yet\ntopics: []\n", "sources:  # none yet\n  - name: three\n"),
        ("sources:\ntopics: []\n", "sources:\n  - name: three\n"),
        ("sources: null\n", "sources:\n  - name: three\n"),
        ("sources:\n- name: one\n  url: /x.xml", "sources:\n- name: one\n  url: /x.xml\n- name: three\n"),
        (
            "sources:\n    -   name: one\n        url: /x\n",
            "        url: /x\n    -   name: three\n        url: ",
        ),
        ("sources: [{name: one, url: /x}]  # flow\n", "sources: [{name: one, url: /x}, {name: three, url: "),
    ],
)
def test_append_into_every_shape_of_sources(text: str, expect: str) -> None:
    if "\n" in text:  # Windows line ends stay Windows ones
        crlf = opml.append_sources(text.replace("\n", "\r\n"), NEW)
        assert crlf == opml.append_sources(text, NEW).replace("\n", "\r\n")
    out = opml.append_sources(text, NEW)
    assert expect in out
    names = [s["name"] for s in yaml.safe_load(out)["sources"]]
    assert names[-1] == "three" and len(names) == text.count("name: one") + 1
    if "topics" in text:
        assert yaml.safe_load(out)["topics"] == []


# ---------------------------------------------------------------- the commands


def write_config(folder: Path, sources: str = "sources: []\n") -> Path:
    path = folder / "aggregator.yaml"
    path.write_text(
        "# Operator's notes: keep me.\n"
        f"database: sqlite:///{folder}/store.db   # next to the config\n"
        "\n"
        "defaults: {interval: 30m}\n"
        f"{sources}"
        "\n# topics come later\n",
        encoding="utf-8",
    )
    return path


ROUND_TRIP_SOURCES = """\
sources:
  - name: members
    title: Members only
    url: https://members.example/rss
    tags: [ukraine, news]
    interval: 10m
    timeout: 5s
    max_bytes: 2MB
    user_agent: "reader (+https://me.example)"
    headers: {X-Api-Key: "${MEMBERS_KEY}", Accept-Language: uk}
    auth: {username: reader, password_env: MEMBERS_PASSWORD}
    enabled: false
    allow_private: true
    strip_params: [sessionid]
    boilerplate: ['Photograph: .{1,80}']
  - name: plain
    url: https://plain.example/feed.xml
  - name: local
    title: A file
    url: feeds/local.xml
    tags: [local]
"""


def test_round_trip_export_then_import_into_an_empty_config_gives_the_same_sources(tmp_path: Path) -> None:
    env = environment(MEMBERS_KEY="k-123", MEMBERS_PASSWORD="p-456")
    first = tmp_path / "a"
    first.mkdir()
    original = write_config(first, ROUND_TRIP_SOURCES)
    exported = cli(first, "opml", "export", "--config", str(original), env=env)
    assert exported.returncode == 0, exported.stderr
    assert "k-123" not in exported.stdout and "p-456" not in exported.stdout  # no secret leaves
    assert "${MEMBERS_KEY}" in exported.stdout and "MEMBERS_PASSWORD" in exported.stdout
    ET.fromstring(exported.stdout.encode())  # well-formed
    (tmp_path / "export.opml").write_text(exported.stdout, encoding="utf-8")

    second = tmp_path / "b"
    second.mkdir()
    target = write_config(second)
    before = target.read_text(encoding="utf-8")
    done = cli(second, "opml", "import", "../export.opml", "--config", str(target), "--keep-env", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table(done.stdout)
    assert [rows[line][2] for line in sorted(rows)] == ["added", "added", "added"]
    assert "3 added, 0 skipped, 0 problems" in done.stdout

    environ = {"MEMBERS_KEY": "k-123", "MEMBERS_PASSWORD": "p-456"}
    assert load_config(target, env=environ).sources == load_config(original, env=environ).sources
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# Operator's notes: keep me.\n") and text.endswith("\n# topics come later\n")
    assert "# next to the config" in text
    assert text.startswith(before.partition("sources: []")[0] + "sources:\n  - name: members\n")

    again = cli(second, "opml", "import", "../export.opml", "--config", str(target), env=env)
    assert again.returncode == 0 and "0 added, 3 skipped, 0 problems" in again.stdout
    assert "already configured as 'members'" in again.stdout
    assert target.read_text(encoding="utf-8") == text


def test_export_leaves_secrets_out_and_says_so(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "sources:\n"
        "  - name: s\n"
        "    url: https://user:hunter2@private.example/rss\n"
        "    headers: {Authorization: Bearer abc123, Cookie: 'sid=xyz', X-Trace: 'on-${HOSTNAME:-x}'}\n",
    )
    out = tmp_path / "sources.opml"
    done = cli(tmp_path, "opml", "export", "--out", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    body = out.read_text(encoding="utf-8")
    for secret in ("hunter2", "abc123", "sid=xyz"):
        assert secret not in body
    assert 'xmlUrl="https://user@private.example/rss"' in body
    assert "X-Trace" in body  # not a secret-looking name: kept as written
    assert "the password in its URL is not exported" in done.stderr
    assert "header Authorization is not exported" in done.stderr and "header Cookie" in done.stderr
    assert "exported 1 sources to" in done.stderr and done.stdout == ""


def test_export_reads_the_options_of_included_files_as_written(tmp_path: Path) -> None:
    (tmp_path / "more.yaml").write_text(
        "sources:\n  - {name: inc, url: 'https://inc.example/rss', interval: '${POLL:-15m}', tags: [x]}\n"
    )
    config = write_config(tmp_path, "include: [more.yaml]\nsources: []\n")
    done = cli(tmp_path, "opml", "export", "--config", str(config))
    assert done.returncode == 0, done.stderr
    [outline] = [o for o in ET.fromstring(done.stdout.encode()).iter("outline") if o.get("xmlUrl")]
    assert outline.get(f"{{{opml.NS}}}name") == "inc"
    assert outline.get(f"{{{opml.NS}}}interval") == "${POLL:-15m}"  # as written, not as expanded


def test_export_without_a_readable_store_leaves_out_html_url_and_says_why(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sources:\n  - {name: s, url: 'https://s.example/rss'}\n")
    done = cli(tmp_path, "opml", "export", "--config", str(config))  # no store yet: nothing to say
    assert done.returncode == 0 and done.stderr == "" and "htmlUrl" not in done.stdout
    (tmp_path / "store.db").write_bytes(b"not a database" * 100)
    done = cli(tmp_path, "opml", "export", "--config", str(config))
    assert done.returncode == 0 and 'xmlUrl="https://s.example/rss"' in done.stdout
    assert done.stderr.startswith("warning: htmlUrl left out: cannot read the store sqlite:///"), done.stderr


def test_export_groups_by_first_tag_and_keeps_every_tag(tmp_path: Path) -> None:
    config = write_config(tmp_path, ROUND_TRIP_SOURCES)
    env = environment(MEMBERS_KEY="k", MEMBERS_PASSWORD="p")
    done = cli(tmp_path, "opml", "export", "--config", str(config), env=env)
    root = ET.fromstring(done.stdout.encode())
    assert root.get("version") == "2.0"
    groups = {o.get("text"): o for o in root.find("body") or []}
    assert list(groups) == ["ukraine", "plain", "local"]
    [member] = list(groups["ukraine"])
    assert member.get("category") == "ukraine,news" and member.get("type") == "rss"
    assert member.get(f"{{{opml.NS}}}interval") == "10m"
    assert member.get(f"{{{opml.NS}}}enabled") == "false"
    assert groups["plain"].get("text") == "plain" and groups["plain"].get("title") is None
    assert all(o.get("text") for o in root.iter("outline"))  # OPML 2.0: every outline has text


def test_imported_config_passes_check_config_and_fetch_all_polls_it(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    if not REAL.exists():
        pytest.skip("shared corpus missing")
    for path, name in {
        "/bbc.xml": "bbc-news-1.xml",
        "/cnn.xml": "cnn-1.xml",
        "/aljazeera.xml": "aljazeera-1.xml",
        "/fireball.json": "daringfireball-3.json",
    }.items():
        feed_server.routes[path] = REAL / name
    body = (DATA / "miniflux.opml").read_text(encoding="utf-8")
    (tmp_path / "subscriptions.opml").write_text(body.replace("http://feeds.example", feed_server.url("")))
    config = write_config(tmp_path)

    done = cli(tmp_path, "opml", "import", "subscriptions.opml", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    checked = cli(tmp_path, "check-config", "--config", str(config))
    assert checked.returncode == 0 and "OK: 4 sources" in checked.stdout, checked.stderr
    fetched = cli(tmp_path, "fetch", "--all", "--config", str(config))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "4 sources polled" in fetched.stdout
    assert feed_server.hits == {"/bbc.xml": 1, "/cnn.xml": 1, "/aljazeera.xml": 1, "/fireball.json": 1}
    assert re.search(r"4 sources polled, [1-9]\d* new items, 0 failed", fetched.stdout), fetched.stdout
    exported = cli(tmp_path, "export", "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    stored = {json.loads(line)["source"] for line in exported.stdout.splitlines()}
    assert stored == {  # items from each imported source
        "bbc-news-home",
        "cnn-com-rss-channel-app-international-edition",
        "daring-fireball",
        "al-jazeera-breaking-news-world-news-and-video",
    }
    # after a poll the store knows each outlet's site: the export carries it as htmlUrl
    done = cli(tmp_path, "opml", "export", "--config", str(config))
    outlines = [o for o in ET.fromstring(done.stdout.encode()).iter("outline") if o.get("xmlUrl")]
    sites = {o.get(f"{{{opml.NS}}}name"): o.get("htmlUrl") or "" for o in outlines}
    assert len(sites) == 4 and all(site.startswith(("http://", "https://")) for site in sites.values()), sites


def test_a_windows_config_keeps_its_bytes_and_line_ends(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    original = config.read_bytes().replace(b"\n", b"\r\n")
    config.write_bytes(original)
    done = cli(tmp_path, "opml", "import", str(DATA / "newsboat.opml"), "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    after = config.read_bytes()
    assert after.count(b"\n") == after.count(b"\r\n") and b"  - name: lwn-net\r\n" in after
    assert after.startswith(original.partition(b"sources: []")[0] + b"sources:\r\n  - name: lwn-net")
    assert after.endswith(b"\r\n# topics come later\r\n")


def test_dry_run_writes_nothing_and_shows_the_yaml(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = config.read_bytes()
    done = cli(tmp_path, "opml", "import", str(DATA / "newsboat.opml"), "--dry-run", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "dry run: 3 added, 0 skipped, 0 problems" in done.stdout
    assert "  - name: lwn-net" in done.stdout
    assert config.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aggregator.yaml"]  # no temporary file left


HOSTILE = {
    "xxe": (
        b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<opml><body><outline text="&x;" xmlUrl="https://a.example/"/></body></opml>',
        "refused: the file declares XML entities (<!ENTITY>), which OPML never needs",
    ),
    "laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<opml><body><outline text="&b;" xmlUrl="https://a.example/"/></body></opml>',
        "refused: the file declares XML entities",
    ),
    "utf16-laughs": (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE l [<!ENTITY a "aa">]><opml/>'.encode("utf-16"),
        "refused: the file declares XML entities",
    ),
    "rss": (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>',
        "not an OPML file: the document is <rss>, not <opml>",
    ),
    "html": (
        b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><p>Hello<br></body></html>",
        "not an OPML file: XML error at line 1: Opening and ending tag mismatch",
    ),
    "truncated": (
        b'<opml version="2.0"><body><outline text="a" xmlUrl="https://a.example/"',
        "not an OPML file: XML error at line 1",
    ),
    "empty": (b"  \n", "not an OPML file: the file is empty"),
    "no-body": (b'<opml version="2.0"><head/></opml>', "not an OPML file: <opml> has no <body>"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_or_malformed_opml_is_one_clear_line_and_exit_2(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE[case]
    (tmp_path / "in.opml").write_bytes(data)
    config = write_config(tmp_path)
    before = config.read_bytes()
    done = cli(tmp_path, "opml", "import", "in.opml", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: in.opml: {message}")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert config.read_bytes() == before


def test_unusable_outlines_write_nothing_and_name_file_and_outline(tmp_path: Path) -> None:
    (tmp_path / "in.opml").write_text(
        '<opml version="2.0"><body>\n'
        '<outline text="Good" xmlUrl="https://good.example/rss"/>\n'
        '<outline text="Gopher" type="rss" xmlUrl="gopher://old.example/1"/>\n'
        '<outline text="Empty" type="rss"/>\n'
        f'<outline text="Odd" xmlUrl="https://odd.example/rss" xmlns:a="{opml.NS}" a:colour="red"/>\n'
        '<outline text="Blank" xmlUrl=" "/>\n'
        f'<outline text="On" xmlUrl="https://on.example/rss" xmlns:a="{opml.NS}" a:enabled="yes"/>\n'
        "</body></opml>\n",
        encoding="utf-8",
    )
    config = write_config(tmp_path)
    before = config.read_bytes()
    done = cli(tmp_path, "opml", "import", "in.opml", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: in.opml: 5 problems; nothing imported",
        "  in.opml: outline 'Empty' (line 4): type=rss but no xmlUrl: the feed's URL is missing",
        "  in.opml: outline 'Blank' (line 6): its xmlUrl is empty",
        "  in.opml: outline 'Gopher' (line 3): xmlUrl 'gopher://old.example/1' is not an http(s):// or "
        "file:/// URL",
        "  in.opml: outline 'Odd' (line 5): unknown attribute aggregator:colour (expected one of: name, "
        + ", ".join(opml.OPTIONS)
        + ")",
        "  in.opml: outline 'On' (line 7): aggregator:enabled='yes' is not a JSON value",
    ]
    assert table(done.stdout)["2"][2] == "added"  # the table shows what would have been added
    assert config.read_bytes() == before


def test_an_import_the_config_would_reject_writes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = config.read_bytes()
    done = cli(
        tmp_path,
        "opml",
        "import",
        str(DATA / "aggregator-export.opml"),
        "--keep-env",
        "--config",
        str(config),
    )
    assert done.returncode == 2
    assert f"error: {config}: the config would not load after the import; unchanged" in done.stderr
    assert "headers.X-Api-Key: environment variable MEMBERS_KEY is not set" in done.stderr
    assert config.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aggregator.yaml"]


def test_a_broken_config_is_reported_before_the_opml_is_read(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sources:\n  - name: x\n    urll: https://x.example/\n")
    done = cli(tmp_path, "opml", "import", "missing.opml", "--config", str(config))
    assert done.returncode == 2
    assert "sources[0].urll: unknown key (did you mean 'url'?)" in done.stderr


def test_import_from_standard_input_into_a_symlinked_config(tmp_path: Path) -> None:
    real = write_config(tmp_path)
    link = tmp_path / "link.yaml"
    link.symlink_to(real.name)
    done = subprocess.run(
        [sys.executable, str(RUN), "opml", "import", "-", "--config", str(link)],
        cwd=tmp_path,
        env=environment(),
        input=(DATA / "newsboat.opml").read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"3 added, 0 skipped, 0 problems" in done.stdout
    assert link.is_symlink() and "name: lwn-net" in real.read_text(encoding="utf-8")


def test_missing_file_and_missing_action(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = cli(tmp_path, "opml", "import", "nowhere.opml", "--config", str(config))
    assert (done.returncode, done.stderr.strip()) == (2, "error: nowhere.opml: file not found")
    usage = cli(tmp_path, "opml", "--config", str(config))
    assert usage.returncode == 2 and "ACTION" in usage.stderr


def test_parse_errors_are_config_errors_in_process() -> None:
    with pytest.raises(ConfigError, match=r"^x.opml: not an OPML file: the document is <feed>"):
        opml.parse_opml(b'<feed xmlns="http://www.w3.org/2005/Atom"/>', "x.opml")
