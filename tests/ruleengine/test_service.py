"""The HTTP service: real requests against a server on a loopback port."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from ruleengine.api import engine_for
from ruleengine.policy import load_policy
from ruleengine.service import MAX_BODY, DecisionService, make_server

FACTS = {"model": {"params": "13B"}, "hardware": {"gpu": "a100-80gb", "gpu_count": 1},
         "data": {"examples": "50k"}, "task": {"use_case": "domain_qa"}}


@pytest.fixture(scope="module")
def policy():
    return load_policy(None)


@pytest.fixture
def server(policy, tmp_path):
    db = str(tmp_path / "audit.sqlite3")
    srv = make_server(DecisionService(engine_for(policy), audit=True, audit_db=db), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    yield f"http://{host}:{port}", db
    srv.shutdown()
    srv.server_close()


def call(url, method="GET", body=None, ctype="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": ctype} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_policy(server):
    url, _ = server
    status, body = call(url + "/healthz")
    assert status == 200 and body["status"] == "ok" and body["policy"]["name"] == "default"
    status, body = call(url + "/v1/policy")
    assert status == 200 and "domain_qa" in body["use_cases"] and "a100-80gb" in body["gpus"]


def test_decide_is_the_cli_decision_and_is_audited(server):
    url, db = server
    status, body = call(url + "/v1/decide", "POST", FACTS)
    assert status == 200
    assert body["verdict"]["method"] == "lora" and body["verdict"]["rank"] == 16
    assert body["audit_record"] == body["decision_id"]
    from ruleengine.audit import open_store

    store = open_store(db)
    assert store.get(body["decision_id"])["decision"]["verdict"]["method"] == "lora"
    assert store.verify().ok


def test_explain_and_estimate(server):
    url, _ = server
    status, body = call(url + "/v1/decide?explain=1", "POST", FACTS)
    assert status == 200 and body["counterfactuals"]
    status, body = call(url + "/v1/explain", "POST", FACTS)
    assert status == 200 and body["rejected"]
    status, body = call(url + "/v1/estimate", "POST", {"model": {"params": "7B"}, "hardware": {"gpu": "a10g-24gb"}})
    assert status == 200 and body["estimates"]["qlora"]["fits"] is True


def test_infeasible_is_a_decision_not_an_error(server):
    url, _ = server
    status, body = call(url + "/v1/decide", "POST", {"model": {"params": "70B"}, "hardware": {"gpu": "a10g-24gb"},
                                                      "data": {"examples": "50k"}})
    assert status == 200 and body["feasible"] is False and body["suggestions"]


@pytest.mark.parametrize("body,ctype,status,code", [
    (b'{"model": {"params": "7B"},\n "hardware": }', "application/json", 400, "bad-json"),
    (b"", "application/json", 400, "empty-body"),
    (b"[1, 2]", "application/json", 400, "bad-facts"),
    (b"\xff\xfe", "application/json", 400, "bad-encoding"),
    (b"model: {}", "text/yaml", 415, "unsupported-media-type"),
    (json.dumps({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80g"}, "data": {"exampels": 5}}).encode(),
     "application/json", 400, "invalid-facts"),
])
def test_bad_bodies_get_located_errors(server, body, ctype, status, code):
    url, _ = server
    got, payload = call(url + "/v1/decide", "POST", body, ctype)
    assert got == status and payload["error"]["code"] == code, payload


def test_bad_json_is_located_by_line_and_column(server):
    url, _ = server
    _, payload = call(url + "/v1/decide", "POST", b'{"model": {"params": "7B"},\n "hardware": }')
    loc = payload["diagnostics"][0]["location"]
    assert (loc["line"], loc["col"]) == (2, 14)


def test_invalid_facts_name_fields_and_suggest(server):
    url, _ = server
    _, payload = call(url + "/v1/decide", "POST", {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80g"},
                                                    "data": {"exampels": 5}})
    helps = {d["path"]: d["help"] for d in payload["diagnostics"]}
    assert helps["hardware.gpu"] == "did you mean `a100-80gb`?"
    assert helps["data.exampels"] == "did you mean `examples`?"


def test_routing_errors(server):
    url, _ = server
    assert call(url + "/v2/nothing")[0] == 404
    assert call(url + "/v1/decide")[0] == 405
    assert call(url + "/healthz", "POST", {"a": 1})[0] == 405


def test_oversized_body_is_refused_before_it_is_read(server):
    import http.client
    from urllib.parse import urlparse

    url, _ = server
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v1/decide")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 10))
    conn.endheaders()  # the body is never sent: the server must answer from the header alone
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and payload["error"]["code"] == "body-too-large"


def test_concurrent_requests_are_all_decided_and_recorded(server):
    url, db = server
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: call(url + "/v1/decide", "POST", FACTS), range(40)))
    assert all(status == 200 for status, _ in results)
    ids = {body["decision_id"] for _, body in results}
    assert len(ids) == 40
    from ruleengine.audit import open_store

    store = open_store(db)
    assert len(list(store.iter_all())) == 40 and store.verify().ok


def test_decide_serve_subprocess(tmp_path):
    env = {**os.environ, "FINETUNE_POLICY_AUDIT_DB": str(tmp_path / "a.sqlite3")}
    proc = subprocess.Popen([sys.executable, "-m", "ruleengine.cli", "serve", "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for _ in range(50):  # skip anything printed before the "serving ... on http://host:port" line
            found = re.search(r"^serving .* on http://[^:]+:(\d+)$", proc.stderr.readline().strip())
            if found:
                port = int(found.group(1))
                break
        assert port is not None
        status, body = call(f"http://127.0.0.1:{port}/v1/decide", "POST", FACTS)
        assert status == 200 and body["verdict"]["method"] == "lora"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
