"""Source leases: a claim writes (owner, expiry) onto each due source in the same transaction as its
``SELECT … FOR UPDATE SKIP LOCKED``, and keeps the per-host limit exact across workers by counting the
unexpired leases of each host under a lock. Does not poll, schedule or commit: the caller owns the
transaction."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, false, func, or_, select, update
from sqlalchemy.orm import Session

from aggregator.store.tables import SourceRow
from aggregator.urls import host_key

# pg_advisory_xact_lock keys (64-bit): "aggclaim" serializes claims that apply a per-host limit, so the
# count of a host's leases cannot change between reading it and writing the new leases; "aggsync."
# serializes the startup sync of the sources table by several workers.
CLAIM_LOCK = int.from_bytes(b"aggclaim", "big") >> 1
SYNC_LOCK = int.from_bytes(b"aggsync.", "big") >> 1
SCAN = 4  # with a per-host limit, a claim looks at up to SCAN x limit due sources to fill its batch


def new_owner(role: str = "worker") -> str:
    """A lease owner id unique across machines and restarts: role, host name, pid and a random part."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def url_host(url: str) -> str | None:
    """The host a URL polls, as the fetcher's per-host limit counts it (``urls.host_key``: lower-case
    name and port); None for files and paths (no per-host limit)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return host_key(url)


def take_lock(s: Session, key: int) -> None:
    """Make the transaction's reads and writes exact against other claimers: on PostgreSQL a
    transaction-level advisory lock on ``key`` (released at commit or rollback); on SQLite the
    database's write lock, taken now by a write that changes nothing (Python's sqlite3 would begin the
    transaction only at the first real write, after the reads)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(key)))
    elif dialect == "sqlite":
        s.execute(update(SourceRow).where(false()).values(id=SourceRow.id))


def _unleased(now: datetime) -> ColumnElement[bool]:
    return or_(SourceRow.lease_expires_at.is_(None), SourceRow.lease_expires_at <= now)


def _active() -> ColumnElement[bool]:
    """Enabled configured sources, not retired: the ones workers poll."""
    return SourceRow.enabled & SourceRow.in_config & ~SourceRow.retired


def _due(now: datetime) -> ColumnElement[bool]:
    """Active sources due by ``now`` (leased or not)."""
    return _active() & (SourceRow.next_due_at <= now)


def _lease(s: Session, ids: Collection[int], owner: str, until: datetime) -> None:
    if ids:
        s.execute(
            update(SourceRow)
            .where(SourceRow.id.in_(list(ids)))
            .values(lease_owner=owner, lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )


def claim_due_sources(
    s: Session,
    now: datetime,
    *,
    lease: timedelta,
    limit: int = 100,
    owner: str | None = None,
    per_host: int | None = None,
) -> list[str]:
    """Lease up to ``limit`` enabled sources due by ``now`` to ``owner`` until ``now + lease``; return
    their names. A source with an unexpired lease is never claimed, and with ``per_host`` no host gets
    more than that many unexpired leases, counting every worker's. Sources without a host (files) have
    no limit. Rows another transaction holds are skipped (PostgreSQL), not waited for."""
    owner = owner or new_owner("claim")
    query = (
        select(SourceRow.id, SourceRow.name, SourceRow.host)  # no ORM objects: one UPDATE leases them
        .where(_due(now), _unleased(now))
        .order_by(SourceRow.next_due_at, SourceRow.id)
        .limit(limit)
    )
    held: dict[str, int] = {}
    if per_host is not None or s.get_bind().dialect.name == "sqlite":
        take_lock(s, CLAIM_LOCK)
    if per_host is not None:
        held = leases_per_host(s, now)
        full = [host for host, count in held.items() if count >= per_host]
        if full:
            query = query.where(or_(SourceRow.host.is_(None), SourceRow.host.not_in(full)))
        query = query.limit(SCAN * limit)
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed: list[str] = []
    ids: list[int] = []
    for row in s.execute(query):
        if len(claimed) == limit:
            break
        if per_host is not None and row.host is not None:
            if held.get(row.host, 0) >= per_host:
                continue
            held[row.host] = held.get(row.host, 0) + 1
        ids.append(row.id)
        claimed.append(row.name)
    _lease(s, ids, owner, now + lease)
    return claimed


def lease_sources(
    s: Session, names: Collection[str], now: datetime, *, lease: timedelta, owner: str
) -> tuple[list[str], dict[str, datetime]]:
    """Lease the named sources to ``owner`` whatever their due time (``fetch --all``/``--source``), except
    those another owner holds an unexpired lease on (a worker is polling them now). Returns (the names
    leased, in the given order; name -> lease expiry of those left alone)."""
    wanted = list(dict.fromkeys(names))
    query = select(SourceRow.id, SourceRow.name, SourceRow.lease_owner, SourceRow.lease_expires_at).where(
        SourceRow.name.in_(wanted)
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)  # a row being claimed right now: left alone too
    free: dict[str, int] = {}
    busy: dict[str, datetime] = {}
    for row in s.execute(query):
        if row.lease_expires_at is not None and row.lease_expires_at > now and row.lease_owner != owner:
            busy[row.name] = row.lease_expires_at
        else:
            free[row.name] = row.id
    for name in wanted:  # skipped by SKIP LOCKED: another claimer holds the row now
        if name not in free and name not in busy:
            busy[name] = now + lease
    _lease(s, free.values(), owner, now + lease)
    return [n for n in wanted if n in free], busy


def leases_per_host(s: Session, now: datetime) -> dict[str, int]:
    """How many unexpired leases each host has, across every worker."""
    query = (
        select(SourceRow.host, func.count())
        .where(SourceRow.lease_expires_at > now, SourceRow.host.is_not(None))
        .group_by(SourceRow.host)
    )
    return {host: count for host, count in s.execute(query) if host is not None}


def queue_depth(s: Session, now: datetime) -> tuple[int, int]:
    """(sources a claim would take now, were there no per-host limit; enabled configured sources under
    an unexpired lease) (GET /metrics)."""
    due = s.scalar(select(func.count()).where(_due(now), _unleased(now)))
    held = s.scalar(select(func.count()).where(_active(), SourceRow.lease_expires_at > now))
    return due or 0, held or 0


def renew_lease(s: Session, name: str, owner: str, now: datetime, lease: timedelta) -> bool:
    """Extend ``owner``'s lease on ``name`` to ``now + lease``; False if the lease is no longer its own
    (it expired and another worker claimed the source, or it was released)."""
    result = s.execute(
        update(SourceRow)
        .where(SourceRow.name == name, SourceRow.lease_owner == owner)
        .values(lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def release_leases(s: Session, owner: str, *, keep: Collection[str] = ()) -> list[str]:
    """End ``owner``'s leases, except on the sources named in ``keep`` (still being polled); return the
    names released. The sources keep their due time, so any worker claims them at its next tick."""
    query = select(SourceRow.name).where(
        SourceRow.lease_expires_at.is_not(None), SourceRow.lease_owner == owner
    )
    if keep:
        query = query.where(SourceRow.name.not_in(list(keep)))
    names = list(s.scalars(query))
    if names:
        s.execute(
            update(SourceRow)
            .where(SourceRow.name.in_(names), SourceRow.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
    return names


def end_lease(row: SourceRow) -> None:
    """The poll of ``row`` is being committed: its lease ends with it (whoever held it)."""
    row.lease_owner, row.lease_expires_at = None, None
