"""WebSub publishing: tell a hub that topic feeds changed (``hub.mode=publish``, ``hub.topic=`` feed URL).

Stdlib HTTP (urllib) with a short timeout, one request per feed URL. Never raises: a hub that is down
or refuses is logged and returned as messages, so it cannot fail a poll. Does not subscribe or serve.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from aggregator.model import DEFAULT_USER_AGENT

log = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds per ping


def ping_hub(
    hub: str,
    feed_urls: Iterable[str],
    *,
    timeout: float = TIMEOUT,
    user_agent: str = DEFAULT_USER_AGENT,
    settle: float = 0.0,
) -> list[str]:
    """POST a publish notification for each feed URL; returns one message per failed ping. ``settle``:
    seconds to wait first, for the web servers to see the change (publish.REVALIDATE)."""
    time.sleep(settle)
    problems = []
    for url in feed_urls:
        body = urllib.parse.urlencode({"hub.mode": "publish", "hub.topic": url, "hub.url": url}).encode()
        request = urllib.request.Request(hub, data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.add_header("User-Agent", user_agent)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            e.close()
            problems.append(f"websub: hub {hub} refused the ping for {url}: HTTP {e.code} {e.reason}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            problems.append(f"websub: cannot reach hub {hub} for {url}: {reason}")
        else:
            log.debug("websub: hub %s took the ping for %s (HTTP %d)", hub, url, status)
    for problem in problems:
        log.warning("%s", problem)
    return problems


def ping_later(
    hub: str, feed_urls: Iterable[str], *, settle: float, user_agent: str = DEFAULT_USER_AGENT
) -> None:
    """``ping_hub`` in a background thread, after ``settle`` seconds: the caller (a poll that just
    committed) does not wait. A ping still pending when the process exits is lost (the hub learns of the
    change at the next one)."""
    urls = list(feed_urls)
    threading.Thread(
        target=ping_hub,
        args=(hub, urls),
        kwargs={"user_agent": user_agent, "settle": settle},
        name="websub-ping",
        daemon=True,
    ).start()
