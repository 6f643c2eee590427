"""`python run.py prune`: retention from the config (or --days), tombstones that keep pruned items from
coming back, and the flags that `export` now carries. Real config files, real SQLite, file:// feeds."""

from __future__ import annotations

import functools
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from conftest import FeedServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aggregator import cli, store
from aggregator.fetch import fetch
from aggregator.model import PollOutcome, Source
from aggregator.pipeline import Context, poll_source
from aggregator.store.tables import TombstoneRow

REAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=90)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config with one file:// source (a real BBC capture) and a 90-day retention."""
    if not (REAL / "bbc-news-2.xml").exists():
        pytest.skip("the shared corpus is missing")
    shutil.copy(REAL / "bbc-news-2.xml", tmp_path / "bbc.xml")
    (tmp_path / "aggregator.yaml").write_text(
        f"database: sqlite:///{tmp_path / 'store.db'}\n"
        "retention: {days: 90}\n"
        "sources:\n  - {name: bbc, url: bbc.xml}\n"
        "topics:\n  - {name: all, query: '*'}\n",
        encoding="utf-8",
    )
    return tmp_path


def run(site: Path, *args: str) -> int:
    return cli.main([*args, "--config", str(site / "aggregator.yaml")])


def rows(site: Path, query: str) -> int:
    with sqlite3.connect(site / "store.db") as db:
        count: int = db.execute(query).fetchone()[0]
        return count


def age_everything(site: Path) -> None:
    """Pretend the stored items were first seen long ago (their published dates are from 2021)."""
    with sqlite3.connect(site / "store.db") as db:
        db.execute("UPDATE items SET first_seen = '2021-01-01 00:00:00.000000'")


