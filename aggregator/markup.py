"""HTML for feed readers: nh3 sanitizing, absolute links, plain text with paragraphs, one-line titles, and
removal of site furniture ("Advertisement:", "Read also: …") paragraph by paragraph.

Pure: strings in, strings out. Which URL is canonical is urls.py's business; languages are language.py's.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from html.parser import HTMLParser
from urllib.parse import urlsplit

import nh3

from aggregator.urls import HTTP_PORTS, is_plain_absolute, resolve_url

# --------------------------------------------------------------------------------------- boilerplate

_END = r"[\s.:!…»›→>|\-–—]*"
_TAIL = r"(?:\s*[:\-–—|»›→].*)?" + _END
BOILERPLATE_PATTERNS = (
    "advertisement" + _END,
    "(?:sponsored|paid) (?:content|post)" + _END,
    "support us" + _END,
    "follow us on [\\w ,&]{1,60}" + _END,
    "support up(?: or become our patron)?" + _END,
    "become (?:our|a) patron" + _END,
    "(?:read|see) (?:also|more)" + _TAIL,
    "related(?: (?:stories|articles|content))?:.*",
    "continue reading\\b.*",
    "the post .+ appeared first on .+",
    "(?:subscribe|sign up) (?:to|for) (?:our|the) newsletter\\b.*",
    "click here to (?:subscribe|sign up|read more|continue reading)\\b.*",
    "share (?:this|this article|this story|on facebook|on twitter|on x)" + _END,
    # Ukrainian / Russian
    "реклама" + _END,
    "(?:читайте|дивіться) (?:також|ще)" + _TAIL,
    "(?:читайте|смотрите) (?:также|еще|ещё)" + _TAIL,
    "підтримайте (?:нас|уп|українську правду)" + _END,
    "поддержите нас" + _END,
    "(?:підписуйтеся|підписуйтесь|подписывайтесь) на .{1,60}",
    "стань(?:те)? (?:нашим )?патроном.*",
    # German, French, Spanish
    "(?:anzeige|werbung)" + _END,
    "(?:mehr lesen|weiterlesen)" + _END,
    "lesen sie (?:auch|mehr)" + _TAIL,
    "publicité" + _END,
    "lire (?:aussi|la suite)" + _TAIL,
    "publicidad" + _END,
    "(?:lee|leer|lea) (?:también|más)" + _TAIL,
)
_BOILERPLATE = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE_PATTERNS), re.IGNORECASE | re.DOTALL)
_FURNITURE_MAX_CHARS = 300  # a longer paragraph is content, whatever it starts with


@cache
def boilerplate_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive regex for a source's own furniture patterns (each must match a whole line).

    Raises re.error for a bad pattern (config.py validates them before they get here).
    """
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | re.DOTALL)


def is_boilerplate(paragraph: str, extra: re.Pattern[str] | None = None) -> bool:
    """True when the whole (whitespace-collapsed) paragraph is site furniture, not article text:
    a built-in pattern, or one of ``extra`` (a source's own, from boilerplate_pattern), matches all of it."""
    flat = " ".join(paragraph.split())
    if not 0 < len(flat) <= _FURNITURE_MAX_CHARS:
        return False
    if _BOILERPLATE.fullmatch(flat) is not None:
        return True
    return extra is not None and extra.fullmatch(flat) is not None


def remove_boilerplate_text(text: str, extra: re.Pattern[str] | None = None) -> str:
    """Drop furniture lines from plain text; paragraphs left empty disappear."""
    paragraphs = []
    for para in text.split("\n\n"):
        lines = [line for line in para.split("\n") if not is_boilerplate(line, extra)]
        if any(line.strip() for line in lines):
            paragraphs.append("\n".join(lines).strip("\n"))
    return "\n\n".join(paragraphs)


# --------------------------------------------------------------------------------------- HTML trees


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


_VOID = frozenset({"br", "hr", "img", "wbr", "col", "area", "input", "meta", "link", "source", "base"})
_SKIP = frozenset({"script", "style", "template", "noembed", "head", "title"})
_BLOCK = _words(
    "p div li ul ol dl dt dd blockquote pre h1 h2 h3 h4 h5 h6 figure figcaption table thead tbody "
    "tfoot tr caption hr section article header footer aside nav main address details summary"
)
_LINE_BREAKS = _BLOCK | {"br", "td", "th"}  # what ends a line of inline content (``_prune``)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<!--|<!\[CDATA\[")


@dataclass
class _Node:
    tag: str
    attrs: list[tuple[str, str | None]] = field(default_factory=list)
    children: list[_Node | str] = field(default_factory=list)


