"""The topic query language: a query is parsed once into a tree and evaluated on pre-tokenized items.

Pure: no I/O, no clock (relative dates use the ``now`` the caller puts in the MatchDoc). Matching is case-
and accent-insensitive, on whole words (CJK text: on substrings); regular expressions run on RE2.

Grammar (precedence NOT > AND > OR; adjacent terms are ANDed)::

    query   := or_expr
    or_expr := and_expr ("OR" and_expr)*
    and_expr:= unary (["AND"] unary)*
    unary   := ("NOT" | "-") unary | primary
    primary := "(" or_expr ")" | WFIELD "(" or_expr ")" | term
    term    := [FIELD] (word | word* | "quoted phrase" | /regex/) | "*"
    WFIELD  := title: | text: | author: | category:
    FIELD   := WFIELD | source: | tag: | lang: | domain: | url: | published:

Only upper-case AND/OR/NOT are operators; "and" is a word. ``*`` alone matches every item.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from aggregator.errors import AggregatorError
from aggregator.model import Item, Topic

__all__ = ["MatchDoc", "Query", "QueryError", "TopicMatcher", "compile_query", "fold"]

TEXT_FIELDS = ("title", "text", "author", "category")  # words and phrases; may scope a group: title:( … )
NAME_FIELDS = ("source", "tag", "lang", "domain")
OTHER_FIELDS = ("url", "published")
ALL_FIELDS = TEXT_FIELDS + NAME_FIELDS + OTHER_FIELDS
REGEX_FIELDS = (*TEXT_FIELDS, "url")
MAX_REGEX_CHARS = 500
REGEX_MEMORY = 8 << 20  # bytes RE2 may use per compiled pattern
_KEYWORDS = frozenset({"AND", "OR", "NOT"})
_WORD = re.compile(r"\w+")
_FIELD = re.compile(r"([A-Za-z]+):(.*)", re.DOTALL)
_FIELD_REGEX = re.compile(r"([A-Za-z]+):/")
_LANG = re.compile(r"[a-z]{2,3}")
_AGO = re.compile(r"(\d{1,5})([hdw])")
_AGO_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
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


class FieldIndex:
    """One text field, folded and split into words once. The word set is built at once; the positions
    (for phrases) and the sorted vocabulary (for prefixes) on first use, since most queries need neither."""

    __slots__ = ("_positions", "_set", "_vocabulary", "folded", "words")

    def __init__(self, folded: str, words: tuple[str, ...]) -> None:
        self.folded = folded
        self.words = words
        self._set = frozenset(words)
        self._positions: dict[str, tuple[int, ...]] | None = None
        self._vocabulary: tuple[str, ...] | None = None

    @classmethod
    def of(cls, text: str) -> FieldIndex:
        folded = " ".join(fold(text).split())
        return cls(folded, tuple(_WORD.findall(folded)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldIndex) and other.folded == self.folded  # words follow from folded

    def __hash__(self) -> int:
        return hash(self.folded)

    def __repr__(self) -> str:
        return f"FieldIndex({self.folded!r})"

    @property
    def positions(self) -> Mapping[str, tuple[int, ...]]:
        """Where each word occurs, in order."""
        if self._positions is None:
            found: dict[str, list[int]] = {}
            for i, word in enumerate(self.words):
                found.setdefault(word, []).append(i)
            self._positions = {word: tuple(where) for word, where in found.items()}
        return self._positions

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The distinct words, sorted."""
        if self._vocabulary is None:
            self._vocabulary = tuple(sorted(self._set))
        return self._vocabulary

    def has_word(self, word: str, prefix: bool = False) -> bool:
        if not prefix:
            return word in self._set
        i = bisect.bisect_left(self.vocabulary, word)
        return i < len(self.vocabulary) and self.vocabulary[i].startswith(word)

    def has_words(self, words: tuple[str, ...], prefix: bool = False) -> bool:
        """Consecutive ``words``; with ``prefix`` the last one only has to start the word."""
        if len(words) == 1:
            return self.has_word(words[0], prefix)
        whole = words if not prefix else words[:-1]
        if not self._set.issuperset(whole):  # a word missing: no need to build the positions
            return False
        rest = words[1:]
        for start in self.positions.get(words[0], ()):
            tail = self.words[start + 1 : start + 1 + len(rest)]
            if len(tail) < len(rest) or tail[:-1] != rest[:-1]:
                continue
            if tail[-1] == rest[-1] or (prefix and tail[-1].startswith(rest[-1])):
                return True
        return False


