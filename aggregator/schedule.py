"""When a source is next due, and why: pure functions of the source's settings, what the last poll
learned (feed and HTTP hints, errors, Retry-After), the source's posting history and ``now``.

No I/O and no clock: the pipeline gathers the inputs into ``Hints`` and stores the ``Due`` it gets back.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from aggregator.model import FeedMeta, Source

MAX_BACKOFF = timedelta(hours=24)  # errors and Retry-After never push a source further than this
JITTER = 0.1  # up to ±10 % of the wait
CLAIM_LEASE = timedelta(minutes=10)  # a claimed source is not claimed again for this long
ADAPTIVE_RANGE = 4  # the posting-frequency estimate moves the interval at most 4x either way
ADAPTIVE_POSTS = 20  # how many recent posts the estimate looks at
ADAPTIVE_MIN_GAPS = 2  # fewer distinct gaps than this: no estimate


@dataclass(frozen=True, slots=True)
class Hints:
    """What the last poll and the store say about how often to poll (all optional)."""

    ttl: timedelta | None = None  # RSS <ttl>
    update_every: timedelta | None = None  # sy:updatePeriod / sy:updateFrequency
    max_age: timedelta | None = None  # Cache-Control: max-age
    expires: timedelta | None = None  # Expires, relative to the response's Date (or now)
    retry_after: datetime | None = None  # from a 429 or 503
    published: tuple[datetime, ...] = ()  # publication times of the source's recent items


@dataclass(frozen=True, slots=True)
class Due:
    """The next poll time and the rule that set it (shown by ``python run.py sources``)."""

    at: datetime
    reason: str


def plan(source: Source, now: datetime, *, errors: int = 0, hints: Hints | None = None) -> Due:
    """The next poll of ``source`` after a poll at ``now`` that left ``errors`` consecutive failures."""
    hints = hints or Hints()
    if errors > 0:
        return _after_error(source, now, errors, hints.retry_after)
    wait, reason = source.interval, f"interval {fmt(source.interval)}"
    adaptive = _adaptive(source, hints.published)
    if adaptive is not None:
        wait, reason = adaptive
    floor = _publisher_floor(hints)
    if floor is not None and floor[0] > wait:
        wait, reason = floor
    wait, reason = _clamp(source, wait, reason)
    return Due(now + wait + _jitter(source, now, wait), reason)


def next_due(source: Source, now: datetime, *, errors: int = 0) -> datetime:
    """``plan(...).at`` without hints: the interval, or the backoff after errors."""
    return plan(source, now, errors=errors).at


def _after_error(source: Source, now: datetime, errors: int, retry_after: datetime | None) -> Due:
    cap = max(MAX_BACKOFF, source.interval)
    wait = min(source.interval * (2 ** min(errors - 1, 20)), cap)
    reason = f"backoff after {errors} error{'s' * (errors != 1)}: {fmt(wait)}"
    if wait == cap and errors > 1:
        reason += f" (the cap; keeps probing every {fmt(cap)})"
    if retry_after is not None and retry_after - now > wait:
        wait = min(retry_after - now, cap)
        reason = f"Retry-After: {fmt(wait)}" + (" (capped)" if wait == cap else "")
        return Due(now + wait + abs(_jitter(source, now, wait)), reason)  # never earlier than asked
    return Due(now + wait + _jitter(source, now, wait), reason)


def _adaptive(source: Source, published: Sequence[datetime]) -> tuple[timedelta, str] | None:
    """Poll about twice per observed posting gap, within ADAPTIVE_RANGE of the configured interval."""
    found = _median_gap(tuple(published))
    if found is None:
        return None
    gap, gaps = found
    wait = min(max(gap / 2, source.interval / ADAPTIVE_RANGE), source.interval * ADAPTIVE_RANGE)
    return wait, f"adaptive: posts every ~{fmt(gap)} (median of {gaps} gaps)"


@lru_cache(maxsize=1024)  # the same posting times come back at every unchanged re-poll of a source
def _median_gap(published: tuple[datetime, ...]) -> tuple[timedelta, int] | None:
    """The median gap between the ADAPTIVE_POSTS latest distinct posting times, and how many gaps."""
    times = sorted(set(published), reverse=True)[:ADAPTIVE_POSTS]
    gaps = [a - b for a, b in itertools.pairwise(times) if a > b]
    if len(gaps) < ADAPTIVE_MIN_GAPS:
        return None
    return statistics.median_low(gaps), len(gaps)


def _publisher_floor(hints: Hints) -> tuple[timedelta, str] | None:
    """The longest wait the publisher asked for: never poll more often than that."""
    asked = [
        (hints.ttl, "feed ttl"),
        (hints.update_every, "feed sy:updatePeriod"),
        (hints.max_age, "Cache-Control max-age"),
        (hints.expires, "Expires"),
    ]
    longest = max(((w, why) for w, why in asked if w is not None and w > timedelta(0)), default=None)
    if longest is None:
        return None
    return longest[0], f"{longest[1]} {fmt(longest[0])}"


def _clamp(source: Source, wait: timedelta, reason: str) -> tuple[timedelta, str]:
    if wait < source.min_interval:
        return source.min_interval, f"{reason}, raised to the minimum {fmt(source.min_interval)}"
    if wait > source.max_interval:
        return source.max_interval, f"{reason}, lowered to the maximum {fmt(source.max_interval)}"
    return wait, reason


def _jitter(source: Source, now: datetime, wait: timedelta) -> timedelta:
    digest = hashlib.blake2b(f"{source.name}|{now.isoformat()}".encode(), digest_size=4).digest()
    fraction = int.from_bytes(digest, "big") / 0xFFFFFFFF  # 0..1, the same for the same inputs
    return wait * (JITTER * (2 * fraction - 1))


def fmt(wait: timedelta) -> str:
    """A short duration: 45s, 10m, 1h30m, 2d."""
    seconds = max(0, round(wait.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


# --- reading the hints (pure: headers and feed metadata in, durations out) -------------------------


def parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    """Retry-After as seconds ("120") or an HTTP-date; a date in the past means now; junk means None."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return now + timedelta(seconds=min(int(text), 10**8))
    when = _http_date(text)
    return None if when is None else max(when, now)


def _http_date(text: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\b", re.IGNORECASE)


def http_hints(headers: Mapping[str, str], now: datetime) -> tuple[timedelta | None, timedelta | None]:
    """(max-age, Expires - Date) from lower-cased response headers; None where absent or not useful."""
    control = headers.get("cache-control", "")
    if _NO_CACHE.search(control):
        return None, None
    match = _MAX_AGE.search(control)
    max_age = timedelta(seconds=min(int(match[1]), 10**8)) if match else None
    expires_at = _http_date(headers["expires"]) if "expires" in headers else None
    if expires_at is None:
        return max_age, None
    date = _http_date(headers.get("date", "")) or now
    return max_age, expires_at - date if expires_at > date else None


def hints_for(
    meta: FeedMeta | None,
    headers: Mapping[str, str],
    now: datetime,
    *,
    published: Sequence[datetime] = (),
    retry_after: str | None = None,
) -> Hints:
    """Gather every scheduling input one poll produced."""
    max_age, expires = http_hints(headers, now)
    return Hints(
        ttl=meta.ttl if meta else None,
        update_every=meta.update_every if meta else None,
        max_age=max_age,
        expires=expires,
        retry_after=parse_retry_after(retry_after, now),
        published=tuple(published),
    )
