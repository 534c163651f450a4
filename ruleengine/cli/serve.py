"""`decide serve`: the decision service over HTTP (a thin shell over ruleengine.service)."""

from __future__ import annotations

import click

from ..diagnostics import Diagnostic, DiagnosticError, Location
from ..exitcodes import ExitCode
from .common import EXIT_CODES_HELP, error_format_option


@click.command("serve", epilog=EXIT_CODES_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="port (0 = any free port, printed at start)")
@click.option("--policy", "policy_path", type=click.Path(), default=None,
              help="policy file or bundle directory (default: the bundled policies/default)")
@click.option("--no-audit", is_flag=True, help="do not record decisions in the audit store")
@click.option("--audit-db", type=click.Path(dir_okay=False), default=None, help="audit store path")
@click.option("--verbose", is_flag=True, help="log every request to stderr")
@error_format_option
def serve_command(host: str, port: int, policy_path: str | None, no_audit: bool, audit_db: str | None,
                  verbose: bool, error_format: str) -> ExitCode:
    """Serve decisions over HTTP (JSON): POST /v1/decide, /v1/explain, /v1/estimate; GET /v1/policy, /healthz.

    The request body is a facts object, exactly as in a facts file. Bad bodies get 400 with located
    diagnostics. Decisions are audited as with the CLI. Stop with Ctrl-C.
    """
    from .. import api
    from ..audit import AuditError
    from ..service import DecisionService, make_server

    engine = api.open_policy(policy_path)
    try:
        service = DecisionService(engine, audit=not no_audit, audit_db=audit_db)
    except AuditError as exc:
        click.echo(f"error: the audit store cannot be used: {exc}\n  help: fix --audit-db / "
                   "FINETUNE_POLICY_AUDIT_DB (or FINETUNE_POLICY_AUDIT_KEY), or pass --no-audit", err=True)
        return ExitCode.AUDIT_WRITE if exc.exit_code in (2, 7) else ExitCode(exc.exit_code)
    try:
        server = make_server(service, host, port, verbose)
    except OSError as exc:
        raise DiagnosticError([Diagnostic("serve-cannot-bind", f"cannot listen on {host}:{port}: {exc.strerror}",
                                          Location("--port"), "choose another --port or --host")]) from None
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    policy = engine.policy
    click.echo(f"serving policy {policy.name} {policy.version} (sha256 {policy.short_hash}) on "
               f"http://{bound_host}:{bound_port}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()
    return ExitCode.OK
