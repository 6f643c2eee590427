"""Validators for rendered feeds, shared by the tests: Atom against the RELAX NG schema with xmllint,
JSON Feed 1.1 against its JSON Schema."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SHARED = Path(__file__).resolve().parents[2] / "shared"
ATOM_RNG = SHARED / "validators" / "atom-schema" / "atom.rng"
JSONFEED_DIR = SHARED / "validators" / "jsonfeed-schema"
XMLLINT = shutil.which("xmllint")


def xmllint_atom(body: bytes, tmp_path: Path) -> None:
    """Assert that ``body`` is valid Atom 1.0 (RFC 4287's RELAX NG schema)."""
    if XMLLINT is None:
        pytest.skip("xmllint is not installed (apt-get install libxml2-utils)")
    if not ATOM_RNG.exists():
        pytest.skip(f"{ATOM_RNG} is missing")
    path = tmp_path / "feed.atom"
    path.write_bytes(body)
    done = subprocess.run(
        [XMLLINT, "--noout", "--relaxng", str(ATOM_RNG), str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def jsonfeed_validator() -> jsonschema.Draft4Validator:
    """A validator for JSON Feed 1.1 documents."""
    if not JSONFEED_DIR.exists():
        pytest.skip(f"{JSONFEED_DIR} is missing")
    schema = json.loads((JSONFEED_DIR / "feed-1.1.schema.json").read_text(encoding="utf-8"))
    feed1 = json.loads((JSONFEED_DIR / "feed-1.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    resource = Resource.from_contents(feed1, default_specification=DRAFT4)
    # feed-1.1 has no id and refers to "feed-1#/..."; feed-1 calls itself https://json.schemastore.org/feed-1
    registry: Registry[Any] = Registry().with_resources(
        [("feed-1", resource), ("https://json.schemastore.org/feed-1", resource)]
    )
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(
        schema, registry=registry, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )
