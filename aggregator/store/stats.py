"""Figures for monitoring (``GET /metrics``) that the other store modules have no reason to compute:
polls by outcome over a recent period (the polling queue is leases.queue_depth)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator.store.tables import PollRow


def recent_polls(s: Session, since: datetime) -> dict[str, int]:
    """Polls recorded at or after ``since``, by outcome (updated, unchanged, not_modified, error)."""
    query = select(PollRow.status, func.count()).where(PollRow.at >= since).group_by(PollRow.status)
    return {status: count for status, count in s.execute(query)}
