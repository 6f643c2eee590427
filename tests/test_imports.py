"""A polling process stays light: the worker path never imports the libraries only other commands need,
and a parse pool process imports parse and normalize only.

Checked in fresh subprocesses (sys.modules); the RSS this saves is measured by bench/ingest.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REAL, ROOT, FeedServer

from aggregator import store

# datasketch: tests only; alembic: migrations; flask, waitress: `serve`/`run`; feedgen: building feeds
HEAVY = ("datasketch", "alembic", "flask", "werkzeug", "waitress", "feedgen")
# feedparser: the fallback parser; py3langid: detecting a language (numpy too, in a pool process); re2: a
# topic query's regular expression
ON_DEMAND = ("feedparser", "py3langid", "re2")
# what a parse pool process has no use for: the store, fetching, config, the CLI and the worker
NOT_IN_POOL = (
    *HEAVY,
    *ON_DEMAND,
    "numpy",
    "sqlalchemy",
    "requests",
    "urllib3",
    "pydantic",
    "yaml",
    "rich",
    "apscheduler",
    "prometheus_client",
    "aggregator.cli",
    "aggregator.store",
    "aggregator.pipeline",
    "aggregator.stories",
)

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


POOL = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from aggregator.model import Source
from aggregator.stages import Stages

url = "http://127.0.0.1/feed.xml"
stages = Stages.build(processes=1, writers=1)
try:
    _, items, _, _ = stages.run(
        Source("s", url), Path(sys.argv[1]).read_bytes(), url, None, datetime.now(UTC), lambda keys: {}
    )
    modules = stages.pool.submit(eval, "sorted(__import__('sys').modules)").result()  # the same process
finally:
    stages.close()
print(json.dumps({"items": len(items), "loaded": sorted(m for m in sys.argv[2:] if m in modules)}))
"""

# multiprocessing imports the main script in every pool process, as "__mp_main__"
IMPORT_RUN_PY_AS_POOL_MAIN = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="__mp_main__")
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""

IMPORT_MODULE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""


def test_importing_the_cli_loads_none_of_the_heavy_libraries() -> None:
    assert run_python(IMPORT_CLI, *HEAVY, *ON_DEMAND) == []


def test_a_parse_pool_process_loads_parse_and_normalize_only() -> None:
    """bbc-news-1 goes through the fast path and declares a language its entries are written in: no
    fallback, no detection."""
    result = run_python(POOL, str(REAL / "bbc-news-1.xml"), *NOT_IN_POOL, "aggregator.parse", "lxml")
    assert result == {"items": 57, "loaded": ["aggregator.parse", "lxml"]}


def test_a_pool_process_importing_run_py_loads_no_part_of_the_cli() -> None:
    assert run_python(IMPORT_RUN_PY_AS_POOL_MAIN, str(ROOT / "run.py"), *NOT_IN_POOL) == []


def test_a_pool_process_importing_the_console_script_loads_no_part_of_the_cli() -> None:
    """The installed `aggregator` script imports its entry point's module at the top (and calls it under
    the main guard), so a pool process started by `aggregator worker` imports that module."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["aggregator"]
    assert run_python(IMPORT_MODULE, entry.split(":")[0], *NOT_IN_POOL) == []


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
    result = run_python(POLL, str(config), *HEAVY, "feedparser", "re2", "aggregator.stories", "apscheduler")
    assert isinstance(result, dict)
    assert result["ok"] and result["new"] > 0, result["error"]
    assert result["loaded"] == ["aggregator.stories", "apscheduler"]  # fingerprints computed, worker built


def test_the_head_revision_read_from_the_files_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from aggregator.store.engine import _alembic_config, head_revision

    assert head_revision() == ScriptDirectory.from_config(_alembic_config()).get_current_head()
