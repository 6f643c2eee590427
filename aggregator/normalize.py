"""Turn a parsed RawEntry into a clean Item: canonical URL, sanitized HTML, plain text, UTC dates, language.

Pure: no I/O, no clock (``now`` is a parameter). Site furniture ("Advertisement:", "Read more: …") is
removed paragraph by paragraph. Deciding whether two items are the same story is not done here.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import unquote_plus, urljoin, urlsplit, urlunsplit

import nh3
from w3lib.url import safe_url_string

from aggregator.dedup import content_hash, identity_key, item_uid
from aggregator.model import Enclosure, FeedMeta, Item, RawEntry, Source

# ---------------------------------------------------------------------------------------------- URLs

#: Query parameters removed from every URL, compared case-insensitively (plus any ``utm_*``).
TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "gclsrc", "dclid", "msclkid", "yclid", "igshid", "twclid", "ttclid",
        "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "spm", "vero_id",
        "at_medium", "at_campaign", "at_custom1", "at_custom2", "at_custom3", "at_custom4",
        "ns_mchannel", "ns_campaign", "ns_source", "ns_linkname", "ns_fee", "ito",
        "wt_mc", "maca", "oly_anon_id", "oly_enc_id",
    }
)  # fmt: skip
TRACKING_PREFIXES = ("utm_",)
#: Parameters removed only when their value says "this came from a feed" (or a share button).
TRACKING_VALUES: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "ref": r"rss|rss_feed|rss-feed|rss2|feed",
        "cmpid": r"rss",
        "cmp": r"share_btn_\w+",
        "xtor": r"rss-\w+",
        "source": r"rss(?:[-_].*)?",
        "from": r"rss",
    }.items()
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DANGEROUS_SCHEMES = frozenset({"javascript", "data", "vbscript"})
_URL_JUNK = re.compile(r"[\t\r\n]")
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def canonical_url(
    url: str | None, base: str | None = None, *, extra_params: Collection[str] = ()
) -> str | None:
    """The URL resolved against ``base``, with host case, default port, fragment and trackers removed.

    javascript:/data: URLs and unresolvable relative ones give None; other non-http(s) URLs (mailto:,
    ftp:) come back unchanged. ``extra_params`` names more query parameters to remove.
    """
    resolved = _resolve(url, base)
    if resolved is None:
        return None
    scheme = urlsplit(resolved).scheme.lower()
    if scheme in _DANGEROUS_SCHEMES:
        return None
    if scheme not in _DEFAULT_PORTS:
        return resolved
    try:
        parts = urlsplit(safe_url_string(resolved))
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    extra = frozenset(p.casefold() for p in extra_params)
    query = _clean_query(parts.query, extra)
    fragment = parts.fragment if parts.fragment.startswith("!") else ""  # keep "#!" routes
    clean = urlunsplit((scheme, netloc, _remove_dot_segments(parts.path) or "/", query, fragment))
    return _ESCAPE.sub(lambda m: m.group().upper(), clean)


def _resolve(url: str | None, base: str | None) -> str | None:
    """``url`` made absolute against ``base``; None when empty, malformed or relative with no base."""
    if url is None:
        return None
    url = _URL_JUNK.sub("", url.strip())
    if not url:
        return None
    try:
        if base:
            return urljoin(base, url)
        if url.startswith("//"):
            return "https:" + url
        return url if urlsplit(url).scheme else None
    except ValueError:
        return None


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: "/a/./b/../c" -> "/a/c"."""
    segments = path.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def _http_url(url: str | None, base: str | None) -> str | None:
    resolved = _resolve(url, base)
    if resolved and urlsplit(resolved).scheme.lower() in _DEFAULT_PORTS:
        return resolved
    return None


def _clean_query(query: str, extra: frozenset[str]) -> str:
    kept = []
    for part in query.split("&"):
        part = part.removeprefix("amp;")  # "&amp;" escaped once too often by the feed
        name, _, value = part.partition("=")
        if part and not _is_tracking(unquote_plus(name).casefold(), unquote_plus(value), extra):
            kept.append(part)
    return "&".join(kept)


def _is_tracking(name: str, value: str, extra: frozenset[str]) -> bool:
    if name in TRACKING_PARAMS or name in extra or name.startswith(TRACKING_PREFIXES):
        return True
    rule = TRACKING_VALUES.get(name)
    return rule is not None and rule.fullmatch(value) is not None


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