_NO_TEXT = FieldIndex.of("")


@dataclass(frozen=True, slots=True)
class MatchDoc:
    """What queries look at, built once per item and shared by every topic.

    ``now`` anchors relative dates (``published:>7d``); without it they match nothing.
    """

    title: FieldIndex
    text: FieldIndex
    source: str
    tags: frozenset[str]
    language: str | None
    author: FieldIndex = _NO_TEXT
    category: FieldIndex = _NO_TEXT
    url: str = ""  # canonical URL, case-folded
    domain: str = ""  # its host, case-folded
    published: datetime | None = None
    now: datetime | None = None
    raw: Mapping[str, str] = field(default_factory=dict)  # unfolded fields, for regular expressions

    @classmethod
    def from_item(
        cls, item: Item, source_tags: Collection[str] = (), now: datetime | None = None
    ) -> MatchDoc:
        authors, categories = "\n".join(item.authors), "\n".join(item.categories)
        url = item.url or item.link or ""
        return cls(
            title=FieldIndex.of(item.title),
            text=FieldIndex.of(item.text),
            source=item.source.casefold(),
            tags=frozenset(tag.casefold() for tag in source_tags),
            language=_primary_language(item.language),
            author=FieldIndex.of(authors),
            category=FieldIndex.of(categories),
            url=url.casefold(),
            domain=_host(url),
            published=item.published,
            now=now,
            raw={
                "title": item.title,
                "text": item.text,
                "author": authors,
                "category": categories,
                "url": url,
            },
        )

    def words(self, name: str | None) -> tuple[FieldIndex, ...]:
        """The word fields a term looks in: the named one, or the title and the text."""
        if name is None:
            return (self.title, self.text)
        index: FieldIndex = getattr(self, name)
        return (index,)


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").casefold()
    except ValueError:
        return ""


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
    """Words (one, or a phrase) in one word field, or in the title or the text (``field`` None)."""

    field: str | None
    words: tuple[str, ...]
    prefix: bool = False
    substring: str | None = None  # CJK: a substring of the folded field instead of words

    def matches(self, doc: MatchDoc) -> bool:
        fields = doc.words(self.field)
        if self.substring is not None:
            return any(self.substring in f.folded for f in fields)
        return any(f.has_words(self.words, self.prefix) for f in fields)


@dataclass(frozen=True, slots=True)
class _Name:
    """source:NAME, tag:NAME (either may end in ``*``), lang:CODE or domain:HOST (and its subdomains)."""

    field: str
    name: str
    prefix: bool = False

    def matches(self, doc: MatchDoc) -> bool:
        if self.field == "lang":
            return doc.language == self.name
        if self.field == "domain":
            return doc.domain == self.name or doc.domain.endswith("." + self.name)
        names = (doc.source,) if self.field == "source" else doc.tags
        return any(n == self.name or (self.prefix and n.startswith(self.name)) for n in names)


@dataclass(frozen=True, slots=True)
class _Url:
    """url:TEXT: a case-insensitive substring of the item's canonical URL."""

    part: str

    def matches(self, doc: MatchDoc) -> bool:
        return self.part in doc.url


@dataclass(frozen=True, slots=True)
class _Regex:
    """/RE2 pattern/ on the unfolded field (case-insensitive); RE2 runs in linear time, so no pattern
    can stall the worker with backtracking."""

    field: str | None
    pattern: Any  # re2._Regexp (untyped)

    def matches(self, doc: MatchDoc) -> bool:
        fields = ("title", "text") if self.field is None else (self.field,)
        return any(self.pattern.search(doc.raw.get(name, "")) is not None for name in fields)


@dataclass(frozen=True, slots=True)
class _Bound:
    """A point in time: a fixed instant, or a distance before ``now``."""

    at: datetime | None = None
    ago: timedelta | None = None

    def resolve(self, now: datetime | None) -> datetime | None:
        if self.at is not None:
            return self.at
        return None if now is None or self.ago is None else now - self.ago


