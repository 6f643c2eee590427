"""Next-due computation: interval after success, capped exponential backoff after failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aggregator.model import Source
from aggregator.schedule import MAX_BACKOFF, next_due

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
