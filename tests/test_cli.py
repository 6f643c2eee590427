"""The command line as an operator uses it: `python run.py COMMAND` as real processes, in a temporary
working directory, on configs whose sources are real feed files served on 127.0.0.1 (or file paths)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL, VALIDATORS, FeedServer, free_port
from feedcheck import jsonfeed_validator
from runcli import RUN, TIMEOUT, environment, finish, start, table

pytestmark = pytest.mark.skipif(not REAL.exists(), reason="shared corpus missing")

ATOM_RNG = VALIDATORS / "atom-schema" / "atom.rng"
ATOM = "{http://www.w3.org/2005/Atom}"
EXPORT_FIELDS = {
    "id",
    "source",
    "url",
    "link",
    "title",
    "text",
    "html",
    "published",
    "updated",
    "first_seen",
    "language",
    "authors",
    "categories",
    "enclosures",
    "image",
    "article_id",
    "story_id",
    "flags",
}
GOOD = {"bbc": "/bbc.xml", "fireball": "/fireball.json", "register": "/register.atom"}
FILES = {"/bbc.xml": "bbc-news-1.xml", "/fireball.json": "daringfireball-3.json"}
FILES["/register.atom"] = "theregister-1.atom"


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return finish(start(cwd, *args, env=env))


def wait(proc: subprocess.Popen[str]) -> int:
    """The exit status of ``proc``, which must end by itself within TIMEOUT (killed otherwise)."""
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


class RecordingFeedServer(FeedServer):
    """The conftest FeedServer, also recording (path, If-None-Match, status answered) per request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str | None, int]] = []
        log = self.requests
        base: Any = self.httpd.RequestHandlerClass

        class Recording(base):  # type: ignore[misc]
            def send_response(self, code: int, message: str | None = None) -> None:
                log.append((self.path, self.headers.get("If-None-Match"), code))
                super().send_response(code, message)

        self.httpd.RequestHandlerClass = Recording


@dataclass
class Site:
    """A working directory with a config, its populated database, and what the fetch passes did."""

    dir: Path
    config: Path
    server: RecordingFeedServer
    closed_port: int
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    requests: dict[str, list[tuple[str, str | None, int]]] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.dir, *args, "--config", str(self.config))

    def start(self, *args: str) -> subprocess.Popen[str]:
        return start(self.dir, *args, "--config", str(self.config))


# Commands that only read the populated store: run side by side once the fetch passes are done.
READS = {
    "sources": ["sources"],
    "topics": ["topics"],
    "query": ["topics", "--test", 'title:"princess beatrice"'],
    "bad query": ["topics", "--test", "ukraine AND ("],
    "unknown source": ["fetch", "--source", "bbc", "--source", "nosuch"],
    "export": ["export"],
    "export out": ["export", "--out", "items.jsonl"],
    "build": ["build", "--out", "public", "--base-url", "https://feeds.example.org/"],
}


SITE_CONFIG = """\
database: sqlite:///data/site.db
defaults: {{interval: 1h, timeout: 5s}}
sources:
  - {{name: bbc, url: "{bbc}", tags: [news, uk]}}
  - {{name: fireball, url: "{fireball}", tags: [tech]}}
  - {{name: register, url: "{register}", tags: [tech]}}
  - {{name: gone, url: "{gone}", tags: [news]}}
  - {{name: closed, url: "http://127.0.0.1:{closed}/feed.xml", tags: [news]}}
topics:
  - {{name: everything, title: Everything, query: '*', limit: 1000}}
  - name: beatrice
    title: Princess Beatrice
    query: '"princess beatrice"'
    sources: {{tags: [news]}}
  - {{name: apple, title: Apple, query: 'apple OR iphone', sources: [fireball, register]}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Three good sources, a 404 and a closed port; four fetch passes in a row, each recorded; then the
    READS commands."""
    server = RecordingFeedServer()
    for path, name in FILES.items():
        server.routes[path] = REAL / name
    folder = tmp_path_factory.mktemp("site")
    closed = free_port()
    urls = {name: server.url(path) for name, path in GOOD.items()}
    config = folder / "site.yaml"
    config.write_text(SITE_CONFIG.format(gone=server.url("/gone.xml"), closed=closed, **urls))
    site = Site(folder, config, server, closed)
    passes = {"first": ["fetch"], "again": ["fetch"], "all": ["fetch", "--all"]}
    passes["one"] = ["fetch", "--source", "bbc"]
    try:
        for step, args in passes.items():
            before = len(server.requests)
            site.runs[step] = site.cli(*args)
            site.requests[step] = server.requests[before:]
        running = {name: site.start(*args) for name, args in READS.items()}
        site.runs |= {name: finish(proc) for name, proc in running.items()}
        yield site
    finally:
        server.close()


