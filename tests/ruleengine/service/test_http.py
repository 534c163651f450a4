"""The HTTP service over a real socket: decisions, errors, limits of bodies, OpenAPI."""

from __future__ import annotations

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_helpers import FACTS, strict_json

from ruleengine.audit import open_store


def test_health_and_policy(server):
    status, body, _ = server.call("/healthz")
    assert status == 200 and body["status"] == "ok" and body["policy"]["name"] == "default"
    status, body, _ = server.call("/v1/policy")
    assert status == 200 and "domain_qa" in body["use_cases"] and "a100-80gb" in body["gpus"]


def test_decide_is_the_cli_decision_and_is_audited(server):
    status, body, headers = server.call("/v1/decide", "POST", FACTS)
    assert status == 200 and headers["x-request-id"]
    assert body["verdict"]["method"] == "lora" and body["verdict"]["rank"] == 16
    assert body["audit_record"] == body["decision_id"]
    with open_store(server.settings.audit_db) as store:
        assert store.get(body["decision_id"])["decision"]["verdict"]["method"] == "lora"
        assert store.verify().ok


def test_explain_and_estimate(server):
    status, body, _ = server.call("/v1/decide?explain=1", "POST", FACTS)
    assert status == 200 and body["counterfactuals"]
    status, body, _ = server.call("/v1/explain", "POST", FACTS)
    assert status == 200 and body["rejected"]
    status, body, _ = server.call("/v1/estimate", "POST", {"model": {"params": "7B"}, "hardware": {"gpu": "a10g-24gb"}})
    assert status == 200 and body["estimates"]["qlora"]["fits"] is True


def test_infeasible_is_a_decision_not_an_error(server):
    status, body, _ = server.call("/v1/decide", "POST", {"model": {"params": "70B"}, "hardware": {"gpu": "a10g-24gb"},
                                                          "data": {"examples": "50k"}})
    assert status == 200 and body["feasible"] is False and body["suggestions"]


