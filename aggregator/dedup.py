"""Item identity and content fingerprints: pure functions of an entry's fields.

Decides what makes two polls of a source "the same item" (identity key, public uid) and whether its
content changed (content hash). Story clustering across sources is not done here yet.
"""

from __future__ import annotations

import hashlib
import re
import uuid

# Fixed forever: changing it would change every public item id.
ITEM_UID_NAMESPACE = uuid.UUID("7d0c4b36-51d8-5f9c-9e43-2f6a1c0e8b15")

_WHITESPACE = re.compile(r"\s+")


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


def content_hash(title: str, text: str) -> str:
    """SHA-1 hex of title and text, whitespace-collapsed and case-folded: changes when the words do."""
    folded = _fold(title) + "\n" + _fold(text)
    return hashlib.sha1(folded.encode("utf-8"), usedforsecurity=False).hexdigest()


def _fold(value: str) -> str:
    return _WHITESPACE.sub(" ", value).strip().casefold()