def is_boilerplate(paragraph: str) -> bool:
    """True when the whole (whitespace-collapsed) paragraph is site furniture, not article text."""
    flat = " ".join(paragraph.split())
    return 0 < len(flat) <= _FURNITURE_MAX_CHARS and _BOILERPLATE.fullmatch(flat) is not None


def remove_boilerplate_text(text: str) -> str:
    """Drop furniture lines from plain text; paragraphs left empty disappear."""
    paragraphs = []
    for para in text.split("\n\n"):
        lines = [line for line in para.split("\n") if not is_boilerplate(line)]
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


def _prune(node: _Node) -> bool:
    """Remove furniture lines (runs of inline content between blocks and <br>); True if any went."""
    changed = False
    kept: list[_Node | str] = []
    line: list[_Node | str] = []
    for child in [*node.children, None]:
        if isinstance(child, str) or (child is not None and not _breaks_line(child)):
            line.append(child)
            continue
        dropped = bool(line) and not _has_image(line) and is_boilerplate(_flat_text(line))
        changed |= dropped
        kept.extend([] if dropped else line)
        line = []
        if child is None or (dropped and child.tag == "br"):
            continue
        if child.tag != "br" and _prune(child):
            changed = True
            if _emptied(child):
                continue
        kept.append(child)
    node.children = kept
    return changed


def _breaks_line(node: _Node) -> bool:
    return node.tag in _BLOCK or node.tag in ("br", "td", "th")


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


def clean_html(html: str, base: str | None) -> str:
    """Sanitized HTML: safe tags only, absolute http(s) links and images, furniture paragraphs removed.

    Text without any tag is treated as plain text (entities decoded) and wrapped in paragraphs, unless
    decoding its entities reveals tags: then it was HTML escaped once too often.
    Relative URLs with no ``base`` to resolve them are dropped.
    """
    html = _strip_cdata(html)
    if not _TAG.search(html):
        decoded = htmllib.unescape(html)
        html = decoded if _TAG.search(decoded) else _text_to_html(html)  # HTML escaped twice, or text
    safe: str = nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_url_filter(base),
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    tree = _parse(safe)
    return (_serialize(tree) if _prune(tree) else safe).strip()


def _strip_cdata(html: str) -> str:
    """CDATA sections that reached us still wrapped (nh3 would drop them as bogus comments)."""
    return html.replace("<![CDATA[", "").replace("]]>", "") if "<![CDATA[" in html else html


def _url_filter(base: str | None) -> Callable[[str, str, str], str | None]:
    def rewrite(tag: str, attr: str, value: str) -> str | None:
        if attr not in ("href", "src"):
            return value
        resolved = _resolve(value, base)
        scheme = urlsplit(resolved).scheme.lower() if resolved else ""
        if scheme in _DEFAULT_PORTS or (scheme == "mailto" and tag == "a"):
            return resolved
        return None

    return rewrite


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
        raw, self.buffer = "".join(self.buffer), []
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
                self.buffer.append(child if pre else re.sub(r"\s+", " ", child))
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
    if not _TAG.search(html):
        return "\n\n".join("\n".join(lines) for lines in _plain_paragraphs(html))
    writer = _TextWriter()
    writer.walk(_parse(html))
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


# ----------------------------------------------------------------------------------------- languages

_ISO_639_1 = _words(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de "
    "dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id "
    "ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu "
    "lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu "
    "rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr "
    "ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu"
)
# ISO 639-2 (B and T) codes and English names of common languages, and retired 639-1 codes.
_ALIAS_TABLE = """
en:eng english|uk:ukr ukrainian|ru:rus russian|de:deu ger german|fr:fra fre french|es:spa spanish
it:ita italian|pt:por portuguese|pl:pol polish|nl:nld dut dutch|zh:zho chi chinese|ja:jpn japanese
ko:kor korean|ar:ara arabic|he:heb hebrew iw|tr:tur turkish|cs:ces cze czech|sk:slk slo slovak
sl:slv slovenian|hr:hrv croatian|sr:srp serbian|bs:bos|bg:bul bulgarian|ro:ron rum romanian
hu:hun hungarian|fi:fin finnish|sv:swe swedish|no:nor norwegian|nb:nob|nn:nno|da:dan danish
is:isl ice|et:est estonian|lv:lav latvian|lt:lit lithuanian|be:bel belarusian|ka:kat geo georgian
hy:hye arm armenian|az:aze|kk:kaz kazakh|uz:uzb|fa:fas per persian|hi:hin hindi|bn:ben bengali bangla
ur:urd urdu|ta:tam tamil|te:tel|th:tha thai|vi:vie vietnamese|id:ind indonesian in|ms:msa may malay
el:ell gre greek|ca:cat catalan|eu:eus baq basque|gl:glg|ga:gle irish|cy:cym wel welsh|af:afr
sw:swa swahili|am:amh|mk:mkd mac|sq:sqi alb|mt:mlt|lb:ltz|eo:epo esperanto|la:lat latin|yi:yid ji
tl:tgl tagalog
"""