class _TreeBuilder(HTMLParser):
    """A forgiving element tree: unknown end tags are ignored, open elements close at the end."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("")
        self._stack = [self.root]
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip or tag in _SKIP:
            self._skip += tag in _SKIP
            return
        node = _Node(tag, attrs)
        self._stack[-1].children.append(node)
        if tag not in _VOID:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._skip:
            self._stack[-1].children.append(_Node(tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif not self._skip:
            for i in range(len(self._stack) - 1, 0, -1):
                if self._stack[i].tag == tag:
                    del self._stack[i:]
                    return

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._stack[-1].children.append(data)


def _parse(html: str) -> _Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# nh3's output is a serialized DOM: lower-case tags, every attribute as name="escaped value", text with
# < and > escaped, no comments. One regex pass reads it into the same tree HTMLParser builds; anything
# else (never seen) goes to HTMLParser.
_CLEAN_TOKEN = re.compile(r'<([a-z][a-z0-9]*)((?: [^\s"\'<>/=]+="[^"]*")*)>|</([a-z][a-z0-9]*)>|([^<]+)|<')
_CLEAN_ATTR = re.compile(r' ([^="]+)="([^"]*)"')


def _parse_clean(html: str) -> _Node:
    """The tree of nh3's output, as ``_parse`` builds it, without HTMLParser's cost."""
    builder = _TreeBuilder()
    pos, end = 0, len(html)
    while pos < end:
        m = _CLEAN_TOKEN.match(html, pos)
        if m is None or m.lastindex is None:  # a "<" that starts no tag nh3 writes
            return _parse(html)  # not nh3's shape after all: start again with HTMLParser
        start, attrs, close, text = m.groups()
        if text is not None:
            builder.handle_data(htmllib.unescape(text) if "&" in text else text)
        elif close is not None:
            builder.handle_endtag(close)
        else:
            pairs: list[tuple[str, str | None]] = []
            pairs += [(k, htmllib.unescape(v)) for k, v in _CLEAN_ATTR.findall(attrs)] if attrs else []
            builder.handle_starttag(start, pairs)
        pos = m.end()
    return builder.root


def _clean_text(html: str, extra: re.Pattern[str] | None) -> str | None:
    """``_tree_text`` of nh3's output ``html`` in one pass over its tokens, without building the tree, or
    None when ``_prune`` would remove a line (or the tokens are not nh3's balanced shape): then the caller
    takes the tree path. Most items have no furniture, and this is several times cheaper.

    The lines ``_prune`` examines are the runs of inline content among the children of the root and of
    line-breaking elements reached through line-breaking elements only: an inline element's whole
    content (blocks inside it too) belongs to its parent's line. ``owners`` holds, per such element, its
    current line (texts, and whether an image is in it); ``inline`` counts the elements open inside the
    innermost owner's current line."""
    writer = _TextWriter()
    buffer = writer.buffer  # flush empties it in place
    owners: list[tuple[list[str], list[bool]]] = [([], [False])]
    open_tags: list[str] = []
    inline = pre = 0
    for start, _attrs, close, text in _CLEAN_TOKEN.findall(html):
        if text:
            text = htmllib.unescape(text) if "&" in text else text
            owners[-1][0].append(text)
            buffer.append(text if pre else text.replace("\n", " "))
        elif close:
            if not open_tags or open_tags.pop() != close:
                return None
            if close in ("td", "th"):
                buffer.append(" ")
            elif close in _BLOCK:
                writer.flush(pre > 0)
                pre -= close == "pre"
            if inline:
                inline -= 1
            elif _line_is_furniture(owners.pop(), extra):
                return None
        elif not start:
            return None  # text _CLEAN_TOKEN cannot read: the tree path reads it with HTMLParser
        else:
            void = start in _VOID
            if not void:
                open_tags.append(start)
            if start == "br":
                buffer.append("\n")
            elif start in ("td", "th"):
                buffer.append(" ")
            elif start in _BLOCK:
                writer.flush(pre > 0)
                pre += start == "pre"
            if start == "img":
                owners[-1][1][0] = True
            if inline:
                inline += not void
            elif start in _LINE_BREAKS:
                if _line_is_furniture(owners[-1], extra):
                    return None
                owners[-1][0].clear()
                owners[-1][1][0] = False
                if not void:
                    owners.append(([], [False]))
            else:
                inline += not void
    if open_tags or _line_is_furniture(owners[-1], extra):
        return None
    writer.flush()
    return "\n\n".join(writer.paragraphs)


def _line_is_furniture(line: tuple[list[str], list[bool]], extra: re.Pattern[str] | None) -> bool:
    texts, image = line
    return bool(texts) and not image[0] and is_boilerplate("".join(texts), extra)


def _serialize(node: _Node) -> str:
    out = []
    for child in node.children:
        if isinstance(child, str):
            out.append(htmllib.escape(child, quote=False))
            continue
        attrs = "".join(
            f" {k}" if v is None else f' {k}="{htmllib.escape(v, quote=True)}"' for k, v in child.attrs
        )
        out.append(f"<{child.tag}{attrs}>")
        if child.tag not in _VOID:
            out.append(f"{_serialize(child)}</{child.tag}>")
    return "".join(out)


def _flat_text(nodes: Iterable[_Node | str]) -> str:
    return "".join(n if isinstance(n, str) else _flat_text(n.children) for n in nodes)


def _has_image(nodes: Iterable[_Node | str]) -> bool:
    return any(isinstance(n, _Node) and (n.tag == "img" or _has_image(n.children)) for n in nodes)


def _prune(node: _Node, extra: re.Pattern[str] | None) -> bool:
    """Remove furniture lines (runs of inline content between blocks and <br>); True if any went."""
    changed = False
    kept: list[_Node | str] = []
    line: list[_Node | str] = []
    for child in [*node.children, None]:
        if isinstance(child, str) or (child is not None and not _breaks_line(child)):
            line.append(child)
            continue
        dropped = bool(line) and not _has_image(line) and is_boilerplate(_flat_text(line), extra)
        changed |= dropped
        kept.extend([] if dropped else line)
        line = []
        if child is None or (dropped and child.tag == "br"):
            continue
        if child.tag != "br" and _prune(child, extra):
            changed = True
            if _emptied(child):
                continue
        kept.append(child)
    node.children = kept
    return changed


def _breaks_line(node: _Node) -> bool:
    return node.tag in _LINE_BREAKS


def _emptied(node: _Node) -> bool:
    """A block left with no text and no image (table cells stay, to keep the table's shape)."""
    return node.tag not in ("td", "th", "tr") and not _flat_text([node]).strip() and not _has_image([node])


# ------------------------------------------------------------------------------------ sanitizing HTML

ALLOWED_TAGS = _words(
    "p br a b strong i em u s del ins q cite small mark abbr time ul ol li dl dt dd blockquote pre code "
    "kbd samp h1 h2 h3 h4 h5 h6 img figure figcaption table caption thead tbody tfoot tr th td hr sub "
    "sup span div"
)
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "hreflang"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
    "time": {"datetime"},
    "abbr": {"title"},
}
_DROP_WITH_CONTENT = {"script", "style", "iframe", "form", "textarea", "select", "button", "object"}
_DROP_WITH_CONTENT |= {"embed", "svg", "math", "template", "noembed", "head", "title", "frameset"}


