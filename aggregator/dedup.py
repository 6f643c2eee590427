"""Item identity and content fingerprints: pure functions of an entry's fields.

Decides what makes two polls of a source "the same item" (identity key, public uid) and whether its
content changed (content hash). Story clustering across sources is not done here yet.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

from aggregator.model import Item

# Fixed forever: changing it would change every public item id.
ITEM_UID_NAMESPACE = uuid.UUID("7d0c4b36-51d8-5f9c-9e43-2f6a1c0e8b15")


def identity_key(guid: str | None, canonical_url: str | None, title: str, text: str) -> str:
    """The item's identity inside its source: its guid, else its canonical URL, else a content hash.

    >>> identity_key(" 42 ", "https://example.com/a", "T", "")
    'guid:42'
    """
    if guid is not None and guid.strip():
        return "guid:" + guid.strip()
    if canonical_url:
        return "link:" + canonical_url
    return "hash:" + content_hash(title, text)


def item_uid(source: str, key: str) -> str:
    """A stable public id (UUID string) for ``key`` in ``source``; the same inputs give it forever."""
    return str(uuid.uuid5(ITEM_UID_NAMESPACE, f"{source}\n{key}"))


def repeated_keys(items: Sequence[Item]) -> list[str]:
    """Identity keys that more than one item of one document carries (in document order)."""
    seen: dict[str, int] = {}
    for item in items:
        seen[item.key] = seen.get(item.key, 0) + 1
    return [key for key, count in seen.items() if count > 1]


def disambiguate(items: Sequence[Item], stored_urls: Mapping[str, str | None] | None = None) -> list[Item]:
    """One document's items with distinct identity keys (rule 1: the same entry again, within a source).

    A key carried twice by the same entry (same canonical link, or no link and the same title) is one
    entry: the first copy is kept. A guid reused for *different* entries keeps its plain key for one of
    them (the one whose link ``stored_urls[key]`` says was stored under it, else the first) and gives
    the others ``KEY#link:URL`` (or ``KEY#title:HASH``), so each stays the same item on every re-poll.
    Those items carry the flag "guid-repeated".
    """
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.key, []).append(item)
    result: list[Item] = []
    for key, group in groups.items():
        marks: dict[str, Item] = {}
        for item in group:
            marks.setdefault(_entry_mark(item), item)
        entries = list(marks.values())
        if len(entries) == 1:
            result.append(entries[0])
            continue
        stored = (stored_urls or {}).get(key)
        owner = next((i for i, e in enumerate(entries) if stored and e.url == stored), 0)
        for i, item in enumerate(entries):
            new_key = key if i == owner else f"{key}#{_entry_mark(item)}"
            flags = item.flags if "guid-repeated" in item.flags else (*item.flags, "guid-repeated")
            result.append(replace(item, key=new_key, uid=item_uid(item.source, new_key), flags=flags))
    return result


def _entry_mark(item: Item) -> str:
    """What tells two entries sharing a guid apart: their canonical link, else their title."""
    if item.url:
        return "link:" + item.url
    return "title:" + hashlib.sha1(_fold(item.title).encode(), usedforsecurity=False).hexdigest()[:16]


def content_hash(title: str, text: str) -> str:
    """SHA-1 hex of title and text, whitespace-collapsed and case-folded: changes when the words do."""
    folded = _fold(title) + "\n" + _fold(text)
    return hashlib.sha1(folded.encode("utf-8"), usedforsecurity=False).hexdigest()


def _fold(value: str) -> str:
    # str.split() splits on exactly the characters re's \s matches (every code point checked): the same
    # result as collapsing \s+ runs to one space and stripping, at less than half the cost
    return " ".join(value.split()).casefold()
