"""Identity keys, public uids and content hashes (aggregator.dedup)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from aggregator.dedup import content_hash, identity_key, item_uid

DATA = Path(__file__).resolve().parent / "data"
ARTICLE = (DATA / "normalize-example-article.txt").read_text(encoding="utf-8")
TITLE = "Over 260 Russian soldiers voluntarily surrender to Ukraine via I Want to Live project"
BBC_URL = "https://www.bbc.co.uk/news/uk-58627115"


def test_identity_prefers_a_stripped_guid() -> None:
    assert identity_key("  urn:uuid:1234 \n", BBC_URL, TITLE, ARTICLE) == "guid:urn:uuid:1234"


def test_identity_falls_back_to_the_canonical_link_for_blank_or_missing_guid() -> None:
    assert identity_key(None, BBC_URL, TITLE, ARTICLE) == "link:" + BBC_URL
    assert identity_key("   ", BBC_URL, TITLE, ARTICLE) == "link:" + BBC_URL


def test_identity_falls_back_to_a_content_hash() -> None:
    key = identity_key(None, None, TITLE, ARTICLE)
    assert key == "hash:" + content_hash(TITLE, ARTICLE)
    assert identity_key("", "", TITLE, ARTICLE) == key


def test_item_uid_is_pinned_forever() -> None:
    # Public ids must never change between releases: this value is part of the contract.
    uid = item_uid("bbc-news", "guid:" + BBC_URL)
    assert uid == "283f3847-1ea9-55d6-819a-e045f862722c"
    assert uuid.UUID(uid).version == 5


def test_item_uid_depends_on_source_and_key() -> None:
    key = "link:" + BBC_URL
    assert item_uid("bbc-news", key) == item_uid("bbc-news", key)
    assert item_uid("bbc-news", key) != item_uid("bbc-world", key)
    assert item_uid("bbc-news", key) != item_uid("bbc-news", "guid:" + BBC_URL)


def test_content_hash_ignores_whitespace_and_case() -> None:
    reflowed = "\n\n".join(" ".join(p.split()) for p in ARTICLE.split("\n\n"))
    assert content_hash(TITLE, ARTICLE) == content_hash(f"  {TITLE.upper()} ", reflowed)
    assert content_hash("Title", "Text") == hashlib.sha1(b"title\ntext").hexdigest()


def test_content_hash_folds_unicode_whitespace_like_spaces() -> None:
    expected = content_hash("A title", "x y z")
    assert content_hash("A\u00a0title ", "\tx\u2028y\u3000 \u2009z\x1c") == expected
    assert content_hash("A title", "x y\u200bz") != expected  # a zero-width space is no whitespace


def test_content_hash_changes_with_the_words() -> None:
    edited = ARTICLE.replace("over 260 Russian soldiers", "over 270 Russian soldiers")
    assert edited != ARTICLE
    assert content_hash(TITLE, ARTICLE) != content_hash(TITLE, edited)
    assert content_hash(TITLE, ARTICLE) != content_hash(TITLE + " (updated)", ARTICLE)
    # the title/text boundary counts: moving a word across it is a change
    assert content_hash("a b", "c") != content_hash("a", "b c")