def _language_aliases(table: str) -> dict[str, str]:
    aliases = {}
    for entry in table.replace("\n", "|").split("|"):
        if entry.strip():
            code, _, names = entry.strip().partition(":")
            aliases.update(dict.fromkeys(names.split(), code))
    return aliases


_LANGUAGE_ALIASES = _language_aliases(_ALIAS_TABLE)


def normalize_language(value: str | None) -> str | None:
    """ISO 639-1 lower case ("en-GB" -> "en", "ukr" -> "uk", "English" -> "en"); None if unknown."""
    if not value:
        return None
    primary = value.strip().replace("_", "-").split("-")[0].casefold()
    if primary in _LANGUAGE_ALIASES:
        return _LANGUAGE_ALIASES[primary]
    return primary if primary in _ISO_639_1 else None


# ------------------------------------------------------------------------------------------ entries

FUTURE_TOLERANCE = timedelta(days=1)
_FALLBACK_TITLE_CHARS = 80


def normalize_entry(raw: RawEntry, *, source: Source, feed: FeedMeta, feed_url: str, now: datetime) -> Item:
    """The Item for ``raw``: relative links resolve against ``raw.base`` or ``feed_url``."""
    base = raw.base or feed_url
    url = canonical_url(raw.link, base)
    link = _resolve(raw.link, base) if url else None
    html = clean_html(raw.content or raw.summary or "", base)
    text = remove_boilerplate_text(html_to_text(html))
    title = clean_title(raw.title) or _fallback_title(text, link)
    key = identity_key(raw.guid, url, title, text)
    published, updated, dated = _dates(raw.published, raw.updated, now)
    return Item(
        source=source.name,
        key=key,
        uid=item_uid(source.name, key),
        title=title,
        html=html,
        text=text,
        published=published,
        content_hash=content_hash(title, text),
        url=url,
        link=link,
        updated=updated,
        dated=dated,
        language=normalize_language(raw.language) or normalize_language(feed.language),
        authors=_unique(raw.authors),
        categories=_unique(raw.categories),
        enclosures=_enclosures(raw.enclosures, base),
        image=_http_url(raw.image, base),
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _dates(
    published: datetime | None, updated: datetime | None, now: datetime
) -> tuple[datetime, datetime | None, bool]:
    """(published, updated, dated): a missing or far-future date becomes ``now`` with dated=False."""
    now = _utc(now)
    limit = now + FUTURE_TOLERANCE
    first = published or updated
    if first is None or _utc(first) > limit:
        pub, dated = now, False
    else:
        pub, dated = _utc(first), True
    upd = _utc(updated) if updated else None
    if upd is not None and upd > limit:
        upd = now
    return pub, (upd if upd != pub else None), dated


def _fallback_title(text: str, link: str | None) -> str:
    first = text.split("\n", 1)[0].strip()
    if not first:
        return link or ""
    if len(first) <= _FALLBACK_TITLE_CHARS:
        return first
    cut = first[:_FALLBACK_TITLE_CHARS]
    words = cut.rsplit(" ", 1)[0]
    return (words if len(words) > _FALLBACK_TITLE_CHARS // 2 else cut).rstrip(" ,;:.-–—") + "…"


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for value in values:
        clean = clean_title(value)
        if clean and clean.casefold() not in seen:
            seen[clean.casefold()] = clean
    return tuple(seen.values())


def _enclosures(enclosures: Iterable[Enclosure], base: str) -> tuple[Enclosure, ...]:
    kept: dict[str, Enclosure] = {}
    for enc in enclosures:
        url = canonical_url(enc.url, base)
        if url and urlsplit(url).scheme in _DEFAULT_PORTS and url not in kept:
            length = enc.length if enc.length is not None and enc.length >= 0 else None
            kept[url] = Enclosure(url, (enc.type or "").strip() or None, length)
    return tuple(kept.values())