@pytest.mark.parametrize("body,ctype,status,code", [
    (b'{"model": {"params": "7B"},\n "hardware": }', "application/json", 400, "bad-json"),
    (b"", "application/json", 400, "empty-body"),
    (b"[1, 2]", "application/json", 400, "bad-facts"),
    (b"\xff\xfe", "application/json", 400, "bad-encoding"),
    (b"model: {}", "text/yaml", 415, "unsupported-media-type"),
    (b'{"model": {"params": NaN}}', "application/json", 400, "bad-json"),
    (b'{"model": {"params": Infinity}}', "application/json", 400, "bad-json"),
    (b'{"model": {"params": 1e400}}', "application/json", 400, "bad-json"),
    (b'{"model": {"params": "7B"}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", 400, "bad-json"),
    (b'{"model": {"name": "\\ud800", "params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}}',
     "application/json", 400, "invalid-facts"),
    (b'{"model": {"params": 1e30}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}}',
     "application/json", 400, "invalid-facts"),
    (b'{"model": {"params": ' + b"9" * 400 + b'}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": 5}}',
     "application/json", 400, "invalid-facts"),
    (json.dumps({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"}, "data": {"examples": "50k"},
                 "training": {"target_modules": ["q_prj"]}}).encode(), "application/json", 400, "invalid-facts"),
    (json.dumps({"model": {"params": "7B"}, "hardware": {"gpu": "a100-80g"}, "data": {"exampels": 5}}).encode(),
     "application/json", 400, "invalid-facts"),
])
def test_bad_bodies_get_located_errors_in_strict_json(server, body, ctype, status, code):
    got, payload, headers = server.call("/v1/decide", "POST", body, ctype=ctype)
    assert got == status and payload["error"]["code"] == code, payload
    assert headers["content-type"].startswith("application/json")


def test_bad_json_is_located_by_line_and_column(server):
    _, payload, _ = server.call("/v1/decide", "POST", b'{"model": {"params": "7B"},\n "hardware": }')
    loc = payload["diagnostics"][0]["location"]
    assert (loc["line"], loc["col"]) == (2, 14)
    _, payload, _ = server.call("/v1/decide", "POST", b'{"model":\n  {"params": NaN}}')
    loc = payload["diagnostics"][0]["location"]
    assert (loc["line"], loc["col"]) == (2, 14)


def test_invalid_facts_name_fields_and_suggest(server):
    _, payload, _ = server.call("/v1/decide", "POST", {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80g"},
                                                        "data": {"exampels": 5}})
    helps = {d["path"]: d["help"] for d in payload["diagnostics"]}
    assert helps["hardware.gpu"] == "did you mean `a100-80gb`?"
    assert helps["data.exampels"] == "did you mean `examples`?"
    _, payload, _ = server.call("/v1/decide", "POST", {**FACTS, "training": {"target_modules": ["q_prj", "v_proj"]}})
    [d] = payload["diagnostics"]
    assert d["path"] == "training.target_modules[0]" and d["help"] == "did you mean `q_proj`?"


def test_diagnostics_are_capped_at_50_with_a_count(server):
    tasks = [{"name": f"t{i}", "examples": "lots"} for i in range(120)]
    status, payload, _ = server.call("/v1/decide", "POST", {"model": {"params": "7B"}, "hardware": {"gpu": "a100-80gb"},
                                                             "data": {"tasks": tasks}})
    assert status == 400 and len(payload["diagnostics"]) == 50 and payload["more_diagnostics"] == 70


def test_routing_errors(server):
    assert server.call("/v2/nothing")[0] == 404
    assert server.call("/v1/decide")[0] == 405
    status, payload, _ = server.call("/healthz", "POST", {"a": 1})
    assert status == 405 and payload["error"]["code"] == "method-not-allowed"


def test_a_config_path_is_refused_and_no_file_is_read(server, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"model_type": "llama", "token": "s3cr3t"}')
    answers = []
    for path in (str(secret), str(tmp_path / "missing.json"), "/dev/zero"):
        status, payload, _ = server.call("/v1/decide", "POST", {**FACTS, "model": {"config": path}})
        assert status == 400 and payload["error"]["code"] == "config-path-refused"
        assert "s3cr3t" not in json.dumps(payload)
        answers.append(payload)
    assert answers[0] == answers[1] == answers[2]  # the answer says nothing about which paths exist
    with open_store(server.settings.audit_db) as store:
        assert list(store.iter_all()) == []


def test_an_inline_config_is_decided_and_recorded(server):
    config = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
    status, body, _ = server.call("/v1/decide", "POST", {**FACTS, "model": {"config": config}})
    assert status == 200 and body["architecture"]["source"] != "inferred"
    normalized = body["facts"]["normalized"]["model"]
    assert normalized["config"] == "<inline>" and normalized["config_content"] == config
    too_big = {**config, "padding": "x" * 60_000, "more": ["y" * 60_000] * 4}
    status, payload, _ = server.call("/v1/decide", "POST", {**FACTS, "model": {"config": too_big}})
    assert status == 400 and payload["diagnostics"][0]["code"] == "facts-config-too-large"


def test_oversized_body_is_refused_before_it_is_read(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.putrequest("POST", "/v1/decide")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(server.settings.max_body + 10))
    conn.endheaders()  # the body is never sent: the server must answer from the header alone
    resp = conn.getresponse()
    payload = strict_json(resp.read())
    conn.close()
    assert resp.status == 413 and payload["error"]["code"] == "body-too-large"


def test_oversized_chunked_body_is_cut_off(server):
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/decide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(server.settings.max_body // len(chunk) + 2):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the server may close while we still send
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 413") and b"body-too-large" in data


def test_concurrent_requests_are_all_decided_and_recorded(server):
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: server.call("/v1/decide", "POST", FACTS), range(40)))
    assert all(status == 200 for status, _, _ in results)
    ids = {body["decision_id"] for _, body, _ in results}
    assert len(ids) == 40
    with open_store(server.settings.audit_db) as store:
        assert len(list(store.iter_all())) == 40 and store.verify().ok


def test_keep_alive_connection_serves_many_requests(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        for _ in range(20):
            conn.request("POST", "/v1/decide", body=json.dumps(FACTS), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("connection") != "close"
            strict_json(resp.read())
    finally:
        conn.close()


def test_openapi_is_the_facts_schema(server):
    from ruleengine.paths import load_schema

    status, spec, _ = server.call("/openapi.json")
    assert status == 200
    facts = spec["components"]["schemas"]["Facts"]
    schema = load_schema("facts.schema.json")
    assert facts["properties"]["data"] == json.loads(json.dumps(schema["properties"]["data"]).replace(
        "#/$defs/", "#/components/schemas/Facts_"))
    assert facts["properties"]["model"]["properties"]["config"]["type"] == "object"  # never a path over HTTP
    body = spec["paths"]["/v1/decide"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Facts"}
    status, page, headers = server.call("/docs")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"swagger" in page.lower()
