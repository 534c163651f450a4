"""Load test of the decision service: `decide serve --workers 2` with the PostgreSQL audit store, on loopback.

    python bench/bench_service.py [--workers 2] [--seconds 10] [--concurrency 1 16 64] [--burst 200]
                                  [--compare-threads 4] [--no-postgres]

Starts everything itself and stops it at the end (bounded: about 4 x --seconds plus start-up):
a PostgreSQL server (initdb + pg_ctl in a temporary folder, loopback only, as the `postgres` user when
run as root), then the service (a subprocess, a free port on 127.0.0.1). Then, on keep-alive connections:

* for each concurrency: --seconds of POST /v1/decide with distinct facts (no memo hits), every answer
  recorded in the audit store before it is sent; req/s, p50 / p99 latency, errors and resets;
* a burst of --burst connections opened at once, one request each;
* `decide audit verify` on the store, and the number of records against the number of 200 answers;
* with --compare-threads N: the service again with --decide-threads N, at the middle concurrency.

The baseline, run in this process: the in-process decision time (engine.decide + to_dict) on the same facts,
and the throughput one core would give at that time; the ratios are the service's figures against it.
Goal (issue 9): >= 500 audited decisions/s at concurrency 16 and p99 <= 50 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

USE_CASES = ("domain_qa", "chat", "classification", "summarization", "code_generation")
GPUS = ("a100-80gb", "a10g-24gb", "h100-80gb", "l4-24gb")


def facts_mix(n: int = 2000) -> list[dict]:
    """Return ``n`` distinct facts (models, GPUs, data sizes) so that no answer comes from the engine's memo."""
    from ruleengine import api

    policy = api.open_policy(None).policy
    cases = [u for u in USE_CASES if u in policy.use_cases] or list(policy.use_cases)[:3]
    gpus = [g for g in GPUS if g in policy.gpus] or list(policy.gpus)[:3]
    out = []
    for i in range(n):
        out.append({"model": {"params": f"{(1, 3, 7, 13, 34, 70)[i % 6]}B"},
                    "hardware": {"gpu": gpus[i % len(gpus)], "gpu_count": 1 + i % 4},
                    "data": {"examples": 1000 + 37 * i}, "task": {"use_case": cases[i % len(cases)]}})
    return out


def in_process_baseline(mix: list[dict]) -> tuple[float, float]:
    """Return (median, p99) seconds of engine.decide + to_dict + json on ``mix`` in this process (memo off)."""
    from ruleengine import api

    engine = api.open_policy(None)
    engine.memo_size = 0
    for facts in mix[:50]:
        engine.decide(facts)
    times = []
    for facts in mix[:1000]:
        t0 = time.perf_counter()
        json.dumps(engine.decide(facts).to_dict())
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


# --- PostgreSQL ---------------------------------------------------------------------------------------------

