"""Fixtures for the service tests: the app served by uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service extra is not installed: pip install -e '.[service]'")
pytest.importorskip("uvicorn")


def _load_helpers():
    name = "service_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_helpers.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()
Served = helpers.Served


@pytest.fixture
def serve_app(tmp_path) -> Iterator[Callable[..., Served]]:
    """Return ``serve(**settings_changes) -> Served`` (audit store in tmp_path unless changed); stops them all."""
    from ruleengine.service.settings import Settings

    running: list[Served] = []

    def serve(**changes) -> Served:
        base = Settings(audit_db=str(tmp_path / "audit.sqlite3"), access_log=False)
        served = helpers.start(base.with_(**changes))
        running.append(served)
        return served

    yield serve
    for served in running:
        helpers.stop(served)


@pytest.fixture
def server(serve_app) -> Served:
    """The default server: bundled policy, audited to tmp_path/audit.sqlite3, no token (loopback)."""
    return serve_app()
