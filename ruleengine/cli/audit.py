"""``decide audit``: list, show, verify, replay and export the decision audit trail.

Exit codes: 0 ok (verify clean, replay identical) · 1 replay found a different decision (``EXIT_REPLAY_DIFFERS``)
· 2 bad input (unknown id, missing or corrupt store, not an audit store, bad flags or key files) · 3 invalid
policy (``replay --policy``) · 4 internal error · 6 verification failed (tampering) · 7 audit store not writable.

Every command here except ``keygen`` opens the store read-only: it works for a user who may only read it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from ..audit import ENV_DB, default_db_path, open_store
from ..audit.records import summarize, verify_jsonl, write_jsonl
from ..audit.replay import ReplayResult, outcome, replay_records
from ..audit.store import AuditError, RecordFilter, VerifyReport
from ..exitcodes import ExitCode

EXIT_OK, EXIT_INPUT, EXIT_POLICY = ExitCode.OK, ExitCode.BAD_INPUT, ExitCode.BAD_POLICY
EXIT_INTERNAL, EXIT_TAMPERED, EXIT_NOT_WRITABLE = ExitCode.INTERNAL, ExitCode.TAMPERED, ExitCode.AUDIT_WRITE
EXIT_REPLAY_DIFFERS = ExitCode.REPLAY_DIFFERS  # a replayed decision differs from the recorded one
EXIT_DIFFERENT = EXIT_REPLAY_DIFFERS
F = TypeVar("F", bound=Callable[..., Any])
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

DB_HELP = (f"Audit store: a SQLite file path (or sqlite:///path) or a postgresql://user@host/db URL. Default: "
           f"${ENV_DB} if set, else ~/.local/share/finetune-policy/audit.sqlite3. Opened read-only.")


def db_option(fn: F) -> F:
    """Add the shared ``--db PATH`` option (honours $FINETUNE_POLICY_AUDIT_DB)."""
    return click.option("--db", "db", metavar="PATH", envvar=ENV_DB, show_envvar=True, default=None,
                        help=DB_HELP)(fn)


def open_reader(db: str | None) -> Any:
    """Open the store named by ``--db`` (or the default) read-only. Raises StoreUnavailable/NotAnAuditStore."""
    return open_store(db, read_only=True)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Return the UTC datetime meant by ``text``: relative (``30m``, ``3h``, ``2d``, ``1w`` ago) or ISO 8601
    (a date, or a date-time; without an offset it is UTC). Raises ValueError for anything else."""
    moment = now or datetime.now(UTC)
    m = _RELATIVE.match(text)
    if m:
        return moment - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 2d / 3h / 30m nor an ISO date-time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_anchor(text: str | None) -> tuple[int, str] | None:
    """Return ``(seq, record_hash)`` from ``SEQ:HASH`` (None for None). Raises click.BadParameter."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+):([0-9a-f]{64})", text.strip())
    if not m:
        raise click.BadParameter("expected SEQ:HASH, e.g. 42:<64 hex digits> as printed by `decide audit verify`",
                                 param_hint="--anchor")
    return int(m.group(1)), m.group(2)


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        out: list[tuple[str, Any]] = []
        for key in sorted(data):
            out.extend(_flatten(data[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix, data)]


def _table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    rows = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _when(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def _fmt_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@click.group(name="audit")
def audit_group() -> None:
    """The audit trail: every decision, tamper-evident, explainable and replayable.

    Each `decide` run appends a record (the whole decision plus who/when/versions and the policy's sha256)
    to a hash-chained store (SQLite file or PostgreSQL); the policy files are stored once per hash. With a
    signing key ($FINETUNE_POLICY_AUDIT_KEY, from `decide audit keygen`) every commit signs the chain head, and
    `verify --public-key` proves nobody without the key rewrote, removed or appended records. The store is
    --db PATH, else $FINETUNE_POLICY_AUDIT_DB, else ~/.local/share/finetune-policy/audit.sqlite3.

    \b
    Exit codes: 0 ok · 1 replay differs · 2 bad input (unknown id, missing/corrupt/foreign store, key file)
                3 invalid policy · 4 internal error · 6 verification failed (tampering)
    """


@audit_group.command(name="list")
@db_option
@click.option("--since", metavar="WHEN", default=None,
              help="Only records since WHEN: a duration ago (30m, 3h, 2d, 1w) or an ISO date/date-time (UTC unless "
                   "it has an offset), e.g. 2025-01-31 or 2025-01-31T12:00:00+02:00.")
@click.option("--policy", "policy_name", metavar="NAME", default=None, help="Only decisions made with policy NAME.")
@click.option("--method", metavar="M", default=None,
              help="Only decisions that chose method M (lora, qlora, full_ft, ...); `infeasible` lists decisions "
                   "without a verdict.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N matching records.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: one line per record; json: a JSON array of record summaries.")
def list_cmd(db: str | None, since: str | None, policy_name: str | None, method: str | None, limit: int | None,
             fmt: str) -> None:
    """List recorded decisions, oldest first.

    \b
    Examples:
      decide audit list --since 2d
      decide audit list --policy default --method qlora --format json
    """
    try:
        since_dt = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    with open_reader(db) as store:
        records = store.list(RecordFilter(since=since_dt, policy=policy_name, method=method, limit=limit))
    summaries = [summarize(r) for r in records]
    if fmt == "json":
        click.echo(_fmt_json(summaries))
        return
    if not summaries:
        click.echo("no records match", err=True)
        return
    rows = [[s["seq"], s["id"], _when(s["recorded_at"]), f"{s['policy']['name']}@{s['policy']['version']}",
             s["use_case"] or "-", outcome({"verdict": {"method": s["method"], "rank": s["rank"]}}
                                            if s["method"] else {"verdict": None}),
             s["chosen_rule"] or "-", s["caller"]] for s in summaries]
    click.echo(_table(["SEQ", "ID", "RECORDED (UTC)", "POLICY", "USE CASE", "OUTCOME", "RULE", "CALLER"], rows))
    click.echo(f"{len(summaries)} record(s)", err=True)


def render_record_text(record: dict) -> str:
    """Return the human-readable view of a record: envelope, facts given, outcome, rules, rejections, warnings."""
    d = record.get("decision") or {}
    pol = record.get("policy") or {}
    versions = record.get("versions") or {}
    lines = [
        f"record    {record.get('id')}  (seq {record.get('seq')})",
        f"recorded  {record.get('recorded_at')} by {record.get('caller')}",
        "versions  " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        f"policy    {pol.get('name')} {pol.get('version')}  sha256 {pol.get('sha256')}",
        f"chain     prev {record.get('prev_hash')}",
        f"          hash {record.get('record_hash')}",
        "facts given:",
    ]
    given = (d.get("facts") or {}).get("given") or {}
    lines += [f"  {k} = {json.dumps(v, ensure_ascii=False)}" for k, v in _flatten(given)] or ["  (none)"]
    lines.append(f"outcome   {outcome(d)}" + (f"  (rule {d['chosen_rule']})" if d.get("chosen_rule") else ""))
    if d.get("verdict"):
        lines.append("verdict   " + json.dumps(d["verdict"], sort_keys=True, ensure_ascii=False))
    lines.append("matched   " + (", ".join(d.get("matched_rules") or []) or "(none)"))
    if d.get("advice_rules"):
        lines.append("advice    " + ", ".join(d["advice_rules"]))
    lines += _render_rejected(d.get("rejected") or [])
    lines += _render_items("warnings", d.get("warnings") or [])
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:,.6g}" if isinstance(value, float) else str(value)


def _render_rejected(rejected: list) -> list[str]:
    if not rejected:
        return []
    known = {"method", "code", "reason", "message", "rule", "condition", "margin", "memory_gb", "usable_gb",
             "margin_gb"}
    out = ["rejected:"]
    for item in rejected:
        if not isinstance(item, dict):
            out.append(f"  - {item}")
            continue
        name = item.get("method") or item.get("rule") or "?"
        code = f" [{item['code']}]" if item.get("code") else ""
        out.append(f"  - {name}{code}: {item.get('reason') or item.get('message') or ''}".rstrip())
        details = []
        cond = item.get("condition")
        if isinstance(cond, dict):
            details.append(f"failed: {cond.get('condition') or json.dumps(cond, sort_keys=True)}")
            if cond.get("margin") is not None:
                details.append(f"margin {_num(cond['margin'])}")
        elif cond is not None:
            details.append(f"failed: {cond}")
        if item.get("margin") is not None:
            details.append(f"margin {_num(item['margin'])}")
        if item.get("memory_gb") is not None and item.get("usable_gb") is not None:
            mem = f"memory {_num(item['memory_gb'])} of {_num(item['usable_gb'])} GiB usable"
            if item.get("margin_gb") is not None:
                mem += f" (margin {item['margin_gb']:+.1f} GiB)" if isinstance(item["margin_gb"], (int, float)) \
                    else f" (margin {item['margin_gb']})"
            details.append(mem)
        rest = {k: v for k, v in item.items() if k not in known and v not in (None, [], {}, "")}
        if rest:
            details.append(json.dumps(rest, sort_keys=True, ensure_ascii=False, default=str))
        if details:
            out.append("      " + "; ".join(details))
    return out


def _render_items(title: str, items: list) -> list[str]:
    if not items:
        return []
    out = [f"{title}:"]
    for item in items:
        if isinstance(item, dict):
            code = item.get("code")
            msg = item.get("message") or item.get("text") or ""
            rule = item.get("rule")
            out.append(f"  - {'[' + str(code) + '] ' if code else ''}{msg}" + (f"  (rule {rule})" if rule else ""))
        else:
            out.append(f"  - {item}")
    return out


def render_explanation_fallback(decision: dict) -> str:
    """Return a plain explanation of a decision dict: the choice and its rationale, why each other method was
    rejected (failing condition and margin), warnings, notes and suggestions."""
    lines = [f"Decision {decision.get('decision_id')}: {outcome(decision)}"]
    if decision.get("chosen_rule"):
        lines.append(f"  chosen by rule {decision['chosen_rule']}")
    if decision.get("rationale"):
        lines.append(f"  rationale: {decision['rationale']}")
    if decision.get("source"):
        lines.append(f"  source: {decision['source']}")
    rejected = _render_rejected(decision.get("rejected") or [])
    if rejected:
        lines.append("Why not the others:")
        lines += rejected[1:]
    for title in ("warnings", "notes", "suggestions"):
        lines += _render_items(title.capitalize(), decision.get(title) or [])
    return "\n".join(lines)


def explain_decision(decision: dict) -> str:
    """Return the explanation text: ``ruleengine.explain.render_explanation`` when available, else the fallback."""
    try:
        from ..render import render_explanation
    except ImportError:
        return render_explanation_fallback(decision)
    try:
        return str(render_explanation(decision))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a record written by another version may lack fields the current renderer expects
        return (render_explanation_fallback(decision) + f"\n(rendered from the stored fields: the current "
                f"explanation renderer cannot read this record: {type(exc).__name__}: {exc})")


def recorded_counterfactuals(store: Any, record: dict) -> list[dict] | None:
    """Return counterfactuals for a record that has none, computed from its stored policy snapshot and facts.

    They are computed now, from the exact policy of the record; returns None when the current engine
    no longer reaches the recorded verdict (then counterfactuals of the record cannot be given).
    """
    from ..audit.replay import snapshot_policy
    from ..diagnostics import DiagnosticError
    from ..evaluate import evaluator_for
    from ..pipeline import decide

    old = record.get("decision") or {}
    try:
        policy = snapshot_policy(store, record["policy"]["sha256"])
        content = (((old.get("facts") or {}).get("normalized") or {}).get("model") or {}).get("config_content")
        new = decide(evaluator_for(policy), (old.get("facts") or {}).get("given") or {}, explain_all=True,
                     model_config=content)
    except DiagnosticError:
        return None
    if (new.verdict or {}).get("method") != (old.get("verdict") or {}).get("method") or \
            (new.verdict or {}).get("rank") != (old.get("verdict") or {}).get("rank"):
        return None
    return new.counterfactuals


@audit_group.command(name="show")
@db_option
@click.argument("record_id", metavar="ID")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a readable summary; json: the full record exactly as stored (chain fields included).")
@click.option("--explain", is_flag=True, help="Add the explanation: why this method, why not the others "
                                              "(failing condition and margin), warnings.")
def show_cmd(db: str | None, record_id: str, fmt: str, explain: bool) -> None:
    """Show one recorded decision. ID may be a unique prefix of the record id.

    \b
    Examples:
      decide audit show 01JH7Q2XK5 --explain
      decide audit show 01JH7Q2XK5ZB3M4N5P6Q7R8S9T --format json
    """
    with open_reader(db) as store:
        record = store.get(store.resolve_id(record_id))
        decision = dict(record.get("decision") or {})
        if explain and decision.get("counterfactuals") is None:
            decision["counterfactuals"] = recorded_counterfactuals(store, record)
    text_expl = explain_decision(decision) if explain else None
    if fmt == "json":
        if text_expl is not None:
            record = dict(record, explanation=text_expl)
        click.echo(_fmt_json(record))
        return
    click.echo(render_record_text(record))
    if text_expl is not None:
        click.echo("")
        click.echo(text_expl)


def _print_report(report: VerifyReport, fmt: str) -> None:
    if fmt == "json":
        click.echo(_fmt_json(report.to_dict()))
        return
    what = f"{report.records_checked} record(s)"
    if report.snapshots_checked or not report.source.endswith(".jsonl"):
        what += f", {report.snapshots_checked} policy snapshot(s)"
    sig = report.signatures or {}
    if report.ok:
        click.echo(f"OK: {what} verified in {report.source}")
        click.echo(f"head: {report.head_seq}:{report.head_hash or '-'}  (keep it; pass it back with --anchor)")
        if sig.get("proven"):
            click.echo(f"signed: every record up to seq {sig['covered_seq']} is vouched for by key(s) "
                       f"{', '.join(sig['keys'])}")
        elif sig.get("count"):
            click.echo(f"signatures: {sig['count']} head signature(s), consistent with the keys kept in the store; "
                       "pass --public-key to prove who wrote the chain")
        elif not report.source.endswith(".jsonl"):
            click.echo("signatures: none (the writer had no key): integrity relies on --anchor")
        return
    click.echo(f"TAMPERED: {report.source}: {len(report.problems)}{'+' if report.truncated else ''} problem(s) "
               f"in {what}")
    first = report.first_problem
    assert first is not None
    click.echo(f"first bad: {first.render()}")
    for p in report.problems[1:]:
        click.echo(f"  {p.render()}")


@audit_group.command(name="verify")
@db_option
@click.option("--jsonl", "jsonl", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="Verify an exported JSONL file (from `decide audit export`) instead of the store.")
@click.option("--anchor", metavar="SEQ:HASH", default=None,
              help="A head printed by an earlier verify; fails if the chain no longer has that hash at that seq "
                   "(detects a chain rewritten from some record on).")
@click.option("--public-key", "public_keys", metavar="FILE", multiple=True, type=click.Path(dir_okay=False),
              help="The writer's Ed25519 public key (from `decide audit keygen`; repeat for rotated keys). Every "
                   "record must then be covered by a valid signature of one of them: proves no record was "
                   "rewritten, removed, reordered or appended by someone without the private key.")
@click.option("--all-signatures", is_flag=True,
              help="Check every stored signature cryptographically (default: from the newest back to the first "
                   "valid one, which vouches for the whole chain below it).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a verdict line and the problems; json: the full report.")
def verify_cmd(db: str | None, jsonl: str | None, anchor: str | None, public_keys: tuple[str, ...],
               all_signatures: bool, fmt: str) -> ExitCode:
    """Check the whole hash chain, its signed heads and every stored policy snapshot.

    Hashes each record's body bytes exactly as stored, checks its link to the previous record, contiguous seq
    (no gaps, no reordering), duplicate JSON keys, the schema, the index columns against the body, the stored
    head, the compression dictionaries, and that each policy snapshot still hashes to its sha256. With
    --public-key, every record must be covered by a valid signed head. Names the first bad record and why.
    Exit 0 clean, 6 on tampering, 2 if the store is missing, unreadable or not an audit store.
    """
    from ..audit.signing import load_public_key

    anchor_t = parse_anchor(anchor)
    keys = [load_public_key(p) for p in public_keys]
    if jsonl is not None:
        try:
            report = verify_jsonl(jsonl, anchor=anchor_t, public_keys=keys or None, all_signatures=all_signatures)
        except OSError as exc:
            raise AuditError(f"cannot read {jsonl}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise AuditError(f"{jsonl} is not UTF-8 text: {exc}") from None
    else:
        with open_reader(db) as store:
            report = store.verify(anchor=anchor_t, public_keys=keys or None, all_signatures=all_signatures)
    _print_report(report, fmt)
    return EXIT_OK if report.ok else EXIT_TAMPERED


def _print_single(result: ReplayResult) -> None:
    if result.status == "identical":
        click.echo(f"identical: {result.record_id} ({outcome(result.old)})")
    elif result.status == "error":
        click.echo(f"error: {result.record_id}: cannot re-evaluate: {result.error}")
    else:
        click.echo(f"different: {result.record_id}: {outcome(result.old)} -> {outcome(result.new)}")
        for d in result.differences:
            click.echo(f"  {d.render()}")
    if result.status != "identical" and result.versions_then != result.versions_now:
        then = ", ".join(f"{k} {v}" for k, v in sorted(result.versions_then.items()))
        now = ", ".join(f"{k} {v}" for k, v in sorted(result.versions_now.items()))
        click.echo(f"  note: recorded with {then}; replayed with {now}")


@audit_group.command(name="replay")
@db_option
@click.argument("record_id", metavar="[ID]", required=False)
@click.option("--all", "all_", is_flag=True, help="Replay every record (combine with --since).")
@click.option("--policy", "policy_path", metavar="NEW", type=click.Path(exists=True), default=None,
              help="Evaluate with this policy (file or bundle dir) instead of each record's stored snapshot: "
                   "shows which past decisions NEW would change.")
@click.option("--since", metavar="WHEN", default=None, help="With --all: only records since WHEN (2d, 3h, ISO).")
@click.option("--show-all", is_flag=True, help="With --all: list every record, not only the changed ones.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: readable; json: one object per replayed record plus counts.")
def replay_cmd(db: str | None, record_id: str | None, all_: bool, policy_path: str | None, since: str | None,
               show_all: bool, fmt: str) -> ExitCode:
    """Re-evaluate recorded decisions and report what changed.

    \b
    decide audit replay ID            re-run ID's facts with its stored policy snapshot and the current
                                      engine: prints `identical` (exit 0) or each difference in verdict,
                                      feasibility, chosen/matched rules and warnings (exit 8)
    decide audit replay --all         the same for every record; exit 8 if any differs
    decide audit replay --all --policy NEW
                                      which past decisions policy NEW would change: a table of
                                      id, old method/rank -> new, plus counts (exit 0; 3 if NEW is invalid)
    """
    if bool(record_id) == all_:
        raise click.UsageError("give either one record ID or --all")
    if since is not None and not all_:
        raise click.UsageError("--since only applies with --all")
    try:
        since_dt = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    policy = None
    if policy_path is not None:
        from ..policy import load_policy

        policy = load_policy(policy_path)
    with open_reader(db) as store:
        if record_id:
            records = [store.get(store.resolve_id(record_id))]
        else:
            records = store.list(RecordFilter(since=since_dt))
        results = list(replay_records(store, records, policy))
    if record_id:
        result = results[0]
        if fmt == "json":
            click.echo(_fmt_json(result.to_dict()))
        else:
            _print_single(result)
        return EXIT_OK if result.identical else EXIT_REPLAY_DIFFERS
    return _report_all(results, policy, fmt, show_all)


def _report_all(results: list[ReplayResult], policy: Any, fmt: str, show_all: bool) -> ExitCode:
    what_if = policy is not None
    counts = {"total": len(results), "identical": sum(r.status == "identical" for r in results),
              "different": sum(r.status == "different" for r in results),
              "error": sum(r.status == "error" for r in results)}
    if what_if:
        counts["outcome_changed"] = sum(r.outcome_changed for r in results)
    if fmt == "json":
        data: dict[str, Any] = {"counts": counts, "results": [r.to_dict() for r in results]}
        if what_if:
            data["policy"] = {"name": policy.name, "version": policy.version, "sha256": policy.sha256}
        click.echo(_fmt_json(data))
    else:
        if what_if:
            shown = [r for r in results if show_all or r.outcome_changed]
            rows = [[r.seq, r.record_id, outcome(r.old), "->", r.error and "error" or outcome(r.new),
                     r.error or ("" if r.outcome_changed else "unchanged")] for r in shown]
            click.echo(f"what-if: policy {policy.name} {policy.version} (sha256 {policy.sha256[:12]}) over "
                       f"{counts['total']} past decision(s)")
            if rows:
                click.echo(_table(["SEQ", "ID", "OLD", "", "NEW", "NOTE"], rows))
            click.echo(f"{counts['outcome_changed']} would change, {counts['total'] - counts['outcome_changed']} "
                       f"unchanged ({counts['different']} differ in any compared field, {counts['error']} error(s))")
        else:
            shown = [r for r in results if show_all or not r.identical]
            rows = [[r.seq, r.record_id, r.status, outcome(r.old), outcome(r.new) if r.new else "-",
                     r.error or "; ".join(d.render() for d in r.differences)] for r in shown]
            if rows:
                click.echo(_table(["SEQ", "ID", "STATUS", "RECORDED", "REPLAYED", "DIFFERENCES"], rows))
            click.echo(f"{counts['identical']} identical, {counts['different']} different, {counts['error']} "
                       f"error(s) of {counts['total']} record(s)")
    if not what_if and counts["identical"] != counts["total"]:
        return EXIT_REPLAY_DIFFERS
    return EXIT_OK


@audit_group.command(name="export")
@db_option
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True,
              help="jsonl: one canonical JSON record per line, seq order, chain fields included.")
@click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of standard output.")
@click.option("--signatures", "with_signatures", is_flag=True,
              help="Append the signed chain heads as {\"head_signature\": ...} lines after the records, so that "
                   "`verify --jsonl FILE --public-key KEY` proves the export was written by the key holder.")
def export_cmd(db: str | None, fmt: str, output: str | None, with_signatures: bool) -> None:
    """Export the whole chain, e.g. for archiving; check a copy later with `decide audit verify --jsonl FILE`.

    Policy snapshots are not exported (the records name them by sha256).
    """
    with open_reader(db) as store:
        sigs = list(store.iter_signatures()) if with_signatures else []
        if output is None:
            count = write_jsonl(store.iter_all(), sys.stdout, sigs)
        else:
            with open(output, "w", encoding="utf-8", newline="\n") as fh:
                count = write_jsonl(store.iter_all(), fh, sigs)
    click.echo(f"exported {count} record(s)" + (f" to {output}" if output else ""), err=True)


@audit_group.command(name="keygen")
@click.option("-o", "--output", "output", metavar="KEYFILE", type=click.Path(dir_okay=False), required=True,
              help="Where to write the private key (PKCS#8 PEM, mode 0600); the public key goes to KEYFILE.pub.")
def keygen_cmd(output: str) -> None:
    """Create an Ed25519 signing key for the audit writer.

    The writer (the `decide` CLI, `decide serve`, the library's AuditWriter) reads the private key from
    $FINETUNE_POLICY_AUDIT_KEY and signs the chain head at every commit; give KEYFILE.pub to auditors for
    `decide audit verify --public-key KEYFILE.pub`. Never overwrites an existing file.

    \b
    Example:
      decide audit keygen -o /etc/finetune-policy/audit.key
      export FINETUNE_POLICY_AUDIT_KEY=/etc/finetune-policy/audit.key
    """
    from ..audit.signing import SigningKey

    key = SigningKey.generate()
    key.write(output, output + ".pub")
    click.echo(f"key id {key.key_id}: private key {output} (keep it with the writer only), public key "
               f"{output}.pub (give it to auditors)")


__all__ = ["audit_group", "default_db_path", "explain_decision", "parse_since", "render_record_text"]
