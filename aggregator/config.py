"""Load the operator's YAML config (``include:`` files, ``${ENV}`` values), validate it once, freeze it.

Every problem is reported at once as "FILE:LINE: key.path: message". Does not open the database, fetch
feeds or parse topic queries (the caller passes a query validator in).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from aggregator.errors import ConfigError
from aggregator.model import Source, Topic

__all__ = [
    "DEFAULT_DATABASE",
    "PoolSettings",
    "RetentionSettings",
    "ServerSettings",
    "Settings",
    "WorkerSettings",
    "config_json_schema",
    "load_config",
    "parse_duration",
    "parse_size",
]

DEFAULT_DATABASE = "sqlite:///data/aggregator.db"
Loc = tuple[int | str, ...]


# ---------------------------------------------------------------- frozen settings (the result)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""  # "" only before __post_init__: defaults to http://HOST:PORT, never a trailing slash
    processes: int = 0  # web processes of `serve` sharing the listening socket; 0: one per CPU
    threads: int = 8  # worker threads per web process (requests that may read the store)

    def __post_init__(self) -> None:
        url = self.base_url or _default_base_url(self.host, self.port)
        object.__setattr__(self, "base_url", url.rstrip("/"))


@dataclass(frozen=True)
class WorkerSettings:
    tick: float = 5.0  # seconds between scheduler wake-ups
    threads: int = 4
    per_host: int = 2  # requests in flight to one host at most, across all its sources
    host_retry_after: bool = True  # a host's 429/503 Retry-After also holds back its other sources
    lease: float = 600.0  # seconds a claimed source stays with its worker unless polled or released
    batch: int | None = None  # sources claimed and queued at most; None: twice ``threads``
    parse_processes: int = 0  # parse in a pool of this many processes; 0: in the polling threads


@dataclass(frozen=True)
class PoolSettings:
    """The database connection pool of each process (SQLAlchemy QueuePool)."""

    size: int = 10  # connections kept open
    overflow: int = 10  # more opened under load, closed when returned
    timeout: float = 30.0  # seconds to wait for a free connection before the operation fails
    sqlite_cache: int = 2**20  # bytes of SQLite page cache per connection (ignored on PostgreSQL)
    sqlite_mmap: int = 0  # bytes of the SQLite file each connection memory-maps; 0: off


@dataclass(frozen=True)
class RetentionSettings:
    days: int | None = None  # items older than this are pruned by `prune`; None keeps everything


@dataclass(frozen=True)
class Settings:
    path: Path  # the config file, absolute
    database: str = DEFAULT_DATABASE  # SQLAlchemy URL; a relative sqlite path is relative to the working dir
    server: ServerSettings = field(default_factory=ServerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    sources: tuple[Source, ...] = ()
    topics: tuple[Topic, ...] = ()
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    websub_hub: str | None = None  # WebSub hub URL (Link rel="hub", publish pings)
    database_pool: PoolSettings = field(default_factory=PoolSettings)

    def source(self, name: str) -> Source:
        """The source called ``name``; KeyError if there is none."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def topic(self, name: str) -> Topic:
        """The topic called ``name``; KeyError if there is none."""
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise KeyError(name)


