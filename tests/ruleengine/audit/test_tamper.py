"""Tamper detection: hand edits with sqlite3 (triggers dropped first) and edits of an exported JSONL file."""

from __future__ import annotations

import json

import pytest

from ruleengine.audit import SqliteAuditStore, canonical_json, verify_jsonl, write_jsonl


def verify(path: str, anchor=None):
    with SqliteAuditStore(path, read_only=True) as store:
        return store.verify(anchor=anchor)


def body(att, seq: int) -> dict:
    return att.body(seq)


def kinds(report) -> list[tuple[int | None, str]]:
    return [(p.seq, p.kind) for p in report.problems]


def test_clean_store_verifies(filled):
    assert verify(filled[0]).ok


def test_edited_body_is_detected(filled, attacker):
    path, ids = filled
    att = attacker(path)
    b = body(att, 4)
    b["decision"]["verdict"]["rank"] = 8
    att.write_body(4, b)
    att.restore_guards()  # the triggers are back: detection must come from the chain
    report = verify(path)
    assert not report.ok
    first = report.first_problem
    assert (first.seq, first.record_id, first.kind) == (4, ids[3], "hash-mismatch")
    assert "edited" in first.message
    # the next link still matches the stored hash, so the damage is reported once, at the edited record
    assert kinds(report) == [(4, "hash-mismatch")]


def test_edited_verdict_also_disagrees_with_the_index(filled, attacker):
    path, _ids = filled
    att = attacker(path)
    b = body(att, 3)
    b["decision"]["verdict"]["method"] = "lora"
    att.write_body(3, b)
    att.restore_guards()
    assert kinds(verify(path)) == [(3, "hash-mismatch"), (3, "column-mismatch")]


def test_edited_body_with_recomputed_hash_is_caught_by_the_next_link(filled, attacker):
    path, ids = filled
    att = attacker(path)
    b = body(att, 4)
    b["decision"]["verdict"]["rank"] = 8
    att.write_body(4, b, rehash=True)
    att.restore_guards()
    report = verify(path)
    first = report.first_problem
    assert (first.seq, first.record_id, first.kind) == (5, ids[4], "broken-link")
    assert "seq 4" in first.message
    assert kinds(report) == [(5, "broken-link")]


def test_deleted_row_is_detected(filled, attacker):
    path, ids = filled
    attacker(path).execute("DELETE FROM records WHERE seq = 4")
    report = verify(path)
    assert kinds(report)[:2] == [(5, "seq-gap"), (5, "broken-link")]
    assert "seq 4 missing" in report.first_problem.message
    assert report.first_problem.record_id == ids[4]


def test_deleted_last_row_is_detected_by_the_head(filled, attacker):
    path, _ids = filled
    att = attacker(path)
    att.execute("DELETE FROM records WHERE seq = 8")
    att.restore_guards()
    report = verify(path)
    assert kinds(report) == [(None, "head-mismatch")]


def test_swapped_rows_are_detected(filled, attacker):
    path, ids = filled
    att = attacker(path)
    att.execute("UPDATE records SET seq = -1 WHERE seq = 3")
    att.execute("UPDATE records SET seq = 3 WHERE seq = 5")
    att.execute("UPDATE records SET seq = 5 WHERE seq = -1")
    report = verify(path)
    first = report.first_problem
    assert (first.seq, first.record_id, first.kind) == (3, ids[4], "seq-mismatch")
    assert {"seq-mismatch", "broken-link"} <= {p.kind for p in report.problems}


def test_renumbered_rows_are_detected(filled, attacker):
    """Moving a record to the end (seq 3 -> 9) leaves a gap and an out-of-place record."""
    path, _ids = filled
    attacker(path).execute("UPDATE records SET seq = 9 WHERE seq = 3")
    report = verify(path)
    assert report.first_problem.seq == 4 and report.first_problem.kind == "seq-gap"


def test_edited_snapshot_is_detected(filled, attacker, snap_sha):
    path, _ids = filled
    att = attacker(path)
    snap = json.loads(att.execute("SELECT snapshot FROM policy_snapshots")[0][0])
    snap["files"]["rules.yaml"] = "rules: [{id: sneaky}]\n"
    att.execute("UPDATE policy_snapshots SET snapshot = ?", (canonical_json(snap),))
    att.restore_guards()
    report = verify(path)
    assert [(p.snapshot, p.kind) for p in report.problems] == [(snap_sha, "snapshot-hash-mismatch")]


def test_deleted_snapshot_is_detected(filled, attacker):
    path, ids = filled
    att = attacker(path)
    att.execute("DELETE FROM policy_snapshots")
    att.restore_guards()
    report = verify(path)
    assert kinds(report) == [(1, "snapshot-missing")]
    assert report.first_problem.record_id == ids[0]


def test_edited_index_column_is_detected(filled, attacker):
    path, _ids = filled
    att = attacker(path)
    att.execute("UPDATE records SET method = 'qlora' WHERE seq = 1")
    att.restore_guards()
    assert kinds(verify(path)) == [(1, "column-mismatch")]


