"""Figures for monitoring (``GET /metrics``) that the other store modules have no reason to compute:
polls by outcome over a recent period, and how many sources are due or leased right now."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from aggregator.store.tables import PollRow, SourceRow


def recent_polls(s: Session, since: datetime) -> dict[str, int]:
    """Polls recorded at or after ``since``, by outcome (updated, unchanged, not_modified, error)."""
    query = select(PollRow.status, func.count()).where(PollRow.at >= since).group_by(PollRow.status)
    return {status: count for status, count in s.execute(query)}


def queue_depth(s: Session, now: datetime) -> tuple[int, int]:
    """(sources due and not leased, sources under an unexpired lease) among the enabled configured ones."""
    active = SourceRow.in_config & SourceRow.enabled & ~SourceRow.retired
    free = or_(SourceRow.lease_expires_at.is_(None), SourceRow.lease_expires_at <= now)
    due = s.scalar(select(func.count()).where(active, SourceRow.next_due_at <= now, free))
    held = s.scalar(select(func.count()).where(active, SourceRow.lease_expires_at > now))
    return due or 0, held or 0