def test_prune_deletes_old_items_and_they_never_come_back(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(site, "fetch", "--all") == 0
    assert rows(site, "SELECT count(*) FROM items") == 53
    assert rows(site, "SELECT count(*) FROM topic_items") == 53
    assert run(site, "prune") == 0  # first seen today: retention keeps them
    assert rows(site, "SELECT count(*) FROM items") == 53
    age_everything(site)
    capsys.readouterr()
    assert run(site, "prune", "--dry-run") == 0
    assert "would delete 53 items" in capsys.readouterr().out
    assert rows(site, "SELECT count(*) FROM items") == 53
    assert run(site, "prune") == 0
    assert capsys.readouterr().out == (
        "deleted 53 items published and first seen more than 90 days ago; expired 0 tombstones of items "
        "no poll has seen for 90 days; 53 tombstones keep pruned items from coming back\n"
    )
    assert rows(site, "SELECT count(*) FROM items") == 0
    assert rows(site, "SELECT count(*) FROM topic_items") == 0
    assert rows(site, "SELECT count(*) FROM tombstones") == 53
    assert run(site, "fetch", "--all") == 0  # the same document: nothing comes back
    assert rows(site, "SELECT count(*) FROM items") == 0
    shutil.copy(REAL / "bbc-news-1.xml", site / "bbc.xml")  # 9 hours later: 20 new, 37 pruned ones
    assert run(site, "fetch", "--all") == 0
    assert rows(site, "SELECT count(*) FROM items") == 20


def test_prune_expires_the_tombstones_no_poll_has_seen_for_the_retention(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(site, "fetch", "--all") == 0
    age_everything(site)
    assert run(site, "prune") == 0
    with sqlite3.connect(site / "store.db") as db:  # the last poll that saw any of them: long ago
        db.execute("UPDATE tombstones SET pruned_at = '2021-01-01 00:00:00.000000'")
    capsys.readouterr()
    assert run(site, "prune", "--dry-run") == 0
    assert "would expire 53 tombstones" in capsys.readouterr().out
    assert rows(site, "SELECT count(*) FROM tombstones") == 53
    assert run(site, "prune") == 0
    assert (
        "expired 53 tombstones of items no poll has seen for 90 days; 0 tombstones" in capsys.readouterr().out
    )
    assert rows(site, "SELECT count(*) FROM tombstones") == 0
    assert run(site, "fetch", "--all") == 0  # the same document: not parsed again, nothing comes back
    assert rows(site, "SELECT count(*) FROM items") == 0
    shutil.copy(REAL / "bbc-news-1.xml", site / "bbc.xml")  # carries 37 of them again: they come back
    assert run(site, "fetch", "--all") == 0
    assert rows(site, "SELECT count(*) FROM items") == 57


def tombstones(sessions: sessionmaker[Session]) -> dict[str, datetime]:
    with sessions() as s:
        return {row.key: row.pruned_at for row in s.scalars(select(TombstoneRow))}


def test_tombstones_live_while_polls_see_their_keys_then_expire(
    sessions: sessionmaker[Session], feed_server: FeedServer, http: requests.Session
) -> None:
    """bbc-news-2 (53 entries of 2021) is stored and pruned; then the feed becomes bbc-news-1, which
    carries 37 of them: the poll that parses it and the 304s after it keep those 37 tombstones, while the
    16 it dropped expire a retention after the prune, and come back when the feed carries them again."""
    feed_server.routes["/bbc.xml"] = REAL / "bbc-news-2.xml"
    source = Source("bbc", feed_server.url("/bbc.xml"))
    ctx = Context.build([source], [], sessions, functools.partial(fetch, http))
    with sessions.begin() as s:
        store.sync_sources(s, [source], NOW)

    def poll(at: datetime) -> PollOutcome:
        outcome = poll_source(ctx, "bbc", at)
        assert outcome.ok, outcome.error
        return outcome

    def prune(at: datetime, *, dry_run: bool = False) -> store.PruneResult:
        with sessions.begin() as s:
            return store.prune_items(s, at - RETENTION, at, dry_run=dry_run)

    assert poll(NOW).new == 53
    pruned = NOW + timedelta(days=100)
    assert prune(pruned) == store.PruneResult(items=53, tombstones=53, expired=0)
    feed_server.routes["/bbc.xml"] = REAL / "bbc-news-1.xml"  # 20 new entries, 37 of the pruned ones
    assert poll(pruned + timedelta(days=10)).new == 20
    carried = {key for key, at in tombstones(sessions).items() if at == pruned + timedelta(days=10)}
    assert len(carried) == 37
    for days in (40, 70, 100):  # the same document: 304 Not Modified
        assert poll(pruned + timedelta(days=days)).status == "not_modified"
    later = pruned + timedelta(days=101)  # 91 days after the prune, 1 after the last poll
    assert prune(later, dry_run=True) == store.PruneResult(items=20, tombstones=53, expired=16)
    assert prune(later) == store.PruneResult(items=20, tombstones=57, expired=16)
    kept = tombstones(sessions)
    assert {key for key, at in kept.items() if at == pruned + timedelta(days=100)} == carried
    assert poll(later + timedelta(days=1)).status == "not_modified"  # no feed carries the 16: still gone
    with sessions() as s:
        assert store.count_items(s) == 0
    feed_server.routes["/bbc.xml"] = REAL / "bbc-news-2.xml"  # the 37 and the 16 again
    back = poll(later + timedelta(days=2))
    assert back.new == 16
    with sessions() as s:
        assert {stored.item.key for stored in store.stored_items(s)}.isdisjoint(kept)


def test_prune_days_on_the_command_line_override_the_config(site: Path) -> None:
    assert run(site, "fetch", "--all") == 0
    age_everything(site)
    with sqlite3.connect(site / "store.db") as db:
        db.execute("UPDATE items SET published = datetime('now', '-30 days')")
    assert run(site, "prune") == 0  # 30 days old, the config keeps 90
    assert rows(site, "SELECT count(*) FROM items") == 53
    assert run(site, "prune", "--days", "7") == 0
    assert rows(site, "SELECT count(*) FROM items") == 0


def test_prune_without_a_retention_is_a_config_error(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = site / "aggregator.yaml"
    config.write_text(config.read_text().replace("retention: {days: 90}\n", ""), encoding="utf-8")
    assert run(site, "prune") == 2
    err = capsys.readouterr().err
    assert "retention.days: not set" in err and "--days" in err and str(config) in err


@pytest.mark.parametrize("days", ["0", "-3", "ninety"])
def test_prune_refuses_a_bad_number_of_days(
    site: Path, days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(site, "prune", "--days", days)
    assert exit_.value.code == 2
    assert "expected a whole number of days >= 1" in capsys.readouterr().err


def test_a_bad_retention_in_the_config_is_reported(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = site / "aggregator.yaml"
    config.write_text(config.read_text().replace("{days: 90}", "{days: 0, keep: all}"), encoding="utf-8")
    assert run(site, "check-config") == 2
    err = capsys.readouterr().err
    assert "retention.days" in err and "retention.keep: unknown key" in err


def test_export_carries_the_item_flags(site: Path, tmp_path: Path) -> None:
    assert run(site, "fetch", "--all") == 0
    out = tmp_path / "items.jsonl"
    assert run(site, "export", "--out", str(out)) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 53
    assert all(isinstance(r["flags"], list) for r in records)
    assert all(r["language"] == "en" for r in records)  # declared (en-gb) and plausible: not flagged
    assert all("language-detected" not in r["flags"] for r in records)


def test_migration_0003_adds_flags_and_tombstones_to_a_filled_database(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect, text

    from aggregator.store.engine import migrate

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0002")
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO sources (id, name, url, enabled, in_config, error_count, last_new, "
                "created_at) VALUES (1, 'bbc', 'https://bbc', 1, 1, 0, 0, '2026-01-01')"
            )
        )
        db.execute(text("INSERT INTO items (uid, source_id, key, title, html, text, published, dated, "
                        "authors, categories, enclosures, content_hash, first_seen, changed_at, "
                        "update_count) VALUES ('u', 1, 'guid:1', 't', '', '', '2026-01-01', 1, '[]', "
                        "'[]', '[]', 'h', '2026-01-01', '2026-01-01', 0)"))  # fmt: skip
    migrate(engine, "0003")
    with engine.begin() as db:
        assert db.execute(text("SELECT flags FROM items")).scalar() == "[]"
        db.execute(text("INSERT INTO tombstones VALUES (1, 'guid:0', '2026-01-02')"))
    migrate(engine, "0002", down=True)
    inspector = inspect(engine)
    assert "tombstones" not in inspector.get_table_names()
    assert "flags" not in {c["name"] for c in inspector.get_columns("items")}
    engine.dispose()


def test_prune_drops_the_fingerprints_of_items_out_of_the_matching_window(site: Path) -> None:
    """Items first seen more than StoryParams.index_days (60) ago keep their place in the store but lose
    their fingerprint rows (no new item can be matched against them); a dry run keeps them."""
    assert run(site, "fetch", "--all") == 0
    fingerprints = rows(site, "SELECT count(*) FROM fingerprints")
    assert fingerprints > 100
    assert run(site, "prune", "--days", "365") == 0
    assert rows(site, "SELECT count(*) FROM fingerprints") == fingerprints  # first seen today
    seen = (datetime.now(UTC) - timedelta(days=100)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(site / "store.db") as db:
        db.execute("UPDATE items SET first_seen = ?", (seen,))
    assert run(site, "prune", "--days", "365", "--dry-run") == 0
    assert rows(site, "SELECT count(*) FROM fingerprints") == fingerprints
    assert run(site, "prune", "--days", "365") == 0
    assert rows(site, "SELECT count(*) FROM fingerprints") == 0
    assert rows(site, "SELECT count(*) FROM items") == 53  # seen 100 days ago: within the retention
