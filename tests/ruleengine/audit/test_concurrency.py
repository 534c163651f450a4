"""Several processes appending at once, and writers killed with SIGKILL in the middle of appending."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ruleengine.audit import SqliteAuditStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _committed(lines: list[str]) -> list[str]:
    return [line.split()[2] for line in lines if line.startswith("committed ")]


def test_four_processes_append_400_records(db_path, writer_script):
    """4 processes x 100 appends, each through record_decision (a fresh open per record, as `decide` does),
    all starting together on a store that does not exist yet: 400 records, one valid chain."""
    procs = [subprocess.Popen([sys.executable, str(writer_script), db_path, "100", "--fresh-open"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(4)]
    reported: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reported += _committed(out.splitlines())
    assert len(reported) == 400
    with SqliteAuditStore(db_path, read_only=True) as store:
        report = store.verify()
        assert report.ok, [p.render() for p in report.problems]
        assert report.records_checked == 400 and report.head_seq == 400
        ids = [r["id"] for r in store.iter_all()]
    assert sorted(ids) == sorted(reported)  # nothing lost, nothing doubled
    assert report.snapshots_checked == 1


def test_kill_9_mid_append_leaves_a_valid_store(db_path, writer_script):
    """Kill an appending writer with SIGKILL, three times, at different moments; afterwards the chain verifies
    and holds every record the writers reported committed (plus at most the one in flight each time)."""
    reported: list[str] = []
    for round_, wait_for in enumerate((5, 40, 120)):
        in_flight_allowance = round_ + 1
        proc = subprocess.Popen([sys.executable, str(writer_script), db_path, "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(seen) < wait_for and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
        assert len(seen) >= wait_for, f"round {round_}: writer stalled: {proc.stderr.read() if proc.stderr else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        seen += proc.stdout.readlines()  # lines written before the kill
        proc.stdout.close()
        proc.stderr.close()
        reported += _committed(seen)
        with SqliteAuditStore(db_path, read_only=True) as store:
            report = store.verify()
            assert report.ok, [p.render() for p in report.problems]
            count = store.count()
            ids = {r["id"] for r in store.iter_all()}
        assert len(reported) <= count <= len(reported) + in_flight_allowance
        assert set(reported) <= ids
