"""``database_pool.sqlite_cache`` and ``sqlite_mmap``: from the config file to every SQLite connection's
PRAGMAs; the defaults keep a pooled connection small (1 MiB cache, no memory map).

What they buy (dedup cost at 1M stored items) is measured by bench/dedup_cost.py, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from aggregator import cli, store
from aggregator.config import load_config
from aggregator.errors import ConfigError


def pragmas(engine: Engine) -> tuple[int, int]:
    """``cache_size`` (negative: KiB) and ``mmap_size`` (bytes) of a connection from the engine."""
    with engine.connect() as c:
        cache = c.execute(text("PRAGMA cache_size")).scalar()
        mmap = c.execute(text("PRAGMA mmap_size")).scalar()
    assert isinstance(cache, int) and isinstance(mmap, int)
    return cache, mmap


def engine_from(tmp_path: Path, pool: str) -> Engine:
    path = tmp_path / "a.yaml"
    path.write_text(f"database: sqlite:///{tmp_path / 'a.db'}\ndatabase_pool: {pool}\n")
    return cli.open_engine(load_config(path, env={}))


def test_the_config_sets_each_connections_page_cache_and_memory_map(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, "{size: 2, sqlite_cache: 64MiB, sqlite_mmap: 256MiB}")
    try:
        held = engine.connect()  # a second connection is opened while the first is out: both set up
        assert pragmas(engine) == (-64 * 1024, 256 * 2**20)
        assert held.execute(text("PRAGMA cache_size")).scalar() == -64 * 1024
        held.close()
    finally:
        engine.dispose()


def test_sizes_in_decimal_units_round_down_to_whole_kib(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, "{sqlite_cache: 64KB, sqlite_mmap: 10MB}")
    try:
        assert pragmas(engine) == (-62, 10**7)  # 64,000 bytes: 62 KiB
    finally:
        engine.dispose()


def test_by_default_a_connection_keeps_one_mib_and_maps_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(f"database: sqlite:///{tmp_path / 'a.db'}\n")
    settings = load_config(tmp_path / "a.yaml", env={})
    assert (settings.database_pool.sqlite_cache, settings.database_pool.sqlite_mmap) == (2**20, 0)
    for engine in (
        cli.open_engine(settings),
        engine_from(tmp_path, "{sqlite_mmap: 0}"),
        store.make_engine(f"sqlite:///{tmp_path / 'b.db'}"),  # no Pool: the same
    ):
        try:
            assert pragmas(engine) == (-1024, 0)
        finally:
            engine.dispose()


BAD = {
    "sqlite_cache: lots": "database_pool.sqlite_cache: invalid size 'lots': write bytes or a number",
    "sqlite_cache: -5": "database_pool.sqlite_cache: invalid size -5: must be at least 1 byte",
    "sqlite_cache: 10KB": "database_pool.sqlite_cache: must be between 64KB and 1GB (got 10,000 bytes)",
    "sqlite_cache: 0": "database_pool.sqlite_cache: invalid size 0: must be at least 1 byte",
    "sqlite_mmap: -1": "database_pool.sqlite_mmap: invalid size -1: must be 0 (off) or more",
    "sqlite_mmap: 200GB": "database_pool.sqlite_mmap: must be at most 100GB (got 200,000,000,000 bytes)",
    "sqlite_mmap: on": "database_pool.sqlite_mmap: invalid size True",
}


@pytest.mark.parametrize("line", BAD)
def test_a_bad_size_names_file_line_and_key(tmp_path: Path, line: str) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(f"database_pool:\n  size: 2\n  {line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [problem] = info.value.problems
    assert problem.startswith(f"{path}:3: {BAD[line]}"), problem


def test_check_config_reports_a_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text("database_pool:\n  sqlite_cache: lots\n")
    assert cli.main(["check-config", "--config", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.yaml'}:2: database_pool.sqlite_cache: invalid size 'lots'" in err, err
