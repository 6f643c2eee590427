"""Canonical URLs: resolved against a base, scheme and host lower-cased, default ports, fragments and
tracking parameters removed (a maintained list, plus per-source extras).

Pure string work on top of w3lib's ``safe_url_string``; fetching or following redirects is not done here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import unquote_plus, urljoin, urlsplit, urlunsplit

from w3lib.url import safe_url_string

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
HTTP_PORTS = {"http": 80, "https": 443}
_DANGEROUS_SCHEMES = frozenset({"javascript", "data", "vbscript"})
_URL_JUNK = re.compile(r"[\t\r\n]")
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
# An absolute http(s) URL that urljoin returns unchanged: lower-case scheme, a host without brackets,
# no ";" (path parameters), no empty query or fragment.
_PLAIN_ABSOLUTE = re.compile(r"https?://[^/?#;\[\]\s]+(?:/[^?#;\s]*)?(?:\?[^#\s]+)?(?:#\S+)?")


def canonical_url(
    url: str | None, base: str | None = None, *, extra_params: Collection[str] = ()
) -> str | None:
    """The URL resolved against ``base``, with host case, default port, fragment and trackers removed.

    javascript:/data: URLs and unresolvable relative ones give None; other non-http(s) URLs (mailto:,
    ftp:) come back unchanged. ``extra_params`` names more query parameters to remove.
    """
    resolved = resolve_url(url, base)
    if resolved is None:
        return None
    scheme = urlsplit(resolved).scheme.lower()
    if scheme in _DANGEROUS_SCHEMES:
        return None
    if scheme not in HTTP_PORTS:
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
    if port is not None and port != HTTP_PORTS[scheme]:
        netloc += f":{port}"
    extra = frozenset(p.casefold() for p in extra_params)
    query = _clean_query(parts.query, extra)
    fragment = parts.fragment if parts.fragment.startswith("!") else ""  # keep "#!" routes
    clean = urlunsplit((scheme, netloc, _remove_dot_segments(parts.path) or "/", query, fragment))
    return _ESCAPE.sub(lambda m: m.group().upper(), clean)


def resolve_url(url: str | None, base: str | None) -> str | None:
    """``url`` made absolute against ``base``; None when empty, malformed or relative with no base."""
    if url is None:
        return None
    url = _URL_JUNK.sub("", url.strip())
    if not url:
        return None
    if is_plain_absolute(url) and (base is None or is_plain_absolute(base)):
        return url  # what urljoin gives back for it, without its two parses
    try:
        if base:
            return urljoin(base, url)
        if url.startswith("//"):
            return "https:" + url
        return url if urlsplit(url).scheme else None
    except ValueError:
        return None


def is_plain_absolute(url: str) -> bool:
    """An absolute http(s) URL that urljoin and urlsplit take as it is (no parsing needed)."""
    return _PLAIN_ABSOLUTE.fullmatch(url) is not None


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


def http_url(url: str | None, base: str | None) -> str | None:
    resolved = resolve_url(url, base)
    if resolved and urlsplit(resolved).scheme.lower() in HTTP_PORTS:
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


def host_key(url: str) -> str:
    """The key of the per-host limits: the URL's origin host and port (``example.org:443``), so two
    servers on one machine behind different ports are two hosts, as two origins are to a browser."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = 443 if parts.scheme.lower() == "https" else 80
    return f"{(parts.hostname or '').lower()}:{port or default}"
