"""Bad input over HTTP is always a clear answer: never a 5xx, every body strict JSON (issue 9, item 4)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings


def _hostile():
    name = "ruleengine_hostile_facts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "_hostile.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


H = _hostile()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    from service_helpers import start, stop

    from ruleengine.service.settings import Settings

    served = start(Settings(audit_db=str(tmp_path_factory.mktemp("hardening") / "audit.sqlite3"), access_log=False))
    yield served
    stop(served)


def _check(served, facts: dict, path: str) -> int:
    body = H.as_json_text(facts).encode("utf-8", "surrogatepass")
    status, payload, headers = served.call(path, "POST", body)
    assert status < 500, payload
    assert headers["content-type"].startswith("application/json")
    assert isinstance(payload, dict)  # parsed as strict JSON by call()
    if status != 200:
        assert status in (400, 413) and payload["error"]["code"] and len(payload["diagnostics"]) <= 50
    return status


@settings(max_examples=200, suppress_health_check=list(HealthCheck))
@given(facts=H.hostile_facts())
def test_hostile_bodies_get_400_never_500(shared_server, facts):
    _check(shared_server, facts, "/v1/decide")


@settings(max_examples=80, suppress_health_check=list(HealthCheck))
@given(facts=H.edge_facts())
def test_facts_at_the_edges_are_decided_or_refused_never_500(shared_server, facts):
    _check(shared_server, facts, "/v1/decide")
    _check(shared_server, facts, "/v1/estimate")
