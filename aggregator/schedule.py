"""When a source is next due: pure functions of the source's settings, its error count and ``now``.

A success waits the configured interval; a failure waits an exponentially growing backoff
(interval × 2^(errors-1), capped at MAX_BACKOFF) so that a broken feed keeps being probed, slowly. A
small deterministic jitter spreads sources that share an interval.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from aggregator.model import Source

MAX_BACKOFF = timedelta(hours=24)
JITTER = 0.1  # up to ±10 % of the wait
CLAIM_LEASE = timedelta(minutes=10)  # a claimed source is not claimed again for this long


def _jitter(source: Source, now: datetime, wait: timedelta) -> timedelta:
    digest = hashlib.blake2b(f"{source.name}|{now.isoformat()}".encode(), digest_size=4).digest()
    fraction = int.from_bytes(digest, "big") / 0xFFFFFFFF  # 0..1, the same for the same inputs
    return wait * (JITTER * (2 * fraction - 1))


def next_due(source: Source, now: datetime, *, errors: int = 0) -> datetime:
    """The next time to poll ``source`` after a poll at ``now`` that left ``errors`` consecutive
    failures (0 after a success)."""
    wait = source.interval
    if errors > 0:
        wait = min(source.interval * (2 ** min(errors - 1, 20)), max(MAX_BACKOFF, source.interval))
    return now + wait + _jitter(source, now, wait)