@pytest.fixture(scope="module")
def exported(site: Site) -> list[dict[str, Any]]:
    done = site.runs["export"]
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


# --- check-config --------------------------------------------------------------------------------

GOOD_CONFIG = """\
database: sqlite:///data/good.db
sources:
  - {name: bbc, url: BBC_PATH, tags: [news]}
  - {name: cnn, url: CNN_PATH, tags: [news]}
topics:
  - {name: news, query: 'ukraine OR "princess beatrice"', sources: {tags: [news]}}
"""

BAD_CONFIG = """\
database: sqlite:///data/bad.db
worker: {tick: 5s}
sources:
  - name: bbc
    url: http://127.0.0.1:9/bbc.xml
    intervall: 10m
    tags: [news]
  - name: bbc
    url: http://127.0.0.1:9/cnn.xml
    timeout: soon
topics:
  - name: war
    query: 'ukraine AND'
  - name: sport
    query: football
    sources: {tags: [sport]}
"""

BAD_PROBLEMS = [
    "bad.yaml:6: sources[0].intervall: unknown key (did you mean 'interval'?)",
    "bad.yaml:8: sources[1].name: duplicate source name 'bbc' (first at bad.yaml:4)",
    "bad.yaml:10: sources[1].timeout: invalid duration 'soon'",
    "bad.yaml:13: topics[0].query: at column 12: expected a term after 'AND'",
    "bad.yaml:16: topics[1].sources.tags[0]: no source has the tag 'sport'",
]


def good_config(folder: Path, name: str = "good.yaml") -> Path:
    path = folder / name
    text = GOOD_CONFIG.replace("BBC_PATH", str(REAL / "bbc-news-1.xml"))
    path.write_text(text.replace("CNN_PATH", str(REAL / "cnn-1.xml")))
    return path