def clean_html(html: str, base: str | None, *, boilerplate: re.Pattern[str] | None = None) -> str:
    """clean_html_text's HTML alone."""
    return clean_html_text(html, base, boilerplate=boilerplate)[0]


def clean_html_text(
    html: str, base: str | None, *, boilerplate: re.Pattern[str] | None = None
) -> tuple[str, str]:
    """(sanitized HTML, its plain text): the text is ``html_to_text`` of the HTML, from the one tree.

    Sanitized HTML: safe tags only, absolute http(s) links and images, furniture paragraphs removed.

    Text without any tag is treated as plain text (entities decoded) and wrapped in paragraphs, unless
    decoding its entities reveals tags: then it was HTML escaped once too often.
    Relative URLs with no ``base`` to resolve them are dropped; data: URLs survive only as the ``src``
    of an image in a raster format (never SVG, which can carry script), up to MAX_DATA_IMAGE characters.
    ``boilerplate`` adds a source's own furniture patterns to the built-in ones.
    """
    html = _strip_cdata(html)
    if not _TAG.search(html):
        decoded = htmllib.unescape(html)
        html = decoded if _TAG.search(decoded) else _text_to_html(html)  # HTML escaped twice, or text
    return _html_and_text(_sanitize(html, base), boilerplate)


def _sanitize(html: str, base: str | None) -> str:
    """nh3 with our allow-lists: safe tags and attributes, absolute http(s) URLs, no comments."""
    safe: str = _cleaner(base).clean(html)
    return safe


@lru_cache(maxsize=32)
def _cleaner(base: str | None) -> nh3.Cleaner:
    """The sanitizer for the entries of one base URL (a feed's): built once, it cleans a body at 0.7x the
    CPU of ``nh3.clean``, which builds its rules on every call. A feed's entries are normalized together,
    so a few cleaners (~11 KB each) are enough however many feeds there are."""
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_url_filter(base),
        url_schemes={"http", "https", "mailto", "data"},  # data: is narrowed by _url_filter
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


def _html_and_text(safe: str, boilerplate: re.Pattern[str] | None) -> tuple[str, str]:
    """clean_html_text of nh3's output: one pass over its tokens when no line is furniture (the
    common case), else the tree, pruned."""
    text = _clean_text(safe, boilerplate)
    if text is not None:
        out = safe.strip()
        return out, (text if _TAG.search(out) else _plain_text(out))
    return _pruned_html_and_text(safe, boilerplate)


