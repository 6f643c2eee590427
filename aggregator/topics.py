"""The topic query language: a query is parsed once into a tree and evaluated on pre-tokenized items.

Pure: no I/O. Matching is case- and accent-insensitive, on whole words (CJK text: on substrings).

Grammar (precedence NOT > AND > OR; adjacent terms are ANDed)::

    query   := or_expr
    or_expr := and_expr ("OR" and_expr)*
    and_expr:= unary (["AND"] unary)*
    unary   := ("NOT" | "-") unary | primary
    primary := "(" or_expr ")" | FIELD "(" or_expr ")" | term
    term    := [FIELD] (word | word* | "quoted phrase") | "*"
    FIELD   := title: | text: | source: | tag: | lang:

Only upper-case AND/OR/NOT are operators; "and" is a word. ``*`` alone matches every item.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from aggregator.errors import AggregatorError
from aggregator.model import Item, Topic

__all__ = ["MatchDoc", "Query", "QueryError", "TopicMatcher", "compile_query", "fold"]

TEXT_FIELDS = ("title", "text")
NAME_FIELDS = ("source", "tag", "lang")
_KEYWORDS = frozenset({"AND", "OR", "NOT"})
_WORD = re.compile(r"\w+")
_FIELD = re.compile(r"([A-Za-z]+):(.*)", re.DOTALL)
_LANG = re.compile(r"[a-z]{2,3}")
# Scripts written without spaces between words: matched as substrings, not words.
_CJK = re.compile(r"[\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class QueryError(AggregatorError, ValueError):
    """A topic query does not parse: says where (1-based column) and what was expected."""

    def __init__(self, reason: str, column: int | None = None, *, topic: str | None = None) -> None:
        self.reason = reason
        self.column = column
        self.topic = topic
        where = f"at column {column}: " if column is not None else ""
        prefix = f"topic {topic!r}: query " if topic else ""
        super().__init__(f"{prefix}{where}{reason}")


# ------------------------------------------------------------------------------------------ folding


def fold(text: str) -> str:
    """Case-fold and strip accents ("Café" -> "cafe"), keeping Cyrillic й, ї (and ё -> е)."""
    text = text.casefold()
    if text.isascii():
        return text
    out: list[str] = []
    base = ""
    for char in unicodedata.normalize("NFKD", text):
        if not unicodedata.combining(char):
            base = char
            out.append(char)
        elif "\u0400" <= base <= "\u052f":  # a Cyrillic letter keeps its mark: й stays й
            out.append(char)
    return unicodedata.normalize("NFC", "".join(out)).replace("ё", "е")


@dataclass(frozen=True, slots=True)
class FieldIndex:
    """One text field, folded and split into words once: positions for phrases, sorted for prefixes."""

    folded: str
    words: tuple[str, ...]
    positions: Mapping[str, tuple[int, ...]]
    vocabulary: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> FieldIndex:
        folded = " ".join(fold(text).split())
        words = tuple(_WORD.findall(folded))
        positions: dict[str, list[int]] = {}
        for i, word in enumerate(words):
            positions.setdefault(word, []).append(i)
        frozen = {word: tuple(where) for word, where in positions.items()}
        return cls(folded, words, frozen, tuple(sorted(frozen)))

    def has_word(self, word: str, prefix: bool = False) -> bool:
        if not prefix:
            return word in self.positions
        i = bisect.bisect_left(self.vocabulary, word)
        return i < len(self.vocabulary) and self.vocabulary[i].startswith(word)

    def has_words(self, words: tuple[str, ...], prefix: bool = False) -> bool:
        """Consecutive ``words``; with ``prefix`` the last one only has to start the word."""
        if len(words) == 1:
            return self.has_word(words[0], prefix)
        rest = words[1:]
        for start in self.positions.get(words[0], ()):
            tail = self.words[start + 1 : start + 1 + len(rest)]
            if len(tail) < len(rest) or tail[:-1] != rest[:-1]:
                continue
            if tail[-1] == rest[-1] or (prefix and tail[-1].startswith(rest[-1])):
                return True
        return False


@dataclass(frozen=True, slots=True)
class MatchDoc:
    """What queries look at, built once per item and shared by every topic."""

    title: FieldIndex
    text: FieldIndex
    source: str
    tags: frozenset[str]
    language: str | None

    @classmethod
    def from_item(cls, item: Item, source_tags: Collection[str] = ()) -> MatchDoc:
        return cls(
            title=FieldIndex.of(item.title),
            text=FieldIndex.of(item.text),
            source=item.source.casefold(),
            tags=frozenset(tag.casefold() for tag in source_tags),
            language=_primary_language(item.language),
        )


def _primary_language(code: str | None) -> str | None:
    """ "en-GB" -> "en": items carry ISO 639-1 codes already; this guards topic configs."""
    if not code:
        return None
    return code.strip().replace("_", "-").split("-")[0].casefold() or None


# ------------------------------------------------------------------------------------------- the tree


class _Node(Protocol):
    def matches(self, doc: MatchDoc) -> bool: ...


@dataclass(frozen=True, slots=True)
class _All:
    def matches(self, doc: MatchDoc) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class _Not:
    child: _Node

    def matches(self, doc: MatchDoc) -> bool:
        return not self.child.matches(doc)


@dataclass(frozen=True, slots=True)
class _And:
    children: tuple[_Node, ...]

    def matches(self, doc: MatchDoc) -> bool:
        return all(child.matches(doc) for child in self.children)


@dataclass(frozen=True, slots=True)
class _Or:
    children: tuple[_Node, ...]

    def matches(self, doc: MatchDoc) -> bool:
        return any(child.matches(doc) for child in self.children)


@dataclass(frozen=True, slots=True)
class _Words:
    """Words (one, or a phrase) in the title, the text, or either (``field`` None)."""

    field: str | None
    words: tuple[str, ...]
    prefix: bool = False
    substring: str | None = None  # CJK: a substring of the folded field instead of words

    def matches(self, doc: MatchDoc) -> bool:
        fields: tuple[FieldIndex, ...] = (doc.title, doc.text)
        if self.field is not None:
            fields = (doc.title,) if self.field == "title" else (doc.text,)
        if self.substring is not None:
            return any(self.substring in f.folded for f in fields)
        return any(f.has_words(self.words, self.prefix) for f in fields)


@dataclass(frozen=True, slots=True)
class _Name:
    """source:NAME, tag:NAME (either may end in ``*``) or lang:CODE."""

    field: str
    name: str
    prefix: bool = False

    def matches(self, doc: MatchDoc) -> bool:
        if self.field == "lang":
            return doc.language == self.name
        names = (doc.source,) if self.field == "source" else doc.tags
        return any(n == self.name or (self.prefix and n.startswith(self.name)) for n in names)


class Query:
    """A compiled query; ``matches`` is cheap enough to run every topic on every new item."""

    __slots__ = ("_root", "text")

    def __init__(self, text: str, root: _Node) -> None:
        self.text = text
        self._root = root

    def matches(self, doc: MatchDoc) -> bool:
        return self._root.matches(doc)

    def __repr__(self) -> str:
        return f"Query({self.text!r})"


# ------------------------------------------------------------------------------------------- lexing


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(", ")", "AND", "OR", "NOT", "-", "FIELD", "TERM", "END"
    column: int
    text: str = ""  # as written, for messages
    field: str | None = None
    value: str = ""
    quoted: bool = False


def _tokenize(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(query):
        char, column = query[i], i + 1
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token(char, column, char))
            i += 1
        elif char == "-":
            if i + 1 == len(query) or query[i + 1].isspace() or query[i + 1] == ")":
                raise QueryError("expected a word, phrase or '(' right after '-'", column)
            tokens.append(_Token("-", column, "-"))
            i += 1
        elif char == '"':
            value, i = _phrase(query, i)
            tokens.append(_Token("TERM", column, query[column - 1 : i], value=value, quoted=True))
        else:
            token, i = _word(query, i)
            tokens.append(token)
    tokens.append(_Token("END", len(query) + 1, "the end of the query"))
    return tokens


def _phrase(query: str, i: int) -> tuple[str, int]:
    """The phrase whose opening quote is at ``i``, and the index after its closing quote."""
    end = query.find('"', i + 1)
    if end < 0:
        raise QueryError(f"expected '\"' to close the phrase opened at column {i + 1}", len(query) + 1)
    return query[i + 1 : end], end + 1


def _word(query: str, i: int) -> tuple[_Token, int]:
    start = i
    while i < len(query) and not query[i].isspace() and query[i] not in '()"':
        i += 1
    text, column = query[start:i], start + 1
    if text in _KEYWORDS:
        return _Token(text, column, text), i
    field = _FIELD.fullmatch(text)
    if field is None:
        return _Token("TERM", column, text, value=text), i
    name, value = field.group(1).lower(), field.group(2)
    if name not in TEXT_FIELDS + NAME_FIELDS:
        fields = ", ".join(f"{f}:" for f in TEXT_FIELDS + NAME_FIELDS)
        raise QueryError(
            f"unknown field '{field.group(1)}:' (expected one of {fields}; "
            f'quote the text to search for it: "{text}")',
            column,
        )
    if value:
        return _Token("TERM", column, text, field=name, value=value), i
    if i < len(query) and query[i] == '"':
        value, end = _phrase(query, i)
        return _Token("TERM", column, query[start:end], field=name, value=value, quoted=True), end
    if i < len(query) and query[i] == "(" and name in TEXT_FIELDS:
        return _Token("FIELD", column, text, field=name), i
    what = "a word, phrase or '('" if name in TEXT_FIELDS else "a name"
    raise QueryError(f"expected {what} right after '{text}'", column)


# ------------------------------------------------------------------------------------------ parsing


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._at = 0
        self._scope: str | None = None  # the field of an enclosing title:( … ) group

    def peek(self) -> _Token:
        return self._tokens[self._at]

    def take(self) -> _Token:
        token = self._tokens[self._at]
        self._at += 1 if token.kind != "END" else 0
        return token

    def parse(self) -> _Node:
        root = self.or_expr(None)
        extra = self.peek()
        if extra.kind == ")":
            raise QueryError("unexpected ')' with no matching '('", extra.column)
        return root

    def or_expr(self, after: _Token | None) -> _Node:
        parts = [self.and_expr(after)]
        while self.peek().kind == "OR":
            parts.append(self.and_expr(self.take()))
        return parts[0] if len(parts) == 1 else _Or(tuple(parts))

    def and_expr(self, after: _Token | None) -> _Node:
        parts = [self.unary(after)]
        while True:
            kind = self.peek().kind
            if kind == "AND":
                parts.append(self.unary(self.take()))
            elif kind in ("NOT", "-", "(", "FIELD", "TERM"):
                parts.append(self.unary(None))
            else:
                return parts[0] if len(parts) == 1 else _And(tuple(parts))

    def unary(self, after: _Token | None) -> _Node:
        if self.peek().kind in ("NOT", "-"):
            operator = self.take()
            return _Not(self.unary(operator))
        return self.primary(after)

    def primary(self, after: _Token | None) -> _Node:
        token = self.take()
        if token.kind == "TERM":
            return _term(token, self._scope)
        if token.kind == "FIELD":
            outer, self._scope = self._scope, token.field
            group = self.group(self.take())
            self._scope = outer
            return group
        if token.kind == "(":
            return self.group(token)
        found = f"'{token.text}'" if token.kind != "END" else token.text
        after_text = f" after '{after.text}'" if after is not None else ""
        raise QueryError(f"expected a term{after_text}, found {found}", token.column)

    def group(self, opening: _Token) -> _Node:
        inner = self.or_expr(opening)
        closing = self.take()
        if closing.kind != ")":
            raise QueryError(f"expected ')' to close '(' opened at column {opening.column}", closing.column)
        return inner


def _term(token: _Token, scope: str | None) -> _Node:
    field = token.field or scope
    if field in NAME_FIELDS:
        return _name_term(token, field)
    value = token.value
    if not token.quoted and value == "*":
        if field is not None:
            raise QueryError(f"expected a word before '*' in '{token.text}'", token.column)
        return _All()
    prefix = not token.quoted and value.endswith("*")
    core = value[:-1] if prefix else value
    if not token.quoted and "*" in core:
        raise QueryError(f"'*' is only allowed at the end of a word, in '{token.text}'", token.column)
    folded = " ".join(fold(core).split())
    if _CJK.search(folded):
        return _Words(field, (), substring=folded)
    words = tuple(_WORD.findall(folded))
    if not words:
        raise QueryError(f"'{token.text}' has no letters or digits to search for", token.column)
    return _Words(field, words, prefix)


def _name_term(token: _Token, field: str) -> _Node:
    value = token.value.strip()
    prefix = field != "lang" and not token.quoted and value.endswith("*")
    name = (value[:-1] if prefix else value).casefold()
    if field == "lang" and not _LANG.fullmatch(name):
        raise QueryError(f"'lang:' expects a language code like 'en', found '{value}'", token.column)
    if not name:
        raise QueryError(f"expected a name after '{field}:'", token.column)
    return _Name(field, name, prefix)


def compile_query(text: str) -> Query:
    """Parse ``text`` once; raises QueryError naming the column and what was expected there."""
    tokens = _tokenize(text)
    if len(tokens) == 1:
        raise QueryError("empty query (write '*' to match every item)")
    return Query(text, _Parser(tokens).parse())


# ------------------------------------------------------------------------------------------- topics


class TopicMatcher:
    """A topic's restrictions and query, compiled once.

    ``topic.sources`` (names), ``topic.tags`` (any tag of the item's source) and ``topic.language``
    must all admit the item before the query runs. An item without a language fails a language list:
    the operator asked for those languages and cannot tell what an undeclared one is.
    """

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        try:
            self.query = compile_query(topic.query)
        except QueryError as e:
            raise QueryError(e.reason, e.column, topic=topic.name) from None
        self._sources = frozenset(topic.sources)
        self._tags = frozenset(tag.casefold() for tag in topic.tags)
        self._languages = frozenset(filter(None, map(_primary_language, topic.language)))

    def matches(self, item: Item, source_tags: Collection[str], doc: MatchDoc | None = None) -> bool:
        """True if ``item`` belongs in the topic; pass ``doc`` to share one MatchDoc across topics."""
        if self._sources and item.source not in self._sources:
            return False
        if self._tags and self._tags.isdisjoint(tag.casefold() for tag in source_tags):
            return False
        if self._languages and _primary_language(item.language) not in self._languages:
            return False
        return self.query.matches(doc if doc is not None else MatchDoc.from_item(item, source_tags))
