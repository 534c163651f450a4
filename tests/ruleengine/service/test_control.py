"""Auth, policy reload (HTTP and SIGHUP, one worker and several), metrics, readiness; `decide serve` itself."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from service_helpers import FACTS, strict_json

from ruleengine.audit import open_store
from ruleengine.cli import main
from ruleengine.paths import default_policy
from ruleengine.policy import load_policy

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def policy_copy(tmp_path) -> Path:
    """A copy of the bundled default policy that the test may edit."""
    target = tmp_path / "policy"
    shutil.copytree(default_policy(), target, ignore=shutil.ignore_patterns("tests"))
    return target


def bump(policy: Path, version: str) -> None:
    path = policy / "policy.yaml"
    path.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", path.read_text()))


def break_(policy: Path) -> None:
    path = policy / "rules.yaml"
    path.write_text(path.read_text() + "\n  - id: broken\n    priority: nope\n")


# --- auth -----------------------------------------------------------------------------------------------

def test_tokens_are_required_where_configured(serve_app):
    served = serve_app(tokens=("alpha", "beta"))
    status, payload, headers = served.call("/v1/decide", "POST", FACTS)
    assert status == 401 and payload["error"]["code"] == "unauthorized" and "bearer" in headers["www-authenticate"].lower()
    assert served.call("/v1/decide", "POST", FACTS, headers={"Authorization": "Bearer gamma"})[0] == 401
    assert served.call("/v1/decide", "POST", FACTS, headers={"Authorization": "Bearer beta"})[0] == 200
    assert served.call("/metrics")[0] == 401
    assert served.call("/healthz")[0] == 200 and served.call("/readyz")[0] == 200  # probes stay open


def test_without_a_token_only_loopback_addresses_are_answered(server):
    import asyncio

    edge = server.app.middleware_stack
    while not hasattr(edge, "_auth"):
        edge = edge.app
    assert edge._auth({"path": "/v1/decide", "server": ("127.0.0.1", 8080)}) is None
    assert edge._auth({"path": "/v1/decide", "server": ("::1", 8080)}) is None
    refused = edge._auth({"path": "/v1/decide", "server": ("10.1.2.3", 8080)})
    assert refused is not None and refused.status == 403 and refused.code == "token-required"
    assert edge._auth({"path": "/healthz", "server": ("10.1.2.3", 8080)}) is None
    assert asyncio.iscoroutinefunction(edge.__call__)


def test_decide_serve_refuses_a_public_address_without_a_token():
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0", "--no-audit"])
    assert result.exit_code == 2 and "serve-token-required" in result.output


# --- reload ---------------------------------------------------------------------------------------------

def test_reload_serves_a_valid_policy_and_never_a_broken_one(serve_app, policy_copy):
    served = serve_app(policy=str(policy_copy))
    before = served.call("/v1/policy")[1]["sha256"]
    status, body, _ = served.call("/v1/policy/reload", "POST")
    assert status == 200 and body["changed"] is False
    break_(policy_copy)
    status, body, _ = served.call("/v1/policy/reload", "POST")
    assert status == 422 and body["error"]["code"] == "policy-invalid" and body["diagnostics"]
    assert served.call("/v1/policy")[1]["sha256"] == before
    assert served.call("/v1/decide", "POST", FACTS)[1]["policy"]["sha256"] == before
    shutil.rmtree(policy_copy)
    shutil.copytree(default_policy(), policy_copy, ignore=shutil.ignore_patterns("tests"))
    bump(policy_copy, "9.9.9")
    status, body, _ = served.call("/v1/policy/reload", "POST")
    assert status == 200 and body["changed"] is True and body["policy"]["version"] == "9.9.9"
    decided = served.call("/v1/decide", "POST", FACTS)[1]
    assert decided["policy"]["version"] == "9.9.9"
    with open_store(served.settings.audit_db) as store:
        assert store.verify().ok and store.get(decided["decision_id"])["policy"]["sha256"] == body["policy"]["sha256"]
    metrics = served.call("/metrics")[1].decode()
    assert re.search(r'finetune_policy_policy_reloads_total\{outcome="invalid"\} [1-9]', metrics)
    assert re.search(r'finetune_policy_policy_reloads_total\{outcome="reloaded"\} [1-9]', metrics)


def test_metrics_count_decisions_by_verdict_and_errors(server):
    server.call("/v1/decide", "POST", FACTS)
    server.call("/v1/decide", "POST", {"model": {"params": "70B"}, "hardware": {"gpu": "a10g-24gb"},
                                       "data": {"examples": "50k"}})
    server.call("/v1/decide", "POST", b"{", ctype="application/json")
    status, text, headers = server.call("/metrics")
    text = text.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(r'finetune_policy_decisions_total\{rule="[^"]+",verdict="lora"\} [1-9]', text)
    assert re.search(r'finetune_policy_decisions_total\{rule="",verdict="infeasible"\} [1-9]', text)
    assert re.search(r'finetune_policy_errors_total\{code="bad-json"\} [1-9]', text)
    assert "finetune_policy_decision_seconds_bucket" in text and "finetune_policy_audit_append_seconds_count" in text
    assert re.search(r'finetune_policy_http_request_seconds_count\{route="/v1/decide"\} [1-9]', text)


# --- decide serve, several workers ------------------------------------------------------------------------

def _start_serve(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, int, Path]:
    log = tmp_path / "serve.log"
    full_env = {**os.environ, "FINETUNE_POLICY_AUDIT_DB": str(tmp_path / "a.sqlite3"), "PYTHONPATH": str(ROOT),
                **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "ruleengine.cli", "serve", "--port", "0", *args], env=full_env,
                            stderr=open(log, "w"), stdout=subprocess.DEVNULL, text=True)  # noqa: SIM115
    deadline = time.monotonic() + 90
    port = None
    while time.monotonic() < deadline and port is None and proc.poll() is None:
        found = re.search(r"^serving .* on http://[^:]+:(\d+)$", log.read_text(), re.M)
        port = int(found.group(1)) if found else None
        time.sleep(0.1)
    assert port is not None, log.read_text()
    return proc, port, log


def _call(port: int, path: str, method: str = "GET", body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    ctype = resp.getheader("content-type") or ""
    return resp.status, strict_json(raw) if ctype.startswith("application/json") else raw


def _wait_ready(port: int, workers: int) -> set[int]:
    """Wait until every worker answers (distinct pids on /healthz); return the pids."""
    pids: set[int] = set()
    deadline = time.monotonic() + 90
    while len(pids) < workers and time.monotonic() < deadline:
        try:
            status, body = _call(port, "/healthz")
            if status == 200:
                pids.add(body["pid"])
        except OSError:
            time.sleep(0.2)
    return pids


def _versions(port: int, n: int = 24) -> set[str]:
    return {_call(port, "/v1/policy")[1]["version"] for _ in range(n)}


@pytest.mark.slow
def test_decide_serve_with_two_workers_shares_audit_metrics_and_reloads(tmp_path, policy_copy):
    proc, port, log = _start_serve(tmp_path, "--workers", "2", "--policy", str(policy_copy))
    try:
        assert len(_wait_ready(port, 2)) == 2
        ids = [_call(port, "/v1/decide", "POST", FACTS)[1]["decision_id"] for _ in range(20)]
        assert len(set(ids)) == 20
        text = _call(port, "/metrics")[1].decode()
        counts = [float(v) for v in re.findall(r'finetune_policy_decisions_total\{[^}]*verdict="lora"\} (\S+)', text)]
        assert sum(counts) >= 20  # the samples of both workers (and the /healthz probes do not count)
        break_(policy_copy)
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        bundled = load_policy(str(default_policy())).version
        assert proc.poll() is None and _versions(port) == {bundled}  # a broken policy replaces nothing
        shutil.rmtree(policy_copy)
        shutil.copytree(default_policy(), policy_copy, ignore=shutil.ignore_patterns("tests"))
        bump(policy_copy, "2.0.0")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _versions(port, 8) != {"2.0.0"} and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _versions(port) == {"2.0.0"}  # every worker
        bump(policy_copy, "3.0.0")
        status, body = _call(port, "/v1/policy/reload", "POST")
        assert status == 200 and body["policy"]["version"] == "3.0.0"
        assert _versions(port) == {"3.0.0"}  # reloaded through one worker, served by all
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    with open_store(str(tmp_path / "a.sqlite3")) as store:
        assert len(list(store.iter_all())) == 20 and store.verify().ok


def test_decide_serve_single_worker_sighup_and_sigint(tmp_path, policy_copy):
    proc, port, log = _start_serve(tmp_path, "--policy", str(policy_copy))
    try:
        status, body = _call(port, "/v1/decide", "POST", FACTS)
        assert status == 200 and body["verdict"]["method"] == "lora"
        bump(policy_copy, "4.0.0")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while _call(port, "/v1/policy")[1]["version"] != "4.0.0" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and _call(port, "/v1/policy")[1]["version"] == "4.0.0"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "access"]
    assert access and access[0]["path"] == "/v1/decide" and access[0]["decision_id"] == body["decision_id"]


def test_decide_serve_exit_codes_for_bad_policy_and_port(tmp_path, policy_copy):
    break_(policy_copy)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "ruleengine.cli", "serve", "--port", "0", "--no-audit", "--policy",
                          str(policy_copy)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 3, out.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        out = subprocess.run([sys.executable, "-m", "ruleengine.cli", "serve", "--port", str(busy.getsockname()[1]),
                              "--no-audit"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "serve-cannot-bind" in out.stderr


def test_decide_help_does_not_import_the_service_stack():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ruleengine.cli", "--help"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & {"fastapi", "starlette", "uvicorn", "prometheus_client", "ruleengine"} - {"ruleengine"}


def test_the_app_runs_under_gunicorn_with_two_workers(tmp_path):
    pytest.importorskip("gunicorn")
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FINETUNE_POLICY_AUDIT_DB": str(tmp_path / "g.sqlite3"),
           "FINETUNE_POLICY_STATE_DIR": str(state)}
    log = tmp_path / "gunicorn.log"
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-k", "ruleengine.service.worker.Worker",
                             "-b", "127.0.0.1:0", "ruleengine.service.app:create_app()"], env=env,
                            stderr=open(log, "w"), stdout=subprocess.DEVNULL)  # noqa: SIM115
    try:
        deadline = time.monotonic() + 90
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Listening at: http://127.0.0.1:(\d+)", log.read_text())
            port = int(found.group(1)) if found else None
            time.sleep(0.1)
        assert port is not None, log.read_text()
        assert len(_wait_ready(port, 2)) == 2
        statuses = [_call(port, "/v1/decide", "POST", FACTS)[0] for _ in range(6)]
        assert statuses == [200] * 6
        text = _call(port, "/metrics")[1].decode()
        assert sum(float(v) for v in re.findall(r'finetune_policy_decisions_total\{[^}]*\} (\S+)', text)) == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    with open_store(str(tmp_path / "g.sqlite3")) as store:
        assert store.count() == 6 and store.verify().ok