def test_unreadable_body_is_detected(filled, attacker):
    path, _ids = filled
    att = attacker(path)
    att.write_body(2, b"{not json")
    att.restore_guards()
    report = verify(path)
    # the stored bytes changed, so their hash no longer matches, and they do not parse
    assert kinds(report) == [(2, "hash-mismatch"), (2, "unreadable")]


def test_dropped_guards_are_reported(filled, attacker):
    path, _ids = filled
    attacker(path)  # drops the triggers, changes nothing else
    assert kinds(verify(path)) == [(None, "guard-removed")]


def test_rewritten_chain_needs_an_anchor(filled, attacker):
    """An attacker who rewrites every hash from the edit on (and the head) passes the internal checks;
    a head noted earlier (--anchor) still catches it. Truncation with a fixed head is caught the same way."""
    path, _ids = filled
    clean = verify(path)
    anchor = (clean.head_seq, clean.head_hash)
    att = attacker(path)
    prev = att.execute("SELECT prev_hash FROM records WHERE seq = 3")[0][0]
    for seq in range(3, 9):
        b = att.body(seq)
        if seq == 3:
            b["caller"] = "mallory@elsewhere"
        prev = att.write_body(seq, b, rehash=True, prev_hash=prev)
    att.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (prev,))
    att.restore_guards()
    assert verify(path).ok  # indistinguishable from the inside: the documented limit of a bare hash chain
    report = verify(path, anchor=anchor)
    assert kinds(report) == [(8, "anchor-mismatch")]

    att.execute("DROP TRIGGER records_append_only_delete")
    att.execute("DELETE FROM records WHERE seq = 8")
    att.execute("UPDATE meta SET value = '7' WHERE key = 'head_seq'")
    att.execute("UPDATE meta SET value = (SELECT record_hash FROM records WHERE seq = 7) WHERE key = 'head_hash'")
    att.restore_guards()
    assert [p.kind for p in verify(path, anchor=anchor).problems] == ["anchor-missing"]


def test_verify_lists_every_problem_in_chain_order(filled, attacker):
    path, _ids = filled
    att = attacker(path)
    for seq in (2, 7):
        att.write_body(seq, att.body_bytes(seq).replace(b'"rank":16', b'"rank":17'))
    att.restore_guards()
    assert kinds(verify(path)) == [(2, "hash-mismatch"), (7, "hash-mismatch")]


# --- JSONL export ----------------------------------------------------------------------------------------------


@pytest.fixture
def exported(filled, tmp_path):
    path, ids = filled
    out = tmp_path / "export.jsonl"
    with SqliteAuditStore(path, read_only=True) as store, open(out, "w", encoding="utf-8") as fh:
        assert write_jsonl(store.iter_all(), fh) == len(ids)
    return out, ids


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_jsonl_export_verifies(exported, filled):
    out, ids = exported
    lines = _lines(out)
    assert len(lines) == len(ids)
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ids
    assert all({"seq", "prev_hash", "record_hash"} <= set(r) for r in records)
    report = verify_jsonl(str(out))
    assert report.ok and report.records_checked == 8
    assert report.head_hash == verify(filled[0]).head_hash


def test_jsonl_edited_line(exported):
    out, _ids = exported
    lines = _lines(out)
    lines[4] = lines[4].replace('"caller":"', '"caller":"x', 1)
    out.write_text("".join(lines), encoding="utf-8")
    assert kinds(verify_jsonl(str(out))) == [(5, "hash-mismatch")]


def test_jsonl_deleted_line(exported):
    out, _ids = exported
    lines = _lines(out)
    del lines[2]
    out.write_text("".join(lines), encoding="utf-8")
    assert kinds(verify_jsonl(str(out)))[:2] == [(4, "seq-gap"), (4, "broken-link")]


def test_jsonl_swapped_lines(exported):
    out, _ids = exported
    lines = _lines(out)
    lines[2], lines[3] = lines[3], lines[2]
    out.write_text("".join(lines), encoding="utf-8")
    report = verify_jsonl(str(out))
    assert report.first_problem.seq == 4 and report.first_problem.kind == "seq-gap"
    assert "seq-order" in {p.kind for p in report.problems}


def test_jsonl_truncated_last_line(exported):
    out, _ids = exported
    text = out.read_text(encoding="utf-8")
    out.write_text(text[:-40], encoding="utf-8")
    report = verify_jsonl(str(out))
    assert kinds(report) == [(8, "unreadable")]


def test_jsonl_tail_truncation_needs_anchor(exported):
    out, _ids = exported
    full = verify_jsonl(str(out))
    lines = _lines(out)
    out.write_text("".join(lines[:-1]), encoding="utf-8")
    assert verify_jsonl(str(out)).ok
    assert not verify_jsonl(str(out), anchor=(full.head_seq, full.head_hash)).ok
