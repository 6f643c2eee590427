"""Sources in and out as OPML 2.0: read an OPML file into feeds, plan what an import adds, append the new
sources to the config text (the operator's comments and layout untouched), write the export.

No database, no network: the caller (``cli.py``) loads and validates the config and writes the files.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from lxml import etree

from aggregator.config import SLUG, SourceConfig
from aggregator.errors import ConfigError
from aggregator.model import Source

__all__ = [
    "NS",
    "Feed",
    "ImportPlan",
    "append_sources",
    "export_opml",
    "parse_opml",
    "plan_import",
    "raw_sources",
    "read_opml_file",
]

NS = "https://github.com/aggregator/aggregator/opml/1"  # the per-source options (aggregator:interval, ...)
PREFIX = "aggregator"
MAX_BYTES = 20 * 10**6  # an OPML file larger than this is refused (the largest real ones are ~1 MB)
OPTIONS = tuple(k for k in SourceConfig.model_fields if k not in ("name", "url", "title", "tags"))
TEXT_OPTIONS = frozenset({"interval", "timeout", "max_bytes", "user_agent"})  # kept as written; others JSON
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_SECRET_HEADER = re.compile(r"auth|cookie|token|secret|key|pass|session|signature", re.IGNORECASE)


# ---------------------------------------------------------------- reading OPML


@dataclass(frozen=True)
class Feed:
    """One feed outline of an OPML file (an outline with an ``xmlUrl``)."""

    line: int
    url: str  # xmlUrl as written
    text: str | None = None
    title: str | None = None
    categories: tuple[str, ...] = ()  # enclosing category outlines, then the ``category`` attribute
    name: str | None = None  # aggregator:name
    options: Mapping[str, str] = field(default_factory=dict)  # aggregator:KEY attributes, as written

    @property
    def label(self) -> str:
        """How the outline is named in messages: its title or text, else its URL, and its line."""
        shown = self.title or self.text or self.url
        return f"outline {shown!r} (line {self.line})"


@dataclass(frozen=True)
class OpmlDoc:
    display: str
    feeds: tuple[Feed, ...]
    ignored: tuple[tuple[str, str], ...]  # (outline label, why): commented out, includes not followed
    problems: tuple[str, ...]  # feed-like outlines that cannot be imported


def read_opml_file(path: str) -> bytes:
    """The bytes of ``path`` (``-``: standard input); ConfigError naming the file when it cannot be read."""
    try:
        if path == "-":
            return sys.stdin.buffer.read(MAX_BYTES + 1)
        with open(path, "rb") as stream:
            return stream.read(MAX_BYTES + 1)
    except OSError as e:
        reason = "file not found" if isinstance(e, FileNotFoundError) else f"cannot read: {e.strerror}"
        raise ConfigError(f"{path}: {reason}") from e


def parse_opml(data: bytes, display: str) -> OpmlDoc:
    """Parse OPML 1.0/2.0 bytes safely; ConfigError (one line naming ``display``) if it is not usable."""
    root = _xml_root(data, display)
    if _local(root.tag).lower() != "opml":
        raise ConfigError(f"{display}: not an OPML file: the document is <{_local(root.tag)}>, not <opml>")
    body = next((c for c in root if isinstance(c.tag, str) and _local(c.tag).lower() == "body"), None)
    if body is None:
        raise ConfigError(f"{display}: not an OPML file: <opml> has no <body>")
    feeds: list[Feed] = []
    ignored: list[tuple[str, str]] = []
    problems: list[str] = []
    for element, path in _outlines(body, ()):
        attrs = {_local(k).lower(): v.strip() for k, v in element.attrib.items() if _ns(k) != NS}
        label = f"outline {(attrs.get('title') or attrs.get('text') or '')!r} (line {element.sourceline})"
        kind = attrs.get("type", "").lower()
        url = attrs.get("xmlurl") or (attrs.get("url", "") if kind in ("rss", "atom") else "")
        if attrs.get("iscomment", "").lower() == "true":
            ignored.append((label, "commented out (isComment)"))
        elif kind == "include":
            ignored.append((label, f"an OPML include ({attrs.get('url', '')}) is not followed"))
        elif url:
            feeds.append(_feed(element, attrs, url, path))
        elif "xmlurl" in attrs:
            problems.append(f"{display}: {label}: its xmlUrl is empty")
        elif kind in ("rss", "atom"):
            problems.append(f"{display}: {label}: type={kind} but no xmlUrl: the feed's URL is missing")
    return OpmlDoc(display, tuple(feeds), tuple(ignored), tuple(problems))


def _xml_root(data: bytes, display: str) -> Any:
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{display}: refused: larger than {MAX_BYTES // 10**6} MB")
    if not data.strip():
        raise ConfigError(f"{display}: not an OPML file: the file is empty")
    if any(
        mark in data for mark in (b"<!ENTITY", "<!ENTITY".encode("utf-16-le"), "<!ENTITY".encode("utf-16-be"))
    ):
        raise ConfigError(
            f"{display}: refused: the file declares XML entities (<!ENTITY>), which OPML never needs"
        )
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        if (
            getattr(e, "code", 0) != 81
        ):  # "Invalid bytes in character encoding": undeclared Windows-1252, common in old OPML
            raise ConfigError(
                f"{display}: not an OPML file: XML error at line {e.lineno}: {_reason(e)}"
            ) from e
        try:
            root = etree.fromstring(data, _parser("cp1252"))
        except (etree.XMLSyntaxError, LookupError):
            raise ConfigError(
                f"{display}: not an OPML file: XML error at line {e.lineno}: {_reason(e)}"
                " (neither UTF-8 nor the encoding it declares)"
            ) from e
    dtd: Any = root.getroottree().docinfo.internalDTD  # lxml-stubs lack DTD.iterentities
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise ConfigError(f"{display}: refused: the file declares XML entities, which OPML never needs")
    return root


def _parser(encoding: str | None = None) -> etree.XMLParser:
    """No network, no DTD loading, no entity substitution into text; comments and PIs dropped."""
    return etree.XMLParser(
        encoding=encoding,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _reason(error: etree.XMLSyntaxError) -> str:
    return re.sub(r",? line \d+, column \d+.*$", "", str(error.msg or error)).strip()


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _ns(name: str) -> str:
    return name[1:].partition("}")[0] if name.startswith("{") else ""


def _outlines(parent: Any, path: tuple[str, ...]) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """Every outline under ``parent`` (depth first) with the category path of the outlines around it."""
    for child in parent:
        if not isinstance(child.tag, str) or _local(child.tag).lower() != "outline":
            continue
        yield child, path
        attrs = {_local(k).lower(): v for k, v in child.attrib.items()}
        if attrs.get("iscomment", "").lower() == "true":
            continue  # a commented outline comments out what it holds
        name = (attrs.get("title") or attrs.get("text") or "").strip()
        yield from _outlines(child, (*path, name) if name and not attrs.get("xmlurl") else path)


def _feed(element: Any, attrs: dict[str, str], url: str, path: tuple[str, ...]) -> Feed:
    categories = list(path)
    for entry in attrs.get("category", "").split(","):
        categories.extend(part.strip() for part in entry.split("/") if part.strip())
    options = {_local(k): v for k, v in element.attrib.items() if _ns(k) == NS}
    return Feed(
        line=element.sourceline or 0,
        url=url,
        text=" ".join(attrs.get("text", "").split()) or None,
        title=" ".join(attrs.get("title", "").split()) or None,
        categories=tuple(categories),
        name=options.pop("name", None),
        options=options,
    )


# ---------------------------------------------------------------- planning an import


@dataclass(frozen=True)
class Added:
    feed: Feed
    entry: dict[str, Any]  # the source as it will be written to the config
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportPlan:
    added: tuple[Added, ...]
    skipped: tuple[tuple[Feed, str], ...]
    ignored: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]


def plan_import(doc: OpmlDoc, existing: Sequence[Source], *, keep_env: bool = False) -> ImportPlan:
    """What importing ``doc`` into a config that has ``existing`` sources adds, skips and cannot do.

    Names are the outline's ``aggregator:name``, else a slug of its title, text or URL, made unique.
    ``${`` in what the file says is escaped (``$${``) unless ``keep_env``: an OPML file from elsewhere
    must not make the poller send the operator's environment variables to a server.
    """
    seen = {_url_key(s.url): f"already configured as {s.name!r}" for s in existing}
    taken = {s.name for s in existing}
    added: list[Added] = []
    skipped: list[tuple[Feed, str]] = []
    problems = list(doc.problems)
    for feed in doc.feeds:
        url, problem = _feed_url(feed.url)
        if problem:
            problems.append(f"{doc.display}: {feed.label}: {problem}")
            continue
        key = _url_key(url)
        if key in seen:
            skipped.append((feed, seen[key]))
            continue
        entry, notes, bad = _entry(feed, url, taken, keep_env)
        if bad:
            problems.extend(f"{doc.display}: {feed.label}: {message}" for message in bad)
            continue
        seen[key] = f"a duplicate of line {feed.line} in this file"
        taken.add(entry["name"])
        added.append(Added(feed, entry, tuple(notes)))
    return ImportPlan(tuple(added), tuple(skipped), doc.ignored, tuple(problems))


def _feed_url(url: str) -> tuple[str, str | None]:
    """The feed URL to configure (``feed:`` pseudo-schemes undone), or a problem."""
    lowered = url.lower()
    if lowered.startswith(("feed:http://", "feed:https://")):
        url = url[5:]
    elif lowered.startswith("feed://"):
        url = "http://" + url[7:]
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return url, None
    if parts.scheme.lower() == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return url, None
    return url, f"xmlUrl {url!r} is not an http(s):// or file:/// URL"


def _url_key(url: str) -> str:
    """URLs that name the same feed: scheme and host in lower case, no default port, no fragment."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def _entry(
    feed: Feed, url: str, taken: set[str], keep_env: bool
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The config mapping of a new source, notes for the operator, and problems."""
    notes: list[str] = []
    problems: list[str] = []
    guard: Callable[[Any], Any] = (lambda value: value) if keep_env else _escape_env
    title = feed.title or (feed.text if feed.text != feed.name else None)
    name = _unique(_name(feed, url), taken)
    if feed.name and not SLUG.fullmatch(feed.name):
        notes.append(f"{PREFIX}:name {feed.name!r} is not a valid name: named {name!r}")
    elif feed.name and name != feed.name:
        notes.append(f"named {name!r}: {feed.name!r} is taken")
    entry: dict[str, Any] = {"name": name}
    if title:
        entry["title"] = _escape_env(title)
    entry["url"] = guard(url)
    tags: list[str] = []
    for category in feed.categories:
        tag = slugify(category)
        if not tag:
            notes.append(f"category {category!r} gives no tag (tags use a-z, 0-9, '-', '_', '.')")
        elif tag not in tags:
            tags.append(tag)
    if tags:
        entry["tags"] = tags
    for key, raw in feed.options.items():
        if key not in OPTIONS:
            problems.append(f"unknown attribute {PREFIX}:{key} (expected one of: name, {', '.join(OPTIONS)})")
            continue
        try:
            value = raw if key in TEXT_OPTIONS else json.loads(raw)
        except ValueError:
            problems.append(f"{PREFIX}:{key}={raw!r} is not a JSON value")
            continue
        entry[key] = guard(value)
    if not keep_env and any("${" in text for text in (feed.url, *feed.options.values())):
        notes.append("${...} kept literally (--keep-env keeps environment references)")
    return entry, notes, problems


def _escape_env(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, list):
        return [_escape_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape_env(v) for k, v in value.items()}
    return value


def slugify(text: str, limit: int = 48) -> str:
    """Lower-case ASCII letters and digits joined by '-' (accents dropped), cut at a word boundary
    within ``limit`` characters; "" when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    if len(slug) > limit:
        cut = slug.rfind("-", 0, limit + 1)
        slug = slug[: cut if cut > 0 else limit].rstrip("-")
    return slug


def _name(feed: Feed, url: str) -> str:
    if feed.name and SLUG.fullmatch(feed.name):
        return feed.name
    for text in (feed.title, feed.text):
        if text and (slug := slugify(text)):
            return slug
    parts = urlsplit(url)
    host = (parts.hostname or "").removeprefix("www.")
    path = re.sub(r"(?:^|/)(?:feeds?|rss|atom|index)(?:\.\w+)?(?=/|$)|\.\w+$", "", parts.path)
    return slugify(f"{host} {path}") or "source"


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name[:95]}-{n}" in taken:
        n += 1
    return f"{name[:95]}-{n}"


# ---------------------------------------------------------------- editing the config text


def append_sources(text: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """``text`` (a YAML config) with ``entries`` appended to its ``sources:`` list, nothing else changed.

    A textual edit, not a YAML round trip: every comment, blank line, quote and key order of the file
    stays byte for byte; the new items follow the indentation and spacing of the existing ones.
    """
    if not entries:
        return text
    if "\r\n" in text and text.count("\n") == text.count("\r\n"):  # a Windows file stays one
        return append_sources(text.replace("\r\n", "\n"), entries).replace("\n", "\r\n")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:  # the caller validated the file; this is a safety net
        raise ConfigError(f"cannot edit the config: {e}") from e
    key, value = _sources_node(root)
    if key is None or value is None:  # no sources: key
        head = text if not text or text.endswith("\n") else text + "\n"
        return head + "sources:\n" + _block(entries, 2, 4, blank=False)
    if isinstance(value, yaml.SequenceNode) and value.value and not value.flow_style:
        items = value.value
        dash, content = _item_indent(text, items[0])
        end = _line_end(text, _last_end(items[-1]))
        head = text[:end] if text[:end].endswith("\n") else text[:end] + "\n"
        blank = len(items) > 1 and _blank_between(text, items[-2], items[-1])
        return head + ("\n" if blank else "") + _block(entries, dash, content, blank) + text[end:]
    if isinstance(value, yaml.SequenceNode) and value.value:  # a non-empty flow list: [{...}, {...}]
        close = value.end_mark.index - 1
        flows = ", ".join(_flow(entry) for entry in entries)
        return text[:close].rstrip() + ", " + flows + text[close:]
    if _is_empty(value):  # sources: / sources: [] / sources: null, maybe with a comment after it
        start, stop = value.start_mark.index, value.end_mark.index
        end = _line_end(text, stop - 1 if stop > start else key.end_mark.index)
        head = text[:start].rstrip(" ") + text[stop:end] if stop > start else text[:end]
        head = head if head.endswith("\n") else head + "\n"
        return head + _block(entries, 2, 4, blank=False) + text[end:]
    raise ConfigError("cannot edit the config: sources: is not a list")


def _sources_node(root: yaml.Node | None) -> tuple[yaml.Node | None, yaml.Node | None]:
    """The top-level ``sources`` key and its value (the last one, as the loader counts it)."""
    found: tuple[yaml.Node | None, yaml.Node | None] = (None, None)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "sources":
                found = (key, value)
    return found


def _is_empty(node: yaml.Node) -> bool:
    if isinstance(node, yaml.SequenceNode):
        return not node.value
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _item_indent(text: str, item: yaml.Node) -> tuple[int, int]:
    """Columns of an item's dash and of its content (``  - name: x``: 2 and 4)."""
    line_start = text.rfind("\n", 0, item.start_mark.index) + 1
    line = text[line_start : item.start_mark.index]
    dash = line.rfind("-")
    if dash < 0 or line[:dash].strip():  # the item does not start on its dash's line: keep it simple
        return max(item.start_mark.column - 2, 0), item.start_mark.column
    return dash, item.start_mark.column


def _last_end(node: yaml.Node) -> int:
    """Where the last character of ``node``'s own text is (block ends of PyYAML lie past comments)."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        key, value = node.value[-1]
        return max(_last_end(key), _last_end(value))
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _last_end(node.value[-1])
    return int(node.end_mark.index)


def _line_end(text: str, index: int) -> int:
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _blank_between(text: str, first: yaml.Node, second: yaml.Node) -> bool:
    gap = text[_line_end(text, _last_end(first)) : second.start_mark.index]
    return any(not line.strip() for line in gap.split("\n")[:-1])


def _block(entries: Iterable[Mapping[str, Any]], dash: int, content: int, blank: bool) -> str:
    blocks = []
    for entry in entries:
        lines = _dump(entry).splitlines()
        first = " " * dash + "-" + " " * max(content - dash - 1, 1) + lines[0]
        blocks.append("\n".join([first, *(" " * content + line for line in lines[1:])]) + "\n")
    return ("\n" if blank else "").join(blocks)


class _Entry(dict[str, Any]):
    """A source written as a block mapping; the lists and mappings inside it in flow style."""


class _Dumper(yaml.SafeDumper):
    pass


_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_Dumper.add_representer(_Entry, lambda d, data: d.represent_mapping(_MAP, data, flow_style=False))
_Dumper.add_representer(dict, lambda d, data: d.represent_mapping(_MAP, data, flow_style=True))
_Dumper.add_representer(list, lambda d, data: d.represent_sequence(_SEQ, data, flow_style=True))


def _dump(entry: Mapping[str, Any]) -> str:
    return yaml.dump(_Entry(entry), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)


def _flow(entry: Mapping[str, Any]) -> str:
    return yaml.dump(dict(entry), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16).strip()


# ---------------------------------------------------------------- export


def raw_sources(path: Path) -> dict[str, dict[str, Any]]:
    """The source mappings of the config at ``path`` and its includes as written (``${NAME}`` not
    expanded), by name. Call it on a config that loads: it does not report problems."""
    found: dict[str, dict[str, Any]] = {}
    seen: set[Path] = set()

    def visit(file: Path) -> None:
        file = file.resolve()
        if file in seen:
            return
        seen.add(file)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return
        if not isinstance(data, dict):
            return
        for raw in data.get("sources") or []:
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                found.setdefault(raw["name"], raw)
        for include in data.get("include") or []:
            if isinstance(include, str) and include.strip():
                visit(file.parent / os.path.expanduser(include.strip()))

    visit(path)
    return found


def export_opml(
    sources: Sequence[Source],
    raw: Mapping[str, Mapping[str, Any]],
    now: datetime,
    title: str,
    sites: Mapping[str, str] | None = None,
) -> tuple[bytes, list[str]]:
    """OPML 2.0 of ``sources``: one category outline per first tag (every tag also in ``category``),
    each option the config sets for the source in an ``aggregator:`` attribute, as written, and
    ``htmlUrl`` from ``sites`` (the site links the store has seen, by source name).

    Secrets stay out: auth passwords are in the environment (only ``password_env`` is exported), a
    header whose name looks secret is exported only when its value comes from ``${NAME}``, and a
    password in a URL is dropped. Returns the document and a warning for each thing left out.
    """
    warnings: list[str] = []
    opml = etree.Element("opml", version="2.0", nsmap={PREFIX: NS})
    head = etree.SubElement(opml, "head")
    etree.SubElement(head, "title").text = title
    etree.SubElement(head, "dateCreated").text = format_datetime(now, usegmt=True)
    etree.SubElement(head, "docs").text = "http://opml.org/spec2.opml"
    body = etree.SubElement(opml, "body")
    groups: dict[str, Any] = {}
    for source in sources:
        parent: Any = body
        if source.tags:
            parent = groups.get(source.tags[0])
            if parent is None:
                parent = groups[source.tags[0]] = etree.SubElement(
                    body, "outline", text=source.tags[0], title=source.tags[0]
                )
        config = raw.get(source.name)
        if config is None:
            warnings.append(
                f"source {source.name}: its options are not exported (name set from the environment?)"
            )
        attrs = _attributes(source, config or {}, warnings, (sites or {}).get(source.name))
        etree.SubElement(parent, "outline", attrs)
    body_bytes = etree.tostring(opml, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return body_bytes, warnings


def _attributes(
    source: Source, config: Mapping[str, Any], warnings: list[str], site: str | None
) -> dict[str, str]:
    attrs = {"type": "rss", "text": source.title or source.name}
    if source.title:
        attrs["title"] = source.title
    attrs["xmlUrl"] = _export_url(source, config, warnings)
    if site:
        attrs["htmlUrl"] = site
    if source.tags:
        attrs["category"] = ",".join(source.tags)
    attrs[f"{{{NS}}}name"] = source.name
    for key in OPTIONS:
        value = config.get(key)
        if value is None:
            continue
        if key == "headers" and isinstance(value, dict):
            value = _public_headers(source.name, value, warnings)
            if not value:
                continue
        text = value if key in TEXT_OPTIONS and isinstance(value, str) else json.dumps(value, default=str)
        attrs[f"{{{NS}}}{key}"] = str(text)
    return attrs


def _export_url(source: Source, config: Mapping[str, Any], warnings: list[str]) -> str:
    written = config.get("url")
    if isinstance(written, str) and "${" in written:  # from the environment: maybe a token; unexpanded
        warnings.append(
            f"source {source.name}: URL exported as written ({written}): it reads the environment"
        )
        return written
    parts = urlsplit(source.url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        warnings.append(f"source {source.name}: the password in its URL is not exported")
        return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
    return source.url


def _public_headers(name: str, headers: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for header, value in headers.items():
        text = str(value)
        from_env = _ENV_REF.search(text) is not None and ":-" not in text
        if _SECRET_HEADER.search(str(header)) and not from_env:
            warnings.append(
                f"source {name}: header {header} is not exported (it looks secret; use ${{NAME}})"
            )
            continue
        kept[str(header)] = value
    return kept