def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def postgres():
    """Yield the URL of a fresh database on a PostgreSQL server started for this run; stop and delete it after."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise SystemExit("bench_service: PostgreSQL server binaries (initdb, pg_ctl) are missing; use --no-postgres")
    base = tempfile.mkdtemp(prefix="bench-service-pg-")
    run_as: dict = {}
    if os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(base, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = os.path.join(base, "data"), os.path.join(base, "server.log")
    subprocess.run([initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"],
                   check=True, capture_output=True, timeout=120, **run_as)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=60"
    subprocess.run([pg_ctl, "-D", data, "-o", opts, "-w", "-t", "60", "-l", log, "start"], check=True,
                   capture_output=True, timeout=120, **run_as)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield f"postgresql://postgres@127.0.0.1:{port}/bench"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120, **run_as)
        shutil.rmtree(base, ignore_errors=True)


# --- the service ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def service(audit_db: str, workers: int, decide_threads: int, folder: str):
    """Yield the port of `decide serve` (a subprocess) once every worker answers; SIGTERM it after."""
    log_path = os.path.join(folder, f"serve-{decide_threads}.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FINETUNE_POLICY_AUDIT_DB": audit_db}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ruleengine.cli", "serve", "--port", "0", "--workers",
                                 str(workers), "--decide-threads", str(decide_threads)], env=env, stderr=log,
                                stdout=subprocess.DEVNULL)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"^serving .* on http://[^:]+:(\d+)$", Path(log_path).read_text(), re.M)
            port = int(found.group(1)) if found else None
            time.sleep(0.1)
        if port is None:
            raise SystemExit(f"bench_service: the service did not start:\n{Path(log_path).read_text()[-3000:]}")
        pids: set[int] = set()
        while len(pids) < workers and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pids.add(json.loads(_get(port, "/healthz"))["pid"])
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(port: int, path: str) -> bytes:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


# --- the load ---------------------------------------------------------------------------------------------------

def _request(facts: dict, close: bool = False) -> bytes:
    body = json.dumps(facts).encode()
    return (b"POST /v1/decide HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return status


async def _client(port: int, requests: list[bytes], offset: int, stop_at: float, out: dict) -> None:
    reader = writer = None
    i = offset
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.perf_counter()
            status = await _exchange(reader, writer, requests[i % len(requests)])  # type: ignore[arg-type]
            out["latencies"].append(time.perf_counter() - t0)
            out["status"][status] = out["status"].get(status, 0) + 1
        except (ConnectionResetError, BrokenPipeError) as exc:
            out["resets"] += 1
            out["errors"].append(repr(exc))
            writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"].append(repr(exc))
            writer = None
        i += 1
    if writer is not None:
        writer.close()


async def _load(port: int, requests: list[bytes], concurrency: int, seconds: float) -> dict:
    out: dict = {"latencies": [], "status": {}, "errors": [], "resets": 0}
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, requests, k * 997, stop_at, out) for k in range(concurrency)))
    out["elapsed"] = time.perf_counter() - started
    return out


async def _burst(port: int, requests: list[bytes], n: int) -> dict:
    out: dict = {"latencies": [], "status": {}, "errors": [], "resets": 0}

    async def one(k: int) -> None:
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            status = await asyncio.wait_for(_exchange(reader, writer, requests[k]), 60)
            writer.close()
            out["latencies"].append(time.perf_counter() - t0)
            out["status"][status] = out["status"].get(status, 0) + 1
        except (ConnectionResetError, BrokenPipeError) as exc:
            out["resets"] += 1
            out["errors"].append(repr(exc))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            out["errors"].append(repr(exc))

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(n)))
    out["elapsed"] = time.perf_counter() - started
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _line(name: str, r: dict, baseline: float) -> str:
    ok = r["status"].get(200, 0)
    rate = ok / r["elapsed"] if r["elapsed"] else 0.0
    bad = sum(v for k, v in r["status"].items() if k != 200)
    return (f"{name:<16} {rate:8.1f} req/s   p50 {_pct(r['latencies'], 0.5) * 1e3:7.2f} ms   "
            f"p99 {_pct(r['latencies'], 0.99) * 1e3:7.2f} ms   ok {ok:6d}   non-200 {bad}   errors {len(r['errors'])}"
            f"   resets {r['resets']}   x{rate * baseline:5.2f} of one core in-process")


def main() -> int:
    """Run the load test and print the figures; exit 1 when any request failed or the audit check fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--compare-threads", type=int, default=0)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite audit store instead")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    mix = facts_mix()
    median, p99 = in_process_baseline(mix)
    print(f"in-process decision (decide + to_dict + json, memo off): p50 {median * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"
          f" -> {1 / median:.0f} decisions/s on one core (baseline)")
    requests = [_request(f) for f in mix]
    burst_requests = [_request(f, close=True) for f in mix]
    folder = tempfile.mkdtemp(prefix="bench-service-")
    failed = False
    try:
        with (contextlib.nullcontext(f"sqlite:///{folder}/audit.sqlite3") if args.no_postgres else postgres()) as db:
            print(f"service: decide serve --workers {args.workers}, audit store "
                  f"{'SQLite' if args.no_postgres else 'PostgreSQL'} (loopback), {os.cpu_count()} CPUs")
            answered = 0
            with service(db, args.workers, 0, folder) as port:
                for c in args.concurrency:
                    r = asyncio.run(_load(port, requests, c, args.seconds))
                    answered += r["status"].get(200, 0)
                    failed |= bool(r["errors"]) or any(k != 200 for k in r["status"])
                    print(_line(f"concurrency {c}", r, median))
                r = asyncio.run(_burst(port, burst_requests, args.burst))
                answered += r["status"].get(200, 0)
                failed |= bool(r["errors"]) or r["status"].get(200, 0) != args.burst
                print(_line(f"burst {args.burst}", r, median) + f"   (all in {r['elapsed']:.2f} s)")
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            verify = subprocess.run([sys.executable, "-m", "ruleengine.cli", "audit", "verify", "--db", db],
                                    capture_output=True, text=True, env=env, timeout=600)
            from ruleengine.audit import open_store

            with open_store(db) as store:
                records = store.count() if hasattr(store, "count") else sum(1 for _ in store.iter_all())
            print(f"audit verify: exit {verify.returncode} ({(verify.stdout or verify.stderr).strip().splitlines()[-1]})"
                  f"; records {records} == 200 answers {answered}: {records == answered}")
            failed |= verify.returncode != 0 or records != answered
            if args.compare_threads:
                mid = args.concurrency[len(args.concurrency) // 2]
                with service(db, args.workers, args.compare_threads, folder) as port:
                    r = asyncio.run(_load(port, requests, mid, args.seconds))
                failed |= bool(r["errors"])
                print(_line(f"c{mid} threads={args.compare_threads}", r, median) + "   (decide in a thread pool)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
