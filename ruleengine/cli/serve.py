"""`decide serve`: the decision service over HTTP (a thin shell over ruleengine.service)."""

from __future__ import annotations

import click

from ..diagnostics import Diagnostic, DiagnosticError, Location
from ..exitcodes import ExitCode
from .common import EXIT_CODES_HELP, error_format_option


@click.command("serve", epilog=EXIT_CODES_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; any non-loopback address needs a token (--token-file)")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="port (0 = any free port, printed at start)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="worker processes (each decides on its own core; they share the socket and the audit chain)")
@click.option("--policy", "policy_path", type=click.Path(), default=None,
              help="policy file or bundle directory [FINETUNE_POLICY_PATH] (default: the bundled policies/default)")
@click.option("--no-audit", is_flag=True, default=None, help="do not record decisions [FINETUNE_POLICY_NO_AUDIT=1]")
@click.option("--audit-db", default=None,
              help="audit store: a path or postgresql://... [FINETUNE_POLICY_AUDIT_DB]")
@click.option("--audit-key", type=click.Path(dir_okay=False), default=None,
              help="Ed25519 private key signing the chain heads [FINETUNE_POLICY_AUDIT_KEY]")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="bearer tokens clients must send, one per line [FINETUNE_POLICY_TOKEN_FILE; or "
              "FINETUNE_POLICY_TOKEN]")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="folder the workers share for metrics and policy reloads [FINETUNE_POLICY_STATE_DIR] "
              "(default: a temporary folder per run)")
@click.option("--max-body", type=click.IntRange(1024, 64 * 1024 * 1024), default=None,
              help="largest request body in bytes [FINETUNE_POLICY_MAX_BODY] (default 1 MiB)")
@click.option("--body-timeout", type=click.FloatRange(0.1, 3600), default=None,
              help="seconds a client may take to send a body [FINETUNE_POLICY_BODY_TIMEOUT] (default 10)")
@click.option("--header-timeout", type=click.FloatRange(0.1, 3600), default=None,
              help="seconds to start a request and send its headers [FINETUNE_POLICY_HEADER_TIMEOUT] (default 10)")
@click.option("--decide-threads", type=click.IntRange(0, 256), default=None,
              help="0 = decide on the event loop, N = in N threads [FINETUNE_POLICY_DECIDE_THREADS] (default 0)")
@click.option("--access-log/--no-access-log", default=None,
              help="JSON access log lines on stderr [FINETUNE_POLICY_ACCESS_LOG] (default on)")
@error_format_option
def serve_command(host: str, port: int, workers: int, policy_path: str | None, no_audit: bool | None,
                  audit_db: str | None, audit_key: str | None, token_file: str | None, state_dir: str | None,
                  max_body: int | None, body_timeout: float | None, header_timeout: float | None,
                  decide_threads: int | None, access_log: bool | None, error_format: str) -> ExitCode:
    """Serve decisions over HTTP (JSON): POST /v1/decide, /v1/explain, /v1/estimate, /v1/policy/reload;
    GET /v1/policy, /healthz, /readyz, /metrics, /docs.

    The request body is a facts object, exactly as in a facts file, except that model.config is the
    config.json's content (the service never opens a path a client names). Bad bodies get 400 with
    located diagnostics. Every decision is recorded in the audit store before it is answered. Flags
    override the FINETUNE_POLICY_* variables. SIGHUP reloads the policy (a policy that does not compile
    is refused and logged); Ctrl-C or SIGTERM stops gracefully.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DiagnosticError([Diagnostic("serve-extra-missing", f"the service needs {exc.name}, which is not "
                                          "installed", Location("decide serve"),
                                          "pip install 'finetune-policy[service]'")]) from None
    from ..service.settings import Settings, is_loopback, read_token_file

    settings = Settings.from_env()
    changes: dict[str, object] = {}
    for name, value in (("policy", policy_path), ("audit_db", audit_db), ("audit_key", audit_key),
                        ("state_dir", state_dir), ("max_body", max_body), ("body_timeout", body_timeout),
                        ("header_timeout", header_timeout), ("decide_threads", decide_threads),
                        ("access_log", access_log)):
        if value is not None:
            changes[name] = value
    if no_audit:
        changes["audit"] = False
    if token_file:
        changes["tokens"] = tuple(read_token_file(token_file))
    settings = settings.with_(**changes)
    if not is_loopback(host) and not settings.tokens:
        raise DiagnosticError([Diagnostic(
            "serve-token-required", f"--host {host} accepts connections from other machines, and no token is set",
            Location("--host"), "give --token-file (one token per line) or FINETUNE_POLICY_TOKEN, or listen on "
            "127.0.0.1")])

    from ..service.server import serve

    def announce(bound_host: str, bound_port: int) -> None:
        from .. import api

        policy = api.open_policy(settings.policy).policy
        click.echo(f"serving policy {policy.name} {policy.version} (sha256 {policy.short_hash}) with {workers} "
                   f"worker(s), audit {'on' if settings.audit else 'off'}, "
                   f"token {'required' if settings.tokens else 'off (loopback only)'} on "
                   f"http://{bound_host}:{bound_port}", err=True)

    try:
        serve(settings, host, port, workers, on_bound=announce)
    except OSError as exc:
        if getattr(exc, "exit_code", None) is not None:
            raise
        raise DiagnosticError([Diagnostic("serve-cannot-bind", f"cannot listen on {host}:{port}: "
                                          f"{exc.strerror or exc}", Location("--port"),
                                          "choose another --port or --host")]) from None
    except KeyboardInterrupt:
        pass
    return ExitCode.OK