def _pruned_html_and_text(safe: str, boilerplate: re.Pattern[str] | None) -> tuple[str, str]:
    tree = _parse_clean(safe)
    out = (_serialize(tree) if _prune(tree, boilerplate) else safe).strip()
    return out, (_tree_text(tree) if _TAG.search(out) else _plain_text(out))


def _strip_cdata(html: str) -> str:
    """CDATA sections that reached us still wrapped (nh3 would drop them as bogus comments)."""
    return html.replace("<![CDATA[", "").replace("]]>", "") if "<![CDATA[" in html else html


MAX_DATA_IMAGE = 100_000  # characters of an inline image kept; larger ones are dropped
_DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|jpg|webp|avif|bmp);base64,[A-Za-z0-9+/=\s]+", re.I)


def is_safe_data_image(url: str) -> bool:
    """A base64 raster image (PNG, GIF, JPEG, WebP, AVIF, BMP) small enough to inline; never SVG."""
    return len(url) <= MAX_DATA_IMAGE and _DATA_IMAGE.fullmatch(url.strip()) is not None


def _url_filter(base: str | None) -> Callable[[str, str, str], str | None]:
    def rewrite(tag: str, attr: str, value: str) -> str | None:
        if attr not in ("href", "src"):
            return value
        if tag == "img" and attr == "src" and is_safe_data_image(value):
            return "".join(value.split())
        resolved = resolve_url(value, base)
        scheme = _scheme(resolved)
        if scheme in HTTP_PORTS or (scheme == "mailto" and tag == "a"):
            return resolved
        return None

    return rewrite


def _scheme(url: str | None) -> str:
    if not url:
        return ""
    if is_plain_absolute(url):
        return url[: url.index(":")]
    return urlsplit(url).scheme.lower()


def _plain_paragraphs(text: str) -> list[list[str]]:
    text = htmllib.unescape(text).replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [" ".join(line.split()) for line in block.split("\n")]
        if lines := [line for line in lines if line]:
            paragraphs.append(lines)
    return paragraphs


def _text_to_html(text: str) -> str:
    return "".join(
        "<p>" + "<br>".join(htmllib.escape(line, quote=False) for line in lines) + "</p>"
        for lines in _plain_paragraphs(text)
    )


# ------------------------------------------------------------------------------------------ plain text


class _TextWriter:
    def __init__(self) -> None:
        self.paragraphs: list[str] = []
        self.buffer: list[str] = []

    def flush(self, preformatted: bool = False) -> None:
        raw = "".join(self.buffer)
        self.buffer.clear()
        if preformatted:
            para = "\n".join(line.rstrip() for line in raw.split("\n")).strip("\n")
        else:
            lines = (" ".join(line.split()) for line in raw.split("\n"))
            para = "\n".join(line for line in lines if line)
        if para:
            self.paragraphs.append(para)

    def walk(self, node: _Node, pre: bool = False) -> None:
        for child in node.children:
            if isinstance(child, str):
                # flush collapses whitespace runs line by line: only a newline must not split a line
                self.buffer.append(child if pre else child.replace("\n", " "))
            elif child.tag == "br":
                self.buffer.append("\n")
            elif child.tag in ("td", "th"):
                self.buffer.append(" ")
                self.walk(child, pre)
                self.buffer.append(" ")
            elif child.tag in _BLOCK:
                self.flush(pre)
                self.walk(child, pre or child.tag == "pre")
                self.flush(pre or child.tag == "pre")
            else:
                self.walk(child, pre)


def html_to_text(html: str) -> str:
    """Plain text: one paragraph per block element (blank line between), <br> as a newline."""
    html = _strip_cdata(html)
    return _tree_text(_parse(html)) if _TAG.search(html) else _plain_text(html)


def _plain_text(text: str) -> str:
    return "\n\n".join("\n".join(lines) for lines in _plain_paragraphs(text))


def _tree_text(tree: _Node) -> str:
    writer = _TextWriter()
    writer.walk(tree)
    writer.flush()
    return "\n\n".join(writer.paragraphs)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")


def clean_title(title: str | None) -> str:
    """A one-line plain-text title: tags and CDATA markers removed, entities decoded (even twice)."""
    if not title:
        return ""
    text = title.replace("<![CDATA[", "").replace("]]>", "")
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.IGNORECASE)
    text = _TAG.sub("", text)
    for _ in range(3):  # "&amp;amp;" -> "&amp;" -> "&"
        decoded = htmllib.unescape(text)
        if decoded == text:
            break
        text = decoded
    return " ".join(_CONTROL.sub("", text).split())
