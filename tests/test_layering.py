"""The import graph follows the design: pure core, I/O at the edges, one composition root."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aggregator"

# module -> the only third-party or aggregator modules it may import
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "errors": set(),
    "dedup": {"aggregator.model"},
    "schedule": {"aggregator.model"},
    "topics": {"aggregator.model", "aggregator.errors", "re2"},
    "websub": {"aggregator.model"},
    "normalize": {"aggregator.model", "aggregator.errors", "aggregator.dedup", "aggregator.urls"}
    | {"aggregator.markup", "aggregator.language"},
    "urls": {"w3lib"},
    "markup": {"nh3", "aggregator.urls"},
    "language": {"py3langid", "numpy"},
    "stories": {"aggregator.model", "numpy"},
    "config": {"aggregator.model", "aggregator.errors", "yaml", "pydantic"},
    "fetch": {"aggregator.model", "aggregator.errors", "aggregator.urls", "requests", "urllib3", "brotli"},
    "parse": {"aggregator.model", "aggregator.errors", "aggregator.fastparse", "feedparser"},
    "fastparse": {"aggregator.model", "aggregator.urls", "fastfeedparser", "lxml"},
    "publish": {"aggregator.model", "aggregator.errors", "feedgen", "lxml"},
    "opml": {"aggregator.model", "aggregator.errors", "aggregator.config", "yaml", "lxml"},
}
NOBODY_IMPORTS = {"aggregator.cli", "aggregator.worker", "aggregator.web"}
ONLY_IN = {"requests": "fetch", "feedparser": "parse", "feedgen": "publish", "apscheduler": "worker"}
ONLY_IN["fastfeedparser"] = "fastparse"


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "aggregator":
                names.update(f"aggregator.{alias.name}" for alias in node.names)
    return names


def third_party_or_own(name: str) -> bool:
    import sys

    top = name.split(".")[0]
    return top not in sys.stdlib_module_names and top != "__future__"


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_layers(path: Path) -> None:
    module = path.stem
    found = {n for n in imports(path) if third_party_or_own(n)}
    if path.parent == PACKAGE and module in ALLOWED:
        extra = {n for n in found if not any(n == a or n.startswith(a + ".") for a in ALLOWED[module])}
        assert not extra, f"{module}.py may not import {sorted(extra)}"
    if module not in ("cli", "__main__"):  # __main__: the entry point, importing the CLI when run
        assert not found & NOBODY_IMPORTS, f"{module}.py imports {sorted(found & NOBODY_IMPORTS)}"
    for library, owner in ONLY_IN.items():
        if any(n == library or n.startswith(library + ".") for n in found):
            assert module == owner, f"only {owner}.py may import {library}, not {module}.py"


def test_every_module_opens_with_a_docstring() -> None:
    for path in MODULES:
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py" and not tree.body:
            continue
        assert ast.get_docstring(tree), f"{path} has no module docstring"
