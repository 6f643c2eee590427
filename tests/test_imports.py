"""A polling process stays light: the worker path never imports the libraries only other commands need.

Checked in fresh subprocesses (sys.modules); the RSS this saves is measured by bench/ingest.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REAL, ROOT, FeedServer

from aggregator import store

# datasketch: tests only; alembic: migrations; flask, waitress: `serve`/`run`; feedgen: building feeds
HEAVY = ("datasketch", "alembic", "flask", "werkzeug", "waitress", "feedgen")

IMPORT_CLI = """
import json, sys
import aggregator.cli
print(json.dumps(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""

POLL = """
import json, sys
from datetime import UTC, datetime
from aggregator.cli import make_worker, open_app
from aggregator.config import load_config
from aggregator.pipeline import poll_source

app = open_app(load_config(sys.argv[1]))
make_worker(app)
outcome = poll_source(app.ctx, "abc", datetime.now(UTC))
loaded = sorted(m for m in sys.argv[2:] if m in sys.modules)
print(json.dumps({"ok": outcome.ok, "new": outcome.new, "error": outcome.error, "loaded": loaded}))
"""


def run_python(code: str, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_none_of_the_heavy_libraries() -> None:
    assert run_python(IMPORT_CLI, *HEAVY) == []


def test_a_worker_polling_a_current_database_loads_none_of_them(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    database = f"sqlite:///{tmp_path / 'store.db'}"
    engine = store.make_engine(database)
    store.upgrade(engine)  # as `db upgrade` (or a first start) left it: the worker only checks the revision
    engine.dispose()
    feed_server.routes["/abc.xml"] = REAL / "abcnews-1.xml"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database: {database}\nsources:\n  - name: abc\n    url: {feed_server.url('/abc.xml')}\n"
        "topics:\n  - {name: all, query: '*'}\n"
    )
    result = run_python(POLL, str(config), *HEAVY, "aggregator.stories", "apscheduler")
    assert isinstance(result, dict)
    assert result["ok"] and result["new"] > 0, result["error"]
    assert result["loaded"] == ["aggregator.stories", "apscheduler"]  # fingerprints computed, worker built


def test_the_head_revision_read_from_the_files_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from aggregator.store.engine import _alembic_config, head_revision

    assert head_revision() == ScriptDirectory.from_config(_alembic_config()).get_current_head()
