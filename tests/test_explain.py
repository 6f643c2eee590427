"""`python run.py explain ITEM_ID`: identity key, article and story, merge decisions, topics; and the
`collapse:` topic setting (story | article | none, `collapse_duplicates` as its alias) in the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REAL

from aggregator import cli
from aggregator.config import load_config
from aggregator.errors import ConfigError

needs_corpus = pytest.mark.skipif(not REAL.is_dir(), reason=f"shared corpus not found at {REAL}")
FILES = {"bbc": "bbc-news-1.xml", "cnn": "cnn-1.xml", "mail": "dailymail-1.xml", "smh": "smh-1.xml"}


def write_config(tmp_path: Path, collapse: str = "collapse: story") -> Path:
    sources = "".join(
        f"  - {{name: {name}, url: {(REAL / file).as_uri()}}}\n" for name, file in FILES.items()
    )
    path = tmp_path / "a.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'a.db'}\nsources:\n{sources}"
        f"topics:\n  - {{name: beatrice, query: '\"princess beatrice\"', {collapse}}}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL.is_dir():
        pytest.skip(f"shared corpus not found at {REAL}")
    config = write_config(tmp_path_factory.mktemp("explain"))
    assert cli.main(["fetch", "--config", str(config)]) == 0
    return config


def exported(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert cli.main(["export", "--config", str(config)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@needs_corpus
def test_explain_names_the_key_the_story_the_decisions_and_the_topics(
    fetched: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = exported(fetched, capsys)
    last = [r for r in records if "Princess Beatrice" in str(r["title"])][-1]  # it joined the others
    assert last["story_id"] is not None
    assert cli.main(["explain", str(last["id"]), "--config", str(fetched)]) == 0
    out = capsys.readouterr().out
    assert f"uid {last['id']}" in out
    assert f"identity key in {last['source']}: guid:" in out
    assert "item(s) from bbc, cnn, mail, smh" in out
    assert "joined the story of item" in out and "rule story, similarity" in out
    assert "topics: beatrice" in out


@needs_corpus
def test_explain_takes_the_row_id_and_urn_prefix(fetched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = exported(fetched, capsys)[0]
    assert cli.main(["explain", "1", "--config", str(fetched)]) == 0
    by_row = capsys.readouterr().out
    assert cli.main(["explain", f"urn:uuid:{first['id']}", "--config", str(fetched)]) == 0
    assert capsys.readouterr().out == by_row


@needs_corpus
def test_explain_of_an_unknown_id_is_an_error_naming_it(
    fetched: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["explain", "no-such-item", "--config", str(fetched)]) == 1
    err = capsys.readouterr().err
    assert "no stored item has the id 'no-such-item'" in err


@needs_corpus
def test_a_story_topic_feed_has_one_entry_with_the_other_outlets(
    fetched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["build", "--out", str(tmp_path), "--config", str(fetched)]) == 0
    doc = json.loads((tmp_path / "topics" / "beatrice.json").read_text(encoding="utf-8"))
    assert len(doc["items"]) == 1
    also = doc["items"][0]["_aggregator"]["also_reported_by"]
    assert len(also) == 3 and all(x["url"].startswith("https://") for x in also)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("collapse: story", "story"),
        ("collapse: none", "none"),
        ("collapse_duplicates: true", "article"),
        ("collapse_duplicates: false", "none"),
        ("limit: 5", "article"),
    ],
)
def test_collapse_setting_and_its_alias(tmp_path: Path, setting: str, expected: str) -> None:
    topic = load_config(write_config(tmp_path, setting)).topics[0]
    assert topic.collapse == expected


def test_an_unknown_collapse_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"topics\[0\]\.collapse"):
        load_config(write_config(tmp_path, "collapse: stories"))