@dataclass(frozen=True, slots=True)
class _Published:
    """published:… — ``start`` inclusive, ``end`` exclusive."""

    start: _Bound | None
    end: _Bound | None

    def matches(self, doc: MatchDoc) -> bool:
        when = doc.published
        if when is None:
            return False
        start = self.start.resolve(doc.now) if self.start else None
        end = self.end.resolve(doc.now) if self.end else None
        if (self.start and start is None) or (self.end and end is None):
            return False  # a relative date without ``now``
        return (start is None or when >= start) and (end is None or when < end)


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
    regex: bool = False


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
        elif char == "/":
            value, i = _regex(query, i)
            tokens.append(_Token("TERM", column, query[column - 1 : i], value=value, regex=True))
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


def _regex(query: str, i: int) -> tuple[str, int]:
    """The pattern whose opening slash is at ``i`` (``\\/`` is a literal slash), and the index after it."""
    j, chars = i + 1, []
    while j < len(query) and query[j] != "/":
        if query[j] == "\\" and j + 1 < len(query) and query[j + 1] == "/":
            j += 1
        elif query[j] == "\\" and j + 1 < len(query):
            chars.append(query[j])
            j += 1
        chars.append(query[j])
        j += 1
    if j >= len(query):
        raise QueryError(
            f"expected '/' to close the regular expression opened at column {i + 1}", len(query) + 1
        )
    if j + 1 < len(query) and not (query[j + 1].isspace() or query[j + 1] == ")"):
        raise QueryError("expected a space or ')' after the regular expression", j + 2)
    return "".join(chars), j + 1


def _word(query: str, i: int) -> tuple[_Token, int]:
    start = i
    regex_field = _FIELD_REGEX.match(query, i)
    if regex_field is not None and regex_field.group(1).lower() in ALL_FIELDS:
        name = _field_name(regex_field.group(1), query[start : regex_field.end()], start + 1)
        value, end = _regex(query, regex_field.end() - 1)
        if name not in REGEX_FIELDS:
            allowed = ", ".join(f"{f}:" for f in REGEX_FIELDS)
            raise QueryError(f"regular expressions work on {allowed} (not {name}:)", start + 1)
        return _Token("TERM", start + 1, query[start:end], field=name, value=value, regex=True), end
    while i < len(query) and not query[i].isspace() and query[i] not in '()"':
        i += 1
    text, column = query[start:i], start + 1
    if text in _KEYWORDS:
        return _Token(text, column, text), i
    found = _FIELD.fullmatch(text)
    if found is None:
        return _Token("TERM", column, text, value=text), i
    name, value = _field_name(found.group(1), text, column), found.group(2)
    if value:
        return _Token("TERM", column, text, field=name, value=value), i
    if i < len(query) and query[i] == '"':
        value, end = _phrase(query, i)
        return _Token("TERM", column, query[start:end], field=name, value=value, quoted=True), end
    if i < len(query) and query[i] == "(" and name in TEXT_FIELDS:
        return _Token("FIELD", column, text, field=name), i
    what = {"published": "a date or a range", "url": "part of a URL"}.get(name, "a name")
    if name in TEXT_FIELDS:
        what = "a word, phrase, /regex/ or '('"
    raise QueryError(f"expected {what} right after '{text}'", column)


def _field_name(written: str, text: str, column: int) -> str:
    name = written.lower()
    if name not in ALL_FIELDS:
        fields = ", ".join(f"{f}:" for f in ALL_FIELDS)
        raise QueryError(
            f"unknown field '{written}:' (expected one of {fields}; "
            f'quote the text to search for it: "{text}")',
            column,
        )
    return name


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
    if token.regex:
        return _regex_term(token, field)
    if field in NAME_FIELDS:
        return _name_term(token, field)
    if field == "url":
        part = token.value.strip().casefold()
        if not part:
            raise QueryError("expected part of a URL after 'url:'", token.column)
        return _Url(part)
    if field == "published":
        return _date_term(token)
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
    prefix = field in ("source", "tag") and not token.quoted and value.endswith("*")
    name = (value[:-1] if prefix else value).casefold()
    if field == "lang" and not _LANG.fullmatch(name):
        raise QueryError(f"'lang:' expects a language code like 'en', found '{value}'", token.column)
    if field == "domain":
        name = name.removeprefix("www.").strip(".")
    if not name:
        raise QueryError(f"expected a name after '{field}:'", token.column)
    return _Name(field, name, prefix)


