"""`python run.py sources` tells an operator what happened to each source and why: status (ok, erroring,
backing off, retired), effective URL and why, next due and which rule set it; `sources --history NAME`
lists the recorded polls. Runs cli.main in process against a server on 127.0.0.1 and a SQLite file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from runcli import table
from sqlalchemy import select

from aggregator import cli

FEED = (
    b'<rss version="2.0"><channel><title>T</title><item><guid>1</guid><title>a</title></item></channel></rss>'
)


@pytest.fixture
def config(tmp_path: Path, httpserver: HTTPServer) -> Path:
    httpserver.expect_request("/ok").respond_with_data(FEED, content_type="application/rss+xml")
    httpserver.expect_request("/gone").respond_with_data("", status=410)
    httpserver.expect_request("/broken").respond_with_data("", status=500)
    httpserver.expect_request("/old").respond_with_data("", status=301, headers={"Location": "/ok"})
    path = tmp_path / "a.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            database: sqlite:///{tmp_path / "db.sqlite"}
            defaults: {{interval: 10m}}
            sources:
              - {{name: fine, url: "{httpserver.url_for("/ok")}"}}
              - {{name: gone, url: "{httpserver.url_for("/gone")}"}}
              - {{name: broken, url: "{httpserver.url_for("/broken")}"}}
              - {{name: moved, url: "{httpserver.url_for("/old")}"}}
            """),
        encoding="utf-8",
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_sources_shows_status_effective_url_and_why(
    config: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "fetch", "--all", "--config", str(config))[0] == 1
    code, out = run(capsys, "sources", "--config", str(config))
    assert code == 0
    rows = table(out)
    assert [rows[n][1] for n in ("fine", "gone", "broken", "moved")] == ["ok", "retired", "erroring", "ok"]
    assert "(interval 10m)" in rows["fine"][7] and rows["gone"][7] == "-"
    assert "(backoff after 1 error: 10m)" in rows["broken"][7]
    assert "HTTP 500 Internal Server Error" in rows["broken"][-1]
    assert "the source is retired" in rows["gone"][-1]
    assert rows["moved"][-1] == httpserver.url_for("/old")  # one 301 seen: not moved yet

    assert run(capsys, "fetch", "--all", "--config", str(config))[0] == 1  # gone is no longer polled...
    rows = table(run(capsys, "sources", "--config", str(config))[1])
    assert rows["broken"][1] == "backing off"
    assert "(backoff after 2 errors: 20m)" in rows["broken"][7]
    ok, old = httpserver.url_for("/ok"), httpserver.url_for("/old")
    assert (
        rows["moved"][-1]
        == f"{ok} (moved permanently (HTTP 301) from {old}, confirmed on 2 consecutive polls)"
    )
    assert [r.path for r, _ in httpserver.log].count("/gone") == 1  # ...but --all does not revive it


def test_sources_history(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "fetch", "--all", "--config", str(config))
    run(capsys, "fetch", "--source", "broken", "--config", str(config))
    code, out = run(capsys, "sources", "--history", "broken", "--config", str(config))
    assert code == 0
    polls = [line for line in out.splitlines() if line.startswith("│ 2")]  # rows start with the date
    assert len(polls) == 2 and all("│ error " in line and "│ 500 " in line for line in polls)
    assert "backoff after 2 errors: 20m" in out and "HTTP 500 Internal Server Error" in out
    code, out = run(capsys, "sources", "--history", "fine", "--config", str(config))
    assert "│ updated " in out and "│ 1 " in out
    assert run(capsys, "sources", "--history", "nope", "--config", str(config))[0] == 2


def test_fetch_all_leaves_alone_a_source_a_worker_is_polling(
    config: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from aggregator import store
    from aggregator.config import load_config
    from aggregator.store.tables import SourceRow

    assert run(capsys, "fetch", "--source", "fine", "--config", str(config))[0] == 0  # creates the store
    engine = store.make_engine(load_config(config).database)
    sessions = store.make_sessionmaker(engine)
    with sessions.begin() as s:  # a worker elsewhere holds "fine" now
        leased, busy = store.lease_sources(
            s, ["fine"], datetime.now(UTC), lease=timedelta(minutes=10), owner="worker@elsewhere"
        )
    assert leased == ["fine"] and busy == {}
    before = [r.path for r, _ in httpserver.log].count("/ok")
    code, out = run(capsys, "fetch", "--all", "--config", str(config))
    assert "fine: skipped, a worker is polling it now" in out
    assert "fine" not in table(out) and "broken" in table(out)
    assert [r.path for r, _ in httpserver.log].count("/ok") == before + 1  # moved's redirect, not fine
    code_one, out_one = run(capsys, "fetch", "--source", "fine", "--config", str(config))
    assert code_one == 0 and "fine: skipped" in out_one and "fine" not in table(out_one)
    assert [r.path for r, _ in httpserver.log].count("/ok") == before + 1
    with sessions() as s:  # fetch's own leases are gone, the worker's is untouched
        owners = {name: owner for name, owner in s.execute(select(SourceRow.name, SourceRow.lease_owner))}
    engine.dispose()
    assert owners["fine"] == "worker@elsewhere"
    assert {owners[n] for n in ("gone", "broken", "moved")} == {None}
    assert code == 1  # broken failed
