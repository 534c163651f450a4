"""The decision service fails closed on its audit store: /readyz says 503 and decisions are refused (503) when
the store cannot be written, and a store deleted under the running server is not re-created."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from ruleengine.audit import open_store

pytest.importorskip("fastapi", reason="the service extra is not installed")

FACTS = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
         "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


def _service_conftest():
    name = "service_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "service" /
                                                      "_helpers.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def served(tmp_path):
    from ruleengine.service.settings import Settings

    helpers = _service_conftest()
    db = str(tmp_path / "audit.sqlite3")
    running = helpers.start(Settings(audit_db=db, access_log=False))
    yield running, db
    helpers.stop(running)


def test_ready_and_recorded(served):
    server, db = served
    status, body, _ = server.call("/readyz")
    assert status == 200 and body["status"] == "ready" and body["audit"] is True
    status, body, _ = server.call("/v1/decide", "POST", FACTS)
    assert status == 200 and body["audit_record"] == body["decision_id"]
    with open_store(db) as store:
        assert store.get(body["decision_id"])["decision"]["verdict"]["method"] == "lora"


def test_deleted_store_fails_closed_and_is_not_recreated(served):
    server, db = served
    assert server.call("/v1/decide", "POST", FACTS)[0] == 200
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    status, body, _ = server.call("/readyz")
    assert status == 503 and body["error"]["code"] == "audit-store-unavailable" and "deleted" in body["error"]["message"]
    status, body, _ = server.call("/v1/decide", "POST", FACTS)
    assert status == 503 and body["error"]["code"] == "audit-store-unavailable" and "verdict" not in body
    assert not os.path.exists(db)  # not silently re-created at seq 1


def test_postgres_store_behind_the_service(pg_url):
    from ruleengine.service.settings import Settings

    helpers = _service_conftest()
    running = helpers.start(Settings(audit_db=pg_url, access_log=False))
    try:
        ids = [running.call("/v1/decide", "POST", FACTS)[1]["decision_id"] for _ in range(5)]
        assert running.call("/readyz")[0] == 200
    finally:
        helpers.stop(running)
    with open_store(pg_url) as store:
        assert [r["decision"]["decision_id"] for r in store.iter_all()] == ids and store.verify().ok
