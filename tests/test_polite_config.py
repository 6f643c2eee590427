"""Config options for polite fetching: basic auth with the password from the environment, allow_private
(per source and as a default), min/max interval, per-host concurrency and host Retry-After."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.config import load_config
from aggregator.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "a.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return [p.replace(str(path.parent) + "/", "") for p in info.value.problems]


CONFIG = """\
    worker: {threads: 8, per_host: 3, host_retry_after: false}
    defaults: {interval: 10m, min_interval: 2m, max_interval: 6h, allow_private: true}
    sources:
      - name: members
        url: https://example.org/members.rss
        auth: {username: reader, password_env: FEED_PASSWORD}
        allow_private: false
      - name: plain
        url: https://example.org/rss
"""


def test_polite_options_are_loaded(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, CONFIG), env={"FEED_PASSWORD": "s3cret"})
    members, plain = settings.source("members"), settings.source("plain")
    assert members.auth == ("reader", "s3cret") and plain.auth is None
    assert (members.allow_private, plain.allow_private) == (False, True)  # the source's own value wins
    assert (plain.min_interval, plain.max_interval) == (timedelta(minutes=2), timedelta(hours=6))
    assert (settings.worker.per_host, settings.worker.host_retry_after) == (3, False)


def test_defaults_without_polite_options(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, "sources: [{name: a, url: 'https://example.org/'}]\n"), env={})
    source = settings.source("a")
    assert (source.auth, source.allow_private) == (None, False)
    assert (source.min_interval, source.max_interval) == (timedelta(minutes=1), timedelta(hours=24))
    assert (settings.worker.per_host, settings.worker.host_retry_after) == (2, True)


def test_password_variable_not_set(tmp_path: Path) -> None:
    assert problems(write(tmp_path, CONFIG)) == [
        "a.yaml:6: sources[0].auth.password_env: environment variable FEED_PASSWORD is not set"
    ]


def test_auth_needs_both_keys_and_unknown_keys_stay_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        worker: {per_hots: 2}
        sources:
          - name: a
            url: https://example.org/
            auth: {username: reader, password: plain-text}
        """,
    )
    assert problems(path) == [
        "a.yaml:1: worker.per_hots: unknown key (did you mean 'per_host'?)",
        "a.yaml:5: sources[0].auth.password_env: required key is missing",
        "a.yaml:5: sources[0].auth.password: unknown key (did you mean 'password_env'?)",
    ]


def test_min_interval_longer_than_max_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: {min_interval: 2h, max_interval: 1h}\n")
    assert problems(path) == [
        "a.yaml:1: defaults: min_interval (2:00:00) is longer than max_interval (1:00:00)"
    ]


def test_per_host_must_be_positive(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "worker: {per_host: 0}\n")) == [
        "a.yaml:1: worker.per_host: must be at least 1 (got 0)"
    ]
