"""Where the bundled policies and schemas live (the repository root of an editable install)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES_DIR = ROOT / "policies"
SCHEMAS_DIR = ROOT / "schemas"
DEFAULT_POLICY = POLICIES_DIR / "default"


@cache
def load_schema(name: str) -> dict:
    """Return the parsed JSON Schema ``schemas/<name>``; raises FileNotFoundError if it is missing."""
    with open(SCHEMAS_DIR / name, encoding="utf-8") as fh:
        return json.load(fh)