def _default_base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):  # a wildcard bind address is not a place to send readers
        host = "localhost"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ---------------------------------------------------------------- durations and sizes

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*[a-z]+\s*)+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
_SECONDS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1}
_SECONDS |= {"m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60}
_SECONDS |= {"h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
_SECONDS |= {"d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_BYTES = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_BYTES |= {"kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_duration(value: str | int | float) -> timedelta:
    """``"30s"``, ``"10m"``, ``"1h30m"``, ``"2d"``, ``"1 hour"`` or a number of seconds; must be positive."""
    seconds = _duration_seconds(value)
    if seconds is None:
        raise ValueError(
            f"invalid duration {value!r}: write seconds or a number with a unit, e.g. 30s, 10m, 1h30m, 2d"
        )
    if not seconds > 0:
        raise ValueError(f"invalid duration {value!r}: must be greater than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {value!r}: too large") from None


def _duration_seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if _NUMBER.fullmatch(text):
        return float(text)
    if not _DURATION.fullmatch(text):
        return None
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        if unit not in _SECONDS:
            return None
        total += float(number) * _SECONDS[unit]
    return total


def parse_size(value: str | int) -> int:
    """``"10MB"`` (10**6 bytes), ``"512KB"``, ``"1.5MiB"`` (2**20 units) or a number of bytes; positive."""
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip().lower())):
        unit = _BYTES.get(match[2])
        size = None if unit is None else float(match[1]) * unit
    if size is None:
        raise ValueError(
            f"invalid size {value!r}: write bytes or a number with a unit, e.g. 512KB, 10MB, 1.5MiB"
        )
    if round(size) <= 0:
        raise ValueError(f"invalid size {value!r}: must be at least 1 byte")
    return round(size)


# ---------------------------------------------------------------- the file format (pydantic models)

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")  # source, topic and tag names (opml.py too)
_SLUG_ANCHORED = f"^{SLUG.pattern}$"
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_DURATION_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "number", "exclusiveMinimum": 0}],
    "description": "seconds, or a number with a unit: 30s, 10m, 1h30m, 2d",
}
_SIZE_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}],
    "description": "bytes, or a number with a unit: 512KB, 10MB (10**6), 1.5MiB (2**20)",
}


def _slug(kind: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not SLUG.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid {kind}: use lower-case letters, digits, '-', '_', '.'"
            )
        return value

    return check


def _interval(value: Any) -> timedelta:
    interval = parse_duration(value)
    if interval < timedelta(seconds=1):
        raise ValueError(f"interval {value!r} is too short: the minimum is 1 second")
    return interval


def _language(value: str) -> str:
    if not _LANGUAGE.fullmatch(value.lower()):
        raise ValueError(f"{value!r} is not a language code like 'en', 'uk' or 'pt-br'")
    return value.lower()


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _database_url(value: str) -> str:
    if not re.match(r"[A-Za-z][A-Za-z0-9+._-]*://", value):
        raise ValueError(
            f"{value!r} is not a database URL: write e.g. sqlite:///data/aggregator.db"
            " or postgresql+psycopg://user@host/db"
        )
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def _feed_url(value: str) -> str:
    """http(s)://host/..., file:///absolute/path, or a bare filesystem path (resolved later)."""
    value = value.strip()
    scheme = _SCHEME.match(value)
    if not value:
        raise ValueError("must not be empty")
    if scheme is None:
        return value
    if scheme[1].lower() in ("http", "https"):
        return _http_url(value)
    if scheme[1].lower() == "file":
        if urlsplit(value).netloc not in ("", "localhost"):
            raise ValueError(
                f"{value!r}: a file:// URL must be absolute (file:///path); write a relative path without file://"
            )
        return value
    raise ValueError(
        f"unsupported URL scheme {scheme[1]!r} in {value!r}: use http://, https://, file:// or a path"
    )


def _none_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _none_as_empty_mapping(value: Any) -> Any:
    return {} if value is None else value


def _topic_sources(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, list):
        return {"names": value}
    if isinstance(value, dict):
        return value
    raise ValueError("expected a list of source names, or a mapping with 'names' and/or 'tags'")


_SECONDS_OUT = PlainSerializer(lambda value: value.total_seconds(), return_type=float)
Duration = Annotated[
    timedelta, PlainValidator(parse_duration), _SECONDS_OUT, WithJsonSchema(_DURATION_SCHEMA)
]
Interval = Annotated[timedelta, PlainValidator(_interval), _SECONDS_OUT, WithJsonSchema(_DURATION_SCHEMA)]
Size = Annotated[int, PlainValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]


def _size_or_off(value: str | int) -> int:
    """0 (a feature turned off), or a size as ``parse_size`` reads it."""
    if not isinstance(value, bool) and value in (0, "0"):
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError(f"invalid size {value!r}: must be 0 (off) or more")
    return parse_size(value)


def _size_within(low: int, high: int, bounds: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be {bounds} (got {value:,} bytes)")
        return value

    return check


_SIZE_OR_OFF_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
    "description": f"{_SIZE_SCHEMA['description']}; 0: off",
}
SizeOrOff = Annotated[int, PlainValidator(_size_or_off), WithJsonSchema(_SIZE_OR_OFF_SCHEMA)]
Slug = Annotated[
    str, AfterValidator(_slug("name")), WithJsonSchema({"type": "string", "pattern": _SLUG_ANCHORED})
]
TagList = Annotated[list[Annotated[str, AfterValidator(_slug("tag"))]], BeforeValidator(_none_as_empty_list)]
StrList = Annotated[list[str], BeforeValidator(_none_as_empty_list)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression {value!r}: {e}") from None
    return value


RegexList = Annotated[list[Annotated[str, AfterValidator(_regex)]], BeforeValidator(_none_as_empty_list)]
AnyList = Annotated[list[Any], BeforeValidator(_none_as_empty_list)]
LanguageList = Annotated[
    list[Annotated[str, AfterValidator(_language)]], BeforeValidator(_none_as_empty_list)
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    base_url: Annotated[str, AfterValidator(_http_url)] | None = None
    processes: int = Field(
        default=0, ge=0, le=64, description="web processes of `serve` on one socket; 0: one per CPU"
    )
    threads: int = Field(default=8, ge=1, le=256, description="worker threads per web process")


class WorkerConfig(_Section):
    tick: Duration = Field(default=timedelta(seconds=5), description="seconds between scheduler wake-ups")
    threads: int = Field(default=4, ge=1, le=256, description="feeds fetched at once")
    per_host: int = Field(default=2, ge=1, le=64, description="requests in flight to one host at most")
    host_retry_after: bool = Field(
        default=True, description="a host's 429/503 Retry-After also holds back its other sources"
    )
    lease: Duration = Field(
        default=timedelta(minutes=10),
        description="how long a claimed source stays with its worker if the worker dies before polling it",
    )
    batch: int | None = Field(
        default=None, ge=1, le=10_000, description="sources claimed per tick at most (default: twice threads)"
    )
    parse_processes: int = Field(
        default=0, ge=0, le=64, description="parse feeds in a pool of this many processes (0: in the threads)"
    )


_SQLITE_CACHE = AfterValidator(_size_within(64_000, 10**9, "between 64KB and 1GB"))
_SQLITE_MMAP = AfterValidator(_size_within(0, 100 * 10**9, "at most 100GB"))


class PoolConfig(_Section):
    size: int = Field(default=10, ge=1, le=1000, description="database connections kept open per process")
    overflow: int = Field(default=10, ge=0, le=1000, description="more connections opened under load")
    timeout: Duration = Field(default=timedelta(seconds=30), description="wait for a free connection")
    sqlite_cache: Annotated[Size, _SQLITE_CACHE] = Field(
        default=2**20,
        description="SQLite page cache of each pooled connection (64KB to 1GB; ignored on PostgreSQL)",
    )
    sqlite_mmap: Annotated[SizeOrOff, _SQLITE_MMAP] = Field(
        default=0,
        description="bytes of the SQLite file each connection reads memory-mapped; 0: off "
        "(SQLite caps it at its build's limit, usually 2GiB; ignored on PostgreSQL)",
    )


class DefaultsConfig(_Section):
    interval: Interval | None = None
    timeout: Duration | None = None
    max_bytes: Size | None = None
    user_agent: str | None = None
    min_interval: Interval | None = Field(default=None, description="never poll a source more often")
    max_interval: Interval | None = Field(default=None, description="never poll a source less often")
    allow_private: bool = Field(
        default=False, description="let redirects lead into loopback, link-local or private addresses"
    )

    @model_validator(mode="after")
    def _interval_range(self) -> DefaultsConfig:
        model = Source(name="", url="")
        low, high = self.min_interval or model.min_interval, self.max_interval or model.max_interval
        if low > high:
            raise ValueError(f"min_interval ({low}) is longer than max_interval ({high})")
        return self


class AuthConfig(_Section):
    username: str
    password_env: str = Field(description="name of the environment variable holding the password")


class SourceConfig(_Section):
    name: Slug
    url: Annotated[str, AfterValidator(_feed_url)] = Field(
        description="http(s):// or file:// URL, or a path relative to this file"
    )
    title: str | None = None
    tags: TagList = []
    interval: Interval | None = None
    timeout: Duration | None = None
    max_bytes: Size | None = None
    user_agent: str | None = None
    headers: Annotated[dict[str, str], BeforeValidator(_none_as_empty_mapping)] = {}
    enabled: bool = True
    auth: AuthConfig | None = Field(
        default=None, description="HTTP basic auth; the password from the environment"
    )
    allow_private: bool | None = None
    strip_params: StrList = Field(default=[], description="more tracking query parameters to remove")
    boilerplate: RegexList = Field(default=[], description="regexes of whole furniture lines to remove")


class TopicSourcesConfig(_Section):
    names: StrList = []
    tags: StrList = []


def _topic_schema(schema: dict[str, Any]) -> None:
    sources = schema["properties"]["sources"]
    schema["properties"]["sources"] = {"anyOf": [{"type": "array", "items": {"type": "string"}}, sources]}


class TopicConfig(_Section):
    model_config = ConfigDict(json_schema_extra=_topic_schema)

    name: Slug
    query: Annotated[str, AfterValidator(_nonblank)]
    title: str | None = None
    description: str | None = None
    sources: Annotated[TopicSourcesConfig, BeforeValidator(_topic_sources)] = TopicSourcesConfig()
    language: LanguageList = []
    collapse_duplicates: bool | None = Field(default=None, description="alias: true = article, false = none")
    limit: int = Field(default=50, ge=1, le=1000)
    exclude: Annotated[TopicSourcesConfig, BeforeValidator(_topic_sources)] = Field(
        default=TopicSourcesConfig(), description="sources (names) and tags whose items never enter the topic"
    )
    min_length: int = Field(default=0, ge=0, description="leave out items with less plain text (characters)")
    icon: Annotated[str, AfterValidator(_http_url)] | None = None
    collapse: Literal["story", "article", "none"] | None = Field(
        default=None, description="one entry per story, per article (the default), or every item"
    )


class WebSubConfig(_Section):
    hub: Annotated[str, AfterValidator(_http_url)] | None = Field(
        default=None, description="WebSub hub announced in feed Link headers and pinged on new items"
    )


class IncludedFile(_Section):
    """An included file: sources and topics only (and more includes)."""

    include: StrList = []
    sources: AnyList = []  # items are validated one by one, so one bad source does not hide the others
    topics: AnyList = []


class RetentionConfig(_Section):
    days: int | None = Field(default=None, ge=1, description="prune items older than this many days")


class MainFile(IncludedFile):
    database: Annotated[str, AfterValidator(_database_url)] = DEFAULT_DATABASE
    database_pool: Annotated[PoolConfig, BeforeValidator(_none_as_empty_mapping)] = PoolConfig()
    server: Annotated[ServerConfig, BeforeValidator(_none_as_empty_mapping)] = ServerConfig()
    worker: Annotated[WorkerConfig, BeforeValidator(_none_as_empty_mapping)] = WorkerConfig()
    defaults: Annotated[DefaultsConfig, BeforeValidator(_none_as_empty_mapping)] = DefaultsConfig()
    retention: Annotated[RetentionConfig, BeforeValidator(_none_as_empty_mapping)] = RetentionConfig()
    websub: Annotated[WebSubConfig, BeforeValidator(_none_as_empty_mapping)] = WebSubConfig()


class ConfigFile(MainFile):
    """The whole file format, for the JSON Schema."""

    model_config = ConfigDict(title="aggregator configuration")

    sources: list[SourceConfig] = []
    topics: list[TopicConfig] = []


def config_json_schema() -> dict[str, object]:
    """JSON Schema (draft 2020-12) of the config file, as pydantic describes it."""
    schema = ConfigFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# ---------------------------------------------------------------- reading files and collecting problems


@dataclass
class _Doc:
    path: Path  # absolute
    display: str  # as the operator would write it
    index: int  # position in load order
    node: yaml.Node
    data: dict[str, Any]
    shell: IncludedFile | None = None


Origin = tuple[_Doc, Loc]  # the include entry that named a file
Chain = tuple[tuple[Path, str], ...]  # (absolute path, display name) of the files being included


@dataclass
class _Context:
    env: Mapping[str, str]
    docs: list[_Doc] = field(default_factory=list)
    problems: list[tuple[int, int, str]] = field(default_factory=list)
    reported: set[tuple[int, Loc]] = field(default_factory=set)  # (doc, loc) already wrong: skip follow-ups

    def add(self, doc: _Doc, loc: Loc, message: str) -> None:
        if any((doc.index, loc[:n]) in self.reported for n in range(1, len(loc) + 1)):
            return
        line = _line(doc.node, loc)
        where = f"{doc.display}:{line}: {_path(loc)}" if loc else f"{doc.display}:{line}"
        self.problems.append((doc.index, line, f"{where}: {message}"))

    def add_file(self, display: str, message: str, order: int = -1, line: int = 0) -> None:
        where = f"{display}:{line}" if line else display
        self.problems.append((order, line, f"{where}: {message}"))

    def where(self, doc: _Doc, loc: Loc) -> str:
        return f"{doc.display}:{_line(doc.node, loc)}"


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line(node: yaml.Node, loc: Loc) -> int:
    """1-based line of the deepest node ``loc`` reaches (a mapping key's own line when it ends on a key)."""
    mark = node.start_mark
    for part in loc:
        step = _step(node, part)
        if step is None:
            break
        mark, node = step
    return int(mark.line) + 1


def _step(node: yaml.Node, part: int | str) -> tuple[yaml.Mark, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key.start_mark, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        child = node.value[part]
        return child.start_mark, child
    return None


def _duplicate_keys(node: yaml.Node, loc: Loc = ()) -> Iterator[Loc]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            if name in seen and name != "<<":
                yield (*loc, name)
            seen.add(name)
            yield from _duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            yield from _duplicate_keys(child, (*loc, i))


_ENV = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")


def _substitute(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${NAME}`` and ``${NAME:-default}`` (``$${`` is a literal ``${``); return text and errors."""
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if match[0] == "$${":
            return "${"
        if name is None:
            errors.append("malformed '${': write ${NAME} or ${NAME:-default} ($${ for a literal '${')")
            return match[0]
        if env.get(name) or (default is None and name in env):
            return env[name]
        if default is not None:
            return default
        errors.append(
            f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
        )
        return match[0]

    return _ENV.sub(replace, text), errors


def _expand_env(value: Any, loc: Loc, doc: _Doc, ctx: _Context) -> Any:
    if isinstance(value, str) and "${" in value:
        text, errors = _substitute(value, ctx.env)
        for error in errors:
            ctx.add(doc, loc, error)
        if errors:
            ctx.reported.add((doc.index, loc))
        return text
    if isinstance(value, dict):
        return {str(k): _expand_env(v, (*loc, str(k)), doc, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), doc, ctx) for i, v in enumerate(value)]
    return value


def _parse_yaml(text: str) -> tuple[yaml.Node, Any, list[Loc]]:
    """The node tree (for line numbers), the data, and the keys repeated in a mapping."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # an empty file (or only comments): an empty mapping on line 1
            return yaml.MappingNode("tag:yaml.org,2002:map", [], yaml.Mark("", 0, 0, 0, "", 0)), {}, []
        duplicates = list(_duplicate_keys(node))  # before construction merges '<<' keys in
        return node, loader.construct_document(node), duplicates
    finally:
        loader.dispose()


def _yaml_problem(error: yaml.YAMLError, text: str) -> tuple[int, str]:
    """(line, message) for a PyYAML error: "while parsing X on line N: expected Y, but found Z"."""
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, error.position) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        return line, f"YAML syntax error: control character U+{code:04X} is not allowed"
    if not isinstance(error, yaml.MarkedYAMLError):  # pragma: no cover - loading raises only these two
        return 0, f"YAML syntax error: {error}"
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark else 0
    context = error.context or ""
    if context and error.context_mark and error.context_mark.line + 1 != line:
        context += f" on line {error.context_mark.line + 1}"
    return line, "YAML syntax error: " + ": ".join(part for part in (context, error.problem) if part)


def _read(path: Path, display: str, ctx: _Context, origin: Origin | None) -> _Doc | None:
    """Read and parse one file; on failure record a problem (at the include line if included)."""
    order = len(ctx.docs)
    try:
        raw = path.read_bytes()
    except OSError as error:
        missing = isinstance(error, FileNotFoundError)
        if origin:
            ctx.add(
                *origin,
                f"file not found: {display}" if missing else f"cannot read {display}: {error.strerror}",
            )
        else:
            ctx.add_file(display, "file not found" if missing else f"cannot read: {error.strerror}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        ctx.add_file(
            display, f"not UTF-8 text (byte {raw[error.start]:#04x}): save the file as UTF-8", order, line
        )
        return None
    try:
        node, data, duplicates = _parse_yaml(text)
    except yaml.YAMLError as error:
        line, message = _yaml_problem(error, text)
        ctx.add_file(display, message, order, line)
        return None
    doc = _Doc(path, display, order, node, {})
    for loc in duplicates:
        ctx.add(doc, loc, f"duplicate key {loc[-1]!r} (only the last one would count)")
    if data is not None and not isinstance(data, dict):
        ctx.add_file(
            display, "expected a mapping of keys (database:, sources:, topics:, ...) at the top", order, 1
        )
        return None
    doc.data = _expand_env(data or {}, (), doc, ctx)
    return doc


# ---------------------------------------------------------------- validation


M = TypeVar("M", bound=BaseModel)
QueryCheck = Callable[[str], object]  # raises ValueError(message) for a bad topic query


def _validate(model: type[M], data: Any, doc: _Doc, prefix: Loc, ctx: _Context) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        for detail in error.errors():
            loc = tuple(p for p in detail["loc"] if p != "[key]")
            ctx.add(doc, (*prefix, *loc), _message(dict(detail), model, loc))
        return None


_MESSAGES = {
    "missing": "required key is missing",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a text value",
    "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value pairs)",
    "model_type": "expected a mapping (key: value pairs)",
    "model_attributes_type": "expected a mapping (key: value pairs)",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
}


def _message(detail: dict[str, Any], model: type[BaseModel], loc: Loc) -> str:
    kind, ctx = detail["type"], detail.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key(model, loc)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", detail["msg"]))
    template = _MESSAGES.get(kind)
    if template is None:
        msg = str(detail["msg"])
        return msg[:1].lower() + msg[1:]
    value = detail.get("input")
    got = "" if kind == "missing" else f" (got {_show(value)})"
    if kind == "string_type" and isinstance(value, bool):
        got += "; YAML reads yes/no/on/off/true/false as booleans: quote the value"
    return template.format(**ctx) + got


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unknown_key(model: type[BaseModel], loc: Loc) -> str:
    key = str(loc[-1])
    if model is IncludedFile and key in MainFile.model_fields:
        return f"'{key}' is only allowed in the main config file"
    return "unknown key" + _suggest(key, _allowed_keys(model, loc[:-1]), "key")


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys of the section that ``loc`` (a path of keys inside ``model``) leads to."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", {})
        current = fields[part].annotation if part in fields else None
        current = next((a for a in get_args(current) if hasattr(a, "model_fields")), current)  # X | None
    return list(getattr(current, "model_fields", {}))


def _suggest(word: str, choices: list[str] | set[str], what: str = "") -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if what == "key" and choices:
        return f" (expected one of: {', '.join(choices)})"
    return ""


# ---------------------------------------------------------------- loading the tree of files


def _load(path: Path, display: str, ctx: _Context, chain: Chain, origin: Origin | None) -> None:
    """Read ``path`` and, depth first, the files it includes; ``chain`` is the include path so far."""
    resolved = path.resolve()
    if origin is not None and any(resolved == seen for seen, _ in chain):
        cycle = " -> ".join([*(name for _, name in chain), display])
        ctx.add(*origin, f"include cycle: {cycle}")
        return
    for known in ctx.docs:
        if origin is not None and known.path == resolved:
            ctx.add(*origin, f"{display} is already included (as {known.display})")
            return
    doc = _read(resolved, display, ctx, origin)
    if doc is None:
        return
    ctx.docs.append(doc)
    doc.shell = _validate(MainFile if doc.index == 0 else IncludedFile, doc.data, doc, (), ctx)
    for j, name in _include_names(doc, ctx):
        target = Path(os.path.expanduser(name))
        shown = os.path.normpath(os.path.join(os.path.dirname(display), target))
        _load(doc.path.parent / target, shown, ctx, (*chain, (resolved, display)), (doc, ("include", j)))


def _include_names(doc: _Doc, ctx: _Context) -> Iterator[tuple[int, str]]:
    """The include entries to follow (the shell validation has reported entries that are not text)."""
    includes = doc.data.get("include")
    for j, name in enumerate(includes if isinstance(includes, list) else []):
        if isinstance(name, str | int | float) and not isinstance(name, bool):
            if str(name).strip():
                yield j, str(name).strip()
            else:
                ctx.add(doc, ("include", j), "must not be empty")


def _items(doc: _Doc, key: str) -> list[tuple[int, Any]]:
    value = doc.data.get(key)
    return list(enumerate(value)) if isinstance(value, list) else []


def _source_url(url: str, doc: _Doc) -> str:
    if _SCHEME.match(url):
        return url
    return (doc.path.parent / os.path.expanduser(url)).resolve().as_uri()


def _build_source(model: SourceConfig, defaults: DefaultsConfig, doc: _Doc) -> Source:
    options: dict[str, Any] = {}
    for values in (defaults, model):
        for key in ("interval", "timeout", "max_bytes", "user_agent"):
            if getattr(values, key) is not None:
                options[key] = getattr(values, key)
    if "timeout" in options:
        options["timeout"] = options["timeout"].total_seconds()
    return Source(
        name=model.name,
        url=_source_url(model.url, doc),
        title=model.title,
        tags=tuple(model.tags),
        headers=tuple(model.headers.items()),
        enabled=model.enabled,
        strip_params=tuple(model.strip_params),
        boilerplate=tuple(model.boilerplate),
        **options,
    )


def _with_polite_options(source: Source, model: SourceConfig, defaults: DefaultsConfig) -> Source:
    """min/max interval from the defaults; allow_private from the source, else the defaults."""
    allow = model.allow_private if model.allow_private is not None else defaults.allow_private
    return dataclasses.replace(
        source,
        allow_private=allow,
        min_interval=defaults.min_interval or source.min_interval,
        max_interval=defaults.max_interval or source.max_interval,
    )


def _with_auth(source: Source, model: SourceConfig, doc: _Doc, loc: Loc, ctx: _Context) -> Source:
    """Basic auth: the password is read from the named environment variable, never from the file."""
    if model.auth is None:
        return source
    name = model.auth.password_env
    password = ctx.env.get(name)
    if password is None:
        ctx.add(doc, (*loc, "auth", "password_env"), f"environment variable {name} is not set")
        return source
    return dataclasses.replace(source, auth=(model.auth.username, password))


def _collect_sources(
    ctx: _Context, defaults: DefaultsConfig
) -> tuple[list[Source], dict[str, str], set[str]]:
    """Validate every source; return them, where each name was defined, and every tag in use."""
    sources: list[Source] = []
    names: dict[str, str] = {}
    tags: set[str] = set()
    for doc in ctx.docs:
        for i, raw in _items(doc, "sources"):
            raw_map = raw if isinstance(raw, dict) else {}
            name = raw_map.get("name")
            if isinstance(name, str) and name in names:
                ctx.add(
                    doc, ("sources", i, "name"), f"duplicate source name {name!r} (first at {names[name]})"
                )
            elif isinstance(name, str):
                names[name] = ctx.where(doc, ("sources", i, "name"))
            raw_tags = raw_map.get("tags")
            tags.update(t for t in (raw_tags if isinstance(raw_tags, list) else []) if isinstance(t, str))
            model = _validate(SourceConfig, raw, doc, ("sources", i), ctx)
            if model is not None:
                source = _with_polite_options(_build_source(model, defaults, doc), model, defaults)
                sources.append(_with_auth(source, model, doc, ("sources", i), ctx))
    return sources, names, tags


def _raw_refs(raw: dict[str, Any]) -> Iterator[tuple[Loc, str, str]]:
    """(loc, "source" or "tag", value) for each reference in a topic's ``sources`` and ``exclude``."""
    for option in ("sources", "exclude"):
        value = raw.get(option)
        lists = {"names": value} if isinstance(value, list) else value if isinstance(value, dict) else {}
        for key, kind in (("names", "source"), ("tags", "tag")):
            items = lists.get(key)
            for j, ref in enumerate(items if isinstance(items, list) else []):
                if isinstance(ref, str):
                    yield (option, j) if isinstance(value, list) else (option, key, j), kind, ref


def _check_topic(
    raw: dict[str, Any], known: tuple[dict[str, str], set[str]], validate_query: QueryCheck | None
) -> Iterator[tuple[Loc, str]]:
    """Problems with what a topic refers to (checked even when the topic has other problems)."""
    names, tags = known
    for loc, kind, ref in _raw_refs(raw):
        if kind == "source" and ref not in names:
            yield loc, f"unknown source {ref!r}" + _suggest(ref, set(names))
        elif kind == "tag" and ref not in tags:
            yield loc, f"no source has the tag {ref!r}" + _suggest(ref, tags)
    query = raw.get("query")
    if validate_query is not None and isinstance(query, str) and query.strip():
        try:
            validate_query(query)
        except ValueError as error:
            yield ("query",), str(error)


def _collect_topics(
    ctx: _Context, known: tuple[dict[str, str], set[str]], validate_query: QueryCheck | None
) -> list[Topic]:
    topics: list[Topic] = []
    seen: dict[str, str] = {}
    for doc in ctx.docs:
        for i, raw in _items(doc, "topics"):
            raw_map = raw if isinstance(raw, dict) else {}
            name = raw_map.get("name")
            if isinstance(name, str) and name in seen:
                ctx.add(doc, ("topics", i, "name"), f"duplicate topic name {name!r} (first at {seen[name]})")
            elif isinstance(name, str):
                seen[name] = ctx.where(doc, ("topics", i, "name"))
            for loc, message in _check_topic(raw_map, known, validate_query):
                ctx.add(doc, ("topics", i, *loc), message)
            model = _validate(TopicConfig, raw, doc, ("topics", i), ctx)
            if model is not None:
                topics.append(_build_topic(model))
    return topics


def _build_topic(model: TopicConfig) -> Topic:
    return Topic(
        name=model.name,
        query=model.query,
        title=model.title,
        description=model.description,
        sources=tuple(model.sources.names),
        tags=tuple(model.sources.tags),
        language=tuple(model.language),
        limit=model.limit,
        exclude_sources=tuple(model.exclude.names),
        exclude_tags=tuple(model.exclude.tags),
        min_length=model.min_length,
        icon=model.icon,
        collapse=_collapse(model),
    )


def _collapse(model: TopicConfig) -> str:
    """``collapse`` wins; ``collapse_duplicates: true`` is an alias of article, false of none."""
    if model.collapse is not None:
        return model.collapse
    if model.collapse_duplicates is not None:
        return "article" if model.collapse_duplicates else "none"
    return "article"


def load_config(
    path: str | Path,
    *,
    validate_query: QueryCheck | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate ``path`` and its includes; raise ConfigError listing every problem found.

    ``validate_query(query)`` raises ValueError for a bad topic query. ``env`` defaults to os.environ.
    """
    display = os.fspath(path)
    ctx = _Context(env=os.environ if env is None else env)
    _load(Path(path), display, ctx, (), None)
    main = ctx.docs[0] if ctx.docs else None
    shell = main.shell if main else None
    defaults = shell.defaults if isinstance(shell, MainFile) else DefaultsConfig()
    sources, names, tags = _collect_sources(ctx, defaults)
    topics = _collect_topics(ctx, (names, tags), validate_query)
    if ctx.problems or main is None or not isinstance(shell, MainFile):
        count = len(ctx.problems)
        lines = [text for _, _, text in sorted(ctx.problems, key=lambda p: (p[0], p[1]))]
        raise ConfigError(f"{display}: {count} problem{'s' * (count != 1)}", lines)
    server = ServerSettings(
        shell.server.host,
        shell.server.port,
        shell.server.base_url or "",
        processes=shell.server.processes,
        threads=shell.server.threads,
    )
    worker = WorkerSettings(
        shell.worker.tick.total_seconds(),
        shell.worker.threads,
        per_host=shell.worker.per_host,
        host_retry_after=shell.worker.host_retry_after,
        lease=shell.worker.lease.total_seconds(),
        batch=shell.worker.batch,
        parse_processes=shell.worker.parse_processes,
    )
    retention = RetentionSettings(shell.retention.days)
    pool = shell.database_pool
    return Settings(
        main.path,
        shell.database,
        server,
        worker,
        tuple(sources),
        tuple(topics),
        retention,
        shell.websub.hub,
        PoolSettings(
            pool.size, pool.overflow, pool.timeout.total_seconds(), pool.sqlite_cache, pool.sqlite_mmap
        ),
    )
