"""`python run.py prune`: retention from the config (or --days), tombstones that keep pruned items from
coming back, and the flags that `export` now carries. Real config files, real SQLite, file:// feeds."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from aggregator import cli

REAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"


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
    assert "deleted 53 items" in capsys.readouterr().out
    assert rows(site, "SELECT count(*) FROM items") == 0
    assert rows(site, "SELECT count(*) FROM topic_items") == 0
    assert rows(site, "SELECT count(*) FROM tombstones") == 53
    assert run(site, "fetch", "--all") == 0  # the same document: nothing comes back
    assert rows(site, "SELECT count(*) FROM items") == 0
    shutil.copy(REAL / "bbc-news-1.xml", site / "bbc.xml")  # 9 hours later: 20 new, 37 pruned ones
    assert run(site, "fetch", "--all") == 0
    assert rows(site, "SELECT count(*) FROM items") == 20


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
