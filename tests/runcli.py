"""Running `python run.py …` as an operator would, for the tests: a real subprocess, the environment an
operator's shell would have, a time limit, and no traceback allowed in what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

RUN = ROOT / "run.py"
TIMEOUT = 60  # seconds per command; every one finishes in a few


def environment(**extra: str) -> dict[str, str]:
    """The caller's environment as an operator's shell would have it: no config override, buffered
    output, no forced colours."""
    drop = {"AGGREGATOR_CONFIG", "PYTHONUNBUFFERED", "FORCE_COLOR"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | extra


def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(RUN), *args],
        cwd=cwd,
        env=env or environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait for ``proc`` (killing it after TIMEOUT); its output must not hold a traceback."""
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert "Traceback" not in stdout + stderr, stdout + stderr
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def table(text: str) -> dict[str, list[str]]:
    """Body rows of a rich table by first cell; a continuation line (empty first cell) is joined to its
    row cell by cell, so a cell's text reads whole."""
    rows: dict[str, list[str]] = {}
    last = ""
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0]:
            last = cells[0]
            rows[last] = cells
        elif last:
            rows[last] = [f"{a} {b}".strip() for a, b in zip(rows[last], cells, strict=True)]
    return rows