def test_check_config_ok_with_config_before_the_command(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    done = cli(tmp_path, "--config", "good.yaml", "check-config")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: OK: 2 sources, 1 topics, database sqlite:///data/good.db"
    assert not (tmp_path / "data").exists()  # checking does not open the database


def test_check_config_honours_the_environment_variable(tmp_path: Path) -> None:
    path = good_config(tmp_path, "from-env.yaml")
    done = cli(tmp_path, "check-config", env=environment(AGGREGATOR_CONFIG=str(path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path}: OK: 2 sources")


def test_check_config_lists_every_problem_with_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_CONFIG)
    done = cli(tmp_path, "check-config", "--config", "bad.yaml")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == f"error: bad.yaml: {len(BAD_PROBLEMS)} problems"
    for problem, line in zip(BAD_PROBLEMS, lines[1:], strict=True):
        assert line.startswith("  " + problem), (problem, done.stderr)


def test_check_config_missing_file(tmp_path: Path) -> None:
    done = cli(tmp_path, "check-config", "--config", "nowhere.yaml")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: nowhere.yaml: 1 problem", "  nowhere.yaml: file not found"]


# --- fetch ---------------------------------------------------------------------------------------


def test_first_fetch_polls_every_source_and_exits_1_when_one_fails(site: Site) -> None:
    done = site.runs["first"]
    assert done.returncode == 1, done.stderr
    rows = table(done.stdout)
    assert set(rows) == {*GOOD, "gone", "closed"}
    for name in GOOD:
        _, status, http, entries, new = rows[name][:5]
        assert (status, http) == ("updated", "200"), rows[name]
        assert int(new) == int(entries) > 0
    assert rows["gone"][1:3] == ["error", "404"]
    assert f"source 'gone': HTTP 404 Not Found from {site.server.url('/gone.xml')}" in rows["gone"][-1]
    assert rows["closed"][1] == "error"
    assert "connection refused" in rows["closed"][-1]
    assert f"127.0.0.1:{site.closed_port}" in rows["closed"][-1]
    total = sum(int(rows[name][4]) for name in GOOD)
    assert f"5 sources polled, {total} new items, 2 failed" in done.stdout
    first = sorted((path, etag, code) for path, etag, code in site.requests["first"])
    assert first == sorted([(p, None, 200) for p in GOOD.values()] + [("/gone.xml", None, 404)])


def test_second_fetch_finds_nothing_due(site: Site) -> None:
    done = site.runs["again"]
    assert done.returncode == 0, done.stderr
    assert "no source is due yet" in done.stdout
    assert site.requests["again"] == []


def test_fetch_all_polls_again_with_conditional_requests(site: Site) -> None:
    done = site.runs["all"]
    assert done.returncode == 1  # the two broken sources still fail
    rows = table(done.stdout)
    for name in GOOD:
        assert rows[name][1:5] == ["not_modified", "304", "0", "0"], rows[name]
    assert rows["gone"][1] == rows["closed"][1] == "error"
    answered = {path: (etag, code) for path, etag, code in site.requests["all"]}
    for path in GOOD.values():
        etag, code = answered[path]
        assert etag and code == 304
    assert answered["/gone.xml"] == (None, 404)


def test_fetch_source_polls_only_that_one(site: Site) -> None:
    done = site.runs["one"]
    assert done.returncode == 0, done.stderr
    assert list(table(done.stdout)) == ["bbc"]
    assert "1 sources polled, 0 new items, 0 failed" in done.stdout
    assert [(path, code) for path, _, code in site.requests["one"]] == [("/bbc.xml", 304)]


def test_fetch_unknown_source_is_a_usage_error(site: Site) -> None:
    done = site.runs["unknown source"]
    assert done.returncode == 2
    assert "unknown source(s): nosuch" in done.stderr


def test_fetch_file_source_exits_0_and_small_export_survives_a_closed_pipe(tmp_path: Path) -> None:
    """All sources succeed: exit 0. Then `export | true`: the reader is gone before a byte is written,
    and the output (two items) is small enough to sit in the buffer until exit."""
    (tmp_path / "small.yaml").write_text(
        f"database: sqlite:///data/small.db\nsources:\n  - {{name: nhs, url: {REAL / 'nhs-1.xml'}}}\n"
    )
    done = cli(tmp_path, "fetch", "--config", "small.yaml")
    assert done.returncode == 0, done.stderr
    assert "1 sources polled, 2 new items, 0 failed" in done.stdout
    proc = start(tmp_path, "export", "--config", "small.yaml")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert wait(proc) == 0
    assert proc.stderr.read() == ""
    proc.stderr.close()


# --- sources, topics -----------------------------------------------------------------------------


def test_sources_shows_health_and_the_last_error(site: Site, exported: list[dict[str, Any]]) -> None:
    done = site.runs["sources"]
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert set(rows) == {*GOOD, "gone", "closed"}
    for name in GOOD:
        _, status, _last, http, items = rows[name][:5]
        assert (status, http) == ("ok", "304")
        assert int(items) == sum(1 for x in exported if x["source"] == name) > 0
        assert rows[name][-1] == site.server.url(GOOD[name])
    gone, closed = rows["gone"], rows["closed"]
    assert (gone[1], gone[3], gone[4], gone[6]) == (
        "backing off",
        "404",
        "0",
        "2",
    )  # failed twice: first, --all
    assert "HTTP 404 Not Found" in gone[-1]
    assert (closed[1], closed[3], closed[4], closed[6]) == ("backing off", "", "0", "2")
    assert "connection refused" in closed[-1]


def test_topics_lists_item_counts(site: Site, exported: list[dict[str, Any]]) -> None:
    done = site.runs["topics"]
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert list(rows) == ["everything", "beatrice", "apple"]
    assert int(rows["everything"][2]) == len(exported)
    assert int(rows["beatrice"][2]) >= 1
    assert 0 < int(rows["apple"][2]) <= sum(1 for x in exported if x["source"] != "bbc")


def test_topics_test_shows_what_a_query_matches(site: Site) -> None:
    done = site.runs["query"]
    assert done.returncode == 0, done.stderr
    assert re.search(r"1 stored items match 'title:\"princess beatrice\"'", done.stdout)
    assert list(table(done.stdout)) == ["2021-09-20 17:17:31"]
    assert "Princess Beatrice gives birth to a girl" in done.stdout


def test_topics_test_bad_query_names_the_column(site: Site) -> None:
    done = site.runs["bad query"]
    assert done.returncode == 2
    assert "error: query 'ukraine AND ('" in done.stderr
    assert "at column" in done.stderr


# --- export, build -------------------------------------------------------------------------------


def test_export_writes_one_object_per_stored_item(site: Site, exported: list[dict[str, Any]]) -> None:
    first = table(site.runs["first"].stdout)
    assert len(exported) == sum(int(first[name][4]) for name in GOOD)
    assert {x["source"] for x in exported} == set(GOOD)
    assert len({x["id"] for x in exported}) == len(exported)
    for record in exported:
        assert set(record) == EXPORT_FIELDS
        assert record["url"].startswith("http")
        assert record["published"].endswith("+00:00")
        assert isinstance(record["story_id"], int)  # every stored item belongs to a story
        assert isinstance(record["article_id"], int)
        for enclosure in record["enclosures"]:
            assert set(enclosure) == {"url", "type", "length"}


def test_export_out_writes_the_file(site: Site, exported: list[dict[str, Any]]) -> None:
    done = site.runs["export out"]
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"exported {len(exported)} items to items.jsonl" in done.stderr
    lines = (site.dir / "items.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == exported


def test_export_reader_leaving_early_is_not_an_error(site: Site) -> None:
    """`export | head -1`: the reader takes one line and closes the pipe while output keeps coming."""
    proc = site.start("export")
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    assert wait(proc) == 0
    assert json.loads(line)["id"]
    assert proc.stderr.read() == ""
    proc.stderr.close()


def test_build_writes_valid_feeds_for_every_topic(site: Site, exported: list[dict[str, Any]]) -> None:
    out = site.dir / "public"
    done = site.runs["build"]
    assert done.returncode == 0, done.stderr
    assert "wrote 9 feed files for 3 topics under public/topics" in done.stdout
    names = ["everything", "beatrice", "apple"]
    files = {f"{n}.{fmt}" for n in names for fmt in ("rss", "atom", "json")}
    assert {p.name for p in (out / "topics").iterdir()} == files  # no temporary file left behind
    probe = out / "probe"  # what any new file gets here (the umask's permissions)
    probe.write_bytes(b"")
    assert {(out / "topics" / f).stat().st_mode for f in files} == {probe.stat().st_mode}
    probe.unlink()
    validator = jsonfeed_validator()
    for name in names:
        feed = json.loads((out / "topics" / f"{name}.json").read_text(encoding="utf-8"))
        assert feed["version"] == "https://jsonfeed.org/version/1.1"
        assert feed["feed_url"] == f"https://feeds.example.org/topics/{name}.json"
        validator.validate(feed)
        rss = ET.parse(out / "topics" / f"{name}.rss").getroot()
        assert (rss.tag, rss.get("version")) == ("rss", "2.0")
        atom = ET.parse(out / "topics" / f"{name}.atom").getroot()
        assert len(atom.findall(f"{ATOM}entry")) == len(rss.findall("channel/item")) == len(feed["items"])
    everything = json.loads((out / "topics" / "everything.json").read_text(encoding="utf-8"))
    assert len(everything["items"]) == len(exported)
    xmllint = shutil.which("xmllint")
    if xmllint is None or not ATOM_RNG.exists():
        pytest.skip("xmllint or the Atom schema is missing")
    atoms = [str(out / "topics" / f"{n}.atom") for n in names]
    checked = subprocess.run(
        [xmllint, "--noout", "--relaxng", str(ATOM_RNG), *atoms],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert checked.returncode == 0, checked.stderr


# Runs run.py under a file size limit (bytes); Python ignores SIGXFSZ, so a write past it fails (EFBIG)
# as on a full disk. The limit is below everything.rss (~170 kB); build only reads the store.
LIMITED = """\
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
OLD_RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>the last build</title></channel></rss>'


def test_build_that_fails_mid_file_leaves_the_previous_file_whole(
    site: Site, exported: list[dict[str, Any]]
) -> None:
    topics = site.dir / "limited" / "topics"
    topics.mkdir(parents=True)
    (topics / "everything.rss").write_bytes(OLD_RSS)
    build = ["build", "--out", "limited", "--base-url", "https://feeds.example.org/"]
    limited = subprocess.Popen(
        [sys.executable, "-c", LIMITED, str(RUN), *build, "--config", str(site.config)],
        cwd=site.dir,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    done = finish(limited)
    assert done.returncode == 1
    assert "error: cannot write limited/topics/everything.rss: File too large" in done.stderr
    assert (topics / "everything.rss").read_bytes() == OLD_RSS  # not truncated, not half the new one
    assert [p.name for p in topics.iterdir()] == ["everything.rss"]  # no temporary file left behind
    again = site.cli(*build)  # the next build replaces it whole
    assert again.returncode == 0, again.stderr
    rss = ET.parse(topics / "everything.rss").getroot()
    assert len(rss.findall("channel/item")) == len(exported)


# --- database, serve, run ------------------------------------------------------------------------


def test_serve_refuses_an_unmigrated_database_until_db_upgrade(tmp_path: Path) -> None:
    (tmp_path / "fresh.yaml").write_text(
        f"database: sqlite:///data/fresh.db\nserver: {{host: 127.0.0.1, port: {free_port()}}}\n"
    )
    done = cli(tmp_path, "serve", "--config", "fresh.yaml")
    assert done.returncode == 1
    assert "the database schema is at nothing" in done.stderr
    assert f"run `python run.py db upgrade --config {tmp_path / 'fresh.yaml'}` first" in done.stderr
    done = cli(tmp_path, "db", "upgrade", "--config", "fresh.yaml")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"database sqlite:///data/fresh.db: schema empty -> \w+\n", done.stdout)
    assert (tmp_path / "data" / "fresh.db").is_file()


def test_run_on_a_taken_port_names_the_address_and_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "run.yaml").write_text(
            f"database: sqlite:///data/run.db\nserver: {{host: 127.0.0.1, port: {port}}}\n"
        )
        done = cli(tmp_path, "run", "--config", "run.yaml")
    assert done.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}:" in done.stderr
    assert f"(change server.port in {tmp_path / 'run.yaml'})" in done.stderr


def test_unusable_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "nodb.yaml").write_text("database: nosuchdb://x\n")
    done = cli(tmp_path, "fetch", "--config", "nodb.yaml")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {tmp_path / 'nodb.yaml'}: database: ")
    assert "cannot use database nosuchdb://x" in done.stderr
