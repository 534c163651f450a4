"""The decision service fails closed on its audit store: /readyz says 503 and decisions are refused (503) when
the store cannot be written, and a store deleted under the running server is not re-created."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request

import pytest

from ruleengine.audit import open_store

FACTS = {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
         "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


def call(url, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(tmp_path):
    from ruleengine.api import open_policy
    from ruleengine.service import DecisionService, make_server

    db = str(tmp_path / "audit.sqlite3")
    service = DecisionService(open_policy(None), audit=True, audit_db=db)
    srv = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    yield f"http://{host}:{port}", db
    srv.shutdown()
    srv.server_close()
    service.close()


def test_ready_and_recorded(served):
    url, db = served
    assert call(url + "/readyz") == (200, {"status": "ready", "audit": True})
    status, body = call(url + "/v1/decide", "POST", FACTS)
    assert status == 200 and body["audit_record"] == body["decision_id"]
    with open_store(db) as store:
        assert store.get(body["decision_id"])["decision"]["verdict"]["method"] == "lora"


def test_deleted_store_fails_closed_and_is_not_recreated(served):
    url, db = served
    assert call(url + "/v1/decide", "POST", FACTS)[0] == 200
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    status, body = call(url + "/readyz")
    assert status == 503 and body["error"]["code"] == "audit-store-unavailable" and "deleted" in body["error"]["message"]
    status, body = call(url + "/v1/decide", "POST", FACTS)
    assert status == 503 and body["error"]["code"] == "audit-store-unavailable" and "verdict" not in body
    assert not os.path.exists(db)  # not silently re-created at seq 1
