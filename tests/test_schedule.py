"""Next-due computation (pure, fixed ``now``): interval, feed and HTTP hints, adaptive estimate, clamps,
capped exponential backoff, Retry-After, and the reason shown by `sources`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator.model import Source
from aggregator.schedule import MAX_BACKOFF, Hints, fmt, http_hints, next_due, parse_retry_after, plan

NOW = datetime(2024, 1, 1, tzinfo=UTC)
SRC = Source("bbc", "https://bbc.example/rss", interval=timedelta(minutes=10))


def within(value: datetime, wait: timedelta) -> bool:
    return NOW + wait * 0.9 <= value <= NOW + wait * 1.1


def test_success_waits_the_interval_with_bounded_jitter() -> None:
    assert within(next_due(SRC, NOW), timedelta(minutes=10))
    assert next_due(SRC, NOW) == next_due(SRC, NOW)  # deterministic for the same inputs
    others = {next_due(Source(f"s{i}", "x", interval=SRC.interval), NOW) for i in range(20)}
    assert len(others) > 1  # spread


def test_errors_back_off_exponentially_up_to_the_cap() -> None:
    assert within(next_due(SRC, NOW, errors=1), timedelta(minutes=10))
    assert within(next_due(SRC, NOW, errors=2), timedelta(minutes=20))
    assert within(next_due(SRC, NOW, errors=4), timedelta(minutes=80))
    assert within(next_due(SRC, NOW, errors=50), MAX_BACKOFF)


def test_an_interval_longer_than_the_cap_is_kept() -> None:
    weekly = Source("w", "x", interval=timedelta(days=7))
    assert within(next_due(weekly, NOW, errors=9), timedelta(days=7))


# --- hints, adaptive estimate, clamps, reasons (issue 3) ------------------------------------------


HOUR = timedelta(hours=1)


def test_plan_without_hints_is_the_interval_and_says_so() -> None:
    due = plan(SRC, NOW)
    assert within(due.at, timedelta(minutes=10)) and due.reason == "interval 10m"


def test_publisher_hints_lengthen_the_wait_never_shorten_it() -> None:
    assert plan(SRC, NOW, hints=Hints(ttl=HOUR)).reason == "feed ttl 1h"
    assert within(plan(SRC, NOW, hints=Hints(ttl=HOUR)).at, HOUR)
    assert plan(SRC, NOW, hints=Hints(update_every=2 * HOUR)).reason == "feed sy:updatePeriod 2h"
    assert plan(SRC, NOW, hints=Hints(max_age=30 * 60 * timedelta(seconds=1))).reason == (
        "Cache-Control max-age 30m"
    )
    assert plan(SRC, NOW, hints=Hints(expires=3 * HOUR, ttl=HOUR)).reason == "Expires 3h"  # the longest wins
    assert plan(SRC, NOW, hints=Hints(ttl=timedelta(minutes=1))).reason == "interval 10m"  # shorter: ignored


def test_hints_are_clamped_to_the_maximum_and_the_interval_to_the_minimum() -> None:
    capped = plan(SRC, NOW, hints=Hints(ttl=timedelta(days=7)))
    assert capped.reason == "feed ttl 7d, lowered to the maximum 1d" and within(capped.at, timedelta(days=1))
    fast = Source("f", "x", interval=timedelta(seconds=10), min_interval=timedelta(minutes=2))
    raised = plan(fast, NOW)
    assert raised.reason == "interval 10s, raised to the minimum 2m"
    assert within(raised.at, timedelta(minutes=2))


def posts(every: timedelta, count: int = 10) -> Hints:
    return Hints(published=tuple(NOW - every * i for i in range(count)))


def test_adaptive_polls_a_busy_feed_more_often_and_a_quiet_one_less() -> None:
    source = Source("a", "x", interval=timedelta(minutes=30))
    busy = plan(source, NOW, hints=posts(timedelta(minutes=20)))
    assert busy.reason == "adaptive: posts every ~20m (median of 9 gaps)"
    assert within(busy.at, timedelta(minutes=10))  # twice per posting gap
    very_busy = plan(source, NOW, hints=posts(timedelta(minutes=1)))
    assert within(very_busy.at, timedelta(minutes=7.5))  # at most 4x more often than configured
    weekly = plan(source, NOW, hints=posts(timedelta(days=7)))
    assert weekly.reason.startswith("adaptive: posts every ~7d") and within(weekly.at, 2 * HOUR)  # 4x less
    assert plan(source, NOW, hints=posts(timedelta(minutes=20))).at < plan(source, NOW, hints=posts(HOUR)).at


def test_adaptive_needs_distinct_posting_times_and_yields_to_the_publisher() -> None:
    source = Source("a", "x", interval=timedelta(minutes=30))
    same_time = Hints(published=(NOW,) * 10)  # feeds that stamp every entry with the build time
    assert plan(source, NOW, hints=same_time).reason == "interval 30m"
    assert plan(source, NOW, hints=Hints(published=(NOW, NOW - HOUR))).reason == "interval 30m"  # 1 gap
    both = Hints(ttl=HOUR, published=posts(timedelta(minutes=5)).published)
    assert plan(source, NOW, hints=both).reason == "feed ttl 1h"


def test_backoff_reason_cap_and_reset() -> None:
    assert plan(SRC, NOW, errors=1).reason == "backoff after 1 error: 10m"
    assert plan(SRC, NOW, errors=3).reason == "backoff after 3 errors: 40m"
    capped = plan(SRC, NOW, errors=30)
    assert capped.reason == "backoff after 30 errors: 1d (the cap; keeps probing every 1d)"
    assert within(capped.at, MAX_BACKOFF)
    assert plan(SRC, NOW, errors=0).reason == "interval 10m"  # a success resets


def test_retry_after_wins_over_a_shorter_backoff_and_is_never_shortened_by_jitter() -> None:
    for name in ("a", "b", "c", "d", "e"):
        source = Source(name, "x", interval=timedelta(minutes=10))
        due = plan(source, NOW, errors=1, hints=Hints(retry_after=NOW + HOUR))
        assert due.reason == "Retry-After: 1h"
        assert NOW + HOUR <= due.at <= NOW + HOUR * 1.1
    short = plan(SRC, NOW, errors=3, hints=Hints(retry_after=NOW + timedelta(minutes=1)))
    assert short.reason.startswith("backoff after 3 errors")  # the longer of the two
    huge = plan(SRC, NOW, errors=1, hints=Hints(retry_after=NOW + timedelta(days=30)))
    assert huge.reason == "Retry-After: 1d (capped)"  # still probed daily


def test_parse_retry_after_both_forms() -> None:
    assert parse_retry_after("120", NOW) == NOW + timedelta(seconds=120)
    assert parse_retry_after(" 0 ", NOW) == NOW
    date = "Mon, 01 Jan 2024 02:00:00 GMT"
    assert parse_retry_after(date, NOW) == NOW + 2 * HOUR
    assert parse_retry_after("Sun, 31 Dec 2023 23:00:00 GMT", NOW) == NOW  # in the past: now
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_http_hints_from_cache_headers() -> None:
    assert http_hints({"cache-control": "public, max-age=600"}, NOW) == (timedelta(minutes=10), None)
    assert http_hints({"cache-control": "no-cache, max-age=600"}, NOW) == (None, None)
    expires = {"date": "Mon, 01 Jan 2024 00:00:00 GMT", "expires": "Mon, 01 Jan 2024 03:00:00 GMT"}
    assert http_hints(expires, NOW + timedelta(days=1)) == (None, 3 * HOUR)  # relative to Date: no skew
    assert http_hints({"expires": "0"}, NOW) == (None, None)
    assert http_hints({"expires": "Sun, 31 Dec 2023 00:00:00 GMT"}, NOW) == (None, None)
    assert http_hints({}, NOW) == (None, None)


def test_fmt() -> None:
    assert [fmt(timedelta(seconds=s)) for s in (0, 45, 600, 5400, 86400, 90000)] == [
        "0s",
        "45s",
        "10m",
        "1h30m",
        "1d",
        "1d1h",
    ]