def _regex_term(token: _Token, field: str | None) -> _Node:
    if field is not None and field not in REGEX_FIELDS:
        allowed = ", ".join(f"{f}:" for f in REGEX_FIELDS)
        raise QueryError(f"regular expressions work on {allowed} (not {field}:)", token.column)
    if not token.value:
        raise QueryError("empty regular expression", token.column)
    if len(token.value) > MAX_REGEX_CHARS:
        raise QueryError(f"regular expression longer than {MAX_REGEX_CHARS} characters", token.column)
    import re2  # type: ignore[import-untyped]  # ~3 MB: loaded by the first regular expression only

    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = REGEX_MEMORY
    try:
        pattern = re2.compile(token.value, options)
    except re2.error as e:
        cause = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else e
        raise QueryError(
            f"invalid regular expression /{token.value}/: {cause} (RE2 syntax)", token.column
        ) from None
    return _Regex(field, pattern)


# --------------------------------------------------------------------------------------------- dates


def _date_term(token: _Token) -> _Node:
    """published:>7d, published:<=2024-05-01, published:2024-05-01, published:2024-05-01..2024-05-31."""
    value = token.value.strip()
    for op in (">=", "<=", ">", "<"):
        if value.startswith(op):
            start, end = _date_bounds(value[len(op) :], token)
            if op == ">":  # after: a day ends at midnight, a relative point is "newer than"
                return _Published(end if end is not None else start, None)
            if op == ">=":
                return _Published(start, None)
            if op == "<":
                return _Published(None, start)
            return _Published(None, end if end is not None else start)
    if ".." in value:
        first, last = value.split("..", 1)
        if not first and not last:
            raise QueryError("expected a date before or after '..'", token.column)
        since = _date_bounds(first, token)[0] if first else None
        until = None
        if last:
            low, high = _date_bounds(last, token)
            until = high if high is not None else low
        return _Published(since, until)
    start, end = _date_bounds(value, token)
    return _Published(start, end)  # a day: that day; "7d": within the last seven days


def _date_bounds(text: str, token: _Token) -> tuple[_Bound, _Bound | None]:
    """(start, end) of a day or instant; a relative point (7d, 12h, 2w) is its own start, no end."""
    text = text.strip()
    ago = _AGO.fullmatch(text)
    if ago:
        return _Bound(ago=int(ago.group(1)) * _AGO_UNITS[ago.group(2)]), None
    try:
        if _DAY.fullmatch(text):
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return _Bound(at=day), _Bound(at=day + timedelta(days=1))
        when = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"expected a date (2024-05-01, 2024-05-01T12:00Z) or an age (12h, 7d, 2w) in '{token.text}'",
            token.column,
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return _Bound(at=when), _Bound(at=when)


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
    must all admit the item, and ``exclude_sources`` / ``exclude_tags`` / ``min_length`` must not
    reject it, before the query runs. An item without a language fails a language list: the operator
    asked for those languages and cannot tell what an undeclared one is.
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
        self._not_sources = frozenset(topic.exclude_sources)
        self._not_tags = frozenset(tag.casefold() for tag in topic.exclude_tags)
        self._min_length = topic.min_length

    def admits(self, item: Item, source_tags: Collection[str]) -> bool:
        """The topic's options (not its query) let ``item`` in."""
        tags = {tag.casefold() for tag in source_tags}
        if (self._sources and item.source not in self._sources) or item.source in self._not_sources:
            return False
        if (self._tags and self._tags.isdisjoint(tags)) or not self._not_tags.isdisjoint(tags):
            return False
        if self._languages and _primary_language(item.language) not in self._languages:
            return False
        return len(item.text.strip()) >= self._min_length

    def matches(
        self,
        item: Item,
        source_tags: Collection[str],
        doc: MatchDoc | None = None,
        *,
        now: datetime | None = None,
    ) -> bool:
        """True if ``item`` belongs in the topic; pass ``doc`` to share one MatchDoc across topics."""
        if not self.admits(item, source_tags):
            return False
        return self.query.matches(doc if doc is not None else MatchDoc.from_item(item, source_tags, now))
