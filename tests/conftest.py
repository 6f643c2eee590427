"""Shared fixtures: paths to the shared corpus and a fresh, migrated SQLite store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aggregator import store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
REAL = CORPUS / "real"
VALIDATORS = SHARED / "validators"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade(engine)
    yield store.make_sessionmaker(engine)
    engine.dispose()
